//! The netlink core shared by the nftables backend and the conntrack dump: both speak nfnetlink
//! (`NETLINK_NETFILTER`), whose messages are an `nlmsghdr`, an `nfgenmsg` and attributes.
//!
//! Here: the constants of `linux/netlink.h`, the message and attribute builders, the walkers of
//! received messages and attributes, and the socket with its sequence numbers, dumps and
//! acknowledgements. Built by hand over `libc` (no netlink crate): the callers need a few hundred
//! lines of it, and `netlink-packet-core` models messages as typed payload enums that nfnetlink's
//! families (nf_tables, ctnetlink) would each have to implement first.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

/// `NETLINK_NETFILTER`: nfnetlink, the protocol of nf_tables and ctnetlink.
const NETLINK_NETFILTER: libc::c_int = 12;
/// `NLM_F_REQUEST`: a request (every message to the kernel).
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`: the kernel answers with an `nlmsgerr` (errno 0 = done).
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`): every object of the type.
pub const NLM_F_DUMP: u16 = 0x300;
/// `NLM_F_CREATE`: create the object if it does not exist.
pub const NLM_F_CREATE: u16 = 0x400;
/// `NLMSG_ERROR`: an `nlmsgerr` (an acknowledgement when its errno is 0).
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub const NLMSG_DONE: u16 = 3;
/// `NLA_F_NESTED`: the attribute's payload is itself attributes.
const NLA_F_NESTED: u16 = 0x8000;
/// Attribute types are 14 bits; the top bits flag nesting and byte order.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// Length of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Length of `struct nfgenmsg`, which starts the payload of every nfnetlink message.
pub const NFGENMSG_LEN: usize = 4;
/// Size of the buffer one datagram is received into.
const RECV_BUFFER: usize = 1 << 16;

/// Errors of the netlink layer.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A socket operation failed.
    #[error("netlink socket: {op}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused message `index` of a request (a batch is then rolled back as a whole).
    #[error("{what} refused (message {index} of the batch)")]
    Refused {
        /// Position of the message in the batch (0 for a single request).
        index: usize,
        /// What the refused message asked for.
        what: String,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
    /// The kernel did not acknowledge every message of a batch.
    #[error("the kernel acknowledged {got} of {expected} messages")]
    MissingAck {
        /// Acknowledgements received.
        got: usize,
        /// Messages sent.
        expected: usize,
    },
    /// A reply could not be parsed.
    #[error("malformed netlink reply: {0}")]
    Malformed(&'static str),
}

impl NetlinkError {
    /// The kernel's errno when it refused a message.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Whether a receive timed out (the socket's receive timeout passed without a datagram).
    pub fn would_block(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::WouldBlock)
    }
}

fn last_os(op: &'static str) -> NetlinkError {
    NetlinkError::Io {
        op,
        source: io::Error::last_os_error(),
    }
}

/// A netlink attribute tree under construction, appended to a byte buffer.
#[derive(Debug, Default, Clone)]
pub struct Attrs {
    buf: Vec<u8>,
}

fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

impl Attrs {
    /// An empty attribute list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends attribute `ty` with raw `payload`.
    pub fn bytes(mut self, ty: u16, payload: &[u8]) -> Self {
        let len = u16::try_from(4 + payload.len()).expect("netlink attribute too long");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        pad4(&mut self.buf);
        self
    }

    /// NUL-terminated string attribute.
    pub fn str(self, ty: u16, s: &str) -> Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.bytes(ty, &v)
    }

    /// Big-endian u32 attribute (`NLA_BE32` in nf_tables policies).
    pub fn be32(self, ty: u16, v: u32) -> Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    /// Big-endian u64 attribute.
    pub fn be64(self, ty: u16, v: u64) -> Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    /// Encoded length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no attribute was added.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Nested attribute.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "builder style: callers pass the inner list they just built"
    )]
    pub fn nested(self, ty: u16, inner: Attrs) -> Self {
        self.bytes(ty | NLA_F_NESTED, &inner.buf)
    }

    /// The encoded attributes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Appends one nfnetlink message to `buf`: `nlmsghdr` (type `ty`, `flags`, `seq`, port id 0 =
