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
//! With policies configured (`CONFIG_SCOPE_GENERATION` ≠ 0), the sending cgroup's policy decides
//! which grants count (`scopes`, `judge`): the default policy's are the host maps, a policy's
//! are in `GRANTS`, plus its own networks; whitelists, services and replies stay global. A
//! policy in audit mode lets what would be dropped pass, counted and reported as an audit
//! event. Queries to the DNS proxy's listeners are recorded with the sender's cgroup and policy.
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

// The package's stub library (it exists for nettrust's build-dependency); the program needs nothing
// from it.
use nettrust_ebpf as _;

mod capture;
mod connect;
mod counters;
mod flows;
mod icmp;
mod judge;
mod maps;
mod owners;
mod parse;
mod patterns;
mod scopes;
mod sockops;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    maps::LpmTrie,
    programs::SkBuffContext,
};
use aya_log_ebpf::debug;
use nettrust_common::{
    CONFIG_DROP_INPUT, EBPF_LOG_TARGET, EVENT_AUDIT, FLOW_ALLOWED, FLOW_AUDITED, FLOW_DENIED,
    FlowKey, POLICY_AUDIT, STAT_ALLOW_HOST, STAT_ALLOW_INBOUND_REPLY, STAT_ALLOW_NET, STAT_AUDIT,
    STAT_DROP, STAT_DROP_INPUT, STAT_ERROR, STAT_PASS_NON_IP, VERDICT_ALLOW, VERDICT_DROP,
};

use crate::{
    counters::{count, count_cgroup, judged, may_log, record_flow, report_denied},
    flows::{is_outbound, learn_inbound, remember_outbound, reply_to_inbound},
    icmp::{quoted_flow_v4, quoted_flow_v6},
    judge::{from_proxy, is_service, judge_v4, judge_v6, link_control_v6},
    maps::{ALLOWS, AUDITS, BLOCKED_V4, BLOCKED_V6, CONFIG, DROPS, OUTBOUND},
    parse::{ETH_P_IP_BE, ETH_P_IPV6_BE, Headers, parse_v4, parse_v6, source_routed_v4},
};

/// What to do with an outgoing packet whose IP header cannot be read: nettrust fails closed.
const ON_ERROR: i32 = VERDICT_DROP;

/// The loopback interface is always ifindex 1 (`LOOPBACK_IFINDEX`, net/core/dev.c), in every
/// network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

#[cgroup_skb(egress)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya attribute macro fixes the entry point's signature"
)]
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
    if protocol != ETH_P_IP_BE && protocol != ETH_P_IPV6_BE {
        count(STAT_PASS_NON_IP);
        return Ok(VERDICT_ALLOW);
    }
    if protocol == ETH_P_IP_BE {
        let headers = parse_v4(ctx)?;
        let routed = headers.options && source_routed_v4(ctx);
        Ok(decide_egress(
            ctx,
            &headers,
            routed,
            &BLOCKED_V4,
            |now, scope| judge_v4(headers.dst, now, scope),
        ))
    } else {
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
            |now, scope| judge_v6(headers.dst, now, scope),
        ))
    }
}

