//! Small helpers shared by the subcommands: logging, PATH lookup, root
//! detection and exit-status plumbing.

use std::env;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{Context, Result};

/// Print one progress line to stderr, prefixed with `xtask: `.
macro_rules! step {
    ($($arg:tt)*) => {
        eprintln!("xtask: {}", format_args!($($arg)*))
    };
}
pub(crate) use step;

/// A child process failed; `main` exits with `code` after printing the message.
#[derive(Debug)]
pub struct Failed {
    pub what: String,
    pub code: i32,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed (exit code {})", self.what, self.code)
    }
}

impl std::error::Error for Failed {}

/// Exit code of a finished child; a child killed by signal N maps to 128+N,
/// as a shell would report it.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

/// Run `cmd` to completion with inherited stdio; a non-zero exit becomes a
/// [`Failed`] error carrying the child's exit code.
pub fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {what} ({cmd:?})"))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failed {
            what: what.to_string(),
            code: exit_code(status),
        }
        .into())
    }
}

/// Run `cmd`, capturing stdout; `None` if it cannot be started or fails.
pub fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Find an executable named `name` on PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `$CARGO_HOME/bin`, defaulting to `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home).join("bin"));
    }
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cargo").join("bin"))
}

/// Put `dir` at the front of PATH for this process and every child it starts
/// (no-op if already present).
pub fn prepend_to_path(dir: &Path) -> Result<()> {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if dirs.iter().any(|d| d == dir) {
        return Ok(());
    }
    dirs.insert(0, dir.to_path_buf());
    let joined = env::join_paths(dirs).context("cannot build new PATH")?;
    env::set_var("PATH", joined);
    Ok(())
}

/// Effective uid is 0. Read from /proc/self/status (no libc needed), falling
/// back to `id -u`.
pub fn is_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            // Uid: real effective saved fs
            if let Some(euid) = line.split_whitespace().nth(2) {
                return euid == "0";
            }
        }
    }
    output_of(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

/// `CI=true` (as GitHub Actions and our `.ci/run` set it).
pub fn in_ci() -> bool {
    env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Render a command for log lines.
pub fn show(cmd: &Command) -> String {
    let prog = Path::new(cmd.get_program()).display().to_string();
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.is_empty() {
        prog
    } else {
        format!("{prog} {}", args.join(" "))
    }
}
