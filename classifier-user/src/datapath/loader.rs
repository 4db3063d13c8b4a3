//! Install the programs, or adopt the ones a previous agent left pinned.
//!
//! The pinned links are what keep classification running while no agent
//! is: an agent that finds them (with a compatible map layout) only opens
//! the maps and writes policy. It never detaches and re-attaches, so there
//! is no window in which connects go unclassified.
//!
//! The pins also carry the build stamp of the programs behind the links
//! (`PinMeta::program_build`). An agent whose embedded programs differ
//! (an upgrade, or a downgrade) loads its own against the pinned maps and
//! swaps each link's program in place with `BPF_LINK_UPDATE`: the
//! attachment is never removed, so there is no gap either.

use std::{
    fs::{self, File},
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, MapData},
    programs::{CgroupSockAddr, CgroupSockopt, SockOps},
    EbpfLoader,
};
use classifier_common::{maps, programs, PinMeta, PinMetaV1, LAYOUT_VERSION};

use super::{link, object, pins::PinDir};

/// What `install_or_adopt` found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// Loaded and attached the programs, pinned maps and links.
    Fresh,
    /// Found programs attached by an earlier agent and took them over.
    Adopted,
    /// Found programs of another build attached by an earlier agent, kept
    /// its maps and links, and replaced the programs behind the links.
    Replaced {
        /// The build stamp found in the pins (0: none).
        from: u64,
    },
}

pub struct InstallOptions<'a> {
    pub pins: &'a PinDir,
    pub cgroup: &'a Path,
    /// Overrides the verdict table size.
    pub verdict_capacity: Option<u32>,
}

/// Why existing pins cannot be adopted; callers show it as is.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(
        "{dir} holds pins of map layout v{found}, this agent uses v{expected}; \
         they were left attached. Run `classifier agent --uninstall --pin-dir {dir}` \
         with the agent that made them (or this one) and start again"
    )]
    IncompatibleLayout {
        dir: String,
        found: u32,
        expected: u32,
    },
}