/// the kernel), `nfgenmsg` (`family`, version 0, `res_id`) and the encoded `attrs`.
pub fn append_message(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    // struct nfgenmsg { u8 nfgen_family; u8 version; __be16 res_id; }
    let [r0, r1] = res_id.to_be_bytes();
    append_raw_message(buf, ty, flags, seq, &[&[family, 0, r0, r1], attrs]);
}

/// Appends one netlink message of any protocol to `buf`: `nlmsghdr` (type `ty`, `flags`, `seq`,
/// port id 0 = the kernel) followed by the concatenated `body` parts.
pub fn append_raw_message(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, body: &[&[u8]]) {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched below
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    for part in body {
        buf.extend_from_slice(part);
    }
    let len = u32::try_from(buf.len() - start).expect("netlink message too long");
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// The request of a dump of message type `ty` for `family`, filtered by `attrs`.
pub fn dump_request(ty: u16, family: u8, seq: u32, attrs: &Attrs) -> Vec<u8> {
    let mut buf = Vec::with_capacity(NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len());
    append_message(
        &mut buf,
        ty,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family,
        0,
        attrs.as_bytes(),
    );
    buf
}

/// One received netlink message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// `nlmsg_type`.
    pub ty: u16,
    /// `nlmsg_seq`: the sequence number of the request it answers.
    pub seq: u32,
    /// Everything after the `nlmsghdr`.
    pub payload: &'a [u8],
}

impl Message<'_> {
    /// The errno of an `NLMSG_ERROR` message (0 for an acknowledgement); `None` for other types.
    pub fn error(&self) -> Option<Result<i32, NetlinkError>> {
        (self.ty == NLMSG_ERROR).then(|| {
            self.payload
                .get(..4)
                .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                .ok_or(NetlinkError::Malformed("short nlmsgerr"))
        })
    }
}

/// Splits a datagram into its messages.
pub fn messages(mut data: &[u8]) -> Result<Vec<Message<'_>>, NetlinkError> {
    let mut out = Vec::new();
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(NetlinkError::Malformed("bad nlmsg length"));
        }
        out.push(Message {
            ty: u16::from_ne_bytes(data[4..6].try_into().expect("2 bytes")),
            seq: u32::from_ne_bytes(data[8..12].try_into().expect("4 bytes")),
            payload: &data[NLMSG_HDRLEN..len],
        });
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    Ok(out)
}

/// Iterates over the attributes in `data`: `(type without flags, payload)`; stops at the first
/// malformed one.
pub fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let ty = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[len.next_multiple_of(4).min(data.len())..];
        Some((ty, payload))
    })
}

/// The attributes of an nfnetlink message's payload (after its `nfgenmsg`).
pub fn nfgen_attrs(payload: &[u8]) -> Result<&[u8], NetlinkError> {
    payload
        .get(NFGENMSG_LEN..)
        .ok_or(NetlinkError::Malformed("short nfgenmsg"))
}

/// Walks one datagram of the answer to dump request `seq`: `each` gets the payload of every reply
/// message (messages of other requests are skipped). Returns whether the dump is complete
/// (`NLMSG_DONE`); an `NLMSG_ERROR` with an errno is [`NetlinkError::Refused`] for `what`.
pub fn dump_datagram(
    data: &[u8],
    seq: u32,
    what: &str,
    each: &mut impl FnMut(&[u8]) -> Result<(), NetlinkError>,
) -> Result<bool, NetlinkError> {
    for message in messages(data)? {
        if message.seq != seq {
            continue;
        }
        if message.ty == NLMSG_DONE {
            return Ok(true);
        }
        match message.error() {
            Some(errno) => {
                let errno = errno?;
                if errno != 0 {
                    return Err(NetlinkError::Refused {
                        index: 0,
                        what: what.to_owned(),
                        source: io::Error::from_raw_os_error(-errno),
                    });
                }
            }
            None => each(message.payload)?,
        }
    }
    Ok(false)
}

