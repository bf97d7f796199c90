//! Read-modify-write of the eBPF backend's map entries: whitelists, authorizations and their
//! compare-and-set renewal/removal, recorded names. Callers hold the backend's host-map lock, so
//! each function is atomic with respect to the DNS path and the sweeper.

use std::{io, net::IpAddr};

use aya::maps::{LpmTrie, MapData, MapError, lpm_trie::Key};
use ipnet::IpNet;
use nettrust_common::{
    FLAG_AUTHORIZED, FLAG_WHITELISTED, HostValue, MAP_HOSTS_V4, MAP_HOSTS_V6, MAP_NETS_V4,
    MAP_NETS_V6,
};

use super::{
    Authorization, AuthorizedHost, HostState, Policy, boottime_ns, bpf_sys,
    ebpf::{EbpfError, HostMap, HostMaps, NameMap, map_error},
    evict::{self, Recency},
    pins,
    table::HostTable,
};

/// A host map as the functions below see it: `HOSTS_V6` (a kernel hash map, element operations
/// by system call) or the memory-mapped IPv4 table `HOSTS_V4`. Callers hold the host-map lock
/// where a sequence of operations must not interleave.
pub(super) trait HostStore<const N: usize> {
    /// The entry of `key`.
    fn get(&self, key: [u8; N]) -> io::Result<Option<HostValue>>;
    /// Writes `value` (`EEXIST` if `only_new` and present, `E2BIG` when full).
    fn put(&self, key: [u8; N], value: &HostValue, only_new: bool) -> io::Result<()>;
    /// Removes `key`; whether it was present.
    fn delete(&self, key: [u8; N]) -> io::Result<bool>;
    /// Every entry.
    fn entries(&self) -> io::Result<Vec<([u8; N], HostValue)>>;
}

impl HostStore<16> for HostMap<16> {
    fn get(&self, key: [u8; 16]) -> io::Result<Option<HostValue>> {
        bpf_sys::lookup(bpf_sys::fd_of(self), &key)
    }

    fn put(&self, key: [u8; 16], value: &HostValue, only_new: bool) -> io::Result<()> {
        let flags = if only_new {
            bpf_sys::BPF_NOEXIST
        } else {
            bpf_sys::BPF_ANY
        };
        bpf_sys::update(bpf_sys::fd_of(self), &key, value, flags)
    }

    fn delete(&self, key: [u8; 16]) -> io::Result<bool> {
        bpf_sys::delete(bpf_sys::fd_of(self), &key)
    }

    /// Fetched in batches (`bpf_sys::dump`); on a kernel that cannot batch-read hash maps, key
    /// by key.
    fn entries(&self) -> io::Result<Vec<([u8; 16], HostValue)>> {
        match bpf_sys::dump(bpf_sys::fd_of(self)) {
            Ok(entries) => Ok(entries),
            Err(e) => {
                tracing::debug!("batched map read unavailable ({e}), reading key by key");
                self.iter()
                    .collect::<Result<_, MapError>>()
                    .map_err(io::Error::other)
            }
        }
    }
}

impl HostStore<4> for HostTable {
    fn get(&self, key: [u8; 4]) -> io::Result<Option<HostValue>> {
        Ok(HostTable::get(self, key))
    }

    fn put(&self, key: [u8; 4], value: &HostValue, only_new: bool) -> io::Result<()> {
        self.insert(key, value, only_new)
    }

    fn delete(&self, key: [u8; 4]) -> io::Result<bool> {
        Ok(self.remove(key))
    }

    fn entries(&self) -> io::Result<Vec<([u8; 4], HostValue)>> {
        Ok(HostTable::entries(self))
    }
}

