//! Making room in a full host map: instead of refusing every new address once `max_hosts`
//! authorizations exist (which, with the default TTL of never, normal use reaches and never
//! leaves), the authorizations that carry no traffic are evicted, least recently used first.
//!
//! Order of eviction (whitelisted hosts, hosts with a packet in the last [`LIVE_NS`], and hosts
//! with an open connection — eBPF: the `live_tcp` program's established TCP connections and the
//! flows conntrack tracks; nftables: conntrack — are never candidates: when nothing else is left
//! the new address is refused):
//! 1. authorizations past their deadline (dead already, only not swept yet), oldest deadline first;
//! 2. authorizations that never carried traffic and were last answered more than [`GRACE_NS`]
//!    ago, least recently answered first (an attacker's flood of names nobody connects to lands
//!    here);
//! 3. everything else by its last activity: the later of the last packet (the egress program's
//!    `last_seen_ns`) and the last DNS answer naming it: an answer just relayed (its client has
//!    not connected yet) goes only after hosts idle for longer.
//!
//! One full event evicts a batch ([`batch`]: 1/64 of the capacity) chosen by one scan of the
//! map, so the scan is paid once per batch of new hosts, not on every answer.
//!
//! The time of the last answer naming a host is kept by the daemon ([`Recency`]): the maps have
//! no room for it. Hosts a previous run left (adopted) count as answered at boot.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hash, Hasher},
    sync::Mutex,
};

use nettrust_common::{FLAG_WHITELISTED, HostValue};

use super::Scope;

/// Idle authorizations evicted by either backend since the daemon started. The firewall owns the
/// counter and `metrics` registers a clone of the handle (clones share one value), so the
/// firewall never calls up into `metrics`.
pub static EVICTED: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);

/// How long a new authorization that has not carried traffic yet ranks by its answer time like
/// a used one: time for the client to connect after the answer.
pub const GRACE_NS: u64 = 30_000_000_000;

/// A host with a packet this recent carries live traffic and is never evicted (a full map of
/// such hosts refuses new addresses instead of cutting connections in use).
pub const LIVE_NS: u64 = 30_000_000_000;

/// Authorizations evicted per full event: 1/64 of the capacity, at least one.
pub fn batch(capacity: u32) -> usize {
    (capacity as usize / 64).max(1)
}

/// A fast hasher for address keys (one multiply-mix per 8 bytes): the records are looked up for
/// every entry of a full map in one eviction scan, and SipHash would make that scan several
/// times slower. The keys are addresses the daemon itself authorized; a collision costs a
/// slower lookup, never a wrong one.
#[derive(Default)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

type AddrMap<K> = HashMap<K, u64, BuildHasherDefault<AddrHasher>>;

/// After a scan of a full map found nothing to evict (every host whitelisted or in use), new
/// addresses are refused without another scan for this long: a map filled with hosts in use (a
/// filtered process can keep its own hosts busy) must not make every new name pay a full scan.
pub const NOTHING_TO_EVICT_NS: u64 = 1_000_000_000;

/// The time (`CLOCK_BOOTTIME` ns) of the last DNS answer that named each authorized host, and
/// when the map may be scanned for victims again.
#[derive(Debug)]
pub struct Recency<K> {
    at: Mutex<AddrMap<K>>,
    /// Records kept at most before [`Recency::touch`] asks for a prune against the map.
    limit: usize,
    /// No eviction scan for a write of a scope before its time here ([`NOTHING_TO_EVICT_NS`]
    /// after a fruitless one). Per scope: a policy whose own grants are all in use must not
    /// hold off the scan of another policy that may evict elsewhere.
    scan_after: Mutex<std::collections::BTreeMap<Scope, u64>>,
}

