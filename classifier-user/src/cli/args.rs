//! The `classifier` command line: clap definitions only (std and clap, no
//! other crate), so that `cargo xtask completions` and `cargo xtask
//! manpage` include this file (`#[path]`) and generate from the very
//! definitions the binary parses with.
//!
//! Every `classifier agent` flag but `--uninstall` can also be set as a
//! `CLASSIFIER_<FLAG>` environment variable (`--metrics-addr` is
//! `CLASSIFIER_METRICS_ADDR`); a flag on the command line wins.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `classifier_user::datapath::pins::DEFAULT_PIN_DIR` (checked equal by a
/// unit test of the binary).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/classifier";

/// `classifier_policy::sources::linkerd::DEFAULT_NAMESPACE_ENTRY_BUDGET`
/// (checked equal by a unit test of the binary).
pub const DEFAULT_NAMESPACE_ENTRY_BUDGET: u64 = 65_536;

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
pub struct Cli {
    /// Log format: `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CLASSIFIER_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Attach the classifier (or adopt the one already attached) and keep its policy current.
    ///
    /// Needs root. The programs and maps are pinned under --pin-dir, so they stay attached
    /// when the agent stops or restarts; a restarted agent adopts them without a gap.
    /// `--uninstall` detaches everything and removes the pins. Every flag but --uninstall can
    /// also be set as an environment variable, CLASSIFIER_ and the flag's name in capitals
    /// (CLASSIFIER_METRICS_ADDR, CLASSIFIER_KUBERNETES=true); a flag given on the command line
    /// wins.
    Agent(AgentArgs),
    /// Show what the kernel side has seen, from the pinned maps (agent need not run; needs root).
    Stats(StatsArgs),
    /// Show what the policy decides for a destination, and why (no root or agent needed).
    Explain(ExplainArgs),
    /// List the server-first destinations the classifier learned from the traffic (needs root).
    ///
    /// Connections the policy gives no verdict are watched until their first data segment: if
    /// the server spoke first, the destination is learned (opaque from then on, for clients of
    /// the same scope); a client-first connection to a learned destination removes it.
    Learned(LearnedArgs),
    /// Print mesh configuration that fixes the learned destinations (needs root to read them).
    ///
    /// linkerd: for an address a Service or Pod of the cluster's documents holds (--policy
    /// manifests, --kubernetes), the config.linkerd.io/opaque-ports annotation to set on that
    /// object, as a merge patch naming its kind, namespace and name; for any other address, an
    /// EgressNetwork (in the client's namespace, or linkerd-egress for the node scope) with that
    /// annotation. istio: ServiceEntry objects with protocol TCP. policy: a ClassifierPolicy
    /// with opaque rules.
    Suggest(SuggestArgs),
    /// Run the reference outbound proxy: the model for adopting the query contract.
    ///
    /// Accepts connections REDIRECTed to it (linkerd-init style), reads SO_ORIGINAL_DST and
    /// asks the kernel for the verdict. Opaque: forwards at once. Otherwise: waits up to
    /// --detect-timeout for the client's first bytes to detect HTTP/1 or HTTP/2, then
    /// forwards (as opaque TCP on timeout). Run it as the UID the nat rules return (2102).
    Proxy(ProxyArgs),
    /// Check whether this node can run the agent and whether the agent is healthy.
    ///
    /// Each line is a named check with what it found and, when it fails, the fix: kernel and
    /// BPF features, cgroup v2 and the attach cgroup, bpffs and the pin directory, the
    /// capabilities, the pinned layout and programs, the agent's liveness and status age, its
    /// last policy apply and rejections; with --kubernetes also API reachability, RBAC for
    /// each watched kind and Linkerd's CRDs. Needs no agent. Exits non-zero if a check fails.
    Check(CheckArgs),
    /// Publish the cluster's policy sources for the node agents, once for the whole cluster.
    ///
    /// Watches every Service, Pod, Namespace, EgressNetwork and Server (as `agent
    /// --kubernetes` does on each node) and writes them, pruned to what the policy reads, as
    /// ClassifierSlice objects of up to 100 objects each; agents run with
    /// `--kubernetes-source slices` watch those instead of the whole cluster. A status-only
    /// update of a pod writes nothing. Run two replicas: they elect a leader on a Lease, and
    /// only the leader writes. Needs no root and no BPF.
    Compiler(CompilerArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KubernetesSource {
    Objects,
    Slices,
}

/// Where an agent with --kubernetes reads the cluster (`agent` and `check`).
#[derive(Args)]
pub struct SourceArgs {
    /// Where --kubernetes reads the cluster: `objects` watches every Service, Pod, Namespace,
    /// EgressNetwork and Server of the cluster from this node; `slices` watches only the
    /// ClassifierSlices a central compiler (`classifier compiler`) publishes, which carry
    /// the same objects, pruned, and change only when what the policy reads of them does.
    #[arg(
        long,
        value_enum,
        default_value_t = KubernetesSource::Objects,
        env = "CLASSIFIER_KUBERNETES_SOURCE"
    )]
    pub kubernetes_source: KubernetesSource,
    /// The namespace of the ClassifierSlices (with --kubernetes-source slices) [default: the
    /// agent's own namespace in a pod, else classifier-system].
    #[arg(long, value_name = "NS", env = "CLASSIFIER_SLICES_NAMESPACE")]
    pub slices_namespace: Option<String>,
}

