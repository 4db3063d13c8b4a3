//! Pod cgroups as they come and go: inotify watches on the kubelet's pod
//! roots (`kubepods`, `kubepods.slice`) and the directories between them
//! and the pod cgroups (QoS classes), added as those appear, so that a new
//! pod's cgroup is seen the moment the kubelet creates it rather than at
//! the next poll. Pod cgroups themselves are not watched (their children
//! are containers, not pods), so a node holds a handful of watches.
//!
//! A watch on the agent's cgroup root notices a pod root created below it.
//! Whatever the watches miss (a queue overflow, a pod root deeper than the
//! root's children, a watch that could not be added) the caller's slow
//! periodic [`PodWatcher::rescan`] finds.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use tokio::io::unix::AsyncFd;

use super::pods::{self, PodCgroup, PodTree};
use crate::sys::inotify::{
    Inotify, WatchId, IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_IGNORED, IN_ISDIR, IN_MOVED_FROM,
    IN_MOVED_TO, IN_ONLYDIR, IN_Q_OVERFLOW,
};

/// What changed below the watched tree.
#[derive(Debug, PartialEq, Eq)]
pub enum PodChange {
    Appeared(PodCgroup),
    Gone(PodCgroup),
    /// Events were lost, or a pod root appeared: the caller re-registers
    /// from a full scan.
    Rescan,
}

const MASK: u32 = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ONLYDIR;

pub struct PodWatcher {
    root: PathBuf,
    inotify: AsyncFd<Inotify>,
    /// Each watched directory and its depth in the walk (see `pods`);
    /// `None` for the root's own watch.
    dirs: HashMap<WatchId, (PathBuf, Option<usize>)>,
    /// The pod cgroups seen, by path (a removed directory cannot be asked
    /// for its cgroup id any more).
    pods: HashMap<PathBuf, PodCgroup>,
}

impl PodWatcher {
    /// Watches the pod roots below `root` (the cgroup the programs are
    /// attached to). Needs a tokio runtime.
    pub fn new(root: &Path) -> Result<Self> {
        let mut watcher = Self {
            root: root.to_path_buf(),
            inotify: Inotify::new_async().context("creating an inotify instance")?,
            dirs: HashMap::new(),
            pods: HashMap::new(),
        };
        watcher.rescan()?;
        Ok(watcher)
    }

    /// How many directories are watched.
    pub fn watches(&self) -> usize {
        self.dirs.len()
    }

    /// Walks the whole tree again, watching every pod root and QoS class
    /// directory (adding a watch twice is harmless), and forgets pods that
    /// are gone. Returns what it found. An error only when the root itself
    /// cannot be watched.
    pub fn rescan(&mut self) -> Result<PodTree> {
        let wd = self
            .inotify
            .get_ref()
            .add_watch(&self.root, MASK)
            .with_context(|| format!("watching {}", self.root.display()))?;
        self.dirs.insert(wd, (self.root.clone(), None));
        let inotify = self.inotify.get_ref();
        let dirs = &mut self.dirs;
        let tree = pods::scan_with(&self.root, &mut |dir, depth| {
            watch(inotify, dirs, dir, depth);
        });
        self.pods = tree
            .pods
            .iter()
            .map(|p| (p.path.clone(), p.clone()))
            .collect();
        Ok(tree)
    }

