//! Prometheus metrics (`--metrics-addr`, off by default): process-wide counters that the DNS path
//! and the sweeper increment, plus values read from the kernel at scrape time (authorized hosts,
//! the egress program's per-verdict packet counters). Served at `GET /metrics` by a deliberately
//! tiny HTTP/1.1 responder, in the format the client's `Accept` header asks for: OpenMetrics 1.0.0
//! (what Prometheus asks for first) or the Prometheus text format 0.0.4 (anything else, e.g. curl),
//! each labelled with its own content type.

use std::{
    path::PathBuf,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use nettrust_common::{
    STAT_ALLOW_HOST, STAT_ALLOW_INBOUND_REPLY, STAT_ALLOW_NET, STAT_AUDIT, STAT_COUNT, STAT_DROP,
    STAT_DROP_EXPIRED, STAT_DROP_INPUT, STAT_ERROR, STAT_PASS_NON_IP,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Metric, Registry},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use crate::firewall::Firewall;

/// Labels of a DNS query outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// `udp`, `tcp` or `tls`.
    pub transport: &'static str,
    /// `answered`, `servfail`, `formerr`, `notimp`, `blacklisted`, `dropped`, `cached`,
    /// `truncated` (answer too large for the UDP client: empty TC=1 reply, nothing authorized).
    pub result: &'static str,
}

/// Labels of a single outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// What happened.
    pub result: &'static str,
}

/// Labels of the egress program's counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    /// `allow_host`, `allow_net`, `drop`, `drop_expired`, `pass_non_ip`, `error`.
    pub verdict: &'static str,
}

/// Labels of the per-cgroup egress counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CgroupLabels {
    /// The cgroup's path (or `id:N` when unknown).
    pub cgroup: String,
    /// `allowed` or `dropped`.
    pub verdict: &'static str,
}

/// Labels of a question judged by a `[[policy]]`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// The policy's name.
    pub policy: String,
    /// `allowed`, `not_allowed` (refused) or `audited` (not allowed, forwarded in audit mode).
    pub result: &'static str,
}

/// The label of a per-policy value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// The policy's name (`default` for the default policy).
    pub policy: String,
}

/// Per-cgroup egress packet counts read from the kernel: `(cgroup, allowed, dropped)`.
pub type CgroupEgress = Vec<(String, u64, u64)>;

