//! [`Domains`]: a set of domain entries compiled for matching, small enough for millions of
//! entries. Names live once in an arena (a length byte, then the lower-case name); two
//! open-addressing tables of arena offsets (with hash tags) index the exact entries and the `*.`
//! ones. A query
//! lower-cases its name into a stack buffer and looks up the whole name, then each proper suffix
//! at a label boundary: O(labels) lookups, no allocation.

use std::hash::{BuildHasher, RandomState};

use hickory_proto::rr::Name;

use super::{MAX_NAME_LEN, PatternError, parse_pattern};

/// A free slot of a [`Table`] (no name is at arena offset `u32::MAX`).
const EMPTY: u64 = u64::MAX;

/// The high 32 bits of a name's hash: they pick its slot and are kept in it, so that a probe
/// reads the arena only for a name whose hash bits agree, and growing needs no re-hashing.
fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// An open-addressing hash set of names in the arena: linear probing, at most 3/4 full, a power
/// of two slots of 8 bytes (the name's hash tag, then its arena offset), so 11 to 16 bytes per
/// entry.
#[derive(Clone, Default)]
struct Table {
    /// `tag << 32 | offset` of each name, or [`EMPTY`].
    slots: Vec<u64>,
    /// Entries held.
    len: usize,
}

/// The name stored at `offset` of `arena`.
fn name_at(arena: &[u8], offset: u32) -> &[u8] {
    let start = offset as usize;
    let len = usize::from(arena[start]);
    &arena[start + 1..start + 1 + len]
}

impl Table {
    /// Whether `name` (whose hash is `hash`) is in the table.
    fn contains(&self, arena: &[u8], hash: u64, name: &[u8]) -> bool {
        if self.len == 0 {
            return false;
        }
        let tag = tag(hash);
        let mask = self.slots.len() - 1;
        let mut i = tag as usize & mask;
        loop {
            match self.slots[i] {
                EMPTY => return false,
                slot if (slot >> 32) as u32 == tag && name_at(arena, slot as u32) == name => {
                    return true;
                }
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Adds the name at `offset` (whose hash is `hash`), known not to be in the table; room must
    /// have been made with [`Table::reserve`].
    fn insert(&mut self, hash: u64, offset: u32) {
        self.place((u64::from(tag(hash)) << 32) | u64::from(offset));
    }

    /// Puts `slot` in the first free slot from its tag's.
    fn place(&mut self, slot: u64) {
        let mask = self.slots.len() - 1;
        let mut i = (slot >> 32) as usize & mask;
        while self.slots[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
        self.len += 1;
    }

    /// Makes room for `additional` more entries.
    fn reserve(&mut self, additional: usize) {
        let wanted = self.len + additional;
        if wanted * 4 <= self.slots.len() * 3 {
            return;
        }
        let size = (wanted * 4 / 3 + 1).next_power_of_two().max(16);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; size]);
        self.len = 0;
        for slot in old.into_iter().filter(|&s| s != EMPTY) {
            self.place(slot);
        }
    }

    /// The arena offsets of the entries.
    fn offsets(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .filter(|&&s| s != EMPTY)
            .map(|&s| s as u32)
    }
}

/// A compiled list of domain entries (exact names and `*.` suffixes); see the module
/// documentation of [`crate::policy`] for the matching rules.
#[derive(Clone, Default)]
pub struct Domains {
    /// Every name once: a length byte, then the name, lower-case, without trailing dot.
    arena: Vec<u8>,
    /// Exact entries.
    exact: Table,
    /// `*.` entries, by the name they are below.
    below: Table,
    /// Keyed hashing (SipHash with a random key), so that clients cannot choose names that
    /// collide and make lookups slow.
    hasher: RandomState,
}

/// A query name, lower-case, with the start of each label: a suffix at a label start is a
/// candidate parent name.
struct Query {
    /// The name's bytes, labels joined by `.`.
    bytes: [u8; MAX_NAME_LEN + 2],
    /// Bytes used.
    len: usize,
    /// Start offset of each label.
    starts: [u8; 128],
    /// Labels.
    labels: usize,
}

impl Query {
    /// Builds the query from raw labels (as on the wire). A `.` inside a label is stored as a byte
    /// no entry holds, so it is never taken for a label boundary. `None` for a name longer than
    /// any entry can be (no name on the wire is).
    fn from_labels<'a>(labels: impl Iterator<Item = &'a [u8]>) -> Option<Self> {
        let mut query = Self {
            bytes: [0; MAX_NAME_LEN + 2],
            len: 0,
            starts: [0; 128],
            labels: 0,
        };
        for label in labels {
            if query.labels > 0 {
                *query.bytes.get_mut(query.len)? = b'.';
                query.len += 1;
            }
            *query.starts.get_mut(query.labels)? = u8::try_from(query.len).ok()?;
            query.labels += 1;
            let end = query.len + label.len();
            let out = query.bytes.get_mut(query.len..end)?;
            for (out, &b) in out.iter_mut().zip(label) {
                *out = if b == b'.' { 0 } else { b.to_ascii_lowercase() };
            }
            query.len = end;
        }
        (query.len <= MAX_NAME_LEN).then_some(query)
    }

    /// The whole name.
    fn name(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The names the query is strictly below, nearest first.
    fn parents(&self) -> impl Iterator<Item = &[u8]> {
        self.starts[1..self.labels.max(1)]
            .iter()
            .map(|&start| &self.bytes[usize::from(start)..self.len])
    }
}

impl Domains {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Compiles `patterns` (see [`parse_pattern`]).
    pub fn from_patterns<S: AsRef<str>>(
        patterns: impl IntoIterator<Item = S>,
    ) -> Result<Self, PatternError> {
        let mut domains = Self::new();
        for pattern in patterns {
            domains.insert(pattern.as_ref())?;
        }
        Ok(domains)
    }

    /// Makes room for `exact` more exact entries and `below` more `*.` entries of `bytes` name
    /// bytes in all (a hint: the tables are then built at their final size, without the
    /// copies of growing).
    pub fn reserve(&mut self, exact: usize, below: usize, bytes: usize) {
        self.arena.reserve(bytes + exact + below);
        self.exact.reserve(exact);
        self.below.reserve(below);
    }

    /// Releases the room reserved and not used.
    pub fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
    }

    /// Adds one entry; `false` when it was already there.
    pub fn insert(&mut self, pattern: &str) -> Result<bool, PatternError> {
        let parsed = parse_pattern(pattern).map_err(|reason| PatternError {
            pattern: pattern.to_owned(),
            reason,
        })?;
        let offset = u32::try_from(self.arena.len())
            .ok()
            .filter(|o| *o < u32::MAX - 256)
            .ok_or_else(|| PatternError {
                pattern: pattern.to_owned(),
                reason: "too many domains (4 GiB of names)",
            })?;
        let len = u8::try_from(parsed.name.len()).expect("parse_pattern bounds the length");
        self.arena.push(len);
        self.arena
            .extend(parsed.name.bytes().map(|b| b.to_ascii_lowercase()));
        let name = &self.arena[offset as usize + 1..];
        let hash = self.hasher.hash_one(name);
        let table = if parsed.below {
            &mut self.below
        } else {
            &mut self.exact
        };
        if table.contains(&self.arena, hash, name) {
            self.arena.truncate(offset as usize);
            return Ok(false);
        }
        table.reserve(1);
        table.insert(hash, offset);
        Ok(true)
    }

    /// Entries held (exact and `*.`).
    pub fn len(&self) -> usize {
        self.exact.len + self.below.len
    }

    /// Whether the list holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory the list holds (arena and tables).
    pub fn memory(&self) -> usize {
        self.arena.capacity() + (self.exact.slots.capacity() + self.below.slots.capacity()) * 8
    }

    /// Whether `name` (presentation form, e.g. `www.example.org.`) matches an entry. A name
    /// with `\` escapes is parsed as DNS presentation text first.
    pub fn allows(&self, name: &str) -> bool {
        if self.is_empty() {
            return false;
        }
        if name.contains('\\') {
            return Name::from_ascii(name).is_ok_and(|n| self.allows_name(&n));
        }
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return false;
        }
        Query::from_labels(name.split('.').map(str::as_bytes)).is_some_and(|q| self.matches(&q))
    }

