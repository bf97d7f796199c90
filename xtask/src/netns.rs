//! The world `bench` and `soak` run in: two network namespaces of their own, "client" (the daemon
//! and the clients, which run inside a cgroup the daemon filters) and "upstream" (the
//! authoritative dnsmasq and the servers), linked by a veth pair on documentation addresses, plus a
//! scratch directory, the cgroup and the daemon's bpffs directory. The host's own network and
//! cgroups are never touched; everything is removed when the world is dropped, also on error or
//! panic (its owner stops its processes first).

use std::{
    fs,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The client end of the veth pair.
pub(crate) const CLIENT_V4: &str = "198.51.100.1";
/// The upstream resolver's address, on the upstream end.
pub(crate) const UPSTREAM_V4: &str = "198.51.100.53";
/// The upstream end's own address, the client's gateway.
pub(crate) const LINK_PEER_V4: &str = "198.51.100.2";

/// Namespaces, cgroup, bpffs directory and scratch directory of one run.
pub(crate) struct World {
    id: String,
    tag: char,
    /// Scratch files (zone, queries, logs: the daemon's is `nettrust.log`).
    pub(crate) dir: PathBuf,
    /// The cgroup the daemon filters.
    pub(crate) cgroup: PathBuf,
    /// The daemon's bpffs directory.
    pub(crate) bpffs_dir: PathBuf,
}

impl World {
    /// Creates the world. `kind` names the directories (`nettrust-KIND-PID`), `tag` the
    /// namespaces (`ntTAGc-PID`, `ntTAGu-PID`) and the veth ends. `client_route` is the client's
    /// route through the upstream end (`ip route add CLIENT_ROUTE via LINK_PEER_V4`);
    /// `upstream` lists more `ip -n UPSTREAM …` commands, `{dev}` standing for its veth end.
    pub(crate) fn new(
        kind: &str,
        tag: char,
        client_route: &str,
        upstream: &[&str],
    ) -> Result<Self> {
        let id = std::process::id().to_string();
        let dir = std::env::temp_dir().join(format!("nettrust-{kind}-{id}"));
        fs::create_dir_all(&dir)?;
        let world = Self {
            cgroup: cgroup2_root()?.join(format!("nettrust-{kind}-{id}")),
            bpffs_dir: PathBuf::from(format!("/sys/fs/bpf/nettrust-{kind}-{id}")),
            dir,
            tag,
            id,
        };
        let (c, u) = (world.client(), world.upstream());
        let (cdev, udev) = (
            format!("v{tag}c{}", world.id),
            format!("v{tag}u{}", world.id),
        );
        cmd("ip", &["netns", "add", &c])?;
        cmd("ip", &["netns", "add", &u])?;
        let mut script = vec![
            format!("link add {cdev} netns {c} type veth peer name {udev} netns {u}"),
            format!("-n {c} link set lo up"),
            format!("-n {c} addr add {CLIENT_V4}/24 dev {cdev}"),
            format!("-n {c} link set {cdev} up"),
            format!("-n {c} route add {client_route} via {LINK_PEER_V4}"),
            format!("-n {u} link set lo up"),
            format!("-n {u} addr add {LINK_PEER_V4}/24 dev {udev}"),
            format!("-n {u} addr add {UPSTREAM_V4}/24 dev {udev}"),
        ];
        script.extend(
            upstream
                .iter()
                .map(|line| format!("-n {u} {}", line.replace("{dev}", &udev))),
        );
        script.push(format!("-n {u} link set {udev} up"));
        for line in script {
            let args: Vec<&str> = line.split_whitespace().collect();
            cmd("ip", &args)?;
        }
        fs::create_dir(&world.cgroup).context("creating the cgroup")?;
        Ok(world)
    }

    /// The client namespace.
    pub(crate) fn client(&self) -> String {
        format!("nt{}c-{}", self.tag, self.id)
    }

    /// The upstream namespace.
    pub(crate) fn upstream(&self) -> String {
        format!("nt{}u-{}", self.tag, self.id)
    }

    /// `program` inside namespace `ns` (nsenter keeps /sys visible, unlike `ip netns exec`, and
    /// execs `program`, so the child's pid is the program's).
    fn in_ns(ns: &str, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(program);
        c
    }

    /// `program` inside the client namespace.
    pub(crate) fn in_client(&self, program: &str) -> Command {
        Self::in_ns(&self.client(), program)
    }

    /// `program` inside the upstream namespace.
    pub(crate) fn in_upstream(&self, program: &str) -> Command {
        Self::in_ns(&self.upstream(), program)
    }

    /// `command` (a shell command line) in the client namespace and the filtered cgroup: a
    /// shell moves itself into the cgroup, then execs it.
    pub(crate) fn in_cgroup(&self, command: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            "echo $$ > '{}/cgroup.procs' && exec nsenter --net=/run/netns/{} -- {command}",
            self.cgroup.display(),
            self.client(),
        ));
        c
    }

    /// Waits until `server` answers `name` (asked from the client namespace); after `limit`, an
    /// error naming `what`, with the daemon's log.
    pub(crate) fn wait_answers(
        &self,
        server: &str,
        name: &str,
        what: &str,
        limit: Duration,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            let ok = self
                .in_client("dig")
                .args(["+time=1", "+tries=1", "+short", &format!("@{server}"), name])
                .output()
                .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
            if ok {
                return Ok(());
            }
            if started.elapsed() > limit {
                let log = fs::read_to_string(self.dir.join("nettrust.log")).unwrap_or_default();
                bail!("{what} does not answer\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for World {
    /// Removes what the world created, once its processes are gone: the pins (links first, so
    /// nothing a killed daemon left stays attached), the network namespaces, the cgroup (retried
    /// while the kernel still counts exiting processes in it) and the scratch directory.
    fn drop(&mut self) {
        if let Ok(entries) = fs::read_dir(&self.bpffs_dir) {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort_by_key(|p| !p.to_string_lossy().contains("link-"));
            for path in paths {
                let _ = fs::remove_file(path);
            }
            let _ = fs::remove_dir(&self.bpffs_dir);
        }
        for ns in [self.client(), self.upstream()] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let started = Instant::now();
        while self.cgroup.exists()
            && fs::remove_dir(&self.cgroup).is_err()
            && started.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `program ARGS`; an error with its stderr when it fails.
pub(crate) fn cmd(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Where cgroup v2 is mounted.
pub(crate) fn cgroup2_root() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .context("cgroup v2 is not mounted")
}
