//! The data path as packets from real sockets meet it, on both backends: the kernel's own IPv6
//! link control from a network namespace whose kernel sockets belong to the filtered cgroup,
//! source-routed packets, the upstream DNS server reachable on its DNS port only, and (eBPF)
//! flows opened from outside towards a server of the filtered cgroup, and (eBPF) the egress
//! program's rate-limited debug log. Run with `cargo xtask test`.
#![expect(
    unused_crate_dependencies,
    reason = "a test target sees every dependency of the package and uses only a few of them"
)]

mod world;

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use world::{Backend, World};

/// The link of the namespace created inside the cgroup, to the world's internet namespace.
const INNER_V6: &str = "2001:db8:77::1";
const ROUTER_V6: &str = "2001:db8:77::2";

/// Runs `cmd`, failing the test when it cannot start or runs longer than 20 s.
fn output(cmd: Command) -> Output {
    world::output_within(cmd, Duration::from_secs(20))
}

/// A network namespace created by a process inside the world's filtered cgroup (`unshare -n`), so
/// its kernel sockets (neighbour discovery, MLD, ...) belong to that cgroup, like the host's own
/// belong to the cgroup v2 root. Linked to the internet namespace by a veth; named in /run/netns
/// for `ip -n`. Removed in `Drop`.
struct CgroupNetns {
    name: String,
    holder: Child,
}

