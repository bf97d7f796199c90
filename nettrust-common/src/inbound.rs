//! How long a flow opened from outside ([`MAP_INBOUND`](crate::MAP_INBOUND)) lets replies out,
//! after its last inbound packet, by what was seen of it (the values follow conntrack's defaults).

/// A local socket answered (the egress program let a reply out).
pub const STATE_REPLIED: u32 = 1 << 0;
/// The peer sent again after a reply (TCP: the handshake's ACK; UDP: a two-way stream).
pub const STATE_CONFIRMED: u32 = 1 << 1;
/// The local socket sent a FIN.
pub const STATE_CLOSING: u32 = 1 << 2;

const SECOND: u64 = 1_000_000_000;
/// UDP before the peer spoke again after a reply (conntrack's `udp_timeout`): a single
/// (possibly spoofed) datagram lets the server answer for this long, however much it sends.
pub const UDP_UNREPLIED_NS: u64 = 30 * SECOND;
/// UDP both ways (conntrack's `udp_timeout_stream`).
pub const UDP_STREAM_NS: u64 = 120 * SECOND;
/// TCP after the SYN, before the peer's ACK of our SYN-ACK (conntrack's `syn_recv` is 60 s).
pub const TCP_HANDSHAKE_NS: u64 = 60 * SECOND;
/// An established TCP connection without any inbound packet (conntrack's `established`,
/// 5 days): long, because an idle SSH session or database pool must survive; bounded,
/// because the entry must not outlive a connection that vanished without FIN or RST.
pub const TCP_ESTABLISHED_NS: u64 = 5 * 24 * 3600 * SECOND;
/// TCP after the local socket's FIN (conntrack's `fin_wait`/`time_wait`, 120 s).
pub const TCP_CLOSING_NS: u64 = 120 * SECOND;

/// How long an entry of protocol `proto` in `state` stays live after its last inbound packet.
#[inline(always)]
pub const fn timeout_ns(proto: u8, state: u32) -> u64 {
    if proto == 6 {
        if state & STATE_CLOSING != 0 {
            TCP_CLOSING_NS
        } else if state & STATE_CONFIRMED != 0 {
            TCP_ESTABLISHED_NS
        } else {
            TCP_HANDSHAKE_NS
        }
    } else if state & STATE_CONFIRMED != 0 {
        UDP_STREAM_NS
    } else {
        UDP_UNREPLIED_NS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_timeouts_follow_the_flow_state() {
        assert_eq!(timeout_ns(17, 0), UDP_UNREPLIED_NS);
        assert_eq!(timeout_ns(17, STATE_REPLIED), UDP_UNREPLIED_NS);
        assert_eq!(
            timeout_ns(17, STATE_REPLIED | STATE_CONFIRMED),
            UDP_STREAM_NS
        );
        assert_eq!(timeout_ns(6, 0), TCP_HANDSHAKE_NS);
        assert_eq!(timeout_ns(6, STATE_REPLIED), TCP_HANDSHAKE_NS);
        assert_eq!(
            timeout_ns(6, STATE_REPLIED | STATE_CONFIRMED),
            TCP_ESTABLISHED_NS
        );
        assert_eq!(
            timeout_ns(6, STATE_REPLIED | STATE_CONFIRMED | STATE_CLOSING),
            TCP_CLOSING_NS
        );
    }
}
