//! What goes into the table: the whitelists as set elements, and the batch that installs sets,
//! chains and rules at start.

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;

use super::{
    CgroupMatch, FILTER_CHAIN, INPUT_CHAIN, Mode, Options, POLICY_CHAIN, TABLE,
    expr::{self, Rule},
    netlink::{self, Attrs, Msg, MsgType, NLM_F_CREATE},
    policies::{Policies, audit_rules},
};
use crate::firewall::{Policy, Service};

/// `NLM_F_APPEND`: add a rule at the end of its chain.
const NLM_F_APPEND: u16 = 0x800;

/// The sets, per family: (hosts, networks, authorized).
const SETS_V4: [&str; 3] = ["whitelist4", "whitelist-net4", "authorized4"];
const SETS_V6: [&str; 3] = ["whitelist6", "whitelist-net6", "authorized6"];

pub(super) fn sets(v6: bool) -> [&'static str; 3] {
    if v6 { SETS_V6 } else { SETS_V4 }
}

/// The interval sets of the peers that get no replies through connections they opened (the
/// blacklist's hosts and networks), per family.
pub(super) fn blocked_set(v6: bool) -> &'static str {
    if v6 { "blocked6" } else { "blocked4" }
}

/// The whitelist content of one family: host keys and interval elements `(key, is_end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Whitelist {
    pub(super) hosts: [BTreeSet<Vec<u8>>; 2],
    pub(super) ranges: [Vec<(Vec<u8>, bool)>; 2],
    /// The host addresses, for `Authorization::Already`.
    pub(super) host_addrs: BTreeSet<IpAddr>,
    /// Interval elements of the blocked peers.
    pub(super) blocked: [Vec<(Vec<u8>, bool)>; 2],
    /// The whitelisted services (rules, written at install).
    pub(super) services: Vec<Service>,
}

/// Merges overlapping and adjacent networks of one family into interval-set elements: a start
/// element per range and an `INTERVAL_END` element at the first address after it (none when the
/// range reaches the top of the address space). The kernel refuses overlapping intervals.
pub(super) fn ranges(nets: impl Iterator<Item = IpNet>, v6: bool) -> Vec<(Vec<u8>, bool)> {
    let bits = if v6 { 128 } else { 32 };
    let mut spans: Vec<(u128, u128)> = nets
        .map(|net| match net {
            IpNet::V4(n) => (
                u128::from(u32::from(n.network())),
                u128::from(u32::from(n.broadcast())),
            ),
            IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
        })
        .collect();
    spans.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::new();
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let key = |v: u128| -> Vec<u8> {
        if v6 {
            v.to_be_bytes().to_vec()
        } else {
            (v as u32).to_be_bytes().to_vec()
        }
    };
    let max = if bits == 128 {
        u128::MAX
    } else {
        u128::from(u32::MAX)
    };
    let mut out = Vec::new();
    for (start, end) in merged {
        out.push((key(start), false));
        if end < max {
            out.push((key(end + 1), true));
        }
    }
    out
}

impl Whitelist {
    pub(super) fn new(policy: &Policy) -> Self {
        let mut w = Whitelist::default();
        for &addr in &policy.whitelist_hosts {
            let family = usize::from(addr.is_ipv6());
            w.hosts[family].insert(netlink::addr_key(addr));
            w.host_addrs.insert(addr);
        }
        for v6 in [false, true] {
            let nets = policy
                .whitelist_networks
                .iter()
                .copied()
                .filter(move |n| matches!(n, IpNet::V6(_)) == v6);
            w.ranges[usize::from(v6)] = ranges(nets, v6);
            let blocked = policy
                .blocked
                .iter()
                .copied()
                .filter(move |n| matches!(n, IpNet::V6(_)) == v6);
            w.blocked[usize::from(v6)] = ranges(blocked, v6);
        }
        w.services = policy.services.clone();
        w
    }
}

/// Bytes of elements per `NFT_MSG_{NEW,DEL}SETELEM` message: the nested element list is one
/// netlink attribute, whose length is a u16 (< 64 KiB).
const LIST_BYTES_MAX: usize = 60_000;

