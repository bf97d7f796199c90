//! nettrust's cgroup_skb programs, attached by the daemon to each configured cgroup v2.
//!
//! `egress` lets a packet leave only when its destination is an authorized/whitelisted host (hash
//! maps, deadline checked here so expiry needs no daemon), inside a whitelisted network (LPM
//! tries) or a whitelisted service (an upstream DNS server's address, port and protocol), when it
//! is the kernel's own IPv6 link control (neighbour discovery and MLD to link-local or multicast
//! addresses, DHCPv6 to its servers' multicast group), or when it answers a live flow a remote
//! peer opened towards a socket of the same cgroup and local address (a server replying to its
//! clients). A source-routed packet (IPv4 LSRR/SSRR, an IPv6 routing header with segments left)
//! is always dropped: its destination address is only the first hop. Everything else is dropped,
//! counted per cgroup and reported (rate-limited) through a ring buffer.
//!
//! The drops a denied event does not explain (a packet whose headers cannot be read, dropped fail
//! closed; a source-routed packet) are also logged through aya-log at debug level, at most
//! `LOG_RECORDS_PER_SEC` records per CPU per second, and only when the daemon set the log level
//! (`AYA_LOG_LEVEL`, patched before load) to debug: with the level off they cost one load.
//!
//! `ingress` learns which inbound packets are unsolicited (not replies to a flow `egress` let out):
//! TCP connections from their SYN and UDP flows are remembered (see `nettrust_common::inbound`) so
//! the replies may leave, and with `--firewall-drop-input` they are dropped instead (loopback
//! always passes).
#![no_std]
#![no_main]
mod sockops;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    helpers::{bpf_ktime_get_boot_ns, bpf_skb_cgroup_id},
    macros::{cgroup_skb, map},
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
    programs::SkBuffContext,
};
use aya_log_ebpf::{debug, macro_support::Level};
use nettrust_common::{
    CONFIG_COUNT, CONFIG_DROP_INPUT, CgroupPath, DEFAULT_MAX_HOSTS, DEFAULT_MAX_NETS,
    DENIED_EVENTS_PER_SEC, DENIED_RING_BYTES, DeniedEvent, EBPF_LOG_TARGET, FLAG_AUTHORIZED,
    FlowKey, HostName, HostSlot, HostValue, InboundKey, InboundValue, LAST_SEEN_GRANULARITY_NS,
    LOG_RECORDS_PER_SEC, MAX_BLOCKED, MAX_CGROUPS, MAX_FLOWS, MAX_SERVICES, RateState,
    STAT_ALLOW_HOST, STAT_ALLOW_INBOUND_REPLY, STAT_ALLOW_NET, STAT_COUNT, STAT_DROP,
    STAT_DROP_EXPIRED, STAT_DROP_INPUT, STAT_ERROR, STAT_PASS_NON_IP, ServiceKey, VERDICT_ALLOW,
    VERDICT_DROP, host_table, inbound,
};

/// What to do with an outgoing packet whose IP header cannot be read: nettrust fails closed.
const ON_ERROR: i32 = VERDICT_DROP;

/// `ETH_P_IP` / `ETH_P_IPV6` as found in `__sk_buff.protocol` (network byte order).
const ETH_P_IP_BE: u32 = (0x0800u16).to_be() as u32;
const ETH_P_IPV6_BE: u32 = (0x86DDu16).to_be() as u32;
/// Offsets in the IPv4 header (RFC 791) and the IPv6 header (RFC 8200). cgroup_skb programs see
/// the packet from the network header on.
const IPV4_PROTO_OFFSET: usize = 9;
const IPV4_FRAG_OFFSET: usize = 6;
const IPV4_SADDR_OFFSET: usize = 12;
const IPV4_DADDR_OFFSET: usize = 16;
const IPV6_NEXT_HEADER_OFFSET: usize = 6;
const IPV6_SADDR_OFFSET: usize = 8;
const IPV6_DADDR_OFFSET: usize = 24;
const IPV6_HEADER_LEN: usize = 40;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// The loopback interface is always ifindex 1 (`LOOPBACK_IFINDEX`, net/core/dev.c), in every
/// network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
/// A remembered flow's timestamp is refreshed at most this often.
const FLOW_REFRESH_NS: u64 = 1_000_000_000;

/// Hash maps sized by the configuration allocate their elements as they are added
/// (`BPF_F_NO_PREALLOC`): kernel memory follows the hosts actually authorized instead of the
/// capacity (a preallocated 1M-host map pair costs 210 MB while empty).
const ON_DEMAND: u32 = BPF_F_NO_PREALLOC;

/// The IPv4 host table (`nettrust_common::host_table`), memory-mapped and written by the daemon.
#[map(name = "HOSTS_V4")]
static HOSTS_V4: Array<HostSlot> =
    Array::with_max_entries(host_table::slots(DEFAULT_MAX_HOSTS), BPF_F_MMAPABLE);
/// The table's hash seed and home-slot count, set by the daemon when it loads the programs.
#[unsafe(no_mangle)]
static HOST_SEED: u64 = 0;
#[unsafe(no_mangle)]
static HOST_HOME_SLOTS: u32 = host_table::home_slots(DEFAULT_MAX_HOSTS);
#[map(name = "HOSTS_V6")]
static HOSTS_V6: HashMap<[u8; 16], HostValue> =
    HashMap::with_max_entries(DEFAULT_MAX_HOSTS, ON_DEMAND);
