//! The commands that work on the firewall state left in the kernel, with or without a running
//! daemon (also after `kill -9`): `list`, `status`, `flush` read the eBPF state pinned in the bpffs
//! directory and the nftables table `inet net-trust` of the caller's network namespace; `attach`
//! and `detach` are eBPF only.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use nettrust_common::{
    STAT_ALLOW_HOST, STAT_ALLOW_INBOUND_REPLY, STAT_ALLOW_NET, STAT_DROP, STAT_DROP_EXPIRED,
    STAT_DROP_INPUT, STAT_ERROR,
};

use crate::firewall::{
    boottime_ns,
    ebpf::{self, EbpfError, PinError},
    nftables::{self, NftablesError, netlink::NetlinkError},
};

/// Errors of the commands.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Reading or changing the eBPF state failed.
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    /// Reading the nftables table failed.
    #[error("nftables table inet {}", nftables::TABLE)]
    Nftables(#[from] NetlinkError),
    /// Removing the nftables table failed or a daemon owns it.
    #[error(transparent)]
    NftablesFlush(#[from] NftablesError),
    /// Removing pinned objects failed; every failure is listed.
    #[error("{}", .0.iter().map(|e| crate::error_chain(e)).collect::<Vec<_>>().join("; "))]
    Flush(Vec<PinError>),
    /// No daemon holds the directory, nothing is pinned in it and there is no nftables table:
    /// there is no nettrust firewall to report on (`list` and `status` exit with
    /// [`NOT_RUNNING_EXIT_CODE`]).
    #[error(
        "nettrust is not running: nothing is pinned in {} and there is no nftables table inet {} in this network namespace, so no nettrust firewall is in place (another --bpffs-dir?)",
        .0.display(),
        nftables::TABLE
    )]
    NotRunning(std::path::PathBuf),
}

/// Exit code of `list` and `status` when there is no nettrust state at all
/// ([`CommandError::NotRunning`]); 3 is what `systemctl status` and LSB init scripts return for
/// "program is not running". Other failures exit with 1.
pub const NOT_RUNNING_EXIT_CODE: u8 = 3;

/// `nettrust list`: one line per live authorized host: address, remaining lifetime, and the name
/// whose answer authorized it, from the eBPF maps and the nftables table, whichever exist.
pub fn list(bpffs_dir: &Path) -> Result<String, CommandError> {
    // Without eBPF state (no directory, or nothing pinned in it) the table alone is listed; with
    // neither, nettrust is not running here.
    let ebpf_pinned = bpffs_dir.join(nettrust_common::MAP_HOSTS_V4).exists();
    let table = nftables::table_present()?;
    if !ebpf_pinned && !table {
        return Err(CommandError::NotRunning(bpffs_dir.to_owned()));
    }
    let mut hosts = if ebpf_pinned {
        ebpf::list_pinned(bpffs_dir)?
    } else {
        Vec::new()
    };
    if table {
        hosts.extend(nftables::list_authorized()?);
    }
    hosts.sort_by_key(|(h, _)| (h.addr, h.scope));
    let policies = crate::firewall::policy_names(bpffs_dir);
    let now = boottime_ns();
    let mut out = String::new();
    for (host, name) in hosts {
        let ttl = match host.expires_ns {
            0 => "never expires".to_owned(),
            deadline => format!(
                "expires in {}s",
                deadline.saturating_sub(now).div_ceil(1_000_000_000)
            ),
        };
        let name = name.unwrap_or_else(|| "-".to_owned());
        if host.scope.is_default() {
            let _ = writeln!(out, "{}\t{ttl}\t{name}", host.addr);
        } else {
            let policy = crate::firewall::policy_label(&policies, host.scope);
            let _ = writeln!(out, "{}\t{ttl}\t{name}\tpolicy={policy}", host.addr);
        }
    }
    Ok(out)
}

