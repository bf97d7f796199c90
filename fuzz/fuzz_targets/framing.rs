//! A TCP client's byte stream → the server's RFC 7766 length-prefixed framing
//! (`dns::server::serve_connection`) over an in-memory duplex pipe, with the real `Proxy`, a
//! loopback upstream and the in-memory firewall. Must never panic or hang; the reply stream must be
//! exactly the framed replies to the complete frames of the input, in order (a partial frame at
//! the end gets nothing), and every address sent must already be allowed.
#![no_main]

mod common;

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use nettrust::dns::{proxy::ClientTransport, server::serve_connection};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fuzz_target!(|data: &[u8]| {
    // Long: the reference replies must not differ by a timeout under load.
    let harness = common::harness(std::time::Duration::from_secs(2));
    let output = harness.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(4096);
        let peer = "127.0.0.1:5353".parse().unwrap();
        let serve = serve_connection(server, peer, &harness.proxy, ClientTransport::Tcp);
        let talk = async {
            client.write_all(data).await.unwrap();
            client.shutdown().await.unwrap();
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.unwrap();
            out
        };
        let (_, out) = tokio::join!(serve, talk);
        out
    });
    harness.check_no_decoy();

    // The reference: walk the complete frames and ask the proxy directly.
    let mut expected = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let Some(frame) = rest.get(2..2 + len) else { break };
        if let Some(reply) = harness.runtime.block_on(harness.proxy.handle(frame, ClientTransport::Tcp)) {
            expected.extend_from_slice(&u16::try_from(reply.len()).unwrap().to_be_bytes());
            expected.extend_from_slice(&reply);
        }
        rest = &rest[2 + len..];
    }
    assert_eq!(output, expected, "the framed replies differ from the replies to the frames");
    let mut out = output.as_slice();
    while out.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([out[0], out[1]]));
        let reply = Message::from_vec(&out[2..2 + len]).expect("a reply frame parses");
        harness.check_allowed(&reply);
        out = &out[2 + len..];
    }
});
