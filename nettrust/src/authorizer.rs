//! Turns an accepted upstream answer into firewall authorizations and logs it with the original
//! nettrust's categories as the message, details as tracing fields: `[Authorized]`,
//! `[Already Authorized]`, `[Blacklisted]`, `[No Answer]`, `[Name Error]`, `[PTR]`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, RwLock},
    time::Duration,
};

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};

use crate::{
    blacklist::Blacklist,
    dns::answer::chain_addresses,
    firewall::{
        Authorization, ClientScope, Firewall, FirewallError, Scope, Transport, boottime_ns,
    },
    scopes::PolicyTable,
};

/// What the proxy does with an answer once the authorizer has seen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Relay the answer: every authorizable address is enforced by the firewall.
    Relay,
    /// The question or a name of its CNAME chain is blacklisted: nothing was authorized and the
    /// client gets the blacklist response instead of the answer.
    Blocked(Name),
}

/// Most addresses one answer authorizes unless `max_answer_addresses` says otherwise: more than
/// any ordinary service publishes for one name, far fewer than an attacker's zone can put in one
/// TCP answer (thousands) to fill the host map.
pub const DEFAULT_MAX_ANSWER_ADDRESSES: u32 = 32;

/// Writes the addresses of answers into the firewall.
#[derive(Clone)]
pub struct Authorizer {
    firewall: Arc<dyn Firewall>,
    /// How long an authorization lasts; `None` = until nettrust stops.
    ttl: Option<Duration>,
    /// Shared by every clone, so a SIGHUP reload ([`Authorizer::set_blacklist`]) reaches the proxy.
    blacklist: Arc<RwLock<Arc<Blacklist>>>,
    /// The `[[policy]]` sections, shared by every clone like the blacklist.
    policies: Arc<RwLock<Arc<PolicyTable>>>,
    /// Whether a PTR answer authorizes the address it was asked about (the original did; off by
    /// default: knowing a name for an address is no reason to connect to it).
    authorize_ptr: bool,
    /// Most addresses one answer authorizes (`max_answer_addresses`): an attacker's zone with
    /// thousands of records per answer must not fill the host map in a few queries.
    max_addresses: usize,
}

impl Authorizer {
    /// An authorizer writing into `firewall`, authorizations lasting `ttl` (`None` = forever),
    /// with no blacklist and PTR answers authorizing nothing.
    pub fn new(firewall: Arc<dyn Firewall>, ttl: Option<Duration>) -> Self {
        Self {
            firewall,
            ttl,
            blacklist: Arc::new(RwLock::new(Arc::new(Blacklist::default()))),
            policies: Arc::new(RwLock::new(Arc::new(PolicyTable::default()))),
            authorize_ptr: false,
            max_addresses: DEFAULT_MAX_ANSWER_ADDRESSES as usize,
        }
    }

    /// Enforces `blacklist`.
    pub fn with_blacklist(self, blacklist: Arc<Blacklist>) -> Self {
        self.set_blacklist(blacklist);
        self
    }

    /// Replaces the blacklist for every clone of this authorizer (SIGHUP reload).
    pub fn set_blacklist(&self, blacklist: Arc<Blacklist>) {
        *self.blacklist.write().expect("blacklist lock poisoned") = blacklist;
    }

    /// Replaces the policies for every clone of this authorizer (start, SIGHUP reload).
    pub fn set_policies(&self, policies: Arc<PolicyTable>) {
        *self.policies.write().expect("policies lock poisoned") = policies;
    }

    /// The policies in force.
    pub fn policies(&self) -> Arc<PolicyTable> {
        self.policies
            .read()
            .expect("policies lock poisoned")
            .clone()
    }

    /// Who sent the last query from `client` over `transport`, as the firewall's data path
    /// recorded it (see [`Firewall::client_scope`]).
    pub fn client_scope(&self, transport: Transport, client: SocketAddr) -> Option<ClientScope> {
        self.firewall.client_scope(transport, client)
    }

    /// Lets PTR answers authorize the reversed address.
    pub fn with_ptr_authorization(mut self, authorize_ptr: bool) -> Self {
        self.authorize_ptr = authorize_ptr;
        self
    }