/// One set element to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Elem {
    /// Key bytes (network byte order).
    pub(super) key: Vec<u8>,
    /// `NFTA_SET_ELEM_FLAGS` (interval end).
    pub(super) flags: u32,
    /// Element timeout in milliseconds (timeout sets only).
    pub(super) timeout_ms: Option<u64>,
    /// Element comment: the DNS name that authorized the address.
    pub(super) comment: Option<String>,
}

impl Elem {
    pub(super) fn key(key: Vec<u8>) -> Self {
        Self {
            key,
            ..Self::default()
        }
    }

    /// An interval-set boundary.
    pub(super) fn boundary(key: Vec<u8>, end: bool) -> Self {
        Self {
            key,
            flags: if end { netlink::elem::INTERVAL_END } else { 0 },
            ..Self::default()
        }
    }
}

/// `NFT_MSG_{NEW,DEL}SETELEM` messages for `elems`, split so that each fits in one netlink
/// attribute; none when `elems` is empty.
pub(super) fn elements_msg(
    ty: MsgType,
    set: &str,
    elems: impl IntoIterator<Item = Elem>,
) -> Vec<Msg> {
    use netlink::{data, elem, elem_list};
    let flags = if matches!(ty, MsgType::NewSetElem) {
        NLM_F_CREATE
    } else {
        0
    };
    let message = |list: Attrs| {
        Msg::new(
            ty,
            flags,
            Attrs::new()
                .str(elem_list::TABLE, TABLE)
                .str(elem_list::SET, set)
                .nested(elem_list::ELEMENTS, list),
        )
    };
    let mut msgs = Vec::new();
    let mut list = Attrs::new();
    for e in elems {
        let mut a = Attrs::new().nested(elem::KEY, Attrs::new().bytes(data::VALUE, &e.key));
        if e.flags != 0 {
            a = a.be32(elem::FLAGS, e.flags);
        }
        if let Some(ms) = e.timeout_ms {
            a = a.be64(elem::TIMEOUT, ms);
        }
        if let Some(comment) = &e.comment {
            a = a.bytes(elem::USERDATA, &netlink::comment_udata(comment));
        }
        if list.len() + a.len() + 4 > LIST_BYTES_MAX {
            msgs.push(message(std::mem::take(&mut list)));
        }
        list = list.nested(netlink::LIST_ELEM, a);
    }
    if !list.is_empty() {
        msgs.push(message(list));
    }
    msgs
}

pub(super) fn rule_msg(chain: &str, rule: Rule) -> Msg {
    use netlink::rule;
    Msg::new(
        MsgType::NewRule,
        NLM_F_CREATE | NLM_F_APPEND,
        Attrs::new()
            .str(rule::TABLE, TABLE)
            .str(rule::CHAIN, chain)
            .nested(rule::EXPRESSIONS, rule.into_attrs()),
    )
}

pub(super) fn chain_msg(name: &str, hook: Option<(u32, i32)>) -> Msg {
    use netlink::chain;
    let mut attrs = Attrs::new().str(chain::TABLE, TABLE).str(chain::NAME, name);
    if let Some((hooknum, policy)) = hook {
        attrs = attrs
            .nested(
                chain::HOOK,
                Attrs::new()
                    .be32(chain::HOOK_HOOKNUM, hooknum)
                    // NF_IP_PRI_FILTER = 0
                    .be32(chain::HOOK_PRIORITY, 0),
            )
            .be32(chain::POLICY, policy as u32)
            .str(chain::TYPE, "filter");
    }
    Msg::new(MsgType::NewChain, NLM_F_CREATE, attrs)
}

pub(super) fn table_msg(ty: MsgType) -> Msg {
    let flags = if matches!(ty, MsgType::NewTable) {
        NLM_F_CREATE
    } else {
        0
    };
    // No NFT_TABLE_F_OWNER: the table must survive the process (fail closed).
    Msg::new(
        ty,
        flags,
        Attrs::new()
            .str(netlink::table::NAME, TABLE)
            .be32(netlink::table::FLAGS, 0),
    )
}

