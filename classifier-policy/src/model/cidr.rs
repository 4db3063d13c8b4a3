//! CIDR text and the networks Linkerd assumes: shared by the policy file
//! parser and the Linkerd document compiler, so both accept and reject
//! the same strings with the same messages.

use std::net::IpAddr;

use ipnet::IpNet;

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

/// Parses `addr/len` or a bare address (a host). Rejects host bits, because
/// "10.0.0.1/8" more often means a typo than the whole /8.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
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
pub fn check_except(cidr: IpNet, e: IpNet) -> Result<(), String> {
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
