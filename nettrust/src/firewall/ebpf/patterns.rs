//! Cgroup patterns in the eBPF backend: the `cgroup_mkdir`/`rmdir` tracepoint programs (loaded
//! and pinned with the others, attached through pinned links once per run while patterns are
//! configured), the compiled patterns written for them, and the classification of the cgroups
//! that already exist: one walk of each attach point's subtree, after the tracepoints are
//! attached (so a cgroup created meanwhile is classified by one or the other, or both alike).
//!
//! Each pattern's attach point (see [`CgroupPattern::attach_point`]) is listed in `POLICY_OF`
//! with `POLICY_UNFILTERED` (unless a configured literal cgroup at or above it filters it
//! anyway) and gets the programs like a configured cgroup; below it, a cgroup a pattern matches
//! is listed with that pattern's policy, the first matching pattern in configuration order (the
//! top-level `cgroups`, then each `[[policy]]`'s).

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, Map, MapData},
    programs::{TracePoint, links::FdLink},
};
use ipnet::IpNet;
use nettrust_common::{
    CgroupPath, MAP_CGROUPS, MAP_PATTERN_TEXT, MAP_POLICY_OF, MAX_CGROUP_DEPTH, MAX_PATTERNS,
    POLICY_AUDIT, POLICY_PATTERN, POLICY_UNFILTERED, PROGRAM_CGROUP_MKDIR, PROGRAM_CGROUP_RMDIR,
    PatternBits, PatternMasks, PolicyRef,
};

use super::{
    adopt::open_pinned,
    attach,
    pins::{self, program_pin},
    scopes::{CgroupScope, PatternEntries, ScopeMaps},
    types::CgroupMap,
    types::{EbpfError, map_error, program_error},
};
use crate::{
    cgroup::patterns::{CgroupPattern, is_pattern},
    firewall::Scopes,
};

/// The tracepoint programs, each attached to the `cgroup` event of its name.
const TRACEPOINTS: [&str; 2] = [PROGRAM_CGROUP_MKDIR, PROGRAM_CGROUP_RMDIR];

/// The pin of a tracepoint program's link.
fn tracepoint_link_pin(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("link-tp-{name}"))
}

/// Loads the tracepoint programs and pins them in `dir` (`prog-<name>`).
pub(super) fn load_and_pin(ebpf: &mut Ebpf, dir: &Path) -> Result<(), EbpfError> {
    for name in TRACEPOINTS {
        let program: &mut TracePoint = super::types::program_mut(ebpf, name)?;
        program
            .load()
            .map_err(|source| program_error(format!("{name} rejected by the kernel"), source))?;
        pins::pin_program(dir, name, |tmp| program.pin(tmp))?;
    }
    Ok(())
}

/// Attaches the pinned tracepoint programs and pins their links, replacing earlier links once
/// the new ones are attached (both classify alike meanwhile).
fn attach_tracepoints(dir: &Path) -> Result<(), EbpfError> {
    for name in TRACEPOINTS {
        let pin = program_pin(dir, name);
        let mut program = TracePoint::from_pin(&pin).map_err(|source| {
            program_error(format!("{name}: cannot open {}", pin.display()), source)
        })?;
        let link_id = program.attach("cgroup", name).map_err(|source| {
            program_error(format!("{name}: cannot attach to cgroup:{name}"), source)
        })?;
        let link = program
            .take_link(link_id)
            .map_err(|source| program_error(format!("{name}: cannot take the link"), source))?;
        let link_pin = tracepoint_link_pin(dir, name);
        let link = FdLink::try_from(link).map_err(|e| EbpfError::LinkPin {
            cgroup: link_pin.clone(),
            what: e.to_string(),
        })?;
        pins::replace_pin(&link_pin, |tmp| {
            link.pin(tmp).map(drop).map_err(|e| crate::error_chain(&e))
        })
        .map_err(|what| EbpfError::LinkPin {
            cgroup: link_pin.clone(),
            what,
        })?;
    }
    Ok(())
}