/// Every metric nettrust exports.
pub struct Metrics {
    registry: Registry,
    /// DNS queries by transport and outcome.
    pub queries: Family<QueryLabels, Counter>,
    /// Addresses taken from answers: `new`, `already`, `blacklisted`, `capped` (beyond
    /// `max_answer_addresses`).
    pub addresses: Family<ResultLabel, Counter>,
    /// Upstream replies refused (`forged`: not the answer to our query; `malformed`).
    pub rejected_answers: Family<ResultLabel, Counter>,
    /// Questions from the cgroups of a `[[policy]]`, by policy and result.
    policy_questions: Family<PolicyLabels, Counter>,
    /// Live grants per policy (read at scrape time).
    policy_grants: Family<PolicyLabel, Gauge>,
    /// Upstream round-trip time of answered queries.
    pub upstream_latency: Histogram,
    /// Addresses refused because the host map was full (the client got SERVFAIL).
    pub firewall_full: Counter,
    /// Idle authorizations evicted to make room in a full host map or set.
    pub evicted: Counter,
    /// Authorizations removed by the expiry sweep.
    pub expired: Counter,
    /// Authorizations renewed because the host was still in use.
    pub renewed: Counter,
    /// Hosts currently authorized (read at scrape time).
    authorized_hosts: Gauge,
    /// Egress packets by verdict (read from the kernel at scrape time).
    egress_packets: Family<VerdictLabel, Counter>,
    /// Egress packets per cgroup and verdict (read from the kernel at scrape time).
    cgroup_packets: Family<CgroupLabels, Counter>,
    /// Last per-cgroup kernel readings, to turn them into counter increments.
    last_cgroup: Mutex<std::collections::HashMap<CgroupLabels, u64>>,
    /// Last kernel counter values, to turn absolute readings into counter increments.
    last_egress: Mutex<[u64; STAT_COUNT as usize]>,
    /// Authorizations evicted per policy (the firewall's per-scope totals, read at scrape time).
    policy_evicted: Family<PolicyLabel, Counter>,
    /// The per-policy eviction totals already added to `policy_evicted`.
    last_policy_evicted: Mutex<std::collections::HashMap<String, u64>>,
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

const VERDICTS: [(u32, &str); 9] = [
    (STAT_ALLOW_HOST, "allow_host"),
    (STAT_ALLOW_NET, "allow_net"),
    (STAT_DROP, "drop"),
    (STAT_DROP_EXPIRED, "drop_expired"),
    (STAT_PASS_NON_IP, "pass_non_ip"),
    (STAT_ERROR, "error"),
    (STAT_ALLOW_INBOUND_REPLY, "allow_inbound_reply"),
    (STAT_DROP_INPUT, "drop_input"),
    (STAT_AUDIT, "audit"),
];

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("nettrust");
        let r = &mut registry;
        Self {
            queries: registered(
                r,
                "dns_queries",
                "DNS queries by transport and result",
                Family::default(),
            ),
            addresses: registered(
                r,
                "answer_addresses",
                "Addresses taken from upstream answers by result",
                Family::default(),
            ),
            rejected_answers: registered(
                r,
                "rejected_answers",
                "Upstream replies refused as forged or malformed",
                Family::default(),
            ),
            policy_questions: registered(
                r,
                "policy_questions",
                "Questions from the cgroups of a policy, by policy and result",
                Family::default(),
            ),
            policy_grants: registered(
                r,
                "policy_grants",
                "Addresses currently authorized, per policy",
                Family::default(),
            ),
            upstream_latency: registered(
                r,
                "upstream_latency_seconds",
                "Upstream round-trip time",
                // 50 µs .. ~3.3 s
                Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
            ),
            firewall_full: registered(
                r,
                "firewall_full",
                "Answer addresses refused because the host map was full (client answered SERVFAIL)",
                Counter::default(),
            ),
            evicted: registered(
                r,
                "evicted_hosts",
                "Idle authorizations evicted (least recently used) to make room in a full host map",
                crate::firewall::EVICTED.clone(),
            ),
            expired: registered(
                r,
                "expired_hosts",
                "Authorizations removed by the expiry sweep",
                Counter::default(),
            ),
            renewed: registered(
                r,
                "renewed_hosts",
                "Authorizations renewed because the host was in use",
                Counter::default(),
            ),
            authorized_hosts: registered(
                r,
                "authorized_hosts",
                "Hosts currently authorized",
                Gauge::default(),
            ),
            egress_packets: registered(
                r,
                "egress_packets",
                "Egress packets judged by the eBPF program, by verdict",
                Family::default(),
            ),
            last_egress: Mutex::new([0; STAT_COUNT as usize]),
            cgroup_packets: registered(
                r,
                "cgroup_egress_packets",
                "Egress packets per filtered cgroup, allowed or dropped",
                Family::default(),
            ),
            last_cgroup: Mutex::new(std::collections::HashMap::new()),
            policy_evicted: registered(
                r,
                "policy_evicted_hosts",
                "Idle authorizations evicted from a full host map or set, per policy they belonged to",
                Family::default(),
            ),
            last_policy_evicted: Mutex::new(std::collections::HashMap::new()),
            // Last: the fields above register into it.
            registry,
        }
    }

    /// The counter of the questions `policy` judged with `result`, to keep and increment
    /// (building the label set per question would allocate on every query).
    pub fn policy_question(&self, policy: &str, result: &'static str) -> Counter {
        self.policy_questions
            .get_or_create(&PolicyLabels {
                policy: policy.to_owned(),
                result,
            })
            .clone()
    }

    /// Sets the live grants per policy (`(policy, count)`); a policy without any shows 0.
    pub fn set_policy_grants(&self, grants: &[(String, usize)]) {
        self.policy_grants.clear();
        for (policy, count) in grants {
            self.policy_grants
                .get_or_create(&PolicyLabel {
                    policy: policy.clone(),
                })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
    }

    /// Brings the per-policy eviction counters up to `totals` (`(policy, evictions since the
    /// start)`); a policy listed with 0 shows 0.
    pub fn set_policy_evictions(&self, totals: &[(String, u64)]) {
        let mut last = self
            .last_policy_evicted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (policy, total) in totals {
            let counter = self.policy_evicted.get_or_create(&PolicyLabel {
                policy: policy.clone(),
            });
            let seen = last.entry(policy.clone()).or_default();
            counter.inc_by(total.saturating_sub(*seen));
            *seen = (*seen).max(*total);
        }
    }

    /// Counts one DNS query outcome.
    pub fn query(&self, transport: &'static str, result: &'static str) {
        self.queries
            .get_or_create(&QueryLabels { transport, result })
            .inc();
    }

    /// Updates the scrape-time values and renders them in OpenMetrics 1.0.0 text.
    pub fn render(
        &self,
        authorized_hosts: Option<usize>,
        egress: Option<[u64; STAT_COUNT as usize]>,
        cgroups: Option<CgroupEgress>,
    ) -> String {
        if let Some(cgroups) = cgroups {
            let mut last = self.last_cgroup.lock().expect("metrics lock poisoned");
            for (cgroup, allowed, dropped) in cgroups {
                for (verdict, now) in [("allowed", allowed), ("dropped", dropped)] {
                    let labels = CgroupLabels {
                        cgroup: cgroup.clone(),
                        verdict,
                    };
                    let before = last.insert(labels.clone(), now).unwrap_or(0);
                    self.cgroup_packets
                        .get_or_create(&labels)
                        .inc_by(now.saturating_sub(before));
                }
            }
        }
        if let Some(n) = authorized_hosts {
            self.authorized_hosts
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Some(now) = egress {
            let mut last = self.last_egress.lock().expect("metrics lock poisoned");
            for (index, verdict) in VERDICTS {
                let i = index as usize;
                self.egress_packets
                    .get_or_create(&VerdictLabel { verdict })
                    .inc_by(now[i].saturating_sub(last[i]));
            }
            *last = now;
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        out
    }
}

/// Registers `metric` under `name` (with the registry's `nettrust_` prefix) and returns the handle
/// that updates it (metrics are shared handles: the clone in the registry sees every update).
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// What the endpoint reads from the running firewall at each scrape.
pub struct Sources {
    /// The firewall (authorized hosts).
    pub firewall: Arc<dyn Firewall>,
    /// bpffs directory holding the pinned `STATS` map.
    pub bpffs_dir: PathBuf,
}

/// Serves `GET /metrics` on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, sources: Sources, cancel: CancellationToken) {
    let sources = Arc::new(sources);
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!("metrics endpoint: accept error: {e}");
                    continue;
                }
            },
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            if let Err(e) =
                tokio::time::timeout(Duration::from_secs(5), respond(stream, &sources)).await
            {
                tracing::debug!("metrics endpoint: slow client dropped: {e}");
            }
        });
    }
}

