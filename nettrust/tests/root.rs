//! Root integration tests: real eBPF or nftables, cgroup, network namespaces, dnsmasq and clients.
//! Every test runs once per backend (`ebpf::…`, `nftables::…`).
//! Run with `cargo xtask test` (they are `#[ignore]`d in a plain `cargo test`).
#![expect(
    unused_crate_dependencies,
    reason = "a test target sees every dependency of the package and uses only a few of them"
)]

#[macro_use]
mod world;

use std::{collections::BTreeSet, net::IpAddr};

use world::{Backend, World};

both_backends!(
    only_resolved_destinations_are_reachable,
    unspecified_answers_authorize_nothing,
    resolve_then_connect_immediately_never_fails,
    sigterm_removes_every_nettrust_object,
    long_names_are_listed_by_their_end,
    worker_threads_choose_the_runtime,
);

fn addrs(list: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = list.iter().map(|s| s.parse().unwrap()).collect();
    v.sort();
    v
}

fn only_resolved_destinations_are_reachable(backend: Backend) {
    let mut world = World::with_backend(backend);
    world.start_daemon(&[]);

    // Nothing resolved yet: v4 and v6 destinations are blocked from the cgroup...
    assert!(!world.reachable_from_cgroup("192.0.2.10"));
    assert!(!world.reachable_from_cgroup("2001:db8:1::10"));
    // ...while a process outside the test cgroup is unaffected.
    assert!(world.reachable_outside_cgroup("192.0.2.10"));
    assert!(world.reachable_outside_cgroup("2001:db8:1::10"));

    // Resolving over UDP opens exactly the answered address.
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    assert!(
        !world.reachable_from_cgroup("192.0.2.11"),
        "b.test's address was never resolved"
    );
    assert!(
        !world.reachable_from_cgroup("2001:db8:1::10"),
        "the AAAA record was not asked for yet"
    );

    // Resolving over TCP, IPv6.
    assert_eq!(world.resolve("a.test", "AAAA", true), ["2001:db8:1::10"]);
    assert!(world.reachable_from_cgroup("2001:db8:1::10"));
    assert!(!world.reachable_from_cgroup("2001:db8:1::11"));

    // Over TCP, IPv4, through a CNAME.
    assert_eq!(
        world.resolve("alias.test", "A", true),
        ["c.test.", "192.0.2.12"]
    );
    assert!(world.reachable_from_cgroup("192.0.2.12"));

    assert_eq!(
        world.list(),
        addrs(&["192.0.2.10", "192.0.2.12", "2001:db8:1::10"])
    );
    assert!(world.stop_daemon(), "nettrust failed at exit");
}

