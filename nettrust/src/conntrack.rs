//! Conntrack liveness: one ctnetlink dump (`NETLINK_NETFILTER`, `IPCTNL_MSG_CT_GET` with
//! `NLM_F_DUMP`, both address families) per sweep, reduced to the destinations of the flows this
//! host opened and the peer answered. Over the netlink core ([`crate::netlink`]): the request is
//! 20 bytes and each flow of the answer is walked attribute by attribute as it arrives.
//!
//! What counts is narrower than in the original nettrust, which took every address of every flow:
//! - only flows the peer replied to (`IPS_SEEN_REPLY`): conntrack confirms a flow before the
//!   cgroup egress program runs, so a SYN the program dropped leaves an unreplied entry behind,
//!   and counting it would let a filtered process keep an expired host alive with one dropped
//!   packet per tick;
//! - only the destination of the original direction: the source of an inbound flow (a client of a
//!   local server) is not a host this host reached out to;
//! - not closed TCP connections lingering in TIME_WAIT/CLOSE.
//!
//! Each flow counts as a grant of one scope: the scope in the high 16 bits of its conntrack mark,
//! which the nftables backend's policy chains set on the flows their grants let out
//! (`ct mark set ct mark and 0xffff or SCOPE << 16`), else the default scope. Conntrack itself
//! cannot tell which cgroup a flow belongs to: a replied flow of an unfiltered process to an
//! authorized host counts for the default scope (it could reach the host anyway). The sweeper
//! never renews a host whose deadline has passed, whatever this set says.
//!
//! Conntrack registers its hooks on demand (only when a ct-using rule exists in the namespace), so
//! on a host without such rules this set is empty; the eBPF last-seen stamps are the liveness
//! signal there (see [`crate::sweeper`]). The dump runs on the blocking pool, off the DNS path,
//! and only when some host is due.

