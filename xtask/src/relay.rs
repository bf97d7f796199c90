//! `xtask relay LISTEN UPSTREAM` (hidden): the floor of DNS forwarding, variant (f) of `bench
//! dns`. One thread, one `poll` over a listener and one connected upstream socket, one datagram
//! per readiness, and nothing else: no parsing, no ID rewriting, no checks, no firewall, no
//! cache. A reply goes to the last client seen with its ID. It is not a resolver anyone should
//! run; it measures what any forwarder on this machine pays for the extra hop (the wake-ups and
//! the two extra packets), so nettrust's own cost can be read off the difference.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
};

use anyhow::{Context as _, Result, bail};

/// Serves until killed.
pub fn run(listen: SocketAddr, upstream: SocketAddr) -> Result<()> {
    let clients_side = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let upstream_side = UdpSocket::bind(local)?;
    upstream_side
        .connect(upstream)
        .with_context(|| format!("connecting to {upstream}"))?;
    clients_side.set_nonblocking(true)?;
    upstream_side.set_nonblocking(true)?;
    // The client of each query ID.
    let mut clients: Vec<Option<SocketAddr>> = vec![None; 1 << 16];
    let mut buffer = vec![0u8; 65_535];
    let mut fds = [clients_side.as_raw_fd(), upstream_side.as_raw_fd()].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: `fds` is an array of two valid pollfd entries.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            bail!("poll: {error}");
        }
        if fds[0].revents != 0
            && let Ok((len, client)) = clients_side.recv_from(&mut buffer)
            && len >= 12
        {
            clients[usize::from(u16::from_be_bytes([buffer[0], buffer[1]]))] = Some(client);
            let _ = upstream_side.send(&buffer[..len]);
        }
        if fds[1].revents != 0
            && let Ok(len) = upstream_side.recv(&mut buffer)
            && len >= 12
            && let Some(client) = clients[usize::from(u16::from_be_bytes([buffer[0], buffer[1]]))]
        {
            let _ = clients_side.send_to(&buffer[..len], client);
        }
    }
}
