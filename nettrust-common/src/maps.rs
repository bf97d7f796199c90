//! The names of the programs and maps in the eBPF object, the indexes of the `CONFIG` map, the
//! capacities of the fixed-size maps and the programs' rate limits.

/// Name of the cgroup_skb egress program in the eBPF object.
pub const PROGRAM_EGRESS: &str = "egress";
/// Name of the cgroup_skb ingress program in the eBPF object: learns inbound flows (so replies to
/// them may leave) and, with `--firewall-drop-input`, drops unsolicited inbound packets.
pub const PROGRAM_INGRESS: &str = "ingress";

/// IPv4 hosts allowed to be reached: an open-addressing table of [`HostSlot`](crate::HostSlot)s in
/// a memory-mappable array (see [`host_table`](crate::host_table)), written by the daemon through
/// `mmap`.
pub const MAP_HOSTS_V4: &str = "HOSTS_V4";
/// IPv6 hosts allowed to be reached: key `[u8; 16]`, value [`HostValue`](crate::HostValue).
pub const MAP_HOSTS_V6: &str = "HOSTS_V6";
/// IPv4 networks allowed to be reached: LPM trie key `{prefix_len: u32, data: [u8; 4]}`, value
/// `u32` flags.
pub const MAP_NETS_V4: &str = "NETS_V4";
/// IPv6 networks allowed to be reached: LPM trie key `{prefix_len: u32, data: [u8; 16]}`.
pub const MAP_NETS_V6: &str = "NETS_V6";
/// Per-CPU verdict counters, indexed by the `STAT_*` constants.
pub const MAP_STATS: &str = "STATS";
/// Runtime switches of the programs: array of `u32` indexed by the `CONFIG_*` constants.
pub const MAP_CONFIG: &str = "CONFIG";
/// Flows opened from inside the filtered cgroups (LRU hash, key [`FlowKey`](crate::FlowKey) with
/// the remote address/port, value `u64` last-seen ns): the ingress program lets their replies in.
pub const MAP_OUTBOUND: &str = "OUTBOUND";
/// Flows opened from outside towards a socket of a filtered cgroup (LRU hash, key
/// [`InboundKey`](crate::InboundKey), value [`InboundValue`](crate::InboundValue)): the egress
/// program lets their replies out while the flow is live (see [`inbound`](crate::inbound)).
pub const MAP_INBOUND: &str = "INBOUND_FLOWS";
/// Remote hosts and networks that never get replies through [`MAP_INBOUND`] (the configured
/// blacklist): LPM tries like [`MAP_NETS_V4`]/[`MAP_NETS_V6`].
pub const MAP_BLOCKED_V4: &str = "BLOCKED_V4";
/// See [`MAP_BLOCKED_V4`].
pub const MAP_BLOCKED_V6: &str = "BLOCKED_V6";
/// Whitelisted services: one address, port and protocol each (the upstream DNS servers), hash
/// key [`ServiceKey`](crate::ServiceKey), value `u32` (1).
pub const MAP_SERVICES: &str = "SERVICES";
/// Denied-egress events for the daemon ([`DeniedEvent`](crate::DeniedEvent) records in a ring
/// buffer).
pub const MAP_DENIED: &str = "DENIED";
/// Per-CPU rate limiter state of [`MAP_DENIED`] ([`RateState`](crate::RateState)).
pub const MAP_DENIED_RATE: &str = "DENIED_RATE";
/// Per-CPU rate limiter state of the egress program's debug log ([`RateState`](crate::RateState));
/// not pinned.
pub const MAP_LOG_RATE: &str = "LOG_RATE";
/// Dropped egress packets per cgroup (per-CPU hash, key cgroup id `u64`, value `u64`).
pub const MAP_DROPS: &str = "DROPS";
/// Per-cgroup allowed egress packets: key cgroup id (`u64`), per-CPU `u64` counter.
pub const MAP_ALLOWS: &str = "ALLOWS";
/// Written by userspace only: the DNS name that authorized each host (hash, key `[u8; 16]` with
/// IPv4 as IPv4-mapped IPv6, value [`HostName`](crate::HostName)).
pub const MAP_NAMES: &str = "NAMES";
/// Written by userspace only: the DNS name that authorized each policy grant (hash, key
/// [`GrantKey`](crate::GrantKey) as in `GRANTS`, value [`HostName`](crate::HostName)), so two
/// policies that resolved one address from different names each keep their own.
pub const MAP_GRANT_NAMES: &str = "GRANT_NAMES";
/// Written by userspace only: the cgroups the programs are attached to (hash, key cgroup id `u64`
/// = inode of the cgroup directory, value [`CgroupPath`](crate::CgroupPath)).
pub const MAP_CGROUPS: &str = "CGROUPS";

