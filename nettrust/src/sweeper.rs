//! The TTL sweeper (`--authorized-ttl`, `--ttl-check-ticker`): every tick it looks at the
//! authorized hosts whose deadline falls before the next tick plus a second of slack
//! ([`HORIZON_SLACK_NS`]), renews those still in use and removes those that expired unused.
//!
//! Expiry itself is enforced in the kernel (the egress program treats an entry past its deadline
//! as absent, daemon or not); the sweeper only reclaims map space and keeps live hosts alive.
//! Because it renews hosts at least a second *before* their deadline, a host in use is never cut
//! while the daemon runs, even when a tick comes a little early or late or the kernel expires an
//! entry a little early (nftables element timeouts count in jiffies).
//!
//! Liveness is per scope: a grant of scope S is renewed only when S's own cgroups use it. The
//! egress program stamps `last_seen_ns` in the grant's own map value (the host maps for the
//! default scope, `GRANTS` for a policy) whenever it lets a packet of that scope out to it (at
//! most [`LAST_SEEN_GRANULARITY_NS`] stale). This works without conntrack, which tracks nothing
//! in a network namespace until a rule there uses conntrack. A grant is live when traffic of its
//! scope went to its address during the last tick. An idle connection sends nothing, so the
//! established TCP connections count too, each for the grant of its socket's scope: the
//! backend's own record ([`Firewall::live_hosts`]: for eBPF, the `live_tcp` sock_ops program's
//! map, which needs no conntrack and records the scope of each socket's cgroup). The replied,
//! locally originated flows of a conntrack dump ([`crate::conntrack`]) count where conntrack
//! tracks flows, each for the scope its conntrack mark names: the nftables backend's policy
//! chains mark the flows their grants let out, every other flow (all of them with eBPF, which
//! marks nothing: conntrack cannot tell cgroups apart) counts for the default scope. So a
//! connection of one policy's cgroup never keeps another policy's grant of the same address
//! alive, on either backend.
//!
//! Only a host still authorized can be renewed: one whose deadline has passed is removed whatever
//! the liveness signals say. The kernel stopped letting packets out to it at its deadline, so
//! anything that looks like use afterwards (a conntrack entry of a dropped SYN, a connection of
//! another process) must not bring it back; it is authorized again only by a DNS answer.
//!
//! Races: the sweeper works on a snapshot, so every renewal and removal is conditional on the
//! deadline it saw (`renew_if`/`remove_if`, compare-and-set under the backend's lock). A DNS
//! answer that renewed the host in between changed the deadline, so the sweeper's action is
//! dropped: the answer always wins. None of this runs on the DNS path.

use std::{collections::HashSet, sync::Arc, time::Duration};

use nettrust_common::LAST_SEEN_GRANULARITY_NS;
use tokio_util::sync::CancellationToken;

use crate::firewall::{Firewall, FirewallError, Grant, HostState, boottime_ns};

/// How the sweeper runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepConfig {
    /// Lifetime of an authorization (`--authorized-ttl`).
    pub ttl: Duration,
    /// Interval between sweeps (`--ttl-check-ticker`).
    pub ticker: Duration,
}

impl SweepConfig {
    fn ticker_ns(&self) -> u64 {
        nanos(self.ticker)
    }

    /// A live host is renewed for the TTL, but never to a deadline before the next tick plus a
    /// second, so a TTL shorter than the ticker cannot cut a connection between two sweeps.
    fn renewal_ns(&self) -> u64 {
        nanos(self.ttl).max(self.ticker_ns() + 1_000_000_000)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What the sweeper decided for one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Still in use: move its deadline.
    Renew {
        /// The host.
        grant: Grant,
        /// The deadline the sweeper saw.
        seen: u64,
        /// The new deadline.
        new: u64,
    },
    /// Expired and unused: remove it.
    Remove {
        /// The host.
        grant: Grant,
        /// The deadline the sweeper saw.
        seen: u64,
    },
}

/// Counts of one sweep.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Hosts whose deadline was moved because they are in use.
    pub renewed: usize,
    /// Expired, unused hosts removed.
    pub removed: usize,
    /// Actions dropped because a DNS answer renewed the host meanwhile.
    pub superseded: usize,
}

