//! The root test world: a "client" network namespace where nettrust runs, an "internet" namespace
//! with a real dnsmasq upstream and a TCP server answering on whole documentation ranges, a test
//! cgroup whose processes nettrust filters, and a test bpffs directory. Everything is torn down in
//! `Drop`, also when a test fails; nothing touches the host's own egress. The namespaces, the link,
//! the cgroups and the pins are built by `xtask/src/netns.rs`, the same world `cargo xtask bench`
//! and `soak` run in.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the world"
)]

use std::{
    fs::File,
    io::Write as _,
    net::IpAddr,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

#[path = "../../../xtask/src/netns.rs"]
mod netns;

/// `program` run in the network namespace `ns`.
#[allow(
    unused_imports,
    reason = "each test binary uses a different part of the world"
)]
pub use netns::in_ns as in_netns;
/// `cmd`, which also joins a cgroup before it runs.
#[allow(
    unused_imports,
    reason = "each test binary uses a different part of the world"
)]
pub use netns::join_cgroup;
/// The link between the namespaces (documentation ranges, not whitelisted as private) and the
/// upstream DNS server (dnsmasq) in the internet namespace.
#[allow(
    unused_imports,
    reason = "each test binary uses a different part of the world"
)]
pub use netns::{CLIENT_V4, CLIENT_V6, INET_V4, INET_V6, UPSTREAM};
/// Port of the TCP server that answers "ok" on every internet address.
pub const TCP_PORT: u16 = 8080;
/// Number of `nN.test` names, each answered with its own 203.0.113.N address.
pub const NUMBERED_NAMES: u32 = 200;
/// Port of the echo server ([`echo_server`]): it keeps each connection open until the client
/// closes it.
pub const ECHO_PORT: u16 = 8081;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A 212-character name (of the 253 a DNS name may have), answered with 192.0.2.13.
pub fn long_name() -> String {
    ["a", "b", "c", "d"].map(|c| c.repeat(50)).join(".") + ".long.test"
}

/// dnsmasq's zone: fixed names for the assertions plus NUMBERED_NAMES distinct names.
fn dnsmasq_zone() -> String {
    let mut conf = String::from(
        "local-ttl=60\n\
         host-record=a.test,192.0.2.10,2001:db8:1::10\n\
         host-record=b.test,192.0.2.11,2001:db8:1::11\n\
         host-record=c.test,192.0.2.12\n\
         cname=alias.test,c.test\n\
         address=/zero.test/0.0.0.0\n\
         address=/zero.test/::\n",
    );
    for i in 1..=NUMBERED_NAMES {
        conf.push_str(&format!("host-record=n{i}.test,203.0.113.{i}\n"));
    }
    conf.push_str(&format!("host-record={},192.0.2.13\n", long_name()));
    conf
}

/// The response code ("NO ANSWER" when none came) and the answers' data fields of the output of
/// `dig +noall +comments +answer`.
pub fn dig_reply(text: &str) -> (String, Vec<String>) {
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("NO ANSWER")
        .to_owned();
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    (status, answers)
}

/// A dnsmasq (not started) serving `zone` (configuration lines) on `listen`, an address it adds
/// to the loopback of `world`'s internet namespace.
pub fn netns_dnsmasq(world: &World, listen: &str, zone: &str, name: &str) -> Command {
    ip(&format!("-n {} addr add {listen}/32 dev lo", world.inet_ns));
    netns::dnsmasq(&world.inet_ns, listen, zone, world.dir.path(), name)
        .expect("write the dnsmasq configuration")
}

/// The firewall backend a world's daemon runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `--firewall-backend ebpf` (what `auto` picks on these machines; named, so a failed load
    /// fails the test instead of falling back).
    Ebpf,
    /// `--firewall-backend nftables`.
    Nftables,
}

