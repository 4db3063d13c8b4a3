//! `cargo xtask manifests`: renders `deploy/templates/` (the renderer itself
//! is `manifests.rs`, shared with the tests).

use anyhow::{bail, Result};

use crate::manifests;
use crate::util::step;

/// Render the Kubernetes manifests from deploy/templates/.
///
/// The image and the agent's flags are set in one place
/// (xtask/src/manifests.rs). Without options, rewrites the committed
/// deploy/*.yaml with the default image. With --image and no --out,
/// prints every manifest as one YAML stream (`... | kubectl apply -f -`).
/// Does not need root or a cluster.
/// Example: `cargo xtask manifests --image registry.example/classifier:0.1.0 --out /tmp/k8s`
#[derive(clap::Args)]
pub struct Options {
    /// Container image for the DaemonSet [default: classifier:VERSION].
    #[arg(long, value_name = "IMAGE:TAG")]
    image: Option<String>,
    /// Write the rendered manifests into DIR instead.
    #[arg(long, value_name = "DIR")]
    out: Option<std::path::PathBuf>,
    /// Only check that the committed deploy/*.yaml are up to date (exit 1 if not).
    #[arg(long, conflicts_with_all = ["image", "out"])]
    check: bool,
}

pub fn render(Options { image, out, check }: Options) -> Result<()> {
    if check {
        let stale = manifests::stale().map_err(anyhow::Error::msg)?;
        if !stale.is_empty() {
            bail!(
                "deploy/{} out of date with deploy/templates: run `cargo xtask manifests`",
                stale.join(", deploy/")
            );
        }
        step!("deploy/*.yaml are up to date");
        return Ok(());
    }
    let image_given = image.is_some();
    let image = image.unwrap_or_else(|| manifests::DEFAULT_IMAGE.to_owned());
    if image.trim().is_empty() || image.contains(char::is_whitespace) {
        bail!("--image {image:?}: not an image reference");
    }
    let dir = match out {
        Some(dir) => dir,
        None if image_given => {
            print!("{}", manifests::stream(&image).map_err(anyhow::Error::msg)?);
            return Ok(());
        }
        None => manifests::deploy_dir(),
    };
    for path in manifests::write_all(&image, &dir).map_err(anyhow::Error::msg)? {
        step!("wrote {}", path.display());
    }
    Ok(())
}
