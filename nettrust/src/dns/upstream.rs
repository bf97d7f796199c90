//! Forwarding one query to the upstream resolver over UDP or TCP.
//!
//! UDP queries leave from a fresh socket on a kernel-chosen ephemeral port, *connected* to the
//! upstream, so the kernel discards datagrams from any other source; replies that do not answer our
//! query (ID, question) are ignored until the timeout (RFC 5452 §9.1).

use std::{net::SocketAddr, time::Duration};

use hickory_proto::op::{Message, Query};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    time::{Instant, timeout, timeout_at},
};

use super::answer::check_response;

/// Largest DNS message (TCP length prefix is 16 bits, RFC 1035 §4.2.2; UDP payload likewise).
pub const MAX_MESSAGE: usize = 65_535;

/// Errors of one upstream exchange.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A socket operation failed.
    #[error("upstream {addr}: {what}")]
    Io {
        /// The upstream.
        addr: SocketAddr,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No acceptable answer arrived in time.
    #[error("upstream {addr}: no answer within {timeout:?}")]
    Timeout {
        /// The upstream.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// The upstream sent something that is not the answer to our query.
    #[error("upstream {addr}: unusable answer: {reason}")]
    BadAnswer {
        /// The upstream.
        addr: SocketAddr,
        /// Why it was refused.
        reason: String,
    },
}

/// The upstream resolver.
#[derive(Debug, Clone)]
pub struct Upstream {
    addr: SocketAddr,
    timeout: Duration,
}

impl Upstream {
    /// Upstream at `addr`; each exchange gives up after `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self { addr, timeout }
    }

    /// The upstream's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> UpstreamError + '_ {
        move |source| UpstreamError::Io {
            addr: self.addr,
            what,
            source,
        }
    }

    /// Sends `query` (whose ID is `id` and question `question`) over UDP and returns the first
    /// datagram that answers it, raw and parsed.
    pub async fn exchange_udp(
        &self,
        query: &[u8],
        id: u16,
        question: &Query,
    ) -> Result<(Vec<u8>, Message), UpstreamError> {
        let local: SocketAddr = if self.addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .expect("literal");
        let socket = UdpSocket::bind(local).await.map_err(self.io("bind"))?;
        socket
            .connect(self.addr)
            .await
            .map_err(self.io("connect"))?;
        socket.send(query).await.map_err(self.io("send"))?;
        let deadline = Instant::now() + self.timeout;
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let len = match timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => {
                    return Err(UpstreamError::Timeout {
                        addr: self.addr,
                        timeout: self.timeout,
                    });
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(self.io("receive")(e));
                }
                Ok(Err(e)) => {
                    tracing::debug!("upstream {}: receive error: {e}", self.addr);
                    continue;
                }
                Ok(Ok(len)) => len,
            };
            let Ok(message) = Message::from_vec(&buf[..len]) else {
                tracing::debug!("upstream {}: dropped an unparsable datagram", self.addr);
                continue;
            };
            if let Err(mismatch) = check_response(&message, id, question) {
                tracing::warn!(
                    "upstream {}: dropped a reply that does not match the query: {mismatch}",
                    self.addr
                );
                continue;
            }
            buf.truncate(len);
            return Ok((buf, message));
        }
    }

    /// Sends `query` over a new TCP connection and returns the answer, raw and parsed.
    pub async fn exchange_tcp(
        &self,
        query: &[u8],
        id: u16,
        question: &Query,
    ) -> Result<(Vec<u8>, Message), UpstreamError> {
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr)
                .await
                .map_err(self.io("connect"))?;
            stream
                .set_nodelay(true)
                .map_err(self.io("set TCP_NODELAY"))?;
            let len = u16::try_from(query.len()).map_err(|_| UpstreamError::BadAnswer {
                addr: self.addr,
                reason: "query longer than 65535 bytes".into(),
            })?;
            let mut framed = Vec::with_capacity(query.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(query);
            stream.write_all(&framed).await.map_err(self.io("send"))?;
            let len = stream.read_u16().await.map_err(self.io("receive"))?;
            let mut buf = vec![0u8; usize::from(len)];
            stream
                .read_exact(&mut buf)
                .await
                .map_err(self.io("receive"))?;
            Ok::<_, UpstreamError>(buf)
        };
        let buf = timeout(self.timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout {
                addr: self.addr,
                timeout: self.timeout,
            })??;
        let message = Message::from_vec(&buf).map_err(|e| UpstreamError::BadAnswer {
            addr: self.addr,
            reason: e.to_string(),
        })?;
        check_response(&message, id, question).map_err(|e| UpstreamError::BadAnswer {
            addr: self.addr,
            reason: e.to_string(),
        })?;
        Ok((buf, message))
    }
}
