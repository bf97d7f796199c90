//! The [`Firewall`] trait for the nftables backend: every call works on the daemon's record of
//! its authorizations (`Inner::authorized`) and writes the authorized sets in one batch.

use std::{collections::BTreeSet, net::IpAddr};

use super::{
    NftablesFirewall,
    authorized::dump_authorized,
    layout::{Elem, Whitelist, blocked_set, elements_msg, sets},
    netlink::{self, MsgType, NFPROTO_INET},
};
use crate::firewall::{
    Authorization, AuthorizedHost, Firewall, FirewallError, Grant, HostState, Policy, Scope,
};

impl Firewall for NftablesFirewall {
    fn authorize(&self, grant: Grant, expires_ns: u64) -> Result<Authorization, FirewallError> {
        Ok(self.authorize_many(&[grant.unscoped()?], expires_ns, None)?[0])
    }

    fn authorize_answer(
        &self,
        scope: Scope,
        addrs: &[IpAddr],
        expires_ns: u64,
        name: &str,
    ) -> Result<Vec<Authorization>, FirewallError> {
        if let Some(&addr) = addrs.first() {
            Grant::new(scope, addr).unscoped()?;
        }
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
                scope: Scope::DEFAULT,
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
        let addr = grant.unscoped()?;
        // The daemon is the only writer of the set and DNS renewals go through the same
        // in-memory deadline: compare it, then re-add the element with the new timeout.
        let mut inner = self.lock();
        if inner.authorized.get(&addr).map(|h| h.expires_ns) != Some(seen_expires_ns) {
            return Ok(false);
        }
        inner.write(&[addr], new_expires_ns, None)?;
        Ok(true)
    }

    fn remove_if(&self, grant: Grant, seen_expires_ns: u64) -> Result<bool, FirewallError> {
        let addr = grant.unscoped()?;
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
        revoked: &dyn Fn(Grant, Option<&str>) -> bool,
    ) -> Result<Vec<Grant>, FirewallError> {
        let mut inner = self.lock();
        let gone: Vec<IpAddr> = inner
            .authorized
            .iter()
            .filter(|(addr, held)| revoked(Grant::from(**addr), held.name.as_deref()))
            .map(|(addr, _)| *addr)
            .collect();
        let Some(&first) = gone.first() else {
            return Ok(Vec::new());
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
        Ok(gone.into_iter().map(Grant::from).collect())
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
