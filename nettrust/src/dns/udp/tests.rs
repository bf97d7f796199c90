//! The UDP engine on loopback: real sockets, scripted upstreams, a recording firewall.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, RecordType},
};
use tokio::net::UdpSocket;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::UdpEngine;
use crate::{
    authorizer::Authorizer,
    dns::{
        proxy::Proxy,
        testutil::*,
        upstream::{Transport, Upstreams},
    },
};

/// A running UDP engine.
struct Running {
    addr: SocketAddr,
    firewall: Arc<Recording>,
    proxy: Arc<Proxy>,
    cancel: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Serves on `listen` (port 0), forwarding to `upstreams` with `timeout` per attempt.
    fn start(listen: &str, upstreams: &[SocketAddr], timeout: Duration) -> Self {
        Self::start_with(listen, upstreams, timeout, |proxy| proxy)
    }

    /// [`Self::start`] with the proxy adjusted by `configure`.
    fn start_with(
        listen: &str,
        upstreams: &[SocketAddr],
        timeout: Duration,
        configure: impl FnOnce(Proxy) -> Proxy,
    ) -> Self {
        let firewall = Arc::new(Recording::default());
        let proxy = Arc::new(configure(Proxy::new(
            Upstreams::new(upstreams, Transport::Udp, timeout),
            Authorizer::new(firewall.clone(), None),
        )));
        let listener = std::net::UdpSocket::bind(listen).unwrap();
        let addr = listener.local_addr().unwrap();
        let fast = UdpEngine::new(
            listener,
            proxy.clone(),
            tokio::runtime::Handle::current(),
            TaskTracker::new(),
            Arc::default(),
        )
        .unwrap();
        let cancel = CancellationToken::new();
        let thread_cancel = cancel.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fp-{}", addr.port()))
            .spawn(move || fast.run(&thread_cancel))
            .unwrap();
        Self {
            addr,
            firewall,
            proxy,
            cancel,
            thread: Some(thread),
        }
    }

