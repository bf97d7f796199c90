//! Transparent DNS capture: the socket-address programs (nettrust-ebpf's `capture` module) send
//! every DNS query of a filtered cgroup to the proxy and show the client the resolver it asked.
//!
//! [`CaptureTarget`] in [`MAP_CAPTURE_TARGETS`] says where a network namespace's queries go
//! (keyed by the namespace's cookie, `SO_NETNS_COOKIE`; key [`CAPTURE_OTHER_NETNS`] for every
//! namespace without its own entry); [`CapturedDest`] in [`MAP_CAPTURED`] remembers, per socket
//! cookie, what the client asked and where the query went instead.

/// The `connect` programs (the connect-time verdict, which also captures a query's connect),
/// attached to every filtered cgroup: IPv4, IPv6.
pub const PROGRAMS_CONNECT: [&str; 2] = ["connect4", "connect6"];

/// The capture-only programs, attached with DNS capture on, in the order of their attach types
/// in the daemon (`sendmsg`, `recvmsg`, `getpeername`; IPv4 then IPv6).
pub const PROGRAMS_CAPTURE: [&str; 6] = [
    "dns_sendmsg4",
    "dns_recvmsg4",
    "dns_peername4",
    "dns_sendmsg6",
    "dns_recvmsg6",
    "dns_peername6",
];

/// Network namespace cookie → [`CaptureTarget`]. Empty: nothing is captured.
pub const MAP_CAPTURE_TARGETS: &str = "CAPTURE_TARGETS";
/// Socket cookie → [`CapturedDest`] (LRU: socket cookies are never reused within a boot, so a
/// stale entry is never applied to another socket).
pub const MAP_CAPTURED: &str = "CAPTURED";
/// Capacity of [`MAP_CAPTURE_TARGETS`].
pub const MAX_CAPTURE_TARGETS: u32 = 64;
/// Capacity of [`MAP_CAPTURED`]: sockets whose captured query can still be shown as coming from
/// the resolver they asked.
pub const MAX_CAPTURED: u32 = 65_536;
/// The [`MAP_CAPTURE_TARGETS`] key of every network namespace without an entry of its own
/// (namespace cookies start at 1).
pub const CAPTURE_OTHER_NETNS: u64 = 0;
/// The destination port that is captured (RFC 1035 §4.2: DNS over UDP and TCP).
pub const CAPTURE_PORT: u16 = 53;

/// [`CaptureTarget::flags`] bit: `v4`/`port_v4` are set.
pub const CAPTURE_V4: u32 = 1 << 0;
/// [`CaptureTarget::flags`] bit: `v6`/`port_v6` are set.
pub const CAPTURE_V6: u32 = 1 << 1;

/// Value of [`MAP_CAPTURE_TARGETS`]: the proxy's listener a namespace's queries are sent to, per
/// family. An IPv4 query from an IPv6 socket (an IPv4-mapped destination) goes to `v4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CaptureTarget {
    /// IPv6 listener address (network order).
    pub v6: [u8; 16],
    /// IPv4 listener address (network order).
    pub v4: [u8; 4],
    /// IPv4 listener port (host order).
    pub port_v4: u16,
    /// IPv6 listener port (host order).
    pub port_v6: u16,
    /// `CAPTURE_*` bits: which families have a listener.
    pub flags: u32,
    /// Explicit padding (always 0).
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<CaptureTarget>() == 32);

/// Value of [`MAP_CAPTURED`]: a socket's last captured query. Addresses are as the socket's
/// family sees them: IPv4 in the first 4 bytes for an IPv4 socket, IPv6 (IPv4-mapped for an IPv4
/// destination) for an IPv6 socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CapturedDest {
    /// The resolver the client asked (network order).
    pub asked: [u8; 16],
    /// The listener the query went to instead (network order).
    pub target: [u8; 16],
    /// The port the client asked (host order).
    pub asked_port: u16,
    /// The listener's port (host order).
    pub target_port: u16,
    /// Explicit padding (always 0).
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<CapturedDest>() == 40);