/// How far past the next tick a deadline still makes a host due. With none (only the hosts due
/// before the next tick), a host renewed at tick T for two ticks was not due at T+1 if that tick
/// came a hair early, and was renewed at T+2 right at its deadline, racing the kernel's own
/// expiry: an nftables element that expired first got the next packet of a live TCP connection
/// rejected with a reset. A second covers early or late ticks, a slow sweep and the kernel's
/// jiffies (the same second [`SweepConfig::renewal_ns`] adds to a renewal).
const HORIZON_SLACK_NS: u64 = 1_000_000_000;

/// What the open connections say, per scope, about the hosts due (gathered only when some are).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Liveness {
    /// The established connections the backend records, as the grants they keep alive (the
    /// scope of the socket's cgroup and the remote address).
    pub connections: HashSet<Grant>,
    /// The destinations of the replied flows conntrack knows, each as a grant of the scope its
    /// mark names (the default scope unless a policy chain marked it).
    pub conntrack: HashSet<Grant>,
}

impl Liveness {
    /// Whether an open connection keeps `grant` alive.
    pub fn keeps(&self, grant: Grant) -> bool {
        self.connections.contains(&grant) || self.conntrack.contains(&grant)
    }
}

/// Decides, for the hosts due before the next tick plus [`HORIZON_SLACK_NS`], which to renew and
/// which to remove.
pub fn plan(due: &[HostState], now: u64, config: &SweepConfig, active: &Liveness) -> Vec<Action> {
    let window = config.ticker_ns() + LAST_SEEN_GRANULARITY_NS;
    due.iter()
        .filter_map(|host| {
            let seen_recently =
                host.last_seen_ns != 0 && now.saturating_sub(host.last_seen_ns) <= window;
            if host.expires_ns <= now {
                // Past its deadline: already blocked by the kernel, never renewed.
                Some(Action::Remove {
                    grant: host.grant(),
                    seen: host.expires_ns,
                })
            } else if seen_recently || active.keeps(host.grant()) {
                Some(Action::Renew {
                    grant: host.grant(),
                    seen: host.expires_ns,
                    new: now.saturating_add(config.renewal_ns()),
                })
            } else {
                // Unused and not expired yet: the kernel expires it on time; removed next tick.
                None
            }
        })
        .collect()
}

/// Applies `actions` conditionally on the deadlines they saw.
pub fn apply(firewall: &dyn Firewall, actions: &[Action]) -> (SweepReport, Vec<FirewallError>) {
    let mut report = SweepReport::default();
    let mut errors = Vec::new();
    for action in actions {
        let result = match *action {
            Action::Renew { grant, seen, new } => firewall.renew_if(grant, seen, new),
            Action::Remove { grant, seen } => firewall.remove_if(grant, seen),
        };
        match (result, *action) {
            (Ok(true), Action::Renew { grant, .. }) => {
                tracing::debug!("Host [{grant}] has expired but is still active. Renewing");
                crate::metrics::metrics().renewed.inc();
                report.renewed += 1;
            }
            (Ok(true), Action::Remove { grant, .. }) => {
                tracing::info!("Host [{grant}] has expired. Removed from firewall rules");
                crate::metrics::metrics().expired.inc();
                report.removed += 1;
            }
            (Ok(false), _) => report.superseded += 1,
            (Err(e), _) => errors.push(e),
        }
    }
    (report, errors)
}

/// One sweep at `now`. `active` (the open connections) is only called when some host is due.
pub fn sweep(
    firewall: &dyn Firewall,
    now: u64,
    config: &SweepConfig,
    active: impl FnOnce() -> Liveness,
) -> Result<SweepReport, FirewallError> {
    let horizon = now
        .saturating_add(config.ticker_ns())
        .saturating_add(HORIZON_SLACK_NS);
    let due = firewall.due(horizon)?;
    if due.is_empty() {
        return Ok(SweepReport::default());
    }
    let (report, errors) = apply(firewall, &plan(&due, now, config, &active()));
    for e in errors {
        tracing::warn!("sweep: {}", crate::error_chain(&e));
    }
    Ok(report)
}

