//! `cargo xtask soak --minutes N`: nettrust (eBPF backend) under steady DNS load for N minutes with
//! authorization expiry active, asserting that it holds: daemon RSS drift below 5% after the
//! warm-up, no DNS errors (lost queries, SERVFAIL or anything but NOERROR), and not one packet
//! from the filtered cgroup reaching an address nobody resolved.
//!
//! Like `bench`, it runs in the world of `lab.rs`: "client" (nettrust, dnsperf and a connect loop
//! inside the cgroup that nettrust filters) and "internet" (dnsmasq serving `NAMES` names with a
//! short TTL, and an nft counter for packets to `TARGET`).

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::lab::{Lab, Names, field, text_field, vmrss_kib};

/// Distinct names served by the upstream, each with its own address in 198.18.0.0/15 (below the
/// host map's 65,536 entries, so no authorization fails for lack of room).
const NAMES: u32 = 40_000;
/// An address nobody resolves: local in the internet namespace, counted on arrival.
const TARGET: &str = "192.0.2.200";
/// Authorization lifetime and sweep interval: with the load cycling through every name, hosts
/// keep expiring, being swept and being authorized again.
const AUTHORIZED_TTL: &str = "3";
const TTL_CHECK: &str = "1";
/// dnsperf's queries in flight, in the maximum-rate run and the soak alike.
const IN_FLIGHT: u32 = 100;
/// Allowed RSS growth after the warm-up.
const MAX_DRIFT: f64 = 0.05;

/// Options of one soak run.
pub struct Options {
    /// Length of the measured part of the run (after the warm-up).
    pub seconds: u64,
    /// Warm-up before the measured part (load on, RSS not judged yet).
    pub warmup: u64,
    /// dnsperf's query rate limit; `None`: half of the maximum measured first (10 s of dnsperf
    /// without a limit).
    pub qps: Option<u32>,
}