#[map(name = "NETS_V4")]
static NETS_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(DEFAULT_MAX_NETS, 0);
#[map(name = "NETS_V6")]
static NETS_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(DEFAULT_MAX_NETS, 0);
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);
#[map(name = "CONFIG")]
static CONFIG: Array<u32> = Array::with_max_entries(CONFIG_COUNT, 0);
#[map(name = "OUTBOUND")]
static OUTBOUND: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map(name = "INBOUND_FLOWS")]
static INBOUND: LruHashMap<InboundKey, InboundValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map(name = "BLOCKED_V4")]
static BLOCKED_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_BLOCKED, 0);
#[map(name = "BLOCKED_V6")]
static BLOCKED_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_BLOCKED, 0);
#[map(name = "SERVICES")]
static SERVICES: HashMap<ServiceKey, u32> = HashMap::with_max_entries(MAX_SERVICES, 0);
#[map(name = "DENIED")]
static DENIED: RingBuf = RingBuf::with_byte_size(DENIED_RING_BYTES, 0);
#[map(name = "DENIED_RATE")]
static DENIED_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "LOG_RATE")]
static LOG_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "DROPS")]
static DROPS: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(MAX_CGROUPS, 0);
#[map(name = "ALLOWS")]
static ALLOWS: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(MAX_CGROUPS, 0);
/// Userspace-only (names for `nettrust list`); declared here so it is created and pinned with the
/// others.
#[map(name = "NAMES")]
static NAMES: HashMap<[u8; 16], HostName> =
    HashMap::with_max_entries(DEFAULT_MAX_HOSTS * 2, ON_DEMAND);
/// Userspace-only (attached cgroups for `nettrust status`).
#[map(name = "CGROUPS")]
static CGROUPS: HashMap<u64, CgroupPath> = HashMap::with_max_entries(MAX_CGROUPS, ON_DEMAND);

/// The parts of a packet the programs judge: the remote address (destination on egress, source on
/// ingress) and the transport ports.
struct Packet<const N: usize> {
    remote: [u8; N],
    proto: u8,
    remote_port: u16,
    local_port: u16,
}

/// `N` address bytes into 16 (IPv4 in the first 4, the rest 0), a word at a time.
#[inline(always)]
fn addr_words<const N: usize>(addr: &[u8; N]) -> [u64; 2] {
    let byte = |i: usize| addr.get(i).copied().unwrap_or(0);
    let word = |at: usize| {
        u64::from_ne_bytes([
            byte(at),
            byte(at + 1),
            byte(at + 2),
            byte(at + 3),
            byte(at + 4),
            byte(at + 5),
            byte(at + 6),
            byte(at + 7),
        ])
    };
    [word(0), word(8)]
}

impl<const N: usize> Packet<N> {
    /// The flow key, assembled a word at a time (byte stores and a call to `memset` for the
    /// zero bytes otherwise).
    #[inline(always)]
    fn flow(&self) -> FlowKey {
        let byte = |i: usize| self.remote.get(i).copied().unwrap_or(0);
        let word = |at: usize| {
            u64::from_ne_bytes([
                byte(at),
                byte(at + 1),
                byte(at + 2),
                byte(at + 3),
                byte(at + 4),
                byte(at + 5),
                byte(at + 6),
                byte(at + 7),
            ])
        };
        let (remote, local) = (
            self.remote_port.to_ne_bytes(),
            self.local_port.to_ne_bytes(),
        );
        let family = if N == 4 { 4 } else { 6 };
        FlowKey::from_words([
            word(0),
            word(8),
            u64::from_ne_bytes([
                remote[0], remote[1], local[0], local[1], self.proto, family, 0, 0,
            ]),
        ])
    }
}

/// Bytes of the IPv4 header (without options) plus the 4 port bytes of TCP/UDP after it.
const IPV4_HEAD: usize = 20 + 4;
/// Bytes of the IPv6 header plus the 4 port bytes of TCP/UDP right after it.
const IPV6_HEAD: usize = IPV6_HEADER_LEN + 4;
/// Offset of the flags byte in the TCP header (RFC 9293 §3.1).
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The first `L` bytes of the packet (network header on), straight from the skb's linear data
/// (direct packet access: no helper call, no copy), or `None` when they are not all linear (or the
/// packet is shorter); the caller then reads with `bpf_skb_load_bytes`. One bounds check the
/// verifier tracks covers every read of the returned array at a constant offset.
#[inline(always)]
fn head<const L: usize>(ctx: &SkBuffContext) -> Option<&[u8; L]> {
    // SAFETY: reading two fields of the context the kernel handed us.
    let (start, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    if start + L > end {
        return None;
    }
    // SAFETY: the check above proves `L` bytes from `start` lie inside the packet.
    Some(unsafe { &*(start as *const [u8; L]) })
}

/// Copies `N` bytes at `offset` of `bytes` (a constant offset inside a checked packet head).
#[inline(always)]
fn take<const N: usize, const L: usize>(bytes: &[u8; L], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = bytes[offset + i];
    }
    out
}

/// `(source, destination)` ports from 4 transport header bytes.
#[inline(always)]
fn ports(bytes: [u8; 4]) -> (u16, u16) {
    (
        u16::from_be_bytes([bytes[0], bytes[1]]),
        u16::from_be_bytes([bytes[2], bytes[3]]),
    )
}

/// The header fields the programs judge, as read from one packet.
struct Headers<const N: usize> {
    src: [u8; N],
    dst: [u8; N],
    proto: u8,
    sport: u16,
    dport: u16,
    /// Offset of the transport header; 0 when there is none to read (a non-first fragment).
    l4: usize,
    /// IPv4 options present (the header is longer than 20 bytes).
    options: bool,
    /// An IPv6 routing header with segments left: the destination is only the next hop.
    routed: bool,
}

impl<const N: usize> Headers<N> {
    #[inline(always)]
    fn new(src: [u8; N], dst: [u8; N], proto: u8, (sport, dport): (u16, u16), l4: usize) -> Self {
        Self {
            src,
            dst,
            proto,
            sport,
            dport,
            l4,
            options: false,
            routed: false,
        }
    }

