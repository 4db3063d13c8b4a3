//! Developer tasks for the classifier workspace: `cargo xtask <command>`.
//!
//! The alias lives in `.cargo/config.toml` (`xtask = "run --package xtask --"`).

mod cargo;
mod manifests;
mod prereqs;
mod util;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{self, Command};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::util::{find_on_path, in_ci, is_root, run_checked, step, Failed};

/// Developer tasks for the eBPF TCP traffic classifier.
///
/// Every command first checks prerequisites and installs what it can: the
/// `nightly` toolchain must exist (install it yourself with
/// `rustup toolchain install nightly`); its `rust-src` component and
/// `bpf-linker` 0.10.0 are installed automatically when missing.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the classifier (eBPF program + userspace binary).
    ///
    /// Runs `cargo build --release -p classifier-user`; its build script
    /// compiles the eBPF crate with nightly via aya-build and embeds the
    /// object. Prints the path of the binary (target/release/classifier).
    /// Does not need root.
    Build {
        /// Build the debug profile instead (binary in target/debug/classifier).
        #[arg(long)]
        debug: bool,
    },
    /// Build, then run `classifier agent [AGENT_ARGS...]` as root.
    ///
    /// Loading and attaching eBPF programs needs root (CAP_BPF and
    /// CAP_NET_ADMIN). If you are not root, the agent is started through
    /// `sudo -E`; without sudo the command fails. Ctrl-C stops the agent.
    /// Example: `cargo xtask run -- --help`
    Run {
        /// Arguments passed to `classifier agent` (put them after `--`).
        #[arg(last = true, value_name = "AGENT_ARGS")]
        agent_args: Vec<String>,
    },
    /// Build the release binary, then run the whole test suite.
    ///
    /// Runs `cargo test --workspace --release` with CLASSIFIER_BIN set to the
    /// absolute path of target/release/classifier and at most 2 test threads.
    /// The privileged integration tests (package `tests`) need root: as a
    /// normal user they skip themselves, but with CI=true not being root is
    /// an error. Example: `cargo xtask test -- -p tests -- --nocapture`
    Test {
        /// Arguments passed to `cargo test` (after `--`); a further `--`
        /// separates arguments for the test binaries.
        #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
        cargo_test_args: Vec<String>,
    },
    /// Build, then show the stall the classifier removes, with real MariaDB.
    ///
    /// Sets up a "pod" network namespace (linkerd-init style nat rules, the
    /// reference `classifier proxy` as UID 2102) and a "server" namespace with
    /// a MariaDB server, runs the same `mariadb -e 'SELECT 1'` without and
    /// with the classifier agent (on a private cgroup), and prints both times.
    /// Needs root and the Debian packages mariadb-server, mariadb-client,
    /// iptables. Removes everything it created, also on Ctrl-C.
    Demo {
        /// The proxy's protocol detection timeout in seconds (Linkerd's default).
        #[arg(long, value_name = "SECS", default_value_t = 10)]
        detect_timeout: u64,
    },
    /// Build, then measure what the classifier costs and what it saves.
    ///
    /// Connect overhead with and without the programs (interleaved, as
    /// ratios), per-program kernel run time, policy scale up to 100k rules,
    /// stats with a full verdict table, agent memory, and the MariaDB stall
    /// through the reference proxy. Needs root; creates and removes its own
    /// cgroups, namespaces and pins. Writes target/bench/results.json and
    /// results.md. A full run takes about 3 minutes; --quick under 2.
    Bench {
        /// Fewer iterations and repeats, for use while developing.
        #[arg(long)]
        quick: bool,
    },
    /// Render the Kubernetes manifests from deploy/templates/.
    ///
    /// The image and the agent's flags are set in one place
    /// (xtask/src/manifests.rs). Without options, rewrites the committed
    /// deploy/*.yaml with the default image. With --image and no --out,
    /// prints every manifest as one YAML stream (`... | kubectl apply -f -`).
    /// Does not need root or a cluster.
    /// Example: `cargo xtask manifests --image registry.example/classifier:0.1.0 --out /tmp/k8s`
    Manifests {
        /// Container image for the DaemonSet [default: classifier:VERSION].
        #[arg(long, value_name = "IMAGE:TAG")]
        image: Option<String>,
        /// Write the rendered manifests into DIR instead.
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
        /// Only check that the committed deploy/*.yaml are up to date (exit 1 if not).
        #[arg(long, conflicts_with_all = ["image", "out"])]
        check: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Build { debug } => build(debug),
        Cmd::Run { agent_args } => run(&agent_args),
        Cmd::Test { cargo_test_args } => test(&cargo_test_args),
        Cmd::Demo { detect_timeout } => demo(detect_timeout),
        Cmd::Bench { quick } => bench(quick),
        Cmd::Manifests { image, out, check } => render_manifests(image, out, check),
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        let code = err.downcast_ref::<Failed>().map(|f| f.code).unwrap_or(1);
        process::exit(if code == 0 { 1 } else { code });
    }
}

