//! Reading a policy file (YAML) into a [`Policy`].
//!
//! Value checks live in `Deserialize` impls and report through
//! `de::Error::custom`: that is the only way serde_yaml attaches the field
//! path and line/column, and a user editing a 500-rule file needs both.
//! Checks that need the whole document (duplicates, totals) run afterwards
//! and name the field instead.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::model::{Mark, Network, Policy, Protocol, Rule};
use super::ports::PortSet;

pub const API_VERSION: &str = "classifier.dev/v1alpha1";
pub const KIND: &str = "ClassifierPolicy";

/// A policy is a handful of kilobytes; anything near this is a mistake (a
/// log file, a binary) and should not be read into memory.
pub const MAX_POLICY_FILE_BYTES: u64 = 16 << 20;

/// At most half of the UID set: both policy slots share it during a switch.
pub const MAX_EXCLUDED_UIDS: usize = classifier_common::maps::EXCLUDED_UIDS_CAPACITY as usize / 2;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    // Not a `source`: the message already carries the OS error, and a
    // source would make `{:#}` print it twice.
    #[error("{}: cannot read policy file: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: policy file is {size} bytes, over the limit of {limit} bytes", path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{}: policy file is not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    /// `message` is serde_yaml's, which already carries the field path and
    /// "at line L column C".
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: {field}: {message}")]
    Invalid {
        origin: String,
        field: String,
        message: String,
    },
    /// A directory symlink that leads back to one of its own ancestors.
    #[error("{}: symlink loop: leads back to {}", path.display(), target.display())]
    SymlinkLoop { path: PathBuf, target: PathBuf },
    #[error("{}: more than {limit} documents in the policy directory", path.display())]
    TooManyDocuments { path: PathBuf, limit: usize },
}

/// Reads the policy at `path`: a ClassifierPolicy file (exactly as
/// [`load_policy_file`], with the same errors), or a directory or a file of
/// Kubernetes manifests (Linkerd's resources, optionally with one
/// ClassifierPolicy), compiled by [`crate::sources::linkerd`] with the
/// default options.
///
/// A file goes the manifest way when it holds more than one document, or
/// one document of a Kubernetes kind the compiler reads (EgressNetwork,
/// Server, Service, Pod, Namespace); anything else is read as a
/// ClassifierPolicy, so a broken one is reported as before.
pub fn load_policy_path(path: &Path) -> Result<Policy, PolicyError> {
    use crate::sources::{document, linkerd, DocumentSet};
    let meta = std::fs::metadata(path).map_err(|error| PolicyError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let set = if meta.is_dir() {
        DocumentSet::from_path(path)?
    } else {
        let text = read_policy_text(path)?;
        if !document::is_manifest_text(&text) {
            return parse_policy(&text, &path.display().to_string());
        }
        let mut set = DocumentSet::default();
        set.add_text(&text, &path.display().to_string())?;
        set
    };
    linkerd::compile_documents(&set, &linkerd::Options::default())
}

/// Reads and validates the policy file at `path`.
pub fn load_policy_file(path: &Path) -> Result<Policy, PolicyError> {
    let text = read_policy_text(path)?;
    parse_policy(&text, &path.display().to_string())
}

/// Reads a policy or manifest file as text: at most
/// [`MAX_POLICY_FILE_BYTES`], UTF-8.
pub fn read_policy_text(path: &Path) -> Result<String, PolicyError> {
    let io = |error| PolicyError::Io {
        path: path.to_path_buf(),
        error,
    };
    let too_large = |size| PolicyError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit: MAX_POLICY_FILE_BYTES,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_POLICY_FILE_BYTES {
        return Err(too_large(size));
    }
    // The file may grow between stat and read (or be a pipe that reports
    // size 0), so the read itself is bounded too.
    let mut bytes = Vec::with_capacity(size as usize);
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_POLICY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_POLICY_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|_| PolicyError::NotUtf8 {
        path: path.to_path_buf(),
    })
}

