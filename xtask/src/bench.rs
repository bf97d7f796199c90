//! `cargo xtask bench dns`: cache-miss forwarding throughput and latency of nettrust (eBPF
//! backend, authorizing every answer into the maps) against querying the upstream directly.
//!
//! Everything runs in two network namespaces this command creates and removes: "client" (nettrust
//! and dnsperf, inside a test cgroup that nettrust filters) and "upstream" (dnsmasq serving
//! `NAMES` distinct names from a generated addn-hosts file), linked by a veth pair on
//! documentation addresses. The host's own network and cgroups are never touched.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Distinct names served by the upstream (each query of a run is a cache miss for nettrust).
const NAMES: u32 = 100_000;
/// Distinct addresses those names resolve to (198.18.0.0/15, RFC 2544's benchmarking range); below
/// the eBPF host map's capacity (65536) so no authorization fails.
const ADDRESSES: u32 = 50_000;
const CLIENT_V4: &str = "198.51.100.1";
const UPSTREAM_V4: &str = "198.51.100.53";
const LINK_PEER_V4: &str = "198.51.100.2";

/// Options of one benchmark run.
pub struct Options {
    /// Seconds per dnsperf run.
    pub seconds: u32,
    /// Queries in flight.
    pub in_flight: u32,
}

/// What dnsperf measured against one server.
struct Figures {
    qps: f64,
    lost: u64,
    p50_us: f64,
    p99_us: f64,
}

/// Everything the benchmark created, removed in `Drop` (also on error or panic).
struct Bench {
    id: String,
    dir: PathBuf,
    cgroup: PathBuf,
    bpffs_dir: PathBuf,
    children: Vec<Child>,
    nettrust: Option<Child>,
}

fn cmd(program: &str, args: &[&str]) -> Result<()> {
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

fn cgroup2_root() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .context("cgroup v2 is not mounted")
}

impl Bench {
    fn client(&self) -> String {
        format!("ntbc-{}", self.id)
    }
    fn upstream(&self) -> String {
        format!("ntbu-{}", self.id)
    }

    fn new() -> Result<Self> {
        let id = std::process::id().to_string();
        let dir = std::env::temp_dir().join(format!("nettrust-bench-{id}"));
        fs::create_dir_all(&dir)?;
        let bench = Self {
            cgroup: cgroup2_root()?.join(format!("nettrust-bench-{id}")),
            bpffs_dir: PathBuf::from(format!("/sys/fs/bpf/nettrust-bench-{id}")),
            dir,
            children: Vec::new(),
            nettrust: None,
            id,
        };
        let (c, u, id) = (bench.client(), bench.upstream(), &bench.id);
        cmd("ip", &["netns", "add", &c])?;
        cmd("ip", &["netns", "add", &u])?;
        let script = [
            format!("link add vbc{id} netns {c} type veth peer name vbu{id} netns {u}"),
            format!("-n {c} link set lo up"),
            format!("-n {c} addr add {CLIENT_V4}/24 dev vbc{id}"),
            format!("-n {c} link set vbc{id} up"),
            format!("-n {u} link set lo up"),
            format!("-n {u} addr add {LINK_PEER_V4}/24 dev vbu{id}"),
            format!("-n {u} addr add {UPSTREAM_V4}/24 dev vbu{id}"),
            format!("-n {u} link set vbu{id} up"),
        ];
        for line in script {
            let args: Vec<&str> = line.split_whitespace().collect();
            cmd("ip", &args)?;
        }
        fs::create_dir(&bench.cgroup).context("creating the bench cgroup")?;
        Ok(bench)
    }

