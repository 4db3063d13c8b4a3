//! `cargo xtask demo`: the point of the project in one command.
//!
//! Builds the classifier, then sets up a "pod" network namespace with
//! linkerd-init's nat rules and the reference proxy (`classifier proxy`,
//! UID 2102), and a "server" namespace holding a real MariaDB server,
//! joined by a veth pair (192.0.2.1 <-> 192.0.2.2). It runs the same
//! `mariadb -e 'SELECT 1'` from the pod without the classifier, then with
//! the agent attached to the pod's private cgroup, and prints both times.
//!
//! Everything it creates (namespaces, cgroup, bpffs pins, processes, temp
//! files) is removed at the end, on error and on Ctrl-C.

use std::{
    env,
    ffi::CString,
    fs,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::util::{find_on_path, is_root, step};

const PROXY_UID: u32 = 2102;
const SERVER: &str = "192.0.2.2";
const QUERY: &str = "SELECT 1";
const NAT_RULES: [&str; 5] = [
    "-N PROXY_INIT_OUTPUT",
    "-A OUTPUT -j PROXY_INIT_OUTPUT",
    "-A PROXY_INIT_OUTPUT -m owner --uid-owner 2102 -j RETURN",
    "-A PROXY_INIT_OUTPUT -o lo -j RETURN",
    "-A PROXY_INIT_OUTPUT -p tcp -j REDIRECT --to-port 4140",
];

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (everything the demo created has been removed)");
    }
    Ok(())
}

pub fn run(classifier: &Path, detect_timeout: u64) -> Result<()> {
    if !is_root() {
        bail!("the demo needs root (network namespaces, iptables, cgroups, eBPF): sudo -E cargo xtask demo");
    }
    let tools = [
        "ip",
        "iptables",
        "mariadbd",
        "mariadb-install-db",
        "mariadb",
    ];
    let missing: Vec<&str> = tools.into_iter().filter(|t| tool(t).is_none()).collect();
    if !missing.is_empty() {
        bail!(
            "missing {}: apt-get install iproute2 iptables mariadb-server mariadb-client",
            missing.join(", ")
        );
    }
    // From here on Ctrl-C only sets a flag; the children run in their own
    // process groups, and `Demo`'s Drop removes everything.
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }

    let mut demo = Demo::new()?;
    demo.set_up_network()?;
    demo.start_mariadb()?;
    demo.start_proxy(classifier, detect_timeout)?;

    step!("running `mariadb -h {SERVER} -e '{QUERY}'` in the pod, no classifier attached");
    let without = demo.query()?;
    step!("took {:.2} s", without.as_secs_f64());

    demo.start_agent(classifier)?;
    step!("running the same query with the classifier attached");
    let with = demo.query()?;
    step!("took {:.2} s", with.as_secs_f64());

    let log = fs::read_to_string(demo.dir.join("proxy.log")).unwrap_or_default();
    let logged = |needle: &str, what: &'static str| {
        if log.contains(needle) {
            what
        } else {
            "(not in the proxy log?)"
        }
    };
    println!();
    println!("MariaDB `{QUERY}` through a detecting proxy (--detect-timeout {detect_timeout}s; Linkerd's default is 10s)");
    println!();
    println!("  {:<22} {:>9}   proxy's decision", "", "time");
    println!(
        "  {:<22} {:>7.2} s   {}",
        "without the classifier",
        without.as_secs_f64(),
        logged(
            "protocol detection timed out",
            "detection timed out, then forwarded as opaque TCP"
        )
    );
    println!(
        "  {:<22} {:>7.2} s   {}",
        "with the classifier",
        with.as_secs_f64(),
        logged(
            "opaque from kernel verdict",
            "opaque from kernel verdict: forwarded at once"
        )
    );
    println!();
    println!("proxy log:");
    for line in log.lines().filter(|l| l.contains("dst=")) {
        println!("  {line}");
    }
    println!();
    step!("cleaning up");
    drop(demo);
    step!("done");
    Ok(())
}

