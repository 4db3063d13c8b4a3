//! `cargo xtask image`: the container images, built from deploy/Dockerfile
//! and Debian's packages with podman, no registry involved, written as OCI
//! archives under target/images/.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::cargo::{self, workspace_root};
use crate::util::{find_on_path, is_root, output_of, run_checked, show, step};

/// The agent's image, under the name the CRI resolves `classifier:VERSION`
/// (deploy/kustomization.yaml's tag) to.
pub const CLASSIFIER_IMAGE: &str =
    concat!("docker.io/library/classifier:", env!("CARGO_PKG_VERSION"));
/// The same binary with another program build stamp: an agent started
/// from it over pins of [`CLASSIFIER_IMAGE`] replaces the programs in place.
pub const CLASSIFIER_NEXT_IMAGE: &str = concat!(
    "docker.io/library/classifier:",
    env!("CARGO_PKG_VERSION"),
    "-next"
);
/// The pod sandbox image (containerd's `sandbox_image`): /pause.
pub const PAUSE_IMAGE: &str = "localhost/classifier-test/pause:1";
/// Debian's mariadb-server and mariadb-client; runs
/// /usr/local/bin/mariadb-serve (tests/images/mariadb-serve).
pub const MARIADB_IMAGE: &str = "localhost/classifier-test/mariadb:1";
/// Debian's iptables and iproute2, for linkerd-init-style init containers.
pub const TOOLS_IMAGE: &str = "localhost/classifier-test/tools:1";
/// The bootstrapped stand-in for `debian:bookworm-slim` (BASE_IMAGE).
pub const BASE_IMAGE: &str = "localhost/classifier-base/bookworm-minbase:1";

/// Every archive written, with the image it holds.
pub const ARCHIVES: [(&str, &str); 5] = [
    ("classifier.oci.tar", CLASSIFIER_IMAGE),
    ("classifier-next.oci.tar", CLASSIFIER_NEXT_IMAGE),
    ("pause.oci.tar", PAUSE_IMAGE),
    ("mariadb.oci.tar", MARIADB_IMAGE),
    ("tools.oci.tar", TOOLS_IMAGE),
];

/// Where the program build stamp sits in the binary
/// (classifier-user/src/datapath/object.rs, `PROGRAM_STAMP`).
const STAMP_MARKER: &[u8] = b"\0classifier-prog-stamp:\0";
/// The stamp of the `-next` image's binary (any non-zero value).
const NEXT_STAMP: &[u8; 8] = b"rollout1";
/// Label carrying the inputs' hash on imported images: unchanged inputs,
/// no re-import, same image ID, no new archive.
const KEY_LABEL: &str = "org.classifier.inputs";
const DEFAULT_CACHE: &str = "/var/cache/classifier/images";
/// podman's run-time state for the private store: stable paths (libpod
/// records them in its database), removed after every run.
const RUN_DIR: &str = "/run/classifier-images";

