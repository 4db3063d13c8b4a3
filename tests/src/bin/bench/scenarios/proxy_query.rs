//! Scenario 7: what the proxy's extra `getsockopt(0xC1A5, 1)` costs per
//! accepted connection (the linkerd2-proxy patch series makes one, next to
//! `SO_ORIGINAL_DST`): the call on an accepted socket in a cgroup where the
//! classifier answers (a classified destination, and one without a verdict)
//! against one where nothing is attached (the kernel refuses the option, as
//! on a node without the classifier). A stock proxy makes no such call.

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use tests::{run, Sandbox};

use crate::{
    args::Plan,
    stats::{interleave, summarize, summary_json},
};

fn query_loop(sb: &Sandbox, addr: &str, queries: u64) -> Result<(f64, String)> {
    let n = queries.to_string();
    let out = run(&mut sb.probe(&["query-loop", addr, &n], None))?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["ns_per_query"].as_f64().context("probe output")?,
        v["answer"].as_str().unwrap_or("").to_owned(),
    ))
}

pub(crate) fn proxy_query(plan: &Plan, attached: &Sandbox, bare: &Sandbox) -> Result<Value> {
    let queries = plan.iterations * 10;
    let mut out = json!({"queries_per_loop": queries});
    for (name, addr) in [
        ("classified_v4", "127.0.0.1:3306"),
        ("no_verdict_v4", "127.0.0.1:8080"),
    ] {
        let mut answers = (String::new(), String::new());
        let (a, b) = interleave(
            plan.repeats,
            name,
            || {
                let (ns, answer) = query_loop(attached, addr, queries)?;
                answers.0 = answer;
                Ok(ns)
            },
            || {
                let (ns, answer) = query_loop(bare, addr, queries)?;
                answers.1 = answer;
                Ok(ns)
            },
        )?;
        let (sa, sb) = (summarize(&a), summarize(&b));
        out[name] = json!({
            "addr": addr,
            "with_classifier_ns": summary_json(sa),
            "with_classifier_answer": answers.0,
            "without_classifier_ns": summary_json(sb),
            "without_classifier_answer": answers.1,
        });
    }
    Ok(out)
}