    /// The byte at `at` bytes into the transport header (the ICMPv6 type at 0, the TCP flags at
    /// 13), 0 when there is no transport header or it is shorter.
    #[inline(always)]
    fn l4_byte(&self, ctx: &SkBuffContext, at: usize) -> u8 {
        if self.l4 == 0 {
            return 0;
        }
        ctx.load::<u8>(self.l4 + at).unwrap_or(0)
    }

    /// The packet as egress judges it (the remote end is the destination).
    #[inline(always)]
    fn outgoing(&self) -> Packet<N> {
        Packet {
            remote: self.dst,
            proto: self.proto,
            remote_port: self.dport,
            local_port: self.sport,
        }
    }

    /// The packet as ingress judges it (the remote end is the source).
    #[inline(always)]
    fn incoming(&self) -> Packet<N> {
        Packet {
            remote: self.src,
            proto: self.proto,
            remote_port: self.sport,
            local_port: self.dport,
        }
    }
}

/// The addresses, protocol and ports of an IPv4 packet; ports are 0 for protocols without them
/// and for non-first fragments.
#[inline(always)]
fn parse_v4(ctx: &SkBuffContext) -> Result<Headers<4>, ()> {
    if let Some(h) = head::<IPV4_HEAD>(ctx) {
        let proto = h[IPV4_PROTO_OFFSET];
        let frag = u16::from_be_bytes([h[IPV4_FRAG_OFFSET], h[IPV4_FRAG_OFFSET + 1]]);
        let (src, dst) = (take(h, IPV4_SADDR_OFFSET), take(h, IPV4_DADDR_OFFSET));
        let ihl = usize::from(h[0] & 0x0f) * 4;
        let l4 = if frag & 0x1fff != 0 { 0 } else { ihl };
        if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || l4 == 0 {
            return Ok(with_options(Headers::new(src, dst, proto, (0, 0), l4), ihl));
        }
        let ports = if ihl == 20 {
            ports(take(h, 20))
        } else {
            // IP options: the ports are further away.
            ports(ctx.load(ihl).map_err(|_| ())?)
        };
        return Ok(with_options(Headers::new(src, dst, proto, ports, l4), ihl));
    }
    let src: [u8; 4] = ctx.load(IPV4_SADDR_OFFSET).map_err(|_| ())?;
    let dst: [u8; 4] = ctx.load(IPV4_DADDR_OFFSET).map_err(|_| ())?;
    let first: u8 = ctx.load(0).map_err(|_| ())?;
    let proto: u8 = ctx.load(IPV4_PROTO_OFFSET).map_err(|_| ())?;
    let frag: u16 = ctx.load(IPV4_FRAG_OFFSET).map_err(|_| ())?;
    let ihl = usize::from(first & 0x0f) * 4;
    let l4 = if u16::from_be(frag) & 0x1fff != 0 {
        0
    } else {
        ihl
    };
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || l4 == 0 {
        return Ok(with_options(Headers::new(src, dst, proto, (0, 0), l4), ihl));
    }
    let ports = ports(ctx.load(ihl).map_err(|_| ())?);
    Ok(with_options(Headers::new(src, dst, proto, ports, l4), ihl))
}

#[inline(always)]
fn with_options(mut headers: Headers<4>, ihl: usize) -> Headers<4> {
    headers.options = ihl > 20;
    headers
}

/// IPv4 option types (RFC 791, IANA): end of list, no-operation, loose and strict source route.
const IPOPT_END: u8 = 0;
const IPOPT_NOOP: u8 = 1;
const IPOPT_LSRR: u8 = 0x83;
const IPOPT_SSRR: u8 = 0x89;
/// Most option bytes an IPv4 header holds (IHL 15: 60 bytes, 20 of them fixed).
const IPV4_MAX_OPTIONS: usize = 40;

/// Whether the options of an IPv4 header carry a loose or strict source route (the packet goes
/// to the route's hops first; its destination address is only the first of them). An option
/// list that cannot be walked counts as source-routed (fail closed).
#[inline(always)]
fn source_routed_v4(ctx: &SkBuffContext) -> bool {
    let Ok(first) = ctx.load::<u8>(0) else {
        return true;
    };
    let end = usize::from(first & 0x0f) * 4;
    let mut at = 20;
    for _ in 0..IPV4_MAX_OPTIONS {
        if at >= end {
            return false;
        }
        let Ok(kind) = ctx.load::<u8>(at) else {
            return true;
        };
        match kind {
            IPOPT_END => return false,
            IPOPT_NOOP => at += 1,
            IPOPT_LSRR | IPOPT_SSRR => return true,
            _ => {
                let Ok(len) = ctx.load::<u8>(at + 1) else {
                    return true;
                };
                if len < 2 {
                    return true;
                }
                at += usize::from(len);
            }
        }
    }
    false
}

/// The same for IPv6. Extension headers (hop-by-hop, routing, fragment, destination options,
/// authentication) between the fixed header and TCP/UDP are followed, so a flow is keyed by its
/// real protocol and ports whatever headers its packets carry; a non-first fragment has no ports.
#[inline(always)]
fn parse_v6(ctx: &SkBuffContext) -> Result<Headers<16>, ()> {
    let (src, dst, next) = match head::<IPV6_HEAD>(ctx) {
        Some(h) => {
            let next = h[IPV6_NEXT_HEADER_OFFSET];
            let (src, dst) = (take(h, IPV6_SADDR_OFFSET), take(h, IPV6_DADDR_OFFSET));
            if next == IPPROTO_TCP || next == IPPROTO_UDP {
                let ports = ports(take(h, IPV6_HEADER_LEN));
                return Ok(Headers::new(src, dst, next, ports, IPV6_HEADER_LEN));
            }
            (src, dst, next)
        }
        None => (
            ctx.load(IPV6_SADDR_OFFSET).map_err(|_| ())?,
            ctx.load(IPV6_DADDR_OFFSET).map_err(|_| ())?,
            ctx.load(IPV6_NEXT_HEADER_OFFSET).map_err(|_| ())?,
        ),
    };
    let (proto, offset, routed) = skip_extension_headers(ctx, next)?;
    let mut headers = if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || offset == 0 {
        Headers::new(src, dst, proto, (0, 0), offset)
    } else {
        let ports = ports(ctx.load(offset).map_err(|_| ())?);
        Headers::new(src, dst, proto, ports, offset)
    };
    headers.routed = routed;
    Ok(headers)
}

