//! `classifier suggest`: policy documents that make the learned
//! destinations explicit.

use std::time::Duration;

use anyhow::{Context as _, Result};
use classifier_policy::sources::DocumentSet;
use classifier_user::{datapath::PinDir, learned, sources::kubernetes};

use super::args::{SuggestArgs, SuggestFormat};

pub fn run(args: SuggestArgs) -> Result<()> {
    let pins = PinDir::new(args.pins.pin_dir.clone());
    let entries = learned::cli::list(&pins)?;
    let format = match args.format {
        SuggestFormat::Linkerd => learned::suggest::Format::Linkerd,
        SuggestFormat::Istio => learned::suggest::Format::Istio,
        SuggestFormat::Policy => learned::suggest::Format::Policy,
    };
    let documents = documents(&args)?;
    print!(
        "{}",
        learned::suggest::render(format, &entries, documents.as_ref())?
    );
    Ok(())
}

/// The documents already in force: `--policy`'s, and with `--kubernetes`
/// the cluster's (a file's document wins over the cluster's of the same
/// name).
fn documents(args: &SuggestArgs) -> Result<Option<DocumentSet>> {
    let from_file = match &args.policy {
        Some(path) => Some(
            DocumentSet::from_path(path)
                .with_context(|| format!("reading the documents at {}", path.display()))?,
        ),
        None => None,
    };
    if !args.kubernetes {
        return Ok(from_file);
    }
    let mut live = super::current_thread_runtime()?.block_on(async {
        let client = kubernetes::client().await?;
        kubernetes::list_once(client, Duration::from_secs(30)).await
    })?;
    for doc in from_file.into_iter().flat_map(|set| set.docs.into_values()) {
        live.insert_shared(doc);
    }
    Ok(Some(live))
}
