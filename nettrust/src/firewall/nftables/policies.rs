//! The `[[policy]]` scopes in the table: per scope a pair of authorized sets (the grants of its
//! DNS answers, kernel-expired), a pair of network sets (its `allow_networks`) and a chain; the
//! base chain sends each listed cgroup, deepest first, to the chain of its scope, so the deepest
//! listed ancestor of a socket's cgroup decides.
//!
//! ```text
//! set scope_1_v4     { type ipv4_addr; flags timeout; }   # grants of scope 1
//! set scope_1_net_v4 { type ipv4_addr; flags interval; }  # networks of scope 1
//! chain scope_1 {
//!   … the guard rules, services, whitelisted networks and hosts of `allowlist` …
//!   ip daddr @scope_1_v4 ct mark set ct mark and 0xffff or 0x10000 accept   (and v6)
//!   ip daddr @scope_1_net_v4 ct mark set ct mark and 0xffff or 0x10000 accept
//!   counter reject …                                      # or, in audit mode:
//!   limit rate 5/second burst 10 packets log prefix "[Audit] policy=1 " ; counter accept
//! }
//! chain authorized-output {
//!   socket cgroupv2 level 3 <A/nested> goto allowlist     # deepest first
//!   socket cgroupv2 level 2 <A> goto scope_1
//!   socket cgroupv2 level 1 <parent> goto allowlist
//! }
//! ```
//!
//! The default scope (0) keeps today's `authorized4/6` sets and `allowlist` chain; without any
//! policy nothing of this is written.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::{
    CgroupMatch, Inner, Mode, NftablesError, POLICY_CHAIN, cgroup_match,
    layout::{self, End, Whitelist, elements_msg, ranges, sets},
    netlink::{self, Msg, MsgType},
};
use crate::firewall::{FirewallError, Scope, Scopes};

/// Audit log lines per second (and burst) per audited scope: enough to see what would be
/// dropped, too few to flood the kernel log.
const AUDIT_LOGS_PER_SECOND: u64 = 5;
const AUDIT_LOG_BURST: u32 = 10;

/// One listed cgroup as the table matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listed {
    /// The directory (re-resolved when the cgroup is re-created).
    pub(super) path: PathBuf,
    /// Its `socket cgroupv2` match.
    pub(super) m: CgroupMatch,
    /// Its policy's scope.
    pub(super) scope: Scope,
    /// Its policy is in audit mode.
    pub(super) audit: bool,
}

/// What the table holds for one scope other than the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ScopeRules {
    /// Audit mode: the chain ends by logging and accepting instead of rejecting.
    pub(super) audit: bool,
    /// Interval elements of its networks, per family.
    pub(super) ranges: [Vec<(Vec<u8>, bool)>; 2],
}

/// The policies the table enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Policies {
    /// Whether any policy exists; without one the table is exactly the policy-less one.
    pub(super) active: bool,
    /// Every listed cgroup, deepest first (the order of the base chain's rules).
    pub(super) listed: Vec<Listed>,
    /// The scopes other than the default one: those of a listed cgroup or of a network.
    pub(super) scopes: BTreeMap<Scope, ScopeRules>,
    /// The policies' names (audit log prefixes).
    pub(super) names: BTreeMap<Scope, String>,
}

impl Policies {
    /// Resolves `scopes` for a table in `mode`. Gateway mode has no socket cgroups to tell
    /// policies apart: it refuses them rather than enforce the default policy for everyone.
    pub(super) fn resolve(mode: &Mode, scopes: &Scopes) -> Result<Self, NftablesError> {
        if !scopes.active {
            return Ok(Self::default());
        }
        if matches!(mode, Mode::Forward) {
            return Err(NftablesError::PoliciesInGatewayMode);
        }
        let root = crate::cgroup::cgroup2_mount().map_err(|e| NftablesError::Cgroup {
            path: PathBuf::from("/"),
            source: e.into(),
        })?;
        Self::new(&root, scopes)
    }