/// What the demo created; Drop removes it all, in reverse.
struct Demo {
    id: String,
    dir: PathBuf,
    cgroup: Option<PathBuf>,
    pins: PathBuf,
    netns: Vec<String>,
    children: Vec<(&'static str, Child)>,
    classifier: Option<PathBuf>,
}

impl Demo {
    fn new() -> Result<Demo> {
        let id = format!("clsdemo-{}", std::process::id());
        let mut demo = Demo {
            dir: env::temp_dir().join(&id),
            pins: PathBuf::from("/sys/fs/bpf").join(&id),
            id,
            cgroup: None,
            netns: Vec::new(),
            children: Vec::new(),
            classifier: None,
        };
        fs::create_dir_all(&demo.dir)?;
        let cgroup = cgroup2_root()?.join(&demo.id);
        fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        demo.cgroup = Some(cgroup);
        Ok(demo)
    }

    fn pod(&self) -> String {
        format!("{}-pod", self.id)
    }

    fn server(&self) -> String {
        format!("{}-srv", self.id)
    }

    fn set_up_network(&mut self) -> Result<()> {
        let (pod, srv) = (self.pod(), self.server());
        step!("namespaces {pod} (the pod: nat rules, proxy, client) and {srv} (MariaDB), veth 192.0.2.1 <-> {SERVER}");
        for ns in [&pod, &srv] {
            sh(Command::new("ip").args(["netns", "add", ns]))?;
            self.netns.push(ns.clone());
            sh(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        }
        sh(Command::new("ip")
            .args(["-n", &pod, "link", "add", "demo-pod", "type", "veth"])
            .args(["peer", "name", "demo-srv", "netns", &srv]))?;
        for (ns, dev, addr) in [
            (&pod, "demo-pod", "192.0.2.1/24"),
            (&srv, "demo-srv", "192.0.2.2/24"),
        ] {
            sh(Command::new("ip").args(["-n", ns, "addr", "add", addr, "dev", dev]))?;
            sh(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]))?;
        }
        step!("linkerd-init style nat rules in the pod: REDIRECT to 4140, UID {PROXY_UID} and lo excluded");
        for rule in NAT_RULES {
            sh(Command::new("ip")
                .args(["netns", "exec", &pod, "iptables", "-w", "-t", "nat"])
                .args(rule.split(' ')))?;
        }
        Ok(())
    }

    fn start_mariadb(&mut self) -> Result<()> {
        step!("bootstrapping and starting mariadbd on {SERVER}:3306");
        let dir = self.dir.join("mariadb");
        let datadir = dir.join("data");
        fs::create_dir_all(&dir)?;
        // Small buffers, and a private tmpdir for the bootstrap too.
        let tmpdir = format!("--tmpdir={}", dir.display());
        let small = [
            "--innodb-buffer-pool-size=16M",
            "--innodb-log-file-size=4M",
            tmpdir.as_str(),
        ];
        sh(Command::new(tool("mariadb-install-db").unwrap())
            .arg("--no-defaults")
            .arg(format!("--datadir={}", datadir.display()))
            .args([
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
            ])
            .args(small))?;
        let init = dir.join("init.sql");
        fs::write(
            &init,
            "CREATE USER IF NOT EXISTS 'demo'@'%' IDENTIFIED BY 'demo';\nGRANT ALL ON *.* TO 'demo'@'%';\n",
        )?;
        let log = dir.join("mariadbd.log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.server()])
            .arg(tool("mariadbd").unwrap())
            .arg("--no-defaults")
            .arg(format!("--datadir={}", datadir.display()))
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--init-file={}", init.display()))
            .arg(format!("--bind-address={SERVER}"))
            .args([
                "--port=3306",
                "--user=root",
                "--skip-name-resolve",
                "--skip-log-bin",
            ])
            .args(small)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.spawn("mariadbd", cmd)?;
        self.wait_for_log(&log, "ready for connections")
    }

    fn start_proxy(&mut self, classifier: &Path, detect_timeout: u64) -> Result<()> {
        step!("starting `classifier proxy --detect-timeout {detect_timeout}` in the pod as UID {PROXY_UID}");
        let log = self.dir.join("proxy.log");
        let mut cmd = self.in_pod(classifier, Some(PROXY_UID))?;
        cmd.args(["proxy", "--listen", "0.0.0.0:4140", "--detect-timeout"])
            .arg(detect_timeout.to_string())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?);
        self.spawn("proxy", cmd)?;
        self.wait_for_log(&log, "proxy listening")
    }

