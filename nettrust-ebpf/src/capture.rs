//! Transparent DNS capture: socket-address programs attached to the filtered cgroups next to
//! `egress`. A DNS query (destination port 53, UDP or TCP, any address) is sent to the proxy's
//! listener instead, chosen per network namespace (`CAPTURE_TARGETS`), and the client is shown
//! the resolver it asked: the original destination is remembered per socket (`CAPTURED`, keyed
//! by the socket cookie) and written back into the source address of what it receives and into
//! its peer address.
//!
//! - `connect4/6` (the `connect` module's programs, which also judge the destination) rewrite the
//!   destination of a TCP connection or a connected UDP socket;
//! - `sendmsg4/6` that of each UDP datagram sent with an explicit address (`sendto`, `sendmsg`,
//!   every message of `sendmmsg`), connected or not;
//! - `recvmsg4/6` (UDP) and `getpeername4/6` restore the asked address where the kernel reports
//!   the listener's.
//!
//! The programs run once per system call, in the calling process, before any packet exists: the
//! `egress` program then judges the rewritten packet (a listener, whitelisted) and records the
//! client's source for its policy exactly as for a direct query. An IPv4 destination written in
//! an IPv6 socket (IPv4-mapped) goes to the IPv4 listener. Not captured: the proxy's own upstream
//! sockets (`UPSTREAM_MARK`), so its queries never loop back to it; a namespace without a
//! listener of the family; anything that is not port 53 (DoT, DoH
//! and other ports stay subject to `egress` alone). Every program lets the call proceed (1):
//! capture rewrites, it never refuses.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap},
    programs::SockAddrContext,
};
use core::ptr::{read_volatile, write_volatile};
use nettrust_common::{
    CAPTURE_OTHER_NETNS, CAPTURE_PORT, CAPTURE_V4, CAPTURE_V6, CaptureTarget, CapturedDest,
    MAX_CAPTURE_TARGETS, MAX_CAPTURED, UPSTREAM_MARK,
};

/// Network namespace cookie → where its queries go (`nettrust_common::MAP_CAPTURE_TARGETS`).
#[map(name = "CAPTURE_TARGETS")]
static CAPTURE_TARGETS: HashMap<u64, CaptureTarget> =
    HashMap::with_max_entries(MAX_CAPTURE_TARGETS, 0);
/// Socket cookie → its last captured query (`nettrust_common::MAP_CAPTURED`).
#[map(name = "CAPTURED")]
static CAPTURED: LruHashMap<u64, CapturedDest> = LruHashMap::with_max_entries(MAX_CAPTURED, 0);

/// A socket-address program's "let the call proceed".
pub(crate) const PROCEED: i32 = 1;

/// The third word of an IPv4-mapped IPv6 address (`::ffff:0:0/96`, RFC 4291 §2.5.5.2).
pub(crate) const MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

#[cgroup_sock_addr(sendmsg4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya attribute macro fixes the entry point's signature"
)]
pub fn dns_sendmsg4(ctx: SockAddrContext) -> i32 {
    redirect_v4(&ctx);
    PROCEED
}

#[cgroup_sock_addr(recvmsg4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya attribute macro fixes the entry point's signature"
)]
pub fn dns_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore_v4(&ctx);
    PROCEED
}

#[cgroup_sock_addr(getpeername4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya attribute macro fixes the entry point's signature"
)]
pub fn dns_peername4(ctx: SockAddrContext) -> i32 {
    restore_v4(&ctx);
    PROCEED
}

#[cgroup_sock_addr(sendmsg6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya attribute macro fixes the entry point's signature"
)]
pub fn dns_sendmsg6(ctx: SockAddrContext) -> i32 {
    redirect_v6(&ctx);
    PROCEED
}

#[cgroup_sock_addr(recvmsg6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya attribute macro fixes the entry point's signature"
)]
pub fn dns_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore_v6(&ctx);
    PROCEED
}

#[cgroup_sock_addr(getpeername6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya attribute macro fixes the entry point's signature"
)]
pub fn dns_peername6(ctx: SockAddrContext) -> i32 {
    restore_v6(&ctx);
    PROCEED
}

