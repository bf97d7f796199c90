use std::time::Duration;

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::RecordType,
};
use tokio::net::{TcpSocket, TcpStream};

use super::*;
use crate::{
    authorizer::Authorizer,
    dns::{
        testutil::*,
        upstream::{Transport, Upstreams},
    },
};

/// A TCP connection to `server` from `source` (any address of 127.0.0.0/8 is local).
async fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    socket.connect(server).await.unwrap()
}

async fn ask(stream: &mut TcpStream, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let len = u16::try_from(query.len()).unwrap();
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(query).await?;
    let len = stream.read_u16().await?;
    let mut reply = vec![0; usize::from(len)];
    stream.read_exact(&mut reply).await?;
    Ok(reply)
}

/// A TCP listener with room for 4 connections, serving `allow` through a silent upstream: each
/// query is answered SERVFAIL after the 400 ms timeout.
async fn listener_with_cap_4(allow: &str) -> (SocketAddr, TaskTracker, CancellationToken) {
    let upstream = tcp_server(0, Arc::new(|_: &Message| Vec::new()), None).await;
    let proxy = Arc::new(
        Proxy::new(
            Upstreams::new(&[upstream.addr], Transport::Tcp, Duration::from_millis(400)),
            Authorizer::new(Arc::new(Recording::default()), None),
        )
        .with_allow_clients(vec![allow.parse().unwrap()]),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    tokio::spawn(serve_tcp(
        listener,
        None,
        4,
        proxy,
        tracker.clone(),
        cancel.clone(),
    ));
    (addr, tracker, cancel)
}

/// At the connection cap, a client opening connection after connection closes its own oldest,
/// not another client's: one client cannot cut every other client's queries short.
#[tokio::test]
async fn a_connection_flood_from_one_client_closes_its_own_connections() {
    let (addr, tracker, cancel) = listener_with_cap_4("127.0.0.0/8").await;
    // The victim's query waits for the upstream.
    let mut victim = connect_from("127.0.0.2", addr).await;
    let query = query_bytes("v.test.", RecordType::A, 7);
    let victim_reply = tokio::spawn(async move { ask(&mut victim, &query).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Meanwhile another client opens 20 connections, each with a query of its own.
    let mut flood = Vec::new();
    for i in 0..20u16 {
        let mut stream = connect_from("127.0.0.3", addr).await;
        let query = query_bytes(&format!("f{i}.test."), RecordType::A, i);
        let len = u16::try_from(query.len()).unwrap();
        stream.write_all(&len.to_be_bytes()).await.unwrap();
        stream.write_all(&query).await.unwrap();
        flood.push(stream);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reply = victim_reply
        .await
        .unwrap()
        .expect("the victim's connection was closed before its answer");
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(
        (reply.metadata.id, reply.metadata.response_code),
        (7, ResponseCode::ServFail)
    );
    drop(flood);
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}

/// Clients outside `allow_clients` (here 20 of them, one connection each, so none is busier than
/// the served client) never close a served client's connection; at the cap their own go first.
#[tokio::test]
async fn clients_outside_allow_clients_do_not_close_served_connections() {
    let (addr, tracker, cancel) = listener_with_cap_4("127.0.0.2/32").await;
    let mut victim = connect_from("127.0.0.2", addr).await;
    let query = query_bytes("v.test.", RecordType::A, 7);
    let victim_reply = tokio::spawn(async move { ask(&mut victim, &query).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut outside = Vec::new();
    for i in 0..20u8 {
        // Connected, silent (they would be answered REFUSED).
        outside.push(connect_from(&format!("127.0.1.{}", i + 1), addr).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reply = victim_reply
        .await
        .unwrap()
        .expect("the served client's connection was closed before its answer");
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(
        (reply.metadata.id, reply.metadata.response_code),
        (7, ResponseCode::ServFail)
    );
    // An outside client with room in the table is still told REFUSED.
    drop(outside);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut stream = connect_from("127.0.1.100", addr).await;
    let reply = ask(&mut stream, &query_bytes("o.test.", RecordType::A, 8))
        .await
        .unwrap();
    assert_eq!(
        Message::from_vec(&reply).unwrap().metadata.response_code,
        ResponseCode::Refused
    );
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}
