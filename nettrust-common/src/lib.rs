//! Types and constants shared by the nettrust daemon (userspace, feature `user`) and its eBPF
//! programs (`nettrust-ebpf`). Everything here is `#[repr(C)]` plain data without implicit
//! padding, so both sides agree on the bytes of every map key and value.
#![no_std]

/// Name of the cgroup_skb egress program in the eBPF object.
pub const PROGRAM_EGRESS: &str = "egress";
/// Name of the cgroup_skb ingress program in the eBPF object: learns inbound flows (so replies to
/// them may leave) and, with `--firewall-drop-input`, drops unsolicited inbound packets.
pub const PROGRAM_INGRESS: &str = "ingress";

/// IPv4 hosts allowed to be reached: an open-addressing table of [`HostSlot`]s in a
/// memory-mappable array (see [`host_table`]), written by the daemon through `mmap`.
pub const MAP_HOSTS_V4: &str = "HOSTS_V4";
/// IPv6 hosts allowed to be reached: key `[u8; 16]`, value [`HostValue`].
pub const MAP_HOSTS_V6: &str = "HOSTS_V6";
/// IPv4 networks allowed to be reached: LPM trie key `{prefix_len: u32, data: [u8; 4]}`, value `u32`
/// flags.
pub const MAP_NETS_V4: &str = "NETS_V4";
/// IPv6 networks allowed to be reached: LPM trie key `{prefix_len: u32, data: [u8; 16]}`.
pub const MAP_NETS_V6: &str = "NETS_V6";
/// Per-CPU verdict counters, indexed by the `STAT_*` constants.
pub const MAP_STATS: &str = "STATS";
/// Runtime switches of the programs: array of `u32` indexed by the `CONFIG_*` constants.
pub const MAP_CONFIG: &str = "CONFIG";
/// Flows opened from inside the filtered cgroups (LRU hash, key [`FlowKey`] with the remote
/// address/port, value `u64` last-seen ns): the ingress program lets their replies in.
pub const MAP_OUTBOUND: &str = "OUTBOUND";
/// Flows opened from outside towards a socket of a filtered cgroup (LRU hash, key
/// [`InboundKey`], value [`InboundValue`]): the egress program lets their replies out while the
/// flow is live (see [`inbound`]).
pub const MAP_INBOUND: &str = "INBOUND_FLOWS";
/// Remote hosts and networks that never get replies through [`MAP_INBOUND`] (the configured
/// blacklist): LPM tries like [`MAP_NETS_V4`]/[`MAP_NETS_V6`].
pub const MAP_BLOCKED_V4: &str = "BLOCKED_V4";
/// See [`MAP_BLOCKED_V4`].
pub const MAP_BLOCKED_V6: &str = "BLOCKED_V6";
/// Whitelisted services: one address, port and protocol each (the upstream DNS servers), hash
/// key [`ServiceKey`], value `u32` (1).
pub const MAP_SERVICES: &str = "SERVICES";
/// Denied-egress events for the daemon ([`DeniedEvent`] records in a ring buffer).
pub const MAP_DENIED: &str = "DENIED";
/// Per-CPU rate limiter state of [`MAP_DENIED`] ([`RateState`]).
pub const MAP_DENIED_RATE: &str = "DENIED_RATE";
/// Per-CPU rate limiter state of the egress program's debug log ([`RateState`]); not pinned.
pub const MAP_LOG_RATE: &str = "LOG_RATE";
/// Dropped egress packets per cgroup (per-CPU hash, key cgroup id `u64`, value `u64`).
pub const MAP_DROPS: &str = "DROPS";
/// Per-cgroup allowed egress packets: key cgroup id (`u64`), per-CPU `u64` counter.
pub const MAP_ALLOWS: &str = "ALLOWS";
/// Written by userspace only: the DNS name that authorized each host (hash, key `[u8; 16]` with
/// IPv4 as IPv4-mapped IPv6, value [`HostName`]).
pub const MAP_NAMES: &str = "NAMES";
/// Written by userspace only: the cgroups the programs are attached to (hash, key cgroup id `u64`
/// = inode of the cgroup directory, value [`CgroupPath`]).
pub const MAP_CGROUPS: &str = "CGROUPS";

