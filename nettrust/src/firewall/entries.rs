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
