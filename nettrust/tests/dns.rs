//! Root integration tests of the DNS front end: DoT listener and upstream, TCP fallback on a
//! truncated answer, upstream failover, blacklists end to end. Run with `cargo xtask test`.
#![expect(
    unused_crate_dependencies,
    reason = "a test target sees every dependency of the package and uses only a few of them"
)]

mod world;

use std::{
    net::{IpAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use hickory_proto::{
    op::Message,
    rr::{RData, Record, rdata::A},
};
use world::{UPSTREAM, World};

/// A test CA and a leaf certificate for `names` signed by it, as PEM files in `dir`:
/// (ca.pem, leaf cert.pem, leaf key.pem).
fn test_pki(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(ToString::to_string).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    // nettrust refuses a private key other users can read.
    std::fs::set_permissions(
        &paths.2,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    paths
}

fn addrs(list: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = list.iter().map(|s| s.parse().unwrap()).collect();
    v.sort();
    v
}

/// `dig` from the test cgroup through nettrust; returns the full output (status line included).
fn dig_full(world: &World, args: &[&str]) -> String {
    let out = world
        .in_cgroup("dig")
        .args(["+time=3", "+tries=1", "@127.0.0.1"])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_config(world: &World, text: &str) -> String {
    let path = world.dir.path().join("nettrust.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `kdig +tls` from the test cgroup to 127.0.0.1:`port`, trusting `ca`: (stdout, stderr).
fn kdig(world: &World, ca: &Path, port: &str, name: &str) -> (String, String) {
    let out = world
        .in_cgroup("kdig")
        .args([
            "+short",
            "+tls",
            &format!("+tls-ca={}", ca.display()),
            "+tls-hostname=nettrust.test",
            "+time=3",
            "+retry=0",
            "-p",
            port,
            "@127.0.0.1",
            name,
            "A",
        ])
        .output()
        .expect("run kdig (apt-get install knot-dnsutils)");
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn dot_listener_on_the_tcp_port_or_a_dedicated_port() {
    let mut world = World::new();
    let (ca, cert, key) = test_pki(world.dir.path(), &["nettrust.test"]);
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let tls = [
        "--listen-tls",
        "--listen-cert",
        &cert,
        "--listen-cert-key",
        &key,
    ];

    // DoT replaces plain TCP on the listen port (the original's behaviour); UDP stays plain.
    world.start_daemon(&tls);
    let (answer, err) = kdig(&world, &ca, "53", "a.test");
    assert_eq!(answer, "192.0.2.10", "kdig over TLS on port 53: {err}");
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    assert_eq!(world.resolve("c.test", "A", false), ["192.0.2.12"]);
    // A client that does not trust the certificate gets nothing.
    let out = world
        .in_cgroup("kdig")
        .args([
            "+short",
            "+tls-ca",
            "+tls-hostname=nettrust.test",
            "+time=2",
            "+retry=0",
        ])
        .args(["-p", "53", "@127.0.0.1", "n7.test", "A"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    assert!(!world.list().contains(&"203.0.113.7".parse().unwrap()));
    assert!(world.stop_daemon());

    // A dedicated DoT port: port 53 keeps plain TCP.
    let mut args = tls.to_vec();
    args.extend(["--listen-tls-addr", "127.0.0.1:853"]);
    world.start_daemon(&args);
    let (answer, err) = kdig(&world, &ca, "853", "b.test");
    assert_eq!(answer, "192.0.2.11", "kdig over TLS on port 853: {err}");
    assert!(world.reachable_from_cgroup("192.0.2.11"));
    assert_eq!(world.resolve("n8.test", "A", true), ["203.0.113.8"]);
    assert!(world.stop_daemon());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn dot_upstream_with_a_test_ca() {
    let mut world = World::new();
    let (ca, cert, key) = test_pki(world.dir.path(), &["upstream.test"]);
    // DoT in front of dnsmasq, in the internet namespace.
    let mut socat = world.in_ns(&world.inet_ns, "socat");
    socat.args([
        &format!(
            "OPENSSL-LISTEN:853,bind={UPSTREAM},reuseaddr,fork,cert={},key={},verify=0",
            cert.display(),
            key.display()
        ),
        &format!("TCP:{UPSTREAM}:53"),
    ]);
    world.spawn_server(socat);
    std::thread::sleep(Duration::from_millis(300));
    let ca = ca.display().to_string();
    let upstream = format!("{UPSTREAM}:853");
    world.start_daemon_with(&[
        "--fwd-addr",
        &upstream,
        "--fwd-proto",
        "tcp",
        "--fwd-tls",
        "--fwd-tls-cert",
        &ca,
        "--fwd-tls-name",
        "upstream.test",
    ]);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert_eq!(world.resolve("a.test", "AAAA", true), ["2001:db8:1::10"]);
    for i in 1..=20 {
        assert_eq!(
            world.resolve(&format!("n{i}.test"), "A", false),
            [format!("203.0.113.{i}")]
        );
    }
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    assert!(world.reachable_from_cgroup("2001:db8:1::10"));
    // The plain-DNS port of the upstream is whitelisted, nothing else of it is needed; queries
    // went over one reused TLS connection.
    let log = world.daemon_log();
    assert!(!log.contains("[Upstream Error]"), "{log}");
    assert!(world.stop_daemon());

    // A certificate name that does not match: every answer is SERVFAIL, nothing authorized.
    world.start_daemon_with(&[
        "--fwd-addr",
        &upstream,
        "--fwd-proto",
        "tcp",
        "--fwd-tls",
        "--fwd-tls-cert",
        &ca,
        "--fwd-tls-name",
        "other.test",
    ]);
    let out = dig_full(&world, &["b.test", "A"]);
    assert!(out.contains("status: SERVFAIL"), "{out}");
    assert!(!world.list().contains(&"192.0.2.11".parse().unwrap()));
    assert!(world.stop_daemon());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn bad_ca_bundle_stops_startup_naming_the_file() {
    let world = World::new();
    let bad = world.dir.path().join("garbage-ca.pem");
    std::fs::write(&bad, "not PEM\n").unwrap();
    let out = world
        .in_ns(&world.client_ns, env!("CARGO_BIN_EXE_nettrust"))
        .args([
            "run",
            "--listen-addr",
            "127.0.0.1:53",
            "--fwd-addr",
            &format!("{UPSTREAM}:853"),
            "--fwd-proto",
            "tcp",
            "--fwd-tls",
        ])
        .arg("--fwd-tls-cert")
        .arg(&bad)
        .arg("--cgroup")
        .arg(&world.cgroup)
        .arg("--bpffs-dir")
        .arg(&world.bpffs_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("garbage-ca.pem"), "{stderr}");
    assert!(
        !world.bpffs_dir.exists(),
        "no firewall object before the check"
    );
}

/// A UDP DNS server in the internet namespace at `addr` that answers every query with TC=1 and
/// a bogus A record that must never be authorized.
fn truncating_responder(world: &World, addr: &str) -> std::thread::JoinHandle<()> {
    let netns = std::fs::File::open(format!("/run/netns/{}", world.inet_ns)).unwrap();
    let addr = addr.to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        // SAFETY: setns only changes this thread's network namespace.
        assert_eq!(
            unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let socket = UdpSocket::bind((addr.as_str(), 53)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 4096];
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let Ok((len, peer)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let Ok(query) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let mut m = Message::response(query.metadata.id, query.metadata.op_code);
            m.metadata.truncation = true;
            m.add_queries(query.queries.iter().cloned());
            if let Some(q) = query.queries.first() {
                m.add_answer(Record::from_rdata(
                    q.name.clone(),
                    60,
                    RData::A(A("192.0.2.66".parse().unwrap())),
                ));
            }
            let _ = socket.send_to(&m.to_vec().unwrap(), peer);
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    handle
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn truncated_answer_is_retried_over_tcp() {
    let mut world = World::new();
    let tc_addr = "198.51.100.54";
    world::ip(&format!(
        "-n {} addr add {tc_addr}/32 dev vi{}",
        world.inet_ns, world.id
    ));
    let _responder = truncating_responder(&world, tc_addr);
    // Over TCP the same address answers properly (relayed to dnsmasq).
    let mut socat = world.in_ns(&world.inet_ns, "socat");
    socat.args([
        &format!("TCP-LISTEN:53,bind={tc_addr},reuseaddr,fork"),
        &format!("TCP:{UPSTREAM}:53"),
    ]);
    world.spawn_server(socat);
    std::thread::sleep(Duration::from_millis(300));
    world.start_daemon_with(&["--fwd-addr", &format!("{tc_addr}:53")]);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    assert!(
        !world.reachable_from_cgroup("192.0.2.66"),
        "an address of a truncated answer was authorized"
    );
    assert_eq!(world.list(), addrs(&["192.0.2.10", "192.0.2.11"]));
    assert!(world.stop_daemon());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn failover_when_the_first_upstream_is_dead() {
    let mut world = World::new();
    // Nobody has 198.51.100.99: queries to it time out.
    world.start_daemon_with(&[
        "--fwd-addr",
        "198.51.100.99:53",
        "--fwd-addr",
        &format!("{UPSTREAM}:53"),
        "--fwd-timeout-ms",
        "400",
    ]);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert_eq!(world.resolve("b.test", "A", true), ["192.0.2.11"]);
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    // A third distinct question failing on the dead server puts it in back-off.
    assert_eq!(world.resolve("c.test", "A", false), ["192.0.2.12"]);
    // While the dead server is in back-off, answers come without waiting for it.
    let started = std::time::Instant::now();
    assert_eq!(world.resolve("n1.test", "A", false), ["203.0.113.1"]);
    assert!(
        started.elapsed() < Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
    assert!(world.daemon_log().contains("[Upstream Error]"));
    assert!(world.stop_daemon());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn blacklisted_domains_are_refused_and_authorize_nothing() {
    let mut world = World::new();
    let config = write_config(
        &world,
        "[blacklist]\ndomains = [\"B.test\", \"*.numbers.test\", \"c.test\"]\n",
    );
    world.start_daemon(&["--config", &config]);
    let out = dig_full(&world, &["b.test", "A"]);
    assert!(out.contains("status: REFUSED"), "{out}");
    // alias.test is not listed, but its CNAME target c.test is.
    let out = dig_full(&world, &["alias.test", "A"]);
    assert!(out.contains("status: REFUSED"), "{out}");
    assert!(!out.contains("192.0.2.12"), "{out}");
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert!(!world.reachable_from_cgroup("192.0.2.11"));
    assert!(!world.reachable_from_cgroup("192.0.2.12"));
    assert_eq!(world.list(), addrs(&["192.0.2.10"]));
    assert!(world.daemon_log().contains("[Blacklisted]"));
    assert!(world.stop_daemon());

    // The configurable response.
    world.start_daemon(&["--config", &config, "--blacklist-response", "nxdomain"]);
    let out = dig_full(&world, &["B.TEST", "A"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(world.stop_daemon());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn blacklisted_hosts_stay_in_answers_but_stay_blocked() {
    let mut world = World::new();
    let config = write_config(
        &world,
        "[blacklist]\nhosts = [\"192.0.2.10\"]\nnetworks = [\"2001:db8:1::/64\"]\n",
    );
    world.start_daemon(&["--config", &config]);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert_eq!(world.resolve("a.test", "AAAA", true), ["2001:db8:1::10"]);
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    assert!(!world.reachable_from_cgroup("192.0.2.10"));
    assert!(!world.reachable_from_cgroup("2001:db8:1::10"));
    assert!(world.reachable_from_cgroup("192.0.2.11"));
    assert_eq!(world.list(), addrs(&["192.0.2.11"]));
    assert!(world.daemon_log().contains("[Blacklisted] host"));
    assert!(world.stop_daemon());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn cache_hits_reauthorize() {
    let mut world = World::new();
    world.start_daemon(&["--dns-ttl-cache", "300", "--metrics-addr", "127.0.0.1:9153"]);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert_eq!(world.resolve("A.TEST", "A", false), ["192.0.2.10"]);
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    let log = world.daemon_log();
    assert!(log.contains("[Cache] hit"), "{log}");
    assert!(
        log.contains("[Already Authorized]"),
        "the hit renewed the entry: {log}"
    );
    // The DNS path feeds the metrics: one answered, one cached, the address new then renewed.
    let out = world
        .in_ns(&world.client_ns, "curl")
        .args(["-sS", "--max-time", "5", "http://127.0.0.1:9153/metrics"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for sample in [
        "nettrust_dns_queries_total{transport=\"udp\",result=\"cached\"} 1",
        "nettrust_answer_addresses_total{result=\"new\"} 1",
        "nettrust_answer_addresses_total{result=\"already\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == sample),
            "{sample} missing:\n{text}"
        );
    }
    assert!(world.stop_daemon());
}

/// A config file others can write is refused at start and on SIGHUP (the running configuration
/// stays), with an error naming the file and the fix.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn config_file_writable_by_others_is_refused_at_start_and_on_reload() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut world = World::new();
    let config = write_config(&world, "authorize_ptr = false\n");
    let set_mode = |mode: u32| {
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    set_mode(0o666);
    let err = world.start_fails(&["--config", &config]);
    assert!(err.contains(&format!("chmod 644 {config}")), "{err}");
    set_mode(0o644);
    world.start_daemon(&["--config", &config]);
    set_mode(0o664);
    world.signal_daemon(libc::SIGHUP);
    world.eventually("the reload refused", Duration::from_secs(5), || {
        world.daemon_log().contains(&format!("chmod 644 {config}"))
    });
    assert!(
        world
            .daemon_log()
            .contains("[Reload] invalid configuration")
    );
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert!(world.stop_daemon());
}
