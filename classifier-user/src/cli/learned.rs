//! `classifier learned`: the learned server-first destinations.

use anyhow::Result;
use classifier_user::{datapath::PinDir, learned};

use super::args::LearnedArgs;

pub fn run(args: LearnedArgs) -> Result<()> {
    let pins = PinDir::new(args.pins.pin_dir);
    let entries = learned::cli::list(&pins)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&learned::cli::to_json(&entries))?
        );
    } else {
        print!("{}", learned::cli::render_table(&entries));
    }
    Ok(())
}
