//! Operations on the state an eBPF run pinned in the bpffs directory, without loading the object:
//! what `nettrust list`, `status`, `attach` and `detach` (and the metrics endpoint) do, with the
//! daemon running, stopped or killed.

use std::{fs::File, io, os::fd::AsFd as _, path::Path};

use aya::{
    maps::{Array, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap},
    programs::CgroupSkb,
};
use nettrust_common::{
    CONFIG_DROP_INPUT, CONFIG_HOST_SEED_HI, CONFIG_HOST_SEED_LO, CgroupPath, FLAG_WHITELISTED,
    HostValue, MAP_ALLOWS, MAP_CGROUPS, MAP_CONFIG, MAP_DROPS, MAP_HOSTS_V4, MAP_HOSTS_V6,
    MAP_NAMES, MAP_NETS_V4, MAP_NETS_V6, MAP_STATS, STAT_COUNT,
};

use super::{
    AuthorizedHost, boottime_ns,
    ebpf::{CgroupMap, EbpfError, HostMap, LINKED, NameMap, PROGRAMS, attach_one, map_error},
    entries::{HostStore, collect_authorized},
    pins,
    table::HostTable,
};

/// A directory that does not exist holds nothing nettrust pinned: say so rather than "cannot stat".
fn not_pinned_if_missing(dir: &Path) -> Result<(), EbpfError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(EbpfError::NotPinned(dir.to_owned())),
        _ => Ok(()),
    }
}

/// `nettrust attach`: attaches the pinned programs to one more cgroup, persisting like the rest.
pub fn attach_pinned(dir: &Path, path: &Path) -> Result<(), EbpfError> {
    not_pinned_if_missing(dir)?;
    pins::check_owner(dir)?;
    let id = pins::cgroup_id(path).map_err(|source| EbpfError::Cgroup {
        path: path.to_owned(),
        source,
    })?;
    let cgroup = File::open(path).map_err(|source| EbpfError::Cgroup {
        path: path.to_owned(),
        source,
    })?;
    let mut cgroup_map: CgroupMap = open_pinned(dir, MAP_CGROUPS, Map::HashMap)?;
    for (name, attach_type) in PROGRAMS {
        let pin = pins::program_pin(dir, name);
        if !pin.exists() {
            return Err(EbpfError::NotPinned(dir.to_owned()));
        }
        let mut program =
            CgroupSkb::from_pin(&pin, attach_type).map_err(|source| EbpfError::Program {
                what: format!("{name}: cannot open {}", pin.display()),
                source,
            })?;
        attach_one(&mut program, name, attach_type, &cgroup, dir, path, id)?;
    }
    super::sockops::attach_pinned(&cgroup, dir, path, id)?;
    cgroup_map
        .insert(
            id,
            CgroupPath {
                path: pins::padded(&path.display().to_string()),
            },
            0,
        )
        .map_err(|e| map_error(MAP_CGROUPS, "cannot record the cgroup", e))
}

/// `nettrust detach`: removes the links of one cgroup (unpinning a link detaches it).
pub fn detach_pinned(dir: &Path, path: &Path) -> Result<bool, EbpfError> {
    not_pinned_if_missing(dir)?;
    pins::check_owner(dir)?;
    let id = pins::cgroup_id(path).map_err(|source| EbpfError::Cgroup {
        path: path.to_owned(),
        source,
    })?;
    let mut found = false;
    for name in LINKED {
        let pin = pins::link_pin(dir, name, id);
        pins::detach_link(&pin);
        match std::fs::remove_file(&pin) {
            Ok(()) => found = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(EbpfError::LinkPin {
                    cgroup: path.to_owned(),
                    what: e.to_string(),
                });
            }
        }
    }
    if let Ok(mut cgroup_map) = open_pinned::<CgroupMap>(dir, MAP_CGROUPS, Map::HashMap) {
        let _ = cgroup_map.remove(&id);
    }
    Ok(found)
}

/// Reads the authorized hosts and their names from the maps pinned in `pin_dir` (daemon running
/// or not).
pub fn list_pinned(pin_dir: &Path) -> Result<Vec<(AuthorizedHost, Option<String>)>, EbpfError> {
    let v4 = open_table(pin_dir, false)?;
    let v6: HostMap<16> = open_pinned(pin_dir, MAP_HOSTS_V6, Map::HashMap)?;
    let names: Option<NameMap> = open_pinned(pin_dir, MAP_NAMES, Map::HashMap).ok();
    collect_authorized(&v4, &v6, names.as_ref())
        .map_err(|e| map_error(MAP_HOSTS_V4, "cannot read", e))
}

