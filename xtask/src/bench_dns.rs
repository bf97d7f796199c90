//! `cargo xtask bench dns`: dnsperf from the filtered cgroup against (a) the upstream directly,
//! (b) nettrust eBPF, (c) nettrust nftables, (d) a forwarding dnsmasq (cache off), (e) the same
//! with `--nftset`, (f) the minimal relay (`relay.rs`, the floor of one forwarding hop) and (g)
//! nettrust eBPF with a `[[policy]]` of 100,000+ patterns allowing every name
//! (`bench_scoped.rs`), each restarted per run: qps with `in_flight` queries in flight, p50/p99
//! at a fixed 1,000 qps paired with a run against the upstream right next to it, and the
//! forwarder's CPU time per query. Each run of (g) also measures (g)'s and (b)'s qps right next
//! to each other: their ratio is the cost of the policy path.

use std::{
    fs,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench::{Bench, NAMES, Options},
    bench_report::{Figure, Report},
    lab::field,
    netns::{self, UPSTREAM},
};

/// The forwarding dnsmasq of variants (d) and (e), in the client namespace.
const DNSMASQ_FWD: &str = "127.0.0.2";
/// The minimal relay of variant (f) (`xtask relay`), in the client namespace.
const RELAY: &str = "127.0.0.3";
/// nftables table and set dnsmasq's `--nftset` writes into (variant e), in the client namespace.
const NFTSET_TABLE: &str = "ntbench";

/// Starts a variant's server (stopping the others); returns the address dnsperf asks.
type Setup = fn(&mut Bench) -> Result<&'static str>;

/// The variants: letter, name, set-up.
const VARIANTS: [(&str, &str, Setup); 7] = [
    ("a", "upstream (dnsmasq) direct", |b| {
        b.stop_nettrust()?;
        stop_forwarder(b);
        Ok(UPSTREAM)
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
        start_forwarder(b, false)?;
        Ok(DNSMASQ_FWD)
    }),
    ("e", "dnsmasq forwarding + nftset", |b| {
        b.stop_nettrust()?;
        start_forwarder(b, true)?;
        Ok(DNSMASQ_FWD)
    }),
    ("f", "minimal relay (no checks)", |b| {
        b.stop_nettrust()?;
        start_relay(b)?;
        Ok(RELAY)
    }),
    ("g", "nettrust eBPF + policy", |b| {
        stop_forwarder(b);
        crate::bench_scoped::start_dns_policy(b)
    }),
];

/// Every run's figures of one variant.
#[derive(Default)]
struct Samples {
    qps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    overhead: Vec<f64>,
    cpu: Vec<f64>,
    /// (g) only: its qps over (b)'s measured next to it, in %.
    ratio: Vec<f64>,
}

/// The DNS benchmark: each variant of `opts.variants`, `opts.runs` times.
pub fn run(bench: &mut Bench, opts: &Options, report: &mut Report) -> Result<()> {
    eprintln!(
        "xtask: dns: dnsperf, {} in flight, {} s per run, {} runs, {NAMES} names, cache off",
        opts.in_flight, opts.seconds, opts.runs
    );
    let under_test = bench.binary.clone();
    for (tag, name, setup) in VARIANTS {
        if !opts.variants.contains(tag) {
            continue;
        }
        // The daemons of this variant: the binary under test, and for nettrust's variants the
        // one to compare with, if any.
        let mut daemons = vec![under_test.clone()];
        if matches!(tag, "b" | "c") {
            daemons.extend(opts.compare.clone());
        }
        let label = format!("({tag}) {name}");
        eprintln!("xtask: dns {label}");
        let mut samples: Vec<Samples> = daemons.iter().map(|_| Samples::default()).collect();
        for run in 0..opts.runs {
            // With two daemons, which goes first alternates from run to run.
            for k in 0..daemons.len() {
                let k = if run % 2 == 1 {
                    daemons.len() - 1 - k
                } else {
                    k
                };
                bench.binary.clone_from(&daemons[k]);
                // A fresh server per run: every run starts with empty maps/sets.
                let server = setup(bench)?;
                measure(bench, opts, tag, server, run, &mut samples[k])?;
                bench.check_nettrust()?;
                if tag == "e" && nftset_elements(bench)? == 0 {
                    bail!("dnsmasq --nftset wrote nothing into its set");
                }
                if tag == "g" {
                    // The latency run alone got 100 answers or more (or `measure` failed): each
                    // must have been judged, and allowed, by the policy.
                    crate::bench_scoped::check_dns_policy(bench, 100.0)?;
                    samples[k].ratio.push(policy_ratio(bench, opts, run)?);
                }
            }
        }
        bench.binary.clone_from(&under_test);
        for (k, samples) in samples.into_iter().enumerate() {
            let label = match k {
                0 => label.clone(),
                _ => format!("{label} [{}]", daemons[k].display()),
            };
            add_figures(report, tag, &label, samples);
        }
    }
    bench.stop_nettrust()?;
    stop_forwarder(bench);
    Ok(())
}

