//! Attacks on the DNS proxy, end to end in the test world: off-path spoofed answers, a malicious
//! upstream (forgery matrix), slowloris and connection floods on the TCP listener, and malformed
//! messages. Every attacker runs in a thread that joined one of the world's network namespaces.
//! Run with `cargo xtask test`.

mod world;

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RData, Record, RecordType, rdata::A},
};
use world::World;

/// Runs `f` on a new thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let netns = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only (network namespaces are per thread).
        let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// The daemon's pid (the only process whose command line names the world's bpffs directory).
fn daemon_pid(world: &World) -> u32 {
    let needle = world.bpffs_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains(&needle) && c.contains("run\0")
            })
        })
        .expect("the daemon's pid")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

/// Local ports of the daemon's UDP sockets connected to `upstream` (its namespace's
/// /proc/net/udp, seen through the daemon's pid).
fn upstream_ports(pid: u32, upstream: SocketAddr) -> Vec<u16> {
    let SocketAddr::V4(up) = upstream else {
        return Vec::new();
    };
    let remote = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(up.ip().octets()),
        up.port()
    );
    std::fs::read_to_string(format!("/proc/{pid}/net/udp"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&remote.as_str()))
                .then(|| u16::from_str_radix(f[1].split(':').nth(1)?, 16).ok())
                .flatten()
        })
        .collect()
}

/// An answer for `qname` A with `addr`, QR=1, ID `id`.
fn forged_answer(qname: &str, id: u16, addr: Ipv4Addr) -> Vec<u8> {
    let name = Name::from_str(qname).unwrap();
    let mut m = Message::response(id, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.add_query(Query::query(name.clone(), RecordType::A));
    m.add_answer(Record::from_rdata(name, 3600, RData::A(A(addr))));
    m.to_vec().unwrap()
}

/// A UDP packet from `src` to `dst` with a hand-made IPv4 header (raw socket, IP_HDRINCL): the
/// source address is whatever the attacker claims.
fn send_spoofed(raw: &socket2_free::Raw, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
        return;
    };
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    p.extend_from_slice(payload);
    raw.send_to(&p, *dst.ip());
}

/// A minimal raw IPv4 socket (no extra crate).
mod socket2_free {
    use std::net::Ipv4Addr;

    pub struct Raw(i32);

    impl Raw {
        /// `socket(AF_INET, SOCK_RAW, IPPROTO_RAW)`: the caller writes the IP header.
        pub fn new() -> Self {
            // SAFETY: plain socket(2).
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            Self(fd)
        }

        pub fn send_to(&self, packet: &[u8], dst: Ipv4Addr) {
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: valid buffer and address for sendto(2).
            unsafe {
                libc::sendto(
                    self.0,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
            }
        }
    }

    impl Drop for Raw {
        fn drop(&mut self) {
            // SAFETY: our own fd.
            unsafe { libc::close(self.0) };
        }
    }
}

/// Stops the attacker threads when the test ends, also by a failed assertion.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A tiny xorshift generator: reproducible "random" IDs, ports and bytes without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn u16(&mut self) -> u16 {
        self.next() as u16
    }
}

/// The text without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Forged addresses: inside the world's "internet", reachable if ever authorized.
const FORGED: [&str; 2] = ["192.0.2.66", "192.0.2.67"];

