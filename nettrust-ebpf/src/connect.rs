//! The connect-time verdict: `connect4`/`connect6`, socket-address programs attached to every
//! filtered cgroup next to `egress`. A TCP `connect` to a destination `egress` would drop fails
//! at once with `EPERM` instead of after the client's SYN retries time out; the drop is counted
//! and reported like one of `egress` (`STAT_DROP`, the cgroup's `DROPS`, a denied event marked
//! `EVENT_CONNECT`). With DNS capture on, a query's destination is rewritten first (the
//! `capture` module) and the listener it now names is judged.
//!
//! The judgement is `egress`'s, on the address alone (`judge_v4`/`judge_v6` for the policy of
//! the cgroup that created the socket, as `egress` judges its packets: `scopes::socket_policy`,
//! from `owners::sock_owner`'s record; the calling task's for a socket created before the
//! programs were attached; then a whitelisted service for the proxy's own marked sockets):
//! `egress`'s other ways out do not apply to a connection this host opens (inbound replies, the
//! kernel's IPv6 link control). An unspecified destination (`0.0.0.0`, `::`) proceeds: the
//! kernel connects to loopback instead, which `egress` judges. An audit-mode policy lets the
//! call proceed (`egress` reports the packets). UDP `connect` always proceeds: it sends nothing,
//! and a server may connect a socket to a client that reached it, whose replies `egress` lets
//! out per datagram. The packets of an allowed connection are still judged by `egress`, so an
//! address whose grant expires in between is dropped there.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use core::ptr::read_volatile;
use nettrust_common::{EVENT_CONNECT, FLOW_AT_CONNECT, FLOW_DENIED, POLICY_AUDIT, VERDICT_ALLOW};

use crate::{
    capture::{MAPPED, PROCEED, from_proxy, ip6, port, redirect_v4, redirect_v6},
    counters::{count, count_cgroup, judged, record_flow, report_denied},
    judge::{is_service, judge_v4, judge_v6},
    maps::DROPS,
    parse::{IPPROTO_TCP, Packet},
};

/// A socket-address program's "refuse the call" (`connect` fails with `EPERM`).
const REFUSE: i32 = 0;

/// `SOCK_STREAM` (include/linux/net.h).
const SOCK_STREAM: u32 = 1;

#[cgroup_sock_addr(connect4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya attribute macro fixes the entry point's signature"
)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    redirect_v4(&ctx);
    let sa = ctx.sock_addr;
    if !is_tcp(sa) {
        return PROCEED;
    }
    // SAFETY: `user_ip4` is readable in the IPv4 hooks.
    let addr = unsafe { read_volatile(&raw const (*sa).user_ip4) }.to_ne_bytes();
    if addr == [0; 4] {
        // The kernel connects to loopback instead; `egress` judges those packets.
        return PROCEED;
    }
    verdict(sa, addr, |now, scope| judge_v4(addr, now, scope))
}

#[cgroup_sock_addr(connect6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya attribute macro fixes the entry point's signature"
)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    redirect_v6(&ctx);
    let sa = ctx.sock_addr;
    if !is_tcp(sa) {
        return PROCEED;
    }
    let w = ip6(sa);
    if w[0] == 0 && w[1] == 0 && (w[2] == 0 || w[2] == MAPPED) && w[3] == 0 {
        // `::` and `::ffff:0.0.0.0`: the kernel connects to loopback instead; `egress` judges
        // those packets.
        return PROCEED;
    }
    if w[0] == 0 && w[1] == 0 && w[2] == MAPPED {
        // An IPv4-mapped destination leaves as IPv4: judged as `egress` judges those packets.
        let addr = w[3].to_ne_bytes();
        return verdict(sa, addr, |now, scope| judge_v4(addr, now, scope));
    }
    let mut addr = [0u8; 16];
    for (i, word) in w.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    verdict(sa, addr, |now, scope| judge_v6(addr, now, scope))
}

/// Whether the call connects a TCP socket.
#[inline(always)]
fn is_tcp(sa: *mut bpf_sock_addr) -> bool {
    // SAFETY: `type` and `protocol` are readable in every socket-address hook.
    unsafe {
        read_volatile(&raw const (*sa).type_) == SOCK_STREAM
            && read_volatile(&raw const (*sa).protocol) == u32::from(IPPROTO_TCP)
    }
}

/// The verdict on a TCP connection to `addr` (port from the call): proceed when the calling
/// task's cgroup is not filtered, when `judge` allows at the current boot time for its scope,
/// for the proxy's marked socket to a whitelisted service, or in audit mode; else counted,
/// reported and refused.
#[inline(always)]
fn verdict<const N: usize>(
    sa: *mut bpf_sock_addr,
    addr: [u8; N],
    judge: impl FnOnce(u64, u32) -> (u32, i32),
) -> i32 {
    // SAFETY: helper on the context the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let Some(policy) = crate::scopes::socket_policy(cookie) else {
        return PROCEED;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let (stat, verdict) = judge(now, policy.scope);
    if verdict == VERDICT_ALLOW || policy.flags & POLICY_AUDIT != 0 {
        return PROCEED;
    }
    let packet = Packet {
        remote: addr,
        proto: IPPROTO_TCP,
        remote_port: port(sa),
        local_port: 0,
    };
    if is_service(&packet) && from_proxy(sa) {
        return PROCEED;
    }
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    count(stat);
    count_cgroup(&DROPS, cgroup_id);
    let flow = packet.flow();
    report_denied(cgroup_id, &flow, now, policy.scope, EVENT_CONNECT);
    let judged = judged(FLOW_DENIED, stat, FLOW_AT_CONNECT, policy.scope);
    record_flow(&flow, cgroup_id, now, judged, cookie);
    REFUSE
}