/// `nettrust list` shows each host's name; one longer than the 127 bytes either backend records
/// is shown as `…` and its end, the same with both backends.
fn long_names_are_listed_by_their_end(backend: Backend) {
    let mut world = World::with_backend(backend);
    world.start_daemon(&[]);
    let long = world::long_name();
    assert_eq!(world.resolve(&long, "A", false), ["192.0.2.13"]);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    let expected = format!("…{}", &long[long.len() - 124..]);
    // The eBPF backend writes names a few milliseconds after the reply.
    let mut listed = String::new();
    for _ in 0..50 {
        listed = String::from_utf8_lossy(&world.nettrust(&["list"]).stdout).into_owned();
        if listed.contains("a.test") && listed.contains("192.0.2.13") && listed.contains('…') {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let line = |addr: &str| {
        listed
            .lines()
            .find(|l| l.split_whitespace().next() == Some(addr))
            .unwrap_or_else(|| panic!("{addr} not listed:\n{listed}"))
            .to_owned()
    };
    let long_line = line("192.0.2.13");
    assert!(
        long_line.split_whitespace().any(|field| field == expected),
        "expected the name's last 124 bytes after …:\n{long_line}"
    );
    assert!(!long_line.contains(&"a".repeat(50)), "{long_line}");
    assert!(
        line("192.0.2.10").split_whitespace().any(|f| f == "a.test"),
        "{listed}"
    );
    assert!(world.stop_daemon());
}

fn unspecified_answers_authorize_nothing(backend: Backend) {
    let mut world = World::with_backend(backend);
    world.start_daemon(&[]);
    assert_eq!(world.resolve("zero.test", "A", false), ["0.0.0.0"]);
    assert_eq!(world.resolve("zero.test", "AAAA", true), ["::"]);
    assert_eq!(world.list(), Vec::<IpAddr>::new());
    assert!(world.stop_daemon());
}

fn resolve_then_connect_immediately_never_fails(backend: Backend) {
    let mut world = World::with_backend(backend);
    world.start_daemon(&[]);
    // Each iteration resolves a name never resolved before and connects at once: the address must
    // be in the map before the answer reaches the client.
    let script = format!(
        "ok=0; fail=0
         for i in $(seq 1 {n}); do
           ip=$(dig +short +time=2 +tries=1 @127.0.0.1 n$i.test A)
           if [ \"$(socat -u TCP:$ip:{port},connect-timeout=2 - 2>/dev/null)\" = ok ]; then ok=$((ok+1)); else fail=$((fail+1)); echo \"failed: n$i.test -> $ip\"; fi
         done
         echo \"ok=$ok fail=$fail\"",
        n = world::NUMBERED_NAMES,
        port = world::TCP_PORT
    );
    let out = world.script_in_cgroup(&script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("ok={} fail=0", world::NUMBERED_NAMES)),
        "resolve-then-connect failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: BTreeSet<IpAddr> = world.list().into_iter().collect();
    assert_eq!(listed.len(), world::NUMBERED_NAMES as usize);
    assert!(world.stop_daemon());
}

fn sigterm_removes_every_nettrust_object(backend: Backend) {
    let mut world = World::with_backend(backend);
    world.start_daemon(&[]);
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    assert!(!world.reachable_from_cgroup("203.0.113.77"));
    assert!(world.enforcing());

    assert!(world.stop_daemon(), "nettrust failed at exit");
    world.assert_nothing_left();
    assert!(
        world.reachable_from_cgroup("203.0.113.77"),
        "the cgroup is still filtered"
    );
    assert!(world.reachable_from_cgroup("2001:db8:1::77"));
}

/// Threads of the daemon named `name` (tokio's multi-thread runtime workers are
/// `tokio-rt-worker`, the UDP engine's `nettrust-udp`).
fn threads_named(world: &World, name: &str) -> usize {
    let pid = world.daemon_pid().expect("daemon running");
    world::threads(pid)
        .iter()
        .filter(|thread| thread.name == name)
        .count()
}

fn runtime_workers(world: &World) -> usize {
    threads_named(world, "tokio-rt-worker")
}

/// `worker_threads` 1 (the default) serves UDP on one UDP engine thread and everything else on
/// the main thread; more runs that many of each. Both answer over UDP and TCP and authorize what
/// they answer.
fn worker_threads_choose_the_runtime(backend: Backend) {
    let mut world = World::with_backend(backend);
    world.start_daemon(&[]);
    assert_eq!(runtime_workers(&world), 0, "the default is one thread");
    assert_eq!(threads_named(&world, "nettrust-udp"), 1);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert_eq!(world.resolve("a.test", "AAAA", true), ["2001:db8:1::10"]);
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    assert!(world.reachable_from_cgroup("2001:db8:1::10"));
    assert!(world.stop_daemon(), "nettrust failed at exit");

    world.start_daemon(&["--worker-threads", "3"]);
    assert_eq!(runtime_workers(&world), 3);
    assert_eq!(threads_named(&world, "nettrust-udp"), 3);
    assert!(!world.reachable_from_cgroup("192.0.2.11"));
    assert_eq!(world.resolve("b.test", "A", true), ["192.0.2.11"]);
    assert_eq!(world.resolve("b.test", "AAAA", false), ["2001:db8:1::11"]);
    assert!(world.reachable_from_cgroup("192.0.2.11"));
    assert!(world.reachable_from_cgroup("2001:db8:1::11"));
    assert!(world.stop_daemon(), "nettrust failed at exit");
}
