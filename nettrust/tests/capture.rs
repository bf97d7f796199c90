//! Root tests of transparent DNS capture (`--dns-capture`, eBPF): queries a filtered process
//! sends to port 53 of an address nobody serves DNS on are answered by nettrust and seem to come
//! from that address, over UDP (connected, unconnected, `sendmmsg`, IPv4-mapped) and TCP, from
//! the daemon's network namespace and from a container's behind a veth; a captured query is
//! judged by its cgroup's policy; nettrust's own upstream queries are not captured even with the
//! daemon inside the filtered cgroup; what capture does not cover (other ports, DoT, raw sockets,
//! IPv6 without an IPv6 listener) stays blocked; capture off changes nothing.
//! Run with `cargo xtask test` (they are `#[ignore]`d in a plain `cargo test`).
#![expect(
    unused_crate_dependencies,
    reason = "a test target sees every dependency of the package and uses only a few of them"
)]

#[macro_use]
mod world;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use world::{Backend, UPSTREAM, World, in_netns, ip, join_cgroup};

/// The resolver the clients ask: an address of the test internet where nothing serves DNS
/// (every 192.0.2.0/24 address is local there), so only a captured query gets an answer.
const ASKED: &str = "192.0.2.99";
/// The same over IPv6 (the internet namespace's 2001:db8:1::/64 is local too).
const ASKED_V6: &str = "2001:db8:1::99";
/// What the world's upstream answers for `a.test`.
const A_TEST: &str = "192.0.2.10";

/// A DNS client in Python: `MODE SERVER PORT NAME` sends one A question and prints
/// `rcode=N answers=A,B from=ADDR peer=ADDR` (or `timeout`). Modes: `udp` (sendto/recvfrom),
/// `connected` (connect/send/recvfrom/getpeername), `tcp`, `sendmmsg` (the question twice in one
/// `sendmmsg(2)`), `redirected` (connect to SERVER port PORT+1, then sendto SERVER port PORT),
/// `raw` (a hand-built UDP datagram on a raw socket; no answer is read back).
const CLIENT: &str = r#"
import ctypes, random, socket, struct, sys
mode, server, port, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
fam = socket.AF_INET6 if ":" in server else socket.AF_INET
def question():
    q = struct.pack(">HHHHHH", random.randint(0, 65535), 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", 1, 1)
def parse(r):
    count, i, out = struct.unpack(">H", r[6:8])[0], 12, []
    while r[i]: i += r[i] + 1
    i += 5
    for _ in range(count):
        if r[i] & 0xC0 == 0xC0: i += 2
        else:
            while r[i]: i += r[i] + 1
            i += 1
        t, _, _, n = struct.unpack(">HHIH", r[i:i + 10]); i += 10
        if t == 1: out.append(socket.inet_ntoa(r[i:i + n]))
        i += n
    return r[3] & 0xF, out
def recvn(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: raise EOFError
        b += c
    return b
peer = ""
try:
    if mode == "raw":
        s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_UDP)
        q = question()
        s.sendto(struct.pack(">HHHH", 40000, port, 8 + len(q), 0) + q, (server, 0))
        print("sent"); sys.exit(0)
    if mode == "tcp":
        s = socket.create_connection((server, port), timeout=3)
        q = question(); s.sendall(struct.pack(">H", len(q)) + q)
        data = recvn(s, struct.unpack(">H", recvn(s, 2))[0])
        frm = peer = s.getpeername()[0]
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(3)
        if mode == "connected":
            s.connect((server, port)); s.send(question()); peer = s.getpeername()[0]
        elif mode == "redirected":
            s.connect((server, port + 1)); s.sendto(question(), (server, port))
        elif mode == "sendmmsg":
            libc = ctypes.CDLL(None, use_errno=True)
            sa = struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(server) + bytes(8)
            sabuf = ctypes.create_string_buffer(sa, len(sa))
            class iovec(ctypes.Structure): _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
            class msghdr(ctypes.Structure): _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t), ("flags", ctypes.c_int)]
            class mmsghdr(ctypes.Structure): _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
            bufs = [ctypes.create_string_buffer(question()) for _ in range(2)]
            iovs = [iovec(ctypes.cast(b, ctypes.c_void_p), len(b.raw) - 1) for b in bufs]
            msgs = (mmsghdr * 2)(*[mmsghdr(msghdr(ctypes.cast(sabuf, ctypes.c_void_p), len(sa), ctypes.cast(ctypes.pointer(v), ctypes.c_void_p), 1, None, 0, 0), 0) for v in iovs])
            if libc.sendmmsg(s.fileno(), msgs, 2, 0) != 2: raise OSError(ctypes.get_errno(), "sendmmsg")
        else:
            s.sendto(question(), (server, port))
        data, frm = s.recvfrom(4096); frm = frm[0]
    rcode, answers = parse(data)
    print(f"rcode={rcode} answers={','.join(answers)} from={frm} peer={peer}")
