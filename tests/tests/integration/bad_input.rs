//! Every way a policy file can be wrong, fed to a running agent: each is
//! rejected with the exact message a user sees, and the policy in force
//! before it keeps classifying.

use std::{fs, os::unix::fs::symlink, path::Path};

use tests::{privileged, Sandbox};

const HEAD: &str = "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n";

fn with_rules(rules: &str) -> String {
    format!("{HEAD}  rules:\n{rules}")
}

/// (what is wrong, file contents, the message after "policy.yaml: ").
fn cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let rule = |networks: &str, ports: &str, protocol: &str| {
        with_rules(&format!(
            "    - {{networks: [{networks}], ports: {ports}, protocol: {protocol}}}\n"
        ))
    };
    let s = |text: String| text.into_bytes();
    vec![
        ("truncated YAML", s(format!("{HEAD}  rules:\n    - networks: [\"10.0.0.0/8\"\n")), "spec.rules[0].networks: unclosed bracket '[' at line 5 column 17"),
        ("tab indentation", s(format!("{HEAD}\trules: []\n")), "tabs disallowed within this context (block indentation) at line 4 column 2"),
        ("wrong kind", s("apiVersion: classifier.dev/v1alpha1\nkind: Policy\n".into()), "kind: unsupported kind \"Policy\", expected \"ClassifierPolicy\" at line 2 column 7"),
        ("wrong apiVersion", s("apiVersion: v1\nkind: ClassifierPolicy\n".into()), "apiVersion: unsupported apiVersion \"v1\", expected \"classifier.dev/v1alpha1\" at line 1 column 13"),
        ("unknown spec field", s(format!("{HEAD}  rulez: []\n")), "spec.rulez: unknown field `rulez`, expected one of defaultOpaquePorts, excludeUids, rules, mark, clusterNetworks, learning at line 4 column 3"),
        ("unknown rule field", s(with_rules("    - {networks: [\"10.0.0.0/8\"], ports: \"80\", protocol: opaque, colour: red}\n")), "spec.rules[0].colour: unknown field `colour`, expected one of networks, ports, protocol at line 5 column 65"),
        ("ports of the wrong type", s(rule("\"10.0.0.0/8\"", "[80]", "opaque")), "spec.rules[0].ports: invalid type: sequence, expected a port list string like \"25,587,4000-4100\" or a port number at line 5 column 34"),
        ("excludeUids of the wrong type", s(format!("{HEAD}  excludeUids: \"2102\"\n")), "spec.excludeUids: expected sequence start at line 4 column 16"),
        ("negative UID", s(format!("{HEAD}  excludeUids: [-1]\n")), "spec.excludeUids[0]: -1 is out of range: expected a whole number from 0 to 4294967295 at line 4 column 17"),
        ("IPv4 prefix 33", s(rule("\"10.0.0.0/33\"", "\"80\"", "opaque")), "spec.rules[0].networks[0]: invalid CIDR \"10.0.0.0/33\": prefix length \"33\" is not in 0-32 for IPv4 at line 5 column 19"),
        ("octet over 255", s(rule("\"300.1.1.0/24\"", "\"80\"", "opaque")), "spec.rules[0].networks[0]: invalid CIDR \"300.1.1.0/24\": \"300.1.1.0\" is not an IP address at line 5 column 19"),
        ("not an address", s(rule("banana", "\"80\"", "opaque")), "spec.rules[0].networks[0]: \"banana\" is not an IP address or CIDR at line 5 column 19"),
        ("host bits set", s(rule("\"10.0.0.1/8\"", "\"80\"", "opaque")), "spec.rules[0].networks[0]: CIDR \"10.0.0.1/8\" has host bits set; did you mean \"10.0.0.0/8\"? at line 5 column 19"),
        ("IPv6 prefix 129", s(rule("\"2001:db8::/129\"", "\"80\"", "opaque")), "spec.rules[0].networks[0]: invalid CIDR \"2001:db8::/129\": prefix length \"129\" is not in 0-128 for IPv6 at line 5 column 19"),
        ("v4-mapped CIDR", s(rule("\"::ffff:10.0.0.0/104\"", "\"80\"", "opaque")), "spec.rules[0].networks[0]: CIDR \"::ffff:10.0.0.0/104\" is IPv4-mapped IPv6 and would never match: IPv4 destinations are matched as IPv4 (write \"10.0.0.0/8\") at line 5 column 19"),
        ("except outside its network", s(rule("{cidr: \"10.0.0.0/8\", except: [\"192.168.0.0/16\"]}", "\"80\"", "opaque")), "spec.rules[0].networks[0]: except 192.168.0.0/16 is not strictly inside cidr 10.0.0.0/8 at line 5 column 19"),
        ("except equal to its network", s(rule("{cidr: \"10.0.0.0/8\", except: [\"10.0.0.0/8\"]}", "\"80\"", "opaque")), "spec.rules[0].networks[0]: except 10.0.0.0/8 is not strictly inside cidr 10.0.0.0/8 at line 5 column 19"),
        ("except of another family", s(rule("{cidr: \"10.0.0.0/8\", except: [\"fd00::/8\"]}", "\"80\"", "opaque")), "spec.rules[0].networks[0]: except fd00::/8 is not the same address family as cidr 10.0.0.0/8 at line 5 column 19"),
        ("port 0", s(format!("{HEAD}  defaultOpaquePorts: \"0\"\n")), "spec.defaultOpaquePorts: port 0 is not a valid port at line 4 column 23"),
        ("port 65536", s(format!("{HEAD}  defaultOpaquePorts: \"65536\"\n")), "spec.defaultOpaquePorts: port 65536 is out of range (1-65535) at line 4 column 23"),
        ("reversed range 5-3", s(format!("{HEAD}  defaultOpaquePorts: \"5-3\"\n")), "spec.defaultOpaquePorts: range \"5-3\" is reversed: 5 is greater than 3 at line 4 column 23"),
        ("range a-b", s(format!("{HEAD}  defaultOpaquePorts: \"a-b\"\n")), "spec.defaultOpaquePorts: \"a-b\" is not a port number or a range like \"4000-4100\" at line 4 column 23"),
        ("empty port list item", s(format!("{HEAD}  defaultOpaquePorts: \"25,,26\"\n")), "spec.defaultOpaquePorts: empty item #2 in port list \"25,,26\" at line 4 column 23"),
        ("rule with no ports", s(rule("\"10.0.0.0/8\"", "\"\"", "opaque")), "spec.rules[0].ports: a rule needs at least one port, got an empty port list at line 5 column 41"),
        ("rule with no networks", s(rule("", "\"80\"", "opaque")), "spec.rules[0].networks: a rule needs at least one network (use \"0.0.0.0/0\" and \"::/0\" for all destinations) at line 5 column 18"),
        ("rule without protocol", s(with_rules("    - {networks: [\"10.0.0.0/8\"], ports: \"80\"}\n")), "spec.rules[0]: missing field `protocol` at line 5 column 34"),
        ("unknown protocol", s(rule("\"10.0.0.0/8\"", "\"80\"", "mysql")), "spec.rules[0].protocol: unknown variant `mysql`, expected one of opaque, http1, http2, detect at line 5 column 57"),
        ("duplicate rules", s(with_rules("    - {networks: [\"10.0.0.0/8\"], ports: \"80\", protocol: opaque}\n    - {networks: [\"10.0.0.0/8\"], ports: \"80\", protocol: opaque}\n")), "spec.rules[1]: rule 2 duplicates spec.rules[0] (rule 1): same networks, ports 80 and protocol opaque"),
        ("mark outside its mask", s(format!("{HEAD}  mark: {{value: 0x3, mask: 0x1}}\n")), "spec.mark: mark value 0x3 has bits outside mask 0x1 at line 4 column 9"),
        ("zero mark mask", s(format!("{HEAD}  mark: {{value: 0, mask: 0}}\n")), "spec.mark: mark mask must not be 0 at line 4 column 9"),
        ("too many rules for the maps", s(rule("\"0.0.0.0/0\", \"10.0.0.0/8\", \"11.0.0.0/8\", \"12.0.0.0/8\", \"13.0.0.0/8\"", "\"1-65534\"", "opaque")), "the policy needs 327670 IPv4 trie entries but at most 262144 fit"),
        ("not UTF-8", b"\xff\xfe policy\n".to_vec(), "policy file is not valid UTF-8"),
        ("50 MB file", vec![b'#'; 50_000_000], "policy file is 50000000 bytes, over the limit of 16777216 bytes"),
    ]
}