impl CgroupNetns {
    fn new(world: &World) -> Self {
        let name = format!("ntw-{}", world.id);
        let mut holder = world
            .in_cgroup("unshare")
            .args(["-n", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start unshare -n");
        let pid = holder.id();
        // unshare execs sleep after creating the namespace.
        let started = Instant::now();
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "sleep\n"
        {
            if started.elapsed() > Duration::from_secs(5) {
                let _ = holder.kill();
                panic!("unshare -n did not start sleep");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        world::ip(&format!("netns attach {name} {pid}"));
        let this = Self { name, holder };
        let (n, i, id) = (&this.name, &world.inet_ns, &world.id);
        for cmd in [
            format!("link add wv{id} netns {n} type veth peer name wi{id} netns {i}"),
            format!("-n {n} link set lo up"),
            // With duplicate address detection: its solicitation is link control too.
            format!("-n {n} -6 addr add {INNER_V6}/64 dev wv{id}"),
            format!("-n {n} link set wv{id} up"),
            format!("-n {i} -6 addr add {ROUTER_V6}/64 dev wi{id} nodad"),
            format!("-n {i} link set wi{id} up"),
        ] {
            world::ip(&cmd);
        }
        let started = Instant::now();
        loop {
            let out = output({
                let mut c = Command::new("ip");
                c.args(["-n", n, "-6", "addr", "show", "tentative"]);
                c
            });
            if out.stdout.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "duplicate address detection did not finish"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        world::ip(&format!("-n {n} -6 route add default via {ROUTER_V6}"));
        this
    }

    /// `program` run in this namespace and the filtered cgroup.
    fn filtered(&self, world: &World, program: &str) -> Command {
        world::join_cgroup(world.in_ns(&self.name, program), &world.cgroup)
    }

    /// The router's neighbour entry, as `ip -6 neigh` shows it.
    fn router_neighbour(&self) -> String {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name, "-6", "neigh", "show", ROUTER_V6]);
        String::from_utf8_lossy(&output(cmd).stdout).into_owned()
    }
}

impl Drop for CgroupNetns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// nettrust started in the namespace `ns` (where the nftables table must live for its sockets to
/// be judged), filtering the world's cgroup. Killed in `Drop` unless stopped.
struct Daemon {
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(world: &World, ns: &str, backend: Backend, config: &str) -> Self {
        Self::start_logging(world, ns, backend, config, "info")
    }

    /// [`Daemon::start`] with `RUST_LOG=rust_log`.
    fn start_logging(
        world: &World,
        ns: &str,
        backend: Backend,
        config: &str,
        rust_log: &str,
    ) -> Self {
        let dir = world.dir.path();
        let config_path = dir.join("datapath.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("datapath-nettrust.log");
        let mut cmd = world.in_ns(ns, env!("CARGO_BIN_EXE_nettrust"));
        cmd.args(["run", "--listen-addr", "127.0.0.1:53", "--cgroup"])
            .arg(&world.cgroup)
            .arg("--bpffs-dir")
            .arg(&world.bpffs_dir)
            .args(["--fwd-addr", &format!("{}:53", world::UPSTREAM)])
            .arg("--config")
            .arg(&config_path)
            .args(match backend {
                Backend::Ebpf => &["--firewall-backend", "ebpf"][..],
                Backend::Nftables => &["--firewall-backend", "nftables"][..],
            })
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        let mut daemon = Self {
            child: Some(cmd.spawn().expect("start nettrust")),
            log,
        };
        let started = Instant::now();
        while !daemon.log().contains("nettrust is running") {
            if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nettrust exited with {status}:\n{}", daemon.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nettrust did not start:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait: the daemon removes its table or pins (flush on exit is the default).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().unwrap();
            assert!(
                status.success(),
                "nettrust exited with {status}:\n{}",
                self.log()
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("nettrust log:\n{}", self.log());
            }
        }
    }
}

/// A TCP connection by `cmd` (socat) to `[addr]:port`: `Ok` with the server's first line, or
/// `Err` with socat's error. Fails the test when socat cannot start.
fn tcp_connect(mut cmd: Command, addr: &str, port: u16) -> Result<String, String> {
    let target = if addr.contains(':') {
        format!("TCP:[{addr}]:{port},connect-timeout=5")
    } else {
        format!("TCP:{addr}:{port},connect-timeout=5")
    };
    cmd.args(["-u", &target, "-"]);
    let out = output(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && !stdout.is_empty() {
        Ok(stdout.trim().to_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            stderr.contains("socat"),
            "socat produced neither output nor an error: {out:?}"
        );
        Err(stderr)
    }
}

/// Runs a python3 script with `cmd` (a `python3` command in some namespace and cgroup) and returns
/// its stdout; the script must exit 0.
fn python(mut cmd: Command, script: &str) -> String {
    cmd.args(["-c", script]);
    let out = output(cmd);
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends one ICMPv6 message of each `(type, destination)` from a raw socket and prints `sent` or
/// the errno name per line (the kernel computes the checksum of ICMPv6 raw sockets).
fn icmp6_sends(cases: &[(u8, &str)]) -> String {
    let list: Vec<String> = cases
        .iter()
        .map(|(kind, dst)| format!("({kind}, '{dst}')"))
        .collect();
    format!(
        r#"
import socket, errno
for kind, dst in [{}]:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    body = bytes([kind, 0, 0, 0]) + bytes(20)
    try:
        s.sendto(body, socket.getaddrinfo(dst, 0, socket.AF_INET6)[0][4])
        print("sent")
    except OSError as e:
        print(errno.errorcode[e.errno])
"#,
        list.join(", ")
    )
}

/// Item: with the filtered cgroup owning a namespace's kernel sockets, IPv6 over a veth works
/// (neighbour discovery resolves the router, a whitelisted global address answers) while an
/// unauthorized global address stays blocked; DHCPv6 to its servers' group leaves; neighbour
/// discovery and echo messages to anything but link-local/multicast addresses do not.
fn ipv6_link_control(backend: Backend) {
    let world = World::with_backend(backend);
    let inner = CgroupNetns::new(&world);
    let mut daemon = Daemon::start(
        &world,
        &inner.name,
        backend,
        "whitelist_private = false\n[whitelist]\nhosts = [\"2001:db8:1::10\"]\n",
    );

    let reply = tcp_connect(inner.filtered(&world, "socat"), "2001:db8:1::10", 8080);
    assert_eq!(
        reply.as_deref(),
        Ok("ok"),
        "TCP over IPv6 to a whitelisted global address from the namespace (neighbour entry: {})",
        inner.router_neighbour()
    );
    let neighbour = inner.router_neighbour();
    assert!(
        neighbour.contains("lladdr"),
        "the router was not resolved: {neighbour:?}"
    );
    let blocked = tcp_connect(inner.filtered(&world, "socat"), "2001:db8:1::99", 8080);
    assert!(
        blocked.is_err(),
        "an unauthorized global address answered: {blocked:?}"
    );

    let wv = format!("wv{}", world.id);
    let dhcp = |port: u16| {
        let script = format!(
            r#"
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 546))
try:
    s.sendto(b"x", socket.getaddrinfo("ff02::1:2%{wv}", {port}, socket.AF_INET6)[0][4])
    print("sent")
except PermissionError:
    print("EPERM")
"#
        );
        python(inner.filtered(&world, "python3"), &script)
    };
    assert_eq!(dhcp(547), "sent\n", "DHCPv6 to ff02::1:2 port 547");
    assert_eq!(dhcp(548), "EPERM\n", "UDP to ff02::1:2 on another port");

    let sends = python(
        inner.filtered(&world, "python3"),
        &icmp6_sends(&[
            (135, &format!("ff02::1:ff00:2%{wv}")),
            (133, &format!("ff02::2%{wv}")),
            (135, "2001:db8:1::99"),
            (136, "2001:db8:1::99"),
            (128, &format!("ff02::1%{wv}")),
        ]),
    );
    assert_eq!(
        sends.lines().collect::<Vec<_>>(),
        ["sent", "sent", "EPERM", "EPERM", "EPERM"],
        "NS and RS to multicast leave; NS/NA to a global address and echo to ff02::1 do not"
    );
    daemon.stop();
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn ebpf_ipv6_link_control_in_a_namespace_of_the_cgroup() {
    ipv6_link_control(Backend::Ebpf);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_ipv6_link_control_in_a_namespace_of_the_cgroup() {
    ipv6_link_control(Backend::Nftables);
}

/// The upstream DNS server is the proxy's alone: the filtered cgroup asking it directly on its
/// DNS port (UDP and TCP) gets nothing, nor does it reach another port; a loose or strict source
/// route through an authorized address to an unauthorized one is refused.
fn upstream_and_source_routes(backend: Backend) {
    let mut world = World::with_backend(backend);
    let config = world.dir.path().join("router.toml");
    std::fs::write(
        &config,
        format!("[whitelist]\nhosts = [\"{}\"]\n", world::INET_V4),
    )
    .unwrap();
    world.start_daemon(&["--config", config.to_str().unwrap()]);
    for tcp in [false, true] {
        let mut cmd = world.in_cgroup("dig");
        cmd.args(["+time=2", "+tries=1", &format!("@{}", world::UPSTREAM)]);
        if tcp {
            cmd.arg("+tcp");
        }
        cmd.args(["+short", "a.test", "A"]);
        let out = output(cmd);
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("192.0.2.10"),
            "the cgroup asked the upstream directly (tcp: {tcp}): {out:?}"
        );
    }
    let other_port = tcp_connect(world.in_cgroup("socat"), world::UPSTREAM, 8080);
    assert!(
        other_port.is_err(),
        "the upstream answered on port 8080: {other_port:?}"
    );
    assert_eq!(
        tcp_connect(
            world.in_ns(&world.client_ns, "socat"),
            world::UPSTREAM,
            8080
        )
        .as_deref(),
        Ok("ok"),
        "outside the cgroup the upstream's port 8080 answers (the server is up)"
    );

    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    let script = r#"
import socket, errno
# The route's first hop is allowed (the authorized 192.0.2.10; for a strict route, which must
# reach it directly, the whitelisted router on the link); the destination is not.
for kind, hop in ((0x83, [192, 0, 2, 10]), (0x89, [198, 51, 100, 2]), (None, None)):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if kind is not None:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([1, kind, 7, 4] + hop))
        dst = "192.0.2.99"
    else:
        dst = "192.0.2.10"
    try:
        s.sendto(b"x", (dst, 9))
        print("sent")
    except OSError as e:
        print(errno.errorcode[e.errno])
"#;
    let sends = python(world.in_cgroup("python3"), script);
    assert_eq!(
        sends.lines().collect::<Vec<_>>(),
        ["EPERM", "EPERM", "sent"],
        "LSRR and SSRR through an authorized first hop are refused; plain UDP to it leaves"
    );
    assert!(world.stop_daemon(), "nettrust failed at exit");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn ebpf_upstream_only_for_the_proxy_and_no_source_routes() {
    upstream_and_source_routes(Backend::Ebpf);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_upstream_only_for_the_proxy_and_no_source_routes() {
    upstream_and_source_routes(Backend::Nftables);
}

/// Tries a TCP `connect` (5 s timeout) to each destination, then a UDP `connect` and `send` to
/// the first, then TCP to `0.0.0.0` and `::` (loopback listeners of its own), printing
/// `connected`, `sent`, `timeout` or the errno name of each step.
const CONNECT_SCRIPT: &str = r#"
import socket, errno, sys
def attempt(kind, family, addr):
    s = socket.socket(family, kind)
    s.settimeout(5)
    try:
        s.connect((addr, 8080))
        print("connected")
        if kind == socket.SOCK_DGRAM:
            s.send(b"x")
            print("sent")
    except socket.timeout:
        print("timeout")
    except OSError as e:
        print(errno.errorcode[e.errno])
for addr in sys.argv[1:]:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    attempt(socket.SOCK_STREAM, family, addr)
attempt(socket.SOCK_DGRAM, socket.AF_INET, sys.argv[1])
# The unspecified address: the kernel connects to loopback (a listener of this script's own).
for family, local, unspecified in ((socket.AF_INET, "127.0.0.1", "0.0.0.0"),
                                   (socket.AF_INET6, "::1", "::")):
    server = socket.socket(family, socket.SOCK_STREAM)
    server.bind((local, 0))
    server.listen()
    client = socket.socket(family, socket.SOCK_STREAM)
    client.settimeout(5)
    try:
        client.connect((unspecified, server.getsockname()[1]))
        print("connected")
    except socket.timeout:
        print("timeout")
    except OSError as e:
        print(errno.errorcode[e.errno])
"#;

/// A TCP connection to an address nobody resolved fails at once, not after the SYN's retries:
/// eBPF refuses `connect` itself (`EPERM`, reported `(connect refused)`), nftables answers the
/// SYN with a reset (`ECONNREFUSED`); for IPv4, an IPv4-mapped IPv6 destination and IPv6. A
/// resolved address connects, UDP `connect` proceeds (it sends nothing; `egress` refuses the
/// datagram), `0.0.0.0` and `::` reach loopback as the kernel makes them, and outside the cgroup
/// nothing is refused.
fn unresolved_connects_fail_at_once(backend: Backend) {
    let mut world = World::with_backend(backend);
    world.start_daemon(&[]);
    let unresolved = ["203.0.113.77", "::ffff:203.0.113.77", "2001:db8:1::77"];
    let run = |cmd: Command, addrs: &[&str]| {
        let mut cmd = cmd;
        cmd.args(["-c", CONNECT_SCRIPT]).args(addrs);
        let out = output(cmd);
        assert!(out.status.success(), "python3 failed: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let refused = match backend {
        Backend::Ebpf => "EPERM",
        Backend::Nftables => "ECONNREFUSED",
    };
    assert_eq!(
        run(world.in_cgroup("python3"), &unresolved),
        [
            refused,
            refused,
            refused,
            "connected",
            "EPERM",
            "connected",
            "connected"
        ],
        "TCP to unresolved addresses (IPv4, IPv4-mapped, IPv6), then UDP connect and send"
    );
    assert_eq!(
        run(world.in_ns(&world.client_ns, "python3"), &unresolved),
        [
            "connected",
            "connected",
            "connected",
            "connected",
            "sent",
            "connected",
            "connected"
        ],
        "outside the cgroup the same destinations answer"
    );
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert_eq!(world.resolve("a.test", "AAAA", false), ["2001:db8:1::10"]);
    assert_eq!(
        run(
            world.in_cgroup("python3"),
            &["192.0.2.10", "2001:db8:1::10"]
        ),
        [
            "connected",
            "connected",
            "connected",
            "sent",
            "connected",
            "connected"
        ],
        "resolved addresses connect"
    );
    if backend == Backend::Ebpf {
        world.eventually(
            "the refused connect in the log",
            Duration::from_secs(5),
            || {
                world
                    .daemon_log()
                    .lines()
                    .any(|l| l.contains("-> 203.0.113.77 port 8080 proto tcp (connect refused)"))
            },
        );
    }
    assert!(world.stop_daemon(), "nettrust failed at exit");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn ebpf_unresolved_connects_fail_at_once() {
    unresolved_connects_fail_at_once(Backend::Ebpf);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_unresolved_connects_fail_at_once() {
    unresolved_connects_fail_at_once(Backend::Nftables);
}

/// Sends one bare TCP ACK from `src`:`sport` to `dst`:`dport` through a raw socket (run in the
/// internet namespace, where every 192.0.2.0/24 address is local: a spoofed source).
fn bare_ack_script(src: &str, sport: u16, dst: &str, dport: u16) -> String {
    format!(
        r#"
import socket, struct
src, dst = "{src}", "{dst}"
def csum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff
tcp = struct.pack("!HHIIBBHHH", {sport}, {dport}, 1000, 2000, 5 << 4, 0x10, 65535, 0, 0)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
s.bind((src, 0))
s.sendto(tcp, (dst, 0))
print("sent")
"#
    )
}

/// Flows opened from outside (eBPF): a server of the cgroup answers its clients; a bare ACK opens
/// nothing; a single (spoofed) UDP datagram lets the server answer for 30 s only, however much
/// it sends; no other local port gets through to that peer.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn ebpf_inbound_flows_are_learned_from_syn_scoped_and_age() {
    let mut world = World::new();
    world.start_daemon(&["--whitelist-private=false"]);
    let me = world::CLIENT_V4;

    // A TCP server in the cgroup (SO_REUSEPORT, so the probe below may share its port).
    let server = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("0.0.0.0", 9000))
s.listen(16)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.sendall(b"hi\n")
    except OSError:
        pass
    c.close()
"#;
    let mut cmd = world.in_cgroup("python3");
    cmd.args(["-u", "-c", server])
        .stdout(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().expect("start the TCP server");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "listening\n");
    let _server = world::Background(child);

    assert_eq!(
        tcp_connect(world.in_ns(&world.inet_ns, "socat"), me, 9000).as_deref(),
        Ok("hi"),
        "a client from the internet gets the cgroup's server's answer"
    );

    // A bare ACK from 192.0.2.98:8080 reaches the listener; it must not let a socket of the
    // cgroup on port 9000 connect out to 192.0.2.98:8080 (the internet's TCP server).
    let probe = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("0.0.0.0", 9000))
s.settimeout(3)
try:
    s.connect(("192.0.2.98", 8080))
    print("connected")
except (PermissionError, TimeoutError):
    # A dropped SYN is retransmitted until the timeout.
    print("blocked")
"#;
    assert_eq!(
        python(
            world.in_ns(&world.inet_ns, "python3"),
            &bare_ack_script("192.0.2.98", 8080, me, 9000)
        ),
        "sent\n"
    );
    assert_eq!(
        python(world.in_cgroup("python3"), probe),
        "blocked\n",
        "a bare ACK opened egress to its source"
    );

    // A single datagram from a spoofed 192.0.2.97:7000 to a UDP socket of the cgroup.
    let udp_server = r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9001))
print("bound", flush=True)
data, peer = s.recvfrom(100)
def send(sock):
    try:
        sock.sendto(b"pong", peer)
        return "sent"
    except PermissionError:
        return "EPERM"
other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
other.bind(("0.0.0.0", 9002))
results = [send(s), send(other)]
time.sleep(20)
results.append(send(s))
time.sleep(12)
results.append(send(s))
print(" ".join(results), flush=True)
"#;
    let mut cmd = world.in_cgroup("python3");
    cmd.args(["-u", "-c", udp_server])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start the UDP server");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line, "bound\n");
    let spoof = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.0.2.97", 7000))
s.sendto(b"ping", ("198.51.100.1", 9001))
print("sent")
"#;
    assert_eq!(
        python(world.in_ns(&world.inet_ns, "python3"), spoof),
        "sent\n"
    );
    let started = Instant::now();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "UDP server failed");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(
        line.trim(),
        "sent EPERM sent EPERM",
        "reply, another local port, after 20 s of the server sending, after 32 s"
    );
    assert!(world.stop_daemon(), "nettrust failed at exit");
}

/// A server in the cgroup answers a client at 192.0.2.11 until a reload blacklists that host (and
/// a network around another client); then neither gets a reply, while another client still does.
fn blacklisted_peers_get_no_replies(backend: Backend) {
    let mut world = World::with_backend(backend);
    let config = world.dir.path().join("blacklist.toml");
    std::fs::write(&config, "").unwrap();
    world.start_daemon(&["--config", config.to_str().unwrap()]);
    let mut server = world.in_cgroup("socat");
    server.args(["TCP-LISTEN:9000,reuseaddr,fork", "SYSTEM:echo hi"]);
    world.spawn_server(server);
    let from = |world: &World, source: &str| {
        // -T 3: with nftables the handshake completes (the SYN-ACK leaves from a request socket,
        // which `socket cgroupv2` does not match) and the server's data is what gets dropped.
        let mut cmd = world.in_ns(&world.inet_ns, "socat");
        cmd.args([
            "-T",
            "3",
            "-u",
            &format!(
                "TCP:{}:9000,bind={source},connect-timeout=3",
                world::CLIENT_V4
            ),
            "-",
        ]);
        // `output` fails the test when socat cannot start; an empty output is no reply (a
        // refused or timed-out connection, or data that never came within 3 s).
        let out = output(cmd);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    world.eventually("the server in the cgroup", Duration::from_secs(5), || {
        from(&world, "192.0.2.11") == "hi"
    });
    assert_eq!(from(&world, "203.0.113.200"), "hi");

    std::fs::write(
        &config,
        "[blacklist]\nhosts = [\"192.0.2.11\"]\nnetworks = [\"203.0.113.128/25\"]\n",
    )
    .unwrap();
    world.signal_daemon(libc::SIGHUP);
    world.eventually("the reload", Duration::from_secs(5), || {
        world.daemon_log().contains("configuration reloaded")
    });
    assert_eq!(
        from(&world, "192.0.2.11"),
        "",
        "a blacklisted host got a reply"
    );
    assert_eq!(
        from(&world, "203.0.113.200"),
        "",
        "a host of a blacklisted network got a reply"
    );
    assert_eq!(from(&world, "192.0.2.12"), "hi", "another client");
    assert!(world.stop_daemon(), "nettrust failed at exit");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn ebpf_blacklisted_peers_get_no_replies() {
    blacklisted_peers_get_no_replies(Backend::Ebpf);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nft_blacklisted_peers_get_no_replies() {
    blacklisted_peers_get_no_replies(Backend::Nftables);
}

/// Sends `count` UDP datagrams from the world's cgroup to 192.0.2.99:9, each with a loose source
/// route through 192.0.2.10 when `source_routed`, and checks every one was refused (EPERM).
/// Returns how long the flood took.
fn udp_flood(world: &World, count: usize, source_routed: bool) -> Duration {
    let options = if source_routed {
        "s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([1, 0x83, 7, 4, 192, 0, 2, 10]))"
    } else {
        ""
    };
    let script = format!(
        r#"
import socket, errno
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
{options}
refused = 0
for _ in range({count}):
    try:
        s.sendto(b"x", ("192.0.2.99", 9))
    except OSError as e:
        if e.errno != errno.EPERM:
            raise
        refused += 1
print(refused)
"#
    );
    let started = Instant::now();
    let refused = python(world.in_cgroup("python3"), &script);
    let took = started.elapsed();
    assert_eq!(
        refused.trim(),
        count.to_string(),
        "datagrams refused of {count} (source-routed: {source_routed})"
    );
    took
}

/// The most records a per-CPU limit of `per_sec` lets through during `took`: every CPU may use a
/// full window in each second the flood touched, plus the one after.
fn rate_bound(per_sec: u64, took: Duration) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as u64;
    (per_sec * cpus * (took.as_secs() + 2)) as usize
}

/// Bytes the egress program pinned in `bpffs_dir` has written into its aya-log ring buffer
/// (`AYA_LOGS`) since it was loaded: the ring's producer position, the first word of the page after
/// the consumer page (kernel/bpf/ringbuf.c), mapped read-only. The daemon's logger only advances
/// the consumer position, so this counts every record the program wrote.
fn aya_log_bytes(bpffs_dir: &Path) -> u64 {
    use std::os::fd::AsFd as _;
    let info = aya::programs::ProgramInfo::from_pin(bpffs_dir.join("prog-egress")).unwrap();
    let id = info
        .map_ids()
        .unwrap()
        .unwrap_or_default()
        .into_iter()
        .find(|id| {
            aya::maps::MapInfo::from_id(*id).is_ok_and(|m| m.name_as_str() == Some("AYA_LOGS"))
        })
        .expect("AYA_LOGS among the egress program's maps");
    let map = aya::maps::MapData::from_id(id).unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    // SAFETY: maps one page of the ring buffer's fd read-only (the kernel allows that for the
    // producer page), read once and unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            page as libc::off_t,
        )
    };
    assert_ne!(
        ptr,
        libc::MAP_FAILED,
        "mmap of AYA_LOGS' producer page: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the mapping is a page long and page-aligned; the kernel updates it concurrently.
    let bytes = unsafe { std::ptr::read_volatile(ptr.cast::<u64>()) };
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(ptr, page) };
    bytes
}

/// Lines of the daemon's log containing `what`.
fn lines_with(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// Without debug logging for the eBPF target (`RUST_LOG=info`) the egress program writes no
/// record, whatever it drops: after 1,000 denied datagrams and 1,000 source-routed ones its log
/// ring buffer is untouched and the daemon's log has no `nettrust::ebpf` line, and the denied
/// events stay within their rate limit.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn ebpf_drop_flood_logs_nothing_from_the_program_without_debug() {
    let world = World::with_backend(Backend::Ebpf);
    let mut daemon = Daemon::start(&world, &world.client_ns, Backend::Ebpf, "");
    let took = udp_flood(&world, 1000, false) + udp_flood(&world, 1000, true);
    // The denied log and the program's log are drained by the same runtime: once the first
    // denied events are logged, any program record written with them would be too.
    let started = Instant::now();
    while lines_with(&daemon.log(), "[Denied]") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no denied event logged:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let log = daemon.log();
    assert_eq!(
        aya_log_bytes(&world.bpffs_dir),
        0,
        "the egress program wrote log records with debug off"
    );
    assert_eq!(
        lines_with(&log, "nettrust::ebpf"),
        0,
        "the egress program logged with debug off:\n{log}"
    );
    let denied = lines_with(&log, "[Denied]");
    let bound = rate_bound(nettrust_common::DENIED_EVENTS_PER_SEC, took);
    eprintln!("{denied} denied events for 2,000 drops in {took:?}");
    assert!(
        denied <= bound,
        "{denied} denied events for 2,000 drops in {took:?} (at most {bound})"
    );
    daemon.stop();
}

/// With `RUST_LOG=info,nettrust::ebpf=debug` the egress program logs the source-routed packets
/// it drops (their denied event names only the first hop), at most `LOG_RECORDS_PER_SEC` per CPU
/// per second: a flood of 1,000 gives a handful of lines, not one per packet.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn ebpf_source_route_flood_debug_log_is_rate_limited() {
    let world = World::with_backend(Backend::Ebpf);
    let mut daemon = Daemon::start_logging(
        &world,
        &world.client_ns,
        Backend::Ebpf,
        "",
        "info,nettrust::ebpf=debug",
    );
    let took = udp_flood(&world, 1000, true);
    let record = "source-routed packet dropped: first hop 192.0.2.10 proto 17 port 9";
    let started = Instant::now();
    while lines_with(&daemon.log(), record) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no debug record of a source-routed drop:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Records still in the ring are drained within this.
    std::thread::sleep(Duration::from_secs(1));
    let log = daemon.log();
    let lines = lines_with(&log, "nettrust::ebpf");
    let bound = rate_bound(nettrust_common::LOG_RECORDS_PER_SEC, took);
    eprintln!("{lines} program log lines for 1,000 source-routed drops in {took:?}");
    assert!(
        aya_log_bytes(&world.bpffs_dir) > 0,
        "the program's records are not counted in its ring buffer"
    );
    assert!(
        lines <= bound,
        "{lines} program log lines for 1,000 source-routed drops in {took:?} (at most {bound}):\n{log}"
    );
    assert_eq!(
        lines,
        lines_with(&log, record),
        "other program records than the source-routed drops:\n{log}"
    );
    daemon.stop();
}

/// Flow records (a first slice: logged at debug level): a refused connect names the process that
/// created the socket and the reason; an allowed new flow to a resolved address names its
/// reason too.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn ebpf_flow_records_name_the_process_and_the_reason() {
    let mut world = World::new();
    world.start_daemon(&[]);
    let mut cmd = world.in_cgroup("python3");
    cmd.args([
        "-c",
        "import os, socket\nprint(os.getpid(), flush=True)\ns = socket.socket()\ntry:\n    s.connect(('203.0.113.77', 8080))\nexcept OSError:\n    pass\n",
    ]);
    let out = output(cmd);
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!pid.is_empty(), "no pid: {out:?}");
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert_eq!(
        tcp_connect(world.in_cgroup("socat"), "192.0.2.10", world::TCP_PORT).as_deref(),
        Ok("ok")
    );
    let denied = format!(
        "pid={pid} comm=python3 dst=203.0.113.77 port=8080 proto=6 reason=no-grant at=connect"
    );
    world.eventually("both flow records", Duration::from_secs(5), || {
        let log = world.daemon_log();
        log.lines()
            .any(|l| l.contains("[Flow] denied") && l.contains(&denied))
            && log.lines().any(|l| {
                l.contains("[Flow] allowed")
                    && l.contains("comm=socat dst=192.0.2.10 port=8080 proto=6 reason=host")
            })
    });
    assert!(world.stop_daemon(), "nettrust failed at exit");
}
