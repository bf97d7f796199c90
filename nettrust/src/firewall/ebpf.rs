//! The eBPF backend: loads nettrust-ebpf's programs, adopts or creates the maps pinned in the
//! bpffs directory (layout and checks in [`super::pins`]), writes the whitelists, and attaches the
//! programs to every cgroup through pinned bpf_links, so enforcement outlives the process.
//!
//! Order of a start: whitelists are written into the (possibly adopted) maps *before* anything is
//! attached, so a whitelisted destination is never dropped; each new link is attached *before* its
//! pin replaces the previous run's link, so a restart never leaves a cgroup unfiltered.

use std::{
    fs::File,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as AyaHashMap, LpmTrie, Map, MapData, MapError, RingBuf},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, links::FdLink},
};
use nettrust_common::{
    CONFIG_DROP_INPUT, CgroupPath, DeniedEvent, EBPF_LOG_TARGET, HostName, HostValue,
    MAP_BLOCKED_V4, MAP_BLOCKED_V6, MAP_CGROUPS, MAP_CONFIG, MAP_DENIED, MAP_HOSTS_V4,
    MAP_HOSTS_V6, MAP_NAMES, MAP_NETS_V4, MAP_NETS_V6, MAP_SERVICES, PROGRAM_EGRESS,
    PROGRAM_INGRESS, PROGRAM_SOCKOPS,
};

use super::entries::{
    HostStore, clear_authorized, collect_authorized, collect_due, evict, install_policy, name_key,
    plan_eviction, remove_entry, renew_entry, revoke_entries, set_host_whitelisted, set_network,
    upsert,
};
pub use super::pinned::{
    PinnedStatus, attach_pinned, detach_pinned, list_pinned, read_stats, status_pinned,
};
use super::{
    Authorization, AuthorizedHost, ExitMode, Firewall, FirewallError, HostState, Policy,
    boottime_ns,
    evict::Recency,
    names::NameWriter,
    pins::{self, PinError},
    services::{ServiceMap, sync_blocked, sync_services},
    table::HostTable,
};

/// The eBPF object built from nettrust-ebpf by build.rs (empty when built with
/// `NETTRUST_EBPF_STUB=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nettrust"));

/// The two programs and their attach types.
pub(super) const PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    (PROGRAM_EGRESS, CgroupSkbAttachType::Egress),
    (PROGRAM_INGRESS, CgroupSkbAttachType::Ingress),
];

/// Every program linked to each filtered cgroup (one pinned link per cgroup and program): the two
/// above and `live_tcp` ([`super::sockops`]).
pub(super) const LINKED: [&str; 3] = [PROGRAM_EGRESS, PROGRAM_INGRESS, PROGRAM_SOCKOPS];

/// Errors of the eBPF backend.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The binary was built without its eBPF object.
    #[error(
        "this nettrust binary was built without its eBPF object (NETTRUST_EBPF_STUB=1); rebuild with `cargo xtask build`"
    )]
    NoObject,
    /// The eBPF object could not be loaded.
    #[error("cannot load the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program could not be loaded, pinned or attached.
    #[error("eBPF program {what}")]
    Program {
        /// What failed, naming the cgroup when attaching.
        what: String,
        /// The cause.
        #[source]
        source: ProgramError,
    },
    /// A map could not be opened, read or written.
    #[error("eBPF map {name}: {what}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// What failed.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The bpffs directory or a pin in it cannot be used.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// A link or program could not be pinned.
    #[error("cannot pin {cgroup}: {what}")]
    LinkPin {
        /// The cgroup or program.
        cgroup: PathBuf,
        /// What failed.
        what: String,
    },
    /// A cgroup could not be opened.
    #[error("cgroup {path}: cannot open it")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Nothing is pinned in the directory.
    #[error("nothing pinned in {0}: nettrust has not run with this --bpffs-dir")]
    NotPinned(PathBuf),
}

