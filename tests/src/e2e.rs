//! The end-to-end world of `tests/tests/e2e.rs`: a "pod" (the sandbox's
//! namespace and cgroup) with linkerd-init's nat rules and the reference
//! proxy running as UID 2102, and a "server" namespace behind a veth pair
//! holding a real MariaDB server and a plain HTTP server.
//!
//! ```text
//!  pod netns (sandbox cgroup)                        server netns
//!  mariadb / curl ──nat REDIRECT──▶ classifier proxy     mariadbd 192.0.2.2:3306
//!  ssh-keyscan / ssh                 :4140 (uid 2102) ──▶ http     192.0.2.2:8080
//!                                                        sshd     192.0.2.2:2022 (on request)
//!  e2e-pod 192.0.2.1/24  ◀────────── veth ──────────▶  e2e-srv 192.0.2.2/24
//! ```
//!
//! Everything (processes, the server namespace, the sandbox) goes away on
//! drop, pass or fail.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{classifier_bin, privileged, probe_bin, run, Sandbox, PROXY_UID};

/// The proxy's detection timeout in these tests (Linkerd's default is 10 s).
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const SERVER_IP: &str = "192.0.2.2";
pub const MARIADB: &str = "192.0.2.2:3306";
pub const HTTP_URL: &str = "http://192.0.2.2:8080/";
/// [`World::start_sshd`]'s address: a port in no default opaque list.
pub const SSHD: &str = "192.0.2.2:2022";
/// The bypass recipe for unmodified proxies: classified (marked)
/// connections skip the REDIRECT. Goes first in PROXY_INIT_OUTPUT.
pub const BYPASS_RULE: &str = "-I PROXY_INIT_OUTPUT 1 -m mark --mark 0x40000/0x40000 -j RETURN";

const LINKERD_INIT_NAT: [&str; 5] = [
    "-N PROXY_INIT_OUTPUT",
    "-A OUTPUT -j PROXY_INIT_OUTPUT",
    "-A PROXY_INIT_OUTPUT -m owner --uid-owner 2102 -j RETURN",
    "-A PROXY_INIT_OUTPUT -o lo -j RETURN",
    "-A PROXY_INIT_OUTPUT -p tcp -j REDIRECT --to-port 4140",
];

const TOOLS: [&str; 5] = [
    "mariadbd",
    "mariadb-install-db",
    "mariadb",
    "curl",
    "iptables",
];

/// Whether the end-to-end tests can run: root (see [`privileged`]) and the
/// Debian packages `mariadb-server`, `mariadb-client`, `curl`, `iptables`.
/// Under `CI=true` a missing tool fails the test instead of skipping it.
pub fn prerequisites(test: &str) -> bool {
    privileged(test)
        && tools_installed(
            test,
            &TOOLS,
            "apt-get install mariadb-server mariadb-client curl iptables",
        )
}

/// [`prerequisites`], and what [`World::start_sshd`] and its clients need:
/// `sshd` (openssh-server), `ssh`, `ssh-keygen`, `ssh-keyscan`
/// (openssh-client) and `unshare` (util-linux).
pub fn sshd_prerequisites(test: &str) -> bool {
    prerequisites(test)
        && tools_installed(
            test,
            &SSH_TOOLS,
            "apt-get install openssh-server openssh-client util-linux",
        )
}

const SSH_TOOLS: [&str; 5] = ["sshd", "ssh", "ssh-keygen", "ssh-keyscan", "unshare"];

fn tools_installed(test: &str, tools: &[&str], install: &str) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find_tool(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("{test}: missing {missing:?} ({install})");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}, and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {why}");
    false
}

/// `name` on PATH, or in /usr/sbin (mariadbd lives there; root's PATH
/// does not always have it).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

pub struct World {
    // Fields drop in order: processes first, then the namespaces.
    proxy: Option<Daemon>,
    sshd: Option<Daemon>,
    _http: Daemon,
    _mariadb: Daemon,
    server_ns: Netns,
    pub sb: Sandbox,
    proxy_log: PathBuf,
}

impl World {
    /// Pod and server namespaces, nat rules, MariaDB, HTTP server and the
    /// proxy, all started and ready. No agent yet: call `sb.start_agent`.
    pub fn new(test: &str) -> Result<World> {
        Self::with_detect_timeout(test, DETECT_TIMEOUT)
    }

