//! The eBPF backend: loads nettrust-ebpf's `egress` program, fills its maps with the policy, pins
//! the maps under the bpffs directory (so `nettrust list` can read them) and attaches the program
//! to every configured cgroup. Whitelists are written *before* the program is attached, so there is
//! never a moment where a whitelisted destination is dropped.

use std::{
    fs::File,
    io,
    net::IpAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{HashMap as AyaHashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError},
};
use ipnet::IpNet;
use nettrust_common::{
    FLAG_AUTHORIZED, FLAG_WHITELISTED, HostValue, MAP_HOSTS_V4, MAP_HOSTS_V6, MAP_NETS_V4,
    MAP_NETS_V6, MAP_STATS, PROGRAM_EGRESS, STAT_COUNT,
};

use super::{Authorization, AuthorizedHost, Firewall, FirewallError, Policy, boottime_ns};

/// The eBPF object built from nettrust-ebpf by build.rs (empty when built with
/// `NETTRUST_EBPF_STUB=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nettrust"));

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is conventionally mounted; nettrust mounts it there when absent.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// Names of the maps pinned under the bpffs directory.
const PINNED_MAPS: [&str; 5] = [
    MAP_HOSTS_V4,
    MAP_HOSTS_V6,
    MAP_NETS_V4,
    MAP_NETS_V6,
    MAP_STATS,
];

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
    /// The egress program could not be loaded or attached.
    #[error("eBPF program {what}")]
    Program {
        /// What failed, naming the cgroup when attaching.
        what: String,
        /// The cause.
        #[source]
        source: ProgramError,
    },
    /// A map could not be opened, written or pinned.
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
    /// The bpffs directory cannot be used.
    #[error("bpffs directory {path}: {what}")]
    Bpffs {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        what: String,
        /// The cause, if any.
        #[source]
        source: Option<io::Error>,
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
}

