//! `cargo xtask bench [dns|datapath|commit|memory|all] [--smoke]` (issue 7).
//!
//! Everything runs in two network namespaces this command creates and removes: "client" (nettrust,
//! a forwarding dnsmasq and the clients, which run inside a bench cgroup that nettrust filters)
//! and "upstream" (the authoritative dnsmasq serving generated names, and the iperf3 server),
//! linked by a veth pair on documentation addresses. The host's own network and cgroups are never
//! touched; namespaces, cgroup, pins and processes are removed in `Drop`, also on error.
//!
//! - `netns.rs`: the world (namespaces, cgroup, pins, scratch files), shared with the soak;
//! - `bench.rs`: the processes, the DNS benchmark and the entry points;
//! - `bench_datapath.rs`: iperf3 through no filter / eBPF / nftables with 0, 10k, 1M hosts, and
//!   the memory figures taken along the way (1M hosts);
//! - `bench_commit.rs`: runs the `commit` bench target of the nettrust crate;
//! - `bench_report.rs`: figures, medians, the table, results.md and the chart.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench_report::{Figure, Report},
    netns::{UPSTREAM_V4, World},
};

/// Distinct names of the DNS benchmark (each query of a pass is a cache miss for nettrust).
const NAMES: u32 = 100_000;
/// Distinct addresses those names resolve to (198.18.0.0/15, RFC 2544's benchmarking range);
/// below the default host map capacity (65536) so no authorization fails.
const ADDRESSES: u32 = 50_000;
/// The iperf3 server in the upstream namespace (resolved as `iperf.bench`).
pub(crate) const TARGET_V4: &str = "192.0.2.1";
/// The forwarding dnsmasq of variants (d) and (e), in the client namespace.
const DNSMASQ_FWD: &str = "127.0.0.2";
/// The minimal relay of variant (f) (`xtask relay`), in the client namespace.
const RELAY: &str = "127.0.0.3";
/// nftables table and set dnsmasq's `--nftset` writes into (variant e), in the client namespace.
const NFTSET_TABLE: &str = "ntbench";
/// Metrics endpoint of the daemon in the client namespace.
pub(crate) const METRICS: &str = "127.0.0.1:9153";

/// How much to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds per dnsperf throughput run.
    pub seconds: u32,
    /// Seconds per fixed-rate (1,000 qps) latency run and per iperf3 run.
    pub latency_seconds: u32,
    /// Queries in flight for throughput.
    pub in_flight: u32,
    /// Runs per figure (the median is reported, with min–max).
    pub runs: u32,
    /// Filtered/unfiltered pairs per run of a filtered datapath step (TCP, and UDP), of
    /// `pair_seconds` each; the run's figures are the medians of its pairs. One pair on this VM
    /// spreads from 50 to 135 %, so a few long pairs cannot tell a 2 % cost from noise; many
    /// short ones can.
    pub pairs: u32,
    /// Seconds per iperf3 run of a pair.
    pub pair_seconds: u32,
    /// Authorized hosts of the datapath's "10k" and "1M" steps.
    pub hosts: [u32; 2],
    /// Commit bench rounds per run.
    pub rounds: u32,
    /// Build profile of the nettrust binary and the commit bench (`release` or `dev`).
    pub release: bool,
    /// The dns variants to run (letters `a` to `f`).
    pub variants: String,
}

impl Options {
    /// The real benchmark.
    pub fn full() -> Self {
        Self {
            seconds: 10,
            latency_seconds: 5,
            in_flight: 100,
            runs: 3,
            pairs: 9,
            pair_seconds: 2,
            hosts: [10_000, 1_000_000],
            rounds: 2000,
            release: true,
            variants: "abcdef".into(),
        }
    }

    /// CI smoke: every figure once, seconds each, small host counts.
    pub fn smoke() -> Self {
        Self {
            seconds: 1,
            latency_seconds: 1,
            in_flight: 20,
            runs: 1,
            pairs: 1,
            pair_seconds: 1,
            hosts: [200, 2000],
            rounds: 50,
            release: false,
            variants: "abcdef".into(),
        }
    }
}

/// Which benchmarks to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Dns,
    Datapath,
    Commit,
    Memory,
    All,
}

