//! The `live_tcp` program (nettrust-ebpf's `sockops` module) from userspace: loading and pinning
//! it, attaching it to each filtered cgroup through a pinned bpf_link next to the `cgroup_skb`
//! ones (`link-live_tcp-<id>`), and reading the established TCP connections it records in
//! `LIVE_TCP_SCOPED` for the sweeper: each with the scope of the socket's own cgroup, so a
//! connection renews only the grant of its own policy.
//!
//! Why `sock_ops` rather than conntrack or a TCP socket iterator: conntrack tracks nothing in a
//! network namespace without ct-using rules, and a socket iterator walks only the network
//! namespace it is created in, so a container's connections would be missed; a `sock_ops` program
//! on the cgroup sees exactly the sockets of the filtered processes, in every namespace, and the
//! kernel reports their establishment and their close, daemon running or not.

use std::{
    collections::HashSet,
    fs::File,
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    sync::Mutex,
};

use crate::firewall::{Grant, Scope};

use aya::{
    Ebpf,
    maps::{HashMap as AyaHashMap, Map, MapData},
    programs::{CgroupAttachMode, SockOps},
};
use nettrust_common::{LiveTcp, MAP_LIVE_TCP, MAP_LIVE_TCP_CGROUP, PROGRAM_SOCKOPS};

use super::{
    adopt::open_pinned,
    pins, syscalls,
    types::{EbpfError, map_error, program_error},
};

/// `LIVE_TCP_SCOPED` from userspace: socket cookie → connection.
pub(super) type LiveMap = AyaHashMap<MapData, u64, LiveTcp>;

/// `BPF_CGROUP_SOCK_OPS`, part of a cgroup storage key.
const BPF_CGROUP_SOCK_OPS: u32 = aya_obj::generated::bpf_attach_type::BPF_CGROUP_SOCK_OPS as u32;

/// The `LIVE_TCP_CGROUP` of the program this daemon loaded and pinned: the daemon tags the
/// cgroups it attaches (also after the privilege drop, when opening a map by id, which needs
/// `CAP_SYS_ADMIN`, is no longer possible) through it.
static OWN_STORAGE: Mutex<Option<MapData>> = Mutex::new(None);

fn program(ebpf: &mut Ebpf) -> Result<&mut SockOps, EbpfError> {
    super::types::program_mut(ebpf, PROGRAM_SOCKOPS)
}

