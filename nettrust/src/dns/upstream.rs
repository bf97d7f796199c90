//! Forwarding queries to the upstream resolvers: UDP, TCP or DNS over TLS, several servers with
//! failover.
//!
//! - UDP: each query gets a random ID and leaves from a random socket of a pool of connected
//!   sockets on random, rotating ports ([`super::random`]). Replies that do not answer our query
//!   (ID, question) are ignored until the timeout (RFC 5452 §9.1). A truncated answer is asked
//!   again over TCP, from the same server.
//! - TCP and DoT: one connection per server, reused and pipelined (RFC 7766 §6.2.1.1): queries
//!   carry IDs unique among those in flight on it and answers are matched by ID, in any order.
//! - Servers are tried in the configured order, healthy ones first ([`super::servers`]).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use hickory_proto::op::{Message, Query};
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, WriteHalf},
    net::{TcpStream, UdpSocket},
    sync::oneshot,
    task::AbortHandle,
    time::{Instant, timeout, timeout_at},
};

pub use super::servers::{FAILURE_WINDOW, FAILURES_TO_BACK_OFF, HEALTH_BACKOFF, UpstreamError};
use super::{
    answer::accept,
    framing::{frame, read_message},
    random::{self, UDP_POOL_SIZE, connected_udp, worn_out},
    servers::Servers,
};

/// Largest DNS message (TCP length prefix is 16 bits, RFC 1035 §4.2.2; UDP payload likewise).
pub const MAX_MESSAGE: usize = 65_535;
/// How queries travel to the upstreams.
#[derive(Clone)]
pub enum Transport {
    /// UDP for UDP clients (TCP after a truncated answer), TCP for TCP clients.
    Udp,
    /// Always TCP.
    Tcp,
    /// Always DNS over TLS, verifying the server's certificate against `name`.
    Tls {
        /// Trust anchors and protocol settings.
        config: Arc<rustls::ClientConfig>,
        /// Name the certificate must carry; `None` = each server's IP address.
        name: Option<ServerName<'static>>,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls { .. } => "tls",
        })
    }
}

/// An accepted answer: the raw bytes (ID = the one we sent) and the parsed message.
pub type Answer = (Vec<u8>, Message);

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// State shared between a pipelined connection and its reader task.
struct Shared {
    /// Queries in flight, by the ID they were sent with.
    pending: Mutex<HashMap<u16, oneshot::Sender<Bytes>>>,
    closed: AtomicBool,
}

impl Shared {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Dropping the senders wakes every waiting query with an error.
        self.pending.lock().expect("pending lock").clear();
    }
}

/// A reused TCP or TLS connection with any number of queries in flight.
struct Conn {
    writer: tokio::sync::Mutex<WriteHalf<Box<dyn Stream>>>,
    shared: Arc<Shared>,
    reader: AbortHandle,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Removes a query's pending entry when its exchange ends, answered or not.
struct PendingGuard<'a>(&'a Shared, u16);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.lock().expect("pending lock").remove(&self.1);
    }
}

impl Conn {
    fn new(stream: Box<dyn Stream>) -> Self {
        let (mut read, write) = tokio::io::split(stream);
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        });
        let reader_shared = shared.clone();
        let reader = tokio::spawn(async move {
            let mut read_one = async || -> std::io::Result<()> {
                let len = read.read_u16().await?;
                let buf = read_message(&mut read, len).await?;
                if buf.len() >= 2 {
                    let id = u16::from_be_bytes([buf[0], buf[1]]);
                    let waiter = reader_shared
                        .pending
                        .lock()
                        .expect("pending lock")
                        .remove(&id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(buf);
                    }
                }
                Ok(())
            };
            while read_one().await.is_ok() {}
            reader_shared.close();
        })
        .abort_handle();
        Self {
            writer: tokio::sync::Mutex::new(write),
            shared,
            reader,
        }
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Sends `query` under an ID unique on this connection and waits for its answer; returns the
    /// answer and the ID used.
    async fn exchange(
        &self,
        addr: SocketAddr,
        query: &[u8],
    ) -> Result<(Vec<u8>, u16), UpstreamError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut pending = self.shared.pending.lock().expect("pending lock");
            if self.is_closed() {
                return Err(UpstreamError::Closed { addr });
            }
            let id = random::query_id(|id| pending.contains_key(&id));
            pending.insert(id, tx);
            id
        };
        let _guard = PendingGuard(&self.shared, id);
        let mut framed = frame(query).ok_or_else(|| UpstreamError::BadAnswer {
            addr,
            reason: "query longer than 65535 bytes".into(),
        })?;
        framed[2..4].copy_from_slice(&id.to_be_bytes());
        {
            let mut writer = self.writer.lock().await;
            let written = async {
                writer.write_all(&framed).await?;
                writer.flush().await
            };
            if let Err(source) = written.await {
                self.shared.close();
                return Err(UpstreamError::Io {
                    addr,
                    what: "send",
                    source,
                });
            }
        }
        let answer = rx.await.map_err(|_| UpstreamError::Closed { addr })?;
        Ok((Vec::from(answer), id))
    }
}

