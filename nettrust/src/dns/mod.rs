//! The DNS front end: listeners ([`server`]), the UDP fast path ([`fastpath`]), forwarding ([`upstream`]), per-query handling
//! ([`proxy`]), the answer cache ([`cache`]), TLS material ([`tls`]) and what an answer may
//! authorize ([`answer`]).

pub mod answer;
pub mod cache;
pub mod fastpath;
pub mod proxy;
pub mod server;
pub mod tls;
pub mod upstream;

#[cfg(test)]
pub(crate) mod testutil;