/// serde_yaml's message for `e`, with its line number moved down by
/// `line_offset` lines (for a document that starts further into a file).
pub(crate) fn yaml_message(e: &serde_yaml::Error, line_offset: usize) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(loc) if line_offset > 0 => msg.replace(
            &format!("line {} column {}", loc.line(), loc.column()),
            &format!("line {} column {}", loc.line() + line_offset, loc.column()),
        ),
        _ => msg,
    }
}

/// Parses and validates policy text; `origin` (usually the file name)
/// starts every error message.
pub fn parse_policy(text: &str, origin: &str) -> Result<Policy, PolicyError> {
    parse_policy_document(text, origin).map(|p| p.policy)
}

/// [`parse_policy`], keeping the document-only settings (`clusterNetworks`).
pub fn parse_policy_document(text: &str, origin: &str) -> Result<ParsedPolicy, PolicyError> {
    parse_policy_document_at(text, origin, 0)
}

/// [`parse_policy_document`] for a document whose first line is line
/// `line_offset + 1` of its file: positions in errors are the file's.
pub fn parse_policy_document_at(
    text: &str,
    origin: &str,
    line_offset: usize,
) -> Result<ParsedPolicy, PolicyError> {
    let doc: Document = serde_yaml::from_str(text).map_err(|e| PolicyError::Syntax {
        origin: origin.to_string(),
        message: yaml_message(&e, line_offset),
    })?;
    let invalid = |field: String, message: String| PolicyError::Invalid {
        origin: origin.to_string(),
        field,
        message,
    };

    let spec = doc.spec.unwrap_or_default();
    let default = Policy::builtin_default();

    let mut exclude_uids = Vec::new();
    for uid in spec.exclude_uids.unwrap_or(default.exclude_uids) {
        // A repeated UID is harmless; keep the first mention's order.
        if !exclude_uids.contains(&uid) {
            exclude_uids.push(uid);
        }
    }
    if exclude_uids.len() > MAX_EXCLUDED_UIDS {
        return Err(invalid(
            "spec.excludeUids".into(),
            format!(
                "{} distinct UIDs listed, at most {MAX_EXCLUDED_UIDS} are supported",
                exclude_uids.len()
            ),
        ));
    }

    let raw_rules = spec.rules.unwrap_or_default();
    let mut rules = Vec::with_capacity(raw_rules.len());
    // Same rule twice is almost always a copy/paste slip, and the second
    // copy could never decide anything; order-insensitive on networks.
    let mut seen: HashMap<(Vec<Network>, PortSet, Protocol), usize> = HashMap::new();
    for (i, raw) in raw_rules.into_iter().enumerate() {
        let id = u32::try_from(i + 1)
            .map_err(|_| invalid("spec.rules".into(), "too many rules".into()))?;
        let mut canon = raw.networks.0.clone();
        for n in &mut canon {
            n.except.sort();
            n.except.dedup();
        }
        canon.sort();
        canon.dedup();
        if let Some(&first) = seen.get(&(canon.clone(), raw.ports.0.clone(), raw.protocol)) {
            return Err(invalid(
                format!("spec.rules[{i}]"),
                format!(
                    "rule {id} duplicates spec.rules[{first}] (rule {}): same networks, ports {} and protocol {}",
                    first + 1,
                    raw.ports.0,
                    raw.protocol
                ),
            ));
        }
        seen.insert((canon, raw.ports.0.clone(), raw.protocol), i);
        rules.push(Rule {
            id,
            networks: raw.networks.0,
            ports: raw.ports.0,
            protocol: raw.protocol,
            scope: None,
            origin: format!("spec.rules[{i}]"),
        });
    }

    let policy = Policy {
        default_opaque_ports: spec
            .default_opaque_ports
            .unwrap_or(default.default_opaque_ports),
        exclude_uids,
        rules,
        mark: spec.mark.map(|m| m.0),
        pod_namespaces: Default::default(),
    };
    let cluster_networks = match spec.cluster_networks {
        Some(ClusterNetworks(n)) => n,
        None => default_cluster_networks(),
    };
    Ok(ParsedPolicy {
        policy,
        cluster_networks,
    })
}

/// Linkerd's default `clusterNetworks`.
pub const LINKERD_DEFAULT_CLUSTER_NETWORKS: &str =
    "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";