#[test]
#[ignore = "needs root: cargo xtask test"]
fn off_path_spoofed_answers_authorize_nothing() {
    let mut world = World::new();
    world.start_daemon(&[]);
    let pid = daemon_pid(&world);
    let upstream: SocketAddr = format!("{}:53", world::UPSTREAM).parse().unwrap();
    let client_v4: Ipv4Addr = world::CLIENT_V4.parse().unwrap();

    // The attacker knows the name being resolved (the right question) and even the proxy's
    // current upstream-facing ports; it guesses IDs. Three kinds of forgeries, round robin:
    // from its own address to those ports, from the upstream's address and port (spoofed) to
    // those ports, and spoofed to random ports.
    let current = Arc::new(AtomicU32::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_attackers = StopOnDrop(stop.clone());
    let sent = Arc::new(AtomicU64::new(0));
    let ports = Arc::new(std::sync::Mutex::new(Vec::<u16>::new()));
    let attacker = {
        let (current, stop, sent, ports) =
            (current.clone(), stop.clone(), sent.clone(), ports.clone());
        in_netns(&world.inet_ns, move || {
            let raw = socket2_free::Raw::new();
            let own = UdpSocket::bind((world::INET_V4, 0)).unwrap();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            while !stop.load(Ordering::SeqCst) {
                let qname = format!("n{}.test.", current.load(Ordering::SeqCst));
                let known = ports.lock().unwrap().clone();
                for i in 0..64u32 {
                    let forged = FORGED[(i % 2) as usize].parse().unwrap();
                    let payload = forged_answer(&qname, rng.u16(), forged);
                    let known_port = if known.is_empty() {
                        None
                    } else {
                        Some(known[rng.next() as usize % known.len()])
                    };
                    match (i % 3, known_port) {
                        (0, Some(port)) => {
                            let _ = own.send_to(&payload, (client_v4, port));
                        }
                        (1, Some(port)) => send_spoofed(
                            &raw,
                            upstream,
                            SocketAddr::from((client_v4, port)),
                            &payload,
                        ),
                        _ => {
                            let port = 1024 + rng.u16() % 64_000;
                            send_spoofed(
                                &raw,
                                upstream,
                                SocketAddr::from((client_v4, port)),
                                &payload,
                            );
                        }
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };

    let resolutions = 120u32;
    for n in 1..=resolutions {
        current.store(n, Ordering::SeqCst);
        *ports.lock().unwrap() = upstream_ports(pid, upstream);
        let answer = world.resolve(&format!("n{n}.test"), "A", false);
        assert_eq!(
            answer,
            [format!("203.0.113.{n}")],
            "n{n}.test got a forged or no answer"
        );
    }
    stop.store(true, Ordering::SeqCst);
    attacker.join().unwrap();
    let sent = sent.load(Ordering::SeqCst);

    let listed = world.list();
    for forged in FORGED {
        let forged: IpAddr = forged.parse().unwrap();
        assert!(!listed.contains(&forged), "forged {forged} authorized");
        assert!(!world.reachable_from_cgroup(&forged.to_string()));
    }
    assert_eq!(
        listed.len(),
        resolutions as usize,
        "exactly the real answers"
    );
    // The proxy's own count of replies it dropped (logged as dropped_total=N): forgeries that got
    // past the kernel's connected-socket filter and were refused by the ID/question checks.
    let rejected = strip_ansi(&world.daemon_log())
        .split("dropped_total=")
        .skip(1)
        .filter_map(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    eprintln!(
        "spoofing: {resolutions} resolutions, {sent} forged answers sent, {rejected} reached \
         the proxy and were dropped, 0 authorized"
    );
    assert!(
        rejected > 0,
        "no forgery reached the proxy: the test proves nothing"
    );
    assert!(sent >= 10_000, "the flood was too small: {sent}");
    assert!(world.stop_daemon());
}

/// A malicious upstream on INET_V4:5353 (UDP and TCP): the first label of the question picks the
/// misbehaviour.
fn malicious_upstream(stop: Arc<AtomicBool>) -> impl FnOnce() + Send + 'static {
    move || {
        let udp = UdpSocket::bind((world::INET_V4, 5353)).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let tcp = std::net::TcpListener::bind((world::INET_V4, 5353)).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((len, peer)) = udp.recv_from(&mut buf) {
                for reply in misbehave(&buf[..len], false) {
                    let _ = udp.send_to(&reply, peer);
                }
            }
            if let Ok((mut conn, _)) = tcp.accept() {
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut len = [0u8; 2];
                while conn.read_exact(&mut len).is_ok() {
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if conn.read_exact(&mut q).is_err() {
                        break;
                    }
                    for reply in misbehave(&q, true) {
                        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&reply);
                        let _ = conn.write_all(&framed);
                    }
                }
            }
        }
    }
}

/// The replies of the malicious upstream to `query`.
fn misbehave(query: &[u8], tcp: bool) -> Vec<Vec<u8>> {
    let Ok(q) = Message::from_vec(query) else {
        return Vec::new();
    };
    let Some(question) = q.queries.first().cloned() else {
        return Vec::new();
    };
    let qname = question.name.clone();
    let label = qname
        .iter()
        .next()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .unwrap_or_default();
    let a = |owner: &Name, ip: &str| {
        Record::from_rdata(owner.clone(), 60, RData::A(A(ip.parse().unwrap())))
    };
    let cname = |owner: &Name, target: &Name| {
        Record::from_rdata(
            owner.clone(),
            60,
            RData::CNAME(hickory_proto::rr::rdata::CNAME(target.clone())),
        )
    };
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(question.clone());
    let other = Name::from_str("victim.example.").unwrap();
    match label.as_str() {
        "wrongid" => {
            m.metadata.id = q.metadata.id.wrapping_add(1);
            m.add_answer(a(&qname, "192.0.2.80"));
        }
        "wrongq" => {
            m.queries.clear();
            m.add_query(Query::query(other.clone(), RecordType::A));
            m.add_answer(a(&other, "192.0.2.81"));
            m.add_answer(a(&qname, "192.0.2.81"));
        }
        "qr0" => {
            m.metadata.message_type = MessageType::Query;
            m.add_answer(a(&qname, "192.0.2.82"));
        }
        "twoq" => {
            m.add_query(Query::query(other.clone(), RecordType::A));
            m.add_answer(a(&qname, "192.0.2.83"));
        }
        "extra" => {
            // The legitimate record plus unrelated ones in every section.
            m.add_answer(a(&qname, "192.0.2.90"));
            m.add_answer(a(&other, "192.0.2.84"));
            m.add_additional(a(&qname, "192.0.2.85"));
            m.add_authority(a(&qname, "192.0.2.86"));
        }
        "cname" => {
            // A chain that starts at another name, with its end answered.
            let target = Name::from_str("target.example.").unwrap();
            m.add_answer(cname(&other, &target));
            m.add_answer(a(&target, "192.0.2.87"));
        }
        "truncated" => {
            // TC=1 with an address, over UDP and TCP alike: never authorizes.
            m.metadata.truncation = true;
            m.add_answer(a(&qname, "192.0.2.88"));
        }
        "cut" => {
            // The message cut in the middle of its answer record.
            m.add_answer(a(&qname, "192.0.2.89"));
            let mut bytes = m.to_vec().unwrap();
            bytes.truncate(bytes.len() - 3);
            return vec![bytes];
        }
        "forgedfirst" => {
            // Wrong ID first, then the real answer: only the real one counts.
            let mut forged = m.clone();
            forged.metadata.id = q.metadata.id ^ 0x5555;
            forged.add_answer(a(&qname, "192.0.2.91"));
            m.add_answer(a(&qname, "192.0.2.92"));
            return vec![forged.to_vec().unwrap(), m.to_vec().unwrap()];
        }
        _ => {}
    }
    let _ = tcp;
    vec![m.to_vec().unwrap()]
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn forged_upstream_answers_authorize_nothing() {
    let mut world = World::new();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_attackers = StopOnDrop(stop.clone());
    let server = in_netns(&world.inet_ns, malicious_upstream(stop.clone()));
    let upstream = format!("{}:5353", world::INET_V4);
    world.start_daemon_with(&["--fwd-addr", &upstream, "--fwd-timeout-ms", "500"]);

    // (name, addresses it tries to authorize, address legitimately authorized)
    let cases: [(&str, &[&str], Option<&str>); 9] = [
        ("wrongid.evil", &["192.0.2.80"], None),
        ("wrongq.evil", &["192.0.2.81"], None),
        ("qr0.evil", &["192.0.2.82"], None),
        ("twoq.evil", &["192.0.2.83"], None),
        (
            "extra.evil",
            &["192.0.2.84", "192.0.2.85", "192.0.2.86"],
            Some("192.0.2.90"),
        ),
        ("cname.evil", &["192.0.2.87"], None),
        ("truncated.evil", &["192.0.2.88"], None),
        ("cut.evil", &["192.0.2.89"], None),
        ("forgedfirst.evil", &["192.0.2.91"], Some("192.0.2.92")),
    ];
    let mut legit = Vec::new();
    for (name, _, ok) in cases {
        for tcp in [false, true] {
            world.resolve(name, "A", tcp);
        }
        legit.extend(ok.map(|a| a.parse::<IpAddr>().unwrap()));
    }
    let listed = world.list();
    for (name, forged, _) in cases {
        for addr in forged {
            assert!(
                !listed.contains(&addr.parse().unwrap()),
                "{name}: {addr} authorized"
            );
        }
    }
    legit.sort();
    assert_eq!(listed, legit, "only the legitimate records are authorized");
    assert!(!world.reachable_from_cgroup("192.0.2.84"));
    assert!(!world.reachable_from_cgroup("192.0.2.88"));
    assert!(world.reachable_from_cgroup("192.0.2.90"));
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
    assert!(world.stop_daemon());
}

/// A DNS query for `qname` A with ID `id`.
fn query(qname: &str, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(qname).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

fn udp_ask(socket: &UdpSocket, q: &[u8]) -> Option<Vec<u8>> {
    socket.send(q).ok()?;
    let mut buf = [0u8; 4096];
    let len = socket.recv(&mut buf).ok()?;
    Some(buf[..len].to_vec())
}

fn tcp_ask(q: &[u8]) -> Option<Vec<u8>> {
    let mut s =
        TcpStream::connect_timeout(&"127.0.0.1:53".parse().unwrap(), Duration::from_secs(2))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(q);
    s.write_all(&framed).ok()?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut reply).ok()?;
    Some(reply)
}

/// Sockets of `pid` that are accepted connections of its port-53 TCP listener.
fn open_dns_connections(pid: u32) -> usize {
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    // inode of every established socket whose local port is 53
    let inodes: std::collections::HashSet<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1].ends_with(":0035") && f[3] == "01").then(|| f[9].to_owned())
        })
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter(|link| {
                    let link = link.to_string_lossy();
                    link.strip_prefix("socket:[")
                        .and_then(|s| s.strip_suffix(']'))
                        .is_some_and(|inode| inodes.contains(inode))
                })
                .count()
        })
        .unwrap_or(0)
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    if samples.is_empty() {
        return Duration::MAX;
    }
    samples.sort();
    samples[(samples.len() * 99).div_ceil(100) - 1]
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn slowloris_and_connection_flood_leave_queries_answered() {
    let mut world = World::new();
    world.start_daemon(&[]);
    let pid = daemon_pid(&world);
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_attackers = StopOnDrop(stop.clone());
    let opened = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    // Slowloris: 4 × 150 connections that send one byte of a length prefix and then nothing,
    // reopened as soon as the server closes them.
    for _ in 0..4 {
        let (stop, opened) = (stop.clone(), opened.clone());
        attackers.push(in_netns(&world.client_ns, move || {
            let mut conns: Vec<TcpStream> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                conns.retain(|c| {
                    let mut b = [0u8; 1];
                    !matches!(c.peek(&mut b), Ok(0) | Err(_))
                        || matches!(c.peek(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
                });
                while conns.len() < 150 {
                    let Ok(mut c) = TcpStream::connect("127.0.0.1:53") else { break };
                    let _ = c.write_all(&[0]);
                    c.set_nonblocking(true).unwrap();
                    opened.fetch_add(1, Ordering::Relaxed);
                    conns.push(c);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }
    // Connection flood: connect and close, up to ~20,000 a second (on a 2-core machine an
    // unthrottled loop would mostly measure the attacker's own CPU use).
    {
        let (stop, opened) = (stop.clone(), opened.clone());
        attackers.push(in_netns(&world.client_ns, move || {
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                if TcpStream::connect("127.0.0.1:53").is_ok() {
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
                if n % 20 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }));
    }
    // Watch the number of connections the daemon holds.
    let max_open = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, max_open) = (stop.clone(), max_open.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                max_open.fetch_max(open_dns_connections(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));

    // Legitimate clients, meanwhile: 300 UDP and 300 TCP queries, one at a time.
    let (udp_times, tcp_times, failures) = in_netns(&world.client_ns, || {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.connect("127.0.0.1:53").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let (mut udp_times, mut tcp_times, mut failures) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..300u16 {
            let q = query("a.test.", i);
            let t = Instant::now();
            match udp_ask(&udp, &q) {
                Some(r) if r[..2] == q[..2] => udp_times.push(t.elapsed()),
                other => failures.push(format!("UDP {i}: {other:?}")),
            }
            let t = Instant::now();
            match tcp_ask(&q) {
                Some(r) if r[..2] == q[..2] => tcp_times.push(t.elapsed()),
                other => failures.push(format!("TCP {i}: {other:?}")),
            }
        }
        (udp_times, tcp_times, failures)
    })
    .join()
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    for a in attackers {
        a.join().unwrap();
    }
    watcher.join().unwrap();
    let max_open = max_open.load(Ordering::SeqCst);
    let (udp_p99, tcp_p99) = (p99(udp_times.clone()), p99(tcp_times.clone()));
    eprintln!(
        "slowloris: {} attacker connections opened, at most {max_open} held by the daemon; \
         UDP p99 {udp_p99:?} ({} answered), TCP p99 {tcp_p99:?} ({} answered), {} failures",
        opened.load(Ordering::SeqCst),
        udp_times.len(),
        tcp_times.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "legitimate queries failed: {failures:?}"
    );
    assert!(udp_p99 < Duration::from_millis(50), "UDP p99 {udp_p99:?}");
    assert!(tcp_p99 < Duration::from_millis(50), "TCP p99 {tcp_p99:?}");
    let cap = nettrust::dns::server::MAX_TCP_CONNECTIONS;
    assert!(max_open <= cap, "{max_open} connections open, cap {cap}");
    assert!(
        max_open >= cap * 3 / 4,
        "the attack never filled the table ({max_open})"
    );
    assert!(alive(pid));
    assert!(world.stop_daemon());
}

/// Crafted malformed messages: each is a query-shaped byte string the parser must survive.
fn malformed_messages() -> Vec<Vec<u8>> {
    let base = query("a.test.", 0x4242);
    let mut out = Vec::new();
    // Every truncation of a valid query.
    for len in 0..base.len() {
        out.push(base[..len].to_vec());
    }
    let header = |qd: u16, an: u16, ns: u16, ar: u16| {
        let mut h = vec![0x12, 0x34, 0x01, 0x00];
        for c in [qd, an, ns, ar] {
            h.extend_from_slice(&c.to_be_bytes());
        }
        h
    };
    // Compression loops and bad pointers in the question name.
    for ptr in [12u16, 13, 0, 11, 0x3fff, 200] {
        let mut m = header(1, 0, 0, 0);
        m.extend_from_slice(&(0xc000 | ptr).to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 1]);
        out.push(m);
        // label then a pointer back to that label
        let mut m = header(1, 0, 0, 0);
        m.extend_from_slice(&[1, b'a']);
        m.extend_from_slice(&(0xc000 | ptr).to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 1]);
        out.push(m);
    }
    // Bad label lengths: longer than the rest, reserved 0x40/0x80 types, over 63.
    for len in [1u8, 20, 63, 64, 0x40, 0x80, 0xbf, 0xff] {
        let mut m = header(1, 0, 0, 0);
        m.push(len);
        m.extend_from_slice(b"abc");
        out.push(m);
    }
    // A name over 255 bytes.
    let mut m = header(1, 0, 0, 0);
    for _ in 0..5 {
        m.push(63);
        m.extend_from_slice(&[b'x'; 63]);
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    out.push(m);
    // Wrong counts around a valid question.
    for (qd, an, ns, ar) in [
        (0, 0, 0, 0),
        (2, 0, 0, 0),
        (0xffff, 0, 0, 0),
        (1, 0xffff, 0, 0),
        (1, 0, 0xffff, 0),
        (1, 0, 0, 0xffff),
        (1, 1, 0, 0),
        (1, 0, 0, 1),
        (0xffff, 0xffff, 0xffff, 0xffff),
    ] {
        let mut m = header(qd, an, ns, ar);
        m.extend_from_slice(&base[12..]);
        out.push(m);
    }
    // Truncated records after the question: an answer / OPT record cut at every byte.
    let mut with_opt = header(1, 0, 0, 1);
    with_opt.extend_from_slice(&base[12..]);
    let opt = [
        0u8, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 8, 0, 10, 0, 4, 1, 2, 3, 4,
    ];
    for cut in 0..=opt.len() {
        let mut m = with_opt.clone();
        m.extend_from_slice(&opt[..cut]);
        out.push(m);
    }
    let mut with_an = header(1, 1, 0, 0);
    with_an.extend_from_slice(&base[12..]);
    let rr = [0xc0u8, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 99];
    for cut in 0..=rr.len() {
        let mut m = with_an.clone();
        m.extend_from_slice(&rr[..cut]);
        out.push(m);
    }
    // OPT with an rdlength beyond the message.
    let mut m = with_opt.clone();
    m.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0xff, 0xff]);
    out.push(m);
    // Opcodes, flags, QR=1 (responses must not be answered), rcodes.
    for flags in [
        0x0100u16, 0x8000, 0x8100, 0x7800, 0x2800, 0x0900, 0x010f, 0xffff, 0x0170,
    ] {
        let mut m = base.clone();
        m[2..4].copy_from_slice(&flags.to_be_bytes());
        out.push(m);
    }
    // Pseudo-random garbage and random bit flips of the valid query.
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    while out.len() < 600 {
        let mut m = base.clone();
        for _ in 0..1 + rng.next() % 4 {
            let i = rng.next() as usize % m.len();
            m[i] ^= 1 << (rng.next() % 8);
        }
        out.push(m);
        let len = 12 + rng.next() as usize % 80;
        out.push((0..len).map(|_| rng.next() as u8).collect());
    }
    out
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn malformed_messages_leave_the_daemon_answering() {
    let mut world = World::new();
    world.start_daemon(&[]);
    let pid = daemon_pid(&world);
    let messages = malformed_messages();
    let count = messages.len();
    let (udp_replies, tcp_replies) = in_netns(&world.client_ns, move || {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.connect("127.0.0.1:53").unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(2)))
            .unwrap();
        let mut udp_replies = 0;
        let mut buf = [0u8; 4096];
        for m in &messages {
            let _ = udp.send(m);
            while udp.recv(&mut buf).is_ok() {
                udp_replies += 1;
            }
        }
        // Over TCP: 20 messages per connection, framed; plus frames lying about their length.
        let mut tcp_replies = 0;
        for chunk in messages.chunks(20) {
            let Ok(mut s) = TcpStream::connect("127.0.0.1:53") else {
                continue;
            };
            let mut stream = Vec::new();
            for m in chunk {
                stream.extend_from_slice(&(m.len() as u16).to_be_bytes());
                stream.extend_from_slice(m);
            }
            // A last frame announcing more than is sent.
            stream.extend_from_slice(&[0xff, 0xff, 1, 2, 3]);
            let _ = s.write_all(&stream);
            let _ = s.shutdown(std::net::Shutdown::Write);
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut replies = Vec::new();
            let _ = s.read_to_end(&mut replies);
            let mut rest = replies.as_slice();
            while rest.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                if rest.len() < 2 + len {
                    break;
                }
                tcp_replies += 1;
                rest = &rest[2 + len..];
            }
        }
        (udp_replies, tcp_replies)
    })
    .join()
    .unwrap();
    assert!(alive(pid), "the daemon died:\n{}", world.daemon_log());
    assert!(
        !world.daemon_log().contains("panicked"),
        "{}",
        world.daemon_log()
    );
    // Still answering, over both transports, and still authorizing.
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert_eq!(world.resolve("b.test", "A", true), ["192.0.2.11"]);
    assert!(world.reachable_from_cgroup("192.0.2.11"));
    eprintln!(
        "malformed: {count} messages over UDP and over TCP ({} sent in all); \
         {udp_replies} UDP and {tcp_replies} TCP replies; daemon alive and answering",
        count * 2
    );
    assert!(count >= 500);
    assert!(world.stop_daemon());
}
