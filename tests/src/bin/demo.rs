//! `cargo xtask demo`: the point of the project in one command.
//!
//! Sets up the end-to-end tests' world (`tests::e2e::World`): a "pod"
//! network namespace with linkerd-init's nat rules and the reference proxy
//! (`classifier proxy`, UID 2102), and a "server" namespace holding a real
//! MariaDB server. Runs the same `mariadb -e 'SELECT 1'` from the pod
//! without the classifier, then with the agent attached to the pod's
//! private cgroup, and prints both times. Everything it created is removed
//! at the end, on error, and on Ctrl-C.
//!
//! ```text
//! demo [--detect-timeout SECS]      (default 10, Linkerd's)
//! ```

#![deny(unsafe_code)]

use std::time::Duration;

use anyhow::{bail, Result};
use tests::e2e::{World, MARIADB};

fn main() {
    if let Err(err) = run() {
        eprintln!("demo: error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let detect_timeout = match args.iter().position(|a| a == "--detect-timeout") {
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(10),
        None => 10,
    };
    if !tests::sys::is_root() {
        bail!("the demo needs root (network namespaces, iptables, cgroups, eBPF): sudo -E cargo xtask demo");
    }
    if !tests::e2e::prerequisites("demo") {
        bail!("missing programs: apt-get install iproute2 iptables mariadb-server mariadb-client");
    }
    // Ctrl-C only sets a flag: the mariadb client (same process group)
    // gets the signal and exits, `run` returns, and the World's Drop
    // removes namespaces, cgroup, pins and processes.
    tests::sys::flag_on_signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    let interrupted = || -> Result<()> {
        if tests::sys::signalled() {
            bail!("interrupted (everything the demo created has been removed)");
        }
        Ok(())
    };

    eprintln!("demo: setting up the pod and server namespaces, MariaDB and the proxy");
    let mut world = World::with_detect_timeout("demo", Duration::from_secs(detect_timeout))?;
    interrupted()?;
    eprintln!(
        "demo: running `mariadb -h {MARIADB} -e 'SELECT 1'` in the pod, no classifier attached"
    );
    let without = world.mariadb_select_1();
    interrupted()?;
    let without = without?;
    eprintln!(
        "demo: took {:.2} s; attaching the classifier to the pod's cgroup",
        without.as_secs_f64()
    );
    world.sb.start_agent(&[])?;
    let with = world.mariadb_select_1()?;
    interrupted()?;

    let log = world.proxy_log();
    let logged = |needle: &str, what: &'static str| {
        if log.contains(needle) {
            what
        } else {
            "(not in the proxy log?)"
        }
    };
    println!();
    println!("MariaDB `SELECT 1` through a detecting proxy (--detect-timeout {detect_timeout}s; Linkerd's default is 10s)");
    println!();
    println!("  {:<22} {:>9}   proxy's decision", "", "time");
    println!(
        "  {:<22} {:>7.2} s   {}",
        "without the classifier",
        without.as_secs_f64(),
        logged(
            "protocol detection timed out",
            "detection timed out, then forwarded as opaque TCP"
        )
    );
    println!(
        "  {:<22} {:>7.2} s   {}",
        "with the classifier",
        with.as_secs_f64(),
        logged(
            "opaque from kernel verdict",
            "opaque from kernel verdict: forwarded at once"
        )
    );
    println!();
    println!("proxy log:");
    for line in log.lines().filter(|l| l.contains("dst=")) {
        println!("  {line}");
    }
    println!();
    eprintln!("demo: cleaning up");
    drop(world);
    eprintln!("demo: done");
    Ok(())
}
