//! Read-modify-write of the eBPF backend's map entries: whitelists, authorizations and their
//! compare-and-set renewal/removal, recorded names. Callers hold the backend's host-map lock, so
//! each function is atomic with respect to the DNS path and the sweeper.

use std::net::IpAddr;

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
};

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
                .insert(ip.octets(), whitelisted, 0)
                .map_err(|e| (MAP_HOSTS_V4, e)),
            IpAddr::V6(ip) => hosts
                .v6
                .insert(ip.octets(), whitelisted, 0)
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
    remove_stale_whitelisted(&mut hosts.v4, policy);
    remove_stale_whitelisted(&mut hosts.v6, policy);
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
/// it is. Runs under the *shared* host-map lock (concurrent answers write at once; the kernel
/// makes each element operation atomic), so it works on the map's descriptor directly.
pub(super) fn upsert<const N: usize>(
    map: &HostMap<N>,
    key: [u8; N],
    expires_ns: u64,
) -> std::io::Result<Authorization> {
    let fd = bpf_sys::fd_of(map);
    // Most answers carry addresses not in the map yet: one BPF_NOEXIST insert (a single
    // syscall) settles those; only an existing entry needs the read-modify-write below.
    let fresh = HostValue {
        expires_ns,
        flags: FLAG_AUTHORIZED,
        ..HostValue::default()
    };
    match bpf_sys::update(fd, &key, &fresh, bpf_sys::BPF_NOEXIST) {
        Ok(()) => return Ok(Authorization::New),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    match bpf_sys::lookup::<_, HostValue>(fd, &key)? {
        Some(old) if old.flags & FLAG_WHITELISTED != 0 => Ok(Authorization::Already),
        Some(old) => {
            let live = old.is_live(boottime_ns());
            let renewed = HostValue {
                expires_ns,
                last_seen_ns: old.last_seen_ns,
                flags: old.flags | FLAG_AUTHORIZED,
                _pad: 0,
            };
            bpf_sys::update(fd, &key, &renewed, bpf_sys::BPF_ANY)?;
            Ok(if live {
                Authorization::Already
            } else {
                Authorization::New
            })
        }
        // Gone between the two calls: write it afresh.
        None => {
            bpf_sys::update(fd, &key, &fresh, bpf_sys::BPF_ANY)?;
            Ok(Authorization::New)
        }
    }
}

pub(super) fn renew_entry<const N: usize>(
    map: &mut HostMap<N>,
    key: [u8; N],
    seen: u64,
    new: u64,
) -> Result<bool, MapError> {
    match map.get(&key, 0) {
        Ok(old) if old.expires_ns == seen && old.flags & FLAG_WHITELISTED == 0 => {
            map.insert(
                key,
                HostValue {
                    expires_ns: new,
                    ..old
                },
                0,
            )?;
            Ok(true)
        }
        Ok(_) | Err(MapError::KeyNotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

pub(super) fn remove_entry<const N: usize>(
    map: &mut HostMap<N>,
    key: [u8; N],
    seen: u64,
) -> Result<bool, MapError> {
    match map.get(&key, 0) {
        Ok(old) if old.expires_ns == seen && old.flags & FLAG_WHITELISTED == 0 => {
            match map.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => Ok(true),
                Err(e) => Err(e),
            }
        }
        Ok(_) | Err(MapError::KeyNotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every entry of a host map, fetched in batches (`bpf_sys::dump`); on a kernel that cannot
/// batch-read hash maps, key by key.
fn host_entries<const N: usize>(map: &HostMap<N>) -> Result<Vec<([u8; N], HostValue)>, MapError>
where
    [u8; N]: Default,
{
    match bpf_sys::dump(bpf_sys::fd_of(map)) {
        Ok(entries) => Ok(entries),
        Err(e) => {
            tracing::debug!("batched map read unavailable ({e}), reading key by key");
            map.iter().collect()
        }
    }
}

pub(super) fn collect_due<const N: usize>(
    map: &HostMap<N>,
    horizon_ns: u64,
    out: &mut Vec<HostState>,
) -> Result<(), MapError>
where
    IpAddr: From<[u8; N]>,
    [u8; N]: Default,
{
    for (key, value) in host_entries(map)? {
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

/// Removes every authorization (not the whitelisted entries) and the recorded names.
pub(super) fn clear_authorized(hosts: &mut HostMaps) -> Result<(), EbpfError> {
    let keys4: Vec<[u8; 4]> = host_entries(&hosts.v4)
        .map_err(|e| map_error(MAP_HOSTS_V4, "read", e))?
        .into_iter()
        .filter(|(_, v)| v.flags & FLAG_WHITELISTED == 0)
        .map(|(k, _)| k)
        .collect();
    for key in keys4 {
        let _ = hosts.v4.remove(&key);
    }
    let keys6: Vec<[u8; 16]> = host_entries(&hosts.v6)
        .map_err(|e| map_error(MAP_HOSTS_V6, "read", e))?
        .into_iter()
        .filter(|(_, v)| v.flags & FLAG_WHITELISTED == 0)
        .map(|(k, _)| k)
        .collect();
    for key in keys6 {
        let _ = hosts.v6.remove(&key);
    }
    let names: Vec<[u8; 16]> = hosts.names.keys().filter_map(Result::ok).collect();
    for key in names {
        let _ = hosts.names.remove(&key);
    }
    Ok(())
}

/// Live authorized hosts, with their recorded names when `names` is given.
pub(super) fn collect_authorized(
    v4: &HostMap<4>,
    v6: &HostMap<16>,
    names: Option<&NameMap>,
) -> Result<Vec<(AuthorizedHost, Option<String>)>, MapError> {
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
    for (key, value) in host_entries(v4)? {
        push(IpAddr::from(key), value);
    }
    for (key, value) in host_entries(v6)? {
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
            flag_host(&mut hosts.v4, ip.octets(), whitelisted).map_err(|e| (MAP_HOSTS_V4, e))
        }
        IpAddr::V6(ip) => {
            flag_host(&mut hosts.v6, ip.octets(), whitelisted).map_err(|e| (MAP_HOSTS_V6, e))
        }
    };
    result.map_err(|(name, e)| map_error(name, format!("cannot update whitelisted host {host}"), e))
}

fn flag_host<const N: usize>(
    map: &mut HostMap<N>,
    key: [u8; N],
    whitelisted: bool,
) -> Result<(), MapError> {
    if !whitelisted {
        return match map.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e),
        };
    }
    let flags = match map.get(&key, 0) {
        Ok(old) => old.flags | FLAG_WHITELISTED,
        Err(MapError::KeyNotFound) => FLAG_WHITELISTED,
        Err(e) => return Err(e),
    };
    // Whitelisted entries never expire.
    map.insert(
        key,
        HostValue {
            expires_ns: 0,
            flags,
            ..HostValue::default()
        },
        0,
    )
}

/// Removes the whitelist-only entries of `map` that `policy` no longer lists (an entry that is
/// also authorized keeps its authorization).
fn remove_stale_whitelisted<const N: usize>(map: &mut HostMap<N>, policy: &Policy)
where
    IpAddr: From<[u8; N]>,
{
    let stale: Vec<[u8; N]> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| {
            v.flags == FLAG_WHITELISTED && !policy.whitelist_hosts.contains(&IpAddr::from(*k))
        })
        .map(|(k, _)| k)
        .collect();
    for key in stale {
        let _ = map.remove(&key);
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