/// IPv6 extension headers that may precede the transport header (RFC 8200 §4, RFC 4302).
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
/// Extension headers followed at most (RFC 8200 §4.1 allows each once, destination options twice).
const MAX_EXTENSION_HEADERS: usize = 6;

/// From the fixed header's next-header value to the transport header: its protocol and offset, or
/// offset 0 when there are no ports to read (a non-first fragment, or more extension headers than
/// a valid packet has), and whether a routing header with segments left was passed. Only packets
/// carrying extension headers come here, through `bpf_skb_load_bytes` at the variable offsets.
#[inline(always)]
fn skip_extension_headers(ctx: &SkBuffContext, mut next: u8) -> Result<(u8, usize, bool), ()> {
    let mut offset = IPV6_HEADER_LEN;
    let mut routed = false;
    for _ in 0..MAX_EXTENSION_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                // Next header, length in 8-octet units not counting the first 8; a routing
                // header then has its type and segments left (RFC 8200 §4.4).
                let h: [u8; 4] = ctx.load(offset).map_err(|_| ())?;
                if next == IPV6_ROUTING && h[3] != 0 {
                    routed = true;
                }
                next = h[0];
                offset += (usize::from(h[1]) + 1) * 8;
            }
            IPV6_AUTH => {
                // Length in 4-octet units minus 2 (RFC 4302 §2.2).
                let h: [u8; 2] = ctx.load(offset).map_err(|_| ())?;
                next = h[0];
                offset += (usize::from(h[1]) + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let h: [u8; 4] = ctx.load(offset).map_err(|_| ())?;
                next = h[0];
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return Ok((next, 0, routed));
                }
                offset += 8;
            }
            _ => return Ok((next, offset, routed)),
        }
    }
    Ok((next, 0, routed))
}

#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    match try_egress(&ctx) {
        Ok(verdict) => verdict,
        Err(()) => {
            count(STAT_ERROR);
            if may_log() {
                debug!(
                    &ctx,
                    target: EBPF_LOG_TARGET,
                    "egress: unreadable headers, dropped (fail closed): ethertype {:x} length {}",
                    u16::from_be(ctx.skb.protocol() as u16),
                    ctx.len()
                );
            }
            ON_ERROR
        }
    }
}

fn try_egress(ctx: &SkBuffContext) -> Result<i32, ()> {
    let protocol = ctx.skb.protocol();
    if protocol == ETH_P_IP_BE {
        let headers = parse_v4(ctx)?;
        let routed = headers.options && source_routed_v4(ctx);
        Ok(decide_egress(ctx, &headers, routed, &BLOCKED_V4, |now| {
            judge_v4(headers.dst, now)
        }))
    } else if protocol == ETH_P_IPV6_BE {
        let headers = parse_v6(ctx)?;
        if link_control_v6(ctx, &headers) {
            count(STAT_ALLOW_NET);
            return Ok(VERDICT_ALLOW);
        }
        Ok(decide_egress(
            ctx,
            &headers,
            headers.routed,
            &BLOCKED_V6,
            |now| judge(&HOSTS_V6, &NETS_V6, headers.dst, now),
        ))
    } else {
        count(STAT_PASS_NON_IP);
        Ok(VERDICT_ALLOW)
    }
}

/// ICMPv6 types of the kernel's link control: MLD query/report/done (130-132), router and
/// neighbour discovery (133-137, RFC 4861) and the MLDv2 report (143, RFC 3810).
#[inline(always)]
fn is_link_control_type(kind: u8) -> bool {
    (130..=137).contains(&kind) || kind == 143
}

/// `ff02::1:2`, All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1), and the servers' port.
const DHCPV6_SERVERS: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2];
const DHCPV6_SERVER_PORT: u16 = 547;

/// Whether an outgoing IPv6 packet is the link's own control traffic, which the kernel sends from
/// the sockets of the namespace (owned by the cgroup of the process that created it, the v2 root
/// for the host): neighbour discovery and MLD to a link-local (fe80::/10) or multicast (ff00::/8)
/// address, and DHCPv6 to its servers' link-local group. The same ICMPv6 types to any other
/// address, and other ICMPv6 (an echo request to ff02::1), are judged like any packet.
#[inline(always)]
fn link_control_v6(ctx: &SkBuffContext, headers: &Headers<16>) -> bool {
    let dst = headers.dst;
    if headers.proto == IPPROTO_ICMPV6 {
        let scoped = dst[0] == 0xff || (dst[0] == 0xfe && dst[1] & 0xc0 == 0x80);
        return scoped && !headers.routed && is_link_control_type(headers.l4_byte(ctx, 0));
    }
    headers.proto == IPPROTO_UDP
        && headers.dport == DHCPV6_SERVER_PORT
        && !headers.routed
        && dst == DHCPV6_SERVERS
}

