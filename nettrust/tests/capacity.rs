//! Map capacities: a full host map (or nftables set) evicts idle authorizations, least recently
//! used first, and keeps answering; a host in use is never evicted, an evicted one is blocked;
//! pinned maps of another capacity are not adopted silently.
//! Run with `cargo xtask test` (the tests are `#[ignore]`d in a plain `cargo test`).
#![expect(
    unused_crate_dependencies,
    reason = "a test target sees every dependency of the package and uses only a few of them"
)]

#[macro_use]
mod world;

use world::{Backend, Background, NUMBERED_NAMES, World};

both_backends!(
    full_map_evicts_idle_authorizations_and_keeps_answering,
    full_map_keeps_the_host_of_an_idle_open_connection,
);

/// dig's status line for `name` asked from the test cgroup, plus the answered addresses.
fn ask(world: &World, name: &str) -> (String, Vec<String>) {
    let (status, answers, _) = world.dig(name, false);
    (status, answers)
}

/// Capacity of the maps in the eviction test: four times as many distinct names as it holds
/// fit in the world's zone.
const MAX_HOSTS: u32 = 48;

/// 4 × `max_hosts` distinct names through an otherwise default configuration (TTL never, so
/// nothing expires): every one is answered NOERROR, the recent answers are all reachable, an
/// authorization made first and kept in use (a line every 200 ms over a TCP connection its peer
/// echoes) survives all of it,
/// an early one nobody used was evicted and is blocked, and the evictions are counted. (The old
/// behaviour refused every name past the capacity with SERVFAIL, for good.)
fn full_map_evicts_idle_authorizations_and_keeps_answering(backend: Backend) {
    let names = 4 * MAX_HOSTS;
    assert!(names < NUMBERED_NAMES);
    let mut world = World::with_backend(backend);
    world.start_daemon(&[
        "--max-hosts",
        &MAX_HOSTS.to_string(),
        "--metrics-addr",
        "127.0.0.1:9153",
    ]);
    assert_eq!(
        ask(&world, "n1.test"),
        ("NOERROR".to_owned(), vec!["203.0.113.1".to_owned()])
    );
    assert!(world.reachable_from_cgroup("203.0.113.1"));
    // Traffic to n1 all along, answered by its peer (a flow nobody answers is not in use: the
    // nftables backend, which keeps no last-packet time, judges use by replied conntrack
    // flows): one TCP connection to an echo server, a line every 200 ms.
    let mut echo = world.in_ns(&world.inet_ns, "socat");
    echo.args([
        &format!("TCP-LISTEN:{ECHO_PORT},reuseaddr,fork"),
        "EXEC:cat",
    ]);
    let _echo = Background::spawn(echo);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut traffic = world.in_cgroup("sh");
    traffic.args([
        "-c",
        &format!(
            "while :; do echo x; sleep 0.2; done | socat - TCP:203.0.113.1:{ECHO_PORT} > /dev/null"
        ),
    ]);
    let _traffic = Background::spawn(traffic);
    std::thread::sleep(std::time::Duration::from_millis(500));

    let mut statuses = Vec::new();
    for i in 2..=names + 1 {
        let (status, answers) = ask(&world, &format!("n{i}.test"));
        assert_eq!(
            answers,
            [format!("203.0.113.{i}")],
            "n{i}.test answered {status}"
        );
        statuses.push(status);
    }
    let noerror = statuses.iter().filter(|s| *s == "NOERROR").count();
    eprintln!("{backend:?}: {noerror}/{} NOERROR", statuses.len());
    assert_eq!(
        noerror,
        statuses.len(),
        "every name must be answered: {statuses:?}"
    );
    let listed = world.list();
    assert!(
        listed.len() <= MAX_HOSTS as usize,
        "{} authorizations listed in a capacity of {MAX_HOSTS}",
        listed.len()
    );
    eprintln!(
        "{backend:?}: evicted {}, full {}",
        world.metric("nettrust_evicted_hosts_total"),
        world.metric("nettrust_firewall_full_total")
    );
    assert_eq!(world.metric("nettrust_firewall_full_total"), 0.0);
    assert!(
        world.metric("nettrust_evicted_hosts_total") >= f64::from(names - MAX_HOSTS),
        "{names} names through {MAX_HOSTS} entries must evict"
    );
    // The host in use was never evicted.
    assert!(world.reachable_from_cgroup("203.0.113.1"));
    assert!(listed.contains(&"203.0.113.1".parse().unwrap()));
    // The recent answers (half the capacity) are all allowed.
    for i in names + 2 - MAX_HOSTS / 2..=names + 1 {
        let addr = format!("203.0.113.{i}");
        assert!(
            listed.contains(&addr.parse().unwrap()),
            "{addr} (a recent answer) is not listed: {listed:?}"
        );
        assert!(
            world.reachable_from_cgroup(&addr),
            "{addr}, a recent answer, is blocked"
        );
    }
    // Early answers nobody used were evicted, and are blocked.
    for i in [2, 3] {
        let addr = format!("203.0.113.{i}");
        assert!(!listed.contains(&addr.parse().unwrap()), "{addr} listed");
        assert!(
            !world.reachable_from_cgroup(&addr),
            "{addr} was evicted but is reachable"
        );
    }
    // Asked again, an evicted name is authorized again.
    assert_eq!(ask(&world, "n2.test").0, "NOERROR");
    assert!(world.reachable_from_cgroup("203.0.113.2"));
    assert!(world.daemon_log().contains("[Evicted]"));
    assert!(world.stop_daemon(), "nettrust failed at exit");
}