impl<K: Eq + Hash + Copy> Recency<K> {
    /// Records for a map of `capacity` hosts.
    pub fn new(capacity: u32) -> Self {
        Self {
            at: Mutex::new(AddrMap::default()),
            limit: (capacity as usize).saturating_mul(2).max(1024),
            scan_after: Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// Whether a full map may be scanned for victims of a write of `scope` at `now`.
    pub fn may_scan(&self, scope: Scope, now: u64) -> bool {
        let after = self
            .scan_after
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        after.get(&scope).is_none_or(|&t| now >= t)
    }

    /// Records that a scan for a write of `scope` at `now` found nothing to evict: no scan for
    /// its writes for [`NOTHING_TO_EVICT_NS`].
    pub fn found_nothing(&self, scope: Scope, now: u64) {
        let mut after = self
            .scan_after
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        after.retain(|_, &mut t| t > now);
        after.insert(scope, now.saturating_add(NOTHING_TO_EVICT_NS));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AddrMap<K>> {
        self.at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an answer naming `key` at `now`. Returns true when the records outgrew twice the
    /// capacity (hosts removed by the sweeper or by hand leave theirs behind): the caller then
    /// calls [`Recency::prune`] with the map's keys.
    pub fn touch(&self, key: K, now: u64) -> bool {
        let mut at = self.lock();
        at.insert(key, now);
        at.len() > self.limit
    }

    /// The time of the last answer naming `key`, 0 when unknown.
    pub fn get(&self, key: &K) -> u64 {
        self.lock().get(key).copied().unwrap_or(0)
    }

    /// Forgets `key`.
    pub fn forget(&self, key: &K) {
        self.lock().remove(key);
    }

    /// Drops the records of hosts no longer in the map: `present` reads the map's keys (`None`
    /// when it cannot) while answers go on. A record made at or after `now` (before the read
    /// started) is kept even when its key is missing from what was read: an answer recorded
    /// during the read writes its host after recording it, so the read may have missed it, and
    /// losing its record would make a host just answered look never answered (first to evict).
    pub fn prune(&self, now: u64, present: impl FnOnce() -> Option<std::collections::HashSet<K>>) {
        if let Some(present) = present() {
            self.lock()
                .retain(|k, at| *at >= now || present.contains(k));
        }
    }

    /// Runs `f` on the records (one lock for a whole scan).
    pub fn with<T>(&self, f: impl FnOnce(&AddrMap<K>) -> T) -> T {
        f(&self.lock())
    }
}

/// Eviction rank of an entry (lower goes first); `None` for an entry never evicted
/// (whitelisted, or with traffic in the last [`LIVE_NS`]).
pub fn rank(value: &HostValue, answered_at: u64, now: u64) -> Option<(u8, u64)> {
    if value.flags & FLAG_WHITELISTED != 0 {
        return None;
    }
    if !value.is_live(now) {
        return Some((0, value.expires_ns));
    }
    if value.last_seen_ns != 0 && now.saturating_sub(value.last_seen_ns) < LIVE_NS {
        return None;
    }
    if value.last_seen_ns == 0 && answered_at.saturating_add(GRACE_NS) <= now {
        return Some((1, answered_at));
    }
    Some((2, value.last_seen_ns.max(answered_at)))
}

/// The `count` entries of `entries` to evict first (fewer when fewer are evictable), first to
/// go first.
pub fn victims<K>(
    entries: impl IntoIterator<Item = (K, HostValue)>,
    answered_at: impl Fn(&K) -> u64,
    now: u64,
    count: usize,
) -> Vec<K> {
    let mut ranked: Vec<((u8, u64), K)> = entries
        .into_iter()
        .filter_map(|(k, v)| rank(&v, answered_at(&k), now).map(|r| (r, k)))
        .collect();
    if count == 0 {
        return Vec::new();
    }
    if ranked.len() > count {
        ranked.select_nth_unstable_by_key(count - 1, |(r, _)| *r);
        ranked.truncate(count);
    }
    ranked.sort_unstable_by_key(|(r, _)| *r);
    ranked.into_iter().map(|(_, k)| k).collect()
}

/// Evictions per scope since the daemon started, for the metrics' `policy` label.
static EVICTED_PER_SCOPE: Mutex<std::collections::BTreeMap<Scope, u64>> =
    Mutex::new(std::collections::BTreeMap::new());

/// Counts `count` authorizations of `scope` evicted (in [`EVICTED`] and per scope).
pub fn count_evicted(scope: Scope, count: u64) {
    EVICTED.inc_by(count);
    *EVICTED_PER_SCOPE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(scope)
        .or_default() += count;
}

/// Authorizations evicted per scope since the daemon started (scopes with none are absent).
pub fn evicted_per_scope() -> Vec<(Scope, u64)> {
    EVICTED_PER_SCOPE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(&scope, &count)| (scope, count))
        .collect()
}

#[cfg(test)]
mod tests {
    use nettrust_common::FLAG_AUTHORIZED;

    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_fruitless_scan_holds_off_the_next_for_a_second() {
        let recency = Recency::<[u8; 4]>::new(64);
        let (a, b) = (Scope(1), Scope(2));
        assert!(recency.may_scan(a, 5 * S), "no scan yet: free to scan");
        recency.found_nothing(a, 5 * S);
        assert!(!recency.may_scan(a, 5 * S));
        assert!(!recency.may_scan(a, 5 * S + NOTHING_TO_EVICT_NS - 1));
        assert!(recency.may_scan(a, 5 * S + NOTHING_TO_EVICT_NS));
        // Another scope's writes may still scan (they may evict where the first may not).
        assert!(recency.may_scan(b, 5 * S));
    }

    fn host(expires_ns: u64, last_seen_ns: u64, flags: u32) -> HostValue {
        HostValue {
            expires_ns,
            last_seen_ns,
            flags,
            _pad: 0,
        }
    }

    #[test]
    fn batches_are_a_64th_of_the_capacity() {
        assert_eq!(batch(65_536), 1024);
        assert_eq!(batch(64), 1);
        assert_eq!(batch(16), 1);
    }

    /// Expired first, then never-used ones answered long ago (oldest answer first), then the
    /// rest by last activity; whitelisted entries and hosts with traffic in the last
    /// [`LIVE_NS`] never.
    #[test]
    fn idle_authorizations_go_first_and_live_or_whitelisted_ones_never() {
        let now = 1000 * S;
        let a = FLAG_AUTHORIZED;
        let entries = [
            ("whitelisted", host(0, 0, FLAG_WHITELISTED), 0),
            (
                "whitelisted and authorized",
                host(0, 0, FLAG_WHITELISTED | a),
                0,
            ),
            ("in use", host(0, now - S / 10, a), 10 * S),
            ("used 20 s ago", host(0, now - 20 * S, a), 10 * S),
            ("used long ago", host(0, 100 * S, a), 50 * S),
            ("used a minute ago", host(0, now - 60 * S, a), 50 * S),
            ("just answered", host(0, 0, a), now - S),
            ("never used, old", host(0, 0, a), 200 * S),
            ("never used, older", host(0, 0, a), 150 * S),
            ("expired", host(now - 5 * S, now - 6 * S, a), now - 10 * S),
        ];
        let answered: HashMap<&str, u64> = entries.iter().map(|(k, _, t)| (*k, *t)).collect();
        let pick = |n| {
            victims(
                entries.iter().map(|(k, v, _)| (*k, *v)),
                |k| answered[k],
                now,
                n,
            )
        };
        let order = [
            "expired",
            "never used, older",
            "never used, old",
            "used long ago",
            "used a minute ago",
            "just answered",
        ];
        // Asked for more than there are, the live and whitelisted entries are left alone.
        assert_eq!(pick(100), order);
        for n in 1..=order.len() {
            assert_eq!(pick(n), order[..n]);
        }
    }

    #[test]
    fn recency_asks_for_a_prune_past_twice_the_capacity() {
        let recency = Recency::new(600);
        for i in 0..1200u32 {
            assert!(!recency.touch(i, u64::from(i)));
        }
        assert!(recency.touch(1200, 1));
        recency.prune(2000, || Some((0..10).collect()));
        assert_eq!(recency.get(&3), 3);
        assert_eq!(recency.get(&11), 0);
        recency.forget(&3);
        assert_eq!(recency.get(&3), 0);
    }

    /// An answer recorded while the prune reads the map (its host written after the read saw
    /// the map) keeps its record: otherwise the host just answered would rank as never answered
    /// and be the first evicted.
    #[test]
    fn a_prune_keeps_an_answer_recorded_during_its_read() {
        let recency = Recency::new(16);
        recency.touch(1u32, 100);
        recency.touch(2u32, 100);
        recency.prune(500, || {
            // A concurrent answer: recorded now, its host not in the map yet.
            recency.touch(3, 500);
            recency.touch(4, 600);
            Some([1].into())
        });
        assert_eq!(recency.get(&1), 100);
        assert_eq!(recency.get(&2), 0, "a removed host's record was kept");
        assert_eq!(recency.get(&3), 500);
        assert_eq!(recency.get(&4), 600);
    }
}
