//! The network world shared by `cargo xtask bench`/`soak` and nettrust's root tests (which
//! compile this same file into their `tests/world` harness with `#[path]`): a "client" network
//! namespace (the daemon, and its clients inside a cgroup the daemon filters) and an "internet"
//! namespace (the upstream DNS server and whatever the clients connect to), linked by a veth pair
//! on documentation addresses (IPv4 and IPv6), plus that cgroup and the daemon's bpffs directory.
//! The host's own network and cgroups are never touched; everything is removed when the
//! [`Net`] is dropped, also on error or panic (its owner stops its processes first).
//!
//! Only `std`, `libc` and `anyhow` are used: both crates have them.

use std::{
    ffi::OsStr,
    fs::{self, File},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The client end of the veth pair.
pub const CLIENT_V4: &str = "198.51.100.1";
/// The internet end's own address, the client's gateway.
pub const INET_V4: &str = "198.51.100.2";
pub const CLIENT_V6: &str = "2001:db8:ff::1";
pub const INET_V6: &str = "2001:db8:ff::2";
/// The upstream DNS server (dnsmasq), on the internet end.
pub const UPSTREAM: &str = "198.51.100.53";

/// How one world is named and what its internet namespace adds to the common link.
pub struct Layout<'a> {
    /// Names the cgroup and the bpffs directory: `nettrust-KIND-ID`.
    pub kind: &'a str,
    /// Names the namespaces (`ntTAGc-ID`, `ntTAGi-ID`) and the veth ends (`vTAGcID`, `vTAGiID`).
    pub tag: &'a str,
    /// Unique among the worlds that may exist at the same time on the machine.
    pub id: String,
    /// More `ip -n INET …` commands run before the internet end comes up, `{dev}` standing for
    /// its veth end (routes and addresses of the "internet").
    pub inet: &'a [&'a str],
}

/// The namespaces, the link, the cgroups and the bpffs directory of one world.
pub struct Net {
    /// The world's unique id (in every name below).
    #[allow(dead_code, reason = "read by the root tests, not by xtask")]
    pub id: String,
    pub client_ns: String,
    pub inet_ns: String,
    /// The client's veth end (in `client_ns`).
    pub client_dev: String,
    /// The internet's veth end (in `inet_ns`).
    pub inet_dev: String,
    /// The cgroup the daemon filters.
    pub cgroup: PathBuf,
    /// The daemon's bpffs directory (created by the daemon, removed here).
    pub bpffs_dir: PathBuf,
    /// More cgroups next to `cgroup`, removed with it.
    extra_cgroups: Vec<PathBuf>,
}

impl Net {
    /// Creates the namespaces, the link with its addresses and default routes, `layout.inet`'s
    /// commands, and the cgroup.
    pub fn new(layout: &Layout<'_>) -> Result<Self> {
        let Layout {
            kind,
            tag,
            ref id,
            inet,
        } = *layout;
        let net = Self {
            client_ns: format!("nt{tag}c-{id}"),
            inet_ns: format!("nt{tag}i-{id}"),
            client_dev: format!("v{tag}c{id}"),
            inet_dev: format!("v{tag}i{id}"),
            cgroup: cgroup2_root()?.join(format!("nettrust-{kind}-{id}")),
            bpffs_dir: PathBuf::from(format!("/sys/fs/bpf/nettrust-{kind}-{id}")),
            extra_cgroups: Vec::new(),
            id: id.clone(),
        };
        let (c, i, cdev, idev) = (&net.client_ns, &net.inet_ns, &net.client_dev, &net.inet_dev);
        ip(&format!("netns add {c}"))?;
        ip(&format!("netns add {i}"))?;
        ip(&format!(
            "link add {cdev} netns {c} type veth peer name {idev} netns {i}"
        ))?;
        let mut script = vec![
            format!("-n {c} link set lo up"),
            format!("-n {c} addr add {CLIENT_V4}/24 dev {cdev}"),
            format!("-n {c} -6 addr add {CLIENT_V6}/64 dev {cdev} nodad"),
            format!("-n {c} link set {cdev} up"),
            format!("-n {c} route add default via {INET_V4}"),
            format!("-n {c} -6 route add default via {INET_V6}"),
            format!("-n {i} link set lo up"),
            format!("-n {i} addr add {INET_V4}/24 dev {idev}"),
            format!("-n {i} addr add {UPSTREAM}/24 dev {idev}"),
            format!("-n {i} -6 addr add {INET_V6}/64 dev {idev} nodad"),
        ];
        script.extend(
            inet.iter()
                .map(|line| format!("-n {i} {}", line.replace("{dev}", idev))),
        );
        script.push(format!("-n {i} link set {idev} up"));
        for line in &script {
            ip(line)?;
        }
        fs::create_dir(&net.cgroup)
            .with_context(|| format!("creating the cgroup {}", net.cgroup.display()))?;
        Ok(net)
    }

