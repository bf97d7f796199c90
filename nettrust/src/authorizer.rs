//! Turns an accepted upstream answer into firewall authorizations and logs it with the original
//! nettrust's categories: `[Authorized]`, `[Already Authorized]`, `[No Answer]`, `[Name Error]`.

use std::{sync::Arc, time::Duration};

use hickory_proto::op::{Message, Query, ResponseCode};

use crate::{
    dns::answer::chain_addresses,
    firewall::{Authorization, Firewall, FirewallError, boottime_ns},
};

/// Writes the addresses of answers into the firewall.
#[derive(Clone)]
pub struct Authorizer {
    firewall: Arc<dyn Firewall>,
    /// How long an authorization lasts; `None` = until nettrust stops.
    ttl: Option<Duration>,
}

impl Authorizer {
    /// An authorizer writing into `firewall`, authorizations lasting `ttl` (`None` = forever).
    pub fn new(firewall: Arc<dyn Firewall>, ttl: Option<Duration>) -> Self {
        Self { firewall, ttl }
    }

    /// Authorizes the addresses `response` gives for `question`. Returns only when every address
    /// is enforced by the firewall; on error the caller must not relay the answer.
    pub fn authorize(&self, question: &Query, response: &Message) -> Result<(), FirewallError> {
        let qname = &question.name;
        match response.metadata.response_code {
            ResponseCode::NoError => {}
            ResponseCode::NXDomain => {
                tracing::info!("[Name Error] Question {qname} returned NX Domain");
                return Ok(());
            }
            rcode => {
                tracing::debug!("[Not Authorized] Question {qname} returned {rcode}");
                return Ok(());
            }
        }
        let chain = chain_addresses(question, &response.answers);
        if chain.unrelated > 0 {
            tracing::warn!(
                "[Ignored] Question {qname}: {} address records outside the CNAME chain",
                chain.unrelated
            );
        }
        if chain.addresses.is_empty() {
            tracing::info!("[No Answer] Question {qname} ({})", question.query_type);
            return Ok(());
        }
        let expires_ns = match self.ttl {
            Some(ttl) => {
                boottime_ns().saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
            }
            None => 0,
        };
        let mut new = Vec::new();
        for &addr in &chain.addresses {
            let authorization = self.firewall.authorize(addr, expires_ns)?;
            if let Err(e) = self.firewall.record_name(addr, &qname.to_string()) {
                tracing::debug!("cannot record the name of {addr}: {e}");
            }
            match authorization {
                Authorization::New => new.push(addr.to_string()),
                Authorization::Already => {
                    tracing::info!("[Already Authorized] Question {qname} Host: {addr}");
                }
            }
        }
        if !new.is_empty() {
            tracing::info!("[Authorized] Question {qname} Hosts: [{}]", new.join(", "));
        }
        Ok(())
    }
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
        auth.authorize(&q, &m).unwrap();
        assert!(fw.allows(ip("192.0.2.1"), 0));
        assert!(fw.allows(ip("192.0.2.2"), 0));
        assert!(!fw.allows(ip("192.0.2.3"), 0));
        assert_eq!(fw.authorized().unwrap().len(), 2);
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
            auth.authorize(&q, &m).unwrap();
        }
        assert!(fw.authorized().unwrap().is_empty());
    }

    #[test]
    fn ttl_sets_a_deadline() {
        let fw = Arc::new(FakeFirewall::new(Policy::default()));
        let auth = Authorizer::new(fw.clone(), Some(Duration::from_secs(60)));
        let (q, m) = answer("a.example.", ResponseCode::NoError, &["192.0.2.1"]);
        auth.authorize(&q, &m).unwrap();
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
        assert!(auth.authorize(&q, &m).is_err());
    }
}
