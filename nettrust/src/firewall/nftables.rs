//! The nftables backend: one `inet net-trust` table, written over netlink in atomic batches.
//!
//! Layout (names kept from the original where they make sense, one set per family):
//!
//! ```text
//! table inet net-trust {
//!   set whitelist4      { type ipv4_addr; }                    # hosts
//!   set whitelist6      { type ipv6_addr; }
//!   set whitelist-net4  { type ipv4_addr; flags interval; }    # networks
//!   set whitelist-net6  { type ipv6_addr; flags interval; }
//!   set authorized4     { type ipv4_addr; flags timeout; }     # DNS answers, kernel-expired
//!   set authorized6     { type ipv6_addr; flags timeout; }
//!   chain allowlist {
//!     ct direction reply ct state established,related accept   # replies to inbound connections
//!     icmpv6 type 130-137 accept ; icmpv6 type 143 accept   # NDP and MLD
//!     ip daddr @whitelist-net4 accept ; ip6 daddr @whitelist-net6 accept
//!     ip daddr @whitelist4 accept     ; ip6 daddr @whitelist6 accept
//!     ip daddr @authorized4 accept    ; ip6 daddr @authorized6 accept
//!     meta l4proto tcp counter reject with tcp reset
//!     counter reject with icmpx admin-prohibited
//!   }
//!   chain authorized-output {            # hook output (or forward in gateway mode), policy accept
//!     socket cgroupv2 level L "<cgroup id>" goto allowlist  # one per --cgroup (level 0 for the
//!   }                                                     # root); unconditional in gateway mode
//!   chain input { … }                    # only with --firewall-drop-input: policy drop
//! }
//! ```
//!
//! Everything is looked up by name *inside this table only*; other tables — including chains
//! named `input` or `authorized-output` in them — are never read or written. The table is created
//! without the `owner` flag, so it outlives the process (fail closed after `kill -9`).

mod expr;
pub mod netlink;

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use ipnet::IpNet;

use self::{
    expr::Rule,
    netlink::{Attrs, Msg, MsgType, NFPROTO_INET, NLM_F_CREATE, NetlinkError, Socket},
};
use super::{Authorization, AuthorizedHost, Firewall, FirewallError, Policy, boottime_ns};

/// The table nettrust owns.
pub const TABLE: &str = "net-trust";
/// The base chain filtering outgoing (or, in gateway mode, forwarded) traffic.
pub const FILTER_CHAIN: &str = "authorized-output";
/// The regular chain holding the policy rules, entered by `goto` from the base chain.
pub const POLICY_CHAIN: &str = "allowlist";
/// The base chain of `--firewall-drop-input`.
pub const INPUT_CHAIN: &str = "input";

/// `NLM_F_APPEND`: add a rule at the end of its chain.
const NLM_F_APPEND: u16 = 0x800;

/// The sets, per family: (hosts, networks, authorized).
const SETS_V4: [&str; 3] = ["whitelist4", "whitelist-net4", "authorized4"];
const SETS_V6: [&str; 3] = ["whitelist6", "whitelist-net6", "authorized6"];

fn sets(v6: bool) -> [&'static str; 3] {
    if v6 { SETS_V6 } else { SETS_V4 }
}

/// Where the base chain hooks in and whose traffic it judges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Outgoing traffic of sockets in these cgroup v2 directories (the cgroup2 root = the whole
    /// host).
    Output {
        /// The filtered cgroups.
        cgroups: Vec<PathBuf>,
    },
    /// Traffic routed through this host (gateway mode, `--firewall-type forward`).
    Forward,
}

/// How the backend is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Hook and scope.
    pub mode: Mode,
    /// Add an `input` chain that drops inbound traffic other than loopback and replies.
    pub drop_input: bool,
}

