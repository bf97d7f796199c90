//! Writing an authorization into a full host map or into a full `GRANTS`: a batch of idle
//! authorizations is evicted (the order is [`crate::firewall::evict`]'s, the share of each
//! scope of `GRANTS` [`crate::firewall::fair_share`]'s, both shared with nftables) and the write
//! tried again. The scan that picks the victims runs under the shared host-map lock, so answers
//! keep being written meanwhile; only the removal of the victims nothing touched since takes the
//! exclusive one.

use std::{collections::HashSet, io, sync::RwLock, time::Instant};

use nettrust_common::HostValue;

use super::{
    authorizations::upsert,
    host_table::{HostMaps, HostStore, PoolKey, name_key},
    syscalls,
};
use crate::firewall::{
    Authorization, Grant, Scope, boottime_ns,
    evict::{self, Recency},
    fair_share,
};

/// Whether an error is a full map's (or, for the IPv4 table, a full probe window's).
pub(super) fn is_full(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::E2BIG)
}

/// Authorizes `key` in `map` (one family's host map, or `GRANTS`; `recency` holds its answer
/// times, `capacity` is `max_hosts`): under the shared lock of `hosts` first; when the map is
/// full, a batch of idle authorizations is evicted before the write is tried again (unless a
/// concurrent answer already made room). `active` reads the grants of open connections, never
/// evicted; it is called only when the map is full. Returns the deadline the entry holds
/// afterwards with the authorization.
pub(super) fn authorize<const N: usize, S: HostStore<N>>(
    hosts: &RwLock<HostMaps>,
    map: &S,
    recency: &Recency<[u8; N]>,
    capacity: u32,
    active: impl FnOnce() -> HashSet<Grant>,
    key: [u8; N],
    expires_ns: u64,
) -> io::Result<Authorization>
where
    [u8; N]: PoolKey,
{
    // The answer is recorded before the write and under the same shared lock: an eviction
    // planned earlier compares the record under the exclusive lock, so it cannot remove a host
    // this answer has just confirmed (recorded after the lock was released, the eviction could
    // run in between and see the old record).
    let (result, prune) = {
        let _maps = hosts.read().expect("host maps lock poisoned");
        let prune = recency.touch(key, boottime_ns());
        (upsert(map, key, expires_ns), prune)
    };
    let result = match result {
        // Unless the last scan found every host whitelisted or in use: then refused at once.
        Err(e) if is_full(&e) && recency.may_scan(key.scope(), boottime_ns()) => {
            // The scan's time counts the read of the open connections.
            let started = Instant::now();
            let room = Room {
                hosts,
                map,
                recency,
                capacity,
            };
            room.make_and_write(&active(), (key, expires_ns), started)
        }
        other => other,
    };
    if prune {
        // Records of the last second are kept whatever the read finds: an answer recorded just
        // before the read started may write its host only after the read passed it.
        recency.prune(boottime_ns().saturating_sub(1_000_000_000), || {
            let _maps = hosts.read().expect("host maps lock poisoned");
            let entries = map.entries().ok()?;
            Some(entries.into_iter().map(|(k, _)| k).collect())
        });
    }
    result
}

/// A full map and what its eviction needs.
struct Room<'a, const N: usize, S> {
    /// The lock the map is written under (the host-map lock, for `GRANTS` too).
    hosts: &'a RwLock<HostMaps>,
    map: &'a S,
    recency: &'a Recency<[u8; N]>,
    capacity: u32,
}