/// The egress verdict, the same for both families: a source-routed packet (`routed`) is dropped;
/// else the family's host/network verdict (`judge` at the current boot time), then a whitelisted
/// service, then a live flow opened from outside (unless the peer is `blocked`); else drop
/// (counted per cgroup and reported).
#[inline(always)]
fn decide_egress<const N: usize>(
    ctx: &SkBuffContext,
    headers: &Headers<N>,
    routed: bool,
    blocked: &LpmTrie<[u8; N], u32>,
    judge: impl FnOnce(u64) -> (u32, i32),
) -> i32 {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let packet = headers.outgoing();
    let flow = packet.flow();
    // SAFETY: the context's skb pointer is valid for the whole program run.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let (stat, verdict) = if routed {
        (STAT_DROP, VERDICT_DROP)
    } else {
        judge(now)
    };
    if verdict == VERDICT_ALLOW || (!routed && is_service(&packet)) {
        remember_outbound(&flow, now);
        count(if verdict == VERDICT_ALLOW {
            stat
        } else {
            STAT_ALLOW_HOST
        });
        count_cgroup(&ALLOWS, cgroup_id);
        return VERDICT_ALLOW;
    }
    if !routed && reply_to_inbound(ctx, headers, blocked, cgroup_id, now) {
        count(STAT_ALLOW_INBOUND_REPLY);
        count_cgroup(&ALLOWS, cgroup_id);
        return VERDICT_ALLOW;
    }
    count(stat);
    count_cgroup(&DROPS, cgroup_id);
    report_denied(cgroup_id, &flow, now);
    if routed && may_log() {
        log_source_routed(ctx, &flow);
    }
    VERDICT_DROP
}

/// The debug record of a dropped source-routed packet: its denied event names only the first hop.
#[inline(always)]
fn log_source_routed(ctx: &SkBuffContext, flow: &FlowKey) {
    if flow.family == 4 {
        let hop = [flow.addr[0], flow.addr[1], flow.addr[2], flow.addr[3]];
        debug!(
            ctx,
            target: EBPF_LOG_TARGET,
            "egress: source-routed packet dropped: first hop {:i} proto {} port {}",
            hop,
            flow.proto,
            flow.remote_port
        );
    } else {
        debug!(
            ctx,
            target: EBPF_LOG_TARGET,
            "egress: source-routed packet dropped: first hop {:i} proto {} port {}",
            flow.addr,
            flow.proto,
            flow.remote_port
        );
    }
}

/// Whether the packet goes to a whitelisted service (address, port and protocol).
#[inline(always)]
fn is_service<const N: usize>(packet: &Packet<N>) -> bool {
    if packet.proto != IPPROTO_TCP && packet.proto != IPPROTO_UDP {
        return false;
    }
    let [a, b] = addr_words(&packet.remote);
    let port = packet.remote_port.to_ne_bytes();
    let family = if N == 4 { 4 } else { 6 };
    // SAFETY: every bit pattern is a valid key (plain bytes and integers); same size.
    let key: ServiceKey = unsafe {
        core::mem::transmute([
            a,
            b,
            u64::from_ne_bytes([port[0], port[1], packet.proto, family, 0, 0, 0, 0]),
        ])
    };
    // SAFETY: the value is plain data, only checked for presence.
    unsafe { SERVICES.get(key) }.is_some()
}

/// The [`INBOUND`] key of a flow: remote and local ends, cgroup, protocol.
#[inline(always)]
fn inbound_key<const N: usize>(
    remote: &[u8; N],
    local: &[u8; N],
    cgroup_id: u64,
    remote_port: u16,
    local_port: u16,
    proto: u8,
) -> InboundKey {
    let [r0, r1] = addr_words(remote);
    let [l0, l1] = addr_words(local);
    let (rp, lp) = (remote_port.to_ne_bytes(), local_port.to_ne_bytes());
    let family = if N == 4 { 4 } else { 6 };
    // SAFETY: every bit pattern is a valid key (plain bytes and integers); same size.
    unsafe {
        core::mem::transmute([
            r0,
            r1,
            l0,
            l1,
            cgroup_id,
            u64::from_ne_bytes([rp[0], rp[1], lp[0], lp[1], proto, family, 0, 0]),
        ])
    }
}

/// Whether an outgoing packet answers a live flow the peer opened towards this cgroup's socket on
/// the same local address and port. A reply marks the flow replied; the socket's FIN moves it to
/// the short closing timeout and its RST ends it. An expired flow, or one whose peer is now
/// `blocked`, is removed.
#[inline(always)]
fn reply_to_inbound<const N: usize>(
    ctx: &SkBuffContext,
    headers: &Headers<N>,
    blocked: &LpmTrie<[u8; N], u32>,
    cgroup_id: u64,
    now: u64,
) -> bool {
    if headers.proto != IPPROTO_TCP && headers.proto != IPPROTO_UDP {
        return false;
    }
    let key = inbound_key(
        &headers.dst,
        &headers.src,
        cgroup_id,
        headers.dport,
        headers.sport,
        headers.proto,
    );
    let Some(value) = INBOUND.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: pointer from a successful lookup, plain data; a racing update is harmless.
    let value = unsafe { &mut *value };
    let live = now.wrapping_sub(value.seen_ns) < inbound::timeout_ns(headers.proto, value.state);
    if !live || blocked.get(Key::new((N * 8) as u32, headers.dst)).is_some() {
        let _ = INBOUND.remove(key);
        return false;
    }
    let mut state = value.state | inbound::STATE_REPLIED;
    if headers.proto == IPPROTO_TCP {
        let flags = headers.l4_byte(ctx, TCP_FLAGS_OFFSET);
        if flags & TCP_RST != 0 {
            let _ = INBOUND.remove(key);
            return true;
        }
        if flags & TCP_FIN != 0 {
            state |= inbound::STATE_CLOSING;
        }
    }
    if state != value.state {
        value.state = state;
    }
    true
}

