//! The policies the benchmark applies: random rules of a given count, and
//! a policy written back as a ClassifierPolicy file for the agent.

use std::fmt::Write as _;

use classifier_user::policy::{Network, Policy, PortSet, Protocol, Rule};

use crate::rng::Rng;

/// `rules` random rules: half IPv4 (/16 to /32), half IPv6 (/32 to /128),
/// two random ports each, all opaque.
pub(crate) fn random_policy(rules: usize, seed: u64) -> Policy {
    let mut rng = Rng(seed | 1);
    let mut policy = Policy::builtin_default();
    for i in 0..rules {
        let cidr: ipnet::IpNet = if i % 2 == 0 {
            let prefix = 16 + (rng.next() % 17) as u8;
            ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(rng.next() as u32), prefix)
                .unwrap()
                .trunc()
                .into()
        } else {
            let prefix = 32 + (rng.next() % 97) as u8;
            let addr = ((rng.next() as u128) << 64) | rng.next() as u128;
            // Keep clear of ::ffff:0:0/96, which the policy model rejects.
            let addr = addr | (0x2001u128 << 112);
            ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(addr), prefix)
                .unwrap()
                .trunc()
                .into()
        };
        let mut ports = PortSet::new();
        ports.insert(1024 + (rng.next() % 60_000) as u16);
        ports.insert(1024 + (rng.next() % 60_000) as u16);
        policy.rules.push(Rule::new(
            i as u32 + 1,
            vec![Network::new(cidr)],
            ports,
            Protocol::Opaque,
        ));
    }
    policy
}

/// The policy as a ClassifierPolicy file, for the agent's own parser.
pub(crate) fn policy_yaml(policy: &Policy) -> String {
    let mut out = String::from(
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  rules:\n",
    );
    for rule in &policy.rules {
        let _ = writeln!(
            out,
            "    - {{networks: [\"{}\"], ports: \"{}\", protocol: {}}}",
            rule.networks[0].cidr,
            rule.ports,
            rule.protocol.as_str()
        );
    }
    out
}
