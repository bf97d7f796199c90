//! `cargo xtask bench datapath` and `memory`: iperf3 TCP throughput and UDP packet rate from the
//! filtered cgroup to the iperf3 server in the internet namespace, with no filter, then with each
//! backend holding 0, 10k and 1M authorized hosts (filled through the daemon's own DNS path:
//! dnsperf resolves that many distinct names once) plus 1,000 whitelisted networks. The memory
//! figures (kernel memory of the eBPF maps, daemon RSS) are taken from the eBPF daemon with 0 and
//! with 1M hosts. Last, the eBPF backend with ten `[[policy]]` scopes holding 1M grants
//! (`bench_scoped.rs`).

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench::{Bench, Options, TARGET_V4, What},
    bench_report::{Figure, Report, median},
    lab::{dnsperf_args, field, vmrss_kib},
};

/// Tries of an iperf3 run the server refuses as busy with the previous one.
const IPERF_ATTEMPTS: u32 = 5;
/// Whitelisted networks installed for every filtered run (233.0.0.0/14 in /24s: never used).
const WHITELIST_NETWORKS: u32 = 1000;

pub fn run(bench: &mut Bench, opts: &Options, what: What, report: &mut Report) -> Result<()> {
    let with_iperf = what != What::Memory;
    if with_iperf {
        bench.start_iperf_server()?;
        eprintln!("xtask: datapath: no filter");
        tcp_udp(bench, opts, "no filter", report)?;
    }
    let mut config = String::from("[whitelist]\nnetworks = [\n");
    for i in 0..WHITELIST_NETWORKS {
        writeln!(config, "  \"233.{}.{}.0/24\",", i >> 8, i & 0xff)?;
    }
    config.push_str("]\n");
    let config_path = bench.dir.join("datapath.toml");
    fs::write(&config_path, config)?;
    let capacity = (opts.hosts[1] + 1024).next_power_of_two();
    let backends: &[&str] = if with_iperf {
        &["ebpf", "nftables"]
    } else {
        &["ebpf"]
    };
    for &backend in backends {
        let label = if backend == "ebpf" {
            "eBPF"
        } else {
            "nftables"
        };
        bench.start_nettrust(&[
            "--config".into(),
            config_path.display().to_string(),
            "--firewall-backend".into(),
            backend.into(),
            "--max-hosts".into(),
            capacity.to_string(),
        ])?;
        if with_iperf {
            // The filter is on: the target is refused until it was resolved.
            if iperf_reaches(bench, &bench.net.cgroup) {
                bail!("{label}: iperf3 reached {TARGET_V4} before it was resolved");
            }
            resolve_target(bench)?;
        }
        let mut filled = 0;
        for (step, &hosts) in ["0 hosts", "10k hosts", "1M hosts"]
            .iter()
            .zip([0, opts.hosts[0], opts.hosts[1]].iter())
        {
            if hosts > filled {
                fill(bench, filled, hosts)?;
                filled = hosts;
            }
            let count = authorized_hosts(bench)?;
            report.note(format!(
                "datapath {label} \"{step}\": {count} hosts authorized (asked {hosts})"
            ));
            if count + 10 < u64::from(hosts) * 99 / 100 {
                bail!("{label}: only {count} of {hosts} hosts authorized");
            }
            if backend == "ebpf" && (hosts == 0 || hosts == opts.hosts[1]) {
                memory(bench, &format!("{count} hosts"), capacity, report)?;
            }
            if with_iperf {
                eprintln!("xtask: datapath: {label}, {step}");
                tcp_udp(bench, opts, &format!("{label}, {step}"), report)?;
            }
            bench.check_nettrust()?;
        }
        bench.stop_nettrust()?;
    }
    if with_iperf {
        let base = fs::read_to_string(&config_path)?;
        crate::bench_scoped::datapath(bench, opts, &base, capacity, report)?;
    }
    Ok(())
}

