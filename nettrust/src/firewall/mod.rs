//! Firewall backends behind one trait: the eBPF backend enforces in the kernel, the fake backend
//! keeps the same state in memory so policy logic can be tested without root.

pub mod ebpf;
pub mod fake;
pub mod nftables;

use std::net::IpAddr;

use ipnet::IpNet;

/// What a backend must enforce from the start: destinations always allowed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Hosts always allowed.
    pub whitelist_hosts: Vec<IpAddr>,
    /// Networks always allowed.
    pub whitelist_networks: Vec<IpNet>,
}

/// One authorized destination as reported by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorizedHost {
    /// The destination address.
    pub addr: IpAddr,
    /// `CLOCK_BOOTTIME` deadline in nanoseconds, 0 = never expires.
    pub expires_ns: u64,
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
    /// Changing the whitelists failed.
    #[error("cannot update the whitelists")]
    Whitelist(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Reading the backend's state failed.
    #[error("cannot read the authorized hosts")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
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
    /// Replaces the whitelists (SIGHUP reload). New entries are added before old ones are removed,
    /// so a destination on both lists is never dropped in between; authorizations are kept.
    fn set_whitelist(&self, policy: &Policy) -> Result<(), FirewallError>;
}

/// Current `CLOCK_BOOTTIME` in nanoseconds, the clock of `bpf_ktime_get_boot_ns` used by the egress
/// program to judge deadlines (it keeps counting during suspend).
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into `ts`; CLOCK_BOOTTIME exists on every supported kernel.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}
