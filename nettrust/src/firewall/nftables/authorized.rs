//! The authorized sets: installing the table with every live authorization, writing a DNS
//! answer (with the eviction of idle authorizations when a set is full), and reading them back.
//!
//! Capacities are those of the eBPF maps: `max_hosts` for the default scope's grants of each
//! family (`authorized4`, `authorized6`, as `HOSTS_V4` and `HOSTS_V6`), and `max_hosts` for
//! every policy's grants of both families together (the `scope_N_v4/v6` sets, as `GRANTS`),
//! shared between the policies by [`crate::firewall::fair_share`].

use std::{borrow::Cow, collections::BTreeMap, net::IpAddr, sync::Arc};

use super::{
    Held, Inner, TABLE,
    layout::{Elem, elements_msg, install_batch},
    netlink::{self, Msg, MsgType, NFPROTO_INET, NetlinkError, Socket},
    policies::{grant_set, grant_set_scope},
};
use crate::firewall::{
    Authorization, AuthorizedHost, FirewallError, Grant, Scope, boottime_ns, fair_share,
};

/// The elements of `grants`, grouped by the authorized set (scope and family) each belongs to.
pub(super) fn by_set<'a>(
    grants: impl IntoIterator<Item = (&'a Grant, Elem)>,
) -> BTreeMap<Cow<'static, str>, Vec<Elem>> {
    let mut out: BTreeMap<Cow<'static, str>, Vec<Elem>> = BTreeMap::new();
    for (grant, elem) in grants {
        out.entry(grant_set(grant.scope, grant.addr.is_ipv6()))
            .or_default()
            .push(elem);
    }
    out
}

/// `NFT_MSG_{NEW,DEL}SETELEM` messages of `ty` for `grants` in their sets.
pub(super) fn grant_msgs<'a>(ty: MsgType, grants: impl IntoIterator<Item = &'a Grant>) -> Vec<Msg> {
    let keyed = grants
        .into_iter()
        .map(|g| (g, Elem::key(netlink::addr_key(g.addr))));
    by_set(keyed)
        .into_iter()
        .flat_map(|(set, elems)| elements_msg(ty, &set, elems))
        .collect()
}

