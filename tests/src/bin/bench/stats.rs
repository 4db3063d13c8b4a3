//! Statistics over timed samples: median and quartiles, A/B runs
//! interleaved so neither side always runs warm, and per-repeat ratios.

use anyhow::Result;
use serde_json::{json, Value};

#[derive(Clone, Copy)]
pub(crate) struct Summary {
    pub(crate) median: f64,
    pub(crate) p25: f64,
    pub(crate) p75: f64,
}

pub(crate) fn summarize(samples: &[f64]) -> Summary {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    Summary {
        median: at(0.5),
        p25: at(0.25),
        p75: at(0.75),
    }
}

pub(crate) fn summary_json(s: Summary) -> Value {
    json!({ "median": s.median, "p25": s.p25, "p75": s.p75 })
}

/// Runs `a` and `b` alternately `repeats` times.
pub(crate) fn interleave(
    repeats: usize,
    label: &str,
    mut a: impl FnMut() -> Result<f64>,
    mut b: impl FnMut() -> Result<f64>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for i in 0..repeats {
        eprint!("\rbench:   {label}: repeat {}/{repeats}   ", i + 1);
        // Alternate which goes first, so neither always runs warm.
        if i % 2 == 0 {
            xs.push(a()?);
            ys.push(b()?);
        } else {
            ys.push(b()?);
            xs.push(a()?);
        }
    }
    eprintln!();
    Ok((xs, ys))
}

/// Per-repeat ratios a/b, paired by repeat: robust to machine-wide drift.
pub(crate) fn ratio(a: &[f64], b: &[f64]) -> Summary {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    summarize(&r)
}
