//! Who may ask, and how much: `allow_clients` (a client outside gets REFUSED before anything
//! else, counted and logged at most every [`REFUSED_LOG_INTERVAL_SECS`]) and the bound of
//! [`MAX_CLIENT_IN_FLIGHT`] forwarded queries per client (an IPv4 address, an IPv6 /64), so one
//! client's slow queries cannot take every slot of the listeners.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use ipnet::IpNet;

/// Queries one client (IPv4 address, IPv6 /64) may have forwarded and unanswered at once. A
/// quarter of the UDP listener's slots ([`super::udp::MAX_UDP_IN_FLIGHT`]): one client cannot
/// take them all, and a host's own resolver traffic (every local process is the one client
/// 127.0.0.1) keeps far more than the 100 in flight of a busy stub or a benchmark.
pub const MAX_CLIENT_IN_FLIGHT: usize = 256;
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

/// The clients served and their forwarded queries in flight.
#[derive(Debug)]
pub(crate) struct Clients {
    /// Clients served; others get REFUSED.
    allow: Vec<IpNet>,
    /// Forwarded queries in flight per client.
    slots: Arc<ClientSlots>,
    /// When (seconds since `started`) a refused client was last logged, plus one (0: never).
    refused_logged: AtomicU64,
    refused_total: AtomicU64,
    started: Instant,
}

/// The loopback networks (RFC 1122 §3.2.1.3, RFC 4291 §2.5.3): the clients always allowed to ask,
/// and what `whitelist_loopback` whitelists.
pub(crate) fn loopback_networks() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .map(|n| n.parse().expect("valid literal"))
        .collect()
}

impl Clients {
    /// Loopback clients only, [`MAX_CLIENT_IN_FLIGHT`] each.
    pub(crate) fn new() -> Self {
        Self {
            allow: loopback_networks(),
            slots: ClientSlots::new(MAX_CLIENT_IN_FLIGHT),
            refused_logged: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    pub(crate) fn set_allowed(&mut self, networks: Vec<IpNet>) {
        self.allow = networks;
    }

    pub(crate) fn set_in_flight_limit(&mut self, limit: usize) {
        self.slots = ClientSlots::new(limit.max(1));
    }

    /// Whether `client` may use the proxy (an IPv4-mapped IPv6 address counts as IPv4).
    pub(crate) fn allows(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.allow.iter().any(|net| net.contains(&client))
    }

    /// How many queries were refused because of their client's address.
    pub(crate) fn refused_total(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }

    /// Counts a query refused because of its client and logs it, at most once per
    /// [`REFUSED_LOG_INTERVAL_SECS`].
    pub(crate) fn refused(&self, client: IpAddr) {
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

    /// A slot for one forwarded query of `client`; `None` at its limit.
    pub(crate) fn acquire(&self, client: IpAddr) -> Option<ClientSlot> {
        self.slots.acquire(client)
    }

    #[cfg(test)]
    pub(crate) fn slots(&self) -> &ClientSlots {
        &self.slots
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