/// The IPv4 host table then the network trie: the daemon's `HostTable::get` walk, from the home
/// slot to the first empty slot. The entry word (address and deadline) is read in one load. A
/// live authorized entry gets its last-seen time refreshed (the sweeper's liveness signal).
#[inline(always)]
fn judge_v4(daddr: [u8; 4], now: u64) -> (u32, i32) {
    let addr = u32::from_be_bytes(daddr);
    // SAFETY: read-only globals set by the loader; volatile so they are not constant-folded.
    let (seed, home_slots) = unsafe {
        (
            core::ptr::read_volatile(&HOST_SEED),
            core::ptr::read_volatile(&HOST_HOME_SLOTS),
        )
    };
    let home = host_table::home_of(addr, seed, home_slots);
    // A miss is walked again while the daemon was moving entries during the walk (the version
    // slot changed or is odd): the entry may have been moved past the walk. A found entry is
    // always genuine (address and deadline are one word).
    let version = host_table::version_slot(home_slots);
    let mut found = None;
    for _ in 0..host_table::READ_ATTEMPTS {
        let before = read_version(version);
        found = find_v4(addr, home);
        if found.is_some() || (before & 1 == 0 && read_version(version) == before) {
            break;
        }
    }
    let mut expired = false;
    if let Some((slot, word)) = found {
        if host_table::is_live(host_table::entry_expires(word), now) {
            let seen = host_table::to_units(now);
            // SAFETY: the pointer comes from a successful array lookup and stays valid for the
            // program run; last_seen is only written here, a lost write is harmless.
            unsafe {
                if core::ptr::read_volatile(&raw const (*slot).flags) & FLAG_AUTHORIZED != 0
                    && core::ptr::read_volatile(&raw const (*slot).last_seen) != seen
                {
                    core::ptr::write_volatile(&raw mut (*slot).last_seen, seen);
                }
            }
            return (STAT_ALLOW_HOST, VERDICT_ALLOW);
        }
        expired = true;
    }
    judge_network(&NETS_V4, daddr, expired)
}

/// After the host lookup (`expired`: it found a dead entry): a whitelisted network, else drop.
#[inline(always)]
fn judge_network<const N: usize>(
    nets: &LpmTrie<[u8; N], u32>,
    daddr: [u8; N],
    expired: bool,
) -> (u32, i32) {
    if nets.get(Key::new((N * 8) as u32, daddr)).is_some() {
        (STAT_ALLOW_NET, VERDICT_ALLOW)
    } else if expired {
        (STAT_DROP_EXPIRED, VERDICT_DROP)
    } else {
        (STAT_DROP, VERDICT_DROP)
    }
}

/// The IPv4 table's move counter (see `host_table::version_slot`).
#[inline(always)]
fn read_version(index: u32) -> u64 {
    match HOSTS_V4.get_ptr(index) {
        // SAFETY: pointer from a successful array lookup; the daemon stores the word atomically.
        Some(slot) => unsafe { core::ptr::read_volatile(&raw const (*slot).entry) },
        None => 0,
    }
}

/// The slot holding `addr` and its entry word: the walk from the home slot to the first empty
/// slot, at most `PROBES` slots (the daemon's `HostTable::get`).
#[inline(always)]
fn find_v4(addr: u32, home: u32) -> Option<(*mut HostSlot, u64)> {
    for probe in 0..host_table::PROBES {
        let slot = HOSTS_V4.get_ptr_mut(home.wrapping_add(probe))?;
        // SAFETY: the pointer comes from a successful array lookup and stays valid for the
        // program run; the daemon writes the entry word with single 8-byte stores.
        let word = unsafe { core::ptr::read_volatile(&raw const (*slot).entry) };
        if word == 0 {
            return None;
        }
        if host_table::entry_addr(word) == addr {
            return Some((slot, word));
        }
    }
    None
}

/// Host map then network trie (IPv6). A live authorized entry gets its last-seen time refreshed (the
/// sweeper's liveness signal). Returns the counter to bump with the verdict.
#[inline(always)]
fn judge<const N: usize>(
    hosts: &HashMap<[u8; N], HostValue>,
    nets: &LpmTrie<[u8; N], u32>,
    daddr: [u8; N],
    now: u64,
) -> (u32, i32) {
    let mut expired = false;
    if let Some(value) = hosts.get_ptr_mut(daddr) {
        // SAFETY: the pointer comes from a successful map lookup and the value is plain data; a
        // concurrent update replaces the element (RCU), so a lost last-seen write is harmless.
        let value = unsafe { &mut *value };
        if value.is_live(now) {
            if value.flags & FLAG_AUTHORIZED != 0
                && now.wrapping_sub(value.last_seen_ns) > LAST_SEEN_GRANULARITY_NS
            {
                value.last_seen_ns = now;
            }
            return (STAT_ALLOW_HOST, VERDICT_ALLOW);
        }
        expired = true;
    }
    judge_network(nets, daddr, expired)
}

#[cgroup_skb(ingress)]
pub fn ingress(ctx: SkBuffContext) -> i32 {
    match try_ingress(&ctx) {
        Ok(verdict) => verdict,
        Err(()) => {
            count(STAT_ERROR);
            if drop_input() {
                VERDICT_DROP
            } else {
                VERDICT_ALLOW
            }
        }
    }
}

fn try_ingress(ctx: &SkBuffContext) -> Result<i32, ()> {
    // SAFETY: reading a field of the context the kernel handed us.
    if unsafe { (*ctx.skb.skb).ifindex } == LOOPBACK_IFINDEX {
        return Ok(VERDICT_ALLOW);
    }
    let protocol = ctx.skb.protocol();
    if protocol == ETH_P_IP_BE {
        let headers = parse_v4(ctx)?;
        ingress_verdict(ctx, &headers, protocol)
    } else if protocol == ETH_P_IPV6_BE {
        let headers = parse_v6(ctx)?;
        ingress_verdict(ctx, &headers, protocol)
    } else {
        Ok(VERDICT_ALLOW)
    }
}

