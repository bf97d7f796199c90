//! The `[[policy]]` sections as the DNS path applies them: which scope a client's query belongs
//! to, and whether its question may be forwarded.
//!
//! A policy's scope number is derived from its name ([`scope_of_name`]), not from its place in
//! the file: grants pinned in the kernel keep meaning the same policy across reloads that add,
//! remove or reorder `[[policy]]` sections, and across restarts that adopt them.
//!
//! The data path records which cgroup (and so which policy) sent each query to a listen address
//! ([`Firewall::client_scope`]); a client it has no record of (a remote client in gateway mode,
//! an unfiltered process, a record evicted) is in the default scope, whose grants open only the
//! default policy's cgroups: a miss never widens what a query opens.

use std::{net::SocketAddr, str::FromStr as _, sync::Arc};

use prometheus_client::metrics::counter::Counter;

use hickory_proto::rr::Name;

use crate::{
    config::{PolicyMode, Settings},
    firewall::{ClientScope, Grant, Scope, ScopedCgroup, Scopes, Transport},
    policy::Domains,
};

/// One `[[policy]]` as the DNS path applies it.
#[derive(Debug, Clone)]
pub struct ScopePolicy {
    /// The policy's name (logs, metrics, `nettrust list`).
    pub name: String,
    /// The names its cgroups may resolve.
    pub domains: Arc<Domains>,
    /// Audit mode: names outside `domains` are resolved and authorized, but reported.
    pub audit: bool,
}

/// The policies by scope.
#[derive(Debug, Clone, Default)]
pub struct PolicyTable {
    policies: Vec<(Scope, ScopePolicy)>,
    /// Per policy, in the same order: its question counters by [`Question::index`].
    counters: Vec<[Counter; 3]>,
}

/// Two policy names that hash to the same scope number.
#[derive(Debug, thiserror::Error)]
#[error("[[policy]] names \"{0}\" and \"{1}\" map to the same scope number; rename one of them")]
pub struct ScopeCollision(pub String, pub String);

/// The scope of the policy named `name`: FNV-1a of the name folded to 16 bits (the data path
/// reports a scope in 16 bits), never 0 (the default scope). Stable across reloads and restarts;
/// two names that collide are refused ([`ScopeCollision`]).
pub fn scope_of_name(name: &str) -> Scope {
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    Scope(((hash >> 16) ^ (hash & 0xffff)).max(1))
}

/// The policy table and the firewall's scopes of `settings`.
pub fn of_settings(settings: &Settings) -> Result<(PolicyTable, Scopes), ScopeCollision> {
    let mut policies: Vec<(Scope, ScopePolicy)> = Vec::new();
    let mut scopes = Scopes {
        active: !settings.policies.is_empty(),
        cgroups: settings
            .cgroups
            .iter()
            .map(|path| ScopedCgroup {
                path: path.clone(),
                scope: Scope::DEFAULT,
                audit: false,
            })
            .collect(),
        networks: Vec::new(),
        names: Vec::new(),
        listeners: listeners(settings),
    };
    for policy in &settings.policies {
        let scope = scope_of_name(&policy.name);
        if let Some((_, other)) = policies.iter().find(|(s, _)| *s == scope) {
            return Err(ScopeCollision(other.name.clone(), policy.name.clone()));
        }
        let audit = policy.mode == PolicyMode::Audit;
        scopes
            .cgroups
            .extend(policy.cgroups.iter().map(|path| ScopedCgroup {
                path: path.clone(),
                scope,
                audit,
            }));
        scopes
            .networks
            .extend(policy.networks.iter().map(|&net| (scope, net)));
        scopes.names.push((scope, policy.name.clone()));
        policies.push((
            scope,
            ScopePolicy {
                name: policy.name.clone(),
                domains: policy.domains.clone(),
                audit,
            },
        ));
    }
    Ok((PolicyTable::in_scopes(policies), scopes))
}