/// Whether the calling task's cgroup is filtered: the programs are attached where `egress` is,
/// which for a cgroup pattern is an ancestor whose unmatched descendants stay unfiltered.
#[inline(always)]
fn filtered(_ctx: &SockAddrContext) -> bool {
    crate::scopes::current_policy().is_some()
}

/// The destination port of the call, host order (`user_port` holds it in network order in its
/// low 16 bits).
#[inline(always)]
pub(crate) fn port(sa: *mut bpf_sock_addr) -> u16 {
    // SAFETY: `sa` is the context the kernel passed; `user_port` is readable in every hook.
    u16::from_be(unsafe { read_volatile(&raw const (*sa).user_port) } as u16)
}

/// Writes `port` (host order) as the call's port.
#[inline(always)]
fn set_port(sa: *mut bpf_sock_addr, port: u16) {
    // SAFETY: as above; the kernel allows a 4-byte store to `user_port` in these hooks.
    unsafe { write_volatile(&raw mut (*sa).user_port, u32::from(port.to_be())) };
}

/// The listener of the calling socket's network namespace: its own entry, else the entry for
/// every other namespace.
#[inline(always)]
fn target(ctx: &SockAddrContext) -> Option<CaptureTarget> {
    // SAFETY: helper on the context the kernel passed.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: plain data, copied out at once.
    unsafe {
        CAPTURE_TARGETS
            .get(netns)
            .or_else(|| CAPTURE_TARGETS.get(CAPTURE_OTHER_NETNS))
            .copied()
    }
}

/// Whether the calling socket is one of the proxy's own upstream sockets (marked
/// `UPSTREAM_MARK` before they connect): their queries go where they are sent, so the proxy never
/// asks itself, even inside a filtered cgroup. Anybody else's query is captured, also one to the
/// upstream's own address.
#[inline(always)]
pub(crate) fn from_proxy(sa: *mut bpf_sock_addr) -> bool {
    // SAFETY: `sk` is the socket of the call, readable in every hook.
    let sk = unsafe { read_volatile(&raw const (*sa).__bindgen_anon_1.sk) };
    // SAFETY: `mark` is a field of the socket the verifier lets these hooks read.
    !sk.is_null() && unsafe { read_volatile(&raw const (*sk).mark) } == UPSTREAM_MARK
}

/// Remembers that the socket asked `asked` port 53 and was sent to `target` port `target_port`.
#[inline(always)]
fn remember(ctx: &SockAddrContext, asked: [u32; 4], target: [u32; 4], target_port: u16) {
    let (a, t) = (CAPTURE_PORT.to_ne_bytes(), target_port.to_ne_bytes());
    let ports = u32::from_ne_bytes([a[0], a[1], t[0], t[1]]);
    let words = [
        asked[0], asked[1], asked[2], asked[3], target[0], target[1], target[2], target[3], ports,
        0,
    ];
    // SAFETY: 40 bytes of plain data either way, every bit pattern valid.
    let entry: CapturedDest = unsafe { core::mem::transmute(words) };
    // SAFETY: helper on the context the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = CAPTURED.insert(cookie, entry, 0);
}

/// `connect4`/`sendmsg4`: a query to port 53 goes to the namespace's IPv4 listener.
#[inline(always)]
pub(crate) fn redirect_v4(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    if port(sa) != CAPTURE_PORT || from_proxy(sa) || !filtered(ctx) {
        return;
    }
    // SAFETY: `user_ip4` is readable in the IPv4 hooks.
    let asked = unsafe { read_volatile(&raw const (*sa).user_ip4) };
    let Some(target) = target(ctx).filter(|t| t.flags & CAPTURE_V4 != 0) else {
        return;
    };
    let to = u32::from_ne_bytes(target.v4);
    if to == asked && target.port_v4 == CAPTURE_PORT {
        return;
    }
    remember(ctx, [asked, 0, 0, 0], [to, 0, 0, 0], target.port_v4);
    // SAFETY: the kernel allows a 4-byte store to `user_ip4` in these hooks.
    unsafe { write_volatile(&raw mut (*sa).user_ip4, to) };
    set_port(sa, target.port_v4);
}

