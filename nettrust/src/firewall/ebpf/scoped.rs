//! The grants of the `[[policy]]` scopes (`GRANTS`), as the `Firewall` trait sees them: written by
//! DNS answers of a policy's clients, renewed and removed by the sweeper with the same
//! compare-and-set on the deadline as the default scope's host maps (`authorizations`), listed,
//! revoked by a reload. The default scope's grants stay in the host maps. A full `GRANTS` map
//! evicts like a full host map (`eviction`), through [`GrantStore`], every policy's grants as
//! one store, so each policy keeps its fair share of it (`crate::firewall::fair_share`).

use std::{
    io,
    net::{IpAddr, Ipv6Addr},
};

use nettrust_common::{FLAG_AUTHORIZED, HostValue, MAP_POLICY_OF, MAX_CGROUP_DEPTH};

use super::{
    authorizations,
    host_table::{HostStore, PoolKey},
    pins,
    scopes::{CgroupScope, ScopeMaps},
    syscalls::{BPF_ANY, BPF_NOEXIST},
    types::{EbpfError, map_error},
};
use crate::firewall::{AuthorizedHost, Grant, HostState, Scope, Scopes};

/// Writes `scopes` into the policy maps: the policies' names, the proxy's listeners, then each
/// listed cgroup's scope (by cgroup id, its directory's inode) and the policies' networks under a
/// new generation. Called before the programs are attached at start, and on each reload.
pub(super) fn write_scopes(maps: &ScopeMaps, scopes: &Scopes) -> Result<(), EbpfError> {
    let mount = crate::cgroup::cgroup2_mount().ok();
    let mut cgroups = Vec::with_capacity(scopes.cgroups.len());
    for c in &scopes.cgroups {
        if crate::cgroup::patterns::is_pattern(&c.path) {
            continue;
        }
        // The program looks for listed ancestors down to level MAX_CGROUP_DEPTH - 1 only: a
        // cgroup listed deeper would silently take a shallower cgroup's policy.
        let level = mount
            .as_ref()
            .and_then(|m| c.path.strip_prefix(m).ok())
            .map(|rel| rel.components().count());
        if level.is_some_and(|l| l >= MAX_CGROUP_DEPTH as usize) {
            return Err(map_error(
                MAP_POLICY_OF,
                format!(
                    "cgroup {} is {} levels deep; policies see at most {} levels",
                    c.path.display(),
                    level.unwrap_or_default(),
                    MAX_CGROUP_DEPTH - 1
                ),
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        }
        let id = pins::cgroup_id(&c.path)
            .map_err(|e| map_error(MAP_POLICY_OF, format!("cgroup {}", c.path.display()), e))?;
        cgroups.push(CgroupScope {
            cgroup_id: id,
            scope: c.scope.0,
            audit: c.audit,
        });
    }
    let nets: Vec<(u32, ipnet::IpNet)> = scopes.networks.iter().map(|(s, n)| (s.0, *n)).collect();
    maps.set_names(scopes.names.iter().map(|(s, n)| (s.0, n.clone())))?;
    let listeners: Vec<_> = scopes
        .listeners
        .iter()
        .map(|(addr, t)| (*addr, t.proto()))
        .collect();
    maps.set_listeners(&listeners)?;
    super::patterns::set_policies(maps, scopes, &cgroups, &nets)
}

/// One scope's grants as a [`HostStore`] keyed by 16-byte addresses (IPv4 as IPv4-mapped), so
/// the default scope's read-modify-write functions serve the policies' grants too.
pub(super) struct ScopeStore<'a> {
    pub maps: &'a ScopeMaps,
    pub scope: u32,
}

impl HostStore<16> for ScopeStore<'_> {
    fn get(&self, key: [u8; 16]) -> io::Result<Option<HostValue>> {
        self.maps.grant_get(self.scope, addr_of(key))
    }

    fn put(&self, key: [u8; 16], value: &HostValue, only_new: bool) -> io::Result<()> {
        let flags = if only_new { BPF_NOEXIST } else { BPF_ANY };
        self.maps.grant_put(self.scope, addr_of(key), value, flags)
    }

    fn delete(&self, key: [u8; 16]) -> io::Result<bool> {
        self.maps.grant_delete(self.scope, addr_of(key))
    }

    fn entries(&self) -> io::Result<Vec<([u8; 16], HostValue)>> {
        Ok(self
            .maps
            .grants()?
            .into_iter()
            .filter(|(scope, _, _)| *scope == self.scope)
            .map(|(_, addr, value)| (key_of(addr), value))
            .collect())
    }
}

