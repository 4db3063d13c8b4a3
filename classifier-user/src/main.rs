//! The `classifier` command: the node agent, its stats, a policy explainer,
//! the reference proxy and `check`. See `classifier --help`; the clap
//! definitions are in `cli.rs`.

#![deny(unsafe_code)]

mod cli;

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, FromArgMatches as _};
use classifier_user::{
    agent::{self, AgentOptions},
    build_info, check,
    datapath::PinDir,
    learned,
    policy::{classify_from, Policy},
    proxy::{self, ProxyOptions},
    stats,
};
use cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    // `--version`: the version, git commit and map layout (build_info).
    let long_version: &'static str = Box::leak(build_info::long_version().into_boxed_str());
    let matches = Cli::command()
        .version(build_info::VERSION)
        .long_version(long_version)
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("classifier: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) => {
            let pins = PinDir::new(args.pins.pin_dir);
            if args.uninstall {
                return agent::uninstall(&pins);
            }
            tracing::info!(
                version = build_info::VERSION,
                commit = build_info::COMMIT,
                layout = build_info::LAYOUT,
                "classifier agent starting"
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(agent::run(AgentOptions {
                cgroup: args.cgroup,
                pins,
                policy: args.policy,
                watch_interval: Duration::from_secs_f64(args.watch_interval.max(0.05)),
                verdict_capacity: args.verdict_table_size,
                allow_untrusted_policy: args.allow_untrusted_policy,
                metrics_addr: args.metrics_addr,
                kubernetes: args.kubernetes,
                egress_namespace: args.egress_namespace,
                namespace_entry_budget: args.namespace_entry_budget,
            }))
        }
        Command::Stats(args) => {
            let pins = PinDir::new(args.pins.pin_dir);
            loop {
                let snapshot = stats::read_snapshot(&pins)?;
                if args.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&stats::render_json(&snapshot))?
                    );
                } else if args.prometheus {
                    print!("{}", stats::render_prometheus(&snapshot));
                } else {
                    print!("{}", stats::render_table(&snapshot));
                }
                match args.watch {
                    Some(secs) => {
                        std::thread::sleep(Duration::from_secs_f64(secs.max(0.1)));
                        if !args.json && !args.prometheus {
                            println!();
                        }
                    }
                    None => return Ok(()),
                }
            }
        }
        Command::Explain(args) => {
            let policy = match &args.policy {
                Some(path) => {
                    let opts = classifier_policy::sources::Options {
                        namespace_entry_budget: args.namespace_entry_budget,
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
                    compiled.policy
                }
                None => Policy::builtin_default(),
            };
            let decision = classify_from(
                &policy,
                args.from_namespace.as_deref(),
                args.destination.ip(),
                args.destination.port(),
            );
            // Learning: below every rule and default port.
            let pins = PinDir::new(args.pins.pin_dir.clone());
            let learned = if decision.source == classifier_user::policy::DecisionSource::None
                && learned::cli::installed(&pins)
            {
                learned::cli::explain(&pins, args.from_namespace.as_deref(), args.destination)
                    .ok()
                    .flatten()
            } else {
                None
            };
            if let Some(entry) = learned {
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "protocol": "opaque",
                            "source": "learned",
                            "rule_id": null,
                            "network": null,
                            "origin": null,
                            "scope": entry.namespace,
                            "observations": entry.observations,
                            "last_seen_unix": entry.last_seen_unix,
                        })
                    );
                } else {
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
                }
                return Ok(());
            }
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&decision.to_json()).context("encoding JSON")?
                );
            } else {
                let origin = args
                    .policy
                    .as_ref()
                    .map_or("built-in default policy".to_owned(), |p| {
                        p.display().to_string()
                    });
                println!("{} -> {}", args.destination, decision.protocol.as_str());
                println!("  because {}", decision.reason(&policy));
                if let Some(rule_origin) = decision.origin.as_deref().filter(|o| !o.is_empty()) {
                    println!("  from    {rule_origin}");
                }
                println!("  policy  {origin}");
            }
            Ok(())
        }
        Command::Learned(args) => {
            let pins = PinDir::new(args.pins.pin_dir);
            let entries = learned::cli::list(&pins)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&learned::cli::to_json(&entries))?
                );
            } else {
                print!("{}", learned::cli::render_table(&entries));
            }
            Ok(())
        }
        Command::Suggest(args) => {
            let pins = PinDir::new(args.pins.pin_dir);
            let entries = learned::cli::list(&pins)?;
            let format = match args.format {
                cli::SuggestFormat::Linkerd => learned::suggest::Format::Linkerd,
                cli::SuggestFormat::Istio => learned::suggest::Format::Istio,
                cli::SuggestFormat::Policy => learned::suggest::Format::Policy,
            };
            let mut documents = match &args.policy {
                Some(path) => Some(
                    classifier_policy::sources::DocumentSet::from_path(path)
                        .with_context(|| format!("reading the documents at {}", path.display()))?,
                ),
                None => None,
            };
            if args.kubernetes {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let mut live = runtime.block_on(async {
                    let client = classifier_user::sources::kubernetes::client().await?;
                    classifier_user::sources::kubernetes::list_once(client, Duration::from_secs(30))
                        .await
                })?;
                for doc in documents
                    .take()
                    .into_iter()
                    .flat_map(|set| set.docs.into_values())
                {
                    live.insert_shared(doc);
                }
                documents = Some(live);
            }
            print!(
                "{}",
                learned::suggest::render(format, &entries, documents.as_ref())?
            );
            Ok(())
        }
        Command::Check(args) => {
            let checks = check::run(&check::CheckOptions {
                pins: PinDir::new(args.pins.pin_dir),
                cgroup: args.cgroup,
                kubernetes: args.kubernetes,
            });
            if args.json {
                println!("{}", check::render_json(&checks)?);
            } else {
                print!("{}", check::render_text(&checks));
            }
            if checks.iter().any(|c| !c.ok) {
                // The report said which and why; only the status is left.
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Proxy(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(proxy::run(ProxyOptions {
                listen: args.listen,
                detect_timeout: Duration::from_secs_f64(args.detect_timeout.max(0.0)),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
        assert_eq!(
            super::cli::DEFAULT_PIN_DIR,
            classifier_user::datapath::pins::DEFAULT_PIN_DIR
        );
        assert_eq!(
            super::cli::DEFAULT_NAMESPACE_ENTRY_BUDGET,
            classifier_policy::sources::linkerd::DEFAULT_NAMESPACE_ENTRY_BUDGET
        );
    }
}