/// `nettrust status`: backend, daemon, attached cgroups and counters, for the eBPF state and the
/// nftables table, whichever exist.
pub fn status(bpffs_dir: &Path) -> Result<String, CommandError> {
    let table = nftables::status()?;
    let mut out = match ebpf::status_pinned(bpffs_dir) {
        Ok(status) => ebpf_status(bpffs_dir, &status),
        Err(EbpfError::NotPinned(_)) if table.is_some() => String::new(),
        // A daemon that is starting holds the directory before its maps are pinned.
        Err(EbpfError::NotPinned(_)) if ebpf::daemon_running(bpffs_dir) => format!(
            "backend: none yet (nothing pinned in {}, no nftables table inet {})\ndaemon: running\n",
            bpffs_dir.display(),
            nftables::TABLE,
        ),
        Err(EbpfError::NotPinned(_)) => {
            return Err(CommandError::NotRunning(bpffs_dir.to_owned()));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(t) = table {
        let _ = writeln!(out, "backend: nftables (table inet {})", nftables::TABLE);
        let _ = writeln!(
            out,
            "daemon: {}",
            if t.daemon_running {
                "running"
            } else {
                "not running"
            }
        );
        // The table has no owner flag: it enforces with or without a daemon.
        let _ = writeln!(out, "enforcement: active");
        let _ = writeln!(
            out,
            "drop input: {}",
            if t.drop_input { "yes" } else { "no" }
        );
        let _ = writeln!(out, "whitelisted: {}", t.whitelisted_hosts);
        let _ = writeln!(out, "authorized: {}", t.authorized);
        let _ = writeln!(
            out,
            "packets rejected: {} (tcp reset {}, icmp {})",
            t.rejected.0 + t.rejected.1,
            t.rejected.0,
            t.rejected.1
        );
        if !t.policies.is_empty() {
            let _ = writeln!(out, "policies: {}", t.policies.len());
            for policy in &t.policies {
                let label = if policy.audit { "audited" } else { "rejected" };
                let counted = format!("{label} {}", policy.counted);
                let mode = (policy.audit, policy.scope, policy.grants);
                let cgroups = cgroup_paths(&policy.cgroups);
                write_policy(&mut out, &policy.name, mode, &counted, &cgroups);
            }
        }
    }
    Ok(out)
}

/// One line of `status`'s policies: name, mode, scope, grants, what its chain or program
/// counted, and its cgroups.
fn write_policy(
    out: &mut String,
    name: &str,
    (audit, scope, grants): (bool, u32, usize),
    counted: &str,
    cgroups: &[String],
) {
    let _ = writeln!(
        out,
        "  {name} ({}, scope {scope}) grants {grants} {counted} cgroups {}",
        if audit { "audit" } else { "enforce" },
        cgroups.join(", ")
    );
}

/// The paths of the cgroups `ids` (cgroup ids are their directories' inode numbers), found by
/// walking the cgroup v2 tree; an id not found shows as `id N`.
fn cgroup_paths(ids: &[u64]) -> Vec<String> {
    fn walk(dir: &Path, wanted: &[u64], found: &mut Vec<(u64, PathBuf)>) {
        use std::os::unix::fs::MetadataExt as _;
        if found.len() == wanted.len() {
            return;
        }
        if let Ok(meta) = std::fs::metadata(dir)
            && wanted.contains(&meta.ino())
        {
            found.push((meta.ino(), dir.to_owned()));
        }
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&entry.path(), wanted, found);
            }
        }
    }
    let mut found = Vec::new();
    if let Ok(root) = crate::cgroup::cgroup2_mount() {
        walk(&root, ids, &mut found);
    }
    ids.iter()
        .map(|id| {
            found
                .iter()
                .find(|(f, _)| f == id)
                .map_or_else(|| format!("id {id}"), |(_, p)| p.display().to_string())
        })
        .collect()
}

