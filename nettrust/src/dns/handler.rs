//! One client query's DNS work, with no socket in it: query bytes become a [`Step`] (reply now,
//! or forward this upstream query), an upstream answer's bytes become an [`Answered`] (the
//! reply, a retry over TCP, or a rejected datagram to ignore), an upstream failure becomes
//! SERVFAIL. The engines ([`super::udp`], [`super::upstream`]) only move bytes and time attempts;
//! every decision about what a client receives is taken here, once for every transport.
//!
//! Order of the checks: parse (FORMERR for a readable header, nothing for garbage or a
//! response), clients outside `allow_clients` (REFUSED before the cache or the upstream is
//! touched: a listener reachable from a network must not let that network open the firewall),
//! opcode (NOTIMP), one question (FORMERR), the domain blacklist, the cache (a hit is
//! re-authorized, never served blind), the client's in-flight bound (REFUSED), then forward.
//! An upstream answer is accepted only when it matches the query (ID, QR=1, the question); a
//! truncated UDP answer authorizes nothing and is asked again over TCP; the addresses are
//! authorized before the answer is relayed (with the client's ID restored, otherwise byte for
//! byte), and a failed authorization turns into SERVFAIL: the client never receives an address
//! the firewall does not allow. Over UDP an answer longer than the client's EDNS0 size, or than
//! [`MAX_UDP_REPLY`], is replaced by an empty one with TC=1 (the client asks again over TCP).

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use ipnet::IpNet;

pub use super::answer::Rejection;
use super::{
    answer::accept,
    cache::Cache,
    clients::{ClientSlot, Clients},
};
use crate::{
    authorizer::{Authorizer, Verdict},
    error_chain,
    firewall::{Scope, Transport},
    scopes::Question,
};

/// Largest UDP reply sent to a client: the EDNS0 size of DNS flag day 2020, which avoids IP
/// fragmentation (and bounds what a spoofed query can reflect).
pub const MAX_UDP_REPLY: usize = 1232;
/// EDNS0 UDP payload size advertised upstream by default (DNS flag day 2020: avoids IP
/// fragmentation).
pub const DEFAULT_UDP_BUFFER_SIZE: u16 = 1232;

/// How the client's query arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTransport {
    /// UDP: answers are limited to the client's advertised payload size.
    Udp,
    /// TCP.
    Tcp,
    /// DNS over TLS (a TCP transport).
    Tls,
}

impl ClientTransport {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// How a query ended: the `result` label of `nettrust_dns_queries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream's answer, authorized and relayed.
    Answered,
    /// A cached answer, re-authorized.
    Cached,
    /// An empty TC=1 answer (too long for the client), or a truncated answer relayed as is.
    Truncated,
    /// SERVFAIL: the upstream failed, or an authorization did.
    ServFail,
    /// The blacklist response.
    Blacklisted,
    /// The blacklist response: the client's policy does not allow the name.
    NotAllowed,
    /// FORMERR: an unparsable query, or not exactly one question.
    FormErr,
    /// NOTIMP: an opcode other than QUERY.
    NotImp,
    /// REFUSED, or nothing: a client outside `allow_clients`.
    RefusedClient,
    /// REFUSED: the client has its bound of queries in flight.
    ClientBusy,
    /// Nothing: the message was not a query.
    Dropped,
}

impl Outcome {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Cached => "cached",
            Self::Truncated => "truncated",
            Self::ServFail => "servfail",
            Self::Blacklisted => "blacklisted",
            Self::NotAllowed => "not_allowed",
            Self::FormErr => "formerr",
            Self::NotImp => "notimp",
            Self::RefusedClient => "refused_client",
            Self::ClientBusy => "client_busy",
            Self::Dropped => "dropped",
        }
    }

    /// Counts a query that ended this way in `nettrust_dns_queries_total`.
    pub fn count(self, transport: ClientTransport) {
        crate::metrics::metrics().query(transport.label(), self.label());
    }
}

/// What the client gets.
#[derive(Debug)]
pub struct Reply {
    /// The message to send; `None`: nothing is sent.
    pub bytes: Option<Vec<u8>>,
    /// How the query ended.
    pub outcome: Outcome,
}

impl Reply {
    fn new(bytes: Option<Vec<u8>>, outcome: Outcome) -> Self {
        Self { bytes, outcome }
    }
}

/// What to do with a client's query.
#[derive(Debug)]
pub enum Step {
    /// Reply at once, without the upstream (refusals, errors, the cache).
    Reply(Reply),
    /// Ask the upstream.
    Forward(Forward),
}

