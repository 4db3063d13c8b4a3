//! Harness for the privileged tests: each test gets its own cgroup, bpffs
//! pin directory, network namespace and temp directory, and an agent
//! attached to that cgroup only. Everything is removed on drop, pass or
//! fail, so tests can run one after another or side by side.
//!
//! Processes that must be classified (clients, and servers that query the
//! classifier) are `probe` processes started inside the test cgroup and
//! namespace: cgroup membership is per process.

#![deny(unsafe_code)]

use std::{
    ffi::CString,
    fs,
    io::{BufRead as _, BufReader, Lines},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

pub mod e2e;
pub mod fake_kube;
pub mod node;
pub mod podman;
pub mod qemu;
pub mod soak;
#[expect(
    unsafe_code,
    reason = "sys is the one module that makes raw system calls"
)]
pub mod sys;

/// The proxy's UID in Linkerd (excluded by the built-in policy).
pub const PROXY_UID: u32 = 2102;

/// The name of the function this is used in, as the test harness names a
/// test: its module path without the crate, e.g. `datapath::pins_are_root_only`.
#[macro_export]
macro_rules! test_name {
    () => {{
        fn here() {}
        let path = ::std::any::type_name_of_val(&here);
        let path = path.strip_suffix("::here").unwrap_or(path);
        path.split_once("::").map_or(path, |(_, rest)| rest)
    }};
}

/// `privileged!()`: [`privileged`] for the test it is used in, named by
/// [`test_name!`].
#[macro_export]
macro_rules! privileged {
    () => {
        $crate::privileged($crate::test_name!())
    };
}

/// Whether a privileged test can run here. Under `CI=true` it must: a
/// missing privilege fails the test instead of skipping it. Tests call it
/// as `privileged!()`, which passes their own name.
pub fn privileged(test: &str) -> bool {
    if sys::is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root for BPF, cgroups and network namespaces, and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {test}: needs root for BPF, cgroups and network namespaces");
    false
}

/// The `classifier` binary under test: $CLASSIFIER_BIN (set by `cargo xtask
/// test`), else the workspace's release or debug build.
pub fn classifier_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CLASSIFIER_BIN") {
        return PathBuf::from(path);
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    for profile in ["release", "debug"] {
        let candidate = target.join(profile).join("classifier");
        if candidate.exists() {
            return candidate;
        }
    }
    panic!("no classifier binary: run the tests with `cargo xtask test`, or set CLASSIFIER_BIN");
}

/// The `probe` binary of this package: next to the running binary (the
/// benchmark), or one level up from the test executables in `deps/`.
fn probe_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    [dir.join("probe"), dir.parent().unwrap_or(dir).join("probe")]
        .into_iter()
        .find(|p| p.exists())
        .expect("probe binary (built with the tests package)")
}

/// Polls `state` every 20 ms until it gives a value, for at most
/// `timeout`; the error names `what` was awaited and the last state seen.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut state: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = state()? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A `classifier compiler` process, killed when dropped; its log (stderr)
/// in a file of its own.
pub struct CompilerProcess {
    child: Child,
    log: PathBuf,
}

impl CompilerProcess {
    /// Starts a replica named `identity` against the API server of
    /// `kubeconfig`, with a lease of `lease_secs`.
    pub fn start(
        identity: &str,
        kubeconfig: &Path,
        namespace: &str,
        lease_secs: u32,
    ) -> Result<Self> {
        let log = std::env::temp_dir().join(format!(
            "classifier-compiler-{}-{identity}.log",
            std::process::id()
        ));
        let child = Command::new(classifier_bin())
            .args(["compiler", "--namespace", namespace, "--identity", identity])
            .args(["--lease-duration", &lease_secs.to_string()])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .context("starting the compiler")?;
        Ok(CompilerProcess { child, log })
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Killed at once (SIGKILL): the lease is not given up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CompilerProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_file(&self.log);
    }
}

pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

