//! Firewall backends behind one trait: the eBPF backend enforces in the kernel, the fake backend
//! keeps the same state in memory so policy logic can be tested without root.

pub mod ebpf;
mod evict;
pub use evict::{EVICTED, evicted_per_scope};
mod fair_share;
pub mod fake;
pub mod nftables;

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use ipnet::IpNet;

/// What a backend must enforce from the start: destinations always allowed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Hosts always allowed.
    pub whitelist_hosts: Vec<IpAddr>,
    /// Networks always allowed.
    pub whitelist_networks: Vec<IpNet>,
    /// Services always allowed: one address, port and transport each (the upstream DNS
    /// servers, reached on nothing else).
    pub services: Vec<Service>,
    /// Peers that never get a reply through a flow they opened towards a filtered socket (the
    /// blacklist's hosts and networks), whatever reached the socket before.
    pub blocked: Vec<IpNet>,
}

/// A whitelisted service: an address, a port and a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Service {
    /// The server's address and port.
    pub addr: SocketAddr,
    /// The transport.
    pub transport: Transport,
}

/// The transport of a [`Service`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// TCP (plain DNS over TCP, DoT).
    Tcp,
    /// UDP.
    Udp,
}

impl Transport {
    /// The IP protocol number.
    pub fn proto(self) -> u8 {
        match self {
            Transport::Tcp => 6,
            Transport::Udp => 17,
        }
    }
}

/// The services of the upstream DNS servers `fwd_addrs`: TCP on each one's port, and UDP too
/// unless every query goes over TCP (`tcp_only`: `fwd_proto = "tcp"` or DoT).
pub fn upstream_services(fwd_addrs: &[SocketAddr], tcp_only: bool) -> Vec<Service> {
    let mut out = Vec::new();
    for &addr in fwd_addrs {
        if addr.ip().is_unspecified() {
            continue;
        }
        out.push(Service {
            addr,
            transport: Transport::Tcp,
        });
        if !tcp_only {
            out.push(Service {
                addr,
                transport: Transport::Udp,
            });
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Which filtered cgroups an authorization opens: those of the default policy
/// ([`Scope::DEFAULT`], every filtered cgroup no `[[policy]]` covers) or those of one
/// `[[policy]]` (numbered from 1 in the order of the configuration file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Scope(pub u32);

impl Scope {
    /// The default policy's scope: today's global authorizations.
    pub const DEFAULT: Self = Self(0);

    /// Whether this is the default policy's scope.
    pub fn is_default(self) -> bool {
        self == Self::DEFAULT
    }
}

/// One authorization's key: a destination address, opened for the cgroups of one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    /// The cgroups it opens the address for.
    pub scope: Scope,
    /// The destination address.
    pub addr: IpAddr,
}

impl Grant {
    /// `addr` opened for the cgroups of `scope`.
    pub fn new(scope: Scope, addr: IpAddr) -> Self {
        Self { scope, addr }
    }
}

impl From<IpAddr> for Grant {
    /// `addr` in the default scope.
    fn from(addr: IpAddr) -> Self {
        Self::new(Scope::DEFAULT, addr)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scope.is_default() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{} (policy {})", self.addr, self.scope.0)
        }
    }
}

/// A filtered cgroup listed in the configuration and the scope of its policy. A cgroup belongs
/// to the policy of its deepest listed ancestor-or-self.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedCgroup {
    /// The cgroup v2 directory.
    pub path: PathBuf,
    /// Its policy's scope ([`Scope::DEFAULT`] for the top-level `cgroups`).
    pub scope: Scope,
    /// Its policy is in audit mode: nothing is dropped, what would be is reported.
    pub audit: bool,
}

/// The policies a backend enforces in its data path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    /// Whether any `[[policy]]` exists; without one every cgroup is in the default scope and the
    /// backend behaves (and costs) as without policies.
    pub active: bool,
    /// Every listed cgroup with its scope.
    pub cgroups: Vec<ScopedCgroup>,
    /// Destinations always allowed for one scope (`allow_networks`).
    pub networks: Vec<(Scope, IpNet)>,
    /// The policies' names by scope (logs, `nettrust list`).
    pub names: Vec<(Scope, String)>,
    /// The DNS proxy's listen addresses and transports: where the data path records who sent a
    /// query ([`Firewall::client_scope`]).
    pub listeners: Vec<(SocketAddr, Transport)>,
}

