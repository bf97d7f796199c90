//! Policies in the eBPF data path, with real sockets: an `EbpfFirewall` started in the test
//! process filters the world's cgroup, whose child cgroups are assigned to policies through
//! `ScopeMaps`; processes in them connect to the world's internet namespace. Grants, policy
//! networks, nested default cgroups, reloads, audit mode and the DNS client records are checked
//! against what actually gets through. Run with `cargo xtask test`.
#![expect(
    unused_crate_dependencies,
    reason = "a test target sees every dependency of the package and uses only a few of them"
)]

mod world;

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use nettrust::firewall::{
    ExitMode, Firewall as _, Policy,
    ebpf::{Capacities, CgroupScope, EbpfFirewall, EbpfOptions, read_stats},
};
use nettrust_common::{FLAG_AUTHORIZED, HostValue, STAT_AUDIT};
use world::{CLIENT_V4, CLIENT_V6, INET_V4, INET_V6, TCP_PORT, World};

/// Granted to scope 1 only.
const X: &str = "192.0.2.21";
const X6: &str = "2001:db8:1::21";
/// Granted to the default scope only.
const Y: &str = "192.0.2.22";
/// Whitelisted (global).
const W: &str = "192.0.2.23";
/// Granted to nobody.
const Z: &str = "192.0.2.24";
/// In scope 2's own network 203.0.113.0/24.
const N: &str = "203.0.113.5";
/// The UDP/TCP port of the stand-in DNS listener in the internet namespace.
const LISTEN_PORT: u16 = 5300;

/// The log lines the daemon's tracing writes, for the audit events.
fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buffer
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A world whose cgroup is filtered by an in-process `EbpfFirewall`, with child cgroups `a`,
/// `b`, `c` and `a/n`. Dropped: the firewall flushed, the child cgroups removed, then the world.
struct Scoped {
    fw: EbpfFirewall,
    a: PathBuf,
    b: PathBuf,
    c: PathBuf,
    nested: PathBuf,
    _runtime: tokio::runtime::Runtime,
    world: World,
}

impl Scoped {
    fn new() -> Self {
        log_buffer();
        let world = World::new();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let options = EbpfOptions {
            cgroups: vec![world.cgroup.clone()],
            pin_dir: world.bpffs_dir.clone(),
            policy: Policy {
                whitelist_hosts: vec![W.parse().unwrap()],
                ..Policy::default()
            },
            drop_input: false,
            capacities: Capacities::default(),
            scopes: nettrust::firewall::Scopes::default(),
        };
        let fw = {
            let _enter = runtime.enter();
            let fw = EbpfFirewall::start(&options).expect("start the eBPF firewall");
            fw.start_denied_log();
            fw
        };
        let child = |name: &str| {
            let path = world.cgroup.join(name);
            std::fs::create_dir(&path).expect("create a child cgroup");
            path
        };
        let (a, b, c) = (child("a"), child("b"), child("c"));
        let nested = child("a/n");
        let scoped = Self {
            fw,
            a,
            b,
            c,
            nested,
            _runtime: runtime,
            world,
        };
        scoped
            .fw
            .authorize(Y.parse::<std::net::IpAddr>().unwrap().into(), 0)
            .expect("grant Y");
        for addr in [X, X6] {
            scoped.grant(1, addr);
        }
        scoped
    }

    /// Grants `addr` to `scope` for good.
    fn grant(&self, scope: u32, addr: &str) {
        let value = HostValue {
            flags: FLAG_AUTHORIZED,
            ..HostValue::default()
        };
        self.fw
            .scopes()
            .grant_put(scope, addr.parse().unwrap(), &value, 0)
            .expect("grant_put");
    }

    /// The world's cgroup (scope 0, so every child not listed is default), a → 1, b → 2, and
    /// `extra`; policies on; scope 2 has its own network 203.0.113.0/24.
    fn assign(&self, extra: &[(&Path, u32, bool)]) {
        let mut cgroups = vec![
            scope_of(&self.world.cgroup, 0, false),
            scope_of(&self.a, 1, false),
            scope_of(&self.b, 2, false),
        ];
        cgroups.extend(extra.iter().map(|&(p, s, audit)| scope_of(p, s, audit)));
        cgroups.reverse();
        // The last entry for a cgroup wins: `extra` may move a or b.
        let mut seen = std::collections::HashSet::new();
        cgroups.retain(|c| seen.insert(c.cgroup_id));
        let nets = [(2, "203.0.113.0/24".parse().unwrap())];
        self.fw
            .scopes()
            .set_policies(&cgroups, &nets, true)
            .expect("set_policies");
    }