/// [`LINKERD_DEFAULT_CLUSTER_NETWORKS`], parsed.
pub fn default_cluster_networks() -> Vec<IpNet> {
    LINKERD_DEFAULT_CLUSTER_NETWORKS
        .split(',')
        .map(|n| n.parse().expect("the built-in cluster networks parse"))
        .collect()
}

/// A ClassifierPolicy document: the [`Policy`] it gives on its own, plus the
/// settings only the document compiler uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedPolicy {
    pub policy: Policy,
    /// `spec.clusterNetworks`: what an EgressNetwork without `networks`
    /// leaves out (default [`LINKERD_DEFAULT_CLUSTER_NETWORKS`]).
    pub cluster_networks: Vec<IpNet>,
}

// ---------------------------------------------------------------------------
// The file's shape
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Document {
    #[allow(dead_code)] // checked while deserializing
    api_version: ApiVersion,
    #[allow(dead_code)]
    kind: Kind,
    /// Allowed (a ClassifierPolicy among Kubernetes manifests has a name)
    /// and not used.
    #[allow(dead_code)]
    #[serde(default)]
    metadata: Option<serde_yaml::Value>,
    #[serde(default)]
    spec: Option<Spec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    default_opaque_ports: Option<PortSet>,
    #[serde(default)]
    exclude_uids: Option<Vec<u32>>,
    #[serde(default)]
    rules: Option<Vec<RawRule>>,
    #[serde(default)]
    mark: Option<CheckedMark>,
    #[serde(default)]
    cluster_networks: Option<ClusterNetworks>,
}

/// `clusterNetworks`: a list of CIDRs or one comma-separated string of them
/// (Linkerd's own helm value is the string form).
struct ClusterNetworks(Vec<IpNet>);

impl<'de> Deserialize<'de> for ClusterNetworks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ClusterNetworks;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of CIDRs or a comma-separated string of CIDRs")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ClusterNetworks, E> {
                let mut nets = Vec::new();
                for item in v.split(',').map(str::trim) {
                    if item.is_empty() {
                        return Err(E::custom(format!(
                            "empty item in cluster network list {v:?}"
                        )));
                    }
                    nets.push(parse_cidr(item).map_err(E::custom)?);
                }
                Ok(ClusterNetworks(nets))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ClusterNetworks, A::Error> {
                let mut nets = Vec::new();
                while let Some(Cidr(n)) = seq.next_element::<Cidr>()? {
                    nets.push(n);
                }
                Ok(ClusterNetworks(nets))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    networks: Networks,
    ports: NonEmptyPorts,
    protocol: Protocol,
}

/// Deserializes a string and lets `check` accept or reject it. The check
/// runs inside the visitor: only errors raised there get the string's own
/// field path and position from serde_yaml.
fn checked_string<'de, D, T>(d: D, check: fn(&str) -> Result<T, String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<T>(fn(&str) -> Result<T, String>);
    impl<T> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V(check))
}

struct ApiVersion;

impl<'de> Deserialize<'de> for ApiVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |s| {
            if s == API_VERSION {
                Ok(ApiVersion)
            } else {
                Err(format!(
                    "unsupported apiVersion {s:?}, expected {API_VERSION:?}"
                ))
            }
        })
    }
}

struct Kind;

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |s| {
            if s == KIND {
                Ok(Kind)
            } else {
                Err(format!("unsupported kind {s:?}, expected {KIND:?}"))
            }
        })
    }
}

struct NonEmptyPorts(PortSet);

impl<'de> Deserialize<'de> for NonEmptyPorts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `"*"` is every port: a wildcard-port rule.
        super::ports::deserialize_port_list_or_all(
            d,
            Some("a rule needs at least one port, got an empty port list"),
        )
        .map(NonEmptyPorts)
    }
}

struct Networks(Vec<Network>);