/// The four words of the call's IPv6 address (network order in memory).
#[inline(always)]
pub(crate) fn ip6(sa: *mut bpf_sock_addr) -> [u32; 4] {
    // SAFETY: `user_ip6` is readable, a word at a time, in the IPv6 hooks.
    unsafe {
        [
            read_volatile(&raw const (*sa).user_ip6[0]),
            read_volatile(&raw const (*sa).user_ip6[1]),
            read_volatile(&raw const (*sa).user_ip6[2]),
            read_volatile(&raw const (*sa).user_ip6[3]),
        ]
    }
}

/// Writes the call's IPv6 address, a word at a time.
#[inline(always)]
fn set_ip6(sa: *mut bpf_sock_addr, w: [u32; 4]) {
    // SAFETY: the kernel allows 4-byte stores to `user_ip6` in these hooks.
    unsafe {
        write_volatile(&raw mut (*sa).user_ip6[0], w[0]);
        write_volatile(&raw mut (*sa).user_ip6[1], w[1]);
        write_volatile(&raw mut (*sa).user_ip6[2], w[2]);
        write_volatile(&raw mut (*sa).user_ip6[3], w[3]);
    }
}

/// `connect6`/`sendmsg6`: a query to port 53 goes to the namespace's IPv6 listener, or for an
/// IPv4-mapped destination to its IPv4 listener (mapped).
#[inline(always)]
pub(crate) fn redirect_v6(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    if port(sa) != CAPTURE_PORT || from_proxy(sa) || !filtered(ctx) {
        return;
    }
    let asked = ip6(sa);
    let mapped = asked[0] == 0 && asked[1] == 0 && asked[2] == MAPPED;
    let Some(target) = target(ctx) else {
        return;
    };
    let (to, to_port) = if mapped {
        if target.flags & CAPTURE_V4 == 0 {
            return;
        }
        (
            [0, 0, MAPPED, u32::from_ne_bytes(target.v4)],
            target.port_v4,
        )
    } else {
        if target.flags & CAPTURE_V6 == 0 {
            return;
        }
        let v = target.v6;
        let w = |i: usize| u32::from_ne_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
        ([w(0), w(4), w(8), w(12)], target.port_v6)
    };
    if to == asked && to_port == CAPTURE_PORT {
        return;
    }
    remember(ctx, asked, to, to_port);
    set_ip6(sa, to);
    set_port(sa, to_port);
}

/// The socket's captured query, if its last one was.
#[inline(always)]
fn captured(ctx: &SockAddrContext) -> Option<CapturedDest> {
    // SAFETY: helper on the context the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: plain data, copied out at once.
    unsafe { CAPTURED.get(cookie).copied() }
}

/// The `i`th word of a 16-byte address.
#[inline(always)]
fn word(addr: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([
        addr[i * 4],
        addr[i * 4 + 1],
        addr[i * 4 + 2],
        addr[i * 4 + 3],
    ])
}

/// `recvmsg4`/`getpeername4`: the listener's address becomes the asked resolver's.
#[inline(always)]
fn restore_v4(ctx: &SockAddrContext) {
    let Some(entry) = captured(ctx) else {
        return;
    };
    let sa = ctx.sock_addr;
    // SAFETY: `user_ip4` is readable in the IPv4 hooks.
    let from = unsafe { read_volatile(&raw const (*sa).user_ip4) };
    if port(sa) != entry.target_port || from != word(&entry.target, 0) {
        return;
    }
    // SAFETY: the kernel allows a 4-byte store to `user_ip4` in these hooks.
    unsafe { write_volatile(&raw mut (*sa).user_ip4, word(&entry.asked, 0)) };
    set_port(sa, entry.asked_port);
}

/// `recvmsg6`/`getpeername6`: as [`restore_v4`] for IPv6 sockets.
#[inline(always)]
fn restore_v6(ctx: &SockAddrContext) {
    let Some(entry) = captured(ctx) else {
        return;
    };
    let sa = ctx.sock_addr;
    let from = ip6(sa);
    let t = |i| word(&entry.target, i);
    if port(sa) != entry.target_port || from != [t(0), t(1), t(2), t(3)] {
        return;
    }
    let a = |i| word(&entry.asked, i);
    set_ip6(sa, [a(0), a(1), a(2), a(3)]);
    set_port(sa, entry.asked_port);
}
