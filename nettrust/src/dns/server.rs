//! TCP and DNS-over-TLS listeners (UDP is served by [`super::udp`]). One task per
//! connection, bounded by a semaphore, tracked so shutdown can wait for them. Socket errors are logged and
//! skipped; a client that stalls (TLS handshake, half a message, idleness) is disconnected after
//! [`TCP_IDLE_TIMEOUT`], and never holds up any other client. When `max_tcp_connections` are
//! open, a new connection closes the oldest one of the client holding the most (RFC 7766
//! §6.2.2: a server may close idle connections under pressure; a client is an IPv4 address or
//! an IPv6 /64, as for the in-flight bound), so slow clients filling the table (slowloris)
//! cannot lock legitimate TCP clients out, and one client opening connection after connection
//! closes its own, not the others' with their queries waiting. Connections of clients outside
//! `allow_clients` go first, and such a client never closes a served client's connection (it is
//! closed itself when nothing else can be); the number of open connections never exceeds the
//! cap.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::timeout,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    clients::client_key,
    framing::{frame, read_message},
    proxy::{ClientTransport, Proxy},
};

/// TCP connections open at the same time per listener unless `max_tcp_connections` says
/// otherwise; at the cap a new connection closes the oldest of the client holding the most.
pub const DEFAULT_MAX_TCP_CONNECTIONS: usize = 256;
/// A TCP client that sends nothing for this long is disconnected (RFC 7766 §6.2.3 suggests
/// seconds).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves DNS over TCP (RFC 7766, 2-byte length framing) on `listener` until `cancel` fires, with
/// at most `max_connections` open; with `tls`, DNS over TLS (RFC 7858) instead.
pub async fn serve_tcp(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
    proxy: Arc<Proxy>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
    // Open connections, oldest first.
    let open: Arc<Mutex<VecDeque<OpenConnection>>> = Arc::default();
    let mut serial = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!("TCP listener: accept error: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let allowed = proxy.allows(peer.ip());
        let Some(permit) = admit(&limit, &open, allowed, peer, max_connections).await else {
            continue;
        };
        serial += 1;
        let id = serial;
        let close = cancel.child_token();
        open.lock().expect("poisoned").push_back(OpenConnection {
            serial: id,
            client: client_key(peer.ip()),
            allowed,
            close: close.clone(),
        });
        let (proxy, tls, open) = (proxy.clone(), tls.clone(), open.clone());
        tracker.spawn(async move {
            tokio::select! {
                () = close.cancelled() => {}
                result = serve_client(stream, peer, tls, &proxy) => if let Err(e) = result {
                    tracing::debug!("TCP connection from {peer}: {e}");
                },
            }
            open.lock()
                .expect("poisoned")
                .retain(|conn| conn.serial != id);
            drop(permit);
        });
    }
}

/// A connection slot for a client (`allowed`: inside `allow_clients`) of a listener with
/// `max_connections` open at most: a free one, or the one of the connection [`make_room`]
/// closes; `None`: the new connection is dropped.
async fn admit(
    limit: &Arc<Semaphore>,
    open: &Mutex<VecDeque<OpenConnection>>,
    allowed: bool,
    peer: SocketAddr,
    max_connections: usize,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = limit.clone().try_acquire_owned() {
        return Some(permit);
    }
    let oldest = make_room(&mut open.lock().expect("poisoned"), allowed);
    match oldest {
        Some(oldest) => {
            tracing::debug!(
                "TCP listener: {max_connections} connections open, closing the oldest of {} for {peer}",
                oldest.client
            );
            oldest.close.cancel();
        }
        None if !allowed => {
            tracing::debug!(
                "TCP listener: {max_connections} connections open, closing {peer} (outside allow_clients)"
            );
            return None;
        }
        None => {}
    }
    // The closed connection's task gives its permit back at once.
    match timeout(Duration::from_secs(1), limit.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Some(permit),
        _ => None,
    }
}

/// Serves one accepted connection: plain TCP, or DoT after a TLS handshake that must finish
/// within [`TCP_IDLE_TIMEOUT`].
async fn serve_client(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    proxy: &Proxy,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    match tls {
        None => serve_connection(stream, peer, proxy, ClientTransport::Tcp).await,
        Some(acceptor) => {
            let stream = timeout(TCP_IDLE_TIMEOUT, acceptor.accept(stream))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            serve_connection(stream, peer, proxy, ClientTransport::Tls).await
        }
    }
}

/// An open client connection of a TCP listener.
struct OpenConnection {
    serial: u64,
    /// The client ([`client_key`]: an IPv4 address or an IPv6 /64).
    client: IpAddr,
    /// Whether the client is in `allow_clients` (others are only ever told REFUSED).
    allowed: bool,
    /// Closes the connection.
    close: CancellationToken,
}

/// The connection to close, taken out of `open` (oldest first), when a full listener accepts a
/// new one: a connection of a client outside `allow_clients` if there is one, else, for a new
/// client inside, any; among those, the oldest of the client with the most open (between
/// clients with as many, the one whose oldest is oldest). `None`: a client outside
/// `allow_clients` never closes a served client's connection.
fn make_room(open: &mut VecDeque<OpenConnection>, allowed: bool) -> Option<OpenConnection> {
    let outside = open.iter().any(|conn| !conn.allowed);
    if !outside && !allowed {
        return None;
    }
    let candidate = |conn: &OpenConnection| !outside || !conn.allowed;
    let mut counts: HashMap<IpAddr, usize> = HashMap::new();
    for conn in open.iter().filter(|conn| candidate(conn)) {
        *counts.entry(conn.client).or_default() += 1;
    }
    let most = counts.values().copied().max()?;
    let index = open
        .iter()
        .position(|conn| candidate(conn) && counts[&conn.client] == most)?;
    open.remove(index)
}

/// Serves the length-prefixed messages (RFC 7766 §8) of one TCP or TLS connection until the client
/// closes it, stalls or stops reading. Public for the `framing` fuzz target.
#[doc(hidden)]
pub async fn serve_connection(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    peer: SocketAddr,
    proxy: &Proxy,
    transport: ClientTransport,
) -> std::io::Result<()> {
    loop {
        let len = match timeout(TCP_IDLE_TIMEOUT, stream.read_u16()).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(result) => result?,
        };
        let query = timeout(TCP_IDLE_TIMEOUT, read_message(&mut stream, len))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{peer} stalled mid-message"),
                )
            })??;
        let Some(response) = proxy.handle_from(&query, transport, peer).await else {
            continue;
        };
        let Some(framed) = frame(&response) else {
            continue;
        };
        timeout(TCP_IDLE_TIMEOUT, async {
            stream.write_all(&framed).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client does not read"))??;
    }
}

#[cfg(test)]
mod tests;
