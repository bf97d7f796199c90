//! The `[[policy]]` sections as the DNS path applies them: which scope a client's query belongs
//! to, and whether its question may be forwarded.
//!
//! The data path records which cgroup (and so which policy) sent each query to a listen address
//! ([`Firewall::client_scope`]); a client it has no record of (a remote client in gateway mode,
//! an unfiltered process, a record evicted) is in the default scope, whose grants open only the
//! default policy's cgroups: a miss never widens what a query opens.

use std::sync::Arc;

use hickory_proto::rr::Name;

use crate::{
    firewall::{ClientScope, Scope},
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

/// The policies by scope: scope N is the N-th `[[policy]]` of the configuration.
#[derive(Debug, Clone, Default)]
pub struct PolicyTable {
    policies: Vec<ScopePolicy>,
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
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Allowed(_) => "allowed",
            Self::Audited(_) => "audited",
            Self::NotAllowed(_) => "not_allowed",
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

impl PolicyTable {
    /// The table of `policies`, in configuration order (the first is scope 1).
    pub fn new(policies: Vec<ScopePolicy>) -> Self {
        Self { policies }
    }

    /// Whether no `[[policy]]` exists (every query is in the default scope).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policy of `scope`; `None` for the default scope.
    pub fn get(&self, scope: Scope) -> Option<&ScopePolicy> {
        let index = usize::try_from(scope.0).ok()?.checked_sub(1)?;
        self.policies.get(index)
    }

    /// The policies with their scopes.
    pub fn iter(&self) -> impl Iterator<Item = (Scope, &ScopePolicy)> {
        (1u32..).map(Scope).zip(&self.policies)
    }

    /// The name of `scope`'s policy, `default` for the default scope.
    pub fn name(&self, scope: Scope) -> &str {
        self.get(scope).map_or("default", |p| p.name.as_str())
    }

    /// Judges `question` from a client the data path attributed to
    /// `client` (`None`: unknown, the default scope). The policy's mode is this table's (the
    /// configuration in force), not the record's.
    pub fn judge(&self, client: Option<ClientScope>, question: &Name) -> Question {
        let scope = client.map_or(Scope::DEFAULT, |c| c.scope);
        let Some(policy) = self.get(scope) else {
            // The default policy, or a scope a reload removed: today's behaviour.
            return Question::Allowed(Scope::DEFAULT);
        };
        let result = if policy.domains.allows_name(question) {
            Question::Allowed(scope)
        } else if policy.audit {
            Question::Audited(scope)
        } else {
            Question::NotAllowed(scope)
        };
        crate::metrics::metrics().policy_question(&policy.name, result.label());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PolicyTable {
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

    fn from(scope: u32) -> ClientScope {
        ClientScope {
            cgroup_id: 42,
            scope: Scope(scope),
            audit: false,
        }
    }

    #[test]
    fn questions_are_judged_by_the_policy_of_the_client() {
        let t = table();
        for (client, name, expected) in [
            (Some(from(1)), "example.com.", Question::Allowed(Scope(1))),
            (Some(from(1)), "a.b.example.org", Question::Allowed(Scope(1))),
            (Some(from(1)), "example.org.", Question::NotAllowed(Scope(1))),
            (Some(from(1)), "example.net.", Question::NotAllowed(Scope(1))),
            // Audit mode: forwarded, authorized for its own scope, reported.
            (Some(from(2)), "example.com.", Question::Audited(Scope(2))),
            (Some(from(2)), "example.net.", Question::Allowed(Scope(2))),
            // The default policy and unknown clients: everything, in the default scope.
            (Some(from(0)), "anything.test.", Question::Allowed(Scope::DEFAULT)),
            (None, "anything.test.", Question::Allowed(Scope::DEFAULT)),
            // A scope no policy has any more (removed by a reload) never widens: default.
            (Some(from(9)), "anything.test.", Question::Allowed(Scope::DEFAULT)),
        ] {
            assert_eq!(t.judge(client, &name.parse().unwrap()), expected, "{client:?} {name}");
        }
    }

    #[test]
    fn scopes_number_the_policies_from_one() {
        let t = table();
        assert_eq!(t.name(Scope(1)), "ci");
        assert_eq!(t.name(Scope(2)), "observe");
        assert_eq!(t.name(Scope::DEFAULT), "default");
        assert!(t.get(Scope(3)).is_none());
        let scopes: Vec<_> = t.iter().map(|(s, p)| (s.0, p.name.as_str())).collect();
        assert_eq!(scopes, [(1, "ci"), (2, "observe")]);
    }
}