fn build(debug: bool) -> Result<()> {
    prereqs::ensure()?;
    let bin = cargo::build_classifier(!debug)?;
    step!("built {}", bin.display());
    println!("{}", bin.display());
    Ok(())
}

fn run(agent_args: &[String]) -> Result<()> {
    prereqs::ensure()?;
    let bin = cargo::build_classifier(true)?;
    step!("built {}", bin.display());

    let mut cmd = if is_root() {
        let mut c = Command::new(&bin);
        c.arg("agent");
        c
    } else if let Some(sudo) = find_on_path("sudo") {
        step!("not root: running the agent through sudo -E (loading eBPF needs root)");
        let mut c = Command::new(sudo);
        c.arg("-E").arg(&bin).arg("agent");
        c
    } else {
        bail!(
            "the agent needs root to load eBPF programs and sudo is not installed; \
             rerun as root: {} agent ...",
            bin.display()
        );
    };
    cmd.args(agent_args);
    step!("exec {}", show(&cmd));
    // Replace this process: signals (Ctrl-C, SIGTERM) reach the agent (or
    // sudo, which relays them) directly and its exit code becomes ours.
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not exec {}", show(&cmd)))
}

fn demo(detect_timeout: u64) -> Result<()> {
    if !is_root() {
        bail!("the demo needs root (network namespaces, iptables, cgroups, eBPF): sudo -E cargo xtask demo");
    }
    prereqs::ensure()?;
    let bin = cargo::build_classifier(true)?;
    step!("built {}", bin.display());
    // The demo shares the end-to-end tests' set-up code (tests::e2e).
    run_checked(
        cargo::cargo().args([
            "build",
            "--release",
            "-p",
            "tests",
            "--bin",
            "demo",
            "--bin",
            "probe",
        ]),
        "building the demo",
    )?;
    let mut cmd = Command::new(cargo::target_dir().join("release").join("demo"));
    cmd.arg("--detect-timeout")
        .arg(detect_timeout.to_string())
        .env("CLASSIFIER_BIN", &bin);
    run_checked(&mut cmd, "the demo")
}

fn render_manifests(
    image: Option<String>,
    out: Option<std::path::PathBuf>,
    check: bool,
) -> Result<()> {
    if check {
        let stale = manifests::stale().map_err(anyhow::Error::msg)?;
        if !stale.is_empty() {
            bail!(
                "deploy/{} out of date with deploy/templates: run `cargo xtask manifests`",
                stale.join(", deploy/")
            );
        }
        step!("deploy/*.yaml are up to date");
        return Ok(());
    }
    let image_given = image.is_some();
    let image = image.unwrap_or_else(|| manifests::DEFAULT_IMAGE.to_owned());
    if image.trim().is_empty() || image.contains(char::is_whitespace) {
        bail!("--image {image:?}: not an image reference");
    }
    let dir = match out {
        Some(dir) => dir,
        None if image_given => {
            print!("{}", manifests::stream(&image).map_err(anyhow::Error::msg)?);
            return Ok(());
        }
        None => manifests::deploy_dir(),
    };
    for path in manifests::write_all(&image, &dir).map_err(anyhow::Error::msg)? {
        step!("wrote {}", path.display());
    }
    Ok(())
}

