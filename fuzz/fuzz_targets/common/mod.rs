//! The proxy under fuzzing: a real `Proxy` forwarding to a scripted upstream on loopback (UDP and
//! TCP on one port) and authorizing into the in-memory firewall.
//!
//! The upstream answers any query carrying one question: an A/AAAA question gets its address plus
//! a decoy record for an unrelated name (`decoy.example.`, [`DECOY_V4`]/[`DECOY_V6`]), which must
//! never be authorized; other types get an empty NOERROR answer.

#![allow(dead_code, reason = "each target uses a part of the harness")]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use hickory_proto::{
    op::{Message, OpCode, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA},
    },
};
use nettrust::{
    authorizer::Authorizer,
    dns::{
        answer::chain_addresses,
        proxy::Proxy,
        upstream::{Transport, Upstreams},
    },
    firewall::{Policy, fake::FakeFirewall},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
    runtime::Runtime,
};

pub const ANSWER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const ANSWER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const DECOY_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
pub const DECOY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x66);

pub struct Harness {
    pub runtime: Runtime,
    pub proxy: Proxy,
    pub firewall: Arc<FakeFirewall>,
}

impl Harness {
    /// Every address `reply` gives for its question (the A/AAAA records of the question's CNAME
    /// chain) must be allowed already: the client never learns an address it cannot reach.
    /// Records outside the chain (the decoys) are relayed as they came but never authorized.
    pub fn check_allowed(&self, reply: &Message) {
        let [question] = reply.queries.as_slice() else { return };
        if reply.metadata.response_code != ResponseCode::NoError || reply.metadata.truncation {
            return;
        }
        for addr in chain_addresses(question, &reply.answers).addresses {
            if addr.is_unspecified() {
                continue;
            }
            assert!(
                self.firewall.allows(addr, nettrust::firewall::boottime_ns()),
                "{addr} sent to the client for {} but not allowed",
                question.name
            );
        }
    }

    /// The decoy addresses are never authorized.
    pub fn check_no_decoy(&self) {
        assert!(!self.firewall.has_entry(IpAddr::V4(DECOY_V4)), "decoy v4 authorized");
        assert!(!self.firewall.has_entry(IpAddr::V6(DECOY_V6)), "decoy v6 authorized");
    }
}

/// What the `upstream` target makes the upstream send: these bytes, with the query's ID written
/// over the first two bytes (`true`) or that ID with its top bit flipped (`false`, always wrong).
pub static SCRIPTED: Mutex<Option<(Vec<u8>, bool)>> = Mutex::new(None);

/// The harness, with the proxy giving up on the upstream after `timeout` (fixed by the first
/// call). The upstream answers every query it can parse and re-encode; for the rare one it cannot
/// (some binary labels) the proxy waits out the timeout and answers SERVFAIL.
pub fn harness(timeout: Duration) -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| build(timeout))
}

/// The harness for scripted replies: a rejected reply is followed by nothing, so the proxy waits
/// for its (short) upstream timeout and answers SERVFAIL. A legitimate reply that misses it only
/// means SERVFAIL and no authorization, which the invariant allows.
pub fn scripted_harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| build(Duration::from_millis(5)))
}

fn build(timeout: Duration) -> Harness {
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let upstream = runtime.block_on(start_upstream());
        let firewall = Arc::new(FakeFirewall::new(Policy::default()));
        let proxy = {
            let _guard = runtime.enter();
            Proxy::new(
                Upstreams::new(&[upstream], Transport::Udp, timeout),
                Authorizer::new(firewall.clone(), Some(Duration::from_secs(3600))),
            )
        };
        Harness { runtime, proxy, firewall }
    }
}

fn answer(query: &[u8]) -> Option<Vec<u8>> {
    if let Some((mut bytes, right_id)) = SCRIPTED.lock().unwrap().clone() {
        if bytes.len() >= 2 && query.len() >= 2 {
            let id = u16::from_be_bytes([query[0], query[1]]) ^ if right_id { 0 } else { 0x8000 };
            bytes[..2].copy_from_slice(&id.to_be_bytes());
        }
        return Some(bytes);
    }
    let query = Message::from_vec(query).ok()?;
    let [question] = query.queries.as_slice() else { return None };
    let mut reply = Message::response(query.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.add_query(question.clone());
    let decoy = Name::from_str("decoy.example.").unwrap();
    match question.query_type {
        RecordType::A => {
            reply.add_answer(Record::from_rdata(question.name.clone(), 60, RData::A(A(ANSWER_V4))));
            reply.add_answer(Record::from_rdata(decoy, 60, RData::A(A(DECOY_V4))));
        }
        RecordType::AAAA => {
            reply.add_answer(Record::from_rdata(question.name.clone(), 60, RData::AAAA(AAAA(ANSWER_V6))));
            reply.add_answer(Record::from_rdata(decoy, 60, RData::AAAA(AAAA(DECOY_V6))));
        }
        _ => {}
    }
    reply.to_vec().ok()
}

async fn start_upstream() -> SocketAddr {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let Ok(tcp) = TcpListener::bind(addr).await else { continue };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((len, peer)) = udp.recv_from(&mut buf).await else { continue };
                if let Some(reply) = answer(&buf[..len]) {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = tcp.accept().await else { continue };
                tokio::spawn(async move {
                    loop {
                        let Ok(len) = stream.read_u16().await else { return };
                        let mut query = vec![0u8; usize::from(len)];
                        if stream.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        let Some(reply) = answer(&query) else { continue };
                        let mut framed = u16::try_from(reply.len()).unwrap().to_be_bytes().to_vec();
                        framed.extend_from_slice(&reply);
                        if stream.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        return addr;
    }
}
