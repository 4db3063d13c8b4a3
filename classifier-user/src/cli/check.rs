//! `classifier check`: can this node run the classifier, and is it running.

use anyhow::Result;
use classifier_user::{check, datapath::PinDir};

use super::args::CheckArgs;

pub fn run(args: CheckArgs) -> Result<()> {
    let checks = check::run(&check::CheckOptions {
        pins: PinDir::new(args.pins.pin_dir),
        cgroup: args.cgroup,
        kubernetes: args.kubernetes,
        source: super::kubernetes_source(args.source),
    });
    if args.json {
        println!("{}", check::render_json(&checks)?);
    } else {
        print!("{}", check::render_text(&checks));
    }
    if checks.iter().any(|c| !c.ok) {
        // The report said which and why; only the status is left.
        std::process::exit(1);
    }
    Ok(())
}