/// The resident set size of process `pid`, in KiB.
pub(crate) fn vmrss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("nettrust (pid {pid}) is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// CPU time (user and system, every thread) process `pid` has used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // The fields after the command name (in parentheses, which may hold spaces) start with the
    // 3rd; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .context("no utime/stime in /proc/PID/stat")
    };
    Ok(ticks(11)? + ticks(12)?)
}

/// Clock ticks per second (`getconf CLK_TCK`), the unit of [`cpu_ticks`].
fn ticks_per_second() -> Result<f64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK")
}

/// Everything the benchmark created: its processes, stopped in `Drop` (also on error or panic),
/// then the world (namespaces, cgroup, pins, scratch files).
pub(crate) struct Bench {
    binary: PathBuf,
    children: Vec<Child>,
    forwarder: Option<Child>,
    pub(crate) nettrust: Option<Child>,
    pub(crate) world: World,
}

impl Bench {
    fn new(binary: &Path) -> Result<Self> {
        // The client reaches the iperf3 server (TARGET_V4) through the upstream end.
        let world = World::new(
            "bench",
            'b',
            "192.0.2.0/24",
            &[&format!("addr add {TARGET_V4}/24 dev {{dev}}")],
        )?;
        Ok(Self {
            binary: binary.to_owned(),
            children: Vec::new(),
            forwarder: None,
            nettrust: None,
            world,
        })
    }

    /// `program` inside the client namespace.
    pub(crate) fn in_client(&self, program: &str) -> Command {
        self.world.in_client(program)
    }

    /// `program ARGS` in the client namespace and the filtered cgroup.
    pub(crate) fn in_cgroup(&self, program: &str, args: &[String]) -> Command {
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        self.world
            .in_cgroup(&format!("{program} {}", quoted.join(" ")))
    }