#[derive(Args)]
pub struct CompilerArgs {
    /// Where the ClassifierSlices and the leader-election Lease live [default: the
    /// compiler's own namespace in a pod, else classifier-system].
    #[arg(long, value_name = "NS", env = "CLASSIFIER_NAMESPACE")]
    pub namespace: Option<String>,
    /// This replica's name in the Lease [default: the host name].
    #[arg(long, value_name = "NAME", env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a lease lasts unrenewed before another replica takes over (renewed every
    /// third of it).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 15,
        env = "CLASSIFIER_LEASE_DURATION"
    )]
    pub lease_duration: u64,
    /// Objects per ClassifierSlice, 1 to 100. Every node receives a changed slice whole: more
    /// objects per slice make fewer slices (a smaller re-list) but more bytes per change.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=100),
        env = "CLASSIFIER_OBJECTS_PER_SLICE"
    )]
    pub objects_per_slice: u16,
}

#[derive(Args)]
pub struct PinArgs {
    /// bpffs directory holding the classifier's pinned maps and links.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR, env = "CLASSIFIER_PIN_DIR")]
    pub pin_dir: PathBuf,
}

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// cgroup v2 directory to attach to [default: the cgroup v2 root from /proc/self/mountinfo].
    #[arg(long, value_name = "PATH", env = "CLASSIFIER_CGROUP")]
    pub cgroup: Option<PathBuf>,
    /// Policy: a ClassifierPolicy YAML file, or a file or directory of Kubernetes manifests
    /// (ClassifierPolicy, EgressNetwork, Service, Pod, Namespace, Server), compiled with
    /// Linkerd's semantics. Watched, and re-applied atomically when it changes. Without it
    /// (and without --kubernetes): Linkerd's default opaque ports, UID 2102 (the proxy) excluded.
    #[arg(long, value_name = "PATH", env = "CLASSIFIER_POLICY")]
    pub policy: Option<PathBuf>,
    /// Also watch Services, Pods, Namespaces, EgressNetworks and Servers live through the
    /// Kubernetes API (in-cluster service account, or KUBECONFIG); --policy documents are added.
    #[arg(long, env = "CLASSIFIER_KUBERNETES")]
    pub kubernetes: bool,
    #[command(flatten)]
    pub source: SourceArgs,
    /// EgressNetworks in this namespace apply to clients in every namespace.
    #[arg(
        long,
        value_name = "NS",
        default_value = "linkerd-egress",
        env = "CLASSIFIER_EGRESS_NAMESPACE"
    )]
    pub egress_namespace: String,
    /// Trie entries one namespace's objects may take; a namespace over it has all its rules
    /// dropped (and reported), so that it cannot exhaust the kernel tables for the others.
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_NAMESPACE_ENTRY_BUDGET,
        env = "CLASSIFIER_NAMESPACE_ENTRY_BUDGET"
    )]
    pub namespace_entry_budget: u64,
    /// Let processes in no known pod cgroup learn server-first destinations (under the
    /// default `learning.scope: namespace`). They all share one table, the node scope, so
    /// any of them can add or remove entries the others use: without --kubernetes that is
    /// every container on the node. Set it only when they are one tenant (a single-tenant
    /// host, the node's own daemons) [default: they neither learn nor read learned entries].
    #[arg(long, env = "CLASSIFIER_LEARN_OUTSIDE_PODS")]
    pub learn_outside_pods: bool,
    /// How often to check the policy file for changes.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 1.0,
        env = "CLASSIFIER_WATCH_INTERVAL"
    )]
    pub watch_interval: f64,
    /// Size of the published-verdict table (open classified connections). Applies when the
    /// programs are first installed.
    #[arg(long, value_name = "ENTRIES", env = "CLASSIFIER_VERDICT_TABLE_SIZE")]
    pub verdict_table_size: Option<u32>,
    /// Apply a policy file even if non-root users could change it (by default the file and
    /// its directory must be root-owned and not writable by others).
    #[arg(long, env = "CLASSIFIER_ALLOW_UNTRUSTED_POLICY")]
    pub allow_untrusted_policy: bool,
    /// Serve Prometheus /metrics, /healthz (the agent loop runs) and /readyz (programs attached
    /// and a policy applied) on this address, e.g. 0.0.0.0:9990 [default: off].
    #[arg(long, value_name = "ADDR", env = "CLASSIFIER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve only /healthz and /readyz, for the kubelet's probes, on this address, e.g.
    /// 0.0.0.0:9991 [default: off]. Unlike the metrics port it never refuses a connection (at
    /// its limit the oldest is closed), so processes sharing the kubelet's address cannot
    /// starve the probes by holding connections.
    #[arg(long, value_name = "ADDR", env = "CLASSIFIER_PROBE_ADDR")]
    pub probe_addr: Option<SocketAddr>,
    /// Detach the programs and remove every pin under --pin-dir, then exit. (The one agent
    /// flag with no CLASSIFIER_* variable: an environment should never uninstall.)
    #[arg(long)]
    pub uninstall: bool,
}

