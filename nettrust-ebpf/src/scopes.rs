//! Policies: the scope of the sending cgroup (its deepest ancestor-or-self listed in
//! `POLICY_OF`, cached per cgroup in `SCOPES` for one generation of `POLICY_OF`), and the
//! record of which cgroup sent each DNS query to the proxy (`CLIENTS`). Nothing here runs while
//! `CONFIG[CONFIG_SCOPE_GENERATION]` is 0 (no policies and no cgroup patterns).
//!
//! With cgroup patterns the programs are attached at each pattern's attach point, listed with
//! `POLICY_UNFILTERED`: a cgroup whose deepest listed ancestor-or-self carries that flag is not
//! filtered (the egress and ingress programs let its packets pass); one a pattern matched (listed
//! by the `cgroup_mkdir` tracepoint or the daemon) has that pattern's policy.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_skb_ancestor_cgroup_id,
        bpf_skb_cgroup_id,
    },
    programs::SkBuffContext,
};
use nettrust_common::{
    CONFIG_LISTEN_PORTS, CONFIG_SCOPE_GENERATION, ClientValue, MAX_CGROUP_DEPTH, POLICY_UNFILTERED,
    PolicyRef, ScopeCache,
};

use crate::{
    maps::{CLIENTS, CONFIG, LISTENERS, POLICY_OF, SCOPES, UNCLASSIFIED},
    parse::{Headers, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FLAGS_OFFSET, TCP_SYN, endpoint_key},
};

/// The default policy (scope 0, no flags) as values the verifier cannot see as constants: the
/// socket mark read twice, XORed (LLVM cannot fold two volatile loads). A constant 0 here would
/// make the verifier mark every later test of the scope precise, so the paths of the default
/// policy and those of a resolved one could never prune each other (978,947 instructions
/// verified instead of 852,249, close to the 1,000,000 limit).
#[inline(always)]
pub fn default_policy(ctx: &SkBuffContext) -> PolicyRef {
    opaque_default(ctx.skb.skb)
}

#[inline(always)]
fn opaque_default(skb: *mut __sk_buff) -> PolicyRef {
    // SAFETY: reading a field of the context the kernel handed us; nothing writes it meanwhile.
    let zero = unsafe {
        core::ptr::read_volatile(&raw const (*skb).mark)
            ^ core::ptr::read_volatile(&raw const (*skb).mark)
    };
    PolicyRef {
        scope: zero,
        flags: zero,
    }
}

/// The generation of `POLICY_OF`; 0 = no policies.
#[inline(always)]
pub fn generation() -> u32 {
    CONFIG.get(CONFIG_SCOPE_GENERATION).map_or(0, |g| *g)
}

/// The policy of the cgroup `cgroup_id` that sent the packet: cached for `generation`, else the
/// walk down its ancestors ([`walk`]), cached.
#[inline(always)]
pub fn resolve(ctx: &SkBuffContext, cgroup_id: u64, generation: u32) -> PolicyRef {
    if let Some(cached) = SCOPES.get_ptr(cgroup_id) {
        // SAFETY: pointer from a successful lookup, plain data.
        let cached = unsafe { *cached };
        if cached.generation == generation {
            return cached.policy;
        }
    }
    let packed = walk(ctx.skb.skb);
    let policy = PolicyRef {
        scope: packed as u32,
        flags: (packed >> 32) as u32,
    };
    let entry = ScopeCache {
        policy,
        generation,
        _pad: 0,
    };
    let _ = SCOPES.insert(cgroup_id, entry, 0);
    policy
}

/// The `POLICY_OF` entry of the deepest listed ancestor-or-self of the packet's cgroup (levels 0
/// to `MAX_CGROUP_DEPTH` - 1; `bpf_skb_ancestor_cgroup_id` returns 0 past the cgroup's own
/// level; a deeper or unclassifiable cgroup as [`settle`] says), or the default policy when none
/// is listed, as one word (scope, flags << 32). A BPF
/// subprogram, not inlined: one copy of the walk for both families, out of the way of the
/// per-packet path. It calls helpers only, so its small frame is the only one added to the
/// caller's in the kernel's 512-byte combined stack limit (the caller's frame is 456 bytes with
/// the debug log enabled).
#[inline(never)]
fn walk(skb: *mut __sk_buff) -> u64 {
    let mut found = opaque_default(skb);
    for level in 0..MAX_CGROUP_DEPTH {
        // SAFETY: the context's skb pointer is valid for the whole program run.
        let id = unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) };
        if id == 0 {
            break;
        }
        // SAFETY: plain data, copied out at once.
        if let Some(policy) = unsafe { POLICY_OF.get(id) } {
            found = *policy;
        }
    }
    settle(
        pack(found),
        // SAFETY: the context's skb pointer is valid for the whole program run.
        |level| unsafe { bpf_skb_ancestor_cgroup_id(skb, level) },
        // SAFETY: as above.
        || unsafe { bpf_skb_cgroup_id(skb) },
        pack(opaque_default(skb)),
    )
}

/// A policy as the one word a walk returns: scope, flags << 32.
#[inline(always)]
fn pack(policy: PolicyRef) -> u64 {
    u64::from(policy.scope) | (u64::from(policy.flags) << 32)
}

