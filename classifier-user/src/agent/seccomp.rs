//! Telling a container runtime's seccomp profile apart from missing
//! capabilities when bpf() fails with EPERM. containers-common's default
//! profile (podman, CRI-O) allows bpf() only with CAP_SYS_ADMIN, so the
//! agent, which holds CAP_BPF instead, gets EPERM at its first map; the
//! kernel's own refusal (no CAP_BPF) looks the same. A bpf() call with an
//! unknown command separates them: the kernel answers EINVAL, a filter
//! refuses it before the kernel sees it.

use std::io;

/// Where the fix is described, named in every message.
pub const FIX: &str =
    "run the agent under the classifier's seccomp profile, which allows bpf() and \
    perf_event_open() (the kernel still requires CAP_BPF and CAP_PERFMON): on Kubernetes add the \
    Kustomize component deploy/components/seccomp-localhost, whose init container installs \
    deploy/components/seccomp-localhost/classifier-agent.json as a Localhost profile on each \
    node; with podman pass `--security-opt seccomp=` that file (docs/src/install/runtimes.md)";

/// What this process's seccomp state says about bpf().
#[derive(Debug, PartialEq, Eq)]
pub enum Finding {
    /// `Seccomp: 0`: no filter.
    NoFilter,
    /// A filter is installed and lets bpf() through to the kernel.
    FilterAllowsBpf,
    /// A filter is installed and refuses bpf() with this errno.
    FilterRefusesBpf { errno: i32 },
}

/// The `Seccomp:` mode in /proc/self/status: 0 none, 1 strict, 2 filter.
pub fn mode(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads this process's state and probes bpf().
pub fn inspect() -> Finding {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    judge(mode(&status), || crate::sys::bpf::probe_unknown_command())
}

/// `probe` is only called under a filter.
fn judge(mode: Option<u32>, probe: impl FnOnce() -> io::Error) -> Finding {
    if mode.unwrap_or(0) == 0 {
        return Finding::NoFilter;
    }
    match probe().raw_os_error() {
        // A filter's errno for a refused call (containers-common uses EPERM
        // for bpf(), ENOSYS for calls it does not list).
        Some(errno) if errno == libc::EPERM || errno == libc::ENOSYS => {
            Finding::FilterRefusesBpf { errno }
        }
        _ => Finding::FilterAllowsBpf,
    }
}

/// Whether `err` (anywhere in its chain) is an EPERM from the kernel or a
/// filter.
pub fn is_eperm(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.raw_os_error() == Some(libc::EPERM))
    })
}

/// The one line added to an install error when the filter is the cause.
pub fn explain(finding: &Finding) -> Option<String> {
    match finding {
        Finding::FilterRefusesBpf { errno } => Some(format!(
            "the container runtime's seccomp profile refused bpf() (a seccomp filter is active, \
             Seccomp: 2 in /proc/self/status, and it answers bpf() with {}, before the kernel \
             checks capabilities); default profiles from containers-common (podman, CRI-O) allow \
             bpf() only with CAP_SYS_ADMIN. Fix: {FIX}",
            io::Error::from_raw_os_error(*errno)
        )),
        _ => None,
    }
}

/// Adds the seccomp explanation to an install error that is an EPERM
/// caused by this process's seccomp filter; any other error is returned
/// as it is.
pub fn annotate(err: anyhow::Error) -> anyhow::Error {
    if !is_eperm(&err) {
        return err;
    }
    match explain(&inspect()) {
        Some(line) => err.context(line),
        None => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(e: i32) -> impl FnOnce() -> io::Error {
        move || io::Error::from_raw_os_error(e)
    }

    #[test]
    fn reads_the_seccomp_mode() {
        assert_eq!(
            mode("Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t1\n"),
            Some(2)
        );
        assert_eq!(mode("Seccomp:\t0\n"), Some(0));
        assert_eq!(mode("Name:\tx\n"), None);
    }

    #[test]
    fn only_a_filter_that_refuses_the_probe_is_blamed() {
        let never = || -> io::Error { panic!("no probe without a filter") };
        assert_eq!(judge(Some(0), never), Finding::NoFilter);
        assert_eq!(judge(None, never), Finding::NoFilter);
        // The kernel's answer to an unknown command: the filter let it by.
        assert_eq!(
            judge(Some(2), errno(libc::EINVAL)),
            Finding::FilterAllowsBpf
        );
        assert_eq!(
            judge(Some(2), errno(libc::EPERM)),
            Finding::FilterRefusesBpf { errno: libc::EPERM }
        );
        assert_eq!(
            judge(Some(2), errno(libc::ENOSYS)),
            Finding::FilterRefusesBpf {
                errno: libc::ENOSYS
            }
        );
    }

    #[test]
    fn the_message_names_seccomp_and_the_fix() {
        let line = explain(&Finding::FilterRefusesBpf { errno: libc::EPERM }).unwrap();
        assert!(
            line.starts_with("the container runtime's seccomp profile refused bpf()"),
            "{line}"
        );
        assert!(line.contains("Seccomp: 2"), "{line}");
        assert!(
            line.contains("deploy/components/seccomp-localhost/classifier-agent.json"),
            "{line}"
        );
        assert!(line.contains("Localhost"), "{line}");
        assert_eq!(explain(&Finding::FilterAllowsBpf), None);
        assert_eq!(explain(&Finding::NoFilter), None);
    }

    #[test]
    fn finds_eperm_anywhere_in_the_chain() {
        let err = anyhow::Error::new(io::Error::from_raw_os_error(libc::EPERM))
            .context("failed to create map CLS_LEARN_SCOPES")
            .context("loading the eBPF object");
        assert!(is_eperm(&err));
        let err = anyhow::Error::new(io::Error::from_raw_os_error(libc::EBADF)).context("x");
        assert!(!is_eperm(&err));
        // Not EPERM: returned untouched, without probing.
        assert_eq!(
            format!("{:#}", annotate(err)),
            "x: Bad file descriptor (os error 9)"
        );
    }
}