use std::{
    collections::HashSet,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use crate::{
    firewall::{Grant, Scope},
    netlink::{Attrs, NetlinkError, Socket, attrs, nfgen_attrs},
};

/// `(NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET` (linux/netfilter/nfnetlink_conntrack.h).
const CT_GET: u16 = (1 << 8) | 1;
/// How long the dump waits for the kernel's next datagram.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_STATUS: u16 = 3;
const CTA_MARK: u16 = 8;
const CTA_TUPLE_IP: u16 = 1;
#[cfg(test)]
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
#[cfg(test)]
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTOINFO: u16 = 4;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
/// `TCP_CONNTRACK_TIME_WAIT` and `TCP_CONNTRACK_CLOSE`: the connection is over, the entry only
/// lingers (for minutes), so it does not keep a host alive.
const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
const TCP_CONNTRACK_CLOSE: u8 = 8;
/// `IPS_SEEN_REPLY` (linux/netfilter/nf_conntrack_common.h): packets went both ways.
const IPS_SEEN_REPLY: u32 = 1 << 1;

/// Errors of the conntrack dump.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The netlink socket failed.
    #[error("conntrack netlink socket: {what}")]
    Socket {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel answered with an error.
    #[error("conntrack dump refused by the kernel")]
    Kernel(#[source] io::Error),
    /// A message could not be parsed.
    #[error("malformed conntrack message")]
    Malformed,
}

impl From<NetlinkError> for ConntrackError {
    fn from(e: NetlinkError) -> Self {
        match e {
            NetlinkError::Io { op, source } => Self::Socket { what: op, source },
            NetlinkError::Refused { source, .. } => Self::Kernel(source),
            NetlinkError::MissingAck { .. } | NetlinkError::Malformed(_) => Self::Malformed,
        }
    }
}

/// The destinations of the replied, locally originated flows conntrack tracks in this network
/// namespace (one dump of both families, `AF_UNSPEC`), each as a grant of the scope its mark
/// names (see the module's comment).
pub fn active_grants() -> Result<HashSet<Grant>, ConntrackError> {
    let mut socket = Socket::open()?;
    socket.set_recv_timeout(RECV_TIMEOUT);
    let mut out = HashSet::new();
    socket.dump(
        CT_GET,
        libc::AF_UNSPEC as u8,
        &Attrs::new(),
        "conntrack dump",
        |payload| add_destination(payload, &mut out),
    )?;
    Ok(out)
}

/// Adds the original-direction destination of one flow (the payload of a dump message) to `out`
/// when the peer replied and the flow is not a closed TCP connection, as a grant of the scope in
/// its mark.
fn add_destination(payload: &[u8], out: &mut HashSet<Grant>) -> Result<(), NetlinkError> {
    let attrs_of_flow = nfgen_attrs(payload)?;
    let closed = tcp_state(attrs_of_flow)
        .is_some_and(|s| s == TCP_CONNTRACK_TIME_WAIT || s == TCP_CONNTRACK_CLOSE);
    if !closed && status(attrs_of_flow).is_some_and(|s| s & IPS_SEEN_REPLY != 0) {
        let scope = Scope(mark(attrs_of_flow).unwrap_or(0) >> 16);
        for (kind, payload) in attrs(attrs_of_flow) {
            if kind == CTA_TUPLE_ORIG
                && let Some(addr) = tuple_destination(payload)
            {
                out.insert(Grant::new(scope, addr));
            }
        }
    }
    Ok(())
}

/// The flow's conntrack mark (`CTA_MARK`, big-endian).
fn mark(flow: &[u8]) -> Option<u32> {
    let (_, mark) = attrs(flow).find(|(kind, _)| *kind == CTA_MARK)?;
    Some(u32::from_be_bytes(mark.try_into().ok()?))
}

/// The TCP state of a flow (`CTA_PROTOINFO` / `CTA_PROTOINFO_TCP` / `CTA_PROTOINFO_TCP_STATE`).
fn tcp_state(flow: &[u8]) -> Option<u8> {
    let (_, info) = attrs(flow).find(|(kind, _)| *kind == CTA_PROTOINFO)?;
    let (_, tcp) = attrs(info).find(|(kind, _)| *kind == CTA_PROTOINFO_TCP)?;
    let (_, state) = attrs(tcp).find(|(kind, _)| *kind == CTA_PROTOINFO_TCP_STATE)?;
    state.first().copied()
}

/// The flow's status bits (`CTA_STATUS`, big-endian).
fn status(flow: &[u8]) -> Option<u32> {
    let (_, status) = attrs(flow).find(|(kind, _)| *kind == CTA_STATUS)?;
    Some(u32::from_be_bytes(status.try_into().ok()?))
}

/// The destination address of a tuple.
fn tuple_destination(tuple: &[u8]) -> Option<IpAddr> {
    for (kind, payload) in attrs(tuple) {
        if kind != CTA_TUPLE_IP {
            continue;
        }
        for (kind, addr) in attrs(payload) {
            match (kind, addr.len()) {
                (CTA_IP_V4_DST, 4) => {
                    return Some(IpAddr::V4(Ipv4Addr::new(
                        addr[0], addr[1], addr[2], addr[3],
                    )));
                }
                (CTA_IP_V6_DST, 16) => {
                    let octets: [u8; 16] = addr.try_into().ok()?;
                    return Some(IpAddr::V6(Ipv6Addr::from(octets)));
                }
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{self, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN};

    fn align4(len: usize) -> usize {
        (len + 3) & !3
    }

    /// One datagram of the dump (messages of sequence 0) into `out`: whether the dump is complete.
    fn parse_grants(buf: &[u8], out: &mut HashSet<Grant>) -> Result<bool, ConntrackError> {
        let mut each = |payload: &[u8]| add_destination(payload, out);
        Ok(netlink::dump_datagram(buf, 0, "conntrack dump", &mut each)?)
    }

    /// [`parse_grants`], the addresses only.
    fn parse_messages(buf: &[u8], out: &mut HashSet<IpAddr>) -> Result<bool, ConntrackError> {
        let mut grants = HashSet::new();
        let done = parse_grants(buf, &mut grants)?;
        out.extend(grants.into_iter().map(|g| g.addr));
        Ok(done)
    }

    fn dump_request(seq: u32) -> Vec<u8> {
        netlink::dump_request(CT_GET, libc::AF_UNSPEC as u8, seq, &Attrs::new())
    }

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(align4(out.len()), 0);
        out
    }

    fn nested(kind: u16, children: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | 0x8000, &children.concat())
    }

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let len = NLMSG_HDRLEN + body.len();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(body);
        out
    }

    /// `IPS_CONFIRMED`, and with `IPS_SEEN_REPLY | IPS_ASSURED` a flow the peer answered.
    const UNREPLIED: u32 = 1 << 3;
    const REPLIED: u32 = UNREPLIED | IPS_SEEN_REPLY | 1 << 2;
    /// `CTA_TUPLE_REPLY`.
    const REPLY: u16 = 2;

    fn flow(orig: &[Vec<u8>], reply: &[Vec<u8>], status: u32) -> Vec<u8> {
        let mut body = vec![2, 0, 0, 0];
        body.extend(nested(
            CTA_TUPLE_ORIG,
            &[nested(CTA_TUPLE_IP, orig), nested(2, &[attr(1, &[6])])],
        ));
        body.extend(nested(REPLY, &[nested(CTA_TUPLE_IP, reply)]));
        body.extend(attr(CTA_STATUS, &status.to_be_bytes()));
        message(CT_GET, &body)
    }

    fn v4_flow(src: [u8; 4], dst: [u8; 4], status: u32) -> Vec<u8> {
        flow(
            &[attr(CTA_IP_V4_SRC, &src), attr(CTA_IP_V4_DST, &dst)],
            &[attr(CTA_IP_V4_SRC, &dst), attr(CTA_IP_V4_DST, &src)],
            status,
        )
    }

    #[test]
    fn request_is_a_dump_of_both_families() {
        let req = dump_request(7);
        assert_eq!(req.len(), 20);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), 0x101);
        assert_eq!(u16::from_ne_bytes([req[6], req[7]]), 0x301);
        assert_eq!(req[16], 0, "AF_UNSPEC");
    }

    #[test]
    fn destinations_of_replied_flows_are_collected() {
        // An outgoing flow rewritten by NAT: its reply source is another address.
        let v4 = flow(
            &[
                attr(CTA_IP_V4_SRC, &[198, 51, 100, 1]),
                attr(CTA_IP_V4_DST, &[192, 0, 2, 11]),
            ],
            &[
                attr(CTA_IP_V4_SRC, &[192, 0, 2, 99]),
                attr(CTA_IP_V4_DST, &[198, 51, 100, 1]),
            ],
            REPLIED,
        );
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1::10".parse().unwrap();
        let v6 = flow(
            &[
                attr(CTA_IP_V6_SRC, &a.octets()),
                attr(CTA_IP_V6_DST, &b.octets()),
            ],
            &[
                attr(CTA_IP_V6_SRC, &b.octets()),
                attr(CTA_IP_V6_DST, &a.octets()),
            ],
            REPLIED,
        );
        let mut buf = [v4, v6].concat();
        let mut out = HashSet::new();
        assert!(!parse_messages(&buf, &mut out).unwrap(), "no DONE yet");
        let expected: HashSet<IpAddr> = ["192.0.2.11", "2001:db8:1::10"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        assert_eq!(out, expected, "only the destinations");
        buf = message(NLMSG_DONE, &[0, 0, 0, 0]);
        assert!(parse_messages(&buf, &mut out).unwrap());
    }

    #[test]
    fn unreplied_flows_and_the_sources_of_inbound_flows_do_not_count() {
        let buf = [
            // A SYN the egress program dropped: conntrack confirmed it, nothing came back.
            v4_flow([198, 51, 100, 1], [192, 0, 2, 12], UNREPLIED),
            // A client of a local server: the flow's destination is this host, not the client.
            v4_flow([203, 0, 113, 5], [198, 51, 100, 1], REPLIED),
            // A flow whose attributes carry no status at all.
            {
                let mut body = vec![2, 0, 0, 0];
                body.extend(nested(
                    CTA_TUPLE_ORIG,
                    &[nested(
                        CTA_TUPLE_IP,
                        &[
                            attr(CTA_IP_V4_SRC, &[198, 51, 100, 1]),
                            attr(CTA_IP_V4_DST, &[192, 0, 2, 13]),
                        ],
                    )],
                ));
                message(CT_GET, &body)
            },
        ]
        .concat();
        let mut out = HashSet::new();
        parse_messages(&buf, &mut out).unwrap();
        let local: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(out, HashSet::from([local]));
    }

    #[test]
    fn closed_tcp_connections_do_not_count() {
        let tuple = |src: [u8; 4], dst: [u8; 4]| {
            nested(
                CTA_TUPLE_ORIG,
                &[nested(
                    CTA_TUPLE_IP,
                    &[attr(CTA_IP_V4_SRC, &src), attr(CTA_IP_V4_DST, &dst)],
                )],
            )
        };
        let with_state = |dst: [u8; 4], state: u8| {
            let mut body = vec![2, 0, 0, 0];
            body.extend(tuple([198, 51, 100, 1], dst));
            body.extend(attr(CTA_STATUS, &REPLIED.to_be_bytes()));
            body.extend(nested(
                CTA_PROTOINFO,
                &[nested(
                    CTA_PROTOINFO_TCP,
                    &[attr(CTA_PROTOINFO_TCP_STATE, &[state])],
                )],
            ));
            message(CT_GET, &body)
        };
        let buf = [
            with_state([192, 0, 2, 1], 3),
            with_state([192, 0, 2, 2], TCP_CONNTRACK_TIME_WAIT),
        ]
        .concat();
        let mut out = HashSet::new();
        parse_messages(&buf, &mut out).unwrap();
        assert!(out.contains(&"192.0.2.1".parse::<IpAddr>().unwrap()));
        assert!(!out.contains(&"192.0.2.2".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn a_flow_counts_for_the_scope_in_its_mark() {
        let marked = |dst: [u8; 4], mark: Option<u32>| {
            let mut body = vec![2, 0, 0, 0];
            body.extend(nested(
                CTA_TUPLE_ORIG,
                &[nested(
                    CTA_TUPLE_IP,
                    &[
                        attr(CTA_IP_V4_SRC, &[198, 51, 100, 1]),
                        attr(CTA_IP_V4_DST, &dst),
                    ],
                )],
            ));
            body.extend(attr(CTA_STATUS, &REPLIED.to_be_bytes()));
            if let Some(mark) = mark {
                body.extend(attr(CTA_MARK, &mark.to_be_bytes()));
            }
            message(CT_GET, &body)
        };
        let buf = [
            marked([192, 0, 2, 1], Some(3 << 16 | 0x42)),
            marked([192, 0, 2, 2], Some(0x42)),
            marked([192, 0, 2, 3], None),
        ]
        .concat();
        let mut out = HashSet::new();
        parse_grants(&buf, &mut out).unwrap();
        let grant = |scope, ip: &str| Grant::new(Scope(scope), ip.parse().unwrap());
        assert_eq!(
            out,
            HashSet::from([
                grant(3, "192.0.2.1"),
                grant(0, "192.0.2.2"),
                grant(0, "192.0.2.3")
            ])
        );
    }

    #[test]
    fn kernel_errors_and_garbage_are_reported() {
        let err = message(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        assert!(matches!(
            parse_messages(&err, &mut HashSet::new()),
            Err(ConntrackError::Kernel(_))
        ));
        let mut bad = message(CT_GET, &[0; 8]);
        bad[0] = 200;
        assert!(matches!(
            parse_messages(&bad, &mut HashSet::new()),
            Err(ConntrackError::Malformed)
        ));
    }
}