    /// Stops serving and waits for the thread (it finishes the queries in flight first).
    async fn stop(mut self) {
        self.cancel.cancel();
        let thread = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A client socket near `server`'s family.
async fn client(server: SocketAddr) -> UdpSocket {
    let local = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let socket = UdpSocket::bind(local).await.unwrap();
    socket.connect(server).await.unwrap();
    socket
}

async fn receive(socket: &UdpSocket) -> Message {
    let mut buf = vec![0u8; 65_535];
    let len = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    Message::from_vec(&buf[..len]).unwrap()
}

async fn ask(server: SocketAddr, qname: &str, id: u16) -> Message {
    let socket = client(server).await;
    socket
        .send(&query_bytes(qname, RecordType::A, id))
        .await
        .unwrap();
    let answer = receive(&socket).await;
    assert_eq!(answer.metadata.id, id, "the client's ID comes back");
    answer
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_authorized_before_they_are_relayed() {
    let upstream = udp_server(0, answer_with("192.0.2.10")).await;
    let fast = Running::start("127.0.0.1:0", &[upstream.addr], SHORT);
    let answer = ask(fast.addr, "a.test.", 0x1234).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&answer), [ip("192.0.2.10")]);
    assert_eq!(fast.firewall.calls(), [ip("192.0.2.10")]);
    fast.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_answered() {
    let upstream = udp_server(0, answer_with("192.0.2.11")).await;
    let fast = Running::start("[::1]:0", &[upstream.addr], SHORT);
    let answer = ask(fast.addr, "six.test.", 7).await;
    assert_eq!(addresses(&answer), [ip("192.0.2.11")]);
    fast.stop().await;
}

/// The same forged replies the runtime path refuses (see the proxy's tests), each as the only
/// reply: nothing is authorized and no address reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_matrix_authorizes_nothing() {
    for (case, forge) in forged_replies() {
        let upstream = udp_server(0, Arc::new(move |q: &Message| vec![forge(q)])).await;
        let fast = Running::start("127.0.0.1:0", &[upstream.addr], SHORT);
        let answer = ask(fast.addr, "v.test.", 0x4242).await;
        assert!(
            fast.firewall.calls().is_empty(),
            "{case}: authorized {:?}",
            fast.firewall.calls()
        );
        assert!(
            addresses(&answer).is_empty()
                || case == "unrelated records only"
                || case == "CNAME chain rooted elsewhere",
            "{case}: an address reached the client: {answer:?}"
        );
        fast.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgeries_before_the_answer_are_counted_and_skipped() {
    let script: Script = Arc::new(|q: &Message| {
        let mut wrong_question = reply(q, &[a("evil.test.", "192.0.2.66")]);
        wrong_question.queries[0].name = name("evil.test.");
        let mut wrong_id = reply(q, &[a("f.test.", "192.0.2.67")]);
        wrong_id.metadata.id ^= 1;
        vec![
            wrong_question,
            wrong_id,
            reply(q, &[a("f.test.", "192.0.2.12")]),
        ]
    });
    let upstream = udp_server(0, script).await;
    let fast = Running::start("127.0.0.1:0", &[upstream.addr], SHORT);
    let answer = ask(fast.addr, "f.test.", 9).await;
    assert_eq!(addresses(&answer), [ip("192.0.2.12")]);
    assert_eq!(fast.firewall.calls(), [ip("192.0.2.12")]);
    assert_eq!(fast.proxy.upstreams().dropped_replies(), 2);
    fast.stop().await;
}

/// A silent first server: each query fails over to the second after the timeout; after three
/// distinct questions failed, the next query skips the first (back-off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_fails_over_and_backs_off() {
    let silent = udp_server(0, Arc::new(|_: &Message| Vec::new())).await;
    let good = udp_server(0, answer_with("192.0.2.13")).await;
    let fast = Running::start("127.0.0.1:0", &[silent.addr, good.addr], SHORT);
    for (id, name) in [(1, "t1.test."), (2, "t2.test."), (3, "t3.test.")] {
        assert_eq!(
            addresses(&ask(fast.addr, name, id).await),
            [ip("192.0.2.13")]
        );
    }
    assert_eq!(silent.queries(), 3);
    assert_eq!(
        addresses(&ask(fast.addr, "t4.test.", 4).await),
        [ip("192.0.2.13")]
    );
    assert_eq!(silent.queries(), 3, "the silent server is in back-off");
    assert_eq!(good.queries(), 4);
    fast.stop().await;
}

/// A slow zone asked again and again (one question) fails only its own queries: other questions
/// still go to the first server, not to the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_question_does_not_move_other_queries_to_the_next_server() {
    let primary = udp_server(
        0,
        Arc::new(|q: &Message| {
            if q.queries[0].name.to_string().ends_with("slow.test.") {
                Vec::new()
            } else {
                vec![reply(q, &[a(&q.queries[0].name.to_string(), "192.0.2.21")])]
            }
        }),
    )
    .await;
    let secondary = udp_server(0, answer_with("192.0.2.22")).await;
    let fast = Running::start("127.0.0.1:0", &[primary.addr, secondary.addr], SHORT);
    for id in 0..4 {
        ask(fast.addr, "q.slow.test.", id).await;
    }
    assert_eq!(
        addresses(&ask(fast.addr, "other.test.", 9).await),
        [ip("192.0.2.21")],
        "another client's question is still answered by the first server"
    );
    fast.stop().await;
}

/// A single silent server: SERVFAIL after one timeout, nothing authorized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_with_no_other_server_is_servfail() {
    let silent = udp_server(0, Arc::new(|_: &Message| Vec::new())).await;
    let fast = Running::start("127.0.0.1:0", &[silent.addr], SHORT);
    let answer = ask(fast.addr, "t.test.", 3).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(silent.queries(), 1, "one attempt, not one per path");
    assert!(fast.firewall.calls().is_empty());
    fast.stop().await;
}

/// A closed port (ICMP port unreachable) fails over without waiting for the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_server_fails_over_at_once() {
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let good = udp_server(0, answer_with("192.0.2.14")).await;
    let fast = Running::start("127.0.0.1:0", &[closed, good.addr], Duration::from_secs(30));
    // Within `receive`'s 5 s, far below the 30 s timeout.
    assert_eq!(
        addresses(&ask(fast.addr, "r.test.", 4).await),
        [ip("192.0.2.14")]
    );
    fast.stop().await;
}

/// A truncated UDP answer is asked again over TCP; only the TCP answer authorizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_answer_is_asked_again_over_tcp() {
    let udp = udp_server(
        0,
        Arc::new(|q: &Message| {
            let mut m = reply(q, &[a("tc.test.", "192.0.2.66")]);
            m.metadata.truncation = true;
            vec![m]
        }),
    )
    .await;
    let tcp = tcp_server(udp.addr.port(), answer_with("192.0.2.15"), None).await;
    let fast = Running::start("127.0.0.1:0", &[udp.addr], SHORT);
    let answer = ask(fast.addr, "tc.test.", 5).await;
    assert!(!answer.metadata.truncation);
    assert_eq!(addresses(&answer), [ip("192.0.2.15")]);
    assert_eq!(fast.firewall.calls(), [ip("192.0.2.15")]);
    assert_eq!((udp.queries(), tcp.queries()), (1, 1));
    fast.stop().await;
}