/// Detaches the tracepoint programs (no pattern configured).
fn detach_tracepoints(dir: &Path) {
    for name in TRACEPOINTS {
        let pin = tracepoint_link_pin(dir, name);
        if pin.exists() {
            pins::detach_link(&pin);
            let _ = std::fs::remove_file(pin);
        }
    }
}

/// The configured patterns of `scopes`, parsed, with their policies, in configuration order.
pub fn scoped_patterns(
    scopes: &Scopes,
    mount: &Path,
) -> Result<Vec<(CgroupPattern, PolicyRef)>, EbpfError> {
    scopes
        .cgroups
        .iter()
        .filter(|c| is_pattern(&c.path))
        .map(|c| {
            let pattern = CgroupPattern::parse(&c.path, mount).map_err(|e| {
                map_error(
                    MAP_POLICY_OF,
                    e.to_string(),
                    io::Error::from(io::ErrorKind::InvalidInput),
                )
            })?;
            let audit = if c.audit { POLICY_AUDIT } else { 0 };
            let policy = PolicyRef {
                scope: c.scope.0,
                flags: audit | POLICY_PATTERN,
            };
            Ok((pattern, policy))
        })
        .collect()
}

/// Writes the policies of `scopes` like [`ScopeMaps::set_policies`] (`cgroups`: the literal
/// cgroups resolved to ids, `nets` the policies' networks) with the patterns: compiled into the
/// tracepoint's maps, the tracepoints attached, the existing cgroups classified; then detaches
/// the attach points no pattern needs any more and attaches the new ones.
pub(super) fn set_policies(
    maps: &ScopeMaps,
    scopes: &Scopes,
    cgroups: &[CgroupScope],
    nets: &[(u32, IpNet)],
) -> Result<(), EbpfError> {
    let has_patterns = scopes.cgroups.iter().any(|c| is_pattern(&c.path));
    let patterns = if has_patterns {
        let mount = crate::cgroup::cgroup2_mount()
            .map_err(|e| map_error(MAP_POLICY_OF, e.to_string(), io::Error::other("no cgroup2")))?;
        scoped_patterns(scopes, &mount)?
    } else {
        Vec::new()
    };
    let dir = maps.pin_dir().to_owned();
    let compiled: Vec<(PatternMasks, Vec<PatternBits>)> = patterns
        .iter()
        .map(|(p, policy)| p.compile(*policy))
        .collect();
    let texts: Vec<String> = patterns.iter().map(|(p, _)| p.text().to_owned()).collect();
    maps.patterns.write_patterns(&compiled, &texts)?;
    // Read with the entries the generation bump below publishes.
    maps.set_deep_matches(texts.iter().any(|t| t.contains("**")))?;
    // Attached once per run, when patterns first need them: at start (while the daemon may
    // still open tracepoints), or by a reload that adds the first pattern, which then fails
    // without that privilege (attaching costs every start about 70 ms under load, so a daemon
    // without patterns does not pay it).
    if has_patterns && !maps.patterns.tracepoints_attached() {
        attach_tracepoints(&dir).map_err(|e| {
            map_error(
                MAP_POLICY_OF,
                format!(
                    "cannot attach the cgroup tracepoints the patterns need (a reload adding the first pattern needs a restart): {}",
                    crate::error_chain(&e)
                ),
                io::Error::from(io::ErrorKind::PermissionDenied),
            )
        })?;
        maps.patterns.set_tracepoints_attached();
    } else if !has_patterns && !maps.patterns.tracepoints_attached() {
        // A previous run's links serve nothing now (the tables were just emptied).
        detach_tracepoints(&dir);
    }
    let before = maps.pattern_entry_ids()?;
    let literals: Vec<&Path> = scopes
        .cgroups
        .iter()
        .filter(|c| !is_pattern(&c.path))
        .map(|c| c.path.as_path())
        .collect();
    let mut found = classify(&patterns, &literals);
    found.before = before;
    found.active = has_patterns;
    let new_points = found.attach_points.clone();
    maps.set_pattern_entries(found);
    detach_stale_points(maps, cgroups, &new_points)?;
    maps.set_policies(cgroups, nets, scopes.active)?;
    for (path, id) in &new_points {
        if !pins::link_pin(&dir, nettrust_common::PROGRAM_EGRESS, *id).exists() {
            attach::attach_pinned(&dir, path)?;
            tracing::info!(cgroup = %path.display(), "filter attached at a pattern's attach point");
        }
    }
    Ok(())
}

