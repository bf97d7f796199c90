//! The eBPF backend: [`EbpfFirewall`] loads nettrust-ebpf's programs, adopts or creates the maps
//! pinned in the bpffs directory, writes the whitelists, and attaches the programs to every
//! cgroup through pinned bpf_links, so enforcement outlives the process; then it serves the
//! [`Firewall`] trait on those maps.
//!
//! Order of a start: whitelists are written into the (possibly adopted) maps *before* anything is
//! attached, so a whitelisted destination is never dropped; each new link is attached *before* its
//! pin replaces the previous run's link, so a restart never leaves a cgroup unfiltered.

use std::{
    collections::HashSet,
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
};

use aya::{
    Ebpf,
    maps::{Array, Map, MapData, RingBuf},
};
use nettrust_common::{
    CONFIG_DROP_INPUT, HostName, MAP_BLOCKED_V4, MAP_BLOCKED_V6, MAP_CGROUPS, MAP_CONFIG,
    MAP_DENIED, MAP_FLOWS, MAP_GRANT_NAMES, MAP_GRANTS, MAP_HOSTS_V4, MAP_HOSTS_V6, MAP_NAMES,
    MAP_NETS_V4, MAP_NETS_V6, MAP_SERVICES,
};

use super::{
    adopt::{self, Capacities},
    attach, authorizations,
    capture::CaptureTargets,
    denied_events, eviction, flow_events,
    host_table::{HostMaps, name_key},
    ipv4_table::HostTable,
    live_tcp::{self, LiveMap},
    loader,
    names_writer::NameWriter,
    pins, scoped,
    scopes::{self, ScopeMaps},
    services::{ServiceMap, sync_blocked, sync_services},
    types::{CgroupMap, EbpfError, HostMap, NetTrie, map_error, take_map},
    whitelist,
};
use crate::firewall::{
    Authorization, AuthorizedHost, ClientScope, ExitMode, Firewall, FirewallError, Grant,
    HostState, Policy, Scope, Scopes, Transport, evict::Recency,
};

/// The backend's settings.
#[derive(Debug, Clone)]
pub struct EbpfOptions {
    /// cgroups to filter (cgroups attached at runtime by `nettrust attach` are kept too).
    pub cgroups: Vec<PathBuf>,
    /// The bpffs directory.
    pub pin_dir: PathBuf,
    /// Whitelists.
    pub policy: Policy,
    /// `--firewall-drop-input`.
    pub drop_input: bool,
    /// Capacities of the host maps and network tries (`max_hosts`, `max_networks`).
    pub capacities: Capacities,
    /// The policies: written before any cgroup is attached.
    pub scopes: Scopes,
}

/// The running eBPF backend.
pub struct EbpfFirewall {
    hosts: RwLock<HostMaps>,
    /// Writes the names of `nettrust list` off the DNS path.
    names: NameWriter,
    /// Second handles on the host maps for full scans (sweeper, metrics), which need no lock
    /// (every change a sweep leads to is conditional): a scan of a full map must not stall DNS
    /// answers. DNS answers write through them too, under the lock of `hosts`.
    scan: (Arc<HostTable>, HostMap<16>),
    /// The established TCP connections of the filtered cgroups (`LIVE_TCP_SCOPED`), for the
    /// sweeper.
    live: LiveMap,
    /// The policy maps: cgroup scopes, policy grants and networks, DNS listeners and clients.
    scopes: ScopeMaps,
    /// The whitelists in force (to diff against on reload).
    policy: Mutex<Policy>,
    pin_dir: PathBuf,
    /// The loaded object (programs and maps stay pinned when it is dropped).
    _ebpf: Mutex<Ebpf>,
    /// The denied-event ring buffer, taken by [`EbpfFirewall::start_denied_log`].
    denied: Mutex<Option<RingBuf<MapData>>>,
    /// The flow-record ring buffer, taken by [`EbpfFirewall::start_denied_log`].
    flows: Mutex<Option<RingBuf<MapData>>>,
    /// The last flow records.
    flow_log: flow_events::FlowLog,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// flock held on the pin directory for the daemon's lifetime: one daemon per directory.
    _lock: File,
    /// The map capacities in force.
    capacities: Capacities,
    /// When a DNS answer last named each authorized host, per family: the eviction order of a
    /// full map ([`crate::firewall::evict`]).
    recency: (Recency<[u8; 4]>, Recency<[u8; 16]>),
    /// The same for the policies' grants in `GRANTS` (keyed by `scoped::pool_key`).
    grant_recency: Recency<[u8; 20]>,
}