/// An echo server (port 8081) in the internet namespace: a connection stays open while the client
/// keeps it open.
const ECHO_PORT: u16 = 8081;

/// A host with an open TCP connection that has been idle for longer than eviction's "recent
/// packet" window (30 s; a database pool, an SSH session) is as alive for eviction as it is for
/// the sweeper: conntrack knows the flow, so a full map flooded with 4 × `max_hosts` new names
/// evicts other hosts and keeps this one. (Before, the eBPF backend ranked it by its last packet
/// only and evicted it first; the connection's next packet was dropped.)
fn full_map_keeps_the_host_of_an_idle_open_connection(backend: Backend) {
    idle_connection_outlives_a_full_map(backend, true);
}

/// A map full of hosts in use has nothing to evict: new names are refused (SERVFAIL, counted),
/// the hosts in use stay, and the daemon does not scan the whole map again for every refused
/// name (a filtered process keeping its own hosts busy must not make every answer pay a scan).
#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_map_full_of_hosts_in_use_refuses_new_names_without_scanning_for_each() {
    let mut world = World::new();
    world.start_daemon(&["--max-hosts", "16", "--metrics-addr", "127.0.0.1:9153"]);
    // 127.0.0.1 (listen) is whitelisted in the same map: 15 authorizations fill it.
    for i in 1..=15 {
        assert_eq!(ask(&world, &format!("n{i}.test")).0, "NOERROR", "n{i}.test");
    }
    // All 15 in use: one datagram to each every 200 ms (the egress program stamps each).
    let mut traffic = world.in_cgroup("bash");
    traffic.args([
        "-c",
        "while :; do for i in $(seq 1 15); do echo x > /dev/udp/203.0.113.$i/9; done; sleep 0.2; done",
    ]);
    let _traffic = Background::spawn(traffic);
    std::thread::sleep(std::time::Duration::from_millis(600));
    for i in 16..=35 {
        assert_eq!(
            ask(&world, &format!("n{i}.test")).0,
            "SERVFAIL",
            "n{i}.test"
        );
    }
    assert_eq!(world.metric("nettrust_firewall_full_total"), 20.0);
    assert_eq!(world.metric("nettrust_evicted_hosts_total"), 0.0);
    let log = world.daemon_log();
    let scans = log.matches("nothing to evict").count();
    eprintln!("20 refused names, {scans} scans");
    assert!(
        (1..=4).contains(&scans),
        "{scans} full scans for 20 refused names (one per second expected)"
    );
    for i in 1..=15 {
        assert!(
            world
                .list()
                .contains(&format!("203.0.113.{i}").parse().unwrap())
        );
    }
    assert!(world.stop_daemon(), "nettrust failed at exit");
}