    /// Waits for events and returns the changes they describe (possibly
    /// none). Cancel-safe: nothing is read before the descriptor is ready.
    pub async fn changes(&mut self) -> Result<Vec<PodChange>> {
        loop {
            let mut ready = self
                .inotify
                .readable()
                .await
                .context("waiting for inotify events")?;
            match ready.try_io(|inotify| inotify.get_ref().read_events()) {
                Ok(Ok(events)) => {
                    let mut changes = Vec::new();
                    for event in events {
                        self.handle(event, &mut changes);
                    }
                    return Ok(changes);
                }
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(err)) => return Err(err).context("reading inotify events"),
                // Spurious readiness: cleared, wait again.
                Err(_would_block) => continue,
            }
        }
    }

    fn handle(&mut self, event: crate::sys::inotify::Event, changes: &mut Vec<PodChange>) {
        if event.mask & IN_Q_OVERFLOW != 0 {
            tracing::warn!("the pod cgroup watch lost events (inotify queue overflow); rescanning");
            push_rescan(changes);
            return;
        }
        if event.mask & IN_IGNORED != 0 {
            self.dirs.remove(&event.wd);
            return;
        }
        if event.mask & IN_DELETE_SELF != 0 || event.mask & IN_ISDIR == 0 {
            return;
        }
        let (Some((dir, depth)), Some(name)) = (self.dirs.get(&event.wd).cloned(), event.name)
        else {
            return;
        };
        let name = name.to_string_lossy().into_owned();
        let path = dir.join(&name);
        if event.mask & (IN_DELETE | IN_MOVED_FROM) != 0 {
            if let Some(pod) = self.pods.remove(&path) {
                changes.push(PodChange::Gone(pod));
            }
            return;
        }
        // IN_CREATE or IN_MOVED_TO of a directory.
        let Some(depth) = depth else {
            // Below the root: only a new pod root matters (the rescan
            // registers it and any pods already in it).
            if pods::is_pod_root(&name) {
                let inotify = self.inotify.get_ref();
                watch(inotify, &mut self.dirs, &path, 0);
                push_rescan(changes);
            }
            return;
        };
        if let Some(pod) = pods::pod_cgroup(&dir, &name) {
            self.appeared(pod, changes);
            return;
        }
        // A QoS class directory (or any other level between a pod root and
        // its pods): watch it, then take in what it already holds.
        if depth + 1 > pods::MAX_DEPTH {
            return;
        }
        let inotify = self.inotify.get_ref();
        let dirs = &mut self.dirs;
        let tree = pods::scan_inside(&path, depth + 1, &mut |d, depth| {
            watch(inotify, dirs, d, depth)
        });
        for pod in tree.pods {
            self.appeared(pod, changes);
        }
    }

    /// A pod cgroup seen, unless it was seen already (a directory created
    /// just as its parent got its watch is both listed and reported).
    fn appeared(&mut self, pod: PodCgroup, changes: &mut Vec<PodChange>) {
        if self.pods.insert(pod.path.clone(), pod.clone()).as_ref() != Some(&pod) {
            changes.push(PodChange::Appeared(pod));
        }
    }
}

fn push_rescan(changes: &mut Vec<PodChange>) {
    if !changes.contains(&PodChange::Rescan) {
        changes.push(PodChange::Rescan);
    }
}

/// Adds a watch on `dir`; a failure (the directory went away, the
/// per-user watch limit) is logged and left to the periodic rescan.
fn watch(
    inotify: &Inotify,
    dirs: &mut HashMap<WatchId, (PathBuf, Option<usize>)>,
    dir: &Path,
    depth: usize,
) {
    match inotify.add_watch(dir, MASK) {
        Ok(wd) => {
            dirs.insert(wd, (dir.to_path_buf(), Some(depth)));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(
            dir = %dir.display(),
            "cannot watch a pod cgroup directory ({err}); the periodic rescan covers it"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs, time::Duration};

    const UID: &str = "0f3c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8";

    async fn next(watcher: &mut PodWatcher) -> Vec<PodChange> {
        tokio::time::timeout(Duration::from_secs(10), watcher.changes())
            .await
            .expect("an inotify event within 10 s")
            .unwrap()
    }

    /// Changes until `want` of them have arrived.
    async fn collect(watcher: &mut PodWatcher, want: usize) -> Vec<PodChange> {
        let mut out = Vec::new();
        while out.len() < want {
            out.extend(next(watcher).await);
        }
        out
    }

    #[tokio::test]
    async fn sees_pods_appear_and_go_in_new_qos_classes_and_pod_roots() {
        let root = std::env::temp_dir().join(format!("pod-watch-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("kubepods")).unwrap();
        let mut watcher = PodWatcher::new(&root).unwrap();
        // The root and the pod root.
        assert_eq!(watcher.watches(), 2);

        // A pod in a QoS class that did not exist yet (created in one go,
        // so the pod may be there before the class is watched).
        let pod = root.join(format!("kubepods/burstable/pod{UID}"));
        fs::create_dir_all(pod.join("container")).unwrap();
        let changes = collect(&mut watcher, 1).await;
        match &changes[..] {
            [PodChange::Appeared(p)] => {
                assert_eq!(p.uid, UID);
                assert_eq!(p.path, pod);
            }
            other => panic!("{other:?}"),
        }
        fs::remove_dir(pod.join("container")).unwrap();
        fs::remove_dir(&pod).unwrap();
        match &collect(&mut watcher, 1).await[..] {
            [PodChange::Gone(p)] => assert_eq!(p.uid, UID),
            other => panic!("{other:?}"),
        }

        // A pod root created after the watch started: a rescan, then its
        // pods are seen as they come.
        fs::create_dir(root.join("kubepods.slice")).unwrap();
        assert_eq!(collect(&mut watcher, 1).await, vec![PodChange::Rescan]);
        watcher.rescan().unwrap();
        let slice_pod = root.join(format!(
            "kubepods.slice/kubepods-pod{}.slice",
            UID.replace('-', "_")
        ));
        fs::create_dir(&slice_pod).unwrap();
        match &collect(&mut watcher, 1).await[..] {
            [PodChange::Appeared(p)] => assert_eq!(p.path, slice_pod),
            other => panic!("{other:?}"),
        }
        fs::remove_dir_all(&root).unwrap();
    }
}