/// Errors of the nftables backend.
#[derive(Debug, thiserror::Error)]
pub enum NftablesError {
    /// A configured cgroup cannot be matched by `socket cgroupv2`.
    #[error("cgroup {path}: cannot resolve it for nftables matching")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket to nf_tables")]
    Socket(#[source] NetlinkError),
    /// The table could not be installed.
    #[error("cannot create the nftables table inet {TABLE}")]
    Install(#[source] NetlinkError),
    /// The table could not be deleted.
    #[error("cannot delete the nftables table inet {TABLE}")]
    Delete(#[source] NetlinkError),
}

/// One `socket cgroupv2` match: the cgroup's depth below the cgroup2 root and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CgroupMatch {
    level: u32,
    id: u64,
}

/// Resolves `cgroup`, a directory of the cgroup2 filesystem mounted at `root`. The root itself
/// is level 0: it contains every process, and matching it (rather than every packet) keeps
/// packets without a socket — neighbour discovery, the kernel's own replies — unfiltered, as the
/// eBPF backend (attached to sockets' cgroups) does.
fn cgroup_match(root: &Path, cgroup: &Path) -> Result<CgroupMatch, NftablesError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| NftablesError::Cgroup {
        path: cgroup.to_owned(),
        source,
    };
    let root = root.canonicalize().map_err(|e| err(e.into()))?;
    let path = cgroup.canonicalize().map_err(|e| err(e.into()))?;
    let relative = path
        .strip_prefix(&root)
        .map_err(|_| err(format!("not below the cgroup2 mount {}", root.display()).into()))?;
    let level = u32::try_from(relative.components().count()).map_err(|e| err(e.into()))?;
    // The kernfs inode number of a cgroup directory is its cgroup id (cgroup_id(), 64-bit ino),
    // the value `socket cgroupv2` loads; the root's is 1.
    let id = std::fs::metadata(&path).map_err(|e| err(e.into()))?.ino();
    Ok(CgroupMatch { level, id })
}

/// The whitelist content of one family: host keys and interval elements `(key, is_end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Whitelist {
    hosts: [BTreeSet<Vec<u8>>; 2],
    ranges: [Vec<(Vec<u8>, bool)>; 2],
    /// The host addresses, for `Authorization::Already`.
    host_addrs: BTreeSet<IpAddr>,
}

/// Merges overlapping and adjacent networks of one family into interval-set elements: a start
/// element per range and an `INTERVAL_END` element at the first address after it (none when the
/// range reaches the top of the address space). The kernel refuses overlapping intervals.
fn ranges(nets: impl Iterator<Item = IpNet>, v6: bool) -> Vec<(Vec<u8>, bool)> {
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
    fn new(policy: &Policy) -> Self {
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
        }
        w
    }
}

/// Elements per `NFT_MSG_{NEW,DEL}SETELEM` message: the nested element list is one netlink
/// attribute, whose length is a u16 (< 64 KiB); an IPv6 element takes about 40 bytes.
const ELEMENTS_PER_MSG: usize = 1000;

/// `NFT_MSG_{NEW,DEL}SETELEM` messages for `elems` (`(key, flags, timeout in ms)`), split so that
/// each fits in one netlink attribute; none when `elems` is empty.
fn elements_msg(
    ty: MsgType,
    set: &str,
    elems: impl IntoIterator<Item = (Vec<u8>, u32, Option<u64>)>,
) -> Vec<Msg> {
    use netlink::{data, elem, elem_list};
    let flags = if matches!(ty, MsgType::NewSetElem) {
        NLM_F_CREATE
    } else {
        0
    };
    let elems: Vec<_> = elems.into_iter().collect();
    elems
        .chunks(ELEMENTS_PER_MSG)
        .map(|chunk| {
            let mut list = Attrs::new();
            for (key, flags, timeout) in chunk {
                let mut e = Attrs::new().nested(elem::KEY, Attrs::new().bytes(data::VALUE, key));
                if *flags != 0 {
                    e = e.be32(elem::FLAGS, *flags);
                }
                if let Some(ms) = timeout {
                    e = e.be64(elem::TIMEOUT, *ms);
                }
                list = list.nested(netlink::LIST_ELEM, e);
            }
            Msg::new(
                ty,
                flags,
                Attrs::new()
                    .str(elem_list::TABLE, TABLE)
                    .str(elem_list::SET, set)
                    .nested(elem_list::ELEMENTS, list),
            )
        })
        .collect()
}

