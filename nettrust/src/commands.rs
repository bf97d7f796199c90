//! The commands that work on the state pinned in the bpffs directory, with or without a running
//! daemon (also after `kill -9`): `list`, `status`, `flush`, `attach`, `detach`.

use std::{fmt::Write as _, path::Path};

use nettrust_common::{
    STAT_ALLOW_HOST, STAT_ALLOW_INBOUND_REPLY, STAT_ALLOW_NET, STAT_DROP, STAT_DROP_EXPIRED,
    STAT_DROP_INPUT, STAT_ERROR,
};

use crate::firewall::{
    boottime_ns,
    ebpf::{self, EbpfError},
    pins::{self, PinError},
};

/// `nettrust list`: one line per live authorized host: address, remaining lifetime, and the name
/// whose answer authorized it.
pub fn list(bpffs_dir: &Path) -> Result<String, EbpfError> {
    let mut hosts = ebpf::list_pinned(bpffs_dir)?;
    hosts.sort_by_key(|(h, _)| h.addr);
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
        let _ = writeln!(out, "{}\t{ttl}\t{name}", host.addr);
    }
    Ok(out)
}

/// `nettrust status`: backend, daemon, attached cgroups and counters.
pub fn status(bpffs_dir: &Path) -> Result<String, EbpfError> {
    let status = match ebpf::status_pinned(bpffs_dir) {
        Ok(status) => status,
        Err(EbpfError::NotPinned(_)) => {
            return Ok(format!(
                "backend: none (nothing pinned in {})\ndaemon: {}\n",
                bpffs_dir.display(),
                if pins::daemon_running(bpffs_dir) {
                    "running"
                } else {
                    "not running"
                }
            ));
        }
        Err(e) => return Err(e),
    };
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
    Ok(out)
}

/// `nettrust flush`: removes everything nettrust pinned in `bpffs_dir` (links first, so the
/// cgroups are unfiltered before the maps go). Idempotent. Refuses while a daemon runs there.
pub fn flush(bpffs_dir: &Path) -> Result<(), Vec<PinError>> {
    if pins::daemon_running(bpffs_dir) {
        return Err(vec![PinError::Busy(bpffs_dir.to_owned())]);
    }
    pins::remove_all(bpffs_dir)
}

/// `nettrust attach --cgroup PATH`.
pub fn attach(bpffs_dir: &Path, cgroup: &Path) -> Result<(), EbpfError> {
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
