//! Adopting what a previous run (still running, stopped or killed) pinned: the shape every
//! pinned map must have ([`MAPS`]) and the configured capacities ([`Capacities`]) are checked
//! before a start adopts the maps, and the pinned maps are opened by name, the IPv4 host table
//! memory-mapped with the hash seed recorded in `CONFIG`.

use std::{io, os::fd::AsFd as _, path::Path};

use aya::maps::{Array, Map, MapData, MapError, MapInfo, MapType};
use nettrust_common::{
    CGROUP_PATH_LEN, CONFIG_HOST_SEED_HI, CONFIG_HOST_SEED_LO, ClientValue, FlowKey, GrantKey,
    HOST_NAME_LEN, HostSlot, HostValue, InboundKey, InboundValue, LiveTcp, MAP_ALLOWS, MAP_AUDITS,
    MAP_BLOCKED_V4, MAP_BLOCKED_V6, MAP_CGROUPS, MAP_CLIENTS, MAP_CONFIG, MAP_DENIED,
    MAP_DENIED_RATE, MAP_DROPS, MAP_GRANT_NAMES, MAP_GRANTS, MAP_HOSTS_V4, MAP_HOSTS_V6,
    MAP_INBOUND, MAP_LISTENERS, MAP_LIVE_TCP, MAP_NAMES, MAP_NETS_V4, MAP_NETS_V6, MAP_OUTBOUND,
    MAP_PATTERN_LIT, MAP_PATTERN_TEXT, MAP_PATTERNS, MAP_POLICY_NAMES, MAP_POLICY_NETS_V4,
    MAP_POLICY_NETS_V6, MAP_POLICY_OF, MAP_SERVICES, MAP_STATS, POLICY_NAME_LEN, PatternBits,
    PatternMasks, PolicyRef, RateState, ServiceKey,
};

use super::{
    ipv4_table::HostTable,
    pins,
    types::{EbpfError, PinError, map_error},
};

/// What a pinned map must look like to be adopted: name, type, key size, value size.
pub struct MapSpec {
    /// Map (and pin file) name.
    pub name: &'static str,
    /// Kernel map type.
    pub map_type: MapType,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
}

const fn spec(
    name: &'static str,
    map_type: MapType,
    key_size: usize,
    value_size: usize,
) -> MapSpec {
    MapSpec {
        name,
        map_type,
        key_size: key_size as u32,
        value_size: value_size as u32,
    }
}

const HOST_VALUE: usize = size_of::<HostValue>();
const FLOW_KEY: usize = size_of::<FlowKey>();

/// The pin of the inbound flow map of earlier versions (another key), removed at start.
pub const LEGACY_INBOUND: &str = "INBOUND";

/// The pin of the live connection map of earlier versions (a value without the socket's
/// scope), removed at start.
pub const LEGACY_LIVE_TCP: &str = "LIVE_TCP";

/// Every map nettrust pins, with the shape the eBPF object gives it. (`SCOPES`, the program's
/// cache of each cgroup's policy, is not pinned: a new program starts with it empty.)
pub const MAPS: [MapSpec; 30] = [
    spec(MAP_HOSTS_V4, MapType::Array, 4, size_of::<HostSlot>()),
    spec(MAP_HOSTS_V6, MapType::Hash, 16, HOST_VALUE),
    // LPM trie keys are `{prefix_len: u32, data}`.
    spec(MAP_NETS_V4, MapType::LpmTrie, 8, 4),
    spec(MAP_NETS_V6, MapType::LpmTrie, 20, 4),
    spec(MAP_STATS, MapType::PerCpuArray, 4, 8),
    spec(MAP_CONFIG, MapType::Array, 4, 4),
    spec(MAP_OUTBOUND, MapType::LruHash, FLOW_KEY, 8),
    spec(
        MAP_INBOUND,
        MapType::LruHash,
        size_of::<InboundKey>(),
        size_of::<InboundValue>(),
    ),
    spec(MAP_DENIED, MapType::RingBuf, 0, 0),
    spec(
        MAP_DENIED_RATE,
        MapType::PerCpuArray,
        4,
        size_of::<RateState>(),
    ),
    spec(MAP_DROPS, MapType::PerCpuHash, 8, 8),
    spec(MAP_ALLOWS, MapType::PerCpuHash, 8, 8),
    spec(MAP_NAMES, MapType::Hash, 16, HOST_NAME_LEN),
    spec(
        MAP_GRANT_NAMES,
        MapType::Hash,
        size_of::<GrantKey>(),
        HOST_NAME_LEN,
    ),
    spec(MAP_CGROUPS, MapType::Hash, 8, CGROUP_PATH_LEN),
    spec(MAP_LIVE_TCP, MapType::Hash, 8, size_of::<LiveTcp>()),
    spec(MAP_SERVICES, MapType::Hash, size_of::<ServiceKey>(), 4),
    spec(MAP_BLOCKED_V4, MapType::LpmTrie, 8, 4),
    spec(MAP_BLOCKED_V6, MapType::LpmTrie, 20, 4),
    spec(MAP_AUDITS, MapType::PerCpuHash, 8, 8),
    spec(MAP_POLICY_OF, MapType::Hash, 8, size_of::<PolicyRef>()),
    spec(MAP_GRANTS, MapType::Hash, size_of::<GrantKey>(), HOST_VALUE),
    // Scope (4 bytes) then the address, after the prefix length.
    spec(MAP_POLICY_NETS_V4, MapType::LpmTrie, 12, 4),
    spec(MAP_POLICY_NETS_V6, MapType::LpmTrie, 24, 4),
    spec(MAP_LISTENERS, MapType::Hash, size_of::<ServiceKey>(), 4),
    spec(MAP_POLICY_NAMES, MapType::Hash, 4, POLICY_NAME_LEN),
    spec(
        MAP_CLIENTS,
        MapType::LruHash,
        size_of::<ServiceKey>(),
        size_of::<ClientValue>(),
    ),
    spec(MAP_PATTERNS, MapType::Array, 4, size_of::<PatternMasks>()),
    spec(MAP_PATTERN_LIT, MapType::Array, 4, size_of::<PatternBits>()),
    spec(MAP_PATTERN_TEXT, MapType::Array, 4, CGROUP_PATH_LEN),
];

