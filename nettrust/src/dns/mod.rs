//! The DNS front end, top to bottom: the engines that own the sockets — [`udp`] (the UDP
//! listener and upstream UDP exchanges on their own threads), [`server`] (the TCP and DoT
//! listeners) and [`upstream`] (the upstream servers' health and pipelined TCP/DoT
//! connections), joined in the runtime by [`proxy`] — then what they share: [`handler`] (the
//! DNS work of one query, no socket in it) with [`clients`] (who may ask, how much) and
//! [`cache`], [`answer`] (what an answer may authorize), [`random`] (RFC 5452 IDs and ports),
//! `framing` (TCP/DoT length prefixes) and [`tls`] (certificates).

pub mod answer;
pub mod cache;
pub(crate) mod clients;
mod framing;
pub mod handler;
pub mod proxy;
pub mod random;
pub mod server;
pub(crate) mod servers;
pub mod tls;
pub mod udp;
pub mod upstream;

#[cfg(test)]
pub(crate) mod testutil;
