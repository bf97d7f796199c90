//! The table as another process finds it (`nettrust list`, `status`, `flush`, the metrics):
//! read or deleted through a socket of its own, whether a daemon runs or not.

use super::{
    FILTER_CHAIN, INPUT_CHAIN, NftablesError, POLICY_CHAIN, TABLE,
    authorized::dump_authorized,
    layout::{sets, table_msg},
    lock::{daemon_running, ensure_no_daemon},
    netlink::{MsgType, NFPROTO_INET, NetlinkError, Socket},
    policies::{chain, chain_scope, grant_set_scope},
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
    /// The policies the table enforces (empty without `[[policy]]`), by scope.
    pub policies: Vec<TablePolicy>,
}

/// One policy as the table holds it: its grant sets (named `scope_N_v4/6`, the policy's name in
/// their comment), its chain and the base chain's rules that send its cgroups there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePolicy {
    /// The policy's name (its scope number if the sets carry none).
    pub name: String,
    pub scope: u32,
    /// Audit mode: its chain ends by logging and accepting.
    pub audit: bool,
    /// Live grants (both families).
    pub grants: usize,
    /// Packets its chain let through in audit mode, or rejected in enforce mode.
    pub counted: u64,
    /// The ids of its listed cgroups.
    pub cgroups: Vec<u64>,
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
    let policies = table_policies(&mut socket)?;
    Ok(Some(TableStatus {
        daemon_running: daemon_running(),
        authorized,
        whitelisted_hosts,
        drop_input,
        rejected,
        policies,
    }))
}

/// The policies of the table, read from its sets and chains.
fn table_policies(socket: &mut Socket) -> Result<Vec<TablePolicy>, NetlinkError> {
    let mut policies: Vec<TablePolicy> = Vec::new();
    for (set, comment) in socket.set_names(NFPROTO_INET, TABLE)? {
        let Some(scope) = grant_set_scope(&set).filter(|s| !s.is_default()) else {
            continue;
        };
        let grants = socket.dump_set(NFPROTO_INET, TABLE, &set)?.len();
        if let Some(known) = policies.iter_mut().find(|p| p.scope == scope.0) {
            known.grants += grants;
            continue;
        }
        let rules = socket.chain_rules(NFPROTO_INET, TABLE, &chain(scope))?;
        let audit = rules.iter().any(|r| r.logs);
        // Audit: the counted accept that ends the chain; enforce: the counted rejects.
        let counted = if audit {
            rules.iter().rev().find_map(|r| r.packets).unwrap_or(0)
        } else {
            rules
                .iter()
                .filter(|r| r.rejects)
                .filter_map(|r| r.packets)
                .sum()
        };
        policies.push(TablePolicy {
            name: comment.unwrap_or_else(|| scope.0.to_string()),
            scope: scope.0,
            audit,
            grants,
            counted,
            cgroups: Vec::new(),
        });
    }
    if policies.is_empty() {
        return Ok(policies);
    }
    for rule in socket.chain_rules(NFPROTO_INET, TABLE, FILTER_CHAIN)? {
        let Some(scope) = rule.target.as_deref().and_then(chain_scope) else {
            continue;
        };
        let ids = rule
            .compared
            .iter()
            .filter_map(|v| Some(u64::from_ne_bytes(v.as_slice().try_into().ok()?)));
        if let Some(policy) = policies.iter_mut().find(|p| p.scope == scope.0) {
            policy.cgroups.extend(ids);
        }
    }
    policies.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(policies)
}

/// The table's packet counters in the layout of the eBPF `STATS` map (for the metrics endpoint):
/// rejected packets (of the default chain and the policies' chains) count as `STAT_DROP`, what
/// an audited policy let through as `STAT_AUDIT`; the other accept rules carry no counters. `None` when the
/// table does not exist.
pub fn egress_stats() -> Result<Option<[u64; nettrust_common::STAT_COUNT as usize]>, NetlinkError> {
    let mut socket = Socket::open()?;
    let counters = socket.chain_counters(NFPROTO_INET, TABLE, POLICY_CHAIN)?;
    if counters.is_empty() {
        return Ok(None);
    }
    let mut stats = [0u64; nettrust_common::STAT_COUNT as usize];
    stats[nettrust_common::STAT_DROP as usize] = counters.iter().sum();
    // The policies' chains: their rejects are drops too; what audit mode let through is counted
    // as the eBPF program counts it.
    for policy in table_policies(&mut socket)? {
        let stat = if policy.audit {
            nettrust_common::STAT_AUDIT
        } else {
            nettrust_common::STAT_DROP
        };
        stats[stat as usize] += policy.counted;
    }
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