/// Writes the whitelists and removes whitelist entries a previous run left that the current
/// policy no longer has.
pub(super) fn install_policy(
    hosts: &mut HostMaps,
    nets_v4: &mut LpmTrie<MapData, [u8; 4], u32>,
    nets_v6: &mut LpmTrie<MapData, [u8; 16], u32>,
    policy: &Policy,
) -> Result<(), EbpfError> {
    let whitelisted = HostValue {
        flags: FLAG_WHITELISTED,
        ..HostValue::default()
    };
    for &host in &policy.whitelist_hosts {
        let result = match host {
            IpAddr::V4(ip) => hosts
                .v4
                .put(ip.octets(), &whitelisted, false)
                .map_err(|e| (MAP_HOSTS_V4, e)),
            IpAddr::V6(ip) => hosts
                .v6
                .put(ip.octets(), &whitelisted, false)
                .map_err(|e| (MAP_HOSTS_V6, e)),
        };
        result.map_err(|(name, e)| map_error(name, format!("cannot whitelist host {host}"), e))?;
    }
    for net in &policy.whitelist_networks {
        let result = match net {
            IpNet::V4(n) => nets_v4
                .insert(
                    &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                    FLAG_WHITELISTED,
                    0,
                )
                .map_err(|e| (MAP_NETS_V4, e)),
            IpNet::V6(n) => nets_v6
                .insert(
                    &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                    FLAG_WHITELISTED,
                    0,
                )
                .map_err(|e| (MAP_NETS_V6, e)),
        };
        result
            .map_err(|(name, e)| map_error(name, format!("cannot whitelist network {net}"), e))?;
    }
    // Entries removed from the configuration are removed from enforcement (original issue #8).
    remove_stale_whitelisted(&*hosts.v4, policy);
    remove_stale_whitelisted(&hosts.v6, policy);
    remove_stale_networks(nets_v4, &policy.whitelist_networks);
    remove_stale_networks(nets_v6, &policy.whitelist_networks);
    Ok(())
}

/// Key of the NAMES map: IPv6, or IPv4 as IPv4-mapped IPv6.
pub(super) fn name_key(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
        IpAddr::V6(ip) => ip.octets(),
    }
}