const GOOD: &str = "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  rules:\n    - {networks: [\"127.0.0.0/8\"], ports: \"4222\", protocol: opaque}\n";

fn wait_for_log(sb: &Sandbox, needle: &str, what: &str) {
    if let Err(err) = sb.wait_for_log(needle, 1, std::time::Duration::from_secs(10)) {
        panic!("{what}: expected error: {err:#}");
    }
}

fn replace(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).unwrap();
    fs::rename(&tmp, path).unwrap();
}

#[test]
fn bad_policy_files_are_rejected_with_their_error_and_the_previous_policy_stays() {
    if !privileged!() {
        return;
    }
    let cases = cases();
    assert!(cases.len() >= 30);
    let mut sb = Sandbox::new("bad-input").expect("sandbox");
    let policy = sb.write_file("policy.yaml", GOOD);
    sb.start_agent(&[
        "--policy",
        policy.to_str().unwrap(),
        "--watch-interval",
        "0.02",
    ])
    .expect("agent starts with the good policy");
    let generation = sb.generation();

    for (what, contents, message) in &cases {
        replace(&policy, contents);
        wait_for_log(&sb, &format!("policy.yaml: {message}"), what);
    }

    // A symlink loop where the file was, swapped in with one rename: the
    // agent must never see the file missing in between, since a missing
    // file and a loop look the same to its poll (nothing to stat), and the
    // loop would then not be reported as its own error.
    let other = sb.dir.join("other.yaml");
    let loop_link = sb.dir.join("loop.tmp");
    symlink(&other, &loop_link).unwrap();
    symlink(&policy, &other).unwrap();
    fs::rename(&loop_link, &policy).unwrap();
    wait_for_log(
        &sb,
        "policy.yaml: cannot read policy file: Too many levels of symbolic links",
        "symlink loop",
    );

    let rejections = sb.agent_log().matches("stays active").count();
    assert_eq!(
        rejections,
        cases.len() + 1,
        "one report per bad file:\n{}",
        sb.agent_log()
    );
    assert_eq!(sb.generation(), generation, "no bad file was applied");
    let nats = sb
        .verdict("127.0.0.1:4222")
        .expect("a verdict under the good policy");
    assert_eq!(
        nats["protocol"], "opaque",
        "the good policy still classifies: {nats}"
    );
    assert_eq!(nats["source"], "rule:1");
}
