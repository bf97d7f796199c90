//! Loopback DNS servers for unit tests: scripted UDP, TCP and TLS responders; a firewall that
//! records what it is asked to authorize; the forged replies every path must refuse.

use std::{
    net::SocketAddr,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{
        DNSClass, Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME},
    },
};

use crate::firewall::{Authorization, AuthorizedHost, Firewall, FirewallError};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
};

/// Builds the replies to one query (several replies are sent in order; none = silence).
pub type Script = Arc<dyn Fn(&Message) -> Vec<Message> + Send + Sync>;

/// A test server's address and how many queries / connections it saw.
pub struct Served {
    pub addr: SocketAddr,
    pub queries: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    /// Source ports of the UDP queries received.
    pub ports: Arc<std::sync::Mutex<std::collections::HashSet<u16>>>,
}

impl Served {
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

pub fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

pub fn a(owner: &str, ip: &str) -> Record {
    Record::from_rdata(name(owner), 60, RData::A(A(ip.parse().unwrap())))
}

pub fn aaaa(owner: &str, ip: &str) -> Record {
    Record::from_rdata(name(owner), 60, RData::AAAA(AAAA(ip.parse().unwrap())))
}

pub fn cname(owner: &str, target: &str) -> Record {
    Record::from_rdata(name(owner), 60, RData::CNAME(CNAME(name(target))))
}

/// The normal answer to `query`: same ID and question, `records` in the answer section.
pub fn reply(query: &Message, records: &[Record]) -> Message {
    let mut m = Message::response(query.metadata.id, OpCode::Query);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.add_queries(query.queries.iter().cloned());
    m.add_answers(records.iter().cloned());
    m
}

/// A script answering every A question with `ip`.
pub fn answer_with(ip: &'static str) -> Script {
    Arc::new(move |q: &Message| {
        let owner = q.queries[0].name.to_ascii();
        vec![reply(q, &[a(&owner, ip)])]
    })
}

/// Client query bytes for `qname`/`qtype` with ID `id`.
pub fn query_bytes(qname: &str, qtype: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), qtype));
    m.to_vec().unwrap()
}

/// A UDP server on 127.0.0.1 (on `port`, 0 = any) following `script`.
pub async fn udp_server(port: u16, script: Script) -> Served {
    let socket = UdpSocket::bind(("127.0.0.1", port)).await.unwrap();
    let served = Served {
        addr: socket.local_addr().unwrap(),
        queries: Arc::default(),
        connections: Arc::default(),
        ports: Arc::default(),
    };
    let (queries, ports) = (served.queries.clone(), served.ports.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
            queries.fetch_add(1, Ordering::SeqCst);
            ports.lock().unwrap().insert(peer.port());
            let Ok(query) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            for response in script(&query) {
                let _ = socket.send_to(&response.to_vec().unwrap(), peer).await;
            }
        }
    });
    served
}

async fn serve_stream(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    script: Script,
    queries: Arc<AtomicUsize>,
) {
    // Reads up to two pipelined queries and answers them in reverse order (RFC 7766 §7 allows
    // out-of-order answers), so clients must match by ID.
    loop {
        let mut batch = Vec::new();
        for wait in [Duration::from_secs(30), Duration::from_millis(50)] {
            let read = async {
                let len = stream.read_u16().await?;
                let mut buf = vec![0u8; usize::from(len)];
                stream.read_exact(&mut buf).await?;
                Ok::<_, std::io::Error>(buf)
            };
            match tokio::time::timeout(wait, read).await {
                Ok(Ok(buf)) => batch.push(buf),
                Ok(Err(_)) if batch.is_empty() => return,
                _ => break,
            }
        }
        for buf in batch.iter().rev() {
            queries.fetch_add(1, Ordering::SeqCst);
            let Ok(query) = Message::from_vec(buf) else {
                continue;
            };
            for response in script(&query) {
                let bytes = response.to_vec().unwrap();
                let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&bytes);
                if stream.write_all(&framed).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A TCP server on 127.0.0.1 (on `port`, 0 = any) following `script`; with `tls`, DoT.
pub async fn tcp_server(
    port: u16,
    script: Script,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Served {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let served = Served {
        addr: listener.local_addr().unwrap(),
        queries: Arc::default(),
        connections: Arc::default(),
        ports: Arc::default(),
    };
    let (queries, connections) = (served.queries.clone(), served.connections.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let (script, queries, tls) = (script.clone(), queries.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    None => serve_stream(stream, script, queries).await,
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve_stream(stream, script, queries).await;
                        }
                    }
                }
            });
        }
    });
    served
}