impl<const N: usize, S: HostStore<N>> Room<'_, N, S>
where
    [u8; N]: PoolKey,
{
    /// Plans a batch of victims under the shared lock, then, under the exclusive lock, evicts
    /// them and writes `key` until `expires_ns` (or just writes it when a concurrent answer made
    /// room meanwhile). `started` is when the full map was met, for the log.
    fn make_and_write(
        &self,
        active: &HashSet<Grant>,
        (key, expires_ns): ([u8; N], u64),
        started: Instant,
    ) -> io::Result<Authorization> {
        let plan = {
            let _maps = self.hosts.read().expect("host maps lock poisoned");
            plan_eviction(self.map, self.recency, self.capacity, active, key.scope())?
        };
        if plan.is_empty() {
            self.recency.found_nothing(key.scope(), boottime_ns());
            tracing::debug!(
                capacity = self.capacity,
                scope = key.scope().0,
                scan_us = started.elapsed().as_micros() as u64,
                "map full of whitelisted hosts, hosts in use and other policies' shares: nothing to evict, new addresses of this scope refused without another scan for a second"
            );
        }
        let scanned = started.elapsed();
        let (result, evicted) = {
            let maps = self.hosts.write().expect("host maps lock poisoned");
            match upsert(self.map, key, expires_ns) {
                // A concurrent answer made room meanwhile.
                Err(e) if is_full(&e) => {
                    let evicted = evict(self.map, self.recency, plan)?;
                    // Their names go under the same exclusive lock: an answer that authorizes
                    // one of them again afterwards records its name anew. A policy's grant
                    // took its own name with it (`ScopeMaps::grant_delete`).
                    let names = syscalls::fd_of(&maps.names);
                    for k in evicted.iter().filter(|k| k.scope().is_default()) {
                        let _ = syscalls::delete(names, &name_key(k.addr()));
                    }
                    (upsert(self.map, key, expires_ns), evicted)
                }
                other => (other, Vec::new()),
            }
        };
        if !evicted.is_empty() {
            let mut per_scope: std::collections::BTreeMap<Scope, u64> = Default::default();
            for k in &evicted {
                *per_scope.entry(k.scope()).or_default() += 1;
            }
            for (scope, count) in per_scope {
                evict::count_evicted(scope, count);
            }
            tracing::info!(
                evicted = evicted.len(),
                first = ?evicted.first().map(PoolKey::addr),
                from_scope = evicted.first().map_or(0, |k| k.scope().0),
                for_scope = key.scope().0,
                capacity = self.capacity,
                scan_us = scanned.as_micros() as u64,
                took_us = started.elapsed().as_micros() as u64,
                "[Evicted] host map full: idle authorizations removed, least recently used first"
            );
        }
        result
    }
}

/// An authorization chosen for eviction, with what the scan saw of it.
#[derive(Clone, Copy)]
pub(super) struct Victim<const N: usize> {
    key: [u8; N],
    value: HostValue,
    answered_ns: u64,
}

/// Chooses one batch of idle authorizations of a full `map` of `capacity` hosts to evict for a
/// write of `writer` by one scan: least recently used (see [`crate::firewall::evict`]), from
/// the scopes [`fair_share`] lets `writer` take from (a host map holds the default scope only).
/// Grants in `active` (those of open connections: `live_tcp`'s per scope, conntrack's for the
/// default scope; a connection idle for longer than [`evict::LIVE_NS`] keeps its grant past the
/// TTL in the sweeper) are in use and never chosen, but count in their scope's share.
/// Needs no exclusive lock: answers keep being written meanwhile, and [`evict`] removes only the
/// victims nothing touched since.
pub(super) fn plan_eviction<const N: usize>(
    map: &impl HostStore<N>,
    recency: &Recency<[u8; N]>,
    capacity: u32,
    active: &HashSet<Grant>,
    writer: Scope,
) -> io::Result<Vec<Victim<N>>>
where
    [u8; N]: PoolKey,
{
    let now = boottime_ns();
    let entries = map.entries()?;
    let shared = fair_share::Shared {
        entries: &entries,
        capacity: capacity as usize,
        scope_of: PoolKey::scope,
        in_use: |k: &[u8; N]| {
            !active.is_empty() && active.contains(&Grant::new(k.scope(), k.addr()))
        },
    };
    let victims = recency.with(|answered| {
        let answered_ns = |k: &[u8; N]| answered.get(k).copied().unwrap_or(0);
        fair_share::victims(&shared, writer, answered_ns, now, evict::batch(capacity))
            .into_iter()
            .map(|i| {
                let (key, value) = entries[i];
                Victim {
                    key,
                    value,
                    answered_ns: answered_ns(&key),
                }
            })
            .collect()
    });
    Ok(victims)
}

/// Removes the planned victims that are still as the scan saw them (same deadline, last packet
/// and flags, no answer since): one renewed or used meanwhile stays. Runs under the *exclusive*
/// host-map lock. Returns the keys evicted (the caller removes their recorded names).
pub(super) fn evict<const N: usize>(
    map: &impl HostStore<N>,
    recency: &Recency<[u8; N]>,
    plan: Vec<Victim<N>>,
) -> io::Result<Vec<[u8; N]>>
where
    [u8; N]: PoolKey,
{
    let mut evicted = Vec::with_capacity(plan.len());
    for victim in plan {
        if map.get(victim.key)? == Some(victim.value)
            && recency.get(&victim.key) == victim.answered_ns
            && map.delete(victim.key)?
        {
            recency.forget(&victim.key);
            evicted.push(victim.key);
        }
    }
    Ok(evicted)
}

#[cfg(test)]
mod tests {
    use nettrust_common::FLAG_WHITELISTED;

    use super::{
        super::{authorizations::upsert, ipv4_table::HostTable},
        *,
    };

