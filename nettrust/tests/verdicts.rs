//! The eBPF verdict matrix: synthetic packets run through the programs the daemon loaded, pinned
//! and attached (`BPF_PROG_TEST_RUN` on the pinned `prog-egress`/`prog-ingress`), each with the
//! verdict it must get. The maps are the daemon's own, filled by real DNS answers through the world's
//! dnsmasq, by the configured whitelists and blacklists, and (for expired and directly inserted
//! entries) by writes into the pinned host maps. Run with `cargo xtask test`.
#![expect(
    unused_crate_dependencies,
    reason = "a test target sees every dependency of the package and uses only a few of them"
)]

mod world;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::Path,
    str::FromStr,
    time::Duration,
};

use aya::{
    maps::{Array, HashMap, Map, MapData},
    programs::{CgroupSkb, CgroupSkbAttachType, TestRun as _, TestRunOptions},
};
use nettrust_common::{
    CONFIG_DROP_INPUT, FLAG_AUTHORIZED, HostValue, InboundKey, InboundValue, MAP_CONFIG,
    MAP_HOSTS_V6, MAP_INBOUND, UPSTREAM_MARK,
};
use world::World;

const ALLOW: u32 = 1;
const DROP: u32 = 0;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// The pinned `cgroup_skb` program `name` (`egress` or `ingress`) of the daemon in `dir`.
fn open_program(dir: &Path, name: &str) -> CgroupSkb {
    let attach_type = match name {
        "egress" => CgroupSkbAttachType::Egress,
        _ => CgroupSkbAttachType::Ingress,
    };
    CgroupSkb::from_pin(dir.join(format!("prog-{name}")), attach_type)
        .unwrap_or_else(|e| panic!("open prog-{name} in {}: {e}", dir.display()))
}

/// Runs `prog` once on `frame` (Ethernet header + packet) and returns its return value. With
/// `ifindex`, the skb comes from that device (a `struct __sk_buff` context up to `ifindex`).
fn test_run(prog: &CgroupSkb, frame: &[u8], ifindex: u32) -> u32 {
    test_run_marked(prog, frame, ifindex, 0)
}

/// [`test_run`] of a packet carrying the socket mark `mark`.
fn test_run_marked(prog: &CgroupSkb, frame: &[u8], ifindex: u32, mark: u32) -> u32 {
    let mut out = vec![0u8; frame.len() + 256];
    // struct __sk_buff up to and including `ifindex` (offset 40), `mark` at offset 8; everything
    // else must be zero.
    let mut ctx = [0u8; 44];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    ctx[40..].copy_from_slice(&ifindex.to_ne_bytes());
    let result = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: (ifindex != 0 || mark != 0).then_some(&ctx[..]),
        ..TestRunOptions::default()
    });
    match result {
        Ok(result) => result.return_value,
        Err(e) => panic!(
            "BPF_PROG_TEST_RUN on {} bytes (ifindex {ifindex}): {e}",
            frame.len()
        ),
    }
}

fn ether(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Transport header: ports for TCP/UDP (20 bytes), a bare 8-byte header otherwise.
fn l4(proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.resize(if proto == TCP { 20 } else { 8 }, 0);
    if proto == TCP {
        h[12] = 5 << 4;
        h[13] = 0x02; // SYN
    }
    h
}

fn v4_with(src: &str, dst: &str, proto: u8, sport: u16, dport: u16, frag: u16) -> Vec<u8> {
    let body = l4(proto, sport, dport);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(20 + body.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1]);
    ip.extend_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&[64, proto, 0, 0]);
    ip.extend_from_slice(&Ipv4Addr::from_str(src).unwrap().octets());
    ip.extend_from_slice(&Ipv4Addr::from_str(dst).unwrap().octets());
    ip.extend_from_slice(&body);
    ether(0x0800, &ip)
}

fn v4(dst: &str, proto: u8, dport: u16) -> Vec<u8> {
    v4_with(world::CLIENT_V4, dst, proto, 40000, dport, 0)
}

fn v6_with(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let body = l4(proto, sport, dport);
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(body.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[proto, 64]);
    ip.extend_from_slice(&Ipv6Addr::from_str(src).unwrap().octets());
    ip.extend_from_slice(&Ipv6Addr::from_str(dst).unwrap().octets());
    ip.extend_from_slice(&body);
    ether(0x86DD, &ip)
}

/// An IPv6 packet whose transport header follows `headers`, extension headers given as (type,
/// bytes after the next-header octet); each one's next-header octet is filled in here.
fn v6_ext(
    src: &str,
    dst: &str,
    headers: &[(u8, Vec<u8>)],
    proto: u8,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut payload = Vec::new();
    for (i, (_, rest)) in headers.iter().enumerate() {
        payload.push(headers.get(i + 1).map_or(proto, |(next, _)| *next));
        payload.extend_from_slice(rest);
    }
    payload.extend_from_slice(&l4(proto, sport, dport));
    let first = headers.first().map_or(proto, |(t, _)| *t);
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[first, 64]);
    ip.extend_from_slice(&Ipv6Addr::from_str(src).unwrap().octets());
    ip.extend_from_slice(&Ipv6Addr::from_str(dst).unwrap().octets());
    ip.extend_from_slice(&payload);
    ether(0x86DD, &ip)
}

/// A hop-by-hop options header of 8 octets (a PadN option) and a fragment header with fragment
/// offset `offset` (in 8-octet units; more-fragments set), without their next-header octets.
fn hop_by_hop() -> (u8, Vec<u8>) {
    (0, vec![0, 1, 4, 0, 0, 0, 0])
}
fn fragment(offset: u16) -> (u8, Vec<u8>) {
    let field = (offset << 3) | 1;
    let [hi, lo] = field.to_be_bytes();
    (44, vec![0, hi, lo, 0, 0, 0, 7])
}