fn bench(quick: bool) -> Result<()> {
    if !is_root() {
        bail!("benchmarks attach eBPF programs and create cgroups and namespaces: run as root (sudo -E cargo xtask bench)");
    }
    prereqs::ensure()?;
    let bin = cargo::build_classifier(true)?;
    step!("built {}", bin.display());
    run_checked(
        cargo::cargo().args(["build", "--release", "-p", "tests", "--bins"]),
        "building the benchmark",
    )?;
    let out_dir = cargo::target_dir().join("bench");
    let mut cmd = Command::new(cargo::target_dir().join("release").join("bench"));
    if quick {
        cmd.arg("--quick");
    }
    cmd.arg("--out").arg(&out_dir).env("CLASSIFIER_BIN", &bin);
    step!("{}", show(&cmd));
    run_checked(&mut cmd, "the benchmark")
}

fn test(user_args: &[String]) -> Result<()> {
    let root = is_root();
    if !root {
        if in_ci() {
            bail!(
                "CI=true but not running as root: the privileged integration tests \
                 (package `tests`) would skip themselves; run the CI as root"
            );
        }
        step!(
            "not root: privileged integration tests (package `tests`) will skip themselves; \
             run as root (e.g. `sudo -E cargo xtask test`) to run them"
        );
    }
    prereqs::ensure()?;
    let bin = cargo::build_classifier(true)?;
    step!("built {}", bin.display());

    let (cargo_args, harness_args) = split_test_args(user_args);
    let mut cmd = cargo::cargo();
    cmd.args(["test", "--workspace", "--release"])
        // Only builds for bpfel-unknown-none with nightly; classifier-user's
        // build script already compiled it.
        .args(["--exclude", "classifier-ebpf"])
        .args(&cargo_args)
        .arg("--")
        .args(&harness_args)
        .env("CLASSIFIER_BIN", &bin);
    step!("CLASSIFIER_BIN={} {}", bin.display(), show(&cmd));
    run_checked(&mut cmd, "cargo test")?;
    step!("tests passed");
    Ok(())
}

/// Maximum number of test threads: integration tests share the kernel's
/// cgroups, iptables and ports, so keep parallelism low.
const MAX_TEST_THREADS: usize = 2;

/// Split `cargo test` args at the first `--` into (cargo args, harness args)
/// and make sure the harness runs with at most [`MAX_TEST_THREADS`] threads.
fn split_test_args(args: &[String]) -> (Vec<String>, Vec<String>) {
    let (cargo_args, rest) = match args.iter().position(|a| a == "--") {
        Some(i) => (args[..i].to_vec(), args[i + 1..].to_vec()),
        None => (args.to_vec(), Vec::new()),
    };
    let mut harness = Vec::with_capacity(rest.len() + 1);
    let mut threads: Option<usize> = None;
    let mut iter = rest.into_iter();
    while let Some(arg) = iter.next() {
        if let Some(n) = arg.strip_prefix("--test-threads=") {
            threads = n.parse().ok();
        } else if arg == "--test-threads" {
            threads = iter.next().and_then(|n| n.parse().ok());
        } else {
            harness.push(arg);
        }
    }
    let n = threads
        .filter(|&n| n > 0)
        .unwrap_or(MAX_TEST_THREADS)
        .min(MAX_TEST_THREADS);
    harness.insert(0, format!("--test-threads={n}"));
    (cargo_args, harness)
}

/// Render a command for log lines.
fn show(cmd: &Command) -> String {
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

#[cfg(test)]
mod tests {
    use super::split_test_args;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn default_threads() {
        let (c, h) = split_test_args(&s(&["-p", "tests"]));
        assert_eq!(c, s(&["-p", "tests"]));
        assert_eq!(h, s(&["--test-threads=2"]));
    }

    #[test]
    fn clamps_and_keeps_harness_args() {
        let (c, h) = split_test_args(&s(&["--", "--nocapture", "--test-threads", "8", "foo"]));
        assert!(c.is_empty());
        assert_eq!(h, s(&["--test-threads=2", "--nocapture", "foo"]));
        let (_, h) = split_test_args(&s(&["--", "--test-threads=1"]));
        assert_eq!(h, s(&["--test-threads=1"]));
    }
}
