//! Filtering a cgroup: the programs are attached to it through bpf_links pinned per cgroup and
//! program (replacing a previous run's links only once the new ones are attached), and the
//! cgroup is recorded in `CGROUPS`. Used at start with the loaded object, and by `nettrust
//! attach`/`detach` and the cgroup watch with the pinned programs, daemon running or not.
//!
//! A configured cgroup pattern is filtered through its attach point (see `super::patterns`):
//! attached like a configured cgroup, but not recorded in `CGROUPS` (its `POLICY_OF` entry says
//! `POLICY_UNFILTERED`), so a later run does not take it for a cgroup `nettrust attach` added.

use std::{fs::File, io, path::Path, path::PathBuf, time::Duration};

use aya::{
    Ebpf,
    maps::Map,
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
};
use nettrust_common::{CgroupPath, MAP_CGROUPS, MAP_POLICY_OF, POLICY_UNFILTERED, PolicyRef};

use crate::cgroup::patterns::{CgroupPattern, is_pattern};

use super::{
    adopt::open_pinned,
    live_tcp, pins, sock_addr,
    types::{
        CgroupMap, EbpfError, LINKED, PROGRAMS, cgroup_error, map_error, program_error, program_mut,
    },
};

/// How often the configured cgroups are checked for removal and re-creation.
const CGROUP_WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// The cgroup at `path`, opened, and its id.
fn open_cgroup(path: &Path) -> Result<(File, u64), EbpfError> {
    let cgroup = File::open(path).map_err(|e| cgroup_error(path, e))?;
    let id = pins::cgroup_id(path).map_err(|e| cgroup_error(path, e))?;
    Ok((cgroup, id))
}

/// Records the cgroup `path` (id `id`) in `CGROUPS`, unless it is a pattern's attach point.
fn record_cgroup(
    cgroup_map: &mut CgroupMap,
    dir: &Path,
    id: u64,
    path: &Path,
) -> Result<(), EbpfError> {
    if is_attach_point(dir, id) {
        return Ok(());
    }
    let value = CgroupPath {
        path: pins::padded(&path.display().to_string()),
    };
    cgroup_map
        .insert(id, value, 0)
        .map_err(|e| map_error(MAP_CGROUPS, "cannot record the cgroup", e))
}

/// Attaches the loaded programs to `path` and pins the links (replacing a previous run's links
/// for that cgroup only once the new ones are attached). Records the cgroup in `CGROUPS`.
pub(super) fn attach_cgroup(
    ebpf: &mut Ebpf,
    cgroup_map: &mut CgroupMap,
    dir: &Path,
    path: &Path,
) -> Result<u64, EbpfError> {
    let (cgroup, id) = open_cgroup(path)?;
    for (name, attach_type) in PROGRAMS {
        let program: &mut CgroupSkb = program_mut(ebpf, name)?;
        attach_one(program, name, attach_type, &cgroup, dir, path, id)?;
    }
    live_tcp::attach(ebpf, &cgroup, dir, path, id)?;
    sock_addr::attach(ebpf, &cgroup, dir, path, id)?;
    record_cgroup(cgroup_map, dir, id, path)?;
    Ok(id)
}

fn attach_one(
    program: &mut CgroupSkb,
    name: &str,
    attach_type: CgroupSkbAttachType,
    cgroup: &File,
    dir: &Path,
    path: &Path,
    id: u64,
) -> Result<(), EbpfError> {
    // On kernels >= 5.7 aya attaches through a bpf_link and rejects attach flags: `Single`
    // means "no flags" there.
    pins::link_cgroup(dir, name, id, path, || {
        let link_id = program
            .attach(cgroup, attach_type, CgroupAttachMode::Single)
            .map_err(|e| ("attach to", e))?;
        program
            .take_link(link_id)
            .map_err(|e| ("take the link of", e))
    })
}

/// Whether `POLICY_OF` lists the cgroup `id` as a pattern's attach point.
fn is_attach_point(dir: &Path, id: u64) -> bool {
    open_pinned::<aya::maps::HashMap<aya::maps::MapData, u64, PolicyRef>>(
        dir,
        MAP_POLICY_OF,
        Map::HashMap,
    )
    .ok()
    .and_then(|map| map.get(&id, 0).ok())
    .is_some_and(|p| p.flags & POLICY_UNFILTERED != 0)
}

/// The configured `cgroups` as cgroups to attach to: a literal one as is, a pattern as its
/// attach point, unless a configured literal cgroup at or above that point filters it anyway.
fn attach_targets(cgroups: &[PathBuf]) -> Vec<PathBuf> {
    let literals: Vec<&PathBuf> = cgroups.iter().filter(|c| !is_pattern(c)).collect();
    let mut out: Vec<PathBuf> = literals.iter().map(|c| (*c).clone()).collect();
    let Ok(mount) = crate::cgroup::cgroup2_mount() else {
        return out;
    };
    for c in cgroups.iter().filter(|c| is_pattern(c)) {
        let Ok(pattern) = CgroupPattern::parse(c, &mount) else {
            continue;
        };
        let point = pattern.attach_point();
        if !literals.iter().any(|l| point.starts_with(l)) && !out.contains(&point) {
            out.push(point);
        }
    }
    out
}

