//! The world `bench` and `soak` run in: the shared network world of [`crate::netns`] (client and
//! internet namespaces, the filtered cgroup, the bpffs directory), a scratch directory, an
//! authoritative dnsmasq in the internet namespace serving generated names, the nettrust daemon
//! under test in the client namespace, and helpers to load it with dnsperf from the cgroup.
//! Processes are stopped in `Drop` (also on error or panic), then the world removes itself.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::{self, Layout, Net, UPSTREAM};

/// The generated names the upstream serves: `PREFIX{i}.LABEL` for `i` below `count`, each
/// answering an address of 198.18.0.0/15 (RFC 2544's benchmarking range), `i % addresses`.
pub(crate) struct Names<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) label: &'a str,
    pub(crate) count: u32,
    pub(crate) addresses: u32,
    /// More lines of the hosts file (`ADDRESS NAME`).
    pub(crate) extra_hosts: &'a str,
    /// More lines of the upstream's dnsmasq configuration.
    pub(crate) extra_conf: &'a str,
    /// The answers' TTL.
    pub(crate) ttl: u32,
}

/// One world with its processes.
pub(crate) struct Lab {
    /// Scratch files (hosts, queries, configurations, logs: the daemon's is `nettrust.log`).
    pub(crate) dir: PathBuf,
    /// The nettrust binary `start_nettrust` runs.
    pub(crate) binary: PathBuf,
    /// The name readiness is checked with (the first generated one).
    probe: String,
    /// Servers and load generators (each a process group leader or a plain child), killed in
    /// `Drop`.
    children: Vec<Child>,
    /// The daemon, stopped with SIGTERM.
    pub(crate) nettrust: Option<Child>,
    /// The daemon's `RUST_LOG` (per-answer logs are info level; a load test measures the proxy,
    /// not the terminal, so the default is `warn`).
    pub(crate) log_filter: &'static str,
    /// More environment of the daemon (`NET_TRUST_*` variables).
    pub(crate) env: Vec<(String, String)>,
    /// Declared last: dropped after the processes are gone.
    pub(crate) net: Net,
}

