//! Every map of the `cgroup_skb` programs (the `sock_ops` program's own are in `sockops`), and the
//! globals the loader sets. The daemon finds them by these names (`nettrust_common::MAP_*`).

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use nettrust_common::{
    CONFIG_COUNT, CgroupPath, ClientValue, DEFAULT_MAX_HOSTS, DEFAULT_MAX_NETS, DENIED_RING_BYTES,
    FLOWS_RING_BYTES, FlowKey, GrantKey, HostName, HostSlot, HostValue, InboundKey, InboundValue,
    MAX_BLOCKED, MAX_CGROUPS, MAX_CLIENTS, MAX_FLOWS, MAX_LISTENERS, MAX_POLICIES, MAX_SCOPE_CACHE,
    MAX_SERVICES, MAX_SOCK_OWNERS, MAX_UNCLASSIFIED, POLICY_NAME_LEN, PolicyRef, RateState,
    STAT_COUNT, ScopeCache, ServiceKey, SockOwner, host_table,
};

/// Hash maps sized by the configuration allocate their elements as they are added
/// (`BPF_F_NO_PREALLOC`): kernel memory follows the hosts actually authorized instead of the
/// capacity (a preallocated 1M-host map pair costs 210 MB while empty).
const ON_DEMAND: u32 = BPF_F_NO_PREALLOC;

/// The IPv4 host table (`nettrust_common::host_table`), memory-mapped and written by the daemon.
#[map(name = "HOSTS_V4")]
pub static HOSTS_V4: Array<HostSlot> =
    Array::with_max_entries(host_table::slots(DEFAULT_MAX_HOSTS), BPF_F_MMAPABLE);
/// The table's hash seed and home-slot count, set by the daemon when it loads the programs.
#[unsafe(no_mangle)]
pub static HOST_SEED: u64 = 0;
#[unsafe(no_mangle)]
pub static HOST_HOME_SLOTS: u32 = host_table::home_slots(DEFAULT_MAX_HOSTS);
#[map(name = "HOSTS_V6")]
pub static HOSTS_V6: HashMap<[u8; 16], HostValue> =
    HashMap::with_max_entries(DEFAULT_MAX_HOSTS, ON_DEMAND);
#[map(name = "NETS_V4")]
pub static NETS_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(DEFAULT_MAX_NETS, 0);
#[map(name = "NETS_V6")]
pub static NETS_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(DEFAULT_MAX_NETS, 0);
#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);
#[map(name = "CONFIG")]
pub static CONFIG: Array<u32> = Array::with_max_entries(CONFIG_COUNT, 0);
#[map(name = "OUTBOUND")]
pub static OUTBOUND: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map(name = "INBOUND_FLOWS")]
pub static INBOUND: LruHashMap<InboundKey, InboundValue> =
    LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map(name = "BLOCKED_V4")]
pub static BLOCKED_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_BLOCKED, 0);
#[map(name = "BLOCKED_V6")]
pub static BLOCKED_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_BLOCKED, 0);
#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, u32> = HashMap::with_max_entries(MAX_SERVICES, 0);
#[map(name = "DENIED")]
pub static DENIED: RingBuf = RingBuf::with_byte_size(DENIED_RING_BYTES, 0);
#[map(name = "DENIED_RATE")]
pub static DENIED_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "LOG_RATE")]
pub static LOG_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "DROPS")]
pub static DROPS: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(MAX_CGROUPS, 0);
#[map(name = "ALLOWS")]
pub static ALLOWS: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(MAX_CGROUPS, 0);
/// Packets audit mode let through, per cgroup.
#[map(name = "AUDITS")]
pub static AUDITS: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(MAX_CGROUPS, 0);
/// The listed cgroups' policies (`nettrust_common::MAP_POLICY_OF`).
#[map(name = "POLICY_OF")]
pub static POLICY_OF: HashMap<u64, PolicyRef> = HashMap::with_max_entries(MAX_CGROUPS, 0);
/// Each sending cgroup's resolved policy, valid for one generation of `POLICY_OF`.
#[map(name = "SCOPES")]
pub static SCOPES: LruHashMap<u64, ScopeCache> = LruHashMap::with_max_entries(MAX_SCOPE_CACHE, 0);
/// The grants of the policies (scope ≠ 0), sized like `HOSTS_V6`.
#[map(name = "GRANTS")]
pub static GRANTS: HashMap<GrantKey, HostValue> =
    HashMap::with_max_entries(DEFAULT_MAX_HOSTS, ON_DEMAND);