    const S: u64 = 1_000_000_000;

    /// A full IPv4 table: the scan picks a batch of the idle authorizations, oldest answer first,
    /// never the whitelisted host nor the one in use; an authorization renewed between the scan
    /// and the removal stays; the table's probing invariant holds and the freed room takes new
    /// hosts.
    #[test]
    fn a_full_table_evicts_idle_hosts_in_batches() {
        const CAPACITY: u32 = 128;
        let table = HostTable::in_memory(CAPACITY, 5);
        let recency = Recency::new(CAPACITY);
        let now = boottime_ns();
        let addr = |i: u32| (0xC633_6400 + i).to_be_bytes(); // 198.51.100.0 + i
        table
            .insert(
                addr(0),
                &HostValue {
                    flags: FLAG_WHITELISTED,
                    ..HostValue::default()
                },
                false,
            )
            .unwrap();
        for i in 1..CAPACITY {
            upsert(&table, addr(i), 0).unwrap();
            // Answered in order, long ago enough to be past the grace period (at boot on a
            // machine up for less than 1000 s).
            recency.touch(addr(i), now.saturating_sub(1000 * S) + u64::from(i));
        }
        // Host 1, the oldest answer, carries traffic.
        let used = HostValue {
            last_seen_ns: now,
            ..table.get(addr(1)).unwrap()
        };
        table.insert(addr(1), &used, false).unwrap();
        let full = upsert(&table, addr(500), 0).unwrap_err();
        assert_eq!(full.raw_os_error(), Some(libc::E2BIG));

        let plan = plan_eviction(
            &table,
            &recency,
            CAPACITY * 4,
            &Default::default(),
            Scope::DEFAULT,
        )
        .unwrap();
        assert_eq!(plan.len(), evict::batch(CAPACITY * 4));
        let mut planned: Vec<[u8; 4]> = plan.iter().map(|v| v.key).collect();
        planned.sort_unstable();
        assert_eq!(planned, (2..10).map(addr).collect::<Vec<_>>());
        // Answered again between the scan and the removal: kept.
        upsert(&table, addr(3), 0).unwrap();
        recency.touch(addr(3), now);
        let evicted = evict(&table, &recency, plan).unwrap();
        assert_eq!(evicted.len(), 7);
        assert!(!evicted.contains(&addr(3)));
        for &a in &evicted {
            assert_eq!(table.get(a), None);
        }
        for kept in [0, 1, 3, 10] {
            assert!(table.get(addr(kept)).is_some(), "host {kept} was evicted");
        }
        for i in 0..7 {
            upsert(&table, addr(500 + i), 0).unwrap();
        }
        assert_eq!(table.len(), CAPACITY as usize);
        // Asked for more than there are: everything but the whitelisted host and the one in use.
        let all = plan_eviction(
            &table,
            &recency,
            CAPACITY * 64 * 2,
            &Default::default(),
            Scope::DEFAULT,
        )
        .unwrap();
        assert_eq!(all.len(), CAPACITY as usize - 2);
        assert!(
            all.iter().all(|v| v.key != addr(0) && v.key != addr(1)),
            "the whitelisted host or the one in use was planned"
        );
    }
}

#[cfg(test)]
mod grants {
    use std::{collections::BTreeMap, sync::Mutex};

    use super::{
        super::{authorizations::upsert, scoped::pool_key},
        *,
    };
    use crate::firewall::Grant;

    const S: u64 = 1_000_000_000;

    /// `GRANTS` in memory: at most `capacity` keys, `E2BIG` for a new one beyond.
    struct Grants(Mutex<BTreeMap<[u8; 20], HostValue>>, usize);

    impl HostStore<20> for Grants {
        fn get(&self, key: [u8; 20]) -> io::Result<Option<HostValue>> {
            Ok(self.0.lock().unwrap().get(&key).copied())
        }

        fn put(&self, key: [u8; 20], value: &HostValue, only_new: bool) -> io::Result<()> {
            let mut map = self.0.lock().unwrap();
            match map.get(&key) {
                Some(_) if only_new => Err(io::Error::from_raw_os_error(libc::EEXIST)),
                None if map.len() >= self.1 => Err(io::Error::from_raw_os_error(libc::E2BIG)),
                _ => {
                    map.insert(key, *value);
                    Ok(())
                }
            }
        }

        fn delete(&self, key: [u8; 20]) -> io::Result<bool> {
            Ok(self.0.lock().unwrap().remove(&key).is_some())
        }

