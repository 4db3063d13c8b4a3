//! Library target so that `classifier-user` can name this crate as a build
//! dependency (which makes cargo rebuild it); the programs are in `main.rs`.
#![no_std]
