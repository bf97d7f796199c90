//! One client query, start to finish, in the runtime: the [`Handler`]'s step, the exchange over
//! the upstreams' TCP/DoT connections, the handler's verdict on the answer. Used by the TCP and
//! DoT listeners, by the UDP engine for what it hands over (truncated answers, TCP/DoT
//! upstreams), and by tests and fuzz targets (which reach the upstreams over TCP whatever the
//! client's transport: the UDP upstream exchange is the UDP engine's alone).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;

pub use super::handler::{ClientTransport, MAX_UDP_REPLY, error_response};
use super::{
    cache::Cache,
    handler::{Forward, Handler, Reply, Step},
    upstream::{Answer, UpstreamError, Upstreams},
};
use crate::authorizer::Authorizer;

/// The DNS proxy's query handler with its upstreams.
pub struct Proxy {
    handler: Handler,
    upstreams: Upstreams,
}

impl Proxy {
    /// A proxy forwarding to `upstreams` and authorizing through `authorizer`, without cache.
    pub fn new(upstreams: Upstreams, authorizer: Authorizer) -> Self {
        Self {
            handler: Handler::new(authorizer, upstreams.uses_udp()),
            upstreams,
        }
    }

    /// Serves only clients in `networks` (loopback only unless told otherwise).
    pub fn with_allow_clients(mut self, networks: Vec<IpNet>) -> Self {
        self.handler.set_allow_clients(networks);
        self
    }

    /// At most `limit` forwarded queries in flight per client (IPv4 address, IPv6 /64).
    pub fn with_client_in_flight_limit(mut self, limit: usize) -> Self {
        self.handler.set_client_in_flight_limit(limit);
        self
    }

    /// Serves answers from `cache` while fresh.
    pub fn with_cache(mut self, cache: Option<Cache>) -> Self {
        self.handler.set_cache(cache);
        self
    }

    /// Advertises `size` as the EDNS0 UDP payload size upstream (for clients that use EDNS0).
    pub fn with_udp_buffer_size(mut self, size: u16) -> Self {
        self.handler.set_udp_buffer_size(size);
        self
    }

    /// How many queries were refused because of their client's address.
    pub fn refused_clients(&self) -> u64 {
        self.handler.refused_clients()
    }

    /// Whether `client` may use the proxy (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn allows(&self, client: IpAddr) -> bool {
        self.handler.allows(client)
    }

    #[cfg(test)]
    pub(crate) fn client_slots(&self) -> &super::clients::ClientSlots {
        self.handler.clients().slots()
    }

    /// The DNS work of every query.
    pub(crate) fn handler(&self) -> &Handler {
        &self.handler
    }

    /// The upstreams queries are forwarded to.
    pub(crate) fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// Handles one query from a loopback client (tests, fuzz targets); `None` means no reply is
    /// sent (e.g. the message was a response).
    pub async fn handle(&self, query: &[u8], transport: ClientTransport) -> Option<Vec<u8>> {
        let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53_000);
        self.handle_from(query, transport, loopback).await
    }

    /// Handles one query from `client`; `None` means no reply is sent.
    pub async fn handle_from(
        &self,
        query: &[u8],
        transport: ClientTransport,
        client: SocketAddr,
    ) -> Option<Vec<u8>> {
        let reply = match self.handler.step(query, transport, client) {
            Step::Reply(reply) => reply,
            Step::Forward(forward) => {
                let result = self
                    .upstreams
                    .exchange(forward.query(), forward.question())
                    .await;
                self.settle(&forward, result)
            }
        };
        reply.outcome.count(transport);
        reply.bytes
    }

    /// The reply once the upstreams answered `forward` or failed.
    fn settle(&self, forward: &Forward, result: Result<Answer, UpstreamError>) -> Reply {
        match result {
            Ok((bytes, message)) => self.handler.relay(forward, bytes, &message),
            Err(e) => self.handler.failed(forward, &e),
        }
    }

    /// Forwards a UDP client's query over TCP or DoT for the UDP engine.
    pub(crate) async fn retry(&self, forward: &Forward, retry: Retry) -> Reply {
        let (query, question) = (forward.query(), forward.question());
        let result = match retry {
            Retry::Stream => self.upstreams.exchange(query, question).await,
            Retry::Truncated(server) => {
                self.upstreams
                    .exchange_truncated(server, query, question)
                    .await
            }
        };
        self.settle(forward, result)
    }
}

/// Why a UDP client's query goes on in the runtime.
pub(crate) enum Retry {
    /// The upstreams are reached over TCP or DoT.
    Stream,
    /// This server's UDP answer was truncated: ask it over TCP (then the others).
    Truncated(usize),
}

#[cfg(test)]
mod tests;