impl Inner {
    /// The install batch plus every live authorization with its remaining lifetime (those of a
    /// scope without sets are forgotten).
    pub(super) fn install(&mut self) -> Result<(), NetlinkError> {
        let mut msgs = install_batch(&self.scopes, &self.policies, &self.options, &self.whitelist);
        let now = boottime_ns();
        let policies = &self.policies;
        self.authorized.retain(|grant, h| {
            (h.expires_ns == 0 || h.expires_ns > now) && policies.has(grant.scope)
        });
        let elems = self
            .authorized
            .iter()
            .map(|(grant, held)| (grant, element(grant.addr, held, now)));
        for (set, elems) in by_set(elems) {
            msgs.extend(elements_msg(MsgType::NewSetElem, &set, elems));
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
        scope: Scope,
        addrs: &[IpAddr],
        expires_ns: u64,
        name: Option<&str>,
    ) -> Result<Vec<Authorization>, FirewallError> {
        let Some(&first) = addrs.first() else {
            return Ok(Vec::new());
        };
        if !self.policies.has(scope) {
            return Err(FirewallError::Authorize {
                addr: first,
                source: format!("no [[policy]] has scope {}", scope.0).into(),
            });
        }
        let now = boottime_ns();
        let (results, writes) = self.plan(scope, addrs, expires_ns, name, now);
        if writes.is_empty() {
            return Ok(results);
        }
        let evicted = self.make_room(scope, &writes, now)?;
        self.socket
            .batch(NFPROTO_INET, &write_msgs(scope, &evicted, &writes, now))
            .map_err(|e| FirewallError::Authorize {
                addr: first,
                source: Box::new(e),
            })?;
        if !evicted.is_empty() {
            for grant in &evicted {
                self.authorized.remove(grant);
            }
            let mut per_scope: BTreeMap<Scope, u64> = BTreeMap::new();
            for grant in &evicted {
                *per_scope.entry(grant.scope).or_default() += 1;
            }
            for (victim_scope, count) in per_scope {
                crate::firewall::evict::count_evicted(victim_scope, count);
            }
            tracing::info!(
                evicted = evicted.len(),
                first = ?evicted.first(),
                for_scope = scope.0,
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
        scope: Scope,
        addrs: &[IpAddr],
        expires_ns: u64,
        name: Option<&str>,
        now: u64,
    ) -> (Vec<Authorization>, Vec<(Grant, Held)>) {
        // Shown like the eBPF backend's names.
        let name: Option<Arc<str>> = name
            .map(crate::firewall::listed_name)
            .filter(|n| !n.is_empty())
            .map(|n| Arc::from(n.as_ref()));
        let mut results = Vec::with_capacity(addrs.len());
        let mut writes: Vec<(Grant, Held)> = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            if self.whitelist.host_addrs.contains(&addr) {
                results.push(Authorization::Already);
                continue;
            }
            let grant = Grant::new(scope, addr);
            let previous = self.authorized.get(&grant);
            let live = previous.is_some_and(|h| h.expires_ns == 0 || h.expires_ns > now);
            results.push(if live {
                Authorization::Already
            } else {
                Authorization::New
            });
            if writes.iter().any(|(g, _)| *g == grant) {
                continue;
            }
            let held = Held {
                expires_ns,
                name: name
                    .clone()
                    .or_else(|| previous.and_then(|h| h.name.clone())),
                answered_ns: now,
            };
            writes.push((grant, held));
        }
        (results, writes)
    }

    /// The authorizations to evict so that `writes` (grants of `scope`) fit in their [`Pool`]'s
    /// `max_hosts`: none while there is room; otherwise expired ones are forgotten first and, if
    /// that is not enough, a batch (at least what is missing) of the least recently used, in
    /// the order of [`crate::firewall::evict`], from the scopes [`fair_share`] lets `scope`
    /// take from. nftables keeps no last-packet time, so a host with a flow in conntrack (which
    /// this ruleset makes track every flow) counts as in use now, the others as unused since
    /// their last answer. A policy's grants that still do not fit are refused (`Full`), as
    /// `GRANTS` refuses them; the default scope's sets take them beyond `max_hosts`.
    fn make_room(
        &mut self,
        scope: Scope,
        writes: &[(Grant, Held)],
        now: u64,
    ) -> Result<Vec<Grant>, FirewallError> {
        let capacity = self.max_hosts as usize;
        // Every pool holds at most every authorization.
        if self.authorized.len() + writes.len() <= capacity {
            return Ok(Vec::new());
        }
        // One pass forgets the expired grants and counts the others per pool.
        let mut held = [0usize; Pool::COUNT];
        self.authorized.retain(|g, h| {
            let live = h.expires_ns == 0 || h.expires_ns > now;
            held[Pool::of(g).index()] += usize::from(live);
            live
        });
        let mut active: Option<std::collections::HashSet<Grant>> = None;
        let mut evicted = Vec::new();
        for &pool in Pool::of_scope(scope) {
            let new: Vec<IpAddr> = writes
                .iter()
                .filter(|(g, _)| Pool::of(g) == pool && !self.authorized.contains_key(g))
                .map(|(g, _)| g.addr)
                .collect();
            let missing = (held[pool.index()] + new.len()).saturating_sub(capacity);
            // Renewals only (nothing new) always go through, even in an overfull pool.
            let Some(&first_new) = new.first().filter(|_| missing > 0) else {
                continue;
            };
            let active = active.get_or_insert_with(|| {
                crate::conntrack::active_grants().unwrap_or_else(|e| {
                    tracing::debug!("conntrack unavailable for eviction ({e})");
                    Default::default()
                })
            });
            let candidates: Vec<(Grant, nettrust_common::HostValue)> = self
                .authorized
                .iter()
                .filter(|(g, _)| Pool::of(g) == pool && !writes.iter().any(|(w, _)| w == *g))
                .map(|(&g, h)| {
                    let value = nettrust_common::HostValue {
                        expires_ns: h.expires_ns,
                        last_seen_ns: 0,
                        flags: nettrust_common::FLAG_AUTHORIZED,
                        _pad: 0,
                    };
                    (g, value)
                })
                .collect();
            let shared = fair_share::Shared {
                entries: &candidates,
                capacity,
                scope_of: |g: &Grant| g.scope,
                in_use: |g: &Grant| active.contains(g),
            };
            let answered = |g: &Grant| self.authorized.get(g).map_or(0, |h| h.answered_ns);
            let batch = missing.max(crate::firewall::evict::batch(self.max_hosts));
            let chosen: Vec<Grant> = fair_share::victims(&shared, scope, answered, now, batch)
                .into_iter()
                .map(|i| candidates[i].0)
                .collect();
            if pool == Pool::Policies && chosen.len() < missing {
                return Err(FirewallError::Full {
                    addr: first_new,
                    map: "scope_*_v4/v6",
                    capacity: self.max_hosts,
                });
            }
            evicted.extend(chosen);
        }
        Ok(evicted)
    }
}

/// The authorizations that share one `max_hosts` capacity, as in the eBPF maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    /// The default scope's grants of one family (`HOSTS_V4` or `HOSTS_V6`).
    Default { v6: bool },
    /// Every policy's grants, both families (`GRANTS`).
    Policies,
}

impl Pool {
    /// How many pools there are ([`Pool::index`] is below).
    const COUNT: usize = 3;

