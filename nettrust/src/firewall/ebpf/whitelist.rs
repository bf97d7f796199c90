//! The whitelists in the maps: whitelisted hosts in the host table (flag `FLAG_WHITELISTED`,
//! deadline 0) and networks in `NETS_V4/V6`, written at start before anything is attached, with
//! the entries a previous run left that the policy no longer lists removed, and changed by a
//! reload (with the services and blocked networks of [`super::services`]).

use std::{io, net::IpAddr, path::Path};

use aya::maps::{Map, MapError, lpm_trie::Key};
use ipnet::IpNet;
use nettrust_common::{
    FLAG_WHITELISTED, HostValue, MAP_BLOCKED_V4, MAP_BLOCKED_V6, MAP_HOSTS_V4, MAP_HOSTS_V6,
    MAP_NETS_V4, MAP_NETS_V6, MAP_SERVICES,
};

use super::{
    adopt::open_pinned,
    host_table::{HostMaps, HostStore},
    services::{ServiceMap, stale_networks, sync_blocked, sync_services},
    types::{EbpfError, NetTrie, map_error},
};
use crate::firewall::Policy;

/// Writes the whitelists and removes whitelist entries a previous run left that the current
/// policy no longer has.
pub(super) fn install_policy(
    hosts: &mut HostMaps,
    nets_v4: &mut NetTrie<4>,
    nets_v6: &mut NetTrie<16>,
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
        set_network(nets_v4, nets_v6, net, true)?;
    }
    // Entries removed from the configuration are removed from enforcement, as in the original.
    remove_stale_whitelisted(&*hosts.v4, policy);
    remove_stale_whitelisted(&hosts.v6, policy);
    remove_stale_networks(nets_v4, &policy.whitelist_networks);
    remove_stale_networks(nets_v6, &policy.whitelist_networks);
    Ok(())
}

/// Adds (`allow`) or removes a whitelisted network.
pub(super) fn set_network(
    v4: &mut NetTrie<4>,
    v6: &mut NetTrie<16>,
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
/// from the config" meaning "no longer reachable", as in the original.
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
fn remove_stale_networks<const N: usize>(trie: &mut NetTrie<N>, networks: &[IpNet])
where
    IpAddr: From<[u8; N]>,
    [u8; N]: aya::Pod,
{
    for key in stale_networks(trie, networks) {
        let _ = trie.remove(&key);
    }
}

/// Makes the whitelists, services and blocked networks of `current` those of `new` (a SIGHUP
/// reload), under the exclusive host-map lock (`hosts`). New entries are added before old ones
/// are removed, so a destination on both lists is never dropped in between.
pub(super) fn reload(
    pin_dir: &Path,
    hosts: &mut HostMaps,
    current: &Policy,
    new: &Policy,
) -> Result<(), EbpfError> {
    let mut nets_v4: NetTrie<4> = open_pinned(pin_dir, MAP_NETS_V4, Map::LpmTrie)?;
    let mut nets_v6: NetTrie<16> = open_pinned(pin_dir, MAP_NETS_V6, Map::LpmTrie)?;
    let added = |new: &[IpNet], old: &[IpNet]| -> Vec<IpNet> {
        new.iter().filter(|n| !old.contains(n)).copied().collect()
    };
    for net in added(&new.whitelist_networks, &current.whitelist_networks) {
        set_network(&mut nets_v4, &mut nets_v6, &net, true)?;
    }
    for host in new
        .whitelist_hosts
        .iter()
        .filter(|h| !current.whitelist_hosts.contains(h))
    {
        set_host_whitelisted(hosts, *host, true)?;
    }
    for net in added(&current.whitelist_networks, &new.whitelist_networks) {
        set_network(&mut nets_v4, &mut nets_v6, &net, false)?;
    }
    for host in current
        .whitelist_hosts
        .iter()
        .filter(|h| !new.whitelist_hosts.contains(h))
    {
        set_host_whitelisted(hosts, *host, false)?;
    }
    if new.services != current.services {
        let mut map: ServiceMap = open_pinned(pin_dir, MAP_SERVICES, Map::HashMap)?;
        sync_services(&mut map, &new.services)?;
    }
    if new.blocked != current.blocked {
        let mut v4: NetTrie<4> = open_pinned(pin_dir, MAP_BLOCKED_V4, Map::LpmTrie)?;
        let mut v6: NetTrie<16> = open_pinned(pin_dir, MAP_BLOCKED_V6, Map::LpmTrie)?;
        sync_blocked(&mut v4, &mut v6, &new.blocked)?;
    }
    Ok(())
}
