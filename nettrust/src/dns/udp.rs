//! The UDP engine: the UDP listener and the upstream UDP exchanges, served by `worker_threads`
//! threads, each a plain level-triggered `epoll` loop over the listener and its own pool of
//! upstream sockets, outside the async runtime, with a table of pending queries and a deadline
//! queue instead of tasks, channels and timers. Each round reads the client queries waiting
//! (`recvmmsg`), sends those to forward from one socket of the pool (`sendmmsg`), reads the
//! answers waiting on each ready upstream socket (`recvmmsg`) and sends this round's replies
//! (`sendmmsg`): at a low rate a query costs one wake-up and three system calls per hop, as a
//! minimal forwarder, with no task, channel, timer or allocation beyond the messages themselves
//! (at a low query rate, where every query meets cold caches, the runtime's machinery was most
//! of the daemon's own time on a query's path); under load the batches amortize the calls.
//!
//! The DNS work is the [`super::handler`]'s (parsing, refusals, the cache, answer checks,
//! authorization before the reply); the upstream sockets follow [`super::random`] (a random
//! ID per query, a pool of connected sockets per server on random, rotating ports); replies
//! that do not answer the query (ID, question) are counted and ignored until the timeout. A
//! timeout, a refusal (ICMP port unreachable) or a send error counts against the server's health
//! ([`super::servers`]) and the query is sent again, here, to the next server
//! not tried (healthy ones first); with none left the client gets SERVFAIL. Only two things
//! leave the thread for the runtime's pipelined connections: a truncated answer (asked again
//! over TCP) and, with TCP or DoT upstreams, every forwarded query. Several threads share the
//! listener with `EPOLLEXCLUSIVE` and one in-flight cap ([`MAX_UDP_IN_FLIGHT`]); shutdown stops
//! reading the listener and lets pending queries finish.

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::runtime::Handle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use self::batch::{Batch, Replies, cvt, epoll_add, send_all};
use super::{
    answer::Rejection,
    handler::{Answered, ClientTransport, Forward, Outcome, Reply, Step},
    proxy::{Proxy, Retry},
    random::{self, UDP_POOL_SIZE, connected_udp, worn_out},
    servers::{Servers, UpstreamError},
    upstream::MAX_MESSAGE,
};

/// Queries forwarded and not answered yet, over every thread serving the listener; more are
/// dropped (clients retry).
pub const MAX_UDP_IN_FLIGHT: usize = 1024;

/// The listener's `epoll` token; upstream sockets get 1, 2, …
const LISTENER: u64 = 0;
/// Events taken per `epoll_wait`.
const MAX_EVENTS: usize = 64;
/// Client queries read per system call (`recvmmsg`).
const QUERY_BATCH: usize = 32;
/// Room for one client query; a longer datagram is dropped (no DNS client sends one).
const QUERY_ROOM: usize = 4096;
/// Upstream answers read per system call, each with room for the largest datagram.
const ANSWER_BATCH: usize = 16;
/// Longest sleep, so a shutdown is noticed.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// An upstream socket of the pool.
struct Outbound {
    socket: UdpSocket,
    server: usize,
    uses: u32,
    born: Instant,
    in_flight: usize,
    /// Replaced in the pool; closed when its last query ends.
    retired: bool,
}

/// A forwarded client query.
struct Query {
    forward: Forward,
    client: SocketAddr,
    /// The servers that failed it, in order (each is tried at most once).
    tried: Vec<usize>,
}

/// A query waiting for its upstream answer.
struct Pending {
    query: Query,
    server: usize,
    sent: Instant,
    deadline: Instant,
}

/// The UDP engine's state; [`UdpEngine::run`] is its thread.
pub struct UdpEngine {
    epoll: OwnedFd,
    listener: Arc<UdpSocket>,
    listening: bool,
    proxy: Arc<Proxy>,
    runtime: Handle,
    tracker: TaskTracker,
    /// The upstream servers: addresses, health, failover order.
    servers: Arc<Servers>,
    /// Whether the upstreams are asked over UDP (else every query goes to the runtime).
    over_udp: bool,
    outbound: HashMap<u64, Outbound>,
    /// Per server, the pool's slots (tokens into `outbound`).
    pools: Vec<Vec<Option<u64>>>,
    pending: HashMap<(u64, u16), Pending>,
    /// Deadlines in sending order (one timeout for all, so also in deadline order).
    deadlines: VecDeque<(Instant, u64, u16)>,
    next_token: u64,
    /// Forwarded queries not finished yet, here, in the runtime or in the other UDP engine
    /// threads ([`MAX_UDP_IN_FLIGHT`] in all).
    in_flight: Arc<AtomicUsize>,
    queries: Batch,
    answers: Batch,
    /// Queries of this round, sent upstream together (`sendmmsg`) before the next wait.
    outgoing: Vec<Query>,
    /// Answers of this round, sent together (`sendmmsg`) before the next wait.
    replies: Replies,
}