    /// Resolves `scopes` below the cgroup2 mount `root`.
    pub(super) fn new(root: &Path, scopes: &Scopes) -> Result<Self, NftablesError> {
        if !scopes.active {
            return Ok(Self::default());
        }
        let mut listed = scopes
            .cgroups
            .iter()
            .map(|c| {
                Ok(Listed {
                    path: c.path.clone(),
                    m: cgroup_match(root, &c.path)?,
                    scope: c.scope,
                    audit: c.audit,
                })
            })
            .collect::<Result<Vec<_>, NftablesError>>()?;
        listed.sort_by_key(|l| std::cmp::Reverse(l.m.level));
        let mut rules: BTreeMap<Scope, ScopeRules> = BTreeMap::new();
        for l in listed.iter().filter(|l| !l.scope.is_default()) {
            rules.entry(l.scope).or_default().audit |= l.audit;
        }
        for &(scope, _) in scopes.networks.iter().filter(|(s, _)| !s.is_default()) {
            rules.entry(scope).or_default();
        }
        for (scope, rule) in &mut rules {
            for v6 in [false, true] {
                let nets = scopes
                    .networks
                    .iter()
                    .filter(|(s, n)| s == scope && matches!(n, ipnet::IpNet::V6(_)) == v6)
                    .map(|(_, n)| *n);
                rule.ranges[usize::from(v6)] = ranges(nets, v6);
            }
        }
        Ok(Self {
            active: true,
            listed,
            scopes: rules,
            names: scopes.names.iter().cloned().collect(),
        })
    }

    /// Whether grants of `scope` can be written (the default scope always can).
    pub(super) fn has(&self, scope: Scope) -> bool {
        scope.is_default() || self.scopes.contains_key(&scope)
    }

    /// Resolves the listed cgroups again (a cgroup removed and created again at the same path
    /// has a new id). Returns whether any changed.
    pub(super) fn refresh(&mut self, root: &Path) -> bool {
        let mut changed = false;
        for l in &mut self.listed {
            if let Ok(m) = cgroup_match(root, &l.path)
                && m != l.m
            {
                tracing::error!(cgroup = %l.path.display(), "[Firewall Error] filtered cgroup was re-created; filtering the new one");
                l.m = m;
                changed = true;
            }
        }
        changed
    }

    /// The sets and chains of every scope other than the default, with their networks.
    pub(super) fn msgs(&self, w: &Whitelist) -> Vec<Msg> {
        let mut msgs = Vec::new();
        for (index, (&scope, rules)) in self.scopes.iter().enumerate() {
            let id = 100 + 4 * u32::try_from(index).unwrap_or(u32::MAX / 8);
            for v6 in [false, true] {
                let family = usize::from(v6);
                let set_id = id + 2 * u32::from(v6);
                let grants = grant_set(scope, v6);
                // The grant sets carry the policy's name: `nettrust list` and the metrics read it.
                let mut attrs = layout::set_attrs(&grants, v6, netlink::set::TIMEOUT, set_id);
                if let Some(name) = self.names.get(&scope) {
                    attrs = attrs.bytes(netlink::set::USERDATA, &netlink::set_comment_udata(name));
                }
                msgs.push(Msg::new(MsgType::NewSet, netlink::NLM_F_CREATE, attrs));
                let nets = net_set(scope, v6);
                msgs.push(layout::set_msg(
                    &nets,
                    v6,
                    netlink::set::INTERVAL,
                    set_id + 1,
                ));
                msgs.extend(elements_msg(
                    MsgType::NewSetElem,
                    &nets,
                    rules.ranges[family]
                        .iter()
                        .map(|(k, end)| layout::Elem::boundary(k.clone(), *end)),
                ));
            }
            let chain = chain(scope);
            msgs.push(layout::chain_msg(&chain, None));
            msgs.extend(layout::guard_rules(&chain));
            let granted = [
                [
                    grant_set(scope, false).into_owned(),
                    grant_set(scope, true).into_owned(),
                ],
                [net_set(scope, false), net_set(scope, true)],
            ];
            let end = if rules.audit {
                End::Audit(audit_prefix(scope, self.names.get(&scope)))
            } else {
                End::Reject
            };
            // A flow its grants or networks let out carries the scope in its conntrack mark: the
            // sweeper's conntrack liveness is then per scope, as `live_tcp`'s is with eBPF.
            msgs.extend(layout::allow_rules(
                &chain,
                w,
                &granted,
                Some(scope.0),
                &end,
            ));
        }
        msgs
    }

