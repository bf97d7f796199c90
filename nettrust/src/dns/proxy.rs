//! One client query, start to finish: parse, refuse clients outside `allow_clients` and
//! blacklisted names, serve from the cache (re-authorizing) or forward, accept only the matching
//! answer, authorize its addresses, and only then relay the answer (with the client's ID
//! restored, otherwise byte for byte). A failed authorization turns into SERVFAIL: the client
//! never receives an address the firewall does not allow.
//!
//! A client outside `allow_clients` gets REFUSED before anything else (no cache lookup, nothing
//! forwarded or authorized): a listener reachable from a network must not let that network
//! open the firewall. Each client (an IPv4 address, an IPv6 /64) has at most
//! [`MAX_CLIENT_IN_FLIGHT`] queries forwarded and unanswered; one more is REFUSED at once, so one client's slow queries cannot
//! take every slot of the listeners. Over UDP an answer longer than the client's EDNS0 size, or
//! than [`MAX_UDP_REPLY`], is replaced by an empty one with TC=1 (the client asks again over TCP).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use ipnet::IpNet;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};

use super::{
    cache::Cache,
    upstream::{Answer, UpstreamError, Upstreams},
};
use crate::{
    authorizer::{Authorizer, Verdict},
    error_chain,
};

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

/// Queries one client (IPv4 address, IPv6 /64) may have forwarded and unanswered at once. A
/// quarter of the UDP listener's slots ([`super::server::MAX_UDP_IN_FLIGHT`]): one client cannot
/// take them all, and a host's own resolver traffic (every local process is the one client
/// 127.0.0.1) keeps far more than the 100 in flight of a busy stub or a benchmark.
pub const MAX_CLIENT_IN_FLIGHT: usize = 256;
/// Largest UDP reply sent to a client: the EDNS0 size of DNS flag day 2020, which avoids IP
/// fragmentation (and bounds what a spoofed query can reflect).
pub const MAX_UDP_REPLY: usize = 1232;
/// At most one log line per this many seconds about refused clients.
const REFUSED_LOG_INTERVAL_SECS: u64 = 10;

/// The client an in-flight bound counts: an IPv4 address (also IPv4-mapped), or the /64 of an
/// IPv6 address, since a host picks any address in its prefix at will (SLAAC, privacy
/// addresses) and rotating them must not multiply its bound.
pub(crate) fn client_key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// Forwarded queries in flight per client ([`client_key`]).
#[derive(Debug)]
pub(crate) struct ClientSlots {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientSlots {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            counts: Mutex::default(),
        })
    }

    /// A slot for `client`, held until the returned guard is dropped; `None` at the limit.
    fn acquire(self: &Arc<Self>, client: IpAddr) -> Option<ClientSlot> {
        let client = client_key(client);
        let mut counts = self.counts.lock().expect("client slots lock");
        let count = counts.entry(client).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            slots: self.clone(),
            client,
        })
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self, client: IpAddr) -> usize {
        self.counts
            .lock()
            .expect("client slots lock")
            .get(&client_key(client))
            .copied()
            .unwrap_or(0)
    }
}

/// One forwarded query of a client; gives its slot back when dropped.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    slots: Arc<ClientSlots>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().expect("client slots lock");
        if let Some(count) = counts.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

/// The DNS proxy's query handler.
pub struct Proxy {
    upstreams: Upstreams,
    authorizer: Authorizer,
    cache: Option<Cache>,
    /// EDNS0 payload size advertised upstream over UDP.
    udp_buffer_size: u16,
    /// Clients served; others get REFUSED.
    allow_clients: Vec<IpNet>,
    /// Forwarded queries in flight per client.
    client_slots: Arc<ClientSlots>,
    /// When (seconds since `started`) a refused client was last logged, plus one (0: never).
    refused_logged: AtomicU64,
    refused_total: AtomicU64,
    started: Instant,
}