/// A self-signed certificate for `names`, written as PEM files into `dir`: (cert, key).
pub fn certificate(
    dir: &std::path::Path,
    names: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(
        names.iter().map(ToString::to_string).collect::<Vec<_>>(),
    )
    .unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// A firewall that records every authorization call.
#[derive(Default)]
pub struct Recording(std::sync::Mutex<Vec<std::net::IpAddr>>);

impl Recording {
    /// The addresses authorized so far, in order.
    pub fn calls(&self) -> Vec<std::net::IpAddr> {
        self.0.lock().unwrap().clone()
    }
}

impl Firewall for Recording {
    fn authorize(
        &self,
        grant: crate::firewall::Grant,
        _: u64,
    ) -> Result<Authorization, FirewallError> {
        self.0.lock().unwrap().push(grant.addr);
        Ok(Authorization::New)
    }
    fn authorized(&self) -> Result<Vec<AuthorizedHost>, FirewallError> {
        Ok(Vec::new())
    }
    fn set_whitelist(&self, _: &crate::firewall::Policy) -> Result<(), FirewallError> {
        Ok(())
    }
    fn due(&self, _: u64) -> Result<Vec<crate::firewall::HostState>, FirewallError> {
        Ok(Vec::new())
    }
    fn renew_if(&self, _: crate::firewall::Grant, _: u64, _: u64) -> Result<bool, FirewallError> {
        Ok(false)
    }
    fn remove_if(&self, _: crate::firewall::Grant, _: u64) -> Result<bool, FirewallError> {
        Ok(false)
    }
}

/// Turns the query for `v.test.` A into an upstream reply.
pub type Forge = fn(&Message) -> Message;

/// Replies to a query for `v.test.` A that must authorize nothing, each named; all carry
/// 192.0.2.66 somewhere.
pub fn forged_replies() -> Vec<(&'static str, Forge)> {
    vec![
        ("wrong ID", |q| {
            let mut m = reply(q, &[a("v.test.", "192.0.2.66")]);
            m.metadata.id = q.metadata.id ^ 1;
            m
        }),
        ("wrong question name", |q| {
            let mut m = reply(q, &[a("v.test.", "192.0.2.66")]);
            m.queries[0].name = name("w.test.");
            m
        }),
        ("wrong question type", |q| {
            let mut m = reply(q, &[a("v.test.", "192.0.2.66")]);
            m.queries[0].query_type = RecordType::AAAA;
            m
        }),
        ("wrong question class", |q| {
            let mut m = reply(q, &[a("v.test.", "192.0.2.66")]);
            m.queries[0].query_class = DNSClass::CH;
            m
        }),
        ("QR=0", |q| {
            let mut m = reply(q, &[a("v.test.", "192.0.2.66")]);
            m.metadata.message_type = MessageType::Query;
            m
        }),
        ("QDCOUNT 0", |q| {
            let mut m = reply(q, &[a("v.test.", "192.0.2.66")]);
            m.queries.clear();
            m
        }),
        ("QDCOUNT 2", |q| {
            let mut m = reply(q, &[a("v.test.", "192.0.2.66")]);
            m.add_query(q.queries[0].clone());
            m
        }),
        ("unrelated records only", |q| {
            let mut m = reply(q, &[a("evil.test.", "192.0.2.66")]);
            m.add_additional(a("v.test.", "192.0.2.67"));
            m
        }),
        ("CNAME chain rooted elsewhere", |q| {
            let mut m = reply(q, &[]);
            m.add_answer(cname("other.test.", "target.test."));
            m.add_answer(a("target.test.", "192.0.2.66"));
            m
        }),
        ("truncated answer", |q| {
            let mut m = reply(q, &[a("v.test.", "192.0.2.66")]);
            m.metadata.truncation = true;
            m
        }),
    ]
}