/// An IPv4 packet with 4 octets of options (IHL 6: a NOP NOP NOP EOL option list).
fn v4_options(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let body = l4(proto, sport, dport);
    let mut ip = vec![0x46, 0];
    ip.extend_from_slice(&(24 + body.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&Ipv4Addr::from_str(src).unwrap().octets());
    ip.extend_from_slice(&Ipv4Addr::from_str(dst).unwrap().octets());
    ip.extend_from_slice(&[1, 1, 1, 0]);
    ip.extend_from_slice(&body);
    ether(0x0800, &ip)
}

/// An ICMP error (`kind`, `code`) from `router` to `dst` quoting the IP header and the first 8
/// transport octets of `quoted` (an Ethernet frame as built above), as RFC 792 routers send it.
fn icmp4_error(router: &str, dst: &str, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut body = vec![kind, code, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&quoted[14..14 + 28]);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(20 + body.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, ICMP, 0, 0]);
    ip.extend_from_slice(&Ipv4Addr::from_str(router).unwrap().octets());
    ip.extend_from_slice(&Ipv4Addr::from_str(dst).unwrap().octets());
    ip.extend_from_slice(&body);
    ether(0x0800, &ip)
}

/// The same for ICMPv6 (`kind` 2 = packet too big, with an MTU of 1280), quoting the IPv6 header
/// and 8 transport octets.
fn icmp6_error(router: &str, dst: &str, kind: u8, quoted: &[u8]) -> Vec<u8> {
    let mut body = vec![kind, 0, 0, 0, 0, 0, 5, 0];
    body.extend_from_slice(&quoted[14..14 + 48]);
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(body.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[ICMPV6, 64]);
    ip.extend_from_slice(&Ipv6Addr::from_str(router).unwrap().octets());
    ip.extend_from_slice(&Ipv6Addr::from_str(dst).unwrap().octets());
    ip.extend_from_slice(&body);
    ether(0x86DD, &ip)
}

/// Sets the programs' drop-input switch in the pinned `CONFIG` map.
fn set_drop_input(dir: &Path, on: bool) {
    let data = MapData::from_pin(dir.join(MAP_CONFIG)).unwrap();
    let mut config: Array<MapData, u32> = Array::try_from(Map::Array(data)).unwrap();
    config.set(CONFIG_DROP_INPUT, u32::from(on), 0).unwrap();
}

fn v6(dst: &str, proto: u8, dport: u16) -> Vec<u8> {
    v6_with(world::CLIENT_V6, dst, proto, 40000, dport)
}

/// Writes a host entry straight into the pinned map, as an authorization would.
fn insert_host(dir: &Path, addr: IpAddr, expires_ns: u64) {
    let value = HostValue {
        expires_ns,
        last_seen_ns: 0,
        flags: FLAG_AUTHORIZED,
        _pad: 0,
    };
    match addr {
        IpAddr::V4(a) => {
            // The IPv4 table is memory-mapped; the daemon is idle while the test writes.
            let table = nettrust::firewall::ebpf::open_table(dir, true).unwrap();
            table.insert(a.octets(), &value, false).unwrap();
        }
        IpAddr::V6(a) => {
            let data = MapData::from_pin(dir.join(MAP_HOSTS_V6)).unwrap();
            let mut map: HashMap<MapData, [u8; 16], HostValue> =
                HashMap::try_from(Map::HashMap(data)).unwrap();
            map.insert(a.octets(), value, 0).unwrap();
        }
    }
}

fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn ebpf_verdict_matrix() {
    let mut world = World::new();
    let config = world.dir.path().join("verdicts.toml");
    std::fs::write(
        &config,
        "whitelist_private = false\n\
         [whitelist]\nhosts = [\"192.0.2.50\"]\n\
         networks = [\"10.20.0.0/16\", \"2001:db8:ab::/48\"]\n\
         [blacklist]\nhosts = [\"192.0.2.11\", \"2001:db8:1::11\"]\ndomains = [\"n7.test\"]\n",
    )
    .unwrap();
    world.start_daemon(&["--config", config.to_str().unwrap()]);

    // Real answers authorize a.test (v4 and v6) and c.test through alias.test's CNAME; b.test's
    // addresses are blacklisted hosts, n7.test a blacklisted domain, zero.test answers 0.0.0.0.
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert_eq!(world.resolve("a.test", "AAAA", true), ["2001:db8:1::10"]);
    assert_eq!(
        world.resolve("alias.test", "A", false),
        ["c.test.", "192.0.2.12"]
    );
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    assert_eq!(world.resolve("b.test", "AAAA", false), ["2001:db8:1::11"]);
    assert!(world.resolve("n7.test", "A", false).is_empty());
    world.resolve("zero.test", "A", false);
    // Entries written straight into the maps: expired ones, and a live one nobody resolved.
    // (The IPv4 table keeps deadlines to 134 ms, rounded up: these expired a second ago.)
    let now = boottime_ns();
    for (addr, expires) in [
        ("192.0.2.200", now - 1_000_000_000),
        ("10.20.9.9", now - 1_000_000_000),
        ("2001:db8:1::200", now - 1_000_000_000),
        ("192.0.2.201", now + 3_600_000_000_000),
        ("2001:db8:1::201", 0),
    ] {
        insert_host(&world.bpffs_dir, addr.parse().unwrap(), expires);
    }

    let egress = open_program(&world.bpffs_dir, "egress");
    let ingress = open_program(&world.bpffs_dir, "ingress");
    // The veth in the client namespace: an skb "received" on it is not loopback traffic.
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &world.client_ns,
            "-o",
            "link",
            "show",
            &format!("vc{}", world.id),
        ])
        .output()
        .unwrap();
    let veth: u32 = String::from_utf8_lossy(&out.stdout)
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("ifindex of the client veth");

    // Run the matrix in a thread inside the client namespace, so `ifindex` names its veth.
    let netns = std::fs::File::open(format!("/run/netns/{}", world.client_ns)).unwrap();
    let failures = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only (network namespaces are per thread).
            assert_eq!(
                unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let out = |frame: Vec<u8>| test_run(&egress, &frame, 0);
            let inn = |frame: Vec<u8>| test_run(&ingress, &frame, veth);
            let mut truncated_v4 = v4("192.0.2.10", TCP, 443);
            // BPF_PROG_TEST_RUN refuses packets shorter than their IP header (as the stack never
            // hands the program one): cut after the IP header, inside the ports.
            truncated_v4.truncate(14 + 20 + 3);
            let mut truncated_v6 = v6("2001:db8:1::10", TCP, 443);
            truncated_v6.truncate(14 + 40);
            let mut no_ports_v4 = v4("192.0.2.10", TCP, 443);
            no_ports_v4[14] = 0x4f; // IHL 15: the ports would lie beyond the packet
            let mut no_ports_v6 = v6("2001:db8:1::10", UDP, 53);
            no_ports_v6.truncate(14 + 40 + 2);
            let mut cases: Vec<(&str, u32, u32)> = vec![
                (
                    "v4 TCP to a resolved address",
                    out(v4("192.0.2.10", TCP, 443)),
                    ALLOW,
                ),
                (
                    "v4 UDP to a resolved address",
                    out(v4("192.0.2.10", UDP, 53)),
                    ALLOW,
                ),
                (
                    "v4 ICMP to a resolved address",
                    out(v4("192.0.2.10", ICMP, 0)),
                    ALLOW,
                ),
                (
                    "v4 through a CNAME chain",
                    out(v4("192.0.2.12", TCP, 80)),
                    ALLOW,
                ),
                ("v4 never resolved", out(v4("192.0.2.99", TCP, 443)), DROP),
                (
                    "v4 never resolved, UDP",
                    out(v4("192.0.2.99", UDP, 53)),
                    DROP,
                ),
                (
                    "v4 blacklisted host in an answer",
                    out(v4("192.0.2.11", TCP, 443)),
                    DROP,
                ),
                (
                    "v4 of a blacklisted domain",
                    out(v4("203.0.113.7", TCP, 443)),
                    DROP,
                ),
                (
                    "v4 unspecified from an answer",
                    out(v4("0.0.0.0", TCP, 443)),
                    DROP,
                ),
                (
                    "v4 whitelisted host",
                    out(v4("192.0.2.50", TCP, 443)),
                    ALLOW,
                ),
                (
                    "v4 whitelisted network",
                    out(v4("10.20.3.4", TCP, 443)),
                    ALLOW,
                ),
                (
                    "v4 next to the whitelisted network",
                    out(v4("10.21.0.1", TCP, 443)),
                    DROP,
                ),
                (
                    "v4 private, whitelist_private off",
                    out(v4("192.168.1.1", TCP, 443)),
                    DROP,
                ),
                (
                    "v4 loopback (listen address)",
                    out(v4("127.0.0.1", UDP, 53)),
                    ALLOW,
                ),
                ("v4 expired entry", out(v4("192.0.2.200", TCP, 443)), DROP),
                (
                    "v4 expired entry in a whitelisted network",
                    out(v4("10.20.9.9", TCP, 443)),
                    ALLOW,
                ),
                (
                    "v4 live entry in the map",
                    out(v4("192.0.2.201", TCP, 443)),
                    ALLOW,
                ),
                (
                    "v4 resolved source, unresolved destination",
                    out(v4_with("192.0.2.10", "192.0.2.99", TCP, 1, 443, 0)),
                    DROP,
                ),
                (
                    "v4 later fragment to a resolved address",
                    out(v4_with(world::CLIENT_V4, "192.0.2.10", UDP, 1, 2, 185)),
                    ALLOW,
                ),
                (
                    "v4 later fragment never resolved",
                    out(v4_with(world::CLIENT_V4, "192.0.2.99", UDP, 1, 2, 185)),
                    DROP,
                ),
                ("v4 ports cut off", out(truncated_v4), DROP),
                (
                    "v4 ports beyond the packet (IHL 15)",
                    out(no_ports_v4),
                    DROP,
                ),
                (
                    "v6 TCP to a resolved address",
                    out(v6("2001:db8:1::10", TCP, 443)),
                    ALLOW,
                ),
                (
                    "v6 UDP to a resolved address",
                    out(v6("2001:db8:1::10", UDP, 53)),
                    ALLOW,
                ),
                (
                    "v6 never resolved",
                    out(v6("2001:db8:1::99", TCP, 443)),
                    DROP,
                ),
                (
                    "v6 ICMPv6 never resolved",
                    out(v6("2001:db8:1::99", ICMPV6, 0)),
                    DROP,
                ),
                (
                    "v6 blacklisted host in an answer",
                    out(v6("2001:db8:1::11", TCP, 443)),
                    DROP,
                ),
                (
                    "v6 whitelisted network",
                    out(v6("2001:db8:ab:1::1", TCP, 443)),
                    ALLOW,
                ),
                (
                    "v6 next to the whitelisted network",
                    out(v6("2001:db8:ac::1", TCP, 443)),
                    DROP,
                ),
                (
                    "v6 expired entry",
                    out(v6("2001:db8:1::200", TCP, 443)),
                    DROP,
                ),
                (
                    "v6 entry that never expires",
                    out(v6("2001:db8:1::201", TCP, 443)),
                    ALLOW,
                ),
                (
                    "v6 v4-mapped form of a v4 authorization",
                    out(v6("::ffff:192.0.2.10", TCP, 443)),
                    DROP,
                ),
                ("v6 no transport header at all", out(truncated_v6), DROP),
                ("v6 ports cut in half", out(no_ports_v6), DROP),
                ("ARP (non-IP)", out(ether(0x0806, &[0u8; 28])), ALLOW),
                ("LLDP (non-IP)", out(ether(0x88cc, &[0u8; 32])), ALLOW),
            ];
            // Inbound flows: a reply is allowed only to the peer and ports that opened the flow.
            let reply_v4 = || v4_with(world::CLIENT_V4, "192.0.2.99", TCP, 8080, 5555, 0);
            let reply_v6 = || v6_with(world::CLIENT_V6, "2001:db8:1::99", TCP, 8080, 5555);
            cases.push(("v4 reply before any inbound packet", out(reply_v4()), DROP));
            cases.push((
                "v4 inbound connection (drop_input off)",
                inn(v4_with("192.0.2.99", world::CLIENT_V4, TCP, 5555, 8080, 0)),
                ALLOW,
            ));
            cases.push(("v4 reply to the inbound flow", out(reply_v4()), ALLOW));
            cases.push((
                "v4 same peer, another port",
                out(v4_with(world::CLIENT_V4, "192.0.2.99", TCP, 8080, 5556, 0)),
                DROP,
            ));
            cases.push((
                "v4 same peer and ports, UDP",
                out(v4_with(world::CLIENT_V4, "192.0.2.99", UDP, 8080, 5555, 0)),
                DROP,
            ));
            cases.push(("v6 reply before any inbound packet", out(reply_v6()), DROP));
            cases.push((
                "v6 inbound connection",
                inn(v6_with("2001:db8:1::99", world::CLIENT_V6, TCP, 5555, 8080)),
                ALLOW,
            ));
            cases.push(("v6 reply to the inbound flow", out(reply_v6()), ALLOW));
            // Flows keyed through IPv4 options and IPv6 extension headers: the reply (without
            // them) matches only when the ports were read behind them.
            cases.push((
                "v4 inbound connection with IP options",
                inn(v4_options("192.0.2.98", world::CLIENT_V4, TCP, 5555, 8080)),
                ALLOW,
            ));
            cases.push((
                "v4 reply to the flow learned with IP options",
                out(v4_with(world::CLIENT_V4, "192.0.2.98", TCP, 8080, 5555, 0)),
                ALLOW,
            ));
            cases.push((
                "v4 reply from another port than the flow with IP options",
                out(v4_with(world::CLIENT_V4, "192.0.2.98", TCP, 8081, 5555, 0)),
                DROP,
            ));
            let ext_peer = "2001:db8:1::98";
            cases.push((
                "v6 inbound connection behind hop-by-hop and fragment headers",
                inn(v6_ext(
                    ext_peer,
                    world::CLIENT_V6,
                    &[hop_by_hop(), fragment(0)],
                    UDP,
                    5555,
                    8080,
                )),
                ALLOW,
            ));
            cases.push((
                "v6 reply to the flow learned behind extension headers",
                out(v6_with(world::CLIENT_V6, ext_peer, UDP, 8080, 5555)),
                ALLOW,
            ));
            cases.push((
                "v6 reply from another port than that flow",
                out(v6_with(world::CLIENT_V6, ext_peer, UDP, 8081, 5555)),
                DROP,
            ));
            cases.push((
                "v6 TCP behind a hop-by-hop header to a resolved address",
                out(v6_ext(
                    world::CLIENT_V6,
                    "2001:db8:1::10",
                    &[hop_by_hop()],
                    TCP,
                    40000,
                    443,
                )),
                ALLOW,
            ));
            cases.push((
                "v6 later fragment never resolved",
                out(v6_ext(
                    world::CLIENT_V6,
                    "2001:db8:1::99",
                    &[fragment(185)],
                    UDP,
                    1,
                    2,
                )),
                DROP,
            ));
            // With --firewall-drop-input: ICMP errors about flows we opened come in, nothing
            // else unsolicited does.
            set_drop_input(&world.bpffs_dir, true);
            let router4 = "198.51.100.254";
            let router6 = "2001:db8:ff::1";
            cases.push((
                "drop-input: v4 port unreachable about a flow we opened",
                inn(icmp4_error(
                    router4,
                    world::CLIENT_V4,
                    3,
                    3,
                    &v4("192.0.2.10", UDP, 53),
                )),
                ALLOW,
            ));
            cases.push((
                "drop-input: v4 time exceeded about our ping",
                inn(icmp4_error(
                    router4,
                    world::CLIENT_V4,
                    11,
                    0,
                    &v4("192.0.2.10", ICMP, 0),
                )),
                ALLOW,
            ));
            cases.push((
                "drop-input: v4 port unreachable about a flow never opened",
                inn(icmp4_error(
                    router4,
                    world::CLIENT_V4,
                    3,
                    3,
                    &v4("192.0.2.10", UDP, 54),
                )),
                DROP,
            ));
            cases.push((
                "drop-input: v6 packet too big about a flow we opened",
                inn(icmp6_error(
                    router6,
                    world::CLIENT_V6,
                    2,
                    &v6("2001:db8:1::10", TCP, 443),
                )),
                ALLOW,
            ));
            cases.push((
                "drop-input: v6 packet too big about a flow never opened",
                inn(icmp6_error(
                    router6,
                    world::CLIENT_V6,
                    2,
                    &v6("2001:db8:1::10", TCP, 444),
                )),
                DROP,
            ));
            cases.push((
                "drop-input: v6 echo request (not an error)",
                inn(icmp6_error(
                    router6,
                    world::CLIENT_V6,
                    128,
                    &v6("2001:db8:1::10", TCP, 443),
                )),
                DROP,
            ));
            // Replies to a flow we opened come in; a packet that differs from such a reply in
            // one field only (peer address in either half, protocol, either port) is another,
            // unsolicited flow, even right after the reply (each CPU remembers its last flow).
            let query4 = || v4_with(world::CLIENT_V4, "192.0.2.10", UDP, 40001, 53, 0);
            let from4 = |peer: &str, proto: u8, sport: u16, dport: u16| {
                inn(v4_with(peer, world::CLIENT_V4, proto, sport, dport, 0))
            };
            cases.push(("drop-input: v4 query we send", out(query4()), ALLOW));
            for (what, got, want) in [
                ("its reply", from4("192.0.2.10", UDP, 53, 40001), ALLOW),
                (
                    "to another local port",
                    from4("192.0.2.10", UDP, 53, 40002),
                    DROP,
                ),
                (
                    "from another peer",
                    from4("192.0.2.12", UDP, 53, 40001),
                    DROP,
                ),
                ("over TCP", from4("192.0.2.10", TCP, 53, 40001), DROP),
                (
                    "from another port",
                    from4("192.0.2.10", UDP, 54, 40001),
                    DROP,
                ),
                (
                    "its reply again",
                    from4("192.0.2.10", UDP, 53, 40001),
                    ALLOW,
                ),
            ] {
                cases.push((format!("drop-input: v4 {what}").leak(), got, want));
            }
            let peer6 = "2001:db8:1::10";
            let query6 = || v6_with(world::CLIENT_V6, peer6, UDP, 40001, 53);
            let from6 = |peer: &str, sport: u16, dport: u16| {
                inn(v6_with(peer, world::CLIENT_V6, UDP, sport, dport))
            };
            cases.push(("drop-input: v6 query we send", out(query6()), ALLOW));
            for (what, got, want) in [
                ("its reply", from6(peer6, 53, 40001), ALLOW),
                (
                    "from a peer differing in the low half",
                    from6("2001:db8:1::11", 53, 40001),
                    DROP,
                ),
                (
                    "from a peer differing in the high half",
                    from6("2001:db9:1::10", 53, 40001),
                    DROP,
                ),
                ("to another local port", from6(peer6, 53, 40002), DROP),
                ("its reply again", from6(peer6, 53, 40001), ALLOW),
            ] {
                cases.push((format!("drop-input: v6 {what}").leak(), got, want));
            }
            cases.push((
                "drop-input: v4 unsolicited connection",
                inn(v4_with("192.0.2.97", world::CLIENT_V4, TCP, 5555, 8080, 0)),
                DROP,
            ));
            set_drop_input(&world.bpffs_dir, false);
            cases.push((
                "ingress on loopback",
                test_run(
                    &ingress,
                    &v4_with("127.0.0.1", "127.0.0.1", UDP, 53, 40000, 0),
                    1,
                ),
                ALLOW,
            ));
            let failures: Vec<String> = cases
                .iter()
                .filter(|(_, got, want)| got != want)
                .map(|(what, got, want)| format!("{what}: got {got}, expected {want}"))
                .collect();
            eprintln!("{} packets judged", cases.len());
            assert!(cases.len() >= 30);
            failures
        })
        .join()
        .unwrap()
    });
    assert!(
        failures.is_empty(),
        "wrong verdicts:\n{}",
        failures.join("\n")
    );
    assert!(world.stop_daemon(), "nettrust failed at exit");
}