/// The same on a host with no netfilter rule at all, where conntrack tracks nothing: the eBPF
/// backend knows the connection from its `live_tcp` program. (The nftables backend's own rules
/// make conntrack track, so it has no such case.)
#[test]
#[ignore = "needs root: cargo xtask test"]
fn full_map_keeps_the_host_of_an_idle_open_connection_without_any_firewall_rule() {
    idle_connection_outlives_a_full_map(Backend::Ebpf, false);
}

fn idle_connection_outlives_a_full_map(backend: Backend, ct_rule: bool) {
    use std::time::Duration;
    let mut world = World::with_backend(backend);
    let mut echo = world.in_ns(&world.inet_ns, "socat");
    echo.args([
        &format!("TCP6-LISTEN:{ECHO_PORT},ipv6only=0,reuseaddr,fork"),
        "EXEC:cat",
    ]);
    let _echo = Background::spawn(echo);
    if ct_rule {
        // A ct-using rule in the client namespace (only there) makes conntrack track its
        // flows, as the sweeper's conntrack liveness test does.
        let rules = "table inet nettrust_ct {\n chain output {\n  type filter hook output priority 0; policy accept;\n  ct state established counter\n }\n}\n";
        world.load_nft(&world.client_ns, rules);
    } else {
        let ruleset = world
            .in_ns(&world.client_ns, "nft")
            .args(["list", "ruleset"])
            .output()
            .expect("run nft");
        assert!(ruleset.stdout.trim_ascii().is_empty(), "a rule is loaded");
    }
    world.start_daemon(&["--max-hosts", &MAX_HOSTS.to_string()]);
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    // An open connection without any traffic after its handshake.
    let mut client = world.in_cgroup("sh");
    client.args([
        "-c",
        &format!("sleep 120 | socat - TCP:192.0.2.11:{ECHO_PORT}"),
    ]);
    let _client = Background::spawn(client);
    // Idle for longer than the 30 s during which a packet alone protects a host.
    std::thread::sleep(Duration::from_secs(33));
    let established = world
        .in_ns(&world.client_ns, "ss")
        .args(["-Htn", "state", "established", "dst", "192.0.2.11"])
        .output()
        .expect("run ss");
    assert!(
        !String::from_utf8_lossy(&established.stdout)
            .trim()
            .is_empty(),
        "the idle client must still be connected"
    );
    let names = 4 * MAX_HOSTS;
    for i in 1..=names {
        let (status, _) = ask(&world, &format!("n{i}.test"));
        assert_eq!(status, "NOERROR", "n{i}.test");
    }
    let listed = world.list();
    assert!(
        !listed.contains(&"203.0.113.1".parse().unwrap()),
        "the map never filled: {listed:?}"
    );
    assert!(
        listed.contains(&"192.0.2.11".parse().unwrap()),
        "the host of an idle open connection was evicted: {listed:?}"
    );
    assert!(world.reachable_from_cgroup("192.0.2.11"));
    assert!(world.stop_daemon(), "nettrust failed at exit");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn pinned_maps_of_another_capacity_are_refused() {
    let mut world = World::new();
    let keep = ["--do-not-flush-table", "--do-not-flush-authorized-hosts"];
    let mut args = vec!["--max-hosts", "64"];
    args.extend(keep);
    world.start_daemon(&args);
    assert_eq!(ask(&world, "n1.test").0, "NOERROR");
    assert!(world.stop_daemon());

    // Another capacity: refused with a message naming the setting, the pinned and the asked size.
    let err = world.start_fails(&["--max-hosts", "128", "--firewall-backend", "auto"]);
    for needle in ["max_hosts", "64", "128", "nettrust flush"] {
        assert!(
            err.contains(needle),
            "error does not name {needle:?}:\n{err}"
        );
    }
    // Nothing changed: the kept authorization is still enforced, the rest still blocked.
    assert!(world.reachable_from_cgroup("203.0.113.1"));
    assert!(!world.reachable_from_cgroup("203.0.113.2"));

    // The same capacity adopts the state.
    world.start_daemon(&["--max-hosts", "64"]);
    assert!(world.reachable_from_cgroup("203.0.113.1"));
    assert!(world.stop_daemon());
    // After a flush a new capacity applies.
    world.start_daemon(&["--max-hosts", "128"]);
    assert!(!world.reachable_from_cgroup("203.0.113.1"));
    assert!(world.stop_daemon());
}

/// `nettrust list` (like the sweeper and the metrics) reads the IPv6 host map in batches of 4,096
/// entries (`BPF_MAP_LOOKUP_BATCH`) and every slot of the memory-mapped IPv4 table: every host of
/// an IPv6 map several batches long and of a well-filled IPv4 table is listed, once.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn list_reads_every_host_of_a_map_several_batches_long() {
    use aya::maps::{HashMap, Map, MapData};
    use nettrust_common::{FLAG_AUTHORIZED, HostValue, MAP_HOSTS_V6};

    const HOSTS: u32 = 20_000;
    let mut world = World::new();
    world.start_daemon(&["--max-hosts", "32768"]);
    let data = MapData::from_pin(world.bpffs_dir.join(MAP_HOSTS_V6)).expect("open HOSTS_V6");
    let mut v6: HashMap<_, [u8; 16], HostValue> =
        HashMap::try_from(Map::HashMap(data)).expect("HOSTS_V6 is a hash map");
    // The daemon is idle while the test writes into its IPv4 table.
    let v4 = nettrust::firewall::ebpf::open_table(&world.bpffs_dir, true).expect("open HOSTS_V4");
    let expires_ns = nettrust::firewall::boottime_ns() + 600_000_000_000;
    let value = HostValue {
        expires_ns,
        flags: FLAG_AUTHORIZED,
        ..HostValue::default()
    };
    let mut written = Vec::new();
    for i in 0..HOSTS {
        // 10.0.0.0/8 and 2001:db8::/32 are never routed here; the daemon only lists these.
        let addr = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        v4.insert(addr, &value, false).expect("write an IPv4 host");
        written.push(std::net::IpAddr::from(addr));
        let addr6 = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (i >> 16) as u16, i as u16);
        v6.insert(addr6.octets(), value, 0)
            .expect("write an IPv6 host");
        written.push(std::net::IpAddr::from(addr6));
    }
    let listed = world.list();
    let mut unique = listed.clone();
    unique.dedup();
    assert_eq!(unique.len(), listed.len(), "a host was listed twice");
    for addr in &written {
        assert!(
            listed.binary_search(addr).is_ok(),
            "{addr} is missing from nettrust list"
        );
    }
    assert_eq!(
        listed.len(),
        written.len(),
        "nettrust list: {} hosts",
        listed.len()
    );
}

