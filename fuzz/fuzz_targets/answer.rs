//! Upstream answer bytes → the addresses nettrust would authorize. Must never panic, and must never
//! authorize an address that validation rejects or that is not owned by the question's CNAME chain.
//!
//! Every input is validated against one of two questions (the one it carries, or a fixed
//! `a.test. IN A`) and one of two IDs, so wrong-ID, wrong-question and QR=0 answers are checked as
//! well; accepted answers go through the real `Authorizer` into a fresh in-memory firewall whose
//! entries are then compared with what the answer may authorize.
#![no_main]

use std::{net::IpAddr, str::FromStr, sync::Arc};

use hickory_proto::{
    op::{Message, MessageType, Query, ResponseCode},
    rr::{DNSClass, Name, RData, RecordType},
};
use libfuzzer_sys::fuzz_target;
use nettrust::{
    authorizer::Authorizer,
    dns::answer::{chain_addresses, check_response},
    firewall::{Firewall, Policy, fake::FakeFirewall},
};

fuzz_target!(|data: &[u8]| {
    let Ok(response) = Message::from_vec(data) else { return };
    let selector = data.len() % 4;
    // Half of the inputs are checked against the ID they carry, half against another one.
    let id = if selector & 1 == 0 { response.metadata.id } else { response.metadata.id.wrapping_add(1) };
    // Half against their own first question, half against a fixed one.
    let question = match response.queries.first() {
        Some(q) if selector & 2 == 0 => q.clone(),
        _ => Query::query(Name::from_str("a.test.").unwrap(), RecordType::A),
    };
    let firewall = Arc::new(FakeFirewall::new(Policy::default()));
    let authorizer = Authorizer::new(firewall.clone(), None);
    if check_response(&response, id, &question).is_err() {
        // The proxy never calls the authorizer for a rejected answer; nothing else may write.
        assert!(firewall.authorized().unwrap().is_empty());
        return;
    }
    assert_eq!(id, response.metadata.id, "a response with another ID was accepted");
    assert_eq!(response.metadata.message_type, MessageType::Response, "QR=0 accepted");
    assert_eq!(response.queries.len(), 1, "a response without exactly one question was accepted");
    assert_eq!(response.queries[0].name, question.name, "another question's answer was accepted");
    assert_eq!(response.queries[0].query_type, question.query_type, "another type was accepted");
    assert_eq!(response.queries[0].query_class, question.query_class, "another class was accepted");
    let chain = chain_addresses(&question, &response.answers);
    assert_eq!(chain.names.first(), Some(&question.name));
    let owned = |addr: &IpAddr| {
        response.answers.iter().any(|r| {
            r.dns_class == DNSClass::IN
                && chain.names.contains(&r.name)
                && match &r.data {
                    RData::A(a) => IpAddr::V4(a.0) == *addr,
                    RData::AAAA(a) => IpAddr::V6(a.0) == *addr,
                    _ => false,
                }
        })
    };
    for addr in &chain.addresses {
        assert!(!addr.is_unspecified(), "unspecified address {addr} authorized");
        assert!(owned(addr), "{addr} is not owned by a name of the CNAME chain");
    }
    // Records from the additional and authority sections never count.
    assert!(chain.addresses.len() <= response.answers.len());

    // The real authorizer writes exactly the chain's addresses, and only for NOERROR answers.
    authorizer.authorize(nettrust::firewall::Scope::DEFAULT, &question, &response).expect("the fake firewall does not fail");
    let written = firewall.authorized().unwrap();
    if response.metadata.response_code != ResponseCode::NoError {
        assert!(written.is_empty(), "an error answer authorized {written:?}");
    }
    for host in &written {
        assert!(chain.addresses.contains(&host.addr), "{} authorized off the chain", host.addr);
        assert!(!host.addr.is_unspecified());
    }
});
