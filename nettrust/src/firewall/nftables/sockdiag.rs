//! The cgroup of one local socket, asked of the kernel over `NETLINK_SOCK_DIAG`: a
//! `SOCK_DIAG_BY_FAMILY` request for exactly one socket (`inet_diag_req_v2` with the full
//! tuple, no dump) answered by one `inet_diag_msg` whose `INET_DIAG_CGROUP_ID` attribute (Linux
//! 5.7+) is the cgroup v2 id of the socket's cgroup. One round trip; only sockets of the network
//! namespace the netlink socket was opened in are found.
//!
//! Layouts are those of `include/uapi/linux/inet_diag.h` and `sock_diag.h`.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use crate::netlink::{self, NLM_F_REQUEST, NetlinkError, attrs, messages};

/// `NETLINK_SOCK_DIAG`.
const NETLINK_SOCK_DIAG: libc::c_int = 4;
/// `SOCK_DIAG_BY_FAMILY`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `INET_DIAG_CGROUP_ID`: u64, the socket's cgroup id.
const INET_DIAG_CGROUP_ID: u16 = 21;
/// `sizeof(struct inet_diag_msg)`: the answer's attributes follow it.
const INET_DIAG_MSG_LEN: usize = 72;
/// `INET_DIAG_NOCOOKIE`: match the socket by its tuple only.
const NO_COOKIE: [u8; 8] = [0xff; 8];
/// A lookup never waits longer than this for the kernel's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(200);

/// A `NETLINK_SOCK_DIAG` socket.
#[derive(Debug)]
pub struct SockDiag {
    socket: netlink::Socket,
}

impl SockDiag {
    /// Opens the socket in the caller's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let socket = netlink::Socket::open_protocol(NETLINK_SOCK_DIAG)?;
        socket.set_recv_timeout(ANSWER_TIMEOUT);
        Ok(Self { socket })
    }

    /// The cgroup id of the socket of protocol `proto` (`IPPROTO_TCP`/`UDP`) bound to `local`
    /// and sending to `remote` (an unconnected UDP socket matches any `remote`); `None` when no
    /// such socket exists, or the kernel reports no cgroup (before 5.7).
    pub fn cgroup_id(
        &mut self,
        proto: u8,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Option<u64>, NetlinkError> {
        let seq = self.socket.next_seq();
        let mut buf = Vec::with_capacity(16 + 56);
        netlink::append_raw_message(
            &mut buf,
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST,
            seq,
            &[&request(proto, local, remote)],
        );
        self.socket.drain()?;
        self.socket.send(&buf)?;
        loop {
            let datagram = self.socket.receive()?;
            if datagram.is_empty() {
                return Err(NetlinkError::Malformed("sock_diag: empty answer"));
            }
            for message in messages(datagram)? {
                if message.seq != seq {
                    continue;
                }
                if let Some(errno) = message.error() {
                    return match -errno? {
                        0 | libc::ENOENT => Ok(None),
                        errno => Err(NetlinkError::Refused {
                            index: 0,
                            what: "sock_diag lookup".to_owned(),
                            source: std::io::Error::from_raw_os_error(errno),
                        }),
                    };
                }
                return Ok(cgroup_of(message.payload));
            }
        }
    }
}

/// `struct inet_diag_req_v2` for one socket. TCP looks the socket up with `idiag_src` as its
/// local end; UDP (`udp_dump_one`) passes `idiag_src` to the receive-path lookup as the packet's
/// source, i.e. the socket's remote end, so the two ends are swapped for it.
fn request(proto: u8, local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let (src, dst) = if i32::from(proto) == libc::IPPROTO_UDP {
        (remote, local)
    } else {
        (local, remote)
    };
    let family = if local.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    let mut req = Vec::with_capacity(56);
    // sdiag_family, sdiag_protocol, idiag_ext, pad
    req.extend_from_slice(&[u8::try_from(family).unwrap_or(0), proto, 0, 0]);
    // idiag_states: every state.
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    // struct inet_diag_sockid: ports, addresses (network order), interface, cookie.
    req.extend_from_slice(&src.port().to_be_bytes());
    req.extend_from_slice(&dst.port().to_be_bytes());
    req.extend_from_slice(&address(src.ip()));
    req.extend_from_slice(&address(dst.ip()));
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&NO_COOKIE);
    req
}

/// An address as `idiag_src`/`idiag_dst` hold it: 16 bytes, IPv4 in the first four.
fn address(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// The `INET_DIAG_CGROUP_ID` of an `inet_diag_msg` answer.
fn cgroup_of(payload: &[u8]) -> Option<u64> {
    attrs(payload.get(INET_DIAG_MSG_LEN..)?)
        .find(|(ty, value)| *ty == INET_DIAG_CGROUP_ID && value.len() == 8)
        .map(|(_, value)| u64::from_ne_bytes(value.try_into().expect("8 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_tuple_in_the_order_each_protocol_looks_it_up() {
        let client: SocketAddr = "127.0.0.2:40000".parse().unwrap();
        let listen: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let tcp = request(6, client, listen);
        assert_eq!(tcp.len(), 56);
        assert_eq!(tcp[..2], [libc::AF_INET as u8, 6]);
        assert_eq!(tcp[8..12], [0x9c, 0x40, 0, 53]);
        assert_eq!(tcp[12..16], [127, 0, 0, 2]);
        assert_eq!(tcp[28..32], [127, 0, 0, 1]);
        assert_eq!(tcp[48..], NO_COOKIE);
        let udp = request(17, client, listen);
        assert_eq!(udp[8..12], [0, 53, 0x9c, 0x40]);
        assert_eq!(udp[12..16], [127, 0, 0, 1]);
        let v6 = request(
            17,
            "[::1]:5000".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
        );
        assert_eq!(v6[0], libc::AF_INET6 as u8);
        assert_eq!(v6[27], 1);
    }

    #[test]
    fn the_cgroup_id_is_read_from_the_attributes_after_the_message() {
        // sizeof(struct inet_diag_msg) on every architecture: 4 bytes, the 48-byte sockid, 5 u32.
        let mut payload = vec![0u8; 72];
        let mut attr = |ty: u16, value: &[u8]| {
            payload.extend_from_slice(&u16::try_from(4 + value.len()).unwrap().to_ne_bytes());
            payload.extend_from_slice(&ty.to_ne_bytes());
            payload.extend_from_slice(value);
        };
        attr(5, &[0, 0, 0, 0]);
        attr(INET_DIAG_CGROUP_ID, &4242u64.to_ne_bytes());
        assert_eq!(cgroup_of(&payload), Some(4242));
        assert_eq!(cgroup_of(&payload[..72 + 8]), None);
        assert_eq!(cgroup_of(&[0; 10]), None);
    }
}
