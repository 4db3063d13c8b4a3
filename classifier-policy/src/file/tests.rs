use super::*;
use crate::model::Mark;

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
                global_egress: false,
                origin: "spec.rules[0]".into(),
            }],
            mark: Some(Mark {
                value: 0x40000,
                mask: 0x40000
            }),
            pod_namespaces: Default::default(),
            learning: Default::default(),
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

/// A network every rule of these documents could have.
const OK_NETS: &str = r#"["203.0.113.0/24"]"#;

/// Ports and protocols.
#[test]
fn bad_ports_and_protocols_name_origin_field_line_and_value() {
    let ok_nets = OK_NETS;
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
    ];
    for (text, parts) in &cases {
        assert_error(text, parts);
    }
}

/// Networks: their CIDRs.
#[test]
fn bad_cidrs_name_origin_field_line_and_value() {
    let cases: Vec<(String, Vec<&str>)> = vec![
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
            doc(r#"["::ffff:10.0.0.0/104"]"#, "\"25\"", "opaque", ""),
            vec!["spec.rules[0].networks[0]", "10.0.0.0/8", "line 7"],
        ),
        (
            doc("[]", "\"25\"", "opaque", ""),
            vec!["spec.rules[0].networks", "at least one network", "line 7"],
        ),
    ];
    for (text, parts) in &cases {
        assert_error(text, parts);
    }
}

/// Networks: their `except` lists and unknown keys.
#[test]
fn bad_excepts_name_origin_field_line_and_value() {
    let cases: Vec<(String, Vec<&str>)> = vec![
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
    ];
    for (text, parts) in &cases {
        assert_error(text, parts);
    }
}

/// The other settings, unknown fields, and the document's header.
#[test]
fn bad_settings_and_headers_name_origin_field_line_and_value() {
    let ok_nets = OK_NETS;
    let cases: Vec<(String, Vec<&str>)> = vec![
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
    let dir = std::env::temp_dir().join(format!("classifier-policy-test-{}", std::process::id()));
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
        msg.contains("spec.clusterNetworks") && msg.contains("host bits") && msg.contains("line 4"),
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

#[test]
fn learning_defaults_and_values() {
    use crate::model::{Learning, LearningScope};
    let head = "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n";
    assert_eq!(
        parse_policy(head, "policy.yaml").unwrap().learning,
        Learning::default()
    );
    let p = parse_policy(
        &format!("{head}  learning:\n    enabled: false\n    ttl: 1h30m\n    minObservations: 3\n    scope: node\n"),
        "policy.yaml",
    )
    .unwrap();
    assert_eq!(
        p.learning,
        Learning {
            enabled: false,
            ttl: std::time::Duration::from_secs(5400),
            min_observations: 3,
            scope: LearningScope::Node,
        }
    );
}

#[test]
fn bad_learning_values_name_origin_field_line_and_value() {
    let head = "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  learning:\n";
    for (body, parts) in [
        (
            "    ttl: soon\n",
            vec!["spec.learning.ttl", "\"soon\"", "line 5"],
        ),
        (
            "    minObservations: 0\n",
            vec![
                "spec.learning.minObservations",
                "minObservations 0",
                "line 5",
            ],
        ),
        (
            "    scope: cluster\n",
            vec!["spec.learning.scope", "\"cluster\"", "line 5"],
        ),
        (
            "    enabled: yes please\n",
            vec!["spec.learning.enabled", "line 5"],
        ),
        ("    bogus: 1\n", vec!["spec.learning", "bogus", "line 5"]),
    ] {
        assert_error(&format!("{head}{body}"), &parts);
    }
}

const HEAD: &str = "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\n";

/// `levels` levels of ten aliases each over the one before: 10^levels
/// copies of "lol" if it were expanded.
fn alias_bomb(levels: usize) -> String {
    let mut s = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..=levels {
        let prev = format!("*a{}", i - 1);
        s.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            [prev.as_str(); 10].join(", ")
        ));
    }
    s
}

