//! A proxy that depends on this crate must not pull in the node side's
//! heavy dependencies: no BPF loader, no Kubernetes client, no async
//! runtime, no HTTP stack.

use std::process::Command;

#[test]
fn depends_on_no_aya_kube_tokio_or_hyper() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "classifier-client",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crates: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"classifier-common"), "{stdout}");
    for banned in [
        "aya",
        "aya-obj",
        "kube",
        "kube-client",
        "tokio",
        "hyper",
        "bytemuck",
    ] {
        assert!(
            !crates.contains(&banned),
            "classifier-client depends on {banned}:\n{stdout}"
        );
    }
}