/// Detaches the attach points no pattern needs any more (a pattern removed by a reload, or one
/// `nettrust attach` added), before their `POLICY_UNFILTERED` entry goes: linked cgroups listed
/// unfiltered that are neither configured (`cgroups`), nor recorded in `CGROUPS`, nor attach
/// points now.
fn detach_stale_points(
    maps: &ScopeMaps,
    cgroups: &[CgroupScope],
    points: &[(PathBuf, u64)],
) -> Result<(), EbpfError> {
    let dir = maps.pin_dir();
    let recorded: Vec<u64> = open_pinned::<CgroupMap>(dir, MAP_CGROUPS, Map::HashMap)
        .map(|m| m.keys().flatten().collect())
        .unwrap_or_default();
    for id in pins::linked_cgroups(dir) {
        let needed = cgroups.iter().any(|c| c.cgroup_id == id)
            || points.iter().any(|(_, p)| *p == id)
            || recorded.contains(&id);
        let unfiltered = maps
            .policy_of(id)?
            .is_some_and(|p| p.flags & POLICY_UNFILTERED != 0);
        if !needed && unfiltered {
            tracing::info!(
                cgroup_id = id,
                "pattern attach point no longer needed, detached"
            );
            pins::remove_links(dir, id);
        }
    }
    Ok(())
}

/// `nettrust attach --cgroup PATTERN`: adds the pattern (default policy) to the pinned ones,
/// lists its attach point and the cgroups it matches now, and attaches at the attach point,
/// daemon running or not. It lasts until the daemon's next start or reload, which apply the
/// configured patterns.
pub fn attach_pattern_pinned(dir: &Path, text: &Path) -> Result<(), EbpfError> {
    pins::check_owner(dir)?;
    let refused = |what: String| {
        map_error(
            MAP_POLICY_OF,
            what,
            io::Error::from(io::ErrorKind::InvalidInput),
        )
    };
    let mount = crate::cgroup::cgroup2_mount().map_err(|e| refused(e.to_string()))?;
    let pattern = CgroupPattern::parse(text, &mount).map_err(|e| refused(e.to_string()))?;
    let maps = ScopeMaps::open(dir)?;
    let policy = PolicyRef {
        scope: 0,
        flags: POLICY_PATTERN,
    };
    maps.patterns
        .append_pattern(&pattern.compile(policy), pattern.text())?;
    if pattern.text().contains("**") {
        maps.set_deep_matches(true)?;
    }
    if !tracepoint_link_pin(dir, PROGRAM_CGROUP_MKDIR).exists() {
        attach_tracepoints(dir)?;
    }
    let point = pattern.attach_point();
    let point_id = pins::cgroup_id(&point).map_err(|e| super::types::cgroup_error(&point, e))?;
    let mut entries = vec![(
        point_id,
        PolicyRef {
            scope: 0,
            flags: POLICY_UNFILTERED | POLICY_PATTERN,
        },
    )];
    walk(&point, 0, &mut |path| {
        if pattern.matches(path)
            && let Ok(id) = pins::cgroup_id(path)
        {
            entries.push((id, policy));
        }
    });
    // A listed attach point (a configured cgroup) keeps its entry: it stays filtered.
    maps.add_entries(&entries)?;
    attach::attach_pinned(dir, &point)
}