/// The maps a start writes before anything is attached, taken out of the loaded object.
struct Installed {
    hosts: HostMaps,
    cgroups: CgroupMap,
    denied: RingBuf<MapData>,
    flows: RingBuf<MapData>,
    /// The other maps taken out of the object, held until the programs are loaded: the loader
    /// wrote these descriptors into the programs' instructions, so they must still be open at
    /// `BPF_PROG_LOAD` (the kernel holds the maps from then on).
    _held: Held,
}

/// See [`Installed::_held`].
struct Held {
    _config: Array<MapData, u32>,
    _v4: MapData,
    _nets: (NetTrie<4>, NetTrie<16>),
    _services: ServiceMap,
    _blocked: (NetTrie<4>, NetTrie<16>),
}

impl EbpfFirewall {
    /// Loads the programs, adopts the maps a previous run pinned in `pin_dir` (after checking they
    /// are nettrust's) or creates them, installs the policy and attaches to every cgroup. On error
    /// a fresh directory is removed again; adopted state is left as it was (still enforcing).
    pub fn start(options: &EbpfOptions) -> Result<Self, EbpfError> {
        Self::start_with_capture(options, None)
    }

    /// [`EbpfFirewall::start`], with DNS capture to `capture`'s listeners when given (off, and
    /// a previous run's capture removed, when not).
    pub fn start_with_capture(
        options: &EbpfOptions,
        capture: Option<&CaptureTargets>,
    ) -> Result<Self, EbpfError> {
        if !loader::has_object() {
            return Err(EbpfError::NoObject);
        }
        loader::raise_memlock_limit();
        let lock = pins::prepare_dir(&options.pin_dir)?;
        let adopted = adopt::check_pinned_maps(&options.pin_dir, options.capacities)?;
        if adopted > 0 {
            tracing::info!(
                dir = %options.pin_dir.display(),
                "adopting the maps of a previous nettrust run"
            );
        }
        let result = Self::start_locked(options, lock, capture);
        if result.is_err() && adopted == 0 {
            let _ = pins::remove_all(&options.pin_dir);
        }
        result
    }

    fn start_locked(
        options: &EbpfOptions,
        lock: File,
        capture: Option<&CaptureTargets>,
    ) -> Result<Self, EbpfError> {
        let dir = &options.pin_dir;
        pins::remove_temporaries(dir);
        // The IPv4 table's hash seed: the adopted table's, or a fresh random one.
        let pinned_seed = adopt::pinned_seed(dir);
        let seed = pinned_seed.unwrap_or_else(|| rand::random::<u64>() | 1);
        let mut ebpf = loader::load(dir, options.capacities, seed)?;
        let logger = loader::start_logger(&mut ebpf);
        let Installed {
            hosts,
            mut cgroups,
            denied,
            flows,
            _held: held,
        } = install(&mut ebpf, options, seed, pinned_seed.is_some())?;
        loader::load_programs(&mut ebpf, dir, capture)?;
        drop(held);

        // Each cgroup's policy is known before its first packet is judged.
        let scopes = ScopeMaps::open(dir)?;
        scoped::write_scopes(&scopes, &options.scopes)?;
        let mut attached = Vec::new();
        for path in attach::cgroups_to_filter(&cgroups, dir, &options.cgroups)? {
            attached.push(attach::attach_cgroup(&mut ebpf, &mut cgroups, dir, &path)?);
            tracing::info!(cgroup = %path.display(), "filter attached");
        }
        attach::drop_other_links(&mut cgroups, dir, &attached);
        // The flow map of earlier versions (keyed without cgroup and local address): transient
        // state its programs, replaced above, were the only users of.
        let _ = std::fs::remove_file(dir.join(adopt::LEGACY_INBOUND));
        // Likewise the connections of earlier versions' `live_tcp` (recorded without their
        // scope): the program replaced above records into `LIVE_TCP_SCOPED` from now on, and the
        // connections it did not see established renew their hosts by their traffic only.
        let _ = std::fs::remove_file(dir.join(adopt::LEGACY_LIVE_TCP));

        let scan = (
            hosts.v4.clone(),
            adopt::open_pinned(dir, MAP_HOSTS_V6, Map::HashMap)?,
        );
        let names = NameWriter::start(
            adopt::open_pinned(dir, MAP_NAMES, Map::HashMap)?,
            adopt::open_pinned(dir, MAP_GRANT_NAMES, Map::HashMap)?,
        )
        .map_err(|e| map_error(MAP_NAMES, "cannot start the name writer", e))?;
        Ok(Self {
            hosts: RwLock::new(hosts),
            names,
            scan,
            live: live_tcp::open_live(dir)?,
            scopes,
            pin_dir: dir.clone(),
            _ebpf: Mutex::new(ebpf),
            denied: Mutex::new(Some(denied)),
            flows: Mutex::new(Some(flows)),
            flow_log: flow_events::FlowLog::default(),
            tasks: Mutex::new(logger.into_iter().collect()),
            policy: Mutex::new(options.policy.clone()),
            _lock: lock,
            capacities: options.capacities,
            recency: (
                Recency::new(options.capacities.hosts),
                Recency::new(options.capacities.hosts),
            ),
            grant_recency: Recency::new(options.capacities.hosts),
        })
    }