/// Index in [`MAP_CONFIG`]: non-zero when unsolicited inbound packets must be dropped.
pub const CONFIG_DROP_INPUT: u32 = 0;
/// Indexes in [`MAP_CONFIG`]: low and high half of the hash seed of [`MAP_HOSTS_V4`], kept with
/// the pinned maps so a restarted daemon finds the hosts a previous run wrote.
pub const CONFIG_HOST_SEED_LO: u32 = 1;
/// See [`CONFIG_HOST_SEED_LO`].
pub const CONFIG_HOST_SEED_HI: u32 = 2;
/// Number of entries in [`MAP_CONFIG`].
pub const CONFIG_COUNT: u32 = 4;
/// Capacity of the flow maps.
pub const MAX_FLOWS: u32 = 65_536;
/// Capacity of [`MAP_SERVICES`].
pub const MAX_SERVICES: u32 = 256;
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

/// `cgroup_skb` return value that lets the packet through.
pub const VERDICT_ALLOW: i32 = 1;
/// `cgroup_skb` return value that drops the packet (the sender sees `EPERM`).
pub const VERDICT_DROP: i32 = 0;

/// The host is whitelisted (configuration, listen/forward address): never expires.
pub const FLAG_WHITELISTED: u32 = 1 << 0;
/// The host was authorized by a DNS answer.
pub const FLAG_AUTHORIZED: u32 = 1 << 1;

/// Packets allowed because the destination is in a host map.
pub const STAT_ALLOW_HOST: u32 = 0;
/// Packets allowed because the destination is in a whitelisted network.
pub const STAT_ALLOW_NET: u32 = 1;
/// Packets dropped: destination neither authorized nor whitelisted.
pub const STAT_DROP: u32 = 2;
/// Packets let through because they are not IPv4/IPv6 (no destination address to judge).
pub const STAT_PASS_NON_IP: u32 = 3;
/// Packets dropped because their header could not be read (fail closed).
pub const STAT_ERROR: u32 = 4;
/// Packets dropped because the destination's authorization had expired.
pub const STAT_DROP_EXPIRED: u32 = 5;
/// Egress packets allowed because they answer a flow opened from outside (a server's replies).
pub const STAT_ALLOW_INBOUND_REPLY: u32 = 6;
/// Inbound packets dropped by `--firewall-drop-input`.
pub const STAT_DROP_INPUT: u32 = 7;
/// Number of counters in [`MAP_STATS`].
pub const STAT_COUNT: u32 = 8;

/// Value of the `HOSTS_V6` map, and the daemon's view of an IPv4 table slot ([`HostSlot`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostValue {
    /// Deadline in `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`) after which the entry is
    /// treated as absent by the egress program; `0` means it never expires.
    pub expires_ns: u64,
    /// Last time (`CLOCK_BOOTTIME` ns) the egress program let a packet out to this host, at most
    /// [`LAST_SEEN_GRANULARITY_NS`] stale; 0 = never. The sweeper's liveness signal.
    pub last_seen_ns: u64,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Explicit padding (always 0).
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<HostValue>() == 24);

/// The egress program refreshes [`HostValue::last_seen_ns`] only when it is older than this, so a
/// busy host does not cost a map write per packet.
pub const LAST_SEEN_GRANULARITY_NS: u64 = 100_000_000;

/// Key of the flow maps: the remote end and the local port of a TCP/UDP flow (ports 0 for other
/// protocols). IPv4 addresses use the first 4 bytes of `addr`, the rest is 0. Aligned to 8 bytes
/// so the eBPF programs build, copy and compare it a word at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowKey {
    /// Remote address (network order).
    pub addr: [u8; 16],
    /// Remote port (host order).
    pub remote_port: u16,
    /// Local port (host order).
    pub local_port: u16,
    /// IP protocol number (6 TCP, 17 UDP, ...).
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// Explicit padding (always 0).
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 24);

impl FlowKey {
    /// The key as three words (address halves; ports, protocol, family and padding), for
    /// comparing in three instructions.
    #[inline(always)]
    pub fn words(&self) -> [u64; 3] {
        // SAFETY: 24 bytes of plain data with no invalid bit patterns, 8-byte aligned.
        unsafe { core::mem::transmute_copy(self) }
    }

