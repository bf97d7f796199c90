//! nf_tables rule expressions (`NFTA_EXPR_*` payloads), one function per expression kind, and the
//! few rules nettrust builds from them.
//!
//! All values go through register 1 (`NFT_REG_1`, 16 bytes: wide enough for an IPv6 address).

use super::netlink::{Attrs, LIST_ELEM, NFPROTO_IPV4, NFPROTO_IPV6, data};

const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
/// `NFT_REG_VERDICT`.
const REG_VERDICT: u32 = 0;
/// `NFT_REG_1`.
const REG_1: u32 = 1;
/// The bits of a conntrack mark [`Rule::ct_mark_scope`] keeps (the rest holds the scope).
pub const CT_MARK_LOW: u32 = 0xffff;

/// `NF_ACCEPT`.
pub const ACCEPT: i32 = 1;
/// `NF_DROP`.
pub const DROP: i32 = 0;
/// `NFT_GOTO`.
const GOTO: i32 = -4;

/// A rule: its expressions in order, ready for `NFTA_RULE_EXPRESSIONS`.
#[derive(Debug, Default, Clone)]
pub struct Rule {
    exprs: Attrs,
}

impl Rule {
    /// An empty rule.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(mut self, name: &str, data: Option<Attrs>) -> Self {
        let mut expr = Attrs::new().str(EXPR_NAME, name);
        if let Some(data) = data {
            expr = expr.nested(EXPR_DATA, data);
        }
        self.exprs = self.exprs.nested(LIST_ELEM, expr);
        self
    }

    /// The encoded expression list.
    pub fn into_attrs(self) -> Attrs {
        self.exprs
    }

    /// `meta KEY` into register 1 (`NFTA_META_DREG` 1, `NFTA_META_KEY` 2).
    fn meta(self, key: u32) -> Self {
        self.push("meta", Some(Attrs::new().be32(1, REG_1).be32(2, key)))
    }

    /// `cmp` register 1 against `value` (`NFTA_CMP_SREG` 1, `NFTA_CMP_OP` 2, `NFTA_CMP_DATA` 3).
    fn cmp(self, op: u32, value: &[u8]) -> Self {
        self.push(
            "cmp",
            Some(
                Attrs::new()
                    .be32(1, REG_1)
                    .be32(2, op)
                    .nested(3, Attrs::new().bytes(data::VALUE, value)),
            ),
        )
    }

    /// `cmp eq`.
    pub fn eq(self, value: &[u8]) -> Self {
        self.cmp(0, value)
    }

    /// `meta nfproto ipv4|ipv6` (`NFT_META_NFPROTO` = 15): the packet's family in an inet table.
    pub fn nfproto(self, v6: bool) -> Self {
        self.meta(15)
            .eq(&[if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }])
    }

    /// `icmpv6 type LO-HI` for an IPv6 packet: `meta nfproto ipv6`, `meta l4proto ipv6-icmp`,
    /// the first byte of the transport header (`NFT_PAYLOAD_TRANSPORT_HEADER` = 2) compared with
    /// `NFT_CMP_GTE` (5) and `NFT_CMP_LTE` (3).
    pub fn icmpv6_types(self, lo: u8, hi: u8) -> Self {
        self.nfproto(true)
            .meta(16)
            .eq(&[libc::IPPROTO_ICMPV6 as u8])
            .push(
                "payload",
                Some(Attrs::new().be32(1, REG_1).be32(2, 2).be32(3, 0).be32(4, 1)),
            )
            .cmp(5, &[lo])
            .cmp(3, &[hi])
    }

    /// `meta l4proto tcp` (`NFT_META_L4PROTO` = 16).
    pub fn l4proto_tcp(self) -> Self {
        self.meta(16).eq(&[libc::IPPROTO_TCP as u8])
    }

    /// `meta mark MARK` (`NFT_META_MARK` = 3; the mark is a host-endian u32 in the register).
    pub fn mark(self, mark: u32) -> Self {
        self.meta(3).eq(&mark.to_ne_bytes())
    }

    /// `meta l4proto PROTO`.
    pub fn l4proto(self, proto: u8) -> Self {
        self.meta(16).eq(&[proto])
    }

    /// `payload` of `len` bytes at `offset` of header `base` (1 network, 2 transport) into
    /// register 1.
    fn payload(self, base: u32, offset: u32, len: u32) -> Self {
        self.push(
            "payload",
            Some(
                Attrs::new()
                    .be32(1, REG_1)
                    .be32(2, base)
                    .be32(3, offset)
                    .be32(4, len),
            ),
        )
    }

    /// The IPv6 destination is in `prefix/bits` (`bits` a multiple of 8 or not): its first
    /// bytes, masked (`bitwise`), equal the prefix's.
    pub fn daddr_v6_in(self, prefix: [u8; 16], bits: u8) -> Self {
        let len = usize::from(bits.div_ceil(8));
        let mut mask = vec![0xffu8; len];
        if !bits.is_multiple_of(8) {
            mask[len - 1] = 0xff << (8 - bits % 8);
        }
        let value: Vec<u8> = prefix[..len]
            .iter()
            .zip(&mask)
            .map(|(b, m)| b & m)
            .collect();
        self.payload(1, 24, len as u32)
            .push(
                "bitwise",
                Some(
                    Attrs::new()
                        .be32(1, REG_1)
                        .be32(2, REG_1)
                        .be32(3, len as u32)
                        .nested(4, Attrs::new().bytes(data::VALUE, &mask))
                        .nested(5, Attrs::new().bytes(data::VALUE, &vec![0u8; len])),
                ),
            )
            .eq(&value)
    }

    /// The destination address equals `addr` (4 or 16 bytes, network order).
    pub fn daddr_eq(self, addr: &[u8]) -> Self {
        self.daddr(addr.len() == 16).eq(addr)
    }

    /// The transport header's destination port equals `port` (TCP and UDP alike).
    pub fn dport(self, port: u16) -> Self {
        self.payload(2, 2, 2).eq(&port.to_be_bytes())
    }

    /// `exthdr rt seg-left != 0`: an IPv6 routing header with segments left (`exthdr` with
    /// `NFTA_EXTHDR_DREG` 1, `TYPE` 2 = 43, `OFFSET` 3 = 3, `LEN` 4 = 1; a packet without the
    /// header does not match), `cmp neq` (1) 0.
    pub fn ipv6_segments_left(self) -> Self {
        self.nfproto(true)
            .push(
                "exthdr",
                Some(
                    Attrs::new()
                        .be32(1, REG_1)
                        .bytes(2, &[43])
                        .be32(3, 3)
                        .be32(4, 1),
                ),
            )
            .cmp(1, &[0])
    }

    /// `ip option TYPE exists`: `exthdr` with `NFTA_EXTHDR_OP` 6 = `NFT_EXTHDR_OP_IPV4` 2 and
    /// `NFTA_EXTHDR_FLAGS` 5 = `NFT_EXTHDR_F_PRESENT` 1 (1 byte, 1 when present), `cmp eq 1`.
    pub fn ipv4_option(self, kind: u8) -> Self {
        self.nfproto(false)
            .push(
                "exthdr",
                Some(
                    Attrs::new()
                        .be32(1, REG_1)
                        .bytes(2, &[kind])
                        .be32(3, 0)
                        .be32(4, 1)
                        .be32(5, 1)
                        .be32(6, 2),
                ),
            )
            .eq(&[1])
    }

    /// `meta iif lo` (`NFT_META_IIF` = 4; the loopback device is always ifindex 1,
    /// `LOOPBACK_IFINDEX`).
    pub fn iif_loopback(self) -> Self {
        self.meta(4).eq(&1u32.to_ne_bytes())
    }

    /// The destination address into register 1: `payload @nh,16,4` (IPv4) or `@nh,24,16`
    /// (IPv6) (`NFTA_PAYLOAD_DREG` 1, `BASE` 2 = network header, `OFFSET` 3, `LEN` 4).
    pub fn daddr(self, v6: bool) -> Self {
        let (offset, len) = if v6 { (24, 16) } else { (16, 4) };
        self.push(
            "payload",
            Some(
                Attrs::new()
                    .be32(1, REG_1)
                    .be32(2, 1)
                    .be32(3, offset)
                    .be32(4, len),
            ),
        )
    }

    /// Register 1 is in set `set` (`NFTA_LOOKUP_SET` 1, `NFTA_LOOKUP_SREG` 2).
    pub fn lookup(self, set: &str) -> Self {
        self.push("lookup", Some(Attrs::new().str(1, set).be32(2, REG_1)))
    }

    /// `ct state established,related`: `ct` (`NFTA_CT_DREG` 1, `NFTA_CT_KEY` 2 = `NFT_CT_STATE`
    /// 0), then `bitwise` with mask `NF_CT_STATE_BIT(ESTABLISHED) | NF_CT_STATE_BIT(RELATED)`
    /// = 0x6 (`NFTA_BITWISE_SREG` 1, `DREG` 2, `LEN` 3, `MASK` 4, `XOR` 5) and `cmp neq 0`.
    pub fn ct_established_or_related(self) -> Self {
        self.push("ct", Some(Attrs::new().be32(1, REG_1).be32(2, 0)))
            .bitwise(6, 0)
            .cmp(1, &0u32.to_ne_bytes())
    }

    /// `bitwise` on register 1, 4 bytes: `reg = (reg & mask) ^ xor` (`NFTA_BITWISE_SREG` 1,
    /// `DREG` 2, `LEN` 3, `MASK` 4, `XOR` 5; host-endian values as the kernel keeps them).
    fn bitwise(self, mask: u32, xor: u32) -> Self {
        self.push(
            "bitwise",
            Some(
                Attrs::new()
                    .be32(1, REG_1)
                    .be32(2, REG_1)
                    .be32(3, 4)
                    .nested(4, Attrs::new().bytes(data::VALUE, &mask.to_ne_bytes()))
                    .nested(5, Attrs::new().bytes(data::VALUE, &xor.to_ne_bytes())),
            ),
        )
    }

    /// `ct direction reply` (`NFT_CT_DIRECTION` = 1, `IP_CT_DIR_REPLY` = 1): the packet travels
    /// against the direction of the connection's first packet.
    pub fn ct_reply_direction(self) -> Self {
        self.push("ct", Some(Attrs::new().be32(1, REG_1).be32(2, 1)))
            .eq(&[1])
    }

    /// `socket cgroupv2 level LEVEL` (`NFTA_SOCKET_KEY` 1 = `NFT_SOCKET_CGROUPV2` 3,
    /// `NFTA_SOCKET_DREG` 2, `NFTA_SOCKET_LEVEL` 3) compared with the cgroup's id (its inode
    /// number on cgroupfs, a host-endian u64).
    pub fn socket_cgroup(self, level: u32, id: u64) -> Self {
        self.push(
            "socket",
            Some(Attrs::new().be32(1, 3).be32(2, REG_1).be32(3, level)),
        )
        .eq(&id.to_ne_bytes())
    }

    /// `ct mark set ct mark and 0xffff or SCOPE << 16`: the connection carries the scope whose
    /// grant let it out in the high 16 bits of its conntrack mark (`NFT_CT_MARK` 3; `ct` load
    /// with `NFTA_CT_DREG` 1 / `NFTA_CT_KEY` 2, `bitwise`, then `ct` set with `NFTA_CT_SREG` 4),
    /// so the conntrack dump tells whose grant a live flow uses. The low 16 bits stay as they are.
    pub fn ct_mark_scope(self, scope: u32) -> Self {
        self.push("ct", Some(Attrs::new().be32(1, REG_1).be32(2, 3)))
            .bitwise(CT_MARK_LOW, scope << 16)
            .push("ct", Some(Attrs::new().be32(2, 3).be32(4, REG_1)))
    }

    /// `counter`.
    pub fn counter(self) -> Self {
        self.push("counter", None)
    }

    /// A verdict (`immediate` into the verdict register; `NFTA_IMMEDIATE_DREG` 1,
    /// `NFTA_IMMEDIATE_DATA` 2).
    pub fn verdict(self, code: i32) -> Self {
        self.push(
            "immediate",
            Some(Attrs::new().be32(1, REG_VERDICT).nested(
                2,
                Attrs::new().nested(
                    data::VERDICT,
                    Attrs::new().be32(data::VERDICT_CODE, code as u32),
                ),
            )),
        )
    }

    /// `goto CHAIN`.
    pub fn goto(self, chain: &str) -> Self {
        self.push(
            "immediate",
            Some(
                Attrs::new().be32(1, REG_VERDICT).nested(
                    2,
                    Attrs::new().nested(
                        data::VERDICT,
                        Attrs::new()
                            .be32(data::VERDICT_CODE, GOTO as u32)
                            .str(data::VERDICT_CHAIN, chain),
                    ),
                ),
            ),
        )
    }

    /// `limit rate PER_SECOND/second burst BURST packets` (`NFTA_LIMIT_RATE` 1, `UNIT` 2 in
    /// seconds, `BURST` 3, `TYPE` 4 = `NFT_LIMIT_PKTS` 0): the rest of the rule runs for at most
    /// that many packets.
    pub fn limit_per_second(self, per_second: u64, burst: u32) -> Self {
        self.push(
            "limit",
            Some(
                Attrs::new()
                    .be64(1, per_second)
                    .be64(2, 1)
                    .be32(3, burst)
                    .be32(4, 0),
            ),
        )
    }

    /// `log prefix PREFIX group GROUP`: the packet goes to nfnetlink_log group `GROUP`
    /// (`NFTA_LOG_GROUP` 1, `NFTA_LOG_PREFIX` 2).
    pub fn log_group(self, prefix: &str, group: u16) -> Self {
        self.push(
            "log",
            Some(Attrs::new().bytes(1, &group.to_be_bytes()).str(2, prefix)),
        )
    }

    /// `reject with tcp reset` (`NFTA_REJECT_TYPE` 1 = `NFT_REJECT_TCP_RST` 1).
    pub fn reject_tcp_reset(self) -> Self {
        self.push("reject", Some(Attrs::new().be32(1, 1)))
    }

    /// `reject with icmpx admin-prohibited` (`NFT_REJECT_ICMPX_UNREACH` 2, code
    /// `NFT_REJECT_ICMPX_ADMIN_PROHIBITED` 3): ICMP type 3 code 13 for IPv4, ICMPv6 type 1 code 1
    /// for IPv6.
    pub fn reject_icmpx_admin_prohibited(self) -> Self {
        self.push("reject", Some(Attrs::new().be32(1, 2).bytes(2, &[3])))
    }
}