#[test]
fn yaml_1_2_rules_and_limits() {
    // A duplicate key is an error naming the key's line, at any depth.
    for (text, parts) in [
        (
            format!("{HEAD}kind: ClassifierPolicy\n"),
            vec!["duplicate", "kind", "line 3"],
        ),
        (
            format!("{HEAD}spec:\n  excludeUids: [1]\n  rules: []\n  excludeUids: [2]\n"),
            vec!["spec", "duplicate", "excludeUids", "line 6"],
        ),
        (
            format!("{HEAD}spec:\n  rules:\n    - {{networks: [\"10.0.0.0/8\"], ports: 80, protocol: http1, ports: 81}}\n"),
            vec!["spec.rules[0]", "duplicate", "ports", "line 5"],
        ),
    ] {
        let msg = syntax_error(&text);
        assert!(msg.starts_with("policy.yaml: "), "{msg}");
        for part in parts {
            assert!(msg.contains(part), "expected {part:?} in {msg:?}");
        }
    }

    // YAML 1.2 booleans: `yes`, `on`, `y` are not booleans (YAML 1.1's
    // "Norway problem"); true/false in any usual case are.
    for word in ["yes", "on", "y", "off", "no"] {
        let msg = syntax_error(&format!("{HEAD}spec:\n  learning:\n    enabled: {word}\n"));
        for part in ["spec.learning.enabled", word, "line 5"] {
            assert!(msg.contains(part), "expected {part:?} in {msg:?}");
        }
    }
    for (word, want) in [("true", true), ("False", false), ("TRUE", true)] {
        let p = parse_policy(
            &format!("{HEAD}spec:\n  learning:\n    enabled: {word}\n"),
            "p",
        )
        .unwrap();
        assert_eq!(p.learning.enabled, want, "{word}");
    }

    // A leading 0 is octal in YAML 1.1 and decimal in 1.2: refused, with
    // the value and line; 0o and 0x prefixes work.
    let p = parse_policy(
        &format!("{HEAD}spec:\n  excludeUids: [755, 0o17, 0x10]\n"),
        "p",
    )
    .unwrap();
    assert_eq!(p.exclude_uids, vec![755, 15, 16]);
    assert_error(
        &format!("{HEAD}spec:\n  excludeUids: [1, 0755]\n"),
        &["spec.excludeUids[1]", "0755", "leading zero", "line 4"],
    );
    assert_error(
        &format!("{HEAD}spec:\n  mark: {{value: 010, mask: 0x10}}\n"),
        &["spec.mark.value", "010", "leading zero", "line 4"],
    );
    // A port list reads what was written.
    let p = parse_policy(&format!("{HEAD}spec:\n  defaultOpaquePorts: 0080\n"), "p").unwrap();
    assert_eq!(p.default_opaque_ports.to_string(), "80");
    // An out-of-range number names itself, the field and the line.
    assert_error(
        &format!("{HEAD}spec:\n  mark: {{value: 4294967296, mask: 1}}\n"),
        &["spec.mark.value", "4294967296", "line 4"],
    );

    // Anchors, aliases and merge keys work for a policy that shares lists...
    let text = format!(
        "{HEAD}spec:\n  rules:\n    - &base {{networks: &nets [\"10.0.0.0/8\"], ports: 80, protocol: http1}}\n    - {{networks: *nets, ports: 81, protocol: http1}}\n    - {{<<: *base, ports: 82}}\n"
    );
    let p = parse_policy(&text, "p").unwrap();
    assert_eq!(p.rules.len(), 3);
    assert_eq!(p.rules[2].networks, p.rules[0].networks);
    assert_eq!(p.rules[2].ports.to_string(), "82");
    // ...but an alias bomb is refused, not expanded.
    let text = format!("{HEAD}metadata:\n  {}", alias_bomb(9).replace('\n', "\n  "));
    let started = std::time::Instant::now();
    let msg = syntax_error(&text);
    assert!(msg.contains("alias") || msg.contains("budget"), "{msg}");
    assert!(msg.contains("line "), "{msg}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn documents_inside_a_file_report_the_file_lines() {
    // The document starts on line 11 of its file.
    let text = doc(r#"["10.0.0.0/33"]"#, "\"25\"", "opaque", "");
    let msg = match parse_policy_document_at(&text, "all.yaml#2", 10) {
        Err(e @ PolicyError::Syntax { .. }) => e.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(
        msg.starts_with("all.yaml#2: spec.rules[0].networks[0]: ")
            && msg.contains("10.0.0.0/33")
            && msg.contains("line 17 column"),
        "{msg}"
    );
}

#[test]
fn parse_yaml_value_for_manifests() {
    use serde_json::json;
    let v = parse_yaml_value(
        "kind: Service\nmetadata: {name: web, annotations: {a: on, b: \"1\", c: 0755}}\nspec:\n  ports: [{port: 80, name: http}]\n",
        "svc.yaml",
        0,
    )
    .unwrap();
    assert_eq!(
        v,
        json!({"kind": "Service", "metadata": {"name": "web", "annotations": {"a": "on", "b": "1", "c": "0755"}}, "spec": {"ports": [{"port": 80, "name": "http"}]}})
    );
    assert_eq!(parse_yaml_value("", "e.yaml", 0).unwrap(), json!(null));
    assert_eq!(
        parse_yaml_value("# nothing\n", "e.yaml", 0).unwrap(),
        json!(null)
    );

    let err = |text: &str, offset: usize| match parse_yaml_value(text, "all.yaml", offset) {
        Err(e @ PolicyError::Syntax { .. }) => e.to_string(),
        other => panic!("expected a syntax error for {text:?}, got {other:?}"),
    };
    // A syntax error: the line is the file's (document from line 21 on).
    let msg = err("kind: Pod\nmetadata:\n  name: [x\n", 20);
    assert!(
        msg.starts_with("all.yaml: metadata.name: ") && msg.contains("line 23 column"),
        "{msg}"
    );
    // A duplicate key names its path and line.
    let msg = err("kind: Pod\nmetadata:\n  name: a\n  name: b\n", 20);
    assert!(
        msg.starts_with("all.yaml: ")
            && msg.contains("duplicate")
            && msg.contains("name")
            && msg.contains("line 24"),
        "{msg}"
    );
    // Scalar keys become their spelling; null and collection keys are errors.
    assert_eq!(
        parse_yaml_value("80: http\n0x1F: x\ntrue: t\n1.5: f\n", "k.yaml", 0).unwrap(),
        json!({"80": "http", "0x1F": "x", "true": "t", "1.5": "f"})
    );
    // Keys that differ in YAML but not as strings are duplicates too.
    let msg = err("a: 1\nb:\n  80: x\n  \"80\": y\n", 10);
    assert!(
        msg.starts_with("all.yaml: b.80: duplicate mapping key \"80\"")
            && msg.contains("line 14 column 3"),
        "{msg}"
    );
    for (text, line) in [
        ("a: 1\n~: x\n", "line 2"),
        ("a: 1\nnull: x\n", "line 2"),
        ("a: 1\n[x, y]: z\n", "line 2"),
        ("a: 1\n? {x: 1}\n: z\n", "line 2"),
    ] {
        let msg = err(text, 0);
        assert!(msg.contains(line), "{text:?}: {msg}");
    }
    // One document only: the caller splits a stream.
    let msg = err("a: 1\n---\nb: 2\n", 0);
    assert!(msg.contains("line"), "{msg}");
    // An alias bomb is refused.
    let msg = err(&alias_bomb(9), 0);
    assert!(msg.contains("alias") || msg.contains("budget"), "{msg}");
    // Non-finite floats stay strings rather than failing the document.
    assert_eq!(
        parse_yaml_value("a: .nan\nb: .inf\n", "f.yaml", 0).unwrap(),
        json!({"a": ".nan", "b": ".inf"})
    );

    // And back.
    let text = to_yaml_string(&json!({"a": [1, "on"], "b": {"c": null}})).unwrap();
    assert_eq!(
        parse_yaml_value(&text, "round.yaml", 0).unwrap(),
        json!({"a": [1, "on"], "b": {"c": null}})
    );
}