/// The store key of `addr`.
pub(super) fn key_of(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address of a store key (IPv4-mapped keys are IPv4).
fn addr_of(key: [u8; 16]) -> IpAddr {
    Ipv6Addr::from(key).to_canonical()
}

/// Every policy's grants as one [`HostStore`], keyed by [`pool_key`]: the map a full `GRANTS`
/// evicts from, shared by the policies.
pub(super) struct GrantStore<'a>(pub &'a ScopeMaps);

/// The [`GrantStore`] key of `grant`: its scope (big-endian), then its address as a
/// [`ScopeStore`] key.
pub(super) fn pool_key(grant: Grant) -> [u8; 20] {
    let mut key = [0; 20];
    key[..4].copy_from_slice(&grant.scope.0.to_be_bytes());
    key[4..].copy_from_slice(&key_of(grant.addr));
    key
}

impl PoolKey for [u8; 20] {
    fn addr(&self) -> IpAddr {
        let mut addr = [0; 16];
        addr.copy_from_slice(&self[4..]);
        addr_of(addr)
    }

    fn scope(&self) -> Scope {
        Scope(u32::from_be_bytes([self[0], self[1], self[2], self[3]]))
    }
}

impl HostStore<20> for GrantStore<'_> {
    fn get(&self, key: [u8; 20]) -> io::Result<Option<HostValue>> {
        self.0.grant_get(key.scope().0, key.addr())
    }

    fn put(&self, key: [u8; 20], value: &HostValue, only_new: bool) -> io::Result<()> {
        let flags = if only_new { BPF_NOEXIST } else { BPF_ANY };
        self.0.grant_put(key.scope().0, key.addr(), value, flags)
    }

    fn delete(&self, key: [u8; 20]) -> io::Result<bool> {
        self.0.grant_delete(key.scope().0, key.addr())
    }

    fn entries(&self) -> io::Result<Vec<([u8; 20], HostValue)>> {
        Ok(self
            .0
            .grants()?
            .into_iter()
            .map(|(scope, addr, value)| (pool_key(Grant::new(Scope(scope), addr)), value))
            .collect())
    }
}

/// Renews (`Some(new)`) or removes (`None`) `grant` if its deadline is still `seen`.
pub(super) fn renew_or_remove(
    maps: &ScopeMaps,
    grant: Grant,
    seen: u64,
    new: Option<u64>,
) -> io::Result<bool> {
    let store = ScopeStore {
        maps,
        scope: grant.scope.0,
    };
    let key = key_of(grant.addr);
    match new {
        Some(new) => authorizations::renew_entry(&store, key, seen, new),
        None => authorizations::remove_entry(&store, key, seen),
    }
}

/// Every policy grant written by a DNS answer.
fn authorized_grants(maps: &ScopeMaps) -> io::Result<Vec<(Grant, HostValue)>> {
    Ok(maps
        .grants()?
        .into_iter()
        .filter(|(_, _, value)| value.flags & FLAG_AUTHORIZED != 0)
        .map(|(scope, addr, value)| (Grant::new(Scope(scope), addr), value))
        .collect())
}

/// Appends the policy grants due at or before `horizon_ns` to `out`.
pub(super) fn collect_due(
    maps: &ScopeMaps,
    horizon_ns: u64,
    out: &mut Vec<HostState>,
) -> io::Result<()> {
    for (grant, value) in authorized_grants(maps)? {
        if value.expires_ns != 0 && value.expires_ns <= horizon_ns {
            out.push(HostState {
                addr: grant.addr,
                scope: grant.scope,
                expires_ns: value.expires_ns,
                last_seen_ns: value.last_seen_ns,
            });
        }
    }
    Ok(())
}

/// Appends every policy grant to `out`.
pub(super) fn collect_authorized(
    maps: &ScopeMaps,
    out: &mut Vec<AuthorizedHost>,
) -> io::Result<()> {
    for (grant, value) in authorized_grants(maps)? {
        out.push(AuthorizedHost {
            addr: grant.addr,
            scope: grant.scope,
            expires_ns: value.expires_ns,
        });
    }
    Ok(())
}

/// Removes the policy grants for which `revoked(grant, its recorded name)` holds; appends them
/// to `out`.
pub(super) fn revoke(
    maps: &ScopeMaps,
    revoked: &dyn Fn(Grant, Option<&str>) -> bool,
    out: &mut Vec<Grant>,
) -> io::Result<()> {
    for (grant, _) in authorized_grants(maps)? {
        if revoked(grant, maps.grant_name(grant.scope.0, grant.addr).as_deref())
            && maps.grant_delete(grant.scope.0, grant.addr)?
        {
            out.push(grant);
        }
    }
    Ok(())
}