/// The cgroups to filter at start: the configured `cgroups` (patterns by their attach points)
/// plus those a previous run attached at runtime (recorded in `CGROUPS`). A recorded cgroup that
/// is gone (or was recreated: another id) has its links dropped.
pub(super) fn cgroups_to_filter(
    cgroup_map: &CgroupMap,
    dir: &Path,
    cgroups: &[PathBuf],
) -> Result<Vec<PathBuf>, EbpfError> {
    let mut out = attach_targets(cgroups);
    for entry in cgroup_map {
        let (id, path) = entry.map_err(|e| map_error(MAP_CGROUPS, "cannot read", e))?;
        let path = PathBuf::from(pins::unpadded(&path.path));
        if pins::cgroup_id(&path).ok() == Some(id) {
            if !out.contains(&path) {
                out.push(path);
            }
        } else {
            tracing::info!(cgroup = %path.display(), "cgroup gone, dropping its links");
            pins::remove_links(dir, id);
        }
    }
    Ok(out)
}

/// Drops the links of the cgroups not in `attached` (removed from `CGROUPS` by a detach, or
/// gone) and their `CGROUPS` entries.
pub(super) fn drop_other_links(cgroup_map: &mut CgroupMap, dir: &Path, attached: &[u64]) {
    for id in pins::linked_cgroups(dir) {
        if !attached.contains(&id) {
            pins::remove_links(dir, id);
            let _ = cgroup_map.remove(&id);
        }
    }
}

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
    let (cgroup, id) = open_cgroup(path)?;
    let mut cgroup_map: CgroupMap = open_pinned(dir, MAP_CGROUPS, Map::HashMap)?;
    for (name, attach_type) in PROGRAMS {
        let pin = pins::program_pin(dir, name);
        if !pin.exists() {
            return Err(EbpfError::NotPinned(dir.to_owned()));
        }
        let mut program = CgroupSkb::from_pin(&pin, attach_type).map_err(|source| {
            program_error(format!("{name}: cannot open {}", pin.display()), source)
        })?;
        attach_one(&mut program, name, attach_type, &cgroup, dir, path, id)?;
    }
    live_tcp::attach_pinned(&cgroup, dir, path, id)?;
    sock_addr::attach_pinned(&cgroup, dir, path, id)?;
    record_cgroup(&mut cgroup_map, dir, id, path)
}

/// `nettrust detach`: removes the links of one cgroup (unpinning a link detaches it).
pub fn detach_pinned(dir: &Path, path: &Path) -> Result<bool, EbpfError> {
    not_pinned_if_missing(dir)?;
    pins::check_owner(dir)?;
    let id = pins::cgroup_id(path).map_err(|e| cgroup_error(path, e))?;
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

/// Watches the configured `cgroups` every [`CGROUP_WATCH_INTERVAL`]: one removed while attached
/// (its processes are gone, e.g. a stopped service) is logged as an error and its links and
/// `CGROUPS` entry are dropped; one created again at the same path (the service restarts) is
/// filtered again at once, without a restart of the daemon. A pattern's attach point removed is
/// logged as an error (see [`watch_attach_point`]).
pub(super) async fn watch_cgroups(dir: PathBuf, cgroups: Vec<PathBuf>) {
    let mut points: Vec<(PathBuf, Option<u64>)> = attach_targets(&cgroups)
        .into_iter()
        .filter(|p| !cgroups.contains(p))
        .map(|path| {
            let id = pins::cgroup_id(&path).ok();
            (path, id)
        })
        .collect();
    let mut known: Vec<(PathBuf, Option<u64>)> = cgroups
        .into_iter()
        .filter(|c| !is_pattern(c))
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
        for (path, id) in &mut points {
            watch_attach_point(path, id);
        }
    }
}

/// One check of a pattern's attach point whose id was `known`: one removed takes its links with
/// it, so the cgroups a pattern matches below its successor are not filtered until the next
/// reload (SIGHUP) or start attaches again; said loudly, once per change.
fn watch_attach_point(path: &Path, known: &mut Option<u64>) {
    let now = pins::cgroup_id(path).ok();
    if now == *known {
        return;
    }
    if known.is_some() {
        tracing::error!(
            cgroup = %path.display(),
            "[Firewall Error] a cgroup pattern's attach point was removed: cgroups created below it again are not filtered until nettrust is reloaded (SIGHUP) or restarted"
        );
    }
    *known = now;
}

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
        pins::remove_links(dir, old);
        if let Ok(mut map) = open_pinned::<CgroupMap>(dir, MAP_CGROUPS, Map::HashMap) {
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
