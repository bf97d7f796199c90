//! The answer cache (`--dns-ttl-cache SECS`, off by default as in the original).
//!
//! - Keyed by (name case-folded, type, class) — the original keyed by name only and served MX
//!   answers to A queries.
//! - An answer lives as long as its smallest record TTL, capped by the configured maximum.
//!   Negative answers (NXDOMAIN, or NOERROR without answers) live as long as the SOA in their
//!   authority section says: min(SOA TTL, SOA MINIMUM) (RFC 2308 §5); without a SOA they are
//!   not cached.
//! - Served answers carry TTLs decreased by their age (RFC 1035 §4.1.3) and the client's ID; the
//!   stored message is never mutated.
//! - Bounded: when full, expired entries go first, then the least recently used eighth.
//!
//! The proxy re-authorizes every cache hit before replying: a cached answer must never reach a
//! client whose firewall entry has expired.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::RData,
};

/// Entries kept at most, unless configured otherwise.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// What an answer is cached under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Question name, lowercase ASCII (RFC 4343), fully qualified.
    name: String,
    /// Query type.
    qtype: u16,
    /// Query class.
    qclass: u16,
}

impl CacheKey {
    /// The key of `question`.
    pub fn of(question: &Query) -> Self {
        Self {
            name: question.name.to_lowercase().to_ascii(),
            qtype: question.query_type.into(),
            qclass: question.query_class.into(),
        }
    }
}

struct Entry {
    message: Message,
    stored: Instant,
    expires: Instant,
    last_used: u64,
}

struct Inner {
    map: HashMap<CacheKey, Entry>,
    clock: u64,
}

/// A bounded, TTL-honouring answer cache.
pub struct Cache {
    max_ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

/// How long `response` may be cached (before the configured cap), `None` if not at all.
pub fn cacheable_ttl(response: &Message) -> Option<u32> {
    if response.metadata.truncation {
        return None;
    }
    let negative = match response.metadata.response_code {
        ResponseCode::NXDomain => true,
        ResponseCode::NoError => response.answers.is_empty(),
        _ => return None,
    };
    let ttl = if negative {
        // RFC 2308 §5: the SOA's TTL, bounded by its MINIMUM field.
        response.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })?
    } else {
        response
            .answers
            .iter()
            .chain(&response.authorities)
            .map(|r| r.ttl)
            .min()?
    };
    (ttl > 0).then_some(ttl)
}

impl Cache {
    /// A cache keeping answers at most `max_ttl` and at most `capacity` entries.
    pub fn new(max_ttl: Duration, capacity: usize) -> Self {
        Self {
            max_ttl,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                clock: 0,
            }),
        }
    }

    /// Number of entries (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.inner.lock().expect("cache lock").map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores `response` to `question` if it is cacheable; its record TTLs are capped.
    pub fn insert(&self, question: &Query, response: &Message, now: Instant) {
        let Some(ttl) = cacheable_ttl(response) else {
            return;
        };
        let max = u32::try_from(self.max_ttl.as_secs()).unwrap_or(u32::MAX);
        let ttl = ttl.min(max);
        if ttl == 0 {
            return;
        }
        let mut message = response.clone();
        for record in message
            .answers
            .iter_mut()
            .chain(message.authorities.iter_mut())
            .chain(message.additionals.iter_mut())
        {
            record.ttl = record.ttl.min(max);
        }
        let mut inner = self.inner.lock().expect("cache lock");
        inner.clock += 1;
        let last_used = inner.clock;
        let key = CacheKey::of(question);
        if inner.map.len() >= self.capacity && !inner.map.contains_key(&key) {
            evict(&mut inner.map, self.capacity, now);
        }
        inner.map.insert(
            key,
            Entry {
                message,
                stored: now,
                expires: now + Duration::from_secs(u64::from(ttl)),
                last_used,
            },
        );
    }

    /// The cached answer to `question` with TTLs decreased by its age and ID `id`, if fresh.
    pub fn get(&self, question: &Query, id: u16, now: Instant) -> Option<Message> {
        let key = CacheKey::of(question);
        let mut inner = self.inner.lock().expect("cache lock");
        inner.clock += 1;
        let clock = inner.clock;
        let entry = inner.map.get_mut(&key)?;
        if now >= entry.expires {
            inner.map.remove(&key);
            return None;
        }
        entry.last_used = clock;
        let age = u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
        let remaining =
            u32::try_from(entry.expires.duration_since(now).as_secs()).unwrap_or(u32::MAX);
        let mut message = entry.message.clone();
        drop(inner);
        for record in message
            .answers
            .iter_mut()
            .chain(message.authorities.iter_mut())
            .chain(message.additionals.iter_mut())
        {
            record.ttl = record.ttl.saturating_sub(age).min(remaining);
        }
        message.metadata.id = id;
        Some(message)
    }
}

/// Makes room: drops expired entries, then the least recently used eighth.
fn evict(map: &mut HashMap<CacheKey, Entry>, capacity: usize, now: Instant) {
    map.retain(|_, e| e.expires > now);
    if map.len() < capacity {
        return;
    }
    let mut ages: Vec<u64> = map.values().map(|e| e.last_used).collect();
    let cut = (capacity / 8).max(1).min(ages.len() - 1);
    let (_, threshold, _) = ages.select_nth_unstable(cut);
    let threshold = *threshold;
    map.retain(|_, e| e.last_used > threshold);
}

#[cfg(test)]
mod tests;
