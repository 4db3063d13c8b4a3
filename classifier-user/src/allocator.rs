//! The agent's memory allocator: jemalloc, as linkerd2-proxy uses
//! (`linkerd2-proxy/src/main.rs`, `tikv-jemallocator`), set to give
//! emptied pages back to the system at once.
//!
//! Why not glibc's malloc: a full resync at 100k pods makes about 30
//! million allocations, most of them small and short-lived (an object's
//! parsed fields) between long-lived ones (the documents, the live
//! policy). glibc spent over a third of the resync's time coalescing free
//! chunks, and its per-chunk headers and the holes between long-lived
//! chunks kept the resident size ~30 MiB above what the agent held. jemalloc
//! keeps small objects of one size class together without a header each.
//!
//! Why give pages back at once (`dirty_decay_ms` 0, jemalloc's default is
//! 10 s): a resync frees tens of MiB of temporaries while it builds what it
//! keeps; held for 10 s they count in the peak resident size, which is
//! what the DaemonSet's memory request has to cover. The cost is an
//! `madvise` per emptied run of pages, measured in the book's benchmarks
//! (`docs/src/benchmarks.md`).
//!
//! `main.rs` installs [`Allocator`] as the global allocator and calls
//! [`configure`] first; the benchmark wraps the same allocator and calls
//! the same function, so that what it measures is what the agent does.
//! No background thread: the agent drops its capabilities, which are per
//! thread, while it has one thread only (`agent::privileges`).

use std::io;

use crate::sys::jemalloc;

/// The allocator the `classifier` binary runs with.
pub type Allocator = tikv_jemallocator::Jemalloc;

/// An [`Allocator`] (a unit struct), for a `#[global_allocator]` static.
pub const ALLOCATOR: Allocator = tikv_jemallocator::Jemalloc;

/// Sets the allocator up for this process: emptied pages go back to the
/// system at once, in the arenas that exist (the main thread's) and in
/// those made later (one per thread that allocates, round robin). Call it
/// first in `main`.
pub fn configure() -> io::Result<()> {
    jemalloc::write_ssize(c"arenas.dirty_decay_ms", 0)?;
    jemalloc::write_ssize(c"arena.0.dirty_decay_ms", 0)
}

/// Gives what the allocator keeps cached back to the system (after a full
/// compile, whose temporaries are freed all at once).
pub fn release_free_heap() {
    // 4096 is jemalloc's `MALLCTL_ARENAS_ALL`: every arena.
    if let Err(err) = jemalloc::run(c"arena.4096.purge") {
        tracing::debug!("{err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configure_gives_emptied_pages_back_at_once() {
        configure().unwrap();
        assert_eq!(jemalloc::read_ssize(c"arenas.dirty_decay_ms").unwrap(), 0);
        assert_eq!(jemalloc::read_ssize(c"arena.0.dirty_decay_ms").unwrap(), 0);
        // An unknown setting is an error naming it, not a silent no-op.
        let err = jemalloc::write_ssize(c"arenas.no_such_setting", 0).unwrap_err();
        assert!(err.to_string().contains("no_such_setting"), "{err}");
    }
}
