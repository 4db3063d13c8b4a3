use super::*;

#[test]
fn split_at_markers_with_line_offsets() {
    let text = "# leading comment\n---\na: 1\n---   \n# only a comment\n--- \nb: 2\nc: 3\n...\n---\n\nd: |\n  x\n";
    let docs = split_documents(text);
    let got: Vec<(usize, &str)> = docs
        .iter()
        .map(|d| (d.line_offset, d.text.trim()))
        .collect();
    assert_eq!(got, vec![(1, "a: 1"), (5, "b: 2\nc: 3"), (9, "d: |\n  x")]);
    // Lines in errors are the file's.
    let bad = "a: 1\n---\nb: [\n";
    let docs = split_documents(bad);
    let e = parse_yaml_value(&docs[1].text, "bad.yaml#2", docs[1].line_offset).unwrap_err();
    // The line of the bracket left open, in the file's numbering.
    assert!(e.to_string().contains("at line 3 column 4"), "{e}");
    assert_eq!(split_documents("--- {a: 1}\n")[0].text.trim(), "{a: 1}");
    assert!(split_documents("\n# x\n---\n").is_empty());
    // `----` and `---x` are not markers.
    assert_eq!(split_documents("a: |\n ---x\n----: 1\n").len(), 1);
}

#[test]
fn documents_keys_namespaces_and_duplicates() {
    let mut set = DocumentSet::new();
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n---\njust: values\n";
    assert_eq!(set.add_text(text, "a.yaml").unwrap(), 3);
    assert_eq!(set.len(), 2);
    let svc = set.get("Service", Some("default"), "db").unwrap();
    assert_eq!(svc.origin(), "a.yaml#1");
    assert_eq!(svc.describe(), "Service default/db");
    assert!(set.get("Namespace", None, "team-a").is_some());
    assert_eq!(set.of_kind("Service").count(), 1);
    let e = set
        .add_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: default}\n",
            "b.yaml",
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("b.yaml#1: metadata.name: Service default/db is defined twice")
            && e.contains("a.yaml#1"),
        "{e}"
    );
    assert!(set.remove("Service", Some("default"), "db").is_some());
    assert!(!set.is_empty() && set.len() == 1);
    let e = set
        .add_text(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: [x]}\n",
            "c.yaml",
        )
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "c.yaml#1 (Pod): metadata.name: expected a string, got a list"
    );
    let e = set
        .add_text("a: 1\n---\nkind: [\nx\n---\n", "d.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("d.yaml#2: ") && e.contains("unclosed bracket") && e.contains("line 3"),
        "{e}"
    );
}

#[test]
fn manifest_or_policy_file() {
    assert!(!is_manifest_text(
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\n"
    ));
    assert!(!is_manifest_text(
        "apiVersion: v1\nkind: ClassifierPolicy\n"
    ));
    assert!(!is_manifest_text(
        "apiVersion: classifier.dev/v1alpha1\nkind: EgressNetwork\n"
    ));
    assert!(!is_manifest_text("kind: [\n"));
    assert!(!is_manifest_text(""));
    assert!(is_manifest_text(
        "apiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\n"
    ));
    assert!(is_manifest_text("a: 1\n---\nb: 2\n"));
}

#[test]
fn directories_are_walked_sorted_and_loops_reported() {
    let dir = std::env::temp_dir().join(format!("classifier-docs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::create_dir_all(dir.join("..data")).unwrap();
    let ns = |n: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n");
    std::fs::write(dir.join("b.yaml"), ns("b")).unwrap();
    std::fs::write(dir.join("sub/a.yml"), ns("a")).unwrap();
    std::fs::write(dir.join("c.txt"), ns("c")).unwrap();
    std::fs::write(dir.join("..data/d.yaml"), ns("d")).unwrap();
    // ConfigMap style: a top-level link into the hidden directory.
    std::os::unix::fs::symlink(dir.join("..data/d.yaml"), dir.join("d.yaml")).unwrap();
    // The same directory twice is read once.
    std::os::unix::fs::symlink(dir.join("sub"), dir.join("sub2")).unwrap();
    let set = DocumentSet::from_path(&dir).unwrap();
    let names: Vec<&str> = set.iter().map(|d| d.name()).collect();
    assert_eq!(names, vec!["a", "b", "d"]);
    assert!(set
        .get("Namespace", None, "a")
        .unwrap()
        .origin
        .ends_with("sub/a.yml#1"));

    std::os::unix::fs::symlink(&dir, dir.join("sub/up")).unwrap();
    let e = DocumentSet::from_path(&dir).unwrap_err();
    assert!(matches!(e, PolicyError::SymlinkLoop { .. }), "{e}");
    assert!(e.to_string().contains("symlink loop"), "{e}");
    std::fs::remove_file(dir.join("sub/up")).unwrap();

    std::os::unix::fs::symlink(dir.join("x.yaml"), dir.join("y.yaml")).unwrap();
    std::os::unix::fs::symlink(dir.join("y.yaml"), dir.join("x.yaml")).unwrap();
    let e = DocumentSet::from_path(&dir).unwrap_err();
    assert!(matches!(e, PolicyError::SymlinkLoop { .. }), "{e}");
    std::fs::remove_file(dir.join("x.yaml")).unwrap();
    std::fs::remove_file(dir.join("y.yaml")).unwrap();

    let many: String = (0..=MAX_DOCUMENTS)
        .map(|i| format!("---\n{{a: {i}}}\n"))
        .collect();
    std::fs::write(dir.join("many.yaml"), many).unwrap();
    let e = DocumentSet::from_path(&dir).unwrap_err();
    assert!(
        matches!(
            e,
            PolicyError::TooManyDocuments {
                limit: MAX_DOCUMENTS,
                ..
            }
        ),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