/// Who sent a query, as the data path recorded it: the client socket's cgroup and its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientScope {
    /// cgroup v2 id of the sending socket.
    pub cgroup_id: u64,
    /// The scope of the cgroup's policy.
    pub scope: Scope,
    /// The policy is in audit mode.
    pub audit: bool,
}

/// One authorized destination as reported by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorizedHost {
    /// The destination address.
    pub addr: IpAddr,
    /// The cgroups it is opened for.
    pub scope: Scope,
    /// `CLOCK_BOOTTIME` deadline in nanoseconds, 0 = never expires.
    pub expires_ns: u64,
}

/// An authorized host as the sweeper sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostState {
    /// The destination address.
    pub addr: IpAddr,
    /// The cgroups it is opened for.
    pub scope: Scope,
    /// `CLOCK_BOOTTIME` deadline in nanoseconds (never 0 here: hosts without deadline are never
    /// due).
    pub expires_ns: u64,
    /// Last time the egress program let a packet out to it (`CLOCK_BOOTTIME` ns, 0 = never).
    pub last_seen_ns: u64,
}

impl AuthorizedHost {
    /// The authorization's key.
    pub fn grant(&self) -> Grant {
        Grant::new(self.scope, self.addr)
    }
}

impl HostState {
    /// The authorization's key.
    pub fn grant(&self) -> Grant {
        Grant::new(self.scope, self.addr)
    }
}

/// What nettrust leaves in place when it exits on SIGINT/SIGTERM (the original's flush matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitMode {
    /// Remove everything: programs, links, maps (the default).
    FlushAll,
    /// `--do-not-flush-table`: the deny policy and whitelists stay enforced, authorizations are
    /// cleared.
    KeepPolicy,
    /// `--do-not-flush-table --do-not-flush-authorized-hosts`: everything stays, and the next start
    /// adopts the authorizations with their deadlines.
    KeepAll,
}

impl ExitMode {
    /// The mode selected by the two flags; keeping the authorizations without the table is
    /// meaningless, as in the original (the table is removed anyway).
    pub fn from_flags(do_not_flush_table: bool, do_not_flush_authorized_hosts: bool) -> Self {
        match (do_not_flush_table, do_not_flush_authorized_hosts) {
            (false, _) => Self::FlushAll,
            (true, false) => Self::KeepPolicy,
            (true, true) => Self::KeepAll,
        }
    }
}

