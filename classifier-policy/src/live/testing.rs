//! What the differential tests and the `live_documents` fuzz target share:
//! a generator of small colliding worlds of documents, and the check that
//! a live policy equals a full compile of its documents.

use std::sync::Arc;

use classifier_common::{RuleVerdict, RULE_MATCH};

use super::{Change, LivePolicy};
use crate::compile::{compile, CompiledPolicy};
use crate::model::Rule;
use crate::sources::compile_documents_report;
use crate::sources::document::{Document, DocumentSet};

/// A small deterministic generator (xorshift64*), so that a failing seed
/// reproduces.
/// Or, for a fuzzer, the input's bytes (zeros once they run out).
pub enum Rng {
    Seeded(u64),
    Bytes(Vec<u8>, usize),
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng::Seeded(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn from_bytes(data: &[u8]) -> Rng {
        Rng::Bytes(data.to_vec(), 0)
    }
    /// Whether a byte-driven generator has used up its input.
    pub fn exhausted(&self) -> bool {
        matches!(self, Rng::Bytes(d, i) if *i >= d.len())
    }
    pub fn next_u64(&mut self) -> u64 {
        match self {
            Rng::Seeded(x) => {
                *x ^= *x >> 12;
                *x ^= *x << 25;
                *x ^= *x >> 27;
                x.wrapping_mul(0x2545_F491_4F6C_DD1D)
            }
            Rng::Bytes(d, i) => {
                let b = d.get(*i).copied().unwrap_or(0);
                *i += 1;
                u64::from(b)
            }
        }
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
}

/// One random document of a small world where objects collide: few
/// addresses, few names, namespaces, labels and ports.
pub fn random_document(rng: &mut Rng) -> String {
    let ns = format!("ns-{}", rng.below(3));
    let ann = |rng: &mut Rng| match rng.below(5) {
        0 => "\n  annotations: {config.linkerd.io/opaque-ports: \"3306\"}".to_string(),
        1 => "\n  annotations: {config.linkerd.io/opaque-ports: \"8080-8081,http\"}".to_string(),
        2 => "\n  annotations: {config.linkerd.io/opaque-ports: \"5432\"}".to_string(),
        _ => String::new(),
    };
    let created = |rng: &mut Rng| match rng.below(3) {
        0 => String::new(),
        n => format!("\n  creationTimestamp: \"2026-01-0{n}T00:00:00Z\""),
    };
    match rng.below(20) {
        0..=8 => {
            let ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.1.0.1", "fd00::1"];
            let mut ip_list = vec![rng.pick(&ips)];
            if rng.below(4) == 0 {
                ip_list.push(rng.pick(&["fd00::2", "10.0.0.5"]));
            }
            let pod_ips: Vec<String> = ip_list.iter().map(|i| format!("{{ip: \"{i}\"}}")).collect();
            let phase = if rng.below(8) == 0 { "Succeeded" } else { "Running" };
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p-{}\n  namespace: {ns}\n  uid: u-{ns}-{}\n  labels: {{app: {}}}{}\nspec:\n  containers:\n    - name: c\n      ports: [{{name: http, containerPort: {}}}]\nstatus:\n  phase: {phase}\n  podIP: \"{}\"\n  podIPs: [{}]\n",
                rng.below(5),
                rng.below(3),
                rng.pick(&["a", "b"]),
                ann(rng),
                rng.pick(&["8080", "9090"]),
                ip_list[0],
                pod_ips.join(", "),
            )
        }
        9..=12 => {
            let ip = rng.pick(&["10.2.0.1", "10.2.0.2", "10.0.0.1", "fd00::1"]);
            let app = match rng.below(3) {
                0 => ", appProtocol: linkerd.io/opaque",
                1 => ", appProtocol: kubernetes.io/h2c",
                _ => "",
            };
            format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: s-{}\n  namespace: {ns}{}\nspec:\n  clusterIP: \"{ip}\"\n  clusterIPs: [\"{ip}\"]\n  ports:\n    - {{name: http, port: {}{app}}}\n",
                rng.below(3),
                ann(rng),
                rng.pick(&["8080", "3306", "9090"]),
            )
        }
        13..=16 => format!(
            "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata:\n  name: srv-{}\n  namespace: {ns}{}\nspec:\n  podSelector:\n    matchLabels: {{app: {}}}\n  port: {}\n  proxyProtocol: {}\n",
            rng.below(3),
            created(rng),
            rng.pick(&["a", "b"]),
            rng.pick(&["http", "8080", "9090"]),
            rng.pick(&["HTTP/1", "HTTP/2", "opaque", "unknown"]),
        ),
        17 => format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}{}\n",
            ann(rng)
        ),
        18 => {
            let ns = rng.pick(&["linkerd-egress", "ns-0"]);
            let net = rng.pick(&["10.0.0.0/24", "10.0.0.1/32", "10.0.0.0/8"]);
            let except = if rng.below(2) == 0 {
                ", except: [\"10.0.0.4/32\"]"
            } else {
                ""
            };
            format!(
                "apiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata:\n  name: e-{}\n  namespace: {ns}{}\n  annotations: {{config.linkerd.io/opaque-ports: \"{}\"}}\nspec:\n  trafficPolicy: Allow\n  networks: [{{cidr: \"{net}\"{except}}}]\n",
                rng.below(2),
                created(rng),
                rng.pick(&["3306", "8080", "5432,9090"]),
            )
        }
        _ => format!(
            "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nmetadata:\n  name: classifier\nspec:\n  rules:\n    - networks: [\"{}\"]\n      ports: \"{}\"\n      protocol: {}\n",
            rng.pick(&["10.0.0.1", "10.0.0.0/24", "10.2.0.1"]),
            rng.pick(&["8080", "1-65535", "3306"]),
            rng.pick(&["http1", "opaque", "detect"]),
        ),
    }
}

