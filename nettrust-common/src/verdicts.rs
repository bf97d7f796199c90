//! The programs' verdicts, the flags of a host entry and the indexes of the per-verdict counters.

/// `cgroup_skb` return value that lets the packet through.
pub const VERDICT_ALLOW: i32 = 1;
/// `cgroup_skb` return value that drops the packet (the sender sees `EPERM`).
pub const VERDICT_DROP: i32 = 0;

/// The host is whitelisted (configuration, listen/forward address): never expires.
pub const FLAG_WHITELISTED: u32 = 1 << 0;
/// The host was authorized by a DNS answer.
pub const FLAG_AUTHORIZED: u32 = 1 << 1;

/// Packets allowed because the destination is in a host map.
pub const STAT_ALLOW_HOST: u32 = 0;
/// Packets allowed because the destination is in a whitelisted network.
pub const STAT_ALLOW_NET: u32 = 1;
/// Packets dropped: destination neither authorized nor whitelisted.
pub const STAT_DROP: u32 = 2;
/// Packets let through because they are not IPv4/IPv6 (no destination address to judge).
pub const STAT_PASS_NON_IP: u32 = 3;
/// Packets dropped because their header could not be read (fail closed).
pub const STAT_ERROR: u32 = 4;
/// Packets dropped because the destination's authorization had expired.
pub const STAT_DROP_EXPIRED: u32 = 5;
/// Egress packets allowed because they answer a flow opened from outside (a server's replies).
pub const STAT_ALLOW_INBOUND_REPLY: u32 = 6;
/// Inbound packets dropped by `--firewall-drop-input`.
pub const STAT_DROP_INPUT: u32 = 7;
/// Packets enforcement would have dropped, let through because their cgroup's policy is in
/// audit mode.
pub const STAT_AUDIT: u32 = 8;
/// Number of counters in [`MAP_STATS`](crate::MAP_STATS).
pub const STAT_COUNT: u32 = 9;
