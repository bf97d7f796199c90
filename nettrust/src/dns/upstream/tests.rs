use std::{sync::Arc, time::Duration};

use hickory_proto::{
    op::{Message, Query},
    rr::{RData, RecordType},
};

use super::*;
use crate::dns::testutil::*;

fn question(n: &str) -> Query {
    Query::query(name(n), RecordType::A)
}

fn first_a(answer: &Answer) -> String {
    answer
        .1
        .answers
        .iter()
        .find_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .expect("an A record")
}

#[tokio::test]
async fn silence_is_a_timeout() {
    let server = tcp_server(0, Arc::new(|_: &Message| Vec::new()), None).await;
    let up = Upstreams::new(&[server.addr], Transport::Tcp, Duration::from_millis(100));
    let err = up
        .exchange(
            &query_bytes("x.test.", RecordType::A, 7),
            &question("x.test."),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn failover_and_back_off() {
    let dead = tcp_server(0, Arc::new(|_: &Message| Vec::new()), None).await;
    let alive = tcp_server(0, answer_with("192.0.2.2"), None).await;
    let up = Upstreams::new(
        &[dead.addr, alive.addr],
        Transport::Tcp,
        Duration::from_millis(150),
    );
    // Each of the first distinct questions waits for the dead server, then fails over.
    for (i, n) in ["f1.test.", "f2.test.", "f3.test."].iter().enumerate() {
        let q = query_bytes(n, RecordType::A, 1);
        let answer = up.exchange(&q, &question(n)).await.unwrap();
        assert_eq!(first_a(&answer), "192.0.2.2");
        assert_eq!(dead.queries(), i + 1);
    }
    // Three distinct questions failed with no answer: the dead server is in back-off and the
    // next query goes straight to the live one.
    let started = tokio::time::Instant::now();
    let q = query_bytes("f4.test.", RecordType::A, 1);
    up.exchange(&q, &question("f4.test.")).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((dead.queries(), alive.queries()), (3, 4));
}

/// One question failing again and again (a slow zone) never benches the server: other questions
/// keep going to it.
#[tokio::test]
async fn one_failing_question_does_not_back_off_the_server() {
    let primary = tcp_server(
        0,
        Arc::new(|q: &Message| {
            if q.queries[0].name.to_string().ends_with("slow.test.") {
                Vec::new()
            } else {
                vec![reply(q, &[a(&q.queries[0].name.to_string(), "192.0.2.1")])]
            }
        }),
        None,
    )
    .await;
    let secondary = tcp_server(0, answer_with("192.0.2.2"), None).await;
    let up = Upstreams::new(
        &[primary.addr, secondary.addr],
        Transport::Tcp,
        Duration::from_millis(100),
    );
    for _ in 0..5 {
        let q = query_bytes("x.slow.test.", RecordType::A, 1);
        // The secondary answers the slow question after the primary's timeout.
        up.exchange(&q, &question("X.slow.test.")).await.unwrap();
    }
    let q = query_bytes("fast.test.", RecordType::A, 2);
    let answer = up.exchange(&q, &question("fast.test.")).await.unwrap();
    assert_eq!(first_a(&answer), "192.0.2.1", "still asked to the primary");
}

/// A client asking three distinct questions of a slow zone at once does not bench a primary that
/// answers other questions meanwhile: a server that answered something after a query was sent
/// is alive, the query's timeout is its question's.
#[tokio::test]
async fn slow_questions_asked_together_do_not_bench_a_server_answering_others() {
    let primary = tcp_server(
        0,
        Arc::new(|q: &Message| {
            if q.queries[0].name.to_string().ends_with("slow.test.") {
                Vec::new()
            } else {
                vec![reply(q, &[a(&q.queries[0].name.to_string(), "192.0.2.1")])]
            }
        }),
        None,
    )
    .await;
    let secondary = tcp_server(0, answer_with("192.0.2.2"), None).await;
    let up = Arc::new(Upstreams::new(
        &[primary.addr, secondary.addr],
        Transport::Tcp,
        Duration::from_millis(300),
    ));
    let slow: Vec<_> = ["s1.slow.test.", "s2.slow.test.", "s3.slow.test."]
        .into_iter()
        .map(|n| {
            let up = up.clone();
            tokio::spawn(async move {
                let q = query_bytes(n, RecordType::A, 1);
                up.exchange(&q, &question(n)).await
            })
        })
        .collect();
    // Another client's question, answered by the primary while the slow ones wait.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let q = query_bytes("other.test.", RecordType::A, 2);
    let answer = up.exchange(&q, &question("other.test.")).await.unwrap();
    assert_eq!(first_a(&answer), "192.0.2.1");
    for task in slow {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        primary.queries(),
        4,
        "each slow question reached the primary"
    );
    let q = query_bytes("fast.test.", RecordType::A, 3);
    let answer = up.exchange(&q, &question("fast.test.")).await.unwrap();
    assert_eq!(first_a(&answer), "192.0.2.1", "still asked to the primary");
}

#[tokio::test]
async fn every_server_failing_is_an_error() {
    let dead = tcp_server(0, Arc::new(|_: &Message| Vec::new()), None).await;
    let up = Upstreams::new(
        &[dead.addr, dead.addr],
        Transport::Tcp,
        Duration::from_millis(50),
    );
    assert!(
        up.exchange(
            &query_bytes("f.test.", RecordType::A, 1),
            &question("f.test.")
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn tcp_connection_is_reused_and_pipelined() {
    let server = tcp_server(0, answer_with("192.0.2.3"), None).await;
    let up = Arc::new(Upstreams::new(
        &[server.addr],
        Transport::Tcp,
        Duration::from_secs(2),
    ));
    let names: [&'static str; 4] = ["p1.test.", "p2.test.", "p3.test.", "p4.test."];
    let tasks: Vec<_> = names
        .into_iter()
        .map(|n| {
            let up = up.clone();
            tokio::spawn(async move {
                // Same client ID for all: the pool must pick distinct IDs on the connection.
                let answer = up
                    .exchange(&query_bytes(n, RecordType::A, 1), &question(n))
                    .await
                    .unwrap();
                assert_eq!(answer.1.queries[0].name, name(n));
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    up.exchange(
        &query_bytes("p5.test.", RecordType::A, 1),
        &question("p5.test."),
    )
    .await
    .unwrap();
    assert_eq!(server.queries(), 5);
    assert_eq!(server.connections(), 1, "one connection for every query");
}

#[tokio::test]
async fn a_closed_connection_is_reopened() {
    // A server that answers one query per connection, then closes it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut s, _)) = listener.accept().await {
            let len = s.read_u16().await.unwrap();
            let mut buf = vec![0u8; usize::from(len)];
            s.read_exact(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf).unwrap();
            let bytes = reply(&q, &[a(&q.queries[0].name.to_ascii(), "192.0.2.4")])
                .to_vec()
                .unwrap();
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            s.write_all(&framed).await.unwrap();
        }
    });
    let up = Upstreams::new(&[addr], Transport::Tcp, Duration::from_secs(2));
    for n in ["c1.test.", "c2.test.", "c3.test."] {
        let answer = up
            .exchange(&query_bytes(n, RecordType::A, 1), &question(n))
            .await
            .unwrap();
        assert_eq!(first_a(&answer), "192.0.2.4");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn dot_upstream_verifies_the_certificate_name() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), &["dns.test"]);
    let acceptor =
        tokio_rustls::TlsAcceptor::from(crate::dns::tls::server_config(&cert, &key).unwrap());
    let server = tcp_server(0, answer_with("192.0.2.5"), Some(acceptor)).await;
    let config = crate::dns::tls::client_config(Some(&cert)).unwrap();
    let good = Upstreams::new(
        &[server.addr],
        Transport::Tls {
            config: config.clone(),
            name: Some(crate::dns::tls::server_name(Some("dns.test"), server.addr.ip()).unwrap()),
        },
        Duration::from_secs(2),
    );
    for n in ["t1.test.", "t2.test."] {
        let answer = good
            .exchange(&query_bytes(n, RecordType::A, 3), &question(n))
            .await
            .unwrap();
        assert_eq!(first_a(&answer), "192.0.2.5");
    }
    assert_eq!(server.connections(), 1);
    // The certificate does not name 127.0.0.1: verifying by IP (the default) must fail.
    let by_ip = Upstreams::new(
        &[server.addr],
        Transport::Tls { config, name: None },
        Duration::from_secs(2),
    );
    let err = by_ip
        .exchange(
            &query_bytes("t3.test.", RecordType::A, 3),
            &question("t3.test."),
        )
        .await
        .unwrap_err();
    assert!(
        crate::error_chain(&err).contains("TLS"),
        "{}",
        crate::error_chain(&err)
    );
}