    /// The key whose [`FlowKey::words`] are `words`.
    #[inline(always)]
    pub fn from_words(words: [u64; 3]) -> Self {
        // SAFETY: every bit pattern is a valid key (plain bytes and integers); same size.
        unsafe { core::mem::transmute(words) }
    }
}

/// One denied egress packet, as sent to the daemon through [`MAP_DENIED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeniedEvent {
    /// cgroup v2 id (inode of the cgroup directory) of the sending socket.
    pub cgroup_id: u64,
    /// Destination address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Destination port (host order), 0 when not TCP/UDP.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// Explicit padding (always 0).
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<DeniedEvent>() == 32);

/// Key of [`MAP_INBOUND`]: a flow a remote peer opened towards a socket of one filtered cgroup,
/// seen from the local side. Aligned to 8 bytes (built a word at a time by the programs).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InboundKey {
    /// Remote address (network order; IPv4 in the first 4 bytes, the rest 0).
    pub remote: [u8; 16],
    /// Local address (network order; IPv4 in the first 4 bytes, the rest 0).
    pub local: [u8; 16],
    /// cgroup v2 id of the socket the flow was delivered to.
    pub cgroup_id: u64,
    /// Remote port (host order).
    pub remote_port: u16,
    /// Local port (host order).
    pub local_port: u16,
    /// 6 (TCP) or 17 (UDP): other protocols are never learned.
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// Explicit padding (always 0).
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<InboundKey>() == 48);

/// Value of [`MAP_INBOUND`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InboundValue {
    /// Last inbound packet of the flow (`CLOCK_BOOTTIME` ns). Only inbound packets refresh it: a
    /// local socket cannot keep a flow open by sending.
    pub seen_ns: u64,
    /// `inbound::STATE_*` bits.
    pub state: u32,
    /// Explicit padding (always 0).
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<InboundValue>() == 16);

/// Key of [`MAP_SERVICES`]: an address, a port and a protocol allowed on their own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceKey {
    /// Address (network order; IPv4 in the first 4 bytes, the rest 0).
    pub addr: [u8; 16],
    /// Destination port (host order).
    pub port: u16,
    /// 6 (TCP) or 17 (UDP).
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// Explicit padding (always 0).
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 24);

/// How long a flow opened from outside ([`MAP_INBOUND`]) lets replies out, after its last
/// inbound packet, by what was seen of it (the values follow conntrack's defaults).
pub mod inbound {
    /// A local socket answered (the egress program let a reply out).
    pub const STATE_REPLIED: u32 = 1 << 0;
    /// The peer sent again after a reply (TCP: the handshake's ACK; UDP: a two-way stream).
    pub const STATE_CONFIRMED: u32 = 1 << 1;
    /// The local socket sent a FIN.
    pub const STATE_CLOSING: u32 = 1 << 2;

    const SECOND: u64 = 1_000_000_000;
    /// UDP before the peer spoke again after a reply (conntrack's `udp_timeout`): a single
    /// (possibly spoofed) datagram lets the server answer for this long, however much it sends.
    pub const UDP_UNREPLIED_NS: u64 = 30 * SECOND;
    /// UDP both ways (conntrack's `udp_timeout_stream`).
    pub const UDP_STREAM_NS: u64 = 120 * SECOND;
    /// TCP after the SYN, before the peer's ACK of our SYN-ACK (conntrack's `syn_recv` is 60 s).
    pub const TCP_HANDSHAKE_NS: u64 = 60 * SECOND;
    /// An established TCP connection without any inbound packet (conntrack's `established`,
    /// 5 days): long, because an idle SSH session or database pool must survive; bounded,
    /// because the entry must not outlive a connection that vanished without FIN or RST.
    pub const TCP_ESTABLISHED_NS: u64 = 5 * 24 * 3600 * SECOND;
    /// TCP after the local socket's FIN (conntrack's `fin_wait`/`time_wait`, 120 s).
    pub const TCP_CLOSING_NS: u64 = 120 * SECOND;