/// The egress verdict, the same for both families: a source-routed packet (`routed`) is dropped;
/// else the family's host/network verdict (`judge` at the current boot time for the sender's
/// scope), then a whitelisted service, then a live flow opened from outside (unless the peer is
/// `blocked`); else drop (counted per cgroup and reported), or with the sender's policy in audit
/// mode pass (counted in `AUDITS` and reported as an audit event). With policies on, a query to
/// the proxy is recorded first, whatever the verdict.
#[inline(always)]
fn decide_egress<const N: usize>(
    ctx: &SkBuffContext,
    headers: &Headers<N>,
    routed: bool,
    blocked: &LpmTrie<[u8; N], u32>,
    judge: impl FnOnce(u64, u32) -> (u32, i32),
) -> i32 {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let packet = headers.outgoing();
    let flow = packet.flow();
    // SAFETY: the context's skb pointer is valid for the whole program run.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let generation = scopes::generation();
    let policy = if generation == 0 {
        scopes::default_policy(ctx)
    } else {
        let policy = scopes::resolve(ctx, cgroup_id, generation);
        if scopes::unfiltered(policy) {
            return VERDICT_ALLOW;
        }
        scopes::record_client(ctx, headers, cgroup_id, policy, now);
        policy
    };
    let (stat, verdict) = if routed {
        (STAT_DROP, VERDICT_DROP)
    } else {
        judge(now, policy.scope)
    };
    if verdict == VERDICT_ALLOW || (!routed && is_service(&packet) && from_proxy(ctx)) {
        let stat = if verdict == VERDICT_ALLOW {
            stat
        } else {
            STAT_ALLOW_HOST
        };
        if remember_outbound(&flow, now) {
            let judged = judged(FLOW_ALLOWED, stat, 0, policy.scope);
            record_flow(&flow, cgroup_id, now, judged, socket_cookie(ctx));
        }
        count(stat);
        count_cgroup(&ALLOWS, cgroup_id);
        return VERDICT_ALLOW;
    }
    if !routed && reply_to_inbound(ctx, headers, blocked, cgroup_id, now) {
        count(STAT_ALLOW_INBOUND_REPLY);
        count_cgroup(&ALLOWS, cgroup_id);
        return VERDICT_ALLOW;
    }
    if policy.flags & POLICY_AUDIT != 0 {
        if remember_outbound(&flow, now) {
            let judged = judged(FLOW_AUDITED, STAT_AUDIT, 0, policy.scope);
            record_flow(&flow, cgroup_id, now, judged, socket_cookie(ctx));
        }
        count(STAT_AUDIT);
        count_cgroup(&AUDITS, cgroup_id);
        report_denied(cgroup_id, &flow, now, policy.scope, EVENT_AUDIT);
        return VERDICT_ALLOW;
    }
    count(stat);
    count_cgroup(&DROPS, cgroup_id);
    report_denied(cgroup_id, &flow, now, policy.scope, 0);
    let judged = judged(FLOW_DENIED, stat, 0, policy.scope);
    record_flow(&flow, cgroup_id, now, judged, socket_cookie(ctx));
    if routed && may_log() {
        log_source_routed(ctx, &flow);
    }
    VERDICT_DROP
}

/// The cookie of the packet's socket (0 without one), for its flow record's process.
#[inline(always)]
fn socket_cookie(ctx: &SkBuffContext) -> u64 {
    // SAFETY: helper on the context the kernel passed.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
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

#[cgroup_skb(ingress)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya attribute macro fixes the entry point's signature"
)]
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
    // Below a pattern's attach point, a cgroup no pattern matched is not filtered.
    let generation = scopes::generation();
    if generation != 0 {
        // SAFETY: the context's skb pointer is valid for the whole program run.
        let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
        if scopes::unfiltered(scopes::resolve(ctx, cgroup_id, generation)) {
            return Ok(VERDICT_ALLOW);
        }
    }
    let protocol = ctx.skb.protocol();
    if protocol == ETH_P_IP_BE {
        let headers = parse_v4(ctx)?;
        Ok(ingress_verdict(ctx, &headers, protocol))
    } else if protocol == ETH_P_IPV6_BE {
        let headers = parse_v6(ctx)?;
        Ok(ingress_verdict(ctx, &headers, protocol))
    } else {
        Ok(VERDICT_ALLOW)
    }
}

#[inline(always)]
fn ingress_verdict<const N: usize>(
    ctx: &SkBuffContext,
    headers: &Headers<N>,
    protocol: u32,
) -> i32 {
    let flow = headers.incoming().flow();
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if is_outbound(&flow, now) {
        // A reply to a flow egress let out ("ct state established").
        return VERDICT_ALLOW;
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
            return VERDICT_ALLOW;
        }
        count(STAT_DROP_INPUT);
        return VERDICT_DROP;
    }
    learn_inbound(ctx, headers, now);
    VERDICT_ALLOW
}

#[inline(always)]
fn drop_input() -> bool {
    CONFIG.get(CONFIG_DROP_INPUT).is_some_and(|v| *v != 0)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