/// What a question from a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Question {
    /// Forward it; its answer authorizes for `Scope`.
    Allowed(Scope),
    /// Forward it, authorizing for `Scope`, though its policy (in audit mode) does not allow it.
    Audited(Scope),
    /// Refuse it with the blacklist response: its policy does not allow it.
    NotAllowed(Scope),
}

impl Question {
    /// The metric labels of the three results, in [`Question::index`] order.
    pub const LABELS: [&'static str; 3] = ["allowed", "audited", "not_allowed"];

    /// The result's position in [`Question::LABELS`].
    pub fn index(self) -> usize {
        match self {
            Self::Allowed(_) => 0,
            Self::Audited(_) => 1,
            Self::NotAllowed(_) => 2,
        }
    }

    /// The scope its answer authorizes for, if it is forwarded.
    pub fn scope(self) -> Option<Scope> {
        match self {
            Self::Allowed(scope) | Self::Audited(scope) => Some(scope),
            Self::NotAllowed(_) => None,
        }
    }
}

/// Where the proxy receives queries: its listen address over UDP and TCP (DoT on the same
/// port), and the dedicated DoT address over TCP.
fn listeners(settings: &Settings) -> Vec<(SocketAddr, Transport)> {
    let mut out = Vec::new();
    let mut add = |addr: SocketAddr, transport| {
        out.push((addr, transport));
        // A socket on [::] also receives IPv4 (dual stack): those packets leave the client as
        // IPv4, to the IPv4 wildcard.
        if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED {
            let v4 = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port());
            out.push((v4, transport));
        }
    };
    add(settings.listen_addr, Transport::Udp);
    add(settings.listen_addr, Transport::Tcp);
    if let Some(tls) = settings.listen_tls_addr {
        add(tls, Transport::Tcp);
    }
    for &addr in &settings.listen_addrs {
        add(addr, Transport::Udp);
        add(addr, Transport::Tcp);
    }
    out
}

impl PolicyTable {
    /// The table of `policies`, each in the scope of its name.
    pub fn new(policies: Vec<ScopePolicy>) -> Self {
        Self::in_scopes(
            policies
                .into_iter()
                .map(|p| (scope_of_name(&p.name), p))
                .collect(),
        )
    }

    /// The table of `policies` in their scopes, with their question counters.
    fn in_scopes(policies: Vec<(Scope, ScopePolicy)>) -> Self {
        let metrics = crate::metrics::metrics();
        let counters = policies
            .iter()
            .map(|(_, p)| Question::LABELS.map(|label| metrics.policy_question(&p.name, label)))
            .collect();
        Self { policies, counters }
    }

    /// Whether no `[[policy]]` exists (every query is in the default scope).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policy of `scope`; `None` for the default scope.
    pub fn get(&self, scope: Scope) -> Option<&ScopePolicy> {
        self.policies
            .iter()
            .find_map(|(s, p)| (*s == scope).then_some(p))
    }

    /// The policies with their scopes.
    pub fn iter(&self) -> impl Iterator<Item = (Scope, &ScopePolicy)> {
        self.policies.iter().map(|(s, p)| (*s, p))
    }

    /// The scopes whose allow-list a reload from `old` to this table narrowed: enforce-mode
    /// policies whose domains changed (or were in audit mode before). Switching a policy from
    /// audit to enforce with the same domains narrows nothing: its grants are kept.
    pub fn narrowed_from(&self, old: &Self) -> Vec<Scope> {
        self.iter()
            .filter(|(scope, new)| {
                !new.audit && old.get(*scope).is_none_or(|old| old.domains != new.domains)
            })
            .map(|(scope, _)| scope)
            .collect()
    }

    /// Whether a grant recorded for `name` (as `nettrust list` shows it) is no longer allowed
    /// after a reload: its policy is gone, or its policy is `narrowed` (see
    /// [`PolicyTable::narrowed_from`]) and no longer allows the name. Default-scope grants and
    /// grants whose name is unknown or was shortened for the list are kept.
    pub fn revokes(&self, narrowed: &[Scope], grant: Grant, name: Option<&str>) -> bool {
        if grant.scope.is_default() {
            return false;
        }
        let Some(policy) = self.get(grant.scope) else {
            return true;
        };
        narrowed.contains(&grant.scope)
            && name
                .filter(|n| !n.starts_with('…'))
                .and_then(|n| Name::from_str(n).ok())
                .is_some_and(|n| !policy.domains.allows_name(&n))
    }