#[inline(always)]
fn ingress_verdict<const N: usize>(
    ctx: &SkBuffContext,
    headers: &Headers<N>,
    protocol: u32,
) -> Result<i32, ()> {
    let flow = headers.incoming().flow();
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if is_outbound(&flow, now) {
        // A reply to a flow egress let out ("ct state established").
        return Ok(VERDICT_ALLOW);
    }
    if drop_input() {
        // An ICMP error about a flow egress let out ("ct state related"): port unreachable,
        // and above all "packet too big", without which path MTU discovery breaks.
        let quoted = if protocol == ETH_P_IP_BE {
            quoted_flow_v4(ctx)
        } else {
            quoted_flow_v6(ctx)
        };
        if quoted.is_some_and(|quoted| OUTBOUND.get_ptr(quoted).is_some()) {
            return Ok(VERDICT_ALLOW);
        }
        count(STAT_DROP_INPUT);
        return Ok(VERDICT_DROP);
    }
    learn_inbound(ctx, headers, now);
    Ok(VERDICT_ALLOW)
}

/// Records or refreshes the flow of an unsolicited inbound packet in [`INBOUND`], keyed by the
/// socket's cgroup and the local address and port: a TCP connection is learned from its SYN
/// only (a bare ACK, a FIN or data open nothing), a UDP flow from any datagram; other protocols
/// and packets without ports are never learned. Later inbound packets of a known flow refresh
/// it, and the peer's ACK after a reply confirms it (the longer established timeout).
#[inline(always)]
fn learn_inbound<const N: usize>(ctx: &SkBuffContext, headers: &Headers<N>, now: u64) {
    if (headers.proto != IPPROTO_TCP && headers.proto != IPPROTO_UDP) || headers.l4 == 0 {
        return;
    }
    // SAFETY: the context's skb pointer is valid for the whole program run.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let key = inbound_key(
        &headers.src,
        &headers.dst,
        cgroup_id,
        headers.sport,
        headers.dport,
        headers.proto,
    );
    let flags = if headers.proto == IPPROTO_TCP {
        headers.l4_byte(ctx, TCP_FLAGS_OFFSET)
    } else {
        0
    };
    let syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if let Some(value) = INBOUND.get_ptr_mut(key) {
        // SAFETY: pointer from a successful lookup, plain data; a racing update is harmless.
        let value = unsafe { &mut *value };
        let live =
            now.wrapping_sub(value.seen_ns) < inbound::timeout_ns(headers.proto, value.state);
        if live || syn || headers.proto == IPPROTO_UDP {
            let mut state = if live { value.state } else { 0 };
            if live && state & inbound::STATE_REPLIED != 0 && !syn {
                state |= inbound::STATE_CONFIRMED;
            }
            if now.wrapping_sub(value.seen_ns) > FLOW_REFRESH_NS || state != value.state {
                value.seen_ns = now;
                value.state = state;
            }
        }
        return;
    }
    if headers.proto == IPPROTO_TCP && !syn {
        return;
    }
    let value = InboundValue {
        seen_ns: now,
        state: 0,
        _pad: 0,
    };
    let _ = INBOUND.insert(key, value, 0);
}

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// Length of the ICMP/ICMPv6 header before the quoted packet.
const ICMP_HEADER_LEN: usize = 8;

/// The outbound flow an inbound ICMP error is about: the packet it quotes (RFC 792: destination
/// unreachable 3, time exceeded 11, parameter problem 12) was sent by us, so the flow's remote end
/// is the quote's destination. `None` for anything else or an unreadable quote.
#[inline(always)]
fn quoted_flow_v4(ctx: &SkBuffContext) -> Option<FlowKey> {
    let first: u8 = ctx.load(0).ok()?;
    let proto: u8 = ctx.load(IPV4_PROTO_OFFSET).ok()?;
    if proto != IPPROTO_ICMP {
        return None;
    }
    let icmp = usize::from(first & 0x0f) * 4;
    let kind: u8 = ctx.load(icmp).ok()?;
    if !matches!(kind, 3 | 11 | 12) {
        return None;
    }
    let quote = icmp + ICMP_HEADER_LEN;
    let quote_first: u8 = ctx.load(quote).ok()?;
    let quote_proto: u8 = ctx.load(quote + IPV4_PROTO_OFFSET).ok()?;
    let remote: [u8; 4] = ctx.load(quote + IPV4_DADDR_OFFSET).ok()?;
    quoted_flow(
        ctx,
        remote,
        quote_proto,
        quote + usize::from(quote_first & 0x0f) * 4,
    )
}

/// The flow of a quoted packet we sent to `remote`, its transport header at `l4`.
#[inline(always)]
fn quoted_flow<const N: usize>(
    ctx: &SkBuffContext,
    remote: [u8; N],
    proto: u8,
    l4: usize,
) -> Option<FlowKey> {
    let (local_port, remote_port) = if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        ports(ctx.load(l4).ok()?)
    } else {
        (0, 0)
    };
    Some(
        Packet {
            remote,
            proto,
            remote_port,
            local_port,
        }
        .flow(),
    )
}

/// The same for ICMPv6 errors (RFC 4443: destination unreachable 1, packet too big 2, time
/// exceeded 3, parameter problem 4); the quote's own extension headers are not walked.
#[inline(always)]
fn quoted_flow_v6(ctx: &SkBuffContext) -> Option<FlowKey> {
    let next: u8 = ctx.load(IPV6_NEXT_HEADER_OFFSET).ok()?;
    let (proto, icmp, _) = skip_extension_headers(ctx, next).ok()?;
    if proto != IPPROTO_ICMPV6 || icmp == 0 {
        return None;
    }
    let kind: u8 = ctx.load(icmp).ok()?;
    if !(1..=4).contains(&kind) {
        return None;
    }
    let quote = icmp + ICMP_HEADER_LEN;
    let quote_proto: u8 = ctx.load(quote + IPV6_NEXT_HEADER_OFFSET).ok()?;
    let remote: [u8; 16] = ctx.load(quote + IPV6_DADDR_OFFSET).ok()?;
    quoted_flow(ctx, remote, quote_proto, quote + IPV6_HEADER_LEN)
}