fn map_error(
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

type HostMap<const N: usize> = AyaHashMap<MapData, [u8; N], HostValue>;

/// The two host maps, written by DNS answers.
struct HostMaps {
    v4: HostMap<4>,
    v6: HostMap<16>,
}

/// The running eBPF backend. Dropping it detaches the program; [`EbpfFirewall::stop`] also removes
/// the pinned maps and reports what could not be cleaned.
pub struct EbpfFirewall {
    hosts: Mutex<HostMaps>,
    attached: Mutex<Attached>,
    /// The whitelists in force (to diff against on reload).
    policy: Mutex<Policy>,
    pin_dir: PathBuf,
    /// flock held on the pin directory for the daemon's lifetime: one daemon per directory.
    _lock: File,
}

/// The loaded object with the program's links, and the task draining its logs.
struct Attached {
    ebpf: Ebpf,
    links: Vec<aya::programs::cgroup_skb::CgroupSkbLinkId>,
    logger: Option<tokio::task::JoinHandle<()>>,
}

impl EbpfFirewall {
    /// Loads the program, installs `policy`, pins the maps in `pin_dir` and attaches the program to
    /// `cgroups`. On error everything created so far is removed again.
    pub fn start(cgroups: &[PathBuf], pin_dir: &Path, policy: &Policy) -> Result<Self, EbpfError> {
        if OBJECT.is_empty() {
            return Err(EbpfError::NoObject);
        }
        raise_memlock_limit();
        let lock = prepare_pin_dir(pin_dir)?;
        let result = Self::start_locked(cgroups, pin_dir, policy, lock);
        if result.is_err() {
            let _ = remove_pins(pin_dir);
        }
        result
    }

    fn start_locked(
        cgroups: &[PathBuf],
        pin_dir: &Path,
        policy: &Policy,
        lock: File,
    ) -> Result<Self, EbpfError> {
        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|e| EbpfError::Load(Box::new(e)))?;
        let logger = start_logger(&mut ebpf);

        for name in PINNED_MAPS {
            let map = ebpf.map(name).ok_or_else(|| {
                map_error(
                    name,
                    "missing from the object",
                    io::Error::from(io::ErrorKind::NotFound),
                )
            })?;
            map.pin(pin_dir.join(name))
                .map_err(|e| map_error(name, format!("cannot pin in {}", pin_dir.display()), e))?;
        }
        let mut hosts = HostMaps {
            v4: take_hash(&mut ebpf, MAP_HOSTS_V4)?,
            v6: take_hash(&mut ebpf, MAP_HOSTS_V6)?,
        };
        let mut nets_v4: LpmTrie<MapData, [u8; 4], u32> = take_map(&mut ebpf, MAP_NETS_V4)?;
        let mut nets_v6: LpmTrie<MapData, [u8; 16], u32> = take_map(&mut ebpf, MAP_NETS_V6)?;

        let whitelisted = HostValue {
            expires_ns: 0,
            flags: FLAG_WHITELISTED,
            _pad: 0,
        };
        for &host in &policy.whitelist_hosts {
            let result = match host {
                IpAddr::V4(ip) => hosts
                    .v4
                    .insert(ip.octets(), whitelisted, 0)
                    .map_err(|e| (MAP_HOSTS_V4, e)),
                IpAddr::V6(ip) => hosts
                    .v6
                    .insert(ip.octets(), whitelisted, 0)
                    .map_err(|e| (MAP_HOSTS_V6, e)),
            };
            result
                .map_err(|(name, e)| map_error(name, format!("cannot whitelist host {host}"), e))?;
        }
        for net in &policy.whitelist_networks {
            let result = match net {
                IpNet::V4(n) => nets_v4
                    .insert(
                        &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                        FLAG_WHITELISTED,
                        0,
                    )
                    .map_err(|e| (MAP_NETS_V4, e)),
                IpNet::V6(n) => nets_v6
                    .insert(
                        &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                        FLAG_WHITELISTED,
                        0,
                    )
                    .map_err(|e| (MAP_NETS_V6, e)),
            };
            result.map_err(|(name, e)| {
                map_error(name, format!("cannot whitelist network {net}"), e)
            })?;
        }

        let program: &mut CgroupSkb = ebpf
            .program_mut(PROGRAM_EGRESS)
            .ok_or_else(|| EbpfError::Program {
                what: "egress missing from the object".into(),
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| EbpfError::Program {
                what: "egress has the wrong type".into(),
                source,
            })?;
        program.load().map_err(|source| EbpfError::Program {
            what: "egress rejected by the kernel".into(),
            source,
        })?;
        let mut links = Vec::with_capacity(cgroups.len());
        for path in cgroups {
            let cgroup = File::open(path).map_err(|source| EbpfError::Cgroup {
                path: path.clone(),
                source,
            })?;
            // On kernels >= 5.7 aya attaches through a bpf_link, which always coexists with other
            // programs on the cgroup (systemd's, a container runtime's; every one must allow a
            // packet) and rejects attach flags: `Single` means "no flags" there.
            let link = program
                .attach(
                    &cgroup,
                    CgroupSkbAttachType::Egress,
                    CgroupAttachMode::Single,
                )
                .map_err(|source| EbpfError::Program {
                    what: format!("cannot attach to {}", path.display()),
                    source,
                })?;
            links.push(link);
            tracing::info!(cgroup = %path.display(), "egress filter attached");
        }
        Ok(Self {
            hosts: Mutex::new(hosts),
            attached: Mutex::new(Attached {
                ebpf,
                links,
                logger,
            }),
            policy: Mutex::new(policy.clone()),
            pin_dir: pin_dir.to_owned(),
            _lock: lock,
        })
    }

    /// Detaches the program from every cgroup and removes the pinned maps. Keeps cleaning after a
    /// failure and returns every error.
    pub fn stop(&self) -> Result<(), Vec<EbpfError>> {
        let mut errors = Vec::new();
        let mut attached = self.attached.lock().expect("attachment lock poisoned");
        let Attached {
            ebpf,
            links,
            logger,
        } = &mut *attached;
        if let Some(logger) = logger.take() {
            logger.abort();
        }
        match ebpf
            .program_mut(PROGRAM_EGRESS)
            .map(<&mut CgroupSkb>::try_from)
        {
            Some(Ok(program)) => {
                for link in links.drain(..) {
                    if let Err(source) = program.detach(link) {
                        errors.push(EbpfError::Program {
                            what: "cannot detach".into(),
                            source,
                        });
                    }
                }
            }
            _ => errors.push(EbpfError::Program {
                what: "egress missing at shutdown".into(),
                source: ProgramError::NotLoaded,
            }),
        }
        if let Err(e) = remove_pins(&self.pin_dir) {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl Firewall for EbpfFirewall {
    fn authorize(&self, addr: IpAddr, expires_ns: u64) -> Result<Authorization, FirewallError> {
        let mut hosts = self.hosts.lock().expect("host maps lock poisoned");
        let result = match addr {
            IpAddr::V4(ip) => upsert(&mut hosts.v4, ip.octets(), expires_ns),
            IpAddr::V6(ip) => upsert(&mut hosts.v6, ip.octets(), expires_ns),
        };
        result.map_err(|e| FirewallError::Authorize {
            addr,
            source: Box::new(e),
        })
    }

    fn authorized(&self) -> Result<Vec<AuthorizedHost>, FirewallError> {
        let hosts = self.hosts.lock().expect("host maps lock poisoned");
        collect_authorized(&hosts.v4, &hosts.v6).map_err(|e| FirewallError::Read(Box::new(e)))
    }

    fn set_whitelist(&self, new: &Policy) -> Result<(), FirewallError> {
        let wrap = |e: EbpfError| FirewallError::Whitelist(Box::new(e));
        let mut current = self.policy.lock().expect("policy lock poisoned");
        let mut hosts = self.hosts.lock().expect("host maps lock poisoned");
        let mut nets_v4: LpmTrie<MapData, [u8; 4], u32> =
            open_pinned_map(&self.pin_dir, MAP_NETS_V4).map_err(wrap)?;
        let mut nets_v6: LpmTrie<MapData, [u8; 16], u32> =
            open_pinned_map(&self.pin_dir, MAP_NETS_V6).map_err(wrap)?;
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
        *current = new.clone();
        Ok(())
    }
}

/// Writes an authorization, keeping the flags already present. A whitelisted entry is left as it is.
fn upsert<const N: usize>(
    map: &mut HostMap<N>,
    key: [u8; N],
    expires_ns: u64,
) -> Result<Authorization, MapError> {
    match map.get(&key, 0) {
        Ok(old) if old.flags & FLAG_WHITELISTED != 0 => Ok(Authorization::Already),
        Ok(old) => {
            let live = old.is_live(boottime_ns());
            map.insert(
                key,
                HostValue {
                    expires_ns,
                    flags: old.flags | FLAG_AUTHORIZED,
                    _pad: 0,
                },
                0,
            )?;
            Ok(if live {
                Authorization::Already
            } else {
                Authorization::New
            })
        }
        Err(MapError::KeyNotFound) => {
            map.insert(
                key,
                HostValue {
                    expires_ns,
                    flags: FLAG_AUTHORIZED,
                    _pad: 0,
                },
                0,
            )?;
            Ok(Authorization::New)
        }
        Err(e) => Err(e),
    }
}

fn collect_authorized(v4: &HostMap<4>, v6: &HostMap<16>) -> Result<Vec<AuthorizedHost>, MapError> {
    let now = boottime_ns();
    let mut out = Vec::new();
    for entry in v4.iter() {
        let (key, value) = entry?;
        if value.flags & FLAG_AUTHORIZED != 0 && value.is_live(now) {
            out.push(AuthorizedHost {
                addr: IpAddr::from(key),
                expires_ns: value.expires_ns,
            });
        }
    }
    for entry in v6.iter() {
        let (key, value) = entry?;
        if value.flags & FLAG_AUTHORIZED != 0 && value.is_live(now) {
            out.push(AuthorizedHost {
                addr: IpAddr::from(key),
                expires_ns: value.expires_ns,
            });
        }
    }
    Ok(out)
}

/// Reads the authorized hosts from the maps a running daemon pinned in `pin_dir`.
pub fn list_pinned(pin_dir: &Path) -> Result<Vec<AuthorizedHost>, EbpfError> {
    let v4: HostMap<4> = open_pinned_map(pin_dir, MAP_HOSTS_V4)?;
    let v6: HostMap<16> = open_pinned_map(pin_dir, MAP_HOSTS_V6)?;
    collect_authorized(&v4, &v6).map_err(|e| map_error(MAP_HOSTS_V4, "cannot read", e))
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

fn take_hash<const N: usize>(ebpf: &mut Ebpf, name: &'static str) -> Result<HostMap<N>, EbpfError>
where
    [u8; N]: Pod,
{
    take_map(ebpf, name)
}

/// Makes sure `pin_dir` is an empty directory on bpffs that only this process uses. bpffs is
/// mounted at /sys/fs/bpf when nothing is mounted there yet.
fn prepare_pin_dir(pin_dir: &Path) -> Result<File, EbpfError> {
    let bpffs_err = |what: &str, source: Option<io::Error>| EbpfError::Bpffs {
        path: pin_dir.to_owned(),
        what: what.into(),
        source,
    };
    let parent = pin_dir
        .parent()
        .ok_or_else(|| bpffs_err("has no parent directory", None))?;
    if !is_bpffs(parent) {
        if parent == Path::new(BPFFS_MOUNT) {
            mount_bpffs(parent).map_err(|e| {
                bpffs_err(
                    "bpffs is not mounted at /sys/fs/bpf and mounting it failed",
                    Some(e),
                )
            })?;
        } else {
            return Err(bpffs_err(
                "its parent is not on a bpf filesystem (mount -t bpf bpf DIR)",
                None,
            ));
        }
    }
    match std::fs::create_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(bpffs_err("cannot create it", Some(e))),
    }
    let dir = File::open(pin_dir).map_err(|e| bpffs_err("cannot open it", Some(e)))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(bpffs_err(
            "is in use by another nettrust daemon",
            Some(io::Error::last_os_error()),
        ));
    }
    let stale: Vec<_> = std::fs::read_dir(pin_dir)
        .map_err(|e| bpffs_err("cannot list it", Some(e)))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    if !stale.is_empty() {
        tracing::warn!(dir = %pin_dir.display(), "removing maps left by a previous nettrust run");
        for path in stale {
            std::fs::remove_file(&path)
                .map_err(|e| bpffs_err("cannot remove a stale pin", Some(e)))?;
        }
    }
    Ok(dir)
}

fn remove_pins(pin_dir: &Path) -> Result<(), EbpfError> {
    let bpffs_err = |what: String, source: io::Error| EbpfError::Bpffs {
        path: pin_dir.to_owned(),
        what,
        source: Some(source),
    };
    for name in PINNED_MAPS {
        match std::fs::remove_file(pin_dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bpffs_err(format!("cannot unpin {name}"), e)),
        }
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(bpffs_err("cannot remove it".into(), e)),
    }
}

fn is_bpffs(path: &Path) -> bool {
    crate::sys::fs_magic(path).is_ok_and(|magic| magic == BPF_FS_MAGIC)
}

fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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

/// Forwards the eBPF program's aya-log records (debug level) to tracing. The logger must stay
/// alive: dropping it closes the log map the program uses.
fn start_logger(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            tracing::warn!("eBPF logs unavailable: {e}");
            return None;
        }
    };
    // SAFETY: the logger owns its ring-buffer fd and keeps it open until the AsyncFd (which owns the
    // logger) is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut logger = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("eBPF logs unavailable: {e}");
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

/// The egress program's counters (summed over CPUs), read from the `STATS` map pinned in
/// `pin_dir`, indexed by the `STAT_*` constants.
pub fn read_stats(pin_dir: &Path) -> Result<[u64; STAT_COUNT as usize], EbpfError> {
    let stats: PerCpuArray<MapData, u64> = open_pinned_map(pin_dir, MAP_STATS)?;
    let mut out = [0u64; STAT_COUNT as usize];
    for (index, slot) in (0..STAT_COUNT).zip(out.iter_mut()) {
        let per_cpu = stats
            .get(&index, 0)
            .map_err(|e| map_error(MAP_STATS, "cannot read", e))?;
        *slot = per_cpu.iter().sum();
    }
    Ok(out)
}

/// Adds (`allow`) or removes a whitelisted network.
fn set_network(
    v4: &mut LpmTrie<MapData, [u8; 4], u32>,
    v6: &mut LpmTrie<MapData, [u8; 16], u32>,
    net: &IpNet,
    allow: bool,
) -> Result<(), EbpfError> {
    let result = match (net, allow) {
        (IpNet::V4(n), true) => v4.insert(
            &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
            FLAG_WHITELISTED,
            0,
        ),
        (IpNet::V4(n), false) => v4.remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets())),
        (IpNet::V6(n), true) => v6.insert(
            &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
            FLAG_WHITELISTED,
            0,
        ),
        (IpNet::V6(n), false) => v6.remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets())),
    };
    let name = if net.addr().is_ipv4() {
        MAP_NETS_V4
    } else {
        MAP_NETS_V6
    };
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_error(
            name,
            format!("cannot update whitelisted network {net}"),
            e,
        )),
    }
}