impl<'de> Deserialize<'de> for Networks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Networks;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of networks")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Networks, A::Error> {
                let mut nets = Vec::new();
                while let Some(n) = seq.next_element::<Network>()? {
                    nets.push(n);
                }
                if nets.is_empty() {
                    // A rule without networks would match nothing; "all"
                    // takes an explicit 0.0.0.0/0 and ::/0.
                    return Err(de::Error::custom(
                        "a rule needs at least one network (use \"0.0.0.0/0\" and \"::/0\" for all destinations)",
                    ));
                }
                Ok(Networks(nets))
            }
        }
        d.deserialize_seq(V)
    }
}

/// A CIDR as written in the file, validated.
struct Cidr(IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |s| parse_cidr(s).map(Cidr))
    }
}

/// Parses `addr/len` or a bare address (a host). Rejects host bits, because
/// "10.0.0.1/8" more often means a typo than the whole /8.
pub(crate) fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let (addr_text, len_text) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| match len_text {
        None => format!("{text:?} is not an IP address or CIDR"),
        Some(_) => format!("invalid CIDR {text:?}: {addr_text:?} is not an IP address"),
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_text {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max && l.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(format!(
                    "invalid CIDR {text:?}: prefix length {l:?} is not in 0-{max} for {family}"
                ));
            }
        },
    };
    let net = IpNet::new(addr, len).expect("prefix length checked above");
    if net.trunc() != net {
        return Err(format!(
            "CIDR {text:?} has host bits set; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    if let IpNet::V6(v6) = net {
        // The classifier looks IPv4-mapped destinations up as IPv4, so a
        // network inside ::ffff:0:0/96 could never match anything.
        let mapped: ipnet::Ipv6Net = "::ffff:0:0/96".parse().expect("valid");
        if mapped.contains(&v6) {
            let hint = match v6.network().to_ipv4_mapped() {
                Some(v4) => format!(" (write \"{v4}/{}\")", v6.prefix_len() - 96),
                None => String::new(),
            };
            return Err(format!(
                "CIDR {text:?} is IPv4-mapped IPv6 and would never match: IPv4 destinations are matched as IPv4{hint}"
            ));
        }
    }
    Ok(net)
}

/// An `except` must be strictly inside its network, in the same family.
pub(crate) fn check_except(cidr: IpNet, e: IpNet) -> Result<(), String> {
    let inside = match (cidr, e) {
        (IpNet::V4(c), IpNet::V4(x)) => c.prefix_len() < x.prefix_len() && c.contains(&x),
        (IpNet::V6(c), IpNet::V6(x)) => c.prefix_len() < x.prefix_len() && c.contains(&x),
        _ => {
            return Err(format!(
                "except {e} is not the same address family as cidr {cidr}"
            ))
        }
    };
    if !inside {
        return Err(format!("except {e} is not strictly inside cidr {cidr}"));
    }
    Ok(())
}

/// `"10.0.0.0/8"` or `{cidr: "10.0.0.0/8", except: [...]}`. Hand-written
/// rather than `#[serde(untagged)]`, which would replace every specific
/// error with "did not match any variant".
impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            cidr: Cidr,
            #[serde(default)]
            except: Vec<Cidr>,
        }

        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Network;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CIDR string or a map {cidr, except}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Network, E> {
                parse_cidr(v).map(Network::new).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Network, A::Error> {
                let full = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let cidr = full.cidr.0;
                let mut except = Vec::with_capacity(full.except.len());
                for Cidr(e) in full.except {
                    check_except(cidr, e).map_err(de::Error::custom)?;
                    except.push(e);
                }
                Ok(Network { cidr, except })
            }
        }
        d.deserialize_any(V)
    }
}

struct CheckedMark(Mark);

impl<'de> Deserialize<'de> for CheckedMark {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            value: u32,
            mask: u32,
        }

        // Checked inside visit_map so the error points at the mark itself.
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CheckedMark;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map {value, mask}")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CheckedMark, A::Error> {
                let Raw { value, mask } =
                    Raw::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if mask == 0 {
                    return Err(de::Error::custom("mark mask must not be 0"));
                }
                if value & !mask != 0 {
                    return Err(de::Error::custom(format!(
                        "mark value {value:#x} has bits outside mask {mask:#x}"
                    )));
                }
                Ok(CheckedMark(Mark { value, mask }))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"apiVersion: classifier.dev/v1alpha1