/// Errors of firewall backends.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// Writing an authorization into the backend failed (e.g. the map is full).
    #[error("cannot authorize {addr}")]
    Authorize {
        /// The address that could not be written.
        addr: IpAddr,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The host map of the address's family is full (`max_hosts`): nothing was written.
    #[error("cannot authorize {addr}: {map} is full ({capacity} entries); raise max_hosts")]
    Full {
        /// The address that did not fit.
        addr: IpAddr,
        /// The full map.
        map: &'static str,
        /// Its capacity.
        capacity: u32,
    },
    /// Changing the whitelists failed.
    #[error("cannot update the whitelists")]
    Whitelist(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Installing the `[[policy]]` sections failed.
    #[error("cannot install the policies")]
    Policies(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Reading the backend's state failed.
    #[error("cannot read the authorized hosts")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend cannot enforce this part of the configuration.
    #[error("the firewall backend does not support {0}")]
    Unsupported(&'static str),
    /// Renewing or removing an authorization failed.
    #[error("cannot update the authorization of {addr}")]
    Update {
        /// The address.
        addr: IpAddr,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Whether an authorization created the entry or found it already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    /// The address was not allowed before.
    New,
    /// The address was already allowed (authorized or whitelisted); its deadline was renewed.
    Already,
}

/// A firewall backend: the policy is installed when the backend starts; afterwards DNS answers
/// add authorizations.
pub trait Firewall: Send + Sync {
    /// Allows `grant.addr` for the cgroups of `grant.scope` until `expires_ns` (`CLOCK_BOOTTIME`,
    /// 0 = never). Returns once the kernel enforces it.
    fn authorize(&self, grant: Grant, expires_ns: u64) -> Result<Authorization, FirewallError>;
    /// The hosts authorized by DNS answers (not the whitelisted ones).
    fn authorized(&self) -> Result<Vec<AuthorizedHost>, FirewallError>;
    /// Authorizes every address of one DNS answer for `name` (shown by `nettrust list`) for the
    /// cgroups of `scope` and returns once the kernel enforces all of them. Backends that write
    /// several addresses in one transaction override it; the default authorizes them one by one.
    fn authorize_answer(
        &self,
        scope: Scope,
        addrs: &[IpAddr],
        expires_ns: u64,
        name: &str,
    ) -> Result<Vec<Authorization>, FirewallError> {
        addrs
            .iter()
            .map(|&addr| {
                let authorization = self.authorize(Grant::new(scope, addr), expires_ns)?;
                if let Err(e) = self.record_name(Grant::new(scope, addr), name) {
                    tracing::debug!("cannot record the name of {addr}: {e}");
                }
                Ok(authorization)
            })
            .collect()
    }
    /// Remembers that `name` authorized `grant` (shown by `nettrust list`, matched by a reload
    /// that narrows its policy). Best effort.
    fn record_name(&self, grant: Grant, name: &str) -> Result<(), FirewallError> {
        let _ = (grant, name);
        Ok(())
    }
    /// Authorized hosts whose deadline is at or before `horizon_ns` (the sweeper's candidates).
    fn due(&self, horizon_ns: u64) -> Result<Vec<HostState>, FirewallError>;
    /// Moves the deadline of `grant` to `new_expires_ns`, but only if it is still
    /// `seen_expires_ns`: a DNS answer that renewed the host since the sweeper looked wins.
    /// Returns whether it did.
    fn renew_if(
        &self,
        grant: Grant,
        seen_expires_ns: u64,
        new_expires_ns: u64,
    ) -> Result<bool, FirewallError>;
    /// Removes `grant`, but only if its deadline is still `seen_expires_ns` (compare-and-delete:
    /// a concurrent renewal wins). Returns whether it did.
    fn remove_if(&self, grant: Grant, seen_expires_ns: u64) -> Result<bool, FirewallError>;
    /// Replaces the whitelists (SIGHUP reload). New entries are added before old ones are removed,
    /// so a destination on both lists is never dropped in between; authorizations are kept.
    fn set_whitelist(&self, policy: &Policy) -> Result<(), FirewallError>;
    /// Enforces `scopes`: which listed cgroup belongs to which policy, in which mode, and the
    /// policies' own networks (at start and on each reload; grants are kept). A backend without
    /// policy support refuses active scopes rather than filtering without them.
    fn set_scopes(&self, scopes: &Scopes) -> Result<(), FirewallError> {
        if scopes.active {
            return Err(FirewallError::Unsupported("[[policy]] sections"));
        }
        Ok(())
    }
    /// The cgroup and policy of the socket that sent the last query from `client` over
    /// `transport` to a listen address, when the backend knows it exactly (eBPF: recorded by the
    /// egress program). `None`: unknown (a remote client, an unfiltered process, a record
    /// evicted); the caller treats it as the default scope, never a wider one.
    fn client_scope(&self, transport: Transport, client: SocketAddr) -> Option<ClientScope> {
        let _ = (transport, client);
        None
    }
    /// The TCP connections the filtered cgroups hold established, as the backend records them
    /// itself, each as the grant it keeps alive: the scope of the socket's cgroup and the remote
    /// address (eBPF: the `sockops` program's `LIVE_TCP_SCOPED`); none by default.
    fn live_hosts(&self) -> Result<HashSet<Grant>, FirewallError> {
        Ok(HashSet::new())
    }
    /// Removes at once the authorizations for which `revoked(grant, name)` holds, `name` being
    /// the name recorded for `nettrust list` (a reload that blacklists hosts, networks or
    /// domains, or narrows a policy); whitelisted entries stay. Returns the grants removed. The
    /// default knows no names and removes through [`Firewall::remove_if`].
    fn revoke(
        &self,
        revoked: &dyn Fn(Grant, Option<&str>) -> bool,
    ) -> Result<Vec<Grant>, FirewallError> {
        let mut removed = Vec::new();
        for host in self.authorized()? {
            if revoked(host.grant(), None) && self.remove_if(host.grant(), host.expires_ns)? {
                removed.push(host.grant());
            }
        }
        Ok(removed)
    }
}

/// The policies' names by scope, as the firewall state on this host records them (the pinned
/// eBPF maps in `bpffs_dir`, else the nftables table's set comments); empty without policies.
pub fn policy_names(bpffs_dir: &std::path::Path) -> std::collections::HashMap<u32, String> {
    let names = ebpf::policy_names_pinned(bpffs_dir);
    if names.is_empty() {
        nftables::policy_names().unwrap_or_default()
    } else {
        names
    }
}

/// How `nettrust list` and the metrics name `scope`: `default`, the policy's name, or its number
/// when no name is recorded.
pub fn policy_label(names: &std::collections::HashMap<u32, String>, scope: Scope) -> String {
    if scope.is_default() {
        return "default".to_owned();
    }
    names
        .get(&scope.0)
        .cloned()
        .unwrap_or_else(|| scope.0.to_string())
}

/// Longest name (bytes) either backend records for `nettrust list`: nft element comments hold
/// 127 bytes, and the eBPF `NAMES` values 128 with their NUL.
pub const LISTED_NAME_MAX: usize = 127;

/// The name recorded for `nettrust list` for an answer to `name`: without the root's trailing dot,
/// and, when longer than [`LISTED_NAME_MAX`] bytes, `…` followed by as many of its last bytes as fit
/// (the end of a DNS name names its domain; a character is never split).
pub fn listed_name(name: &str) -> std::borrow::Cow<'_, str> {
    const ELLIPSIS: &str = "…";
    let name = name.trim_end_matches('.');
    if name.len() <= LISTED_NAME_MAX {
        return name.into();
    }
    let mut start = name.len() - (LISTED_NAME_MAX - ELLIPSIS.len());
    while !name.is_char_boundary(start) {
        start += 1;
    }
    format!("{ELLIPSIS}{}", &name[start..]).into()
}

/// Current `CLOCK_BOOTTIME` in nanoseconds, the clock of `bpf_ktime_get_boot_ns` used by the egress
/// program to judge deadlines (it keeps counting during suspend).
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into `ts`; CLOCK_BOOTTIME exists on every supported kernel.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_names_keep_their_end() {
        assert_eq!(listed_name("a.test."), "a.test");
        let exact = format!("{}.test", "x".repeat(LISTED_NAME_MAX - 5));
        assert_eq!(listed_name(&exact), exact);
        // The longest DNS name in text form (253 characters) keeps its last 124 bytes.
        let labels: Vec<String> = (0..63).map(|i| format!("l{i:02}")).collect();
        let name = format!("{}.a.", labels.join("."));
        let listed = listed_name(&name);
        assert_eq!(listed.len(), LISTED_NAME_MAX);
        assert_eq!(
            listed,
            format!("…{}", &name[name.len() - 1 - 124..name.len() - 1])
        );
        // A cut inside a multi-byte character drops the character (text names escape non-ASCII
        // bytes, but the rule holds for any text); a cut before it keeps it.
        let inside = format!("xxxxxé{}", "y".repeat(123));
        assert_eq!(listed_name(&inside), format!("…{}", "y".repeat(123)));
        let before = format!("xxxxxé{}", "y".repeat(122));
        assert_eq!(listed_name(&before), format!("…é{}", "y".repeat(122)));
    }

    #[test]
    fn exit_matrix_matches_the_original() {
        assert_eq!(ExitMode::from_flags(false, false), ExitMode::FlushAll);
        assert_eq!(ExitMode::from_flags(true, false), ExitMode::KeepPolicy);
        assert_eq!(ExitMode::from_flags(true, true), ExitMode::KeepAll);
        // Keeping the hosts without the table is meaningless: the table goes, hosts with it.
        assert_eq!(ExitMode::from_flags(false, true), ExitMode::FlushAll);
    }

    #[test]
    fn fake_backend_records_names_and_removes_only_unchanged_deadlines() {
        let fw = fake::FakeFirewall::new(Policy::default());
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        let grant = Grant::from(addr);
        fw.authorize(grant, 10).unwrap();
        fw.record_name(grant, "a.test.").unwrap();
        assert_eq!(fw.name_of(addr).as_deref(), Some("a.test."));
        assert!(
            !fw.remove_if(grant, 9).unwrap(),
            "deadline changed meanwhile"
        );
        assert!(fw.renew_if(grant, 10, 20).unwrap());
        assert!(!fw.renew_if(grant, 10, 30).unwrap());
        assert!(fw.remove_if(grant, 20).unwrap());
        assert!(fw.authorized().unwrap().is_empty());
    }
}