/// Writes an authorization, keeping the flags already present; a whitelisted entry is left as
/// it is. Runs under the *shared* host-map lock (concurrent answers write at once; each element
/// operation is atomic), so it works on the store directly.
pub(super) fn upsert<const N: usize>(
    map: &impl HostStore<N>,
    key: [u8; N],
    expires_ns: u64,
) -> io::Result<Authorization> {
    // Most answers carry addresses not in the map yet: one insert-if-absent settles those; only
    // an existing entry needs the read-modify-write below.
    let fresh = HostValue {
        expires_ns,
        flags: FLAG_AUTHORIZED,
        ..HostValue::default()
    };
    match map.put(key, &fresh, true) {
        Ok(()) => return Ok(Authorization::New),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    match map.get(key)? {
        Some(old) if old.flags & FLAG_WHITELISTED != 0 => Ok(Authorization::Already),
        Some(old) => {
            let live = old.is_live(boottime_ns());
            let renewed = HostValue {
                expires_ns,
                last_seen_ns: old.last_seen_ns,
                flags: old.flags | FLAG_AUTHORIZED,
                _pad: 0,
            };
            map.put(key, &renewed, false)?;
            Ok(if live {
                Authorization::Already
            } else {
                Authorization::New
            })
        }
        // Gone between the two calls: write it afresh.
        None => {
            map.put(key, &fresh, false)?;
            Ok(Authorization::New)
        }
    }
}

/// An authorization chosen for eviction, with what the scan saw of it.
pub(super) struct Victim<const N: usize> {
    key: [u8; N],
    value: HostValue,
    answered_ns: u64,
}

/// Chooses one batch of idle authorizations of a full `map` of `capacity` hosts to evict (least
/// recently used, see [`super::evict`]) by one scan. Hosts in `active` (the remote addresses of
/// open connections, from `live_tcp` and conntrack: a connection idle for longer than
/// [`evict::LIVE_NS`] keeps its host past the TTL in the sweeper) are in use and never chosen. Needs no exclusive lock:
/// answers keep being written meanwhile, and [`evict`] removes only the victims nothing touched
/// since.
pub(super) fn plan_eviction<const N: usize>(
    map: &impl HostStore<N>,
    recency: &Recency<[u8; N]>,
    capacity: u32,
    active: &std::collections::HashSet<IpAddr>,
) -> io::Result<Vec<Victim<N>>>
where
    IpAddr: From<[u8; N]>,
{
    let now = boottime_ns();
    let mut entries = map.entries()?;
    if !active.is_empty() {
        entries.retain(|(k, _)| !active.contains(&IpAddr::from(*k)));
    }
    let victims = recency.with(|answered| {
        evict::victims(
            entries.into_iter().map(|(k, v)| {
                let answered_ns = answered.get(&k).copied().unwrap_or(0);
                (
                    Victim {
                        key: k,
                        value: v,
                        answered_ns,
                    },
                    v,
                )
            }),
            |victim| victim.answered_ns,
            now,
            evict::batch(capacity),
        )
    });
    Ok(victims)
}

/// Removes the planned victims that are still as the scan saw them (same deadline, last packet
/// and flags, no answer since): one renewed or used meanwhile stays. Runs under the *exclusive*
/// host-map lock. Returns the addresses evicted (the caller removes their recorded names).
pub(super) fn evict<const N: usize>(
    map: &impl HostStore<N>,
    recency: &Recency<[u8; N]>,
    plan: Vec<Victim<N>>,
) -> io::Result<Vec<IpAddr>>
where
    IpAddr: From<[u8; N]>,
{
    let mut evicted = Vec::with_capacity(plan.len());
    for victim in plan {
        if map.get(victim.key)? == Some(victim.value)
            && recency.get(&victim.key) == victim.answered_ns
            && map.delete(victim.key)?
        {
            recency.forget(&victim.key);
            evicted.push(IpAddr::from(victim.key));
        }
    }
    Ok(evicted)
}

pub(super) fn renew_entry<const N: usize>(
    map: &impl HostStore<N>,
    key: [u8; N],
    seen: u64,
    new: u64,
) -> io::Result<bool> {
    match map.get(key)? {
        Some(old) if old.expires_ns == seen && old.flags & FLAG_WHITELISTED == 0 => {
            map.put(
                key,
                &HostValue {
                    expires_ns: new,
                    ..old
                },
                false,
            )?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

pub(super) fn remove_entry<const N: usize>(
    map: &impl HostStore<N>,
    key: [u8; N],
    seen: u64,
) -> io::Result<bool> {
    match map.get(key)? {
        Some(old) if old.expires_ns == seen && old.flags & FLAG_WHITELISTED == 0 => {
            map.delete(key)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Removes the authorized entries of `map` (not the whitelisted ones) for which `revoked(address,
/// recorded name)` holds, and their names; appends their addresses to `out`.
pub(super) fn revoke_entries<const N: usize>(
    map: &impl HostStore<N>,
    names: &mut NameMap,
    revoked: &dyn Fn(IpAddr, Option<&str>) -> bool,
    out: &mut Vec<IpAddr>,
) -> io::Result<()>
where
    IpAddr: From<[u8; N]>,
{
    for (key, value) in map.entries()? {
        if value.flags != FLAG_AUTHORIZED {
            continue;
        }
        let addr = IpAddr::from(key);
        let name = names
            .get(&name_key(addr), 0)
            .ok()
            .map(|n| pins::unpadded(&n.name));
        if revoked(addr, name.as_deref()) && map.delete(key)? {
            let _ = names.remove(&name_key(addr));
            out.push(addr);
        }
    }
    Ok(())
}

pub(super) fn collect_due<const N: usize>(
    map: &impl HostStore<N>,
    horizon_ns: u64,
    out: &mut Vec<HostState>,
) -> io::Result<()>
where
    IpAddr: From<[u8; N]>,
{
    for (key, value) in map.entries()? {
        if value.flags & FLAG_WHITELISTED == 0
            && value.expires_ns != 0
            && value.expires_ns <= horizon_ns
        {
            out.push(HostState {
                addr: IpAddr::from(key),
                expires_ns: value.expires_ns,
                last_seen_ns: value.last_seen_ns,
            });
        }
    }
    Ok(())
}

/// Removes every authorization (not the whitelisted entries) of `map`.
fn clear_store<const N: usize>(
    map: &impl HostStore<N>,
    name: &'static str,
) -> Result<(), EbpfError> {
    let entries = map.entries().map_err(|e| map_error(name, "read", e))?;
    for (key, _) in entries
        .into_iter()
        .filter(|(_, v)| v.flags & FLAG_WHITELISTED == 0)
    {
        let _ = map.delete(key);
    }
    Ok(())
}

/// Removes every authorization (not the whitelisted entries) and the recorded names.
pub(super) fn clear_authorized(hosts: &mut HostMaps) -> Result<(), EbpfError> {
    clear_store(&*hosts.v4, MAP_HOSTS_V4)?;
    clear_store(&hosts.v6, MAP_HOSTS_V6)?;
    let names: Vec<[u8; 16]> = hosts.names.keys().filter_map(Result::ok).collect();
    for key in names {
        let _ = hosts.names.remove(&key);
    }
    Ok(())
}

/// Live authorized hosts, with their recorded names when `names` is given.
pub(super) fn collect_authorized(
    v4: &HostTable,
    v6: &HostMap<16>,
    names: Option<&NameMap>,
) -> io::Result<Vec<(AuthorizedHost, Option<String>)>> {
    let now = boottime_ns();
    let mut out = Vec::new();
    let mut push = |addr: IpAddr, value: HostValue| {
        if value.flags & FLAG_AUTHORIZED != 0 && value.is_live(now) {
            let name = names
                .and_then(|n| n.get(&name_key(addr), 0).ok())
                .map(|n| pins::unpadded(&n.name));
            out.push((
                AuthorizedHost {
                    addr,
                    expires_ns: value.expires_ns,
                },
                name,
            ));
        }
    };
    for (key, value) in HostStore::entries(v4)? {
        push(IpAddr::from(key), value);
    }
    for (key, value) in v6.entries()? {
        push(IpAddr::from(key), value);
    }
    Ok(out)
}

/// Adds (`allow`) or removes a whitelisted network.
pub(super) fn set_network(
    v4: &mut LpmTrie<MapData, [u8; 4], u32>,
    v6: &mut LpmTrie<MapData, [u8; 16], u32>,
    net: &IpNet,
    allow: bool,
) -> Result<(), EbpfError> {
    let result = match (net, allow) {
        (IpNet::V4(n), true) => v4.insert(
            &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
            FLAG_WHITELISTED,
            0,
        ),
        (IpNet::V4(n), false) => v4.remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets())),
        (IpNet::V6(n), true) => v6.insert(
            &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
            FLAG_WHITELISTED,
            0,
        ),
        (IpNet::V6(n), false) => v6.remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets())),
    };
    let name = if net.addr().is_ipv4() {
        MAP_NETS_V4
    } else {
        MAP_NETS_V6
    };
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_error(
            name,
            format!("cannot update whitelisted network {net}"),
            e,
        )),
    }
}

/// Whitelists a host (keeping the authorization flag it may carry), or removes it. A host taken
/// off the whitelist loses any authorization too: it must be resolved again, which keeps "removed
/// from the config" meaning "no longer reachable" (the original's issue #8).
pub(super) fn set_host_whitelisted(
    hosts: &mut HostMaps,
    host: IpAddr,
    whitelisted: bool,
) -> Result<(), EbpfError> {
    let result = match host {
        IpAddr::V4(ip) => {
            flag_host(&*hosts.v4, ip.octets(), whitelisted).map_err(|e| (MAP_HOSTS_V4, e))
        }
        IpAddr::V6(ip) => {
            flag_host(&hosts.v6, ip.octets(), whitelisted).map_err(|e| (MAP_HOSTS_V6, e))
        }
    };
    result.map_err(|(name, e)| map_error(name, format!("cannot update whitelisted host {host}"), e))
}

fn flag_host<const N: usize>(
    map: &impl HostStore<N>,
    key: [u8; N],
    whitelisted: bool,
) -> io::Result<()> {
    if !whitelisted {
        return map.delete(key).map(drop);
    }
    let flags = map
        .get(key)?
        .map_or(FLAG_WHITELISTED, |old| old.flags | FLAG_WHITELISTED);
    // Whitelisted entries never expire.
    map.put(
        key,
        &HostValue {
            expires_ns: 0,
            flags,
            ..HostValue::default()
        },
        false,
    )
}

/// Removes the whitelisted entries of `map` that `policy` no longer lists, also those authorized
/// as well: whitelisting wrote their deadline as 0 (never), so keeping them would keep the host
/// allowed forever. Like a host taken off the whitelist by a reload ([`set_host_whitelisted`]), it
/// must be resolved again.
fn remove_stale_whitelisted<const N: usize>(map: &impl HostStore<N>, policy: &Policy)
where
    IpAddr: From<[u8; N]>,
{
    let stale: Vec<[u8; N]> = map
        .entries()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, v)| {
            v.flags & FLAG_WHITELISTED != 0 && !policy.whitelist_hosts.contains(&IpAddr::from(*k))
        })
        .map(|(k, _)| k)
        .collect();
    for key in stale {
        let _ = map.delete(key);
    }
}