impl UdpEngine {
    /// A UDP engine serving `listener` (made non-blocking) through `proxy`; hand-offs run on
    /// `runtime`, tracked by `tracker`. Several threads may serve one listener (each with its
    /// own [`UdpEngine`] on a clone of it, sharing `in_flight`): the kernel then wakes one of them
    /// per readiness (`EPOLLEXCLUSIVE`).
    pub fn new(
        listener: UdpSocket,
        proxy: Arc<Proxy>,
        runtime: Handle,
        tracker: TaskTracker,
        in_flight: Arc<AtomicUsize>,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        // SAFETY: epoll_create1 has no memory-safety preconditions; the result is checked.
        let epoll = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: a fresh descriptor owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        epoll_add(
            &epoll,
            listener.as_raw_fd(),
            LISTENER,
            libc::EPOLLIN | libc::EPOLLEXCLUSIVE,
        )?;
        let servers = proxy.upstreams().servers().clone();
        let over_udp = proxy.upstreams().uses_udp();
        Ok(Self {
            epoll,
            listener: Arc::new(listener),
            listening: true,
            proxy,
            runtime,
            tracker,
            outbound: HashMap::new(),
            pools: vec![vec![None; UDP_POOL_SIZE]; servers.len()],
            servers,
            over_udp,
            pending: HashMap::new(),
            deadlines: VecDeque::new(),
            next_token: LISTENER + 1,
            in_flight,
            queries: Batch::new(QUERY_BATCH, QUERY_ROOM),
            answers: Batch::new(ANSWER_BATCH, MAX_MESSAGE),
            outgoing: Vec::new(),
            replies: Replies::default(),
        })
    }