    /// The base chain's rules: each listed cgroup, deepest first, and the chain it goes to.
    pub(super) fn dispatch(&self) -> impl Iterator<Item = (CgroupMatch, String)> + '_ {
        self.listed.iter().map(|l| (l.m, chain(l.scope)))
    }
}

impl Inner {
    /// Moves the grants adopted from a leftover table into the record: those of a scope that
    /// exists now; the others are forgotten.
    pub(super) fn adopt_scoped(&mut self) {
        for (grant, held) in std::mem::take(&mut self.adopted_scoped) {
            if self.policies.has(grant.scope) {
                self.authorized.entry(grant).or_insert(held);
            }
        }
    }

    /// Enforces `policies`: the table is written again in one transaction with every live grant
    /// of a scope that still exists (grants of a removed scope are forgotten, grants adopted
    /// from a previous run rejoin their scope). Unchanged policies write nothing.
    pub(super) fn set_policies(&mut self, policies: Policies) -> Result<(), FirewallError> {
        if policies == self.policies {
            self.adopted_scoped.clear();
            return Ok(());
        }
        let old_policies = std::mem::replace(&mut self.policies, policies);
        let old_authorized = self.authorized.clone();
        self.adopt_scoped();
        let removed = self
            .authorized
            .keys()
            .filter(|g| !self.policies.has(g.scope))
            .count();
        if let Err(e) = self.install() {
            self.policies = old_policies;
            self.authorized = old_authorized;
            return Err(FirewallError::Policies(Box::new(e)));
        }
        tracing::info!(
            scopes = self.policies.scopes.len(),
            listed = self.policies.listed.len(),
            grants = self.authorized.len(),
            removed,
            "nftables policies enforced"
        );
        Ok(())
    }
}

/// The prefix of the audit log lines of `scope`: its policy's name (its number without one),
/// cut to the 127 bytes a `log prefix` holds.
fn audit_prefix(scope: Scope, name: Option<&String>) -> String {
    const PREFIX_MAX: usize = 127;
    let name = name.map_or_else(|| scope.0.to_string(), Clone::clone);
    let mut prefix = format!("[Audit] policy={name}");
    if prefix.len() >= PREFIX_MAX {
        let mut end = PREFIX_MAX - 1;
        while !prefix.is_char_boundary(end) {
            end -= 1;
        }
        prefix.truncate(end);
    }
    prefix.push(' ');
    prefix
}

/// The rules ending an audited scope's chain: a rate-limited log line, then a counted accept.
pub(super) fn audit_rules(chain: &str, prefix: &str) -> [Msg; 2] {
    use super::expr::{ACCEPT, Rule};
    [
        layout::rule_msg(
            chain,
            Rule::new()
                .limit_per_second(AUDIT_LOGS_PER_SECOND, AUDIT_LOG_BURST)
                .log_group(prefix, super::audit_log::AUDIT_GROUP),
        ),
        layout::rule_msg(chain, Rule::new().counter().verdict(ACCEPT)),
    ]
}

/// The authorized set of `scope` for one family (the default scope's is `authorized4/6`).
pub(super) fn grant_set(scope: Scope, v6: bool) -> Cow<'static, str> {
    if scope.is_default() {
        Cow::Borrowed(sets(v6)[2])
    } else {
        Cow::Owned(format!("scope_{}_v{}", scope.0, if v6 { 6 } else { 4 }))
    }
}

/// The scope whose authorized set is `name`, if it is one.
pub(super) fn grant_set_scope(name: &str) -> Option<Scope> {
    if name == sets(false)[2] || name == sets(true)[2] {
        return Some(Scope::DEFAULT);
    }
    let rest = name.strip_prefix("scope_")?;
    let number = rest
        .strip_suffix("_v4")
        .or_else(|| rest.strip_suffix("_v6"))?;
    let scope = Scope(number.parse().ok()?);
    (!scope.is_default()).then_some(scope)
}

