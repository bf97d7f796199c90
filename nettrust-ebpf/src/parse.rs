//! Reading a packet: the header offsets of IPv4, IPv6 and TCP/UDP, the addresses, protocol and
//! ports of a packet (direct packet access for the common case, `bpf_skb_load_bytes` for IPv4
//! options, IPv6 extension headers and non-linear packets), IPv4 source-route options, and the
//! flow key a packet's remote end makes.

use aya_ebpf::programs::SkBuffContext;
use nettrust_common::{FlowKey, ServiceKey};

/// `ETH_P_IP` / `ETH_P_IPV6` as found in `__sk_buff.protocol` (network byte order).
pub const ETH_P_IP_BE: u32 = (0x0800u16).to_be() as u32;
pub const ETH_P_IPV6_BE: u32 = (0x86DDu16).to_be() as u32;
/// Offsets in the IPv4 header (RFC 791) and the IPv6 header (RFC 8200). cgroup_skb programs see
/// the packet from the network header on.
pub const IPV4_PROTO_OFFSET: usize = 9;
const IPV4_FRAG_OFFSET: usize = 6;
const IPV4_SADDR_OFFSET: usize = 12;
pub const IPV4_DADDR_OFFSET: usize = 16;
pub const IPV6_NEXT_HEADER_OFFSET: usize = 6;
const IPV6_SADDR_OFFSET: usize = 8;
pub const IPV6_DADDR_OFFSET: usize = 24;
pub const IPV6_HEADER_LEN: usize = 40;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Bytes of the IPv4 header (without options) plus the 4 port bytes of TCP/UDP after it.
const IPV4_HEAD: usize = 20 + 4;
/// Bytes of the IPv6 header plus the 4 port bytes of TCP/UDP right after it.
const IPV6_HEAD: usize = IPV6_HEADER_LEN + 4;
/// Offset of the flags byte in the TCP header (RFC 9293 §3.1).
pub const TCP_FLAGS_OFFSET: usize = 13;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The parts of a packet the programs judge: the remote address (destination on egress, source on
/// ingress) and the transport ports.
pub struct Packet<const N: usize> {
    pub remote: [u8; N],
    pub proto: u8,
    pub remote_port: u16,
    pub local_port: u16,
}

/// `N` address bytes into 16 (IPv4 in the first 4, the rest 0), a word at a time.
#[inline(always)]
pub fn addr_words<const N: usize>(addr: &[u8; N]) -> [u64; 2] {
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

/// The [`ServiceKey`] of an endpoint (address, port, protocol), assembled a word at a time.
#[inline(always)]
pub fn endpoint_key<const N: usize>(addr: &[u8; N], port: u16, proto: u8) -> ServiceKey {
    let [a, b] = addr_words(addr);
    let port = port.to_ne_bytes();
    let family = if N == 4 { 4 } else { 6 };
    // SAFETY: every bit pattern is a valid key (plain bytes and integers); same size.
    unsafe {
        core::mem::transmute([
            a,
            b,
            u64::from_ne_bytes([port[0], port[1], proto, family, 0, 0, 0, 0]),
        ])
    }
}

impl<const N: usize> Packet<N> {
    /// The flow key, assembled a word at a time (byte stores and a call to `memset` for the
    /// zero bytes otherwise).
    #[inline(always)]
    pub fn flow(&self) -> FlowKey {
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
pub fn ports(bytes: [u8; 4]) -> (u16, u16) {
    (
        u16::from_be_bytes([bytes[0], bytes[1]]),
        u16::from_be_bytes([bytes[2], bytes[3]]),
    )
}

/// The header fields the programs judge, as read from one packet.
pub struct Headers<const N: usize> {
    pub src: [u8; N],
    pub dst: [u8; N],
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// Offset of the transport header; 0 when there is none to read (a non-first fragment).
    pub l4: usize,
    /// IPv4 options present (the header is longer than 20 bytes).
    pub options: bool,
    /// An IPv6 routing header with segments left: the destination is only the next hop.
    pub routed: bool,
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
    pub fn l4_byte(&self, ctx: &SkBuffContext, at: usize) -> u8 {
        if self.l4 == 0 {
            return 0;
        }
        ctx.load::<u8>(self.l4 + at).unwrap_or(0)
    }

    /// The packet as egress judges it (the remote end is the destination).
    #[inline(always)]
    pub fn outgoing(&self) -> Packet<N> {
        Packet {
            remote: self.dst,
            proto: self.proto,
            remote_port: self.dport,
            local_port: self.sport,
        }
    }

    /// The packet as ingress judges it (the remote end is the source).
    #[inline(always)]
    pub fn incoming(&self) -> Packet<N> {
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
pub fn parse_v4(ctx: &SkBuffContext) -> Result<Headers<4>, ()> {
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
pub fn source_routed_v4(ctx: &SkBuffContext) -> bool {
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
pub fn parse_v6(ctx: &SkBuffContext) -> Result<Headers<16>, ()> {
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
pub fn skip_extension_headers(ctx: &SkBuffContext, mut next: u8) -> Result<(u8, usize, bool), ()> {
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