pub fn document(text: &str) -> Arc<Document> {
    let mut set = DocumentSet::new();
    set.add_text(text, "gen.yaml")
        .expect("generated documents read");
    set.docs.into_values().next().expect("one document")
}

/// A verdict with its rule id replaced by what the rule is.
fn named(v: &RuleVerdict, rule: impl Fn(u32) -> Option<Rule>) -> String {
    if v.kind != RULE_MATCH {
        return format!("{v:?}");
    }
    let r = rule(v.rule_id)
        .unwrap_or_else(|| panic!("verdict names rule {} which is not there", v.rule_id));
    format!(
        "{} {:?} {} {:?} net_prefix {} protocol {}",
        r.origin, r.protocol, r.ports, r.networks, v.net_prefix, v.protocol
    )
}

fn entries(c: &CompiledPolicy, rule: impl Fn(u32) -> Option<Rule>) -> Vec<String> {
    let v4 =
        c.v4.iter()
            .map(|e| format!("{:?} -> {}", e.sort_key(), named(&e.verdict, &rule)));
    let v6 =
        c.v6.iter()
            .map(|e| format!("{:?} -> {}", e.sort_key(), named(&e.verdict, &rule)));
    v4.chain(v6).collect()
}

/// Asserts the live state equals a full compile of its documents.
pub fn assert_matches_full(live: &LivePolicy, context: &str) {
    let full = compile_documents_report(live.documents(), &live.opts).expect("full compile");
    let full_compiled = compile(&full.policy).expect("full trie compile");
    let live_compiled = live.compiled();
    let want = entries(&full_compiled, |id| full.policy.rule(id).cloned());
    let got = entries(&live_compiled, |id| live.rule(id));
    if want != got {
        let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).collect();
        let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).collect();
        panic!("{context}: live entries differ from a full compile\nmissing: {missing:#?}\nextra: {extra:#?}");
    }
    assert_eq!(
        live_compiled.rule_count, full_compiled.rule_count,
        "{context}: rule count"
    );
    assert_eq!(
        live_compiled.any_port, full_compiled.any_port,
        "{context}: any_port"
    );
    assert_eq!(live_compiled.scoped, full_compiled.scoped, "{context}");
    assert_eq!(
        live_compiled.global_egress, full_compiled.global_egress,
        "{context}"
    );
    assert_eq!(
        live_compiled.default_ports, full_compiled.default_ports,
        "{context}"
    );
    assert_eq!(
        live.pod_namespaces().to_map(),
        full.policy.pod_namespaces,
        "{context}: pod namespaces"
    );
    let mut want_rejected: Vec<String> = full
        .rejected
        .iter()
        .map(|r| format!("{} {}", r.origin, r.error))
        .collect();
    let mut got_rejected: Vec<String> = live
        .rejected()
        .map(|r| format!("{} {}", r.origin, r.error))
        .collect();
    want_rejected.sort();
    got_rejected.sort();
    assert_eq!(got_rejected, want_rejected, "{context}: rejected objects");
    // Ids are unique.
    let mut ids: Vec<u32> = live.rules().map(|r| r.id).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "{context}: duplicate rule ids");
}

/// A random change: mostly a new or changed document, sometimes a delete
/// of one that is there.
pub fn random_change(rng: &mut Rng, live: &LivePolicy) -> Change {
    if rng.below(4) == 0 && !live.documents().is_empty() {
        let n = rng.below(live.documents().len() as u64) as usize;
        let key = live
            .documents()
            .docs
            .keys()
            .nth(n)
            .expect("in range")
            .clone();
        return Change::Delete(key);
    }
    Change::Apply(document(&random_document(rng)))
}
