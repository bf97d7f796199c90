//! Root tests of the nftables backend: the same world as `root.rs` (client namespace running
//! nettrust, test cgroup, "internet" namespace with dnsmasq and a TCP server), enforcing with
//! `--firewall-backend nftables`. nftables state is per network namespace: everything here lives
//! in namespaces the tests create, never in the host's.
//! Run with `cargo xtask test` (they are `#[ignore]`d in a plain `cargo test`).
#![expect(
    unused_crate_dependencies,
    reason = "a test target sees every dependency of the package and uses only a few of them"
)]

mod world;

use std::{
    fs::File,
    net::IpAddr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nettrust::firewall::{
    Authorization, ExitMode, Firewall as _, Policy,
    nftables::{Mode, NftablesError, NftablesFirewall, Options, TABLE},
};
use world::World;

const NFT: &[&str] = &["--firewall-backend", "nftables"];

fn addrs(list: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = list.iter().map(|s| s.parse().unwrap()).collect();
    v.sort();
    v
}

/// `nft ARGS` inside network namespace `ns` (reads only that namespace's ruleset).
fn nft_in(ns: &str, args: &str) -> (bool, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("nft")
        .args(args.split_whitespace())
        .output()
        .expect("run nft (apt-get install nftables)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn nft_ok(ns: &str, args: &str) -> String {
    let (ok, out) = nft_in(ns, args);
    assert!(ok, "nft {args} failed in {ns}: {out}");
    out
}

/// The addresses listed in `elements = { … }` of an `nft list set` output.
fn set_elements(listing: &str) -> Vec<IpAddr> {
    let Some(start) = listing.find("elements = {") else {
        return Vec::new();
    };
    let rest = &listing[start + "elements = {".len()..];
    let body = &rest[..rest.find('}').expect("closing brace")];
    let mut out: Vec<IpAddr> = body
        .split(',')
        .filter_map(|e| e.split_whitespace().next())
        .map(|a| a.parse().unwrap_or_else(|_| panic!("bad element {a:?}")))
        .collect();
    out.sort();
    out
}

/// The authorized sets of `inet net-trust` in namespace `ns`.
fn authorized_in(ns: &str) -> Vec<IpAddr> {
    let mut all = Vec::new();
    for set in ["authorized4", "authorized6"] {
        all.extend(set_elements(&nft_ok(
            ns,
            &format!("list set inet net-trust {set}"),
        )));
    }
    all.sort();
    all
}

fn tables_in(ns: &str) -> Vec<String> {
    let mut t: Vec<String> = nft_ok(ns, "list tables")
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    t.sort();
    t
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_rejects_fail_fast() {
    let mut world = World::new();
    world.start_daemon(NFT);
    // TCP gets a reset, UDP an ICMP error: both fail at once instead of timing out.
    let started = Instant::now();
    assert!(!world.reachable_from_cgroup("192.0.2.99"));
    assert!(!world.reachable_from_cgroup("2001:db8:1::99"));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "blocked TCP connections took {:?} (no reset?)",
        started.elapsed()
    );
    let started = Instant::now();
    let out = world.script_in_cgroup("dig +time=3 +tries=1 @192.0.2.53 a.test 2>&1; echo rc=$?");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        elapsed < Duration::from_secs(2) && stdout.contains("rc=9"),
        "a UDP query to a non-authorized server took {elapsed:?}:\n{stdout}"
    );
    let chain = nft_ok(&world.client_ns, "list chain inet net-trust allowlist");
    assert!(
        !chain.contains("counter packets 0 bytes 0 reject with icmpx admin-prohibited"),
        "the ICMP reject did not count:\n{chain}"
    );
    assert!(
        !stdout.contains("timed out") && !stdout.contains("ANSWER SECTION"),
        "a UDP query to a non-authorized server must fail with an ICMP error, got:\n{stdout}"
    );
    assert!(world.stop_daemon());
}

/// A table of someone else's, with chains named like ours.
const FOREIGN: &str = "table inet foreign {
  set authorized { type ipv4_addr; elements = { 192.0.2.200 } }
  chain input { type filter hook input priority 10; policy accept; counter; }
  chain authorized-output { type filter hook output priority 10; policy accept; counter; }
  chain other { counter; }
}
";

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_sigterm_removes_our_table_and_nothing_else() {
    let mut world = World::new();
    let mut load = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", world.client_ns))
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut load.stdin.take().unwrap(), FOREIGN.as_bytes()).unwrap();
    assert!(
        load.wait().unwrap().success(),
        "cannot load the foreign table"
    );
    // Stateless listing (`-s`: without counter values, which traffic changes).
    let foreign_chains = |world: &World| nft_ok(&world.client_ns, "-s list table inet foreign");
    let before = foreign_chains(&world);
    for part in [
        "chain input",
        "chain authorized-output",
        "chain other",
        "192.0.2.200",
    ] {
        assert!(before.contains(part), "{before}");
    }

    // Nothing listens on port 9 of the client: refused at once, until the input chain drops.
    let probe_inbound = |world: &World| {
        let out = world
            .in_ns(&world.inet_ns, "socat")
            .args([
                "-u",
                &format!("TCP:{}:9,connect-timeout=1", world::CLIENT_V4),
                "-",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(probe_inbound(&world).contains("refused"));

    // With --firewall-drop-input nettrust also has a chain named `input`.
    world.start_daemon(&["--firewall-backend", "nftables", "--firewall-drop-input"]);
    assert_eq!(
        tables_in(&world.client_ns),
        ["table inet foreign", "table inet net-trust"]
    );
    let ours = nft_ok(&world.client_ns, "list table inet net-trust");
    assert!(
        ours.contains("chain input") && ours.contains("policy drop"),
        "{ours}"
    );
    assert_eq!(
        foreign_chains(&world),
        before,
        "start changed the foreign table"
    );
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    assert!(world.reachable_from_cgroup("192.0.2.11"));
    assert!(!world.reachable_from_cgroup("203.0.113.77"));
    let inbound = probe_inbound(&world);
    assert!(
        inbound.contains("timed out"),
        "inbound connection not dropped: {inbound}"
    );

    assert!(world.stop_daemon(), "nettrust failed at exit");

    assert_eq!(tables_in(&world.client_ns), ["table inet foreign"]);
    assert!(probe_inbound(&world).contains("refused"));
    assert_eq!(
        foreign_chains(&world),
        before,
        "exit changed the foreign table"
    );
    assert!(
        world.reachable_from_cgroup("203.0.113.77"),
        "the cgroup is still filtered"
    );
    assert!(world.reachable_from_cgroup("2001:db8:1::77"));

    // `nettrust flush` after a kill -9 removes our table and only ours.
    world.start_daemon(&["--firewall-backend", "nftables", "--firewall-drop-input"]);
    world.kill_daemon();
    assert_eq!(
        tables_in(&world.client_ns),
        ["table inet foreign", "table inet net-trust"],
        "kill -9 must leave the table enforcing"
    );
    let flush = world.nettrust(&["flush"]);
    assert!(
        flush.status.success(),
        "{}",
        String::from_utf8_lossy(&flush.stderr)
    );
    assert!(
        String::from_utf8_lossy(&flush.stdout).contains("removed nftables table inet net-trust")
    );
    assert_eq!(tables_in(&world.client_ns), ["table inet foreign"]);
    assert_eq!(
        foreign_chains(&world),
        before,
        "flush changed the foreign table"
    );
}

/// A second nftables daemon in the world's client namespace (another port and pin directory)
/// must refuse to start while the first one runs.
fn assert_second_daemon_refused(world: &World) {
    let mut cmd = world.in_ns(&world.client_ns, env!("CARGO_BIN_EXE_nettrust"));
    cmd.args([
        "run",
        "--listen-addr",
        "127.0.0.1:5353",
        "--fwd-addr",
        "198.51.100.53:53",
        "--firewall-backend",
        "nftables",
        "--bpffs-dir",
    ])
    .arg(world.bpffs_dir.with_extension("second"));
    let second = world::output_within(cmd, Duration::from_secs(20));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && err.contains("another nettrust daemon"),
        "second daemon: {err}"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_table_deleted_by_hand_is_reinstalled_and_a_second_daemon_is_refused() {
    let mut world = World::new();
    world.start_daemon(NFT);
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    // A second daemon in the same network namespace (another port) must refuse to start.
    assert_second_daemon_refused(&world);
    let flush = world.nettrust(&["flush"]);
    assert!(
        !flush.status.success(),
        "flush must refuse while a daemon runs"
    );

    nft_ok(&world.client_ns, "delete table inet net-trust");
    world.eventually(
        "the table to be re-installed",
        Duration::from_secs(5),
        || tables_in(&world.client_ns).contains(&"table inet net-trust".to_owned()),
    );
    assert_eq!(authorized_in(&world.client_ns), addrs(&["192.0.2.11"]));
    assert!(world.reachable_from_cgroup("192.0.2.11"));
    assert!(!world.reachable_from_cgroup("203.0.113.77"));
    assert!(world.daemon_log().contains("deleted behind"));
    let status = String::from_utf8_lossy(&world.nettrust(&["status"]).stdout).into_owned();
    assert!(
        status.contains("backend: nftables")
            && status.contains("daemon: running")
            && status.contains("authorized: 1")
            && status.contains("packets rejected: "),
        "{status}"
    );
    assert!(
        !status.contains("packets rejected: 0 "),
        "the reject counters did not count: {status}"
    );
    assert!(world.stop_daemon());
    world.assert_nothing_left();
}

/// `cmd` run as user and group nobody (65534) with no supplementary groups.
fn unprivileged(world: &World, program: &str) -> Command {
    let mut cmd = world.in_ns(&world.client_ns, "setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        program,
    ]);
    cmd
}

/// The nftables lock can only be taken by root: an unprivileged process holding the old lock's
/// name (the abstract unix socket `@nettrust/nftables`, which any user could bind) or trying to
/// take the lock file does not keep nettrust down, and a second root daemon is still refused.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_lock_cannot_be_taken_by_an_unprivileged_user() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    let mut world = World::new();
    // An unprivileged process binds the old lock name first.
    let mut squatter = unprivileged(&world, "socat");
    squatter.args(["ABSTRACT-LISTEN:nettrust/nftables", "PIPE"]);
    let _squatter = world::Background::spawn(squatter);
    world.eventually(
        "the unprivileged process to bind @nettrust/nftables",
        Duration::from_secs(5),
        || {
            let out = world
                .in_ns(&world.client_ns, "ss")
                .args(["-xlnH"])
                .output()
                .expect("run ss");
            String::from_utf8_lossy(&out.stdout).contains("@nettrust/nftables")
        },
    );

    world.start_daemon(NFT);
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    assert!(world.reachable_from_cgroup("192.0.2.11"));
    assert!(!world.reachable_from_cgroup("203.0.113.77"));

    // The lock: a 0600 file of root in a 0700 directory of root, per network namespace.
    let dir = std::fs::symlink_metadata("/run/nettrust").expect("/run/nettrust");
    assert!(dir.is_dir() && dir.uid() == 0, "{dir:?}");
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    let ns = std::fs::metadata(format!("/run/netns/{}", world.client_ns))
        .unwrap()
        .ino();
    let lock = format!("/run/nettrust/nftables-net{ns}.lock");
    let file = std::fs::symlink_metadata(&lock).expect("the lock file");
    assert!(file.is_file() && file.uid() == 0, "{file:?}");
    assert_eq!(file.permissions().mode() & 0o777, 0o600);
    // nobody cannot take it (nor even open it); the attempt runs and fails.
    let mut take = unprivileged(&world, "flock");
    take.args(["--nonblock", &lock, "true"]);
    let taken = take.output().expect("run flock");
    assert!(
        !taken.status.success(),
        "nobody took the lock: {}",
        String::from_utf8_lossy(&taken.stderr)
    );
    assert!(
        String::from_utf8_lossy(&taken.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );

    // A second root daemon in the same namespace is refused.
    assert_second_daemon_refused(&world);
    assert!(world.nettrust(&["status"]).status.success());
    assert!(
        String::from_utf8_lossy(&world.nettrust(&["status"]).stdout).contains("daemon: running")
    );
    assert!(world.stop_daemon());
    assert!(
        !std::path::Path::new(&lock).exists(),
        "the lock file outlived the daemon"
    );
    world.assert_nothing_left();
}

/// `nettrust flush` run by a user who may change nftables (CAP_NET_ADMIN) but cannot open the
/// root-only lock file refuses, naming the lock, while a daemon runs: a lock it cannot read is
/// not "no daemon". (Before, it deleted the running daemon's table: egress open until the
/// daemon's watch put it back.)
#[test]
#[ignore = "needs root: cargo xtask test"]
fn flush_by_a_user_who_cannot_read_the_lock_refuses() {
    let mut world = World::new();
    world.start_daemon(NFT);
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    let mut flush = world.in_ns(&world.client_ns, "setpriv");
    flush
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+net_admin",
            "--ambient-caps=+net_admin",
            "--",
            env!("CARGO_BIN_EXE_nettrust"),
            "flush",
            "--bpffs-dir",
        ])
        // No eBPF state to flush (a directory that does not exist; nobody may not even list
        // /sys/fs/bpf): only the nftables side is asked.
        .arg(std::env::temp_dir().join(format!("nettrust-absent-{}", std::process::id())));
    let out = flush.output().expect("run setpriv nettrust flush");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !out.status.success(),
        "flush by nobody with CAP_NET_ADMIN succeeded while a daemon runs: {stdout}{stderr}"
    );
    assert!(
        stderr.contains("/run/nettrust") && stderr.contains("Permission denied"),
        "the refusal does not name the lock and the reason: {stderr}"
    );
    assert!(
        world.client_tables().iter().any(|t| t.contains(TABLE)),
        "the daemon's table was deleted: {:?}",
        world.client_tables()
    );
    assert!(!world.reachable_from_cgroup("203.0.113.77"));
    assert!(world.reachable_from_cgroup("192.0.2.11"));
    assert!(world.stop_daemon());
    world.assert_nothing_left();
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_auto_falls_back_when_ebpf_is_unavailable() {
    let mut world = World::new();
    // SAFETY: the root tests run with --test-threads=1; nothing else reads the environment now.
    unsafe { std::env::set_var("NETTRUST_FORCE_EBPF_FAILURE", "1") };
    world.start_daemon(&["--firewall-backend", "auto"]);
    // SAFETY: as above.
    unsafe { std::env::remove_var("NETTRUST_FORCE_EBPF_FAILURE") };
    let log = world.daemon_log();
    assert!(
        log.contains("falling back to nftables") && log.contains("NETTRUST_FORCE_EBPF_FAILURE"),
        "the fallback and its reason were not logged:\n{log}"
    );
    assert_eq!(world.attached_egress_programs(), 0);
    assert_eq!(tables_in(&world.client_ns), ["table inet net-trust"]);
    assert!(!world.reachable_from_cgroup("192.0.2.10"));
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    assert!(world.stop_daemon());
    assert_eq!(tables_in(&world.client_ns), Vec::<String>::new());
}