/// Most names `NAMES` keeps (2 × the default `max_hosts`): with more hosts, the addresses
/// authorized once it is full are listed without a name.
pub const NAMES_MAX: u32 = 131_072;

/// The setting (`max_hosts`, ...) a map of a given max_entries was created for.
pub type SettingOf = fn(u32) -> u32;

/// The configurable map capacities (`max_hosts`, `max_networks`), per address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacities {
    /// max_entries of `HOSTS_V4`, `HOSTS_V6` and `GRANTS` (`NAMES` holds twice as many, at
    /// most [`NAMES_MAX`]).
    pub hosts: u32,
    /// max_entries of `NETS_V4`, `NETS_V6` and `POLICY_NETS_V4/V6`.
    pub networks: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            hosts: nettrust_common::DEFAULT_MAX_HOSTS,
            networks: nettrust_common::DEFAULT_MAX_NETS,
        }
    }
}

impl Capacities {
    /// The max_entries `map` gets, its config key and the setting a given max_entries stands
    /// for, for the maps whose size is configurable.
    pub fn of(&self, map: &str) -> Option<(u32, &'static str, SettingOf)> {
        match map {
            // The IPv4 table has spare slots (kept at most 3/4 full, plus the probe window).
            MAP_HOSTS_V4 => Some((
                nettrust_common::host_table::slots(self.hosts),
                "max_hosts",
                nettrust_common::host_table::capacity_of,
            )),
            MAP_HOSTS_V6 | MAP_GRANTS => Some((self.hosts, "max_hosts", |n| n)),
            // One name per host of either family, at most NAMES_MAX: names are best effort and
            // 128 bytes each, they must not dominate kernel memory on large host maps.
            MAP_NAMES => Some((
                self.hosts.saturating_mul(2).min(NAMES_MAX),
                "max_hosts",
                |n| n / 2,
            )),
            MAP_GRANT_NAMES => Some((self.hosts.min(NAMES_MAX), "max_hosts", |n| n)),
            MAP_NETS_V4 | MAP_NETS_V6 | MAP_POLICY_NETS_V4 | MAP_POLICY_NETS_V6 => {
                Some((self.networks, "max_networks", |n| n))
            }
            _ => None,
        }
    }
}

/// Checks every map already pinned in `dir` against [`MAPS`] and the configured capacities;
/// returns how many were found.
pub fn check_pinned_maps(dir: &Path, capacities: Capacities) -> Result<usize, PinError> {
    let mut found = 0;
    for spec in &MAPS {
        let path = dir.join(spec.name);
        if !path.exists() {
            continue;
        }
        let foreign = |found: String| PinError::Foreign {
            path: path.clone(),
            dir: dir.display().to_string(),
            found,
            expected: format!(
                "{:?} key {} value {}",
                spec.map_type, spec.key_size, spec.value_size
            ),
        };
        let info = MapInfo::from_pin(&path).map_err(|e| foreign(format!("not a map ({e})")))?;
        let map_type = info
            .map_type()
            .map_err(|e| foreign(format!("an unknown map type ({e})")))?;
        // Ring buffers have no key/value; their size is max_entries.
        let shape_ok = map_type == spec.map_type
            && (spec.map_type == MapType::RingBuf
                || (info.key_size() == spec.key_size && info.value_size() == spec.value_size));
        if !shape_ok {
            return Err(foreign(format!(
                "{map_type:?} key {} value {}",
                info.key_size(),
                info.value_size()
            )));
        }
        if let Some((expected, key, setting)) = capacities.of(spec.name)
            && info.max_entries() != expected
        {
            return Err(PinError::Capacity {
                path: path.clone(),
                dir: dir.display().to_string(),
                key,
                found: info.max_entries(),
                expected,
                asked: if key == "max_hosts" {
                    capacities.hosts
                } else {
                    capacities.networks
                },
                found_setting: setting(info.max_entries()),
            });
        }
        found += 1;
    }
    Ok(found)
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

/// The map `name` pinned in `pin_dir` as the aya handle `T` (`wrap` names its kind).
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
