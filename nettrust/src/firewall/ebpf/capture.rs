//! Transparent DNS capture from userspace (nettrust-ebpf's `capture` module): which listener
//! each network namespace's queries go to ([`CaptureTargets`], written into `CAPTURE_TARGETS`
//! before the programs load). The programs themselves are loaded, pinned and attached with the
//! other socket-address programs (`super::sock_addr`).
//!
//! Why socket-address hooks rather than rewriting packets (tc or nftables NAT): they run once per
//! `connect`/`sendmsg`/`recvmsg`/`getpeername` call, in the process that makes it, in whatever
//! network namespace its socket lives, with the socket at hand; nothing runs per packet, no
//! conntrack state is needed, and `egress` judges the rewritten destination (a listener) and
//! records the client for its policy exactly as for a direct query.
//!
//! Which listener: the calling socket's network namespace cookie (`bpf_get_netns_cookie`) keys
//! `CAPTURE_TARGETS`. The daemon's own namespace gets a loopback listener (an unspecified
//! listen address answers on loopback too); every other namespace (a container behind a veth or
//! a bridge) gets the first listen address that is neither loopback nor unspecified: inside a
//! container 127.0.0.1 is the container's own loopback, the host end of its link is reachable.
//! A family without such a listener is not captured in those namespaces (its queries stay
//! subject to `egress`, which drops them unless whitelisted). Without targets (capture off) the
//! map stays empty and the `connect` programs capture nothing.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd as _,
};

use aya::{
    Ebpf,
    maps::{HashMap as AyaHashMap, MapData},
};
use nettrust_common::{
    CAPTURE_OTHER_NETNS, CAPTURE_V4, CAPTURE_V6, CaptureTarget, MAP_CAPTURE_TARGETS,
};

use super::types::{EbpfError, map_error, take_map};

/// One network namespace's listeners for captured queries, per family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetnsTarget {
    /// Where IPv4 queries (also IPv4-mapped ones from IPv6 sockets) go.
    pub v4: Option<SocketAddrV4>,
    /// Where IPv6 queries go.
    pub v6: Option<SocketAddrV6>,
}

/// Where captured queries go: the daemon's own network namespace and every other one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureTargets {
    /// The daemon's own network namespace: a loopback listener.
    pub own: NetnsTarget,
    /// Every other network namespace: a listener on a specific non-loopback address.
    pub others: NetnsTarget,
}

impl CaptureTargets {
    /// The targets for the proxy's DNS listen addresses `listeners` (UDP and TCP each), in
    /// order of preference. Own namespace: the first loopback address of the family, else an
    /// unspecified one as loopback (`[::]` also serves IPv4), else the first of the family.
    /// Other namespaces: the first address of the family that is neither loopback nor
    /// unspecified.
    pub fn from_listeners(listeners: &[SocketAddr]) -> Self {
        let own_v4 = listeners
            .iter()
            .find_map(|a| match a {
                SocketAddr::V4(v4) if v4.ip().is_loopback() => Some(*v4),
                _ => None,
            })
            .or_else(|| {
                listeners.iter().find_map(|a| {
                    a.ip()
                        .is_unspecified()
                        .then(|| SocketAddrV4::new(Ipv4Addr::LOCALHOST, a.port()))
                })
            });
        let own_v6 = listeners.iter().find_map(|a| match a {
            SocketAddr::V6(v6) if v6.ip().is_loopback() || v6.ip().is_unspecified() => {
                Some(SocketAddrV6::new(Ipv6Addr::LOCALHOST, v6.port(), 0, 0))
            }
            _ => None,
        });
        let specific = |a: &&SocketAddr| !a.ip().is_loopback() && !a.ip().is_unspecified();
        let (others_v4, others_v6) = (
            listeners.iter().filter(specific).find_map(|a| match a {
                SocketAddr::V4(v4) => Some(*v4),
                SocketAddr::V6(_) => None,
            }),
            listeners.iter().filter(specific).find_map(|a| match a {
                SocketAddr::V6(v6) => Some(*v6),
                SocketAddr::V4(_) => None,
            }),
        );
        let first_v4 = listeners.iter().find_map(|a| match a {
            SocketAddr::V4(v4) => Some(*v4),
            SocketAddr::V6(_) => None,
        });
        Self {
            own: NetnsTarget {
                v4: own_v4.or(first_v4),
                v6: own_v6.or(others_v6),
            },
            others: NetnsTarget {
                v4: others_v4,
                v6: others_v6,
            },
        }
    }
}