async fn respond(mut stream: TcpStream, sources: &Sources) -> std::io::Result<()> {
    // Read the request head (at most 8 KiB); only the request line matters.
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let (status, content_type, body) =
        if request_line.starts_with("GET /metrics ") || request_line.starts_with("GET /metrics?") {
            let accept: Vec<&str> = lines
                .take_while(|l| !l.is_empty())
                .filter_map(|l| l.split_once(':'))
                .filter(|(name, _)| name.trim().eq_ignore_ascii_case("accept"))
                .map(|(_, value)| value)
                .collect();
            let format = Format::negotiate(&accept.join(","));
            let hosts = sources.firewall.authorized().ok();
            let names = crate::firewall::policy_names(&sources.bpffs_dir);
            if let Some(hosts) = &hosts {
                metrics().set_policy_grants(&grants_per_policy(hosts, &names));
            }
            metrics().set_policy_evictions(&evictions_per_policy(&names));
            let authorized = hosts.map(|hosts| hosts.len());
            let egress = crate::firewall::ebpf::read_stats(&sources.bpffs_dir)
                .ok()
                .or_else(|| crate::firewall::nftables::egress_stats().ok().flatten());
            let cgroups = crate::firewall::ebpf::cgroup_egress(&sources.bpffs_dir).ok();
            let openmetrics = metrics().render(authorized, egress, cgroups);
            let body = match format {
                Format::OpenMetrics => openmetrics,
                Format::Prometheus => prometheus_text(&openmetrics),
            };
            ("200 OK", format.content_type(), body)
        } else {
            (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "only GET /metrics is served here\n".to_owned(),
            )
        };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Live grants counted per policy (`firewall::policy_label`); every named policy is listed,
/// with 0 when it has none.
fn grants_per_policy(
    hosts: &[crate::firewall::AuthorizedHost],
    names: &std::collections::HashMap<u32, String>,
) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for name in names.values() {
        counts.entry(name.clone()).or_default();
    }
    for host in hosts {
        let policy = crate::firewall::policy_label(names, host.scope);
        *counts.entry(policy).or_default() += 1;
    }
    counts.into_iter().collect()
}

/// Authorizations evicted per policy since the start (`firewall::policy_label` of the scope
/// they belonged to); every named policy and the default one are listed, with 0 when none.
fn evictions_per_policy(names: &std::collections::HashMap<u32, String>) -> Vec<(String, u64)> {
    let mut totals: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    totals.entry("default".to_owned()).or_default();
    for name in names.values() {
        totals.entry(name.clone()).or_default();
    }
    for (scope, count) in crate::firewall::evicted_per_scope() {
        *totals
            .entry(crate::firewall::policy_label(names, scope))
            .or_default() += count;
    }
    totals.into_iter().collect()
}

/// The exposition formats served at `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 text: counter families named without `_total`, `# EOF` at the end.
    OpenMetrics,
    /// The Prometheus text format 0.0.4: `# HELP`/`# TYPE` name the `_total` sample, no `# EOF`.
    Prometheus,
}