    /// The authoritative upstream: `NAMES` benchmark names, `iperf.bench`, and with `fill` the
    /// synthesized names `f-240-A-B-C.fill` answering 240.A.B.C (240.0.0.0/12: reserved, never
    /// routed, they only fill the firewall; a hosts file of a million names takes dnsmasq minutes
    /// to load, `synth-domain` costs nothing).
    fn start_upstream(&mut self, fill: bool) -> Result<()> {
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
        writeln!(hosts, "{TARGET_V4} iperf.bench")?;
        fs::write(self.world.dir.join("hosts"), hosts)?;
        fs::write(self.world.dir.join("queries"), queries)?;
        let mut conf = format!(
            "no-resolv\nno-hosts\nbind-interfaces\nport=53\nuser=root\npid-file=\n\
             listen-address={UPSTREAM_V4}\naddn-hosts={}\nlocal-ttl=60\n",
            self.world.dir.join("hosts").display()
        );
        if fill {
            conf.push_str("synth-domain=fill,240.0.0.0/12,f-\n");
        }
        fs::write(self.world.dir.join("dnsmasq.conf"), conf)?;
        let child = self
            .world
            .in_upstream("dnsmasq")
            .arg("--keep-in-foreground")
            .arg(format!(
                "--conf-file={}",
                self.world.dir.join("dnsmasq.conf").display()
            ))
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.world.dir.join("upstream.log"))?)
            .spawn()
            .context("starting dnsmasq (apt-get install dnsmasq-base)")?;
        self.children.push(child);
        self.wait_answers(UPSTREAM_V4, "dnsmasq", Duration::from_secs(120))
            .with_context(|| {
                fs::read_to_string(self.world.dir.join("upstream.log")).unwrap_or_default()
            })
    }

    /// The iperf3 server on [`TARGET_V4`] in the upstream namespace.
    pub(crate) fn start_iperf_server(&mut self) -> Result<()> {
        let child = self
            .world
            .in_upstream("iperf3")
            .arg("-s")
            .args(["-B", TARGET_V4])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 (apt-get install iperf3)")?;
        self.children.push(child);
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    /// Starts nettrust in the client namespace, filtering the bench cgroup, with `extra` options.
    pub(crate) fn start_nettrust(&mut self, extra: &[String]) -> Result<()> {
        self.stop_nettrust()?;
        let child = self
            .in_client(&self.binary.display().to_string())
            .args(["run", "--listen-addr", "127.0.0.1:53"])
            .args(["--fwd-addr", &format!("{UPSTREAM_V4}:53")])
            .args(["--metrics-addr", METRICS])
            .arg("--cgroup")
            .arg(&self.world.cgroup)
            .arg("--bpffs-dir")
            .arg(&self.world.bpffs_dir)
            .args(extra)
            // Per-answer logs are info level; a benchmark measures the proxy, not the terminal.
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.world.dir.join("nettrust.log"))?)
            .spawn()
            .context("starting nettrust")?;
        self.nettrust = Some(child);
        self.wait_answers("127.0.0.1", "nettrust", Duration::from_secs(30))
    }

    /// SIGTERM, and waits: nettrust detaches and unpins (or deletes its table) itself.
    pub(crate) fn stop_nettrust(&mut self) -> Result<()> {
        let Some(mut nettrust) = self.nettrust.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &nettrust.id().to_string()])
            .status();
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
            let log = fs::read_to_string(self.world.dir.join("nettrust.log")).unwrap_or_default();
            bail!("nettrust exited during the benchmark with {status}:\n{log}");
        }
        Ok(())
    }

    /// The forwarding dnsmasq of variants (d)/(e) on 127.0.0.2, cache off; with `nftset` every
    /// answer's addresses also go into an nftables set (created here, like nettrust's).
    fn start_forwarder(&mut self, nftset: bool) -> Result<()> {
        self.stop_forwarder();
        let mut conf = format!(
            "no-resolv\nno-hosts\nbind-interfaces\nport=53\nuser=root\npid-file=\n\
             listen-address={DNSMASQ_FWD}\nserver={UPSTREAM_V4}\ncache-size=0\n"
        );
        if nftset {
            let ruleset = format!(
                "table inet {NFTSET_TABLE} {{\n\
                 set allowed4 {{ type ipv4_addr; flags timeout; }}\n\
                 chain out {{ type filter hook output priority 0; policy accept; ip daddr @allowed4 accept; }}\n\
                 }}\n"
            );
            let path = self.world.dir.join("nftset.nft");
            fs::write(&path, ruleset)?;
            let out = self
                .in_client("nft")
                .arg("-f")
                .arg(&path)
                .output()
                .context("starting nft (apt-get install nftables)")?;
            if !out.status.success() {
                bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr));
            }
            writeln!(conf, "nftset=/bench/4#inet#{NFTSET_TABLE}#allowed4")?;
        }
        fs::write(self.world.dir.join("forwarder.conf"), conf)?;
        let child = self
            .in_client("dnsmasq")
            .arg("--keep-in-foreground")
            .arg(format!(
                "--conf-file={}",
                self.world.dir.join("forwarder.conf").display()
            ))
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.world.dir.join("forwarder.log"))?)
            .spawn()
            .context("starting the forwarding dnsmasq")?;
        self.forwarder = Some(child);
        self.wait_answers(DNSMASQ_FWD, "forwarding dnsmasq", Duration::from_secs(20))
    }

    /// The minimal relay of variant (f) on [`RELAY`] (this program's hidden `relay` command):
    /// the floor of forwarding on this machine.
    fn start_relay(&mut self) -> Result<()> {
        self.stop_forwarder();
        let xtask = std::env::current_exe().context("locating the xtask binary")?;
        let child = self
            .in_client(&xtask.display().to_string())
            .args([
                "relay",
                &format!("{RELAY}:53"),
                &format!("{UPSTREAM_V4}:53"),
            ])
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.world.dir.join("relay.log"))?)
            .spawn()
            .context("starting the minimal relay")?;
        self.forwarder = Some(child);
        self.wait_answers(RELAY, "minimal relay", Duration::from_secs(20))
    }

    fn stop_forwarder(&mut self) {
        if let Some(mut child) = self.forwarder.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self
            .in_client("nft")
            .args(["delete", "table", "inet", NFTSET_TABLE])
            .stderr(Stdio::null())
            .status();
    }

    /// Elements dnsmasq wrote into the `--nftset` set.
    fn nftset_elements(&self) -> Result<usize> {
        let out = self
            .in_client("nft")
            .args(["-j", "list", "set", "inet", NFTSET_TABLE, "allowed4"])
            .output()?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("nft -j: {}", String::from_utf8_lossy(&out.stderr)))?;
        Ok(json["nftables"]
            .as_array()
            .and_then(|items| items.iter().find_map(|i| i["set"]["elem"].as_array()))
            .map_or(0, Vec::len))
    }

    fn wait_answers(&self, server: &str, what: &str, limit: Duration) -> Result<()> {
        self.world.wait_answers(server, "n1.bench", what, limit)
    }

    /// dnsperf from the cgroup; returns its stdout.
    pub(crate) fn dnsperf(&self, args: &[String]) -> Result<String> {
        let out = self.in_cgroup("dnsperf", args).output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "dnsperf failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    }

    /// [`Bench::latency`] of the forwarder under test at `server`, and the CPU time (µs) its
    /// process used per answered query meanwhile: nettrust for (b) and (c), the forwarding
    /// dnsmasq for (d) and (e), the relay for (f).
    fn forwarder_latency(&self, server: &str, opts: &Options) -> Result<(f64, f64, f64)> {
        let pid = self
            .nettrust
            .as_ref()
            .or(self.forwarder.as_ref())
            .map(Child::id)
            .context("no forwarder runs")?;
        let per_second = ticks_per_second()?;
        let before = cpu_ticks(pid)?;
        let (p50, p99, answered) = self.latency(server, opts)?;
        let used_us = (cpu_ticks(pid)? - before) * 1e6 / per_second;
        Ok((p50, p99, used_us / answered as f64))
    }

    /// Throughput with `in_flight` queries in flight (qps).
    fn qps(&self, server: &str, opts: &Options) -> Result<f64> {
        let text = self.dnsperf(&dnsperf_args(
            server,
            &self.world.dir.join("queries"),
            &[
                "-l",
                &opts.seconds.to_string(),
                "-q",
                &opts.in_flight.to_string(),
            ],
        ))?;
        let qps = field(&text, "Queries per second:").context("no qps in dnsperf's output")?;
        let completed = field(&text, "Queries completed:").unwrap_or(0.0);
        if completed == 0.0 {
            bail!("dnsperf against {server}: no query answered\n{text}");
        }
        Ok(qps)
    }

    /// p50 and p99 latency (µs) at a fixed 1,000 queries per second, and the answers counted.
    fn latency(&self, server: &str, opts: &Options) -> Result<(f64, f64, usize)> {
        let text = self.dnsperf(&dnsperf_args(
            server,
            &self.world.dir.join("queries"),
            &[
                "-l",
                &opts.latency_seconds.to_string(),
                "-Q",
                "1000",
                "-q",
                "100",
                "-v",
            ],
        ))?;
        // Verbose lines: "> NOERROR n1.bench A 0.000123".
        let mut latencies: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("> NOERROR"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .collect();
        if latencies.len() < 100 {
            bail!(
                "dnsperf -v against {server}: only {} answers",
                latencies.len()
            );
        }
        latencies.sort_by(f64::total_cmp);
        Ok((
            percentile(&latencies, 0.50) * 1e6,
            percentile(&latencies, 0.99) * 1e6,
            latencies.len(),
        ))
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub(crate) fn dnsperf_args(server: &str, queries: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["-s", server, "-d"].map(String::from).to_vec();
    args.push(queries.display().to_string());
    args.extend(["-t", "2"].map(String::from));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

pub(crate) fn field(text: &str, label: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Err(e) = self.stop_nettrust() {
            eprintln!("xtask: {e}");
        }
        self.stop_forwarder();
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Then `world` is dropped: it removes itself.
    }
}

/// The DNS benchmark: (a) upstream direct, (b) nettrust eBPF, (c) nettrust nftables, (d) dnsmasq
/// forwarding, (e) dnsmasq forwarding with `--nftset`, (f) the minimal relay (the floor).
fn dns(bench: &mut Bench, opts: &Options, report: &mut Report) -> Result<()> {
    eprintln!(
        "xtask: dns: dnsperf, {} in flight, {} s per run, {} runs, {NAMES} names, cache off",
        opts.in_flight, opts.seconds, opts.runs
    );
    type Setup = fn(&mut Bench) -> Result<&'static str>;
    let variants: [(&str, &str, Setup); 6] = [
        ("a", "upstream (dnsmasq) direct", |b| {
            b.stop_nettrust()?;
            b.stop_forwarder();
            Ok(UPSTREAM_V4)
        }),
        ("b", "nettrust eBPF", |b| {
            b.start_nettrust(&["--firewall-backend".into(), "ebpf".into()])?;
            Ok("127.0.0.1")
        }),
        ("c", "nettrust nftables", |b| {
            b.start_nettrust(&["--firewall-backend".into(), "nftables".into()])?;
            Ok("127.0.0.1")
        }),
        ("d", "dnsmasq forwarding", |b| {
            b.stop_nettrust()?;
            b.start_forwarder(false)?;
            Ok(DNSMASQ_FWD)
        }),
        ("e", "dnsmasq forwarding + nftset", |b| {
            b.stop_nettrust()?;
            b.start_forwarder(true)?;
            Ok(DNSMASQ_FWD)
        }),
        ("f", "minimal relay (no checks)", |b| {
            b.stop_nettrust()?;
            b.start_relay()?;
            Ok(RELAY)
        }),
    ];
    for (tag, name, setup) in variants {
        if !opts.variants.contains(tag) {
            continue;
        }
        let label = format!("({tag}) {name}");
        eprintln!("xtask: dns {label}");
        let mut qps = Vec::new();
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        let mut overhead = Vec::new();
        let mut cpu = Vec::new();
        for run in 0..opts.runs {
            // A fresh server per run: every run starts with empty maps/sets.
            let server = setup(bench)?;
            qps.push(bench.qps(server, opts)?);
            if tag == "a" {
                let (a, b, _) = bench.latency(server, opts)?;
                p50.push(a);
                p99.push(b);
            } else {
                // The upstream asked directly right next to the forwarder (before it in even
                // runs, after it in odd ones): the p50 overhead of the pair does not drift with
                // the machine like two figures minutes apart.
                let ((a, b, used), direct) = if run.is_multiple_of(2) {
                    let direct = bench.latency(UPSTREAM_V4, opts)?.0;
                    (bench.forwarder_latency(server, opts)?, direct)
                } else {
                    let forwarded = bench.forwarder_latency(server, opts)?;
                    (forwarded, bench.latency(UPSTREAM_V4, opts)?.0)
                };
                p50.push(a);
                p99.push(b);
                overhead.push(a - direct);
                cpu.push(used);
            }
            bench.check_nettrust()?;
            if tag == "e" {
                let n = bench.nftset_elements()?;
                if n == 0 {
                    bail!("dnsmasq --nftset wrote nothing into its set");
                }
            }
        }
        report.add(Figure::new("dns", &format!("{label} qps"), "qps", qps));
        report.add(Figure::new(
            "dns",
            &format!("{label} p50 @1k qps"),
            "µs",
            p50,
        ));
        report.add(Figure::new(
            "dns",
            &format!("{label} p99 @1k qps"),
            "µs",
            p99,
        ));
        if tag != "a" {
            report.add(Figure::new(
                "overhead",
                &format!("{label} p50 overhead over (a) @1k qps, paired"),
                "µs",
                overhead,
            ));
            report.add(Figure::new(
                "cpu",
                &format!("{label} CPU time per query @1k qps"),
                "µs",
                cpu,
            ));
        }
    }
    bench.stop_nettrust()?;
    bench.stop_forwarder();
    Ok(())
}

/// Runs `what`, prints the table and writes `target/bench/results.md` and the chart.
pub fn run(root: &Path, binary: &Path, what: What, opts: &Options) -> Result<Report> {
    if !crate::setup::is_root() {
        bail!("the benchmark creates network namespaces and attaches eBPF: run it as root");
    }
    let mut report = Report::new(opts);
    let started = Instant::now();
    let needs_world = matches!(what, What::Dns | What::Datapath | What::Memory | What::All);
    if needs_world {
        let mut bench = Bench::new(binary)?;
        bench.start_upstream(what != What::Dns)?;
        eprintln!(
            "xtask: world ready after {:.0} s",
            started.elapsed().as_secs_f64()
        );
        if matches!(what, What::Dns | What::All) {
            dns(&mut bench, opts, &mut report)?;
            eprintln!(
                "xtask: dns done after {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
        if matches!(what, What::Datapath | What::Memory | What::All) {
            crate::bench_datapath::run(&mut bench, opts, what, &mut report)?;
            eprintln!(
                "xtask: datapath/memory done after {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    if matches!(what, What::Commit | What::All) {
        crate::bench_commit::run(root, opts, &mut report)?;
        eprintln!(
            "xtask: commit done after {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    report.load = crate::bench_report::loadavg();
    report.elapsed = started.elapsed();
    let out = root.join("target/bench");
    report.write(&out)?;
    Ok(report)
}

/// `cargo xtask test`'s smoke run: every figure once, a few seconds each; asserts only that
/// every figure was produced.
pub fn smoke(root: &Path, binary: &Path) -> Result<()> {
    let report = run(root, binary, What::All, &Options::smoke())?;
    report.check_complete()
}