fn ebpf_status(bpffs_dir: &Path, status: &ebpf::PinnedStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "backend: ebpf ({})", bpffs_dir.display());
    let _ = writeln!(
        out,
        "daemon: {}",
        if status.daemon_running {
            "running"
        } else {
            "not running"
        }
    );
    let _ = writeln!(
        out,
        "enforcement: {}",
        if status.programs_pinned && status.cgroups.iter().any(|c| c.2) {
            "active (pinned)"
        } else {
            "inactive"
        }
    );
    let _ = writeln!(
        out,
        "drop input: {}",
        if status.drop_input { "yes" } else { "no" }
    );
    let _ = writeln!(
        out,
        "dns capture: {}",
        if status.dns_capture { "on" } else { "off" }
    );
    let path_of = |id: u64| {
        status
            .cgroups
            .iter()
            .find(|c| c.0 == id)
            .and_then(|c| c.1.clone())
            .unwrap_or_else(|| format!("id {id}"))
    };
    if !status.policies.is_empty() {
        let _ = writeln!(out, "policies: {}", status.policies.len());
        for policy in &status.policies {
            let cgroups: Vec<String> = policy.cgroups.iter().map(|&id| path_of(id)).collect();
            let counted = format!("audited {}", policy.audited);
            let mode = (policy.audit, policy.scope, policy.grants);
            write_policy(&mut out, &policy.name, mode, &counted, &cgroups);
        }
    }
    let _ = writeln!(out, "cgroups: {}", status.cgroups.len());
    for (id, path, linked) in &status.cgroups {
        let find = |list: &[(u64, u64)]| list.iter().find(|(d, _)| d == id).map_or(0, |(_, n)| *n);
        let (allows, drops) = (find(&status.allows), find(&status.drops));
        let _ = writeln!(
            out,
            "  {} (id {id}){} allowed {allows} dropped {drops}",
            path.as_deref().unwrap_or("?"),
            if *linked { "" } else { " [not attached]" }
        );
    }
    pattern_status(&mut out, bpffs_dir);
    let stat = |i: u32| status.stats.get(i as usize).copied().unwrap_or(0);
    let _ = writeln!(out, "whitelisted: {}", status.whitelisted);
    let _ = writeln!(out, "authorized: {}", status.authorized);
    let _ = writeln!(out, "expired (not swept yet): {}", status.expired);
    let _ = writeln!(
        out,
        "packets allowed: {} (host {}, network {}, reply to inbound {})",
        stat(STAT_ALLOW_HOST) + stat(STAT_ALLOW_NET) + stat(STAT_ALLOW_INBOUND_REPLY),
        stat(STAT_ALLOW_HOST),
        stat(STAT_ALLOW_NET),
        stat(STAT_ALLOW_INBOUND_REPLY)
    );
    let _ = writeln!(
        out,
        "packets dropped: {} (unauthorized {}, expired {}, unreadable {}, inbound {})",
        stat(STAT_DROP) + stat(STAT_DROP_EXPIRED) + stat(STAT_ERROR) + stat(STAT_DROP_INPUT),
        stat(STAT_DROP),
        stat(STAT_DROP_EXPIRED),
        stat(STAT_ERROR),
        stat(STAT_DROP_INPUT)
    );
    out
}

/// The cgroup patterns section of `status`: each pattern, its attach point and the cgroups it
/// covers now (nothing when no pattern is configured).
fn pattern_status(out: &mut String, bpffs_dir: &Path) {
    let Ok(patterns) = ebpf::coverage_pinned(bpffs_dir) else {
        return;
    };
    if patterns.is_empty() {
        return;
    }
    let _ = writeln!(out, "patterns: {}", patterns.len());
    for p in &patterns {
        let _ = writeln!(
            out,
            "  pattern {} (attached at {}): {} cgroups",
            p.pattern,
            p.attach_point.display(),
            p.cgroups.len()
        );
        for cgroup in &p.cgroups {
            let _ = writeln!(out, "    {}", cgroup.display());
        }
    }
}

/// `nettrust flush`: removes everything nettrust pinned in `bpffs_dir` (links first, so the
/// cgroups are unfiltered before the maps go) and the nftables table of the caller's network
/// namespace. Idempotent. Refuses while a daemon runs there. Returns what was done.
pub fn flush(bpffs_dir: &Path) -> Result<String, CommandError> {
    if ebpf::daemon_running(bpffs_dir) {
        return Err(CommandError::Flush(vec![PinError::Busy(
            bpffs_dir.to_owned(),
        )]));
    }
    nftables::ensure_no_daemon()?;
    ebpf::remove_all(bpffs_dir).map_err(CommandError::Flush)?;
    let mut out = format!("flushed {}\n", bpffs_dir.display());
    if nftables::flush()? {
        let _ = writeln!(out, "removed nftables table inet {}", nftables::TABLE);
    }
    Ok(out)
}

/// `nettrust attach --cgroup PATH`.
/// A pattern (`*`, `**`) is added to the pinned patterns in the default policy: the cgroups it
/// matches, now and later, are filtered until the daemon's next start or reload.
pub fn attach(bpffs_dir: &Path, cgroup: &Path) -> Result<(), EbpfError> {
    if crate::cgroup::patterns::is_pattern(cgroup) {
        return ebpf::attach_pattern_pinned(bpffs_dir, cgroup);
    }
    crate::cgroup::validate(cgroup).map_err(|e| EbpfError::Cgroup {
        path: cgroup.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    ebpf::attach_pinned(bpffs_dir, cgroup)
}

/// `nettrust detach --cgroup PATH`; returns whether the cgroup was attached.
pub fn detach(bpffs_dir: &Path, cgroup: &Path) -> Result<bool, EbpfError> {
    ebpf::detach_pinned(bpffs_dir, cgroup)
}