/// What an upstream datagram or message means for the query it claims to answer.
#[derive(Debug)]
pub enum Answered {
    /// The query is over: send this.
    Reply(Reply),
    /// A truncated UDP answer: nothing is taken from it, the same server is asked over TCP.
    RetryOverTcp,
    /// Not the answer to this query (forged, stale, garbled): ignore it and keep waiting.
    Rejected(Rejection),
}

/// A query on its way to the upstream.
#[derive(Debug)]
pub struct Forward {
    /// The client's query, parsed; it has exactly one question.
    request: Message,
    /// The bytes to send upstream; an engine writes its own ID over the first two.
    query: Vec<u8>,
    /// Largest answer the client takes.
    client_limit: usize,
    /// Whose cgroups the answer opens its addresses for.
    scope: Scope,
    /// The client's in-flight slot, given back when the query is over.
    _slot: ClientSlot,
}

impl Forward {
    /// The query's only question.
    pub fn question(&self) -> &Query {
        &self.request.queries[0]
    }

    /// The upstream query, with `id` written in.
    pub fn query_with_id(&mut self, id: u16) -> &[u8] {
        self.query[..2].copy_from_slice(&id.to_be_bytes());
        &self.query
    }

    /// The upstream query as last written.
    pub fn query(&self) -> &[u8] {
        &self.query
    }
}

/// The DNS work of every query: refusals, the cache, answer checks, authorization.
pub struct Handler {
    authorizer: Authorizer,
    cache: Option<Cache>,
    /// Whether the upstream is asked over UDP (for UDP clients).
    udp_upstream: bool,
    /// EDNS0 payload size advertised upstream over UDP.
    udp_buffer_size: u16,
    clients: Clients,
}

impl Handler {
    /// A handler authorizing through `authorizer`, without cache, serving loopback clients;
    /// `udp_upstream`: UDP clients' queries go upstream over UDP.
    pub fn new(authorizer: Authorizer, udp_upstream: bool) -> Self {
        Self {
            authorizer,
            cache: None,
            udp_upstream,
            udp_buffer_size: DEFAULT_UDP_BUFFER_SIZE,
            clients: Clients::new(),
        }
    }

    /// Serves only clients in `networks`.
    pub fn set_allow_clients(&mut self, networks: Vec<IpNet>) {
        self.clients.set_allowed(networks);
    }

    /// At most `limit` forwarded queries in flight per client (IPv4 address, IPv6 /64).
    pub fn set_client_in_flight_limit(&mut self, limit: usize) {
        self.clients.set_in_flight_limit(limit);
    }

    /// Serves answers from `cache` while fresh.
    pub fn set_cache(&mut self, cache: Option<Cache>) {
        self.cache = cache;
    }

    /// Advertises `size` as the EDNS0 UDP payload size upstream (for clients that use EDNS0).
    pub fn set_udp_buffer_size(&mut self, size: u16) {
        self.udp_buffer_size = size.max(512);
    }

    /// Whether `client` may use the proxy.
    pub fn allows(&self, client: IpAddr) -> bool {
        self.clients.allows(client)
    }

    /// How many queries were refused because of their client's address.
    pub fn refused_clients(&self) -> u64 {
        self.clients.refused_total()
    }

    #[cfg(test)]
    pub(crate) fn clients(&self) -> &Clients {
        &self.clients
    }

    /// What to do with `query` from `client`.
    pub fn step(&self, query: &[u8], transport: ClientTransport, client: SocketAddr) -> Step {
        match self.admit(query, client.ip()) {
            Ok(request) => self.decide(query, request, transport, client),
            Err(reply) => Step::Reply(reply),
        }
    }