/// The whole table in one batch: an existing `inet net-trust` (left by a killed daemon) is
/// replaced atomically (`add table; delete table; add table …` in one transaction), so there is
/// no moment without a filter and no moment where whitelisted traffic is dropped.
pub(super) fn install_batch(
    scopes: &Option<Vec<CgroupMatch>>,
    policies: &Policies,
    options: &Options,
    w: &Whitelist,
) -> Vec<Msg> {
    let mut msgs = vec![
        table_msg(MsgType::NewTable),
        table_msg(MsgType::DelTable),
        table_msg(MsgType::NewTable),
    ];
    msgs.extend(set_msgs(w));
    msgs.push(chain_msg(POLICY_CHAIN, None));
    msgs.extend(guard_rules(POLICY_CHAIN));
    let authorized = [sets(false)[2].to_owned(), sets(true)[2].to_owned()];
    msgs.extend(allow_rules(
        POLICY_CHAIN,
        w,
        &[authorized],
        None,
        &End::Reject,
    ));
    msgs.extend(policies.msgs(w));
    msgs.extend(base_chains(scopes, policies, options));
    msgs
}

/// A `NFT_MSG_NEWSET` of an address set of one family, with `flags` (`INTERVAL`, `TIMEOUT`)
/// and the transaction-local id `id`.
pub(super) fn set_msg(name: &str, v6: bool, flags: u32, id: u32) -> Msg {
    Msg::new(
        MsgType::NewSet,
        NLM_F_CREATE,
        set_attrs(name, v6, flags, id),
    )
}

/// The attributes of [`set_msg`].
pub(super) fn set_attrs(name: &str, v6: bool, flags: u32, id: u32) -> Attrs {
    use netlink::set;
    let (key_type, key_len) = if v6 {
        (set::TYPE_IP6ADDR, 16)
    } else {
        (set::TYPE_IPADDR, 4)
    };
    Attrs::new()
        .str(set::TABLE, TABLE)
        .str(set::NAME, name)
        .be32(set::FLAGS, flags)
        .be32(set::KEY_TYPE, key_type)
        .be32(set::KEY_LEN, key_len)
        .be32(set::ID, id)
}

/// The sets of both families with the whitelisted hosts, networks and blocked peers.
fn set_msgs(w: &Whitelist) -> Vec<Msg> {
    use netlink::set;
    let mut msgs = Vec::new();
    let mut id = 1;
    for v6 in [false, true] {
        for (name, flags) in sets(v6).into_iter().zip([0, set::INTERVAL, set::TIMEOUT]) {
            msgs.push(set_msg(name, v6, flags, id));
            id += 1;
        }
        let family = usize::from(v6);
        let [hosts, nets, _] = sets(v6);
        msgs.extend(elements_msg(
            MsgType::NewSetElem,
            hosts,
            w.hosts[family].iter().map(|k| Elem::key(k.clone())),
        ));
        msgs.extend(elements_msg(
            MsgType::NewSetElem,
            nets,
            w.ranges[family]
                .iter()
                .map(|(k, end)| Elem::boundary(k.clone(), *end)),
        ));
        msgs.push(set_msg(blocked_set(v6), v6, set::INTERVAL, id));
        id += 1;
        msgs.extend(elements_msg(
            MsgType::NewSetElem,
            blocked_set(v6),
            w.blocked[family]
                .iter()
                .map(|(k, end)| Elem::boundary(k.clone(), *end)),
        ));
    }
    msgs
}