/// An ICMPv6 message of type `kind` (8 bytes: type, code, checksum, 4 more) from `src` to `dst`,
/// behind the extension `headers` (see [`v6_ext`]).
fn icmp6(src: &str, dst: &str, headers: &[(u8, Vec<u8>)], kind: u8) -> Vec<u8> {
    let mut frame = v6_ext(src, dst, headers, ICMPV6, 0, 0);
    let at = frame.len() - 8;
    frame[at] = kind;
    frame
}

/// A routing header (type 4, one segment) with `segments_left`, without its next-header octet.
fn routing(segments_left: u8) -> (u8, Vec<u8>) {
    let mut rest = vec![2, 4, segments_left, 0, 0, 0, 0];
    rest.extend_from_slice(&Ipv6Addr::from_str("2001:db8:1::10").unwrap().octets());
    (43, rest)
}

/// An IPv4 packet whose 8 option bytes are `options` (IHL 7).
fn v4_with_options(dst: &str, options: [u8; 8], proto: u8, dport: u16) -> Vec<u8> {
    let body = l4(proto, 40000, dport);
    let mut ip = vec![0x47, 0];
    ip.extend_from_slice(&(28 + body.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&Ipv4Addr::from_str(world::CLIENT_V4).unwrap().octets());
    ip.extend_from_slice(&Ipv4Addr::from_str(dst).unwrap().octets());
    ip.extend_from_slice(&options);
    ip.extend_from_slice(&body);
    ether(0x0800, &ip)
}

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// A TCP segment with `flags` (IPv4 or IPv6 by the addresses).
fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut frame = if src.contains(':') {
        v6_with(src, dst, TCP, sport, dport)
    } else {
        v4_with(src, dst, TCP, sport, dport, 0)
    };
    let at = frame.len() - 20 + 13;
    frame[at] = flags;
    frame
}