kind: ClassifierPolicy
spec:
  defaultOpaquePorts: "25,587,3306,4444,5432,6379,9300,11211"
  excludeUids: [2102]
  rules:
    - networks: ["203.0.113.0/24", {cidr: "10.0.0.0/8", except: ["10.1.0.0/16"]}]
      ports: "4222,8000-8100"
      protocol: opaque
  mark: {value: 0x40000, mask: 0x40000}   # optional
"#;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn example_parses() {
        let p = parse_policy(EXAMPLE, "policy.yaml").unwrap();
        assert_eq!(
            p,
            Policy {
                default_opaque_ports: "25,587,3306,4444,5432,6379,9300,11211".parse().unwrap(),
                exclude_uids: vec![2102],
                rules: vec![Rule {
                    id: 1,
                    networks: vec![
                        Network::new(net("203.0.113.0/24")),
                        Network {
                            cidr: net("10.0.0.0/8"),
                            except: vec![net("10.1.0.0/16")]
                        },
                    ],
                    ports: "4222,8000-8100".parse().unwrap(),
                    protocol: Protocol::Opaque,
                    scope: None,
                    origin: "spec.rules[0]".into(),
                }],
                mark: Some(Mark {
                    value: 0x40000,
                    mask: 0x40000
                }),
                pod_namespaces: Default::default(),
            }
        );
    }

    #[test]
    fn missing_fields_take_defaults() {
        let head = "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\n";
        for text in [
            head.to_string(),
            format!("{head}spec:\n"),
            format!("{head}spec: {{}}\n"),
            format!("{head}spec:\n  rules:\n"),
        ] {
            assert_eq!(
                parse_policy(&text, "p.yaml").unwrap(),
                Policy::builtin_default(),
                "{text}"
            );
        }
        let p = parse_policy(&format!("{head}spec:\n  excludeUids: []\n"), "p.yaml").unwrap();
        assert_eq!(p.exclude_uids, Vec::<u32>::new());
        assert_eq!(
            p.default_opaque_ports,
            Policy::builtin_default().default_opaque_ports
        );
        let p = parse_policy(
            &format!("{head}spec:\n  defaultOpaquePorts: \"\"\n"),
            "p.yaml",
        )
        .unwrap();
        assert!(p.default_opaque_ports.is_empty());
        assert_eq!(p.exclude_uids, vec![2102]);
    }

    #[test]
    fn rules_get_positions_as_ids_and_hosts_get_full_prefixes() {
        let text = r#"apiVersion: classifier.dev/v1alpha1
kind: ClassifierPolicy
spec:
  rules:
    - {networks: ["192.0.2.7"], ports: 3306, protocol: http2}
    - {networks: ["2001:db8::1", "2001:db8:1::/48"], ports: "80", protocol: detect}
"#;
        let p = parse_policy(text, "p.yaml").unwrap();
        assert_eq!(p.rules[0].id, 1);
        assert_eq!(p.rules[0].networks[0].cidr, net("192.0.2.7/32"));
        assert_eq!(p.rules[0].ports.to_string(), "3306");
        assert_eq!(p.rules[1].id, 2);
        assert_eq!(p.rules[1].networks[0].cidr, net("2001:db8::1/128"));
        assert_eq!(p.rules[1].protocol, Protocol::Detect);
    }

    /// Builds a document whose line 7 is `    - networks: [...]`, line 8
    /// `ports`, line 9 `protocol`, line 10 the mark.
    fn doc(networks: &str, ports: &str, protocol: &str, extra: &str) -> String {
        format!(
            "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  defaultOpaquePorts: \"25\"\n  excludeUids: [2102]\n  rules:\n    - networks: {networks}\n      ports: {ports}\n      protocol: {protocol}\n{extra}"
        )
    }

    fn syntax_error(text: &str) -> String {
        match parse_policy(text, "policy.yaml") {
            Err(e @ PolicyError::Syntax { .. }) => e.to_string(),
            other => panic!("expected a syntax error for\n{text}\ngot {other:?}"),
        }
    }

    #[track_caller]
    fn assert_error(text: &str, parts: &[&str]) {
        let msg = syntax_error(text);
        assert!(msg.starts_with("policy.yaml: "), "{msg}");
        for part in parts {
            assert!(msg.contains(part), "expected {part:?} in {msg:?}");
        }
    }

    #[test]
    fn bad_inputs_name_origin_field_line_and_value() {
        let ok_nets = r#"["203.0.113.0/24"]"#;
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                doc(ok_nets, "\"0\"", "opaque", ""),
                vec!["spec.rules[0].ports: port 0 is not a valid port at line 8 column 14"],
            ),
            (
                doc(ok_nets, "\"25,65536\"", "opaque", ""),
                vec!["spec.rules[0].ports", "65536", "line 8"],
            ),
            (
                doc(ok_nets, "\"5-3\"", "opaque", ""),
                vec!["spec.rules[0].ports", "\"5-3\"", "line 8"],
            ),
            (
                doc(ok_nets, "\"25,,26\"", "opaque", ""),
                vec!["spec.rules[0].ports", "\"25,,26\"", "line 8"],
            ),
            (
                doc(ok_nets, "\"a-b\"", "opaque", ""),
                vec!["spec.rules[0].ports", "\"a-b\"", "line 8"],
            ),
            (
                doc(ok_nets, "\"\"", "opaque", ""),
                vec!["spec.rules[0].ports", "empty port list", "line 8"],
            ),
            (
                doc(ok_nets, "\"25\"", "tcp", ""),
                vec!["spec.rules[0].protocol", "tcp", "line 9"],
            ),
            (
                doc(r#"["10.0.0.0/33"]"#, "\"25\"", "opaque", ""),
                vec!["spec.rules[0].networks[0]", "\"10.0.0.0/33\"", "line 7"],
            ),
            (
                doc(
                    r#"["203.0.113.0/24", "300.1.1.1/8"]"#,
                    "\"25\"",
                    "opaque",
                    "",
                ),
                vec!["spec.rules[0].networks[1]", "\"300.1.1.1/8\"", "line 7"],
            ),
            (
                doc(r#"["banana"]"#, "\"25\"", "opaque", ""),
                vec!["spec.rules[0].networks[0]", "\"banana\"", "line 7"],
            ),
            (
                doc(r#"["10.0.0.1/8"]"#, "\"25\"", "opaque", ""),
                vec![
                    "spec.rules[0].networks[0]",
                    "\"10.0.0.1/8\"",
                    "did you mean \"10.0.0.0/8\"",
                    "line 7",
                ],
            ),
            (
                doc(
                    r#"[{cidr: "10.0.0.0/8", except: ["11.0.0.0/16"]}]"#,
                    "\"25\"",
                    "opaque",
                    "",
                ),
                vec![
                    "spec.rules[0].networks[0]",
                    "11.0.0.0/16",
                    "10.0.0.0/8",
                    "line 7",
                ],
            ),
            (
                doc(
                    r#"[{cidr: "10.0.0.0/8", except: ["10.0.0.0/8"]}]"#,
                    "\"25\"",
                    "opaque",
                    "",
                ),
                vec![
                    "spec.rules[0].networks[0]",
                    "except 10.0.0.0/8 is not strictly inside",
                    "line 7",
                ],
            ),
            (
                doc(
                    r#"[{cidr: "10.0.0.0/8", except: ["2001:db8::/32"]}]"#,
                    "\"25\"",
                    "opaque",
                    "",
                ),
                vec![
                    "spec.rules[0].networks[0]",
                    "2001:db8::/32",
                    "address family",
                    "line 7",
                ],
            ),
            (
                doc(
                    r#"[{cidr: "10.0.0.0/8", except: ["10.1.0.0/16/2"]}]"#,
                    "\"25\"",
                    "opaque",
                    "",
                ),
                vec![
                    "spec.rules[0].networks[0].except[0]",
                    "10.1.0.0/16/2",
                    "line 7 column 48",
                ],
            ),
            (
                doc(
                    r#"[{cidr: "10.0.0.0/8", exempt: ["10.1.0.0/16"]}]"#,
                    "\"25\"",
                    "opaque",
                    "",
                ),
                vec!["spec.rules[0].networks[0]", "exempt", "line 7"],
            ),
            (
                doc(r#"["::ffff:10.0.0.0/104"]"#, "\"25\"", "opaque", ""),
                vec!["spec.rules[0].networks[0]", "10.0.0.0/8", "line 7"],
            ),
            (
                doc("[]", "\"25\"", "opaque", ""),
                vec!["spec.rules[0].networks", "at least one network", "line 7"],
            ),
            (
                doc(ok_nets, "\"25\"", "opaque", "      weight: 3\n"),
                vec!["spec.rules[0]", "unknown field `weight`", "line 10"],
            ),
            (
                doc(
                    ok_nets,
                    "\"25\"",
                    "opaque",
                    "  mark: {value: 0x3, mask: 0x1}\n",
                ),
                vec!["spec.mark", "0x3", "0x1", "line 10"],
            ),
            (
                doc(ok_nets, "\"25\"", "opaque", "  mark: {value: 0, mask: 0}\n"),
                vec!["spec.mark", "mask", "line 10"],
            ),
            (
                doc(
                    ok_nets,
                    "\"25\"",
                    "opaque",
                    "  marks: {value: 1, mask: 1}\n",
                ),
                vec!["spec", "unknown field `marks`", "line 10"],
            ),
            (
                doc(ok_nets, "\"25\"", "opaque", "")
                    .replace("excludeUids: [2102]", "excludeUids: [-1]"),
                vec!["spec.excludeUids[0]", "-1", "line 5"],
            ),
            (
                doc(ok_nets, "\"25\"", "opaque", "")
                    .replace("defaultOpaquePorts: \"25\"", "defaultOpaquePorts: \"x\""),
                vec!["spec.defaultOpaquePorts", "\"x\"", "line 4"],
            ),
            (
                doc(ok_nets, "\"25\"", "opaque", "").replace("v1alpha1", "v1"),
                vec!["apiVersion: ", "\"classifier.dev/v1\"", "line 1 column 13"],
            ),
            (
                doc(ok_nets, "\"25\"", "opaque", "")
                    .replace("kind: ClassifierPolicy", "kind: EgressNetwork"),
                vec!["kind: ", "\"EgressNetwork\"", "line 2 column 7"],
            ),
        ];
        for (text, parts) in &cases {
            assert_error(text, parts);
        }
        assert!(cases.len() >= 12);
    }

    #[test]
    fn broken_yaml_is_a_syntax_error_with_position() {
        let msg = syntax_error("apiVersion: classifier.dev/v1alpha1\nkind: [\n");
        assert!(msg.starts_with("policy.yaml: "), "{msg}");
        assert!(msg.contains("line"), "{msg}");
        let msg = syntax_error("kind: ClassifierPolicy\n");
        assert!(msg.contains("apiVersion"), "{msg}");
    }

    #[test]
    fn duplicate_rules_name_both() {
        let text = r#"apiVersion: classifier.dev/v1alpha1
kind: ClassifierPolicy
spec:
  rules:
    - {networks: ["10.0.0.0/8", "192.0.2.0/24"], ports: "25", protocol: opaque}
    - {networks: ["10.0.0.0/8"], ports: "25", protocol: http1}
    - {networks: ["192.0.2.0/24", "10.0.0.0/8"], ports: "25", protocol: opaque}
"#;
        let e = parse_policy(text, "policy.yaml").unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, PolicyError::Invalid { ref field, .. } if field == "spec.rules[2]"),
            "{msg}"
        );
        assert!(msg.starts_with("policy.yaml: spec.rules[2]: "), "{msg}");
        assert!(
            msg.contains("rule 3") && msg.contains("spec.rules[0] (rule 1)"),
            "{msg}"
        );
    }

    #[test]
    fn too_many_excluded_uids() {
        let uids: Vec<String> = (0..=MAX_EXCLUDED_UIDS as u32)
            .map(|u| u.to_string())
            .collect();
        let text = format!(
            "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  excludeUids: [{}]\n",
            uids.join(",")
        );
        let msg = parse_policy(&text, "policy.yaml").unwrap_err().to_string();
        assert!(msg.starts_with("policy.yaml: spec.excludeUids: "), "{msg}");
        assert!(
            msg.contains(&format!("{}", MAX_EXCLUDED_UIDS + 1)) && msg.contains("1024"),
            "{msg}"
        );
        // Repeats do not count.
        let text = "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  excludeUids: [5, 7, 5]\n";
        assert_eq!(parse_policy(text, "p").unwrap().exclude_uids, vec![5, 7]);
    }

    #[test]
    fn file_errors() {
        let dir =
            std::env::temp_dir().join(format!("classifier-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let missing = dir.join("missing.yaml");
        let msg = load_policy_file(&missing).unwrap_err().to_string();
        assert!(msg.starts_with(&missing.display().to_string()), "{msg}");

        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, b"apiVersion: \xff\n").unwrap();
        assert!(matches!(
            load_policy_file(&bad),
            Err(PolicyError::NotUtf8 { .. })
        ));

        let big = dir.join("big.yaml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_POLICY_FILE_BYTES + 1).unwrap();
        match load_policy_file(&big) {
            Err(PolicyError::TooLarge { size, limit, .. }) => {
                assert_eq!((size, limit), (MAX_POLICY_FILE_BYTES + 1, 16 * 1024 * 1024))
            }
            other => panic!("{other:?}"),
        }

        let good = dir.join("good.yaml");
        std::fs::write(&good, EXAMPLE).unwrap();
        assert_eq!(load_policy_file(&good).unwrap().rules.len(), 1);
        let msg = {
            std::fs::write(&good, EXAMPLE.replace("4222", "0")).unwrap();
            load_policy_file(&good).unwrap_err().to_string()
        };
        assert!(
            msg.starts_with(&format!("{}: spec.rules[0].ports: port 0", good.display())),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cluster_networks_and_wildcard_ports() {
        let head = "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\n";
        let p = parse_policy_document(head, "p").unwrap();
        assert_eq!(p.cluster_networks, default_cluster_networks());
        assert_eq!(p.cluster_networks.len(), 5);
        for list in [
            "\"10.0.0.0/16, fd00::/16\"",
            "[\"10.0.0.0/16\", \"fd00::/16\"]",
        ] {
            let text = format!("{head}spec:\n  clusterNetworks: {list}\n");
            let p = parse_policy_document(&text, "p").unwrap();
            assert_eq!(
                p.cluster_networks,
                vec![net("10.0.0.0/16"), net("fd00::/16")]
            );
            assert_eq!(p.policy, Policy::builtin_default());
        }
        let text = format!("{head}spec:\n  clusterNetworks: \"10.0.0.1/16\"\n");
        let msg = syntax_error(&text);
        assert!(
            msg.contains("spec.clusterNetworks")
                && msg.contains("host bits")
                && msg.contains("line 4"),
            "{msg}"
        );
        let text = format!("{head}spec:\n  clusterNetworks: [\"10.0.0.0/8\", 7]\n");
        assert!(syntax_error(&text).contains("spec.clusterNetworks[1]"));

        // `metadata` is allowed (a ClassifierPolicy among manifests).
        let text = format!("{head}metadata: {{name: x}}\nspec:\n  rules:\n    - {{networks: [\"0.0.0.0/0\"], ports: \"*\", protocol: detect}}\n    - {{networks: [\"::/0\"], ports: \"1-65535\", protocol: detect}}\n");
        let p = parse_policy(&text, "p").unwrap();
        assert!(p.rules[0].ports.is_all() && p.rules[1].ports.is_all());
        assert_eq!(p.rules[1].origin, "spec.rules[1]");
        // "*" only means all ports in a rule's ports.
        let text = format!("{head}spec:\n  defaultOpaquePorts: \"*\"\n");
        assert!(syntax_error(&text).contains("spec.defaultOpaquePorts"));
        let text = format!("{head}spec:\n  rules: [{{networks: [\"0.0.0.0/0\"], ports: \"*,80\", protocol: detect}}]\n");
        assert!(syntax_error(&text).contains("spec.rules[0].ports"));
    }
}