    /// The name of `scope`'s policy, `default` for the default scope, `unresolved` for
    /// `SCOPE_UNRESOLVED`.
    pub fn name(&self, scope: Scope) -> &str {
        if scope.0 == nettrust_common::SCOPE_UNRESOLVED {
            return "unresolved";
        }
        self.get(scope).map_or("default", |p| p.name.as_str())
    }

    /// Judges `question` from a client the data path attributed to
    /// `client` (`None`: unknown, the default scope). The policy's mode is this table's (the
    /// configuration in force), not the record's.
    pub fn judge(&self, client: Option<ClientScope>, question: &Name) -> Question {
        let scope = client.map_or(Scope::DEFAULT, |c| c.scope);
        if scope.0 == nettrust_common::SCOPE_UNRESOLVED {
            // A cgroup whose policy the data path cannot see: nothing is forwarded for it.
            return Question::NotAllowed(scope);
        }
        let Some(index) = self.policies.iter().position(|(s, _)| *s == scope) else {
            // The default policy, or a scope a reload removed: today's behaviour.
            return Question::Allowed(Scope::DEFAULT);
        };
        let policy = &self.policies[index].1;
        let result = if policy.domains.allows_name(question) {
            Question::Allowed(scope)
        } else if policy.audit {
            Question::Audited(scope)
        } else {
            Question::NotAllowed(scope)
        };
        self.counters[index][result.index()].inc();
        result
    }
}

