//! The IPv4 host table `HOSTS_V4` seen from userspace: the array map is memory-mapped and the
//! daemon reads and writes its slots directly, with no system call per authorization. The layout
//! and the probing rules are in [`nettrust_common::host_table`]; the egress program's lookup is
//! the same walk as [`HostTable::get`].
//!
//! The daemon is the only writer: every change happens under [`HostTable`]'s lock. Readers (the
//! egress program, scans, `nettrust list`) take no lock. An entry's address and deadline are one
//! 64-bit word written in one store, so a reader never pairs an address with another host's
//! deadline: a found entry is always genuine. Entries do move (an insertion shifts later entries
//! forward, a removal shifts them back), so a walk can pass an entry while it moves; the writer
//! keeps a move counter in the last slot, odd while entries move, and a walk that missed while
//! it changed is walked again (the program gives up after `READ_ATTEMPTS` walks: at worst a
//! dropped packet, never an allowed one). The program's last-seen stamp is a separate
//! store: one racing a move can land on the entry that took the slot, which at worst keeps that
//! host one sweeper period longer.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, OwnedFd},
    ptr::NonNull,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use nettrust_common::{
    HostSlot, HostValue,
    host_table::{
        PROBES, entry, entry_addr, entry_expires, from_units, home_of, home_slots,
        slots as host_slots, to_units,
    },
};

/// One slot as the daemon sees it: the entry word, then `last_seen | flags << 32`.
#[repr(C)]
struct Slot {
    entry: AtomicU64,
    seen_flags: AtomicU64,
}

const _: () = assert!(size_of::<Slot>() == size_of::<HostSlot>());

impl Slot {
    /// Writes an entry: its last-seen time and flags first, then the entry word, so a reader
    /// that finds the word finds them too.
    fn set(&self, entry: u64, seen_flags: u64) {
        self.seen_flags.store(seen_flags, Ordering::Relaxed);
        self.entry.store(entry, Ordering::Release);
    }

    /// Empties the slot (the entry word first).
    fn clear(&self) {
        self.entry.store(0, Ordering::Release);
        self.seen_flags.store(0, Ordering::Relaxed);
    }

    /// Copies `other`'s entry here (see [`Slot::set`]).
    fn copy_from(&self, other: &Slot) {
        self.set(
            other.entry.load(Ordering::Relaxed),
            other.seen_flags.load(Ordering::Relaxed),
        );
    }
}

enum Backing {
    /// The map's memory, `bytes` bytes mapped at `ptr`, and a descriptor of the map kept open
    /// with it (the mapping alone keeps the map alive, but the daemon's open maps are what
    /// `/proc/PID/fdinfo` and the memory benchmark account).
    Mapped {
        ptr: NonNull<Slot>,
        bytes: usize,
        _fd: OwnedFd,
    },
    /// Plain memory (unit tests, benchmarks of the table alone).
    Heap(Box<[Slot]>),
}

/// A host table: an mmap-ed `HOSTS_V4` array, or plain memory.
pub struct HostTable {
    backing: Backing,
    slots: usize,
    home: u32,
    seed: u64,
    capacity: u32,
    /// Held by every change; counts the entries.
    writer: Mutex<u32>,
}

// SAFETY: the mapping is only accessed through atomics; it lives as long as the table.
unsafe impl Send for HostTable {}
// SAFETY: as above; writers serialise on `writer`.
unsafe impl Sync for HostTable {}

impl Drop for HostTable {
    fn drop(&mut self) {
        if let Backing::Mapped { ptr, bytes, .. } = self.backing {
            // SAFETY: `ptr`/`bytes` are exactly what mmap returned; nothing borrows it any more.
            unsafe { libc::munmap(ptr.as_ptr().cast(), bytes) };
        }
    }
}

fn to_slot(value: &HostValue) -> u64 {
    u64::from(to_units(value.last_seen_ns)) | (u64::from(value.flags) << 32)
}