/// The cgroups listed in a policy (hash, key cgroup id `u64`, value
/// [`PolicyRef`](crate::PolicyRef)), top-level filtered cgroups of the default policy included
/// (scope 0), so a default cgroup below a policy's cgroup resolves to the default policy.
pub const MAP_POLICY_OF: &str = "POLICY_OF";
/// The egress program's cache of each sending cgroup's policy (LRU hash, key cgroup id `u64`,
/// value [`ScopeCache`](crate::ScopeCache)); an entry of another generation than
/// `CONFIG[CONFIG_SCOPE_GENERATION]` is stale.
pub const MAP_SCOPES: &str = "SCOPES";
/// Addresses authorized for one policy (hash, key [`GrantKey`](crate::GrantKey), value
/// [`HostValue`](crate::HostValue)), sized like [`MAP_HOSTS_V6`].
pub const MAP_GRANTS: &str = "GRANTS";
/// Networks always allowed for one policy: LPM trie key `{prefix_len: u32, data: [u8; 8]}`,
/// the scope (big-endian) then the IPv4 network, value `u32` (1).
pub const MAP_POLICY_NETS_V4: &str = "POLICY_NETS_V4";
/// See [`MAP_POLICY_NETS_V4`] (data `[u8; 20]`: scope then IPv6 network).
pub const MAP_POLICY_NETS_V6: &str = "POLICY_NETS_V6";
/// The DNS proxy's listeners (hash, key [`ServiceKey`](crate::ServiceKey): address — all zero
/// for a wildcard listener — port and protocol, value `u32` (1)).
pub const MAP_LISTENERS: &str = "LISTENERS";
/// The DNS clients seen sending to a listener (LRU hash, key [`ServiceKey`](crate::ServiceKey)
/// of the client's source address, port and protocol, value
/// [`ClientValue`](crate::ClientValue)).
pub const MAP_CLIENTS: &str = "CLIENTS";
/// Written by userspace only: the policies' names by scope, for `nettrust list` and `status`
/// (hash, key scope `u32`, value `[u8; POLICY_NAME_LEN]`, NUL-padded).
pub const MAP_POLICY_NAMES: &str = "POLICY_NAMES";
/// Length of a [`MAP_POLICY_NAMES`] value (policy names have at most 32 bytes).
pub const POLICY_NAME_LEN: usize = 32;
/// Capacity of [`MAP_POLICY_NAMES`].
pub const MAX_POLICIES: u32 = 1024;
/// Packets let through by audit mode, per cgroup (per-CPU hash, key cgroup id `u64`, value
/// `u64`): counted here instead of [`MAP_DROPS`].
pub const MAP_AUDITS: &str = "AUDITS";