/// A pooled UDP socket connected to one server, with any number of queries in flight; a reader
/// task hands each datagram to the query with its ID.
struct PooledUdp {
    socket: Arc<UdpSocket>,
    /// Queries in flight by ID; every datagram carrying that ID is handed over (an empty one
    /// means the server refused: ICMP port unreachable).
    pending: Arc<Mutex<HashMap<u16, tokio::sync::mpsc::Sender<Vec<u8>>>>>,
    uses: std::sync::atomic::AtomicU32,
    born: std::time::Instant,
    reader: AbortHandle,
}

impl Drop for PooledUdp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl PooledUdp {
    async fn open(addr: SocketAddr, servers: Arc<Servers>) -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::from_std(connected_udp(addr)?)?);
        let pending: Arc<Mutex<HashMap<u16, tokio::sync::mpsc::Sender<Vec<u8>>>>> = Arc::default();
        let (reader_socket, reader_pending) = (socket.clone(), pending.clone());
        let reader = tokio::spawn(async move {
            // Room for the largest datagram, so nothing is silently cut.
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                match reader_socket.recv(&mut buf).await {
                    Ok(len) if len >= 2 => {
                        let id = u16::from_be_bytes([buf[0], buf[1]]);
                        let pending = reader_pending.lock().expect("pending lock");
                        match pending.get(&id) {
                            Some(waiter) => {
                                let _ = waiter.try_send(buf[..len].to_vec());
                            }
                            None => servers.unknown_id(addr, id),
                        }
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        for waiter in reader_pending.lock().expect("pending lock").values() {
                            let _ = waiter.try_send(Vec::new());
                        }
                    }
                    Err(e) => {
                        tracing::debug!(upstream = %addr, "receive error: {e}");
                    }
                }
            }
        })
        .abort_handle();
        Ok(Self {
            socket,
            pending,
            uses: std::sync::atomic::AtomicU32::new(0),
            born: std::time::Instant::now(),
            reader,
        })
    }

    fn worn_out(&self) -> bool {
        worn_out(self.uses.load(Ordering::Relaxed), self.born)
    }
}

/// Removes a UDP query's pending entry when its exchange ends.
struct UdpPendingGuard<'a>(&'a PooledUdp, u16);

impl Drop for UdpPendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.lock().expect("pending lock").remove(&self.1);
    }
}

/// One upstream server's sockets.
struct Server {
    addr: SocketAddr,
    /// The UDP socket pool (slots filled on first use).
    udp: Vec<Mutex<Option<Arc<PooledUdp>>>>,
    /// The reused TCP/TLS connection, if open.
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

/// The upstream resolvers.
pub struct Upstreams {
    servers: Vec<Server>,
    /// Addresses, health and failover order, shared with the UDP engine.
    shared: Arc<Servers>,
    transport: Transport,
    timeout: Duration,
}

impl Upstreams {
    /// Upstreams at `addrs` (tried in order), reached over `transport`; each attempt gives up
    /// after `timeout`.
    pub fn new(addrs: &[SocketAddr], transport: Transport, timeout: Duration) -> Self {
        Self {
            servers: addrs
                .iter()
                .map(|&addr| Server {
                    addr,
                    udp: (0..UDP_POOL_SIZE).map(|_| Mutex::new(None)).collect(),
                    conn: tokio::sync::Mutex::new(None),
                })
                .collect(),
            shared: Arc::new(Servers::new(addrs, timeout)),
            transport,
            timeout,
        }
    }