/// A `NETLINK_NETFILTER` socket, bound to the network namespace of the thread that opened it, and
/// the sequence number of its last request.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    /// The receive buffer, allocated once: every batch drains and reads acknowledgements.
    rx: Vec<u8>,
}

impl Socket {
    /// Opens and binds the socket in the caller's network namespace (the kernel picks the port id).
    pub fn open() -> Result<Self, NetlinkError> {
        Self::open_protocol(NETLINK_NETFILTER)
    }

    /// Opens and binds a socket of netlink protocol `protocol` (e.g. `NETLINK_SOCK_DIAG`) in the
    /// caller's network namespace.
    pub fn open_protocol(protocol: libc::c_int) -> Result<Self, NetlinkError> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if raw < 0 {
            return Err(last_os("socket(AF_NETLINK)"));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_nl = the kernel assigns our port id.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: bind reads `addr` only.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(last_os("bind"));
        }
        Ok(Self {
            fd,
            seq: 1,
            rx: vec![0; RECV_BUFFER],
        })
    }

    /// Sets the send and receive buffers to `bytes` each: the `*FORCE` options exceed the sysctl
    /// caps (with CAP_NET_ADMIN), the plain ones are the fallback; a refusal of both leaves the
    /// default.
    pub fn set_buffers(&self, bytes: libc::c_int) {
        for (force, plain) in [
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        ] {
            for opt in [force, plain] {
                if self.set_option(opt, &bytes) {
                    break;
                }
            }
        }
    }

    /// Makes a blocking receive fail after `timeout` without an answer.
    pub fn set_recv_timeout(&self, timeout: Duration) {
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
        };
        self.set_option(libc::SO_RCVTIMEO, &tv);
    }

    /// `setsockopt(SOL_SOCKET, opt, value)`; whether it succeeded.
    fn set_option<T>(&self, opt: libc::c_int, value: &T) -> bool {
        // SAFETY: setsockopt reads `value` within its size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw const *value).cast(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        };
        rc == 0
    }

    /// The sequence number of the next message (never 0).
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends `buf` (one or more messages) in one datagram.
    pub fn send(&self, buf: &[u8]) -> Result<(), NetlinkError> {
        // SAFETY: send reads `buf` only.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(last_os("send"));
        }
        if usize::try_from(n).ok() != Some(buf.len()) {
            return Err(NetlinkError::Malformed("short send"));
        }
        Ok(())
    }

    /// One datagram into `self.rx`; `Ok(None)` when nothing is queued and `nonblocking`.
    fn recv(&mut self, nonblocking: bool) -> Result<Option<usize>, NetlinkError> {
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        loop {
            // SAFETY: recv writes at most rx.len() bytes into `rx`.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.rx.as_mut_ptr().cast(),
                    self.rx.len(),
                    flags,
                )
            };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock if nonblocking => return Ok(None),
                _ => {
                    return Err(NetlinkError::Io {
                        op: "recv",
                        source: err,
                    });
                }
            }
        }
    }

    /// Waits for one datagram (at most the receive timeout) and returns it.
    pub fn receive(&mut self) -> Result<&[u8], NetlinkError> {
        let n = self.recv(false)?.unwrap_or(0);
        Ok(&self.rx[..n])
    }

    /// Drops every queued datagram (e.g. a late reply of an interrupted dump).
    pub fn drain(&mut self) -> Result<(), NetlinkError> {
        while self.recv(true)?.is_some() {}
        Ok(())
    }

    /// The errno of the acknowledgement of each message `seqs` names (`None`: not acknowledged),
    /// from the datagrams already queued. nfnetlink processes a batch synchronously inside
    /// `send(2)`, so every acknowledgement of it is queued when `send` returns.
    pub fn queued_acks(&mut self, seqs: &[u32]) -> Result<Vec<Option<i32>>, NetlinkError> {
        let mut acks = vec![None; seqs.len()];
        while let Some(n) = self.recv(true)? {
            for message in messages(&self.rx[..n])? {
                let Some(errno) = message.error() else {
                    continue;
                };
                if let Some(index) = seqs.iter().position(|&s| s == message.seq) {
                    acks[index] = Some(errno?);
                }
            }
        }
        Ok(acks)
    }

    /// Sends a dump request for message type `ty` of `family`, filtered by `attrs`, and passes the
    /// payload (`nfgenmsg` and attributes) of every reply message to `each`, until the kernel
    /// ends the dump. A refusal is [`NetlinkError::Refused`] for `what`.
    pub fn dump(
        &mut self,
        ty: u16,
        family: u8,
        attrs: &Attrs,
        what: &str,
        mut each: impl FnMut(&[u8]) -> Result<(), NetlinkError>,
    ) -> Result<(), NetlinkError> {
        self.drain()?;
        let seq = self.next_seq();
        self.send(&dump_request(ty, family, seq, attrs))?;
        loop {
            let n = self.recv(false)?.unwrap_or(0);
            if n == 0 || dump_datagram(&self.rx[..n], seq, what, &mut each)? {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested() {
        let a = Attrs::new().str(1, "ab").nested(2, Attrs::new().be32(1, 7));
        // "ab\0" = 4 + 3 -> padded to 8; nested: 4 + (4 + 4) = 12.
        assert_eq!(a.buf.len(), 8 + 12);
        assert_eq!(&a.buf[0..2], &7u16.to_ne_bytes());
        assert_eq!(&a.buf[10..12], &(2 | NLA_F_NESTED).to_ne_bytes());
        let parsed: Vec<_> = attrs(&a.buf).collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0], (1, &b"ab\0"[..]));
        assert_eq!(parsed[1].0, 2);
    }

    #[test]
    fn messages_are_split_and_bad_lengths_refused() {
        let mut buf = Vec::new();
        append_message(&mut buf, 0x101, NLM_F_REQUEST, 7, 2, 0, &[1, 2, 3, 4]);
        append_message(&mut buf, NLMSG_DONE, 0, 8, 0, 0, &[]);
        let parsed = messages(&buf).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!((parsed[0].ty, parsed[0].seq), (0x101, 7));
        assert_eq!(parsed[0].payload, &[2, 0, 0, 0, 1, 2, 3, 4][..]);
        assert_eq!((parsed[1].ty, parsed[1].seq), (NLMSG_DONE, 8));
        buf[0] = 200;
        assert!(matches!(messages(&buf), Err(NetlinkError::Malformed(_))));
    }

    #[test]
    fn dumps_skip_other_requests_and_report_refusals() {
        let mut buf = Vec::new();
        append_message(&mut buf, 0x101, 0, 6, 2, 0, &[9; 4]);
        append_message(&mut buf, 0x101, 0, 7, 2, 0, &[1; 4]);
        let mut seen = Vec::new();
        let done = dump_datagram(&buf, 7, "dump", &mut |p| {
            seen.push(p.to_vec());
            Ok(())
        });
        assert!(!done.unwrap());
        assert_eq!(seen, [vec![2, 0, 0, 0, 1, 1, 1, 1]]);
        let mut refusal = Vec::new();
        append_message(&mut refusal, NLMSG_ERROR, 0, 7, 0, 0, &[]);
        // The errno replaces the nfgenmsg bytes of this hand-made nlmsgerr.
        refusal[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        let err = dump_datagram(&refusal, 7, "dump", &mut |_| Ok(())).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENOENT));
    }
}