/// The first rules of a policy chain (`chain`): what is dropped or accepted whatever the lists
/// say.
pub(super) fn guard_rules(chain: &str) -> Vec<Msg> {
    let mut msgs = Vec::new();
    // Source-routed packets first, replies included: their destination address is only the
    // first hop (IPv4 loose/strict source route options, an IPv6 routing header with segments
    // left).
    for rule in [
        Rule::new().ipv4_option(0x83),
        Rule::new().ipv4_option(0x89),
        Rule::new().ipv6_segments_left(),
    ] {
        msgs.push(rule_msg(chain, rule.counter().verdict(expr::DROP)));
    }
    // No reply to a connection a blocked (blacklisted) peer opened.
    for v6 in [false, true] {
        msgs.push(rule_msg(
            chain,
            Rule::new()
                .nfproto(v6)
                .ct_reply_direction()
                .daddr(v6)
                .lookup(blocked_set(v6))
                .counter()
                .verdict(expr::DROP),
        ));
    }
    // Replies: packets of connections the peer opened (a local server answering), and ICMP errors
    // about them. Packets in the original direction of an outbound connection are judged by the
    // lists every time, so an expired authorization stops established flows too, as with eBPF.
    msgs.push(rule_msg(
        chain,
        Rule::new()
            .ct_reply_direction()
            .ct_established_or_related()
            .verdict(expr::ACCEPT),
    ));
    // The kernel's own IPv6 control traffic: MLD (130-132, 143) and neighbour discovery
    // (133-137, RFC 4861) are sent from per-namespace kernel sockets, which belong to a cgroup
    // like any socket; without them IPv6 stops resolving neighbours. Only to link-local
    // (fe80::/10) and multicast (ff00::/8) addresses: elsewhere these types are no link control.
    let link_local = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let multicast = [0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for (lo, hi) in [(130, 137), (143, 143)] {
        for (prefix, bits) in [(link_local, 10), (multicast, 8)] {
            msgs.push(rule_msg(
                chain,
                Rule::new()
                    .icmpv6_types(lo, hi)
                    .daddr_v6_in(prefix, bits)
                    .verdict(expr::ACCEPT),
            ));
        }
    }
    // DHCPv6 to All_DHCP_Relay_Agents_and_Servers (ff02::1:2, port 547; RFC 8415 §7).
    msgs.push(rule_msg(
        chain,
        Rule::new()
            .nfproto(true)
            .l4proto(libc::IPPROTO_UDP as u8)
            .daddr_eq(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2])
            .dport(547)
            .verdict(expr::ACCEPT),
    ));
    msgs
}

/// How a policy chain ends for what no rule accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum End {
    /// Counted rejects: a TCP reset, ICMP admin-prohibited for the rest.
    Reject,
    /// Audit mode: a rate-limited log line with this prefix, then a counted accept.
    Audit(String),
}

/// The rest of a policy chain (`chain`): the whitelisted services, networks and hosts, then the
/// sets of `granted` (pairs of IPv4 and IPv6 set names, in order), then `end`.
pub(super) fn allow_rules(
    chain: &str,
    w: &Whitelist,
    granted: &[[String; 2]],
    mark_scope: Option<u32>,
    end: &End,
) -> Vec<Msg> {
    let mut msgs = Vec::new();
    // Whitelisted services (the upstream DNS servers): their address, port and transport, for
    // the daemon's own upstream sockets only (their mark), so nobody else asks them directly.
    for service in &w.services {
        let addr = netlink::addr_key(service.addr.ip());
        msgs.push(rule_msg(
            chain,
            Rule::new()
                .nfproto(service.addr.is_ipv6())
                .l4proto(service.transport.proto())
                .daddr_eq(&addr)
                .dport(service.addr.port())
                .mark(nettrust_common::UPSTREAM_MARK)
                .verdict(expr::ACCEPT),
        ));
    }
    // Networks, then hosts, then what was granted, each per family.
    let whitelists = [1, 0]
        .map(|index| sets(false)[index])
        .into_iter()
        .zip([1, 0].map(|index| sets(true)[index]));
    let whitelists = whitelists.map(|sets| (sets, None));
    let granted = granted
        .iter()
        .map(|[v4, v6]| ((v4.as_str(), v6.as_str()), mark_scope));
    for ((v4, v6), mark) in whitelists.chain(granted) {
        for (set, is_v6) in [(v4, false), (v6, true)] {
            let rule = Rule::new().nfproto(is_v6).daddr(is_v6).lookup(set);
            let rule = match mark {
                Some(scope) => rule.ct_mark_scope(scope),
                None => rule,
            };
            msgs.push(rule_msg(chain, rule.verdict(expr::ACCEPT)));
        }
    }
    match end {
        End::Reject => {
            msgs.push(rule_msg(
                chain,
                Rule::new().l4proto_tcp().counter().reject_tcp_reset(),
            ));
            msgs.push(rule_msg(
                chain,
                Rule::new().counter().reject_icmpx_admin_prohibited(),
            ));
        }
        End::Audit(prefix) => msgs.extend(audit_rules(chain, prefix)),
    }
    msgs
}