/// Generates, for each listed `fn name(backend: Backend)`, one `#[ignore]`d test per backend:
/// `ebpf::name` and `nftables::name`. One suite, two backends.
#[allow(
    unused_macros,
    reason = "only the suites that run on both backends use it"
)]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod ebpf {
            $(
                #[test]
                #[ignore = "needs root: cargo xtask test"]
                fn $name() {
                    super::$name(super::world::Backend::Ebpf);
                }
            )*
        }
        mod nftables {
            $(
                #[test]
                #[ignore = "needs root: cargo xtask test"]
                fn $name() {
                    super::$name(super::world::Backend::Nftables);
                }
            )*
        }
    };
}

/// A running nettrust daemon inside the client namespace.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

pub struct World {
    pub dir: tempfile::TempDir,
    servers: Vec<Child>,
    pub daemon: Option<Daemon>,
    /// Log of the last daemon that exited.
    pub last_log: String,
    /// The backend `start_daemon` asks for.
    pub backend: Backend,
    /// The namespaces, cgroups and pins (`id`, `client_ns`, `inet_ns`, `cgroup`, `bpffs_dir`,
    /// `in_ns`, `in_cgroup`...), reached through `Deref`; declared last, so it is removed after
    /// `Drop` stopped the processes.
    net: netns::Net,
}

