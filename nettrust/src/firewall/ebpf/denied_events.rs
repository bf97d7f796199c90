//! Denied egress made visible: the egress program sends a rate-limited [`DeniedEvent`] per dropped
//! packet (and per packet a policy in audit mode let through) through the `DENIED` ring buffer;
//! this task logs each as `[Denied] cgroup PATH -> ADDR port P proto N` (with ` policy=NAME`
//! for a policy's cgroup, and ` (connect refused)` for a TCP `connect` the `connect` programs
//! refused) or `[Audit] cgroup=PATH policy=NAME dst=ADDR port=P proto=N` (the
//! per-cgroup totals are the in-kernel `DROPS` and `AUDITS` counters).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock},
};

use aya::maps::{MapData, RingBuf};
use nettrust_common::{DeniedEvent, EVENT_AUDIT, EVENT_CONNECT};
use tokio::io::unix::AsyncFd;

use super::{pins, types::CgroupMap};

/// The names of the policies by scope, for the log lines (a scope without a name is shown as its
/// number); shared between the daemon, which rewrites it on reload, and the event task.
pub type PolicyNames = Arc<RwLock<HashMap<u32, String>>>;

/// Parses one ring-buffer record (`None` for a short one).
pub fn parse_denied(bytes: &[u8]) -> Option<DeniedEvent> {
    if bytes.len() < size_of::<DeniedEvent>() {
        return None;
    }
    // SAFETY: DeniedEvent is plain data; read_unaligned copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DeniedEvent>()) })
}

/// The destination of an event as an address.
pub fn destination(event: &DeniedEvent) -> IpAddr {
    if event.family == 4 {
        IpAddr::from([event.addr[0], event.addr[1], event.addr[2], event.addr[3]])
    } else {
        IpAddr::from(event.addr)
    }
}

/// The log line of an event; `policy` names the event's scope (0 is the default policy).
pub fn describe(event: &DeniedEvent, cgroup: &str, policy: &str) -> String {
    let proto = match event.proto {
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        1 => "icmp".to_owned(),
        58 => "icmpv6".to_owned(),
        other => other.to_string(),
    };
    let (dst, port) = (destination(event), event.port);
    if event.flags & EVENT_AUDIT != 0 {
        return format!(
            "[Audit] cgroup={cgroup} policy={policy} dst={dst} port={port} proto={proto}"
        );
    }
    let policy = if event.scope == 0 {
        String::new()
    } else {
        format!(" policy={policy}")
    };
    let at_connect = if event.flags & EVENT_CONNECT != 0 {
        " (connect refused)"
    } else {
        ""
    };
    format!("[Denied] cgroup {cgroup} -> {dst} port {port} proto {proto}{policy}{at_connect}")
}

/// The name of `scope` in `names`, or its number.
pub(super) fn policy_name(names: &PolicyNames, scope: u32) -> String {
    names
        .read()
        .ok()
        .and_then(|names| names.get(&scope).cloned())
        .unwrap_or_else(|| scope.to_string())
}

/// Spawns the task draining `ring`; `cgroups` maps cgroup ids to paths, `names` scopes to
/// policy names.
pub(super) fn spawn(
    ring: RingBuf<MapData>,
    cgroups: Option<CgroupMap>,
    names: PolicyNames,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    drain(ring, cgroups, parse_denied, move |event, paths| {
        let policy = policy_name(&names, u32::from(event.scope));
        let path = paths.path(event.cgroup_id);
        tracing::info!("{}", describe(&event, path, &policy));
    })
}

/// The paths of the cgroups records name, read from `CGROUPS` once per cgroup.
pub(super) struct CgroupPaths {
    map: Option<CgroupMap>,
    paths: HashMap<u64, String>,
}

impl CgroupPaths {
    /// The path of cgroup `id`, or `id N` when `CGROUPS` does not hold it.
    pub(super) fn path(&mut self, id: u64) -> &str {
        let map = &self.map;
        self.paths.entry(id).or_insert_with(|| {
            map.as_ref()
                .and_then(|m| m.get(&id, 0).ok())
                .map(|p| pins::unpadded(&p.path))
                .unwrap_or_else(|| format!("id {id}"))
        })
    }
}

/// Spawns a task draining `ring`: each record `parse` reads goes to `handle` with the cgroup
/// paths of `cgroups` (read only for the records that ask).
pub(super) fn drain<T: 'static>(
    ring: RingBuf<MapData>,
    cgroups: Option<CgroupMap>,
    parse: fn(&[u8]) -> Option<T>,
    mut handle: impl FnMut(T, &mut CgroupPaths) + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    // SAFETY: the ring buffer owns its map fd and keeps it open until the AsyncFd (which owns the
    // ring buffer) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }?;
    Ok(tokio::spawn(async move {
        let mut paths = CgroupPaths {
            map: cgroups,
            paths: HashMap::new(),
        };
        loop {
            let Ok(mut guard) = ring.readable_mut().await else {
                return;
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if let Some(record) = parse(&item) {
                    handle(record, &mut paths);
                }
            }
            guard.clear_ready();
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_like_the_log() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[203, 0, 113, 7]);
        let event = DeniedEvent {
            cgroup_id: 42,
            addr,
            port: 8080,
            proto: 6,
            family: 4,
            scope: 0,
            flags: 0,
        };
        assert_eq!(
            describe(&event, "/sys/fs/cgroup/app", "0"),
            "[Denied] cgroup /sys/fs/cgroup/app -> 203.0.113.7 port 8080 proto tcp"
        );
        let v6 = DeniedEvent {
            addr: "2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            family: 6,
            proto: 17,
            port: 53,
            ..event
        };
        assert_eq!(destination(&v6), "2001:db8::1".parse::<IpAddr>().unwrap());
        let refused = DeniedEvent {
            flags: EVENT_CONNECT,
            ..event
        };
        assert_eq!(
            describe(&refused, "/sys/fs/cgroup/app", "0"),
            "[Denied] cgroup /sys/fs/cgroup/app -> 203.0.113.7 port 8080 proto tcp (connect refused)"
        );
    }

    #[test]
    fn policy_events_name_their_policy() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[198, 51, 100, 9]);
        let denied = DeniedEvent {
            cgroup_id: 7,
            addr,
            port: 443,
            proto: 6,
            family: 4,
            scope: 2,
            flags: 0,
        };
        let names = PolicyNames::default();
        names.write().unwrap().insert(2, "ci".to_owned());
        let name = policy_name(&names, 2);
        assert_eq!(
            describe(&denied, "/sys/fs/cgroup/ci", &name),
            "[Denied] cgroup /sys/fs/cgroup/ci -> 198.51.100.9 port 443 proto tcp policy=ci"
        );
        let audit = DeniedEvent {
            flags: EVENT_AUDIT,
            ..denied
        };
        assert_eq!(
            describe(&audit, "/sys/fs/cgroup/ci", &name),
            "[Audit] cgroup=/sys/fs/cgroup/ci policy=ci dst=198.51.100.9 port=443 proto=tcp"
        );
        assert_eq!(policy_name(&names, 3), "3");
    }

    #[test]
    fn short_records_are_ignored() {
        assert!(parse_denied(&[0u8; 8]).is_none());
        assert!(parse_denied(&[0u8; 32]).is_some());
    }
}
