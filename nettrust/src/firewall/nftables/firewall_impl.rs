//! The [`Firewall`] trait for the nftables backend: every call works on the daemon's record of
//! its authorizations (`Inner::authorized`, every scope) and writes the authorized sets in one
//! batch.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use super::{
    NftablesError, NftablesFirewall,
    authorized::{dump_authorized, grant_msgs},
    layout::{Elem, Whitelist, blocked_set, elements_msg, sets},
    netlink::{MsgType, NFPROTO_INET},
    policies::Policies,
};
use crate::firewall::{
    Authorization, AuthorizedHost, ClientScope, Firewall, FirewallError, Grant, HostState, Policy,
    Scope, Scopes, Transport,
};

impl Firewall for NftablesFirewall {
    fn authorize(&self, grant: Grant, expires_ns: u64) -> Result<Authorization, FirewallError> {
        let mut inner = self.lock();
        Ok(inner.write(grant.scope, &[grant.addr], expires_ns, None)?[0])
    }

    fn authorize_answer(
        &self,
        scope: Scope,
        addrs: &[IpAddr],
        expires_ns: u64,
        name: &str,
    ) -> Result<Vec<Authorization>, FirewallError> {
        let mut inner = self.lock();
        inner.write(scope, addrs, expires_ns, Some(name))
    }

    /// The name travels with the element (its comment); nothing to do after the fact.
    fn record_name(&self, _grant: Grant, _name: &str) -> Result<(), FirewallError> {
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
            .map(|(&grant, h)| HostState {
                addr: grant.addr,
                scope: grant.scope,
                expires_ns: h.expires_ns,
                last_seen_ns: 0,
            })
            .collect())
    }

    fn renew_if(
        &self,
        grant: Grant,
        seen_expires_ns: u64,
        new_expires_ns: u64,
    ) -> Result<bool, FirewallError> {
        // The daemon is the only writer of the set and DNS renewals go through the same
        // in-memory deadline: compare it, then re-add the element with the new timeout.
        let mut inner = self.lock();
        if inner.authorized.get(&grant).map(|h| h.expires_ns) != Some(seen_expires_ns) {
            return Ok(false);
        }
        inner.write(grant.scope, &[grant.addr], new_expires_ns, None)?;
        Ok(true)
    }

    fn remove_if(&self, grant: Grant, seen_expires_ns: u64) -> Result<bool, FirewallError> {
        let mut inner = self.lock();
        if inner.authorized.get(&grant).map(|h| h.expires_ns) != Some(seen_expires_ns) {
            return Ok(false);
        }
        let msgs = grant_msgs(MsgType::DelSetElem, [&grant]);
        // An element the kernel already expired is gone: deleting it fails harmlessly.
        let _ = inner.socket.batch(NFPROTO_INET, &msgs);
        inner.authorized.remove(&grant);
        Ok(true)
    }

    fn authorized(&self) -> Result<Vec<AuthorizedHost>, FirewallError> {
        let mut inner = self.lock();
        let out =
            dump_authorized(&mut inner.socket).map_err(|e| FirewallError::Read(Box::new(e)))?;
        // Forget what the kernel has expired.
        let present: BTreeSet<Grant> = out.iter().map(|(h, _)| h.grant()).collect();
        inner.authorized.retain(|g, _| present.contains(g));
        Ok(out.into_iter().map(|(h, _)| h).collect())
    }

    /// Deletes the matching elements in one batch; each is added first in the same transaction
    /// (as in `write`), so an element the kernel already expired cannot fail the batch.
    fn revoke(
        &self,
        revoked: &dyn Fn(Grant, Option<&str>) -> bool,
    ) -> Result<Vec<Grant>, FirewallError> {
        let mut inner = self.lock();
        let gone: Vec<Grant> = inner
            .authorized
            .iter()
            .filter(|(grant, held)| revoked(**grant, held.name.as_deref()))
            .map(|(grant, _)| *grant)
            .collect();
        let Some(&first) = gone.first() else {
            return Ok(Vec::new());
        };
        let mut msgs = grant_msgs(MsgType::NewSetElem, &gone);
        msgs.extend(grant_msgs(MsgType::DelSetElem, &gone));
        inner
            .socket
            .batch(NFPROTO_INET, &msgs)
            .map_err(|e| FirewallError::Update {
                addr: first.addr,
                source: Box::new(e),
            })?;
        for grant in &gone {
            inner.authorized.remove(grant);
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

    /// Replaces the policies' sets, chains and dispatch rules in one transaction (the whole table
    /// is written again with every live grant of a scope that still exists); without any policy
    /// before or after, nothing is written.
    fn set_scopes(&self, scopes: &Scopes) -> Result<(), FirewallError> {
        let mut inner = self.lock();
        let policies = Policies::resolve(&inner.options.mode, scopes).map_err(|e| match e {
            NftablesError::PoliciesInGatewayMode => {
                FirewallError::Unsupported("[[policy]] sections in gateway mode")
            }
            e => FirewallError::Policies(Box::new(e)),
        })?;
        inner.set_policies(policies)?;
        let mut clients = self.clients();
        clients.set_policies(&inner.policies);
        clients.set_listen(&scopes.listeners);
        self.follow_audits(&inner.policies);
        Ok(())
    }

    /// One `NETLINK_SOCK_DIAG` round trip finds the client's socket (in this network namespace)
    /// and its cgroup; the cgroup's deepest listed ancestor gives the policy.
    fn client_scope(&self, transport: Transport, client: SocketAddr) -> Option<ClientScope> {
        self.clients().client_scope(transport.proto(), client)
    }
}
