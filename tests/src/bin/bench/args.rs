//! The command line: `bench [--quick] [--out DIR]`, and the plan of runs
//! it gives.

use std::path::PathBuf;

pub(crate) struct Args {
    pub(crate) quick: bool,
    /// Where results.json and results.md go.
    pub(crate) out: PathBuf,
    /// `--only NAME`: one scenario alone.
    pub(crate) only: Option<String>,
}

impl Args {
    pub(crate) fn parse(args: impl Iterator<Item = String>) -> Self {
        let args: Vec<String> = args.collect();
        let quick = args.iter().any(|a| a == "--quick");
        let out = args
            .iter()
            .position(|a| a == "--out")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/bench"));
        let only = args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1))
            .cloned();
        Args { quick, out, only }
    }
}

pub(crate) struct Plan {
    pub(crate) quick: bool,
    /// Connects per timed loop.
    pub(crate) iterations: u64,
    /// Interleaved repeats per comparison.
    pub(crate) repeats: usize,
    pub(crate) rule_counts: Vec<usize>,
}

impl Plan {
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Plan {
                quick,
                iterations: 5_000,
                repeats: 5,
                rule_counts: vec![0, 1_000, 10_000, 100_000],
            }
        } else {
            Plan {
                quick,
                iterations: 20_000,
                repeats: 15,
                rule_counts: vec![0, 1_000, 10_000, 100_000],
            }
        }
    }
}
