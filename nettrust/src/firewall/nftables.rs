//! The nftables backend: one `inet net-trust` table, written over netlink in atomic batches.
//!
//! Layout (names kept from the original where they make sense, one set per family):
//!
//! ```text
//! table inet net-trust {
//!   set whitelist4      { type ipv4_addr; }                    # hosts
//!   set whitelist6      { type ipv6_addr; }
//!   set whitelist-net4  { type ipv4_addr; flags interval; }    # networks
//!   set whitelist-net6  { type ipv6_addr; flags interval; }
//!   set authorized4     { type ipv4_addr; flags timeout; }     # DNS answers, kernel-expired
//!   set authorized6     { type ipv6_addr; flags timeout; }
//!   set blocked4        { type ipv4_addr; flags interval; }    # blacklisted hosts/networks
//!   set blocked6        { type ipv6_addr; flags interval; }
//!   chain allowlist {
//!     ip option lsrr exists drop ; ip option ssrr exists drop  # source-routed: the destination
//!     exthdr rt seg-left != 0 drop                            # is only the first hop
//!     ct direction reply ip daddr @blocked4 drop ; … ip6 daddr @blocked6 drop
//!     ct direction reply ct state established,related accept   # replies to inbound connections
//!     icmpv6 type 130-137 ip6 daddr fe80::/10 accept ; … ip6 daddr ff00::/8 accept  # NDP, MLD
//!     icmpv6 type 143 ip6 daddr fe80::/10 accept ; … ip6 daddr ff00::/8 accept
//!     ip6 daddr ff02::1:2 udp dport 547 accept                 # DHCPv6
//!     ip daddr 192.0.2.53 udp dport 53 accept ; … tcp dport 53  # each upstream: its port only
//!     ip daddr @whitelist-net4 accept ; ip6 daddr @whitelist-net6 accept
//!     ip daddr @whitelist4 accept     ; ip6 daddr @whitelist6 accept
//!     ip daddr @authorized4 accept    ; ip6 daddr @authorized6 accept
//!     meta l4proto tcp counter reject with tcp reset
//!     counter reject with icmpx admin-prohibited
//!   }
//!   chain authorized-output {            # hook output (or forward in gateway mode), policy accept
//!     socket cgroupv2 level L "<cgroup id>" goto allowlist  # one per --cgroup (level 0 for the
//!   }                                                     # root); unconditional in gateway mode
//!   chain input { … }                    # only with --firewall-drop-input: policy drop
//! }
//! ```
//!
//! With `[[policy]]` sections each policy adds its own sets and chain, and the base chain sends
//! each listed cgroup (deepest first) to the chain of its policy (see `policies`).
//!
//! Everything is looked up by name *inside this table only*; other tables — including chains
//! named `input` or `authorized-output` in them — are never read or written. The table is created
//! without the `owner` flag, so it outlives the process (fail closed after `kill -9`).

mod audit_log;
mod authorized;
mod clients;
mod expr;
mod firewall_impl;
mod layout;
mod lock;
pub mod netlink;
mod policies;
mod sockdiag;
mod table;

use std::{
    collections::HashMap,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use self::{
    authorized::dump_authorized,
    clients::Clients,
    layout::{Whitelist, table_msg},
    lock::{NsLock, take_lock},
    netlink::{Msg, MsgType, NFPROTO_INET, NetlinkError, Socket},
    policies::Policies,
};
pub use self::{
    lock::{LOCK_DIR, daemon_running, ensure_no_daemon},
    table::{
        TablePolicy, TableStatus, egress_stats, flush, list_authorized, policy_names, status,
        table_present,
    },
};
use super::{Authorization, ExitMode, FirewallError, Grant, Policy, Scope, Scopes};

/// The table nettrust owns.
pub const TABLE: &str = "net-trust";
/// The base chain filtering outgoing (or, in gateway mode, forwarded) traffic.
pub const FILTER_CHAIN: &str = "authorized-output";
/// The regular chain holding the policy rules, entered by `goto` from the base chain.
pub const POLICY_CHAIN: &str = "allowlist";
/// The base chain of `--firewall-drop-input`.
pub const INPUT_CHAIN: &str = "input";

/// Where the base chain hooks in and whose traffic it judges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Outgoing traffic of sockets in these cgroup v2 directories (the cgroup2 root = the whole
    /// host).
    Output {
        /// The filtered cgroups.
        cgroups: Vec<PathBuf>,
    },
    /// Traffic routed through this host (gateway mode, `--firewall-type forward`).
    Forward,
}

/// How the backend is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Hook and scope.
    pub mode: Mode,
    /// Add an `input` chain that drops inbound traffic other than loopback and replies.
    pub drop_input: bool,
}

