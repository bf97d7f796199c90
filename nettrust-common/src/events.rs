//! What the programs report: a denied (or audited) packet ([`DeniedEvent`], through the `DENIED`
//! ring buffer) and the per-CPU state of their rate limiters ([`RateState`]); and the path of an
//! attached cgroup ([`CgroupPath`], written by the daemon for `nettrust status`).

/// One denied egress packet (or one audit mode let through), as sent to the daemon through [`MAP_DENIED`](crate::MAP_DENIED).
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
    /// The scope (policy) of the sending cgroup; 0 = the default policy.
    pub scope: u16,
    /// `EVENT_*` bits.
    pub flags: u16,
}

const _: () = assert!(core::mem::size_of::<DeniedEvent>() == 32);

/// [`DeniedEvent::flags`] bit: the packet was let through by audit mode (it would have been
/// dropped).
pub const EVENT_AUDIT: u16 = 1 << 0;
/// [`DeniedEvent::flags`] bit: a TCP `connect` was refused (`EPERM`) before any packet was sent.
pub const EVENT_CONNECT: u16 = 1 << 1;

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