except (socket.timeout, ConnectionRefusedError, EOFError, OSError) as e:
    print(f"timeout {e}")
"#;

/// What [`CLIENT`] printed.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    rcode: u8,
    answers: Vec<String>,
    from: String,
    peer: String,
}

/// Runs [`CLIENT`] as `cmd` (a `python3` command in some cgroup and namespace); `None` when no
/// answer came.
fn ask(mut cmd: Command, mode: &str, server: &str, port: u16, name: &str) -> Option<Reply> {
    let out = cmd
        .args(["-c", CLIENT, mode, server, &port.to_string(), name])
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text.trim();
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_default()
            .to_owned()
    };
    line.starts_with("rcode=").then(|| Reply {
        rcode: field("rcode").parse().unwrap(),
        answers: field("answers")
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
        from: field("from"),
        peer: field("peer"),
    })
}

/// Counts, in the internet namespace, the packets that reach [`ASKED`] or [`ASKED_V6`] (any
/// protocol): a query that escaped capture and the firewall.
fn count_escapes(world: &World) {
    world.load_nft(
        &world.inet_ns,
        &format!(
            "table inet nettrust_escapes {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  ip daddr {ASKED} counter\n  ip6 daddr {ASKED_V6} counter\n }}\n}}\n"
        ),
    );
}

/// Packets counted by [`count_escapes`].
fn escapes(world: &World) -> u64 {
    let out = world
        .in_ns(&world.inet_ns, "nft")
        .args(["list", "chain", "inet", "nettrust_escapes", "input"])
        .output()
        .expect("nft list");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "packets")
        .map(|w| w[1].parse::<u64>().unwrap())
        .sum()
}

fn python_in_cgroup(world: &World) -> Command {
    world.in_cgroup("python3")
}

/// Every kind of DNS client socket in the daemon's namespace: answered by nettrust (the answer
/// and the grant are the upstream's), shown as coming from the address asked, nothing reaches
/// that address.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn queries_to_any_address_are_answered_by_nettrust() {
    let mut world = World::new();
    count_escapes(&world);
    let client = format!("{}/32", world::CLIENT_V4);
    world.start_daemon(&[
        "--dns-capture",
        "--allow-client",
        "127.0.0.0/8",
        "--allow-client",
        &client,
    ]);
    for mode in ["udp", "connected", "tcp", "sendmmsg"] {
        let reply = ask(python_in_cgroup(&world), mode, ASKED, 53, "a.test")
            .unwrap_or_else(|| panic!("{mode}: no answer\n{}", world.daemon_log()));
        assert_eq!(reply.rcode, 0, "{mode}");
        assert_eq!(reply.answers, [A_TEST], "{mode}");
        assert_eq!(reply.from, ASKED, "{mode}: the answer's source");
        if mode == "connected" || mode == "tcp" {
            assert_eq!(reply.peer, ASKED, "{mode}: getpeername");
        }
    }
    // A socket connected to another port first, then sending to port 53: the datagram is
    // captured too (nettrust answers, authorizing c.test's address; nothing reaches the address
    // asked); the socket, connected elsewhere, cannot receive the answer. Its source is the
    // address of the route to the one it connected to (the client's, allowed above).
    let redirected = ask(python_in_cgroup(&world), "redirected", ASKED, 53, "c.test");
    assert_eq!(redirected, None);
    world.eventually("c.test authorized", Duration::from_secs(5), || {
        world.list().contains(&"192.0.2.12".parse().unwrap())
    });
    // An IPv6 socket asking an IPv4 resolver (IPv4-mapped) goes to the IPv4 listener.
    let mapped = format!("::ffff:{ASKED}");
    let reply = ask(python_in_cgroup(&world), "connected", &mapped, 53, "b.test")
        .expect("IPv4-mapped query answered");
    assert_eq!(reply.answers, ["192.0.2.11"]);
    assert_eq!(
        (reply.from.as_str(), reply.peer.as_str()),
        (&*mapped, &*mapped)
    );
    // The answers authorized their addresses, as for a direct query.
    let listed = world.list();
    assert!(listed.contains(&A_TEST.parse().unwrap()), "{listed:?}");
    assert!(world.reachable_from_cgroup(A_TEST));
    assert_eq!(escapes(&world), 0, "a query reached the address it asked");
}