/// More queries at once than one `recvmmsg` reads: every one is answered, with its own ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_answered_in_full() {
    let upstream = udp_server(0, answer_with("192.0.2.16")).await;
    let fast = Running::start("127.0.0.1:0", &[upstream.addr], Duration::from_secs(2));
    let socket = client(fast.addr).await;
    let count = 200u16;
    for id in 0..count {
        let query = query_bytes(&format!("b{id}.test."), RecordType::A, id);
        socket.send(&query).await.unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..count {
        let answer = receive(&socket).await;
        assert_eq!(addresses(&answer), [ip("192.0.2.16")]);
        seen.insert(answer.metadata.id);
    }
    assert_eq!(seen.len(), usize::from(count), "every ID answered once");
    assert!(
        upstream.ports.lock().unwrap().len() > 1,
        "a burst of 200 is several rounds, each on a random socket of the pool"
    );
    fast.stop().await;
}

/// Queries one after the other leave from sockets picked at random from the pool: 40 draws from
/// 64 sockets give 30 distinct ports on average (15 or fewer: odds about 3 in 10^12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_leave_from_random_ports_of_the_pool() {
    let upstream = udp_server(0, answer_with("192.0.2.18")).await;
    let fast = Running::start("127.0.0.1:0", &[upstream.addr], SHORT);
    for id in 0..40u16 {
        ask(fast.addr, &format!("p{id}.test."), id).await;
    }
    let ports = upstream.ports.lock().unwrap().len();
    assert!(ports > 15, "only {ports} source ports for 40 queries");
    fast.stop().await;
}

/// Garbage, a response and a two-question query from clients: answered as the runtime path
/// answers them (FORMERR or nothing), and the listener keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries_leave_the_listener_serving() {
    let upstream = udp_server(0, answer_with("192.0.2.17")).await;
    let fast = Running::start("127.0.0.1:0", &[upstream.addr], SHORT);
    let socket = client(fast.addr).await;
    let mut garbage = vec![0xAB, 0xCD];
    garbage.extend_from_slice(&[0x01, 0x00, 0x00, 0x01]);
    garbage.extend_from_slice(&[0xFF; 20]);
    socket.send(&garbage).await.unwrap();
    let formerr = receive(&socket).await;
    assert_eq!(formerr.metadata.id, 0xABCD);
    assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);
    socket.send(&[1, 2, 3]).await.unwrap();
    assert_eq!(
        addresses(&ask(fast.addr, "m.test.", 6).await),
        [ip("192.0.2.17")]
    );
    assert_eq!(upstream.queries(), 1, "garbage never went upstream");
    fast.stop().await;
}

/// Shutdown lets a query in flight finish (here: its timeout, then SERVFAIL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_queries_in_flight() {
    let silent = udp_server(0, Arc::new(|_: &Message| Vec::new())).await;
    let fast = Running::start("127.0.0.1:0", &[silent.addr], SHORT);
    let socket = client(fast.addr).await;
    socket
        .send(&query_bytes("s.test.", RecordType::A, 8))
        .await
        .unwrap();
    while silent.queries() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let addr = fast.addr;
    fast.stop().await;
    let answer = receive(&socket).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    // The listener is closed with the thread: nothing answers any more.
    let late = client(addr).await;
    late.send(&query_bytes("late.test.", RecordType::A, 9))
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let got = tokio::time::timeout(Duration::from_millis(300), late.recv(&mut buf)).await;
    assert!(!matches!(got, Ok(Ok(_))), "answered after shutdown");
}

/// Context switches of this process's thread named `name` so far.
fn switches(name: &str) -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        if std::fs::read_to_string(path.join("comm")).unwrap().trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap();
        return status
            .lines()
            .filter(|line| line.contains("ctxt_switches"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
    }
    panic!("no thread named {name}");
}

/// Answered queries leave no wake-up behind: once idle the thread only wakes every 100 ms to
/// notice a shutdown, not at the deadline each answered query had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_queries_leave_no_wake_ups_behind() {
    let upstream = udp_server(0, answer_with("192.0.2.19")).await;
    let fast = Running::start("127.0.0.1:0", &[upstream.addr], Duration::from_millis(400));
    let name = format!("fp-{}", fast.addr.port());
    for id in 0..30u16 {
        ask(fast.addr, &format!("w{id}.test."), id).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The 30 deadlines, 5 ms or more apart, fall within the next 400 ms; watch 1 s from now.
    let before = switches(&name);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let woken = switches(&name) - before;
    assert!(woken <= 20, "{woken} wake-ups in 1 s of idleness");
    fast.stop().await;
}