/// Build the container images as OCI archives, with no registry (root).
///
/// Writes into target/images/ (cargo's target directory):
///   classifier.oci.tar       docker.io/library/classifier:VERSION, from
///                            deploy/Dockerfile (what `classifier:VERSION`
///                            in deploy/ resolves to under the CRI)
///   classifier-next.oci.tar  ...classifier:VERSION-next: the same binary
///                            with another program build stamp (a rollout
///                            from it replaces the pinned programs in place)
///   pause.oci.tar            localhost/classifier-test/pause:1, a pod sandbox
///   mariadb.oci.tar          localhost/classifier-test/mariadb:1
///   tools.oci.tar            localhost/classifier-test/tools:1 (iptables)
///
/// Nothing is pulled. Base images are root filesystems bootstrapped with
/// `mmdebstrap --variant=minbase bookworm` from Debian's packages and
/// `podman import`ed; deploy/Dockerfile is built with `--target prebuilt`,
/// BASE_IMAGE set to that base, and the binary `cargo xtask build` made
/// (target/release/classifier) instead of its builder stage. README,
/// "Container runtimes", lists what differs from a user's build.
///
/// podman runs with runc, the cgroupfs manager, and a private store under
/// the cache directory (also the bootstrapped tarballs, keyed by their
/// package lists), so later runs only redo what changed; it leaves no
/// container and no state outside that directory. Needs the Debian
/// packages podman, mmdebstrap, gcc and libc6-dev.
/// Example: `sudo -E cargo xtask image`
#[derive(clap::Args)]
pub struct Options {
    /// podman's store and the bootstrapped base tarballs.
    #[arg(long, value_name = "DIR", env = "CLASSIFIER_IMAGE_CACHE", default_value = DEFAULT_CACHE)]
    cache_dir: PathBuf,
    /// Where the archives go [default: <cargo target dir>/images].
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

pub fn image(opts: Options) -> Result<()> {
    crate::prereqs::ensure()?;
    let binary = cargo::build_classifier(true)?;
    let out = opts
        .out_dir
        .unwrap_or_else(|| cargo::target_dir().join("images"));
    build_all(&binary, &opts.cache_dir, &out)
}

/// `cargo xtask test`'s share: every image, from `binary`, into
/// target/images (cache: $CLASSIFIER_IMAGE_CACHE or the default).
pub fn build_for_tests(binary: &Path) -> Result<()> {
    let cache = std::env::var_os("CLASSIFIER_IMAGE_CACHE")
        .filter(|c| !c.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from);
    build_all(binary, &cache, &cargo::target_dir().join("images"))
}

fn build_all(binary: &Path, cache: &Path, out: &Path) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask image` needs root (podman with runc and a private store, mmdebstrap); run it with sudo -E");
    }
    for (tool, package) in [
        ("podman", "podman"),
        ("mmdebstrap", "mmdebstrap"),
        ("cc", "gcc and libc6-dev"),
        ("tar", "tar"),
    ] {
        if find_on_path(tool).is_none() {
            bail!(
                "{tool} is not on PATH: install Debian's {package} (`apt-get install {package}`)"
            );
        }
    }
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // One build per cache at a time (podman's store has its own locks, but
    // two runs would race on contexts and archives).
    let lock_file = fs::File::create(cache.join("lock"))?;
    lock_file.lock().context("locking the image cache")?;
    let t0 = Instant::now();
    let podman = Podman::new(cache);
    let result = build_in(&podman, binary, cache, out);
    let cleanup = podman.finish();
    result?;
    cleanup?;
    step!(
        "images built in {:.1} s, in {}:",
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    for (file, image) in ARCHIVES {
        let size = fs::metadata(out.join(file)).map(|m| m.len()).unwrap_or(0);
        step!("  {file:<24} {image} ({} MB)", size / 1_000_000);
    }
    Ok(())
}

fn build_in(podman: &Podman, binary: &Path, cache: &Path, out: &Path) -> Result<()> {
    let root = workspace_root();
    let images = root.join("tests").join("images");
    let bases = Bases {
        cache: cache.join("base"),
    };

    // The bases, bootstrapped from Debian's packages.
    let minbase = ["--variant=minbase", "bookworm"];
    podman.ensure_imported(BASE_IMAGE, &[], &bases.rootfs(&minbase, &[])?)?;
    let serve = images.join("mariadb-serve");
    let hook = format!(
        "--customize-hook=copy-in {} /usr/local/bin",
        serve.display()
    );
    let mariadb = [
        "--variant=minbase",
        "--include=mariadb-server,mariadb-client",
        &hook,
        "bookworm",
    ];
    podman.ensure_imported(
        MARIADB_IMAGE,
        &["CMD [\"/usr/local/bin/mariadb-serve\"]", "EXPOSE 3306"],
        &bases.rootfs(&mariadb, &[&serve])?,
    )?;
    let tools = [
        "--variant=minbase",
        "--include=iptables,iproute2",
        "bookworm",
    ];
    podman.ensure_imported(TOOLS_IMAGE, &[], &bases.rootfs(&tools, &[])?)?;
    podman.ensure_imported(
        PAUSE_IMAGE,
        &["ENTRYPOINT [\"/pause\"]"],
        &pause_rootfs(&images.join("pause.c"), &cache.join("pause"))?,
    )?;

    // The agent's two images, from deploy/Dockerfile.
    let contexts = cache.join("context");
    let bin = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let next = restamp(&bin).with_context(|| format!("restamping {}", binary.display()))?;
    for (image, bytes, dir) in [
        (CLASSIFIER_IMAGE, &bin, "classifier"),
        (CLASSIFIER_NEXT_IMAGE, &next, "classifier-next"),
    ] {
        let context = contexts.join(dir);
        write_if_changed(&context.join("classifier"), bytes, 0o755)?;
        podman.build_prebuilt(image, &root.join("deploy/Dockerfile"), &context)?;
    }

    for (file, image) in ARCHIVES {
        podman.save(image, &out.join(file))?;
    }
    // Images replaced by this run (untagged now) would pile up.
    podman.run(&["image", "prune", "--force"], "podman image prune")?;
    Ok(())
}

/// A copy of the classifier binary whose program build stamp is
/// [`NEXT_STAMP`] instead of zero.
fn restamp(binary: &[u8]) -> Result<Vec<u8>> {
    let found: Vec<usize> = binary
        .windows(STAMP_MARKER.len())
        .enumerate()
        .filter(|(_, w)| *w == STAMP_MARKER)
        .map(|(i, _)| i)
        .collect();
    let [at] = found[..] else {
        bail!(
            "expected the program stamp marker once in the binary, found it {} times \
             (classifier-user/src/datapath/object.rs, PROGRAM_STAMP)",
            found.len()
        );
    };
    let value = at + STAMP_MARKER.len();
    let slot = binary
        .get(value..value + NEXT_STAMP.len())
        .context("the binary ends inside the program stamp")?;
    if slot != [0; 8] {
        bail!("the binary's program stamp is not zero ({slot:02x?}): restamp a plain build");
    }
    let mut out = binary.to_vec();
    out[value..value + NEXT_STAMP.len()].copy_from_slice(NEXT_STAMP);
    Ok(out)
}

fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    fs::create_dir_all(path.parent().unwrap())?;
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// FNV-1a, for cache keys (not security: the inputs are ours).
fn fnv(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(b"\0") {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// A root filesystem tarball ready to import, and the key of its inputs.
struct Rootfs {
    tar: PathBuf,
    key: String,
}

/// Root filesystems from `mmdebstrap`, cached by their arguments (the
/// package list) and the files hooks copy in.
struct Bases {
    cache: PathBuf,
}

impl Bases {
    fn rootfs(&self, args: &[&str], inputs: &[&Path]) -> Result<Rootfs> {
        // Paths of the clone are not inputs (another clone hits the same
        // cache); the files' contents are.
        let root = workspace_root().display().to_string();
        let mut parts: Vec<Vec<u8>> = args
            .iter()
            .map(|a| a.replace(&root, "").into_bytes())
            .collect();
        for input in inputs {
            parts.push(fs::read(input).with_context(|| format!("reading {}", input.display()))?);
        }
        let key = fnv(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let tar = self.cache.join(format!("{key}.tar"));
        if tar.is_file() {
            step!("base {key}: cached ({})", args.join(" "));
            return Ok(Rootfs { tar, key });
        }
        fs::create_dir_all(&self.cache)?;
        // mmdebstrap picks its output format from the name: keep `.tar`.
        let tmp = self.cache.join(format!("{key}.partial.tar"));
        let mut cmd = Command::new("mmdebstrap");
        cmd.args(["--quiet", "--format=tar"]).args(args).arg(&tmp);
        step!(
            "bootstrapping from Debian's packages (about 20 s): {}",
            show(&cmd)
        );
        let t0 = Instant::now();
        let result = run_checked(&mut cmd, "mmdebstrap");
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        fs::rename(&tmp, &tar)?;
        step!("base {key}: {:.1} s", t0.elapsed().as_secs_f64());
        Ok(Rootfs { tar, key })
    }
}

/// A root filesystem with only /pause, statically linked from `source`.
fn pause_rootfs(source: &Path, dir: &Path) -> Result<Rootfs> {
    let key = fnv(&[&fs::read(source).with_context(|| format!("reading {}", source.display()))?]);
    let tar = dir.join(format!("{key}.tar"));
    if tar.is_file() {
        return Ok(Rootfs { tar, key });
    }
    let tree = dir.join("rootfs");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree)?;
    run_checked(
        Command::new("cc")
            .args(["-static", "-Os", "-Wall", "-Werror", "-o"])
            .arg(tree.join("pause"))
            .arg(source),
        "cc -static pause.c (gcc and libc6-dev)",
    )?;
    run_checked(
        Command::new("tar")
            .args([
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "-C",
            ])
            .arg(&tree)
            .arg("-cf")
            .arg(&tar)
            .arg("pause"),
        "tar",
    )?;
    Ok(Rootfs { tar, key })
}

/// podman on a private store under the cache directory: runc, the cgroupfs
/// manager (PID 1 is not systemd on every machine), never a pull, no
/// network.
struct Podman {
    storage: PathBuf,
    network_config: PathBuf,
    /// containers/image records blob digests in /var/lib/containers/cache
    /// for root whatever the store (no flag moves it): made by this run,
    /// it is removed at the end.
    blob_cache_existed: bool,
}

/// Where containers/image keeps its blob-info cache as root.
const BLOB_INFO_CACHE: &str = "/var/lib/containers/cache/blob-info-cache-v1.boltdb";

impl Podman {
    fn new(cache: &Path) -> Self {
        Podman {
            storage: cache.join("storage"),
            network_config: cache.join("network"),
            blob_cache_existed: Path::new(BLOB_INFO_CACHE).exists(),
        }
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(&self.storage)
            .args(["--runroot", &format!("{RUN_DIR}/run")])
            .args(["--tmpdir", &format!("{RUN_DIR}/tmp")])
            .args(["--cgroup-manager", "cgroupfs", "--runtime", "runc"])
            .args(["--events-backend", "none", "--storage-driver", "overlay"])
            // Its CNI lock, not /etc/cni/net.d's (no network is used).
            .arg("--network-config-dir")
            .arg(&self.network_config);
        cmd
    }

    fn run(&self, args: &[&str], what: &str) -> Result<()> {
        run_checked(self.cmd().args(args), what)
    }

    fn inspect(&self, image: &str, format: &str) -> Option<String> {
        output_of(
            self.cmd()
                .args(["image", "inspect", "--format", format, image]),
        )
        .map(|s| s.trim().to_owned())
    }

    /// `podman import`s `rootfs` as `image`, unless `image` already holds
    /// the same inputs.
    fn ensure_imported(&self, image: &str, changes: &[&str], rootfs: &Rootfs) -> Result<()> {
        let key = fnv(&[rootfs.key.as_bytes(), changes.join("\n").as_bytes()]);
        if self
            .inspect(image, &format!("{{{{index .Labels \"{KEY_LABEL}\"}}}}"))
            .as_deref()
            == Some(key.as_str())
        {
            step!("{image}: up to date");
            return Ok(());
        }
        let mut cmd = self.cmd();
        cmd.arg("import").arg("--quiet");
        for change in changes {
            cmd.args(["--change", change]);
        }
        cmd.args(["--change", &format!("LABEL {KEY_LABEL}={key}")])
            .arg(&rootfs.tar)
            .arg(image);
        step!("{image}: importing {}", rootfs.tar.display());
        run_checked(&mut cmd, &format!("podman import {image}"))
    }

    /// deploy/Dockerfile's `prebuilt` target, on the bootstrapped base,
    /// with `context` holding only the binary. Unchanged inputs reuse the
    /// cached layers (same image ID).
    fn build_prebuilt(&self, image: &str, dockerfile: &Path, context: &Path) -> Result<()> {
        let mut cmd = self.cmd();
        cmd.args([
            "build",
            "--quiet",
            "--pull=never",
            "--network=none",
            "--layers",
            "--force-rm",
        ])
        .args(["--target", "prebuilt"])
        .args(["--build-arg", &format!("BASE_IMAGE={BASE_IMAGE}")])
        .arg("--file")
        .arg(dockerfile)
        .args(["--tag", image])
        .arg(context);
        step!("{image}: {}", show(&cmd));
        run_checked(
            cmd.stdout(std::process::Stdio::null()),
            &format!("podman build {image}"),
        )
    }

    /// `podman save --format oci-archive`, unless `archive` already holds
    /// this image ID (recorded beside it in ARCHIVE.id).
    fn save(&self, image: &str, archive: &Path) -> Result<()> {
        let id = self
            .inspect(image, "{{.Id}}")
            .with_context(|| format!("{image} was not built"))?;
        let id_file = archive.with_extension("tar.id");
        if archive.is_file() && fs::read_to_string(&id_file).is_ok_and(|old| old.trim() == id) {
            step!("{}: up to date ({image})", archive.display());
            return Ok(());
        }
        let tmp = archive.with_extension("tar.tmp");
        let _ = fs::remove_file(&tmp);
        let result = run_checked(
            self.cmd()
                .args(["save", "--quiet", "--format", "oci-archive", "--output"])
                .arg(&tmp)
                .arg(image),
            &format!("podman save {image}"),
        );
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        fs::rename(&tmp, archive)?;
        fs::write(&id_file, format!("{id}\n"))?;
        step!("{}: saved ({image})", archive.display());
        Ok(())
    }

    /// Leaves nothing running or mounted: removes any container a failed
    /// build left, unmounts the store, drops the run-time state.
    fn finish(&self) -> Result<()> {
        let leftovers = output_of(self.cmd().args(["ps", "--all", "--quiet"])).unwrap_or_default();
        let ids: Vec<&str> = leftovers.split_whitespace().collect();
        if !ids.is_empty() {
            step!("removing {} leftover container(s)", ids.len());
            let _ = self.cmd().args(["rm", "--force"]).args(&ids).status();
        }
        // Buildah's working containers (a failed RUN) are not podman's.
        let _ = self.cmd().args(["container", "cleanup", "--all"]).output();
        let _ = self.cmd().args(["unmount", "--all", "--force"]).output();
        let mounted = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let storage = self.storage.display().to_string();
        if let Some(line) = mounted.lines().find(|l| l.contains(&storage)) {
            bail!("podman left a mount in its store: {line}");
        }
        let _ = fs::remove_dir_all(RUN_DIR);
        if !self.blob_cache_existed {
            remove_blob_info_cache();
        }
        Ok(())
    }
}

/// Removes the blob-info cache, and /var/lib/containers with it when
/// nothing else is in it.
fn remove_blob_info_cache() {
    let file = Path::new(BLOB_INFO_CACHE);
    let _ = fs::remove_file(file);
    for dir in file.ancestors().skip(1).take(2) {
        // rmdir only succeeds on an empty directory.
        let _ = fs::remove_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `newTag` of the `classifier` entry under `images:` in a Kustomization.
    fn kustomize_tag(text: &str) -> Option<String> {
        let mut in_entry = false;
        for line in text.lines() {
            let item = line.trim_start().trim_start_matches("- ").trim();
            if let Some(name) = item.strip_prefix("name:") {
                in_entry = name.trim() == "classifier";
            } else if let Some(tag) = item.strip_prefix("newTag:") {
                if in_entry {
                    return Some(tag.trim().trim_matches('"').to_owned());
                }
            }
        }
        None
    }

    /// Every YAML file below `dir`.
    fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                yaml_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }

    #[test]
    fn the_image_tag_is_cargos_version_and_the_kustomize_bases_tag() {
        let root = workspace_root();
        let kustomization = fs::read_to_string(root.join("deploy/kustomization.yaml")).unwrap();
        let tag =
            kustomize_tag(&kustomization).expect("an images: entry for classifier with newTag");
        assert_eq!(
            tag,
            env!("CARGO_PKG_VERSION"),
            "deploy/kustomization.yaml's newTag"
        );
        assert_eq!(
            CLASSIFIER_IMAGE,
            format!("docker.io/library/classifier:{tag}")
        );
        assert_eq!(CLASSIFIER_NEXT_IMAGE, format!("{CLASSIFIER_IMAGE}-next"));
        // Every manifest (the base, its component, the uninstall
        // DaemonSet) names the same image and tag.
        let mut files = Vec::new();
        yaml_files(&root.join("deploy"), &mut files);
        let mut images = 0;
        for file in files {
            let text = fs::read_to_string(&file).unwrap();
            for line in text.lines().map(str::trim) {
                if let Some(image) = line.strip_prefix("image:") {
                    images += 1;
                    assert_eq!(
                        image.trim(),
                        format!("classifier:{tag}"),
                        "{}",
                        file.display()
                    );
                }
            }
            if file.ends_with("kustomization.yaml") {
                if let Some(found) = kustomize_tag(&text) {
                    assert_eq!(found, tag, "{}", file.display());
                }
            }
        }
        assert!(images >= 4, "found {images} image: lines in deploy/");
        assert_eq!(
            kustomize_tag("images:\n  - name: other\n    newTag: 9\n"),
            None
        );
    }

    #[test]
    fn restamp_changes_exactly_the_stamp() {
        let mut bin = b"head".to_vec();
        bin.extend_from_slice(STAMP_MARKER);
        bin.extend_from_slice(&[0; 8]);
        bin.extend_from_slice(b"tail");
        let next = restamp(&bin).unwrap();
        assert_eq!(next.len(), bin.len());
        let at = 4 + STAMP_MARKER.len();
        assert_eq!(&next[at..at + 8], NEXT_STAMP);
        assert_eq!(next[..at], bin[..at]);
        assert_eq!(next[at + 8..], bin[at + 8..]);
        // Twice, or a binary restamped already, is refused.
        assert!(restamp(&next).is_err());
        let mut twice = bin.clone();
        twice.extend_from_slice(&bin);
        assert!(restamp(&twice)
            .unwrap_err()
            .to_string()
            .contains("found it 2 times"));
        assert!(restamp(b"no marker").is_err());
    }

    #[test]
    fn cache_keys_change_with_any_input() {
        assert_eq!(fnv(&[b"a", b"b"]), fnv(&[b"a", b"b"]));
        assert_ne!(fnv(&[b"a", b"b"]), fnv(&[b"ab"]));
        assert_ne!(fnv(&[b"minbase"]), fnv(&[b"minbase", b"iptables"]));
    }
}
