//! Every system call the userspace makes outside std, aya and tokio, and
//! the only module of this crate allowed to use `unsafe` (the crate root
//! denies it everywhere else).
//!
//! One file per kernel concept, one safe, typed wrapper per call; each
//! `unsafe` block says why it is sound. Callers never see a raw pointer:
//! they pass Rust values and get `io::Result`s back.
//!
//! ```text
//! bpf.rs       bpf(2): link create, pin, open pinned object, link info,
//!              map element batches
//! caps.rs      capability bounding set and capset(2)
//! fs.rs        statfs(2), mount(2), flock(2)
//! inotify.rs   inotify(7): watching the kubelet's pod cgroup directories
//! jemalloc.rs  mallctl(3): the allocator's settings
//! process.rs   effective uid
//! socket.rs    getsockopt(2) into a plain-data value
//! ```

pub mod bpf;
pub mod caps;
pub mod fs;
pub mod inotify;
pub mod jemalloc;
pub mod process;
pub mod socket;