impl Proxy {
    /// A proxy forwarding to `upstreams` and authorizing through `authorizer`, without cache.
    pub fn new(upstreams: Upstreams, authorizer: Authorizer) -> Self {
        Self {
            upstreams,
            authorizer,
            cache: None,
            udp_buffer_size: super::upstream::DEFAULT_UDP_BUFFER_SIZE,
            allow_clients: crate::config::loopback_networks(),
            client_slots: ClientSlots::new(MAX_CLIENT_IN_FLIGHT),
            refused_logged: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Serves only clients in `networks` (loopback only unless told otherwise).
    pub fn with_allow_clients(mut self, networks: Vec<IpNet>) -> Self {
        self.allow_clients = networks;
        self
    }

    /// At most `limit` forwarded queries in flight per client (IPv4 address, IPv6 /64).
    pub fn with_client_in_flight_limit(mut self, limit: usize) -> Self {
        self.client_slots = ClientSlots::new(limit.max(1));
        self
    }

    /// How many queries were refused because of their client's address.
    pub fn refused_clients(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn client_slots(&self) -> &ClientSlots {
        &self.client_slots
    }

    /// Whether `client` may use the proxy (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn allows(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.allow_clients.iter().any(|net| net.contains(&client))
    }

    /// Counts a query refused because of its client and logs it, at most once per
    /// [`REFUSED_LOG_INTERVAL_SECS`].
    fn refused_client(&self, client: IpAddr) {
        let total = self.refused_total.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.started.elapsed().as_secs() + 1;
        let last = self.refused_logged.load(Ordering::Relaxed);
        if (last == 0 || now >= last + REFUSED_LOG_INTERVAL_SECS)
            && self
                .refused_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                %client,
                refused_total = total,
                "[Refused] a client outside allow_clients asked a query (logged at most every {REFUSED_LOG_INTERVAL_SECS} s)"
            );
        }
    }

    /// Serves answers from `cache` while fresh.
    pub fn with_cache(mut self, cache: Option<Cache>) -> Self {
        self.cache = cache;
        self
    }

    /// Advertises `size` as the EDNS0 UDP payload size upstream (for clients that use EDNS0).
    pub fn with_udp_buffer_size(mut self, size: u16) -> Self {
        self.udp_buffer_size = size.max(512);
        self
    }

    /// Handles one query from a loopback client (tests, fuzz targets); `None` means no reply is
    /// sent (e.g. the message was a response).
    pub async fn handle(&self, query: &[u8], transport: ClientTransport) -> Option<Vec<u8>> {
        self.handle_from(query, transport, IpAddr::V4(Ipv4Addr::LOCALHOST))
            .await
    }

    /// Handles one query from `client`; `None` means no reply is sent.
    pub async fn handle_from(
        &self,
        query: &[u8],
        transport: ClientTransport,
        client: IpAddr,
    ) -> Option<Vec<u8>> {
        let (response, result) = self.respond(query, transport, client).await;
        crate::metrics::metrics().query(transport.label(), result);
        response
    }

    /// The reply to `query` and the outcome label of the `nettrust_dns_queries_total` metric.
    async fn respond(
        &self,
        query: &[u8],
        transport: ClientTransport,
        client: IpAddr,
    ) -> (Option<Vec<u8>>, &'static str) {
        let forward = match self.prepare(query, transport, client) {
            Prepared::Reply(response, label) => return (response, label),
            Prepared::Forward(forward) => forward,
        };
        let result = self
            .upstreams
            .exchange(
                &forward.query,
                forward.question(),
                transport == ClientTransport::Udp,
            )
            .await;
        self.finish(&forward, result)
    }