pub(super) fn map_error(
    name: &'static str,
    what: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> EbpfError {
    EbpfError::Map {
        name,
        what: what.into(),
        source: Box::new(source),
    }
}

pub(super) type HostMap<const N: usize> = AyaHashMap<MapData, [u8; N], HostValue>;
pub(super) type NameMap = AyaHashMap<MapData, [u8; 16], HostName>;
pub(super) type CgroupMap = AyaHashMap<MapData, u64, CgroupPath>;

/// The maps written on the DNS path and by the sweeper, behind one read-write lock: DNS answers
/// authorize under the shared lock (each element operation is atomic in the kernel, so answers
/// never wait for each other); the compare-and-set of the sweeper (renew_if, remove_if), reloads
/// and exit take it exclusively, so a renewal by DNS can never be lost to a removal.
pub(super) struct HostMaps {
    pub(super) v4: Arc<HostTable>,
    pub(super) v6: HostMap<16>,
    pub(super) names: NameMap,
}

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
    pub capacities: pins::Capacities,
}

/// The running eBPF backend.
pub struct EbpfFirewall {
    hosts: RwLock<HostMaps>,
    /// Writes the names of `nettrust list` off the DNS path.
    names: NameWriter,
    /// Second handles on the host maps for full scans (sweeper, metrics), which need no lock
    /// (every change a sweep leads to is conditional): a scan of a full map must not stall DNS
    /// answers.
    scan: (Arc<HostTable>, HostMap<16>),
    /// The established TCP connections of the filtered cgroups (`LIVE_TCP`), for the sweeper.
    live: super::sockops::LiveMap,
    /// The whitelists in force (to diff against on reload).
    policy: Mutex<Policy>,
    pin_dir: PathBuf,
    /// The loaded object (programs and maps stay pinned when it is dropped).
    _ebpf: Mutex<Ebpf>,
    /// The denied-event ring buffer, taken by [`EbpfFirewall::take_denied`].
    denied: Mutex<Option<RingBuf<MapData>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// flock held on the pin directory for the daemon's lifetime: one daemon per directory.
    _lock: File,
    /// The map capacities in force.
    capacities: pins::Capacities,
    /// When a DNS answer last named each authorized host, per family: the eviction order of a
    /// full map ([`super::evict`]).
    recency: (Recency<[u8; 4]>, Recency<[u8; 16]>),
}

impl EbpfFirewall {
    /// Loads the programs, adopts the maps a previous run pinned in `pin_dir` (after checking they
    /// are nettrust's) or creates them, installs the policy and attaches to every cgroup. On error
    /// a fresh directory is removed again; adopted state is left as it was (still enforcing).
    pub fn start(options: &EbpfOptions) -> Result<Self, EbpfError> {
        if OBJECT.is_empty() {
            return Err(EbpfError::NoObject);
        }
        raise_memlock_limit();
        let lock = pins::prepare_dir(&options.pin_dir)?;
        let adopted = pins::check_pinned_maps(&options.pin_dir, options.capacities)?;
        if adopted > 0 {
            tracing::info!(
                dir = %options.pin_dir.display(),
                "adopting the maps of a previous nettrust run"
            );
        }
        let result = Self::start_locked(options, lock);
        if result.is_err() && adopted == 0 {
            let _ = pins::remove_all(&options.pin_dir);
        }
        result
    }

    fn start_locked(options: &EbpfOptions, lock: File) -> Result<Self, EbpfError> {
        let dir = &options.pin_dir;
        pins::remove_temporaries(dir);
        let pin_paths: Vec<(&str, PathBuf)> = pins::MAPS
            .iter()
            .map(|spec| (spec.name, dir.join(spec.name)))
            .collect();
        // The IPv4 table's hash seed: the adopted table's, or a fresh random one.
        let pinned_seed = super::pinned::pinned_seed(dir);
        let seed = pinned_seed.unwrap_or_else(|| rand::random::<u64>() | 1);
        let home_slots = nettrust_common::host_table::home_slots(options.capacities.hosts);
        let log_level = ebpf_log_level();
        let mut loader = EbpfLoader::new();
        loader
            .override_global("HOST_SEED", &seed, true)
            .override_global("HOST_HOME_SLOTS", &home_slots, true)
            .override_global(aya_log::LEVEL, &log_level, true);
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
            if let Some((max_entries, _, _)) = options.capacities.of(name) {
                loader.map_max_entries(name, max_entries);
            }
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| EbpfError::Load(Box::new(e)))?;
        let logger = start_logger(&mut ebpf);

