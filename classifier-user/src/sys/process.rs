//! The calling process's identity and memory.

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    euid() == 0
}