/// Kernel memory stays far below a hash map's 88 bytes per host: with `max_hosts` at 1,048,576,
/// the IPv4 table costs its 16-byte slots (4/3 per host, 22.4 MB, the same empty or full) and the
/// on-demand IPv6 and name maps holding a few hosts cost their hash buckets (16.8 MB), where
/// preallocated maps would cost about 100 MB each. Read from the kernel's own accounting
/// (`memlock` in /proc/self/fdinfo of the pinned map).
#[test]
#[ignore = "needs root: cargo xtask test"]
fn host_maps_cost_memory_for_what_they_hold_not_for_their_capacity() {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    use aya::maps::MapData;
    use nettrust_common::{MAP_HOSTS_V4, MAP_HOSTS_V6, MAP_NAMES};

    let mut world = World::new();
    world.start_daemon(&["--max-hosts", "1048576"]);
    assert!(!world.resolve("n1.test", "A", false).is_empty());
    for name in [MAP_HOSTS_V4, MAP_HOSTS_V6, MAP_NAMES] {
        let map = MapData::from_pin(world.bpffs_dir.join(name)).expect("open a pinned map");
        let fd = map.fd().as_fd().as_raw_fd();
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
        let memlock: u64 = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no memlock in the fdinfo of {name}:\n{fdinfo}"));
        eprintln!("{name}: memlock {memlock} bytes");
        if name == MAP_HOSTS_V4 {
            let slots = u64::from(nettrust_common::host_table::slots(1_048_576)) * 16;
            assert!(
                (slots..slots + 1_000_000).contains(&memlock),
                "the IPv4 table of {slots} bytes of slots costs {memlock} bytes"
            );
        } else {
            assert!(
                memlock < 20_000_000,
                "{name} holds a few hosts but costs {memlock} bytes of kernel memory"
            );
        }
    }
}
