//! Root tests of the authorization lifecycle: TTL expiry and renewal by use, kernel-side
//! expiry with the daemon dead, fail-closed pinning across `kill -9` and restarts, the exit
//! matrix, drop-input, runtime attach/detach, denied events and the pinned-state commands.
//! Run with `cargo xtask test` (they are `#[ignore]`d in a plain `cargo test`).
#![expect(
    unused_crate_dependencies,
    reason = "a test target sees every dependency of the package and uses only a few of them"
)]

#[macro_use]
mod world;

use std::{
    process::Stdio,
    thread::sleep,
    time::{Duration, Instant},
};

use world::{Backend, Background, ECHO_PORT, World, echo_server};

both_backends!(
    ttl_expires_idle_hosts_and_renews_hosts_in_use,
    conntrack_keeps_hosts_with_idle_connections,
    idle_connections_keep_their_hosts_without_any_firewall_rule,
    dropped_packets_never_bring_an_expired_host_back,
    blacklisting_by_sighup_revokes_authorizations,
    a_host_taken_off_the_whitelist_is_not_kept_by_an_adoption,
    sigkill_leaves_enforcement_expiry_works_without_daemon_and_next_start_adopts,
    restarts_never_let_an_unauthorized_packet_out,
    exit_matrix,
    servers_answer_inbound_clients_and_drop_input_blocks_them,
    several_cgroups_at_once,
);

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_no_firewall_rules_in_client_ns(world: &World) {
    let out = world
        .in_ns(&world.client_ns, "nft")
        .args(["list", "ruleset"])
        .output()
        .expect("nft list ruleset");
    assert!(
        stdout(&out).trim().is_empty(),
        "the client namespace must have no firewall rules: {}",
        stdout(&out)
    );
}

fn ttl_expires_idle_hosts_and_renews_hosts_in_use(backend: Backend) {
    let mut world = World::with_backend(backend);
    let _echo = echo_server(&world);
    world.start_daemon(&["--authorized-ttl", "2", "--ttl-check-ticker", "1"]);
    if backend == Backend::Ebpf {
        assert_no_firewall_rules_in_client_ns(&world);
    }

    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    let authorized = Instant::now();
    // A long-lived connection to b.test with a little traffic, from inside the cgroup.
    let mut client = world.in_cgroup("sh");
    client.args([
        "-c",
        &format!("while sleep 0.3; do echo x; done | socat - TCP:192.0.2.11:{ECHO_PORT}"),
    ]);
    let client = Background::spawn(client);

    sleep(Duration::from_millis(4500).saturating_sub(authorized.elapsed()));
    assert!(
        !world.reachable_from_cgroup("192.0.2.10"),
        "the idle host must be blocked ~2 s after its TTL"
    );
    assert!(
        world.reachable_from_cgroup("192.0.2.11"),
        "a host with an open connection must stay reachable past its TTL"
    );
    sleep(Duration::from_secs(3));
    assert!(world.reachable_from_cgroup("192.0.2.11"));
    assert!(
        !world.list().contains(&"192.0.2.10".parse().unwrap()),
        "the sweeper removes expired hosts"
    );

    drop(client);
    sleep(Duration::from_secs(5));
    assert!(
        !world.reachable_from_cgroup("192.0.2.11"),
        "the host expires once the connection is closed"
    );
    assert!(world.daemon_log().contains("has expired"));
    assert!(world.stop_daemon());
}

fn conntrack_keeps_hosts_with_idle_connections(backend: Backend) {
    let mut world = World::with_backend(backend);
    let _echo = echo_server(&world);
    // A ct-using rule in the client namespace (only there) makes conntrack track its flows.
    let rules = "table inet nettrust_ct {\n chain output {\n  type filter hook output priority 0; policy accept;\n  ct state established counter\n }\n}\n";
    world.load_nft(&world.client_ns, rules);
    world.start_daemon(&["--authorized-ttl", "2", "--ttl-check-ticker", "1"]);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    let authorized = Instant::now();
    // An open connection without any traffic: only conntrack knows it is alive.
    let mut client = world.in_cgroup("sh");
    client.args([
        "-c",
        &format!("sleep 60 | socat - TCP:192.0.2.11:{ECHO_PORT}"),
    ]);
    let client = Background::spawn(client);
    sleep(Duration::from_millis(5000).saturating_sub(authorized.elapsed()));
    assert!(!world.reachable_from_cgroup("192.0.2.10"));
    assert!(
        world.reachable_from_cgroup("192.0.2.11"),
        "an idle but open connection (in conntrack) must keep its host"
    );
    drop(client);
    sleep(Duration::from_secs(5));
    assert!(
        !world.reachable_from_cgroup("192.0.2.11"),
        "a closed connection (TIME_WAIT) must not keep its host"
    );
    assert!(world.stop_daemon());
}

