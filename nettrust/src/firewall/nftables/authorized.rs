//! The authorized sets: installing the table with every live authorization, writing a DNS
//! answer (with the eviction of idle authorizations when a set is full), and reading them back.

use std::{net::IpAddr, sync::Arc};

use super::{
    Held, Inner, TABLE,
    layout::{Elem, elements_msg, install_batch, sets},
    netlink::{self, Msg, MsgType, NFPROTO_INET, NetlinkError, Socket},
};
use crate::firewall::{Authorization, AuthorizedHost, FirewallError, Scope, boottime_ns};

impl Inner {
    /// The install batch plus every live authorization with its remaining lifetime.
    pub(super) fn install(&mut self) -> Result<(), NetlinkError> {
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
    pub(super) fn write(
        &mut self,
        addrs: &[IpAddr],
        expires_ns: u64,
        name: Option<&str>,
    ) -> Result<Vec<Authorization>, FirewallError> {
        let Some(&first) = addrs.first() else {
            return Ok(Vec::new());
        };
        let now = boottime_ns();
        let (results, writes) = self.plan(addrs, expires_ns, name, now);
        if writes.is_empty() {
            return Ok(results);
        }
        let evicted = self.make_room(&writes, now);
        self.socket
            .batch(NFPROTO_INET, &write_msgs(&evicted, &writes, now))
            .map_err(|e| FirewallError::Authorize {
                addr: first,
                source: Box::new(e),
            })?;
        if !evicted.is_empty() {
            for addr in &evicted {
                self.authorized.remove(addr);
            }
            crate::firewall::evict::EVICTED.inc_by(evicted.len() as u64);
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

    /// What writing `addrs` means: the result for each (`Already` when whitelisted or live), and
    /// the authorizations to write, once per address, with their deadline and name.
    fn plan(
        &self,
        addrs: &[IpAddr],
        expires_ns: u64,
        name: Option<&str>,
        now: u64,
    ) -> (Vec<Authorization>, Vec<(IpAddr, Held)>) {
        // Shown like the eBPF backend's names.
        let name: Option<Arc<str>> = name
            .map(crate::firewall::listed_name)
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
        (results, writes)
    }

    /// The authorizations to evict so that `writes` fit in `max_hosts` per family: none while
    /// there is room; otherwise expired ones are forgotten first and, if that is not enough, a
    /// batch (at least what is missing) of the least recently used, in the order of
    /// [`crate::firewall::evict`]. nftables keeps no last-packet time, so a host with a flow in conntrack
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
            evicted.extend(crate::firewall::evict::victims(
                candidates,
                answered,
                now,
                missing.max(crate::firewall::evict::batch(self.max_hosts)),
            ));
        }
        evicted
    }
}

/// The batch of a write: the `evicted` elements deleted, then `writes` as `add; delete; add`.
fn write_msgs(evicted: &[IpAddr], writes: &[(IpAddr, Held)], now: u64) -> Vec<Msg> {
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
    msgs
}

/// The set element of an authorization: its remaining lifetime (none = never expires) and name.
pub(super) fn element(addr: IpAddr, held: &Held, now: u64) -> Elem {
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
pub(super) fn dump_authorized(
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
            out.push((
                AuthorizedHost {
                    addr,
                    scope: Scope::DEFAULT,
                    expires_ns,
                },
                e.comment,
            ));
        }
    }
    Ok(out)
}
