//! The value of [`MAP_LIVE_TCP`](crate::MAP_LIVE_TCP): one established TCP connection of a
//! filtered cgroup, as the `live_tcp` sock_ops program recorded it.

/// Value of [`MAP_LIVE_TCP`](crate::MAP_LIVE_TCP) (key: the socket cookie, `u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LiveTcp {
    /// The remote address (IPv6, IPv4 as IPv4-mapped IPv6): its 16 network-order bytes as two
    /// native-endian words (the program writes whole words).
    pub remote: [u64; 2],
    /// The id of the cgroup the program is attached to (0: the daemon had not tagged the
    /// attachment yet): the daemon drops the entries of cgroups it no longer filters.
    pub attach_cgroup: u64,
    /// The scope of the connecting task's cgroup when `connect` started the handshake (its
    /// deepest listed ancestor-or-self in `POLICY_OF`; 0, the default policy, without
    /// policies): the only scope whose grants this connection keeps alive.
    pub scope: u32,
    /// 1 once the handshake completed; 0 while it is under way (not liveness yet).
    pub established: u32,
}

const _: () = assert!(core::mem::size_of::<LiveTcp>() == 32);