/// What `nettrust status` reports.
#[derive(Debug, Default)]
pub struct PinnedStatus {
    /// Whether a daemon holds the directory.
    pub daemon_running: bool,
    /// Whether the programs are pinned (enforcement in place).
    pub programs_pinned: bool,
    /// Attached cgroups: id, path (if recorded), whether both links are pinned.
    pub cgroups: Vec<(u64, Option<String>, bool)>,
    /// Whitelisted hosts and networks.
    pub whitelisted: usize,
    /// Live authorized hosts.
    pub authorized: usize,
    /// Expired entries not swept yet.
    pub expired: usize,
    /// Sums of the `STAT_*` counters over all CPUs.
    pub stats: Vec<u64>,
    /// Dropped egress packets per cgroup id.
    pub drops: Vec<(u64, u64)>,
    /// Allowed egress packets per cgroup id.
    pub allows: Vec<(u64, u64)>,
    /// Whether unsolicited inbound packets are dropped.
    pub drop_input: bool,
}

/// A per-cgroup counter map ([`MAP_DROPS`], [`MAP_ALLOWS`]) summed over CPUs, by cgroup id.
fn per_cgroup_sums(pin_dir: &Path, name: &'static str) -> Result<Vec<(u64, u64)>, EbpfError> {
    let map: PerCpuHashMap<MapData, u64, u64> = open_pinned(pin_dir, name, Map::PerCpuHashMap)?;
    let mut sums: Vec<(u64, u64)> = map
        .iter()
        .filter_map(Result::ok)
        .map(|(id, values)| (id, values.iter().sum()))
        .collect();
    sums.sort_unstable();
    Ok(sums)
}

/// Egress packets per cgroup for the metrics: `(cgroup path or id, allowed, dropped)`. Cheap
/// (no host-map scan), so it can run at every scrape.
pub fn cgroup_egress(pin_dir: &Path) -> Result<Vec<(String, u64, u64)>, EbpfError> {
    let allows = per_cgroup_sums(pin_dir, MAP_ALLOWS)?;
    let drops = per_cgroup_sums(pin_dir, MAP_DROPS)?;
    let paths: Option<CgroupMap> = open_pinned(pin_dir, MAP_CGROUPS, Map::HashMap).ok();
    let label = |id: u64| {
        paths
            .as_ref()
            .and_then(|m| m.get(&id, 0).ok())
            .map(|p| pins::unpadded(&p.path))
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| format!("id:{id}"))
    };
    let mut ids: Vec<u64> = allows
        .iter()
        .chain(drops.iter())
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let find =
        |list: &[(u64, u64)], id: u64| list.iter().find(|(i, _)| *i == id).map_or(0, |(_, n)| *n);
    Ok(ids
        .into_iter()
        .map(|id| (label(id), find(&allows, id), find(&drops, id)))
        .collect())
}

/// Reads the state pinned in `pin_dir`.
pub fn status_pinned(pin_dir: &Path) -> Result<PinnedStatus, EbpfError> {
    if !pin_dir.join(MAP_HOSTS_V4).exists() {
        return Err(EbpfError::NotPinned(pin_dir.to_owned()));
    }
    let mut status = PinnedStatus {
        daemon_running: pins::daemon_running(pin_dir),
        programs_pinned: PROGRAMS
            .iter()
            .all(|(name, _)| pins::program_pin(pin_dir, name).exists()),
        ..PinnedStatus::default()
    };
    let now = boottime_ns();
    let v4 = open_table(pin_dir, false)?;
    let v6: HostMap<16> = open_pinned(pin_dir, MAP_HOSTS_V6, Map::HashMap)?;
    let mut tally = |value: HostValue| {
        if value.flags & FLAG_WHITELISTED != 0 {
            status.whitelisted += 1;
        } else if value.is_live(now) {
            status.authorized += 1;
        } else {
            status.expired += 1;
        }
    };
    let read = |e| map_error(MAP_HOSTS_V4, "cannot read", e);
    HostStore::entries(&v4)
        .map_err(read)?
        .into_iter()
        .for_each(|(_, v)| tally(v));
    let read = |e| map_error(MAP_HOSTS_V6, "cannot read", e);
    v6.entries()
        .map_err(read)?
        .into_iter()
        .for_each(|(_, v)| tally(v));
    let nets4: LpmTrie<MapData, [u8; 4], u32> = open_pinned(pin_dir, MAP_NETS_V4, Map::LpmTrie)?;
    let nets6: LpmTrie<MapData, [u8; 16], u32> = open_pinned(pin_dir, MAP_NETS_V6, Map::LpmTrie)?;
    status.whitelisted += nets4.keys().count() + nets6.keys().count();
    let stats: PerCpuArray<MapData, u64> = open_pinned(pin_dir, MAP_STATS, Map::PerCpuArray)?;
    for index in 0..STAT_COUNT {
        let sum = stats
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0);
        status.stats.push(sum);
    }
    status.drops = per_cgroup_sums(pin_dir, MAP_DROPS)?;
    status.allows = per_cgroup_sums(pin_dir, MAP_ALLOWS)?;
    let config: Array<MapData, u32> = open_pinned(pin_dir, MAP_CONFIG, Map::Array)?;
    status.drop_input = config.get(&CONFIG_DROP_INPUT, 0).is_ok_and(|v| v != 0);
    let cgroup_map: Option<CgroupMap> = open_pinned(pin_dir, MAP_CGROUPS, Map::HashMap).ok();
    let mut recorded: Vec<(u64, String)> = cgroup_map
        .iter()
        .flat_map(|m| m.iter().filter_map(Result::ok))
        .map(|(id, p)| (id, pins::unpadded(&p.path)))
        .collect();
    for id in pins::linked_cgroups(pin_dir) {
        if !recorded.iter().any(|(r, _)| *r == id) {
            recorded.push((id, String::new()));
        }
    }
    recorded.sort();
    for (id, path) in recorded {
        let linked = PROGRAMS
            .iter()
            .all(|(name, _)| pins::link_pin(pin_dir, name, id).exists());
        status
            .cgroups
            .push((id, (!path.is_empty()).then_some(path), linked));
    }
    Ok(status)
}

