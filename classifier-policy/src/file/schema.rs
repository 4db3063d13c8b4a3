//! The ClassifierPolicy file's shape, as serde types whose `Deserialize`
//! impls carry every value check (see the [module docs](super)).

use std::fmt;

use ipnet::IpNet;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::{API_VERSION, KIND};
use crate::model::{check_except, parse_cidr, Mark, Network, Protocol};
use crate::ports::PortSet;

// ---------------------------------------------------------------------------
// The file's shape
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Document {
    #[allow(dead_code)] // checked while deserializing
    api_version: ApiVersion,
    #[allow(dead_code)]
    kind: Kind,
    /// Allowed (a ClassifierPolicy among Kubernetes manifests has a name)
    /// and not used.
    #[allow(dead_code)]
    #[serde(default)]
    metadata: Option<de::IgnoredAny>,
    #[serde(default)]
    pub(super) spec: Option<Spec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Spec {
    #[serde(default)]
    pub(super) default_opaque_ports: Option<PortSet>,
    #[serde(default)]
    pub(super) exclude_uids: Option<Vec<Uint32>>,
    #[serde(default)]
    pub(super) rules: Option<Vec<RawRule>>,
    #[serde(default)]
    pub(super) mark: Option<CheckedMark>,
    #[serde(default)]
    pub(super) cluster_networks: Option<ClusterNetworks>,
    #[serde(default)]
    pub(super) learning: Option<RawLearning>,
}

/// `spec.learning`; each value checked where it is read, so an
/// error names its field and line.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawLearning {
    #[serde(default)]
    pub(super) enabled: Option<Bool>,
    #[serde(default)]
    pub(super) ttl: Option<Ttl>,
    #[serde(default)]
    pub(super) min_observations: Option<MinObservations>,
    #[serde(default)]
    pub(super) scope: Option<Scope>,
}

/// A `u32` whose error names the value written (serde-saphyr's own `u32`
/// error says "invalid u32" and no more). A leading zero (`0755`) is
/// refused: YAML 1.1 reads it as octal, 1.2 as decimal.
#[derive(Clone, Copy)]
pub(super) struct Uint32(pub(super) u32);

impl<'de> Deserialize<'de> for Uint32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Uint32;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a whole number from 0 to {}", u32::MAX)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Uint32, E> {
                u32::try_from(v).map(Uint32).map_err(|_| {
                    E::custom(format!(
                        "{v} is out of range: expected a whole number from 0 to {}",
                        u32::MAX
                    ))
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Uint32, E> {
                let digits = v.strip_prefix(['+', '-']).unwrap_or(v);
                if digits.len() > 1
                    && digits.starts_with('0')
                    && digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(E::custom(format!(
                        "{v} has a leading zero, octal in YAML 1.1 and decimal in YAML 1.2: write it without the zero, or as 0o{} for octal",
                        digits.trim_start_matches('0')
                    )));
                }
                Err(E::invalid_type(de::Unexpected::Str(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Uint32, E> {
                u64::try_from(v).map_or_else(
                    |_| {
                        Err(E::custom(format!(
                            "{v} is out of range: expected a whole number from 0 to {}",
                            u32::MAX
                        )))
                    },
                    |v| self.visit_u64(v),
                )
            }
        }
        d.deserialize_any(V)
    }
}

/// `true` or `false` (YAML 1.2: not `yes`, `on`...), an error naming any
/// other value.
pub(super) struct Bool(pub(super) bool);

impl<'de> Deserialize<'de> for Bool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bool;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Bool, E> {
                Ok(Bool(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bool, E> {
                Err(E::custom(format!(
                    "{v:?} is not a boolean: write true or false"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) struct Ttl(pub(super) std::time::Duration);

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |s| crate::model::parse_ttl(s).map(Ttl))
    }
}

pub(super) struct Scope(pub(super) crate::model::LearningScope);

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |s| crate::model::LearningScope::parse(s).map(Scope))
    }
}

pub(super) struct MinObservations(pub(super) u32);

impl<'de> Deserialize<'de> for MinObservations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MinObservations;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number of at least 1")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MinObservations, E> {
                if v < 1 || v > i64::from(u32::MAX) {
                    return Err(E::custom(format!(
                        "minObservations {v} is out of range: it must be at least 1"
                    )));
                }
                Ok(MinObservations(v as u32))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MinObservations, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_any(V)
    }
}

/// `clusterNetworks`: a list of CIDRs or one comma-separated string of them
/// (Linkerd's own helm value is the string form).
pub(super) struct ClusterNetworks(pub(super) Vec<IpNet>);

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
pub(super) struct RawRule {
    pub(super) networks: Networks,
    pub(super) ports: NonEmptyPorts,
    pub(super) protocol: Protocol,
}

/// Deserializes a string and lets `check` accept or reject it. The check
/// runs inside the visitor: only errors raised there get the string's own
/// field path and position (see [`super::read::from_yaml_str`]).
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

pub(super) struct NonEmptyPorts(pub(super) PortSet);

impl<'de> Deserialize<'de> for NonEmptyPorts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `"*"` is every port: a wildcard-port rule.
        crate::ports::deserialize_port_list_or_all(
            d,
            Some("a rule needs at least one port, got an empty port list"),
        )
        .map(NonEmptyPorts)
    }
}

pub(super) struct Networks(pub(super) Vec<Network>);

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

pub(super) struct CheckedMark(pub(super) Mark);

impl<'de> Deserialize<'de> for CheckedMark {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            value: Uint32,
            mask: Uint32,
        }

        // Checked inside visit_map so the error points at the mark itself.
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CheckedMark;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map {value, mask}")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CheckedMark, A::Error> {
                let Raw {
                    value: Uint32(value),
                    mask: Uint32(mask),
                } = Raw::deserialize(de::value::MapAccessDeserializer::new(map))?;
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
