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

/// Gives free heap memory that glibc keeps cached back to the system.
pub fn release_free_heap() {
    // SAFETY: malloc_trim has no preconditions; it only walks the
    // allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}