    /// The servers' addresses, health and failover order.
    pub(crate) fn servers(&self) -> &Arc<Servers> {
        &self.shared
    }

    /// How many upstream replies were dropped as not answering the query they claimed to.
    pub fn dropped_replies(&self) -> u64 {
        self.shared.dropped_replies()
    }

    /// The servers' addresses, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.shared.addrs().to_vec()
    }

    /// Whether queries from a UDP client go upstream over UDP.
    pub fn uses_udp(&self) -> bool {
        matches!(self.transport, Transport::Udp)
    }

    /// Forwards `query` (its ID is replaced) for `question` and returns the first acceptable
    /// answer, trying the servers in order (healthy ones first). `udp_client` selects UDP when the
    /// transport is [`Transport::Udp`].
    pub async fn exchange(
        &self,
        query: &[u8],
        question: &Query,
        udp_client: bool,
    ) -> Result<Answer, UpstreamError> {
        self.exchange_skipping(query, question, udp_client, None)
            .await
    }

    async fn exchange_skipping(
        &self,
        query: &[u8],
        question: &Query,
        udp_client: bool,
        skip: Option<(usize, UpstreamError)>,
    ) -> Result<Answer, UpstreamError> {
        let mut tried: Vec<usize> = skip.iter().map(|(index, _)| *index).collect();
        let mut last_error = skip.map(|(_, error)| error);
        while let Some(index) = self.shared.next_server(&tried) {
            tried.push(index);
            let started = std::time::Instant::now();
            match self
                .exchange_with(&self.servers[index], query, question, udp_client)
                .await
            {
                Ok(answer) => {
                    self.shared.succeeded(index, started);
                    return Ok(answer);
                }
                Err(e) => {
                    self.shared.failed(index, question, started, &e);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("at least one upstream is configured"))
    }

    /// `datagram` from `addr` parsed, if it answers the query with `id` for `question`; anything
    /// else is counted in the dropped replies and logged.
    fn accepted(
        &self,
        addr: SocketAddr,
        datagram: &[u8],
        id: u16,
        question: &Query,
    ) -> Option<Message> {
        accept(datagram, id, question)
            .map_err(|rejection| self.shared.rejected(addr, &rejection))
            .ok()
    }

    /// Asks server `index` over TCP (or TLS) after it gave a truncated UDP answer; if that
    /// fails, the other servers over TCP.
    pub(crate) async fn exchange_truncated(
        &self,
        index: usize,
        query: &[u8],
        question: &Query,
    ) -> Result<Answer, UpstreamError> {
        let server = &self.servers[index];
        tracing::debug!(upstream = %server.addr, question = %question.name, "truncated answer, retrying over TCP");
        let started = std::time::Instant::now();
        match self.exchange_stream(server, query, question).await {
            Ok(answer) => {
                self.shared.succeeded(index, started);
                Ok(answer)
            }
            Err(e) => {
                self.shared.failed(index, question, started, &e);
                // The others, over TCP too: their UDP answer would be truncated as well.
                self.exchange_skipping(query, question, false, Some((index, e)))
                    .await
            }
        }
    }

    async fn exchange_with(
        &self,
        server: &Server,
        query: &[u8],
        question: &Query,
        udp_client: bool,
    ) -> Result<Answer, UpstreamError> {
        if udp_client && self.uses_udp() {
            let answer = self.exchange_udp(server, query, question).await?;
            if !answer.1.metadata.truncation {
                return Ok(answer);
            }
            // Nothing is ever taken from a truncated answer: ask again over TCP.
            tracing::debug!(upstream = %server.addr, question = %question.name, "truncated answer, retrying over TCP");
        }
        self.exchange_stream(server, query, question).await
    }

    /// A socket of `server`'s pool, picked at random; a worn-out or missing one is replaced.
    async fn udp_socket(&self, server: &Server) -> Result<Arc<PooledUdp>, UpstreamError> {
        let slot = &server.udp[random::pool_slot()];
        if let Some(socket) = slot.lock().expect("pool lock").as_ref()
            && !socket.worn_out()
        {
            return Ok(socket.clone());
        }
        let addr = server.addr;
        let fresh = Arc::new(PooledUdp::open(addr, self.shared.clone()).await.map_err(
            |source| UpstreamError::Io {
                addr,
                what: "open a UDP socket",
                source,
            },
        )?);
        // In-flight queries keep the old socket (and its reader) alive until they finish.
        *slot.lock().expect("pool lock") = Some(fresh.clone());
        Ok(fresh)
    }

    /// Sends `query` over UDP and returns the first datagram that answers it.
    async fn exchange_udp(
        &self,
        server: &Server,
        query: &[u8],
        question: &Query,
    ) -> Result<Answer, UpstreamError> {
        let addr = server.addr;
        let socket = self.udp_socket(server).await?;
        socket.uses.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let id = {
            let mut pending = socket.pending.lock().expect("pending lock");
            let id = random::query_id(|id| pending.contains_key(&id));
            pending.insert(id, tx);
            id
        };
        let _guard = UdpPendingGuard(&socket, id);
        let mut forwarded = query.to_vec();
        forwarded[..2].copy_from_slice(&id.to_be_bytes());
        socket
            .socket
            .send(&forwarded)
            .await
            .map_err(|source| UpstreamError::Io {
                addr,
                what: "send",
                source,
            })?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let datagram = match timeout_at(deadline, rx.recv()).await {
                Ok(Some(datagram)) => datagram,
                Ok(None) | Err(_) => {
                    return Err(UpstreamError::Timeout {
                        addr,
                        timeout: self.timeout,
                    });
                }
            };
            if datagram.is_empty() {
                return Err(UpstreamError::Io {
                    addr,
                    what: "receive",
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                });
            }
            if let Some(message) = self.accepted(addr, &datagram, id, question) {
                return Ok((datagram, message));
            }
        }
    }

    /// Sends `query` over the server's reused TCP/TLS connection (opening it if needed); a reused
    /// connection that turns out closed is replaced once.
    async fn exchange_stream(
        &self,
        server: &Server,
        query: &[u8],
        question: &Query,
    ) -> Result<Answer, UpstreamError> {
        let addr = server.addr;
        let attempt = async {
            let (conn, fresh) = self.connection(server).await?;
            let result = conn.exchange(addr, query).await;
            match result {
                Err(UpstreamError::Closed { .. } | UpstreamError::Io { .. }) if !fresh => {
                    let (conn, _) = self.connection(server).await?;
                    conn.exchange(addr, query).await
                }
                other => other,
            }
        };
        let (buf, id) =
            timeout(self.timeout, attempt)
                .await
                .map_err(|_| UpstreamError::Timeout {
                    addr,
                    timeout: self.timeout,
                })??;
        match accept(&buf, id, question) {
            Ok(message) => Ok((buf, message)),
            Err(rejection) => {
                self.shared.rejected(addr, &rejection);
                Err(UpstreamError::BadAnswer {
                    addr,
                    reason: rejection.to_string(),
                })
            }
        }
    }

    /// The server's open connection, or a new one (`true` when new).
    async fn connection(&self, server: &Server) -> Result<(Arc<Conn>, bool), UpstreamError> {
        let mut slot = server.conn.lock().await;
        if let Some(conn) = slot.as_ref()
            && !conn.is_closed()
        {
            return Ok((conn.clone(), false));
        }
        *slot = None;
        let addr = server.addr;
        let io = |what| move |source| UpstreamError::Io { addr, what, source };
        let tcp = TcpStream::connect(addr).await.map_err(io("connect"))?;
        tcp.set_nodelay(true).map_err(io("set TCP_NODELAY"))?;
        let stream: Box<dyn Stream> = match &self.transport {
            Transport::Udp | Transport::Tcp => Box::new(tcp),
            Transport::Tls { config, name } => {
                let name = name
                    .clone()
                    .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(io("TLS handshake"))?,
                )
            }
        };
        let conn = Arc::new(Conn::new(stream));
        *slot = Some(conn.clone());
        Ok((conn, true))
    }
}

#[cfg(test)]
mod tests;
