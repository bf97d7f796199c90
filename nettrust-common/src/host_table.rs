//! The IPv4 host table: linear probing in an array of [`HostSlot`](crate::HostSlot)s with
//! [`PROBES`] spare slots at the end, so a probe never wraps. The daemon is its only
//! writer (under a lock); it keeps each cluster sorted by home slot (Robin Hood order: an insert
//! shifts later entries forward) and deletes by shifting entries back (no tombstones), so every
//! entry stays within `PROBES` slots of its home and a lookup stops at the first empty slot.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_units_round_deadlines_up_and_back() {
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
        let e = entry(0xC000_0201, 0xFFFF_FFFF);
        assert_eq!(entry_addr(e), 0xC000_0201);
        assert_eq!(entry_expires(e), 0xFFFF_FFFF);
        assert_ne!(entry(1, 0), 0);
    }

    #[test]
    fn table_sizes_invert_and_homes_stay_in_range() {
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