/// The policies' own networks: scope (big-endian) then address.
#[map(name = "POLICY_NETS_V4")]
pub static POLICY_NETS_V4: LpmTrie<[u8; 8], u32> = LpmTrie::with_max_entries(DEFAULT_MAX_NETS, 0);
#[map(name = "POLICY_NETS_V6")]
pub static POLICY_NETS_V6: LpmTrie<[u8; 20], u32> = LpmTrie::with_max_entries(DEFAULT_MAX_NETS, 0);
/// The DNS proxy's listen addresses, ports and protocols.
#[map(name = "LISTENERS")]
pub static LISTENERS: HashMap<ServiceKey, u32> = HashMap::with_max_entries(MAX_LISTENERS, 0);
/// The DNS clients seen sending to a listener: source → cgroup and policy.
#[map(name = "CLIENTS")]
pub static CLIENTS: LruHashMap<ServiceKey, ClientValue> =
    LruHashMap::with_max_entries(MAX_CLIENTS, 0);
/// Userspace-only (names for `nettrust list`); declared here so it is created and pinned with the
/// others.
#[map(name = "NAMES")]
static NAMES: HashMap<[u8; 16], HostName> =
    HashMap::with_max_entries(DEFAULT_MAX_HOSTS * 2, ON_DEMAND);
/// Userspace-only (the names of the policies' grants for `nettrust list` and reloads).
#[map(name = "GRANT_NAMES")]
static GRANT_NAMES: HashMap<GrantKey, HostName> =
    HashMap::with_max_entries(DEFAULT_MAX_HOSTS, ON_DEMAND);
/// Userspace-only (attached cgroups for `nettrust status`).
#[map(name = "CGROUPS")]
static CGROUPS: HashMap<u64, CgroupPath> = HashMap::with_max_entries(MAX_CGROUPS, ON_DEMAND);
/// Userspace-only (policy names by scope for `nettrust list` and `status`).
#[map(name = "POLICY_NAMES")]
static POLICY_NAMES: HashMap<u32, [u8; POLICY_NAME_LEN]> =
    HashMap::with_max_entries(MAX_POLICIES, ON_DEMAND);

/// A CPU's most recent flow (see [`RECENT_OUT`], [`RECENT_IN`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RecentFlow {
    pub words: [u64; 3],
    /// When its `OUTBOUND` entry was last found or written (boot time, ns).
    pub seen_ns: u64,
}

/// Per CPU, the flow whose `OUTBOUND` entry egress last found or wrote, and when: the packets of
/// a transfer follow one another on a CPU, and each one after the first skips the hashed lookup
/// for `flows::FLOW_REFRESH_NS` (the refresh interval of the entry's timestamp anyway). Scratch
/// state, not pinned: the programs of a restarted daemon start with it empty.
#[map(name = "RECENT_OUT")]
pub static RECENT_OUT: PerCpuArray<RecentFlow> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, the flow ingress last found in `OUTBOUND`, and when: the replies of a transfer (the
/// acknowledgements of an upload) skip the hashed lookup for `flows::FLOW_REFRESH_NS`. An entry
/// the LRU evicts meanwhile still counts as present until then (egress writes it back with its
/// next packet anyway). Scratch state like [`RECENT_OUT`].
#[map(name = "RECENT_IN")]
pub static RECENT_IN: PerCpuArray<RecentFlow> = PerCpuArray::with_max_entries(1, 0);

/// Cgroup id → 1 for each new cgroup whose path the `cgroup_mkdir` tracepoint could not read
/// whole (`nettrust_common::MAX_UNCLASSIFIED`), removed with the cgroup. Not pinned: the daemon's
/// walk at start classifies the existing cgroups from their full paths.
/// Flow records (`nettrust_common::FlowRecord`), one per new outbound flow of a filtered cgroup.
#[map(name = "FLOWS")]
pub static FLOWS: RingBuf = RingBuf::with_byte_size(FLOWS_RING_BYTES, 0);
/// Per-CPU rate limiter state of `FLOWS`.
#[map(name = "FLOW_RATE")]
pub static FLOW_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);
/// Per CPU, the flow records not sent (rate limit or full ring).
#[map(name = "FLOWS_LOST")]
pub static FLOWS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Socket cookie → who created it (`nettrust_common::SockOwner`), written by `owners::sock_owner`
/// at socket creation; not pinned (a restarted daemon's programs start with it empty and fall
/// back to the calling task for older sockets).
#[map(name = "SOCK_OWNERS")]
pub static SOCK_OWNERS: LruHashMap<u64, SockOwner> =
    LruHashMap::with_max_entries(MAX_SOCK_OWNERS, 0);

#[map(name = "UNCLASSIFIED")]
pub static UNCLASSIFIED: HashMap<u64, u8> = HashMap::with_max_entries(MAX_UNCLASSIFIED, 0);
