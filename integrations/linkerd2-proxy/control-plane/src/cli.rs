//! Command-line parsing (hand-rolled to keep the dependency set identical to
//! the proxy's, so the build reuses the proxy's compiled dependencies).

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

pub const HELP: &str = "\
linkerd-test-control-plane: a stand-in Linkerd control plane for tests only.

Serves, in plaintext gRPC on one address, the control-plane APIs that an
unmodified linkerd2-proxy needs to start and become ready without Kubernetes:

  identity     Identity/Certify returns the pre-issued certificate chain from
               --identity-dir, valid for 1h from the request (no signing).
  outbound     OutboundPolicies/Get,Watch return, for any target, the policy
               linkerd2's policy controller returns for an address that no
               resource covers: protocol Detect (timeout --detect-timeout) with
               opaque, HTTP/1 and HTTP/2 routes forwarding to the original
               destination. Watch sends one update and stays open.
  inbound      InboundServerPolicies/GetPort,WatchPort return the default
               `all-unauthenticated` server (Detect, any client).
  destination  Destination/Get,GetProfile answer InvalidArgument (\"cannot
               resolve\"), which the proxy treats as no discovery.

Every request is logged to stderr. \"ready\" is printed on stdout once the
listener is bound, so a test can wait for that line.

USAGE:
    linkerd-test-control-plane --identity-dir DIR [--listen ADDR] [--detect-timeout DUR]
                               [--http-route IP:PORT]...

OPTIONS:
    --listen ADDR          Address to serve on [default: 127.0.0.1:8090].
                           Use a loopback address: the proxy then talks
                           plaintext to it (no control-plane TLS identity).
    --identity-dir DIR     Directory holding ca1-cert.pem: the proxy's leaf
                           certificate followed by any intermediates, in PEM.
                           Point the proxy's LINKERD2_PROXY_IDENTITY_DIR at the
                           same directory (it reads key.p8 and csr.der there).
                           Upstream's test identities work as they are, e.g.
                           linkerd/app/integration/src/data/foo-ns1 with trust
                           anchors ../ca1.pem and local name
                           foo.ns1.serviceaccount.identity.linkerd.cluster.local
    --detect-timeout DUR   Protocol-detection timeout placed in every policy
                           (outbound and inbound), e.g. 3s, 500ms, 1m
                           [default: 10s, as linkerd2's policy controller].
                           NOTE: a sidecar proxy's OUTBOUND detection does not
                           use this value; it waits
                           LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT (default 10s)
                           for a client's first bytes before falling back to
                           opaque TCP (so a server-speaks-first protocol sees
                           that delay). Inbound detection does use this value.
                           Set both to the same value to avoid confusion.
    --http-route IP:PORT   For this target, answer as the policy controller
                           does for a Service port without appProtocol that
                           an HTTPRoute attaches to: Detect, whose HTTP/1 and
                           HTTP/2 routes come from the HTTPRoute `e2e-route`
                           (resource metadata) and add the response header
                           `l5d-e2e-route: e2e-route`. Repeatable.
    -h, --help             Print this help.
    -V, --version          Print the version.

PROXY SETTINGS (the ones that point the proxy here; identity, listener and
network settings are also needed, see LINKERD2_PROXY_* in linkerd/app/src/env.rs):
    LINKERD2_PROXY_IDENTITY_SVC_ADDR=<listen>
    LINKERD2_PROXY_IDENTITY_SVC_NAME=identity.linkerd.serviceaccount.identity.linkerd.cluster.local
    LINKERD2_PROXY_DESTINATION_SVC_ADDR=<listen>
    LINKERD2_PROXY_POLICY_SVC_ADDR=<listen>
    LINKERD2_PROXY_POLICY_WORKLOAD=<ns>:<pod>   (any non-empty value)
    LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS=<networks that exclude the test targets>
";

#[derive(Debug)]
pub struct Args {
    pub listen: SocketAddr,
    pub identity_dir: PathBuf,
    pub detect_timeout: Duration,
    pub http_routes: Vec<SocketAddr>,
}

#[derive(Debug)]
pub enum Parsed {
    Run(Args),
    Help,
    Version,
}

impl Args {
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, String> {
        let mut listen: SocketAddr = "127.0.0.1:8090".parse().expect("valid default");
        let mut identity_dir = None;
        let mut detect_timeout = Duration::from_secs(10);
        let mut http_routes = Vec::new();

        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let arg = arg
                .into_string()
                .map_err(|a| format!("argument is not UTF-8: {a:?}"))?;
            // Accept both `--flag value` and `--flag=value`.
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg, None),
            };
            let mut value = |name: &str| -> Result<String, String> {
                if let Some(v) = inline.clone() {
                    return Ok(v);
                }
                args.next()
                    .ok_or_else(|| format!("{name} requires a value"))?
                    .into_string()
                    .map_err(|a| format!("{name} value is not UTF-8: {a:?}"))
            };
            match flag.as_str() {
                "-h" | "--help" => return Ok(Parsed::Help),
                "-V" | "--version" => return Ok(Parsed::Version),
                "--listen" => {
                    let v = value("--listen")?;
                    listen = v
                        .parse()
                        .map_err(|e| format!("--listen {v:?}: expected IP:PORT ({e})"))?;
                }
                "--identity-dir" => identity_dir = Some(PathBuf::from(value("--identity-dir")?)),
                "--detect-timeout" => {
                    let v = value("--detect-timeout")?;
                    detect_timeout = parse_duration(&v).ok_or_else(|| {
                        format!("--detect-timeout {v:?}: expected e.g. 3s, 500ms, 1m")
                    })?;
                }
                "--http-route" => {
                    let v = value("--http-route")?;
                    http_routes.push(
                        v.parse()
                            .map_err(|e| format!("--http-route {v:?}: expected IP:PORT ({e})"))?,
                    );
                }
                other => return Err(format!("unexpected argument {other:?}")),
            }
        }

        let identity_dir = identity_dir.ok_or("--identity-dir is required")?;
        Ok(Parsed::Run(Args {
            listen,
            identity_dir,
            detect_timeout,
            http_routes,
        }))
    }
}

/// Parses `<integer><unit>` with unit one of `ms`, `s`, `m`, `h` (the same
/// forms the proxy accepts in its `*_TIMEOUT` environment variables).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        Args::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("3 s"), None);
        assert_eq!(parse_duration("1.5s"), None);
    }

    #[test]
    fn args() {
        match parse(&[
            "--identity-dir",
            "/x",
            "--listen=127.0.0.1:1",
            "--detect-timeout",
            "3s",
            "--http-route",
            "192.0.2.2:6379",
        ]) {
            Ok(Parsed::Run(a)) => {
                assert_eq!(a.listen, "127.0.0.1:1".parse().unwrap());
                assert_eq!(a.identity_dir, PathBuf::from("/x"));
                assert_eq!(a.detect_timeout, Duration::from_secs(3));
                assert_eq!(a.http_routes, ["192.0.2.2:6379".parse().unwrap()]);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&[]).is_err());
        assert!(parse(&["--identity-dir"]).is_err());
        assert!(parse(&["--identity-dir", "/x", "--bogus"]).is_err());
        assert!(parse(&["--identity-dir", "/x", "--http-route", "6379"]).is_err());
        assert!(matches!(parse(&["--help"]), Ok(Parsed::Help)));
    }
}