fn from_slot(entry_word: u64, seen_flags: u64) -> HostValue {
    HostValue {
        expires_ns: from_units(entry_expires(entry_word)),
        last_seen_ns: from_units(seen_flags as u32),
        flags: (seen_flags >> 32) as u32,
        _pad: 0,
    }
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl HostTable {
    /// Maps the `HOSTS_V4` array behind `fd` (`max_entries` slots) for `capacity` hosts with the
    /// hash `seed`. `writable` is false for readers such as `nettrust list`.
    pub fn map(
        fd: BorrowedFd<'_>,
        max_entries: u32,
        capacity: u32,
        seed: u64,
        writable: bool,
    ) -> io::Result<Self> {
        let slots = max_entries as usize;
        if host_slots(capacity) != max_entries {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "host table has {max_entries} slots, {} expected for {capacity} hosts",
                    host_slots(capacity)
                ),
            ));
        }
        let owned = fd.try_clone_to_owned()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (slots * size_of::<Slot>()).div_ceil(page) * page;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of the map's pages; the kernel checks the size against
        // the map (which must be BPF_F_MMAPABLE).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<Slot>()).ok_or_else(|| errno(libc::EFAULT))?;
        let backing = Backing::Mapped {
            ptr,
            bytes,
            _fd: owned,
        };
        let table = Self::new(backing, slots, capacity, seed);
        if writable {
            table.recover_interrupted();
        }
        Ok(table)
    }

    /// A table in plain memory.
    pub fn in_memory(capacity: u32, seed: u64) -> Self {
        let slots = host_slots(capacity) as usize;
        let memory: Box<[Slot]> = (0..slots)
            .map(|_| Slot {
                entry: AtomicU64::new(0),
                seen_flags: AtomicU64::new(0),
            })
            .collect();
        Self::new(Backing::Heap(memory), slots, capacity, seed)
    }

    fn new(backing: Backing, slots: usize, capacity: u32, seed: u64) -> Self {
        let mut table = Self {
            backing,
            slots,
            home: home_slots(capacity),
            seed,
            capacity,
            writer: Mutex::new(0),
        };
        let count = table
            .slots()
            .iter()
            .filter(|s| s.entry.load(Ordering::Relaxed) != 0)
            .count();
        table.writer = Mutex::new(count as u32);
        table
    }

    /// Repairs a table whose writer died in the middle of a move (`kill -9` of a daemon; the move
    /// counter is left odd): an entry may be there twice, so the entries are written again, once
    /// each (the later deadline kept). Readers meanwhile may miss entries (dropped packets, never
    /// allowed ones). Only the writer may call this.
    fn recover_interrupted(&self) {
        let version = self.version();
        let odd = version.load(Ordering::Acquire);
        if odd & 1 == 0 {
            return;
        }
        tracing::warn!("the IPv4 host table was left in the middle of a move; rewriting it");
        let mut entries = self.entries();
        // Never-expiring (0) first, then the latest deadline, per address.
        entries.sort_by_key(|(addr, value)| {
            (
                *addr,
                value.expires_ns != 0,
                std::cmp::Reverse(value.expires_ns),
            )
        });
        entries.dedup_by_key(|(addr, _)| *addr);
        {
            let _writer = self.writer.lock().expect("host table lock poisoned");
            version.store(odd.wrapping_add(1), Ordering::Release);
        }
        self.clear();
        for (addr, value) in entries {
            if let Err(e) = self.insert(addr, &value, true) {
                tracing::warn!(addr = ?addr, "host lost while rewriting the table: {e}");
            }
        }
    }

    /// Every slot, the version slot last.
    fn all_slots(&self) -> &[Slot] {
        match &self.backing {
            // SAFETY: the mapping holds `slots` slots (checked against max_entries) and lives
            // as long as `self`; Slot is two atomics, valid for any bytes.
            Backing::Mapped { ptr, .. } => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr(), self.slots)
            },
            Backing::Heap(memory) => memory,
        }
    }

    /// The home slots and the probe window (without the version slot).
    fn slots(&self) -> &[Slot] {
        let all = self.all_slots();
        &all[..all.len() - 1]
    }

    /// The move counter (`host_table::version_slot`), odd while entries move.
    fn version(&self) -> &AtomicU64 {
        &self.all_slots()[self.slots - 1].entry
    }

    /// Runs `moves` (called with the lock held) with the move counter odd, so a reader that
    /// misses meanwhile walks again.
    fn moving<T>(&self, moves: impl FnOnce() -> T) -> T {
        let version = self.version();
        let before = version.load(Ordering::Relaxed);
        version.store(before.wrapping_add(1), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        let result = moves();
        version.store(before.wrapping_add(2), Ordering::Release);
        result
    }

    /// The hosts the table can hold.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The hosts it holds.
    pub fn len(&self) -> usize {
        *self.writer.lock().expect("host table lock poisoned") as usize
    }

    /// Whether it holds no host.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index of `addr`'s slot and its entry word: the egress program's walk from the home slot
    /// to the first empty slot, at most [`PROBES`] slots.
    fn find(&self, addr: u32) -> Option<(usize, u64)> {
        let home = home_of(addr, self.seed, self.home) as usize;
        for (index, slot) in self
            .slots()
            .iter()
            .enumerate()
            .skip(home)
            .take(PROBES as usize)
        {
            let word = slot.entry.load(Ordering::Acquire);
            if word == 0 {
                return None;
            }
            if entry_addr(word) == addr {
                return Some((index, word));
            }
        }
        None
    }

    /// The entry of `addr`, as the egress program finds it: a miss is walked again while entries
    /// moved during the walk (the program gives up after `READ_ATTEMPTS` walks, this never does).
    pub fn get(&self, addr: [u8; 4]) -> Option<HostValue> {
        let addr = u32::from_be_bytes(addr);
        let version = self.version();
        loop {
            let before = version.load(Ordering::Acquire);
            if let Some((index, word)) = self.find(addr) {
                let seen_flags = self.slots()[index].seen_flags.load(Ordering::Relaxed);
                return Some(from_slot(word, seen_flags));
            }
            std::sync::atomic::fence(Ordering::Acquire);
            if before & 1 == 0 && version.load(Ordering::Relaxed) == before {
                return None;
            }
        }
    }

    /// Writes `value` for `addr`: `EEXIST` when `only_new` and it is present, `E2BIG` when the
    /// table is full (or, rarely, the address's probe window is), `EINVAL` for 0.0.0.0 (the
    /// empty-slot marker; nettrust never authorizes it).
    pub fn insert(&self, addr: [u8; 4], value: &HostValue, only_new: bool) -> io::Result<()> {
        let key = u32::from_be_bytes(addr);
        if key == 0 {
            return Err(errno(libc::EINVAL));
        }
        let mut count = self.writer.lock().expect("host table lock poisoned");
        let word = entry(key, to_units(value.expires_ns));
        match self.find(key) {
            Some(_) if only_new => Err(errno(libc::EEXIST)),
            Some((index, _)) => {
                self.slots()[index].set(word, to_slot(value));
                Ok(())
            }
            None if *count >= self.capacity => Err(errno(libc::E2BIG)),
            None => {
                self.insert_sorted(key, to_slot(value), word)?;
                *count += 1;
                Ok(())
            }
        }
    }

    /// Inserts a new entry where it keeps its cluster sorted by home slot (Robin Hood order:
    /// the longest displacement stays short, 20-odd slots at 3/4 load instead of about 180 for
    /// first-empty-slot probing). The entries after it move one slot on, last one first, so a
    /// reader walking forward meets each of them at its old or its new slot.
    fn insert_sorted(&self, key: u32, seen_flags: u64, word: u64) -> io::Result<()> {
        let slots = self.slots();
        let home = home_of(key, self.seed, self.home) as usize;
        let window = PROBES as usize;
        let home_at = |index: usize| {
            let word = slots[index].entry.load(Ordering::Relaxed);
            (word != 0).then(|| home_of(entry_addr(word), self.seed, self.home) as usize)
        };
        // The first slot that is empty or holds an entry from a later home.
        let mut at = home;
        while home_at(at).is_some_and(|h| h <= home) {
            at += 1;
            if at >= home + window {
                return Err(errno(libc::E2BIG));
            }
        }
        // The end of the cluster; every entry on the way must stay in its window after the move.
        let mut end = at;
        while let Some(h) = home_at(end) {
            if end + 1 >= h + window || end + 1 >= slots.len() {
                return Err(errno(libc::E2BIG));
            }
            end += 1;
        }
        self.moving(|| {
            for index in (at..end).rev() {
                slots[index + 1].copy_from(&slots[index]);
            }
            slots[at].set(word, seen_flags);
        });
        Ok(())
    }

    /// Removes `addr`; whether it was present. Later entries of the cluster move back into the
    /// gap (each copied before its old slot is reused), so no lookup ever meets a gap before the
    /// entry it looks for.
    pub fn remove(&self, addr: [u8; 4]) -> bool {
        let key = u32::from_be_bytes(addr);
        let mut count = self.writer.lock().expect("host table lock poisoned");
        let Some((mut hole, _)) = self.find(key) else {
            return false;
        };
        let slots = self.slots();
        self.moving(|| {
            for next in hole + 1..slots.len() {
                let word = slots[next].entry.load(Ordering::Acquire);
                if word == 0 {
                    break;
                }
                // Clusters are sorted by home: the first entry at its home ends the move.
                if home_of(entry_addr(word), self.seed, self.home) as usize > hole {
                    break;
                }
                slots[hole].copy_from(&slots[next]);
                hole = next;
            }
            slots[hole].clear();
        });
        *count -= 1;
        true
    }

    /// Removes every entry.
    pub fn clear(&self) {
        let mut count = self.writer.lock().expect("host table lock poisoned");
        for slot in self.slots() {
            slot.clear();
        }
        *count = 0;
    }

    /// Every entry (address in network order), read without the lock.
    pub fn entries(&self) -> Vec<([u8; 4], HostValue)> {
        self.slots()
            .iter()
            .filter_map(|slot| {
                let word = slot.entry.load(Ordering::Acquire);
                (word != 0).then(|| {
                    (
                        entry_addr(word).to_be_bytes(),
                        from_slot(word, slot.seen_flags.load(Ordering::Relaxed)),
                    )
                })
            })
            .collect()
    }

    /// Checks the table's invariant (tests): every entry lies within [`PROBES`] slots after its
    /// home with no empty slot in between, clusters are sorted by home, and the count matches.
    #[cfg(test)]
    fn check(&self) {
        let slots = self.slots();
        let mut count = 0;
        for (index, slot) in slots.iter().enumerate() {
            let word = slot.entry.load(Ordering::Relaxed);
            if word == 0 {
                continue;
            }
            count += 1;
            let home = home_of(entry_addr(word), self.seed, self.home) as usize;
            assert!(
                home <= index && index < home + PROBES as usize,
                "slot {index}"
            );
            for between in &slots[home..index] {
                assert_ne!(
                    between.entry.load(Ordering::Relaxed),
                    0,
                    "gap before {index}"
                );
            }
        }
        assert_eq!(count, self.len());
    }
}

#[cfg(test)]
mod tests;