/// The attach points (each pattern's, unless a literal cgroup at or above it is filtered anyway)
/// and what the existing cgroups below them match: one walk per attach point.
pub fn classify(patterns: &[(CgroupPattern, PolicyRef)], literals: &[&Path]) -> PatternEntries {
    let mut found = PatternEntries::default();
    let mut listed = std::collections::HashSet::new();
    let mut points: Vec<PathBuf> = Vec::new();
    for (pattern, _) in patterns {
        let point = pattern.attach_point();
        let covered = literals.iter().any(|l| point.starts_with(l));
        if !points.contains(&point) {
            if !covered && let Ok(id) = pins::cgroup_id(&point) {
                found.attach_points.push((point.clone(), id));
                let unfiltered = PolicyRef {
                    scope: 0,
                    flags: POLICY_UNFILTERED | POLICY_PATTERN,
                };
                found.entries.push((id, unfiltered));
                listed.insert(id);
            }
            points.push(point);
        }
    }
    // A point below another is walked with it.
    let roots: Vec<&PathBuf> = points
        .iter()
        .filter(|p| !points.iter().any(|q| q != *p && p.starts_with(q)))
        .collect();
    for root in roots {
        walk(root, 0, &mut |path| {
            if let Some((_, policy)) = patterns.iter().find(|(p, _)| p.matches(path))
                && let Ok(id) = pins::cgroup_id(path)
                && listed.insert(id)
            {
                found.entries.push((id, *policy));
            }
        });
    }
    found
}

/// How many levels below an attach point the classification walk goes. The data path finds a
/// matched cgroup's own entry at any depth, and fails closed below [`MAX_CGROUP_DEPTH`] levels
/// where it cannot see the ancestors; the bound only stops a pathological tree.
const WALK_DEPTH: u32 = 4 * MAX_CGROUP_DEPTH;

/// Calls `visit` for each cgroup below `dir` (not `dir` itself), at most [`WALK_DEPTH`] levels
/// down.
fn walk(dir: &Path, depth: u32, visit: &mut impl FnMut(&Path)) {
    if depth >= WALK_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let path = entry.path();
            visit(&path);
            walk(&path, depth + 1, visit);
        }
    }
}

/// What one pattern covers now, for `nettrust status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternCoverage {
    /// The pattern as configured.
    pub pattern: String,
    /// Where the programs are attached for it.
    pub attach_point: PathBuf,
    /// The cgroups it matches (the first matching pattern takes a cgroup), sorted.
    pub cgroups: Vec<PathBuf>,
}

/// The patterns the daemon pinned in `dir` (`PATTERN_TEXT`), and what each covers now.
pub fn coverage_pinned(dir: &Path) -> Result<Vec<PatternCoverage>, EbpfError> {
    let texts: Array<MapData, CgroupPath> = open_pinned(dir, MAP_PATTERN_TEXT, Map::Array)?;
    let Ok(mount) = crate::cgroup::cgroup2_mount() else {
        return Ok(Vec::new());
    };
    let mut patterns = Vec::new();
    for index in 0..MAX_PATTERNS {
        let Ok(value) = texts.get(&index, 0) else {
            break;
        };
        let text = pins::unpadded(&value.path);
        if text.is_empty() {
            break;
        }
        if let Ok(pattern) = CgroupPattern::parse(Path::new(&text), &mount) {
            patterns.push((pattern, PolicyRef::default()));
        }
    }
    Ok(coverage(&patterns))
}

/// Each pattern and what it covers now: the cgroups it matches below its attach point.
pub fn coverage(patterns: &[(CgroupPattern, PolicyRef)]) -> Vec<PatternCoverage> {
    let mut out: Vec<PatternCoverage> = patterns
        .iter()
        .map(|(p, _)| PatternCoverage {
            pattern: p.text().to_owned(),
            attach_point: p.attach_point(),
            cgroups: Vec::new(),
        })
        .collect();
    let mut seen = Vec::new();
    for (pattern, _) in patterns {
        let point = pattern.attach_point();
        if seen.contains(&point) {
            continue;
        }
        walk(&point, 0, &mut |path| {
            if let Some(i) = patterns.iter().position(|(p, _)| p.matches(path)) {
                out[i].cgroups.push(path.to_owned());
            }
        });
        seen.push(point);
    }
    for covered in &mut out {
        covered.cgroups.sort();
        covered.cgroups.dedup();
    }
    out
}
