//! Firewall backends behind one trait: the eBPF backend enforces in the kernel, the fake backend
//! keeps the same state in memory so policy logic can be tested without root.

pub mod ebpf;
mod evict;
pub use evict::EVICTED;
pub mod fake;
pub mod nftables;

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

/// One authorized destination as reported by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorizedHost {
    /// The destination address.
    pub addr: IpAddr,
    /// `CLOCK_BOOTTIME` deadline in nanoseconds, 0 = never expires.
    pub expires_ns: u64,
}

/// An authorized host as the sweeper sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostState {
    /// The destination address.
    pub addr: IpAddr,
    /// `CLOCK_BOOTTIME` deadline in nanoseconds (never 0 here: hosts without deadline are never
    /// due).
    pub expires_ns: u64,
    /// Last time the egress program let a packet out to it (`CLOCK_BOOTTIME` ns, 0 = never).
    pub last_seen_ns: u64,
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
    /// Reading the backend's state failed.
    #[error("cannot read the authorized hosts")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
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
    /// Allows `addr` until `expires_ns` (`CLOCK_BOOTTIME`, 0 = never). Returns once the kernel
    /// enforces it.
    fn authorize(&self, addr: IpAddr, expires_ns: u64) -> Result<Authorization, FirewallError>;
    /// The hosts authorized by DNS answers (not the whitelisted ones).
    fn authorized(&self) -> Result<Vec<AuthorizedHost>, FirewallError>;
    /// Authorizes every address of one DNS answer for `name` (shown by `nettrust list`) and
    /// returns once the kernel enforces all of them. Backends that write several addresses in
    /// one transaction override it; the default authorizes them one by one.
    fn authorize_answer(
        &self,
        addrs: &[IpAddr],
        expires_ns: u64,
        name: &str,
    ) -> Result<Vec<Authorization>, FirewallError> {
        addrs
            .iter()
            .map(|&addr| {
                let authorization = self.authorize(addr, expires_ns)?;
                if let Err(e) = self.record_name(addr, name) {
                    tracing::debug!("cannot record the name of {addr}: {e}");
                }
                Ok(authorization)
            })
            .collect()
    }
    /// Remembers that `name` authorized `addr` (shown by `nettrust list`). Best effort.
    fn record_name(&self, addr: IpAddr, name: &str) -> Result<(), FirewallError> {
        let _ = (addr, name);
        Ok(())
    }
    /// Authorized hosts whose deadline is at or before `horizon_ns` (the sweeper's candidates).
    fn due(&self, horizon_ns: u64) -> Result<Vec<HostState>, FirewallError>;
    /// Moves the deadline of `addr` to `new_expires_ns`, but only if it is still `seen_expires_ns`:
    /// a DNS answer that renewed the host since the sweeper looked wins. Returns whether it did.
    fn renew_if(
        &self,
        addr: IpAddr,
        seen_expires_ns: u64,
        new_expires_ns: u64,
    ) -> Result<bool, FirewallError>;
    /// Removes `addr`, but only if its deadline is still `seen_expires_ns` (compare-and-delete:
    /// a concurrent renewal wins). Returns whether it did.
    fn remove_if(&self, addr: IpAddr, seen_expires_ns: u64) -> Result<bool, FirewallError>;
    /// Replaces the whitelists (SIGHUP reload). New entries are added before old ones are removed,
    /// so a destination on both lists is never dropped in between; authorizations are kept.
    fn set_whitelist(&self, policy: &Policy) -> Result<(), FirewallError>;
    /// Remote addresses of the TCP connections the filtered cgroups hold established, as the
    /// backend records them itself (eBPF: the `sockops` program's `LIVE_TCP`); none by default.
    fn live_hosts(&self) -> Result<HashSet<IpAddr>, FirewallError> {
        Ok(HashSet::new())
    }
    /// Removes at once the authorizations for which `revoked(address, name)` holds, `name` being
    /// the name recorded for `nettrust list` (a reload that blacklists hosts, networks or
    /// domains); whitelisted entries stay. Returns the addresses removed. The default knows no
    /// names and removes by address through [`Firewall::remove_if`].
    fn revoke(
        &self,
        revoked: &dyn Fn(IpAddr, Option<&str>) -> bool,
    ) -> Result<Vec<IpAddr>, FirewallError> {
        let mut removed = Vec::new();
        for host in self.authorized()? {
            if revoked(host.addr, None) && self.remove_if(host.addr, host.expires_ns)? {
                removed.push(host.addr);
            }
        }
        Ok(removed)
    }
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
        fw.authorize(addr, 10).unwrap();
        fw.record_name(addr, "a.test.").unwrap();
        assert_eq!(fw.name_of(addr).as_deref(), Some("a.test."));
        assert!(
            !fw.remove_if(addr, 9).unwrap(),
            "deadline changed meanwhile"
        );
        assert!(fw.renew_if(addr, 10, 20).unwrap());
        assert!(!fw.renew_if(addr, 10, 30).unwrap());
        assert!(fw.remove_if(addr, 20).unwrap());
        assert!(fw.authorized().unwrap().is_empty());
    }
}