#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Print JSON (top-level connects_total, opaque_total, excluded_total, proxy_queries_total, errors_total, ...).
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,
    /// Print Prometheus text exposition.
    #[arg(long)]
    pub prometheus: bool,
    /// Print again every SECS seconds until interrupted.
    #[arg(long, value_name = "SECS")]
    pub watch: Option<f64>,
}

#[derive(Args)]
pub struct ExplainArgs {
    /// Destination as IP:PORT ([IPv6]:PORT for IPv6).
    pub destination: SocketAddr,
    /// Policy to evaluate: a ClassifierPolicy file, or a file or directory of Kubernetes
    /// manifests (Linkerd's EgressNetwork, Server, Service, Pod, Namespace, and optionally one
    /// ClassifierPolicy; `kind: List` too), `-` for standard input [default: the built-in
    /// policy]. Objects the compiler rejects are skipped and listed on stderr; a path
    /// without any document it reads is an error.
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// Trie entries one namespace's objects may take before all its rules are dropped.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_NAMESPACE_ENTRY_BUDGET)]
    pub namespace_entry_budget: u64,
    /// Classify as a client in this Kubernetes namespace: its namespaced EgressNetworks come
    /// first [default: a process outside any pod, node-wide rules only].
    #[arg(long, value_name = "NS")]
    pub from_namespace: Option<String>,
    /// Print JSON: {"protocol": "opaque"|"http1"|"http2"|"detect", "source", "rule_id",
    /// "network", "origin", "scope"}; "source": "learned" when the live learned table decided.
    #[arg(long)]
    pub json: bool,
    /// Where the running classifier is pinned: when its maps are there (and readable), a
    /// destination the policy leaves undecided is also looked up in its learned table.
    #[command(flatten)]
    pub pins: PinArgs,
}

#[derive(Args)]
pub struct LearnedArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Print JSON: a list of {destination, scope, namespace, observations, first_seen, last_seen, ...}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SuggestArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Output: linkerd, istio or policy.
    #[arg(long, value_name = "FORMAT")]
    pub format: SuggestFormat,
    /// The cluster's documents, for --format linkerd: a file or directory of Kubernetes
    /// manifests (Service, Pod, Namespace, and optionally the ClassifierPolicy, whose
    /// defaultOpaquePorts are the cluster's defaults), as `explain --policy` reads them. A
    /// learned address that one of their Services (cluster IP) or live Pods (pod IP) holds gets
    /// an opaque-ports patch for that object. The annotation replaces the object's opaque ports,
    /// so its value is the object's current ones (its own annotation, else its namespace's,
    /// else the defaults) plus the learned ports: applying the patches and running `explain
    /// --policy` on the patched documents answers opaque for every learned destination and
    /// changes no other verdict. Without documents every address gets an EgressNetwork.
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// Also read the documents from the Kubernetes API (in-cluster service account, or
    /// KUBECONFIG), as the agent's --kubernetes watch does; --policy documents are added.
    #[arg(long)]
    pub kubernetes: bool,
}

/// What `classifier suggest` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SuggestFormat {
    /// Linkerd's opaque-ports annotation: patches for Services and Pods, else EgressNetworks.
    Linkerd,
    /// Istio ServiceEntry objects, protocol TCP.
    Istio,
    /// A ClassifierPolicy with opaque rules.
    Policy,
}

#[derive(Args)]
pub struct ProxyArgs {
    /// Address to listen on (where the nat rules REDIRECT to).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:4140")]
    pub listen: SocketAddr,
    /// How long to wait for a client's first bytes when the kernel gave no opaque verdict
    /// (Linkerd's outbound default is 10 s).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub detect_timeout: f64,
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// The cgroup v2 directory the agent attaches to [default: the cgroup v2 root].
    #[arg(long, value_name = "PATH", env = "CLASSIFIER_CGROUP")]
    pub cgroup: Option<PathBuf>,
    /// Also check the Kubernetes API, RBAC for every watched kind (SelfSubjectAccessReview)
    /// and Linkerd's CRDs, with the in-cluster service account or KUBECONFIG; with
    /// --kubernetes-source slices (as the agent's), RBAC for the ClassifierSlices and that a
    /// central compiler has published a complete cluster instead.
    #[arg(long)]
    pub kubernetes: bool,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Print JSON: a list of {"check", "ok", "detail"}.
    #[arg(long)]
    pub json: bool,
}