/// Errors of the nftables backend.
#[derive(Debug, thiserror::Error)]
pub enum NftablesError {
    /// A configured cgroup cannot be matched by `socket cgroupv2`.
    #[error("cgroup {path}: cannot resolve it for nftables matching")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket to nf_tables")]
    Socket(#[source] NetlinkError),
    /// The table could not be installed.
    #[error("cannot create the nftables table inet {TABLE}")]
    Install(#[source] NetlinkError),
    /// The table could not be deleted.
    #[error("cannot delete the nftables table inet {TABLE}")]
    Delete(#[source] NetlinkError),
    /// Another nettrust daemon owns the table of this network namespace.
    #[error(
        "another nettrust daemon runs the nftables backend in this network namespace (stop it first)"
    )]
    Busy,
    /// The per-namespace lock could not be taken.
    #[error("cannot take the nftables lock in {LOCK_DIR}")]
    Lock(#[source] std::io::Error),
    /// `[[policy]]` sections with `--firewall-type forward`: forwarded packets have no socket
    /// cgroup to tell the policies apart.
    #[error("[[policy]] sections need the output firewall type: forwarded packets have no cgroup")]
    PoliciesInGatewayMode,
}

/// One `socket cgroupv2` match: the cgroup's depth below the cgroup2 root and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CgroupMatch {
    /// Depth below the cgroup2 root (0 = the root).
    level: u32,
    /// The cgroup id.
    id: u64,
}

/// Resolves `cgroup`, a directory of the cgroup2 filesystem mounted at `root`. The root itself
/// is level 0: it contains every process, and matching it (rather than every packet) keeps
/// packets without a socket — neighbour discovery, the kernel's own replies — unfiltered, as the
/// eBPF backend (attached to sockets' cgroups) does.
fn cgroup_match(root: &Path, cgroup: &Path) -> Result<CgroupMatch, NftablesError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| NftablesError::Cgroup {
        path: cgroup.to_owned(),
        source,
    };
    let root = root.canonicalize().map_err(|e| err(e.into()))?;
    let path = cgroup.canonicalize().map_err(|e| err(e.into()))?;
    let relative = path
        .strip_prefix(&root)
        .map_err(|_| err(format!("not below the cgroup2 mount {}", root.display()).into()))?;
    let level = u32::try_from(relative.components().count()).map_err(|e| err(e.into()))?;
    // The kernfs inode number of a cgroup directory is its cgroup id (cgroup_id(), 64-bit ino),
    // the value `socket cgroupv2` loads; the root's is 1.
    let id = std::fs::metadata(&path).map_err(|e| err(e.into()))?.ino();
    Ok(CgroupMatch { level, id })
}

/// The `socket cgroupv2` matches of the filtered cgroups (`None` in gateway mode: every packet).
fn filtered_cgroups(mode: &Mode) -> Result<Option<Vec<CgroupMatch>>, NftablesError> {
    let Mode::Output { cgroups } = mode else {
        return Ok(None);
    };
    let root = crate::cgroup::cgroup2_mount().map_err(|e| NftablesError::Cgroup {
        path: PathBuf::from("/"),
        source: e.into(),
    })?;
    let matches = cgroups
        .iter()
        .map(|cgroup| cgroup_match(&root, cgroup))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(matches))
}

/// One authorization this daemon wrote: its deadline (0 = never) and the name that asked.
#[derive(Debug, Clone)]
struct Held {
    expires_ns: u64,
    name: Option<Arc<str>>,
    /// When a DNS answer last named it (`CLOCK_BOOTTIME` ns; 0 = adopted from a previous run):
    /// the eviction order of a full set.
    answered_ns: u64,
}

#[derive(Debug)]
struct Inner {
    socket: Socket,
    scopes: Option<Vec<CgroupMatch>>,
    /// The `[[policy]]` scopes in force (none until [`crate::firewall::Firewall::set_scopes`]).
    policies: Policies,
    options: Options,
    whitelist: Whitelist,
    /// What we wrote into the authorized sets of every scope. The kernel expires elements on its
    /// own; this decides `New` vs `Already`, feeds the sweeper and rebuilds the table after a
    /// repair.
    authorized: HashMap<Grant, Held>,
    /// Grants of a policy scope adopted from a previous run's table, held until the policies are
    /// known: those of a scope that still exists are written again, the others forgotten.
    adopted_scoped: HashMap<Grant, Held>,
    /// Most authorizations of the default scope per family, and of every policy together
    /// (`max_hosts`, as the eBPF maps): a full set evicts idle ones before taking a new address.
    max_hosts: u32,
    stopped: bool,
}