/// Whether a short iperf3 run from `cgroup` (in the client namespace) reaches the target. A
/// dropped SYN is retried for minutes: the connect is bounded to a second. (iperf3 3.12 exits 0
/// on a failed connect with `-J`: the JSON's `error` tells.)
pub(crate) fn iperf_reaches(bench: &Bench, cgroup: &Path) -> bool {
    let out = bench
        .net
        .in_cgroup_at(cgroup, "iperf3")
        .args([
            "-c",
            TARGET_V4,
            "-J",
            "-t",
            "1",
            "--connect-timeout",
            "1000",
        ])
        .output();
    out.is_ok_and(|out| {
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|json| json.get("error").is_none())
    })
}

/// `iperf3 -c TARGET ARGS -J` from the cgroup (or, with `outside`, from the client namespace
/// outside the filtered cgroup); its JSON. The server serves one test at a time and may still be
/// closing the previous one on a loaded machine: a "busy" refusal is retried after a pause.
fn iperf_from(bench: &Bench, outside: bool, args: &[&str]) -> Result<serde_json::Value> {
    let mut all: Vec<String> = ["-c", TARGET_V4, "-J"].map(String::from).to_vec();
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let mut attempt = 1;
    loop {
        let out = if outside {
            bench.in_client("iperf3").args(&all).output()?
        } else {
            bench.in_cgroup_args("iperf3", &all).output()?
        };
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "iperf3 gave no JSON: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let Some(error) = json.get("error") else {
            if !out.status.success() {
                bail!("iperf3 failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            return Ok(json);
        };
        let busy = error.as_str().is_some_and(|e| e.contains("busy"));
        if !busy || attempt == IPERF_ATTEMPTS {
            bail!("iperf3 failed: {error}");
        }
        attempt += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// TCP Gbit/s received in one run.
pub(crate) fn tcp_run(bench: &Bench, outside: bool, seconds: &str) -> Result<f64> {
    let json = iperf_from(bench, outside, &["-t", seconds])?;
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no TCP throughput in iperf3's output")?;
    Ok(bps / 1e9)
}

/// UDP kpps (64-byte datagrams sent) in one run.
fn udp_run(bench: &Bench, outside: bool, seconds: &str) -> Result<f64> {
    let json = iperf_from(
        bench,
        outside,
        &["-t", seconds, "-u", "-b", "0", "-l", "64"],
    )?;
    let sum = &json["end"]["sum"];
    let (packets, secs) = (
        sum["packets"].as_f64().context("no UDP packet count")?,
        sum["seconds"].as_f64().context("no UDP duration")?,
    );
    Ok(packets / secs / 1e3)
}

/// `run` from the cgroup and the same run from outside the cgroup right next to it: before it in
/// even rounds, after it in odd ones, so a drift of the machine's speed during the section does
/// not always favour the same side. Returns (filtered, baseline).
fn pair(
    bench: &Bench,
    round: u32,
    run: impl Fn(&Bench, bool) -> Result<f64>,
) -> Result<(f64, f64)> {
    if round.is_multiple_of(2) {
        let base = run(bench, true)?;
        Ok((run(bench, false)?, base))
    } else {
        let filtered = run(bench, false)?;
        Ok((filtered, run(bench, true)?))
    }
}

/// `runs` TCP and UDP runs from the cgroup. With a filter (`paired`), a run is `pairs` short
/// runs, each paired with the same run from outside the cgroup next to it (TCP with TCP, UDP with
/// UDP, alternating which comes first); the ratio of a pair does not drift with the machine's
/// load like two figures minutes apart, and the run's figures are the medians of its pairs (a
/// single pair on this VM spreads from 50 to 135 %).
pub(crate) fn tcp_udp(
    bench: &Bench,
    opts: &Options,
    label: &str,
    report: &mut Report,
) -> Result<()> {
    let paired = label != "no filter";
    let (mut tcp, mut udp, mut tcp_ratio, mut udp_ratio) = (vec![], vec![], vec![], vec![]);
    for round in 0..opts.runs {
        if !paired {
            let seconds = opts.latency_seconds.to_string();
            tcp.push(tcp_run(bench, false, &seconds)?);
            udp.push(udp_run(bench, false, &seconds)?);
            continue;
        }
        let seconds = opts.pair_seconds.to_string();
        let pairs = |run: fn(&Bench, bool, &str) -> Result<f64>| -> Result<(f64, f64)> {
            let (mut filtered, mut ratios) = (vec![], vec![]);
            for p in 0..opts.pairs {
                let (f, base) = pair(bench, round * opts.pairs + p, |b, outside| {
                    run(b, outside, &seconds)
                })?;
                filtered.push(f);
                ratios.push(f / base * 100.0);
            }
            Ok((median(filtered), median(ratios)))
        };
        let (t, tr) = pairs(tcp_run)?;
        let (u, ur) = pairs(udp_run)?;
        tcp.push(t);
        tcp_ratio.push(tr);
        udp.push(u);
        udp_ratio.push(ur);
    }
    report.add(Figure::new(
        "datapath",
        &format!("TCP {label}"),
        "Gbit/s",
        tcp,
    ));
    report.add(Figure::new(
        "datapath",
        &format!("UDP {label}"),
        "kpps",
        udp,
    ));
    if paired {
        report.add(Figure::new(
            "ratio",
            &format!("TCP {label} / unfiltered, paired"),
            "%",
            tcp_ratio,
        ));
        report.add(Figure::new(
            "ratio",
            &format!("UDP {label} / unfiltered, paired"),
            "%",
            udp_ratio,
        ));
    }
    if label.starts_with("eBPF") {
        program_cost(bench, opts, label, report)?;
    }
    Ok(())
}

/// Run time and run count of the pinned egress program (kernel statistics).
fn egress_stats(bench: &Bench) -> Result<(u64, u64)> {
    let info = aya::programs::ProgramInfo::from_pin(bench.net.bpffs_dir.join("prog-egress"))
        .context("reading the pinned egress program's info")?;
    Ok((info.run_time().as_nanos() as u64, info.run_count()))
}

/// The egress program's own cost, from the kernel's run-time statistics (`BPF_ENABLE_STATS`, on
/// only while its descriptor is held, i.e. for these extra runs and never for the paired ones
/// above: the two clock reads it adds per run would be charged to them): per UDP packet, and as
/// a share of one CPU during a TCP run. These figures do not move with the machine's load the
/// way a throughput ratio does.
fn program_cost(bench: &Bench, opts: &Options, label: &str, report: &mut Report) -> Result<()> {
    let seconds = opts.latency_seconds.to_string();
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("BPF_ENABLE_STATS (needs Linux 5.8)")?;
    let (mut per_packet, mut tcp_share) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        let (time0, count0) = egress_stats(bench)?;
        udp_run(bench, false, &seconds)?;
        let (time1, count1) = egress_stats(bench)?;
        if count1 <= count0 {
            bail!("{label}: the egress program did not run during the UDP run");
        }
        per_packet.push((time1 - time0) as f64 / (count1 - count0) as f64);
        let started = std::time::Instant::now();
        tcp_run(bench, false, &seconds)?;
        let elapsed = started.elapsed().as_nanos() as f64;
        let (time2, count2) = egress_stats(bench)?;
        if count2 <= count1 {
            bail!("{label}: the egress program did not run during the TCP run");
        }
        tcp_share.push((time2 - time1) as f64 / elapsed * 100.0);
    }
    report.add(Figure::new(
        "datapath",
        &format!("egress program run time per packet (UDP), {label}"),
        "ns",
        per_packet,
    ));
    report.add(Figure::new(
        "datapath",
        &format!("egress program CPU during TCP, {label}"),
        "% of a CPU",
        tcp_share,
    ));
    Ok(())
}

pub(crate) fn resolve_target(bench: &Bench) -> Result<()> {
    let out = bench
        .in_cgroup_args(
            "dig",
            &["+short", "+time=2", "+tries=1", "@127.0.0.1", "iperf.bench"].map(String::from),
        )
        .output()?;
    if String::from_utf8_lossy(&out.stdout).trim() != TARGET_V4 {
        bail!(
            "resolving iperf.bench through nettrust gave {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

/// Resolves the fill names of 240.0.0.0/12 number `from` .. `to - 1` once each through nettrust (100 in flight),
/// again for those lost, until at least 99 % are authorized.
fn fill(bench: &Bench, from: u32, to: u32) -> Result<()> {
    let path = bench.dir.join(format!("fill-{from}-{to}"));
    let mut queries = String::with_capacity((to - from) as usize * 16);
    for i in from..to {
        writeln!(
            queries,
            "f-240-{}-{}-{}.fill A",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        )?;
    }
    fs::write(&path, queries)?;
    for pass in 1..=3 {
        let started = std::time::Instant::now();
        let text = bench.dnsperf(&dnsperf_args(
            "127.0.0.1",
            &path,
            &["-n", "1", "-q", "100", "-t", "5"],
        ))?;
        let count = authorized_hosts(bench)?;
        eprintln!(
            "xtask: fill pass {pass}: {} answered in {:.1} s, {count} hosts authorized",
            field(&text, "Queries completed:").unwrap_or(0.0),
            started.elapsed().as_secs_f64()
        );
        if count >= u64::from(to) * 99 / 100 {
            break;
        }
    }
    let _ = fs::remove_file(path);
    Ok(())
}

/// `nettrust_authorized_hosts` from the daemon's metrics endpoint.
fn authorized_hosts(bench: &Bench) -> Result<u64> {
    let text = bench.metrics()?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("nettrust_authorized_hosts ")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|v| v as u64)
        .with_context(|| format!("no nettrust_authorized_hosts in the metrics: {text}"))
}

/// Kernel memory of the daemon's BPF maps (fdinfo `memlock`, each map counted once) and its
/// resident set size.
fn memory(bench: &Bench, label: &str, capacity: u32, report: &mut Report) -> Result<()> {
    let pid = bench
        .nettrust
        .as_ref()
        .context("nettrust is not running")?
        .id();
    // map_id -> (memlock bytes, description)
    let mut maps: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let value = |key: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        };
        if let (Some(id), Some(memlock), Some(kind)) =
            (value("map_id:"), value("memlock:"), value("map_type:"))
        {
            let desc = format!(
                "type {kind} key {} value {} max {}",
                value("key_size:").unwrap_or(0),
                value("value_size:").unwrap_or(0),
                value("max_entries:").unwrap_or(0)
            );
            maps.insert(id, (memlock, desc));
        }
    }
    if maps.is_empty() {
        bail!("no BPF map among the daemon's file descriptors");
    }
    let kernel: u64 = maps.values().map(|(m, _)| m).sum();
    let rss_kb = vmrss_kib(pid)? as f64;
    let mut biggest: Vec<&(u64, String)> = maps.values().collect();
    biggest.sort_by_key(|(m, _)| std::cmp::Reverse(*m));
    let top: Vec<String> = biggest
        .iter()
        .take(3)
        .map(|(m, d)| format!("{:.1} MB ({d})", *m as f64 / 1e6))
        .collect();
    report.note(format!(
        "memory with {label}, max_hosts {capacity}: {} maps, biggest {}",
        maps.len(),
        top.join(", ")
    ));
    report.add(Figure::new(
        "memory",
        &format!("kernel map memory, {label}"),
        "MB",
        vec![kernel as f64 / 1e6],
    ));
    report.add(Figure::new(
        "memory",
        &format!("daemon RSS, {label}"),
        "MB",
        vec![rss_kb / 1e3],
    ));
    std::thread::sleep(Duration::from_millis(10));
    Ok(())
}
