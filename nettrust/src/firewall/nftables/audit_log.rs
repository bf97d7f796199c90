//! The audit reports of the nftables backend: an audited scope's chain sends what it would drop
//! to an nfnetlink_log group (rate-limited in the rule), and a thread of the daemon logs each such
//! packet as `[Audit] policy=NAME dst=ADDR port=P proto=N`, as the eBPF backend logs its audit
//! events. The group is read only while an audited scope exists.
//!
//! Constants are those of `include/uapi/linux/netfilter/nfnetlink_log.h`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netlink::{
    self, Attrs, NLM_F_ACK, NLM_F_REQUEST, NetlinkError, attrs, messages, nfgen_attrs,
};

/// The nfnetlink_log group of the audit rules (per network namespace; "NT").
pub(super) const AUDIT_GROUP: u16 = 0x4e54;

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
/// Bytes of each packet copied: the IP header and the ports.
const COPY_RANGE: u32 = 64;
/// How often the reader looks whether it should stop.
const POLL: Duration = Duration::from_millis(500);

/// The nfnetlink_log socket and its reader.
#[derive(Debug, Default)]
pub(super) struct AuditLog {
    /// Opened in the daemon's network namespace at start; `None` when that failed.
    socket: Option<netlink::Socket>,
    /// The reader thread and its stop flag, once an audited scope exists.
    reader: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// Packets reported so far.
    reported: Arc<AtomicU64>,
}

impl AuditLog {
    /// Opens the socket in the caller's network namespace (nothing is read yet).
    pub(super) fn open() -> Self {
        let socket = netlink::Socket::open()
            .inspect_err(|e| tracing::warn!("audit reports unavailable: {e}"))
            .ok();
        Self {
            socket,
            reader: None,
            reported: Arc::default(),
        }
    }

    /// Packets reported so far.
    pub(super) fn reported(&self) -> u64 {
        self.reported.load(Ordering::Relaxed)
    }

    /// Binds the group and starts the reader (once).
    pub(super) fn start(&mut self) {
        if self.reader.is_some() {
            return;
        }
        let Some(mut socket) = self.socket.take() else {
            return;
        };
        if let Err(e) = bind(&mut socket) {
            tracing::warn!("audit reports unavailable: cannot bind the nflog group: {e}");
            return;
        }
        socket.set_recv_timeout(POLL);
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, reported) = (stop.clone(), self.reported.clone());
        let spawned = std::thread::Builder::new()
            .name("nft-audit".into())
            .spawn(move || read(socket, &flag, &reported));
        match spawned {
            Ok(thread) => self.reader = Some((stop, thread)),
            Err(e) => tracing::warn!("audit reports unavailable: {e}"),
        }
    }

    /// Stops the reader.
    pub(super) fn stop(&mut self) {
        if let Some((stop, thread)) = self.reader.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds [`AUDIT_GROUP`] to this socket, copying the first [`COPY_RANGE`] bytes of each packet.
fn bind(socket: &mut netlink::Socket) -> Result<(), NetlinkError> {
    let ty = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
    let mut mode = COPY_RANGE.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    let requests = [
        Attrs::new().bytes(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]),
        Attrs::new().bytes(NFULA_CFG_MODE, &mode),
    ];
    let mut buf = Vec::new();
    let mut seqs = Vec::new();
    for attrs in &requests {
        let seq = socket.next_seq();
        seqs.push(seq);
        let flags = NLM_F_REQUEST | NLM_F_ACK;
        netlink::append_message(&mut buf, ty, flags, seq, 0, AUDIT_GROUP, attrs.as_bytes());
    }
    socket.send(&buf)?;
    for (index, ack) in socket.queued_acks(&seqs)?.into_iter().enumerate() {
        match ack {
            Some(0) => {}
            Some(errno) => {
                return Err(NetlinkError::Refused {
                    index,
                    what: "nfnetlink_log config".to_owned(),
                    source: std::io::Error::from_raw_os_error(-errno),
                });
            }
            None => {
                return Err(NetlinkError::MissingAck {
                    got: index,
                    expected: seqs.len(),
                });
            }
        }
    }
    Ok(())
}

/// Logs every packet the group delivers until `stop`.
fn read(mut socket: netlink::Socket, stop: &AtomicBool, reported: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        let datagram = match socket.receive() {
            Ok(datagram) => datagram,
            Err(e) if e.would_block() => continue,
            Err(e) => {
                tracing::debug!("audit reports: {e}");
                std::thread::sleep(POLL);
                continue;
            }
        };
        let Ok(messages) = messages(datagram) else {
            continue;
        };
        for message in messages {
            if message.ty != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET {
                continue;
            }
            if let Some(line) = nfgen_attrs(message.payload).ok().and_then(report) {
                tracing::info!("{line}");
                reported.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The report of one logged packet: `[Audit] policy=NAME dst=ADDR port=P proto=N`, from the
/// rule's prefix and the packet's IP header.
fn report(packet_attrs: &[u8]) -> Option<String> {
    let mut prefix = None;
    let mut packet = None;
    for (ty, value) in attrs(packet_attrs) {
        match ty {
            NFULA_PREFIX => {
                let text = value.split(|&b| b == 0).next().unwrap_or_default();
                prefix = Some(String::from_utf8_lossy(text).trim_end().to_owned());
            }
            NFULA_PAYLOAD => packet = Some(value),
            _ => {}
        }
    }
    let (dst, proto, port) = destination(packet?)?;
    Some(format!("{} dst={dst} port={port} proto={proto}", prefix?))
}

/// Destination address, IP protocol and destination port (0 without ports) of an IP packet.
fn destination(packet: &[u8]) -> Option<(IpAddr, u8, u16)> {
    let (dst, proto, l4) = match packet.first()? >> 4 {
        4 => {
            let header = usize::from(packet.first()? & 0x0f) * 4;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            (IpAddr::V4(Ipv4Addr::from(dst)), *packet.get(9)?, header)
        }
        6 => {
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(dst)), *packet.get(6)?, 40)
        }
        _ => return None,
    };
    let has_ports = matches!(i32::from(proto), libc::IPPROTO_TCP | libc::IPPROTO_UDP);
    let port = packet
        .get(l4 + 2..l4 + 4)
        .filter(|_| has_ports)
        .map_or(0, |p| u16::from_be_bytes([p[0], p[1]]));
    Some((dst, proto, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_name_the_policy_and_the_destination() {
        let mut ipv4 = vec![0u8; 24];
        ipv4[0] = 0x45;
        ipv4[9] = 6;
        ipv4[16..20].copy_from_slice(&[192, 0, 2, 99]);
        ipv4[22..24].copy_from_slice(&8080u16.to_be_bytes());
        let packet_attrs = Attrs::new()
            .bytes(NFULA_PREFIX, b"[Audit] policy=observe \0")
            .bytes(NFULA_PAYLOAD, &ipv4);
        assert_eq!(
            report(packet_attrs.as_bytes()).as_deref(),
            Some("[Audit] policy=observe dst=192.0.2.99 port=8080 proto=6")
        );
        let mut ipv6 = vec![0u8; 40];
        ipv6[0] = 0x60;
        ipv6[6] = 58;
        ipv6[39] = 1;
        assert_eq!(
            destination(&ipv6),
            Some(("::1".parse().unwrap(), 58, 0)),
            "ICMPv6 has no ports"
        );
        assert_eq!(destination(&[0x45, 0]), None, "truncated");
        assert_eq!(report(Attrs::new().as_bytes()), None);
    }
}