/// The base chain that sends the filtered traffic to the policy chain, and the `input` chain of
/// `--firewall-drop-input`.
fn base_chains(
    scopes: &Option<Vec<CgroupMatch>>,
    policies: &Policies,
    options: &Options,
) -> Vec<Msg> {
    let mut msgs = Vec::new();
    let hook = match options.mode {
        Mode::Output { .. } => netlink::chain::NF_INET_LOCAL_OUT,
        Mode::Forward => netlink::chain::NF_INET_FORWARD,
    };
    msgs.push(chain_msg(FILTER_CHAIN, Some((hook, expr::ACCEPT))));
    match scopes {
        None => msgs.push(rule_msg(FILTER_CHAIN, Rule::new().goto(POLICY_CHAIN))),
        Some(cgroups) => {
            // The listed cgroups of the policies first, deepest first: the first match decides.
            for (m, chain) in policies.dispatch() {
                msgs.push(rule_msg(
                    FILTER_CHAIN,
                    Rule::new().socket_cgroup(m.level, m.id).goto(&chain),
                ));
            }
            let dispatched = |m: &CgroupMatch| policies.listed.iter().any(|l| l.m == *m);
            for m in cgroups.iter().filter(|m| !dispatched(m)) {
                msgs.push(rule_msg(
                    FILTER_CHAIN,
                    Rule::new().socket_cgroup(m.level, m.id).goto(POLICY_CHAIN),
                ));
            }
        }
    }

    if options.drop_input {
        msgs.push(chain_msg(
            INPUT_CHAIN,
            Some((netlink::chain::NF_INET_LOCAL_IN, expr::DROP)),
        ));
        msgs.push(rule_msg(
            INPUT_CHAIN,
            Rule::new()
                .ct_established_or_related()
                .counter()
                .verdict(expr::ACCEPT),
        ));
        msgs.push(rule_msg(
            INPUT_CHAIN,
            Rule::new().iif_loopback().verdict(expr::ACCEPT),
        ));
        // IPv6 needs neighbour discovery and MLD in both directions.
        for (lo, hi) in [(130, 137), (143, 143)] {
            msgs.push(rule_msg(
                INPUT_CHAIN,
                Rule::new().icmpv6_types(lo, hi).verdict(expr::ACCEPT),
            ));
        }
    }
    msgs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> impl Iterator<Item = IpNet> {
        list.iter()
            .map(|s| s.parse::<IpNet>().unwrap())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn ranges_are_merged_and_end_after_the_last_address() {
        let r = ranges(
            nets(&[
                "10.0.0.0/24",
                "10.0.1.0/25",
                "10.0.0.128/25",
                "192.0.2.7/32",
            ]),
            false,
        );
        assert_eq!(
            r,
            vec![
                (vec![10, 0, 0, 0], false),
                (vec![10, 0, 1, 128], true),
                (vec![192, 0, 2, 7], false),
                (vec![192, 0, 2, 8], true),
            ]
        );
    }

    #[test]
    fn a_range_reaching_the_top_has_no_end_element() {
        assert_eq!(
            ranges(nets(&["0.0.0.0/0"]), false),
            vec![(vec![0, 0, 0, 0], false)]
        );
        let r = ranges(nets(&["::1/128"]), true);
        let mut end = vec![0u8; 16];
        end[15] = 2;
        assert_eq!(r[1], (end, true));
    }
}