pub struct Sandbox {
    pub name: String,
    pub cgroup: PathBuf,
    pub pins: PathBuf,
    pub netns: String,
    pub dir: PathBuf,
    agent: Option<Child>,
    agent_runs: u32,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Sandbox {
    pub fn new(test: &str) -> Result<Self> {
        let name = format!(
            "clst-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let root = classifier_user::datapath::cgroup::cgroup2_root()?;
        let sandbox = Sandbox {
            cgroup: root.join(&name),
            pins: PathBuf::from("/sys/fs/bpf").join(&name),
            netns: name.clone(),
            dir: std::env::temp_dir().join(&name),
            name,
            agent: None,
            agent_runs: 0,
        };
        // From here on, Drop cleans up whatever was made.
        fs::create_dir_all(&sandbox.dir)?;
        fs::create_dir(&sandbox.cgroup)
            .with_context(|| format!("creating cgroup {}", sandbox.cgroup.display()))?;
        run(Command::new("ip").args(["netns", "add", &sandbox.netns]))?;
        sandbox.ip(&["link", "set", "lo", "up"])?;
        eprintln!(
            "{test}: sandbox {} (cgroup {}, pins {})",
            sandbox.name,
            sandbox.cgroup.display(),
            sandbox.pins.display()
        );
        Ok(sandbox)
    }

    /// `ip -n NS ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").arg("-n").arg(&self.netns).args(args))
    }

    /// `iptables ARGS...` inside the namespace.
    pub fn iptables(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.netns, "iptables", "-w"])
            .args(args))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.netns,
            "sysctl",
            "-q",
            "-w",
            &format!("{key}={value}"),
        ]))?;
        Ok(())
    }

    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        // Write-then-rename so the agent never reads a half-written file.
        let tmp = self.dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, contents).unwrap();
        fs::rename(&tmp, &path).unwrap();
        path
    }

    pub fn agent_log_path(&self) -> PathBuf {
        self.dir.join(format!("agent-{}.log", self.agent_runs))
    }

    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.agent_log_path()).unwrap_or_default()
    }

    /// Starts `classifier agent` on this sandbox's cgroup and pin dir and
    /// waits until its policy is applied.
    pub fn start_agent(&mut self, extra: &[&str]) -> Result<()> {
        self.start_agent_with_env(extra, &[])
    }

    /// `start_agent` with extra environment variables (e.g. KUBECONFIG).
    pub fn start_agent_with_env(&mut self, extra: &[&str], env: &[(&str, &str)]) -> Result<()> {
        assert!(self.agent.is_none(), "agent already running");
        self.agent_runs += 1;
        let log = fs::File::create(self.agent_log_path())?;
        let child = Command::new(classifier_bin())
            .arg("agent")
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--pin-dir")
            .arg(&self.pins)
            .args(if extra.contains(&"--watch-interval") {
                &[][..]
            } else {
                &["--watch-interval", "0.2"][..]
            })
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        self.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.agent_log();
            if log.contains("policy applied") || log.contains("keeping the active policy") {
                return Ok(());
            }
            if let Some(status) = self.agent.as_mut().unwrap().try_wait()? {
                self.agent = None;
                bail!("agent exited ({status}) before applying a policy:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("agent did not apply a policy within 30 s:\n{log}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the agent log holds `needle` at least `count` times.
    pub fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.agent_log().matches(needle).count() < count {
            if Instant::now() > deadline {
                bail!(
                    "no {needle:?} x{count} in the agent log:\n{}",
                    self.agent_log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to clean up, as in a crash or OOM kill.
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn stop_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            sys::terminate(&child);
            let _ = child.wait();
        }
    }

    /// Stops the agent and runs `classifier agent --uninstall`: programs
    /// detached, pins removed, as an operator removing the classifier would.
    pub fn uninstall_agent(&mut self) -> Result<()> {
        self.stop_agent();
        run(Command::new(classifier_bin())
            .args(["agent", "--uninstall", "--pin-dir"])
            .arg(&self.pins))?;
        Ok(())
    }

    /// A `probe` command that will run in the test cgroup and namespace,
    /// optionally as `uid`.
    pub fn probe(&self, args: &[&str], uid: Option<u32>) -> Command {
        self.probe_in(args, uid, true, &self.netns)
    }

    /// A `probe` in this sandbox's cgroup but in another network namespace.
    pub fn probe_in_netns(&self, args: &[&str], netns: &str) -> Command {
        self.probe_in(args, None, true, netns)
    }

    /// A `probe` in this namespace but outside the test cgroup: its
    /// connects are not seen by the classifier.
    pub fn probe_unclassified(&self, args: &[&str]) -> Command {
        self.probe_in(args, None, false, &self.netns)
    }

    /// A `probe` in this namespace, in `cgroup` (a cgroup created below
    /// this sandbox's, e.g. a kubelet-style pod cgroup).
    pub fn probe_in_cgroup(&self, args: &[&str], cgroup: &Path) -> Command {
        assert!(
            cgroup.starts_with(&self.cgroup),
            "stay inside the sandbox's cgroup"
        );
        self.probe_with(args, None, Some(cgroup), &self.netns)
    }

    fn probe_in(&self, args: &[&str], uid: Option<u32>, join_cgroup: bool, netns: &str) -> Command {
        self.probe_with(
            args,
            uid,
            join_cgroup.then_some(self.cgroup.as_path()),
            netns,
        )
    }

    fn probe_with(
        &self,
        args: &[&str],
        uid: Option<u32>,
        cgroup: Option<&Path>,
        netns: &str,
    ) -> Command {
        let join_cgroup = cgroup.is_some();
        let procs = CString::new(
            cgroup
                .unwrap_or(&self.cgroup)
                .join("cgroup.procs")
                .as_os_str()
                .as_encoded_bytes(),
        )
        .unwrap();
        let netns: OwnedFd = fs::File::open(format!("/var/run/netns/{netns}"))
            .expect("netns")
            .into();
        let mut cmd = Command::new(probe_bin());
        cmd.args(args);
        sys::enter_before_exec(&mut cmd, join_cgroup.then_some(procs), netns, uid);
        cmd
    }

    /// Starts `probe serve` and waits until it listens.
    pub fn serve(&self, addr: &str, count: usize, uid: Option<u32>) -> Result<Server> {
        self.start_server("serve", addr, count, uid)
    }

    /// Starts a `probe serve` from a prepared command (e.g. in another
    /// namespace) and waits until it listens.
    pub fn spawn_server(mut cmd: Command, count: usize) -> Result<Server> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .context("starting probe serve")?;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        match lines.next() {
            Some(Ok(line)) if line.starts_with("ready") => Ok(Server {
                child,
                lines,
                count,
            }),
            other => bail!("probe serve did not start: {other:?}"),
        }
    }

    /// Like `serve`, but holds all COUNT connections open before querying
    /// any of them.
    pub fn serve_held(&self, addr: &str, count: usize) -> Result<Server> {
        self.start_server("serve-held", addr, count, None)
    }

    fn start_server(
        &self,
        mode: &str,
        addr: &str,
        count: usize,
        uid: Option<u32>,
    ) -> Result<Server> {
        Self::spawn_server(self.probe(&[mode, addr, &count.to_string()], uid), count)
            .with_context(|| format!("{mode} {addr}"))
    }

    /// Runs `probe connect` to each target; returns its output lines.
    pub fn connect(&self, targets: &[&str], uid: Option<u32>) -> Result<Vec<String>> {
        let mut args = vec!["connect"];
        args.extend_from_slice(targets);
        let out = run(&mut self.probe(&args, uid))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// `classifier stats --json` for this sandbox.
    pub fn stats(&self) -> Result<Value> {
        let out = run(Command::new(classifier_bin())
            .args(["stats", "--json", "--pin-dir"])
            .arg(&self.pins))?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    pub fn generation(&self) -> u64 {
        self.stats()
            .ok()
            .and_then(|s| s["policy"]["generation"].as_u64())
            .unwrap_or(0)
    }

    /// Waits until the active policy generation is at least `generation`.
    pub fn wait_for_generation(&self, generation: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.generation() < generation {
            if Instant::now() > deadline {
                bail!(
                    "policy generation {generation} not reached; agent log:\n{}",
                    self.agent_log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Connects once to `target` through a fresh `probe serve` on `listen`
    /// and returns the verdict line the server saw.
    pub fn verdict_via(&self, listen: &str, target: &str, uid: Option<u32>) -> Result<Value> {
        let server = self.serve(listen, 1, None)?;
        let lines = self.connect(&[target], uid)?;
        anyhow::ensure!(
            lines.iter().all(|l| l.starts_with("ok")),
            "connect to {target} failed: {lines:?}"
        );
        Ok(server.results()?.remove(0))
    }

    /// Shortcut for a server listening on `addr` and a client connecting to it.
    pub fn verdict(&self, addr: &str) -> Result<Value> {
        self.verdict_via(addr, addr, None)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill_agent();
        let _ = Command::new(classifier_bin())
            .args(["agent", "--uninstall", "--pin-dir"])
            .arg(&self.pins)
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.pins);
        // Kill anything left in the cgroup tree, then remove it deepest
        // first (rmdir fails while a cgroup has members or children).
        for _ in 0..50 {
            let tree = cgroup_tree(&self.cgroup);
            for dir in &tree {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
                    let _ = sys::kill(pid, libc::SIGKILL);
                }
            }
            for dir in tree.iter().rev() {
                let _ = fs::remove_dir(dir);
            }
            if !self.cgroup.exists() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `root` and every cgroup below it, parents before children.
fn cgroup_tree(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = fs::read_dir(&out[i]) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(entry.path());
                }
            }
        }
        i += 1;
    }
    out
}

pub struct Server {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    count: usize,
}

impl Server {
    /// Waits for the server's next line, which must start with `prefix`
    /// (a progress line, before the verdict lines).
    pub fn expect_line(&mut self, prefix: &str) -> Result<String> {
        let line = self.lines.next().context("probe serve ended early")??;
        anyhow::ensure!(
            line.starts_with(prefix),
            "expected {prefix:?}, got {line:?}"
        );
        Ok(line)
    }

    /// The verdict lines, one per accepted connection.
    pub fn results(mut self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for _ in 0..self.count {
            let line = self.lines.next().context("probe serve ended early")??;
            out.push(
                serde_json::from_str(&line).with_context(|| format!("bad probe line {line}"))?,
            );
        }
        let _ = self.child.wait();
        Ok(out)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