        let mut config: Array<MapData, u32> = take_map(&mut ebpf, MAP_CONFIG)?;
        super::pinned::store_seed(&mut config, seed)?;
        let Some(Map::Array(v4_map)) = ebpf.take_map(MAP_HOSTS_V4) else {
            return Err(map_error(
                MAP_HOSTS_V4,
                "unexpected type",
                io::Error::from(io::ErrorKind::InvalidData),
            ));
        };
        let v4 = Arc::new(super::pinned::map_table(
            &v4_map,
            Some(options.capacities.hosts),
            seed,
            true,
        )?);
        if pinned_seed.is_none() && !v4.is_empty() {
            // A table adopted without its seed (CONFIG was removed): its entries cannot be
            // found, so they are dropped (they would only block); the whitelist follows.
            tracing::warn!("adopted IPv4 host table without its hash seed: its hosts are dropped");
            v4.clear();
        }
        let mut hosts = HostMaps {
            v4: v4.clone(),
            v6: take_map(&mut ebpf, MAP_HOSTS_V6)?,
            names: take_map(&mut ebpf, MAP_NAMES)?,
        };
        let mut nets_v4: LpmTrie<MapData, [u8; 4], u32> = take_map(&mut ebpf, MAP_NETS_V4)?;
        let mut nets_v6: LpmTrie<MapData, [u8; 16], u32> = take_map(&mut ebpf, MAP_NETS_V6)?;
        install_policy(&mut hosts, &mut nets_v4, &mut nets_v6, &options.policy)?;
        let mut services: ServiceMap = take_map(&mut ebpf, MAP_SERVICES)?;
        sync_services(&mut services, &options.policy.services)?;
        let mut blocked_v4: LpmTrie<MapData, [u8; 4], u32> = take_map(&mut ebpf, MAP_BLOCKED_V4)?;
        let mut blocked_v6: LpmTrie<MapData, [u8; 16], u32> = take_map(&mut ebpf, MAP_BLOCKED_V6)?;
        sync_blocked(&mut blocked_v4, &mut blocked_v6, &options.policy.blocked)?;
        config
            .set(CONFIG_DROP_INPUT, u32::from(options.drop_input), 0)
            .map_err(|e| map_error(MAP_CONFIG, "cannot set drop-input", e))?;
        let mut cgroup_map: CgroupMap = take_map(&mut ebpf, MAP_CGROUPS)?;
        let denied: RingBuf<MapData> = take_map(&mut ebpf, MAP_DENIED)?;

        for (name, _) in PROGRAMS {
            let program = program_mut(&mut ebpf, name)?;
            program.load().map_err(|source| EbpfError::Program {
                what: format!("{name} rejected by the kernel"),
                source,
            })?;
            let pin = pins::program_pin(dir, name);
            pins::replace_pin(&pin, |tmp| {
                program.pin(tmp).map_err(|e| crate::error_chain(&e))
            })
            .map_err(|what| EbpfError::LinkPin {
                cgroup: pin.clone(),
                what,
            })?;
        }
        super::sockops::load_and_pin(&mut ebpf, dir)?;

        // The configured cgroups plus those attached at runtime by a previous run.
        let mut cgroups: Vec<PathBuf> = options.cgroups.clone();
        for entry in cgroup_map.iter() {
            let (id, path) = entry.map_err(|e| map_error(MAP_CGROUPS, "cannot read", e))?;
            let path = PathBuf::from(pins::unpadded(&path.path));
            if pins::cgroup_id(&path).ok() == Some(id) {
                if !cgroups.contains(&path) {
                    cgroups.push(path);
                }
            } else {
                tracing::info!(cgroup = %path.display(), "cgroup gone, dropping its links");
                for name in LINKED {
                    let _ = std::fs::remove_file(pins::link_pin(dir, name, id));
                }
            }
        }
        let mut attached_ids = Vec::new();
        for path in &cgroups {
            let id = attach_cgroup(&mut ebpf, &mut cgroup_map, dir, path)?;
            attached_ids.push(id);
            tracing::info!(cgroup = %path.display(), "filter attached");
        }
        // Links whose cgroup is not ours any more (removed from CGROUPS by a detach, or gone).
        for id in pins::linked_cgroups(dir) {
            if !attached_ids.contains(&id) {
                for name in LINKED {
                    let _ = std::fs::remove_file(pins::link_pin(dir, name, id));
                }
                let _ = cgroup_map.remove(&id);
            }
        }

