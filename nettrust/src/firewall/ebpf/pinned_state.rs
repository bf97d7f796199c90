//! Reading the state an eBPF run pinned in the bpffs directory, without loading the object: what
//! `nettrust list` and `status` and the metrics endpoint show, with the daemon running, stopped
//! or killed.

use std::{collections::HashMap, path::Path};

use aya::maps::{Array, HashMap as AyaHashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use nettrust_common::{
    CONFIG_DROP_INPUT, FLAG_WHITELISTED, HostValue, MAP_ALLOWS, MAP_AUDITS, MAP_CGROUPS,
    MAP_CONFIG, MAP_DROPS, MAP_GRANTS, MAP_HOSTS_V4, MAP_HOSTS_V6, MAP_NAMES, MAP_NETS_V4,
    MAP_NETS_V6, MAP_POLICY_NAMES, MAP_POLICY_OF, MAP_STATS, POLICY_AUDIT, POLICY_NAME_LEN,
    PROGRAMS_CAPTURE, PolicyRef, STAT_COUNT,
};

use super::{
    adopt::{open_pinned, open_table},
    authorizations::collect_authorized,
    host_table::{HostStore, name_key},
    pins, scoped,
    scopes::ScopeMaps,
    types::{CgroupMap, EbpfError, HostMap, NameMap, NetTrie, PROGRAMS, map_error},
};
use crate::firewall::{AuthorizedHost, boottime_ns};

/// Reads the authorized hosts and their names from the maps pinned in `pin_dir` (daemon running
/// or not): the default scope's host maps, then the policies' grants.
pub fn list_pinned(pin_dir: &Path) -> Result<Vec<(AuthorizedHost, Option<String>)>, EbpfError> {
    let v4 = open_table(pin_dir, false)?;
    let v6: HostMap<16> = open_pinned(pin_dir, MAP_HOSTS_V6, Map::HashMap)?;
    let names: Option<NameMap> = open_pinned(pin_dir, MAP_NAMES, Map::HashMap).ok();
    let mut out = collect_authorized(&v4, &v6, names.as_ref())
        .map_err(|e| map_error(MAP_HOSTS_V4, "cannot read", e))?;
    // A directory pinned by a version without policies has no GRANTS: nothing more to list.
    if let Ok(maps) = ScopeMaps::open(pin_dir) {
        let mut grants = Vec::new();
        scoped::collect_authorized(&maps, &mut grants)
            .map_err(|e| map_error(MAP_GRANTS, "cannot read", e))?;
        out.extend(grants.into_iter().map(|host| {
            let name = names
                .as_ref()
                .and_then(|n| n.get(&name_key(host.addr), 0).ok())
                .map(|n| pins::unpadded(&n.name));
            (host, name)
        }));
    }
    Ok(out)
}

/// The policies' names by scope, as the daemon last pinned them (empty without policies).
pub fn policy_names_pinned(pin_dir: &Path) -> HashMap<u32, String> {
    let Ok(map) = open_pinned::<AyaHashMap<MapData, u32, [u8; POLICY_NAME_LEN]>>(
        pin_dir,
        MAP_POLICY_NAMES,
        Map::HashMap,
    ) else {
        return HashMap::new();
    };
    map.iter()
        .filter_map(Result::ok)
        .map(|(scope, name)| (scope, pins::unpadded(&name)))
        .collect()
}

/// What `nettrust status` reports.
#[derive(Debug, Default)]
pub struct PinnedStatus {
    /// Whether a daemon holds the directory.
    pub daemon_running: bool,
    /// Whether the programs are pinned (enforcement in place).
    pub programs_pinned: bool,
    /// Whether the DNS capture programs are pinned (capture on for the filtered cgroups).
    pub dns_capture: bool,
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
    /// The `[[policy]]` sections in force, by scope.
    pub policies: Vec<PinnedPolicy>,
}

/// One policy as pinned: its name, mode, listed cgroups and counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PinnedPolicy {
    /// The policy's scope number.
    pub scope: u32,
    /// Its name (the scope number when none was pinned).
    pub name: String,
    /// Audit mode.
    pub audit: bool,
    /// Ids of its listed cgroups.
    pub cgroups: Vec<u64>,
    /// Live grants.
    pub grants: usize,
    /// Packets its listed cgroups sent that audit mode let through.
    pub audited: u64,
}

/// The policies pinned in `pin_dir`: `POLICY_OF` grouped by scope, with names, grants and the
/// audit counters (empty without policies or on a directory pinned before them).
fn policies_pinned(pin_dir: &Path) -> Result<Vec<PinnedPolicy>, EbpfError> {
    let Ok(policy_of) =
        open_pinned::<AyaHashMap<MapData, u64, PolicyRef>>(pin_dir, MAP_POLICY_OF, Map::HashMap)
    else {
        return Ok(Vec::new());
    };
    let names = policy_names_pinned(pin_dir);
    let audits = per_cgroup_sums(pin_dir, MAP_AUDITS).unwrap_or_default();
    let mut policies: Vec<PinnedPolicy> = Vec::new();
    for (id, policy) in policy_of.iter().filter_map(Result::ok) {
        if policy.scope == 0 {
            continue;
        }
        let index = match policies.iter().position(|p| p.scope == policy.scope) {
            Some(index) => index,
            None => {
                policies.push(PinnedPolicy {
                    scope: policy.scope,
                    name: names
                        .get(&policy.scope)
                        .cloned()
                        .unwrap_or_else(|| policy.scope.to_string()),
                    audit: policy.flags & POLICY_AUDIT != 0,
                    ..PinnedPolicy::default()
                });
                policies.len() - 1
            }
        };
        let entry = &mut policies[index];
        entry.cgroups.push(id);
        entry.audited += audits.iter().find(|(c, _)| *c == id).map_or(0, |(_, n)| *n);
    }
    let maps = ScopeMaps::open(pin_dir)?;
    let mut grants = Vec::new();
    scoped::collect_authorized(&maps, &mut grants)
        .map_err(|e| map_error(MAP_GRANTS, "cannot read", e))?;
    for policy in &mut policies {
        policy.grants = grants.iter().filter(|g| g.scope.0 == policy.scope).count();
        policy.cgroups.sort_unstable();
    }
    policies.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(policies)
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
        dns_capture: PROGRAMS_CAPTURE
            .iter()
            .all(|name| pins::program_pin(pin_dir, name).exists()),
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
    let nets4: NetTrie<4> = open_pinned(pin_dir, MAP_NETS_V4, Map::LpmTrie)?;
    let nets6: NetTrie<16> = open_pinned(pin_dir, MAP_NETS_V6, Map::LpmTrie)?;
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
    status.policies = policies_pinned(pin_dir)?;
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

/// The egress program's counters (summed over CPUs), read from the `STATS` map pinned in
/// `pin_dir`, indexed by the `STAT_*` constants.
pub fn read_stats(pin_dir: &Path) -> Result<[u64; STAT_COUNT as usize], EbpfError> {
    let stats: PerCpuArray<MapData, u64> = open_pinned(pin_dir, MAP_STATS, Map::PerCpuArray)?;
    let mut out = [0u64; STAT_COUNT as usize];
    // A STATS map pinned by an older nettrust may have fewer counters: the rest read as 0.
    for (index, slot) in (0..STAT_COUNT.min(stats.len())).zip(out.iter_mut()) {
        let per_cpu = stats
            .get(&index, 0)
            .map_err(|e| map_error(MAP_STATS, "cannot read", e))?;
        *slot = per_cpu.iter().sum();
    }
    Ok(out)
}