#[inline(always)]
fn drop_input() -> bool {
    CONFIG.get(CONFIG_DROP_INPUT).is_some_and(|v| *v != 0)
}

/// Records `flow` as seen at `now`, writing only when it is new or its time is stale.
#[inline(always)]
fn remember(map: &LruHashMap<FlowKey, u64>, flow: &FlowKey, now: u64) {
    if let Some(seen) = map.get_ptr_mut(flow) {
        // SAFETY: pointer from a successful lookup, plain data.
        let seen = unsafe { &mut *seen };
        if now.wrapping_sub(*seen) > FLOW_REFRESH_NS {
            *seen = now;
        }
        return;
    }
    let _ = map.insert(flow, now, 0);
}

/// A CPU's most recent flow (see [`RECENT_OUT`], [`RECENT_IN`]).
#[repr(C)]
#[derive(Clone, Copy)]
struct RecentFlow {
    words: [u64; 3],
    /// When its `OUTBOUND` entry was last found or written (boot time, ns).
    seen_ns: u64,
}

/// Per CPU, the flow whose `OUTBOUND` entry egress last found or wrote, and when: the packets of
/// a transfer follow one another on a CPU, and each one after the first skips the hashed lookup
/// for [`FLOW_REFRESH_NS`] (the refresh interval of the entry's timestamp anyway). Scratch state,
/// not pinned: the programs of a restarted daemon start with it empty.
#[map(name = "RECENT_OUT")]
static RECENT_OUT: PerCpuArray<RecentFlow> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, the flow ingress last found in `OUTBOUND`, and when: the replies of a transfer (the
/// acknowledgements of an upload) skip the hashed lookup for [`FLOW_REFRESH_NS`]. An entry the LRU
/// evicts meanwhile still counts as present until then (egress writes it back with its next
/// packet anyway). Scratch state like [`RECENT_OUT`].
#[map(name = "RECENT_IN")]
static RECENT_IN: PerCpuArray<RecentFlow> = PerCpuArray::with_max_entries(1, 0);

/// Whether `flow` is one egress let out (in `OUTBOUND`), as found by this CPU less than
/// [`FLOW_REFRESH_NS`] ago or looked up now.
#[inline(always)]
fn is_outbound(flow: &FlowKey, now: u64) -> bool {
    recent_or(&RECENT_IN, flow, now, || OUTBOUND.get_ptr(flow).is_some())
}

/// Records an outgoing `flow` in `OUTBOUND` (see [`remember`]) unless this CPU did so for the
/// same flow less than [`FLOW_REFRESH_NS`] ago.
#[inline(always)]
fn remember_outbound(flow: &FlowKey, now: u64) {
    recent_or(&RECENT_OUT, flow, now, || {
        remember(&OUTBOUND, flow, now);
        true
    });
}

/// True when `recent` (this CPU's slot) holds `flow` from less than [`FLOW_REFRESH_NS`] ago;
/// otherwise `check` decides, and a flow it accepts becomes the slot's, seen at `now`.
#[inline(always)]
fn recent_or(
    recent: &PerCpuArray<RecentFlow>,
    flow: &FlowKey,
    now: u64,
    check: impl FnOnce() -> bool,
) -> bool {
    let Some(slot) = recent.get_ptr_mut(0) else {
        return check();
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
    let slot = unsafe { &mut *slot };
    let words = flow.words();
    // Word by word: an array comparison would call a byte loop.
    if slot.words[0] == words[0]
        && slot.words[1] == words[1]
        && slot.words[2] == words[2]
        && now.wrapping_sub(slot.seen_ns) <= FLOW_REFRESH_NS
    {
        return true;
    }
    if !check() {
        return false;
    }
    slot.words = words;
    slot.seen_ns = now;
    true
}

/// Bumps a per-cgroup counter ([`DROPS`] or [`ALLOWS`]).
#[inline(always)]
fn count_cgroup(map: &PerCpuHashMap<u64, u64>, cgroup_id: u64) {
    if let Some(counter) = map.get_ptr_mut(cgroup_id) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    } else {
        let _ = map.insert(cgroup_id, 1, 0);
    }
}

/// Whether one more event fits this CPU's one-second window of `limit` events (counted if so).
#[inline(always)]
fn within_rate(rate: &PerCpuArray<RateState>, limit: u64, now: u64) -> bool {
    let Some(state) = rate.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
    let state = unsafe { &mut *state };
    if now.wrapping_sub(state.window_start_ns) >= 1_000_000_000 {
        state.window_start_ns = now;
        state.count = 0;
    }
    if state.count >= limit {
        return false;
    }
    state.count += 1;
    true
}

/// Whether the program may write a debug record now: the daemon enabled debug records for this
/// program (`AYA_LOG_LEVEL`, set before load; checked first, so with debug off the limiter is
/// never touched) and this CPU wrote fewer than `LOG_RECORDS_PER_SEC` in the current second.
#[inline(always)]
fn may_log() -> bool {
    if !aya_log_ebpf::macro_support::level_enabled(Level::Debug) {
        return false;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    within_rate(&LOG_RATE, LOG_RECORDS_PER_SEC, now)
}

/// Sends a [`DeniedEvent`], at most `DENIED_EVENTS_PER_SEC` per CPU per second.
#[inline(always)]
fn report_denied(cgroup_id: u64, flow: &FlowKey, now: u64) {
    if !within_rate(&DENIED_RATE, DENIED_EVENTS_PER_SEC, now) {
        return;
    }
    let event = DeniedEvent {
        cgroup_id,
        addr: flow.addr,
        port: flow.remote_port,
        proto: flow.proto,
        family: flow.family,
        _pad: 0,
    };
    let _ = DENIED.output::<DeniedEvent>(&event, 0);
}

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
