//! `cargo xtask bench policy`, the daemon's part: nettrust started on a policy whose
//! `allow_domains_file` holds `policy_lines` entries (every benchmark name among them) and a
//! `[blacklist] domains_file` of as many. Reports the time from start until it answers, its RSS
//! then, the time a SIGHUP takes to load both files changed, the peak RSS during that reload
//! (`VmHWM`, reset just before), and what dnsperf, asking from the policy's cgroup at a fixed
//! rate across the reload, saw: the share of queries answered and the slowest answer.

use std::{
    fs,
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench::{Bench, NAMES, Options},
    bench_policy::{TARGET_MB, TARGET_SECS, write_list},
    bench_report::{Figure, Report},
    lab::{field, status_kib, text_field},
};

/// Queries per second dnsperf sends across the reload.
const RATE: u32 = 2000;
/// Seconds dnsperf runs; the SIGHUP comes after [`BEFORE_RELOAD`].
const ASKING: u32 = 8;
const BEFORE_RELOAD: Duration = Duration::from_secs(2);
/// The log line the daemon writes once a reload is in force.
const RELOADED: &str = "[Reload] configuration reloaded";

pub fn run(bench: &mut Bench, opts: &Options, report: &mut Report) -> Result<()> {
    let lines = opts.policy_lines.max(NAMES as usize);
    let allowed = bench.dir.join("reload-allowed.domains");
    let blocked = bench.dir.join("reload-blocked.domains");
    write_lists(&allowed, &blocked, lines, "one")?;
    let config = bench.dir.join("reload.toml");
    fs::write(
        &config,
        format!(
            "[blacklist]\ndomains_file = \"{}\"\n[[policy]]\nname = \"reload\"\n\
             cgroups = [\"{}\"]\nallow_domains_file = \"{}\"\nmode = \"enforce\"\n",
            blocked.display(),
            bench.net.cgroup.display(),
            allowed.display()
        ),
    )?;
    // The floor of the start: the same daemon with a one-pattern policy and no blacklist.
    let floor = bench.dir.join("reload-floor.toml");
    fs::write(
        &floor,
        format!(
            "[[policy]]\nname = \"reload\"\ncgroups = [\"{}\"]\n\
             allow_domains = [\"*.bench\"]\nmode = \"enforce\"\n",
            bench.net.cgroup.display()
        ),
    )?;
    let size = format!("{lines} + {lines} lines");
    let mut figures = Figures::default();
    for run in 0..opts.runs {
        let (floor_pid, floor_s) = start(bench, &floor)?;
        let floor_mb = status_kib(floor_pid, "VmRSS:")? as f64 / 1024.0;
        bench.stop_nettrust()?;
        figures.floor_s.push(floor_s);
        figures.floor_mb.push(floor_mb);
        let once = measure(bench, &config, &allowed, &blocked, lines, run)?;
        eprintln!(
            "xtask: policy daemon run {}/{}: start {:.2} s (floor {floor_s:.2} s), {:.0} MB \
             (floor {floor_mb:.0} MB); \
             reload {:.2} s, peak {:.0} MB; {} of {} queries lost, slowest {:.0} ms",
            run + 1,
            opts.runs,
            once.start_s,
            once.rss_mb,
            once.reload_s,
            once.peak_mb,
            once.lost,
            once.sent,
            once.max_ms
        );
        figures.push(&once);
    }
    let target_s = format!("target ≤ {TARGET_SECS} s for 1M + 1M");
    let target_mb = format!("target ≤ {TARGET_MB} MB for 1M + 1M");
    for (name, unit, values) in [
        (
            format!("daemon start until it answers, {size} ({target_s})"),
            "s",
            figures.start_s,
        ),
        (
            "daemon start until it answers, floor: a one-pattern policy, no blacklist".to_owned(),
            "s",
            figures.floor_s,
        ),
        (
            format!("daemon RSS after start, {size} ({target_mb})"),
            "MB",
            figures.rss_mb,
        ),
        (
            "daemon RSS after start, floor: a one-pattern policy, no blacklist".to_owned(),
            "MB",
            figures.floor_mb,
        ),
        (
            format!("SIGHUP reload of both files changed, {size} ({target_s})"),
            "s",
            figures.reload_s,
        ),
        (
            format!("daemon peak RSS during that reload ({target_mb})"),
            "MB",
            figures.peak_mb,
        ),
        (
            format!("queries answered of those asked at {RATE} qps across the reload"),
            "%",
            figures.answered,
        ),
        (
            "slowest answer across the reload".to_owned(),
            "ms",
            figures.max_ms,
        ),
    ] {
        report.add(Figure::new("policy", &name, unit, values));
    }
    Ok(())
}

