//! `cargo xtask bench commit`: runs the nettrust crate's `commit` bench target (the daemon's
//! `Authorizer::authorize` into the real eBPF and nftables backends, in a scratch network
//! namespace and cgroup; see nettrust/benches/commit.rs) `runs` times.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::{
    bench::Options,
    bench_report::{Figure, Report},
};

/// (backend, addresses), then the p50 and the p99 of every run in µs.
type Samples = Vec<((String, String), Vec<f64>, Vec<f64>)>;

pub fn run(root: &Path, opts: &Options, report: &mut Report) -> Result<()> {
    // (backend, addresses) -> p50 and p99 of every run, in ns.
    let mut samples: Samples = Vec::new();
    let mut scans: Scans = (0, Vec::new(), Vec::new());
    for run in 0..opts.runs {
        let mut cmd = crate::cargo(root)?;
        cmd.args(["bench", "--package", "nettrust", "--bench", "commit"]);
        if !opts.release {
            // The CI smoke reuses the test build instead of compiling an optimized one.
            cmd.args(["--profile", "dev"]);
        }
        cmd.args(["--", "--rounds", &opts.rounds.to_string()]);
        eprintln!("xtask: commit run {}/{}: {cmd:?}", run + 1, opts.runs);
        let out = cmd.output().context("starting cargo bench")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "the commit bench failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse(&text, &mut samples, &mut scans)?;
    }
    if scans.1.is_empty() {
        bail!("the commit bench printed no scan figure");
    }
    let (hosts, sweeper, listed) = scans;
    report.add(Figure::new(
        "commit",
        &format!("sweeper scan of {hosts} hosts"),
        "ms",
        sweeper,
    ));
    report.add(Figure::new(
        "commit",
        "same hosts read from the pins (nettrust list)",
        "ms",
        listed,
    ));
    for ((backend, count), p50, p99) in samples {
        let backend = if backend == "ebpf" {
            "eBPF"
        } else {
            "nftables"
        };
        let what = if count == "1" { "address" } else { "addresses" };
        report.add(Figure::new(
            "commit",
            &format!("{backend}, {count} {what}, p50"),
            "µs",
            p50,
        ));
        report.add(Figure::new(
            "commit",
            &format!("{backend}, {count} {what}, p99"),
            "µs",
            p99,
        ));
    }
    Ok(())
}

/// Scans: host count, then the sweeper's and `nettrust list`'s times of every run in ms.
type Scans = (usize, Vec<f64>, Vec<f64>);

/// Adds the figures of one run's output `text` to `samples` and `scans`.
fn parse(text: &str, samples: &mut Samples, scans: &mut Scans) -> Result<()> {
    // "scan HOSTS sweeper_ns list_ns"
    for line in text.lines().filter(|l| l.starts_with("scan ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, hosts, sweeper, listed] = f.as_slice() else {
            bail!("unexpected scan bench line: {line}");
        };
        scans.0 = hosts.parse()?;
        scans.1.push(sweeper.parse::<f64>()? / 1e6);
        scans.2.push(listed.parse::<f64>()? / 1e6);
    }
    // "commit BACKEND ADDRESSES p50_ns p99_ns rounds"
    for line in text.lines().filter(|l| l.starts_with("commit ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, backend, count, p50, p99, _] = f.as_slice() else {
            bail!("unexpected commit bench line: {line}");
        };
        let key = ((*backend).to_owned(), (*count).to_owned());
        let (p50, p99): (f64, f64) = (p50.parse()?, p99.parse()?);
        match samples.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, a, b)) => {
                a.push(p50 / 1000.0);
                b.push(p99 / 1000.0);
            }
            None => samples.push((key, vec![p50 / 1000.0], vec![p99 / 1000.0])),
        }
    }
    Ok(())
}
