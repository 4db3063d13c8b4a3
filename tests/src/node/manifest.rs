//! The input: `kubectl kustomize deploy/`, exactly what `kubectl apply -k`
//! would send, parsed into the Kubernetes types. Nothing of the DaemonSet
//! is restated here.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::ConfigMap};
use serde_json::Value;

pub struct Rendered {
    pub objects: Vec<Value>,
}

impl Rendered {
    /// Runs `kubectl kustomize DIR`.
    pub fn kustomize(dir: &Path) -> Result<Rendered> {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(dir)
            .output()
            .context("running `kubectl kustomize` (Debian package kubernetes-client)")?;
        ensure!(
            out.status.success(),
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let text = String::from_utf8(out.stdout)?;
        let objects: Vec<Value> = serde_saphyr::from_multiple(&text)
            .with_context(|| format!("parsing `kubectl kustomize {}`", dir.display()))?;
        Ok(Rendered {
            objects: objects.into_iter().filter(|o| !o.is_null()).collect(),
        })
    }

    fn one(&self, kind: &str) -> Result<&Value> {
        let found: Vec<&Value> = self.objects.iter().filter(|o| o["kind"] == kind).collect();
        ensure!(
            found.len() == 1,
            "expected one {kind} in the rendered manifests, found {}",
            found.len()
        );
        Ok(found[0])
    }

    pub fn daemonset(&self) -> Result<DaemonSet> {
        serde_json::from_value(self.one("DaemonSet")?.clone()).context("the rendered DaemonSet")
    }

    /// Every ConfigMap: name -> key -> bytes.
    pub fn config_maps(&self) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>> {
        let mut out = BTreeMap::new();
        for o in self.objects.iter().filter(|o| o["kind"] == "ConfigMap") {
            let cm: ConfigMap =
                serde_json::from_value(o.clone()).context("a rendered ConfigMap")?;
            let data = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            out.insert(cm.metadata.name.unwrap_or_default(), data);
        }
        Ok(out)
    }
}
