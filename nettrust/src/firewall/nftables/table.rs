//! The table as another process finds it (`nettrust list`, `status`, `flush`, the metrics):
//! read or deleted through a socket of its own, whether a daemon runs or not.

use super::{
    INPUT_CHAIN, NftablesError, POLICY_CHAIN, TABLE,
    authorized::dump_authorized,
    layout::{sets, table_msg},
    lock::{daemon_running, ensure_no_daemon},
    netlink::{MsgType, NFPROTO_INET, NetlinkError, Socket},
    policies::grant_set_scope,
};
use crate::firewall::AuthorizedHost;

/// What `nettrust status` shows of the table in the caller's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStatus {
    /// Whether a daemon holds the namespace's nftables lock.
    pub daemon_running: bool,
    /// Authorized hosts (live elements of the authorized sets).
    pub authorized: usize,
    /// Whitelisted hosts.
    pub whitelisted_hosts: usize,
    /// Whether the `input` chain of `--firewall-drop-input` exists.
    pub drop_input: bool,
    /// Packets rejected: TCP (reset) and other (ICMP admin-prohibited).
    pub rejected: (u64, u64),
}

/// Whether `inet net-trust` exists in the caller's network namespace.
pub fn table_present() -> Result<bool, NetlinkError> {
    Socket::open()?.table_exists(NFPROTO_INET, TABLE)
}

/// The authorized hosts of the table in the caller's network namespace with the name that
/// authorized each, read by another process than the daemon (`nettrust list`).
pub fn list_authorized() -> Result<Vec<(AuthorizedHost, Option<String>)>, NetlinkError> {
    dump_authorized(&mut Socket::open()?)
}

/// The names of the policies whose grant sets the table in the caller's network namespace holds,
/// by scope number (the sets' comments).
pub fn policy_names() -> Result<std::collections::HashMap<u32, String>, NetlinkError> {
    let sets = Socket::open()?.set_names(NFPROTO_INET, TABLE)?;
    Ok(sets
        .into_iter()
        .filter_map(|(set, comment)| Some((grant_set_scope(&set)?, comment?)))
        .filter(|(scope, _)| !scope.is_default())
        .map(|(scope, name)| (scope.0, name))
        .collect())
}

/// The table's state for `nettrust status`; `None` when the table does not exist.
pub fn status() -> Result<Option<TableStatus>, NetlinkError> {
    let mut socket = Socket::open()?;
    if !socket.table_exists(NFPROTO_INET, TABLE)? {
        return Ok(None);
    }
    let authorized = dump_authorized(&mut socket)?.len();
    let mut whitelisted_hosts = 0;
    for v6 in [false, true] {
        whitelisted_hosts += socket.dump_set(NFPROTO_INET, TABLE, sets(v6)[0])?.len();
    }
    // The two reject rules end the chain (the drop rules before them count too).
    let rejected = match socket.chain_counters(NFPROTO_INET, TABLE, POLICY_CHAIN)?[..] {
        [.., tcp, other] => (tcp, other),
        _ => (0, 0),
    };
    let drop_input = !socket
        .chain_counters(NFPROTO_INET, TABLE, INPUT_CHAIN)?
        .is_empty();
    Ok(Some(TableStatus {
        daemon_running: daemon_running(),
        authorized,
        whitelisted_hosts,
        drop_input,
        rejected,
    }))
}

/// The table's packet counters in the layout of the eBPF `STATS` map (for the metrics endpoint):
/// rejected packets count as `STAT_DROP`; the accept rules carry no counters. `None` when the
/// table does not exist.
pub fn egress_stats() -> Result<Option<[u64; nettrust_common::STAT_COUNT as usize]>, NetlinkError> {
    let mut socket = Socket::open()?;
    let counters = socket.chain_counters(NFPROTO_INET, TABLE, POLICY_CHAIN)?;
    if counters.is_empty() {
        return Ok(None);
    }
    let mut stats = [0u64; nettrust_common::STAT_COUNT as usize];
    stats[nettrust_common::STAT_DROP as usize] = counters.iter().sum();
    Ok(Some(stats))
}

/// Deletes `inet net-trust` in the caller's network namespace (`nettrust flush`); refuses while a
/// daemon owns it. Returns whether there was a table.
pub fn flush() -> Result<bool, NftablesError> {
    ensure_no_daemon()?;
    let mut socket = Socket::open().map_err(NftablesError::Socket)?;
    if !socket
        .table_exists(NFPROTO_INET, TABLE)
        .map_err(NftablesError::Delete)?
    {
        return Ok(false);
    }
    socket
        .batch(NFPROTO_INET, &[table_msg(MsgType::DelTable)])
        .map_err(NftablesError::Delete)?;
    Ok(true)
}
