//! Upstream reply bytes → through the real `Proxy` → what the firewall is told. The fuzzer plays the
//! upstream: a client asks the question the reply carries (or `a.test. A`), the proxy forwards it
//! to the loopback upstream, which answers with the fuzz input (its ID set to the forwarded one,
//! or to a surely wrong one). Invariant: **nothing is authorized unless validation accepts the
//! reply** (right ID, QR=1, exactly our question, not truncated, NOERROR), and then only the
//! addresses of the question's CNAME chain.
#![no_main]

mod common;

use std::{collections::HashMap, net::IpAddr, str::FromStr};

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RecordType},
};
use libfuzzer_sys::fuzz_target;
use nettrust::{
    dns::{
        answer::{chain_addresses, check_response},
        proxy::ClientTransport,
    },
    firewall::Firewall as _,
};

fn snapshot(harness: &common::Harness) -> HashMap<IpAddr, u64> {
    harness.firewall.authorized().unwrap().into_iter().map(|h| (h.addr, h.expires_ns)).collect()
}

fuzz_target!(|data: &[u8]| {
    let harness = common::scripted_harness();
    let parsed = Message::from_vec(data).ok();
    let question = parsed
        .as_ref()
        .and_then(|m| m.queries.first().cloned())
        .unwrap_or_else(|| Query::query(Name::from_str("a.test.").unwrap(), RecordType::A));
    let mut query = Message::query();
    query.metadata.id = 0x1234;
    query.metadata.recursion_desired = true;
    query.add_query(question.clone());
    let Ok(query) = query.to_vec() else { return };
    let right_id = data.len() % 8 != 1;
    let transport = if data.len() % 3 == 0 { ClientTransport::Tcp } else { ClientTransport::Udp };

    let before = snapshot(harness);
    *common::SCRIPTED.lock().unwrap() = Some((data.to_vec(), right_id));
    let reply = harness.runtime.block_on(harness.proxy.handle(&query, transport));
    *common::SCRIPTED.lock().unwrap() = None;
    let touched: Vec<IpAddr> = snapshot(harness)
        .into_iter()
        .filter(|(addr, expires)| before.get(addr) != Some(expires))
        .map(|(addr, _)| addr)
        .collect();
    assert!(reply.is_some(), "the client got no reply");
    if touched.is_empty() {
        return;
    }
    assert!(right_id, "a reply with a wrong ID authorized {touched:?}");
    let mut upstream = parsed.unwrap_or_else(|| panic!("an unparsable reply authorized {touched:?}"));
    // What the proxy received: the input with the forwarded ID; compare with that ID.
    let id = upstream.metadata.id;
    check_response(&upstream, id, &question)
        .unwrap_or_else(|e| panic!("a rejected reply ({e}) authorized {touched:?}"));
    assert!(!upstream.metadata.truncation, "a truncated reply authorized {touched:?}");
    assert_eq!(upstream.metadata.response_code, ResponseCode::NoError, "an error reply authorized");
    let chain = chain_addresses(&question, &std::mem::take(&mut upstream.answers));
    for addr in &touched {
        assert!(chain.addresses.contains(addr), "{addr} authorized off the CNAME chain");
    }
});