/// The hash seed of the IPv4 host table pinned in `pin_dir` (kept in `CONFIG`), if any.
pub(super) fn pinned_seed(pin_dir: &Path) -> Option<u64> {
    let data = MapData::from_pin(pin_dir.join(MAP_CONFIG)).ok()?;
    let config = Array::<MapData, u32>::try_from(Map::Array(data)).ok()?;
    let lo = config.get(&CONFIG_HOST_SEED_LO, 0).ok()?;
    let hi = config.get(&CONFIG_HOST_SEED_HI, 0).ok()?;
    let seed = u64::from(lo) | (u64::from(hi) << 32);
    (seed != 0).then_some(seed)
}

/// Records the IPv4 host table's hash seed in `CONFIG`.
pub(super) fn store_seed(config: &mut Array<MapData, u32>, seed: u64) -> Result<(), EbpfError> {
    config
        .set(CONFIG_HOST_SEED_LO, seed as u32, 0)
        .and_then(|()| config.set(CONFIG_HOST_SEED_HI, (seed >> 32) as u32, 0))
        .map_err(|e| map_error(MAP_CONFIG, "cannot record the host table seed", e))
}

/// Maps the IPv4 host table `HOSTS_V4` behind `data`, sized for `capacity` hosts (`None`: the
/// capacity its size stands for).
pub(super) fn map_table(
    data: &MapData,
    capacity: Option<u32>,
    seed: u64,
    writable: bool,
) -> Result<HostTable, EbpfError> {
    let max_entries = data
        .info()
        .map_err(|e| map_error(MAP_HOSTS_V4, "cannot read the map's info", e))?
        .max_entries();
    let capacity =
        capacity.unwrap_or_else(|| nettrust_common::host_table::capacity_of(max_entries));
    HostTable::map(data.fd().as_fd(), max_entries, capacity, seed, writable)
        .map_err(|e| map_error(MAP_HOSTS_V4, "cannot map the host table", e))
}

/// The IPv4 host table pinned in `pin_dir`, memory-mapped (read-only unless `writable`; only the
/// daemon writes it while it runs). Its capacity follows from its size, its seed from `CONFIG`.
pub fn open_table(pin_dir: &Path, writable: bool) -> Result<HostTable, EbpfError> {
    let data = pinned_map_data(pin_dir, MAP_HOSTS_V4)?;
    let seed = pinned_seed(pin_dir).ok_or_else(|| {
        map_error(
            MAP_CONFIG,
            "no host table seed recorded",
            io::Error::from(io::ErrorKind::NotFound),
        )
    })?;
    map_table(&data, None, seed, writable)
}

/// The map `name` pinned in `pin_dir` (after checking the directory's owner).
fn pinned_map_data(pin_dir: &Path, name: &'static str) -> Result<MapData, EbpfError> {
    pins::check_owner(pin_dir)?;
    let path = pin_dir.join(name);
    MapData::from_pin(&path).map_err(|e| {
        map_error(
            name,
            format!("no pinned map at {} (has nettrust run?)", path.display()),
            e,
        )
    })
}

pub(super) fn open_pinned<T>(
    pin_dir: &Path,
    name: &'static str,
    wrap: fn(MapData) -> Map,
) -> Result<T, EbpfError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let data = pinned_map_data(pin_dir, name)?;
    T::try_from(wrap(data)).map_err(|e| map_error(name, "not a nettrust map", e))
}

/// The egress program's counters (summed over CPUs), read from the `STATS` map pinned in
/// `pin_dir`, indexed by the `STAT_*` constants.
pub fn read_stats(pin_dir: &Path) -> Result<[u64; STAT_COUNT as usize], EbpfError> {
    let stats: PerCpuArray<MapData, u64> = open_pinned(pin_dir, MAP_STATS, Map::PerCpuArray)?;
    let mut out = [0u64; STAT_COUNT as usize];
    for (index, slot) in (0..STAT_COUNT).zip(out.iter_mut()) {
        let per_cpu = stats
            .get(&index, 0)
            .map_err(|e| map_error(MAP_STATS, "cannot read", e))?;
        *slot = per_cpu.iter().sum();
    }
    Ok(out)
}
