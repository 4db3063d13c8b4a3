//! Every raw system call of the test harness, the benchmark, the demo and
//! the probe, behind safe wrappers: the only module of this package
//! allowed `unsafe` (each crate root denies it). Each `unsafe` block says
//! why it is sound.

use std::{
    ffi::CString,
    io,
    net::{SocketAddrV4, TcpStream},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    process::{Child, Command},
    sync::atomic::{AtomicBool, Ordering},
};

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// kill(2): sends `signal` to process `pid`.
pub fn kill(pid: i32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes integers only; signalling a pid that has exited
    // fails with ESRCH.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// SIGTERM to a child of ours (not yet waited for, so its pid is still
/// ours).
pub fn terminate(child: &Child) {
    let _ = kill(child.id() as i32, libc::SIGTERM);
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn set_signalled(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// From now on `signals` only set a flag that [`signalled`] reads.
pub fn flag_on_signals(signals: &[libc::c_int]) {
    for &sig in signals {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(sig, set_signalled as *const () as libc::sighandler_t) };
    }
}

/// Whether one of the signals given to [`flag_on_signals`] arrived.
pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}

/// Makes `cmd`'s child, between fork and exec: join the cgroup whose
/// `cgroup.procs` is `cgroup_procs` (if any), enter the network namespace
/// `netns`, and become `uid` (with gid `uid` and no supplementary groups)
/// if given.
pub fn enter_before_exec(
    cmd: &mut Command,
    cgroup_procs: Option<CString>,
    netns: OwnedFd,
    uid: Option<u32>,
) {
    let in_child = move || {
        // Join the cgroup first: the order keeps the child out of the
        // namespace if it cannot be classified.
        if let Some(procs) = &cgroup_procs {
            // SAFETY: open, write and close are async-signal-safe; procs is
            // a NUL-terminated path and the buffer is a live 1-byte slice.
            let wrote = unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // "0" moves the writing process itself.
                let wrote = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                wrote
            };
            if wrote != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: setns on a namespace fd the closure owns; async-signal-safe.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(uid) = uid {
            // SAFETY: setgroups with a count of 0 reads no pointer; setgid
            // and setuid take integers; all are async-signal-safe.
            let failed = unsafe {
                libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0
            };
            if failed {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure makes only async-signal-safe calls and allocates
    // nothing (its captures were made before the fork).
    unsafe {
        cmd.pre_exec(in_child);
    }
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A TCP connection from the fixed address `src` (bound with
/// SO_REUSEADDR) to `dst`.
pub fn connect_from(src: SocketAddrV4, dst: SocketAddrV4) -> io::Result<TcpStream> {
    let with = |what: String| {
        let err = io::Error::last_os_error();
        io::Error::new(err.kind(), format!("{what}: {err}"))
    };
    // SAFETY: socket takes integers only.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(with("socket".into()));
    }
    // SAFETY: fd is a new socket that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: `one` is a live c_int of the size passed.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let s = sockaddr_in(src);
    // SAFETY: s is a live sockaddr_in of the length passed.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const s).cast(), len) } != 0 {
        return Err(with(format!("bind {src}")));
    }
    let d = sockaddr_in(dst);
    // SAFETY: d is a live sockaddr_in of the length passed.
    if unsafe { libc::connect(fd.as_raw_fd(), (&raw const d).cast(), len) } != 0 {
        return Err(with(format!("connect {dst}")));
    }
    Ok(TcpStream::from(fd))
}

/// A non-blocking TCP connect to `dst` that is left in progress (the SYN
/// may never be answered): the socket, held open by the caller.
pub fn connect_pending(dst: SocketAddrV4) -> io::Result<OwnedFd> {
    // SAFETY: socket takes integers only.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let d = sockaddr_in(dst);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: d is a live sockaddr_in of the length passed.
    if unsafe { libc::connect(fd.as_raw_fd(), (&raw const d).cast(), len) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    Ok(fd)
}

/// One TCP socket, bound to `src` (with SO_REUSEADDR), connecting more than
/// once: the same fd across several connect() calls.
pub struct Reconnecting {
    fd: OwnedFd,
}

impl Reconnecting {
    pub fn bound(src: SocketAddrV4) -> io::Result<Self> {
        // SAFETY: socket takes integers only.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new socket that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: `one` is a live c_int of the size passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let s = sockaddr_in(src);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: s is a live sockaddr_in of the length passed.
        if unsafe { libc::bind(fd.as_raw_fd(), (&raw const s).cast(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// connect(2) to `dst`.
    pub fn connect(&self, dst: SocketAddrV4) -> io::Result<()> {
        let d = sockaddr_in(dst);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: d is a live sockaddr_in of the length passed.
        if unsafe { libc::connect(self.fd.as_raw_fd(), (&raw const d).cast(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// connect(2) with `AF_UNSPEC`: dissolves the connection, keeps the
    /// socket (and its bound address) for another connect.
    pub fn disconnect(&self) -> io::Result<()> {
        // SAFETY: sockaddr is plain integers; all-zero is valid.
        let mut a: libc::sockaddr = unsafe { std::mem::zeroed() };
        a.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        // SAFETY: a is a live sockaddr of the length passed.
        let rc = unsafe {
            libc::connect(
                self.fd.as_raw_fd(),
                &raw const a,
                std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The socket as a stream (for reads and socket options).
    pub fn stream(&self) -> io::Result<TcpStream> {
        Ok(TcpStream::from(self.fd.try_clone()?))
    }
}

/// SO_LINGER {on, 0}: close resets the connection instead of leaving it in
/// TIME_WAIT.
pub fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: linger is a live struct of the size passed.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The global allocator with a count of the bytes it holds, so that a
/// benchmark can say what a structure keeps (resident memory also counts
/// what the allocator has not yet returned to the system).
pub struct CountingAlloc;

static ALLOCATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl CountingAlloc {
    /// Bytes allocated and not yet freed, by every thread.
    pub fn held() -> usize {
        ALLOCATED.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The most [`CountingAlloc::held`] was since the last reset.
    pub fn peak() -> usize {
        PEAK.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn reset_peak() {
        PEAK.store(Self::held(), std::sync::atomic::Ordering::Relaxed);
    }

    fn grew(size: usize) {
        let now = ALLOCATED.fetch_add(size, std::sync::atomic::Ordering::Relaxed) + size;
        PEAK.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the agent's allocator with the same
// layout and pointer; the count is only bookkeeping.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on unchanged.
        let p = unsafe { classifier_user::allocator::ALLOCATOR.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `alloc`/`realloc` above with `layout`.
        unsafe { classifier_user::allocator::ALLOCATOR.dealloc(ptr, layout) };
        ALLOCATED.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, passed on unchanged.
        let p = unsafe { classifier_user::allocator::ALLOCATOR.realloc(ptr, layout, new) };
        if !p.is_null() {
            ALLOCATED.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
            Self::grew(new);
        }
        p
    }
}

/// unshare(CLONE_NEWNET): the calling thread (and the process, if it has
/// one thread) moves to a new network namespace; the previous one goes
/// away once nothing else holds it.
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare takes a flag word only.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the loopback device of the current network namespace up (a new
/// namespace's `lo` starts down), with SIOCSIFFLAGS.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket() call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as i16;
    // SAFETY: SIOCSIFFLAGS reads an ifreq that outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SO_NETNS_COOKIE of a socket: the cookie of its network namespace, as
/// the programs key verdicts by (Linux 5.14+).
pub fn netns_cookie(stream: &TcpStream) -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `cookie`, which
    // outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises the soft limit of open files to the hard limit (a process
/// holding thousands of connections needs more than the usual 1024).
pub fn raise_nofile() -> io::Result<u64> {
    // SAFETY: plain old data, all-zero is valid.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes the struct, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads the struct, which outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

/// Moves the calling thread into a new network namespace of its own, with
/// its loopback interface up. The previous namespace goes away once
/// nothing else holds it.
pub fn enter_new_netns() -> io::Result<()> {
    unshare_net()?;
    loopback_up()
}

/// Pins the calling thread to one CPU (sched_setaffinity), so what it does
/// next runs on that CPU's per-CPU kernel state (an LRU map's local free
/// list, for example).
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of the set it is given (it checks the
    // bound itself).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the set outlives the call.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
