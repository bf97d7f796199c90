//! DNS capture in the benchmarks:
//!
//! - `bench dns` (h): nettrust eBPF with `--dns-capture`; dnsperf in the filtered cgroup asks
//!   [`ASKED`], an address where nothing serves DNS, so every answer is a captured query. Each
//!   run measures p50 at 1,000 qps through capture and, with the same daemon right next to it
//!   (before it in even runs, after it in odd ones), asking the listen address directly: the
//!   difference is what capture adds per query (the socket-address programs at connect/sendmsg
//!   and recvmsg).
//! - `bench datapath` "eBPF + DNS capture, 0 hosts": the TCP and UDP figures of the datapath
//!   (paired against unfiltered runs) with the capture programs attached, to compare with
//!   "eBPF, 0 hosts": they run per socket call, not per packet. Then `pairs` TCP runs with
//!   capture, each next to one without (a daemon restarted each time, which goes first
//!   alternating): the ratio of the pair, median per run.

use anyhow::Result;

use crate::{
    bench::{Bench, Options},
    bench_report::{Figure, Report},
};

/// The resolver dnsperf asks in (h): in the internet's documentation range, nothing answers DNS
/// there, and the filter drops it unless captured.
const ASKED: &str = "192.0.2.99";
/// nettrust's listen address in the benchmark world.
const LISTEN: &str = "127.0.0.1";

fn start(bench: &mut Bench) -> Result<()> {
    bench.start_nettrust(&[
        "--firewall-backend".into(),
        "ebpf".into(),
        "--dns-capture".into(),
    ])
}

/// `bench dns` (h): `opts.runs` pairs of p50/p99 latency runs (captured, direct).
pub(crate) fn dns(bench: &mut Bench, opts: &Options, report: &mut Report) -> Result<()> {
    eprintln!("xtask: dns (h) nettrust eBPF + DNS capture");
    let (mut p50, mut p99, mut direct, mut overhead) = (vec![], vec![], vec![], vec![]);
    for run in 0..opts.runs {
        start(bench)?;
        let measure = |server| crate::bench_dns::latency(bench, server, opts);
        // `latency` fails below 100 answers: without capture, nothing at ASKED answers.
        let ((c50, c99, _), (d50, _, _)) = if run.is_multiple_of(2) {
            let d = measure(LISTEN)?;
            (measure(ASKED)?, d)
        } else {
            let c = measure(ASKED)?;
            (c, measure(LISTEN)?)
        };
        bench.check_nettrust()?;
        p50.push(c50);
        p99.push(c99);
        direct.push(d50);
        overhead.push(c50 - d50);
    }
    bench.stop_nettrust()?;
    let label = "(h) nettrust eBPF + DNS capture";
    report.add(Figure::new(
        "capture",
        &format!("{label} p50 @1k qps, asking {ASKED}"),
        "µs",
        p50,
    ));
    report.add(Figure::new(
        "capture",
        &format!("{label} p99 @1k qps, asking {ASKED}"),
        "µs",
        p99,
    ));
    report.add(Figure::new(
        "capture",
        &format!("{label} p50 @1k qps, asking {LISTEN} (same daemon, paired)"),
        "µs",
        direct,
    ));
    report.add(Figure::new(
        "capture",
        &format!("{label} p50 overhead of capture over asking {LISTEN}, paired"),
        "µs",
        overhead,
    ));
    Ok(())
}

/// `bench datapath` with the capture programs attached (the iperf3 server runs).
pub(crate) fn datapath(bench: &mut Bench, opts: &Options, report: &mut Report) -> Result<()> {
    start(bench)?;
    crate::bench_datapath::resolve_target(bench)?;
    eprintln!("xtask: datapath: eBPF + DNS capture, 0 hosts");
    crate::bench_datapath::tcp_udp(bench, opts, "eBPF + DNS capture, 0 hosts", report)?;
    bench.check_nettrust()?;
    let mut ratios = Vec::new();
    for run in 0..opts.runs {
        let mut pairs = Vec::new();
        for p in 0..opts.pairs {
            let mut order = [true, false];
            if (run * opts.pairs + p) % 2 == 1 {
                order.reverse();
            }
            let mut gbits = [0.0; 2];
            for capture in order {
                let mut args: Vec<String> = vec!["--firewall-backend".into(), "ebpf".into()];
                if capture {
                    args.push("--dns-capture".into());
                }
                bench.start_nettrust(&args)?;
                crate::bench_datapath::resolve_target(bench)?;
                let seconds = opts.pair_seconds.to_string();
                gbits[usize::from(capture)] =
                    crate::bench_datapath::tcp_run(bench, false, &seconds)?;
            }
            pairs.push(gbits[1] / gbits[0] * 100.0);
        }
        ratios.push(crate::bench_report::median(pairs));
    }
    report.add(Figure::new(
        "ratio",
        "TCP eBPF + DNS capture / eBPF without, 0 hosts, paired",
        "%",
        ratios,
    ));
    bench.stop_nettrust()
}
