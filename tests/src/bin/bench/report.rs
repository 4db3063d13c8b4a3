//! The report: the machine the numbers come from, and results.json
//! rendered as the Markdown tables of docs/src/benchmarks.md.

use std::{fmt::Write as _, fs};

use serde_json::{json, Value};

pub(crate) fn machine() -> Value {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    json!({ "cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "kernel": kernel })
}

pub(crate) fn render_markdown(r: &Value) -> String {
    let mut md = String::new();
    header(&mut md, r);
    connect_overhead(&mut md, r);
    program_run_time(&mut md, r);
    program_cost(&mut md, r);
    policy_scale(&mut md, r);
    kubernetes_scale(&mut md, r);
    stats_footprint_stall(&mut md, r);
    proxy_query(&mut md, r);
    learning(&mut md, r);
    pod_registration(&mut md, r);
    md
}

/// Machine and run settings.
fn header(md: &mut String, r: &Value) {
    let m = &r["machine"];
    let _ = writeln!(
        md,
        "Machine: {} ({} cores), kernel {}. {} connects per loop, {} interleaved repeats{}.\n",
        m["cpu"].as_str().unwrap_or(""),
        m["cores"],
        m["kernel"].as_str().unwrap_or(""),
        r["iterations_per_loop"],
        r["repeats"],
        if r["quick"] == true { " (--quick)" } else { "" }
    );
}

/// Connect overhead with and without the classifier.
fn connect_overhead(md: &mut String, r: &Value) {
    let _ = writeln!(
        md,
        "### Connect overhead (connect + accept + close on loopback)\n"
    );
    let _ = writeln!(
        md,
        "| destination | with classifier ns | without ns | added ns | ratio (median, p25-p75) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    if let Some(rows) = r["connect_overhead"].as_object() {
        for (name, v) in rows {
            let _ = writeln!(
                md,
                "| {name} `{}` | {:.0} | {:.0} | {:.0} | {:.3} ({:.3}-{:.3}) |",
                v["addr"].as_str().unwrap_or(""),
                f(&v["with_ns"]["median"]),
                f(&v["without_ns"]["median"]),
                f(&v["added_ns"]),
                f(&v["ratio"]["median"]),
                f(&v["ratio"]["p25"]),
                f(&v["ratio"]["p75"])
            );
        }
    }
}

/// Kernel-measured run time per program invocation.
fn program_run_time(md: &mut String, r: &Value) {
    let _ = writeln!(
        md,
        "\nKernel-measured run time per program invocation (`run_time_ns / run_cnt`):\n"
    );
    let _ = writeln!(md, "| program | runs | ns per run |");
    let _ = writeln!(md, "|---|---:|---:|");
    if let Some(rows) = r["program_run_time"].as_object() {
        for (name, v) in rows {
            let _ = writeln!(
                md,
                "| {name} | {} | {:.0} |",
                v["run_cnt"],
                f(&v["ns_per_run"])
            );
        }
    }
}

/// Each program's kernel cost per connect, by destination.
fn program_cost(md: &mut String, r: &Value) {
    let _ = writeln!(
        md,
        "\nPer connect + accept + close, by destination (kernel figures, stats on): invocations x ns per run = ns\n"
    );
    let _ = writeln!(
        md,
        "| destination | connect4/6 | sockops | getsockopt | total ns |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    if let Some(rows) = r["program_cost_per_connect"].as_object() {
        for (name, v) in rows {
            let cell = |p: &str| {
                let x = &v[p];
                format!(
                    "{:.2} x {:.0} = {:.0}",
                    f(&x["runs_per_connect"]),
                    f(&x["ns_per_run"]),
                    f(&x["ns_per_connect"])
                )
            };
            let connect = if v["addr"].as_str().is_some_and(|a| a.starts_with('[')) {
                "classify_connect6"
            } else {
                "classify_connect4"
            };
            let total: f64 = [
                "classify_connect4",
                "classify_connect6",
                "publish_sockops",
                "answer_getsockopt",
            ]
            .iter()
            .map(|p| f(&v[*p]["ns_per_connect"]))
            .sum();
            let _ = writeln!(
                md,
                "| {name} `{}` | {} | {} | {} | {:.0} |",
                v["addr"].as_str().unwrap_or(""),
                cell(connect),
                cell("publish_sockops"),
                cell("answer_getsockopt"),
                total
            );
        }
    }
}

/// Policy scale, and a one-rule change.
fn policy_scale(md: &mut String, r: &Value) {
    let _ = writeln!(
        md,
        "\n### Policy scale (random v4/v6 networks, 2 ports each)\n"
    );
    let _ = writeln!(md, "| rules | trie entries v4 + v6 | compile ms | apply in full ms | ns/connect with | ratio | ratio vs 0 rules |");
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|");
    if let Some(rows) = r["policy_scale"]["rows"].as_array() {
        for v in rows {
            let _ = writeln!(
                md,
                "| {} | {} + {} | {:.1} | {:.1} | {:.0} | {:.3} | {:.3} |",
                v["rules"],
                v["v4_entries"],
                v["v6_entries"],
                f(&v["compile_ms"]),
                f(&v["apply_full_ms"]),
                f(&v["with_ns"]["median"]),
                f(&v["ratio"]["median"]),
                f(&v["ratio_vs_0_rules"])
            );
        }
    }
    let c = &r["policy_scale"]["one_rule_change"];
    let _ = writeln!(md, "\nOne-rule change to the {}-rule policy: apply {:.2} ms median ({} map writes), compile {:.1} ms median.",
        c["rules"], f(&c["apply_ms"]["median"]), c["map_writes"], f(&c["compile_ms"]["median"]));
}

/// Kubernetes objects at scale.
fn kubernetes_scale(md: &mut String, r: &Value) {
    let _ = writeln!(md, "\n### Kubernetes objects at scale\n\n100 Namespaces, 100 Servers, 10,000 Services and the Pods below, as the API server sends them, read by the agent's conversion; memory is what the allocator holds for each structure.\n\n| pods | rules | trie entries | read objects ms | documents to policy ms | compile ms | apply ms | held: documents MiB | policy MiB | compiled MiB | at most, recompiling MiB | one pod changed, end to end ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for size in ["pods_50k", "pods_100k"] {
        let k = &r["kubernetes_scale"][size];
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            k["pods"],
            k["rules"],
            f(&k["v4_entries"]) + f(&k["v6_entries"]),
            f(&k["read_objects_ms"]),
            f(&k["documents_to_policy_ms"]),
            f(&k["compile_ms"]),
            f(&k["apply_full_ms"]),
            f(&k["documents_mib"]),
            f(&k["policy_mib"]),
            f(&k["compiled_mib"]),
            f(&k["peak_while_recompiling_mib"]),
            f(&k["one_pod_end_to_end_ms"])
        );
    }
}

/// Stats at scale, the agent's footprint, and the stall it removes.
fn stats_footprint_stall(md: &mut String, r: &Value) {
    let s = &r["stats_at_scale"];
    let _ = writeln!(md, "\n### Stats at scale\n\n`classifier stats --json` with {} verdict entries: {:.0} ms median (p25-p75 {:.0}-{:.0}).",
        s["entries"], f(&s["stats_json_ms"]["median"]), f(&s["stats_json_ms"]["p25"]), f(&s["stats_json_ms"]["p75"]));

    let _ = writeln!(
        md,
        "\n### Agent footprint\n\n| policy | agent RSS MiB | map memory MiB |\n|---|---:|---:|"
    );
    if let Some(rows) = r["footprint"].as_object() {
        for (name, v) in rows {
            let _ = writeln!(
                md,
                "| {name} | {:.1} | {:.1} |",
                f(&v["agent_rss_kib"]) / 1024.0,
                f(&v["map_memory_bytes"]) / 1048576.0
            );
        }
    }
    let _ = writeln!(
        md,
        "\n### The stall it removes\n\n{}",
        stall_markdown(&r["stall"])
    );
}

/// The proxy's query per accepted connection.
fn proxy_query(md: &mut String, r: &Value) {
    let q = &r["proxy_query"];
    let _ = writeln!(
        md,
        "\n### The proxy's query per accepted connection\n\n`getsockopt(0xC1A5, 1)` (32 bytes) on an accepted socket, {} calls per loop, ns per call (median, p25-p75):\n\n| destination | classifier attached | answer | nothing attached | answer |\n|---|---:|---|---:|---|",
        q["queries_per_loop"]
    );
    for name in ["classified_v4", "no_verdict_v4"] {
        let v = &q[name];
        let _ = writeln!(
            md,
            "| {name} `{}` | {:.0} ({:.0}-{:.0}) | {} | {:.0} ({:.0}-{:.0}) | {} |",
            v["addr"].as_str().unwrap_or(""),
            f(&v["with_classifier_ns"]["median"]),
            f(&v["with_classifier_ns"]["p25"]),
            f(&v["with_classifier_ns"]["p75"]),
            v["with_classifier_answer"].as_str().unwrap_or(""),
            f(&v["without_classifier_ns"]["median"]),
            f(&v["without_classifier_ns"]["p25"]),
            f(&v["without_classifier_ns"]["p75"]),
            v["without_classifier_answer"].as_str().unwrap_or(""),
        );
    }
}

/// Learning's cost on a connection without a verdict (when measured).
fn learning(md: &mut String, r: &Value) {
    let l = &r["learning"];
    if l.is_object() {
        let _ = writeln!(
            md,
            "\n### Learning: a connection without a verdict\n\nAttached sandbox with learning on (the default) vs no classifier, to `{}` (no rule, not a default port), median (p25-p75):\n\n| loop | with learning ns | no classifier ns | ratio |\n|---|---:|---:|---:|",
            l["connect_no_verdict"]["addr"].as_str().unwrap_or("")
        );
        for (name, label) in [
            ("connect_no_verdict", "connect + accept + close"),
            (
                "transfer_1mib",
                "connect + 1 MiB client-first transfer + close",
            ),
        ] {
            let v = &l[name];
            let _ = writeln!(
                md,
                "| {label} | {:.0} ({:.0}-{:.0}) | {:.0} ({:.0}-{:.0}) | {:.3} ({:.3}-{:.3}) |",
                f(&v["with_ns"]["median"]),
                f(&v["with_ns"]["p25"]),
                f(&v["with_ns"]["p75"]),
                f(&v["without_ns"]["median"]),
                f(&v["without_ns"]["p25"]),
                f(&v["without_ns"]["p75"]),
                f(&v["ratio"]["median"]),
                f(&v["ratio"]["p25"]),
                f(&v["ratio"]["p75"]),
            );
        }
    }
}

/// Pod cgroup registration times (when measured).
fn pod_registration(md: &mut String, r: &Value) {
    let p = &r["pod_registration"];
    if p.is_object() {
        let _ = writeln!(
            md,
            "\n### New pods: a pod cgroup to its namespace scope\n\nA real agent watching the kubepods tree (inotify); {} pod cgroups created one at a time, each timed from mkdir to its `CLS_SCOPES` entry, then removed, timed to the entry's removal. Until registered, a pod gets no verdict under namespace-scoped rules.\n\n| | median ms (p25-p75) | max ms |\n|---|---:|---:|",
            p["pods"]
        );
        for (name, label) in [
            ("registered", "mkdir -> registered"),
            ("unregistered", "rmdir -> unregistered"),
        ] {
            let v = &p[format!("{name}_ms")];
            let _ = writeln!(
                md,
                "| {label} | {:.3} ({:.3}-{:.3}) | {:.3} |",
                f(&v["median"]),
                f(&v["p25"]),
                f(&v["p75"]),
                f(&p[format!("{name}_max_ms")]),
            );
        }
    }
}

fn stall_markdown(v: &Value) -> String {
    match v["rows"].as_array() {
        None => v["status"].as_str().unwrap_or("not measured").to_owned(),
        Some(rows) => {
            let mut md = String::from(
                "| path | time to server greeting ms (median, p25-p75) | runs |\n|---|---:|---:|\n",
            );
            for row in rows {
                let _ = writeln!(
                    md,
                    "| {} | {:.2} ({:.2}-{:.2}) | {} |",
                    row["path"].as_str().unwrap_or(""),
                    f(&row["ms"]["median"]),
                    f(&row["ms"]["p25"]),
                    f(&row["ms"]["p75"]),
                    row["runs"]
                );
            }
            let _ = writeln!(
                md,
                "\nThe classified path adds {:.2} ms (median) over a direct connection.",
                f(&v["with_minus_direct_ms"])
            );
            md
        }
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}
