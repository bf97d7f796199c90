//! The egress program's judgement of a destination: the IPv4 host table walk, the IPv6 host map,
//! a policy's grants and networks, the whitelisted network tries, the whitelisted services, and
//! the kernel's own IPv6 link control traffic.

use aya_ebpf::{
    maps::{LpmTrie, lpm_trie::Key},
    programs::SkBuffContext,
};
use nettrust_common::{
    FLAG_AUTHORIZED, FLAG_WHITELISTED, GrantKey, HostSlot, LAST_SEEN_GRANULARITY_NS,
    SCOPE_PREFIX_BITS, STAT_ALLOW_HOST, STAT_ALLOW_NET, STAT_DROP, STAT_DROP_EXPIRED,
    UPSTREAM_MARK, VERDICT_ALLOW, VERDICT_DROP, host_table,
};

use crate::{
    maps::{
        GRANTS, HOST_HOME_SLOTS, HOST_SEED, HOSTS_V4, HOSTS_V6, NETS_V4, NETS_V6, POLICY_NETS_V4,
        POLICY_NETS_V6, SERVICES,
    },
    parse::{Headers, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Packet, addr_words, endpoint_key},
};

/// The IPv4 host table then the network trie: the daemon's `HostTable::get` walk, from the home
/// slot to the first empty slot. The entry word (address and deadline) is read in one load. A
/// live authorized entry gets its last-seen time refreshed (the sweeper's liveness signal). For
/// a policy's cgroup (`scope` ≠ 0) only a whitelisted entry counts, then [`judge_scoped`].
#[inline(always)]
pub fn judge_v4(daddr: [u8; 4], now: u64, scope: u32) -> (u32, i32) {
    let addr = u32::from_be_bytes(daddr);
    // SAFETY: read-only globals set by the loader; volatile so they are not constant-folded.
    let (seed, home_slots) = unsafe {
        (
            core::ptr::read_volatile(&raw const HOST_SEED),
            core::ptr::read_volatile(&raw const HOST_HOME_SLOTS),
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
            // SAFETY: the pointer comes from a successful array lookup and stays valid for the
            // program run; the daemon writes the flags word atomically.
            let flags = unsafe { core::ptr::read_volatile(&raw const (*slot).flags) };
            if scope == 0 {
                let seen = host_table::to_units(now);
                // SAFETY: as above; last_seen is only written here, a lost write is harmless.
                unsafe {
                    if flags & FLAG_AUTHORIZED != 0
                        && core::ptr::read_volatile(&raw const (*slot).last_seen) != seen
                    {
                        core::ptr::write_volatile(&raw mut (*slot).last_seen, seen);
                    }
                }
                return (STAT_ALLOW_HOST, VERDICT_ALLOW);
            }
            if flags & FLAG_WHITELISTED != 0 {
                return (STAT_ALLOW_HOST, VERDICT_ALLOW);
            }
        } else if scope == 0 {
            expired = true;
        }
    }
    if scope != 0 {
        return judge_scoped(&NETS_V4, daddr, scope, now, || {
            let mut key = [0u8; 8];
            key[..4].copy_from_slice(&scope.to_be_bytes());
            key[4..].copy_from_slice(&daddr);
            POLICY_NETS_V4
                .get(Key::new(SCOPE_PREFIX_BITS + 32, key))
                .is_some()
        });
    }
    judge_network(&NETS_V4, daddr, expired)
}

/// For a policy's cgroup (`scope` ≠ 0), after a host-map miss (a default-policy grant does not
/// count): the policy's own grant in `GRANTS` (live: allowed, its last-seen time refreshed),
/// else the whitelisted networks, else the policy's networks (`policy_net`), else drop.
#[inline(always)]
fn judge_scoped<const N: usize>(
    nets: &LpmTrie<[u8; N], u32>,
    daddr: [u8; N],
    scope: u32,
    now: u64,
    policy_net: impl FnOnce() -> bool,
) -> (u32, i32) {
    let [a, b] = addr_words(&daddr);
    let s = scope.to_ne_bytes();
    let family = if N == 4 { 4 } else { 6 };
    // SAFETY: every bit pattern is a valid key (plain bytes and integers); same size.
    let key: GrantKey = unsafe {
        core::mem::transmute([
            u64::from_ne_bytes([s[0], s[1], s[2], s[3], family, 0, 0, 0]),
            a,
            b,
        ])
    };
    let mut expired = false;
    if let Some(value) = GRANTS.get_ptr_mut(key) {
        // SAFETY: as in `judge`: a successful lookup, plain data, a lost write is harmless.
        let value = unsafe { &mut *value };
        if value.is_live(now) {
            if now.wrapping_sub(value.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
                value.last_seen_ns = now;
            }
            return (STAT_ALLOW_HOST, VERDICT_ALLOW);
        }
        expired = true;
    }
    let (stat, verdict) = judge_network(nets, daddr, expired);
    if verdict == VERDICT_ALLOW || !policy_net() {
        return (stat, verdict);
    }
    (STAT_ALLOW_NET, VERDICT_ALLOW)
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
/// sweeper's liveness signal). For a policy's cgroup (`scope` ≠ 0) only a whitelisted entry
/// counts, then [`judge_scoped`]. Returns the counter to bump with the verdict.
#[inline(always)]
pub fn judge_v6(daddr: [u8; 16], now: u64, scope: u32) -> (u32, i32) {
    let mut expired = false;
    if let Some(value) = HOSTS_V6.get_ptr_mut(daddr) {
        // SAFETY: the pointer comes from a successful map lookup and the value is plain data; a
        // concurrent update replaces the element (RCU), so a lost last-seen write is harmless.
        let value = unsafe { &mut *value };
        if value.is_live(now) {
            if scope == 0 {
                if value.flags & FLAG_AUTHORIZED != 0
                    && now.wrapping_sub(value.last_seen_ns) > LAST_SEEN_GRANULARITY_NS
                {
                    value.last_seen_ns = now;
                }
                return (STAT_ALLOW_HOST, VERDICT_ALLOW);
            }
            if value.flags & FLAG_WHITELISTED != 0 {
                return (STAT_ALLOW_HOST, VERDICT_ALLOW);
            }
        } else if scope == 0 {
            expired = true;
        }
    }
    if scope != 0 {
        return judge_scoped(&NETS_V6, daddr, scope, now, || {
            let mut key = [0u8; 20];
            key[..4].copy_from_slice(&scope.to_be_bytes());
            key[4..].copy_from_slice(&daddr);
            POLICY_NETS_V6
                .get(Key::new(SCOPE_PREFIX_BITS + 128, key))
                .is_some()
        });
    }
    judge_network(&NETS_V6, daddr, expired)
}

/// Whether the packet was sent by one of the daemon's upstream sockets (they carry
/// `UPSTREAM_MARK`): the only packets a whitelisted service is open to.
#[inline(always)]
pub fn from_proxy(ctx: &SkBuffContext) -> bool {
    // SAFETY: reading a field of the context the kernel handed us.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.skb.skb).mark) == UPSTREAM_MARK }
}

/// Whether the packet goes to a whitelisted service (address, port and protocol).
#[inline(always)]
pub fn is_service<const N: usize>(packet: &Packet<N>) -> bool {
    if packet.proto != IPPROTO_TCP && packet.proto != IPPROTO_UDP {
        return false;
    }
    let key = endpoint_key(&packet.remote, packet.remote_port, packet.proto);
    // SAFETY: the value is plain data, only checked for presence.
    unsafe { SERVICES.get(key) }.is_some()
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
pub fn link_control_v6(ctx: &SkBuffContext, headers: &Headers<16>) -> bool {
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