    /// How long an entry of protocol `proto` in `state` stays live after its last inbound packet.
    #[inline(always)]
    pub const fn timeout_ns(proto: u8, state: u32) -> u64 {
        if proto == 6 {
            if state & STATE_CLOSING != 0 {
                TCP_CLOSING_NS
            } else if state & STATE_CONFIRMED != 0 {
                TCP_ESTABLISHED_NS
            } else {
                TCP_HANDSHAKE_NS
            }
        } else if state & STATE_CONFIRMED != 0 {
            UDP_STREAM_NS
        } else {
            UDP_UNREPLIED_NS
        }
    }
}

/// Per-CPU state of a rate limiter (denied events, debug records): a one-second window and its
/// event count.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateState {
    /// Start of the current window (`CLOCK_BOOTTIME` ns).
    pub window_start_ns: u64,
    /// Events emitted in the window.
    pub count: u64,
}

const _: () = assert!(core::mem::size_of::<RateState>() == 16);

/// Length of [`HostName::name`]. A DNS name in text form may have 253 characters (RFC 1035 §2.3.4
/// limits it to 255 octets on the wire), but nearly all are far shorter, and every byte here is
/// kernel memory per listed host: the daemon records a longer name as `…` and its last 124 bytes
/// (the end names the domain), like the nftables backend's 127-byte element comments. With 128
/// bytes a `NAMES` element fits the kernel's 192-byte allocation size class, not the 512-byte one.
pub const HOST_NAME_LEN: usize = 128;

/// The question that authorized a host (NUL-padded text), written by the daemon for
/// `nettrust list`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostName {
    /// The name, NUL-padded.
    pub name: [u8; HOST_NAME_LEN],
}

const _: () = assert!(core::mem::size_of::<HostName>() == HOST_NAME_LEN);

/// Length of [`CgroupPath::path`].
pub const CGROUP_PATH_LEN: usize = 512;

/// The path of an attached cgroup (NUL-padded), written by the daemon for `nettrust status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupPath {
    /// The path, NUL-padded (truncated when longer).
    pub path: [u8; CGROUP_PATH_LEN],
}

const _: () = assert!(core::mem::size_of::<CgroupPath>() == CGROUP_PATH_LEN);

impl HostValue {
    /// Whether the entry is still valid at `now_ns` (`CLOCK_BOOTTIME`).
    #[inline(always)]
    pub fn is_live(&self, now_ns: u64) -> bool {
        self.expires_ns == 0 || now_ns < self.expires_ns
    }
}

/// One slot of the IPv4 host table [`MAP_HOSTS_V4`] (16 bytes instead of a hash-map element's
/// 88): the address and its deadline share one 64-bit word, so the egress program reads both in
/// one load and can never pair an address with another host's deadline.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostSlot {
    /// [`host_table::entry`]: address (low half) and deadline (high half); 0 = empty slot.
    pub entry: u64,
    /// Last time the egress program let a packet out to this host ([`host_table::to_units`]);
    /// written by the program only.
    pub last_seen: u32,
    /// `FLAG_*` bits; written by the daemon only.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<HostSlot>() == 16);

/// The IPv4 host table: linear probing in an array of [`HostSlot`]s with
/// [`host_table::PROBES`] spare slots at the end, so a probe never wraps. The daemon is its only
/// writer (under a lock); it keeps each cluster sorted by home slot (Robin Hood order: an insert
/// shifts later entries forward) and deletes by shifting entries back (no tombstones), so every
/// entry stays within `PROBES` slots of its home and a lookup stops at the first empty slot.
pub mod host_table {
    /// Slots a lookup examines at most (and the spare slots after the last home slot).
    pub const PROBES: u32 = 32;
    /// Times are stored in units of 2^27 ns (134 ms) in 32 bits (18 years of uptime).
    pub const TIME_SHIFT: u32 = 27;

    /// Home slots for `capacity` hosts: the table is kept at most 3/4 full.
    pub const fn home_slots(capacity: u32) -> u32 {
        capacity + capacity / 3 + 1
    }

    /// max_entries of the array holding `capacity` hosts: the home slots, the probe window and
    /// the version slot.
    pub const fn slots(capacity: u32) -> u32 {
        home_slots(capacity) + PROBES + 1
    }

