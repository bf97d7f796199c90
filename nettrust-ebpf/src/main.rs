//! nettrust's egress filter: a `cgroup_skb/egress` program that lets a packet leave only when its
//! destination is an authorized/whitelisted host (hash maps) or inside a whitelisted network (LPM
//! tries). Everything else is dropped. Attached by the daemon to each configured cgroup v2.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    macros::{cgroup_skb, map},
    maps::{HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::SkBuffContext,
};
use aya_log_ebpf::debug;
use nettrust_common::{
    DEFAULT_MAX_HOSTS, DEFAULT_MAX_NETS, HostValue, STAT_ALLOW_HOST, STAT_ALLOW_NET, STAT_COUNT,
    STAT_DROP, STAT_DROP_EXPIRED, STAT_ERROR, STAT_PASS_NON_IP, VERDICT_ALLOW, VERDICT_DROP,
};

/// What to do with a packet whose IP header cannot be read: nettrust fails closed.
const ON_ERROR: i32 = VERDICT_DROP;

/// `ETH_P_IP` / `ETH_P_IPV6` as found in `__sk_buff.protocol` (network byte order).
const ETH_P_IP_BE: u32 = (0x0800u16).to_be() as u32;
const ETH_P_IPV6_BE: u32 = (0x86DDu16).to_be() as u32;
/// Offset of the destination address in the IPv4 header (RFC 791) and the IPv6 header (RFC 8200).
/// cgroup_skb programs see the packet from the network header on.
const IPV4_DADDR_OFFSET: usize = 16;
const IPV6_DADDR_OFFSET: usize = 24;

#[map(name = "HOSTS_V4")]
static HOSTS_V4: HashMap<[u8; 4], HostValue> = HashMap::with_max_entries(DEFAULT_MAX_HOSTS, 0);
#[map(name = "HOSTS_V6")]
static HOSTS_V6: HashMap<[u8; 16], HostValue> = HashMap::with_max_entries(DEFAULT_MAX_HOSTS, 0);
#[map(name = "NETS_V4")]
static NETS_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(DEFAULT_MAX_NETS, 0);
#[map(name = "NETS_V6")]
static NETS_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(DEFAULT_MAX_NETS, 0);
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    match try_egress(&ctx) {
        Ok(verdict) => verdict,
        Err(()) => {
            count(STAT_ERROR);
            ON_ERROR
        }
    }
}

fn try_egress(ctx: &SkBuffContext) -> Result<i32, ()> {
    let protocol = ctx.skb.protocol();
    let (stat, verdict) = if protocol == ETH_P_IP_BE {
        let daddr: [u8; 4] = ctx.load(IPV4_DADDR_OFFSET).map_err(|_| ())?;
        let verdict = judge(&HOSTS_V4, &NETS_V4, daddr);
        if verdict.1 != VERDICT_ALLOW {
            debug!(ctx, "drop {:i}", daddr);
        }
        verdict
    } else if protocol == ETH_P_IPV6_BE {
        let daddr: [u8; 16] = ctx.load(IPV6_DADDR_OFFSET).map_err(|_| ())?;
        let verdict = judge(&HOSTS_V6, &NETS_V6, daddr);
        if verdict.1 != VERDICT_ALLOW {
            debug!(ctx, "drop {:i}", daddr);
        }
        verdict
    } else {
        (STAT_PASS_NON_IP, VERDICT_ALLOW)
    };
    count(stat);
    Ok(verdict)
}

/// The verdict for one destination address, the same for both families: a live host entry, then
/// the network trie, else drop. Returns the counter to bump with the verdict.
#[inline(always)]
fn judge<const N: usize>(
    hosts: &HashMap<[u8; N], HostValue>,
    nets: &LpmTrie<[u8; N], u32>,
    daddr: [u8; N],
) -> (u32, i32) {
    let mut expired = false;
    if let Some(value) = hosts.get_ptr(daddr) {
        // SAFETY: the pointer comes from a successful map lookup and the value is plain data.
        let value = unsafe { *value };
        if value.is_live(unsafe { bpf_ktime_get_boot_ns() }) {
            return (STAT_ALLOW_HOST, VERDICT_ALLOW);
        }
        expired = true;
    }
    if nets.get(Key::new((N * 8) as u32, daddr)).is_some() {
        return (STAT_ALLOW_NET, VERDICT_ALLOW);
    }
    if expired {
        (STAT_DROP_EXPIRED, VERDICT_DROP)
    } else {
        (STAT_DROP, VERDICT_DROP)
    }
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
