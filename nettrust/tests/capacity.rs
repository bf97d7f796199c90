//! Map capacities (issue 7): a full host map answers SERVFAIL and counts it, never allows silently
//! or crashes; pinned maps of another capacity are not adopted silently.
//! Run with `cargo xtask test` (the tests are `#[ignore]`d in a plain `cargo test`).

mod world;

use world::{NUMBERED_NAMES, World};

/// dig's status line for `name` asked from the test cgroup, plus the answered addresses.
fn ask(world: &World, name: &str) -> (String, Vec<String>) {
    let (status, answers, _) = world.dig(name, false);
    (status, answers)
}

fn metric(world: &World, name: &str) -> f64 {
    let out = world
        .in_ns(&world.client_ns, "curl")
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

#[test]
#[ignore = "needs root: cargo xtask test"]
fn full_host_map_answers_servfail_and_counts() {
    let mut world = World::new();
    // 16 IPv4 entries; 127.0.0.1 (listen) is whitelisted in the same map (the upstream is a
    // service, allowed on its DNS port only, not a host).
    world.start_daemon(&["--max-hosts", "16", "--metrics-addr", "127.0.0.1:9153"]);
    assert_eq!(metric(&world, "nettrust_firewall_full_total"), 0.0);

    let mut authorized = Vec::new();
    let mut refused = Vec::new();
    for i in 1..=30 {
        assert!(i <= NUMBERED_NAMES);
        let (status, answers) = ask(&world, &format!("n{i}.test"));
        match status.as_str() {
            "NOERROR" => {
                assert_eq!(answers, [format!("203.0.113.{i}")]);
                authorized.push(i);
            }
            "SERVFAIL" => {
                assert!(answers.is_empty(), "a SERVFAIL carried addresses");
                refused.push(i);
            }
            other => panic!("n{i}.test answered {other}"),
        }
    }
    assert_eq!(
        authorized.len(),
        15,
        "16 entries minus 1 whitelisted host; authorized {authorized:?}"
    );
    assert_eq!(refused.len(), 15, "refused {refused:?}");
    assert!(
        authorized.iter().all(|&i| i <= 15) && refused.iter().all(|&i| i > 15),
        "the first names fill the map: authorized {authorized:?}"
    );
    assert_eq!(metric(&world, "nettrust_firewall_full_total"), 15.0);
    assert!(world.daemon_log().contains("[Firewall Error]"));

    // The refused addresses stay blocked; the earlier ones stay reachable; the daemon still runs.
    for &i in &refused[..3] {
        assert!(!world.reachable_from_cgroup(&format!("203.0.113.{i}")));
    }
    for &i in &[authorized[0], authorized[14]] {
        assert!(world.reachable_from_cgroup(&format!("203.0.113.{i}")));
    }
    // An address already in the map is renewed, not refused, even when the map is full.
    assert_eq!(ask(&world, "n1.test").0, "NOERROR");
    assert_eq!(world.list().len(), 15);
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
    let v4 = nettrust::firewall::pinned::open_table(&world.bpffs_dir, true).expect("open HOSTS_V4");
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
