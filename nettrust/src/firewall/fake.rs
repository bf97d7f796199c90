//! In-memory firewall with the eBPF backend's semantics, for tests without root.

use std::{collections::HashMap, net::IpAddr, sync::Mutex};

use super::{Authorization, AuthorizedHost, Firewall, FirewallError, Policy};

/// An in-memory backend: hosts, networks and deadlines, judged like the egress program does.
#[derive(Debug, Default)]
pub struct FakeFirewall {
    policy: Mutex<Policy>,
    authorized: Mutex<HashMap<IpAddr, u64>>,
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

    /// The verdict the egress program would give a packet to `addr` at `now_ns`.
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
        let authorized = self.authorized.lock().expect("poisoned");
        authorized
            .get(&addr)
            .is_some_and(|&expires| expires == 0 || now_ns < expires)
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
        let previous = self
            .authorized
            .lock()
            .expect("poisoned")
            .insert(addr, expires_ns);
        Ok(if previous.is_some() {
            Authorization::Already
        } else {
            Authorization::New
        })
    }

    fn authorized(&self) -> Result<Vec<AuthorizedHost>, FirewallError> {
        let authorized = self.authorized.lock().expect("poisoned");
        Ok(authorized
            .iter()
            .map(|(&addr, &expires_ns)| AuthorizedHost { addr, expires_ns })
            .collect())
    }

    fn set_whitelist(&self, policy: &Policy) -> Result<(), FirewallError> {
        *self.policy.lock().expect("poisoned") = policy.clone();
        Ok(())
    }
}
