//! `cargo xtask bench [dns|datapath|commit|memory|policy|all] [--smoke] [--binary PATH]`.
//!
//! Everything runs in the world of `lab.rs`: two network namespaces this command creates and
//! removes, "client" (nettrust, a forwarding dnsmasq and the clients, which run inside a cgroup
//! that nettrust filters) and "internet" (the authoritative dnsmasq serving generated names, and
//! the iperf3 server), linked by a veth pair on documentation addresses. The host's own network
//! and cgroups are never touched; namespaces, cgroup, pins and processes are removed in `Drop`,
//! also on error.
//!
//! - `bench.rs`: options, the benchmark's world (`Bench`) and the entry points;
//! - `bench_dns.rs`: the DNS benchmark, variants (a) to (g);
//! - `bench_datapath.rs`: iperf3 through no filter / eBPF / nftables with 0, 10k, 1M hosts, and
//!   the memory figures taken along the way (1M hosts);
//! - `bench_scoped.rs`: the `[[policy]]` variants: dns (g) and the datapath's ten policies with
//!   1M grants;
//! - `bench_capture.rs`: DNS capture: dns (h) and the datapath with the capture programs;
//! - `bench_commit.rs`: runs the `commit` bench target of the nettrust crate;
//! - `bench_policy.rs`: loading a million-line allow-list and blacklist (time, peak RSS);
//! - `bench_reload.rs`: the daemon on those lists: start, RSS, a SIGHUP reload of both and the
//!   queries answered across it;
//! - `bench_report.rs`: figures, medians, the table, results.md and the chart.

use std::{
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench_report::Report,
    lab::{Lab, Names},
};

/// Distinct names of the DNS benchmark (each query of a pass is a cache miss for nettrust).
pub(crate) const NAMES: u32 = 100_000;
/// Distinct addresses those names resolve to; below the default host map capacity (65536) so no
/// authorization fails.
const ADDRESSES: u32 = 50_000;
/// The iperf3 server in the internet namespace (resolved as `iperf.bench`).
pub(crate) const TARGET_V4: &str = "192.0.2.1";
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
    /// Lines of each domain list of the policy bench.
    pub policy_lines: usize,
    /// Build profile of the nettrust binary and the commit bench (`release` or `dev`).
    pub release: bool,
    /// The dns variants to run (letters `a` to `g`).
    pub variants: String,
    /// dns only: a second nettrust binary run for variants (b) and (c) next to the one under
    /// test, alternating which goes first from run to run.
    pub compare: Option<PathBuf>,
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
            policy_lines: 1_000_000,
            release: true,
            variants: "abcdefgh".into(),
            compare: None,
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
            policy_lines: 10_000,
            release: false,
            variants: "abcdefgh".into(),
            compare: None,
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
    Policy,
    All,
}

/// The benchmark's world ([`Lab`], reached through `Deref`) and the forwarder of the DNS variants
/// (d) to (f), stopped in `Drop` before the world goes.
pub(crate) struct Bench {
    pub(crate) forwarder: Option<std::process::Child>,
    lab: Lab,
}

impl Deref for Bench {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl DerefMut for Bench {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

impl Bench {
    /// The world with `binary` as the daemon: the iperf3 server's address (TARGET_V4) is one of
    /// the internet end's own.
    fn new(binary: &Path) -> Result<Self> {
        let target = format!("addr add {TARGET_V4}/24 dev {{dev}}");
        let mut lab = Lab::new("bench", "b", &[&target], binary)?;
        // The dns figures pair each forwarder with dnsperf asking the upstream directly from the
        // same cgroup; nettrust opens the upstream to its own sockets only, so the bench
        // whitelists it (one host entry) for that floor.
        lab.env.push((
            "NET_TRUST_WHITELIST_HOSTS_UPSTREAM".to_owned(),
            crate::netns::UPSTREAM.to_owned(),
        ));
        Ok(Self {
            forwarder: None,
            lab,
        })
    }

    /// The authoritative upstream: `NAMES` benchmark names, `iperf.bench`, and with `fill` the
    /// synthesized names `f-240-A-B-C.fill` answering 240.A.B.C (240.0.0.0/12: reserved, never
    /// routed, they only fill the firewall; a hosts file of a million names takes dnsmasq minutes
    /// to load, `synth-domain` costs nothing).
    fn start_upstream(&mut self, fill: bool) -> Result<()> {
        self.lab.start_upstream(&Names {
            prefix: "n",
            label: "bench",
            count: NAMES,
            addresses: ADDRESSES,
            extra_hosts: &format!("{TARGET_V4} iperf.bench\n"),
            extra_conf: if fill {
                "synth-domain=fill,240.0.0.0/12,f-\n"
            } else {
                ""
            },
            ttl: 60,
        })
    }