/// `cargo xtask` arguments of the CI soak: 20 s of warm-up and 30 s measured, at half the
/// maximum rate of the debug binary the root tests were built with.
pub fn ci_args(root: &Path) -> Vec<String> {
    let binary = root.join("target/debug/nettrust");
    [
        "soak",
        "--minutes",
        "0.5",
        "--warmup-seconds",
        "20",
        "--binary",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([binary.display().to_string()])
    .collect()
}

/// What the run measured.
struct Outcome {
    completed: u64,
    lost: u64,
    codes: String,
    achieved: String,
    /// Packets that reached [`TARGET`].
    leaked: u64,
    /// Rounds of the unauthorized connect loop.
    tried: usize,
    /// RSS after the warm-up, its maximum and its last sample, in KiB.
    rss: (u64, u64, u64),
    /// RSS at the middle of the measured part, in KiB.
    rss_mid: u64,
    drift: f64,
    firewall_errors: usize,
    /// dnsperf's achieved rate every 5 s.
    rates: Vec<String>,
}

/// Runs the soak with the nettrust binary at `binary`; fails when an assertion does not hold.
pub fn run(binary: &Path, opts: &Options) -> Result<()> {
    if !crate::setup::is_root() {
        bail!("the soak creates network namespaces and attaches eBPF: run it as root");
    }
    // TARGET is local in the internet namespace: a packet that reaches it is counted there.
    let mut lab = Lab::new(
        "soak",
        "s",
        &["route add local 192.0.2.0/24 dev lo"],
        binary,
    )?;
    start_upstream(&mut lab)?;
    let pid = lab.start_nettrust(
        &[
            "--authorized-ttl",
            AUTHORIZED_TTL,
            "--ttl-check-ticker",
            TTL_CHECK,
        ]
        .map(String::from),
    )?;
    let qps = match opts.qps {
        Some(qps) => qps,
        None => {
            let max = max_qps(&lab)?;
            eprintln!("xtask: nettrust's maximum here and now: {max:.0} qps");
            ((max / 2.0) as u32).max(100)
        }
    };
    let total = opts.warmup + opts.seconds;
    eprintln!(
        "xtask: soak {} s (+{} s warm-up) at {qps} qps ({NAMES} names, authorized TTL \
         {AUTHORIZED_TTL} s, sweep every {TTL_CHECK} s)",
        opts.seconds, opts.warmup
    );
    start_attempts(&mut lab)?;
    let perf_out = lab.dir.join("dnsperf.out");
    let mut perf = start_load(&lab, total, qps, &perf_out)?;
    let samples = sample_rss(pid, total);
    let status = perf.wait()?;
    let samples = samples?;
    let report = fs::read_to_string(&perf_out).unwrap_or_default();
    if !status.success() {
        bail!("dnsperf failed: {report}");
    }
    let outcome = measure(&lab, &report, &samples, opts.warmup)?;
    print(&lab, &outcome, opts, qps);
    lab.check_nettrust()?;
    judge(&outcome, &samples)
}

/// dnsmasq serving the soak's names (TTL 2 s), and an nft counter of the packets that arrive
/// in the internet namespace for [`TARGET`], whoever sent them.
fn start_upstream(lab: &mut Lab) -> Result<()> {
    lab.start_upstream(&Names {
        prefix: "s",
        label: "soak",
        count: NAMES,
        addresses: NAMES,
        extra_hosts: "",
        extra_conf: "",
        ttl: 2,
    })?;
    let rules = lab.dir.join("arrivals.nft");
    fs::write(
        &rules,
        format!(
            "table inet soak {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  ip daddr {TARGET} counter\n }}\n}}\n"
        ),
    )?;
    let out = lab
        .in_inet("nft")
        .arg("-f")
        .arg(&rules)
        .output()
        .context("starting nft")?;
    if !out.status.success() {
        bail!(
            "nft could not install the arrival counter: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Unauthorized attempts from the cgroup, TCP and UDP, for the whole run; each round appends a
/// line to `attempts`.
fn start_attempts(lab: &mut Lab) -> Result<()> {
    let mut attempts = lab.in_cgroup("sh");
    attempts
        .arg("-c")
        .arg(format!(
            "while true; do socat -u TCP:{TARGET}:80,connect-timeout=0.2 - 2>/dev/null; \
             echo x | socat -u - UDP:{TARGET}:80 2>/dev/null; echo a >> {log}; sleep 0.05; done",
            log = lab.dir.join("attempts").display()
        ))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    lab.spawn(attempts, "the connect loop")
}

/// dnsperf at `qps` for `total` seconds, its output to `out`: a file, not a pipe, since dnsperf
/// prints a line per timed-out query and blocks (stops sending) once nobody reads a full pipe.
fn start_load(lab: &Lab, total: u64, qps: u32, out: &Path) -> Result<Child> {
    let args = lab.dnsperf_args(
        "127.0.0.1",
        &[
            "-l",
            &total.to_string(),
            "-Q",
            &qps.to_string(),
            "-q",
            &IN_FLIGHT.to_string(),
            "-t",
            "5",
            "-S",
            "5",
        ],
    );
    lab.in_cgroup("dnsperf")
        .args(args)
        .stdout(fs::File::create(out)?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting dnsperf")
}

/// nettrust's maximum rate right now: 10 s of dnsperf without a rate limit, with as many
/// queries in flight as the soak allows (so the daemon's high-water mark of concurrent queries,
/// and the memory it takes, is reached before the warm-up ends).
fn max_qps(lab: &Lab) -> Result<f64> {
    let text = lab.dnsperf(&lab.dnsperf_args(
        "127.0.0.1",
        &["-l", "10", "-q", &IN_FLIGHT.to_string(), "-t", "5"],
    ))?;
    field(&text, "Queries per second:")
        .with_context(|| format!("no qps in dnsperf's output: {text}"))
}

/// RSS of `pid` (seconds since the start, KiB) every second for `total` seconds.
fn sample_rss(pid: u32, total: u64) -> Result<Vec<(u64, u64)>> {
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(total) {
        std::thread::sleep(Duration::from_secs(1));
        samples.push((started.elapsed().as_secs(), vmrss_kib(pid)?));
    }
    Ok(samples)
}

/// The run's figures from dnsperf's `report`, the counters and the RSS `samples`.
fn measure(lab: &Lab, report: &str, samples: &[(u64, u64)], warmup: u64) -> Result<Outcome> {
    let number = |label: &str| field(report, label).map_or(0, |v| v as u64);
    let after: Vec<u64> = samples
        .iter()
        .filter(|s| s.0 >= warmup)
        .map(|s| s.1)
        .collect();
    let base = *after
        .first()
        .context("the run is shorter than its warm-up")?;
    let max = after.iter().copied().max().unwrap_or(base);
    let end = *after.last().unwrap_or(&base);
    // dnsperf -S 5: "<unix time>: <qps>" every 5 s (the achieved rate over time).
    let rates = report
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(t, q)| (t, q.trim())))
        .filter(|(t, _)| t.contains('.') && t.trim().parse::<f64>().is_ok())
        .map(|(_, q)| q.to_owned())
        .collect();
    Ok(Outcome {
        completed: number("Queries completed:"),
        lost: number("Queries lost:"),
        codes: text_field(report, "Response codes:")
            .unwrap_or_default()
            .to_owned(),
        achieved: text_field(report, "Queries per second:")
            .unwrap_or_default()
            .to_owned(),
        leaked: arrivals(lab)?,
        tried: fs::read_to_string(lab.dir.join("attempts"))
            .unwrap_or_default()
            .lines()
            .count(),
        rss: (base, max, end),
        rss_mid: after[after.len() / 2],
        drift: (max as f64 - base as f64) / base as f64,
        firewall_errors: lab.nettrust_log().matches("[Firewall Error]").count(),
        rates,
    })
}

/// Packets counted by the arrival counter.
fn arrivals(lab: &Lab) -> Result<u64> {
    let out = lab
        .in_inet("nft")
        .args(["list", "chain", "inet", "soak", "input"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no counter in {text}"))
}

/// `Udp: RcvbufErrors` of the client namespace (queries dropped before nettrust read them).
fn udp_rcvbuf_errors(lab: &Lab) -> Result<u64> {
    let out = lab.in_client("cat").arg("/proc/net/snmp").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next(), udp.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .context("no RcvbufErrors")
}

fn print(lab: &Lab, o: &Outcome, opts: &Options, qps: u32) {
    let (base, max, end) = o.rss;
    println!(
        "soak: {} s after {} s warm-up, target {qps} qps, achieved {} qps",
        opts.seconds, opts.warmup, o.achieved
    );
    println!(
        "  queries completed {}, lost {}, response codes: {}",
        o.completed, o.lost, o.codes
    );
    println!(
        "  RSS after warm-up {base} KiB, max {max} KiB, end {end} KiB: drift {:.2}% (limit {:.0}%)",
        o.drift * 100.0,
        MAX_DRIFT * 100.0
    );
    // Informational: growth over the second half of the measured run (a leak keeps growing; a
    // high-water mark of concurrent queries does not).
    println!(
        "  RSS growth over the second half: {} KiB -> {end} KiB ({:.2}%)",
        o.rss_mid,
        (end as f64 - o.rss_mid as f64) / o.rss_mid as f64 * 100.0
    );
    println!(
        "  unauthorized connect/send rounds {}, packets arrived {}",
        o.tried, o.leaked
    );
    println!(
        "  UDP receive-buffer drops in the client namespace: {}",
        udp_rcvbuf_errors(lab).map_or_else(|e| format!("unknown ({e})"), |n| n.to_string())
    );
    println!("  qps every 5 s: {}", o.rates.join(" "));
}

/// Fails with every assertion that does not hold.
fn judge(o: &Outcome, samples: &[(u64, u64)]) -> Result<()> {
    let mut failures = Vec::new();
    if o.completed == 0 {
        failures.push("no query completed".to_owned());
    }
    if o.lost > 0 {
        failures.push(format!("{} queries lost (timeouts)", o.lost));
    }
    if !o.codes.starts_with("NOERROR") || o.codes.contains(',') {
        failures.push(format!("answers other than NOERROR: {}", o.codes));
    }
    if o.drift >= MAX_DRIFT {
        failures.push(format!("RSS drift {:.2}% ({samples:?})", o.drift * 100.0));
    }
    if o.tried == 0 {
        failures.push("the unauthorized connect loop did not run".to_owned());
    }
    if o.leaked > 0 {
        failures.push(format!(
            "{} packets reached the unauthorized {TARGET}",
            o.leaked
        ));
    }
    if o.firewall_errors > 0 {
        failures.push(format!(
            "{} firewall errors in nettrust's log",
            o.firewall_errors
        ));
    }
    if !failures.is_empty() {
        bail!("soak failed: {}", failures.join("; "));
    }
    println!("soak: ok");
    Ok(())
}
