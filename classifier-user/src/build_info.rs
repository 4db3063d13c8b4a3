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