    /// Index of the version slot of a table with `home` home slots. Its entry word counts the
    /// daemon's moves of entries and is odd while entries are moving: a walk that missed while it
    /// changed is walked again (a seqlock for misses only; a found entry is always genuine).
    pub const fn version_slot(home: u32) -> u32 {
        home + PROBES
    }

    /// Walks a reader makes at most when entries kept moving under it.
    pub const READ_ATTEMPTS: u32 = 4;

    /// The capacity whose table has `slots` slots (inverse of [`slots`]).
    pub const fn capacity_of(slots: u32) -> u32 {
        let home = slots.saturating_sub(PROBES + 2) as u64;
        (home * 3).div_ceil(4) as u32
    }

    /// The home slot of `addr` (host-order value of the network-order address): the address
    /// XOR the table's random seed through the MurmurHash3 finalizer, mapped onto `home` slots
    /// without a division. Without the seed, nobody can pick addresses that crowd one slot.
    #[inline(always)]
    pub const fn home_of(addr: u32, seed: u64, home: u32) -> u32 {
        let mut x = addr as u64 ^ seed;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^= x >> 33;
        (((x >> 32) * home as u64) >> 32) as u32
    }

    /// The entry word of `addr` with deadline `expires` (units; 0 = never).
    #[inline(always)]
    pub const fn entry(addr: u32, expires: u32) -> u64 {
        addr as u64 | ((expires as u64) << 32)
    }

    /// The address of an entry word.
    #[inline(always)]
    pub const fn entry_addr(entry: u64) -> u32 {
        entry as u32
    }

    /// The deadline of an entry word (units; 0 = never).
    #[inline(always)]
    pub const fn entry_expires(entry: u64) -> u32 {
        (entry >> 32) as u32
    }

    /// A `CLOCK_BOOTTIME` deadline or time in ns as units, rounded up (a deadline is never
    /// earlier than asked); 0 stays 0, beyond 32 bits saturates.
    pub const fn to_units(ns: u64) -> u32 {
        let units = ns.div_ceil(1 << TIME_SHIFT);
        if units > u32::MAX as u64 {
            u32::MAX
        } else {
            units as u32
        }
    }

    /// Units back to ns.
    #[inline(always)]
    pub const fn from_units(units: u32) -> u64 {
        (units as u64) << TIME_SHIFT
    }

    /// Whether an entry with deadline `expires` (units) is live at `now_ns`.
    #[inline(always)]
    pub const fn is_live(expires: u32, now_ns: u64) -> bool {
        expires == 0 || now_ns < from_units(expires)
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): `repr(C)`, `Copy`, no implicit padding, every bit pattern is valid.
    unsafe impl aya::Pod for super::HostValue {}
    unsafe impl aya::Pod for super::HostSlot {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::InboundKey {}
    unsafe impl aya::Pod for super::InboundValue {}
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::DeniedEvent {}
    unsafe impl aya::Pod for super::RateState {}
    unsafe impl aya::Pod for super::HostName {}
    unsafe impl aya::Pod for super::CgroupPath {}
}

/// Name of the `sock_ops` program (nettrust-ebpf's `sockops` module) that records the filtered
/// cgroups' established TCP connections.
pub const PROGRAM_SOCKOPS: &str = "live_tcp";
/// Established TCP connections opened from the filtered cgroups: socket cookie → `[u64; 3]`, the
/// remote address (IPv6, IPv4 as IPv4-mapped IPv6; its 16 bytes as two native-endian words) and
/// the id of the cgroup. Written by the `sock_ops` program when a connection is established and
/// removed when it closes; read by the sweeper as a liveness signal that needs no conntrack.
pub const MAP_LIVE_TCP: &str = "LIVE_TCP";
/// The cgroup storage of the `sock_ops` program's attachments: the cgroup's id (`u64`), written by
/// the daemon when it attaches the program, copied into each [`MAP_LIVE_TCP`] entry. Not pinned:
/// each loaded program has its own.
pub const MAP_LIVE_TCP_CGROUP: &str = "LIVE_TCP_CGROUP";
/// Capacity of [`MAP_LIVE_TCP`]: connections established while it is full are not recorded (their
/// hosts then stay alive only through traffic or conntrack).
pub const MAX_LIVE_TCP: u32 = 65_536;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_key_words_follow_the_field_layout() {
        // The egress program assembles keys from words in this layout; a field moved or resized
        // would make its keys differ from the ones userspace reads.
        let key = FlowKey {
            addr: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
            remote_port: 0x1234,
            local_port: 0x5678,
            proto: 17,
            family: 6,
            _pad: [0; 2],
        };
        let (remote, local) = (0x1234u16.to_ne_bytes(), 0x5678u16.to_ne_bytes());
        assert_eq!(
            key.words(),
            [
                u64::from_ne_bytes([1, 2, 3, 4, 5, 6, 7, 8]),
                u64::from_ne_bytes([9, 10, 11, 12, 13, 14, 15, 16]),
                u64::from_ne_bytes([remote[0], remote[1], local[0], local[1], 17, 6, 0, 0]),
            ]
        );
        assert_eq!(FlowKey::from_words(key.words()), key);
        assert_eq!(core::mem::align_of::<FlowKey>(), 8);
    }