/// One run of variant `tag` against `server`.
fn measure(
    bench: &Bench,
    opts: &Options,
    tag: &str,
    server: &str,
    run: u32,
    samples: &mut Samples,
) -> Result<()> {
    samples.qps.push(qps(bench, server, opts)?);
    if tag == "a" {
        let (p50, p99, _) = latency(bench, server, opts)?;
        samples.p50.push(p50);
        samples.p99.push(p99);
        return Ok(());
    }
    // The upstream asked directly right next to the forwarder (before it in even runs, after it
    // in odd ones): the p50 overhead of the pair does not drift with the machine like two
    // figures minutes apart.
    let ((p50, p99, used), direct) = if run.is_multiple_of(2) {
        let direct = latency(bench, UPSTREAM, opts)?.0;
        (forwarder_latency(bench, server, opts)?, direct)
    } else {
        let forwarded = forwarder_latency(bench, server, opts)?;
        (forwarded, latency(bench, UPSTREAM, opts)?.0)
    };
    samples.p50.push(p50);
    samples.p99.push(p99);
    samples.overhead.push(p50 - direct);
    samples.cpu.push(used);
    Ok(())
}

fn add_figures(report: &mut Report, tag: &str, label: &str, samples: Samples) {
    let Samples {
        qps,
        p50,
        p99,
        overhead,
        cpu,
        ratio,
    } = samples;
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
    if !ratio.is_empty() {
        report.add(Figure::new(
            "ratio",
            &format!("dns qps {label} / (b), paired"),
            "%",
            ratio,
        ));
    }
}

/// (g)'s qps over (b)'s in %, each daemon started afresh and measured right after the other
/// (which goes first alternates from run to run); (g)'s run must have taken the policy path.
fn policy_ratio(bench: &mut Bench, opts: &Options, run: u32) -> Result<f64> {
    let (b, g) = (VARIANTS[1], VARIANTS[6]);
    debug_assert!(b.0 == "b" && g.0 == "g");
    let mut order = [b, g];
    if !run.is_multiple_of(2) {
        order.reverse();
    }
    let mut measured = [0.0; 2];
    for (tag, _, setup) in order {
        let server = setup(bench)?;
        let value = qps(bench, server, opts)?;
        bench.check_nettrust()?;
        if tag == "g" {
            // At least nine in ten of the queries the run completed were judged by the policy.
            let completed = value * f64::from(opts.seconds);
            crate::bench_scoped::check_dns_policy(bench, (completed * 0.9).floor())?;
            measured[1] = value;
        } else {
            measured[0] = value;
        }
    }
    Ok(measured[1] / measured[0] * 100.0)
}

