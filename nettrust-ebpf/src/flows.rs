//! The flow caches: `OUTBOUND` (flows egress let out, whose replies ingress lets in) with the
//! per-CPU shortcut of the last flow (`RECENT_OUT`, `RECENT_IN`), and `INBOUND_FLOWS` (flows a
//! remote peer opened towards a socket of the cgroup, whose replies egress lets out) with their
//! conntrack-like states and timeouts (`nettrust_common::inbound`).

use aya_ebpf::{
    helpers::bpf_skb_cgroup_id,
    maps::{LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::SkBuffContext,
};
use nettrust_common::{FlowKey, InboundKey, InboundValue, inbound};

use crate::{
    maps::{INBOUND, OUTBOUND, RECENT_IN, RECENT_OUT, RecentFlow},
    parse::{
        Headers, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_FLAGS_OFFSET, TCP_RST, TCP_SYN,
        addr_words,
    },
};

/// A remembered flow's timestamp is refreshed at most this often.
const FLOW_REFRESH_NS: u64 = 1_000_000_000;

/// The `INBOUND_FLOWS` key of a flow: remote and local ends, cgroup, protocol.
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
pub fn reply_to_inbound<const N: usize>(
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

/// Records or refreshes the flow of an unsolicited inbound packet in `INBOUND_FLOWS`, keyed by the
/// socket's cgroup and the local address and port: a TCP connection is learned from its SYN
/// only (a bare ACK, a FIN or data open nothing), a UDP flow from any datagram; other protocols
/// and packets without ports are never learned. Later inbound packets of a known flow refresh
/// it, and the peer's ACK after a reply confirms it (the longer established timeout).
#[inline(always)]
pub fn learn_inbound<const N: usize>(ctx: &SkBuffContext, headers: &Headers<N>, now: u64) {
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

/// Records `flow` as seen at `now`, writing only when it is new or its time is stale; whether
/// it was new.
#[inline(always)]
fn remember(map: &LruHashMap<FlowKey, u64>, flow: &FlowKey, now: u64) -> bool {
    if let Some(seen) = map.get_ptr_mut(flow) {
        // SAFETY: pointer from a successful lookup, plain data.
        let seen = unsafe { &mut *seen };
        if now.wrapping_sub(*seen) > FLOW_REFRESH_NS {
            *seen = now;
        }
        return false;
    }
    let _ = map.insert(flow, now, 0);
    true
}

/// Whether `flow` is one egress let out (in `OUTBOUND`), as found by this CPU less than
/// [`FLOW_REFRESH_NS`] ago or looked up now.
#[inline(always)]
pub fn is_outbound(flow: &FlowKey, now: u64) -> bool {
    recent_or(&RECENT_IN, flow, now, || OUTBOUND.get_ptr(flow).is_some())
}

/// Records an outgoing `flow` in `OUTBOUND` (see [`remember`]) unless this CPU did so for the
/// same flow less than [`FLOW_REFRESH_NS`] ago; whether the flow is new (not in `OUTBOUND`).
#[inline(always)]
pub fn remember_outbound(flow: &FlowKey, now: u64) -> bool {
    let mut new = false;
    recent_or(&RECENT_OUT, flow, now, || {
        new = remember(&OUTBOUND, flow, now);
        true
    });
    new
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
