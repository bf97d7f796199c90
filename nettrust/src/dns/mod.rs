//! The DNS front end: listeners ([`server`]), the UDP fast path ([`fastpath`]), forwarding
//! ([`upstream`]), the DNS work of one query with no socket in it ([`handler`], [`clients`]), a
//! query start to finish in the runtime ([`proxy`]), the answer cache ([`cache`]), TLS material
//! ([`tls`]) and what an answer may authorize ([`answer`]).

pub mod answer;
pub mod cache;
pub(crate) mod clients;
pub mod fastpath;
mod framing;
pub mod handler;
pub mod proxy;
pub mod random;
pub mod server;
pub mod tls;
pub mod upstream;

#[cfg(test)]
pub(crate) mod testutil;