/// The forwarding dnsmasq of variants (d)/(e) on [`DNSMASQ_FWD`], cache off; with `nftset` every
/// answer's addresses also go into an nftables set (created here, like nettrust's).
fn start_forwarder(bench: &mut Bench, nftset: bool) -> Result<()> {
    stop_forwarder(bench);
    let mut zone = format!("server={UPSTREAM}\ncache-size=0\n");
    if nftset {
        let ruleset = format!(
            "table inet {NFTSET_TABLE} {{\n\
             set allowed4 {{ type ipv4_addr; flags timeout; }}\n\
             chain out {{ type filter hook output priority 0; policy accept; ip daddr @allowed4 accept; }}\n\
             }}\n"
        );
        let path = bench.dir.join("nftset.nft");
        fs::write(&path, ruleset)?;
        let out = bench
            .in_client("nft")
            .arg("-f")
            .arg(&path)
            .output()
            .context("starting nft (apt-get install nftables)")?;
        if !out.status.success() {
            bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr));
        }
        zone.push_str(&format!("nftset=/bench/4#inet#{NFTSET_TABLE}#allowed4\n"));
    }
    let mut cmd = netns::dnsmasq(
        &bench.net.client_ns,
        DNSMASQ_FWD,
        &zone,
        &bench.dir,
        "forwarder",
    )?;
    let child = cmd.spawn().context("starting the forwarding dnsmasq")?;
    bench.forwarder = Some(child);
    bench.wait_answers(DNSMASQ_FWD, "forwarding dnsmasq", Duration::from_secs(20))
}

/// The minimal relay of variant (f) on [`RELAY`] (this program's hidden `relay` command): the
/// floor of forwarding on this machine.
fn start_relay(bench: &mut Bench) -> Result<()> {
    stop_forwarder(bench);
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    let child = bench
        .in_client(&xtask)
        .args(["relay", &format!("{RELAY}:53"), &format!("{UPSTREAM}:53")])
        .stdout(Stdio::null())
        .stderr(fs::File::create(bench.dir.join("relay.log"))?)
        .spawn()
        .context("starting the minimal relay")?;
    bench.forwarder = Some(child);
    bench.wait_answers(RELAY, "minimal relay", Duration::from_secs(20))
}

/// Stops the forwarder of (d) to (f) and removes the `--nftset` table, if any.
pub(crate) fn stop_forwarder(bench: &mut Bench) {
    if let Some(mut child) = bench.forwarder.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = bench
        .in_client("nft")
        .args(["delete", "table", "inet", NFTSET_TABLE])
        .stderr(Stdio::null())
        .status();
}

/// Elements dnsmasq wrote into the `--nftset` set.
fn nftset_elements(bench: &Bench) -> Result<usize> {
    let out = bench
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

/// [`latency`] of the forwarder under test at `server`, and the CPU time (µs) its process used
/// per answered query meanwhile: nettrust for (b) and (c), the forwarding dnsmasq for (d) and
/// (e), the relay for (f).
fn forwarder_latency(bench: &Bench, server: &str, opts: &Options) -> Result<(f64, f64, f64)> {
    let pid = bench
        .nettrust
        .as_ref()
        .or(bench.forwarder.as_ref())
        .map(Child::id)
        .context("no forwarder runs")?;
    let per_second = ticks_per_second()?;
    let before = cpu_ticks(pid)?;
    let (p50, p99, answered) = latency(bench, server, opts)?;
    let used_us = (cpu_ticks(pid)? - before) * 1e6 / per_second;
    Ok((p50, p99, used_us / answered as f64))
}

/// Throughput with `in_flight` queries in flight (qps).
fn qps(bench: &Bench, server: &str, opts: &Options) -> Result<f64> {
    let text = bench.dnsperf(&bench.dnsperf_args(
        server,
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
pub(crate) fn latency(bench: &Bench, server: &str, opts: &Options) -> Result<(f64, f64, usize)> {
    let text = bench.dnsperf(&bench.dnsperf_args(
        server,
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
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
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK")
}
