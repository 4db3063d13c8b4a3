//! inotify(7): `inotify_init1`, `inotify_add_watch`, `inotify_rm_watch`,
//! and reading the event records, for watching directories (the kubelet's
//! pod cgroup tree).
//!
//! The descriptor is non-blocking and close-on-exec; callers wait for it
//! to become readable (tokio's `AsyncFd`) and then drain it with
//! [`Inotify::read_events`], which answers `WouldBlock` when it is empty.
//! The event records are decoded from the bytes read(2) returns, without
//! pointer casts.

use std::{
    ffi::{CString, OsString},
    fs::File,
    io::{self, Read as _},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStringExt as _,
    },
    path::Path,
};

/// Event bits (the kernel's `IN_*` values).
pub const IN_CREATE: u32 = libc::IN_CREATE;
pub const IN_DELETE: u32 = libc::IN_DELETE;
pub const IN_MOVED_FROM: u32 = libc::IN_MOVED_FROM;
pub const IN_MOVED_TO: u32 = libc::IN_MOVED_TO;
/// The watched directory itself went away.
pub const IN_DELETE_SELF: u32 = libc::IN_DELETE_SELF;
/// The kernel dropped a watch (its directory went away, or `rm_watch`).
pub const IN_IGNORED: u32 = libc::IN_IGNORED;
/// The name is a directory.
pub const IN_ISDIR: u32 = libc::IN_ISDIR;
/// The event queue overflowed: events were lost (`wd` is -1).
pub const IN_Q_OVERFLOW: u32 = libc::IN_Q_OVERFLOW;
/// Only watch `path` if it is a directory.
pub const IN_ONLYDIR: u32 = libc::IN_ONLYDIR;

/// A watch, as the kernel numbers it within one inotify instance.
pub type WatchId = i32;

/// One event record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub wd: WatchId,
    pub mask: u32,
    /// The entry's name inside the watched directory, for events about an
    /// entry (not for events about the directory itself).
    pub name: Option<OsString>,
}

/// An inotify instance. Its watches go away with it.
pub struct Inotify {
    file: File,
}

/// `struct inotify_event` without its name: wd, mask, cookie, len.
const HEADER: usize = 16;

impl Inotify {
    pub fn new() -> io::Result<Self> {
        // SAFETY: no pointer arguments; the flags are valid.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: inotify_init1 just returned this descriptor and nothing
        // else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            file: File::from(fd),
        })
    }

    /// Watches `path` for the events in `mask`; watching a path already
    /// watched returns its id (and replaces its mask).
    pub fn add_watch(&self, path: &Path, mask: u32) -> io::Result<WatchId> {
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        // SAFETY: the descriptor is ours and open; c_path is a live
        // NUL-terminated string.
        let wd = unsafe { libc::inotify_add_watch(self.file.as_raw_fd(), c_path.as_ptr(), mask) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(wd)
    }

    /// A new instance registered with the current tokio runtime, to wait
    /// for events with `readable()`. Must be called within the runtime.
    pub fn new_async() -> io::Result<tokio::io::unix::AsyncFd<Self>> {
        let inotify = Self::new()?;
        // SAFETY: the descriptor is the one `inotify.file` owns: valid and
        // open for as long as the `AsyncFd` holds `inotify`, which never
        // gives it up, replaces or closes it, and `as_raw_fd` always
        // returns that same descriptor.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(inotify, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into())
    }

    /// Stops watching; the kernel then queues an `IN_IGNORED` for it.
    #[cfg(test)]
    pub fn rm_watch(&self, wd: WatchId) -> io::Result<()> {
        // SAFETY: plain integers on a descriptor we own.
        let rc = unsafe { libc::inotify_rm_watch(self.file.as_raw_fd(), wd) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the events queued now; `WouldBlock` when there are none.
    pub fn read_events(&self) -> io::Result<Vec<Event>> {
        // Large enough for many records (each is 16 bytes plus a name of
        // at most NAME_MAX + 1 bytes, padded), so one read rarely leaves
        // any behind; the caller reads again until `WouldBlock`.
        let mut buf = vec![0u8; 64 * 1024];
        let n = (&self.file).read(&mut buf)?;
        Ok(decode(&buf[..n]))
    }
}

impl AsFd for Inotify {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Inotify {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The records in `bytes`, as read(2) returned them: a 16-byte header
/// (wd, mask, cookie, len, in native byte order) followed by `len` bytes of
/// NUL-padded name. A truncated record (never returned by the kernel) ends
/// the list.
fn decode(bytes: &[u8]) -> Vec<Event> {
    let word =
        |at: usize| u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let mut events = Vec::new();
    let mut at = 0;
    while at + HEADER <= bytes.len() {
        let wd = word(at) as i32;
        let mask = word(at + 4);
        let len = word(at + 12) as usize;
        let Some(raw) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        let name = (end > 0).then(|| OsString::from_vec(raw[..end].to_vec()));
        events.push(Event { wd, mask, name });
        at += HEADER + len;
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(wd: i32, mask: u32, name: &str, padded: usize) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&wd.to_ne_bytes());
        out.extend_from_slice(&mask.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&(padded as u32).to_ne_bytes());
        let mut n = name.as_bytes().to_vec();
        n.resize(padded, 0);
        out.extend_from_slice(&n);
        out
    }

    #[test]
    fn decodes_records_with_and_without_names() {
        let mut bytes = record(1, IN_CREATE | IN_ISDIR, "pod1", 16);
        bytes.extend(record(-1, IN_Q_OVERFLOW, "", 0));
        bytes.extend(record(2, IN_IGNORED, "", 0));
        // A truncated record is dropped, not misread.
        bytes.extend(&record(3, IN_DELETE, "gone", 16)[..20]);
        assert_eq!(
            decode(&bytes),
            vec![
                Event {
                    wd: 1,
                    mask: IN_CREATE | IN_ISDIR,
                    name: Some("pod1".into())
                },
                Event {
                    wd: -1,
                    mask: IN_Q_OVERFLOW,
                    name: None
                },
                Event {
                    wd: 2,
                    mask: IN_IGNORED,
                    name: None
                },
            ]
        );
    }

    #[test]
    fn sees_a_directory_created_and_removed() {
        let dir = std::env::temp_dir().join(format!("inotify-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let inotify = Inotify::new().unwrap();
        let wd = inotify
            .add_watch(&dir, IN_CREATE | IN_DELETE | IN_ONLYDIR)
            .unwrap();
        assert_eq!(
            inotify.read_events().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        std::fs::create_dir(dir.join("child")).unwrap();
        std::fs::remove_dir(dir.join("child")).unwrap();
        let events = inotify.read_events().unwrap();
        let seen: Vec<(i32, u32, Option<OsString>)> =
            events.into_iter().map(|e| (e.wd, e.mask, e.name)).collect();
        assert_eq!(
            seen,
            vec![
                (wd, IN_CREATE | IN_ISDIR, Some("child".into())),
                (wd, IN_DELETE | IN_ISDIR, Some("child".into())),
            ]
        );
        inotify.rm_watch(wd).unwrap();
        std::fs::remove_dir(&dir).unwrap();
    }
}