/// Without `--dns-capture` the same queries go where they were sent and the firewall drops them
/// (nothing arrives); a process outside the cgroup reaches the address, so the counter counts.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn capture_off_changes_nothing() {
    let mut world = World::new();
    count_escapes(&world);
    world.start_daemon(&[]);
    for mode in ["udp", "connected", "tcp"] {
        assert_eq!(
            ask(python_in_cgroup(&world), mode, ASKED, 53, "a.test"),
            None,
            "{mode}"
        );
    }
    assert_eq!(escapes(&world), 0);
    assert!(!world.list().contains(&A_TEST.parse().unwrap()));
    let outside = world.in_ns(&world.client_ns, "python3");
    assert_eq!(ask(outside, "udp", ASKED, 53, "a.test"), None);
    assert!(escapes(&world) > 0, "the escape counter does not count");
}

/// What capture does not cover stays with the default deny: another port, DNS over TLS (853),
/// a raw socket, IPv6 with no IPv6 listener. None is answered and nothing arrives.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn bypasses_stay_blocked() {
    let mut world = World::new();
    count_escapes(&world);
    world.start_daemon(&["--dns-capture"]);
    for (mode, server, port) in [
        ("udp", ASKED, 5353),
        ("tcp", ASKED, 853),
        ("tcp", ASKED, 5353),
        ("udp", ASKED_V6, 53),
        ("tcp", ASKED_V6, 53),
        ("raw", ASKED, 53),
    ] {
        let reply = ask(python_in_cgroup(&world), mode, server, port, "a.test");
        assert_eq!(reply, None, "{mode} to {server} port {port}");
    }
    assert_eq!(escapes(&world), 0, "a bypass reached its destination");
    // Control: the same raw datagram from outside the cgroup arrives.
    let outside = world.in_ns(&world.client_ns, "python3");
    let _ = ask(outside, "raw", ASKED, 53, "a.test");
    assert!(escapes(&world) > 0, "the escape counter does not count");
}

/// A daemon that runs inside the cgroup it filters (as in whole-host mode) forwards to its
/// upstream on port 53 without capturing its own queries: its clients' captured queries are
/// answered from the upstream.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn own_upstream_queries_are_not_captured() {
    let world = World::new();
    let log = world.dir.path().join("inside.log");
    let upstream = format!("{UPSTREAM}:53");
    let child = world
        .in_cgroup(env!("CARGO_BIN_EXE_nettrust"))
        .args(["run", "--listen-addr", "127.0.0.1:53", "--cgroup"])
        .arg(&world.cgroup)
        .arg("--bpffs-dir")
        .arg(&world.bpffs_dir)
        .args(["--firewall-backend", "ebpf", "--dns-capture", "--fwd-addr"])
        .arg(&upstream)
        .env("RUST_LOG", "info,nettrust=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start nettrust");
    let daemon = Stopped(child);
    let started = Instant::now();
    let reply = loop {
        if let Some(reply) = ask(python_in_cgroup(&world), "udp", ASKED, 53, "a.test") {
            break reply;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no answer:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    assert_eq!(
        reply.answers,
        [A_TEST],
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let tcp = ask(python_in_cgroup(&world), "tcp", UPSTREAM, 53, "b.test");
    assert_eq!(
        tcp.map(|r| r.answers),
        Some(vec!["192.0.2.11".to_owned()]),
        "a client may still ask the upstream itself"
    );
    drop(daemon);
}

/// A child process stopped with SIGTERM (and waited for) when dropped.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        while self.0.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(15) {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A "container": its own network namespace, a veth to the client namespace, a default route
/// through it; removed when dropped.
struct Container {
    ns: String,
}

/// The host end of the container's veth (where nettrust listens for it) and the container's.
const HOST_END: &str = "10.231.0.1";
const CONTAINER_END: &str = "10.231.0.2";

impl Container {
    fn new(world: &World) -> Self {
        let ns = format!("ntcap-{}", world.id);
        ip(&format!("netns add {ns}"));
        let this = Self { ns };
        let (host_dev, ctr_dev) = (format!("vh{}", world.id), format!("vc{}", world.id));
        ip(&format!(
            "-n {} link add {host_dev} type veth peer name {ctr_dev} netns {}",
            world.client_ns, this.ns
        ));
        ip(&format!(
            "-n {} addr add {HOST_END}/30 dev {host_dev}",
            world.client_ns
        ));
        ip(&format!("-n {} link set {host_dev} up", world.client_ns));
        ip(&format!(
            "-n {} addr add {CONTAINER_END}/30 dev {ctr_dev}",
            this.ns
        ));
        ip(&format!("-n {} link set {ctr_dev} up", this.ns));
        ip(&format!("-n {} link set lo up", this.ns));
        ip(&format!("-n {} route add default via {HOST_END}", this.ns));
        this
    }

    /// `python3` in the container's namespace and `cgroup`.
    fn python(&self, cgroup: &Path) -> Command {
        join_cgroup(in_netns(&self.ns, "python3"), cgroup)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns])
            .stderr(Stdio::null())
            .status();
    }
}