    /// The pool's place in a per-pool array.
    fn index(self) -> usize {
        match self {
            Self::Default { v6 } => usize::from(v6),
            Self::Policies => 2,
        }
    }

    fn of(grant: &Grant) -> Self {
        if grant.scope.is_default() {
            Self::Default {
                v6: grant.addr.is_ipv6(),
            }
        } else {
            Self::Policies
        }
    }

    /// The pools a write of `scope`'s grants may fill.
    fn of_scope(scope: Scope) -> &'static [Self] {
        if scope.is_default() {
            &[Self::Default { v6: false }, Self::Default { v6: true }]
        } else {
            &[Self::Policies]
        }
    }
}

/// The batch of a write of grants of `scope`: the `evicted` elements (of any scope) deleted,
/// then `writes` as `add; delete; add`.
fn write_msgs(scope: Scope, evicted: &[Grant], writes: &[(Grant, Held)], now: u64) -> Vec<Msg> {
    // Evicted elements: added first so the delete cannot fail on one the kernel already
    // expired (a failed message would abort the whole batch).
    let mut msgs = grant_msgs(MsgType::NewSetElem, evicted);
    msgs.extend(grant_msgs(MsgType::DelSetElem, evicted));
    for v6 in [false, true] {
        let set = grant_set(scope, v6);
        let family = || writes.iter().filter(move |(g, _)| g.addr.is_ipv6() == v6);
        let plain = || family().map(|(g, _)| Elem::key(netlink::addr_key(g.addr)));
        msgs.extend(elements_msg(MsgType::NewSetElem, &set, plain()));
        msgs.extend(elements_msg(MsgType::DelSetElem, &set, plain()));
        msgs.extend(elements_msg(
            MsgType::NewSetElem,
            &set,
            family().map(|(g, held)| element(g.addr, held, now)),
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

/// The elements of every authorized set (`authorized4/6` and each scope's) with their scope,
/// deadline (`CLOCK_BOOTTIME`) and name; empty when the table does not exist.
pub(super) fn dump_authorized(
    socket: &mut Socket,
) -> Result<Vec<(AuthorizedHost, Option<String>)>, NetlinkError> {
    let now = boottime_ns();
    let mut out = Vec::new();
    let names = socket.set_names(NFPROTO_INET, TABLE)?;
    for (set, scope) in names
        .iter()
        .filter_map(|(name, _)| Some((name, grant_set_scope(name)?)))
    {
        for e in socket.dump_set(NFPROTO_INET, TABLE, set)? {
            let Some(addr) = netlink::key_addr(&e.key) else {
                continue;
            };
            let expires_ns = e
                .expires_in_ms
                .map_or(0, |ms| now.saturating_add(ms.saturating_mul(1_000_000)));
            out.push((
                AuthorizedHost {
                    addr,
                    scope,
                    expires_ns,
                },
                e.comment,
            ));
        }
    }
    Ok(out)
}
