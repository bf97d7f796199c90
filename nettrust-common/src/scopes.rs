//! Policies in the data path: which policy ("scope") each filtered cgroup belongs to
//! ([`PolicyRef`] in `POLICY_OF`, cached per cgroup in `SCOPES` as [`ScopeCache`]), the grants
//! of each scope ([`GrantKey`] in `GRANTS`), and the DNS clients the egress program saw sending
//! to the proxy's listeners ([`ClientValue`] in `CLIENTS`, keyed by the client's source as a
//! [`ServiceKey`](crate::ServiceKey)).
//!
//! Scope 0 is the default policy: its grants live in the host maps (`HOSTS_V4`, `HOSTS_V6`),
//! and a cgroup no listed ancestor-or-self covers belongs to it.

/// [`PolicyRef::flags`] bit: the policy is in audit mode (a packet enforcement would drop passes,
/// is counted and reported).
pub const POLICY_AUDIT: u32 = 1 << 0;

/// The highest scope number: events carry the scope in 16 bits.
pub const MAX_SCOPE: u32 = u16::MAX as u32;

/// The scope of a cgroup whose policy the programs cannot see (deeper than the walk, below a
/// `**` pattern that may have matched an ancestor out of its reach): no policy has it, so no
/// grant or network opens anything for it (whitelists still do), and the proxy refuses every
/// question from it. Beyond [`MAX_SCOPE`], so events report it as the default scope.
pub const SCOPE_UNRESOLVED: u32 = MAX_SCOPE + 1;

/// Levels of the cgroup tree (the v2 root is level 0) the egress program walks to find a
/// cgroup's deepest listed ancestor-or-self; a cgroup listed deeper is never found.
pub const MAX_CGROUP_DEPTH: u32 = 16;

/// Capacity of [`MAP_SCOPES`](crate::MAP_SCOPES): cgroups whose scope the program remembers.
pub const MAX_SCOPE_CACHE: u32 = 16_384;

/// Capacity of [`MAP_CLIENTS`](crate::MAP_CLIENTS): DNS clients remembered (LRU).
pub const MAX_CLIENTS: u32 = 65_536;

/// Capacity of [`MAP_LISTENERS`](crate::MAP_LISTENERS).
pub const MAX_LISTENERS: u32 = 64;

/// Value of [`MAP_POLICY_OF`](crate::MAP_POLICY_OF): the policy of a listed cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyRef {
    /// The scope (0 = default policy, 1..=[`MAX_SCOPE`] the configured policies).
    pub scope: u32,
    /// `POLICY_*` bits.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<PolicyRef>() == 8);

/// Value of [`MAP_SCOPES`](crate::MAP_SCOPES): the policy the egress program resolved for a
/// cgroup, valid while `CONFIG[CONFIG_SCOPE_GENERATION]` equals `generation`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ScopeCache {
    /// The resolved policy.
    pub policy: PolicyRef,
    /// The generation of `POLICY_OF` it was resolved from.
    pub generation: u32,
    /// Explicit padding (always 0).
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<ScopeCache>() == 16);

/// Capacity of `SOCK_OWNERS`: sockets whose creator the programs remember (LRU).
pub const MAX_SOCK_OWNERS: u32 = 65_536;

/// Who created a socket of a filtered cgroup, recorded by the `sock_owner` program when the
/// socket is created (in the creating process) under the socket's cookie: the cgroup `egress`
/// judges the socket's packets by, its policy for one generation of `POLICY_OF`, and the
/// creating process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockOwner {
    /// cgroup v2 id of the creating process (the socket's cgroup).
    pub cgroup_id: u64,
    /// That cgroup's policy (`POLICY_UNFILTERED` for a cgroup the programs pass).
    pub policy: PolicyRef,
    /// The generation of `POLICY_OF` `policy` was resolved from.
    pub generation: u32,
    /// The creating process (thread group id).
    pub pid: u32,
    /// Its command name (NUL-padded).
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<SockOwner>() == 40);

/// Key of [`MAP_GRANTS`](crate::MAP_GRANTS): an address authorized for one scope (never 0: the
/// default scope's grants are in the host maps). Aligned to 8 bytes so the program builds it a
/// word at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GrantKey {
    /// The scope.
    pub scope: u32,
    /// 4 or 6.
    pub family: u8,
    /// Explicit padding (always 0).
    pub _pad: [u8; 3],
    /// The address (network order; IPv4 in the first 4 bytes, the rest 0).
    pub addr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<GrantKey>() == 24);

/// Value of [`MAP_CLIENTS`](crate::MAP_CLIENTS): who sent the last packet from a client's
/// source address, port and protocol to a listener of the proxy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClientValue {
    /// cgroup v2 id of the sending socket.
    pub cgroup_id: u64,
    /// Its scope when the packet left.
    pub scope: u32,
    /// Its policy's `POLICY_*` bits.
    pub flags: u32,
    /// When the packet left (`CLOCK_BOOTTIME` ns).
    pub seen_ns: u64,
}

const _: () = assert!(core::mem::size_of::<ClientValue>() == 24);

/// Prefix bits of the scope in a [`MAP_POLICY_NETS_V4`](crate::MAP_POLICY_NETS_V4)/`V6` key
/// (the scope, big-endian, then the address): a network of `n` bits has prefix length
/// `SCOPE_PREFIX_BITS + n`.
pub const SCOPE_PREFIX_BITS: u32 = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_key_starts_with_scope_and_family() {
        // The egress program assembles keys as three words in this layout.
        let key = GrantKey {
            scope: 0x0102_0304,
            family: 6,
            _pad: [0; 3],
            addr: [9; 16],
        };
        // SAFETY: 24 bytes of plain data.
        let words: [u64; 3] = unsafe { core::mem::transmute(key) };
        let s = 0x0102_0304u32.to_ne_bytes();
        assert_eq!(
            words[0],
            u64::from_ne_bytes([s[0], s[1], s[2], s[3], 6, 0, 0, 0])
        );
        assert_eq!(words[1], u64::from_ne_bytes([9; 8]));
        assert_eq!(core::mem::align_of::<GrantKey>(), 8);
    }
}
