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
//!   chain allowlist {
//!     ct direction reply ct state established,related accept   # replies to inbound connections
//!     icmpv6 type 130-137 accept ; icmpv6 type 143 accept   # NDP and MLD
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
//! Everything is looked up by name *inside this table only*; other tables — including chains
//! named `input` or `authorized-output` in them — are never read or written. The table is created
//! without the `owner` flag, so it outlives the process (fail closed after `kill -9`).

mod expr;
mod layout;
pub mod netlink;

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use self::{
    layout::{Whitelist, elements_msg, install_batch, sets, table_msg},
    netlink::{MsgType, NFPROTO_INET, NetlinkError, Socket},
};
use super::{
    Authorization, AuthorizedHost, Firewall, FirewallError, HostState, Policy, boottime_ns,
};

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

#[derive(Debug)]
struct Inner {
    socket: Socket,
    whitelist: Whitelist,
    /// What we wrote into the authorized sets: address → deadline (0 = never). The kernel expires
    /// elements on its own; this only decides `New` vs `Already`.
    authorized: HashMap<IpAddr, u64>,
    stopped: bool,
}

/// The nftables backend.
#[derive(Debug)]
pub struct NftablesFirewall {
    inner: Mutex<Inner>,
}

impl NftablesFirewall {
    /// Installs the table with its whitelists, sets and chains in one batch, in the network
    /// namespace of the calling thread.
    pub fn start(options: &Options, policy: &Policy) -> Result<Self, NftablesError> {
        let scopes = match &options.mode {
            Mode::Forward => None,
            Mode::Output { cgroups } => {
                let root = crate::cgroup::cgroup2_mount().map_err(|e| NftablesError::Cgroup {
                    path: PathBuf::from("/"),
                    source: e.into(),
                })?;
                let matches = cgroups
                    .iter()
                    .map(|cgroup| cgroup_match(&root, cgroup))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(matches)
            }
        };
        let whitelist = Whitelist::new(policy);
        let mut socket = Socket::open().map_err(NftablesError::Socket)?;
        socket
            .batch(NFPROTO_INET, &install_batch(&scopes, options, &whitelist))
            .map_err(NftablesError::Install)?;
        tracing::info!(
            table = TABLE,
            mode = ?options.mode,
            drop_input = options.drop_input,
            "nftables firewall installed"
        );
        Ok(Self {
            inner: Mutex::new(Inner {
                socket,
                whitelist,
                authorized: HashMap::new(),
                stopped: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Authorizes every address of one DNS answer in a single batch (one kernel transaction, one
    /// acknowledgement round trip). Returns once the kernel enforces all of them.
    ///
    /// Each family's elements are written as `add; delete; add` in the same transaction: the
    /// first add makes sure the element exists, so the delete cannot fail, and the final add
    /// carries the new timeout — a renewal then works on every kernel (re-adding an element only
    /// updates its timeout since Linux 6.10).
    pub fn authorize_many(
        &self,
        addrs: &[IpAddr],
        expires_ns: u64,
    ) -> Result<Vec<Authorization>, FirewallError> {
        let Some(&first) = addrs.first() else {
            return Ok(Vec::new());
        };
        let mut inner = self.lock();
        let now = boottime_ns();
        let timeout_ms =
            (expires_ns != 0).then(|| expires_ns.saturating_sub(now).div_ceil(1_000_000).max(1));
        let mut results = Vec::with_capacity(addrs.len());
        let mut keys: [Vec<Vec<u8>>; 2] = Default::default();
        for &addr in addrs {
            if inner.whitelist.host_addrs.contains(&addr) {
                results.push(Authorization::Already);
                continue;
            }
            let live = inner
                .authorized
                .get(&addr)
                .is_some_and(|&d| d == 0 || d > now);
            results.push(if live {
                Authorization::Already
            } else {
                Authorization::New
            });
            let key = netlink::addr_key(addr);
            if !keys[usize::from(addr.is_ipv6())].contains(&key) {
                keys[usize::from(addr.is_ipv6())].push(key);
            }
        }
        let mut msgs = Vec::new();
        for v6 in [false, true] {
            let set = sets(v6)[2];
            let keys = &keys[usize::from(v6)];
            let plain = || keys.iter().map(|k| (k.clone(), 0, None));
            msgs.extend(elements_msg(MsgType::NewSetElem, set, plain()));
            msgs.extend(elements_msg(MsgType::DelSetElem, set, plain()));
            msgs.extend(elements_msg(
                MsgType::NewSetElem,
                set,
                keys.iter().map(|k| (k.clone(), 0, timeout_ms)),
            ));
        }
        if msgs.is_empty() {
            return Ok(results);
        }
        inner
            .socket
            .batch(NFPROTO_INET, &msgs)
            .map_err(|e| FirewallError::Authorize {
                addr: first,
                source: Box::new(e),
            })?;
        for &addr in addrs {
            if !inner.whitelist.host_addrs.contains(&addr) {
                inner.authorized.insert(addr, expires_ns);
            }
        }
        Ok(results)
    }

    /// Deletes the table (only `inet net-trust`; nothing else is looked at). Idempotent.
    pub fn stop(&self) -> Result<(), NftablesError> {
        let mut inner = self.lock();
        if inner.stopped {
            return Ok(());
        }
        inner
            .socket
            .batch(NFPROTO_INET, &[table_msg(MsgType::DelTable)])
            .map_err(NftablesError::Delete)?;
        inner.stopped = true;
        inner.authorized.clear();
        tracing::info!(table = TABLE, "nftables firewall removed");
        Ok(())
    }
}

/// The elements of `authorized4` and `authorized6`, with their deadlines (`CLOCK_BOOTTIME`).
fn dump_authorized(socket: &mut Socket) -> Result<Vec<AuthorizedHost>, NetlinkError> {
    let now = boottime_ns();
    let mut out = Vec::new();
    for v6 in [false, true] {
        for e in socket.dump_set(NFPROTO_INET, TABLE, sets(v6)[2])? {
            let Some(addr) = netlink::key_addr(&e.key) else {
                continue;
            };
            let expires_ns = e
                .expires_in_ms
                .map_or(0, |ms| now.saturating_add(ms.saturating_mul(1_000_000)));
            out.push(AuthorizedHost { addr, expires_ns });
        }
    }
    Ok(out)
}

/// The authorized hosts of the `inet net-trust` table in the caller's network namespace, read by
/// another process than the daemon (for `nettrust list`/`status` with this backend).
pub fn list_authorized() -> Result<Vec<AuthorizedHost>, NetlinkError> {
    dump_authorized(&mut Socket::open()?)
}

impl Firewall for NftablesFirewall {
    fn authorize(&self, addr: IpAddr, expires_ns: u64) -> Result<Authorization, FirewallError> {
        Ok(self.authorize_many(&[addr], expires_ns)?[0])
    }

    /// The kernel expires set elements itself (element timeouts); the sweeper only needs the
    /// candidates for renewal. nftables keeps no last-seen time, so liveness comes from conntrack
    /// (which this backend's ruleset makes track every flow).
    fn due(&self, horizon_ns: u64) -> Result<Vec<HostState>, FirewallError> {
        let inner = self.lock();
        Ok(inner
            .authorized
            .iter()
            .filter(|&(_, &expires_ns)| expires_ns != 0 && expires_ns <= horizon_ns)
            .map(|(&addr, &expires_ns)| HostState {
                addr,
                expires_ns,
                last_seen_ns: 0,
            })
            .collect())
    }

    fn renew_if(
        &self,
        addr: IpAddr,
        seen_expires_ns: u64,
        new_expires_ns: u64,
    ) -> Result<bool, FirewallError> {
        // The daemon is the only writer of the set and DNS renewals go through the same
        // in-memory deadline: compare it, then re-add the element with the new timeout.
        if self.lock().authorized.get(&addr) != Some(&seen_expires_ns) {
            return Ok(false);
        }
        self.authorize_many(&[addr], new_expires_ns)?;
        Ok(true)
    }

    fn remove_if(&self, addr: IpAddr, seen_expires_ns: u64) -> Result<bool, FirewallError> {
        let mut inner = self.lock();
        if inner.authorized.get(&addr) != Some(&seen_expires_ns) {
            return Ok(false);
        }
        let set = sets(addr.is_ipv6())[2];
        let msgs = elements_msg(
            MsgType::DelSetElem,
            set,
            std::iter::once((netlink::addr_key(addr), 0, None)),
        );
        // An element the kernel already expired is gone: deleting it fails harmlessly.
        let _ = inner.socket.batch(NFPROTO_INET, &msgs);
        inner.authorized.remove(&addr);
        Ok(true)
    }

    fn authorized(&self) -> Result<Vec<AuthorizedHost>, FirewallError> {
        let mut inner = self.lock();
        let out =
            dump_authorized(&mut inner.socket).map_err(|e| FirewallError::Read(Box::new(e)))?;
        // Forget what the kernel has expired.
        let present: BTreeSet<IpAddr> = out.iter().map(|h| h.addr).collect();
        inner.authorized.retain(|a, _| present.contains(a));
        Ok(out)
    }

    fn set_whitelist(&self, policy: &Policy) -> Result<(), FirewallError> {
        let mut inner = self.lock();
        let new = Whitelist::new(policy);
        let old = &inner.whitelist;
        let mut msgs = Vec::new();
        for v6 in [false, true] {
            let family = usize::from(v6);
            let [hosts, nets, _] = sets(v6);
            // Hosts: a plain diff. Within one atomic batch the order does not matter to packets.
            msgs.extend(elements_msg(
                MsgType::NewSetElem,
                hosts,
                new.hosts[family]
                    .difference(&old.hosts[family])
                    .map(|k| (k.clone(), 0, None)),
            ));
            msgs.extend(elements_msg(
                MsgType::DelSetElem,
                hosts,
                old.hosts[family]
                    .difference(&new.hosts[family])
                    .map(|k| (k.clone(), 0, None)),
            ));
            // Networks: interval boundaries depend on the merge, so the set is rewritten as a
            // whole (old elements deleted, new ones added) when anything changed.
            if old.ranges[family] != new.ranges[family] {
                let flags = |end: bool| if end { netlink::elem::INTERVAL_END } else { 0 };
                msgs.extend(elements_msg(
                    MsgType::DelSetElem,
                    nets,
                    old.ranges[family]
                        .iter()
                        .map(|(k, end)| (k.clone(), flags(*end), None)),
                ));
                msgs.extend(elements_msg(
                    MsgType::NewSetElem,
                    nets,
                    new.ranges[family]
                        .iter()
                        .map(|(k, end)| (k.clone(), flags(*end), None)),
                ));
            }
        }
        if !msgs.is_empty() {
            inner
                .socket
                .batch(NFPROTO_INET, &msgs)
                .map_err(|e| FirewallError::Whitelist(Box::new(e)))?;
        }
        inner.whitelist = new;
        Ok(())
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