/// Loads the program and pins it (`prog-live_tcp`), replacing a previous run's pin.
pub(super) fn load_and_pin(ebpf: &mut Ebpf, dir: &Path) -> Result<(), EbpfError> {
    let Some(Map::CgroupStorage(storage)) = ebpf.take_map(MAP_LIVE_TCP_CGROUP) else {
        return Err(map_error(
            MAP_LIVE_TCP_CGROUP,
            "missing from the object",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    };
    *OWN_STORAGE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(storage);
    let program = program(ebpf)?;
    program.load().map_err(|source| {
        program_error(format!("{PROGRAM_SOCKOPS} rejected by the kernel"), source)
    })?;
    pins::pin_program(dir, PROGRAM_SOCKOPS, |tmp| program.pin(tmp))
}

/// Attaches the loaded program to `cgroup` (`path`, id `id`) and pins the link, replacing a
/// previous run's link for that cgroup once the new one is attached.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    cgroup: &File,
    dir: &Path,
    path: &Path,
    id: u64,
) -> Result<(), EbpfError> {
    attach_program(program(ebpf)?, cgroup, dir, path, id)
}

/// Attaches the pinned program (`nettrust attach`, a recreated cgroup). A directory pinned by a
/// nettrust without it is left as it is: the cgroup is filtered, only this liveness signal is
/// missing until the daemon restarts.
pub(super) fn attach_pinned(
    cgroup: &File,
    dir: &Path,
    path: &Path,
    id: u64,
) -> Result<(), EbpfError> {
    let pin = pins::program_pin(dir, PROGRAM_SOCKOPS);
    if !pin.exists() {
        tracing::warn!(
            "{} missing: connections of {} are not tracked until nettrust restarts",
            pin.display(),
            path.display()
        );
        return Ok(());
    }
    let mut program = SockOps::from_pin(&pin).map_err(|source| {
        program_error(
            format!("{PROGRAM_SOCKOPS}: cannot open {}", pin.display()),
            source,
        )
    })?;
    attach_program(&mut program, cgroup, dir, path, id)
}

fn attach_program(
    program: &mut SockOps,
    cgroup: &File,
    dir: &Path,
    path: &Path,
    id: u64,
) -> Result<(), EbpfError> {
    // A bpf_link coexists with other programs on the cgroup, like the `cgroup_skb` links.
    pins::link_cgroup(dir, PROGRAM_SOCKOPS, id, path, || {
        let link_id = program
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(|e| ("attach to", e))?;
        program
            .take_link(link_id)
            .map_err(|e| ("take the link of", e))
    })?;
    tag_cgroup(program, id)
}

/// Writes the cgroup's id into the storage of its attachment, for the program to copy into each
/// connection it records. Connections established between the attach and this write carry 0.
///
/// The storage map is the program's own, found through the program (it is not pinned): each
/// start loads a new one with the program, so no kernel needs to share a cgroup storage map
/// between two loaded programs (Linux 5.9+).
fn tag_cgroup(program: &SockOps, id: u64) -> Result<(), EbpfError> {
    // `struct bpf_cgroup_storage_key { __u64 cgroup_inode_id; __u32 attach_type; }`, padded (the
    // padding must be zero, so the key is written as bytes rather than as the struct).
    let mut key = [0u8; size_of::<aya_obj::generated::bpf_cgroup_storage_key>()];
    key[..8].copy_from_slice(&id.to_ne_bytes());
    key[8..12].copy_from_slice(&BPF_CGROUP_SOCK_OPS.to_ne_bytes());
    let write = |map: &MapData| {
        syscalls::update(map.fd().as_fd().as_raw_fd(), &key, &id, 0)
            .map_err(|e| map_error(MAP_LIVE_TCP_CGROUP, format!("cannot tag cgroup {id}"), e))
    };
    if let Some(own) = &*OWN_STORAGE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        return write(own);
    }
    let not_found = |what: String| {
        map_error(
            MAP_LIVE_TCP_CGROUP,
            what,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    };
    let ids = program
        .info()
        .and_then(|info| info.map_ids())
        .map_err(|source| {
            program_error(format!("{PROGRAM_SOCKOPS}: cannot read its maps"), source)
        })?
        .unwrap_or_default();
    let map = ids
        .into_iter()
        .filter_map(|map_id| MapData::from_id(map_id).ok())
        .find(|map| {
            map.info()
                .is_ok_and(|info| info.name_as_str() == Some(MAP_LIVE_TCP_CGROUP))
        })
        .ok_or_else(|| not_found(format!("not among the maps of {PROGRAM_SOCKOPS}")))?;
    write(&map)
}

/// Opens the pinned `LIVE_TCP_SCOPED` map.
pub(super) fn open_live(dir: &Path) -> Result<LiveMap, EbpfError> {
    open_pinned(dir, MAP_LIVE_TCP, Map::HashMap)
}

/// The established connections recorded in `map` by the cgroups in `linked`, as the grants they
/// keep alive: the scope of the connecting task's cgroup and the remote address (IPv4-mapped
/// addresses as IPv4, as the egress program judges them). Handshakes under way are skipped;
/// entries of other cgroups (detached or removed while they held connections, so their close is
/// never reported) are removed.
pub(super) fn live_hosts(map: &LiveMap, linked: &[u64]) -> Result<HashSet<Grant>, EbpfError> {
    let entries =
        syscalls::hash_entries(map).map_err(|e| map_error(MAP_LIVE_TCP, "cannot read", e))?;
    let mut live = HashSet::new();
    for (cookie, entry) in entries {
        match connection(&entry, linked) {
            Connection::Live(grant) => {
                live.insert(grant);
            }
            Connection::Connecting => {}
            Connection::Orphaned => {
                let _ = syscalls::delete(syscalls::fd_of(map), &cookie);
            }
        }
    }
    Ok(live)
}

/// What a recorded connection says.
#[derive(Debug, PartialEq, Eq)]
enum Connection {
    /// Established: it keeps this grant alive.
    Live(Grant),
    /// Its handshake is under way: not liveness yet.
    Connecting,
    /// Its cgroup is no longer filtered: its close will never be reported.
    Orphaned,
}

fn connection(entry: &LiveTcp, linked: &[u64]) -> Connection {
    // 0: recorded in the instant between the attach and the tag.
    if entry.attach_cgroup != 0 && !linked.contains(&entry.attach_cgroup) {
        return Connection::Orphaned;
    }
    if entry.established == 0 {
        return Connection::Connecting;
    }
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&entry.remote[0].to_ne_bytes());
    addr[8..].copy_from_slice(&entry.remote[1].to_ne_bytes());
    Connection::Live(Grant::new(Scope(entry.scope), remote(addr)))
}

/// A recorded remote address as the host maps key it.
fn remote(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_are_ipv4() {
        let v4: IpAddr = "192.0.2.11".parse().unwrap();
        let IpAddr::V4(ip) = v4 else { unreachable!() };
        assert_eq!(remote(ip.to_ipv6_mapped().octets()), v4);
        let v6: Ipv6Addr = "2001:db8:1::11".parse().unwrap();
        assert_eq!(remote(v6.octets()), IpAddr::V6(v6));
    }

    fn entry(addr: Ipv6Addr, attach_cgroup: u64, scope: u32, established: u32) -> LiveTcp {
        let o = addr.octets();
        let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap());
        LiveTcp {
            remote: [word(&o[..8]), word(&o[8..])],
            attach_cgroup,
            scope,
            established,
        }
    }

    #[test]
    fn a_connection_keeps_the_grant_of_its_own_scope() {
        let v4: std::net::Ipv4Addr = "192.0.2.11".parse().unwrap();
        let mapped = v4.to_ipv6_mapped();
        assert_eq!(
            connection(&entry(mapped, 7, 3, 1), &[7]),
            Connection::Live(Grant::new(Scope(3), IpAddr::V4(v4)))
        );
        // Not yet tagged: still counted.
        assert!(matches!(
            connection(&entry(mapped, 0, 0, 1), &[7]),
            Connection::Live(_)
        ));
        // A handshake under way is not use yet, and is kept.
        assert_eq!(
            connection(&entry(mapped, 7, 3, 0), &[7]),
            Connection::Connecting
        );
        // A cgroup no longer filtered: dropped.
        assert_eq!(
            connection(&entry(mapped, 7, 3, 1), &[8]),
            Connection::Orphaned
        );
    }
}
