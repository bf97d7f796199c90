//! `cargo xtask bench policy`: the cost of loading big domain lists. Writes a policy with an
//! `allow_domains_file` of `policy_lines` entries and a `[blacklist] domains_file` of as many,
//! then runs `nettrust check-config` on them (which parses, validates and compiles both, as a
//! start or a SIGHUP reload does) and reports its wall time and peak RSS (`wait4`'s `ru_maxrss`)
//! next to the targets: at most 2 s and 150 MB for a million lines each.

use std::{
    fs,
    io::{BufWriter, Write as _},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench::Options,
    bench_report::{Figure, Report},
};

/// Load time target for a million lines in each list (start and reload), in seconds.
pub(crate) const TARGET_SECS: f64 = 2.0;
/// Daemon RSS target with those lists, in MB.
pub(crate) const TARGET_MB: f64 = 150.0;

/// A scratch directory removed on drop, also on error.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn run(binary: &Path, opts: &Options, report: &mut Report) -> Result<()> {
    let dir =
        Scratch(std::env::temp_dir().join(format!("nettrust-bench-policy-{}", std::process::id())));
    fs::create_dir_all(&dir.0)?;
    let lines = opts.policy_lines;
    let allowed = dir.0.join("allowed.domains");
    let blocked = dir.0.join("blocked.domains");
    write_list(&allowed, lines, "allow")?;
    write_list(&blocked, lines, "block")?;
    let config = dir.0.join("nettrust.toml");
    // The policy's cgroup must be a cgroup v2 directory: the root is one that always exists, and
    // check-config attaches nothing.
    let cgroup = crate::netns::cgroup2_root()?;
    fs::write(
        &config,
        format!(
            "fwd_addr = \"192.0.2.53:53\"\n[blacklist]\ndomains_file = \"{}\"\n\
             [[policy]]\nname = \"bench\"\ncgroups = [\"{}\"]\nallow_domains_file = \"{}\"\n",
            blocked.display(),
            cgroup.display(),
            allowed.display()
        ),
    )?;
    let (mut secs, mut mbs) = (Vec::new(), Vec::new());
    for run in 0..opts.runs {
        let (wall, peak_mb) = check_config(binary, &config)?;
        eprintln!(
            "xtask: policy run {}/{}: {wall:.2} s, {peak_mb:.1} MB",
            run + 1,
            opts.runs
        );
        secs.push(wall);
        mbs.push(peak_mb);
    }
    let size = format!("{} + {} lines", thousands(lines), thousands(lines));
    report.add(Figure::new(
        "policy",
        &format!("load of allow + blacklist files, {size} (target ≤ {TARGET_SECS} s for 1M + 1M)"),
        "s",
        secs,
    ));
    report.add(Figure::new(
        "policy",
        &format!("peak RSS while loading them, {size} (target ≤ {TARGET_MB} MB for 1M + 1M)"),
        "MB",
        mbs,
    ));
    Ok(())
}

/// Writes `lines` entries of about 20 bytes: three exact names for one `*.` suffix, with a
/// comment line every thousand.
pub(crate) fn write_list(path: &Path, lines: usize, tag: &str) -> Result<()> {
    let mut out = BufWriter::new(fs::File::create(path)?);
    for i in 0..lines {
        if i.is_multiple_of(1000) {
            writeln!(out, "# block {i}")?;
        }
        if i % 4 == 3 {
            writeln!(out, "*.w{i}.{tag}.example")?;
        } else {
            writeln!(out, "n{i}.{tag}.example")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Runs `binary check-config --config config`: its wall time in seconds and peak RSS in MB.
fn check_config(binary: &Path, config: &Path) -> Result<(f64, f64)> {
    let started = Instant::now();
    let child = Command::new(binary)
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = libc::pid_t::try_from(child.id())?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for; both pointers are valid for the call.
    let waited = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
    let wall = started.elapsed().as_secs_f64();
    if waited != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if std::process::ExitStatus::from_raw(status).success() {
        // ru_maxrss is in KiB (getrusage(2)).
        return Ok((wall, usage.ru_maxrss as f64 / 1024.0));
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr {
        use std::io::Read as _;
        let _ = pipe.read_to_string(&mut stderr);
    }
    bail!("nettrust check-config failed: {stderr}")
}

/// `1000000` as `1,000,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
