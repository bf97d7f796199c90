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

/// How far an answer may move an authorized host's deadline without a write: an answer within
/// this of the deadline already stored leaves the entry as it is. Answers for a busy name come
/// many times a second, and on a hash map each rewrite is a system call that allocates and swaps
/// a whole element; the deadline is read by the sweeper, which runs at most once a second.
pub(super) const RENEW_SLACK_NS: u64 = 1_000_000_000;

/// Writes an authorization, keeping the flags already present; a whitelisted entry, or an
/// authorized one whose deadline already reaches the new one (within [`RENEW_SLACK_NS`]; 0 =
/// never expires), is left as it is. Runs under the *shared* host-map lock (concurrent answers
/// write at once; each element operation is atomic), so it works on the store directly.
pub(super) fn upsert<const N: usize>(
    map: &impl HostStore<N>,
    key: [u8; N],
    expires_ns: u64,
) -> io::Result<Authorization> {
    let fresh = HostValue {
        expires_ns,
        flags: FLAG_AUTHORIZED,
        ..HostValue::default()
    };
    // One read settles the common case, a renewal that changes nothing; a host not in the map
    // is written only if absent, so a concurrent answer for it is not overwritten blindly.
    let Some(old) = map.get(key)? else {
        return match map.put(key, &fresh, true) {
            Ok(()) => Ok(Authorization::New),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => renew(map, key, expires_ns),
            Err(e) => Err(e),
        };
    };
    renew_from(map, key, old, expires_ns)
}

/// [`upsert`] for a host another writer inserted meanwhile.
fn renew<const N: usize>(
    map: &impl HostStore<N>,
    key: [u8; N],
    expires_ns: u64,
) -> io::Result<Authorization> {
    match map.get(key)? {
        Some(old) => renew_from(map, key, old, expires_ns),
        // Gone again between the two calls: write it afresh.
        None => {
            let fresh = HostValue {
                expires_ns,
                flags: FLAG_AUTHORIZED,
                ..HostValue::default()
            };
            map.put(key, &fresh, false)?;
            Ok(Authorization::New)
        }
    }
}

/// Moves the deadline of the present entry `old` of `key` to `expires_ns`, keeping its flags and
/// last use, unless [`upsert`] leaves it as it is.
fn renew_from<const N: usize>(
    map: &impl HostStore<N>,
    key: [u8; N],
    old: HostValue,
    expires_ns: u64,
) -> io::Result<Authorization> {
    if old.flags & FLAG_WHITELISTED != 0 {
        return Ok(Authorization::Already);
    }
    let live = old.is_live(boottime_ns());
    let reaches = match (old.expires_ns, expires_ns) {
        (0, _) => expires_ns == 0,
        (_, 0) => false,
        (old, new) => old >= new.saturating_sub(RENEW_SLACK_NS),
    };
    if old.flags & FLAG_AUTHORIZED == 0 || !reaches {
        let renewed = HostValue {
            expires_ns,
            last_seen_ns: old.last_seen_ns,
            flags: old.flags | FLAG_AUTHORIZED,
            _pad: 0,
        };
        map.put(key, &renewed, false)?;
    }
    Ok(if live {
        Authorization::Already
    } else {
        Authorization::New
    })
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// The in-memory IPv4 table, counting writes.
    struct Counting {
        table: HostTable,
        puts: Cell<u32>,
    }

    impl HostStore<4> for Counting {
        fn get(&self, key: [u8; 4]) -> io::Result<Option<HostValue>> {
            HostStore::get(&self.table, key)
        }
        fn put(&self, key: [u8; 4], value: &HostValue, only_new: bool) -> io::Result<()> {
            self.puts.set(self.puts.get() + 1);
            HostStore::put(&self.table, key, value, only_new)
        }
        fn delete(&self, key: [u8; 4]) -> io::Result<bool> {
            HostStore::delete(&self.table, key)
        }
        fn entries(&self) -> io::Result<Vec<([u8; 4], HostValue)>> {
            HostStore::entries(&self.table)
        }
    }

    const S: u64 = 1_000_000_000;

    /// A renewal that would move the deadline by less than the slack, or keep "never", writes
    /// nothing; one that moves it further, or a new host, writes once; a whitelisted host is
    /// never written.
    #[test]
    fn renewals_within_the_slack_write_nothing() {
        let store = Counting {
            table: HostTable::in_memory(64, 3),
            puts: Cell::new(0),
        };
        let host = [192, 0, 2, 1];
        let now = boottime_ns();
        let deadline = |k: [u8; 4]| store.get(k).unwrap().unwrap().expires_ns;

        assert!(matches!(
            upsert(&store, host, now + 60 * S).unwrap(),
            Authorization::New
        ));
        assert_eq!(store.puts.get(), 1);
        let first = deadline(host);
        assert!(matches!(
            upsert(&store, host, now + 60 * S + S / 2).unwrap(),
            Authorization::Already
        ));
        assert_eq!(store.puts.get(), 1, "within the slack: no write");
        assert_eq!(deadline(host), first);
        upsert(&store, host, now + 65 * S).unwrap();
        assert_eq!(store.puts.get(), 2, "past the slack: written");
        assert!(deadline(host) >= now + 65 * S);
        upsert(&store, host, 0).unwrap();
        assert_eq!(store.puts.get(), 3, "a deadline to never: written");
        assert_eq!(deadline(host), 0);
        upsert(&store, host, 0).unwrap();
        assert_eq!(store.puts.get(), 3, "never to never: no write");
        upsert(&store, host, now + 60 * S).unwrap();
        assert_eq!(store.puts.get(), 4, "never to a deadline: written");

        let listed = [192, 0, 2, 2];
        let whitelisted = HostValue {
            flags: FLAG_WHITELISTED,
            ..HostValue::default()
        };
        HostStore::put(&store.table, listed, &whitelisted, false).unwrap();
        upsert(&store, listed, now + 60 * S).unwrap();
        assert_eq!(store.puts.get(), 4, "whitelisted: left alone");
        assert_eq!(store.get(listed).unwrap().unwrap().flags, FLAG_WHITELISTED);
    }
}