/// What a host with no other firewall has: no netfilter rule at all (for eBPF), so conntrack
/// tracks nothing. An idle connection (an SSH session, a database pool) keeps its host past the
/// TTL and its next packet gets out; once it is closed the host expires. With nftables the
/// backend's own ruleset makes conntrack track the flows, and its replied flows keep the host.
fn idle_connections_keep_their_hosts_without_any_firewall_rule(backend: Backend) {
    let mut world = World::with_backend(backend);
    let _echo = echo_server(&world);
    if backend == Backend::Ebpf {
        assert_no_firewall_rules_in_client_ns(&world);
    }
    world.start_daemon(&["--authorized-ttl", "2", "--ttl-check-ticker", "1"]);
    if backend == Backend::Ebpf {
        assert_no_firewall_rules_in_client_ns(&world);
    }
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    assert_eq!(world.resolve("b.test", "AAAA", false), ["2001:db8:1::11"]);
    let authorized = Instant::now();
    // Each connects, says nothing for 7 s (over three TTLs), then sends one line and waits for
    // its echo.
    let idle_client = |target: &str| {
        world
            .in_cgroup("sh")
            .args([
                "-c",
                &format!("(sleep 7; echo still-here; sleep 1) | socat -t 2 - {target}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start an idle client")
    };
    let clients = [
        (
            "192.0.2.11",
            idle_client(&format!("TCP:192.0.2.11:{ECHO_PORT}")),
        ),
        (
            "2001:db8:1::11",
            idle_client(&format!("TCP6:[2001:db8:1::11]:{ECHO_PORT}")),
        ),
    ];
    sleep(Duration::from_millis(5000).saturating_sub(authorized.elapsed()));
    assert!(
        !world.reachable_from_cgroup("192.0.2.10"),
        "a host without connection must expire"
    );
    let listed = |addr: &str| world.list().contains(&addr.parse().unwrap());
    for (addr, _) in &clients {
        assert!(
            listed(addr),
            "an idle but established connection must keep its host {addr} authorized:\n{}",
            world.daemon_log()
        );
    }
    for (addr, client) in clients {
        let out = client.wait_with_output().expect("wait for an idle client");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("still-here"),
            "the next packet of the idle connection to {addr} must get out (status {}, stderr: {})",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Closed: nothing keeps the hosts any more.
    let closed = Instant::now();
    world.eventually(
        "the expiry of the closed connections' hosts",
        Duration::from_secs(8),
        || !listed("192.0.2.11") && !listed("2001:db8:1::11"),
    );
    eprintln!(
        "idle connections kept their hosts for {:.1} s (TTL 2 s); hosts gone {:.1} s after the close",
        closed.duration_since(authorized).as_secs_f64(),
        closed.elapsed().as_secs_f64()
    );
    assert!(!world.reachable_from_cgroup("192.0.2.11"));
    assert!(!world.reachable_from_cgroup("2001:db8:1::11"));
    assert!(world.stop_daemon());
}

/// Conntrack tracks flows (a ct rule is loaded) and a filtered process sends a SYN to an expired
/// host every 100 ms or so: each is dropped, but conntrack has already confirmed it. The host must stay
/// expired: an unreplied flow is not use, and a host past its deadline is never renewed.
fn dropped_packets_never_bring_an_expired_host_back(backend: Backend) {
    let mut world = World::with_backend(backend);
    let rules = "table inet nettrust_ct {\n chain output {\n  type filter hook output priority 0; policy accept;\n  ct state established counter\n }\n}\n";
    world.load_nft(&world.client_ns, rules);
    world.start_daemon(&["--authorized-ttl", "2", "--ttl-check-ticker", "1"]);
    assert!(world.enforcing(), "the {backend:?} backend is not in place");
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    let authorized = Instant::now();
    // Past the deadline, also as the eBPF host table stores it (rounded up to 134 ms units).
    sleep(Duration::from_millis(2300).saturating_sub(authorized.elapsed()));
    let out = world.script_in_cgroup(&format!(
        "end=$(($(date +%s) + 6)); tries=0; while [ $(date +%s) -lt $end ]; do \
           tries=$((tries + 1)); \
           socat -u TCP:192.0.2.10:{},connect-timeout=0.1 - 2>/dev/null | grep -q ok && echo CONNECTED; \
           sleep 0.1; \
         done; echo tries=$tries",
        world::TCP_PORT
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    let tries: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("tries="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the probe loop did not run: {text}"));
    assert!(tries >= 20, "only {tries} probes in 6 s");
    eprintln!("{tries} connection attempts to the expired host in 6 s");
    assert!(
        !text.contains("CONNECTED"),
        "an expired host was brought back by dropped packets: {text}\n{}",
        world.daemon_log()
    );
    assert!(!world.list().contains(&"192.0.2.10".parse().unwrap()));
    assert!(!world.reachable_from_cgroup("192.0.2.10"));
    assert!(world.stop_daemon());
}

/// A reload that blacklists an authorized host, network or domain revokes the authorization at
/// once (the TTL is "never" here): the next connection is refused and `nettrust list` no longer
/// shows it; the other authorizations stay.
fn blacklisting_by_sighup_revokes_authorizations(backend: Backend) {
    let mut world = World::with_backend(backend);
    let config = world.dir.path().join("reload.toml");
    std::fs::write(&config, "").unwrap();
    let config_arg = config.display().to_string();
    world.start_daemon(&["--config", &config_arg]);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    assert_eq!(world.resolve("c.test", "A", false), ["192.0.2.12"]);
    for addr in ["192.0.2.10", "192.0.2.11", "192.0.2.12"] {
        assert!(world.reachable_from_cgroup(addr), "{addr} not authorized");
    }
    let listed = |addr: &str| world.list().contains(&addr.parse().unwrap());
    // Each step adds one entry to the blacklist and checks that exactly its host goes.
    let steps = [
        ("192.0.2.10", "hosts = [\"192.0.2.10\"]\n"),
        ("192.0.2.11", "domains = [\"b.test\"]\n"),
        ("192.0.2.12", "networks = [\"192.0.2.12/31\"]\n"),
    ];
    let mut blacklist = String::from("[blacklist]\n");
    for (i, (addr, entry)) in steps.iter().enumerate() {
        blacklist.push_str(entry);
        std::fs::write(&config, &blacklist).unwrap();
        let sent = Instant::now();
        world.signal_daemon(libc::SIGHUP);
        world.eventually(
            &format!("the revocation of {addr} by `{}`", entry.trim()),
            Duration::from_secs(5),
            || !listed(addr),
        );
        eprintln!(
            "`{}`: {addr} revoked within {} ms of SIGHUP",
            entry.trim(),
            sent.elapsed().as_millis()
        );
        assert!(
            !world.reachable_from_cgroup(addr),
            "{addr} still reachable after it was blacklisted"
        );
        for (kept, _) in &steps[i + 1..] {
            assert!(listed(kept), "{kept} revoked by `{}`", entry.trim());
            assert!(world.reachable_from_cgroup(kept));
        }
    }
    assert!(world.daemon_log().contains("is blacklisted now"));
    assert!(world.stop_daemon());
}

/// A host authorized, then whitelisted by a reload (its entry carries both flags and no deadline),
/// kept across a restart that adopts the pinned state, and taken off the whitelist by that
/// restart's configuration: it is no longer allowed past its TTL; it must be resolved again.
fn a_host_taken_off_the_whitelist_is_not_kept_by_an_adoption(backend: Backend) {
    let mut world = World::with_backend(backend);
    let config = world.dir.path().join("reload.toml");
    std::fs::write(&config, "").unwrap();
    let config_arg = config.display().to_string();
    let args = [
        "--config",
        &config_arg,
        "--authorized-ttl",
        "2",
        "--ttl-check-ticker",
        "1",
        "--do-not-flush-table",
        "--do-not-flush-authorized-hosts",
    ];
    world.start_daemon(&args);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    std::fs::write(&config, "[whitelist]\nhosts = [\"192.0.2.10\"]\n").unwrap();
    world.signal_daemon(libc::SIGHUP);
    world.eventually("the reload", Duration::from_secs(10), || {
        world.daemon_log().contains("configuration reloaded")
    });
    assert!(world.stop_daemon());
    // Whitelisted, it outlives its TTL.
    sleep(Duration::from_secs(3));
    assert!(world.reachable_from_cgroup("192.0.2.10"));

    std::fs::write(&config, "").unwrap();
    world.start_daemon(&args);
    assert!(world.daemon_log().contains("adopting"));
    sleep(Duration::from_secs(3));
    assert!(
        !world.reachable_from_cgroup("192.0.2.10"),
        "a host taken off the whitelist stays allowed after an adoption"
    );
    assert!(!world.list().contains(&"192.0.2.10".parse().unwrap()));
    assert!(world.stop_daemon());
    assert!(world.nettrust(&["flush"]).status.success());
}

fn sigkill_leaves_enforcement_expiry_works_without_daemon_and_next_start_adopts(backend: Backend) {
    let mut world = World::with_backend(backend);
    world.start_daemon(&["--authorized-ttl", "3", "--ttl-check-ticker", "1"]);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    let authorized = Instant::now();
    let status = stdout(&world.nettrust(&["status"]));
    assert!(status.contains("daemon: running"), "{status}");
    assert!(status.contains("authorized: 1"), "{status}");

    world.kill_daemon();
    assert!(world.enforcing(), "enforcement is gone");
    assert!(
        !world.reachable_from_cgroup("203.0.113.77"),
        "unresolved destinations must stay blocked after kill -9"
    );
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    let status = stdout(&world.nettrust(&["status"]));
    assert!(status.contains("daemon: not running"), "{status}");
    assert!(status.contains("enforcement: active"), "{status}");
    let list = stdout(&world.nettrust(&["list"]));
    assert!(
        list.contains("192.0.2.10") && list.contains("a.test"),
        "{list}"
    );

    // The deadline passes with no daemon: the kernel expires the host by itself.
    sleep(Duration::from_millis(3500).saturating_sub(authorized.elapsed()));
    assert!(
        !world.reachable_from_cgroup("192.0.2.10"),
        "the authorization must expire at its deadline without a daemon"
    );
    assert!(stdout(&world.nettrust(&["list"])).trim().is_empty());

    // Next start adopts the pinned state and replaces the old links (never two at once left).
    world.start_daemon(&["--authorized-ttl", "3", "--ttl-check-ticker", "1"]);
    assert!(world.daemon_log().contains("adopting"));
    assert!(world.enforcing());
    if backend == Backend::Ebpf {
        assert_eq!(
            world.attached_egress_programs(),
            1,
            "never two links at once"
        );
    }
    assert!(!world.reachable_from_cgroup("192.0.2.10"));
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    assert!(world.reachable_from_cgroup("192.0.2.11"));

    world.kill_daemon();
    let flush = world.nettrust(&["flush"]);
    assert!(
        flush.status.success(),
        "{}",
        String::from_utf8_lossy(&flush.stderr)
    );
    world.assert_nothing_left();
    assert!(world.reachable_from_cgroup("203.0.113.77"));
    assert!(
        world.nettrust(&["flush"]).status.success(),
        "flush is idempotent"
    );
}

fn restarts_never_let_an_unauthorized_packet_out(backend: Backend) {
    const TARGET: &str = "203.0.113.200";
    let mut world = World::with_backend(backend);
    world.count_arrivals(TARGET);
    world.start_daemon(&["--do-not-flush-table"]);
    let attempts = world.dir.path().join("attempts");
    let mut loop_cmd = world.in_cgroup("sh");
    loop_cmd.args([
        "-c",
        &format!(
            "tcp() {{ while true; do echo t >> {log}; socat -u TCP:{TARGET}:{port},connect-timeout=0.2 - ; done; }}
             udp() {{ while true; do echo u >> {log}; echo x | socat -u - UDP:{TARGET}:{port}; sleep 0.01; done; }}
             tcp & tcp & tcp & udp & wait",
            log = attempts.display(),
            port = world::TCP_PORT
        ),
    ]);
    let attempts_loop = Background::spawn(loop_cmd);
    for i in 0..20 {
        if i % 2 == 0 {
            assert!(world.stop_daemon(), "SIGTERM with --do-not-flush-table");
        } else {
            world.kill_daemon();
        }
        world.start_daemon(&["--do-not-flush-table"]);
    }
    drop(attempts_loop);
    let tried = std::fs::read_to_string(&attempts)
        .unwrap_or_default()
        .lines()
        .count();
    assert!(
        tried > 100,
        "the connect loops barely ran ({tried} attempts)"
    );
    assert_eq!(
        world.arrivals(),
        0,
        "packets to an unauthorized address reached the internet during restarts"
    );
    assert!(world.stop_daemon());
    assert!(world.nettrust(&["flush"]).status.success());
    world.assert_nothing_left();
    // Control: with the filter gone the counter does count.
    world.assert_arrival_counter_counts(TARGET);
}

fn exit_matrix(backend: Backend) {
    let mut world = World::with_backend(backend);
    // Default: everything removed.
    world.start_daemon(&[]);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert!(world.stop_daemon());
    world.assert_nothing_left();
    assert!(world.reachable_from_cgroup("203.0.113.77"));

    // --do-not-flush-table: deny policy and whitelists stay, authorizations cleared.
    world.start_daemon(&["--do-not-flush-table"]);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    assert!(world.stop_daemon());
    assert!(world.enforcing(), "the deny policy must stay");
    assert!(!world.reachable_from_cgroup("203.0.113.77"));
    assert!(
        !world.reachable_from_cgroup("192.0.2.10"),
        "authorizations must be cleared"
    );
    let dns = world
        .in_cgroup("dig")
        .args(["+time=2", "+tries=1", &format!("@{}", world::UPSTREAM)])
        .args(["+short", "a.test", "A"])
        .output()
        .expect("start dig");
    assert!(
        !String::from_utf8_lossy(&dns.stdout).contains("192.0.2.10"),
        "the upstream stays the proxy's alone: the cgroup asked it directly: {dns:?}"
    );
    assert!(
        !world.reachable_from_cgroup(world::UPSTREAM),
        "nor on any other port"
    );
    assert!(stdout(&world.nettrust(&["list"])).trim().is_empty());

    // Plus --do-not-flush-authorized-hosts: authorizations stay and are adopted with their
    // deadline by the next start.
    let keep = [
        "--do-not-flush-table",
        "--do-not-flush-authorized-hosts",
        "--authorized-ttl",
        "60",
    ];
    world.start_daemon(&keep);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert!(world.stop_daemon());
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    assert!(!world.reachable_from_cgroup("203.0.113.77"));
    world.start_daemon(&keep);
    let list = stdout(&world.nettrust(&["list"]));
    let line = list
        .lines()
        .find(|l| l.starts_with("192.0.2.10"))
        .unwrap_or_else(|| panic!("not adopted: {list}"));
    let secs: u64 = line
        .split_whitespace()
        .nth(3)
        .and_then(|s| s.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!((50..=60).contains(&secs), "deadline not kept: {line}");
    assert!(line.ends_with("a.test"), "{line}");
    assert!(
        world.reachable_from_cgroup("192.0.2.10"),
        "adopted without resolving again"
    );
    // And a default stop removes everything.
    world.kill_daemon();
    world.start_daemon(&[]);
    assert!(world.stop_daemon());
    world.assert_nothing_left();
}

/// A server inside the test cgroup (client namespace) on port 9090.
fn cgroup_server(world: &World) -> Background {
    let mut cmd = world.in_cgroup("socat");
    cmd.args([
        "TCP6-LISTEN:9090,ipv6only=0,reuseaddr,fork",
        "SYSTEM:echo srv",
    ]);
    let server = Background::spawn(cmd);
    sleep(Duration::from_millis(300));
    server
}

fn inbound_reaches_server(world: &World) -> bool {
    world::socat_gets(
        world.in_ns(&world.inet_ns, "socat"),
        &format!("TCP:{}:9090,connect-timeout=2", world::CLIENT_V4),
        b"srv",
    )
}

fn servers_answer_inbound_clients_and_drop_input_blocks_them(backend: Backend) {
    let mut world = World::with_backend(backend);
    let _server = cgroup_server(&world);
    // Without drop-input: the server's replies to an unauthorized client leave.
    world.start_daemon(&[]);
    assert!(
        inbound_reaches_server(&world),
        "a server in the cgroup must be able to answer inbound clients"
    );
    assert!(
        !world.reachable_from_cgroup(world::INET_V4),
        "...without opening that address for outbound connections"
    );
    assert!(world.stop_daemon());

    world.start_daemon(&["--firewall-drop-input"]);
    assert!(
        !inbound_reaches_server(&world),
        "unsolicited inbound must be dropped"
    );
    // Loopback (the DNS answers) and replies to permitted outbound flows pass.
    assert_eq!(world.resolve("a.test", "A", true), ["192.0.2.10"]);
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    assert_eq!(world.resolve("a.test", "AAAA", false), ["2001:db8:1::10"]);
    assert!(world.reachable_from_cgroup("2001:db8:1::10"));
    assert!(stdout(&world.nettrust(&["status"])).contains("drop input: yes"));
    assert!(world.stop_daemon());
}

/// The open connections of a cgroup keep their hosts only while nettrust filters that cgroup: once
/// it is detached the kernel no longer reports their close, so they must not keep a host alive for
/// the cgroups still filtered.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn connections_of_a_detached_cgroup_stop_keeping_hosts() {
    let mut world = World::new();
    let _echo = echo_server(&world);
    let other = world.extra_cgroup("other");
    let other_arg = other.to_str().unwrap().to_owned();
    world.start_daemon(&["--authorized-ttl", "2", "--ttl-check-ticker", "1"]);
    let out = world.nettrust(&["attach", "--cgroup", &other_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    // An idle connection from the other cgroup, open for the whole test.
    let mut idle = world.in_cgroup_at(&other, "sh");
    idle.args([
        "-c",
        &format!("sleep 30 | socat - TCP:192.0.2.11:{ECHO_PORT}"),
    ]);
    let _idle = Background::spawn(idle);
    sleep(Duration::from_millis(4000));
    let listed = |world: &World| world.list().contains(&"192.0.2.11".parse().unwrap());
    assert!(
        listed(&world),
        "the idle connection of an attached cgroup keeps its host:\n{}",
        world.daemon_log()
    );
    let out = world.nettrust(&["detach", "--cgroup", &other_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let detached = Instant::now();
    world.eventually(
        "the expiry of the host kept only by the detached cgroup",
        Duration::from_secs(8),
        || !listed(&world),
    );
    eprintln!(
        "host gone {:.1} s after the detach (TTL 2 s)",
        detached.elapsed().as_secs_f64()
    );
    assert!(!world.reachable_from_cgroup("192.0.2.11"));
    assert!(world.stop_daemon());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn attach_and_detach_at_runtime_persist_and_denials_are_logged() {
    let mut world = World::new();
    let other = world.extra_cgroup("other");
    world.start_daemon(&[]);
    let reachable_from_other = |world: &World| {
        world::socat_gets(
            world.in_cgroup_at(&other, "socat"),
            &format!("TCP:203.0.113.77:{},connect-timeout=2", world::TCP_PORT),
            b"ok",
        )
    };
    assert!(reachable_from_other(&world), "not filtered yet");
    let other_arg = other.to_str().unwrap();
    let out = world.nettrust(&["attach", "--cgroup", other_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !reachable_from_other(&world),
        "attach must filter the cgroup"
    );
    let status = stdout(&world.nettrust(&["status"]));
    assert!(
        status.contains(other_arg) && status.contains("cgroups: 2"),
        "{status}"
    );

    // Denied egress is logged with the right cgroup and counted.
    sleep(Duration::from_millis(500));
    let log = world.daemon_log();
    let line = format!(
        "[Denied] cgroup {other_arg} -> 203.0.113.77 port {} proto tcp",
        world::TCP_PORT
    );
    assert!(log.contains(&line), "missing {line:?} in:\n{log}");
    assert!(!world.reachable_from_cgroup("203.0.113.78"));
    sleep(Duration::from_millis(500));
    let main_line = format!(
        "[Denied] cgroup {} -> 203.0.113.78 port {} proto tcp",
        world.cgroup.display(),
        world::TCP_PORT
    );
    assert!(
        world.daemon_log().contains(&main_line),
        "missing {main_line:?}"
    );
    let status = stdout(&world.nettrust(&["status"]));
    let other_line = status
        .lines()
        .find(|l| l.contains(other_arg))
        .unwrap_or_default()
        .to_owned();
    assert!(!other_line.ends_with("dropped 0"), "{status}");

    // Runtime attachments persist across kill -9 and a restart with only the configured cgroup.
    world.kill_daemon();
    assert!(!reachable_from_other(&world));
    world.start_daemon(&[]);
    assert!(!reachable_from_other(&world));
    let out = world.nettrust(&["detach", "--cgroup", other_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        reachable_from_other(&world),
        "detach must unfilter the cgroup"
    );
    assert!(
        !world.reachable_from_cgroup("203.0.113.77"),
        "the configured cgroup stays filtered"
    );
    assert!(world.stop_daemon());
}

/// Pins a map nettrust would never create (an array, 4-byte keys and values) at `path`.
fn pin_foreign_map(path: &std::path::Path) {
    aya::maps::Array::<aya::maps::MapData, u32>::create(1, 0)
        .expect("create an array map")
        .pin(path)
        .expect("pin it");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn only_our_own_pinned_state_is_adopted() {
    use std::os::unix::fs::PermissionsExt as _;
    let world = World::new();
    std::fs::create_dir(&world.bpffs_dir).unwrap();
    std::fs::set_permissions(&world.bpffs_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = world.start_fails(&[]);
    assert!(err.contains("writable by group or others"), "{err}");
    std::fs::set_permissions(&world.bpffs_dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    pin_foreign_map(&world.bpffs_dir.join("HOSTS_V4"));
    let err = world.start_fails(&[]);
    assert!(err.contains("is not a nettrust map"), "{err}");
    assert!(
        err.contains("nettrust flush"),
        "the error must say how to recover: {err}"
    );
    assert_eq!(world.attached_egress_programs(), 0, "nothing attached");
    assert!(
        world.bpffs_dir.join("HOSTS_V4").exists(),
        "foreign state left alone"
    );
}

/// A start over the pins of an earlier version whose `live_tcp` map had another value (no
/// scope, pinned as `LIVE_TCP`): the daemon starts, records connections in its own map and
/// removes the old pin.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn an_earlier_versions_connection_map_is_replaced() {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let mut world = World::new();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&world.bpffs_dir)
        .unwrap();
    std::fs::set_permissions(&world.bpffs_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let legacy = world.bpffs_dir.join("LIVE_TCP");
    aya::maps::HashMap::<aya::maps::MapData, u64, [u64; 3]>::create(16, 0)
        .expect("create the earlier version's map")
        .pin(&legacy)
        .expect("pin it");
    world.start_daemon(&[]);
    assert!(!legacy.exists(), "the earlier version's pin was left");
    assert!(world.bpffs_dir.join("LIVE_TCP_SCOPED").exists());
    assert!(world.stop_daemon());
}

fn several_cgroups_at_once(backend: Backend) {
    let mut world = World::with_backend(backend);
    let other = world.extra_cgroup("second");
    let other_arg = other.to_str().unwrap().to_owned();
    let from_other = |world: &World, addr: &str| {
        world::socat_gets(
            world.in_cgroup_at(&other, "socat"),
            &format!("TCP:{addr}:{},connect-timeout=2", world::TCP_PORT),
            b"ok",
        )
    };
    world.start_daemon(&["--cgroup", &other_arg]);
    assert!(!world.reachable_from_cgroup("203.0.113.77"));
    assert!(!from_other(&world, "203.0.113.77"));
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert!(
        from_other(&world, "192.0.2.10"),
        "authorizations are global"
    );
    if backend == Backend::Ebpf {
        let status = stdout(&world.nettrust(&["status"]));
        assert!(status.contains("cgroups: 2"), "{status}");
    }
    assert!(world.stop_daemon());
    world.assert_nothing_left();
    assert!(
        from_other(&world, "203.0.113.77"),
        "the second cgroup is still filtered"
    );
}