/// One run's figures.
#[derive(Debug)]
struct Once {
    start_s: f64,
    rss_mb: f64,
    reload_s: f64,
    peak_mb: f64,
    sent: f64,
    lost: f64,
    max_ms: f64,
}

/// Every run's figures, by kind.
#[derive(Debug, Default)]
struct Figures {
    floor_s: Vec<f64>,
    floor_mb: Vec<f64>,
    start_s: Vec<f64>,
    rss_mb: Vec<f64>,
    reload_s: Vec<f64>,
    peak_mb: Vec<f64>,
    answered: Vec<f64>,
    max_ms: Vec<f64>,
}

impl Figures {
    fn push(&mut self, once: &Once) {
        self.start_s.push(once.start_s);
        self.rss_mb.push(once.rss_mb);
        self.reload_s.push(once.reload_s);
        self.peak_mb.push(once.peak_mb);
        self.answered
            .push(100.0 * (once.sent - once.lost) / once.sent.max(1.0));
        self.max_ms.push(once.max_ms);
    }
}

/// Starts the daemon on the lists tagged "one", then reloads it onto lists tagged "two" while
/// dnsperf asks; the run leaves the lists as it found them (tagged "one").
fn measure(
    bench: &mut Bench,
    config: &Path,
    allowed: &Path,
    blocked: &Path,
    lines: usize,
    run: u32,
) -> Result<Once> {
    write_lists(allowed, blocked, lines, "one")?;
    let (pid, start_s) = start(bench, config)?;
    let rss_mb = status_kib(pid, "VmRSS:")? as f64 / 1024.0;
    write_lists(allowed, blocked, lines, &format!("two{run}"))?;

    let queries = bench.dir.join("queries");
    let mut asking = bench
        .in_cgroup("dnsperf")
        .args(crate::lab::dnsperf_args(
            "127.0.0.1",
            &queries,
            &["-l", &ASKING.to_string(), "-Q", &RATE.to_string()],
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting dnsperf (apt-get install dnsperf)")?;
    std::thread::sleep(BEFORE_RELOAD);
    // Writing 5 resets the peak RSS to the current one (proc(5), clear_refs).
    fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    let reloads_before = bench.nettrust_log().matches(RELOADED).count();
    let hup = Instant::now();
    // SAFETY: kill(2) on the daemon, our unreaped child.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let reload_s = loop {
        if bench.nettrust_log().matches(RELOADED).count() > reloads_before {
            break hup.elapsed().as_secs_f64();
        }
        if hup.elapsed() > Duration::from_secs(30) {
            let _ = asking.kill();
            bail!("no reload 30 s after SIGHUP:\n{}", bench.nettrust_log());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let peak_mb = status_kib(pid, "VmHWM:")? as f64 / 1024.0;
    let out = asking.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let sent = field(&text, "Queries sent:").context("dnsperf: no \"Queries sent\"")?;
    let lost = field(&text, "Queries lost:").context("dnsperf: no \"Queries lost\"")?;
    // "Average Latency (s):  0.000101 (min 0.000041, max 0.012345)"
    let max_ms = text_field(&text, "Average Latency (s):")
        .and_then(|rest| rest.split("max ").nth(1))
        .and_then(|max| max.trim_end_matches(')').trim().parse::<f64>().ok())
        .context("dnsperf: no maximum latency")?
        * 1000.0;
    bench.check_nettrust()?;
    let noerror = text_field(&text, "Response codes:").unwrap_or_default();
    // "NOERROR 16000 (100.00%)", other codes follow after commas.
    if !noerror.starts_with("NOERROR") || noerror.contains(',') {
        bail!("dnsperf across the reload: not every answer NOERROR: {noerror}");
    }
    bench.stop_nettrust()?;
    Ok(Once {
        start_s,
        rss_mb,
        reload_s,
        peak_mb,
        sent,
        lost,
        max_ms,
    })
}

/// Starts the daemon on `config`: its pid and the seconds until it answered.
fn start(bench: &mut Bench, config: &Path) -> Result<(u32, f64)> {
    bench.log_filter = "warn,nettrust::reload=info";
    let started = Instant::now();
    let pid = bench.start_daemon(&[
        "--config".into(),
        config.display().to_string(),
        "--firewall-backend".into(),
        "ebpf".into(),
    ])?;
    Ok((pid, started.elapsed().as_secs_f64()))
}

/// The allow list: every benchmark name, then `lines` entries tagged `tag`; the blacklist:
/// `lines` other entries tagged `tag`.
fn write_lists(allowed: &Path, blocked: &Path, lines: usize, tag: &str) -> Result<()> {
    write_list(allowed, lines, &format!("allow-{tag}"))?;
    let mut names = fs::OpenOptions::new().append(true).open(allowed)?;
    for i in 0..NAMES {
        writeln!(names, "n{i}.bench")?;
    }
    write_list(blocked, lines, &format!("block-{tag}"))
}
