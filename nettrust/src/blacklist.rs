//! Blacklists enforced by the DNS proxy itself.
//!
//! - Domains: exact names and `*.example.com` wildcards (which match every name *below*
//!   example.com, not example.com itself), compared case-insensitively (RFC 4343) against the
//!   question and every name of the answer's CNAME chain. A blacklisted name gets the configured
//!   [`BlockResponse`] and authorizes nothing.
//! - Hosts and networks (IPv4 and IPv6): such addresses stay in the answer, as in the original,
//!   but are never written into the firewall.

use std::{collections::HashSet, net::IpAddr, sync::Arc};

use hickory_proto::{op::ResponseCode, rr::Name};
use ipnet::IpNet;

use crate::policy::Domains;

/// What a client asking for a blacklisted domain receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum BlockResponse {
    /// REFUSED (RFC 1035 §4.1.1): policy refusal, clients do not retry elsewhere as eagerly as
    /// after SERVFAIL.
    #[default]
    Refused,
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// SERVFAIL, the original nettrust's answer.
    ServFail,
}

impl BlockResponse {
    /// The response code sent to the client.
    pub fn rcode(self) -> ResponseCode {
        match self {
            Self::Refused => ResponseCode::Refused,
            Self::NxDomain => ResponseCode::NXDomain,
            Self::ServFail => ResponseCode::ServFail,
        }
    }

    /// Parses `refused`, `nxdomain` or `servfail` (case-insensitive).
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "refused" => Some(Self::Refused),
            "nxdomain" => Some(Self::NxDomain),
            "servfail" => Some(Self::ServFail),
            _ => None,
        }
    }
}

pub use crate::policy::PatternError;

/// The proxy's blacklists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Blacklist {
    /// Blacklisted names: exact ones and `*.` wildcards, shared with the settings they come from.
    domains: Arc<Domains>,
    /// Addresses never authorized.
    hosts: HashSet<IpAddr>,
    /// Networks never authorized.
    networks: Vec<IpNet>,
    /// Answer for blacklisted names.
    pub response: BlockResponse,
}

impl Blacklist {
    /// Builds the lists; domain patterns are exact names or `*.` followed by a name (see
    /// [`crate::policy::parse_pattern`]).
    pub fn new(
        domains: &[String],
        hosts: &[IpAddr],
        networks: &[IpNet],
        response: BlockResponse,
    ) -> Result<Self, PatternError> {
        let domains = Domains::from_patterns(domains)?;
        Ok(Self::with_domains(
            Arc::new(domains),
            hosts,
            networks,
            response,
        ))
    }

    /// Builds the lists from compiled domains (the configuration's inline domains and its
    /// `domains_file`), shared rather than copied.
    pub fn with_domains(
        domains: Arc<Domains>,
        hosts: &[IpAddr],
        networks: &[IpNet],
        response: BlockResponse,
    ) -> Self {
        Self {
            domains,
            hosts: hosts.iter().copied().collect(),
            networks: networks.to_vec(),
            response,
        }
    }

    /// Whether no domain is blacklisted (the proxy then skips the lookups).
    pub fn has_domains(&self) -> bool {
        !self.domains.is_empty()
    }

    /// Whether `name` is blacklisted, exactly or below a wildcard.
    pub fn blocks_domain(&self, name: &Name) -> bool {
        self.domains.allows_name(name)
    }

    /// Whether `addr` must never be authorized.
    pub fn blocks_host(&self, addr: IpAddr) -> bool {
        self.hosts.contains(&addr) || self.networks.iter().any(|net| net.contains(&addr))
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn list(domains: &[&str]) -> Blacklist {
        let domains: Vec<String> = domains.iter().map(ToString::to_string).collect();
        Blacklist::new(&domains, &[], &[], BlockResponse::default()).unwrap()
    }
    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    #[test]
    fn exact_names_match_case_insensitively() {
        let bl = list(&["Ads.Example.com"]);
        assert!(bl.blocks_domain(&name("ads.example.com.")));
        assert!(bl.blocks_domain(&name("ADS.EXAMPLE.COM")));
        assert!(!bl.blocks_domain(&name("x.ads.example.com.")));
        assert!(!bl.blocks_domain(&name("example.com.")));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let bl = list(&["*.Tracker.example"]);
        assert!(bl.blocks_domain(&name("a.tracker.example.")));
        assert!(bl.blocks_domain(&name("deep.a.TRACKER.example.")));
        assert!(!bl.blocks_domain(&name("tracker.example.")));
        assert!(!bl.blocks_domain(&name("nottracker.example.")));
        assert!(!bl.blocks_domain(&name("tracker.example.org.")));
    }

    #[test]
    fn wildcard_and_exact_together_cover_a_zone() {
        let bl = list(&["*.zone.test", "zone.test."]);
        assert!(bl.blocks_domain(&name("zone.test.")));
        assert!(bl.blocks_domain(&name("www.zone.test.")));
        assert!(!bl.blocks_domain(&name("other.test.")));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for bad in ["", "*.", "a.*.example", "a..example", "**.example"] {
            let r = Blacklist::new(&[bad.to_string()], &[], &[], BlockResponse::Refused);
            assert!(r.is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hosts_and_networks_v4_and_v6() {
        let bl = Blacklist::new(
            &[],
            &["192.0.2.66".parse().unwrap()],
            &[
                "203.0.113.0/28".parse().unwrap(),
                "2001:db8:bad::/48".parse().unwrap(),
            ],
            BlockResponse::Refused,
        )
        .unwrap();
        for blocked in [
            "192.0.2.66",
            "203.0.113.1",
            "203.0.113.15",
            "2001:db8:bad::1",
        ] {
            assert!(bl.blocks_host(blocked.parse().unwrap()), "{blocked}");
        }
        for allowed in ["192.0.2.67", "203.0.113.16", "2001:db8:bad1::1"] {
            assert!(!bl.blocks_host(allowed.parse().unwrap()), "{allowed}");
        }
    }

    #[test]
    fn responses_parse() {
        assert_eq!(
            BlockResponse::parse("NXDOMAIN"),
            Some(BlockResponse::NxDomain)
        );
        assert_eq!(
            BlockResponse::parse("servfail"),
            Some(BlockResponse::ServFail)
        );
        assert_eq!(
            BlockResponse::parse("refused"),
            Some(BlockResponse::Refused)
        );
        assert_eq!(BlockResponse::parse("drop"), None);
        assert_eq!(BlockResponse::Refused.rcode(), ResponseCode::Refused);
    }
}
