//! EgressNetworks: their networks (or everything outside the cluster's),
//! and the precedence among those that match the same destination.

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::{age_order, rule_origin, Compiler, Options};
use crate::model::{check_except, Network, Protocol};
use crate::ports::PortSet;
use crate::sources::document::{Document, DocumentSet};
use crate::sources::kinds;
use crate::sources::objects::EgressNetwork;

/// One EgressNetwork as the compiler ranks it.
struct Egress<'a> {
    doc: &'a Document,
    /// `None` for the global namespace's: node-wide.
    scope: Option<String>,
    networks: Vec<Network>,
    ports: PortSet,
}

impl Compiler {
    pub(super) fn egress_networks(
        &mut self,
        set: &DocumentSet,
        opts: &Options,
        defaults: &PortSet,
        cluster_networks: &[IpNet],
    ) {
        let egresses: Vec<(&Document, &EgressNetwork)> =
            self.read(set, &kinds::EGRESS_NETWORK).collect();
        let mut all: Vec<Egress> = egresses
            .into_iter()
            .map(|(doc, e)| {
                let ns = doc.namespace.as_deref().unwrap_or("default").to_string();
                Egress {
                    doc,
                    scope: (ns != opts.egress_global_namespace).then_some(ns),
                    networks: if e.networks.is_empty() {
                        outside_cluster(cluster_networks)
                    } else {
                        e.networks.clone()
                    },
                    ports: e.opaque.clone().unwrap_or_else(|| defaults.clone()),
                }
            })
            .collect();
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
            self.egress_rules(e, &contested);
        }
    }

    /// One EgressNetwork's rules, in order: its opaque ports; detection on
    /// the `contested` ports (those a later EgressNetwork of the same scope
    /// makes opaque on one of its CIDRs) it does not make opaque itself;
    /// detection on every other port.
    fn egress_rules(&mut self, e: &Egress, contested: &PortSet) {
        let origin = rule_origin(e.doc);
        self.set_owner(e.doc.namespace.as_deref());
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

/// Everything outside the cluster's networks, v4 and v6: an EgressNetwork
/// without `networks`.
fn outside_cluster(cluster_networks: &[IpNet]) -> Vec<Network> {
    ["0.0.0.0/0", "::/0"]
        .into_iter()
        .map(|all_net| {
            let cidr: IpNet = all_net.parse().expect("valid");
            let mut except: Vec<IpNet> = cluster_networks
                .iter()
                .copied()
                .filter(|c| check_except(cidr, *c).is_ok())
                .collect();
            except.sort();
            except.dedup();
            Network { cidr, except }
        })
        .collect()
}