    /// The iperf3 server on [`TARGET_V4`] in the internet namespace.
    pub(crate) fn start_iperf_server(&mut self) -> Result<()> {
        let mut cmd = self.in_inet("iperf3");
        cmd.arg("-s")
            .args(["-B", TARGET_V4])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        self.spawn(cmd, "iperf3 (apt-get install iperf3)")?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(())
    }

    /// Starts nettrust with its metrics endpoint on [`METRICS`] and `extra` options.
    pub(crate) fn start_nettrust(&mut self, extra: &[String]) -> Result<()> {
        self.lab.start_nettrust(&with_metrics(extra)).map(drop)
    }

    /// Starts nettrust like [`Bench::start_nettrust`] without listing the cgroup: the config file
    /// among `extra` does, in its `[[policy]]` sections.
    pub(crate) fn start_nettrust_policies(&mut self, extra: &[String]) -> Result<()> {
        self.lab.start_daemon(&with_metrics(extra)).map(drop)
    }

    /// The daemon's metrics (Prometheus text) from [`METRICS`].
    pub(crate) fn metrics(&self) -> Result<String> {
        let out = self
            .in_client("curl")
            .args(["-sS", "--fail", "--max-time", "60"])
            .arg(format!("http://{METRICS}/metrics"))
            .output()
            .context("starting curl")?;
        if !out.status.success() {
            bail!(
                "reading the metrics at {METRICS}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `program ARGS` in the client namespace and the filtered cgroup.
    pub(crate) fn in_cgroup_args(&self, program: &str, args: &[String]) -> Command {
        let mut cmd = self.in_cgroup(program);
        cmd.args(args);
        cmd
    }
}

/// `--metrics-addr METRICS` then `extra`.
fn with_metrics(extra: &[String]) -> Vec<String> {
    let mut args = vec!["--metrics-addr".to_owned(), METRICS.to_owned()];
    args.extend_from_slice(extra);
    args
}

impl Drop for Bench {
    fn drop(&mut self) {
        crate::bench_dns::stop_forwarder(self);
        // Then `lab` is dropped: it stops its processes and removes the world.
    }
}

/// Runs `what` with the daemon `binary`, prints the table and writes `target/bench/results.md`
/// and the chart.
pub fn run(root: &Path, binary: &Path, what: What, opts: &Options) -> Result<Report> {
    if !crate::setup::is_root() {
        bail!("the benchmark creates network namespaces and attaches eBPF: run it as root");
    }
    let mut report = Report::new(opts);
    report.note(format!("nettrust binary: {}", binary.display()));
    if let Some(compare) = &opts.compare {
        report.note(format!("compared with: {}", compare.display()));
    }
    let started = Instant::now();
    let lap = |what: &str| {
        eprintln!(
            "xtask: {what} after {:.0} s",
            started.elapsed().as_secs_f64()
        );
    };
    if matches!(
        what,
        What::Dns | What::Datapath | What::Memory | What::Policy | What::All
    ) {
        let mut bench = Bench::new(binary)?;
        bench.start_upstream(what != What::Dns && what != What::Policy)?;
        lap("world ready");
        if matches!(what, What::Dns | What::All) {
            crate::bench_dns::run(&mut bench, opts, &mut report)?;
            if opts.variants.contains('h') {
                crate::bench_capture::dns(&mut bench, opts, &mut report)?;
            }
            lap("dns done");
        }
        if matches!(what, What::Datapath | What::Memory | What::All) {
            crate::bench_datapath::run(&mut bench, opts, what, &mut report)?;
            if what != What::Memory {
                crate::bench_capture::datapath(&mut bench, opts, &mut report)?;
            }
            lap("datapath/memory done");
        }
        if matches!(what, What::Policy | What::All) {
            crate::bench_reload::run(&mut bench, opts, &mut report)?;
            lap("policy daemon done");
        }
    }
    if matches!(what, What::Commit | What::All) {
        crate::bench_commit::run(root, opts, &mut report)?;
        lap("commit done");
    }
    if matches!(what, What::Policy | What::All) {
        crate::bench_policy::run(binary, opts, &mut report)?;
        lap("policy done");
    }
    report.load = crate::bench_report::loadavg();
    report.elapsed = started.elapsed();
    report.write(&root.join("target/bench"))?;
    Ok(report)
}

/// `cargo xtask test`'s smoke run: every figure once, a few seconds each; asserts only that
/// every figure was produced.
pub fn smoke(root: &Path, binary: &Path) -> Result<()> {
    let report = run(root, binary, What::All, &Options::smoke())?;
    report.check_complete()
}
