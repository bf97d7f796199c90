//! [`NameSet`]: a set of names held only as their keyed 64-bit hashes, sorted, with a small index
//! of where each range of hash values starts. About 9 bytes per name, whatever its length: a
//! million names in 8.9 MB.
//!
//! Membership by hash alone has a false match only when a name that is not in the set has the
//! hash of one that is: with `n` names and a 64-bit SipHash under a key random per process (so
//! nobody can choose names that collide), the chance per lookup is `n / 2^64` (about 5e-14 for a
//! million names).

use std::{
    hash::{BuildHasher as _, RandomState},
    sync::OnceLock,
};

/// Hashes per index bucket: the index has a power of two buckets, at most one per this many
/// hashes, so a bucket holds 4 to 8 of them on average (one or two cache lines) and the index
/// costs at most 1 byte per name.
const PER_BUCKET: usize = 4;

/// Names added one at a time ([`NameSet::insert`]) kept unsorted before they are merged into
/// the sorted ones: a lookup scans them (512 bytes), a merge costs O(n) once per this many.
const RECENT_MAX: usize = 64;

/// The most names a set holds: positions in the index are `u32`.
pub(super) const MAX_NAMES: usize = u32::MAX as usize;

/// The keyed hash of `name` (its bytes, already lower-case). One key for every list of the
/// process, random per process: two lists compare by their hashes.
pub(super) fn hash(name: &[u8]) -> u64 {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new).hash_one(name)
}

/// A set of name hashes (see the module documentation).
#[derive(Clone, Default)]
pub(super) struct NameSet {
    /// The hashes, sorted, each once. [`NameSet::push`] appends unsorted ones, which
    /// [`NameSet::seal`] sorts in.
    hashes: Vec<u64>,
    /// `index[b]..index[b + 1]` are the positions of the hashes whose top `bits` bits are `b`;
    /// `2^bits + 1` entries (none while the set was never sealed).
    index: Vec<u32>,
    /// Bits of the hash that pick a bucket.
    bits: u32,
    /// Hashes inserted one at a time since the last merge, unsorted, none in `hashes`, at most
    /// [`RECENT_MAX`].
    recent: Vec<u64>,
}

impl NameSet {
    /// Names held (sealed or not).
    pub(super) fn len(&self) -> usize {
        self.hashes.len() + self.recent.len()
    }

    /// Whether the set holds no name.
    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a name with this hash is in the set.
    pub(super) fn contains(&self, hash: u64) -> bool {
        let bucket = self.bucket(hash);
        let sorted = match (self.index.get(bucket), self.index.get(bucket + 1)) {
            (Some(&start), Some(&end)) => self.hashes[start as usize..end as usize].contains(&hash),
            _ => false,
        };
        sorted || self.recent.contains(&hash)
    }

    /// The bucket of `hash`: its top `bits` bits.
    fn bucket(&self, hash: u64) -> usize {
        // A shift by 64 (no bits: a single bucket) is `None`.
        hash.checked_shr(64 - self.bits).unwrap_or(0) as usize
    }

    /// Adds one hash: O(n / [`RECENT_MAX`]) amortized, for names added one at a time (lists
    /// are built with [`NameSet::push`] and [`NameSet::seal`]). `false` when it was already
    /// there.
    pub(super) fn insert(&mut self, hash: u64) -> bool {
        if self.contains(hash) {
            return false;
        }
        self.recent.push(hash);
        if self.recent.len() == RECENT_MAX {
            self.merge_recent();
        }
        true
    }

    /// Merges the hashes inserted one at a time into the sorted ones (from the back, in place).
    fn merge_recent(&mut self) {
        self.recent.sort_unstable();
        let (mut sorted, mut recent) = (self.hashes.len(), self.recent.len());
        self.hashes.extend_from_slice(&self.recent);
        for out in (0..self.hashes.len()).rev() {
            if recent == 0 {
                break;
            }
            if sorted > 0 && self.hashes[sorted - 1] > self.recent[recent - 1] {
                sorted -= 1;
                self.hashes[out] = self.hashes[sorted];
            } else {
                recent -= 1;
                self.hashes[out] = self.recent[recent];
            }
        }
        self.recent.clear();
        self.reindex();
    }

    /// Makes room for `additional` more hashes.
    pub(super) fn reserve(&mut self, additional: usize) {
        self.hashes.reserve_exact(additional);
    }

    /// Appends a hash without sorting or indexing it: the set answers wrongly until
    /// [`NameSet::seal`].
    pub(super) fn push(&mut self, hash: u64) {
        self.hashes.push(hash);
    }

    /// Where [`NameSet::roll_back`] returns to: the hashes pushed after this are forgotten.
    pub(super) fn mark(&self) -> usize {
        self.hashes.len()
    }

    /// Forgets the hashes pushed since `mark`.
    pub(super) fn roll_back(&mut self, mark: usize) {
        self.hashes.truncate(mark);
    }

    /// Sorts the pushed hashes in, drops duplicates, rebuilds the index and gives back room
    /// reserved and not used.
    pub(super) fn seal(&mut self) {
        self.hashes.append(&mut self.recent);
        self.hashes.sort_unstable();
        self.hashes.dedup();
        if self.hashes.capacity() - self.hashes.len() > self.hashes.len() / 16 {
            self.hashes.shrink_to_fit();
        }
        self.reindex();
    }

    /// Rebuilds the index of the sorted hashes.
    fn reindex(&mut self) {
        let len = self.hashes.len();
        self.bits = if len < 2 * PER_BUCKET {
            0
        } else {
            (len / PER_BUCKET).ilog2()
        };
        let buckets = 1_usize << self.bits;
        self.index.clear();
        self.index.reserve_exact(buckets + 1);
        let mut position = 0;
        for bucket in 0..buckets {
            while position < len && self.bucket(self.hashes[position]) < bucket {
                position += 1;
            }
            self.index.push(position as u32);
        }
        self.index.push(len as u32);
        self.index.shrink_to_fit();
    }

    /// Bytes of memory the set holds.
    pub(super) fn memory(&self) -> usize {
        (self.hashes.capacity() + self.recent.capacity()) * size_of::<u64>()
            + self.index.capacity() * size_of::<u32>()
    }

    /// Every hash, sorted.
    fn sorted(&self) -> std::borrow::Cow<'_, [u64]> {
        if self.recent.is_empty() {
            return self.hashes.as_slice().into();
        }
        let mut all = [self.hashes.as_slice(), &self.recent].concat();
        all.sort_unstable();
        all.into()
    }
}

impl PartialEq for NameSet {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.sorted() == other.sorted()
    }
}

impl Eq for NameSet {}

impl std::fmt::Debug for NameSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameSet")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
