//! The upstream servers both engines share: their addresses in the configured order, the time
//! one attempt may take, each server's health, the order of failover, and the count of replies
//! that did not answer the query they claimed to.
//!
//! Servers are tried in the configured order. A server goes into back-off (skipped for
//! [`HEALTH_BACKOFF`] unless every server is in back-off) only after it failed (timeout, error,
//! unusable answer) [`FAILURES_TO_BACK_OFF`] distinct questions within [`FAILURE_WINDOW`] with
//! no answer in between: one slow or broken zone, asked any number of times, fails only the
//! queries for it and never moves other clients' queries to the next server (which may not
//! filter like the first). Any answer clears the record, and a failed query does not count at
//! all when the server answered anything after it was sent (the server is alive, the question
//! is slow): several slow questions asked at once do not bench a server that answers others. A
//! server coming out of back-off is on probation: its next failure puts it back at once, so a
//! dead server costs one timeout per back-off period, not three.

use std::{
    hash::{Hash as _, Hasher as _},
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hickory_proto::op::Query;
use tokio::time::Instant;

use super::answer::Rejection;

/// How long a failing server is skipped.
pub const HEALTH_BACKOFF: Duration = Duration::from_secs(5);
/// Distinct questions a server must fail, with no answer in between, to go into back-off.
pub const FAILURES_TO_BACK_OFF: usize = 3;
/// How far back those failures count.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);

/// Errors of one upstream exchange.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A socket operation failed.
    #[error("upstream {addr}: {what}")]
    Io {
        /// The upstream.
        addr: SocketAddr,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No acceptable answer arrived in time.
    #[error("upstream {addr}: no answer within {timeout:?}")]
    Timeout {
        /// The upstream.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// The upstream sent something that is not the answer to our query.
    #[error("upstream {addr}: unusable answer: {reason}")]
    BadAnswer {
        /// The upstream.
        addr: SocketAddr,
        /// Why it was refused.
        reason: String,
    },
    /// The pipelined connection closed before the answer arrived.
    #[error("upstream {addr}: connection closed")]
    Closed {
        /// The upstream.
        addr: SocketAddr,
    },
}

/// Counts a refused upstream reply in `nettrust_rejected_answers_total`.
fn count_rejected(result: &'static str) {
    crate::metrics::metrics()
        .rejected_answers
        .get_or_create(&crate::metrics::ResultLabel { result })
        .inc();
}

/// A server's failures since its last answer, and its back-off.
#[derive(Debug, Default)]
struct Health {
    /// Skipped until then.
    down_until: Option<Instant>,
    /// The last failure of each distinct question (a hash of it) since the last answer, oldest
    /// first; at most [`FAILURES_TO_BACK_OFF`] entries.
    failures: Vec<(Instant, u64)>,
    /// Out of a back-off with no answer since: the next failure starts another at once.
    probation: bool,
    /// When the server last answered.
    last_answer: Option<Instant>,
}

impl Health {
    /// Records a failure at `now` of `question`, sent at `sent`; `true` when it starts a
    /// back-off.
    fn failed(&mut self, question: u64, sent: Instant, now: Instant) -> bool {
        if self.last_answer.is_some_and(|answered| answered >= sent) {
            // The server answered since this query left: it is alive, the question is slow.
            return false;
        }
        if self.down_until.is_some_and(|until| until > now) {
            // Already in back-off (tried because every server is): extend nothing.
            return false;
        }
        if self.probation {
            self.failures.clear();
            self.down_until = Some(now + HEALTH_BACKOFF);
            return true;
        }
        self.failures
            .retain(|&(at, q)| q != question && now.duration_since(at) < FAILURE_WINDOW);
        self.failures.push((now, question));
        if self.failures.len() >= FAILURES_TO_BACK_OFF {
            self.failures.clear();
            self.down_until = Some(now + HEALTH_BACKOFF);
            self.probation = true;
            return true;
        }
        false
    }

    fn succeeded(&mut self, now: Instant) {
        *self = Self {
            last_answer: Some(now),
            ..Self::default()
        };
    }

    fn healthy_at(&self, now: Instant) -> bool {
        self.down_until.is_none_or(|until| until <= now)
    }
}

/// A question's identity for counting distinct failures: name (case-insensitive), type, class.
fn question_key(question: &Query) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    question.name().to_lowercase().hash(&mut hasher);
    u16::from(question.query_type()).hash(&mut hasher);
    u16::from(question.query_class()).hash(&mut hasher);
    hasher.finish()
}

/// The upstream servers and their health.
pub(crate) struct Servers {
    addrs: Vec<SocketAddr>,
    health: Vec<Mutex<Health>>,
    timeout: Duration,
    /// Replies dropped because they did not answer our query (forgeries, stale or garbled).
    dropped: AtomicU64,
}

impl Servers {
    /// Servers at `addrs`, tried in this order; each attempt gives up after `timeout`.
    pub(crate) fn new(addrs: &[SocketAddr], timeout: Duration) -> Self {
        Self {
            addrs: addrs.to_vec(),
            health: addrs.iter().map(|_| Mutex::default()).collect(),
            timeout,
            dropped: AtomicU64::new(0),
        }
    }

    /// How many servers there are.
    pub(crate) fn len(&self) -> usize {
        self.addrs.len()
    }

    /// The servers' addresses, in order.
    pub(crate) fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Server `index`'s address.
    pub(crate) fn addr(&self, index: usize) -> SocketAddr {
        self.addrs[index]
    }

    /// How long one attempt waits for its answer.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How many upstream replies were dropped as not answering the query they claimed to.
    pub(crate) fn dropped_replies(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn count_dropped(&self, result: &'static str) -> u64 {
        count_rejected(result);
        self.dropped.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a datagram with an ID no query in flight carries (late or forged).
    pub(crate) fn unknown_id(&self, addr: SocketAddr, id: u16) {
        let dropped_total = self.count_dropped("forged");
        tracing::debug!(upstream = %addr, id, dropped_total, "dropped a reply with an unknown ID");
    }

    /// Counts and logs a datagram from `addr` that did not answer the query it claimed to.
    pub(crate) fn rejected(&self, addr: SocketAddr, rejection: &Rejection) {
        let dropped_total = self.count_dropped(rejection.label());
        match rejection {
            Rejection::Malformed => {
                tracing::debug!(upstream = %addr, dropped_total, "dropped an unparsable datagram");
            }
            Rejection::Mismatch(mismatch) => {
                tracing::warn!(upstream = %addr, %mismatch, dropped_total, "dropped a reply that does not match the query");
            }
        }
    }

    /// The server to ask next for a query that `tried` failed: the first one not in back-off
    /// and not tried, else (every server left is in back-off) the first one not tried.
    pub(crate) fn next_server(&self, tried: &[usize]) -> Option<usize> {
        let now = Instant::now();
        let untried = || (0..self.len()).filter(|index| !tried.contains(index));
        untried()
            .find(|&index| self.health(index).healthy_at(now))
            .or_else(|| untried().next())
    }

    fn health(&self, index: usize) -> std::sync::MutexGuard<'_, Health> {
        self.health[index].lock().expect("health lock")
    }

    /// Records an answer from server `index` to a query sent at `started`.
    pub(crate) fn succeeded(&self, index: usize, started: std::time::Instant) {
        crate::metrics::metrics()
            .upstream_latency
            .observe(started.elapsed().as_secs_f64());
        self.health(index).succeeded(Instant::now());
    }

    /// Records that server `index` failed `question`, sent at `sent`; after
    /// [`FAILURES_TO_BACK_OFF`] distinct questions (see the module documentation) it is skipped
    /// for [`HEALTH_BACKOFF`].
    pub(crate) fn failed(
        &self,
        index: usize,
        question: &Query,
        sent: std::time::Instant,
        error: &UpstreamError,
    ) {
        let addr = self.addrs[index];
        let backed_off = self.health(index).failed(
            question_key(question),
            Instant::from_std(sent),
            Instant::now(),
        );
        if self.len() > 1 {
            tracing::warn!(
                upstream = %addr,
                question = %question.name(),
                error = %crate::error_chain(error),
                "[Upstream Error] trying the next upstream"
            );
        }
        if backed_off {
            tracing::warn!(
                upstream = %addr,
                "[Upstream Error] {FAILURES_TO_BACK_OFF} distinct questions failed with no answer in between: skipping this upstream for {HEALTH_BACKOFF:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests;