/// The nftables backend.
#[derive(Debug)]
pub struct NftablesFirewall {
    inner: Mutex<Inner>,
    /// Which cgroup and policy sent a query (`NETLINK_SOCK_DIAG`): its own lock, so a lookup
    /// never waits for a batch.
    clients: Mutex<Clients>,
    /// The reader of the audited scopes' reports (started once an audited scope exists).
    audit: Mutex<audit_log::AuditLog>,
    /// Held for the daemon's lifetime: one nftables daemon per network namespace.
    _lock: NsLock,
}

impl NftablesFirewall {
    /// Installs the table with its whitelists, sets and chains in one batch, in the network
    /// namespace of the calling thread. Authorizations of a table left behind (`kill -9`,
    /// `do_not_flush_authorized_hosts`) are adopted with their remaining lifetime and names; the
    /// old table is replaced in the same transaction, so nothing unauthorized passes meanwhile.
    pub fn start(options: &Options, policy: &Policy) -> Result<Self, NftablesError> {
        Self::start_with_scopes(options, policy, &Scopes::default())
    }

    /// [`NftablesFirewall::start`] with the `[[policy]]` scopes in the same first batch: no
    /// moment where a policy's cgroups are judged by the default policy. Grants of a leftover
    /// table's scopes that still exist are adopted; without active scopes they wait for
    /// [`crate::firewall::Firewall::set_scopes`].
    pub fn start_with_scopes(
        options: &Options,
        policy: &Policy,
        scopes: &Scopes,
    ) -> Result<Self, NftablesError> {
        let policies = Policies::resolve(&options.mode, scopes)?;
        let filtered = filtered_cgroups(&options.mode)?;
        let lock = take_lock()
            .map_err(NftablesError::Lock)?
            .ok_or(NftablesError::Busy)?;
        let mut socket = Socket::open().map_err(NftablesError::Socket)?;
        let left_over = socket
            .table_exists(NFPROTO_INET, TABLE)
            .map_err(NftablesError::Install)?;
        let (adopted, adopted_scoped): (HashMap<Grant, Held>, _) = dump_authorized(&mut socket)
            .map_err(NftablesError::Install)?
            .into_iter()
            .map(|(host, name)| {
                let held = Held {
                    expires_ns: host.expires_ns,
                    name: name.map(Arc::from),
                    answered_ns: 0,
                };
                (host.grant(), held)
            })
            .partition(|(grant, _)| grant.scope.is_default());
        let mut inner = Inner {
            socket,
            scopes: filtered,
            policies,
            options: options.clone(),
            whitelist: Whitelist::new(policy),
            authorized: adopted,
            adopted_scoped,
            max_hosts: nettrust_common::DEFAULT_MAX_HOSTS,
            stopped: false,
        };
        if inner.policies.active {
            inner.adopt_scoped();
        }
        if left_over {
            tracing::info!(
                table = TABLE,
                authorizations = inner.authorized.len(),
                "adopting the table left by a previous run (replaced atomically)"
            );
        }
        inner.install().map_err(NftablesError::Install)?;
        tracing::info!(
            table = TABLE,
            mode = ?options.mode,
            drop_input = options.drop_input,
            adopted = inner.authorized.len(),
            "nftables firewall installed"
        );
        let mut clients = Clients::open();
        clients.set_policies(&inner.policies);
        clients.set_listen(&scopes.listeners);
        let firewall = Self {
            inner: Mutex::new(inner),
            clients: Mutex::new(clients),
            audit: Mutex::new(audit_log::AuditLog::open()),
            _lock: lock,
        };
        firewall.follow_audits(&firewall.lock().policies);
        Ok(firewall)
    }

