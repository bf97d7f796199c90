//! The host table as the rest of the backend sees it: one [`HostStore`] interface over the IPv4
//! table `HOSTS_V4` ([`HostTable`], memory-mapped, no system call per operation) and the IPv6
//! hash map `HOSTS_V6` (element commands from [`super::syscalls`], atomic per element in the
//! kernel), and [`HostMaps`], the maps the DNS path and the sweeper write behind one lock.

use std::{
    hash::Hash,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use nettrust_common::HostValue;

use super::{
    ipv4_table::HostTable,
    syscalls,
    types::{HostMap, NameMap},
};
use crate::firewall::Scope;

/// A host map as the functions of the backend see it: `HOSTS_V6` (a kernel hash map, element
/// operations by system call) or the memory-mapped IPv4 table `HOSTS_V4`. Callers hold the
/// host-map lock where a sequence of operations must not interleave.
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
        syscalls::lookup(syscalls::fd_of(self), &key)
    }

    fn put(&self, key: [u8; 16], value: &HostValue, only_new: bool) -> io::Result<()> {
        let flags = if only_new {
            syscalls::BPF_NOEXIST
        } else {
            syscalls::BPF_ANY
        };
        syscalls::update(syscalls::fd_of(self), &key, value, flags)
    }

    fn delete(&self, key: [u8; 16]) -> io::Result<bool> {
        syscalls::delete(syscalls::fd_of(self), &key)
    }

    /// Fetched in batches ([`syscalls::hash_entries`]).
    fn entries(&self) -> io::Result<Vec<([u8; 16], HostValue)>> {
        syscalls::hash_entries(self)
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

/// A host map key as eviction sees it: the address it opens, and the scope whose share of the
/// map it uses (the host maps hold the default scope's only).
pub(super) trait PoolKey: Copy + Eq + Hash + std::fmt::Debug {
    /// The address.
    fn addr(&self) -> IpAddr;
    /// The scope.
    fn scope(&self) -> Scope;
}

impl PoolKey for [u8; 4] {
    fn addr(&self) -> IpAddr {
        Ipv4Addr::from(*self).into()
    }

    fn scope(&self) -> Scope {
        Scope::DEFAULT
    }
}

impl PoolKey for [u8; 16] {
    fn addr(&self) -> IpAddr {
        Ipv6Addr::from(*self).into()
    }

    fn scope(&self) -> Scope {
        Scope::DEFAULT
    }
}

/// The maps written on the DNS path and by the sweeper, behind one read-write lock: DNS answers
/// authorize under the shared lock (each element operation is atomic, so answers never wait for
/// each other); the compare-and-set of the sweeper (renew_if, remove_if), reloads and exit take
/// it exclusively, so a renewal by DNS can never be lost to a removal.
pub(super) struct HostMaps {
    /// `HOSTS_V4`.
    pub(super) v4: Arc<HostTable>,
    /// `HOSTS_V6`.
    pub(super) v6: HostMap<16>,
    /// `NAMES`.
    pub(super) names: NameMap,
}

/// Key of the `NAMES` map: IPv6, or IPv4 as IPv4-mapped IPv6.
pub(super) fn name_key(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
        IpAddr::V6(ip) => ip.octets(),
    }
}
