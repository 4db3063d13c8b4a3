//! `classifier stats`: what the classifier does, read from the pinned maps.

use std::time::Duration;

use anyhow::Result;
use classifier_user::{datapath::PinDir, stats};

use super::args::StatsArgs;

pub fn run(args: StatsArgs) -> Result<()> {
    let pins = PinDir::new(args.pins.pin_dir);
    loop {
        let snapshot = stats::read_snapshot(&pins)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&stats::render_json(&snapshot))?
            );
        } else if args.prometheus {
            print!("{}", stats::render_prometheus(&snapshot));
        } else {
            print!("{}", stats::render_table(&snapshot));
        }
        let Some(secs) = args.watch else {
            return Ok(());
        };
        std::thread::sleep(Duration::from_secs_f64(secs.max(0.1)));
        if !args.json && !args.prometheus {
            println!();
        }
    }
}