/// A client outside allow_clients gets REFUSED from the UDP engine: nothing forwarded or
/// authorized; one inside is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_allow_clients_are_refused() {
    let upstream = udp_server(0, answer_with("192.0.2.41")).await;
    let fast = Running::start_with("127.0.0.1:0", &[upstream.addr], SHORT, |proxy| {
        proxy.with_allow_clients(vec!["127.0.0.1/32".parse().unwrap()])
    });
    let outside = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    outside.connect(fast.addr).await.unwrap();
    outside
        .send(&query_bytes("o.test.", RecordType::A, 21))
        .await
        .unwrap();
    let refused = receive(&outside).await;
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert_eq!(refused.metadata.id, 21);
    assert_eq!(upstream.queries(), 0, "nothing forwarded");
    assert!(fast.firewall.calls().is_empty(), "nothing authorized");
    assert_eq!(fast.proxy.refused_clients(), 1);
    assert_eq!(
        addresses(&ask(fast.addr, "i.test.", 22).await),
        [ip("192.0.2.41")]
    );
    fast.stop().await;
}

/// Over its in-flight bound a client is refused at once by the UDP engine, and another client's
/// query is still forwarded and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_refused_over_its_bound_and_others_are_answered() {
    let upstream = udp_server(
        0,
        Arc::new(|q: &Message| {
            if q.queries[0].name.to_string().ends_with("slow.test.") {
                Vec::new()
            } else {
                vec![reply(q, &[a(&q.queries[0].name.to_string(), "192.0.2.42")])]
            }
        }),
    )
    .await;
    let fast = Running::start_with(
        "127.0.0.1:0",
        &[upstream.addr],
        Duration::from_secs(2),
        |proxy| proxy.with_client_in_flight_limit(8),
    );
    let flooder = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    flooder.connect(fast.addr).await.unwrap();
    for id in 0..20u16 {
        flooder
            .send(&query_bytes(
                &format!("f{id}.slow.test."),
                RecordType::A,
                id,
            ))
            .await
            .unwrap();
    }
    // The 12 over the bound are refused at once, long before the 2 s timeout.
    for _ in 0..12 {
        let m = receive(&flooder).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }
    let started = std::time::Instant::now();
    assert_eq!(
        addresses(&ask(fast.addr, "other.test.", 99).await),
        [ip("192.0.2.42")]
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    fast.stop().await;
}

/// Before the real answer: a wrong ID, a wrong question, a query (QR=0), no question; each is
/// counted and skipped, and the real answer is the one relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_answer_is_matched_and_forgeries_are_skipped() {
    let script: Script = Arc::new(|q: &Message| {
        let mut wrong_id = reply(q, &[a("x.test.", "192.0.2.66")]);
        wrong_id.metadata.id = q.metadata.id.wrapping_add(1);
        let mut wrong_question = reply(q, &[a("evil.test.", "192.0.2.66")]);
        wrong_question.queries[0].name = name("evil.test.");
        let mut not_response = reply(q, &[a("x.test.", "192.0.2.66")]);
        not_response.metadata.message_type = hickory_proto::op::MessageType::Query;
        let mut no_question = reply(q, &[a("x.test.", "192.0.2.66")]);
        no_question.queries.clear();
        vec![
            wrong_id,
            wrong_question,
            not_response,
            no_question,
            reply(q, &[a("x.test.", "192.0.2.1")]),
        ]
    });
    let upstream = udp_server(0, script).await;
    let fast = Running::start("127.0.0.1:0", &[upstream.addr], SHORT);
    let answer = ask(fast.addr, "x.test.", 7).await;
    assert_eq!(addresses(&answer), [ip("192.0.2.1")]);
    assert_eq!(fast.firewall.calls(), [ip("192.0.2.1")]);
    assert_eq!(
        fast.proxy.upstreams().dropped_replies(),
        4,
        "each forgery is counted"
    );
    fast.stop().await;
}

/// Twice as many queries as one socket may send: the pool's sockets are picked at random and
/// renewed on new random ports, so the queries leave from far more than a handful of ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_queries_leave_from_many_random_ports() {
    let upstream = udp_server(0, answer_with("192.0.2.6")).await;
    let fast = Running::start("127.0.0.1:0", &[upstream.addr], Duration::from_secs(2));
    let rounds = crate::dns::random::UDP_SOCKET_USES * 2;
    for i in 0..rounds {
        let id = u16::try_from(i).unwrap();
        ask(fast.addr, &format!("r{i}.test."), id).await;
    }
    let ports = upstream.ports.lock().unwrap().len();
    // 512 queries over a pool of 64 random sockets: far more than a handful of ports.
    assert!(ports >= 32, "only {ports} source ports");
    fast.stop().await;
}
