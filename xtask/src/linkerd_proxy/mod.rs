//! `cargo xtask linkerd-proxy build | test | e2e`: the real linkerd2-proxy,
//! stock and with our patch series (`integrations/linkerd2-proxy/`), built
//! offline from the pinned upstream commits and tested end to end.
//!
//! `source` prepares the tree, `build` builds and tests it, `e2e` runs both
//! proxies against a real MariaDB server with the classifier attached.

mod build;
mod e2e;
mod source;

use std::path::PathBuf;

use anyhow::Result;

use crate::cargo::target_dir;
use crate::util::step;

/// Build, test and measure linkerd2-proxy with the classifier's patch series.
///
/// The sources are the commits pinned in integrations/linkerd2-proxy/UPSTREAM:
/// from --src DIR, else from ../shared/upstream/ when it holds their archives,
/// else cloned from github.com. They are unpacked under
/// target/linkerd2-proxy/src/ (a git repository with a `stock` and a `patched`
/// branch) and built with the installed stable toolchain and
/// RUSTFLAGS="--cfg tokio_unstable". The cargo target directory lives outside
/// the clone (--target-dir) so that later runs are incremental; a cold build
/// of one proxy takes about 4 minutes on 2 cores.
///
/// Examples: `cargo xtask linkerd-proxy build` (prints the two binaries),
/// `cargo xtask linkerd-proxy test`, `sudo -E cargo xtask linkerd-proxy e2e
/// --runs 5`. What the series changes: integrations/linkerd2-proxy/README.md.
#[derive(clap::Args)]
pub struct Options {
    #[command(subcommand)]
    command: Command,

    /// A directory with the pinned sources: the `git archive` tarballs
    /// (linkerd2-proxy-COMMIT.tar.gz, linkerd-kubert-COMMIT.tar.gz) or
    /// checkouts named linkerd2-proxy/ and linkerd-kubert/.
    #[arg(long, value_name = "DIR", global = true)]
    src: Option<PathBuf>,

    /// The proxy's cargo target directory, kept between runs
    /// [default: /var/cache/classifier/linkerd2-proxy/target as root,
    /// else ~/.cache/classifier/linkerd2-proxy/target].
    #[arg(
        long,
        value_name = "DIR",
        global = true,
        env = "CLASSIFIER_LINKERD_PROXY_TARGET_DIR"
    )]
    target_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Build the stock and the patched proxy of the pinned commit.
    ///
    /// Prints the paths of both binaries. Binaries whose inputs (commits,
    /// series, build recipe) did not change are reused without building.
    Build,
    /// Run the series' tests and upstream's tests of every crate it touches.
    Test,
    /// Stock versus patched proxy on real redirected sockets (root).
    ///
    /// A pod network namespace with linkerd-init's nat rules, the real
    /// proxy as UID 2102 with a small control plane whose policy for every
    /// address is Linkerd's fallback (`Detect`) except an HTTP server on an
    /// opaque port (6379), which first gets `Detect` with an HTTPRoute, a
    /// real MariaDB server in a second namespace and the classifier agent
    /// attached to the pod's cgroup. The patched proxy runs with
    /// LINKERD2_PROXY_OUTBOUND_OPAQUE_HINTS_ENABLED=true. Writes
    /// target/linkerd2-proxy/e2e.json and fails unless the stock proxy
    /// stalls for the detect timeout and the patched one does not; unless
    /// the HTTPRoute still applies on the opaque port (`routes_kept`) and
    /// the hint is used there under the fallback policy; unless HTTP/1 is
    /// still detected; and unless, with hints off or without the
    /// classifier, the patched proxy behaves like the stock one. Also
    /// measures the accept rate with hints on and off (`accept_rate`).
    E2e(e2e::Options),
}

pub fn linkerd_proxy(opts: Options) -> Result<()> {
    let (builder, work) = prepare(opts.src, opts.target_dir)?;
    match opts.command {
        Command::Build => {
            let proxies = builder.proxies()?;
            step!("stock:   {}", proxies.stock.display());
            step!("patched: {}", proxies.patched.display());
            println!("{}", proxies.stock.display());
            println!("{}", proxies.patched.display());
            Ok(())
        }
        Command::Test => builder.test(),
        Command::E2e(e2e_opts) => e2e::e2e(&builder, &work, e2e_opts),
    }
}

/// `cargo xtask test`'s share: the series' tests and, as root, the end to
/// end run, with the default sources and target directory.
pub fn test_all() -> Result<()> {
    let (builder, work) = prepare(None, None)?;
    builder.test()?;
    if crate::util::is_root() {
        e2e::e2e(&builder, &work, e2e::Options::default())?;
    }
    Ok(())
}

fn prepare(src: Option<PathBuf>, target: Option<PathBuf>) -> Result<(build::Builder, PathBuf)> {
    let upstream = source::Upstream::read()?;
    let origin = source::Origin::choose(src, &upstream)?;
    let work = target_dir().join("linkerd2-proxy");
    let tree = source::prepare(&work, &upstream, &origin)?;
    let target_dir = target.unwrap_or_else(default_target_dir);
    Ok((build::Builder::new(target_dir, tree, upstream), work))
}

fn default_target_dir() -> PathBuf {
    if crate::util::is_root() {
        return PathBuf::from("/var/cache/classifier/linkerd2-proxy/target");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    cache
        .join("classifier")
        .join("linkerd2-proxy")
        .join("target")
}