/// The network set of `scope` for one family.
fn net_set(scope: Scope, v6: bool) -> String {
    format!("scope_{}_net_v{}", scope.0, if v6 { 6 } else { 4 })
}

/// The scope whose chain is `name`, if it is a policy's chain.
pub(super) fn chain_scope(name: &str) -> Option<Scope> {
    let scope = Scope(name.strip_prefix("scope_")?.parse().ok()?);
    (!scope.is_default()).then_some(scope)
}

/// The chain of `scope`'s cgroups (the default scope's is `allowlist`).
pub(super) fn chain(scope: Scope) -> String {
    if scope.is_default() {
        POLICY_CHAIN.to_owned()
    } else {
        format!("scope_{}", scope.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_names_round_trip_and_networks_are_not_grants() {
        assert_eq!(chain_scope(&chain(Scope(7))), Some(Scope(7)));
        assert_eq!(chain_scope(POLICY_CHAIN), None);
        assert_eq!(chain_scope("scope_7_v4"), None);
        for scope in [Scope::DEFAULT, Scope(1), Scope(42)] {
            for v6 in [false, true] {
                assert_eq!(grant_set_scope(&grant_set(scope, v6)), Some(scope));
                assert_eq!(grant_set_scope(&net_set(scope, v6)), None);
            }
        }
        for other in [
            "whitelist4",
            "blocked6",
            "scope_0_v4",
            "scope_x_v4",
            "scope_1",
        ] {
            assert_eq!(grant_set_scope(other), None, "{other}");
        }
    }

    #[test]
    fn audit_prefixes_name_the_policy_within_the_log_prefix_limit() {
        assert_eq!(
            audit_prefix(Scope(7), Some(&"ci".to_owned())),
            "[Audit] policy=ci "
        );
        assert_eq!(audit_prefix(Scope(7), None), "[Audit] policy=7 ");
        let long = audit_prefix(Scope(7), Some(&"é".repeat(100)));
        assert!(long.len() <= 127 && long.ends_with("é "), "{long}");
    }

    #[test]
    fn listed_cgroups_are_matched_deepest_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("p/a/n")).unwrap();
        std::fs::create_dir_all(dir.path().join("p/b")).unwrap();
        let listed = |path: &str, scope: u32, audit: bool| crate::firewall::ScopedCgroup {
            path: dir.path().join(path),
            scope: Scope(scope),
            audit,
        };
        let scopes = Scopes {
            active: true,
            cgroups: vec![
                listed("p", 0, false),
                listed("p/a", 1, false),
                listed("p/a/n", 0, false),
                listed("p/b", 2, true),
            ],
            networks: vec![(Scope(3), "198.51.100.0/24".parse().unwrap())],
            ..Scopes::default()
        };
        let p = Policies::new(dir.path(), &scopes).unwrap();
        let order: Vec<(u32, String)> = p.dispatch().map(|(m, c)| (m.level, c)).collect();
        assert_eq!(order[0], (3, "allowlist".to_owned()));
        assert_eq!(order[3], (1, "allowlist".to_owned()));
        assert!(order[1..3].iter().all(|(level, _)| *level == 2));
        assert_eq!(
            p.scopes.keys().copied().collect::<Vec<_>>(),
            [Scope(1), Scope(2), Scope(3)]
        );
        assert!(p.scopes[&Scope(2)].audit && !p.scopes[&Scope(1)].audit);
        assert_eq!(p.scopes[&Scope(3)].ranges[0].len(), 2);
        assert!(p.has(Scope::DEFAULT) && p.has(Scope(3)) && !p.has(Scope(4)));
        // Without a policy nothing is resolved, not even a missing cgroup.
        let off = Scopes {
            active: false,
            cgroups: vec![listed("missing", 1, false)],
            ..Scopes::default()
        };
        assert_eq!(
            Policies::new(dir.path(), &off).unwrap(),
            Policies::default()
        );
        let missing = Scopes {
            active: true,
            ..off
        };
        let err = Policies::new(dir.path(), &missing).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
