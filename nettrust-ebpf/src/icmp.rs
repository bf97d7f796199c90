//! The flow an inbound ICMP or ICMPv6 error is about, read from the packet it quotes, so that
//! with `--firewall-drop-input` the errors about flows egress let out still come in ("ct state
//! related": port unreachable, and above all "packet too big" for path MTU discovery).

use aya_ebpf::programs::SkBuffContext;
use nettrust_common::FlowKey;

use crate::parse::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_DADDR_OFFSET, IPV4_PROTO_OFFSET,
    IPV6_DADDR_OFFSET, IPV6_HEADER_LEN, IPV6_NEXT_HEADER_OFFSET, Packet, ports,
    skip_extension_headers,
};

/// Length of the ICMP/ICMPv6 header before the quoted packet.
const ICMP_HEADER_LEN: usize = 8;

/// The outbound flow an inbound ICMP error is about: the packet it quotes (RFC 792: destination
/// unreachable 3, time exceeded 11, parameter problem 12) was sent by us, so the flow's remote end
/// is the quote's destination. `None` for anything else or an unreadable quote.
#[inline(always)]
pub fn quoted_flow_v4(ctx: &SkBuffContext) -> Option<FlowKey> {
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
pub fn quoted_flow_v6(ctx: &SkBuffContext) -> Option<FlowKey> {
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