/// Whitelists a host (keeping the authorization flag it may carry), or removes it. A host taken
/// off the whitelist loses any authorization too: it must be resolved again, which keeps "removed
/// from the config" meaning "no longer reachable" (the original's issue #8).
fn set_host_whitelisted(
    hosts: &mut HostMaps,
    host: IpAddr,
    whitelisted: bool,
) -> Result<(), EbpfError> {
    let result = match host {
        IpAddr::V4(ip) => {
            flag_host(&mut hosts.v4, ip.octets(), whitelisted).map_err(|e| (MAP_HOSTS_V4, e))
        }
        IpAddr::V6(ip) => {
            flag_host(&mut hosts.v6, ip.octets(), whitelisted).map_err(|e| (MAP_HOSTS_V6, e))
        }
    };
    result.map_err(|(name, e)| map_error(name, format!("cannot update whitelisted host {host}"), e))
}

fn flag_host<const N: usize>(
    map: &mut HostMap<N>,
    key: [u8; N],
    whitelisted: bool,
) -> Result<(), MapError> {
    if !whitelisted {
        return match map.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e),
        };
    }
    let flags = match map.get(&key, 0) {
        Ok(old) => old.flags | FLAG_WHITELISTED,
        Err(MapError::KeyNotFound) => FLAG_WHITELISTED,
        Err(e) => return Err(e),
    };
    // Whitelisted entries never expire.
    map.insert(
        key,
        HostValue {
            expires_ns: 0,
            flags,
            _pad: 0,
        },
        0,
    )
}

/// Opens a map pinned in `pin_dir` by this daemon.
fn open_pinned_map<T>(pin_dir: &Path, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| {
        map_error(
            name,
            format!(
                "no pinned map at {} (is the nettrust daemon running?)",
                path.display()
            ),
            e,
        )
    })?;
    let map = match name {
        MAP_NETS_V4 | MAP_NETS_V6 => Map::LpmTrie(data),
        MAP_STATS => Map::PerCpuArray(data),
        _ => Map::HashMap(data),
    };
    T::try_from(map).map_err(|e| map_error(name, "unexpected map type", e))
}