    /// Serves until `cancel` fires, then finishes the queries in flight (answer or timeout).
    pub fn run(mut self, cancel: &CancellationToken) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        loop {
            if self.listening && cancel.is_cancelled() {
                self.stop_listening();
            }
            if !self.listening && self.pending.is_empty() {
                return;
            }
            let wait = self.next_deadline().map_or(IDLE_WAIT, |deadline| {
                deadline
                    .saturating_duration_since(Instant::now())
                    .min(IDLE_WAIT)
            });
            // Rounded up: waking before the deadline would only mean another wait.
            let millis = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
            let max_events = i32::try_from(events.len()).unwrap_or(i32::MAX);
            // SAFETY: `events` has room for `max_events` entries.
            let ready = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    max_events,
                    millis,
                )
            };
            let ready = match cvt(ready) {
                Ok(ready) => usize::try_from(ready).unwrap_or(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    tracing::error!("UDP listener: epoll_wait failed: {e}");
                    std::thread::sleep(IDLE_WAIT);
                    0
                }
            };
            for event in &events[..ready] {
                let token = event.u64;
                if token == LISTENER {
                    self.on_query();
                } else {
                    self.on_reply(token);
                }
            }
            // Expired queries fail over or get SERVFAIL, sent with this round's replies.
            self.expire(Instant::now());
            self.send_outgoing();
            self.replies.flush(&self.listener);
        }
    }

    /// The deadline of the oldest query still waiting; entries of queries answered meanwhile
    /// are dropped from the front first, so the thread never wakes for them.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&(deadline, token, id)) = self.deadlines.front() {
            if self
                .pending
                .get(&(token, id))
                .is_some_and(|pending| pending.deadline == deadline)
            {
                return Some(deadline);
            }
            self.deadlines.pop_front();
        }
        None
    }

    fn stop_listening(&mut self) {
        self.listening = false;
        // SAFETY: removing a registered descriptor; a null event is allowed for DEL.
        let _ = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                self.listener.as_raw_fd(),
                std::ptr::null_mut(),
            )
        };
    }

    /// Reads and handles the client queries waiting, up to [`QUERY_BATCH`].
    fn on_query(&mut self) {
        let received = match self.queries.receive(&self.listener) {
            Ok(received) => received,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::debug!("UDP listener: receive error: {e}");
                return;
            }
        };
        for index in 0..received {
            let Some(query) = self.queries.datagram(index) else {
                tracing::debug!("UDP listener: dropping a query longer than {QUERY_ROOM} bytes");
                continue;
            };
            let Some(client) = self.queries.sender(index) else {
                continue;
            };
            if self.in_flight.load(Ordering::Relaxed) >= MAX_UDP_IN_FLIGHT {
                tracing::debug!(
                    "UDP listener: {MAX_UDP_IN_FLIGHT} queries in flight, dropping one from {client}"
                );
                continue;
            }
            match self
                .proxy
                .handler()
                .step(query, ClientTransport::Udp, client)
            {
                Step::Reply(reply) => {
                    count_query(reply.outcome);
                    if let Some(response) = reply.bytes {
                        self.replies.push(response, client);
                    }
                }
                Step::Forward(forward) => {
                    // Until answered here or at the end of its hand-off.
                    self.in_flight.fetch_add(1, Ordering::Relaxed);
                    self.outgoing.push(Query {
                        forward,
                        client,
                        tried: Vec::new(),
                    });
                }
            }
        }
    }

    /// Sends this round's queries to the first server not in back-off (or, with every server in
    /// back-off, the first one).
    fn send_outgoing(&mut self) {
        if self.outgoing.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.outgoing);
        if !self.over_udp {
            // TCP or DoT upstreams: the runtime's pipelined connections carry every query.
            for query in batch {
                self.hand_off(query.forward, query.client, Retry::Stream);
            }
            return;
        }
        let server = self
            .servers
            .next_server(&[])
            .expect("at least one upstream");
        self.send(server, batch);
    }

    /// Sends `batch` to `server` from one socket of its pool picked at random (each query's port
    /// is as random as with a socket per query: the batch shares it, a guesser still faces the
    /// pool and a random ID per query).
    fn send(&mut self, server: usize, mut batch: Vec<Query>) {
        let addr = self.servers.addr(server);
        let token = match self.socket_for(server, addr) {
            Ok(token) => token,
            Err(source) => {
                for query in batch {
                    let error = UpstreamError::Io {
                        addr,
                        what: "open a UDP socket",
                        source: io::Error::new(source.kind(), source.to_string()),
                    };
                    self.failed(server, &error, Instant::now(), query);
                }
                return;
            }
        };
        let mut ids: Vec<u16> = Vec::with_capacity(batch.len());
        for query in &mut batch {
            let id =
                random::query_id(|id| self.pending.contains_key(&(token, id)) || ids.contains(&id));
            query.forward.query_with_id(id);
            ids.push(id);
        }
        let messages: Vec<(&[u8], Option<SocketAddr>)> = batch
            .iter()
            .map(|query| (query.forward.query(), None))
            .collect();
        let outbound = self.outbound.get_mut(&token).expect("pooled socket");
        let errors = send_all(&outbound.socket, &messages);
        let sent = Instant::now();
        let deadline = sent + self.servers.timeout();
        for ((query, id), error) in batch.into_iter().zip(ids).zip(errors) {
            if let Some(source) = error {
                let error = UpstreamError::Io {
                    addr,
                    what: "send",
                    source,
                };
                self.failed(server, &error, sent, query);
                continue;
            }
            let outbound = self.outbound.get_mut(&token).expect("pooled socket");
            outbound.uses += 1;
            outbound.in_flight += 1;
            let pending = Pending {
                query,
                server,
                sent,
                deadline,
            };
            self.pending.insert((token, id), pending);
            self.deadlines.push_back((deadline, token, id));
        }
    }

    /// A socket of `server`'s pool, picked at random; a worn-out or missing one is replaced.
    fn socket_for(&mut self, server: usize, addr: SocketAddr) -> io::Result<u64> {
        let slot = random::pool_slot();
        if let Some(token) = self.pools[server][slot] {
            let outbound = &self.outbound[&token];
            if !worn_out(outbound.uses, outbound.born) {
                return Ok(token);
            }
            self.retire(token);
        }
        let socket = connected_udp(addr)?;
        let token = self.next_token;
        self.next_token += 1;
        epoll_add(&self.epoll, socket.as_raw_fd(), token, libc::EPOLLIN)?;
        self.outbound.insert(
            token,
            Outbound {
                socket,
                server,
                uses: 0,
                born: Instant::now(),
                in_flight: 0,
                retired: false,
            },
        );
        self.pools[server][slot] = Some(token);
        Ok(token)
    }

    /// Takes `token` out of its pool; it is closed (and leaves the `epoll` set) once idle.
    fn retire(&mut self, token: u64) {
        if let Some(outbound) = self.outbound.get_mut(&token) {
            outbound.retired = true;
            if outbound.in_flight == 0 {
                self.outbound.remove(&token);
            }
        }
    }

    /// Query `(token, id)` is over: its socket has one query less in flight.
    fn take(&mut self, token: u64, id: u16) -> Option<Pending> {
        let pending = self.pending.remove(&(token, id))?;
        if let Some(outbound) = self.outbound.get_mut(&token) {
            outbound.in_flight -= 1;
            if outbound.retired && outbound.in_flight == 0 {
                self.outbound.remove(&token);
            }
        }
        Some(pending)
    }

    /// Reads and handles the answers waiting on upstream socket `token`, up to
    /// [`ANSWER_BATCH`].
    fn on_reply(&mut self, token: u64) {
        let Some(outbound) = self.outbound.get(&token) else {
            return;
        };
        let server = outbound.server;
        // Out of `self` while its datagrams are handled.
        let mut answers = std::mem::replace(&mut self.answers, Batch::new(0, 0));
        match answers.receive(&outbound.socket) {
            Ok(received) => {
                for index in 0..received {
                    match answers.datagram(index) {
                        Some(datagram) => self.on_answer(token, server, datagram),
                        None => {
                            // Cannot happen with room for 65,535 bytes; never used if it does.
                            let rejection = Rejection::Malformed;
                            self.servers.rejected(self.servers.addr(server), &rejection);
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                self.refused(token, server);
            }
            Err(e) => {
                tracing::debug!(upstream = %self.servers.addr(server), "receive error: {e}");
            }
        }
        self.answers = answers;
    }

    /// One datagram from upstream socket `token` of `server`.
    fn on_answer(&mut self, token: u64, server: usize, datagram: &[u8]) {
        if datagram.len() < 2 {
            return;
        }
        let (proxy, servers) = (self.proxy.clone(), self.servers.clone());
        let addr = servers.addr(server);
        let id = u16::from_be_bytes([datagram[0], datagram[1]]);
        let Some(pending) = self.pending.get(&(token, id)) else {
            // No query in flight with that ID: late or forged.
            servers.unknown_id(addr, id);
            return;
        };
        let forward = &pending.query.forward;
        let reply = match proxy.handler().answer(forward, id, datagram, true) {
            Answered::Rejected(rejection) => return servers.rejected(addr, &rejection),
            Answered::RetryOverTcp => {
                let Query {
                    forward, client, ..
                } = self.take(token, id).expect("pending query").query;
                return self.hand_off(forward, client, Retry::Truncated(server));
            }
            Answered::Reply(reply) => reply,
        };
        let pending = self.take(token, id).expect("pending query");
        servers.succeeded(server, pending.sent);
        self.settle(reply, pending.query.client);
    }

    /// `query` is over with `reply`.
    fn settle(&mut self, reply: Reply, client: SocketAddr) {
        count_query(reply.outcome);
        if let Some(response) = reply.bytes {
            self.replies.push(response, client);
        }
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The server refused (ICMP port unreachable): every query on `token` fails over.
    fn refused(&mut self, token: u64, server: usize) {
        let ids: Vec<u16> = self
            .pending
            .keys()
            .filter(|(t, _)| *t == token)
            .map(|(_, id)| *id)
            .collect();
        let addr = self.servers.addr(server);
        for id in ids {
            let pending = self.take(token, id).expect("pending query");
            let error = UpstreamError::Io {
                addr,
                what: "receive",
                source: io::ErrorKind::ConnectionRefused.into(),
            };
            self.failed(server, &error, pending.sent, pending.query);
        }
    }

    /// Fails over the queries whose deadline passed.
    fn expire(&mut self, now: Instant) {
        while self.next_deadline().is_some_and(|deadline| deadline <= now) {
            let (_, token, id) = self.deadlines.pop_front().expect("a deadline");
            let pending = self.take(token, id).expect("pending query");
            let error = UpstreamError::Timeout {
                addr: self.servers.addr(pending.server),
                timeout: self.servers.timeout(),
            };
            self.failed(pending.server, &error, pending.sent, pending.query);
        }
    }

    /// Server `server` failed `query`, sent at `sent`: it counts towards the server's back-off
    /// and the next server not tried yet is asked (healthy ones first); with none left the
    /// client gets SERVFAIL.
    fn failed(&mut self, server: usize, error: &UpstreamError, sent: Instant, mut query: Query) {
        let servers = self.servers.clone();
        servers.failed(server, query.forward.question(), sent, error);
        query.tried.push(server);
        match servers.next_server(&query.tried) {
            Some(next) => self.send(next, vec![query]),
            None => {
                let reply = self.proxy.handler().failed(&query.forward, error);
                self.settle(reply, query.client);
            }
        }
    }

    fn hand_off(&mut self, forward: Forward, client: SocketAddr, retry: Retry) {
        let (proxy, listener, in_flight) = (
            self.proxy.clone(),
            self.listener.clone(),
            self.in_flight.clone(),
        );
        self.tracker.spawn_on(
            async move {
                let settled = proxy.retry(&forward, retry).await;
                count_query(settled.outcome);
                if let Some(response) = settled.bytes {
                    reply(&listener, &response, client);
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
            },
            &self.runtime,
        );
    }
}

fn count_query(outcome: Outcome) {
    outcome.count(ClientTransport::Udp);
}

fn reply(listener: &UdpSocket, response: &[u8], client: SocketAddr) {
    if let Err(e) = listener.send_to(response, client) {
        tracing::debug!("UDP listener: cannot answer {client}: {e}");
    }
}

mod batch;
mod threads;

pub use threads::start;
#[cfg(test)]
mod tests;