    /// The parsed query of a served client, or the reply that ends it.
    fn admit(&self, query: &[u8], client: IpAddr) -> Result<Message, Reply> {
        let allowed = self.clients.allows(client);
        let request = match Message::from_vec(query) {
            Ok(request) => request,
            Err(e) if allowed => {
                tracing::debug!("dropping an unparsable query: {e}");
                return Err(Reply::new(
                    unparsable_query_response(query),
                    Outcome::FormErr,
                ));
            }
            Err(_) => {
                self.clients.refused(client);
                return Err(Reply::new(None, Outcome::RefusedClient));
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return Err(Reply::new(None, Outcome::Dropped));
        }
        if !allowed {
            self.clients.refused(client);
            return Err(error_reply(
                &request,
                ResponseCode::Refused,
                Outcome::RefusedClient,
            ));
        }
        if request.metadata.op_code != OpCode::Query {
            return Err(error_reply(&request, ResponseCode::NotImp, Outcome::NotImp));
        }
        if request.queries.len() != 1 {
            return Err(error_reply(
                &request,
                ResponseCode::FormErr,
                Outcome::FormErr,
            ));
        }
        Ok(request)
    }

    /// The step for a served client's query with one question.
    fn decide(
        &self,
        query: &[u8],
        request: Message,
        transport: ClientTransport,
        client: SocketAddr,
    ) -> Step {
        let question = &request.queries[0];
        let blacklist = self.authorizer.blacklist();
        if blacklist.blocks_domain(&question.name) {
            tracing::info!(question = %question.name, "[Blacklisted] domain");
            let rcode = blacklist.response.rcode();
            return Step::Reply(error_reply(&request, rcode, Outcome::Blacklisted));
        }
        let Some(scope) = self.scope_of(&request, transport, client) else {
            let rcode = blacklist.response.rcode();
            return Step::Reply(error_reply(&request, rcode, Outcome::NotAllowed));
        };
        let client_limit = match transport {
            ClientTransport::Udp => usize::from(request.max_payload()).min(MAX_UDP_REPLY),
            ClientTransport::Tcp | ClientTransport::Tls => usize::MAX,
        };
        if let Some(reply) = self.cached(&request, client_limit, scope) {
            return Step::Reply(reply);
        }
        let Some(slot) = self.clients.acquire(client.ip()) else {
            tracing::debug!(%client, "the client's bound of queries is in flight, refusing one");
            return Step::Reply(error_reply(
                &request,
                ResponseCode::Refused,
                Outcome::ClientBusy,
            ));
        };
        let query = self.forwarded_query(query, &request, transport);
        Step::Forward(Forward {
            request,
            query,
            client_limit,
            scope,
            _slot: slot,
        })
    }

    /// The scope the answer to `request` authorizes for, from the policy of the client's cgroup
    /// as the data path recorded it; `None`: the policy does not allow the question (logged).
    /// Without `[[policy]]` sections nothing is looked up: the default scope.
    fn scope_of(
        &self,
        request: &Message,
        transport: ClientTransport,
        client: SocketAddr,
    ) -> Option<Scope> {
        let policies = self.authorizer.policies();
        if policies.is_empty() {
            return Some(Scope::DEFAULT);
        }
        let transport = match transport {
            ClientTransport::Udp => Transport::Udp,
            ClientTransport::Tcp | ClientTransport::Tls => Transport::Tcp,
        };
        let who = self.authorizer.client_scope(transport, client);
        let question = &request.queries[0];
        let verdict = policies.judge(who, &question.name);
        match verdict {
            Question::Allowed(scope) => return Some(scope),
            Question::Audited(scope) => tracing::info!(
                policy = policies.name(scope),
                question = %question.name,
                qtype = %question.query_type,
                %client,
                "[Audit] not allowed question"
            ),
            Question::NotAllowed(scope) => tracing::info!(
                policy = policies.name(scope),
                question = %question.name,
                qtype = %question.query_type,
                %client,
                "[Not Allowed]"
            ),
        }
        verdict.scope()
    }

    /// The reply from the cache, if it holds a fresh answer; every hit renews the firewall
    /// entries before the client sees the addresses.
    fn cached(&self, request: &Message, client_limit: usize, scope: Scope) -> Option<Reply> {
        let question = &request.queries[0];
        let cached = self
            .cache
            .as_ref()?
            .get(question, request.metadata.id, Instant::now())?;
        tracing::debug!(question = %question.name, "[Cache] hit");
        let Ok(bytes) = cached.to_vec() else {
            return Some(error_reply(
                request,
                ResponseCode::ServFail,
                Outcome::ServFail,
            ));
        };
        if bytes.len() > client_limit {
            return Some(Reply::new(truncated_response(request), Outcome::Truncated));
        }
        Some(match self.authorized(scope, request, question, &cached) {
            Ok(()) => Reply::new(Some(bytes), Outcome::Cached),
            Err(rcode) => error_reply(request, rcode, rcode_outcome(rcode)),
        })
    }

    /// What `bytes`, received for `forward` sent under `id`, means; `over_udp`: a truncated
    /// answer is asked again over TCP (over TCP it is relayed, authorizing nothing).
    pub fn answer(&self, forward: &Forward, id: u16, bytes: &[u8], over_udp: bool) -> Answered {
        let message = match accept(bytes, id, forward.question()) {
            Ok(message) => message,
            Err(rejection) => return Answered::Rejected(rejection),
        };
        if over_udp && message.metadata.truncation {
            return Answered::RetryOverTcp;
        }
        Answered::Reply(self.relay(forward, bytes.to_vec(), &message))
    }

    /// The reply for an accepted upstream `answer` (its bytes `bytes`): the checks on size and
    /// truncation, authorization, the cache, the client's ID.
    pub fn relay(&self, forward: &Forward, bytes: Vec<u8>, answer: &Message) -> Reply {
        let (request, question) = (&forward.request, forward.question());
        if bytes.len() > forward.client_limit {
            // The client asks again over TCP; that answer is the one authorized.
            return Reply::new(truncated_response(request), Outcome::Truncated);
        }
        if answer.metadata.truncation {
            // Only possible if even TCP gave a truncated answer: relay it (within the client's
            // size, checked above), authorize nothing.
            return Reply::new(
                Some(with_id(bytes, request.metadata.id)),
                Outcome::Truncated,
            );
        }
        if let Err(rcode) = self.authorized(forward.scope, request, question, answer) {
            return error_reply(request, rcode, rcode_outcome(rcode));
        }
        if let Some(cache) = &self.cache {
            cache.insert(question, answer, Instant::now());
        }
        Reply::new(Some(with_id(bytes, request.metadata.id)), Outcome::Answered)
    }

    /// SERVFAIL for `forward`, whose upstreams all failed with `error` last.
    pub fn failed(&self, forward: &Forward, error: &(dyn std::error::Error + 'static)) -> Reply {
        tracing::warn!(
            question = %forward.question().name,
            error = %error_chain(error),
            "[Upstream Error] answering SERVFAIL"
        );
        error_reply(&forward.request, ResponseCode::ServFail, Outcome::ServFail)
    }

    /// Authorizes `answer`; `Err` carries the rcode the client gets instead.
    fn authorized(
        &self,
        scope: Scope,
        request: &Message,
        question: &Query,
        answer: &Message,
    ) -> Result<(), ResponseCode> {
        match self.authorizer.authorize(scope, question, answer) {
            Ok(Verdict::Relay) => Ok(()),
            Ok(Verdict::Blocked(_)) => Err(self.authorizer.blacklist().response.rcode()),
            Err(e) => {
                tracing::error!(
                    question = %question.name,
                    id = request.metadata.id,
                    error = %error_chain(&e),
                    "[Firewall Error] answering SERVFAIL"
                );
                Err(ResponseCode::ServFail)
            }
        }
    }

    /// The query as sent upstream: over UDP, an EDNS0 payload size different from ours is
    /// replaced by ours (the answer is cut to the client's size on the way back).
    fn forwarded_query(
        &self,
        query: &[u8],
        request: &Message,
        transport: ClientTransport,
    ) -> Vec<u8> {
        if transport == ClientTransport::Udp
            && self.udp_upstream
            && let Some(edns) = &request.edns
            && edns.max_payload() != self.udp_buffer_size
        {
            let mut rewritten = request.clone();
            if let Some(edns) = rewritten.edns.as_mut() {
                edns.set_max_payload(self.udp_buffer_size);
            }
            if let Ok(bytes) = rewritten.to_vec() {
                return bytes;
            }
        }
        query.to_vec()
    }
}

/// The outcome of a refusal: SERVFAIL after a firewall error, anything else is the blacklist.
fn rcode_outcome(rcode: ResponseCode) -> Outcome {
    if rcode == ResponseCode::ServFail {
        Outcome::ServFail
    } else {
        Outcome::Blacklisted
    }
}

fn error_reply(request: &Message, rcode: ResponseCode, outcome: Outcome) -> Reply {
    Reply::new(error_response(request, rcode), outcome)
}

/// An empty answer with TC=1 (RFC 1035 §4.2.1): the client retries over TCP.
fn truncated_response(request: &Message) -> Option<Vec<u8>> {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.truncation = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.iter().cloned());
    response.to_vec().ok()
}

/// Puts the client's ID back into a relayed message.
fn with_id(mut message: Vec<u8>, id: u16) -> Vec<u8> {
    message[..2].copy_from_slice(&id.to_be_bytes());
    message
}

/// A response to `request` that carries only `rcode` and the question. A request with several
/// questions (malformed: RFC 9619) gets the header alone: copying them back would let a spoofed
/// query reflect kilobytes over UDP, past [`MAX_UDP_REPLY`].
pub fn error_response(request: &Message, rcode: ResponseCode) -> Option<Vec<u8>> {
    let mut response = Message::error_msg(request.metadata.id, request.metadata.op_code, rcode);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    if let [question] = request.queries.as_slice() {
        response.add_query(question.clone());
    }
    response.to_vec().ok()
}

/// FORMERR for a query whose header is readable but whose body is not (RFC 1035 §4.1.1); nothing
/// for garbage shorter than a header or for responses.
fn unparsable_query_response(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
        .to_vec()
        .ok()
}

#[cfg(test)]
mod tests;
