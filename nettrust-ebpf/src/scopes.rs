//! Policies: the scope of the sending cgroup (its deepest ancestor-or-self listed in
//! `POLICY_OF`, cached per cgroup in `SCOPES` for one generation of `POLICY_OF`), found by one
//! walk over the cgroup's ancestors whichever program asks (a packet's cgroup for the
//! `cgroup_skb` programs, the current task's for the socket address hooks and for `sock_ops`
//! at connect: [`Ancestry`]), and the record of which cgroup sent each DNS query to the proxy
//! (`CLIENTS`). Nothing here runs while
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
    CONFIG_DEEP_MATCHES, CONFIG_LISTEN_PORTS, CONFIG_SCOPE_GENERATION, ClientValue,
    MAX_CGROUP_DEPTH, POLICY_UNFILTERED, PolicyRef, SCOPE_UNRESOLVED, ScopeCache,
};

use crate::{
    maps::{CLIENTS, CONFIG, LISTENERS, POLICY_OF, SCOPES, SOCK_OWNERS, UNCLASSIFIED},
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

/// Where [`walk`] reads a cgroup's ancestors from, and what it finds when none is listed. Each
/// implementation instantiates its own copy of the walk (a BPF subprogram of its own), so every
/// program calls only the helpers its type may call.
pub trait Ancestry: Copy {
    /// The id of the cgroup's ancestor at `level` (0 = the v2 root), 0 past the cgroup's own
    /// level.
    fn ancestor(self, level: i32) -> u64;
    /// The id of the cgroup itself.
    fn own(self) -> u64;
    /// The policy when no ancestor-or-self is listed: the default policy.
    fn unlisted(self) -> PolicyRef;
}

/// The cgroup of the socket that sent a packet (`cgroup_skb` programs).
#[derive(Clone, Copy)]
pub struct Packet(pub *mut __sk_buff);

impl Ancestry for Packet {
    #[inline(always)]
    fn ancestor(self, level: i32) -> u64 {
        // SAFETY: the context's skb pointer is valid for the whole program run.
        unsafe { bpf_skb_ancestor_cgroup_id(self.0, level) }
    }

    #[inline(always)]
    fn own(self) -> u64 {
        // SAFETY: as above.
        unsafe { bpf_skb_cgroup_id(self.0) }
    }

    /// Opaque to the verifier, see [`default_policy`].
    #[inline(always)]
    fn unlisted(self) -> PolicyRef {
        opaque_default(self.0)
    }
}

/// The current task's cgroup (programs that run in the sending process's context: the socket
/// address hooks, and `sock_ops` when `connect` starts a handshake).
#[derive(Clone, Copy)]
pub struct CurrentTask;

impl Ancestry for CurrentTask {
    #[inline(always)]
    fn ancestor(self, level: i32) -> u64 {
        // SAFETY: helper without preconditions.
        unsafe { bpf_get_current_ancestor_cgroup_id(level) }
    }

    #[inline(always)]
    fn own(self) -> u64 {
        // SAFETY: helper without preconditions.
        unsafe { bpf_get_current_cgroup_id() }
    }

    #[inline(always)]
    fn unlisted(self) -> PolicyRef {
        PolicyRef::default()
    }
}

/// The policy of the cgroup `cgroup_id` that sent the packet: cached for `generation`, else the
/// walk down its ancestors ([`walk`]), cached.
#[inline(always)]
pub fn resolve(ctx: &SkBuffContext, cgroup_id: u64, generation: u32) -> PolicyRef {
    cached(Packet(ctx.skb.skb), cgroup_id, generation)
}

/// The policy of the cgroup `cgroup_id` whose ancestors `from` reads: its `SCOPES` entry when
/// resolved for `generation`, else [`walk`], cached.
#[inline(always)]
fn cached<A: Ancestry>(from: A, cgroup_id: u64, generation: u32) -> PolicyRef {
    if let Some(cached) = SCOPES.get_ptr(cgroup_id) {
        // SAFETY: pointer from a successful lookup, plain data.
        let cached = unsafe { *cached };
        if cached.generation == generation {
            return cached.policy;
        }
    }
    let packed = walk(from);
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

/// The `POLICY_OF` entry of the deepest listed ancestor-or-self of the cgroup `from` reads
/// (levels 0 to `MAX_CGROUP_DEPTH` - 1; the ancestor helpers return 0 past the cgroup's own
/// level; a deeper or unclassifiable cgroup as [`settle`] says), or [`Ancestry::unlisted`] when
/// none is listed, as one word (scope, flags << 32). A BPF subprogram per [`Ancestry`], not
/// inlined: one copy of the walk for both families of a program, out of the way of the
/// per-packet path. It calls helpers only, so its small frame is the only one added to the
/// caller's in the kernel's 512-byte combined stack limit (the egress program's frame is 456
/// bytes with the debug log enabled).
#[inline(never)]
fn walk<A: Ancestry>(from: A) -> u64 {
    let mut found = from.unlisted();
    for level in 0..MAX_CGROUP_DEPTH {
        let id = from.ancestor(level as i32);
        if id == 0 {
            break;
        }
        // SAFETY: plain data, copied out at once.
        if let Some(policy) = unsafe { POLICY_OF.get(id) } {
            found = *policy;
        }
    }
    settle(pack(found), from)
}

/// A policy as the one word a walk returns: scope, flags << 32.
#[inline(always)]
fn pack(policy: PolicyRef) -> u64 {
    u64::from(policy.scope) | (u64::from(policy.flags) << 32)
}

/// The walk's answer `packed` where the walk could not see everything, failing closed: for a
/// cgroup deeper than the walk looks (`from.ancestor(MAX_CGROUP_DEPTH)` ≠ 0), its own
/// `POLICY_OF` entry (`from.own()`: a cgroup a pattern matched at any depth), else, while a `**`
/// pattern is configured (`CONFIG_DEEP_MATCHES`: it may have matched an ancestor out of the
/// walk's reach), `SCOPE_UNRESOLVED`; then, if it is below a pattern's attach point unmatched
/// (`POLICY_UNFILTERED`) while it is that deep or it or an ancestor is in `UNCLASSIFIED` (its
/// path could not be matched), the default policy (`from.unlisted()`) instead of passing. A
/// separate subprogram after the walk's loop, so its tests never split the loop's verifier
/// states.
#[inline(never)]
fn settle<A: Ancestry>(packed: u64, from: A) -> u64 {
    let deep = from.ancestor(MAX_CGROUP_DEPTH as i32) != 0;
    if deep {
        // SAFETY: plain data, copied out at once.
        if let Some(policy) = unsafe { POLICY_OF.get(from.own()) } {
            return pack(*policy);
        }
        if CONFIG.get(CONFIG_DEEP_MATCHES).is_some_and(|v| *v != 0) {
            // A `**` pattern may have matched an ancestor the walk cannot see: neither the
            // shallower policy nor the default one may stand in for it.
            let unlisted = from.unlisted();
            return pack(PolicyRef {
                scope: unlisted.scope | SCOPE_UNRESOLVED,
                flags: unlisted.flags,
            });
        }
    }
    if (packed >> 32) as u32 & POLICY_UNFILTERED == 0 {
        return packed;
    }
    if deep || unclassified(from) {
        return pack(from.unlisted());
    }
    packed
}

/// Whether the cgroup or one of its ancestors (levels 0 to `MAX_CGROUP_DEPTH` - 1) is in
/// `UNCLASSIFIED`.
#[inline(always)]
fn unclassified<A: Ancestry>(from: A) -> bool {
    for level in 0..MAX_CGROUP_DEPTH {
        let id = from.ancestor(level as i32);
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

/// For programs that run in the sending process's context (socket address hooks, `sock_ops` at
/// connect): the policy of the current task's cgroup, `None` when that cgroup is not filtered (below a pattern's
/// attach point, matched by no pattern). With neither policies nor patterns (generation 0) every
/// cgroup the program is attached to is filtered with the default policy. Resolved like
/// [`resolve`] (deepest listed ancestor-or-self, cached in `SCOPES`), from the task's cgroup.
#[inline(always)]
pub fn current_policy() -> Option<PolicyRef> {
    let policy = current_policy_any();
    (!unfiltered(policy)).then_some(policy)
}

/// [`current_policy`], an unfiltered cgroup's included (`POLICY_UNFILTERED`).
#[inline(always)]
pub fn current_policy_any() -> PolicyRef {
    let generation = generation();
    if generation == 0 {
        return PolicyRef::default();
    }
    cached(CurrentTask, CurrentTask.own(), generation)
}

/// The policy of the socket whose cookie is `cookie`, as `egress` judges its packets: that of the
/// cgroup that created it (`SOCK_OWNERS`, recorded by `owners::sock_owner`; re-read from the
/// `SCOPES` cache of that cgroup after a reload changed the generation), else, for a socket
/// created before the program was attached, the calling task's. `None` for an unfiltered one.
#[inline(always)]
pub fn socket_policy(cookie: u64) -> Option<PolicyRef> {
    // SAFETY: plain data, copied out at once.
    let Some(owner) = (unsafe { SOCK_OWNERS.get(cookie) }).copied() else {
        return current_policy();
    };
    let generation = generation();
    let policy = if owner.generation == generation {
        owner.policy
    } else {
        match SCOPES.get_ptr(owner.cgroup_id) {
            // SAFETY: pointer from a successful lookup, plain data.
            Some(cached) if unsafe { (*cached).generation } == generation => unsafe {
                (*cached).policy
            },
            _ => return current_policy(),
        }
    };
    (!unfiltered(policy)).then_some(policy)
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