/// Index in [`MAP_CONFIG`]: non-zero when unsolicited inbound packets must be dropped.
pub const CONFIG_DROP_INPUT: u32 = 0;
/// Indexes in [`MAP_CONFIG`]: low and high half of the hash seed of [`MAP_HOSTS_V4`], kept with
/// the pinned maps so a restarted daemon finds the hosts a previous run wrote.
pub const CONFIG_HOST_SEED_LO: u32 = 1;
/// See [`CONFIG_HOST_SEED_LO`].
pub const CONFIG_HOST_SEED_HI: u32 = 2;
/// Index in [`MAP_CONFIG`]: the generation of [`MAP_POLICY_OF`]; 0 = no policies (every cgroup
/// is in the default policy and the egress program skips scopes and client records altogether).
/// The daemon bumps it after rewriting `POLICY_OF`, which makes every `SCOPES` entry stale.
pub const CONFIG_SCOPE_GENERATION: u32 = 3;
/// Index in [`MAP_CONFIG`]: the ports of the DNS proxy's listeners (two 16-bit halves, 0 =
/// none), checked before the [`MAP_LISTENERS`] lookup so other packets cost no hash lookup.
pub const CONFIG_LISTEN_PORTS: u32 = 4;
/// Index in [`MAP_CONFIG`]: 1 while a configured pattern holds `**`, which can match cgroups
/// deeper than the walk sees ([`MAX_CGROUP_DEPTH`](crate::MAX_CGROUP_DEPTH)); a cgroup that deep
/// and not listed itself then gets [`SCOPE_UNRESOLVED`](crate::SCOPE_UNRESOLVED).
pub const CONFIG_DEEP_MATCHES: u32 = 5;
/// Number of entries in [`MAP_CONFIG`].
pub const CONFIG_COUNT: u32 = 8;
/// Capacity of the flow maps.
pub const MAX_FLOWS: u32 = 65_536;
/// Capacity of [`MAP_SERVICES`].
pub const MAX_SERVICES: u32 = 256;
/// The socket mark (`SO_MARK`) of the daemon's own upstream sockets: a whitelisted service is
/// open only to packets carrying it, so a filtered process cannot ask the upstream directly,
/// past the proxy and its policies. The low 16 bits are zero, away from the small marks
/// routing rules usually match.
pub const UPSTREAM_MARK: u32 = 0x6e74_0000;
/// Capacity of [`MAP_BLOCKED_V4`] and [`MAP_BLOCKED_V6`].
pub const MAX_BLOCKED: u32 = 4_096;
/// Capacity of [`MAP_DROPS`], [`MAP_ALLOWS`] and [`MAP_CGROUPS`].
pub const MAX_CGROUPS: u32 = 4_096;
/// Size of the denied-event ring buffer in bytes (a power of two, multiple of the page size).
pub const DENIED_RING_BYTES: u32 = 256 * 1024;
/// At most this many denied events per CPU per second reach the ring buffer.
pub const DENIED_EVENTS_PER_SEC: u64 = 50;
/// At most this many debug records per CPU per second leave the egress program (aya-log), for the
/// drops a `DeniedEvent` does not explain: headers it cannot read (fail closed), source routes.
pub const LOG_RECORDS_PER_SEC: u64 = 5;
/// The `log`/tracing target of the egress program's aya-log records: they are written only when
/// the daemon's filter enables this target at debug (e.g. `RUST_LOG=info,nettrust::ebpf=debug`).
pub const EBPF_LOG_TARGET: &str = "nettrust::ebpf";

/// Default capacity of each host map (per address family).
pub const DEFAULT_MAX_HOSTS: u32 = 65_536;
/// Default capacity of each network trie (per address family).
pub const DEFAULT_MAX_NETS: u32 = 4_096;

/// Name of the `sock_ops` program (nettrust-ebpf's `sockops` module) that records the filtered
/// cgroups' established TCP connections.
pub const PROGRAM_SOCKOPS: &str = "live_tcp";
/// Name of the `cgroup/sock_create` program (nettrust-ebpf's `owners` module) that records who
/// created each socket of the filtered cgroups.
pub const PROGRAM_SOCK_OWNER: &str = "sock_owner";
/// Established TCP connections opened from the filtered cgroups: socket cookie →
/// [`LiveTcp`](crate::LiveTcp), the remote address, the attach cgroup and the scope of the
/// socket's cgroup. Written by the `sock_ops` program when a connection is established and
/// removed when it closes; read by the sweeper as a per-scope liveness signal that needs no
/// conntrack. (Earlier versions pinned a value without the scope as `LIVE_TCP`.)
pub const MAP_LIVE_TCP: &str = "LIVE_TCP_SCOPED";
/// The cgroup storage of the `sock_ops` program's attachments: the cgroup's id (`u64`), written by
/// the daemon when it attaches the program, copied into each [`MAP_LIVE_TCP`] entry. Not pinned:
/// each loaded program has its own.
pub const MAP_LIVE_TCP_CGROUP: &str = "LIVE_TCP_CGROUP";
/// Capacity of [`MAP_LIVE_TCP`]: connections established while it is full are not recorded (their
/// hosts then stay alive only through traffic or conntrack).
pub const MAX_LIVE_TCP: u32 = 65_536;