    /// Holds at most `max_hosts` authorizations of the default scope per family, and as many of
    /// every policy together (default [`nettrust_common::DEFAULT_MAX_HOSTS`], as the eBPF maps);
    /// beyond, idle ones are evicted (`authorized`).
    pub fn set_max_hosts(&self, max_hosts: u32) {
        self.lock().max_hosts = max_hosts.max(1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Authorizes every address of one DNS answer in a single batch (one kernel transaction, one
    /// acknowledgement round trip) in the default scope. Returns once the kernel enforces all
    /// of them.
    pub fn authorize_many(
        &self,
        addrs: &[IpAddr],
        expires_ns: u64,
        name: Option<&str>,
    ) -> Result<Vec<Authorization>, FirewallError> {
        let mut inner = self.lock();
        inner.write(Scope::DEFAULT, addrs, expires_ns, name)
    }

    /// Packets of audited scopes reported so far (what enforcement would have dropped, within
    /// the rules' rate limit).
    pub fn audited_packets(&self) -> u64 {
        self.audit().reported()
    }

    /// Starts reading the audit reports once `policies` has an audited scope.
    fn follow_audits(&self, policies: &Policies) {
        if policies.scopes.values().any(|rules| rules.audit) {
            self.audit().start();
        }
    }

    fn audit(&self) -> std::sync::MutexGuard<'_, audit_log::AuditLog> {
        self.audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, Clients> {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Re-installs the table if someone deleted it while the daemon runs (`nft delete table`,
    /// `nft flush ruleset`), or if a filtered cgroup was removed and created again at the same
    /// path (a restarted service: `socket cgroupv2` matches the cgroup id, and the new cgroup has a
    /// new one), with the whitelists and every live authorization. Returns whether it had to.
    pub fn repair(&self) -> Result<bool, NftablesError> {
        let mut inner = self.lock();
        if inner.stopped {
            return Ok(false);
        }
        let mut reason = None;
        if let (Mode::Output { cgroups }, Some(scopes)) = (&inner.options.mode, &inner.scopes)
            && let Ok(root) = crate::cgroup::cgroup2_mount()
        {
            let mut current = scopes.clone();
            for (path, slot) in cgroups.iter().zip(current.iter_mut()) {
                match cgroup_match(&root, path) {
                    Ok(m) if m != *slot => {
                        tracing::error!(cgroup = %path.display(), "[Firewall Error] filtered cgroup was re-created; filtering the new one");
                        *slot = m;
                    }
                    Ok(_) => {}
                    // Gone: the rule matches nothing until a cgroup appears there again.
                    Err(_) => {}
                }
            }
            if current != *scopes {
                inner.scopes = Some(current);
                reason = Some("a filtered cgroup was re-created");
            }
        }
        if let Ok(root) = crate::cgroup::cgroup2_mount()
            && inner.policies.refresh(&root)
        {
            self.clients().set_policies(&inner.policies);
            reason = Some("a filtered cgroup was re-created");
        }
        if reason.is_none()
            && !inner
                .socket
                .table_exists(NFPROTO_INET, TABLE)
                .map_err(NftablesError::Install)?
        {
            tracing::error!(
                table = TABLE,
                "the nftables table was deleted behind nettrust's back; re-installing it"
            );
            reason = Some("the table was deleted");
        }
        let Some(reason) = reason else {
            return Ok(false);
        };
        tracing::info!(table = TABLE, reason, "re-installing the nftables table");
        inner.install().map_err(NftablesError::Install)?;
        Ok(true)
    }

    /// What stays when the daemon exits: everything is deleted (`FlushAll`), the table stays with
    /// empty authorized sets (`KeepPolicy`), or the table stays as it is (`KeepAll`). Only
    /// `inet net-trust` is ever touched. Idempotent.
    pub fn stop(&self, mode: ExitMode) -> Result<(), NftablesError> {
        let mut inner = self.lock();
        if inner.stopped {
            return Ok(());
        }
        let msgs = match mode {
            ExitMode::FlushAll => vec![table_msg(MsgType::DelTable)],
            // A DELSETELEM without elements flushes the set: every scope's authorized sets.
            ExitMode::KeepPolicy => std::iter::once(&Scope::DEFAULT)
                .chain(inner.policies.scopes.keys())
                .flat_map(|&scope| [false, true].map(|v6| policies::grant_set(scope, v6)))
                .map(|set| {
                    Msg::new(
                        MsgType::DelSetElem,
                        0,
                        netlink::Attrs::new()
                            .str(netlink::elem_list::TABLE, TABLE)
                            .str(netlink::elem_list::SET, &set),
                    )
                })
                .collect(),
            ExitMode::KeepAll => Vec::new(),
        };
        if !msgs.is_empty() {
            inner
                .socket
                .batch(NFPROTO_INET, &msgs)
                .map_err(NftablesError::Delete)?;
        }
        inner.stopped = true;
        inner.authorized.clear();
        self.audit().stop();
        tracing::info!(table = TABLE, ?mode, "nftables firewall stopped");
        Ok(())
    }
}

/// Re-installs the table whenever it disappears, until `cancel`.
pub async fn watch(
    firewall: Arc<NftablesFirewall>,
    every: std::time::Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {
                if let Err(e) = firewall.repair() {
                    tracing::error!("cannot repair the nftables table: {}", crate::error_chain(&e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_levels_count_from_the_mount() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        assert_eq!(cgroup_match(dir.path(), dir.path()).unwrap().level, 0);
        let m = cgroup_match(dir.path(), &dir.path().join("a/b")).unwrap();
        assert_eq!(m.level, 2);
        assert!(cgroup_match(&dir.path().join("a"), Path::new("/")).is_err());
    }
}