    /// Starts the task logging denied egress (`[Denied] …`) from the ring buffer.
    pub fn start_denied_log(&self) {
        let Some(ring) = self.denied.lock().expect("poisoned").take() else {
            return;
        };
        let cgroups =
            adopt::open_pinned::<CgroupMap>(&self.pin_dir, MAP_CGROUPS, Map::HashMap).ok();
        match denied_events::spawn(ring, cgroups, self.scopes.names()) {
            Ok(task) => self.tasks.lock().expect("poisoned").push(task),
            Err(e) => tracing::warn!("denied events unavailable: {e}"),
        }
        if let Some(ring) = self.flows.lock().expect("poisoned").take() {
            let cgroups =
                adopt::open_pinned::<CgroupMap>(&self.pin_dir, MAP_CGROUPS, Map::HashMap).ok();
            let log = Arc::clone(&self.flow_log);
            match flow_events::spawn(ring, cgroups, self.scopes.names(), log) {
                Ok(task) => self.tasks.lock().expect("poisoned").push(task),
                Err(e) => tracing::warn!("flow records unavailable: {e}"),
            }
        }
    }

    /// The policy maps (scopes of the cgroups, policy grants and networks, DNS listeners and
    /// clients).
    pub fn scopes(&self) -> &ScopeMaps {
        &self.scopes
    }

    /// Whether the grant memo settles an answer for `grant` until `expires_ns` without a system
    /// call. The answer is recorded first, under the shared host-map lock as on the write path,
    /// so an eviction planned earlier cannot remove the grant it confirms; when the answer
    /// record is due for pruning the write path runs instead (it prunes).
    fn settled_grant(&self, grant: Grant, expires_ns: u64) -> bool {
        let _maps = self.hosts.read().expect("host maps lock poisoned");
        let now = crate::firewall::boottime_ns();
        !self.grant_recency.touch(scoped::pool_key(grant), now)
            && self
                .scopes
                .memo
                .settles(grant.scope.0, grant.addr, expires_ns, now)
    }

    /// A policy grant's write error: `Full` when `GRANTS` refused a new key.
    fn grant_error(&self, addr: IpAddr, e: std::io::Error) -> FirewallError {
        if e.raw_os_error() == Some(libc::E2BIG) {
            FirewallError::Full {
                addr,
                map: MAP_GRANTS,
                capacity: self.capacities.hosts,
            }
        } else {
            FirewallError::Authorize {
                addr,
                source: Box::new(e),
            }
        }
    }

    /// The sweeper's compare-and-set on a policy grant: renew to `new`, or remove (`None`).
    fn scoped_update(
        &self,
        grant: Grant,
        seen: u64,
        new: Option<u64>,
    ) -> Result<bool, FirewallError> {
        let _hosts = self.hosts.write().expect("host maps lock poisoned");
        scoped::renew_or_remove(&self.scopes, grant, seen, new).map_err(|e| FirewallError::Update {
            addr: grant.addr,
            source: Box::new(e),
        })
    }

