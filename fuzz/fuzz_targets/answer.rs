//! Upstream answer bytes → the addresses nettrust would authorize. Must never panic, and must never
//! authorize an address that validation rejects or that is not owned by the question's CNAME chain.
#![no_main]

use std::net::IpAddr;

use hickory_proto::{
    op::Message,
    rr::{DNSClass, RData},
};
use libfuzzer_sys::fuzz_target;
use nettrust::dns::answer::{chain_addresses, check_response};

fuzz_target!(|data: &[u8]| {
    let Ok(response) = Message::from_vec(data) else { return };
    let Some(question) = response.queries.first().cloned() else { return };
    // Half of the inputs are checked against the ID they carry, half against another one.
    let id = if data.len() % 2 == 0 { response.metadata.id } else { response.metadata.id.wrapping_add(1) };
    if check_response(&response, id, &question).is_err() {
        return;
    }
    assert_eq!(id, response.metadata.id, "a response with another ID was accepted");
    assert_eq!(response.queries.len(), 1, "a response without exactly one question was accepted");
    let chain = chain_addresses(&question, &response.answers);
    assert_eq!(chain.names.first(), Some(&question.name));
    for addr in &chain.addresses {
        assert!(!addr.is_unspecified(), "unspecified address {addr} authorized");
        let owned = response.answers.iter().any(|r| {
            r.dns_class == DNSClass::IN
                && chain.names.contains(&r.name)
                && match &r.data {
                    RData::A(a) => IpAddr::V4(a.0) == *addr,
                    RData::AAAA(a) => IpAddr::V6(a.0) == *addr,
                    _ => false,
                }
        });
        assert!(owned, "{addr} is not owned by a name of the CNAME chain");
    }
    // Records from the additional and authority sections never count.
    assert!(chain.addresses.len() <= response.answers.len());
});