    /// Authorizes at most `max` addresses per answer (at least one).
    pub fn with_max_addresses(mut self, max: u32) -> Self {
        self.max_addresses = (max as usize).max(1);
        self
    }

    /// The blacklist in force.
    pub fn blacklist(&self) -> Arc<Blacklist> {
        self.blacklist
            .read()
            .expect("blacklist lock poisoned")
            .clone()
    }

    /// Authorizes the addresses `response` gives for `question` for the cgroups of `scope`.
    /// Returns only when every address is enforced by the firewall; on error the caller must not
    /// relay the answer.
    pub fn authorize(
        &self,
        scope: Scope,
        question: &Query,
        response: &Message,
    ) -> Result<Verdict, FirewallError> {
        let qname = &question.name;
        match response.metadata.response_code {
            ResponseCode::NoError => {}
            ResponseCode::NXDomain => {
                tracing::info!(question = %qname, "[Name Error] returned NX Domain");
                return Ok(Verdict::Relay);
            }
            rcode => {
                tracing::debug!(question = %qname, %rcode, "[Not Authorized] upstream error");
                return Ok(Verdict::Relay);
            }
        }
        let chain = chain_addresses(question, &response.answers);
        let blacklist = self.blacklist();
        if blacklist.has_domains()
            && let Some(name) = chain.names.iter().find(|n| blacklist.blocks_domain(n))
        {
            tracing::info!(question = %qname, name = %name, "[Blacklisted] domain");
            return Ok(Verdict::Blocked(name.clone()));
        }
        if chain.unrelated > 0 {
            tracing::warn!(
                question = %qname,
                records = chain.unrelated,
                "[Ignored] address records outside the CNAME chain"
            );
        }
        let mut addresses = chain.addresses;
        if question.query_type == RecordType::PTR {
            addresses.extend(self.ptr_to_authorize(qname, response, &chain.names));
        }
        let mut allowed = not_blacklisted(qname, &blacklist, addresses);
        if allowed.is_empty() {
            tracing::info!(question = %qname, qtype = %question.query_type, "[No Answer]");
            return Ok(Verdict::Relay);
        }
        self.cap(qname, &mut allowed);
        self.commit(scope, qname, allowed)?;
        Ok(Verdict::Relay)
    }

    /// For a PTR question answered by a PTR record of its chain: the address the question's name
    /// stands for, when `authorize_ptr` lets it be authorized (logged either way).
    fn ptr_to_authorize(&self, qname: &Name, response: &Message, names: &[Name]) -> Option<IpAddr> {
        let addr = ptr_address(qname)?;
        let has_ptr = response
            .answers
            .iter()
            .any(|r| matches!(r.data, RData::PTR(_)) && names.contains(&r.name));
        if !has_ptr {
            return None;
        }
        if self.authorize_ptr {
            tracing::info!(question = %qname, host = %addr, "[PTR] authorizing the reversed address");
            Some(addr)
        } else {
            tracing::info!(question = %qname, host = %addr, "[PTR] not authorized (authorize_ptr is off)");
            None
        }
    }

    /// Keeps the first `max_addresses` of `allowed`. Beyond the cap the addresses stay in the
    /// relayed answer (rewriting it would change what the client sees for an ordinary large
    /// answer) but are not allowed: a connection to one of them is dropped like any unresolved
    /// destination.
    fn cap(&self, qname: &Name, allowed: &mut Vec<IpAddr>) {
        if allowed.len() <= self.max_addresses {
            return;
        }
        let capped = allowed.split_off(self.max_addresses);
        crate::metrics::metrics()
            .addresses
            .get_or_create(&crate::metrics::ResultLabel { result: "capped" })
            .inc_by(capped.len() as u64);
        tracing::warn!(
            question = %qname,
            authorized = allowed.len(),
            capped = capped.len(),
            first_capped = %capped[0],
            "[Capped] answer has more addresses than max_answer_addresses; the rest are not authorized"
        );
    }

