//! The defences against forged answers of RFC 5452, in one place: every query sent upstream
//! carries a random ID (§9.1), and a UDP query leaves from a socket picked at random from a pool
//! of [`UDP_POOL_SIZE`] per server, each on its own kernel-chosen (random) ephemeral port and
//! *connected* to the server, so the kernel discards datagrams from any other source; a socket
//! is replaced by a fresh one (new random port) after [`UDP_SOCKET_USES`] queries or
//! [`UDP_SOCKET_AGE`], so ports keep changing (§9.2) without paying socket setup on every query.
//! A guesser faces a 16-bit ID times the pool's ports, renewed continuously.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

/// UDP sockets per upstream server.
pub const UDP_POOL_SIZE: usize = 64;
/// Queries sent from one UDP socket before it is replaced by one on a new random port.
pub const UDP_SOCKET_USES: u32 = 256;
/// Age after which a UDP socket is replaced even when little used.
pub const UDP_SOCKET_AGE: Duration = Duration::from_secs(10);

/// A random query ID for which `taken` is false (IDs of the queries in flight on the same
/// socket or connection, so an answer is matched to one query only).
pub(crate) fn query_id(taken: impl Fn(u16) -> bool) -> u16 {
    loop {
        let id: u16 = rand::random();
        if !taken(id) {
            return id;
        }
    }
}

/// The pool slot a query's socket is taken from, picked at random.
pub(crate) fn pool_slot() -> usize {
    rand::random_range(0..UDP_POOL_SIZE)
}

/// A non-blocking UDP socket on a kernel-chosen (random) port, connected to `addr`, marked as
/// the daemon's upstream socket.
pub(crate) fn connected_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    crate::sys::mark_upstream(&socket);
    socket.connect(addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Whether a pooled socket used `uses` times since `born` is due for a new random port.
pub(crate) fn worn_out(uses: u32, born: Instant) -> bool {
    uses >= UDP_SOCKET_USES || born.elapsed() >= UDP_SOCKET_AGE
}
