//! Flow records from the data path: the `FLOWS` ring buffer carries a [`FlowRecord`] per new
//! outbound flow of a filtered cgroup (allowed, denied, audited; see nettrust-ebpf's
//! `counters::record_flow`); this task drains it, logs each at debug level as `[Flow] VERDICT
//! cgroup=PATH pid=PID comm=COMMAND dst=ADDR port=P proto=N reason=WHY` and keeps the last
//! [`KEPT`] in memory ([`FlowLog`]).

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use super::{
    denied_events::{PolicyNames, drain, policy_name},
    types::CgroupMap,
};
use aya::maps::{MapData, RingBuf};
use nettrust_common::{
    FLOW_ALLOWED, FLOW_AT_CONNECT, FLOW_AUDITED, FlowRecord, STAT_ALLOW_HOST,
    STAT_ALLOW_INBOUND_REPLY, STAT_ALLOW_NET, STAT_AUDIT, STAT_DROP, STAT_DROP_EXPIRED,
};

/// Records kept in memory.
pub const KEPT: usize = 10_000;

/// The last [`KEPT`] flow records, oldest first, shared with whoever reads them.
pub type FlowLog = Arc<Mutex<VecDeque<FlowRecord>>>;

/// Parses one ring-buffer record (`None` for a short one).
pub fn parse_flow(bytes: &[u8]) -> Option<FlowRecord> {
    if bytes.len() < size_of::<FlowRecord>() {
        return None;
    }
    // SAFETY: the length is checked and FlowRecord is plain data of any bit pattern.
    Some(unsafe { bytes.as_ptr().cast::<FlowRecord>().read_unaligned() })
}

/// The destination of a record.
fn destination(record: &FlowRecord) -> IpAddr {
    if record.family == 4 {
        IpAddr::from([
            record.addr[0],
            record.addr[1],
            record.addr[2],
            record.addr[3],
        ])
    } else {
        IpAddr::from(record.addr)
    }
}

/// Why the data path decided as it did, from the record's `STAT_*` reason.
pub fn reason(record: &FlowRecord) -> &'static str {
    match u32::from(record.reason) {
        STAT_ALLOW_HOST => "host",
        STAT_ALLOW_NET => "network",
        STAT_ALLOW_INBOUND_REPLY => "inbound-reply",
        STAT_AUDIT => "audit",
        STAT_DROP_EXPIRED => "expired-grant",
        STAT_DROP => "no-grant",
        _ => "other",
    }
}

/// The log line of a record; `cgroup` and `policy` name its cgroup and scope.
pub fn describe(record: &FlowRecord, cgroup: &str, policy: &str) -> String {
    let verdict = match record.verdict {
        FLOW_ALLOWED => "allowed",
        FLOW_AUDITED => "audited",
        _ => "denied",
    };
    let comm_len = record.comm.iter().position(|&b| b == 0).unwrap_or(16);
    let comm = String::from_utf8_lossy(&record.comm[..comm_len]);
    let at = if record.flags & FLOW_AT_CONNECT != 0 {
        " at=connect"
    } else {
        ""
    };
    format!(
        "[Flow] {verdict} cgroup={cgroup} policy={policy} pid={} comm={comm} dst={} port={} proto={} reason={}{at}",
        record.pid,
        destination(record),
        record.remote_port,
        record.proto,
        reason(record)
    )
}

/// Spawns the task draining `ring` into `log`; `cgroups` maps cgroup ids to paths, `names`
/// scopes to policy names.
pub(super) fn spawn(
    ring: RingBuf<MapData>,
    cgroups: Option<CgroupMap>,
    names: PolicyNames,
    log: FlowLog,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    drain(ring, cgroups, parse_flow, move |record, paths| {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let policy = policy_name(&names, record.scope);
            let path = paths.path(record.cgroup_id);
            tracing::debug!("{}", describe(&record, path, &policy));
        }
        let mut kept = log.lock().expect("flow log poisoned");
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(record);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_like_the_log() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[203, 0, 113, 7]);
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let record = FlowRecord {
            time_ns: 1,
            cgroup_id: 42,
            addr,
            remote_port: 443,
            local_port: 40000,
            proto: 6,
            family: 4,
            verdict: nettrust_common::FLOW_DENIED,
            reason: STAT_DROP as u8,
            scope: 0,
            pid: 1234,
            flags: FLOW_AT_CONNECT,
            _pad: [0; 7],
            comm,
        };
        assert_eq!(
            describe(&record, "/sys/fs/cgroup/app", "default"),
            "[Flow] denied cgroup=/sys/fs/cgroup/app policy=default pid=1234 comm=curl dst=203.0.113.7 port=443 proto=6 reason=no-grant at=connect"
        );
        // SAFETY: plain data, read back as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const record).cast::<u8>(), size_of::<FlowRecord>())
        };
        assert_eq!(parse_flow(bytes), Some(record));
        assert_eq!(parse_flow(&bytes[..10]), None);
    }
}