    /// Watches the configured `cgroups`: one removed while attached is logged as an error and its
    /// links dropped; one created again at the same path is filtered again at once.
    pub fn start_cgroup_watch(&self, cgroups: Vec<PathBuf>) {
        let task = tokio::spawn(attach::watch_cgroups(self.pin_dir.clone(), cgroups));
        self.tasks.lock().expect("poisoned").push(task);
    }

    /// Stops the daemon's tasks and applies the exit `mode`. Keeps cleaning after a failure and
    /// returns every error.
    pub fn stop(&self, mode: ExitMode) -> Result<(), Vec<EbpfError>> {
        for task in self.tasks.lock().expect("poisoned").drain(..) {
            task.abort();
        }
        self.names.flush();
        match mode {
            ExitMode::FlushAll => pins::remove_all(&self.pin_dir)
                .map_err(|errors| errors.into_iter().map(EbpfError::Pin).collect()),
            ExitMode::KeepPolicy => {
                let mut hosts = self.hosts.write().expect("host maps lock poisoned");
                authorizations::clear_authorized(&mut hosts).map_err(|e| vec![e])
            }
            ExitMode::KeepAll => Ok(()),
        }
    }

    /// The grants of open connections, never evicted from a full host map or `GRANTS`: a grant
    /// with an open connection is in use even when it has carried no packet for a while (the
    /// sweeper keeps it past its TTL alike): the established TCP connections of the filtered
    /// cgroups, each in its own scope (`live_tcp`, which needs no conntrack), and the flows
    /// conntrack tracks where it tracks any, for the default scope (conntrack cannot tell
    /// cgroups apart).
    fn active_grants(&self) -> HashSet<Grant> {
        let mut active = crate::conntrack::active_grants().unwrap_or_else(|e| {
            tracing::debug!("conntrack unavailable for eviction ({e})");
            HashSet::default()
        });
        match self.live_hosts() {
            Ok(live) => active.extend(live),
            Err(e) => tracing::warn!(
                error = %crate::error_chain(&e),
                "[Firewall Error] cannot read the live TCP connections for eviction"
            ),
        }
        active
    }
}

/// Takes the maps out of the loaded object and writes the policy and settings into them: the
/// host table (mapped with `seed`; `seed_pinned`: the adopted table's own), the whitelists,
/// services and blocked networks, drop-input and the seed in `CONFIG`.
fn install(
    ebpf: &mut Ebpf,
    options: &EbpfOptions,
    seed: u64,
    seed_pinned: bool,
) -> Result<Installed, EbpfError> {
    let mut config: Array<MapData, u32> = take_map(ebpf, MAP_CONFIG)?;
    adopt::store_seed(&mut config, seed)?;
    let Some(Map::Array(v4_map)) = ebpf.take_map(MAP_HOSTS_V4) else {
        return Err(map_error(
            MAP_HOSTS_V4,
            "unexpected type",
            io::Error::from(io::ErrorKind::InvalidData),
        ));
    };
    let v4 = adopt::map_table(&v4_map, Some(options.capacities.hosts), seed, true)?;
    if !seed_pinned && !v4.is_empty() {
        // A table adopted without its seed (CONFIG was removed): its entries cannot be found,
        // so they are dropped (they would only block); the whitelist follows.
        tracing::warn!("adopted IPv4 host table without its hash seed: its hosts are dropped");
        v4.clear();
    }
    let mut hosts = HostMaps {
        v4: Arc::new(v4),
        v6: take_map(ebpf, MAP_HOSTS_V6)?,
        names: take_map(ebpf, MAP_NAMES)?,
    };
    let mut nets_v4: NetTrie<4> = take_map(ebpf, MAP_NETS_V4)?;
    let mut nets_v6: NetTrie<16> = take_map(ebpf, MAP_NETS_V6)?;
    whitelist::install_policy(&mut hosts, &mut nets_v4, &mut nets_v6, &options.policy)?;
    let mut services: ServiceMap = take_map(ebpf, MAP_SERVICES)?;
    sync_services(&mut services, &options.policy.services)?;
    let mut blocked_v4: NetTrie<4> = take_map(ebpf, MAP_BLOCKED_V4)?;
    let mut blocked_v6: NetTrie<16> = take_map(ebpf, MAP_BLOCKED_V6)?;
    sync_blocked(&mut blocked_v4, &mut blocked_v6, &options.policy.blocked)?;
    config
        .set(CONFIG_DROP_INPUT, u32::from(options.drop_input), 0)
        .map_err(|e| map_error(MAP_CONFIG, "cannot set drop-input", e))?;
    Ok(Installed {
        hosts,
        cgroups: take_map(ebpf, MAP_CGROUPS)?,
        denied: take_map(ebpf, MAP_DENIED)?,
        flows: take_map(ebpf, MAP_FLOWS)?,
        _held: Held {
            _config: config,
            _v4: v4_map,
            _nets: (nets_v4, nets_v6),
            _services: services,
            _blocked: (blocked_v4, blocked_v6),
        },
    })
}

