//! `classifier proxy`: the reference proxy that uses the kernel's verdicts.

use std::time::Duration;

use anyhow::Result;
use classifier_user::proxy::{self, ProxyOptions};

use super::args::ProxyArgs;

pub fn run(args: ProxyArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(proxy::run(ProxyOptions {
        listen: args.listen,
        detect_timeout: Duration::from_secs_f64(args.detect_timeout.max(0.0)),
    }))
}
