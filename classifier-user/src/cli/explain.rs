//! `classifier explain`: the protocol a destination gets, and why: the
//! policy's reference semantics, then the live learned table below them.

use std::path::Path;

use anyhow::{Context as _, Result};
use classifier_common::Source;
use classifier_policy::{sources, Decision, Policy, Protocol};
use classifier_user::{
    datapath::PinDir,
    learned::{self, LearnedDestination},
    policy::classify_from,
};
use serde::Serialize;

use super::args::ExplainArgs;

pub fn run(args: ExplainArgs) -> Result<()> {
    let policy = match &args.policy {
        Some(path) => load(path, args.namespace_entry_budget)?,
        None => Policy::builtin_default(),
    };
    let decision = classify_from(
        &policy,
        args.from_namespace.as_deref(),
        args.destination.ip(),
        args.destination.port(),
    );
    // Learning comes below every rule and default port.
    let pins = PinDir::new(args.pins.pin_dir.clone());
    let learned = if decision.source == Source::None && learned::cli::installed(&pins) {
        learned::cli::explain(&pins, args.from_namespace.as_deref(), args.destination)
            .ok()
            .flatten()
    } else {
        None
    };
    match learned {
        Some(entry) => print_learned(&args, &pins, decision, &entry),
        None => print_decision(&args, &policy, &decision),
    }
}

/// The policy at `path`, saying on stderr which objects it skipped.
fn load(path: &Path, namespace_entry_budget: u64) -> Result<Policy> {
    let opts = sources::Options {
        namespace_entry_budget,
        ..Default::default()
    };
    let compiled = classifier_policy::load_policy_path_report(path, &opts)?;
    for r in &compiled.rejected {
        eprintln!(
            "skipped {} {}{} (document {}): {}",
            r.kind,
            r.namespace
                .as_deref()
                .map_or(String::new(), |n| format!("{n}/")),
            r.name,
            r.origin,
            r.error
        );
    }
    Ok(compiled.policy)
}

fn print_decision(args: &ExplainArgs, policy: &Policy, decision: &Decision) -> Result<()> {
    if args.json {
        println!(
            "{}",
            serde_json::to_string(decision).context("encoding JSON")?
        );
        return Ok(());
    }
    let origin = args
        .policy
        .as_ref()
        .map_or("built-in default policy".to_owned(), |p| {
            p.display().to_string()
        });
    println!("{} -> {}", args.destination, decision.protocol.as_str());
    println!("  because {}", decision.reason(policy));
    if let Some(rule_origin) = decision.origin.as_deref().filter(|o| !o.is_empty()) {
        println!("  from    {rule_origin}");
    }
    println!("  policy  {origin}");
    Ok(())
}

/// A learned destination: the decision's fields plus what was observed.
#[derive(Serialize)]
struct LearnedDecision {
    #[serde(flatten)]
    decision: Decision,
    observations: u32,
    last_seen_unix: u64,
}

fn print_learned(
    args: &ExplainArgs,
    pins: &PinDir,
    decision: Decision,
    entry: &LearnedDestination,
) -> Result<()> {
    if args.json {
        let learned = LearnedDecision {
            decision: Decision {
                protocol: Protocol::Opaque,
                source: Source::Learned,
                rule: None,
                origin: None,
                scope: entry.namespace.clone(),
                ..decision
            },
            observations: entry.observations,
            last_seen_unix: entry.last_seen_unix,
        };
        println!(
            "{}",
            serde_json::to_string(&learned).context("encoding JSON")?
        );
        return Ok(());
    }
    println!("{} -> opaque", args.destination);
    println!(
        "  because the classifier learned it is server-first ({} observations, {})",
        entry.observations,
        entry.scope_label()
    );
    println!(
        "  from    the live learned table at {}",
        pins.root().display()
    );
    Ok(())
}