/// Removes the networks of `trie` that `networks` no longer lists.
fn remove_stale_networks<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    networks: &[IpNet],
) where
    IpAddr: From<[u8; N]>,
    [u8; N]: aya::Pod,
{
    let stale: Vec<Key<[u8; N]>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| {
            IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8)
                .is_ok_and(|n| !networks.contains(&n))
        })
        .collect();
    for key in stale {
        let _ = trie.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

        let plan = plan_eviction(&table, &recency, CAPACITY * 4, &Default::default()).unwrap();
        assert_eq!(plan.len(), evict::batch(CAPACITY * 4));
        let mut planned: Vec<[u8; 4]> = plan.iter().map(|v| v.key).collect();
        planned.sort_unstable();
        assert_eq!(planned, (2..10).map(addr).collect::<Vec<_>>());
        // Answered again between the scan and the removal: kept.
        upsert(&table, addr(3), 0).unwrap();
        recency.touch(addr(3), now);
        let evicted = evict(&table, &recency, plan).unwrap();
        assert_eq!(evicted.len(), 7);
        assert!(!evicted.contains(&IpAddr::from(addr(3))));
        for a in &evicted {
            let IpAddr::V4(v4) = a else { unreachable!() };
            assert_eq!(table.get(v4.octets()), None);
        }
        for kept in [0, 1, 3, 10] {
            assert!(table.get(addr(kept)).is_some(), "host {kept} was evicted");
        }
        for i in 0..7 {
            upsert(&table, addr(500 + i), 0).unwrap();
        }
        assert_eq!(table.len(), CAPACITY as usize);
        // Asked for more than there are: everything but the whitelisted host and the one in use.
        let all = plan_eviction(&table, &recency, CAPACITY * 64 * 2, &Default::default()).unwrap();
        assert_eq!(all.len(), CAPACITY as usize - 2);
        assert!(
            all.iter().all(|v| v.key != addr(0) && v.key != addr(1)),
            "the whitelisted host or the one in use was planned"
        );
    }
}

#[cfg(test)]
mod timing {
    use super::*;

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
            let plan = plan_eviction(&table, &recency, capacity, &Default::default()).unwrap();
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