type InboundMap = HashMap<MapData, InboundKey, InboundValue>;

fn inbound_map(dir: &Path) -> InboundMap {
    let data = MapData::from_pin(dir.join(MAP_INBOUND)).unwrap();
    HashMap::try_from(Map::LruHashMap(data)).unwrap()
}

/// Moves the last inbound packet of every learned flow with remote port `remote_port` back by
/// `ns`, as if the flow had been idle that long; returns how many flows it moved.
fn age_inbound(dir: &Path, remote_port: u16, ns: u64) -> usize {
    let mut map = inbound_map(dir);
    let keys: Vec<InboundKey> = map
        .keys()
        .map(Result::unwrap)
        .filter(|k| k.remote_port == remote_port)
        .collect();
    for key in &keys {
        let mut value = map.get(key, 0).unwrap();
        // Wrapping: the programs compare times by wrapping differences, so this holds also
        // for more than the uptime.
        value.seen_ns = value.seen_ns.wrapping_sub(ns);
        map.insert(key, value, 0).unwrap();
    }
    keys.len()
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn ebpf_link_control_source_routes_upstreams_and_inbound_flows() {
    let mut world = World::new();
    let config = world.dir.path().join("verdicts.toml");
    std::fs::write(
        &config,
        "whitelist_private = false\n\
         [blacklist]\nhosts = [\"192.0.2.11\", \"2001:db8:1::11\"]\n\
         networks = [\"203.0.113.128/25\"]\n",
    )
    .unwrap();
    world.start_daemon(&["--config", config.to_str().unwrap()]);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert_eq!(world.resolve("a.test", "AAAA", true), ["2001:db8:1::10"]);
    let dir = world.bpffs_dir.clone();
    // The egress program reports denied packets through DENIED and logs, rate-limited (LOG_RATE),
    // through aya-log's AYA_LOGS; the world's daemon runs with `nettrust=debug`, so it set the
    // program's log level to debug (checked below through the records of two drops).
    let info = aya::programs::ProgramInfo::from_pin(dir.join("prog-egress")).unwrap();
    let maps: Vec<String> = info
        .map_ids()
        .unwrap()
        .unwrap_or_default()
        .into_iter()
        .map(|id| {
            let map = aya::maps::MapInfo::from_id(id).unwrap();
            map.name_as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert!(
        maps.iter().any(|m| m == "DENIED") && maps.iter().any(|m| m == "STATS"),
        "the egress program's map names: {maps:?}"
    );
    assert!(
        maps.iter().any(|m| m == "AYA_LOGS") && maps.iter().any(|m| m == "LOG_RATE"),
        "the egress program's map names: {maps:?}"
    );
    let egress = open_program(&dir, "egress");
    let ingress = open_program(&dir, "ingress");
    let out = |frame: Vec<u8>| test_run(&egress, &frame, 0);
    // Ingress as from a non-loopback device (ifindex 2 need not exist: only 1 is special).
    let inn = |frame: Vec<u8>| test_run(&ingress, &frame, 2);
    let me6 = world::CLIENT_V6;
    let link_local = "fe80::1";
    let mut cases: Vec<(&str, u32, u32)> = Vec::new();
    let mut case = |what: &'static str, got: u32, want: u32| cases.push((what, got, want));

    // The kernel's IPv6 link control: only NDP/MLD types, only to link-local or multicast.
    for (what, src, dst, headers, kind, want) in [
        (
            "router solicitation to ff02::2",
            link_local,
            "ff02::2",
            vec![],
            133,
            ALLOW,
        ),
        (
            "router advertisement to ff02::1",
            link_local,
            "ff02::1",
            vec![],
            134,
            ALLOW,
        ),
        (
            "neighbour solicitation to a solicited-node group",
            me6,
            "ff02::1:ff00:2",
            vec![],
            135,
            ALLOW,
        ),
        (
            "DAD neighbour solicitation from ::",
            "::",
            "ff02::1:ff00:1",
            vec![],
            135,
            ALLOW,
        ),
        (
            "neighbour advertisement to a link-local address",
            link_local,
            "fe80::2",
            vec![],
            136,
            ALLOW,
        ),
        (
            "redirect to a link-local address",
            link_local,
            "fe80::2",
            vec![],
            137,
            ALLOW,
        ),
        (
            "MLDv2 report behind hop-by-hop",
            link_local,
            "ff02::16",
            vec![hop_by_hop()],
            143,
            ALLOW,
        ),
        (
            "MLDv1 report to its group",
            link_local,
            "ff02::1:3",
            vec![hop_by_hop()],
            131,
            ALLOW,
        ),
        (
            "MLD done to ff02::2",
            link_local,
            "ff02::2",
            vec![hop_by_hop()],
            132,
            ALLOW,
        ),
        (
            "neighbour solicitation to a global address",
            me6,
            "2001:db8:1::99",
            vec![],
            135,
            DROP,
        ),
        (
            "neighbour advertisement to a global address",
            me6,
            "2001:db8:1::99",
            vec![],
            136,
            DROP,
        ),
        (
            "router solicitation to a global address",
            me6,
            "2001:db8:1::99",
            vec![],
            133,
            DROP,
        ),
        (
            "MLDv2 report to a global address",
            me6,
            "2001:db8:1::99",
            vec![hop_by_hop()],
            143,
            DROP,
        ),
        ("echo request to ff02::1", me6, "ff02::1", vec![], 128, DROP),
        (
            "echo request to a link-local address",
            me6,
            "fe80::2",
            vec![],
            128,
            DROP,
        ),
        (
            "node information query (139) to ff02::1",
            me6,
            "ff02::1",
            vec![],
            139,
            DROP,
        ),
        (
            "neighbour solicitation routed via a multicast first hop",
            me6,
            "ff02::1:ff00:2",
            vec![routing(1)],
            135,
            DROP,
        ),
    ] {
        let label = format!("v6 {what}").leak();
        case(label, out(icmp6(src, dst, &headers, kind)), want);
    }
    case(
        "DHCPv6 solicit to ff02::1:2 port 547",
        out(v6_with(link_local, "ff02::1:2", UDP, 546, 547)),
        ALLOW,
    );
    case(
        "UDP to ff02::1:2 on another port",
        out(v6_with(link_local, "ff02::1:2", UDP, 546, 548)),
        DROP,
    );
    case(
        "UDP port 547 to another group (ff02::1)",
        out(v6_with(link_local, "ff02::1", UDP, 546, 547)),
        DROP,
    );
    case(
        "TCP port 547 to ff02::1:2",
        out(v6_with(link_local, "ff02::1:2", TCP, 546, 547)),
        DROP,
    );

    // After a second without program records every CPU's log window is fresh: the next two
    // records (a fail-closed drop, a source route) are written whatever CPU runs them.
    std::thread::sleep(Duration::from_millis(1100));
    let mut cut = v6_with(me6, "2001:db8:1::10", TCP, 40000, 443);
    cut.truncate(14 + 40);
    case(
        "v6 with its TCP header cut off (fail closed)",
        out(cut),
        DROP,
    );

    // Source routing: the destination judged would be only the first hop.
    let lsrr = [0x83, 7, 4, 192, 0, 2, 99, 0];
    let ssrr = [0x89, 7, 4, 192, 0, 2, 99, 0];
    let record_route = [7, 7, 4, 0, 0, 0, 0, 0];
    let nops = [1, 1, 1, 1, 1, 1, 1, 0];
    case(
        "v4 loose source route via a resolved address",
        out(v4_with_options("192.0.2.10", lsrr, TCP, 443)),
        DROP,
    );
    case(
        "v4 strict source route via a resolved address",
        out(v4_with_options("192.0.2.10", ssrr, UDP, 53)),
        DROP,
    );
    case(
        "v4 loose source route after NOPs",
        out(v4_with_options(
            "192.0.2.10",
            [1, 1, 0x83, 3, 4, 0, 0, 0],
            TCP,
            443,
        )),
        DROP,
    );
    case(
        "v4 record-route option to a resolved address",
        out(v4_with_options("192.0.2.10", record_route, TCP, 443)),
        ALLOW,
    );
    case(
        "v4 NOP options to a resolved address",
        out(v4_with_options("192.0.2.10", nops, TCP, 443)),
        ALLOW,
    );
    case(
        "v4 option with length 0 (unwalkable)",
        out(v4_with_options(
            "192.0.2.10",
            [7, 0, 0, 0, 0, 0, 0, 0],
            TCP,
            443,
        )),
        DROP,
    );
    case(
        "v6 routing header with a segment left, to a resolved address",
        out(v6_ext(
            me6,
            "2001:db8:1::10",
            &[routing(1)],
            TCP,
            40000,
            443,
        )),
        DROP,
    );
    case(
        "v6 routing header without segments left, to a resolved address",
        out(v6_ext(
            me6,
            "2001:db8:1::10",
            &[routing(0)],
            TCP,
            40000,
            443,
        )),
        ALLOW,
    );
    case(
        "v6 routing header behind hop-by-hop, segments left",
        out(v6_ext(
            me6,
            "2001:db8:1::10",
            &[hop_by_hop(), routing(2)],
            UDP,
            40000,
            53,
        )),
        DROP,
    );

    // The upstream: its DNS port over UDP and TCP, from the proxy's marked sockets only.
    let up = world::UPSTREAM;
    let proxy = |frame: Vec<u8>| test_run_marked(&egress, &frame, 0, UPSTREAM_MARK);
    case(
        "upstream from the proxy, UDP 53",
        proxy(v4(up, UDP, 53)),
        ALLOW,
    );
    case(
        "upstream from the proxy, TCP 53",
        proxy(v4(up, TCP, 53)),
        ALLOW,
    );
    case(
        "upstream from the proxy, TCP 443",
        proxy(v4(up, TCP, 443)),
        DROP,
    );
    case("upstream, UDP 53", out(v4(up, UDP, 53)), DROP);
    case("upstream, TCP 53", out(v4(up, TCP, 53)), DROP);
    case("upstream, TCP 443", out(v4(up, TCP, 443)), DROP);
    case("upstream, UDP 54", out(v4(up, UDP, 54)), DROP);
    case("upstream, ICMP", out(v4(up, ICMP, 0)), DROP);

    // Flows opened from outside: TCP from a SYN only, UDP from a datagram; keyed by the local
    // address too; other protocols never; never for a blacklisted peer.
    let me = world::CLIENT_V4;
    let peer = "192.0.2.99";
    case(
        "bare ACK from outside",
        inn(tcp(peer, me, 5000, 8080, ACK)),
        ALLOW,
    );
    case(
        "reply to the bare ACK",
        out(tcp(me, peer, 8080, 5000, ACK)),
        DROP,
    );
    case(
        "SYN-ACK from outside",
        inn(tcp(peer, me, 5001, 8080, SYN | ACK)),
        ALLOW,
    );
    case(
        "reply to the SYN-ACK",
        out(tcp(me, peer, 8080, 5001, ACK)),
        DROP,
    );
    case(
        "FIN from outside",
        inn(tcp(peer, me, 5002, 8080, FIN | ACK)),
        ALLOW,
    );
    case(
        "reply to the FIN",
        out(tcp(me, peer, 8080, 5002, ACK)),
        DROP,
    );
    case(
        "SYN from outside",
        inn(tcp(peer, me, 5003, 8080, SYN)),
        ALLOW,
    );
    case(
        "SYN-ACK to the SYN",
        out(tcp(me, peer, 8080, 5003, SYN | ACK)),
        ALLOW,
    );
    case(
        "the same reply from another local address",
        out(tcp("198.51.100.9", peer, 8080, 5003, SYN | ACK)),
        DROP,
    );
    case(
        "the handshake's ACK",
        inn(tcp(peer, me, 5003, 8080, ACK)),
        ALLOW,
    );
    case(
        "data on the connection",
        out(tcp(me, peer, 8080, 5003, ACK)),
        ALLOW,
    );
    case("our FIN", out(tcp(me, peer, 8080, 5003, FIN | ACK)), ALLOW);
    case(
        "our last ACK after the FIN",
        out(tcp(me, peer, 8080, 5003, ACK)),
        ALLOW,
    );
    case(
        "SYN again (new connection)",
        inn(tcp(peer, me, 5004, 8080, SYN)),
        ALLOW,
    );
    case("our RST", out(tcp(me, peer, 8080, 5004, RST | ACK)), ALLOW);
    case(
        "anything after our RST",
        out(tcp(me, peer, 8080, 5004, ACK)),
        DROP,
    );
    case(
        "ICMP echo from outside",
        inn(v4_with(peer, me, ICMP, 0, 0, 0)),
        ALLOW,
    );
    case("ICMP to that peer", out(v4(peer, ICMP, 0)), DROP);
    case(
        "GRE from outside",
        inn(v4_with(peer, me, 47, 0, 0, 0)),
        ALLOW,
    );
    case("GRE to that peer", out(v4(peer, 47, 0)), DROP);
    case(
        "UDP datagram from outside",
        inn(v4_with(peer, me, UDP, 6000, 5353, 0)),
        ALLOW,
    );
    case(
        "UDP reply",
        out(v4_with(me, peer, UDP, 5353, 6000, 0)),
        ALLOW,
    );
    case(
        "UDP from another local port to that peer",
        out(v4_with(me, peer, UDP, 5354, 6000, 0)),
        DROP,
    );
    case(
        "SYN from a blacklisted host",
        inn(tcp("192.0.2.11", me, 5005, 8080, SYN)),
        ALLOW,
    );
    case(
        "SYN-ACK to the blacklisted host",
        out(tcp(me, "192.0.2.11", 8080, 5005, SYN | ACK)),
        DROP,
    );
    case(
        "UDP from a blacklisted network",
        inn(v4_with("203.0.113.200", me, UDP, 6001, 5353, 0)),
        ALLOW,
    );
    case(
        "UDP reply to the blacklisted network",
        out(v4_with(me, "203.0.113.200", UDP, 5353, 6001, 0)),
        DROP,
    );
    case(
        "v6 SYN from a blacklisted host",
        inn(tcp("2001:db8:1::11", me6, 5006, 8080, SYN)),
        ALLOW,
    );
    case(
        "v6 SYN-ACK to the blacklisted host",
        out(tcp(me6, "2001:db8:1::11", 8080, 5006, SYN | ACK)),
        DROP,
    );
    case(
        "v6 SYN from outside",
        inn(tcp("2001:db8:1::99", me6, 5007, 8080, SYN)),
        ALLOW,
    );
    case(
        "v6 SYN-ACK",
        out(tcp(me6, "2001:db8:1::99", 8080, 5007, SYN | ACK)),
        ALLOW,
    );

    // Ageing, by moving the flows' last inbound packet back in time (the map is the daemon's).
    const S: u64 = 1_000_000_000;
    case(
        "UDP flow (replied once) before ageing",
        out(v4_with(me, peer, UDP, 5353, 6000, 0)),
        ALLOW,
    );
    assert_eq!(age_inbound(&dir, 6000, 31 * S), 1);
    case(
        "UDP flow 31 s after its only datagram, though the server kept sending",
        out(v4_with(me, peer, UDP, 5353, 6000, 0)),
        DROP,
    );
    case(
        "UDP from outside again",
        inn(v4_with(peer, me, UDP, 6010, 5353, 0)),
        ALLOW,
    );
    case(
        "UDP reply (1)",
        out(v4_with(me, peer, UDP, 5353, 6010, 0)),
        ALLOW,
    );
    case(
        "UDP from outside after the reply",
        inn(v4_with(peer, me, UDP, 6010, 5353, 0)),
        ALLOW,
    );
    assert_eq!(age_inbound(&dir, 6010, 100 * S), 1);
    case(
        "UDP stream idle for 100 s",
        out(v4_with(me, peer, UDP, 5353, 6010, 0)),
        ALLOW,
    );
    assert_eq!(age_inbound(&dir, 6010, 21 * S), 1);
    case(
        "UDP stream idle for 121 s",
        out(v4_with(me, peer, UDP, 5353, 6010, 0)),
        DROP,
    );
    case(
        "SYN for the ageing test",
        inn(tcp(peer, me, 5020, 8080, SYN)),
        ALLOW,
    );
    assert_eq!(age_inbound(&dir, 5020, 61 * S), 1);
    case(
        "SYN-ACK 61 s after the SYN",
        out(tcp(me, peer, 8080, 5020, SYN | ACK)),
        DROP,
    );
    case("SYN (2)", inn(tcp(peer, me, 5021, 8080, SYN)), ALLOW);
    case(
        "SYN-ACK (2)",
        out(tcp(me, peer, 8080, 5021, SYN | ACK)),
        ALLOW,
    );
    case("ACK (2)", inn(tcp(peer, me, 5021, 8080, ACK)), ALLOW);
    assert_eq!(age_inbound(&dir, 5021, 4 * 24 * 3600 * S), 1);
    case(
        "established connection idle for 4 days",
        out(tcp(me, peer, 8080, 5021, ACK)),
        ALLOW,
    );
    assert_eq!(age_inbound(&dir, 5021, 24 * 3600 * S + S), 1);
    case(
        "established connection idle for 5 days",
        out(tcp(me, peer, 8080, 5021, ACK)),
        DROP,
    );
    case("SYN (3)", inn(tcp(peer, me, 5022, 8080, SYN)), ALLOW);
    case(
        "SYN-ACK (3)",
        out(tcp(me, peer, 8080, 5022, SYN | ACK)),
        ALLOW,
    );
    case("ACK (3)", inn(tcp(peer, me, 5022, 8080, ACK)), ALLOW);
    case(
        "our FIN (3)",
        out(tcp(me, peer, 8080, 5022, FIN | ACK)),
        ALLOW,
    );
    assert_eq!(age_inbound(&dir, 5022, 121 * S), 1);
    case(
        "121 s after our FIN",
        out(tcp(me, peer, 8080, 5022, ACK)),
        DROP,
    );
    // Keys carry the cgroup of the socket: every learned key has this thread's cgroup.
    let own = own_cgroup_id();
    let map = inbound_map(&dir);
    for key in map.keys().map(Result::unwrap) {
        assert_eq!(key.cgroup_id, own, "{key:?}");
        assert!(key.proto == TCP || key.proto == UDP, "{key:?}");
    }

    let failures: Vec<String> = cases
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}: got {got}, expected {want}"))
        .collect();
    eprintln!("{} packets judged", cases.len());
    assert!(
        failures.is_empty(),
        "wrong verdicts:\n{}",
        failures.join("\n")
    );
    // The program's debug records of the fail-closed drop and of the first source route.
    for record in [
        "nettrust::ebpf: egress: unreadable headers, dropped (fail closed): ethertype 86dd length 40",
        "nettrust::ebpf: egress: source-routed packet dropped: first hop 192.0.2.10 proto 6 port 443",
    ] {
        world.eventually(record, Duration::from_secs(10), || {
            world.daemon_log().contains(record)
        });
    }
    assert!(world.stop_daemon(), "nettrust failed at exit");
}

/// The cgroup v2 id (directory inode) of this process, which `BPF_PROG_TEST_RUN`'s socket gets.
fn own_cgroup_id() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line in /proc/self/cgroup");
    let mount = nettrust::cgroup::cgroup2_mount().unwrap();
    std::fs::metadata(mount.join(path.trim_start_matches('/')))
        .unwrap()
        .ino()
}