    /// Everything before the upstream is asked: parsing, refusals, the cache.
    pub(crate) fn prepare(
        &self,
        query: &[u8],
        transport: ClientTransport,
        client: IpAddr,
    ) -> Prepared {
        let allowed = self.allows(client);
        let request = match Message::from_vec(query) {
            Ok(request) => request,
            Err(e) if allowed => {
                tracing::debug!("dropping an unparsable query: {e}");
                return Prepared::Reply(unparsable_query_response(query), "formerr");
            }
            Err(_) => {
                self.refused_client(client);
                return Prepared::Reply(None, "refused_client");
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return Prepared::Reply(None, "dropped");
        }
        if !allowed {
            self.refused_client(client);
            return Prepared::Reply(
                error_response(&request, ResponseCode::Refused),
                "refused_client",
            );
        }
        if request.metadata.op_code != OpCode::Query {
            return Prepared::Reply(error_response(&request, ResponseCode::NotImp), "notimp");
        }
        let [question] = request.queries.as_slice() else {
            return Prepared::Reply(error_response(&request, ResponseCode::FormErr), "formerr");
        };
        let blacklist = self.authorizer.blacklist();
        if blacklist.blocks_domain(&question.name) {
            tracing::info!(question = %question.name, "[Blacklisted] domain");
            return Prepared::Reply(
                error_response(&request, blacklist.response.rcode()),
                "blacklisted",
            );
        }
        let client_limit = match transport {
            ClientTransport::Udp => usize::from(request.max_payload()).min(MAX_UDP_REPLY),
            ClientTransport::Tcp | ClientTransport::Tls => usize::MAX,
        };
        if let Some(cache) = &self.cache
            && let Some(cached) = cache.get(question, request.metadata.id, Instant::now())
        {
            tracing::debug!(question = %question.name, "[Cache] hit");
            let Ok(bytes) = cached.to_vec() else {
                return Prepared::Reply(
                    error_response(&request, ResponseCode::ServFail),
                    "servfail",
                );
            };
            if bytes.len() > client_limit {
                return Prepared::Reply(truncated_response(&request), "truncated");
            }
            // Every hit renews the firewall entries before the client sees the addresses.
            return match self.authorized(&request, question, &cached) {
                Ok(()) => Prepared::Reply(Some(bytes), "cached"),
                Err(rcode) => Prepared::Reply(error_response(&request, rcode), rcode_label(rcode)),
            };
        }
        let Some(slot) = self.client_slots.acquire(client) else {
            tracing::debug!(%client, "{MAX_CLIENT_IN_FLIGHT} queries of this client in flight, refusing one");
            return Prepared::Reply(
                error_response(&request, ResponseCode::Refused),
                "client_busy",
            );
        };
        let query = self.forwarded_query(query, &request, transport);
        Prepared::Forward(Forward {
            request,
            query,
            client_limit,
            _slot: slot,
        })
    }

    /// Everything after the upstream answered (or failed): checks, authorization, the cache,
    /// and the reply with the client's ID.
    pub(crate) fn finish(
        &self,
        forward: &Forward,
        result: Result<Answer, UpstreamError>,
    ) -> (Option<Vec<u8>>, &'static str) {
        let (request, question) = (&forward.request, forward.question());
        let (answer_bytes, answer) = match result {
            Ok(ok) => ok,
            Err(e) => {
                log_upstream_error(&question.name, &e);
                return (error_response(request, ResponseCode::ServFail), "servfail");
            }
        };
        if answer_bytes.len() > forward.client_limit {
            // The client asks again over TCP; that answer is the one authorized.
            return (truncated_response(request), "truncated");
        }
        if answer.metadata.truncation {
            // Only possible if even TCP gave a truncated answer: relay it (within the client's
            // size, checked above), authorize nothing.
            return (
                Some(with_id(answer_bytes, request.metadata.id)),
                "truncated",
            );
        }
        if let Err(rcode) = self.authorized(request, question, &answer) {
            return (error_response(request, rcode), rcode_label(rcode));
        }
        if let Some(cache) = &self.cache {
            cache.insert(question, &answer, Instant::now());
        }
        (Some(with_id(answer_bytes, request.metadata.id)), "answered")
    }

    /// Goes on with `forward` after its first UDP attempt (made by the fast path) did not
    /// settle it.
    pub(crate) async fn retry(
        &self,
        forward: &Forward,
        retry: Retry,
    ) -> (Option<Vec<u8>>, &'static str) {
        let (query, question) = (&forward.query, forward.question());
        let result = match retry {
            Retry::Anew => self.upstreams.exchange(query, question, true).await,
            Retry::Failed(server, error) => {
                self.upstreams
                    .exchange_after(query, question, server, error)
                    .await
            }
            Retry::Truncated(server) => {
                self.upstreams
                    .exchange_truncated(server, query, question)
                    .await
            }
        };
        self.finish(forward, result)
    }

    /// The upstreams queries are forwarded to.
    pub(crate) fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// Authorizes `answer`; `Err` carries the rcode the client gets instead.
    fn authorized(
        &self,
        request: &Message,
        question: &Query,
        answer: &Message,
    ) -> Result<(), ResponseCode> {
        match self.authorizer.authorize(question, answer) {
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
            && self.upstreams.uses_udp()
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

/// What [`Proxy::prepare`] decided.
pub(crate) enum Prepared {
    /// Answered without the upstream (or dropped: `None`), with the metric label.
    Reply(Option<Vec<u8>>, &'static str),
    /// To be forwarded.
    Forward(Forward),
}

/// Why a query the fast path sent goes on in the runtime.
pub(crate) enum Retry {
    /// It was not sent: every server is in back-off.
    Anew,
    /// This server failed it (already recorded).
    Failed(usize, UpstreamError),
    /// This server's UDP answer was truncated.
    Truncated(usize),
}

/// A query on its way to the upstream.
pub(crate) struct Forward {
    /// The client's query, parsed; it has exactly one question.
    request: Message,
    /// The bytes to send upstream (their ID is replaced per attempt).
    pub(crate) query: Vec<u8>,
    /// Largest answer the client takes.
    client_limit: usize,
    /// The client's in-flight slot, given back when the query is over.
    _slot: ClientSlot,
}

impl Forward {
    /// The query's only question.
    pub(crate) fn question(&self) -> &Query {
        &self.request.queries[0]
    }
}

/// The metric label of a refusal: SERVFAIL after a firewall error, anything else is the blacklist.
fn rcode_label(rcode: ResponseCode) -> &'static str {
    if rcode == ResponseCode::ServFail {
        "servfail"
    } else {
        "blacklisted"
    }
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

fn log_upstream_error(qname: &hickory_proto::rr::Name, e: &UpstreamError) {
    tracing::warn!(
        question = %qname,
        error = %error_chain(e),
        "[Upstream Error] answering SERVFAIL"
    );
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
