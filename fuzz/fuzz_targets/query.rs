//! Client query bytes → the proxy's reply (or none), through the real `Proxy` with a loopback
//! upstream and the in-memory firewall. Must never panic; every address the client is sent must
//! already be allowed by the firewall; the decoy records the upstream adds are never authorized;
//! the reply carries the client's ID; responses and runts get no reply.
#![no_main]

mod common;

use hickory_proto::op::{Message, MessageType, OpCode};
use libfuzzer_sys::fuzz_target;
use nettrust::dns::proxy::ClientTransport;

fuzz_target!(|data: &[u8]| {
    // A timeout only turns into SERVFAIL here, which every assertion allows.
    let harness = common::harness(std::time::Duration::from_millis(100));
    let transport = if data.len() % 2 == 0 { ClientTransport::Udp } else { ClientTransport::Tcp };
    let reply = harness.runtime.block_on(harness.proxy.handle(data, transport));
    harness.check_no_decoy();
    if data.len() < 12 || data[2] & 0x80 != 0 {
        assert!(reply.is_none(), "a runt or a response was answered");
        return;
    }
    let parsed = Message::from_vec(data).ok();
    if let Some(query) = &parsed
        && query.metadata.message_type == MessageType::Query
        && query.metadata.op_code == OpCode::Query
        && query.queries.len() == 1
    {
        assert!(reply.is_some(), "a well-formed query got no reply");
    }
    let Some(reply) = reply else { return };
    let reply = Message::from_vec(&reply).expect("the proxy's reply parses");
    assert_eq!(reply.metadata.id, u16::from_be_bytes([data[0], data[1]]), "reply ID differs");
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    harness.check_allowed(&reply);
});
