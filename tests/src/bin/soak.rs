//! `cargo xtask soak`: the churn soak at full scale (see `tests::soak`):
//! prints its figures and exits non-zero if a check failed.
//!
//! ```text
//! soak [--short]
//! ```

#![deny(unsafe_code)]

use tests::soak::{run_soak, Scale};

fn main() {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("soak [--short]: a year of churn on a large node, compressed (root; its own cgroup, pins and network namespaces)");
        return;
    }
    let short = std::env::args().any(|a| a == "--short");
    if !tests::sys::is_root() {
        eprintln!("soak: needs root (BPF, cgroups, network namespaces)");
        std::process::exit(2);
    }
    let scale = if short { Scale::short() } else { Scale::full() };
    match run_soak(&scale, |line| eprintln!("soak: {line}")) {
        Ok(report) => {
            print!("{}", report.render());
            if !report.failures.is_empty() {
                std::process::exit(1);
            }
        }
        Err(err) => {
            eprintln!("soak: error: {err:#}");
            std::process::exit(1);
        }
    }
}