/// A "LAN" namespace routed through the client namespace, which runs nettrust in gateway mode.
struct Lan<'a> {
    world: &'a World,
    ns: String,
    daemon: Option<Child>,
    log: std::path::PathBuf,
}

impl Drop for Lan<'_> {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
            if std::thread::panicking() {
                eprintln!(
                    "nettrust log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lan<'_> {
    fn connect(&self, addr: &str) -> bool {
        self.world
            .in_ns(&self.ns, "socat")
            .args([
                "-u",
                &format!("TCP:{addr}:{},connect-timeout=2", world::TCP_PORT),
                "-",
            ])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"ok"))
    }

    fn resolve(&self, name: &str) -> Vec<String> {
        let out = self
            .world
            .in_ns(&self.ns, "dig")
            .args(["+short", "+time=2", "+tries=1", "@10.77.0.1", name, "A"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_gateway_mode_forwards_only_resolved_destinations() {
    let world = World::new();
    let id = &world.id;
    let mut lan = Lan {
        world: &world,
        ns: format!("ntl-{id}"),
        daemon: None,
        log: world.dir.path().join("gateway.log"),
    };
    let (router, inet) = (&world.client_ns, &world.inet_ns);
    ip(&format!("netns add {}", lan.ns));
    ip(&format!(
        "link add vl{id} netns {} type veth peer name vr{id} netns {router}",
        lan.ns
    ));
    ip(&format!("-n {} link set lo up", lan.ns));
    ip(&format!("-n {} addr add 10.77.0.2/24 dev vl{id}", lan.ns));
    ip(&format!("-n {} link set vl{id} up", lan.ns));
    ip(&format!("-n {} route add default via 10.77.0.1", lan.ns));
    ip(&format!("-n {router} addr add 10.77.0.1/24 dev vr{id}"));
    ip(&format!("-n {router} link set vr{id} up"));
    ip(&format!(
        "-n {inet} route add 10.77.0.0/24 via {}",
        world::CLIENT_V4
    ));
    let sysctl = world
        .in_ns(router, "sysctl")
        .args(["-qw", "net.ipv4.ip_forward=1"])
        .status()
        .unwrap();
    assert!(sysctl.success());
    // Routing works before nettrust starts.
    assert!(lan.connect("192.0.2.10"));

    let child = world
        .in_ns(router, env!("CARGO_BIN_EXE_nettrust"))
        .args([
            "run",
            "--listen-addr",
            "10.77.0.1:53",
            "--fwd-addr",
            &format!("{}:53", world::UPSTREAM),
            "--firewall-backend",
            "nftables",
            "--firewall-type",
            "forward",
            "--bpffs-dir",
        ])
        .arg(&world.bpffs_dir)
        .env("RUST_LOG", "info,nettrust=debug")
        .stdout(Stdio::null())
        .stderr(File::create(&lan.log).unwrap())
        .spawn()
        .unwrap();
    lan.daemon = Some(child);
    let started = Instant::now();
    while lan.resolve("ready.invalid").is_empty() && !nft_in(router, "list table inet net-trust").0
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "gateway did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Wait for the listener too.
    while world
        .in_ns(&lan.ns, "dig")
        .args(["+time=1", "+tries=1", "@10.77.0.1", "ready.invalid"])
        .output()
        .is_ok_and(|o| !o.status.success())
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "gateway DNS did not answer"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ruleset = nft_ok(router, "list chain inet net-trust authorized-output");
    assert!(ruleset.contains("hook forward"), "{ruleset}");

    assert!(
        !lan.connect("192.0.2.10"),
        "unresolved destination forwarded"
    );
    assert_eq!(lan.resolve("a.test"), ["192.0.2.10"]);
    assert!(lan.connect("192.0.2.10"));
    assert!(!lan.connect("192.0.2.11"));
    // The router's own traffic is not filtered in gateway mode.
    assert!(world.reachable_outside_cgroup("192.0.2.11"));

    let mut child = lan.daemon.take().unwrap();
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success(), "gateway exit failed");
    assert!(
        lan.connect("192.0.2.11"),
        "forwarding still filtered after exit"
    );
}

/// A network namespace for in-process tests, removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("ntn-{tag}-{}", std::process::id());
        ip(&format!("netns add {name}"));
        Netns(name)
    }

    /// Runs `f` on a thread that has joined this namespace: sockets it opens (the backend's
    /// netlink socket) stay bound to it.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(format!("/run/netns/{}", self.0)).unwrap();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on this thread only; CLONE_NEWNET may be joined per thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn policy(hosts: &[&str], nets: &[&str]) -> Policy {
    Policy {
        whitelist_hosts: hosts.iter().map(|h| h.parse().unwrap()).collect(),
        whitelist_networks: nets.iter().map(|n| n.parse().unwrap()).collect(),
        ..Policy::default()
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_backend_sets_timeouts_whitelist_reload() {
    let ns = Netns::new("api");
    let options = Options {
        mode: Mode::Forward,
        drop_input: false,
    };
    let fw = ns.run(|| {
        NftablesFirewall::start(
            &options,
            &policy(
                &["192.0.2.1", "2001:db8::1"],
                &["10.0.0.0/8", "10.1.0.0/16", "127.0.0.0/8", "::1/128"],
            ),
        )
        .unwrap()
    });
    let list = |set: &str| set_elements(&nft_ok(&ns.0, &format!("list set inet net-trust {set}")));
    assert_eq!(list("whitelist4"), addrs(&["192.0.2.1"]));
    assert_eq!(list("whitelist6"), addrs(&["2001:db8::1"]));
    let nets4 = nft_ok(&ns.0, "list set inet net-trust whitelist-net4");
    assert!(
        nets4.contains("10.0.0.0/8") && nets4.contains("127.0.0.0/8"),
        "{nets4}"
    );

    let now = nettrust::firewall::boottime_ns();
    let in_60s = now + 60_000_000_000;
    let a: IpAddr = "203.0.113.5".parse().unwrap();
    let b: IpAddr = "2001:db8:1::5".parse().unwrap();
    assert_eq!(fw.authorize(a.into(), in_60s).unwrap(), Authorization::New);
    assert_eq!(
        fw.authorize(a.into(), in_60s).unwrap(),
        Authorization::Already
    );
    assert_eq!(
        fw.authorize(
            "192.0.2.1".parse::<std::net::IpAddr>().unwrap().into(),
            in_60s
        )
        .unwrap(),
        Authorization::Already,
        "whitelisted hosts are already allowed"
    );
    assert_eq!(
        fw.authorize_many(&[b, a], 0, Some("both.test.")).unwrap(),
        [Authorization::New, Authorization::Already]
    );
    let hosts = fw.authorized().unwrap();
    // Another reader (`nettrust list` from outside the daemon) sees the same.
    let mut outside: Vec<IpAddr> = ns
        .run(nettrust::firewall::nftables::list_authorized)
        .unwrap()
        .iter()
        .map(|(h, name)| {
            assert_eq!(name.as_deref(), Some("both.test"), "the name of {}", h.addr);
            h.addr
        })
        .collect();
    outside.sort();
    assert_eq!(outside, vec![a, b]);
    // The name is the element's comment, as nft shows it.
    let listing = nft_ok(&ns.0, "list set inet net-trust authorized6");
    assert!(listing.contains("comment \"both.test\""), "{listing}");
    let deadline = |addr| hosts.iter().find(|h| h.addr == addr).unwrap().expires_ns;
    assert_eq!(deadline(a), 0, "renewed without a deadline");
    assert_eq!(deadline(b), 0);
    // A short timeout is enforced by the kernel.
    let c: IpAddr = "203.0.113.6".parse().unwrap();
    fw.authorize(c.into(), nettrust::firewall::boottime_ns() + 300_000_000)
        .unwrap();
    let hosts = fw.authorized().unwrap();
    let dc = hosts.iter().find(|h| h.addr == c).unwrap().expires_ns;
    assert!(
        dc > now && dc < now + 2_000_000_000,
        "deadline {dc} vs now {now}"
    );
    std::thread::sleep(Duration::from_millis(1200));
    let left: Vec<IpAddr> = fw.authorized().unwrap().iter().map(|h| h.addr).collect();
    assert!(
        !left.contains(&c),
        "the kernel did not expire {c}: {left:?}"
    );
    assert_eq!(fw.authorize(c.into(), 0).unwrap(), Authorization::New);

    // Reload: hosts diffed, networks rewritten, authorizations kept.
    fw.set_whitelist(&policy(
        &["192.0.2.2", "2001:db8::1"],
        &["10.0.0.0/8", "192.168.0.0/16", "::1/128"],
    ))
    .unwrap();
    assert_eq!(list("whitelist4"), addrs(&["192.0.2.2"]));
    assert_eq!(list("whitelist6"), addrs(&["2001:db8::1"]));
    let nets4 = nft_ok(&ns.0, "list set inet net-trust whitelist-net4");
    assert!(
        nets4.contains("10.0.0.0/8")
            && nets4.contains("192.168.0.0/16")
            && !nets4.contains("127.0.0.0/8"),
        "{nets4}"
    );
    assert_eq!(list("authorized4"), addrs(&["203.0.113.5", "203.0.113.6"]));
    assert_eq!(list("authorized6"), addrs(&["2001:db8:1::5"]));

    fw.stop(ExitMode::FlushAll).unwrap();
    fw.stop(ExitMode::FlushAll).unwrap();
    assert_eq!(tables_in(&ns.0), Vec::<String>::new());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_lock_adoption_exit_modes_and_repair() {
    let ns = Netns::new("adopt");
    let options = Options {
        mode: Mode::Forward,
        drop_input: false,
    };
    let start = || ns.run(|| NftablesFirewall::start(&options, &policy(&["192.0.2.1"], &[])));
    let fw = start().unwrap();
    // One daemon per network namespace.
    assert!(matches!(start(), Err(NftablesError::Busy)));
    assert!(ns.run(nettrust::firewall::nftables::daemon_running));
    assert!(
        matches!(
            ns.run(nettrust::firewall::nftables::flush),
            Err(NftablesError::Busy)
        ),
        "flush must refuse while a daemon owns the table"
    );
    let a: IpAddr = "203.0.113.5".parse().unwrap();
    let b: IpAddr = "2001:db8:1::5".parse().unwrap();
    let in_60s = nettrust::firewall::boottime_ns() + 60_000_000_000;
    fw.authorize_many(&[a, b], in_60s, Some("kept.test."))
        .unwrap();

    // Deleted behind our back: repaired with whitelist and authorizations.
    nft_ok(&ns.0, "delete table inet net-trust");
    assert!(fw.repair().unwrap(), "the missing table was not noticed");
    assert!(!fw.repair().unwrap(), "nothing to repair the second time");
    assert_eq!(
        authorized_in(&ns.0),
        addrs(&["203.0.113.5", "2001:db8:1::5"])
    );
    let listing = nft_ok(&ns.0, "list set inet net-trust whitelist4");
    assert!(listing.contains("192.0.2.1"), "{listing}");

    // KeepAll: the table stays as is and the next start adopts deadlines and names.
    fw.stop(ExitMode::KeepAll).unwrap();
    drop(fw);
    assert!(!ns.run(nettrust::firewall::nftables::daemon_running));
    assert_eq!(
        authorized_in(&ns.0),
        addrs(&["203.0.113.5", "2001:db8:1::5"])
    );
    let fw = start().unwrap();
    let hosts = fw.authorized().unwrap();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    for h in &hosts {
        let left = h
            .expires_ns
            .saturating_sub(nettrust::firewall::boottime_ns());
        assert!(
            left > 50_000_000_000 && left <= 60_000_000_000,
            "{} adopted with {left} ns left",
            h.addr
        );
    }
    let named = ns
        .run(nettrust::firewall::nftables::list_authorized)
        .unwrap();
    assert!(
        named.iter().all(|(_, n)| n.as_deref() == Some("kept.test")),
        "{named:?}"
    );
    assert_eq!(
        fw.authorize(a.into(), in_60s).unwrap(),
        Authorization::Already,
        "an adopted host is already authorized"
    );

    // KeepPolicy: the table (deny policy, whitelist) stays, authorizations go.
    fw.stop(ExitMode::KeepPolicy).unwrap();
    drop(fw);
    assert_eq!(tables_in(&ns.0), vec!["table inet net-trust".to_owned()]);
    assert_eq!(authorized_in(&ns.0), Vec::<IpAddr>::new());
    let listing = nft_ok(&ns.0, "list set inet net-trust whitelist4");
    assert!(listing.contains("192.0.2.1"), "{listing}");

    // flush without a daemon removes it; a second flush finds nothing.
    assert!(ns.run(nettrust::firewall::nftables::flush).unwrap());
    assert!(!ns.run(nettrust::firewall::nftables::flush).unwrap());
    assert_eq!(tables_in(&ns.0), Vec::<String>::new());
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_bench_answer_update_latency() {
    let ns = Netns::new("bench");
    let options = Options {
        mode: Mode::Forward,
        drop_input: false,
    };
    let fw = ns.run(|| NftablesFirewall::start(&options, &policy(&[], &["127.0.0.0/8"])).unwrap());
    const ROUNDS: u32 = 2000;
    for batch in [1u32, 8] {
        let mut samples = Vec::with_capacity(ROUNDS as usize);
        for round in 0..ROUNDS {
            let addrs: Vec<IpAddr> = (0..batch)
                .map(|i| {
                    let n = round * batch + i;
                    IpAddr::V4(std::net::Ipv4Addr::new(
                        10,
                        200 + (batch as u8),
                        (n >> 8) as u8,
                        n as u8,
                    ))
                })
                .collect();
            let deadline = nettrust::firewall::boottime_ns() + 3_600_000_000_000;
            let t = Instant::now();
            let r = fw
                .authorize_many(&addrs, deadline, Some("bench.test."))
                .unwrap();
            samples.push(t.elapsed());
            assert!(r.iter().all(|a| *a == Authorization::New));
        }
        samples.sort();
        let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
        println!(
            "nftables answer update, {batch} address(es), {ROUNDS} rounds: p50 {} µs, p99 {} µs",
            p50.as_micros(),
            p99.as_micros()
        );
        assert!(p50 < Duration::from_millis(5), "p50 {p50:?} is far off");
    }
    let n = fw.authorized().unwrap().len();
    assert_eq!(n, (ROUNDS * 9) as usize);
    fw.stop(ExitMode::FlushAll).unwrap();
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_large_whitelists_go_in_one_batch() {
    let ns = Netns::new("big");
    let hosts = |base: u16| -> Vec<IpAddr> {
        (0..5000u16)
            .map(|i| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 7, base, 0, 0, 0, i)))
            .collect()
    };
    let nets = |base: u8| -> Vec<ipnet::IpNet> {
        (0..3000u32)
            .map(|i| {
                let addr = std::net::Ipv4Addr::new(base, (i >> 6) as u8, ((i & 63) * 4) as u8, 0);
                ipnet::IpNet::new(IpAddr::V4(addr), 30).unwrap()
            })
            .collect()
    };
    let big = |base: u8| Policy {
        whitelist_hosts: hosts(u16::from(base)),
        whitelist_networks: nets(base),
        ..Policy::default()
    };
    let options = Options {
        mode: Mode::Forward,
        drop_input: false,
    };
    let fw = ns.run(|| NftablesFirewall::start(&options, &big(10)).unwrap());
    let count = |set: &str| {
        let out = nft_ok(&ns.0, &format!("list set inet net-trust {set}"));
        out.find("elements = {")
            .map_or(0, |start| out[start..].matches(',').count() + 1)
    };
    assert_eq!(count("whitelist6"), 5000);
    assert_eq!(count("whitelist-net4"), 3000);
    fw.set_whitelist(&big(11)).unwrap();
    assert_eq!(count("whitelist6"), 5000);
    assert_eq!(count("whitelist-net4"), 3000);
    let listing = nft_ok(&ns.0, "list set inet net-trust whitelist-net4");
    assert!(listing.contains("11.0.0.0/30") && !listing.contains("10.0.0.0/30"));
    fw.stop(ExitMode::FlushAll).unwrap();
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_root_cgroup_filters_every_socket_but_not_neighbour_discovery() {
    // Enforcing for the whole host, but inside a private network namespace: nftables state is
    // per namespace, so the host is untouched.
    let ns = Netns::new("root");
    let root = nettrust::cgroup::cgroup2_mount().unwrap();
    let options = Options {
        mode: Mode::Output {
            cgroups: vec![root],
        },
        drop_input: false,
    };
    let fw = ns.run(|| NftablesFirewall::start(&options, &policy(&[], &["127.0.0.0/8"])).unwrap());
    let chain = nft_ok(&ns.0, "list chain inet net-trust authorized-output");
    assert!(chain.contains("socket cgroupv2 level 0"), "{chain}");
    // A socket of this namespace (any process is below the root cgroup) is filtered: a server
    // on a local, non-whitelisted address is unreachable; over loopback it is reachable.
    ip(&format!("-n {} link add d0 type veth peer name d1", ns.0));
    ip(&format!("-n {} link set d0 up", ns.0));
    ip(&format!("-n {} link set d1 up", ns.0));
    ip(&format!("-n {} addr add 192.0.2.1/24 dev d0", ns.0));
    ip(&format!("-n {} link set lo up", ns.0));
    let in_ns = |program: &str| {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", ns.0)).arg(program);
        cmd
    };
    let server = KillGroup(
        in_ns("socat")
            .args(["TCP-LISTEN:8080,reuseaddr,fork", "SYSTEM:echo ok"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let connect = |addr: &str| {
        world::socat_gets(
            in_ns("socat"),
            &format!("TCP:{addr}:8080,connect-timeout=2"),
            b"ok",
        )
    };
    let started = Instant::now();
    while !connect("127.0.0.1") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let blocked = !connect("192.0.2.1");
    // Duplicate address detection and MLD reports of the new links go out within a second.
    std::thread::sleep(Duration::from_millis(2000));
    drop(server);
    let table = nft_ok(&ns.0, "list table inet net-trust");
    assert!(
        blocked,
        "a socket of the root cgroup was not filtered:\n{table}"
    );
    // The kernel's neighbour discovery (DAD on the new links) was not rejected.
    assert!(
        table.contains("counter packets 0 bytes 0 reject with icmpx"),
        "socketless or kernel control packets were rejected:\n{table}"
    );
    fw.stop(ExitMode::FlushAll).unwrap();
}

/// Kills a child's whole process group when dropped.
struct KillGroup(Child);

impl Drop for KillGroup {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group our child leads.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_expired_authorizations_stop_new_and_established_flows() {
    let mut world = World::new();
    // An echo server next to the "ok" one, for a connection that stays open. Its own process
    // group, killed as a whole (also on failure): the forked child of a connection the client
    // lost keeps running otherwise.
    let echo = world
        .in_ns(&world.inet_ns, "socat")
        .args(["TCP-LISTEN:8081,reuseaddr,fork", "EXEC:cat"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let _echo = KillGroup(echo);
    world.start_daemon(&["--firewall-backend", "nftables", "--authorized-ttl", "3"]);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    // "one" goes out while authorized, "two" after the kernel expired the element.
    let out = world.script_in_cgroup(
        "(echo one; sleep 5; echo two; sleep 1) | socat -t2 - TCP:192.0.2.10:8081,connect-timeout=2",
    );
    let echoed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !world.reachable_from_cgroup("192.0.2.10"),
        "a new connection after expiry got through"
    );
    assert_eq!(authorized_in(&world.client_ns), Vec::<IpAddr>::new());
    assert_eq!(
        echoed.lines().collect::<Vec<_>>(),
        ["one"],
        "the established flow outlived its authorization"
    );
    // Resolving again opens it again.
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    assert!(world.stop_daemon());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_recreated_cgroup_is_filtered_again() {
    let mut world = World::new();
    world.start_daemon(NFT);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    std::fs::remove_dir(&world.cgroup).expect("remove the filtered cgroup");
    std::fs::create_dir(&world.cgroup).expect("recreate the cgroup");
    // `socket cgroupv2` matches the id of the old cgroup; the daemon must move the rule to the new
    // one (within its 500 ms watch), or the restarted service would run unfiltered.
    world.eventually(
        "the re-created cgroup to be filtered",
        Duration::from_secs(5),
        || {
            world
                .daemon_log()
                .contains("filtered cgroup was re-created")
        },
    );
    assert!(!world.reachable_from_cgroup("203.0.113.77"));
    assert!(
        world.reachable_from_cgroup("192.0.2.10"),
        "authorizations survive the re-install"
    );
    assert!(world.stop_daemon());
    world.assert_nothing_left();
}