/// Two policies for tests: `ci` (enforce: `example.com`, `*.example.org`) and `observe`
/// (audit: `example.net`).
#[cfg(test)]
pub(crate) fn test_table() -> PolicyTable {
    PolicyTable::new(vec![
        ScopePolicy {
            name: "ci".into(),
            domains: Arc::new(Domains::from_patterns(["example.com", "*.example.org"]).unwrap()),
            audit: false,
        },
        ScopePolicy {
            name: "observe".into(),
            domains: Arc::new(Domains::from_patterns(["example.net"]).unwrap()),
            audit: true,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PolicyTable {
        test_table()
    }

    fn ci() -> Scope {
        scope_of_name("ci")
    }

    fn observe() -> Scope {
        scope_of_name("observe")
    }

    fn from(scope: Scope) -> ClientScope {
        ClientScope {
            cgroup_id: 42,
            scope,
            audit: false,
        }
    }

    #[test]
    fn questions_are_judged_by_the_policy_of_the_client() {
        let t = table();
        for (client, name, expected) in [
            (Some(from(ci())), "example.com.", Question::Allowed(ci())),
            (Some(from(ci())), "a.b.example.org", Question::Allowed(ci())),
            (Some(from(ci())), "example.org.", Question::NotAllowed(ci())),
            (Some(from(ci())), "example.net.", Question::NotAllowed(ci())),
            // Audit mode: forwarded, authorized for its own scope, reported.
            (
                Some(from(observe())),
                "example.com.",
                Question::Audited(observe()),
            ),
            (
                Some(from(observe())),
                "example.net.",
                Question::Allowed(observe()),
            ),
            // The default policy and unknown clients: everything, in the default scope.
            (
                Some(from(Scope::DEFAULT)),
                "anything.test.",
                Question::Allowed(Scope::DEFAULT),
            ),
            (None, "anything.test.", Question::Allowed(Scope::DEFAULT)),
            // A scope no policy has any more (removed by a reload) never widens: default.
            (
                Some(from(Scope(9))),
                "anything.test.",
                Question::Allowed(Scope::DEFAULT),
            ),
            // A cgroup whose policy the data path cannot see: nothing.
            (
                Some(from(Scope(nettrust_common::SCOPE_UNRESOLVED))),
                "example.com.",
                Question::NotAllowed(Scope(nettrust_common::SCOPE_UNRESOLVED)),
            ),
        ] {
            assert_eq!(
                t.judge(client, &name.parse().unwrap()),
                expected,
                "{client:?} {name}"
            );
        }
    }

    #[test]
    fn a_dual_stack_wildcard_listener_also_listens_for_ipv4() {
        use crate::{
            cli::RunArgs,
            config::{Env, FileConfig},
        };
        let args = RunArgs {
            fwd_addrs: vec!["192.0.2.53".into()],
            ..RunArgs::default()
        };
        let file = FileConfig::parse("", std::path::Path::new("t.toml")).unwrap();
        let mut settings =
            Settings::resolve(&args, &file, &Env::default(), || Ok("/cg".into())).unwrap();
        settings.listen_addr = "[::]:53".parse().unwrap();
        settings.listen_tls_addr = Some("127.0.0.1:853".parse().unwrap());
        let got = listeners(&settings);
        let want: Vec<(SocketAddr, Transport)> = [
            ("[::]:53", Transport::Udp),
            ("0.0.0.0:53", Transport::Udp),
            ("[::]:53", Transport::Tcp),
            ("0.0.0.0:53", Transport::Tcp),
            ("127.0.0.1:853", Transport::Tcp),
        ]
        .into_iter()
        .map(|(a, t)| (a.parse().unwrap(), t))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn scopes_come_from_the_names() {
        let t = table();
        assert_ne!(ci(), observe());
        assert!(!ci().is_default() && !observe().is_default());
        assert!(u16::try_from(ci().0).is_ok() && u16::try_from(observe().0).is_ok());
        assert_eq!(scope_of_name("ci"), ci(), "stable");
        assert_eq!(t.name(ci()), "ci");
        assert_eq!(t.name(observe()), "observe");
        assert_eq!(t.name(Scope::DEFAULT), "default");
        assert!(t.get(Scope(3)).is_none());
        let names: Vec<_> = t.iter().map(|(s, p)| (s, p.name.as_str())).collect();
        assert_eq!(names, [(ci(), "ci"), (observe(), "observe")]);
    }

    #[test]
    fn a_narrowed_or_removed_policy_revokes_what_it_no_longer_allows() {
        let before = table();
        let narrowed = PolicyTable::new(vec![ScopePolicy {
            name: "ci".into(),
            domains: Arc::new(Domains::from_patterns(["example.com"]).unwrap()),
            audit: false,
        }]);
        assert!(before.narrowed_from(&before).is_empty(), "nothing changed");
        let scopes = narrowed.narrowed_from(&before);
        assert_eq!(scopes, [ci()]);
        let addr = "192.0.2.1".parse().unwrap();
        let grant = |scope| Grant::new(scope, addr);
        for (grant, name, revoked) in [
            (grant(ci()), Some("example.com"), false),
            (grant(ci()), Some("www.example.org"), true),
            // The name is unknown or shortened for the list: kept.
            (grant(ci()), None, false),
            (grant(ci()), Some("…long.example.org"), false),
            // The default scope is no policy's.
            (grant(Scope::DEFAULT), Some("gone.example"), false),
            // A policy the reload removed.
            (grant(observe()), Some("example.net"), true),
        ] {
            assert_eq!(
                narrowed.revokes(&scopes, grant, name),
                revoked,
                "{grant} {name:?}"
            );
        }
    }

    #[test]
    fn switching_audit_to_enforce_keeps_every_grant() {
        let audit = table();
        let mut enforce = table();
        for (_, policy) in &mut enforce.policies {
            policy.audit = false;
        }
        assert!(enforce.narrowed_from(&audit).is_empty());
        let grant = Grant::new(observe(), "192.0.2.1".parse().unwrap());
        assert!(!enforce.revokes(&[], grant, Some("not.allowed.example")));
    }
}
