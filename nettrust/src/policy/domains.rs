//! [`Domains`]: a set of domain entries compiled for matching, small enough for millions of
//! entries. The entries are not kept as text: each is the keyed 64-bit hash of its lower-case
//! name in one of two [`NameSet`]s, exact names and the names whose subdomains match (`*.`), about
//! 9 bytes per entry. A query lower-cases its name into a stack buffer and looks up the hash of
//! the whole name, then of each proper suffix at a label boundary: O(labels) lookups, no
//! allocation.

use hickory_proto::rr::Name;

use super::{
    MAX_NAME_LEN, PatternError,
    name_set::{self, MAX_NAMES, NameSet},
    parse_pattern,
};

/// A compiled list of domain entries (exact names and `*.` suffixes); see the module
/// documentation of [`crate::policy`] for the matching rules. Two lists compare equal when they
/// hold the same entries (by their hashes, under the process's one key).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Domains {
    /// Exact entries.
    exact: NameSet,
    /// `*.` entries, by the name they are below.
    below: NameSet,
}

/// A checked entry: the set it goes in (`true`: the `*.` one) and its name's hash.
fn entry(pattern: &str) -> Result<(bool, u64), PatternError> {
    let parsed = parse_pattern(pattern).map_err(|reason| PatternError {
        pattern: pattern.to_owned(),
        reason,
    })?;
    let mut lower = [0; MAX_NAME_LEN];
    let lower = &mut lower[..parsed.name.len()];
    for (out, b) in lower.iter_mut().zip(parsed.name.bytes()) {
        *out = b.to_ascii_lowercase();
    }
    Ok((parsed.below, name_set::hash(lower)))
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
        let mut adding = domains.adding();
        for pattern in patterns {
            adding.add(pattern.as_ref())?;
        }
        adding.finish();
        Ok(domains)
    }

    /// Makes room for `exact` more exact entries and `below` more `*.` entries (a hint: the
    /// sets are then filled without the copies of growing).
    pub fn reserve(&mut self, exact: usize, below: usize) {
        self.exact.reserve(exact);
        self.below.reserve(below);
    }

    /// Adds one entry; `false` when it was already there. Costs O(entries): many entries are
    /// added with [`Domains::from_patterns`] or [`crate::policy::parse_domains`].
    pub fn insert(&mut self, pattern: &str) -> Result<bool, PatternError> {
        let (below, hash) = entry(pattern)?;
        let set = if below {
            &mut self.below
        } else {
            &mut self.exact
        };
        if set.len() >= MAX_NAMES {
            return Err(too_many(pattern));
        }
        Ok(set.insert(hash))
    }

    /// Starts adding entries in bulk: they are matched once [`Adding::finish`] is called, and
    /// forgotten if the [`Adding`] is dropped before.
    pub(super) fn adding(&mut self) -> Adding<'_> {
        Adding {
            exact: self.exact.mark(),
            below: self.below.mark(),
            domains: self,
            finished: false,
        }
    }

    /// Entries held (exact and `*.`).
    pub fn len(&self) -> usize {
        self.exact.len() + self.below.len()
    }

    /// Whether the list holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory the list holds.
    pub fn memory(&self) -> usize {
        self.exact.memory() + self.below.memory()
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
        (!self.exact.is_empty() && self.exact.contains(name_set::hash(query.name())))
            || (!self.below.is_empty()
                && query
                    .parents()
                    .any(|p| self.below.contains(name_set::hash(p))))
    }
}

/// The error of an entry that does not fit.
fn too_many(pattern: &str) -> PatternError {
    PatternError {
        pattern: pattern.to_owned(),
        reason: "too many domains (4,294,967,295 of each kind at most)",
    }
}

/// Entries being added to a [`Domains`] in bulk (see [`Domains::adding`]): each is checked and
/// hashed as it comes, and all are sorted in at once by [`Adding::finish`].
pub(super) struct Adding<'a> {
    /// The list.
    domains: &'a mut Domains,
    /// The exact set's mark before: what a drop without finish goes back to.
    exact: usize,
    /// The `*.` set's mark before.
    below: usize,
    /// Whether the entries were sorted in.
    finished: bool,
}

impl Adding<'_> {
    /// Checks one entry and adds it (a duplicate is dropped at [`Adding::finish`]).
    pub(super) fn add(&mut self, pattern: &str) -> Result<(), PatternError> {
        let (below, hash) = entry(pattern)?;
        let set = if below {
            &mut self.domains.below
        } else {
            &mut self.domains.exact
        };
        if set.len() >= MAX_NAMES {
            return Err(too_many(pattern));
        }
        set.push(hash);
        Ok(())
    }

    /// Sorts the added entries in: the list matches them from now on.
    pub(super) fn finish(mut self) {
        self.domains.exact.seal();
        self.domains.below.seal();
        self.finished = true;
    }
}

impl Drop for Adding<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.domains.exact.roll_back(self.exact);
            self.domains.below.roll_back(self.below);
        }
    }
}

impl std::fmt::Debug for Domains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domains")
            .field("exact", &self.exact.len())
            .field("below", &self.below.len())
            .finish_non_exhaustive()
    }
}