    /// Like `new`, with the proxy's detection timeout set (the benchmark
    /// uses Linkerd's 10 s).
    pub fn with_detect_timeout(test: &str, detect_timeout: Duration) -> Result<World> {
        let mut world = Self::without_proxy(test)?;
        let mut cmd = world.sb.probe(&["exec"], Some(PROXY_UID));
        cmd.arg(classifier_bin())
            .args(["proxy", "--listen", "0.0.0.0:4140", "--detect-timeout"])
            .arg(detect_timeout.as_secs().to_string())
            .env("RUST_LOG", "info");
        world.start_proxy("proxy", cmd, "proxy listening")?;
        Ok(world)
    }

    /// The namespaces, nat rules and servers, with no proxy listening on
    /// 4140 yet: call [`World::start_proxy`].
    pub fn without_proxy(test: &str) -> Result<World> {
        let sb = Sandbox::new(test)?;
        let server_ns = Netns::add(format!("{}-srv", sb.name))?;
        let srv = server_ns.0.as_str();
        sb.ip(&[
            "link", "add", "e2e-pod", "type", "veth", "peer", "name", "e2e-srv", "netns", srv,
        ])?;
        sb.ip(&["addr", "add", "192.0.2.1/24", "dev", "e2e-pod"])?;
        sb.ip(&["link", "set", "e2e-pod", "up"])?;
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", "192.0.2.2/24", "dev", "e2e-srv"],
            &["link", "set", "e2e-srv", "up"],
        ] {
            run(Command::new("ip").args(["-n", srv]).args(args))?;
        }
        for rule in LINKERD_INIT_NAT {
            let args: Vec<&str> = ["-t", "nat"].into_iter().chain(rule.split(' ')).collect();
            sb.iptables(&args)?;
        }

        let mariadb = start_mariadb(&sb.dir.join("mariadb"), srv)?;
        let http = start_http(srv)?;