    /// `program` inside the client namespace (nsenter keeps /sys visible, unlike ip netns exec).
    fn in_client(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.client()))
            .arg("--")
            .arg(program);
        c
    }

    /// `program` in the client namespace and the filtered cgroup (a shell moves itself first).
    fn in_cgroup(&self, program: &str, args: &[String]) -> Command {
        let mut c = Command::new("sh");
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        c.arg("-c").arg(format!(
            "echo $$ > '{}/cgroup.procs' && exec nsenter --net=/run/netns/{} -- {program} {}",
            self.cgroup.display(),
            self.client(),
            quoted.join(" ")
        ));
        c
    }

    fn start_upstream(&mut self) -> Result<()> {
        let mut hosts = String::with_capacity(NAMES as usize * 32);
        let mut queries = String::with_capacity(NAMES as usize * 20);
        for i in 0..NAMES {
            let a = i % ADDRESSES;
            writeln!(
                hosts,
                "198.{}.{}.{} n{i}.bench",
                18 + (a >> 16),
                (a >> 8) & 0xff,
                a & 0xff
            )?;
            writeln!(queries, "n{i}.bench A")?;
        }
        fs::write(self.dir.join("hosts"), hosts)?;
        fs::write(self.dir.join("queries"), queries)?;
        let conf = format!(
            "no-resolv\nno-hosts\nbind-interfaces\nport=53\nuser=root\npid-file=\n\
             listen-address={UPSTREAM_V4}\naddn-hosts={}\nlocal-ttl=60\n",
            self.dir.join("hosts").display()
        );
        fs::write(self.dir.join("dnsmasq.conf"), conf)?;
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.upstream(),
                "dnsmasq",
                "--keep-in-foreground",
            ])
            .arg(format!(
                "--conf-file={}",
                self.dir.join("dnsmasq.conf").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq (apt-get install dnsmasq-base)")?;
        self.children.push(child);
        self.wait_answers(UPSTREAM_V4, "dnsmasq")
    }

    fn start_nettrust(&mut self, binary: &Path) -> Result<()> {
        let child = self
            .in_client(&binary.display().to_string())
            .args(["run", "--listen-addr", "127.0.0.1:53"])
            .args(["--fwd-addr", &format!("{UPSTREAM_V4}:53")])
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs-dir")
            .arg(&self.bpffs_dir)
            // Per-answer logs are info level; a benchmark measures the proxy, not the terminal.
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.dir.join("nettrust.log"))?)
            .spawn()
            .context("starting nettrust")?;
        self.nettrust = Some(child);
        self.wait_answers("127.0.0.1", "nettrust")
    }

    fn wait_answers(&self, server: &str, what: &str) -> Result<()> {
        let started = Instant::now();
        loop {
            let ok = self
                .in_client("dig")
                .args([
                    "+time=1",
                    "+tries=1",
                    "+short",
                    &format!("@{server}"),
                    "n1.bench",
                ])
                .output()
                .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
            if ok {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("{what} does not answer");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// dnsperf against `server`: one run for throughput, one verbose run for latencies.
    fn measure(&self, server: &str, opts: &Options) -> Result<Figures> {
        let base = |seconds: u32| -> Vec<String> {
            vec![
                "-s".into(),
                server.into(),
                "-d".into(),
                self.dir.join("queries").display().to_string(),
                "-l".into(),
                seconds.to_string(),
                "-q".into(),
                opts.in_flight.to_string(),
                "-t".into(),
                "2".into(),
            ]
        };
        let out = self.in_cgroup("dnsperf", &base(opts.seconds)).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "dnsperf failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let field = |label: &str| -> Option<f64> {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        let qps = field("Queries per second:").context("no qps in dnsperf's output")?;
        let lost = field("Queries lost:").unwrap_or(0.0) as u64;

        let mut args = base(opts.seconds.div_ceil(2));
        args.push("-v".into());
        let out = self.in_cgroup("dnsperf", &args).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // Verbose lines: "> NOERROR n1.bench A 0.000123".
        let mut latencies: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("> "))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .collect();
        if latencies.is_empty() {
            bail!("no per-query latencies in dnsperf -v output");
        }
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize] * 1e6;
        Ok(Figures {
            qps,
            lost,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
        })
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(mut nettrust) = self.nettrust.take() {
            // SIGTERM: nettrust detaches and unpins everything itself.
            let _ = Command::new("kill")
                .args(["-TERM", &nettrust.id().to_string()])
                .status();
            let started = Instant::now();
            while nettrust.try_wait().ok().flatten().is_none()
                && started.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = nettrust.kill();
            let _ = nettrust.wait();
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(entries) = fs::read_dir(&self.bpffs_dir) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
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

/// Runs the DNS benchmark with the nettrust binary at `binary` and prints the figures.
pub fn dns(binary: &Path, opts: &Options) -> Result<()> {
    if !crate::setup::is_root() {
        bail!("the benchmark creates network namespaces and attaches eBPF: run it as root");
    }
    let mut bench = Bench::new()?;
    bench.start_upstream()?;
    bench.start_nettrust(binary)?;
    eprintln!(
        "xtask: dnsperf, {} queries in flight, {} s per run, {NAMES} distinct names, cache off",
        opts.in_flight, opts.seconds
    );
    let direct = bench.measure(UPSTREAM_V4, opts)?;
    let proxied = bench.measure("127.0.0.1", opts)?;
    if let Some(nettrust) = bench.nettrust.as_mut()
        && let Some(status) = nettrust.try_wait()?
    {
        bail!("nettrust exited during the benchmark with {status}");
    }
    println!("target                      qps      lost   p50 (µs)   p99 (µs)");
    for (name, f) in [
        ("upstream (dnsmasq) direct", &direct),
        ("nettrust (eBPF)", &proxied),
    ] {
        println!(
            "{name:<25} {:>8.0} {:>8} {:>10.0} {:>10.0}",
            f.qps, f.lost, f.p50_us, f.p99_us
        );
    }
    println!(
        "nettrust/upstream qps ratio: {:.2}; added p50 latency: {:.0} µs",
        proxied.qps / direct.qps,
        proxied.p50_us - direct.p50_us
    );
    Ok(())
}
