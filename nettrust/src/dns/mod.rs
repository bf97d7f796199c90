//! The DNS front end: listeners ([`server`]), forwarding ([`upstream`]), per-query handling
//! ([`proxy`]) and what an answer may authorize ([`answer`]).

pub mod answer;
pub mod proxy;
pub mod server;
pub mod upstream;
