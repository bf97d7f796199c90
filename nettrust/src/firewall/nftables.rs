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
    sync::{Arc, Mutex},
};

use self::{
    layout::{Elem, Whitelist, blocked_set, elements_msg, install_batch, sets, table_msg},
    netlink::{Msg, MsgType, NFPROTO_INET, NetlinkError, Socket},
};
use super::{
    Authorization, AuthorizedHost, ExitMode, Firewall, FirewallError, HostState, Policy,
    boottime_ns,
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
    /// Another nettrust daemon owns the table of this network namespace.
    #[error(
        "another nettrust daemon runs the nftables backend in this network namespace (stop it first)"
    )]
    Busy,
    /// The per-namespace lock could not be taken.
    #[error("cannot take the nftables lock in {LOCK_DIR}")]
    Lock(#[source] std::io::Error),
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
    options: Options,
    whitelist: Whitelist,
    /// What we wrote into the authorized sets. The kernel expires elements on its own; this
    /// decides `New` vs `Already`, feeds the sweeper and rebuilds the table after a repair.
    authorized: HashMap<IpAddr, Held>,
    /// Most authorizations per family (`max_hosts`, as the eBPF maps): a full set evicts idle
    /// ones before taking a new address.
    max_hosts: u32,
    stopped: bool,
}

/// The nftables backend.
#[derive(Debug)]
pub struct NftablesFirewall {
    inner: Mutex<Inner>,
    /// Held for the daemon's lifetime: one nftables daemon per network namespace.
    _lock: NsLock,
}

/// Where the per-namespace lock files live: created by root with mode 0700, so no other user
/// can create, open or lock them.
pub const LOCK_DIR: &str = "/run/nettrust";

/// The lock a daemon holds while it owns the table of its network namespace: an exclusive
/// `flock` on `LOCK_DIR/nftables-<netns inode>.lock` (mode 0600). The kernel releases it when
/// the process dies (also after `kill -9`), so it cannot go stale; unlike a name any user can
/// bind (an abstract unix socket), only root can take it.
#[derive(Debug)]
struct NsLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for NsLock {
    fn drop(&mut self) {
        // Removed while still locked: a process that opened the old file meanwhile sees on
        // locking that the path no longer names its file and opens it again (see `take`).
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The lock file of the calling thread's network namespace.
fn lock_path() -> std::io::Result<PathBuf> {
    let ns = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    Ok(Path::new(LOCK_DIR).join(format!("nftables-net{ns}.lock")))
}

/// Checks that `meta` (of `path`, not followed) is owned by this process's user and writable by
/// nobody else, and is a directory (`dir`) or a regular file.
fn check_owner(path: &Path, meta: &std::fs::Metadata, dir: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let kind_ok = if dir {
        meta.file_type().is_dir()
    } else {
        meta.file_type().is_file()
    };
    let mode = meta.permissions().mode() & 0o7777;
    if !kind_ok || meta.uid() != euid || mode & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} must be a {} owned by uid {euid} and writable by nobody else (found uid {}, mode {mode:o}); remove it and start again",
                path.display(),
                if dir { "directory" } else { "regular file" },
                meta.uid(),
            ),
        ));
    }
    Ok(())
}

fn try_flock(file: &std::fs::File, op: i32) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Takes the lock of the calling thread's network namespace: `Ok(None)` when another daemon
/// holds it.
fn take_lock() -> std::io::Result<Option<NsLock>> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = Path::new(LOCK_DIR);
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_owner(dir, &std::fs::symlink_metadata(dir)?, true)?;
    let path = lock_path()?;
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        check_owner(&path, &file.metadata()?, false)?;
        if !try_flock(&file, libc::LOCK_EX)? {
            return Ok(None);
        }
        // The previous holder may have removed the file between our open and our lock: then
        // the lock is on a file nobody else will find; open the path again.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.ino() == file.metadata()?.ino() => {
                return Ok(Some(NsLock { _file: file, path }));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether a nettrust daemon with the nftables backend runs in the caller's network namespace
/// (its lock is held); false also when that cannot be told (see [`ensure_no_daemon`]).
pub fn daemon_running() -> bool {
    lock_held().unwrap_or(false)
}

