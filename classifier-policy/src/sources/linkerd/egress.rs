//! EgressNetworks: their networks (or everything outside the cluster's),
//! and the precedence among those that match the same destination.

use std::collections::BTreeSet;

use ipnet::IpNet;
use serde_yaml::Value;

use super::values::{invalid, need_name, opaque_annotation, seq_at, str_at};
use super::{age_order, read, rule_origin, Compiler, Options, Rejected};
use crate::model::{check_except, parse_cidr, Network, PolicyError, Protocol};
use crate::ports::PortSet;
use crate::sources::document::{show, Document, DocumentSet};
use crate::sources::kinds;

impl Compiler {
    pub(super) fn egress_networks<'a>(
        &mut self,
        set: &'a DocumentSet,
        opts: &Options,
        defaults: &PortSet,
        cluster_networks: &[IpNet],
    ) {
        struct Egress<'a> {
            doc: &'a Document,
            scope: Option<String>,
            networks: Vec<Network>,
            ports: PortSet,
        }
        let mut all: Vec<Egress> = Vec::new();
        let parse = |doc: &'a Document| -> Result<Egress<'a>, PolicyError> {
            need_name(doc)?;
            let ns = doc.namespace.clone().unwrap_or_else(|| "default".into());
            let scope = (ns != opts.egress_global_namespace).then_some(ns);
            if let Some(tp) = str_at(doc, &["spec", "trafficPolicy"])? {
                if tp != "Allow" && tp != "Deny" {
                    return Err(invalid(
                        doc,
                        "spec.trafficPolicy",
                        format!("unknown trafficPolicy {tp:?}, expected Allow or Deny"),
                    ));
                }
            }
            let mut networks = Vec::new();
            for (i, n) in seq_at(doc, &["spec", "networks"])?.iter().enumerate() {
                let field = format!("spec.networks[{i}]");
                let cidr_text = n.get("cidr").and_then(Value::as_str).ok_or_else(|| {
                    invalid(
                        doc,
                        format!("{field}.cidr"),
                        format!(
                            "expected a CIDR string, got {}",
                            n.get("cidr").map_or("nothing".into(), show)
                        ),
                    )
                })?;
                let cidr =
                    parse_cidr(cidr_text).map_err(|m| invalid(doc, format!("{field}.cidr"), m))?;
                let mut except = Vec::new();
                match n.get("except") {
                    None | Some(Value::Null) => {}
                    Some(Value::Sequence(list)) => {
                        for (j, e) in list.iter().enumerate() {
                            let f = format!("{field}.except[{j}]");
                            let text = e.as_str().ok_or_else(|| {
                                invalid(doc, &f, format!("expected a CIDR string, got {}", show(e)))
                            })?;
                            let e = parse_cidr(text).map_err(|m| invalid(doc, &f, m))?;
                            check_except(cidr, e).map_err(|m| invalid(doc, &f, m))?;
                            except.push(e);
                        }
                    }
                    Some(other) => {
                        return Err(invalid(
                            doc,
                            format!("{field}.except"),
                            format!("expected a list, got {}", show(other)),
                        ))
                    }
                }
                networks.push(Network { cidr, except });
            }
            if networks.is_empty() {
                // Everything outside the cluster's networks, v4 and v6.
                for all_net in ["0.0.0.0/0", "::/0"] {
                    let cidr: IpNet = all_net.parse().expect("valid");
                    let mut except: Vec<IpNet> = cluster_networks
                        .iter()
                        .copied()
                        .filter(|c| check_except(cidr, *c).is_ok())
                        .collect();
                    except.sort();
                    except.dedup();
                    networks.push(Network { cidr, except });
                }
            }
            let ports = match opaque_annotation(doc, false)? {
                Some(a) => a.ports,
                None => defaults.clone(),
            };
            Ok(Egress {
                doc,
                scope,
                networks,
                ports,
            })
        };
        for doc in read(set, &kinds::EGRESS_NETWORK) {
            match parse(doc) {
                Ok(e) => all.push(e),
                Err(e) => self.rejected.push(Rejected::of(doc, e)),
            }
        }
        // Node-wide first, then by namespace; within one, precedence order.
        all.sort_by(|a, b| a.scope.cmp(&b.scope).then_with(|| age_order(a.doc, b.doc)));
        for i in 0..all.len() {
            let e = &all[i];
            let cidrs: BTreeSet<IpNet> = e.networks.iter().map(|n| n.cidr).collect();
            // Opaque ports of later EgressNetworks with one of our CIDRs:
            // their explicit rules would beat our wildcard detect rule.
            let mut contested = PortSet::new();
            for later in all[i + 1..].iter().filter(|l| l.scope == e.scope) {
                if later.networks.iter().any(|n| cidrs.contains(&n.cidr)) && !later.ports.is_all() {
                    contested.union_with(&later.ports);
                }
            }
            let origin = rule_origin(e.doc);
            self.owner = e.doc.namespace.clone();
            let (networks, ports, scope) = (e.networks.clone(), e.ports.clone(), e.scope.clone());
            // EgressNetworks of the global namespace are their own tier,
            // which a namespace with EgressNetworks of its own never sees.
            let global = scope.is_none();
            self.push_rule(
                networks.clone(),
                ports.clone(),
                Protocol::Opaque,
                scope.clone(),
                global,
                origin.clone(),
            );
            if ports.is_all() {
                // Our opaque rule is itself a wildcard one.
                self.push_rule(
                    networks.clone(),
                    contested.clone(),
                    Protocol::Opaque,
                    scope.clone(),
                    global,
                    origin.clone(),
                );
            } else {
                let detect: PortSet = contested.iter().filter(|p| !ports.contains(*p)).collect();
                self.push_rule(
                    networks.clone(),
                    detect,
                    Protocol::Detect,
                    scope.clone(),
                    global,
                    origin.clone(),
                );
            }
            self.push_rule(
                networks,
                PortSet::all(),
                Protocol::Detect,
                scope,
                global,
                origin,
            );
        }
    }
}