    /// Writes `allowed` into the firewall with this authorizer's deadline, then counts and logs
    /// which addresses were new and which were already authorized.
    fn commit(
        &self,
        scope: Scope,
        qname: &Name,
        allowed: Vec<IpAddr>,
    ) -> Result<(), FirewallError> {
        let expires_ns = match self.ttl {
            Some(ttl) => {
                boottime_ns().saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
            }
            None => 0,
        };
        let mut new = Vec::new();
        let authorizations = self
            .firewall
            .authorize_answer(scope, &allowed, expires_ns, &qname.to_string())
            .inspect_err(|e| {
                if matches!(e, FirewallError::Full { .. }) {
                    crate::metrics::metrics().firewall_full.inc();
                }
            })?;
        for (addr, authorization) in allowed.into_iter().zip(authorizations) {
            match authorization {
                Authorization::New => {
                    count_address("new");
                    new.push(addr);
                }
                Authorization::Already => {
                    count_address("already");
                    if scope.is_default() {
                        tracing::info!(question = %qname, host = %addr, "[Already Authorized]");
                    } else {
                        let policy = self.policies();
                        let policy = policy.name(scope);
                        tracing::info!(question = %qname, host = %addr, policy, "[Already Authorized]");
                    }
                }
            }
        }
        if !new.is_empty() {
            if scope.is_default() {
                tracing::info!(question = %qname, hosts = ?new, "[Authorized]");
            } else {
                let policy = self.policies();
                let policy = policy.name(scope);
                tracing::info!(question = %qname, hosts = ?new, policy, "[Authorized]");
            }
        }
        Ok(())
    }
}

/// The addresses the blacklist does not block; each blocked one is counted and logged.
fn not_blacklisted(qname: &Name, blacklist: &Blacklist, addresses: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut allowed = Vec::with_capacity(addresses.len());
    for addr in addresses {
        if blacklist.blocks_host(addr) {
            count_address("blacklisted");
            tracing::info!(question = %qname, host = %addr, "[Blacklisted] host");
        } else {
            allowed.push(addr);
        }
    }
    allowed
}

/// Counts an answer address in `nettrust_answer_addresses_total`.
fn count_address(result: &'static str) {
    crate::metrics::metrics()
        .addresses
        .get_or_create(&crate::metrics::ResultLabel { result })
        .inc();
}