/// The map value of `target`.
fn map_value(target: NetnsTarget) -> CaptureTarget {
    let mut value = CaptureTarget::default();
    if let Some(v4) = target.v4 {
        value.v4 = v4.ip().octets();
        value.port_v4 = v4.port();
        value.flags |= CAPTURE_V4;
    }
    if let Some(v6) = target.v6 {
        value.v6 = v6.ip().octets();
        value.port_v6 = v6.port();
        value.flags |= CAPTURE_V6;
    }
    value
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux 5.14+): what
/// `bpf_get_netns_cookie` returns for the sockets created in it.
fn own_netns_cookie() -> io::Result<u64> {
    let socket = std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))?;
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes `targets` into `CAPTURE_TARGETS` (this namespace's cookie and every other namespace's
/// key), before the programs that read it are loaded. Returns the map's handle, which must stay
/// open until they are: their instructions refer to its descriptor.
pub(super) fn write_targets(
    ebpf: &mut Ebpf,
    targets: &CaptureTargets,
) -> Result<AyaHashMap<MapData, u64, CaptureTarget>, EbpfError> {
    let mut map: AyaHashMap<MapData, u64, CaptureTarget> = take_map(ebpf, MAP_CAPTURE_TARGETS)?;
    let cookie = own_netns_cookie().map_err(|e| {
        map_error(
            MAP_CAPTURE_TARGETS,
            "cannot read this network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+)",
            e,
        )
    })?;
    for (key, target) in [(cookie, targets.own), (CAPTURE_OTHER_NETNS, targets.others)] {
        if target != NetnsTarget::default() {
            map.insert(key, map_value(target), 0)
                .map_err(|e| map_error(MAP_CAPTURE_TARGETS, "cannot write a target", e))?;
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn loopback_for_own_namespace_bridge_for_others() {
        let t = CaptureTargets::from_listeners(&addrs(&["127.0.0.1:53", "172.17.0.1:53"]));
        assert_eq!(t.own.v4, Some("127.0.0.1:53".parse().unwrap()));
        assert_eq!(t.others.v4, Some("172.17.0.1:53".parse().unwrap()));
        assert_eq!((t.own.v6, t.others.v6), (None, None));
    }

    #[test]
    fn unspecified_listener_serves_own_namespace_on_loopback_only() {
        let t = CaptureTargets::from_listeners(&addrs(&["[::]:5353"]));
        assert_eq!(t.own.v4, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(t.own.v6, Some("[::1]:5353".parse().unwrap()));
        assert_eq!(t.others, NetnsTarget::default());
    }

    #[test]
    fn specific_addresses_only_serve_both() {
        let t = CaptureTargets::from_listeners(&addrs(&["10.0.0.1:53", "[fd00::1]:53"]));
        assert_eq!(t.own.v4, Some("10.0.0.1:53".parse().unwrap()));
        assert_eq!(t.others.v4, t.own.v4);
        assert_eq!(t.own.v6, Some("[fd00::1]:53".parse().unwrap()));
        assert_eq!(t.others.v6, t.own.v6);
    }

    #[test]
    fn map_value_sets_the_family_bits() {
        let t = NetnsTarget {
            v4: Some("127.0.0.1:5300".parse().unwrap()),
            v6: None,
        };
        let v = map_value(t);
        assert_eq!(v.flags, CAPTURE_V4);
        assert_eq!((v.v4, v.port_v4), ([127, 0, 0, 1], 5300));
    }
}