        fn entries(&self) -> io::Result<Vec<([u8; 20], HostValue)>> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect())
        }
    }

    fn key(scope: u32, i: u32) -> [u8; 20] {
        let addr = std::net::Ipv4Addr::from(0xC633_6400 + i); // 198.51.100.0 + i
        pool_key(Grant::new(Scope(scope), addr.into()))
    }

    fn plan(grants: &Grants, recency: &Recency<[u8; 20]>, writer: u32) -> Vec<[u8; 20]> {
        plan_eviction(grants, recency, 16, &HashSet::new(), Scope(writer))
            .unwrap()
            .iter()
            .map(|v| v.key)
            .collect()
    }

    /// A full `GRANTS` of 16 shared by alpha (scope 1, 14 grants) and beta (scope 2, 2 grants,
    /// the oldest answers of all): a write of beta (below its share of 8) evicts alpha's least
    /// recently answered grant, never one of its own nor an alpha grant answered again between
    /// the plan and the removal; a write of alpha (above its share) evicts its own, passing
    /// over a grant with an open connection.
    #[test]
    fn a_full_grants_map_evicts_by_fair_share_and_never_a_just_confirmed_grant() {
        let grants = Grants(Mutex::default(), 16);
        let recency = Recency::new(16);
        let now = boottime_ns();
        // Seconds, before the grace period (at boot on a machine up for less than 2000 s).
        let long_ago = (now / S).saturating_sub(2000).max(200);
        for (scope, i) in [(2, 100), (2, 101)]
            .into_iter()
            .chain((0..14).map(|i| (1, i)))
        {
            upsert(&grants, key(scope, i), 0).unwrap();
            // Beta's answers came first.
            let answered = long_ago + u64::from(i) - if scope == 2 { 200 } else { 0 };
            recency.touch(key(scope, i), answered * S);
        }
        assert!(is_full(&upsert(&grants, key(2, 102), 0).unwrap_err()));

        let first = plan(&grants, &recency, 2);
        assert_eq!(first, [key(1, 0)]);
        // An answer confirms alpha's grant before the removal: it stays.
        recency.touch(key(1, 0), now);
        let victims = plan_eviction(&grants, &recency, 16, &HashSet::new(), Scope(2)).unwrap();
        let planned: Vec<_> = victims.iter().map(|v| v.key).collect();
        assert_eq!(planned, [key(1, 1)]);
        recency.touch(key(1, 1), now);
        assert_eq!(
            evict(&grants, &recency, victims).unwrap(),
            Vec::<[u8; 20]>::new()
        );
        assert!(grants.get(key(1, 1)).unwrap().is_some());

        let victims = plan_eviction(&grants, &recency, 16, &HashSet::new(), Scope(2)).unwrap();
        assert_eq!(evict(&grants, &recency, victims).unwrap(), [key(1, 2)]);
        upsert(&grants, key(2, 102), 0).unwrap();

        // Alpha (13) writes above its share: its own oldest, never beta's older grants; one
        // with an open connection counts in its share but is passed over.
        assert_eq!(plan(&grants, &recency, 1), [key(1, 3)]);
        let in_use: HashSet<Grant> = [Grant::new(Scope(1), key(1, 3).addr())].into();
        let victims = plan_eviction(&grants, &recency, 16, &in_use, Scope(1)).unwrap();
        assert_eq!(
            victims.iter().map(|v| v.key).collect::<Vec<_>>(),
            [key(1, 4)]
        );
    }
}

#[cfg(test)]
mod timing {
    use super::{
        super::{authorizations::upsert, ipv4_table::HostTable},
        *,
    };

    /// The cost of one eviction scan of a full default-size IPv4 table (65,536 hosts), for
    /// RELIABILITY.md: `cargo test --release -p nettrust --lib -- --ignored eviction_scan_cost
    /// --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn eviction_scan_cost() {
        let capacity = nettrust_common::DEFAULT_MAX_HOSTS;
        let table = HostTable::in_memory(capacity, 77);
        let recency = Recency::new(capacity);
        let now = boottime_ns();
        for i in 0..capacity {
            let key = (0x0A00_0000 + i).to_be_bytes();
            upsert(&table, key, 0).unwrap();
            recency.touch(key, now.saturating_sub(u64::from(capacity - i) * 1_000_000));
        }
        let mut times = Vec::new();
        for _ in 0..20 {
            let started = std::time::Instant::now();
            let plan = plan_eviction(
                &table,
                &recency,
                capacity,
                &Default::default(),
                Scope::DEFAULT,
            )
            .unwrap();
            times.push(started.elapsed());
            assert_eq!(plan.len(), 1024);
        }
        times.sort();
        eprintln!(
            "eviction scan of {capacity} hosts: p50 {:?}, max {:?}",
            times[10], times[19]
        );
    }
}