/// A process of the filtered cgroup in its own network namespace (veth to the daemon's, default
/// route through it) has its queries to any address answered by nettrust's listener on the
/// veth's host end, shown as coming from the address asked.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn container_namespace_queries_are_answered() {
    let mut world = World::new();
    count_escapes(&world);
    let container = Container::new(&world);
    let host_end = format!("{HOST_END}:53");
    world.start_daemon(&["--dns-capture", "--listen-addrs", &host_end]);
    for mode in ["udp", "connected", "tcp"] {
        let reply = ask(container.python(&world.cgroup), mode, ASKED, 53, "a.test")
            .unwrap_or_else(|| panic!("{mode}: no answer\n{}", world.daemon_log()));
        assert_eq!(reply.answers, [A_TEST], "{mode}");
        assert_eq!(reply.from, ASKED, "{mode}");
        if mode != "udp" {
            assert_eq!(reply.peer, ASKED, "{mode}");
        }
    }
    assert!(world.list().contains(&A_TEST.parse().unwrap()));
    assert_eq!(escapes(&world), 0);
}

/// A captured query is judged by the policy of the cgroup that sent it: a name its policy
/// allows is answered, another refused, while the default cgroup gets both.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn captured_query_is_judged_by_its_policy() {
    let mut world = World::with_backend(Backend::Ebpf);
    let strict = world.extra_cgroup("strict");
    let config = world.dir.path().join("nettrust.toml");
    std::fs::write(
        &config,
        format!(
            "dns_capture = true\n[[policy]]\nname = \"strict\"\ncgroups = [\"{}\"]\nallow_domains = [\"a.test\"]\n",
            strict.display()
        ),
    )
    .unwrap();
    world.start_daemon(&["--config", &config.to_string_lossy()]);
    let in_strict = || world.in_cgroup_at(&strict, "python3");
    for mode in ["udp", "tcp"] {
        let allowed = ask(in_strict(), mode, ASKED, 53, "a.test").expect("a.test answered");
        assert_eq!(allowed.answers, [A_TEST], "{mode}");
        let refused = ask(in_strict(), mode, ASKED, 53, "b.test").expect("b.test answered");
        assert_eq!((refused.rcode, refused.answers.len()), (5, 0), "{mode}");
        let default = ask(python_in_cgroup(&world), mode, ASKED, 53, "b.test");
        assert_eq!(
            default.map(|r| r.answers),
            Some(vec!["192.0.2.11".to_owned()]),
            "{mode}"
        );
    }
}

/// The nftables backend cannot capture: asking for both is refused, naming the option.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn nftables_backend_refuses_capture() {
    let world = World::new();
    let err = world.start_fails(&["--dns-capture", "--firewall-backend", "nftables"]);
    assert!(err.contains("--dns-capture"), "{err}");
    assert!(err.contains("eBPF"), "{err}");
}

/// The pin directory's entries of the capture programs and links.
fn capture_pins(world: &World) -> Vec<String> {
    std::fs::read_dir(&world.bpffs_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("dns_"))
        .collect()
}