/// The address a reverse name stands for: `4.3.2.1.in-addr.arpa.` is 1.2.3.4 (RFC 1035 §3.5),
/// 32 nibbles under `ip6.arpa.` an IPv6 address (RFC 3596 §2.5). Partial names give `None`.
pub fn ptr_address(name: &Name) -> Option<IpAddr> {
    let text = name.to_ascii().to_ascii_lowercase();
    let text = text.trim_end_matches('.');
    if let Some(rest) = text.strip_suffix(".in-addr.arpa") {
        let octets: Vec<u8> = rest
            .split('.')
            .map(|l| l.parse::<u8>().ok())
            .collect::<Option<_>>()?;
        let [d, c, b, a] = octets.as_slice() else {
            return None;
        };
        return Some(IpAddr::V4(Ipv4Addr::new(*a, *b, *c, *d)));
    }
    let rest = text.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> = rest
        .split('.')
        .map(|l| {
            (l.len() == 1)
                .then(|| u8::from_str_radix(l, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let mut bits = 0u128;
    for nibble in nibbles.iter().rev() {
        bits = (bits << 4) | u128::from(*nibble);
    }
    Some(IpAddr::V6(Ipv6Addr::from(bits)))
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, str::FromStr};

    use hickory_proto::{
        op::OpCode,
        rr::{Name, RData, Record, RecordType, rdata::A},
    };

    use super::*;
    use crate::firewall::{Policy, fake::FakeFirewall};

    fn answer(qname: &str, rcode: ResponseCode, ips: &[&str]) -> (Query, Message) {
        let name = Name::from_str(qname).unwrap();
        let question = Query::query(name.clone(), RecordType::A);
        let mut msg = Message::response(1, OpCode::Query);
        msg.add_query(question.clone());
        msg.metadata.response_code = rcode;
        for ip in ips {
            msg.add_answer(Record::from_rdata(
                name.clone(),
                30,
                RData::A(A(ip.parse().unwrap())),
            ));
        }
        (question, msg)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn answer_addresses_become_allowed() {
        let fw = Arc::new(FakeFirewall::new(Policy::default()));
        let auth = Authorizer::new(fw.clone(), None);
        assert!(!fw.allows(ip("192.0.2.1"), 0));
        let (q, m) = answer(
            "a.example.",
            ResponseCode::NoError,
            &["192.0.2.1", "192.0.2.2"],
        );
        assert_eq!(
            auth.authorize(Scope::DEFAULT, &q, &m).unwrap(),
            Verdict::Relay
        );
        assert!(fw.allows(ip("192.0.2.1"), 0));
        assert!(fw.allows(ip("192.0.2.2"), 0));
        assert!(!fw.allows(ip("192.0.2.3"), 0));
        assert_eq!(fw.authorized().unwrap().len(), 2);
    }

    /// An answer with more addresses than `max_answer_addresses` authorizes only the first ones;
    /// the rest stay blocked and the answer is still relayed.
    #[test]
    fn an_answer_authorizes_at_most_the_cap() {
        let fw = Arc::new(FakeFirewall::new(Policy::default()));
        let auth = Authorizer::new(fw.clone(), None).with_max_addresses(3);
        let ips: Vec<String> = (1..=200).map(|i| format!("198.51.100.{i}")).collect();
        let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
        let (q, m) = answer("many.example.", ResponseCode::NoError, &refs);
        assert_eq!(
            auth.authorize(Scope::DEFAULT, &q, &m).unwrap(),
            Verdict::Relay
        );
        assert_eq!(fw.authorized().unwrap().len(), 3);
        for i in 1..=3 {
            assert!(fw.allows(ip(&format!("198.51.100.{i}")), 0));
        }
        assert!(!fw.allows(ip("198.51.100.4"), 0));
        assert!(!fw.allows(ip("198.51.100.200"), 0));
        // The default cap is 32.
        let fw = Arc::new(FakeFirewall::new(Policy::default()));
        let auth = Authorizer::new(fw.clone(), None);
        assert_eq!(
            auth.authorize(Scope::DEFAULT, &q, &m).unwrap(),
            Verdict::Relay
        );
        assert_eq!(fw.authorized().unwrap().len(), 32);
    }

    #[test]
    fn nxdomain_and_errors_authorize_nothing() {
        let fw = Arc::new(FakeFirewall::new(Policy::default()));
        let auth = Authorizer::new(fw.clone(), None);
        for rcode in [
            ResponseCode::NXDomain,
            ResponseCode::ServFail,
            ResponseCode::Refused,
        ] {
            let (q, m) = answer("a.example.", rcode, &["192.0.2.1"]);
            assert_eq!(
                auth.authorize(Scope::DEFAULT, &q, &m).unwrap(),
                Verdict::Relay
            );
        }
        assert!(fw.authorized().unwrap().is_empty());
    }

    #[test]
    fn ttl_sets_a_deadline() {
        let fw = Arc::new(FakeFirewall::new(Policy::default()));
        let auth = Authorizer::new(fw.clone(), Some(Duration::from_secs(60)));
        let (q, m) = answer("a.example.", ResponseCode::NoError, &["192.0.2.1"]);
        assert_eq!(
            auth.authorize(Scope::DEFAULT, &q, &m).unwrap(),
            Verdict::Relay
        );
        let host = fw.authorized().unwrap()[0];
        let now = boottime_ns();
        assert!(host.expires_ns > now && host.expires_ns <= now + 60_000_000_000);
        assert!(!fw.allows(ip("192.0.2.1"), host.expires_ns));
    }

    #[test]
    fn firewall_failure_is_reported() {
        let mut fake = FakeFirewall::new(Policy::default());
        fake.fail_on = Some(ip("192.0.2.2"));
        let auth = Authorizer::new(Arc::new(fake), None);
        let (q, m) = answer(
            "a.example.",
            ResponseCode::NoError,
            &["192.0.2.1", "192.0.2.2"],
        );
        assert!(auth.authorize(Scope::DEFAULT, &q, &m).is_err());
    }
}