/// Fails with [`NftablesError::Busy`] while a daemon holds the lock of the caller's network
/// namespace, and with [`NftablesError::Lock`] when the lock file exists but cannot be checked
/// (a user other than root cannot open it): a lock it cannot read is not "no daemon", so nothing
/// may delete the table on that basis.
pub fn ensure_no_daemon() -> Result<(), NftablesError> {
    match lock_held() {
        Ok(false) => Ok(()),
        Ok(true) => Err(NftablesError::Busy),
        Err(e) => Err(NftablesError::Lock(e)),
    }
}

/// Whether the lock of the caller's network namespace is held; false when there is no lock file.
fn lock_held() -> std::io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = lock_path()?;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("cannot check {}: {e}", path.display()),
            ));
        }
    };
    if try_flock(&file, libc::LOCK_SH)? {
        use std::os::fd::AsRawFd as _;
        // SAFETY: unlocking our own descriptor.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        Ok(false)
    } else {
        Ok(true)
    }
}

impl NftablesFirewall {
    /// Installs the table with its whitelists, sets and chains in one batch, in the network
    /// namespace of the calling thread. Authorizations of a table left behind (`kill -9`,
    /// `do_not_flush_authorized_hosts`) are adopted with their remaining lifetime and names; the
    /// old table is replaced in the same transaction, so nothing unauthorized passes meanwhile.
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
        let lock = take_lock()
            .map_err(NftablesError::Lock)?
            .ok_or(NftablesError::Busy)?;
        let mut socket = Socket::open().map_err(NftablesError::Socket)?;
        let left_over = socket
            .table_exists(NFPROTO_INET, TABLE)
            .map_err(NftablesError::Install)?;
        let adopted: HashMap<IpAddr, Held> = dump_authorized(&mut socket)
            .map_err(NftablesError::Install)?
            .into_iter()
            .map(|(host, name)| {
                let held = Held {
                    expires_ns: host.expires_ns,
                    name: name.map(Arc::from),
                    answered_ns: 0,
                };
                (host.addr, held)
            })
            .collect();
        let mut inner = Inner {
            socket,
            scopes,
            options: options.clone(),
            whitelist: Whitelist::new(policy),
            authorized: adopted,
            max_hosts: nettrust_common::DEFAULT_MAX_HOSTS,
            stopped: false,
        };
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
        Ok(Self {
            inner: Mutex::new(inner),
            _lock: lock,
        })
    }

    /// Holds at most `max_hosts` authorizations per family (default
    /// [`nettrust_common::DEFAULT_MAX_HOSTS`]); beyond, idle ones are evicted.
    pub fn set_max_hosts(&self, max_hosts: u32) {
        self.lock().max_hosts = max_hosts.max(1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Authorizes every address of one DNS answer in a single batch (one kernel transaction, one
    /// acknowledgement round trip). Returns once the kernel enforces all of them.
    pub fn authorize_many(
        &self,
        addrs: &[IpAddr],
        expires_ns: u64,
        name: Option<&str>,
    ) -> Result<Vec<Authorization>, FirewallError> {
        let mut inner = self.lock();
        inner.write(addrs, expires_ns, name)
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
            // A DELSETELEM without elements flushes the set.
            ExitMode::KeepPolicy => [false, true]
                .into_iter()
                .map(|v6| {
                    Msg::new(
                        MsgType::DelSetElem,
                        0,
                        netlink::Attrs::new()
                            .str(netlink::elem_list::TABLE, TABLE)
                            .str(netlink::elem_list::SET, sets(v6)[2]),
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
        tracing::info!(table = TABLE, ?mode, "nftables firewall stopped");
        Ok(())
    }
}

impl Inner {
    /// The install batch plus every live authorization with its remaining lifetime.
    fn install(&mut self) -> Result<(), NetlinkError> {
        let mut msgs = install_batch(&self.scopes, &self.options, &self.whitelist);
        let now = boottime_ns();
        self.authorized
            .retain(|_, h| h.expires_ns == 0 || h.expires_ns > now);
        for v6 in [false, true] {
            let elems = self
                .authorized
                .iter()
                .filter(|(addr, _)| addr.is_ipv6() == v6)
                .map(|(&addr, held)| element(addr, held, now))
                .collect::<Vec<_>>();
            msgs.extend(elements_msg(MsgType::NewSetElem, sets(v6)[2], elems));
        }
        self.socket.batch(NFPROTO_INET, &msgs)
    }

    /// Writes `addrs` into the authorized sets in one batch. Each family's elements are written
    /// as `add; delete; add` in the same transaction: the first add makes sure the element
    /// exists, so the delete cannot fail, and the final add carries the new timeout and name — a
    /// renewal then works on every kernel (re-adding an element only updates its timeout since
    /// Linux 6.10). `name` None keeps the name already recorded.
    fn write(
        &mut self,
        addrs: &[IpAddr],
        expires_ns: u64,
        name: Option<&str>,
    ) -> Result<Vec<Authorization>, FirewallError> {
        let Some(&first) = addrs.first() else {
            return Ok(Vec::new());
        };
        let now = boottime_ns();
        // Shown like the eBPF backend's names.
        let name: Option<Arc<str>> = name
            .map(super::listed_name)
            .filter(|n| !n.is_empty())
            .map(|n| Arc::from(n.as_ref()));
        let mut results = Vec::with_capacity(addrs.len());
        let mut writes: Vec<(IpAddr, Held)> = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            if self.whitelist.host_addrs.contains(&addr) {
                results.push(Authorization::Already);
                continue;
            }
            let previous = self.authorized.get(&addr);
            let live = previous.is_some_and(|h| h.expires_ns == 0 || h.expires_ns > now);
            results.push(if live {
                Authorization::Already
            } else {
                Authorization::New
            });
            if writes.iter().any(|(a, _)| *a == addr) {
                continue;
            }
            let held = Held {
                expires_ns,
                name: name
                    .clone()
                    .or_else(|| previous.and_then(|h| h.name.clone())),
                answered_ns: now,
            };
            writes.push((addr, held));
        }
        if writes.is_empty() {
            return Ok(results);
        }
        let evicted = self.make_room(&writes, now);
        let mut msgs = Vec::new();
        for v6 in [false, true] {
            // Evicted elements: added first so the delete cannot fail on one the kernel already
            // expired (a failed message would abort the whole batch).
            let gone = || {
                evicted
                    .iter()
                    .filter(move |a| a.is_ipv6() == v6)
                    .map(|a| Elem::key(netlink::addr_key(*a)))
            };
            msgs.extend(elements_msg(MsgType::NewSetElem, sets(v6)[2], gone()));
            msgs.extend(elements_msg(MsgType::DelSetElem, sets(v6)[2], gone()));
        }
        for v6 in [false, true] {
            let set = sets(v6)[2];
            let family = || writes.iter().filter(move |(a, _)| a.is_ipv6() == v6);
            let plain = || family().map(|(a, _)| Elem::key(netlink::addr_key(*a)));
            msgs.extend(elements_msg(MsgType::NewSetElem, set, plain()));
            msgs.extend(elements_msg(MsgType::DelSetElem, set, plain()));
            msgs.extend(elements_msg(
                MsgType::NewSetElem,
                set,
                family().map(|(a, held)| element(*a, held, now)),
            ));
        }
        self.socket
            .batch(NFPROTO_INET, &msgs)
            .map_err(|e| FirewallError::Authorize {
                addr: first,
                source: Box::new(e),
            })?;
        if !evicted.is_empty() {
            for addr in &evicted {
                self.authorized.remove(addr);
            }
            crate::metrics::metrics()
                .evicted
                .inc_by(evicted.len() as u64);
            tracing::info!(
                evicted = evicted.len(),
                first = ?evicted.first(),
                capacity = self.max_hosts,
                "[Evicted] authorized set full: idle authorizations removed, least recently used first"
            );
        }
        self.authorized.extend(writes);
        Ok(results)
    }

    /// The authorizations to evict so that `writes` fit in `max_hosts` per family: none while
    /// there is room; otherwise expired ones are forgotten first and, if that is not enough, a
    /// batch (at least what is missing) of the least recently used, in the order of
    /// [`super::evict`]. nftables keeps no last-packet time, so a host with a flow in conntrack
    /// (which this ruleset makes track every flow) counts as in use now, the others as unused
    /// since their last answer.
    fn make_room(&mut self, writes: &[(IpAddr, Held)], now: u64) -> Vec<IpAddr> {
        let capacity = self.max_hosts as usize;
        let new_in = |this: &Self, v6: bool| {
            writes
                .iter()
                .filter(|(a, _)| a.is_ipv6() == v6 && !this.authorized.contains_key(a))
                .count()
        };
        if self.authorized.len() + new_in(self, false).max(new_in(self, true)) <= capacity {
            return Vec::new();
        }
        self.authorized
            .retain(|_, h| h.expires_ns == 0 || h.expires_ns > now);
        let mut active: Option<std::collections::HashSet<IpAddr>> = None;
        let mut evicted = Vec::new();
        for v6 in [false, true] {
            let held = self.authorized.keys().filter(|a| a.is_ipv6() == v6).count();
            let missing = (held + new_in(self, v6)).saturating_sub(capacity);
            if missing == 0 {
                continue;
            }
            let active = active.get_or_insert_with(|| {
                crate::conntrack::active_addresses().unwrap_or_else(|e| {
                    tracing::debug!("conntrack unavailable for eviction ({e})");
                    Default::default()
                })
            });
            let candidates = self
                .authorized
                .iter()
                .filter(|(a, _)| a.is_ipv6() == v6 && !writes.iter().any(|(w, _)| w == *a))
                .map(|(&a, h)| {
                    let value = nettrust_common::HostValue {
                        expires_ns: h.expires_ns,
                        last_seen_ns: if active.contains(&a) { now } else { 0 },
                        flags: nettrust_common::FLAG_AUTHORIZED,
                        _pad: 0,
                    };
                    (a, value)
                });
            let answered = |a: &IpAddr| self.authorized.get(a).map_or(0, |h| h.answered_ns);
            evicted.extend(super::evict::victims(
                candidates,
                answered,
                now,
                missing.max(super::evict::batch(self.max_hosts)),
            ));
        }
        evicted
    }
}

/// The set element of an authorization: its remaining lifetime (none = never expires) and name.
fn element(addr: IpAddr, held: &Held, now: u64) -> Elem {
    Elem {
        key: netlink::addr_key(addr),
        flags: 0,
        timeout_ms: (held.expires_ns != 0).then(|| {
            held.expires_ns
                .saturating_sub(now)
                .div_ceil(1_000_000)
                .max(1)
        }),
        comment: held.name.as_deref().map(str::to_owned),
    }
}

/// The elements of `authorized4` and `authorized6` with their deadlines (`CLOCK_BOOTTIME`) and
/// names; empty when the table does not exist.
fn dump_authorized(
    socket: &mut Socket,
) -> Result<Vec<(AuthorizedHost, Option<String>)>, NetlinkError> {
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
            out.push((AuthorizedHost { addr, expires_ns }, e.comment));
        }
    }
    Ok(out)
}

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

impl Firewall for NftablesFirewall {
    fn authorize(&self, addr: IpAddr, expires_ns: u64) -> Result<Authorization, FirewallError> {
        Ok(self.authorize_many(&[addr], expires_ns, None)?[0])
    }

    fn authorize_answer(
        &self,
        addrs: &[IpAddr],
        expires_ns: u64,
        name: &str,
    ) -> Result<Vec<Authorization>, FirewallError> {
        self.authorize_many(addrs, expires_ns, Some(name))
    }

    /// The name travels with the element (its comment); nothing to do after the fact.
    fn record_name(&self, _addr: IpAddr, _name: &str) -> Result<(), FirewallError> {
        Ok(())
    }

    /// The kernel expires set elements itself (element timeouts); the sweeper only needs the
    /// candidates for renewal. nftables keeps no last-seen time, so liveness comes from conntrack
    /// (which this backend's ruleset makes track every flow).
    fn due(&self, horizon_ns: u64) -> Result<Vec<HostState>, FirewallError> {
        let inner = self.lock();
        Ok(inner
            .authorized
            .iter()
            .filter(|&(_, h)| h.expires_ns != 0 && h.expires_ns <= horizon_ns)
            .map(|(&addr, h)| HostState {
                addr,
                expires_ns: h.expires_ns,
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
        let mut inner = self.lock();
        if inner.authorized.get(&addr).map(|h| h.expires_ns) != Some(seen_expires_ns) {
            return Ok(false);
        }
        inner.write(&[addr], new_expires_ns, None)?;
        Ok(true)
    }

    fn remove_if(&self, addr: IpAddr, seen_expires_ns: u64) -> Result<bool, FirewallError> {
        let mut inner = self.lock();
        if inner.authorized.get(&addr).map(|h| h.expires_ns) != Some(seen_expires_ns) {
            return Ok(false);
        }
        let set = sets(addr.is_ipv6())[2];
        let msgs = elements_msg(
            MsgType::DelSetElem,
            set,
            std::iter::once(Elem::key(netlink::addr_key(addr))),
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
        let present: BTreeSet<IpAddr> = out.iter().map(|(h, _)| h.addr).collect();
        inner.authorized.retain(|a, _| present.contains(a));
        Ok(out.into_iter().map(|(h, _)| h).collect())
    }

    /// Deletes the matching elements in one batch; each is added first in the same transaction
    /// (as in `write`), so an element the kernel already expired cannot fail the batch.
    fn revoke(
        &self,
        revoked: &dyn Fn(IpAddr, Option<&str>) -> bool,
    ) -> Result<Vec<IpAddr>, FirewallError> {
        let mut inner = self.lock();
        let gone: Vec<IpAddr> = inner
            .authorized
            .iter()
            .filter(|(addr, held)| revoked(**addr, held.name.as_deref()))
            .map(|(addr, _)| *addr)
            .collect();
        let Some(&first) = gone.first() else {
            return Ok(gone);
        };
        let mut msgs = Vec::new();
        for v6 in [false, true] {
            let set = sets(v6)[2];
            let keys = || {
                gone.iter()
                    .filter(move |a| a.is_ipv6() == v6)
                    .map(|a| Elem::key(netlink::addr_key(*a)))
            };
            msgs.extend(elements_msg(MsgType::NewSetElem, set, keys()));
            msgs.extend(elements_msg(MsgType::DelSetElem, set, keys()));
        }
        inner
            .socket
            .batch(NFPROTO_INET, &msgs)
            .map_err(|e| FirewallError::Update {
                addr: first,
                source: Box::new(e),
            })?;
        for addr in &gone {
            inner.authorized.remove(addr);
        }
        Ok(gone)
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
                    .map(|k| Elem::key(k.clone())),
            ));
            msgs.extend(elements_msg(
                MsgType::DelSetElem,
                hosts,
                old.hosts[family]
                    .difference(&new.hosts[family])
                    .map(|k| Elem::key(k.clone())),
            ));
            // Networks: interval boundaries depend on the merge, so the set is rewritten as a
            // whole (old elements deleted, new ones added) when anything changed.
            for (set, old, new) in [
                (nets, &old.ranges[family], &new.ranges[family]),
                (blocked_set(v6), &old.blocked[family], &new.blocked[family]),
            ] {
                if old != new {
                    msgs.extend(elements_msg(
                        MsgType::DelSetElem,
                        set,
                        old.iter().map(|(k, end)| Elem::boundary(k.clone(), *end)),
                    ));
                    msgs.extend(elements_msg(
                        MsgType::NewSetElem,
                        set,
                        new.iter().map(|(k, end)| Elem::boundary(k.clone(), *end)),
                    ));
                }
            }
        }
        if new.services != old.services {
            // Services are rules: the table is rebuilt in one batch (the upstreams only change
            // with a restart, so this does not happen on a reload).
            let whitelist = std::mem::replace(&mut inner.whitelist, new);
            return inner.install().map_err(|e| {
                inner.whitelist = whitelist;
                FirewallError::Whitelist(Box::new(e))
            });
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