    fn start_agent(&mut self, classifier: &Path) -> Result<()> {
        let cgroup = self.cgroup.clone().unwrap();
        step!(
            "starting `classifier agent` on the pod's cgroup {}",
            cgroup.display()
        );
        let log = self.dir.join("agent.log");
        let mut cmd = Command::new(classifier);
        cmd.arg("agent")
            .arg("--cgroup")
            .arg(&cgroup)
            .arg("--pin-dir")
            .arg(&self.pins)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?);
        self.classifier = Some(classifier.to_owned());
        self.spawn("agent", cmd)?;
        self.wait_for_log(&log, "policy applied")
    }

    /// The real `mariadb` client in the pod (its cgroup, not the proxy's UID).
    fn query(&mut self) -> Result<Duration> {
        let mut cmd = self.in_pod(&tool("mariadb").unwrap(), None)?;
        cmd.args([
            "--no-defaults",
            "-h",
            SERVER,
            "-P",
            "3306",
            "-u",
            "demo",
            "-pdemo",
        ])
        .args(["-N", "-B", "-e", QUERY])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
        let start = Instant::now();
        let mut child = cmd.spawn().context("starting mariadb")?;
        loop {
            if let Some(status) = child.try_wait()? {
                let elapsed = start.elapsed();
                let out = child.wait_with_output()?;
                if !status.success() {
                    bail!(
                        "mariadb failed ({status}): {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                return Ok(elapsed);
            }
            if let Err(err) = check_interrupted() {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err);
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// `program` to run in the pod's cgroup and network namespace, as `uid`.
    fn in_pod(&self, program: &Path, uid: Option<u32>) -> Result<Command> {
        let procs = CString::new(
            self.cgroup
                .as_ref()
                .unwrap()
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )?;
        let netns: OwnedFd = fs::File::open(format!("/var/run/netns/{}", self.pod()))?.into();
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(uid) = uid {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Starts a long-running child in its own process group (so Ctrl-C
    /// reaches only us, and we stop it in order).
    fn spawn(&mut self, name: &'static str, mut cmd: Command) -> Result<()> {
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name, child));
        Ok(())
    }

    /// Waits until `log` contains `needle`; fails if the last started child
    /// exits, after 30 s, or on Ctrl-C.
    fn wait_for_log(&mut self, log: &Path, needle: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (name, child) = self.children.last_mut().unwrap();
        loop {
            let text = fs::read_to_string(log).unwrap_or_default();
            if text.contains(needle) {
                return Ok(());
            }
            check_interrupted()?;
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited ({status}):\n{text}");
            }
            if Instant::now() > deadline {
                bail!("{name} did not log {needle:?} within 30 s:\n{text}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // The agent first, with SIGTERM (it leaves its pins attached by
        // design; uninstall removes them), then the rest.
        for (name, child) in self.children.iter_mut().rev() {
            if *name == "agent" {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            } else {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if let Some(classifier) = &self.classifier {
            let _ = Command::new(classifier)
                .args(["agent", "--uninstall", "--pin-dir"])
                .arg(&self.pins)
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.pins);
        if let Some(cgroup) = &self.cgroup {
            for _ in 0..50 {
                let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
                    // SAFETY: signalling a process the demo started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                if fs::remove_dir(cgroup).is_ok() || !cgroup.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        for ns in self.netns.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs a set-up command, failing with its output.
fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `name` on PATH or in /usr/sbin (where Debian puts mariadbd).
fn tool(name: &str) -> Option<PathBuf> {
    find_on_path(name).or_else(|| Some(Path::new("/usr/sbin").join(name)).filter(|p| p.is_file()))
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup v2 mount in /proc/self/mountinfo")
}
