//! Flow records: one per new outbound flow a filtered cgroup opens (allowed, denied or audited),
//! sent by the programs through the `FLOWS` ring buffer ([`FlowRecord`]), at most
//! [`FLOW_RECORDS_PER_SEC`] per CPU; what the limit or a full ring turns away is counted in
//! `FLOWS_LOST`.

/// The `FLOWS` ring buffer.
pub const MAP_FLOWS: &str = "FLOWS";
/// Per-CPU count of records not sent (rate limit or full ring): array of one `u64`.
pub const MAP_FLOWS_LOST: &str = "FLOWS_LOST";
/// Size of the `FLOWS` ring buffer (16,384 records).
pub const FLOWS_RING_BYTES: u32 = 1024 * 1024;
/// Records per CPU per second at most.
pub const FLOW_RECORDS_PER_SEC: u64 = 50_000;

/// [`FlowRecord::verdict`]: the flow was let out.
pub const FLOW_ALLOWED: u8 = 0;
/// [`FlowRecord::verdict`]: the packet was dropped (or the `connect` refused).
pub const FLOW_DENIED: u8 = 1;
/// [`FlowRecord::verdict`]: audit mode let out what enforcement would drop.
pub const FLOW_AUDITED: u8 = 2;

/// [`FlowRecord::flags`] bit: the record is a refused TCP `connect` (no packet was sent).
pub const FLOW_AT_CONNECT: u8 = 1 << 0;

/// The first packet of a flow, as the programs judged it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowRecord {
    /// When (`CLOCK_BOOTTIME` ns).
    pub time_ns: u64,
    /// cgroup v2 id of the sending socket.
    pub cgroup_id: u64,
    /// Destination address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Destination port (host order), 0 when not TCP/UDP.
    pub remote_port: u16,
    /// Source port (host order), 0 when not TCP/UDP or not known yet.
    pub local_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// `FLOW_ALLOWED`, `FLOW_DENIED` or `FLOW_AUDITED`.
    pub verdict: u8,
    /// Why: the `STAT_*` counter the verdict bumped (a host entry, a network, an inbound reply,
    /// no grant, an expired grant, audit).
    pub reason: u8,
    /// The sender's scope (policy).
    pub scope: u32,
    /// The process that created the socket (0: unknown).
    pub pid: u32,
    /// `FLOW_*` bits.
    pub flags: u8,
    /// Explicit padding (always 0).
    pub _pad: [u8; 7],
    /// Its command name (NUL-padded; empty when unknown).
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<FlowRecord>() == 72);