    /// A second cgroup next to the filtered one (`nettrust-KIND-ID-NAME`), removed with the world.
    #[allow(dead_code, reason = "used by the root tests, not by xtask")]
    pub fn extra_cgroup(&mut self, name: &str) -> Result<PathBuf> {
        let mut file_name = self.cgroup.file_name().unwrap_or_default().to_owned();
        file_name.push(format!("-{name}"));
        let path = self.cgroup.with_file_name(file_name);
        fs::create_dir(&path).with_context(|| format!("creating the cgroup {}", path.display()))?;
        self.extra_cgroups.push(path.clone());
        Ok(path)
    }

    /// `program` run inside network namespace `ns`.
    pub fn in_ns(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        in_ns(ns, program)
    }

    /// `program` run in the client namespace *and* the filtered cgroup: what the daemon filters.
    pub fn in_cgroup(&self, program: impl AsRef<OsStr>) -> Command {
        self.in_cgroup_at(&self.cgroup, program)
    }

    /// `program` run in the client namespace and the cgroup `cgroup`.
    pub fn in_cgroup_at(&self, cgroup: &Path, program: impl AsRef<OsStr>) -> Command {
        join_cgroup(in_ns(&self.client_ns, program), cgroup)
    }
}

impl Drop for Net {
    /// Removes what the world created, once its processes are gone: the pins (links first, so
    /// nothing a killed daemon left stays attached), the network namespaces, then the cgroups
    /// (retried while the kernel still counts exiting processes in them).
    fn drop(&mut self) {
        if let Ok(entries) = fs::read_dir(&self.bpffs_dir) {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort_by_key(|p| !p.to_string_lossy().contains("link-"));
            for path in paths {
                let _ = fs::remove_file(path);
            }
            let _ = fs::remove_dir(&self.bpffs_dir);
        }
        for ns in [&self.client_ns, &self.inet_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        for cgroup in self.extra_cgroups.iter().chain([&self.cgroup]) {
            let started = Instant::now();
            while cgroup.exists()
                && fs::remove_dir(cgroup).is_err()
                && started.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Runs `ip ARGS` (`args` split on whitespace); an error with its stderr when it fails.
pub fn ip(args: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .context("starting ip (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!("ip {args}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `program` run inside network namespace `ns`: the child enters it with setns(2) before exec,
/// so /sys stays visible (unlike `ip netns exec`) and the child's pid is the program's. A
/// namespace that cannot be opened makes the spawn fail.
pub fn in_ns(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let netns = File::open(format!("/run/netns/{ns}"));
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe; the fd stays open until exec (moved into the closure).
    unsafe {
        cmd.pre_exec(move || {
            let netns = netns.as_ref().map_err(|e| std::io::Error::from(e.kind()))?;
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// `cmd`, which also joins `cgroup` before it runs (writes itself into `cgroup.procs`). A cgroup
/// that cannot be opened makes the spawn fail.
pub fn join_cgroup(mut cmd: Command, cgroup: &Path) -> Command {
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"));
    // SAFETY: write(2) is async-signal-safe; "0" moves the writing process itself.
    unsafe {
        cmd.pre_exec(move || {
            let procs = procs.as_ref().map_err(|e| std::io::Error::from(e.kind()))?;
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Where cgroup v2 is mounted.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .context("cgroup v2 is not mounted")
}

/// A dnsmasq in namespace `ns` answering on `listen` port 53, configured by `zone` (more lines
/// of its configuration file) on top of what every world's dnsmasq has: no resolv.conf, no
/// /etc/hosts, no privileges dropped, no pid file. Writes `DIR/NAME.conf`; the returned command
/// (not started) logs to `DIR/NAME.log`.
pub fn dnsmasq(ns: &str, listen: &str, zone: &str, dir: &Path, name: &str) -> Result<Command> {
    let conf = dir.join(format!("{name}.conf"));
    fs::write(
        &conf,
        format!(
            "no-resolv\nno-hosts\nbind-interfaces\nport=53\nuser=root\npid-file=\n\
             listen-address={listen}\n{zone}"
        ),
    )
    .with_context(|| format!("writing {}", conf.display()))?;
    let log = File::create(dir.join(format!("{name}.log")))?;
    let mut cmd = in_ns(ns, "dnsmasq");
    cmd.arg("--keep-in-foreground")
        .arg(format!("--conf-file={}", conf.display()))
        .stdout(Stdio::null())
        .stderr(log);
    Ok(cmd)
}
