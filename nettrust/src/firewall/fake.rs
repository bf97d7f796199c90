//! In-memory firewall with the eBPF backend's semantics, for tests without root.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
};

use super::{
    Authorization, AuthorizedHost, ClientScope, Firewall, FirewallError, Grant, HostState, Policy,
    Scope, Scopes, Transport,
};

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
    authorized: Mutex<HashMap<Grant, Entry>>,
    scopes: Mutex<Scopes>,
    /// The data path's record of who sent from a client address (see [`Firewall::client_scope`]).
    clients: Mutex<HashMap<(Transport, SocketAddr), ClientScope>>,
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

    /// The verdict the egress program would give a packet to `addr` at `now_ns` from a cgroup of
    /// the default scope; an allowed packet to an authorized host refreshes its last-seen time,
    /// as the egress program does.
    pub fn allows(&self, addr: IpAddr, now_ns: u64) -> bool {
        self.allows_from(Scope::DEFAULT, addr, now_ns)
    }

    /// [`FakeFirewall::allows`] for a packet from a cgroup of `scope`: whitelists and the
    /// scope's own networks, then the scope's grants only.
    pub fn allows_from(&self, scope: Scope, addr: IpAddr, now_ns: u64) -> bool {
        if self
            .scopes
            .lock()
            .expect("poisoned")
            .networks
            .iter()
            .any(|(s, net)| *s == scope && net.contains(&addr))
        {
            return true;
        }
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
        match authorized.get_mut(&Grant::new(scope, addr)) {
            Some(entry) if entry.expires_ns == 0 || now_ns < entry.expires_ns => {
                entry.last_seen_ns = now_ns;
                true
            }
            _ => false,
        }
    }

    /// Whether `addr` still has an entry in the default scope (live or expired but not yet
    /// swept).
    pub fn has_entry(&self, addr: IpAddr) -> bool {
        self.has_grant(Grant::from(addr))
    }

    /// Whether `grant` still has an entry (live or expired but not yet swept).
    pub fn has_grant(&self, grant: Grant) -> bool {
        self.authorized
            .lock()
            .expect("poisoned")
            .contains_key(&grant)
    }

    /// The name recorded for `addr` (in any scope).
    pub fn name_of(&self, addr: IpAddr) -> Option<String> {
        self.authorized
            .lock()
            .expect("poisoned")
            .iter()
            .find(|(grant, _)| grant.addr == addr)
            .map(|(_, e)| e.name.clone())
    }

    /// Records that `client` sent over `transport` from a cgroup of `who` (what the egress
    /// program records for the eBPF backend).
    pub fn set_client(&self, transport: Transport, client: SocketAddr, who: ClientScope) {
        self.clients
            .lock()
            .expect("poisoned")
            .insert((transport, client), who);
    }

    /// The scopes last set.
    pub fn scopes(&self) -> Scopes {
        self.scopes.lock().expect("poisoned").clone()
    }
}

impl Firewall for FakeFirewall {
    fn authorize(&self, grant: Grant, expires_ns: u64) -> Result<Authorization, FirewallError> {
        let addr = grant.addr;
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
        let existed = authorized.contains_key(&grant);
        authorized.entry(grant).or_default().expires_ns = expires_ns;
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
            .map(|(grant, e)| AuthorizedHost {
                addr: grant.addr,
                scope: grant.scope,
                expires_ns: e.expires_ns,
            })
            .collect())
    }

    fn record_name(&self, grant: Grant, name: &str) -> Result<(), FirewallError> {
        if let Some(entry) = self.authorized.lock().expect("poisoned").get_mut(&grant) {
            entry.name = name.to_owned();
        }
        Ok(())
    }

    fn due(&self, horizon_ns: u64) -> Result<Vec<HostState>, FirewallError> {
        let authorized = self.authorized.lock().expect("poisoned");
        Ok(authorized
            .iter()
            .filter(|(_, e)| e.expires_ns != 0 && e.expires_ns <= horizon_ns)
            .map(|(grant, e)| HostState {
                addr: grant.addr,
                scope: grant.scope,
                expires_ns: e.expires_ns,
                last_seen_ns: e.last_seen_ns,
            })
            .collect())
    }

    fn renew_if(
        &self,
        grant: Grant,
        seen_expires_ns: u64,
        new_expires_ns: u64,
    ) -> Result<bool, FirewallError> {
        let mut authorized = self.authorized.lock().expect("poisoned");
        match authorized.get_mut(&grant) {
            Some(entry) if entry.expires_ns == seen_expires_ns => {
                entry.expires_ns = new_expires_ns;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn remove_if(&self, grant: Grant, seen_expires_ns: u64) -> Result<bool, FirewallError> {
        let mut authorized = self.authorized.lock().expect("poisoned");
        if authorized
            .get(&grant)
            .is_some_and(|e| e.expires_ns == seen_expires_ns)
        {
            authorized.remove(&grant);
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn revoke(
        &self,
        revoked: &dyn Fn(Grant, Option<&str>) -> bool,
    ) -> Result<Vec<Grant>, FirewallError> {
        let mut authorized = self.authorized.lock().expect("poisoned");
        let gone: Vec<Grant> = authorized
            .iter()
            .filter(|(grant, e)| revoked(**grant, Some(e.name.as_str()).filter(|n| !n.is_empty())))
            .map(|(grant, _)| *grant)
            .collect();
        for grant in &gone {
            authorized.remove(grant);
        }
        Ok(gone)
    }

    fn set_scopes(&self, scopes: &Scopes) -> Result<(), FirewallError> {
        *self.scopes.lock().expect("poisoned") = scopes.clone();
        Ok(())
    }

    fn client_scope(&self, transport: Transport, client: SocketAddr) -> Option<ClientScope> {
        self.clients
            .lock()
            .expect("poisoned")
            .get(&(transport, client))
            .copied()
    }

    fn set_whitelist(&self, policy: &Policy) -> Result<(), FirewallError> {
        *self.policy.lock().expect("poisoned") = policy.clone();
        Ok(())
    }
}
