//! The keys and values of the flow maps: `OUTBOUND` ([`FlowKey`]), `INBOUND_FLOWS`
//! ([`InboundKey`], [`InboundValue`]) and `SERVICES` ([`ServiceKey`]).

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

/// Key of [`MAP_INBOUND`](crate::MAP_INBOUND): a flow a remote peer opened towards a socket of one
/// filtered cgroup, seen from the local side. Aligned to 8 bytes (built a word at a time by the
/// programs).
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

/// Value of [`MAP_INBOUND`](crate::MAP_INBOUND).
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

/// Key of [`MAP_SERVICES`](crate::MAP_SERVICES): an address, a port and a protocol allowed on their
/// own.
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
}
