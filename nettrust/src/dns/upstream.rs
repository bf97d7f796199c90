//! The upstream side of the stream engine: queries over TCP or DNS over TLS, several servers
//! with failover. UDP queries to the upstreams are the UDP engine's ([`super::udp`]); a UDP
//! client's query comes here only when the upstreams are reached over TCP/DoT, or after a
//! truncated UDP answer.
//!
//! - One connection per server, reused and pipelined (RFC 7766 §6.2.1.1): queries carry random
//!   IDs unique among those in flight on it ([`super::random`]) and answers are matched by ID,
//!   in any order; an answer that does not match its query (question) is a failure of that
//!   server.
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
    net::TcpSocket,
    sync::oneshot,
    task::AbortHandle,
    time::timeout,
};

pub use super::servers::{FAILURE_WINDOW, FAILURES_TO_BACK_OFF, HEALTH_BACKOFF, UpstreamError};
use super::{
    answer::accept,
    framing::{frame, read_message},
    random,
    servers::Servers,
};

/// Largest DNS message (TCP length prefix is 16 bits, RFC 1035 §4.2.2; UDP payload likewise).
pub const MAX_MESSAGE: usize = 65_535;
/// How queries travel to the upstreams.
#[derive(Clone)]
pub enum Transport {
    /// UDP for UDP clients (the UDP engine; TCP after a truncated answer), TCP for TCP clients.
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

/// One upstream server's sockets.
struct Server {
    addr: SocketAddr,
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

    /// Forwards `query` (its ID is replaced) for `question` over TCP or DoT and returns the
    /// first acceptable answer, trying the servers in order (healthy ones first).
    pub async fn exchange(&self, query: &[u8], question: &Query) -> Result<Answer, UpstreamError> {
        self.exchange_skipping(query, question, None).await
    }

    async fn exchange_skipping(
        &self,
        query: &[u8],
        question: &Query,
        skip: Option<(usize, UpstreamError)>,
    ) -> Result<Answer, UpstreamError> {
        let mut tried: Vec<usize> = skip.iter().map(|(index, _)| *index).collect();
        let mut last_error = skip.map(|(_, error)| error);
        while let Some(index) = self.shared.next_server(&tried) {
            tried.push(index);
            let started = std::time::Instant::now();
            match self
                .exchange_stream(&self.servers[index], query, question)
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
                self.exchange_skipping(query, question, Some((index, e)))
                    .await
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
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(io("socket"))?;
        // Marked before the SYN leaves: the firewall opens the upstream to marked sockets only.
        crate::sys::mark_upstream(&socket);
        let tcp = socket.connect(addr).await.map_err(io("connect"))?;
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
