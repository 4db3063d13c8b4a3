//! The eBPF object built by `build.rs`, embedded in the binary so the agent
//! is a single file.

/// The object bytes, 8-byte aligned as the ELF parser requires.
pub fn bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/classifier"))
}

/// Whether this binary carries a real object (it does not when built with
/// `AYA_BUILD_SKIP=1`).
pub fn is_present() -> bool {
    !bytes().is_empty()
}
