//! The authorizations in the host table: written by DNS answers (`upsert`), renewed and removed
//! by the sweeper with a compare-and-set on the deadline, revoked by a reload, listed, and cleared
//! at exit. Callers hold the backend's host-map lock, so each function is atomic with respect to
//! the DNS path and the sweeper.

use std::{io, net::IpAddr};

use nettrust_common::{FLAG_AUTHORIZED, FLAG_WHITELISTED, HostValue, MAP_HOSTS_V4, MAP_HOSTS_V6};

use super::{
    host_table::{HostMaps, HostStore, name_key},
    ipv4_table::HostTable,
    pins,
    types::{EbpfError, HostMap, NameMap, map_error},
};
use crate::firewall::{Authorization, AuthorizedHost, HostState, Scope, boottime_ns};

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

/// Moves the deadline of `key` from `seen` to `new` unless it changed meanwhile (or the host is
/// whitelisted); whether it did.
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

/// Removes `key` if its deadline is still `seen` (and it is not whitelisted); whether it did.
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

/// Appends the authorizations of `map` due at or before `horizon_ns` to `out`.
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
                scope: Scope::DEFAULT,
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
                    scope: Scope::DEFAULT,
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
