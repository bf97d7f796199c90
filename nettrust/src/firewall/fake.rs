//! In-memory firewall with the eBPF backend's semantics, for tests without root.

use std::{collections::HashMap, net::IpAddr, sync::Mutex};

use super::{Authorization, AuthorizedHost, Firewall, FirewallError, HostState, Policy};

/// One authorized host: deadline (0 = never), last time traffic was seen, authorizing name.
#[derive(Debug, Clone, Default)]
struct Entry {
    expires_ns: u64,
    last_seen_ns: u64,
    name: String,
}

/// An in-memory backend: hosts, networks and deadlines, judged like the egress program does.
#[derive(Debug, Default)]
pub struct FakeFirewall {
    policy: Mutex<Policy>,
    authorized: Mutex<HashMap<IpAddr, Entry>>,
    /// When set, `authorize` fails for this address (to test error paths).
    pub fail_on: Option<IpAddr>,
}

impl FakeFirewall {
    /// A fake backend enforcing `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy: Mutex::new(policy),
            ..Self::default()
        }
    }

    /// The verdict the egress program would give a packet to `addr` at `now_ns`; an allowed
    /// packet to an authorized host refreshes its last-seen time, as the egress program does.
    pub fn allows(&self, addr: IpAddr, now_ns: u64) -> bool {
        let policy = self.policy.lock().expect("poisoned");
        if policy.whitelist_hosts.contains(&addr)
            || policy
                .whitelist_networks
                .iter()
                .any(|net| net.contains(&addr))
        {
            return true;
        }
        let mut authorized = self.authorized.lock().expect("poisoned");
        match authorized.get_mut(&addr) {
            Some(entry) if entry.expires_ns == 0 || now_ns < entry.expires_ns => {
                entry.last_seen_ns = now_ns;
                true
            }
            _ => false,
        }
    }

    /// Whether `addr` still has an entry (live or expired but not yet swept).
    pub fn has_entry(&self, addr: IpAddr) -> bool {
        self.authorized
            .lock()
            .expect("poisoned")
            .contains_key(&addr)
    }

    /// The name recorded for `addr`.
    pub fn name_of(&self, addr: IpAddr) -> Option<String> {
        self.authorized
            .lock()
            .expect("poisoned")
            .get(&addr)
            .map(|e| e.name.clone())
    }
}

impl Firewall for FakeFirewall {
    fn authorize(&self, addr: IpAddr, expires_ns: u64) -> Result<Authorization, FirewallError> {
        if self.fail_on == Some(addr) {
            return Err(FirewallError::Authorize {
                addr,
                source: "injected failure".into(),
            });
        }
        if self
            .policy
            .lock()
            .expect("poisoned")
            .whitelist_hosts
            .contains(&addr)
        {
            return Ok(Authorization::Already);
        }
        let mut authorized = self.authorized.lock().expect("poisoned");
        let existed = authorized.contains_key(&addr);
        authorized.entry(addr).or_default().expires_ns = expires_ns;
        Ok(if existed {
            Authorization::Already
        } else {
            Authorization::New
        })
    }

    fn authorized(&self) -> Result<Vec<AuthorizedHost>, FirewallError> {
        let authorized = self.authorized.lock().expect("poisoned");
        Ok(authorized
            .iter()
            .map(|(&addr, e)| AuthorizedHost {
                addr,
                expires_ns: e.expires_ns,
            })
            .collect())
    }

    fn record_name(&self, addr: IpAddr, name: &str) -> Result<(), FirewallError> {
        if let Some(entry) = self.authorized.lock().expect("poisoned").get_mut(&addr) {
            entry.name = name.to_owned();
        }
        Ok(())
    }

    fn due(&self, horizon_ns: u64) -> Result<Vec<HostState>, FirewallError> {
        let authorized = self.authorized.lock().expect("poisoned");
        Ok(authorized
            .iter()
            .filter(|(_, e)| e.expires_ns != 0 && e.expires_ns <= horizon_ns)
            .map(|(&addr, e)| HostState {
                addr,
                expires_ns: e.expires_ns,
                last_seen_ns: e.last_seen_ns,
            })
            .collect())
    }

    fn renew_if(
        &self,
        addr: IpAddr,
        seen_expires_ns: u64,
        new_expires_ns: u64,
    ) -> Result<bool, FirewallError> {
        let mut authorized = self.authorized.lock().expect("poisoned");
        match authorized.get_mut(&addr) {
            Some(entry) if entry.expires_ns == seen_expires_ns => {
                entry.expires_ns = new_expires_ns;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn remove_if(&self, addr: IpAddr, seen_expires_ns: u64) -> Result<bool, FirewallError> {
        let mut authorized = self.authorized.lock().expect("poisoned");
        if authorized
            .get(&addr)
            .is_some_and(|e| e.expires_ns == seen_expires_ns)
        {
            authorized.remove(&addr);
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn revoke(
        &self,
        revoked: &dyn Fn(IpAddr, Option<&str>) -> bool,
    ) -> Result<Vec<IpAddr>, FirewallError> {
        let mut authorized = self.authorized.lock().expect("poisoned");
        let gone: Vec<IpAddr> = authorized
            .iter()
            .filter(|(addr, e)| revoked(**addr, Some(e.name.as_str()).filter(|n| !n.is_empty())))
            .map(|(addr, _)| *addr)
            .collect();
        for addr in &gone {
            authorized.remove(addr);
        }
        Ok(gone)
    }

    fn set_whitelist(&self, policy: &Policy) -> Result<(), FirewallError> {
        *self.policy.lock().expect("poisoned") = policy.clone();
        Ok(())
    }
}