impl Format {
    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// Picks the format for an `Accept` header value (the empty string when there is none):
    /// OpenMetrics when the client accepts `application/openmetrics-text` (version 1.0.0 or
    /// unversioned) with at least the quality it gives the 0.0.4 text (`text/plain`, `text/*`,
    /// `*/*`); the 0.0.4 text otherwise, also for a client that sends no `Accept`.
    pub fn negotiate(accept: &str) -> Self {
        let (mut openmetrics, mut text) = (0.0_f64, 0.0_f64);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let (mut quality, mut version) = (1.0_f64, None);
            for param in parts {
                let Some((key, value)) = param.split_once('=') else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => quality = value.parse().unwrap_or(0.0),
                    "version" => version = Some(value.to_owned()),
                    _ => {}
                }
            }
            match media.as_str() {
                "application/openmetrics-text"
                    if version.as_deref().is_none_or(|v| v == "1.0.0") =>
                {
                    openmetrics = openmetrics.max(quality);
                }
                "text/plain" if version.as_deref().is_none_or(|v| v == "0.0.4") => {
                    text = text.max(quality);
                }
                "text/*" | "*/*" => text = text.max(quality),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }
}

/// Rewrites OpenMetrics text (as [`Metrics::render`] writes it) into the Prometheus text format
/// 0.0.4. The samples are the same; the differences are in the metadata: a counter family `x` has
/// the sample `x_total`, which 0.0.4 expects `# HELP` and `# TYPE` to name; 0.0.4 has no `# UNIT`
/// and no `# EOF`.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(prefix);
                out.push_str(name);
                out.push_str(suffix);
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_kernel_values() {
        let m = Metrics::new();
        m.query("udp", "answered");
        m.query("udp", "answered");
        m.addresses
            .get_or_create(&ResultLabel { result: "new" })
            .inc();
        let mut egress = [0u64; STAT_COUNT as usize];
        egress[STAT_DROP as usize] = 7;
        let text = m.render(
            Some(3),
            Some(egress),
            Some(vec![("/sys/fs/cgroup/app".into(), 5, 2)]),
        );
        assert!(
            text.contains("nettrust_cgroup_egress_packets_total{cgroup=\"/sys/fs/cgroup/app\",verdict=\"dropped\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("nettrust_dns_queries_total{transport=\"udp\",result=\"answered\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("nettrust_answer_addresses_total{result=\"new\"} 1"),
            "{text}"
        );
        assert!(text.contains("nettrust_authorized_hosts 3"), "{text}");
        assert!(
            text.contains("nettrust_egress_packets_total{verdict=\"drop\"} 7"),
            "{text}"
        );
        // Kernel counters are absolute: a second reading adds only the difference.
        egress[STAT_DROP as usize] = 10;
        let text = m.render(
            Some(3),
            Some(egress),
            Some(vec![("/sys/fs/cgroup/app".into(), 9, 2)]),
        );
        assert!(
            text.contains("nettrust_cgroup_egress_packets_total{cgroup=\"/sys/fs/cgroup/app\",verdict=\"allowed\"} 9"),
            "{text}"
        );
        assert!(
            text.contains("nettrust_egress_packets_total{verdict=\"drop\"} 10"),
            "{text}"
        );
        assert!(
            text.contains("nettrust_upstream_latency_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn prometheus_text_names_the_total_samples() {
        let m = Metrics::new();
        m.query("udp", "answered");
        let openmetrics = m.render(Some(1), None, None);
        assert!(openmetrics.contains("# TYPE nettrust_dns_queries counter\n"));
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
        let text = prometheus_text(&openmetrics);
        assert!(
            text.contains("# TYPE nettrust_dns_queries_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP nettrust_dns_queries_total DNS queries"),
            "{text}"
        );
        assert!(
            text.contains("nettrust_dns_queries_total{transport=\"udp\",result=\"answered\"} 1\n"),
            "{text}"
        );
        // Gauges and histograms keep their names.
        assert!(
            text.contains("# TYPE nettrust_authorized_hosts gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE nettrust_upstream_latency_seconds histogram\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("# UNIT"), "{text}");
    }

    #[test]
    fn accept_header_picks_the_format() {
        // What Prometheus 2.x sends.
        assert_eq!(
            Format::negotiate(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            ),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            Format::OpenMetrics
        );
        // curl, no header, a Prometheus configured for the 0.0.4 text, an unknown version.
        assert_eq!(Format::negotiate("*/*"), Format::Prometheus);
        assert_eq!(Format::negotiate(""), Format::Prometheus);
        assert_eq!(
            Format::negotiate("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"),
            Format::Prometheus
        );
        assert_eq!(
            Format::negotiate("application/openmetrics-text;version=2.0.0"),
            Format::Prometheus
        );
        assert_eq!(
            Format::negotiate("application/openmetrics-text;q=0"),
            Format::Prometheus
        );
    }
}