/// Held by the agent for its whole life: one writer per pin directory.
/// Two agents writing policy into the same maps would each diff against a
/// slot the other changed.
pub struct PinLock(#[expect(dead_code, reason = "held for its lock, never read")] File);

/// Takes the pin directory's lock, or says who holds it.
pub fn lock(pins: &PinDir) -> Result<PinLock> {
    let dir =
        File::open(pins.root()).with_context(|| format!("opening {}", pins.root().display()))?;
    if !matches!(crate::sys::fs::try_lock_exclusive(&dir), Ok(true)) {
        bail!(
            "another classifier agent is already running with --pin-dir {} (stop it first; \
             two agents would overwrite each other's policy)",
            pins.root().display()
        );
    }
    Ok(PinLock(dir))
}

pub fn install_or_adopt(opts: &InstallOptions<'_>) -> Result<(Installed, PinLock)> {
    if !object::is_present() {
        bail!("this binary was built without its eBPF object (AYA_BUILD_SKIP was set); rebuild with `cargo xtask build`");
    }
    // A first start that fails leaves no pin directory behind: nothing in
    // it would classify, and the next start (or `--uninstall`) should not
    // have to tell a stale one from a live one.
    let created = !opts.pins.root().exists();
    // In a pin directory that was there already (a DaemonSet's hostPath,
    // a directory the operator made), the subdirectories this start makes.
    let made: Vec<PathBuf> = [opts.pins.maps_dir(), opts.pins.links_dir()]
        .into_iter()
        .filter(|d| !d.exists())
        .collect();
    let result = install_or_adopt_in(opts);
    if result.is_err() && created {
        if let Err(err) = opts.pins.remove_all() {
            tracing::warn!("removing the pin directory this failed start made: {err:#}");
        }
    } else if result.is_err() {
        // Only while still empty: a refused start (another agent, another
        // classifier on the cgroup) pinned nothing, and what another
        // start pinned there meanwhile is not ours to remove.
        for dir in made {
            let _ = fs::remove_dir(dir);
        }
    }
    result
}

fn install_or_adopt_in(opts: &InstallOptions<'_>) -> Result<(Installed, PinLock)> {
    opts.pins.prepare()?;
    let lock = lock(opts.pins)?;
    check_layout(opts.pins)?;

    let linked: Vec<bool> = programs::ALL
        .iter()
        .map(|p| opts.pins.link(p).exists())
        .collect();
    if linked.iter().all(|l| *l) {
        // Each link must be live and on the cgroup we were asked for: an
        // agent told to classify one cgroup must not report success while
        // the programs sit on another.
        let wanted = fs::metadata(opts.cgroup)
            .with_context(|| format!("opening cgroup {}", opts.cgroup.display()))?
            .ino();
        let mut attached = Vec::new();
        for program in programs::ALL {
            attached.push(link::pinned_link_cgroup(&opts.pins.link(program))?);
        }
        if attached.iter().all(|id| *id == wanted) {
            let found = read_meta(opts.pins)?.map_or(0, |m| m.program_build);
            if found == object::build_hash() {
                return Ok((Installed::Adopted, lock));
            }
            replace_programs(opts)?;
            return Ok((Installed::Replaced { from: found }, lock));
        }
        if attached.iter().any(|id| *id != 0 && *id != wanted) {
            bail!(
                "the classifier pinned at {dir} is attached to another cgroup (id {other}), not {path} (id {wanted}); \
                 run `classifier agent --uninstall --pin-dir {dir}` first to move it",
                dir = opts.pins.root().display(),
                other = attached.iter().find(|id| **id != 0 && **id != wanted).unwrap(),
                path = opts.cgroup.display(),
            );
        }
        // The cgroup they were on is gone (id 0): the links are dead.
        tracing::warn!("the pinned programs' cgroup no longer exists; attaching afresh");
        for program in programs::ALL {
            let _ = fs::remove_file(opts.pins.link(program));
        }
    }
    if linked.iter().any(|l| *l) && !linked.iter().all(|l| *l) {
        // A previous install stopped half way: drop the partial links (their
        // programs detach) and install afresh. Maps and counters are kept.
        tracing::warn!(dir = %opts.pins.links_dir().display(), "incomplete set of pinned links; re-attaching all programs");
        for program in programs::ALL {
            let _ = std::fs::remove_file(opts.pins.link(program));
        }
    }
    // Before anything is created or pinned. (A cgroup that cannot be
    // opened fails in `install`, with the maps pinned for the next start.)
    if let Ok(cgroup) = File::open(opts.cgroup) {
        refuse_another_classifier(cgroup.as_fd(), opts)?;
    }
    if let Err(err) = install(opts) {
        // Leave no partial attachment behind: a node with connect4 but no
        // sockops would classify without publishing.
        for program in programs::ALL {
            let _ = std::fs::remove_file(opts.pins.link(program));
        }
        return Err(err);
    }
    Ok((Installed::Fresh, lock))
}

/// Refuses pins from another map layout before anything touches them: aya
/// would otherwise reuse a pinned map of the same name whatever its shape.
fn check_layout(pins: &PinDir) -> Result<()> {
    let path = pins.map(maps::META);
    if !path.exists() {
        return Ok(());
    }
    let found = match read_meta(pins)? {
        Some(meta) => meta.layout_version,
        // Layouts 1 and 2 had an 8-byte PinMeta.
        None => {
            let meta: Array<MapData, PinMetaV1> = Array::try_from(aya::maps::Map::Array(
                MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?,
            ))?;
            meta.get(&0, 0)?.layout_version
        }
    };
    // 0: never stamped (an install that stopped before its maps were
    // pinned); nothing to be incompatible with.
    if found != LAYOUT_VERSION && found != 0 {
        return Err(AdoptError::IncompatibleLayout {
            dir: pins.root().display().to_string(),
            found,
            expected: LAYOUT_VERSION,
        }
        .into());
    }
    Ok(())
}

/// The pinned metadata, or `None` when the pinned map has another value
/// size (pins of another layout).
fn read_meta(pins: &PinDir) -> Result<Option<PinMeta>> {
    let path = pins.map(maps::META);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    match Array::<MapData, PinMeta>::try_from(aya::maps::Map::Array(data)) {
        Ok(meta) => Ok(Some(meta.get(&0, 0)?)),
        Err(aya::maps::MapError::InvalidValueSize { .. }) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

fn write_meta(pins: &PinDir) -> Result<()> {
    let meta_path = pins.map(maps::META);
    let mut meta: Array<MapData, PinMeta> =
        Array::try_from(aya::maps::Map::Array(MapData::from_pin(&meta_path)?))?;
    meta.set(
        0,
        PinMeta {
            layout_version: LAYOUT_VERSION,
            _pad: 0,
            program_build: object::build_hash(),
        },
        0,
    )?;
    Ok(())
}

/// The object loaded against the pin directory (pinned maps are reused,
/// missing ones created and pinned) with every program verified, nothing
/// attached.
fn load_verified(opts: &InstallOptions<'_>) -> Result<aya::Ebpf> {
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(opts.pins.maps_dir());
    if let Some(capacity) = opts.verdict_capacity {
        loader.map_max_entries(maps::VERDICTS, capacity);
    }
    // Each network namespace's share of the verdict table: of the pinned
    // table when there is one (its size was fixed when it was created).
    let pinned = opts.pins.map(maps::VERDICTS);
    let capacity = if pinned.exists() {
        MapData::from_pin(&pinned)
            .with_context(|| format!("opening {}", pinned.display()))?
            .info()?
            .max_entries()
    } else {
        opts.verdict_capacity.unwrap_or(maps::VERDICTS_CAPACITY)
    };
    let share = classifier_common::verdicts_per_netns(capacity);
    loader.override_global("VERDICTS_PER_NETNS", &share, true);
    let mut ebpf = loader
        .load(object::bytes())
        .context("loading the eBPF object")?;
    // Loading (verification) is typed per program kind in aya; attaching
    // is one raw link per program, the same for all four.
    for name in [programs::CONNECT4, programs::CONNECT6] {
        let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?.try_into()?;
        prog.load().with_context(|| format!("verifying {name}"))?;
    }
    let prog: &mut SockOps = program(&mut ebpf, programs::SOCKOPS)?.try_into()?;
    prog.load()
        .with_context(|| format!("verifying {}", programs::SOCKOPS))?;
    let prog: &mut CgroupSockopt = program(&mut ebpf, programs::GETSOCKOPT)?.try_into()?;
    prog.load()
        .with_context(|| format!("verifying {}", programs::GETSOCKOPT))?;
    Ok(ebpf)
}

/// Swaps the program behind each pinned link for this build's, in place
/// (`BPF_LINK_UPDATE`): the maps (policy, verdicts, counters, in-flight
/// verdicts) are the pinned ones, and the hook never goes without a
/// program. Everything is verified before the first link is touched. The
/// publishing side goes first, the connect side last, so a connect the
/// new programs classify is always published by a new program.
fn replace_programs(opts: &InstallOptions<'_>) -> Result<()> {
    let mut ebpf = load_verified(opts)?;
    for name in [
        programs::GETSOCKOPT,
        programs::SOCKOPS,
        programs::CONNECT6,
        programs::CONNECT4,
    ] {
        let pin = opts.pins.link(name);
        let link = crate::sys::bpf::obj_get(&pin)
            .with_context(|| format!("opening pinned link {}", pin.display()))?;
        let prog_fd = program(&mut ebpf, name)?.fd()?.as_fd();
        crate::sys::bpf::link_update(link.as_fd(), prog_fd, None)
            .with_context(|| format!("replacing the program of {}", pin.display()))?;
    }
    write_meta(opts.pins)?;
    Ok(())
}

fn install(opts: &InstallOptions<'_>) -> Result<()> {
    let mut ebpf = load_verified(opts)?;
    // The maps are pinned now: stamp their layout at once, so that a failure
    // below (bad --cgroup, capabilities) leaves pins a later start can adopt
    // or repair rather than refuse.
    write_meta(opts.pins)?;

    let cgroup = File::open(opts.cgroup)
        .with_context(|| format!("opening cgroup {}", opts.cgroup.display()))?;

    for (name, attach_type) in [
        (programs::CONNECT4, link::BPF_CGROUP_INET4_CONNECT),
        (programs::CONNECT6, link::BPF_CGROUP_INET6_CONNECT),
        (programs::SOCKOPS, link::BPF_CGROUP_SOCK_OPS),
        (programs::GETSOCKOPT, link::BPF_CGROUP_GETSOCKOPT),
    ] {
        let prog_fd = program(&mut ebpf, name)?.fd()?.as_fd();
        link::attach_pinned(prog_fd, cgroup.as_fd(), attach_type, &opts.pins.link(name))
            .with_context(|| format!("attaching {name} to {}", opts.cgroup.display()))?;
    }

    Ok(())
}

/// Refuses to attach where a classifier is attached already: another agent,
/// with another `--pin-dir`, classifying the same cgroup. Both would
/// classify every connect and each publish into its own table, and the two
/// proxies' answers would depend on which ran last. Recognised by the
/// connect4 program's name (the kernel keeps the first 15 bytes) among the
/// programs attached to the cgroup itself.
fn refuse_another_classifier(
    cgroup: std::os::fd::BorrowedFd<'_>,
    opts: &InstallOptions<'_>,
) -> Result<()> {
    let attached = crate::sys::bpf::prog_query(cgroup, link::BPF_CGROUP_INET4_CONNECT)
        .with_context(|| format!("listing the programs attached to {}", opts.cgroup.display()))?;
    if attached.is_empty() {
        return Ok(());
    }
    let ours = &programs::CONNECT4[..programs::CONNECT4.len().min(15)];
    for info in aya::programs::loaded_programs().flatten() {
        if attached.contains(&info.id()) && info.name_as_str() == Some(ours) {
            bail!(
                "another classifier is already attached to cgroup {path} (program id {id}, \
                 not from --pin-dir {dir}): two agents would both classify its connects. \
                 Stop that agent and run `classifier agent --uninstall` with its --pin-dir, \
                 or start this one with the same --pin-dir",
                path = opts.cgroup.display(),
                id = info.id(),
                dir = opts.pins.root().display(),
            );
        }
    }
    Ok(())
}

fn program<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))
}

/// Detaches everything and removes the pins. Counters are lost with them.
/// Takes the agent's lock first: a running agent's pins are never removed
/// under it (stop the agent, then uninstall).
pub fn uninstall(pins: &PinDir) -> Result<bool> {
    if !pins.root().exists() {
        return Ok(false);
    }
    let _lock = lock(pins).context("not uninstalling")?;
    pins.remove_all()?;
    Ok(true)
}