        // The flow map of earlier versions (keyed without cgroup and local address): transient
        // state its programs, replaced above, were the only users of.
        let _ = std::fs::remove_file(dir.join(pins::LEGACY_INBOUND));

        let tasks: Vec<_> = logger.into_iter().collect();
        let scan = (
            v4,
            super::pinned::open_pinned(dir, MAP_HOSTS_V6, Map::HashMap)?,
        );
        let names = NameWriter::start(super::pinned::open_pinned(dir, MAP_NAMES, Map::HashMap)?)
            .map_err(|e| map_error(MAP_NAMES, "cannot start the name writer", e))?;
        let live = super::sockops::open_live(dir)?;
        Ok(Self {
            hosts: RwLock::new(hosts),
            names,
            scan,
            live,
            pin_dir: dir.clone(),
            _ebpf: Mutex::new(ebpf),
            denied: Mutex::new(Some(denied)),
            tasks: Mutex::new(tasks),
            policy: Mutex::new(options.policy.clone()),
            _lock: lock,
            capacities: options.capacities,
            recency: (
                Recency::new(options.capacities.hosts),
                Recency::new(options.capacities.hosts),
            ),
        })
    }

    /// Starts the task logging denied egress (`[Denied] …`) from the ring buffer.
    pub fn start_denied_log(&self) {
        let Some(ring) = self.denied.lock().expect("poisoned").take() else {
            return;
        };
        let cgroups =
            super::pinned::open_pinned::<CgroupMap>(&self.pin_dir, MAP_CGROUPS, Map::HashMap).ok();
        match crate::events::spawn(ring, cgroups) {
            Ok(task) => self.tasks.lock().expect("poisoned").push(task),
            Err(e) => tracing::warn!("denied events unavailable: {e}"),
        }
    }

    /// Watches the configured `cgroups` every [`CGROUP_WATCH_INTERVAL`]: one removed while
    /// attached (its processes are gone, e.g. a stopped service) is logged as an error and its
    /// links and `CGROUPS` entry are dropped; one created again at the same path (the service
    /// restarts) is filtered again at once, without a restart of the daemon.
    pub fn start_cgroup_watch(&self, cgroups: Vec<PathBuf>) {
        let dir = self.pin_dir.clone();
        let task = tokio::spawn(async move {
            let mut known: Vec<(PathBuf, Option<u64>)> = cgroups
                .into_iter()
                .map(|path| {
                    let id = pins::cgroup_id(&path).ok();
                    (path, id)
                })
                .collect();
            let mut tick = tokio::time::interval(CGROUP_WATCH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for (path, id) in &mut known {
                    *id = watch_cgroup(&dir, path, *id);
                }
            }
        });
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
                clear_authorized(&mut hosts).map_err(|e| vec![e])
            }
            ExitMode::KeepAll => Ok(()),
        }
    }
}

