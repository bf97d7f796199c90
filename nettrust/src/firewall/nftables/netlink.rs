//! nf_tables over the netlink core ([`crate::netlink`]): its message types and attribute numbers,
//! atomic batches that wait for the kernel's acknowledgement of every message, and the dumps the
//! backend reads (set elements with their comments, tables, rule counters).
//!
//! Constants are those of `include/uapi/linux/netfilter/nf_tables.h` and `nfnetlink.h`.
//! Attribute payloads are big-endian unless the kernel compares raw register bytes (addresses,
//! cgroup ids, ct state), which are written as the packet or the kernel has them.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::netlink::{self, NLM_F_ACK, NLM_F_REQUEST, attrs, nfgen_attrs};
pub use crate::netlink::{Attrs, NLM_F_CREATE, NetlinkError};

// nfnetlink.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
/// Socket buffers for large batches (a whole whitelist goes in one datagram: netlink refuses
/// messages larger than the send buffer) and their acknowledgements (one `nlmsgerr` per message).
const SOCKET_BUFFER: libc::c_int = 8 << 20;

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
    GetSet = 10,
    NewSetElem = 12,
    GetSetElem = 13,
    DelSetElem = 14,
}

impl MsgType {
    /// The nfnetlink message type: subsystem nf_tables, this message.
    fn nlmsg_type(self) -> u16 {
        (NFNL_SUBSYS_NFTABLES << 8) | self as u16
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

/// A `NETLINK_NETFILTER` socket for nf_tables, bound to the network namespace of the thread that
/// opened it.
#[derive(Debug)]
pub struct Socket(netlink::Socket);

impl Socket {
    /// Opens the socket in the caller's network namespace, with buffers for large batches.
    pub fn open() -> Result<Self, NetlinkError> {
        let socket = netlink::Socket::open()?;
        socket.set_buffers(SOCKET_BUFFER);
        Ok(Self(socket))
    }

    /// Sends `msgs` as one atomic nfnetlink batch and returns once the kernel acknowledged every
    /// message. nfnetlink processes a batch synchronously inside `send(2)` and queues one
    /// `nlmsgerr` per message flagged `NLM_F_ACK` (errno 0 = fine), so every answer is already
    /// queued when `send` returns; if any message fails the kernel aborts the whole transaction.
    pub fn batch(&mut self, family: u8, msgs: &[Msg]) -> Result<(), NetlinkError> {
        let socket = &mut self.0;
        // Drop anything stale (e.g. a late reply of an interrupted dump).
        socket.drain()?;
        let mut buf = Vec::with_capacity(256 * (msgs.len() + 2));
        let begin = socket.next_seq();
        let subsystem = NFNL_SUBSYS_NFTABLES;
        netlink::append_message(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin,
            0,
            subsystem,
            &[],
        );
        let mut seqs = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let seq = socket.next_seq();
            seqs.push(seq);
            let flags = NLM_F_REQUEST | NLM_F_ACK | msg.flags;
            let attrs = msg.attrs.as_bytes();
            netlink::append_message(&mut buf, msg.ty.nlmsg_type(), flags, seq, family, 0, attrs);
        }
        let end = socket.next_seq();
        netlink::append_message(
            &mut buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            0,
            subsystem,
            &[],
        );
        socket.send(&buf)?;

        let acks = socket.queued_acks(&seqs)?;
        let refused = acks
            .iter()
            .enumerate()
            .find_map(|(index, errno)| errno.filter(|&e| e != 0).map(|e| (index, e)));
        if let Some((index, errno)) = refused {
            return Err(NetlinkError::Refused {
                index,
                what: format!("nf_tables {:?}", msgs[index].ty),
                source: io::Error::from_raw_os_error(-errno),
            });
        }
        let got = acks.iter().filter(|a| a.is_some()).count();
        if got != msgs.len() {
            return Err(NetlinkError::MissingAck {
                got,
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
        for payload in self.dump(family, MsgType::GetSetElem, &attrs)? {
            parse_elements(&payload, &mut out)?;
        }
        Ok(out)
    }

    /// The names of the sets of table `table` (family `family`) with their comments; empty when
    /// it does not exist.
    pub fn set_names(
        &mut self,
        family: u8,
        table: &str,
    ) -> Result<Vec<(String, Option<String>)>, NetlinkError> {
        let filter = Attrs::new().str(set::TABLE, table);
        let text = |value: &[u8]| {
            let bytes = value.split(|&b| b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(bytes).into_owned()
        };
        let mut out = Vec::new();
        for payload in self.dump(family, MsgType::GetSet, &filter)? {
            let mut in_table = false;
            let mut name = None;
            let mut comment = None;
            for (ty, value) in attrs(nfgen_attrs(&payload)?) {
                match ty {
                    set::TABLE => in_table = text(value) == table,
                    set::NAME => name = Some(text(value)),
                    set::USERDATA => comment = comment_of(value, UDATA_SET_COMMENT),
                    _ => {}
                }
            }
            out.extend(name.filter(|_| in_table).map(|name| (name, comment)));
        }
        Ok(out)
    }

    /// Whether table `name` of `family` exists.
    pub fn table_exists(&mut self, family: u8, name: &str) -> Result<bool, NetlinkError> {
        for payload in self.dump(family, MsgType::GetTable, &Attrs::new())? {
            let found = attrs(nfgen_attrs(&payload)?).any(|(ty, value)| {
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
        Ok(self
            .chain_rules(family, table, chain)?
            .into_iter()
            .filter_map(|r| r.packets)
            .collect())
    }

    /// The rules of `chain` of `table` in chain order, as [`RuleSummary`]s.
    pub fn chain_rules(
        &mut self,
        family: u8,
        table: &str,
        chain: &str,
    ) -> Result<Vec<RuleSummary>, NetlinkError> {
        let filter = Attrs::new().str(rule::TABLE, table).str(rule::CHAIN, chain);
        let mut out = Vec::new();
        for payload in self.dump(family, MsgType::GetRule, &filter)? {
            let body = nfgen_attrs(&payload)?;
            let mut summary = RuleSummary::default();
            for (_, exprs) in attrs(body).filter(|(ty, _)| *ty == rule::EXPRESSIONS) {
                for (_, expression) in attrs(exprs) {
                    summary.add(expression);
                }
            }
            out.push(summary);
        }
        Ok(out)
    }

    /// One dump of `ty`: the payload (`nfgenmsg` and attributes) of every reply message. A
    /// missing table or set (`ENOENT`) is an empty dump.
    fn dump(
        &mut self,
        family: u8,
        ty: MsgType,
        attrs: &Attrs,
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let what = format!("nf_tables dump {ty:?}");
        let mut out = Vec::new();
        let dumped = self
            .0
            .dump(ty.nlmsg_type(), family, attrs, &what, |payload| {
                out.push(payload.to_vec());
                Ok(())
            });
        match dumped {
            Ok(()) => Ok(out),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

/// What `status` reads of one rule: its counter, whether it logs or rejects, the values it
/// compares with and the chain its verdict goes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSummary {
    /// The packet count of its `counter`, if it has one.
    pub packets: Option<u64>,
    /// It has a `log` expression.
    pub logs: bool,
    /// It has a `reject` expression.
    pub rejects: bool,
    /// The data of its `cmp` expressions (a `socket cgroupv2` match compares the cgroup id).
    pub compared: Vec<Vec<u8>>,
    /// The chain its verdict jumps or goes to.
    pub target: Option<String>,
}

impl RuleSummary {
    /// Takes in one expression of the rule.
    fn add(&mut self, expression: &[u8]) {
        let mut name: &[u8] = &[];
        let mut data: &[u8] = &[];
        for (ty, value) in attrs(expression) {
            match ty {
                expr_attr::NAME => name = value.split(|&b| b == 0).next().unwrap_or_default(),
                expr_attr::DATA => data = value,
                _ => {}
            }
        }
        match name {
            b"counter" => {
                self.packets = attrs(data)
                    .find(|(t, v)| *t == counter::PACKETS && v.len() == 8)
                    .map(|(_, v)| u64::from_be_bytes(v.try_into().expect("8 bytes")));
            }
            b"log" => self.logs = true,
            b"reject" => self.rejects = true,
            // NFTA_CMP_DATA (3) holds NFTA_DATA_VALUE.
            b"cmp" => self.compared.extend(
                attrs(data)
                    .filter(|(t, _)| *t == 3)
                    .flat_map(|(_, v)| attrs(v))
                    .filter(|(t, _)| *t == data::VALUE)
                    .map(|(_, v)| v.to_vec()),
            ),
            // NFTA_IMMEDIATE_DATA (2) holds NFTA_DATA_VERDICT, which may name a chain.
            b"immediate" => {
                let chain = attrs(data)
                    .filter(|(t, _)| *t == 2)
                    .flat_map(|(_, v)| attrs(v))
                    .filter(|(t, _)| *t == data::VERDICT)
                    .flat_map(|(_, v)| attrs(v))
                    .find(|(t, _)| *t == data::VERDICT_CHAIN)
                    .map(|(_, v)| {
                        let text = v.split(|&b| b == 0).next().unwrap_or_default();
                        String::from_utf8_lossy(text).into_owned()
                    });
                if chain.is_some() {
                    self.target = chain;
                }
            }
            _ => {}
        }
    }
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
    for (ty, list) in attrs(nfgen_attrs(payload)?) {
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
                    elem::USERDATA => element.comment = comment_of(value, UDATA_COMMENT),
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
/// `NFTNL_UDATA_SET_COMMENT`: a set's comment in its userdata.
const UDATA_SET_COMMENT: u8 = 7;
/// `NFT_USERDATA_MAXLEN`-safe cap on comments (nft itself allows 128 bytes).
pub const COMMENT_MAX: usize = 127;

/// Element userdata carrying `comment` the way `nft` writes it (`{type, len, text NUL}`), so
/// `nft list set` shows it; cut at [`COMMENT_MAX`] bytes on a character boundary.
pub fn comment_udata(comment: &str) -> Vec<u8> {
    udata_comment(UDATA_COMMENT, comment)
}

/// Set userdata carrying `comment` (`NFTNL_UDATA_SET_COMMENT`), shown by `nft list set`.
pub fn set_comment_udata(comment: &str) -> Vec<u8> {
    udata_comment(UDATA_SET_COMMENT, comment)
}

/// A userdata TLV of type `ty` holding `comment` with its NUL, cut at [`COMMENT_MAX`] bytes on a
/// character boundary.
fn udata_comment(ty: u8, comment: &str) -> Vec<u8> {
    let mut end = comment.len().min(COMMENT_MAX);
    while !comment.is_char_boundary(end) {
        end -= 1;
    }
    let text = &comment.as_bytes()[..end];
    let mut out = Vec::with_capacity(text.len() + 3);
    out.push(ty);
    out.push(u8::try_from(text.len() + 1).expect("capped below 255"));
    out.extend_from_slice(text);
    out.push(0);
    out
}

/// The comment (userdata TLV of type `comment_type`) in userdata, if any.
fn comment_of(mut udata: &[u8], comment_type: u8) -> Option<String> {
    while let [ty, len, rest @ ..] = udata {
        let len = usize::from(*len);
        let value = rest.get(..len)?;
        if *ty == comment_type {
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
    pub const USERDATA: u16 = 13;
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
    fn comments_round_trip_and_are_capped() {
        assert_eq!(
            comment_of(&comment_udata("a.test."), UDATA_COMMENT).as_deref(),
            Some("a.test.")
        );
        let long = "é".repeat(200);
        let udata = comment_udata(&long);
        assert!(udata.len() <= COMMENT_MAX + 3);
        let back = comment_of(&udata, UDATA_COMMENT).unwrap();
        assert!(long.starts_with(&back) && !back.is_empty());
        assert_eq!(
            comment_of(&[0, 9, b'x'], UDATA_COMMENT),
            None,
            "length beyond the data"
        );
        assert_eq!(comment_of(&[], UDATA_COMMENT), None);
        // A set's comment has its own type; an element comment is not taken for it.
        let set = set_comment_udata("alpha");
        assert_eq!(
            comment_of(&set, UDATA_SET_COMMENT).as_deref(),
            Some("alpha")
        );
        assert_eq!(comment_of(&set, UDATA_COMMENT), None);
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