/// Capture follows the running daemon: a cgroup attached at runtime (`nettrust attach`) is
/// captured too; after a `kill -9`, a restart without capture removes the capture programs and
/// links it left, and queries to other resolvers are blocked again; `status` says which.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn runtime_attach_and_restart_follow_the_daemon() {
    let mut world = World::new();
    count_escapes(&world);
    let late = world.extra_cgroup("late");
    world.start_daemon(&["--dns-capture"]);
    let out = world.nettrust(&["attach", "--cgroup", &late.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = ask(
        world.in_cgroup_at(&late, "python3"),
        "tcp",
        ASKED,
        53,
        "a.test",
    )
    .expect("the attached cgroup's query answered");
    assert_eq!(
        (reply.answers, reply.peer.as_str()),
        (vec![A_TEST.to_owned()], ASKED)
    );
    // Six capture programs, each linked to both cgroups.
    assert!(capture_pins(&world).len() >= 6 + 2 * 6);
    let status =
        |world: &World| String::from_utf8_lossy(&world.nettrust(&["status"]).stdout).into_owned();
    assert!(
        status(&world).contains("dns capture: on"),
        "{}",
        status(&world)
    );
    world.kill_daemon();
    world.start_daemon(&[]);
    assert_eq!(capture_pins(&world), Vec::<String>::new());
    assert!(
        status(&world).contains("dns capture: off"),
        "{}",
        status(&world)
    );
    for cgroup in [&world.cgroup, &late] {
        let reply = ask(
            world.in_cgroup_at(cgroup, "python3"),
            "udp",
            ASKED,
            53,
            "b.test",
        );
        assert_eq!(reply, None, "{}", cgroup.display());
    }
    assert_eq!(escapes(&world), 0);
}

/// With an IPv6 listener, IPv6 queries to any address are captured too (UDP and TCP), shown as
/// coming from the IPv6 address asked.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn ipv6_queries_go_to_the_ipv6_listener() {
    let mut world = World::new();
    count_escapes(&world);
    world.start_daemon(&["--dns-capture", "--listen-addrs", "[::1]:53"]);
    for mode in ["udp", "connected", "tcp"] {
        let reply = ask(python_in_cgroup(&world), mode, ASKED_V6, 53, "a.test")
            .unwrap_or_else(|| panic!("{mode}: no answer\n{}", world.daemon_log()));
        assert_eq!(
            (reply.rcode, reply.answers),
            (0, vec![A_TEST.to_owned()]),
            "{mode}"
        );
        assert_eq!(reply.from, ASKED_V6, "{mode}");
        if mode != "udp" {
            assert_eq!(reply.peer, ASKED_V6, "{mode}");
        }
    }
    assert_eq!(escapes(&world), 0);
}

/// With a cgroup pattern the capture programs run at the pattern's literal ancestor, for every
/// cgroup below it: a cgroup the pattern matches (created after the start) has its query
/// captured, a sibling it does not match is not filtered and asks the resolver it named, where
/// nothing serves DNS.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn only_cgroups_a_pattern_matches_are_captured() {
    let mut world = World::with_backend(Backend::Ebpf);
    let pods = world.extra_cgroup("pods");
    let pattern = format!("{}/app-*", pods.display());
    world.start_daemon(&["--dns-capture", "--cgroup", &pattern]);
    let dirs = world::CgroupDirs(vec![pods.join("app-1"), pods.join("other")]);
    for dir in &dirs.0 {
        std::fs::create_dir(dir).unwrap();
    }
    let (app, other) = (&dirs.0[0], &dirs.0[1]);
    let captured = ask(
        world.in_cgroup_at(app, "python3"),
        "udp",
        ASKED,
        53,
        "a.test",
    )
    .expect("the matching cgroup's query answered");
    assert_eq!(
        (captured.answers, captured.from.as_str()),
        (vec![A_TEST.to_owned()], ASKED)
    );
    assert_eq!(
        ask(
            world.in_cgroup_at(other, "python3"),
            "udp",
            ASKED,
            53,
            "a.test"
        ),
        None,
        "the sibling no pattern matches was captured"
    );
}

/// A filtered process asking nettrust's own upstream by its address (a host whose resolv.conf
/// names the same server, a cluster's DNS service) is captured like any other: answered by the
/// proxy and judged by its policy, never sent past it. Only the proxy's own (marked) sockets go
/// to the upstream.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn queries_to_the_upstreams_own_address_are_captured() {
    let mut world = World::with_backend(Backend::Ebpf);
    let strict = world.extra_cgroup("strict");
    let config = world.dir.path().join("nettrust.toml");
    std::fs::write(
        &config,
        format!(
            "dns_capture = true\n[[policy]]\nname = \"strict\"\ncgroups = [\"{}\"]\nallow_domains = [\"a.test\"]\n",
            strict.display()
        ),
    )
    .unwrap();
    world.start_daemon(&["--config", &config.to_string_lossy()]);
    for mode in ["udp", "tcp"] {
        let in_strict = world.in_cgroup_at(&strict, "python3");
        let refused = ask(in_strict, mode, UPSTREAM, 53, "b.test").expect("b.test answered");
        assert_eq!(
            (refused.rcode, refused.from.as_str()),
            (5, UPSTREAM),
            "{mode}: the policy's refusal, seemingly from the upstream"
        );
        let allowed = ask(python_in_cgroup(&world), mode, UPSTREAM, 53, "b.test")
            .expect("b.test answered for the default policy");
        assert_eq!(allowed.answers, ["192.0.2.11"], "{mode}");
    }
}
