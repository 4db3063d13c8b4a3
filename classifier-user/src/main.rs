//! The `classifier` command: the node agent, its stats, and a policy
//! explainer. See `classifier --help`.

#![deny(unsafe_code)]

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use classifier_user::{
    agent::{self, AgentOptions},
    datapath::{pins::DEFAULT_PIN_DIR, PinDir},
    policy::{classify_from, Policy},
    proxy::{self, ProxyOptions},
    stats,
};

#[derive(Parser)]
#[command(
    name = "classifier",
    version,
    about = "Classifies every TCP connect() in the kernel so a sidecar proxy can skip protocol detection for server-speaks-first protocols",
    long_about = "Classifies every TCP connect() in the kernel so a sidecar proxy can skip \
protocol detection for server-speaks-first protocols (MySQL, SMTP, NATS, ...), which \
otherwise stall until the proxy's detection timeout.\n\n\
Typical use, as root:\n  classifier agent                       # attach, apply the built-in policy, watch\n  \
classifier stats                       # what the kernel side has seen\n  \
classifier explain 203.0.113.9:3306    # what the policy says about a destination"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the classifier (or adopt the one already attached) and keep its policy current.
    ///
    /// Needs root. The programs and maps are pinned under --pin-dir, so they stay attached
    /// when the agent stops or restarts; a restarted agent adopts them without a gap.
    /// `--uninstall` detaches everything and removes the pins.
    Agent(AgentArgs),
    /// Show what the kernel side has seen, from the pinned maps (agent need not run; needs root).
    Stats(StatsArgs),
    /// Show what the policy decides for a destination, and why (no root or agent needed).
    Explain(ExplainArgs),
    /// Run the reference outbound proxy: the model for adopting the query contract.
    ///
    /// Accepts connections REDIRECTed to it (linkerd-init style), reads SO_ORIGINAL_DST and
    /// asks the kernel for the verdict. Opaque: forwards at once. Otherwise: waits up to
    /// --detect-timeout for the client's first bytes to detect HTTP/1 or HTTP/2, then
    /// forwards (as opaque TCP on timeout). Run it as the UID the nat rules return (2102).
    Proxy(ProxyArgs),
}

#[derive(Args)]
struct PinArgs {
    /// bpffs directory holding the classifier's pinned maps and links.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

#[derive(Args)]
struct AgentArgs {
    #[command(flatten)]
    pins: PinArgs,
    /// cgroup v2 directory to attach to [default: the cgroup v2 root from /proc/self/mountinfo].
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Policy: a ClassifierPolicy YAML file, or a file or directory of Kubernetes manifests
    /// (ClassifierPolicy, EgressNetwork, Service, Pod, Namespace, Server), compiled with
    /// Linkerd's semantics. Watched, and re-applied atomically when it changes. Without it
    /// (and without --kubernetes): Linkerd's default opaque ports, UID 2102 (the proxy) excluded.
    #[arg(long, value_name = "PATH")]
    policy: Option<PathBuf>,
    /// Also watch Services, Pods, Namespaces, EgressNetworks and Servers live through the
    /// Kubernetes API (in-cluster service account, or KUBECONFIG); --policy documents are added.
    #[arg(long)]
    kubernetes: bool,
    /// EgressNetworks in this namespace apply to clients in every namespace.
    #[arg(long, value_name = "NS", default_value = "linkerd-egress")]
    egress_namespace: String,
    /// Trie entries one namespace's objects may take; a namespace over it has all its rules
    /// dropped (and reported), so that it cannot exhaust the kernel tables for the others.
    #[arg(long, value_name = "N", default_value_t = classifier_policy::sources::linkerd::DEFAULT_NAMESPACE_ENTRY_BUDGET)]
    namespace_entry_budget: u64,
    /// How often to check the policy file for changes.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    watch_interval: f64,
    /// Size of the published-verdict table (open classified connections). Applies when the
    /// programs are first installed.
    #[arg(long, value_name = "ENTRIES")]
    verdict_table_size: Option<u32>,
    /// Apply a policy file even if non-root users could change it (by default the file and
    /// its directory must be root-owned and not writable by others).
    #[arg(long)]
    allow_untrusted_policy: bool,
    /// Serve Prometheus /metrics, /healthz (the agent loop runs) and /readyz (programs attached
    /// and a policy applied) on this address, e.g. 0.0.0.0:9990 [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Detach the programs and remove every pin under --pin-dir, then exit.
    #[arg(long)]
    uninstall: bool,
}

#[derive(Args)]
struct StatsArgs {
    #[command(flatten)]
    pins: PinArgs,
    /// Print JSON (top-level connects_total, opaque_total, excluded_total, proxy_queries_total, errors_total, ...).
    #[arg(long, conflicts_with = "prometheus")]
    json: bool,
    /// Print Prometheus text exposition.
    #[arg(long)]
    prometheus: bool,
    /// Print again every SECS seconds until interrupted.
    #[arg(long, value_name = "SECS")]
    watch: Option<f64>,
}

#[derive(Args)]
struct ExplainArgs {
    /// Destination as IP:PORT ([IPv6]:PORT for IPv6).
    destination: SocketAddr,
    /// Policy to evaluate: a ClassifierPolicy file, or a file or directory of Kubernetes
    /// manifests (Linkerd's EgressNetwork, Server, Service, Pod, Namespace, and optionally one
    /// ClassifierPolicy; `kind: List` too), `-` for standard input [default: the built-in
    /// policy]. Objects the compiler rejects are skipped and listed on stderr; a path
    /// without any document it reads is an error.
    #[arg(long, value_name = "PATH")]
    policy: Option<PathBuf>,
    /// Trie entries one namespace's objects may take before all its rules are dropped.
    #[arg(long, value_name = "N", default_value_t = classifier_policy::sources::linkerd::DEFAULT_NAMESPACE_ENTRY_BUDGET)]
    namespace_entry_budget: u64,
    /// Classify as a client in this Kubernetes namespace: its namespaced EgressNetworks come
    /// first [default: a process outside any pod, node-wide rules only].
    #[arg(long, value_name = "NS")]
    from_namespace: Option<String>,
    /// Print JSON: {"protocol": "opaque"|"http1"|"http2"|"detect", "source", "rule_id",
    /// "network", "origin", "scope"}.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ProxyArgs {
    /// Address to listen on (where the nat rules REDIRECT to).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:4140")]
    listen: SocketAddr,
    /// How long to wait for a client's first bytes when the kernel gave no opaque verdict
    /// (Linkerd's outbound default is 10 s).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    detect_timeout: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