impl std::ops::Deref for World {
    type Target = netns::Net;
    fn deref(&self) -> &netns::Net {
        &self.net
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `ip ARGS`; fails the test when it fails.
pub fn ip(args: &str) {
    netns::ip(args).unwrap_or_else(|e| panic!("{e:#}"));
}

impl World {
    /// Creates the namespaces, the link, the upstream DNS server, the TCP server and the cgroup.
    pub fn new() -> Self {
        assert!(
            nix_is_root(),
            "root tests must run as root (cargo xtask test)"
        );
        let id = format!(
            "{}x{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        // Namespaces ntc-ID and nti-ID, veth ends vcID and viID, cgroup and pins
        // nettrust-test-ID. The "internet": every address of these documentation ranges is
        // local in its namespace.
        let net = netns::Net::new(&netns::Layout {
            kind: "test",
            tag: "",
            id,
            inet: &[
                "route add local 192.0.2.0/24 dev lo",
                "route add local 203.0.113.0/24 dev lo",
                "-6 route add local 2001:db8:1::/64 dev lo",
            ],
        })
        .unwrap_or_else(|e| panic!("building the test world: {e:#}"));
        let mut world = World {
            dir: tempfile::tempdir().expect("tempdir"),
            servers: Vec::new(),
            daemon: None,
            last_log: String::new(),
            backend: Backend::Ebpf,
            net,
        };
        world.start_servers();
        world
    }

    /// Runs `cmd` as one more server of this world (killed in `Drop`).
    pub fn spawn_server(&mut self, mut cmd: Command) {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        self.servers.push(child);
    }

    fn start_servers(&mut self) {
        let dnsmasq = netns::dnsmasq(
            &self.inet_ns,
            UPSTREAM,
            &dnsmasq_zone(),
            self.dir.path(),
            "dnsmasq",
        )
        .expect("write dnsmasq.conf")
        .spawn()
        .expect("start dnsmasq (apt-get install dnsmasq-base)");
        self.servers.push(dnsmasq);
        let server = self
            .in_ns(&self.inet_ns, "socat")
            .arg(format!("TCP6-LISTEN:{TCP_PORT},ipv6only=0,reuseaddr,fork"))
            .arg("SYSTEM:echo ok")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat");
        self.servers.push(server);
        // Both are up when the upstream answers a query from the client namespace.
        wait_for("the upstream DNS server", || {
            self.in_ns(&self.client_ns, "dig")
                .args([
                    "+time=1",
                    "+tries=1",
                    &format!("@{UPSTREAM}"),
                    "a.test",
                    "A",
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        wait_for("the TCP server", || {
            self.in_ns(&self.client_ns, "socat")
                .args([
                    "-u",
                    &format!("TCP:{INET_V4}:{TCP_PORT},connect-timeout=1"),
                    "-",
                ])
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"ok"))
        });
    }

    /// A world whose daemon runs with `backend`.
    pub fn with_backend(backend: Backend) -> Self {
        let mut world = Self::new();
        world.backend = backend;
        world
    }

    /// Starts nettrust in the client namespace, filtering the test cgroup, forwarding to the
    /// world's dnsmasq, and waits until it answers DNS.
    pub fn start_daemon(&mut self, extra: &[&str]) {
        let upstream = format!("{UPSTREAM}:53");
        let mut args = vec!["--fwd-addr", upstream.as_str()];
        args.extend_from_slice(extra);
        self.start_daemon_with(&args);
    }

    /// Starts nettrust like [`World::start_daemon`] but with only the `args` given after the
    /// listen, cgroup and bpffs options (so they must name the upstreams).
    pub fn start_daemon_with(&mut self, args: &[&str]) {
        self.start_daemon_on("127.0.0.1:53", args);
    }

    /// [`World::start_daemon_with`] listening on `listen`, which must also answer on
    /// 127.0.0.1:53 (e.g. 0.0.0.0:53): that is where readiness is checked.
    pub fn start_daemon_on(&mut self, listen: &str, args: &[&str]) {
        let log = self.dir.path().join(format!(
            "nettrust-{}.log",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let child = self
            .in_ns(&self.client_ns, env!("CARGO_BIN_EXE_nettrust"))
            .args(["run", "--listen-addr", listen])
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs-dir")
            .arg(&self.bpffs_dir)
            // The backend is always named (unless the test names one itself): with `auto`, an
            // eBPF program the kernel rejects would fall back to nftables and an eBPF test would
            // pass on the wrong backend.
            .args(match self.backend {
                _ if args.contains(&"--firewall-backend") => &[][..],
                Backend::Ebpf => &["--firewall-backend", "ebpf"][..],
                Backend::Nftables => &["--firewall-backend", "nftables"][..],
            })
            .args(args)
            .env("RUST_LOG", "info,nettrust=debug")
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start nettrust");
        self.daemon = Some(Daemon { child, log });
        let started = Instant::now();
        // A query for a name the upstream does not know authorizes nothing.
        while !self
            .in_ns(&self.client_ns, "dig")
            .args(["+time=1", "+tries=1", "@127.0.0.1", "ready.invalid"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            if let Some(status) = self.daemon.as_mut().unwrap().child.try_wait().unwrap() {
                panic!(
                    "nettrust exited with {status} during start:\n{}",
                    self.daemon_log()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nettrust did not answer DNS:\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn daemon_log(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| std::fs::read_to_string(&d.log).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL (no cleanup at all) and waits for it.
    pub fn kill_daemon(&mut self) {
        let mut daemon = self.daemon.take().expect("daemon running");
        daemon.child.kill().expect("kill nettrust");
        daemon.child.wait().expect("wait for nettrust");
        self.last_log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    }

    /// A nettrust command (`status`, `flush`, `attach`, ...) against this world's bpffs directory,
    /// run in the client namespace (where the nftables table lives); returns its output whatever
    /// the exit status.
    pub fn nettrust(&self, args: &[&str]) -> Output {
        self.in_ns(&self.client_ns, env!("CARGO_BIN_EXE_nettrust"))
            .args(args)
            .arg("--bpffs-dir")
            .arg(&self.bpffs_dir)
            .output()
            .expect("run nettrust")
    }

    /// A second cgroup next to the test cgroup, removed with the world.
    pub fn extra_cgroup(&mut self, name: &str) -> PathBuf {
        self.net
            .extra_cgroup(name)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Sends SIGTERM and waits for the daemon to exit; returns whether it exited successfully.
    pub fn stop_daemon(&mut self) -> bool {
        let mut daemon = self.daemon.take().expect("daemon running");
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
                self.last_log = log.clone();
                if !status.success() {
                    eprintln!("nettrust log:\n{log}");
                }
                return status.success();
            }
            if started.elapsed() > Duration::from_secs(15) {
                let _ = daemon.child.kill();
                panic!("nettrust did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the running daemon.
    pub fn signal_daemon(&self, signal: i32) {
        let daemon = self.daemon.as_ref().expect("daemon running");
        // SAFETY: plain kill(2) on our child's pid.
        let rc = unsafe { libc::kill(daemon.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits until `condition` holds (polling), failing with the daemon's log after `timeout`.
    pub fn eventually(&self, what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
        let started = Instant::now();
        while !condition() {
            assert!(
                started.elapsed() < timeout,
                "{what} did not happen within {timeout:?}:\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Resolves `name` from inside the test cgroup through nettrust (`tcp` selects TCP).
    pub fn resolve(&self, name: &str, rtype: &str, tcp: bool) -> Vec<String> {
        let mut cmd = self.in_cgroup("dig");
        cmd.args(["+short", "+time=2", "+tries=1", "@127.0.0.1", name, rtype]);
        if tcp {
            cmd.arg("+tcp");
        }
        let out = run(&mut cmd);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// An A query for `name` from inside the test cgroup through nettrust (`tcp` selects TCP):
    /// the response code ("NO ANSWER" when none came within 5 s), the answer's data fields, and
    /// how long dig took.
    pub fn dig(&self, name: &str, tcp: bool) -> (String, Vec<String>, Duration) {
        let mut cmd = self.in_cgroup("dig");
        cmd.args(["+time=5", "+tries=1", "+noall", "+comments", "+answer"])
            .args(["@127.0.0.1", name, "A"]);
        if tcp {
            cmd.arg("+tcp");
        }
        let started = Instant::now();
        let out = cmd.output().expect("run dig");
        let took = started.elapsed();
        let (status, answers) = dig_reply(&String::from_utf8_lossy(&out.stdout));
        (status, answers, took)
    }

    /// Starts `nettrust run` on this world's cgroup and pin directory with `extra` arguments,
    /// expecting it to refuse; returns its stderr.
    pub fn start_fails(&self, extra: &[&str]) -> String {
        let mut cmd = self.in_ns(&self.client_ns, env!("CARGO_BIN_EXE_nettrust"));
        cmd.args(["run", "--listen-addr", "127.0.0.1:53", "--fwd-addr"])
            .arg(format!("{UPSTREAM}:53"))
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs-dir")
            .arg(&self.bpffs_dir)
            .args(extra);
        let out = output_within(cmd, Duration::from_secs(20));
        assert!(
            !out.status.success(),
            "nettrust started with {extra:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Whether a TCP connection from the test cgroup to `addr` gets the server's "ok".
    pub fn reachable_from_cgroup(&self, addr: &str) -> bool {
        connect(self.in_cgroup("socat"), addr)
    }

    /// Whether a TCP connection from the client namespace, outside the test cgroup, gets "ok".
    pub fn reachable_outside_cgroup(&self, addr: &str) -> bool {
        connect(self.in_ns(&self.client_ns, "socat"), addr)
    }

    /// `nettrust list` for this world's daemon.
    pub fn list(&self) -> Vec<IpAddr> {
        let out = run(self
            .in_ns(&self.client_ns, env!("CARGO_BIN_EXE_nettrust"))
            .args(["list", "--bpffs-dir"])
            .arg(&self.bpffs_dir));
        let mut hosts: Vec<IpAddr> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        hosts.sort();
        hosts
    }

    /// The value of the sample `name` (with its labels, if any) that the daemon's metrics
    /// endpoint (`--metrics-addr 127.0.0.1:9153`) serves now.
    pub fn metric(&self, name: &str) -> f64 {
        let out = self
            .in_ns(&self.client_ns, "curl")
            .args(["-sS", "--fail", "--max-time", "5"])
            .arg("http://127.0.0.1:9153/metrics")
            .output()
            .expect("run curl");
        assert!(out.status.success(), "metrics endpoint did not answer");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from the metrics:\n{text}"))
    }

    /// Runs a shell script inside the test cgroup and client namespace.
    pub fn script_in_cgroup(&self, script: &str) -> Output {
        let mut cmd = self.in_cgroup("sh");
        cmd.args(["-c", script]);
        cmd.output().expect("run sh")
    }
}

fn connect(cmd: Command, addr: &str) -> bool {
    let target = match addr.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("TCP:[{v6}]:{TCP_PORT},connect-timeout=2"),
        _ => format!("TCP:{addr}:{TCP_PORT},connect-timeout=2"),
    };
    socat_gets(cmd, &target, b"ok")
}

/// Runs `cmd` (a `socat` command) as `socat -u TARGET -` and tells whether the server's first
/// bytes were `greeting`. False only when the connect itself failed (refused, dropped, timed
/// out); a client that cannot start or fails otherwise fails the test.
pub fn socat_gets(mut cmd: Command, target: &str, greeting: &[u8]) -> bool {
    cmd.args(["-u", target, "-"]);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start the client {cmd:?}: {e}"));
    if out.stdout.starts_with(greeting) {
        return true;
    }
    // Only a refused, dropped or timed-out connect means "unreachable"; a client that could not
    // start or failed otherwise would make every "blocked" assertion pass vacuously.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(" E connect(") || stderr.contains(" E connecting to "),
        "the client {cmd:?} failed without a connect error ({}): stdout {:?}, stderr {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
    );
    false
}

/// Number of programs attached directly to `cgroup`'s egress hook (`BPF_PROG_QUERY`), whoever
/// attached them.
pub fn egress_programs(cgroup: &std::path::Path) -> u32 {
    let dir = File::open(cgroup).expect("open the cgroup");
    nettrust::firewall::ebpf::syscalls::attached_programs(
        std::os::fd::AsFd::as_fd(&dir),
        aya::programs::CgroupSkbAttachType::Egress,
    )
    .expect("BPF_PROG_QUERY")
}

/// Runs `cmd` to completion like `Command::output`, but a process still running after `limit`
/// (e.g. a daemon that accepted what it should refuse) is killed and the test fails instead of
/// hanging.
pub fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "{cmd:?} was still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
            if std::thread::panicking() {
                eprintln!(
                    "nettrust log:\n{}",
                    std::fs::read_to_string(&daemon.log).unwrap_or_default()
                );
            }
        }
        if std::thread::panicking() && !self.last_log.is_empty() {
            eprintln!("log of the last nettrust that exited:\n{}", self.last_log);
        }
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = std::io::stderr().flush();
        // Then `net` is dropped: the pins a killed daemon left, the namespaces and the cgroups
        // (once their processes are gone) are removed.
    }
}

impl World {
    /// Number of programs attached to the test cgroup's egress hook (BPF_PROG_QUERY), whoever
    /// attached them.
    pub fn attached_egress_programs(&self) -> u32 {
        egress_programs(&self.cgroup)
    }
}

impl World {
    /// The tables of the client namespace (`nft list tables` lines).
    pub fn client_tables(&self) -> Vec<String> {
        let out = run(self.in_ns(&self.client_ns, "nft").args(["list", "tables"]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Whether this world's backend has its filter in place for the test cgroup (a program
    /// attached, or the `inet net-trust` table in the client namespace).
    pub fn enforcing(&self) -> bool {
        match self.backend {
            Backend::Ebpf => self.attached_egress_programs() > 0,
            Backend::Nftables => self
                .client_tables()
                .contains(&"table inet net-trust".to_owned()),
        }
    }

    /// Asserts that no nettrust object of either backend is left: no pins, no program attached
    /// to the test cgroup, no `inet net-trust` table in the client namespace.
    pub fn assert_nothing_left(&self) {
        assert!(
            !self.bpffs_dir.exists(),
            "pinned state left in {}",
            self.bpffs_dir.display()
        );
        assert_eq!(
            self.attached_egress_programs(),
            0,
            "a program is still attached to the test cgroup"
        );
        assert!(
            !self
                .client_tables()
                .contains(&"table inet net-trust".to_owned()),
            "the nftables table is still there"
        );
    }

    /// Process id of the running daemon (RSS sampling in the fault tests).
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|d| d.child.id())
    }
}

/// A background process group, killed (with its children) when dropped.
pub struct Background(pub Child);

impl Background {
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Self(cmd.spawn().expect("spawn a background process"))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// An echo server (`socat … EXEC:cat`) on [`ECHO_PORT`] of every internet address of `world`,
/// killed when dropped: a connection to it stays established, idle, as long as its client wants.
pub fn echo_server(world: &World) -> Background {
    let mut cmd = world.in_ns(&world.inet_ns, "socat");
    cmd.args([
        &format!("TCP6-LISTEN:{ECHO_PORT},ipv6only=0,reuseaddr,fork"),
        "EXEC:cat",
    ]);
    let server = Background::spawn(cmd);
    std::thread::sleep(Duration::from_millis(300));
    server
}

impl World {
    /// Loads an nft script into namespace `ns` (only the test's own namespaces).
    pub fn load_nft(&self, ns: &str, script: &str) {
        let out = self
            .in_ns(ns, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(script.as_bytes())?;
                child.wait_with_output()
            })
            .expect("nft");
        assert!(
            out.status.success(),
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Counts the packets arriving in the internet namespace for `addr` (an nft counter that
    /// exists only inside that namespace); read with [`World::arrivals`].
    pub fn count_arrivals(&self, addr: &str) {
        self.load_nft(
            &self.inet_ns,
            &format!(
                "table inet nettrust_arrivals {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  ip daddr {addr} counter\n }}\n}}\n"
            ),
        );
    }

    /// Control for tests that assert 0 arrivals: once the filter is gone, a connection attempt
    /// from the test cgroup to `target` must be counted.
    pub fn assert_arrival_counter_counts(&self, target: &str) {
        let _ = self
            .in_cgroup("socat")
            .args([
                "-u",
                &format!("TCP:{target}:{TCP_PORT},connect-timeout=1"),
                "-",
            ])
            .output();
        assert!(self.arrivals() > 0, "the arrival counter does not count");
    }

    /// Packets counted since [`World::count_arrivals`].
    pub fn arrivals(&self) -> u64 {
        let out = self
            .in_ns(&self.inet_ns, "nft")
            .args(["list", "chain", "inet", "nettrust_arrivals", "input"])
            .output()
            .expect("nft list");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {text}"))
    }
}

/// One thread of a process, as `/proc/PID/task/TID` shows it.
pub struct Thread {
    /// Its thread id.
    pub tid: u32,
    /// Its name (`comm`).
    pub name: String,
    /// The text of its `status` file.
    pub status: String,
}

impl Thread {
    /// The value of the `status` line starting with `key:`.
    pub fn status_field(&self, key: &str) -> Option<&str> {
        self.status.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(str::trim)
        })
    }
}

/// The threads of process `pid`; one that ends while being read is left out.
pub fn threads(pid: u32) -> Vec<Thread> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("list the threads of {pid}: {e}"))
        .filter_map(|task| {
            let path = task.ok()?.path();
            Some(Thread {
                tid: path.file_name()?.to_str()?.parse().ok()?,
                name: std::fs::read_to_string(path.join("comm"))
                    .ok()?
                    .trim()
                    .to_owned(),
                status: std::fs::read_to_string(path.join("status")).ok()?,
            })
        })
        .collect()
}

/// Cgroup directories a test created, removed on drop (also on failure), deepest first.
pub struct CgroupDirs(pub Vec<std::path::PathBuf>);

impl Drop for CgroupDirs {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