impl Firewall for EbpfFirewall {
    fn authorize(&self, grant: Grant, expires_ns: u64) -> Result<Authorization, FirewallError> {
        let addr = grant.addr;
        let capacity = self.capacities.hosts;
        let active = || self.active_grants();
        if !grant.scope.is_default() {
            if self.settled_grant(grant, expires_ns) {
                return Ok(Authorization::Already);
            }
            // Under the host-map lock like the default scope's (shared for the write, exclusive
            // for an eviction): the sweeper's compare-and-set and a reload's revocation take the
            // exclusive one.
            // The memo notes what the write leaves (`ScopeMaps::grant_get`/`grant_put`).
            return eviction::authorize(
                &self.hosts,
                &scoped::GrantStore(&self.scopes),
                &self.grant_recency,
                capacity,
                active,
                scoped::pool_key(grant),
                expires_ns,
            )
            .map_err(|e| self.grant_error(addr, e));
        }
        // The host maps are written through the second handles of `scan` (the same kernel
        // maps), under the same lock as through `hosts`.
        let (result, map) = match addr {
            IpAddr::V4(ip) => (
                eviction::authorize(
                    &self.hosts,
                    &*self.scan.0,
                    &self.recency.0,
                    capacity,
                    active,
                    ip.octets(),
                    expires_ns,
                ),
                MAP_HOSTS_V4,
            ),
            IpAddr::V6(ip) => (
                eviction::authorize(
                    &self.hosts,
                    &self.scan.1,
                    &self.recency.1,
                    capacity,
                    active,
                    ip.octets(),
                    expires_ns,
                ),
                MAP_HOSTS_V6,
            ),
        };
        result.map_err(|e| {
            if eviction::is_full(&e) {
                // A full host map or table refuses a new key with E2BIG.
                FirewallError::Full {
                    addr,
                    map,
                    capacity,
                }
            } else {
                FirewallError::Authorize {
                    addr,
                    source: Box::new(e),
                }
            }
        })
    }

    fn authorized(&self) -> Result<Vec<AuthorizedHost>, FirewallError> {
        let mut out: Vec<AuthorizedHost> =
            authorizations::collect_authorized(&self.scan.0, &self.scan.1, None)
                .map_err(|e| FirewallError::Read(Box::new(e)))?
                .into_iter()
                .map(|(host, _)| host)
                .collect();
        scoped::collect_authorized(&self.scopes, &mut out)
            .map_err(|e| FirewallError::Read(Box::new(e)))?;
        Ok(out)
    }

    fn set_whitelist(&self, new: &Policy) -> Result<(), FirewallError> {
        let mut current = self.policy.lock().expect("policy lock poisoned");
        let mut hosts = self.hosts.write().expect("host maps lock poisoned");
        whitelist::reload(&self.pin_dir, &mut hosts, &current, new)
            .map_err(|e| FirewallError::Whitelist(Box::new(e)))?;
        *current = new.clone();
        Ok(())
    }

    /// Queued for the name writer: the reply does not wait for it.
    fn record_name(&self, grant: Grant, name: &str) -> Result<(), FirewallError> {
        let value = HostName {
            name: pins::padded(&crate::firewall::listed_name(name)),
        };
        if grant.scope.is_default() {
            self.names.put(name_key(grant.addr), value);
        } else if let Ok(key) = scopes::grant_key(grant.scope.0, grant.addr) {
            self.names.put_grant(key, value);
        }
        Ok(())
    }