    #[test]
    fn inbound_timeouts_follow_the_flow_state() {
        use inbound::*;
        assert_eq!(timeout_ns(17, 0), UDP_UNREPLIED_NS);
        assert_eq!(timeout_ns(17, STATE_REPLIED), UDP_UNREPLIED_NS);
        assert_eq!(
            timeout_ns(17, STATE_REPLIED | STATE_CONFIRMED),
            UDP_STREAM_NS
        );
        assert_eq!(timeout_ns(6, 0), TCP_HANDSHAKE_NS);
        assert_eq!(timeout_ns(6, STATE_REPLIED), TCP_HANDSHAKE_NS);
        assert_eq!(
            timeout_ns(6, STATE_REPLIED | STATE_CONFIRMED),
            TCP_ESTABLISHED_NS
        );
        assert_eq!(
            timeout_ns(6, STATE_REPLIED | STATE_CONFIRMED | STATE_CLOSING),
            TCP_CLOSING_NS
        );
    }

    #[test]
    fn zero_deadline_never_expires() {
        let v = HostValue {
            expires_ns: 0,
            flags: FLAG_AUTHORIZED,
            ..HostValue::default()
        };
        assert!(v.is_live(u64::MAX));
    }

    #[test]
    fn deadline_is_exclusive() {
        let v = HostValue {
            expires_ns: 100,
            flags: FLAG_AUTHORIZED,
            ..HostValue::default()
        };
        assert!(v.is_live(99));
        assert!(!v.is_live(100));
    }

    #[test]
    fn table_units_round_deadlines_up_and_back() {
        use host_table::*;
        assert_eq!(to_units(0), 0);
        assert_eq!(to_units(1), 1);
        assert!(from_units(to_units(5_000_000_000)) >= 5_000_000_000);
        assert!(from_units(to_units(5_000_000_000)) - 5_000_000_000 < 1 << TIME_SHIFT);
        assert_eq!(to_units(u64::MAX), u32::MAX);
        assert!(is_live(0, u64::MAX));
        assert!(is_live(10, from_units(10) - 1));
        assert!(!is_live(10, from_units(10)));
    }

    #[test]
    fn table_entry_word_keeps_address_and_deadline_apart() {
        use host_table::*;
        let e = entry(0xC000_0201, 0xFFFF_FFFF);
        assert_eq!(entry_addr(e), 0xC000_0201);
        assert_eq!(entry_expires(e), 0xFFFF_FFFF);
        assert_ne!(entry(1, 0), 0);
    }

    #[test]
    fn table_sizes_invert_and_homes_stay_in_range() {
        use host_table::*;
        for capacity in [1, 16, 65_536, 1_048_576, 16_777_216] {
            assert_eq!(capacity_of(slots(capacity)), capacity);
            let home = home_slots(capacity);
            for addr in [0u32, 1, 0xC000_0201, u32::MAX] {
                for seed in [0u64, 1, 0x9E37_79B9_7F4A_7C15, u64::MAX] {
                    assert!(home_of(addr, seed, home) < home);
                }
            }
        }
    }
}