/// How often the configured cgroups are checked for removal and re-creation.
pub const CGROUP_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// One check of a configured cgroup whose id was `known` (None: absent at the last check);
/// returns the id now filtered.
fn watch_cgroup(dir: &Path, path: &Path, known: Option<u64>) -> Option<u64> {
    let now = pins::cgroup_id(path).ok();
    if now == known {
        return known;
    }
    if let Some(old) = known {
        tracing::error!(
            cgroup = %path.display(),
            "[Firewall Error] filtered cgroup was removed while attached; its links are dropped and it is filtered again as soon as it is recreated"
        );
        for name in LINKED {
            let _ = std::fs::remove_file(pins::link_pin(dir, name, old));
        }
        if let Ok(mut map) = super::pinned::open_pinned::<CgroupMap>(dir, MAP_CGROUPS, Map::HashMap)
        {
            let _ = map.remove(&old);
        }
    }
    now?;
    match attach_pinned(dir, path) {
        Ok(()) => {
            tracing::warn!(cgroup = %path.display(), "[Firewall] cgroup recreated: filter attached again");
            now
        }
        Err(e) => {
            tracing::error!(
                cgroup = %path.display(),
                error = %crate::error_chain(&e),
                "[Firewall Error] cannot filter the recreated cgroup; retrying"
            );
            None
        }
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSkb, EbpfError> {
    ebpf.program_mut(name)
        .ok_or_else(|| EbpfError::Program {
            what: format!("{name} missing from the object"),
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| EbpfError::Program {
            what: format!("{name} has the wrong type"),
            source,
        })
}

/// Attaches both programs to `path` and pins the links (replacing a previous run's links for
/// that cgroup only once the new ones are attached). Records the cgroup in `CGROUPS`.
fn attach_cgroup(
    ebpf: &mut Ebpf,
    cgroup_map: &mut CgroupMap,
    dir: &Path,
    path: &Path,
) -> Result<u64, EbpfError> {
    let cgroup = File::open(path).map_err(|source| EbpfError::Cgroup {
        path: path.to_owned(),
        source,
    })?;
    let id = pins::cgroup_id(path).map_err(|source| EbpfError::Cgroup {
        path: path.to_owned(),
        source,
    })?;
    for (name, attach_type) in PROGRAMS {
        let program = program_mut(ebpf, name)?;
        attach_one(program, name, attach_type, &cgroup, dir, path, id)?;
    }
    super::sockops::attach(ebpf, &cgroup, dir, path, id)?;
    cgroup_map
        .insert(
            id,
            CgroupPath {
                path: pins::padded(&path.display().to_string()),
            },
            0,
        )
        .map_err(|e| map_error(MAP_CGROUPS, "cannot record the cgroup", e))?;
    Ok(id)
}

pub(super) fn attach_one(
    program: &mut CgroupSkb,
    name: &str,
    attach_type: CgroupSkbAttachType,
    cgroup: &File,
    dir: &Path,
    path: &Path,
    id: u64,
) -> Result<(), EbpfError> {
    // On kernels >= 5.7 aya attaches through a bpf_link, which always coexists with other
    // programs on the cgroup (systemd's, a container runtime's, our previous run's; every one
    // must allow a packet) and rejects attach flags: `Single` means "no flags" there.
    let link_id = program
        .attach(cgroup, attach_type, CgroupAttachMode::Single)
        .map_err(|source| EbpfError::Program {
            what: format!("{name}: cannot attach to {}", path.display()),
            source,
        })?;
    let link = program
        .take_link(link_id)
        .map_err(|source| EbpfError::Program {
            what: format!("{name}: cannot take the link of {}", path.display()),
            source,
        })?;
    pin_link(link, dir, name, id, path)
}

/// Pins the bpf_link `link` of program `name` on cgroup `path` (id `id`) in `dir`, replacing the
/// previous run's pin atomically (the cgroup is never left unfiltered).
pub(super) fn pin_link<L>(
    link: L,
    dir: &Path,
    name: &str,
    id: u64,
    path: &Path,
) -> Result<(), EbpfError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    let link = FdLink::try_from(link).map_err(|e| EbpfError::LinkPin {
        cgroup: path.to_owned(),
        what: e.to_string(),
    })?;
    pins::replace_pin(&pins::link_pin(dir, name, id), |tmp| {
        link.pin(tmp).map(drop).map_err(|e| crate::error_chain(&e))
    })
    .map_err(|what| EbpfError::LinkPin {
        cgroup: path.to_owned(),
        what,
    })
}

/// Whether an error is a full map's (or, for the IPv4 table, a full probe window's).
fn is_full(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::E2BIG)
}

impl EbpfFirewall {
    /// Authorizes `key` in one family's map: under the shared lock first; when the map is full,
    /// under the exclusive lock, where a batch of idle authorizations is evicted before the write
    /// is tried again (unless a concurrent answer already made room).
    fn authorize_in<const N: usize, S: HostStore<N>>(
        &self,
        store: impl Fn(&HostMaps) -> &S,
        recency: &Recency<[u8; N]>,
        key: [u8; N],
        expires_ns: u64,
    ) -> io::Result<Authorization>
    where
        IpAddr: From<[u8; N]>,
    {
        // The answer is recorded before the write and under the same shared lock: an eviction
        // planned earlier compares the record under the exclusive lock, so it cannot remove a
        // host this answer has just confirmed (recorded after the lock was released, the
        // eviction could run in between and see the old record).
        let (result, prune) = {
            let hosts = self.hosts.read().expect("host maps lock poisoned");
            let prune = recency.touch(key, boottime_ns());
            (upsert(store(&hosts), key, expires_ns), prune)
        };
        let result = match result {
            // The last scan found every host whitelisted or in use: refused without a scan.
            Err(e) if is_full(&e) && !recency.may_scan(boottime_ns()) => Err(e),
            Err(e) if is_full(&e) => {
                // The scan that picks the victims runs under the shared lock (answers keep
                // being written); only their removal takes the exclusive one.
                let started = std::time::Instant::now();
                // A host with an open connection is in use even when it has carried no packet
                // for a while (the sweeper keeps it past its TTL alike): the filtered cgroups'
                // established TCP connections (`live_tcp`, which needs no conntrack) and the
                // flows conntrack tracks where it tracks any.
                let mut active = crate::conntrack::active_addresses().unwrap_or_else(|e| {
                    tracing::debug!("conntrack unavailable for eviction ({e})");
                    Default::default()
                });
                match self.live_hosts() {
                    Ok(live) => active.extend(live),
                    Err(e) => tracing::warn!(
                        error = %crate::error_chain(&e),
                        "[Firewall Error] cannot read the live TCP connections for eviction"
                    ),
                }
                let plan = {
                    let hosts = self.hosts.read().expect("host maps lock poisoned");
                    plan_eviction(store(&hosts), recency, self.capacities.hosts, &active)?
                };
                if plan.is_empty() {
                    recency.found_nothing(boottime_ns());
                    tracing::debug!(
                        capacity = self.capacities.hosts,
                        scan_us = started.elapsed().as_micros() as u64,
                        "host map full of whitelisted hosts and hosts in use: nothing to evict, new addresses refused without another scan for a second"
                    );
                }
                let scanned = started.elapsed();
                let (result, evicted) = {
                    let hosts = self.hosts.write().expect("host maps lock poisoned");
                    match upsert(store(&hosts), key, expires_ns) {
                        // A concurrent answer made room meanwhile.
                        Err(e) if is_full(&e) => {
                            let evicted = evict(store(&hosts), recency, plan)?;
                            // Their names go under the same exclusive lock: an answer that
                            // authorizes one of them again afterwards records its name anew.
                            let names = super::bpf_sys::fd_of(&hosts.names);
                            for &addr in &evicted {
                                let _ = super::bpf_sys::delete(names, &name_key(addr));
                            }
                            (upsert(store(&hosts), key, expires_ns), evicted)
                        }
                        other => (other, Vec::new()),
                    }
                };
                if !evicted.is_empty() {
                    crate::metrics::metrics()
                        .evicted
                        .inc_by(evicted.len() as u64);
                    tracing::info!(
                        evicted = evicted.len(),
                        first = ?evicted.first(),
                        capacity = self.capacities.hosts,
                        scan_us = scanned.as_micros() as u64,
                        took_us = started.elapsed().as_micros() as u64,
                        "[Evicted] host map full: idle authorizations removed, least recently used first"
                    );
                }
                result
            }
            other => other,
        };
        if prune {
            // Records of the last second are kept whatever the read finds: an answer recorded
            // just before the read started may write its host only after the read passed it.
            recency.prune(boottime_ns().saturating_sub(1_000_000_000), || {
                let hosts = self.hosts.read().expect("host maps lock poisoned");
                let entries = store(&hosts).entries().ok()?;
                Some(entries.into_iter().map(|(k, _)| k).collect())
            });
        }
        result
    }
}

impl Firewall for EbpfFirewall {
    fn authorize(&self, addr: IpAddr, expires_ns: u64) -> Result<Authorization, FirewallError> {
        let (result, map) = match addr {
            IpAddr::V4(ip) => (
                self.authorize_in(|h| &*h.v4, &self.recency.0, ip.octets(), expires_ns),
                MAP_HOSTS_V4,
            ),
            IpAddr::V6(ip) => (
                self.authorize_in(|h| &h.v6, &self.recency.1, ip.octets(), expires_ns),
                MAP_HOSTS_V6,
            ),
        };
        result.map_err(|e| match e.raw_os_error() {
            // A full host map or table refuses a new key with E2BIG.
            Some(libc::E2BIG) => FirewallError::Full {
                addr,
                map,
                capacity: self.capacities.hosts,
            },
            _ => FirewallError::Authorize {
                addr,
                source: Box::new(e),
            },
        })
    }

    fn authorized(&self) -> Result<Vec<AuthorizedHost>, FirewallError> {
        collect_authorized(&self.scan.0, &self.scan.1, None)
            .map(|list| list.into_iter().map(|(host, _)| host).collect())
            .map_err(|e| FirewallError::Read(Box::new(e)))
    }

    fn set_whitelist(&self, new: &Policy) -> Result<(), FirewallError> {
        let wrap = |e: EbpfError| FirewallError::Whitelist(Box::new(e));
        let mut current = self.policy.lock().expect("policy lock poisoned");
        let mut hosts = self.hosts.write().expect("host maps lock poisoned");
        let mut nets_v4: LpmTrie<MapData, [u8; 4], u32> =
            super::pinned::open_pinned(&self.pin_dir, MAP_NETS_V4, Map::LpmTrie).map_err(wrap)?;
        let mut nets_v6: LpmTrie<MapData, [u8; 16], u32> =
            super::pinned::open_pinned(&self.pin_dir, MAP_NETS_V6, Map::LpmTrie).map_err(wrap)?;
        // Add first, then remove: an entry on both lists is never absent in between.
        for net in new
            .whitelist_networks
            .iter()
            .filter(|n| !current.whitelist_networks.contains(n))
        {
            set_network(&mut nets_v4, &mut nets_v6, net, true).map_err(wrap)?;
        }
        for &host in new
            .whitelist_hosts
            .iter()
            .filter(|h| !current.whitelist_hosts.contains(h))
        {
            set_host_whitelisted(&mut hosts, host, true).map_err(wrap)?;
        }
        for net in current
            .whitelist_networks
            .iter()
            .filter(|n| !new.whitelist_networks.contains(n))
        {
            set_network(&mut nets_v4, &mut nets_v6, net, false).map_err(wrap)?;
        }
        for &host in current
            .whitelist_hosts
            .iter()
            .filter(|h| !new.whitelist_hosts.contains(h))
        {
            set_host_whitelisted(&mut hosts, host, false).map_err(wrap)?;
        }
        if new.services != current.services {
            let mut map: ServiceMap =
                super::pinned::open_pinned(&self.pin_dir, MAP_SERVICES, Map::HashMap)
                    .map_err(wrap)?;
            sync_services(&mut map, &new.services).map_err(wrap)?;
        }
        if new.blocked != current.blocked {
            let mut v4: LpmTrie<MapData, [u8; 4], u32> =
                super::pinned::open_pinned(&self.pin_dir, MAP_BLOCKED_V4, Map::LpmTrie)
                    .map_err(wrap)?;
            let mut v6: LpmTrie<MapData, [u8; 16], u32> =
                super::pinned::open_pinned(&self.pin_dir, MAP_BLOCKED_V6, Map::LpmTrie)
                    .map_err(wrap)?;
            sync_blocked(&mut v4, &mut v6, &new.blocked).map_err(wrap)?;
        }
        *current = new.clone();
        Ok(())
    }

    /// Queued for the name writer: the reply does not wait for it.
    fn record_name(&self, addr: IpAddr, name: &str) -> Result<(), FirewallError> {
        let value = HostName {
            name: pins::padded(&super::listed_name(name)),
        };
        self.names.put(name_key(addr), value);
        Ok(())
    }

    fn revoke(
        &self,
        revoked: &dyn Fn(IpAddr, Option<&str>) -> bool,
    ) -> Result<Vec<IpAddr>, FirewallError> {
        // Names still queued are written first, so a domain match sees them.
        self.names.flush();
        let mut hosts = self.hosts.write().expect("host maps lock poisoned");
        let HostMaps { v4, v6, names } = &mut *hosts;
        let mut removed = Vec::new();
        revoke_entries(&**v4, names, revoked, &mut removed)
            .and_then(|()| revoke_entries(&*v6, names, revoked, &mut removed))
            .map_err(|e| FirewallError::Read(Box::new(e)))?;
        Ok(removed)
    }

    fn live_hosts(&self) -> Result<std::collections::HashSet<IpAddr>, FirewallError> {
        super::sockops::live_hosts(&self.live, &pins::linked_cgroups(&self.pin_dir))
            .map_err(|e| FirewallError::Read(Box::new(e)))
    }

    fn due(&self, horizon_ns: u64) -> Result<Vec<HostState>, FirewallError> {
        let mut out = Vec::new();
        collect_due(&*self.scan.0, horizon_ns, &mut out)
            .and_then(|()| collect_due(&self.scan.1, horizon_ns, &mut out))
            .map_err(|e| FirewallError::Read(Box::new(e)))?;
        Ok(out)
    }

    fn renew_if(
        &self,
        addr: IpAddr,
        seen_expires_ns: u64,
        new_expires_ns: u64,
    ) -> Result<bool, FirewallError> {
        let hosts = self.hosts.write().expect("host maps lock poisoned");
        let result = match addr {
            IpAddr::V4(ip) => renew_entry(&*hosts.v4, ip.octets(), seen_expires_ns, new_expires_ns),
            IpAddr::V6(ip) => renew_entry(&hosts.v6, ip.octets(), seen_expires_ns, new_expires_ns),
        };
        result.map_err(|e| FirewallError::Update {
            addr,
            source: Box::new(e),
        })
    }

    fn remove_if(&self, addr: IpAddr, seen_expires_ns: u64) -> Result<bool, FirewallError> {
        let mut hosts = self.hosts.write().expect("host maps lock poisoned");
        let result = match addr {
            IpAddr::V4(ip) => remove_entry(&*hosts.v4, ip.octets(), seen_expires_ns),
            IpAddr::V6(ip) => remove_entry(&hosts.v6, ip.octets(), seen_expires_ns),
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

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| {
        map_error(
            name,
            "missing from the object",
            io::Error::from(io::ErrorKind::NotFound),
        )
    })?;
    T::try_from(map).map_err(|e| map_error(name, "unexpected type", e))
}

/// Lifts RLIMIT_MEMLOCK for kernels that still charge BPF maps to it (before 5.11).
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!(
            "cannot raise RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        );
    }
}

/// The level of the egress program's aya-log records (`AYA_LOG_LEVEL`, fixed at load): the most
/// verbose level the daemon's tracing filter enables for [`EBPF_LOG_TARGET`], 0 (nothing) when
/// it enables none. The program writes only debug records, so without debug it writes nothing.
fn ebpf_log_level() -> u8 {
    use aya_log::Level;
    use tracing::{Level as T, enabled};
    let level = if enabled!(target: EBPF_LOG_TARGET, T::TRACE) {
        Level::Trace
    } else if enabled!(target: EBPF_LOG_TARGET, T::DEBUG) {
        Level::Debug
    } else if enabled!(target: EBPF_LOG_TARGET, T::INFO) {
        Level::Info
    } else if enabled!(target: EBPF_LOG_TARGET, T::WARN) {
        Level::Warn
    } else if enabled!(target: EBPF_LOG_TARGET, T::ERROR) {
        Level::Error
    } else {
        return 0;
    };
    level as u8
}

/// Forwards the egress program's aya-log records (rate-limited in the kernel) to tracing through
/// its `log` bridge, from a task woken by the ring buffer's fd (opened before the privilege drop,
/// so reading it needs no capability). The logger must stay alive: dropping it closes the
/// `AYA_LOGS` map, and the programs, loaded after this, would reference a closed fd.
fn start_logger(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            tracing::warn!("eBPF debug log unavailable: {e}");
            return None;
        }
    };
    // SAFETY: the logger owns its ring buffer's fd and keeps it open until the AsyncFd (which
    // owns the logger) is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut logger = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("eBPF debug log unavailable: {e}");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

/// Used by [`crate::events`]: parses one ring-buffer record.
pub fn parse_denied(bytes: &[u8]) -> Option<DeniedEvent> {
    if bytes.len() < size_of::<DeniedEvent>() {
        return None;
    }
    // SAFETY: DeniedEvent is plain data; read_unaligned copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DeniedEvent>()) })
}
