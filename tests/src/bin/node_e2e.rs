//! `cargo xtask node-e2e`: the DaemonSet on a node through containerd's CRI,
//! as the kubelet runs it (see `tests::node`). Writes report.json.
//!
//! ```text
//! node-e2e --deploy DIR --image ARCHIVE... --pause-image NAME --tools-image NAME
//!          --mariadb-image NAME --rollout-image NAME [--uninstall DIR] [--detect-timeout-ms MS] --out FILE
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use tests::node::{run::run, Options};

fn main() {
    let result = parse_args().and_then(|opts| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(run(&opts))
    });
    match result {
        Ok(report) => println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
        Err(err) => {
            eprintln!("node-e2e: error: {err:#}");
            std::process::exit(1);
        }
    }
}

fn parse_args() -> Result<Options> {
    let mut args = std::env::args().skip(1);
    let mut opts = Options {
        archives: Vec::new(),
        deploy: PathBuf::from("deploy"),
        rollout_image: String::new(),
        pause_image: String::new(),
        tools_image: String::new(),
        mariadb_image: String::new(),
        uninstall: None,
        detect_timeout_ms: 3000,
        out: PathBuf::from("target/node-e2e/report.json"),
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--deploy" => opts.deploy = value()?.into(),
            "--image" => opts.archives.push(value()?.into()),
            "--rollout-image" => opts.rollout_image = value()?,
            "--pause-image" => opts.pause_image = value()?,
            "--tools-image" => opts.tools_image = value()?,
            "--mariadb-image" => opts.mariadb_image = value()?,
            "--uninstall" => opts.uninstall = Some(value()?.into()),
            "--detect-timeout-ms" => {
                opts.detect_timeout_ms = value()?.parse().context("--detect-timeout-ms")?
            }
            "--out" => opts.out = value()?.into(),
            other => bail!("unknown argument {other:?} (see the module documentation)"),
        }
    }
    for (name, v) in [
        ("--rollout-image", &opts.rollout_image),
        ("--pause-image", &opts.pause_image),
        ("--tools-image", &opts.tools_image),
        ("--mariadb-image", &opts.mariadb_image),
    ] {
        if v.is_empty() {
            bail!("{name} is required");
        }
    }
    Ok(opts)
}