        let proxy_log = sb.dir.join("proxy.log");
        Ok(World {
            proxy: None,
            sshd: None,
            _http: http,
            _mariadb: mariadb,
            server_ns,
            sb,
            proxy_log,
        })
    }

    /// Starts `cmd` as the pod's proxy (stopping the one before, if any),
    /// with stdout and stderr in the proxy log (truncated), and waits until
    /// the log holds `ready`. `cmd` should come from `self.sb.probe(&["exec"],
    /// Some(PROXY_UID))` so that the proxy runs in the pod's cgroup and
    /// namespace as the UID linkerd-init's rules let through.
    pub fn start_proxy(&mut self, name: &'static str, mut cmd: Command, ready: &str) -> Result<()> {
        self.proxy = None;
        let log = fs::File::create(&self.proxy_log)?;
        cmd.stdout(log.try_clone()?).stderr(log);
        let mut proxy = Daemon::spawn(name, cmd)?;
        wait_for(&self.proxy_log, ready, &mut proxy)?;
        self.proxy = Some(proxy);
        Ok(())
    }

    /// `mariadb -e 'SELECT 1'` to 192.0.2.2:3306 from the pod, as an
    /// application (in the cgroup, not the proxy's UID). Returns how long
    /// the whole client run took.
    pub fn mariadb_select_1(&self) -> Result<Duration> {
        let (host, port) = MARIADB.split_once(':').unwrap();
        let mut cmd = self.sb.probe(&["exec", "mariadb", "--no-defaults"], None);
        cmd.args([
            "-h",
            host,
            "-P",
            port,
            "-u",
            "e2e",
            "-pe2e",
            "--connect-timeout=20",
        ])
        .args(["-N", "-B", "-e", "SELECT 1"]);
        let start = Instant::now();
        let out = run(&mut cmd)?;
        let elapsed = start.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(stdout.trim() == "1", "SELECT 1 printed {stdout:?}");
        Ok(elapsed)
    }

    /// `curl -sS ARGS... http://192.0.2.2:8080/` from the pod; returns its
    /// output (failing or not) and how long it took.
    pub fn curl(&self, args: &[&str]) -> Result<(std::process::Output, Duration)> {
        let mut cmd = self
            .sb
            .probe(&["exec", "curl", "-sS", "--max-time", "20"], None);
        cmd.args(args).arg(HTTP_URL);
        let start = Instant::now();
        let out = cmd.output().context("running curl")?;
        Ok((out, start.elapsed()))
    }

    /// Starts the real `sshd` (openssh-server) in the server namespace on
    /// [`SSHD`], with a throwaway ed25519 host key and a config of its own
    /// in the sandbox directory; returns the host key's public line. It
    /// touches nothing of the machine's own sshd: no /etc/ssh file is read
    /// (`-f`), there is no pid file, and the privilege separation directory
    /// it insists on (/run/sshd) is made on a tmpfs over /run in a mount
    /// namespace of its own. It is killed when the world drops.
    pub fn start_sshd(&mut self) -> Result<String> {
        let dir = self.sb.dir.join("sshd");
        fs::create_dir_all(&dir)?;
        let key = dir.join("host_ed25519_key");
        run(Command::new(find_tool("ssh-keygen").unwrap())
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "classifier-e2e",
                "-f",
            ])
            .arg(&key))
        .context("ssh-keygen")?;
        let public = fs::read_to_string(dir.join("host_ed25519_key.pub"))?;
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            "# classifier e2e: a server that accepts no login\n\
             UsePAM no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             AuthorizedKeysFile none\n\
             PermitRootLogin no\n",
        )?;
        let (ip, port) = SSHD.split_once(':').unwrap();
        let log = dir.join("sshd.log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.server_ns.0])
            .arg(find_tool("unshare").unwrap())
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs -o mode=755 classifier-e2e-sshd /run && mkdir -m 755 /run/sshd && exec \"$@\"")
            .arg("sh")
            // sshd re-executes itself: it wants its absolute path.
            .arg(find_tool("sshd").unwrap())
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .arg("-o")
            .arg(format!("HostKey={}", key.display()))
            .args(["-o", &format!("ListenAddress={ip}")])
            .args(["-o", &format!("Port={port}")])
            .args(["-o", "PidFile=none"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?);
        let mut daemon = Daemon::spawn("sshd", cmd)?;
        wait_for(
            &log,
            &format!("Server listening on {ip} port {port}"),
            &mut daemon,
        )?;
        self.sshd = Some(daemon);
        Ok(public.trim().to_owned())
    }

    /// `ssh-keyscan -t ed25519` of [`SSHD`] from the pod, as an
    /// application: a real SSH client that waits for the server's banner
    /// before it sends its own (server first). Returns what it printed (the
    /// host key) and how long it took.
    pub fn ssh_keyscan(&self) -> Result<(String, Duration)> {
        let (host, port) = SSHD.split_once(':').unwrap();
        let mut cmd = self.sb.probe(&["exec", "ssh-keyscan"], None);
        cmd.args(["-t", "ed25519", "-T", "20", "-p", port, host]);
        let start = Instant::now();
        let out = run(&mut cmd)?;
        Ok((
            String::from_utf8_lossy(&out.stdout).into_owned(),
            start.elapsed(),
        ))
    }

    /// `ssh` (OpenSSH's client) to [`SSHD`] from the pod, with no
    /// configuration, key or agent of the machine's; the server accepts no
    /// login, so it ends with "Permission denied" after the key exchange.
    /// OpenSSH's client sends its banner as soon as it is connected
    /// (client first). Returns its output and how long it took.
    pub fn ssh(&self) -> Result<(std::process::Output, Duration)> {
        let (host, port) = SSHD.split_once(':').unwrap();
        let home = self.sb.dir.join("sshd").join("client-home");
        fs::create_dir_all(&home)?;
        let mut cmd = self.sb.probe(&["exec", "ssh", "-F", "/dev/null"], None);
        cmd.args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentityAgent=none",
            "-o",
            "PreferredAuthentications=none",
            "-o",
            "ConnectTimeout=20",
            "-p",
            port,
            &format!("e2e@{host}"),
            "true",
        ])
        .env("HOME", &home);
        let start = Instant::now();
        let out = cmd.output().context("running ssh")?;
        Ok((out, start.elapsed()))
    }

    pub fn proxy_log(&self) -> String {
        fs::read_to_string(&self.proxy_log).unwrap_or_default()
    }

    /// Waits until the proxy log has `count` lines containing all of `needles`
    /// (the proxy logs a connection's end after the client has gone).
    pub fn wait_for_proxy_lines(&self, needles: &[&str], count: usize) -> Result<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.proxy_lines(needles);
            if lines.len() >= count {
                return Ok(lines);
            }
            if Instant::now() > deadline {
                bail!(
                    "proxy log has {} of {count} lines with {needles:?}:\n{}",
                    lines.len(),
                    self.proxy_log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The proxy log's lines containing all of `needles`.
    pub fn proxy_lines(&self, needles: &[&str]) -> Vec<String> {
        self.proxy_log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }

    /// Whether the proxy is still running (it must not die under test).
    pub fn proxy_alive(&mut self) -> bool {
        self.proxy
            .as_mut()
            .is_some_and(|p| matches!(p.0.try_wait(), Ok(None)))
    }
}

/// Bootstraps a datadir with a TCP user `e2e`/`e2e`, starts `mariadbd` in
/// the server namespace on 192.0.2.2:3306 and waits until it is ready.
fn start_mariadb(dir: &Path, netns: &str) -> Result<Daemon> {
    let datadir = dir.join("data");
    fs::create_dir_all(dir)?;
    // Small buffers (many tests, two cores) and a private tmpdir (parallel
    // bootstraps in one /tmp collide on temporary table names).
    let tmpdir = format!("--tmpdir={}", dir.display());
    let common = [
        "--innodb-buffer-pool-size=16M",
        "--innodb-log-file-size=4M",
        tmpdir.as_str(),
    ];
    run(Command::new(find_tool("mariadb-install-db").unwrap())
        .arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .args([
            "--user=root",
            "--skip-test-db",
            "--auth-root-authentication-method=socket",
        ])
        .args(common))
    .context("mariadb-install-db")?;
    let init = dir.join("init.sql");
    fs::write(
        &init,
        "CREATE USER IF NOT EXISTS 'e2e'@'%' IDENTIFIED BY 'e2e';\nGRANT ALL ON *.* TO 'e2e'@'%';\n",
    )?;
    let log = dir.join("mariadbd.log");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .arg(find_tool("mariadbd").unwrap())
        .arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
        .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
        .arg(format!("--log-error={}", log.display()))
        .arg(format!("--init-file={}", init.display()))
        .arg(format!("--bind-address={SERVER_IP}"))
        .args([
            "--port=3306",
            "--user=root",
            "--skip-name-resolve",
            "--skip-log-bin",
        ])
        .args(common)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut daemon = Daemon::spawn("mariadbd", cmd)?;
    wait_for(&log, "ready for connections", &mut daemon)?;
    Ok(daemon)
}

/// `probe http-serve 192.0.2.2:8080` in the server namespace.
fn start_http(netns: &str) -> Result<Daemon> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .arg(probe_bin())
        .args(["http-serve", "192.0.2.2:8080"]);
    Daemon::spawn_until_ready("http server", cmd)
}

/// Polls `file` until it contains `needle`; fails if `daemon` exits first.
pub fn wait_for(file: &Path, needle: &str, daemon: &mut Daemon) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        let exited = !matches!(daemon.0.try_wait(), Ok(None));
        if exited {
            bail!("{} exited before logging {needle:?}:\n{text}", daemon.1);
        }
        if Instant::now() > deadline {
            bail!("{} did not log {needle:?} within 30 s:\n{text}", daemon.1);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Daemon(Child, &'static str);

impl Daemon {
    pub fn spawn(name: &'static str, mut cmd: Command) -> Result<Daemon> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Daemon(child, name))
    }

    /// Spawns `cmd` and waits for the first line of its stdout, which must
    /// start with `ready` (the servers' convention here).
    pub fn spawn_until_ready(name: &'static str, mut cmd: Command) -> Result<Daemon> {
        cmd.stdout(Stdio::piped());
        let mut daemon = Daemon::spawn(name, cmd)?;
        let stdout = daemon.0.stdout.take().unwrap();
        match BufReader::new(stdout).lines().next() {
            Some(Ok(line)) if line.starts_with("ready") => Ok(daemon),
            other => bail!("{name} did not start: {other:?}"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn add(name: String) -> Result<Netns> {
        run(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}