/// The established TCP connections the backend records (per scope) and the destinations of the
/// replied flows conntrack knows; a source that fails is left out (logged once).
fn active_hosts(firewall: &dyn Firewall, warned: &[std::sync::atomic::AtomicBool; 2]) -> Liveness {
    use std::sync::atomic::Ordering::Relaxed;
    tracing::debug!("Gathering active hosts from the open connections and conntrack");
    let connections = firewall.live_hosts().unwrap_or_else(|e| {
        if !warned[0].swap(true, Relaxed) {
            tracing::warn!(
                "open connections unavailable, liveness from traffic and conntrack only: {}",
                crate::error_chain(&e)
            );
        }
        HashSet::new()
    });
    let conntrack = crate::conntrack::active_grants().unwrap_or_else(|e| {
        if !warned[1].swap(true, Relaxed) {
            tracing::warn!(
                "conntrack unavailable, liveness from traffic and open connections only: {}",
                crate::error_chain(&e)
            );
        }
        HashSet::new()
    });
    Liveness {
        connections,
        conntrack,
    }
}

/// Sweeps every tick until `cancel` fires. Map work and the dumps of connections run on the
/// blocking pool, off the DNS tasks.
pub async fn run(firewall: Arc<dyn Firewall>, config: SweepConfig, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(config.ticker);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let warned = Arc::new([const { std::sync::atomic::AtomicBool::new(false) }; 2]);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let firewall = firewall.clone();
        let warned = warned.clone();
        let result = tokio::task::spawn_blocking(move || {
            sweep(&*firewall, boottime_ns(), &config, || {
                active_hosts(&*firewall, &warned)
            })
        })
        .await;
        match result {
            Ok(Ok(report)) if report != SweepReport::default() => {
                tracing::debug!(?report, "sweep done");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("sweep failed: {}", crate::error_chain(&e)),
            Err(e) => tracing::warn!("sweep task failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::{Policy, Scope, fake::FakeFirewall};
    use std::net::IpAddr;

    const S: u64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn config() -> SweepConfig {
        SweepConfig {
            ttl: Duration::from_secs(2),
            ticker: Duration::from_secs(1),
        }
    }

    fn none() -> Liveness {
        Liveness::default()
    }

    /// `addrs` in use in the default scope, by a recorded connection and by conntrack.
    fn in_use(addrs: &[&str]) -> Liveness {
        Liveness {
            connections: addrs.iter().map(|a| Grant::from(ip(a))).collect(),
            conntrack: addrs.iter().map(|a| Grant::from(ip(a))).collect(),
        }
    }

    #[test]
    fn conntrack_is_not_dumped_when_nothing_is_due() {
        let fw = FakeFirewall::new(Policy::default());
        fw.authorize(ip("192.0.2.1").into(), 1000 * S).unwrap();
        let report = sweep(&fw, 100 * S, &config(), || panic!("dumped for nothing")).unwrap();
        assert_eq!(report, SweepReport::default());
    }

    #[test]
    fn idle_host_expires_and_is_removed() {
        let fw = FakeFirewall::new(Policy::default());
        let t0 = 100 * S;
        fw.authorize(ip("192.0.2.1").into(), t0 + 2 * S).unwrap();
        // t0+1: due before the next tick plus the slack but unused and not expired yet: left to
        // the kernel.
        assert_eq!(
            sweep(&fw, t0 + S, &config(), none).unwrap(),
            SweepReport::default()
        );
        assert!(fw.has_entry(ip("192.0.2.1")));
        assert!(
            !fw.allows(ip("192.0.2.1"), t0 + 2 * S),
            "expired at its deadline"
        );
        let report = sweep(&fw, t0 + 2 * S, &config(), none).unwrap();
        assert_eq!(report.removed, 1);
        assert!(!fw.has_entry(ip("192.0.2.1")));
    }

    #[test]
    fn host_in_use_is_renewed_before_its_deadline() {
        let fw = FakeFirewall::new(Policy::default());
        let t0 = 100 * S;
        fw.authorize(ip("192.0.2.1").into(), t0 + 2 * S).unwrap();
        // Traffic every half second for 10 s: never cut, deadline keeps moving.
        let mut t = t0;
        while t < t0 + 10 * S {
            assert!(fw.allows(ip("192.0.2.1"), t), "cut at {}", t - t0);
            t += S / 2;
            if (t - t0).is_multiple_of(S) {
                sweep(&fw, t, &config(), none).unwrap();
            }
        }
        // Traffic stops (no probe either: a probe is traffic): within TTL + ticker it is
        // blocked, and the sweeps remove it.
        let stop = t;
        for k in 1..=4 {
            sweep(&fw, stop + k * S, &config(), none).unwrap();
        }
        assert!(!fw.allows(ip("192.0.2.1"), stop + 4 * S));
        sweep(&fw, stop + 5 * S, &config(), none).unwrap();
        assert!(!fw.has_entry(ip("192.0.2.1")));
    }

    #[test]
    fn a_host_in_use_keeps_slack_before_its_deadline_when_ticks_jitter() {
        // Ticks about a second apart, some a few milliseconds early, as the runtime delivers
        // them; the host is in use throughout (in the active set).
        let fw = FakeFirewall::new(Policy::default());
        let t0 = 100 * S;
        fw.authorize(ip("192.0.2.1").into(), t0 + 2 * S).unwrap();
        let active = in_use(&["192.0.2.1"]);
        let mut now = t0;
        for k in 1..=20u64 {
            now += S - (k % 3) * 3_000_000;
            sweep(&fw, now, &config(), || active.clone()).unwrap();
            let deadline = fw.due(u64::MAX).unwrap()[0].expires_ns;
            // The next tick may come early and the kernel may expire an entry a little early:
            // a live host must keep well over a tick of room after every sweep.
            assert!(
                deadline >= now + S + S / 2,
                "tick {k}: deadline only {} ms ahead",
                (deadline - now) / 1_000_000
            );
        }
    }

    #[test]
    fn active_set_counts_as_use() {
        let fw = FakeFirewall::new(Policy::default());
        let t0 = 100 * S;
        fw.authorize(ip("2001:db8::1").into(), t0 + 2 * S).unwrap();
        let active = in_use(&["2001:db8::1"]);
        let report = sweep(&fw, t0 + S, &config(), || active.clone()).unwrap();
        assert_eq!(report.renewed, 1);
        assert!(fw.allows(ip("2001:db8::1"), t0 + 2 * S + S / 2));
    }

    #[test]
    fn an_expired_host_is_never_renewed() {
        // A filtered process sends one packet per tick to a host whose deadline has passed: the
        // egress program drops it, but conntrack recorded the flow (or an unfiltered process, or
        // a connection, keeps it in the active set): the host must stay expired.
        let fw = FakeFirewall::new(Policy::default());
        let t0 = 100 * S;
        fw.authorize(ip("192.0.2.1").into(), t0 + 2 * S).unwrap();
        let active = in_use(&["192.0.2.1"]);
        let report = sweep(&fw, t0 + 2 * S, &config(), || active.clone()).unwrap();
        assert_eq!((report.renewed, report.removed), (0, 1));
        assert!(!fw.has_entry(ip("192.0.2.1")));
        // Even used right up to its deadline (last-seen in the window): expired is expired.
        fw.authorize(ip("192.0.2.2").into(), t0 + 2 * S).unwrap();
        let host = HostState {
            addr: ip("192.0.2.2"),
            scope: crate::firewall::Scope::DEFAULT,
            expires_ns: t0 + 2 * S,
            last_seen_ns: t0 + 2 * S - 1,
        };
        let actions = plan(&[host], t0 + 2 * S + 1, &config(), &active);
        assert!(
            matches!(actions[..], [Action::Remove { .. }]),
            "{actions:?}"
        );
    }

    #[test]
    fn hosts_without_deadline_are_never_due() {
        let fw = FakeFirewall::new(Policy::default());
        fw.authorize(ip("192.0.2.1").into(), 0).unwrap();
        let report = sweep(&fw, u64::MAX / 2, &config(), none).unwrap();
        assert_eq!(report, SweepReport::default());
        assert!(fw.has_entry(ip("192.0.2.1")));
    }

    #[test]
    fn dns_renewal_during_a_sweep_wins() {
        let fw = FakeFirewall::new(Policy::default());
        let t0 = 100 * S;
        fw.authorize(ip("192.0.2.1").into(), t0 + 2 * S).unwrap();
        // The sweeper takes its snapshot and decides to remove...
        let due = fw.due(t0 + 4 * S).unwrap();
        let actions = plan(&due, t0 + 3 * S, &config(), &none());
        assert!(matches!(actions[..], [Action::Remove { .. }]));
        // ...a DNS answer renews the host before the removal is applied...
        fw.authorize(ip("192.0.2.1").into(), t0 + 5 * S).unwrap();
        let (report, errors) = apply(&fw, &actions);
        assert!(errors.is_empty());
        // ...so the removal is dropped and the host stays reachable.
        assert_eq!(report.removed, 0);
        assert_eq!(report.superseded, 1);
        assert!(fw.allows(ip("192.0.2.1"), t0 + 4 * S));
    }

    /// The same address granted to the default scope and to two policies, all due at t0+2.
    fn three_scopes(t0: u64) -> (FakeFirewall, [Grant; 3]) {
        let fw = FakeFirewall::new(Policy::default());
        let x = ip("192.0.2.7");
        let grants = [
            Grant::from(x),
            Grant::new(Scope(1), x),
            Grant::new(Scope(2), x),
        ];
        for grant in grants {
            fw.authorize(grant, t0 + 2 * S).unwrap();
        }
        (fw, grants)
    }

    fn renewed(fw: &FakeFirewall, grants: &[Grant; 3], at: u64) -> [bool; 3] {
        let live = |g: &Grant| {
            fw.due(u64::MAX)
                .unwrap()
                .iter()
                .any(|h| h.grant() == *g && h.expires_ns > at)
        };
        [live(&grants[0]), live(&grants[1]), live(&grants[2])]
    }

    #[test]
    fn a_connection_renews_only_the_grant_of_its_own_scope() {
        let t0 = 100 * S;
        let (fw, grants) = three_scopes(t0);
        let active = Liveness {
            connections: [grants[1]].into(),
            ..Liveness::default()
        };
        let report = sweep(&fw, t0 + S, &config(), || active.clone()).unwrap();
        assert_eq!(report.renewed, 1);
        assert_eq!(renewed(&fw, &grants, t0 + 2 * S), [false, true, false]);
        // At the deadline the others go; policy 1's connection keeps renewing its own grant.
        let report = sweep(&fw, t0 + 2 * S, &config(), || active.clone()).unwrap();
        assert_eq!((report.renewed, report.removed), (1, 2));
        assert!(fw.has_grant(grants[1]));
        assert!(!fw.has_grant(grants[0]) && !fw.has_grant(grants[2]));
    }

    #[test]
    fn traffic_of_one_scope_renews_only_its_grant() {
        let t0 = 100 * S;
        let (fw, grants) = three_scopes(t0);
        assert!(fw.allows_from(Scope(2), grants[2].addr, t0 + S / 2));
        sweep(&fw, t0 + S, &config(), none).unwrap();
        assert_eq!(renewed(&fw, &grants, t0 + 2 * S), [false, false, true]);
    }

    #[test]
    fn conntrack_renews_the_scope_its_mark_names() {
        let t0 = 100 * S;
        let (fw, grants) = three_scopes(t0);
        // An unmarked flow (eBPF marks nothing; an unfiltered process): the default scope's.
        let active = Liveness {
            conntrack: [Grant::from(grants[0].addr)].into(),
            ..Liveness::default()
        };
        sweep(&fw, t0 + S, &config(), || active.clone()).unwrap();
        assert_eq!(renewed(&fw, &grants, t0 + 2 * S), [true, false, false]);
        // A flow a policy chain marked with its scope renews that scope's grant only.
        let (fw, grants) = three_scopes(t0);
        let active = Liveness {
            conntrack: [grants[2]].into(),
            ..Liveness::default()
        };
        sweep(&fw, t0 + S, &config(), || active.clone()).unwrap();
        assert_eq!(renewed(&fw, &grants, t0 + 2 * S), [false, false, true]);
    }

    #[test]
    fn short_ttl_is_renewed_past_the_next_tick() {
        let config = SweepConfig {
            ttl: Duration::from_secs(1),
            ticker: Duration::from_secs(30),
        };
        let host = HostState {
            addr: ip("192.0.2.1"),
            scope: crate::firewall::Scope::DEFAULT,
            expires_ns: 101 * S,
            last_seen_ns: 100 * S,
        };
        let actions = plan(&[host], 100 * S, &config, &none());
        let [Action::Renew { new, .. }] = actions[..] else {
            panic!("{actions:?}")
        };
        assert!(new > 130 * S);
    }
}
