//! What this binary is: its version, the git commit it was built from and
//! the map layout it speaks. Shown by `--version`, logged at start, served
//! as `classifier_build_info` and written nowhere else.

/// The crate version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit (12 hex digits) the binary was built from, or "unknown"
/// (set by build.rs; `CLASSIFIER_GIT_COMMIT` overrides it).
pub const COMMIT: &str = env!("CLASSIFIER_GIT_COMMIT");
/// The pinned-map layout version (`classifier_common::LAYOUT_VERSION`): an
/// agent only adopts pins of its own layout.
pub const LAYOUT: u32 = classifier_common::LAYOUT_VERSION;

/// `0.1.0 (commit 0123456789ab, map layout 1)`
pub fn long_version() -> String {
    format!("{VERSION} (commit {COMMIT}, map layout {LAYOUT})")
}

/// `VERSION commit COMMIT`, embedded between a prefix and a NUL so that
/// `classifier stats` can tell which version the running agent is from its
/// executable (`/proc/PID/exe`), without talking to it.
#[used]
static EMBEDDED: &str = concat!(
    "\0classifier-build:",
    env!("CARGO_PKG_VERSION"),
    " commit ",
    env!("CLASSIFIER_GIT_COMMIT"),
    "\0"
);

/// The version embedded in the executable `bytes` ([`EMBEDDED`]), e.g.
/// `0.1.0 commit 0123456789ab`.
pub fn embedded_version(bytes: &[u8]) -> Option<String> {
    // Assembled at run time, so the needle itself is not in the binary.
    let needle: Vec<u8> = [&b"\0classifier"[..], &b"-build:"[..]].concat();
    let mut rest = bytes;
    while let Some(at) = rest
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
    {
        let tail = &rest[at + needle.len()..];
        let end = tail.iter().position(|&b| b == 0)?;
        let found = std::str::from_utf8(&tail[..end]).ok();
        // The needle's two halves may also sit side by side among the
        // binary's other constants (the linker packs literals), followed by
        // whatever literal comes next: only `VERSION commit COMMIT` counts.
        if let Some(v) = found.filter(|v| {
            v.starts_with(|c: char| c.is_ascii_digit()) && v.contains(" commit ") && v.len() < 100
        }) {
            return Some(v.to_owned());
        }
        rest = tail;
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_embedded_version() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(
            super::embedded_version(&exe),
            Some(format!("{} commit {}", super::VERSION, super::COMMIT))
        );
        assert_eq!(super::embedded_version(b"nothing here"), None);
    }
}