impl Lab {
    /// Creates the world: `kind` and `tag` name it (see [`Layout`]), `inet` lists more
    /// `ip -n INET …` commands (`{dev}` is its veth end), `binary` is the daemon to run.
    pub(crate) fn new(kind: &str, tag: &str, inet: &[&str], binary: &Path) -> Result<Self> {
        let id = std::process::id().to_string();
        let dir = std::env::temp_dir().join(format!("nettrust-{kind}-{id}"));
        fs::create_dir_all(&dir)?;
        let net = Net::new(&Layout {
            kind,
            tag,
            id,
            inet,
        });
        let net = match net {
            Ok(net) => net,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(Self {
            dir,
            binary: binary.to_owned(),
            probe: String::new(),
            children: Vec::new(),
            nettrust: None,
            log_filter: "warn",
            env: Vec::new(),
            net,
        })
    }

    /// `program` inside the client namespace.
    pub(crate) fn in_client(&self, program: impl AsRef<OsStr>) -> Command {
        self.net.in_ns(&self.net.client_ns, program)
    }

    /// `program` inside the internet namespace.
    pub(crate) fn in_inet(&self, program: impl AsRef<OsStr>) -> Command {
        self.net.in_ns(&self.net.inet_ns, program)
    }

    /// `program` in the client namespace and the filtered cgroup.
    pub(crate) fn in_cgroup(&self, program: impl AsRef<OsStr>) -> Command {
        self.net.in_cgroup(program)
    }

    /// Spawns `cmd` as a child killed in `Drop`; `what` names it in the error.
    pub(crate) fn spawn(&mut self, mut cmd: Command, what: &str) -> Result<()> {
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        self.children.push(child);
        Ok(())
    }

    /// The authoritative upstream on [`UPSTREAM`] serving `names`; writes the hosts file and the
    /// `queries` file (one A query per name) dnsperf reads.
    pub(crate) fn start_upstream(&mut self, names: &Names<'_>) -> Result<()> {
        let mut hosts = String::with_capacity(names.count as usize * 32);
        let mut queries = String::with_capacity(names.count as usize * 20);
        for i in 0..names.count {
            let a = i % names.addresses;
            let name = format!("{}{i}.{}", names.prefix, names.label);
            writeln!(
                hosts,
                "198.{}.{}.{} {name}",
                18 + (a >> 16),
                (a >> 8) & 0xff,
                a & 0xff
            )?;
            writeln!(queries, "{name} A")?;
        }
        hosts.push_str(names.extra_hosts);
        fs::write(self.dir.join("hosts"), hosts)?;
        fs::write(self.dir.join("queries"), queries)?;
        self.probe = format!("{}1.{}", names.prefix, names.label);
        let zone = format!(
            "addn-hosts={}\nlocal-ttl={}\n{}",
            self.dir.join("hosts").display(),
            names.ttl,
            names.extra_conf
        );
        let cmd = netns::dnsmasq(&self.net.inet_ns, UPSTREAM, &zone, &self.dir, "upstream")?;
        self.spawn(cmd, "dnsmasq (apt-get install dnsmasq-base)")?;
        self.wait_answers(UPSTREAM, "dnsmasq", Duration::from_secs(120))
            .with_context(|| fs::read_to_string(self.dir.join("upstream.log")).unwrap_or_default())
    }

    /// Starts nettrust in the client namespace, listening on 127.0.0.1:53, forwarding to the
    /// upstream, filtering the cgroup, with `extra` options; waits until it answers.
    pub(crate) fn start_nettrust(&mut self, extra: &[String]) -> Result<u32> {
        let mut args = vec!["--cgroup".to_owned(), self.net.cgroup.display().to_string()];
        args.extend_from_slice(extra);
        self.start_daemon(&args)
    }

    /// Starts nettrust like [`Lab::start_nettrust`] but without listing the cgroup itself:
    /// `extra` names what it filters (a config file whose `[[policy]]` sections list it, since a
    /// policy's cgroup may not also be a top-level one).
    pub(crate) fn start_daemon(&mut self, extra: &[String]) -> Result<u32> {
        self.stop_nettrust()?;
        let child = self
            .in_client(&self.binary)
            .args(["run", "--listen-addr", "127.0.0.1:53"])
            .args(["--fwd-addr", &format!("{UPSTREAM}:53")])
            .arg("--bpffs-dir")
            .arg(&self.net.bpffs_dir)
            .args(extra)
            .env("RUST_LOG", self.log_filter)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.dir.join("nettrust.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let pid = child.id();
        self.nettrust = Some(child);
        self.wait_answers("127.0.0.1", "nettrust", Duration::from_secs(30))?;
        Ok(pid)
    }

    /// SIGTERM, and waits: nettrust detaches and unpins (or deletes its table) itself.
    pub(crate) fn stop_nettrust(&mut self) -> Result<()> {
        let Some(mut nettrust) = self.nettrust.take() else {
            return Ok(());
        };
        signal(&nettrust, libc::SIGTERM);
        let started = Instant::now();
        while nettrust.try_wait()?.is_none() {
            if started.elapsed() > Duration::from_secs(20) {
                let _ = nettrust.kill();
                let _ = nettrust.wait();
                bail!("nettrust did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Fails when the daemon died meanwhile (its figures would be meaningless).
    pub(crate) fn check_nettrust(&mut self) -> Result<()> {
        if let Some(nettrust) = self.nettrust.as_mut()
            && let Some(status) = nettrust.try_wait()?
        {
            bail!("nettrust exited with {status}:\n{}", self.nettrust_log());
        }
        Ok(())
    }

    /// The daemon's log so far.
    pub(crate) fn nettrust_log(&self) -> String {
        fs::read_to_string(self.dir.join("nettrust.log")).unwrap_or_default()
    }

    /// Waits until `server` answers the probe name (asked from the client namespace); after
    /// `limit`, an error naming `what`, with the daemon's log.
    pub(crate) fn wait_answers(&self, server: &str, what: &str, limit: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let ok = self
                .in_client("dig")
                .args(["+time=1", "+tries=1", "+short", &format!("@{server}")])
                .arg(&self.probe)
                .output()
                .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
            if ok {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("{what} does not answer\n{}", self.nettrust_log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// dnsperf from the cgroup; its stdout.
    pub(crate) fn dnsperf(&self, args: &[String]) -> Result<String> {
        let out = self
            .in_cgroup("dnsperf")
            .args(args)
            .output()
            .context("starting dnsperf (apt-get install dnsperf)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "dnsperf failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    }

    /// dnsperf's arguments for `server`, reading the world's `queries` file.
    pub(crate) fn dnsperf_args(&self, server: &str, extra: &[&str]) -> Vec<String> {
        dnsperf_args(server, &self.dir.join("queries"), extra)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.stop_nettrust() {
            eprintln!("xtask: {e}");
        }
        for child in &mut self.children {
            // A load generator runs as a process group of its own: its children go with it.
            // SAFETY: kill(2); the group id is our unreaped child's pid, so no other process
            // group can have it.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
        // Then `net` is dropped: it removes itself.
    }
}

/// Sends `signal` to `child`.
fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own unreaped child's pid.
    unsafe { libc::kill(child.id() as i32, signal) };
}

/// dnsperf's arguments: `server`, the queries in `queries`, a 2 s timeout, then `extra`.
pub(crate) fn dnsperf_args(server: &str, queries: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["-s", server, "-d"].map(String::from).to_vec();
    args.push(queries.display().to_string());
    args.extend(["-t", "2"].map(String::from));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// The number after `label` on the first line of dnsperf's output that starts with it.
pub(crate) fn field(text: &str, label: &str) -> Option<f64> {
    text_field(text, label)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The rest of the first line of dnsperf's output that starts with `label`, trimmed.
pub(crate) fn text_field<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(str::trim)
}

/// The resident set size of process `pid`, in KiB.
pub(crate) fn vmrss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/PID/status` field given in KiB (`key` with its colon, e.g. `VmHWM:`).
pub(crate) fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}
