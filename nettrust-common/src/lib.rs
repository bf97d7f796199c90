//! Types and constants shared by the nettrust daemon (userspace, feature `user`) and its eBPF
//! programs (`nettrust-ebpf`). Everything here is `#[repr(C)]` plain data without implicit
//! padding, so both sides agree on the bytes of every map key and value.
#![no_std]

/// Name of the cgroup_skb egress program in the eBPF object.
pub const PROGRAM_EGRESS: &str = "egress";

/// IPv4 hosts allowed to be reached: key `[u8; 4]` (address in network order), value [`HostValue`].
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
/// Number of counters in [`MAP_STATS`].
pub const STAT_COUNT: u32 = 6;

/// Value of the host maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostValue {
    /// Deadline in `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`) after which the entry is
    /// treated as absent by the egress program; `0` means it never expires.
    pub expires_ns: u64,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Explicit padding (always 0).
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<HostValue>() == 16);

impl HostValue {
    /// Whether the entry is still valid at `now_ns` (`CLOCK_BOOTTIME`).
    #[inline(always)]
    pub fn is_live(&self, now_ns: u64) -> bool {
        self.expires_ns == 0 || now_ns < self.expires_ns
    }
}

#[cfg(feature = "user")]
// SAFETY: `HostValue` is `repr(C)`, `Copy`, has no padding and every bit pattern is valid.
unsafe impl aya::Pod for HostValue {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_deadline_never_expires() {
        let v = HostValue {
            expires_ns: 0,
            flags: FLAG_AUTHORIZED,
            _pad: 0,
        };
        assert!(v.is_live(u64::MAX));
    }

    #[test]
    fn deadline_is_exclusive() {
        let v = HostValue {
            expires_ns: 100,
            flags: FLAG_AUTHORIZED,
            _pad: 0,
        };
        assert!(v.is_live(99));
        assert!(!v.is_live(100));
    }
}