    fn revoke(
        &self,
        revoked: &dyn Fn(Grant, Option<&str>) -> bool,
    ) -> Result<Vec<Grant>, FirewallError> {
        // Names still queued are written first, so a domain match sees them.
        self.names.flush();
        let mut hosts = self.hosts.write().expect("host maps lock poisoned");
        let mut out = Vec::new();
        scoped::revoke(&self.scopes, revoked, &mut out)
            .map_err(|e| FirewallError::Read(Box::new(e)))?;
        let default = |addr: IpAddr, name: Option<&str>| revoked(Grant::from(addr), name);
        let HostMaps { v4, v6, names } = &mut *hosts;
        let mut removed = Vec::new();
        authorizations::revoke_entries(&**v4, names, &default, &mut removed)
            .and_then(|()| authorizations::revoke_entries(&*v6, names, &default, &mut removed))
            .map_err(|e| FirewallError::Read(Box::new(e)))?;
        out.extend(removed.into_iter().map(Grant::from));
        Ok(out)
    }

    fn set_scopes(&self, scopes: &Scopes) -> Result<(), FirewallError> {
        scoped::write_scopes(&self.scopes, scopes).map_err(|e| FirewallError::Policies(Box::new(e)))
    }

    fn client_scope(&self, transport: Transport, client: SocketAddr) -> Option<ClientScope> {
        match self.scopes.client(transport.proto(), client) {
            Ok(record) => record.map(|r| ClientScope {
                cgroup_id: r.cgroup_id,
                scope: Scope(r.scope),
                audit: r.audit,
            }),
            Err(e) => {
                tracing::debug!("cannot look up the DNS client {client}: {e}");
                None
            }
        }
    }

    fn live_hosts(&self) -> Result<HashSet<Grant>, FirewallError> {
        live_tcp::live_hosts(&self.live, &pins::linked_cgroups(&self.pin_dir))
            .map_err(|e| FirewallError::Read(Box::new(e)))
    }

    fn due(&self, horizon_ns: u64) -> Result<Vec<HostState>, FirewallError> {
        let mut out = Vec::new();
        authorizations::collect_due(&*self.scan.0, horizon_ns, &mut out)
            .and_then(|()| authorizations::collect_due(&self.scan.1, horizon_ns, &mut out))
            .and_then(|()| scoped::collect_due(&self.scopes, horizon_ns, &mut out))
            .map_err(|e| FirewallError::Read(Box::new(e)))?;
        Ok(out)
    }

    fn renew_if(
        &self,
        grant: Grant,
        seen_expires_ns: u64,
        new_expires_ns: u64,
    ) -> Result<bool, FirewallError> {
        if !grant.scope.is_default() {
            return self.scoped_update(grant, seen_expires_ns, Some(new_expires_ns));
        }
        let addr = grant.addr;
        let hosts = self.hosts.write().expect("host maps lock poisoned");
        let result = match addr {
            IpAddr::V4(ip) => authorizations::renew_entry(
                &*hosts.v4,
                ip.octets(),
                seen_expires_ns,
                new_expires_ns,
            ),
            IpAddr::V6(ip) => {
                authorizations::renew_entry(&hosts.v6, ip.octets(), seen_expires_ns, new_expires_ns)
            }
        };
        result.map_err(|e| FirewallError::Update {
            addr,
            source: Box::new(e),
        })
    }

    fn remove_if(&self, grant: Grant, seen_expires_ns: u64) -> Result<bool, FirewallError> {
        if !grant.scope.is_default() {
            return self.scoped_update(grant, seen_expires_ns, None);
        }
        let addr = grant.addr;
        let mut hosts = self.hosts.write().expect("host maps lock poisoned");
        let result = match addr {
            IpAddr::V4(ip) => {
                authorizations::remove_entry(&*hosts.v4, ip.octets(), seen_expires_ns)
            }
            IpAddr::V6(ip) => authorizations::remove_entry(&hosts.v6, ip.octets(), seen_expires_ns),
        };
        let removed = result.map_err(|e| FirewallError::Update {
            addr,
            source: Box::new(e),
        })?;
        if removed {
            let _ = hosts.names.remove(&name_key(addr));
        }
        Ok(removed)
    }
}
