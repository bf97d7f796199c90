//! The host entries: the `HOSTS_V6` value, the IPv4 table's slot, and the name that authorized a
//! host (`NAMES`, written by the daemon for `nettrust list`).

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

impl HostValue {
    /// Whether the entry is still valid at `now_ns` (`CLOCK_BOOTTIME`).
    #[inline(always)]
    pub fn is_live(&self, now_ns: u64) -> bool {
        self.expires_ns == 0 || now_ns < self.expires_ns
    }
}

/// One slot of the IPv4 host table [`MAP_HOSTS_V4`](crate::MAP_HOSTS_V4) (16 bytes instead of a
/// hash-map element's 88): the address and its deadline share one 64-bit word, so the egress
/// program reads both in one load and can never pair an address with another host's deadline.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostSlot {
    /// [`host_table::entry`](crate::host_table::entry): address (low half) and deadline (high
    /// half); 0 = empty slot.
    pub entry: u64,
    /// Last time the egress program let a packet out to this host
    /// ([`host_table::to_units`](crate::host_table::to_units)); written by the program only.
    pub last_seen: u32,
    /// `FLAG_*` bits; written by the daemon only.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<HostSlot>() == 16);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FLAG_AUTHORIZED;

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
}