fn rule_msg(chain: &str, rule: Rule) -> Msg {
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

fn chain_msg(name: &str, hook: Option<(u32, i32)>) -> Msg {
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

fn table_msg(ty: MsgType) -> Msg {
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
fn install_batch(scopes: &Option<Vec<CgroupMatch>>, options: &Options, w: &Whitelist) -> Vec<Msg> {
    use netlink::set;
    let mut msgs = vec![
        table_msg(MsgType::NewTable),
        table_msg(MsgType::DelTable),
        table_msg(MsgType::NewTable),
    ];
    let mut id = 1;
    for v6 in [false, true] {
        let (key_type, key_len) = if v6 {
            (set::TYPE_IP6ADDR, 16)
        } else {
            (set::TYPE_IPADDR, 4)
        };
        for (name, flags) in sets(v6).into_iter().zip([0, set::INTERVAL, set::TIMEOUT]) {
            msgs.push(Msg::new(
                MsgType::NewSet,
                NLM_F_CREATE,
                Attrs::new()
                    .str(set::TABLE, TABLE)
                    .str(set::NAME, name)
                    .be32(set::FLAGS, flags)
                    .be32(set::KEY_TYPE, key_type)
                    .be32(set::KEY_LEN, key_len)
                    .be32(set::ID, id),
            ));
            id += 1;
        }
        let family = usize::from(v6);
        let [hosts, nets, _] = sets(v6);
        msgs.extend(elements_msg(
            MsgType::NewSetElem,
            hosts,
            w.hosts[family].iter().map(|k| (k.clone(), 0, None)),
        ));
        msgs.extend(elements_msg(
            MsgType::NewSetElem,
            nets,
            w.ranges[family].iter().map(|(k, end)| {
                (
                    k.clone(),
                    if *end { netlink::elem::INTERVAL_END } else { 0 },
                    None,
                )
            }),
        ));
    }

    msgs.push(chain_msg(POLICY_CHAIN, None));
    // Replies: packets of connections the peer opened (a local server answering), and ICMP errors
    // about them. Packets in the original direction of an outbound connection are judged by the
    // lists every time, so an expired authorization stops established flows too, as with eBPF.
    msgs.push(rule_msg(
        POLICY_CHAIN,
        Rule::new()
            .ct_reply_direction()
            .ct_established_or_related()
            .verdict(expr::ACCEPT),
    ));
    // The kernel's own IPv6 control traffic: MLD (130-132, 143) and neighbour discovery
    // (133-137, RFC 4861) are sent from per-namespace kernel sockets, which belong to a cgroup
    // like any socket; without them IPv6 stops resolving neighbours.
    for (lo, hi) in [(130, 137), (143, 143)] {
        msgs.push(rule_msg(
            POLICY_CHAIN,
            Rule::new().icmpv6_types(lo, hi).verdict(expr::ACCEPT),
        ));
    }
    // Networks, then hosts, then authorizations, each per family.
    for index in 0..3 {
        for v6 in [false, true] {
            msgs.push(rule_msg(
                POLICY_CHAIN,
                Rule::new()
                    .nfproto(v6)
                    .daddr(v6)
                    .lookup(sets(v6)[[1, 0, 2][index]])
                    .verdict(expr::ACCEPT),
            ));
        }
    }
    msgs.push(rule_msg(
        POLICY_CHAIN,
        Rule::new().l4proto_tcp().counter().reject_tcp_reset(),
    ));
    msgs.push(rule_msg(
        POLICY_CHAIN,
        Rule::new().counter().reject_icmpx_admin_prohibited(),
    ));

    let hook = match options.mode {
        Mode::Output { .. } => netlink::chain::NF_INET_LOCAL_OUT,
        Mode::Forward => netlink::chain::NF_INET_FORWARD,
    };
    msgs.push(chain_msg(FILTER_CHAIN, Some((hook, expr::ACCEPT))));
    match scopes {
        None => msgs.push(rule_msg(FILTER_CHAIN, Rule::new().goto(POLICY_CHAIN))),
        Some(cgroups) => {
            for m in cgroups {
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
    }
    msgs
}

#[derive(Debug)]
struct Inner {
    socket: Socket,
    whitelist: Whitelist,
    /// What we wrote into the authorized sets: address → deadline (0 = never). The kernel expires
    /// elements on its own; this only decides `New` vs `Already`.
    authorized: HashMap<IpAddr, u64>,
    stopped: bool,
}

/// The nftables backend.
#[derive(Debug)]
pub struct NftablesFirewall {
    inner: Mutex<Inner>,
}

impl NftablesFirewall {
    /// Installs the table with its whitelists, sets and chains in one batch, in the network
    /// namespace of the calling thread.
    pub fn start(options: &Options, policy: &Policy) -> Result<Self, NftablesError> {
        let scopes = match &options.mode {
            Mode::Forward => None,
            Mode::Output { cgroups } => {
                let root = crate::cgroup::cgroup2_mount().map_err(|e| NftablesError::Cgroup {
                    path: PathBuf::from("/"),
                    source: e.into(),
                })?;
                let matches = cgroups
                    .iter()
                    .map(|cgroup| cgroup_match(&root, cgroup))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(matches)
            }
        };
        let whitelist = Whitelist::new(policy);
        let mut socket = Socket::open().map_err(NftablesError::Socket)?;
        socket
            .batch(NFPROTO_INET, &install_batch(&scopes, options, &whitelist))
            .map_err(NftablesError::Install)?;
        tracing::info!(
            table = TABLE,
            mode = ?options.mode,
            drop_input = options.drop_input,
            "nftables firewall installed"
        );
        Ok(Self {
            inner: Mutex::new(Inner {
                socket,
                whitelist,
                authorized: HashMap::new(),
                stopped: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Authorizes every address of one DNS answer in a single batch (one kernel transaction, one
    /// acknowledgement round trip). Returns once the kernel enforces all of them.
    ///
    /// Each family's elements are written as `add; delete; add` in the same transaction: the
    /// first add makes sure the element exists, so the delete cannot fail, and the final add
    /// carries the new timeout — a renewal then works on every kernel (re-adding an element only
    /// updates its timeout since Linux 6.10).
    pub fn authorize_many(
        &self,
        addrs: &[IpAddr],
        expires_ns: u64,
    ) -> Result<Vec<Authorization>, FirewallError> {
        let Some(&first) = addrs.first() else {
            return Ok(Vec::new());
        };
        let mut inner = self.lock();
        let now = boottime_ns();
        let timeout_ms =
            (expires_ns != 0).then(|| expires_ns.saturating_sub(now).div_ceil(1_000_000).max(1));
        let mut results = Vec::with_capacity(addrs.len());
        let mut keys: [Vec<Vec<u8>>; 2] = Default::default();
        for &addr in addrs {
            if inner.whitelist.host_addrs.contains(&addr) {
                results.push(Authorization::Already);
                continue;
            }
            let live = inner
                .authorized
                .get(&addr)
                .is_some_and(|&d| d == 0 || d > now);
            results.push(if live {
                Authorization::Already
            } else {
                Authorization::New
            });
            let key = netlink::addr_key(addr);
            if !keys[usize::from(addr.is_ipv6())].contains(&key) {
                keys[usize::from(addr.is_ipv6())].push(key);
            }
        }
        let mut msgs = Vec::new();
        for v6 in [false, true] {
            let set = sets(v6)[2];
            let keys = &keys[usize::from(v6)];
            let plain = || keys.iter().map(|k| (k.clone(), 0, None));
            msgs.extend(elements_msg(MsgType::NewSetElem, set, plain()));
            msgs.extend(elements_msg(MsgType::DelSetElem, set, plain()));
            msgs.extend(elements_msg(
                MsgType::NewSetElem,
                set,
                keys.iter().map(|k| (k.clone(), 0, timeout_ms)),
            ));
        }
        if msgs.is_empty() {
            return Ok(results);
        }
        inner
            .socket
            .batch(NFPROTO_INET, &msgs)
            .map_err(|e| FirewallError::Authorize {
                addr: first,
                source: Box::new(e),
            })?;
        for &addr in addrs {
            if !inner.whitelist.host_addrs.contains(&addr) {
                inner.authorized.insert(addr, expires_ns);
            }
        }
        Ok(results)
    }

    /// Deletes the table (only `inet net-trust`; nothing else is looked at). Idempotent.
    pub fn stop(&self) -> Result<(), NftablesError> {
        let mut inner = self.lock();
        if inner.stopped {
            return Ok(());
        }
        inner
            .socket
            .batch(NFPROTO_INET, &[table_msg(MsgType::DelTable)])
            .map_err(NftablesError::Delete)?;
        inner.stopped = true;
        inner.authorized.clear();
        tracing::info!(table = TABLE, "nftables firewall removed");
        Ok(())
    }
}

/// The elements of `authorized4` and `authorized6`, with their deadlines (`CLOCK_BOOTTIME`).
fn dump_authorized(socket: &mut Socket) -> Result<Vec<AuthorizedHost>, NetlinkError> {
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
            out.push(AuthorizedHost { addr, expires_ns });
        }
    }
    Ok(out)
}

/// The authorized hosts of the `inet net-trust` table in the caller's network namespace, read by
/// another process than the daemon (for `nettrust list`/`status` with this backend).
pub fn list_authorized() -> Result<Vec<AuthorizedHost>, NetlinkError> {
    dump_authorized(&mut Socket::open()?)
}

impl Firewall for NftablesFirewall {
    fn authorize(&self, addr: IpAddr, expires_ns: u64) -> Result<Authorization, FirewallError> {
        Ok(self.authorize_many(&[addr], expires_ns)?[0])
    }

    fn authorized(&self) -> Result<Vec<AuthorizedHost>, FirewallError> {
        let mut inner = self.lock();
        let out =
            dump_authorized(&mut inner.socket).map_err(|e| FirewallError::Read(Box::new(e)))?;
        // Forget what the kernel has expired.
        let present: BTreeSet<IpAddr> = out.iter().map(|h| h.addr).collect();
        inner.authorized.retain(|a, _| present.contains(a));
        Ok(out)
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
                    .map(|k| (k.clone(), 0, None)),
            ));
            msgs.extend(elements_msg(
                MsgType::DelSetElem,
                hosts,
                old.hosts[family]
                    .difference(&new.hosts[family])
                    .map(|k| (k.clone(), 0, None)),
            ));
            // Networks: interval boundaries depend on the merge, so the set is rewritten as a
            // whole (old elements deleted, new ones added) when anything changed.
            if old.ranges[family] != new.ranges[family] {
                let flags = |end: bool| if end { netlink::elem::INTERVAL_END } else { 0 };
                msgs.extend(elements_msg(
                    MsgType::DelSetElem,
                    nets,
                    old.ranges[family]
                        .iter()
                        .map(|(k, end)| (k.clone(), flags(*end), None)),
                ));
                msgs.extend(elements_msg(
                    MsgType::NewSetElem,
                    nets,
                    new.ranges[family]
                        .iter()
                        .map(|(k, end)| (k.clone(), flags(*end), None)),
                ));
            }
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

    #[test]
    fn cgroup_levels_count_from_the_mount() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        assert_eq!(cgroup_match(dir.path(), dir.path()).unwrap().level, 0);
        let m = cgroup_match(dir.path(), &dir.path().join("a/b")).unwrap();
        assert_eq!(m.level, 2);
        assert!(cgroup_match(&dir.path().join("a"), Path::new("/")).is_err());
    }
}