    /// Whether a TCP connection from `cgroup` to `addr` gets the server's "ok".
    fn reaches(&self, cgroup: &Path, addr: &str) -> bool {
        let target = match addr.parse::<IpAddr>().unwrap() {
            IpAddr::V6(v6) => format!("TCP:[{v6}]:{TCP_PORT},connect-timeout=2"),
            IpAddr::V4(v4) => format!("TCP:{v4}:{TCP_PORT},connect-timeout=2"),
        };
        world::socat_gets(self.world.in_cgroup_at(cgroup, "socat"), &target, b"ok")
    }

    /// Sends one UDP datagram from `cgroup`, source port `sport`, to `dst`.
    fn send_udp(&self, cgroup: &Path, dst: SocketAddr, sport: u16) {
        let target = match dst {
            SocketAddr::V4(d) => format!("UDP4-SENDTO:{d},sourceport={sport}"),
            SocketAddr::V6(d) => format!("UDP6-SENDTO:{d},sourceport={sport}"),
        };
        let mut cmd = self.world.in_cgroup_at(cgroup, "sh");
        cmd.args(["-c", &format!("echo query | socat -u - {target}")]);
        world::output_within(cmd, Duration::from_secs(10));
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        if let Err(errors) = self.fw.stop(ExitMode::FlushAll) {
            eprintln!("stopping the firewall: {errors:?}");
        }
        for cgroup in [&self.nested, &self.a, &self.b, &self.c] {
            for _ in 0..100 {
                if std::fs::remove_dir(cgroup).is_ok() || !cgroup.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn cgroup_id(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat cgroup").ino()
}

fn scope_of(path: &Path, scope: u32, audit: bool) -> CgroupScope {
    CgroupScope {
        cgroup_id: cgroup_id(path),
        scope,
        audit,
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn grants_open_only_their_scope() {
    let s = Scoped::new();
    s.assign(&[]);
    assert!(s.reaches(&s.a, X), "scope 1's grant must open X for a");
    assert!(!s.reaches(&s.b, X), "scope 1's grant must not open X for b");
    assert!(!s.reaches(&s.c, X), "scope 1's grant must not open X for c");
    assert!(
        s.reaches(&s.a, X6),
        "scope 1's IPv6 grant must open it for a"
    );
    assert!(
        !s.reaches(&s.b, X6),
        "scope 1's IPv6 grant must not open it for b"
    );
    assert!(s.reaches(&s.c, Y), "a default grant must open Y for c");
    assert!(!s.reaches(&s.a, Y), "a default grant must not open Y for a");
    assert!(!s.reaches(&s.b, Y), "a default grant must not open Y for b");
    for cgroup in [&s.a, &s.b, &s.c] {
        assert!(s.reaches(cgroup, W), "the whitelist opens every scope");
        assert!(!s.reaches(cgroup, Z), "nobody's grant: dropped");
    }
    let grants = s.fw.scopes().grants().unwrap();
    assert!(
        grants
            .iter()
            .any(|(scope, addr, _)| *scope == 1 && addr.to_string() == X)
    );
    // The program stamped the grant it let a packet out to (the sweeper's liveness signal).
    let seen = s.fw.scopes().grant_get(1, X.parse().unwrap()).unwrap();
    assert!(seen.is_some_and(|v| v.last_seen_ns != 0), "{seen:?}");
    assert!(s.fw.scopes().grant_delete(1, X.parse().unwrap()).unwrap());
    assert!(!s.reaches(&s.a, X), "a deleted grant no longer opens X");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn policy_networks_open_only_their_scope() {
    let s = Scoped::new();
    s.assign(&[]);
    assert!(s.reaches(&s.b, N), "scope 2's network must open N for b");
    assert!(
        !s.reaches(&s.a, N),
        "scope 2's network must not open N for a"
    );
    assert!(
        !s.reaches(&s.c, N),
        "scope 2's network must not open N for c"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_default_cgroup_below_a_policy_is_default() {
    let s = Scoped::new();
    s.assign(&[(&s.nested, 0, false)]);
    assert!(
        s.reaches(&s.nested, Y),
        "a/n listed as default reaches the default grant"
    );
    assert!(
        !s.reaches(&s.nested, X),
        "a/n listed as default must not get a's grant"
    );
    // Unlisted, it belongs to its deepest listed ancestor, a.
    s.assign(&[]);
    assert!(s.reaches(&s.nested, X), "unlisted a/n is in a's policy");
    assert!(!s.reaches(&s.nested, Y), "unlisted a/n is not default");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_reload_applies_from_the_next_packet() {
    let s = Scoped::new();
    s.grant(2, Z);
    s.assign(&[]);
    assert!(s.reaches(&s.a, X) && !s.reaches(&s.a, Z));
    s.assign(&[(&s.a, 2, false)]);
    assert!(
        !s.reaches(&s.a, X),
        "a moved to scope 2 loses scope 1's grant"
    );
    assert!(
        s.reaches(&s.a, Z),
        "a moved to scope 2 gets scope 2's grant"
    );
    assert!(s.reaches(&s.a, N), "and scope 2's network");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn audit_mode_passes_counts_and_reports() {
    let s = Scoped::new();
    let before = read_stats(&s.world.bpffs_dir).unwrap()[STAT_AUDIT as usize];
    s.assign(&[(&s.a, 1, true)]);
    s.fw.scopes()
        .set_names([(1, "ci".to_owned())])
        .expect("set_names");
    assert!(
        s.reaches(&s.a, Z),
        "audit mode lets an ungranted destination through"
    );
    assert!(!s.reaches(&s.b, Z), "enforcing scope 2 still drops it");
    let after = read_stats(&s.world.bpffs_dir).unwrap()[STAT_AUDIT as usize];
    assert!(
        after > before,
        "audited packets are counted ({before} -> {after})"
    );
    let wanted = format!(
        "[Audit] cgroup=id {} policy=ci dst={Z} port={TCP_PORT} proto=tcp",
        cgroup_id(&s.a)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned();
        if log.contains(&wanted) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{wanted}` in:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn clients_are_recorded_across_namespaces() {
    let s = Scoped::new();
    let listener_v4: SocketAddr = format!("{INET_V4}:{LISTEN_PORT}").parse().unwrap();
    let listener_v6: SocketAddr = format!("[{INET_V6}]:{LISTEN_PORT}").parse().unwrap();
    // The stand-in proxy: a UDP socket in the internet namespace.
    let mut server = s.world.in_ns(&s.world.inet_ns, "socat");
    server.args([
        "-u",
        &format!("UDP6-RECV:{LISTEN_PORT},ipv6only=0"),
        "/dev/null",
    ]);
    let _server = world::Background::spawn(server);
    s.fw.scopes()
        .set_listeners(&[(listener_v4, 17), ("[::]:5300".parse().unwrap(), 17)])
        .unwrap();
    s.assign(&[]);
    s.send_udp(&s.a, listener_v4, 40_001);
    let record =
        s.fw.scopes()
            .client(17, format!("{CLIENT_V4}:40001").parse().unwrap())
            .unwrap()
            .expect("a's query is recorded");
    assert_eq!(
        (record.cgroup_id, record.scope, record.audit),
        (cgroup_id(&s.a), 1, false)
    );
    // A wildcard listener matches any address of its family.
    s.send_udp(&s.b, listener_v6, 40_002);
    let record =
        s.fw.scopes()
            .client(17, format!("[{CLIENT_V6}]:40002").parse().unwrap())
            .unwrap()
            .expect("b's IPv6 query is recorded");
    assert_eq!((record.cgroup_id, record.scope), (cgroup_id(&s.b), 2));
    // Not a listener: nothing recorded.
    s.send_udp(&s.a, format!("{INET_V4}:5301").parse().unwrap(), 40_003);
    let none =
        s.fw.scopes()
            .client(17, format!("{CLIENT_V4}:40003").parse().unwrap());
    assert_eq!(none.unwrap(), None);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn with_policies_off_nothing_is_scoped_or_recorded() {
    let s = Scoped::new();
    let listener: SocketAddr = format!("{INET_V4}:{LISTEN_PORT}").parse().unwrap();
    s.fw.scopes().set_listeners(&[(listener, 17)]).unwrap();
    s.assign(&[]);
    s.fw.scopes()
        .set_policies(&[scope_of(&s.a, 1, true)], &[], false)
        .unwrap();
    assert!(
        s.reaches(&s.a, Y),
        "off: a is default and gets the default grant"
    );
    assert!(!s.reaches(&s.a, X), "off: scope 1's grant opens nothing");
    assert!(!s.reaches(&s.a, Z), "off: no audit mode");
    s.send_udp(&s.a, listener, 40_004);
    let none =
        s.fw.scopes()
            .client(17, format!("{CLIENT_V4}:40004").parse().unwrap());
    assert_eq!(none.unwrap(), None, "off: no client records");
}
