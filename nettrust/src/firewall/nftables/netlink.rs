//! nf_tables over netlink, built by hand: message and attribute encoding, atomic batches that wait
//! for the kernel's acknowledgement of every message, and set-element dumps.
//!
//! Constants are those of `include/uapi/linux/netfilter/nf_tables.h`, `nfnetlink.h` and
//! `netlink.h`. Attribute payloads are big-endian unless the kernel compares raw register bytes
//! (addresses, cgroup ids, ct state), which are written as the packet or the kernel has them.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

// netlink.h
const NETLINK_NETFILTER: libc::c_int = 12;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
/// `NLM_F_CREATE`: create the object if it does not exist.
pub const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;

// nfnetlink.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

/// `NFPROTO_INET`: the dual-stack table family.
pub const NFPROTO_INET: u8 = 1;
/// `NFPROTO_IPV4` (value of `meta nfproto`).
pub const NFPROTO_IPV4: u8 = 2;
/// `NFPROTO_IPV6` (value of `meta nfproto`).
pub const NFPROTO_IPV6: u8 = 10;

/// nf_tables message types (`enum nf_tables_msg_types`).
#[derive(Debug, Clone, Copy)]
#[repr(u16)]
pub enum MsgType {
    NewTable = 0,
    GetTable = 1,
    DelTable = 2,
    NewChain = 3,
    NewRule = 6,
    GetRule = 7,
    NewSet = 9,
    NewSetElem = 12,
    GetSetElem = 13,
    DelSetElem = 14,
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
    pub fn nested(self, ty: u16, inner: Attrs) -> Self {
        self.bytes(ty | NLA_F_NESTED, &inner.buf)
    }

    fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// One message of a batch: type, flags and attributes (the nfgenmsg family is the table's).
#[derive(Debug, Clone)]
pub struct Msg {
    ty: MsgType,
    flags: u16,
    attrs: Attrs,
}

impl Msg {
    /// A message of type `ty` with extra netlink `flags` (e.g. [`NLM_F_CREATE`]).
    pub fn new(ty: MsgType, flags: u16, attrs: Attrs) -> Self {
        Self { ty, flags, attrs }
    }
}

fn header(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched below
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    // struct nfgenmsg { u8 nfgen_family; u8 version; __be16 res_id; }
    buf.push(family);
    buf.push(0);
    buf.extend_from_slice(&res_id.to_be_bytes());
    start
}

fn finish(buf: &mut [u8], start: usize) {
    let len = u32::try_from(buf.len() - start).expect("netlink message too long");
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

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
    /// The kernel refused message `index` of the batch (the whole batch was rolled back).
    #[error("nf_tables refused {what} (message {index} of the batch)")]
    Refused {
        /// Position of the message in the batch.
        index: usize,
        /// Type of the refused message.
        what: String,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
    /// The kernel did not acknowledge every message of a batch.
    #[error("nf_tables acknowledged {got} of {expected} messages")]
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

fn last_os(op: &'static str) -> NetlinkError {
    NetlinkError::Io {
        op,
        source: io::Error::last_os_error(),
    }
}

/// A `NETLINK_NETFILTER` socket, bound to the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// Opens the socket in the caller's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(last_os("socket(AF_NETLINK, NETLINK_NETFILTER)"));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Room for large batches (a whole whitelist goes in one datagram: netlink refuses
        // messages larger than the send buffer) and for their acknowledgements (one nlmsgerr per
        // message). The *FORCE variants exceed the sysctl caps (CAP_NET_ADMIN, which nf_tables
        // needs anyway); the plain ones are the fallback.
        for (force, plain) in [
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        ] {
            let size: libc::c_int = 8 << 20;
            for opt in [force, plain] {
                // SAFETY: setsockopt reads `size` only.
                let rc = unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        opt,
                        (&raw const size).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                if rc == 0 {
                    break;
                }
            }
        }
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
        Ok(Self { fd, seq: 1 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn send(&self, buf: &[u8]) -> Result<(), NetlinkError> {
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

    /// One datagram; `Ok(None)` when nothing is queued and `nonblocking`.
    fn recv(&self, buf: &mut [u8], nonblocking: bool) -> Result<Option<usize>, NetlinkError> {
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        loop {
            // SAFETY: recv writes at most buf.len() bytes into `buf`.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
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

    /// Sends `msgs` as one atomic nfnetlink batch and returns once the kernel acknowledged every
    /// message. nfnetlink processes a batch synchronously inside `send(2)` and queues one
    /// `nlmsgerr` per message flagged `NLM_F_ACK` (errno 0 = fine), so every answer is already
    /// queued when `send` returns; if any message fails the kernel aborts the whole transaction.
    pub fn batch(&mut self, family: u8, msgs: &[Msg]) -> Result<(), NetlinkError> {
        // Drop anything stale (e.g. a late reply of an interrupted dump).
        let mut rx = vec![0u8; 1 << 16];
        while self.recv(&mut rx, true)?.is_some() {}

        let mut buf = Vec::with_capacity(256 * (msgs.len() + 2));
        let begin = self.next_seq();
        let start = header(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        finish(&mut buf, start);
        let mut seqs = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let seq = self.next_seq();
            seqs.push((seq, msg.ty));
            let start = header(
                &mut buf,
                (NFNL_SUBSYS_NFTABLES << 8) | msg.ty as u16,
                NLM_F_REQUEST | NLM_F_ACK | msg.flags,
                seq,
                family,
                0,
            );
            buf.extend_from_slice(&msg.attrs.buf);
            finish(&mut buf, start);
        }
        let end = self.next_seq();
        let start = header(
            &mut buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        finish(&mut buf, start);
        self.send(&buf)?;

        let mut acked = 0;
        let mut failure = None;
        while let Some(n) = self.recv(&mut rx, true)? {
            for (ty, seq, payload) in messages(&rx[..n])? {
                if ty != NLMSG_ERROR {
                    continue;
                }
                let Some(index) = seqs.iter().position(|&(s, _)| s == seq) else {
                    continue;
                };
                let errno = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .ok_or(NetlinkError::Malformed("short nlmsgerr"))?;
                acked += 1;
                if errno != 0 && failure.is_none() {
                    failure = Some(NetlinkError::Refused {
                        index,
                        what: format!("{:?}", seqs[index].1),
                        source: io::Error::from_raw_os_error(-errno),
                    });
                }
            }
        }
        if let Some(failure) = failure {
            return Err(failure);
        }
        if acked != msgs.len() {
            return Err(NetlinkError::MissingAck {
                got: acked,
                expected: msgs.len(),
            });
        }
        Ok(())
    }

    /// Dumps the elements of set `set` in table `table` (family `family`).
    pub fn dump_set(
        &mut self,
        family: u8,
        table: &str,
        set: &str,
    ) -> Result<Vec<Element>, NetlinkError> {
        let attrs = Attrs::new()
            .str(elem_list::TABLE, table)
            .str(elem_list::SET, set);
        let mut out = Vec::new();
        for payload in self.dump(family, MsgType::GetSetElem, attrs)? {
            parse_elements(&payload, &mut out)?;
        }
        Ok(out)
    }

    /// Whether table `name` of `family` exists.
    pub fn table_exists(&mut self, family: u8, name: &str) -> Result<bool, NetlinkError> {
        for payload in self.dump(family, MsgType::GetTable, Attrs::new())? {
            let body = payload
                .get(4..)
                .ok_or(NetlinkError::Malformed("short nfgenmsg"))?;
            let found = attrs(body).any(|(ty, value)| {
                ty == table::NAME && value.split(|&b| b == 0).next() == Some(name.as_bytes())
            });
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The packet counts of the `counter` expressions in `chain` of `table`, rule by rule in
    /// chain order (rules without a counter are skipped).
    pub fn chain_counters(
        &mut self,
        family: u8,
        table: &str,
        chain: &str,
    ) -> Result<Vec<u64>, NetlinkError> {
        let filter = Attrs::new().str(rule::TABLE, table).str(rule::CHAIN, chain);
        let mut out = Vec::new();
        for payload in self.dump(family, MsgType::GetRule, filter)? {
            let body = payload
                .get(4..)
                .ok_or(NetlinkError::Malformed("short nfgenmsg"))?;
            for (_, exprs) in attrs(body).filter(|(ty, _)| *ty == rule::EXPRESSIONS) {
                for (_, expression) in attrs(exprs) {
                    let mut is_counter = false;
                    let mut packets = None;
                    for (ty, value) in attrs(expression) {
                        match ty {
                            expr_attr::NAME => is_counter = value.starts_with(b"counter\0"),
                            expr_attr::DATA => {
                                packets = attrs(value)
                                    .find(|(t, v)| *t == counter::PACKETS && v.len() == 8)
                                    .map(|(_, v)| {
                                        u64::from_be_bytes(v.try_into().expect("8 bytes"))
                                    });
                            }
                            _ => {}
                        }
                    }
                    if let (true, Some(packets)) = (is_counter, packets) {
                        out.push(packets);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Sends one `NLM_F_DUMP` request and returns the payloads (nfgenmsg + attributes) of every
    /// reply message. A missing table or set (`ENOENT`) is an empty dump.
    fn dump(
        &mut self,
        family: u8,
        ty: MsgType,
        attrs: Attrs,
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let mut rx = vec![0u8; 1 << 16];
        while self.recv(&mut rx, true)?.is_some() {}
        let seq = self.next_seq();
        let mut buf = Vec::new();
        let start = header(
            &mut buf,
            (NFNL_SUBSYS_NFTABLES << 8) | ty as u16,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
            0,
        );
        buf.extend_from_slice(&attrs.into_bytes());
        finish(&mut buf, start);
        self.send(&buf)?;
        let mut out = Vec::new();
        loop {
            let n = self.recv(&mut rx, false)?.unwrap_or(0);
            for (kind, s, payload) in messages(&rx[..n])? {
                if s != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                            .ok_or(NetlinkError::Malformed("short nlmsgerr"))?;
                        if errno == -libc::ENOENT {
                            return Ok(Vec::new());
                        }
                        if errno != 0 {
                            return Err(NetlinkError::Refused {
                                index: 0,
                                what: format!("dump {ty:?}"),
                                source: io::Error::from_raw_os_error(-errno),
                            });
                        }
                    }
                    _ => out.push(payload.to_vec()),
                }
            }
        }
    }
}

/// One netlink message of a datagram: `(type, seq, payload after the nlmsghdr)`.
type Message<'a> = (u16, u32, &'a [u8]);

/// Splits a datagram into its messages.
fn messages(mut data: &[u8]) -> Result<Vec<Message<'_>>, NetlinkError> {
    let mut out = Vec::new();
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(NetlinkError::Malformed("bad nlmsg length"));
        }
        let ty = u16::from_ne_bytes(data[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(data[8..12].try_into().expect("4 bytes"));
        out.push((ty, seq, &data[NLMSG_HDRLEN..len]));
        let aligned = len.next_multiple_of(4).min(data.len());
        data = &data[aligned..];
    }
    Ok(out)
}

/// Iterates over the attributes in `data`: `(type without flags, payload)`.
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[len.next_multiple_of(4).min(data.len())..];
        Some((ty, payload))
    })
}

/// One set element as dumped by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The key bytes.
    pub key: Vec<u8>,
    /// `NFTA_SET_ELEM_FLAGS`.
    pub flags: u32,
    /// Remaining lifetime in milliseconds (`NFTA_SET_ELEM_EXPIRATION`), if the element has a
    /// timeout.
    pub expires_in_ms: Option<u64>,
    /// The element's comment (`NFTA_SET_ELEM_USERDATA`, as `nft` writes it): the DNS name that
    /// authorized the address.
    pub comment: Option<String>,
}

fn parse_elements(payload: &[u8], out: &mut Vec<Element>) -> Result<(), NetlinkError> {
    // Skip the nfgenmsg.
    let body = payload
        .get(4..)
        .ok_or(NetlinkError::Malformed("short nfgenmsg"))?;
    for (ty, list) in attrs(body) {
        if ty != elem_list::ELEMENTS {
            continue;
        }
        for (_, elem) in attrs(list) {
            let mut element = Element {
                key: Vec::new(),
                flags: 0,
                expires_in_ms: None,
                comment: None,
            };
            for (ty, value) in attrs(elem) {
                match ty {
                    elem::KEY => {
                        for (ty, data) in attrs(value) {
                            if ty == data::VALUE {
                                element.key = data.to_vec();
                            }
                        }
                    }
                    elem::FLAGS if value.len() == 4 => {
                        element.flags = u32::from_be_bytes(value.try_into().expect("4 bytes"));
                    }
                    elem::EXPIRATION if value.len() == 8 => {
                        element.expires_in_ms =
                            Some(u64::from_be_bytes(value.try_into().expect("8 bytes")));
                    }
                    elem::USERDATA => element.comment = comment_of(value),
                    _ => {}
                }
            }
            out.push(element);
        }
    }
    Ok(())
}

/// The key bytes of an address as the kernel compares them (network byte order).
pub fn addr_key(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The address of a 4- or 16-byte key.
pub fn key_addr(key: &[u8]) -> Option<IpAddr> {
    match key.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(key).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(key).ok()?))),
        _ => None,
    }
}

/// `NFTA_TABLE_*`.
pub mod table {
    pub const NAME: u16 = 1;
    pub const FLAGS: u16 = 2;
}

/// `NFTA_CHAIN_*` and `NFTA_HOOK_*`.
pub mod chain {
    pub const TABLE: u16 = 1;
    pub const NAME: u16 = 3;
    pub const HOOK: u16 = 4;
    pub const POLICY: u16 = 5;
    pub const TYPE: u16 = 7;
    pub const HOOK_HOOKNUM: u16 = 1;
    pub const HOOK_PRIORITY: u16 = 2;
    /// `NF_INET_LOCAL_IN`.
    pub const NF_INET_LOCAL_IN: u32 = 1;
    /// `NF_INET_FORWARD`.
    pub const NF_INET_FORWARD: u32 = 2;
    /// `NF_INET_LOCAL_OUT`.
    pub const NF_INET_LOCAL_OUT: u32 = 3;
}

/// `NFTA_RULE_*`.
pub mod rule {
    pub const TABLE: u16 = 1;
    pub const CHAIN: u16 = 2;
    pub const EXPRESSIONS: u16 = 4;
}

/// `NFTA_EXPR_*`.
pub mod expr_attr {
    pub const NAME: u16 = 1;
    pub const DATA: u16 = 2;
}

/// `NFTA_COUNTER_*`.
pub mod counter {
    pub const PACKETS: u16 = 2;
}

/// `NFTNL_UDATA_SET_ELEM_COMMENT`: the userdata TLV type `nft` uses for element comments.
const UDATA_COMMENT: u8 = 0;
/// `NFT_USERDATA_MAXLEN`-safe cap on comments (nft itself allows 128 bytes).
pub const COMMENT_MAX: usize = 127;

/// Element userdata carrying `comment` the way `nft` writes it (`{type, len, text NUL}`), so
/// `nft list set` shows it; cut at [`COMMENT_MAX`] bytes on a character boundary.
pub fn comment_udata(comment: &str) -> Vec<u8> {
    let mut end = comment.len().min(COMMENT_MAX);
    while !comment.is_char_boundary(end) {
        end -= 1;
    }
    let text = &comment.as_bytes()[..end];
    let mut out = Vec::with_capacity(text.len() + 3);
    out.push(UDATA_COMMENT);
    out.push(u8::try_from(text.len() + 1).expect("capped below 255"));
    out.extend_from_slice(text);
    out.push(0);
    out
}

/// The comment in element userdata, if any.
fn comment_of(mut udata: &[u8]) -> Option<String> {
    while let [ty, len, rest @ ..] = udata {
        let len = usize::from(*len);
        let value = rest.get(..len)?;
        if *ty == UDATA_COMMENT {
            let text = value.split(|&b| b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        udata = &rest[len..];
    }
    None
}

/// `NFTA_SET_*`, set flags and nft's key type numbers (shown by `nft list`).
pub mod set {
    pub const TABLE: u16 = 1;
    pub const NAME: u16 = 2;
    pub const FLAGS: u16 = 3;
    pub const KEY_TYPE: u16 = 4;
    pub const KEY_LEN: u16 = 5;
    pub const ID: u16 = 10;
    pub const INTERVAL: u32 = 0x4;
    pub const TIMEOUT: u32 = 0x10;
    /// nft's `TYPE_IPADDR` (`ipv4_addr`).
    pub const TYPE_IPADDR: u32 = 7;
    /// nft's `TYPE_IP6ADDR` (`ipv6_addr`).
    pub const TYPE_IP6ADDR: u32 = 8;
}

/// `NFTA_SET_ELEM_LIST_*`.
pub mod elem_list {
    pub const TABLE: u16 = 1;
    pub const SET: u16 = 2;
    pub const ELEMENTS: u16 = 3;
}

/// `NFTA_SET_ELEM_*`.
pub mod elem {
    pub const KEY: u16 = 1;
    pub const FLAGS: u16 = 3;
    pub const TIMEOUT: u16 = 4;
    pub const EXPIRATION: u16 = 5;
    pub const USERDATA: u16 = 6;
    /// `NFT_SET_ELEM_INTERVAL_END`.
    pub const INTERVAL_END: u32 = 0x1;
}

/// `NFTA_DATA_*` and `NFTA_VERDICT_*`.
pub mod data {
    pub const VALUE: u16 = 1;
    pub const VERDICT: u16 = 2;
    pub const VERDICT_CODE: u16 = 1;
    pub const VERDICT_CHAIN: u16 = 2;
}

/// `NFTA_LIST_ELEM`.
pub const LIST_ELEM: u16 = 1;

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
    fn comments_round_trip_and_are_capped() {
        assert_eq!(
            comment_of(&comment_udata("a.test.")).as_deref(),
            Some("a.test.")
        );
        let long = "é".repeat(200);
        let udata = comment_udata(&long);
        assert!(udata.len() <= COMMENT_MAX + 3);
        let back = comment_of(&udata).unwrap();
        assert!(long.starts_with(&back) && !back.is_empty());
        assert_eq!(comment_of(&[0, 9, b'x']), None, "length beyond the data");
        assert_eq!(comment_of(&[]), None);
    }

    #[test]
    fn keys_round_trip() {
        for addr in ["192.0.2.1", "2001:db8::1"] {
            let addr: IpAddr = addr.parse().unwrap();
            assert_eq!(key_addr(&addr_key(addr)), Some(addr));
        }
        assert_eq!(key_addr(&[1, 2, 3]), None);
    }
}