/// The walk's answer `packed` where the walk could not see everything, failing closed: for a
/// cgroup deeper than the walk looks (`ancestor(MAX_CGROUP_DEPTH)` ≠ 0), its own `POLICY_OF`
/// entry (`own()`: a cgroup a pattern matched at any depth); then, if that leaves it below a
/// pattern's attach point unmatched (`POLICY_UNFILTERED`) while it is that deep (a deeper matched
/// ancestor cannot be seen) or it or an ancestor is in `UNCLASSIFIED` (its path could not be
/// matched), the default policy (`default`) instead of passing. A separate subprogram after the
/// walk's loop, so its tests never split the loop's verifier states.
#[inline(never)]
fn settle(packed: u64, ancestor: impl Fn(i32) -> u64, own: impl Fn() -> u64, default: u64) -> u64 {
    let deep = ancestor(MAX_CGROUP_DEPTH as i32) != 0;
    if deep {
        // SAFETY: plain data, copied out at once.
        if let Some(policy) = unsafe { POLICY_OF.get(own()) } {
            return pack(*policy);
        }
    }
    if (packed >> 32) as u32 & POLICY_UNFILTERED == 0 {
        return packed;
    }
    if deep || unclassified(&ancestor) {
        return default;
    }
    packed
}

/// Whether the cgroup or one of its ancestors (levels 0 to `MAX_CGROUP_DEPTH` - 1) is in
/// `UNCLASSIFIED`.
#[inline(always)]
fn unclassified(ancestor: &impl Fn(i32) -> u64) -> bool {
    for level in 0..MAX_CGROUP_DEPTH {
        let id = ancestor(level as i32);
        if id == 0 {
            return false;
        }
        // SAFETY: only checked for presence.
        if unsafe { UNCLASSIFIED.get(id) }.is_some() {
            return true;
        }
    }
    false
}

/// Whether `policy` is that of a cgroup the programs run for without filtering it (below a
/// pattern's attach point, matched by no pattern).
#[inline(always)]
pub fn unfiltered(policy: PolicyRef) -> bool {
    policy.flags & POLICY_UNFILTERED != 0
}

/// For programs that run in the sending process's context (socket address hooks): the policy
/// of the current task's cgroup, `None` when that cgroup is not filtered (below a pattern's
/// attach point, matched by no pattern). With neither policies nor patterns (generation 0) every
/// cgroup the program is attached to is filtered with the default policy. Resolved like
/// [`resolve`] (deepest listed ancestor-or-self, cached in `SCOPES`), from the task's cgroup.
#[inline(always)]
pub fn current_policy() -> Option<PolicyRef> {
    let generation = generation();
    if generation == 0 {
        return Some(PolicyRef::default());
    }
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let policy = match SCOPES.get_ptr(cgroup_id) {
        // SAFETY: pointer from a successful lookup, plain data.
        Some(cached) if unsafe { (*cached).generation } == generation => unsafe {
            (*cached).policy
        },
        _ => {
            let packed = walk_current();
            let policy = PolicyRef {
                scope: packed as u32,
                flags: (packed >> 32) as u32,
            };
            let entry = ScopeCache {
                policy,
                generation,
                _pad: 0,
            };
            let _ = SCOPES.insert(cgroup_id, entry, 0);
            policy
        }
    };
    (!unfiltered(policy)).then_some(policy)
}

/// [`walk`] for the current task's cgroup (`bpf_get_current_ancestor_cgroup_id`).
#[inline(never)]
#[allow(dead_code, reason = "for the socket address hook programs")]
fn walk_current() -> u64 {
    let mut found = PolicyRef::default();
    for level in 0..MAX_CGROUP_DEPTH {
        // SAFETY: helper without preconditions.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        // SAFETY: plain data, copied out at once.
        if let Some(policy) = unsafe { POLICY_OF.get(id) } {
            found = *policy;
        }
    }
    settle(
        pack(found),
        // SAFETY: helper without preconditions.
        |level| unsafe { bpf_get_current_ancestor_cgroup_id(level) },
        // SAFETY: as above.
        || unsafe { bpf_get_current_cgroup_id() },
        0,
    )
}

/// Records in `CLIENTS` who sent a packet to one of the proxy's listeners (a UDP datagram, or a
/// TCP SYN without ACK): the source address, port and protocol → the cgroup, its policy and
/// now. The destination port is checked against `CONFIG[CONFIG_LISTEN_PORTS]` first, so other
/// packets cost no hash lookup; a listener bound to the unspecified address matches any
/// destination address of its family.
#[inline(always)]
pub fn record_client<const N: usize>(
    ctx: &SkBuffContext,
    headers: &Headers<N>,
    cgroup_id: u64,
    policy: PolicyRef,
    now: u64,
) {
    if (headers.proto != IPPROTO_TCP && headers.proto != IPPROTO_UDP) || headers.l4 == 0 {
        return;
    }
    let ports = CONFIG.get(CONFIG_LISTEN_PORTS).map_or(0, |p| *p);
    let port = u32::from(headers.dport);
    if port == 0 || (port != ports & 0xffff && port != ports >> 16) {
        return;
    }
    if headers.proto == IPPROTO_TCP
        && headers.l4_byte(ctx, TCP_FLAGS_OFFSET) & (TCP_SYN | TCP_ACK) != TCP_SYN
    {
        return;
    }
    let listener = endpoint_key(&headers.dst, headers.dport, headers.proto);
    let wildcard = endpoint_key(&[0u8; N], headers.dport, headers.proto);
    // SAFETY: the values are plain data, only checked for presence.
    let listening =
        unsafe { LISTENERS.get(listener).is_some() || LISTENERS.get(wildcard).is_some() };
    if !listening {
        return;
    }
    let client = endpoint_key(&headers.src, headers.sport, headers.proto);
    let value = ClientValue {
        cgroup_id,
        scope: policy.scope,
        flags: policy.flags,
        seen_ns: now,
    };
    let _ = CLIENTS.insert(client, value, 0);
}
