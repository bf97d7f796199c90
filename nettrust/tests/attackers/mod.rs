//! The attackers of `attack.rs`: namespace threads, raw-socket spoofing, a scripted malicious
//! upstream, crafted malformed messages, and what the tests read of the daemon (/proc).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RData, Record, RecordType, rdata::A},
};

use crate::world::{self, World};

/// Runs `f` on a new thread inside network namespace `ns`.
pub fn in_netns<T: Send + 'static>(
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
pub fn daemon_pid(world: &World) -> u32 {
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

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

/// Local ports of the daemon's UDP sockets connected to `upstream` (its namespace's
/// /proc/net/udp, seen through the daemon's pid).
pub fn upstream_ports(pid: u32, upstream: SocketAddr) -> Vec<u16> {
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
pub fn forged_answer(qname: &str, id: u16, addr: Ipv4Addr) -> Vec<u8> {
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
pub fn send_spoofed(raw: &socket2_free::Raw, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
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
pub mod socket2_free {
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
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A tiny xorshift generator: reproducible "random" IDs, ports and bytes without a crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn u16(&mut self) -> u16 {
        self.next() as u16
    }
}

/// The text without terminal colour sequences (`ESC [ ... m`).
pub fn strip_ansi(text: &str) -> String {
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
pub const FORGED: [&str; 2] = ["192.0.2.66", "192.0.2.67"];

/// A malicious upstream on INET_V4:5353 (UDP and TCP): the first label of the question picks the
/// misbehaviour.
pub fn malicious_upstream(stop: Arc<AtomicBool>) -> impl FnOnce() + Send + 'static {
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
pub fn misbehave(query: &[u8], tcp: bool) -> Vec<Vec<u8>> {
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

/// A DNS query for `qname` A with ID `id`.
pub fn query(qname: &str, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(qname).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

pub fn udp_ask(socket: &UdpSocket, q: &[u8]) -> Option<Vec<u8>> {
    socket.send(q).ok()?;
    let mut buf = [0u8; 4096];
    let len = socket.recv(&mut buf).ok()?;
    Some(buf[..len].to_vec())
}

pub fn tcp_ask(q: &[u8]) -> Option<Vec<u8>> {
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

/// TCP connections on port 53 the process `pid` holds open: (established, established or in
/// CLOSE_WAIT). A connection-flood client closes right after connecting, so many of the
/// connections the daemon holds wait in CLOSE_WAIT until it reads the end of the stream.
pub fn open_dns_connections(pid: u32) -> (usize, usize) {
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    // inode and state (01 ESTABLISHED, 08 CLOSE_WAIT) of every socket whose local port is 53
    let states: std::collections::HashMap<String, bool> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1].ends_with(":0035") && (f[3] == "01" || f[3] == "08"))
                .then(|| (f[9].to_owned(), f[3] == "01"))
        })
        .collect();
    let held: Vec<bool> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy();
                    let inode = link.strip_prefix("socket:[")?.strip_suffix(']')?;
                    states.get(inode).copied()
                })
                .collect()
        })
        .unwrap_or_default();
    (
        held.iter().filter(|&&established| established).count(),
        held.len(),
    )
}

pub fn p99(mut samples: Vec<Duration>) -> Duration {
    if samples.is_empty() {
        return Duration::MAX;
    }
    samples.sort();
    samples[(samples.len() * 99).div_ceil(100) - 1]
}

/// Crafted malformed messages: each is a query-shaped byte string the parser must survive.
pub fn malformed_messages() -> Vec<Vec<u8>> {
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

/// A UDP upstream on INET_V4:`port` that answers every question with `marker`, except names
/// ending in `slow.test` unless `answer_slow` (a zone slow or broken from this upstream). Counts
/// the questions it answered; `ready` gets a message once it is bound.
pub fn slow_zone_upstream(
    port: u16,
    marker: Ipv4Addr,
    answer_slow: bool,
    stop: Arc<AtomicBool>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
    ready: std::sync::mpsc::Sender<()>,
) -> impl FnOnce() + Send + 'static {
    move || {
        let socket = UdpSocket::bind((world::INET_V4, port)).expect("bind the scripted upstream");
        let _ = ready.send(());
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::SeqCst) {
            let Ok((len, peer)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let Ok(q) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let Some(question) = q.queries.first().cloned() else {
                continue;
            };
            if !answer_slow && question.name.to_ascii().ends_with("slow.test.") {
                continue;
            }
            let mut m = Message::response(q.metadata.id, OpCode::Query);
            m.metadata.recursion_desired = q.metadata.recursion_desired;
            m.metadata.recursion_available = true;
            m.add_query(question.clone());
            if question.query_type == RecordType::A {
                m.add_answer(Record::from_rdata(
                    question.name.clone(),
                    60,
                    RData::A(A(marker)),
                ));
            }
            answered.fetch_add(1, Ordering::Relaxed);
            let _ = socket.send_to(&m.to_vec().unwrap(), peer);
        }
    }
}