    /// Whether the DNS name `name` matches an entry (its labels as on the wire).
    pub fn allows_name(&self, name: &Name) -> bool {
        !self.is_empty() && Query::from_labels(name.iter()).is_some_and(|q| self.matches(&q))
    }

    fn matches(&self, query: &Query) -> bool {
        let arena = &self.arena;
        let name = query.name();
        (self.exact.len > 0 && self.exact.contains(arena, self.hasher.hash_one(name), name))
            || (self.below.len > 0
                && query
                    .parents()
                    .any(|p| self.below.contains(arena, self.hasher.hash_one(p), p)))
    }

    /// The entries, as written in a list (`name` or `*.name`), in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = String> + '_ {
        let show = |prefix: &'static str| {
            move |offset| {
                format!(
                    "{prefix}{}",
                    String::from_utf8_lossy(name_at(&self.arena, offset))
                )
            }
        };
        self.exact
            .offsets()
            .map(show(""))
            .chain(self.below.offsets().map(show("*.")))
    }
}

impl PartialEq for Domains {
    fn eq(&self, other: &Self) -> bool {
        let same = |a: &Table, b: &Table| {
            a.len == b.len
                && a.offsets().all(|o| {
                    let name = name_at(&self.arena, o);
                    b.contains(&other.arena, other.hasher.hash_one(name), name)
                })
        };
        same(&self.exact, &other.exact) && same(&self.below, &other.below)
    }
}

impl Eq for Domains {}

impl std::fmt::Debug for Domains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domains")
            .field("exact", &self.exact.len)
            .field("below", &self.below.len)
            .finish_non_exhaustive()
    }
}
