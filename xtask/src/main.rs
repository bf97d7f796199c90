//! `cargo xtask` — sets up the eBPF toolchain and test tools, builds, runs and tests nettrust.
//!
//! - `setup`: nightly toolchain with rust-src, bpf-linker built against the nightly's own LLVM
//!   (cached under `$XDG_CACHE_HOME/nettrust-tools`, or `~/.cache/nettrust-tools`), and the Debian
//!   packages the tests use. Idempotent; every other command runs the part it needs.
//! - `build [--release]`: `target/{debug,release}/nettrust` with the eBPF object inside.
//! - `run [--debug] -- ARGS`: build and run `nettrust ARGS` (with sudo when not root), the release
//!   build unless `--debug`; without `--config` in ARGS the repository's `config.toml` is used.
//! - `test`: setup, unit tests (no root), then the root integration tests, serially.
//! - `bench [dns|datapath|commit|memory|policy|all] [--smoke] [--binary PATH]`: nettrust against
//!   dnsmasq and the upstream, datapath, commit latency, memory and domain-list loading, in
//!   network namespaces it creates (see `bench*.rs`, `lab.rs`, `netns.rs`); writes
//!   `target/bench/results.md` and a chart.
//! - `soak --minutes N [--binary PATH]`: steady load with expiry active; asserts RSS drift,
//!   errors, leaks (see `soak.rs`).

mod bench;
mod bench_capture;
mod bench_commit;
mod bench_datapath;
mod bench_dns;
mod bench_policy;
mod bench_reload;
mod bench_report;
mod bench_scoped;
mod fuzz;
mod lab;
mod netns;
mod relay;
mod setup;
mod soak;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain and the packages the tests need.
    Setup,
    /// Build nettrust with its eBPF object.
    Build {
        /// Optimized build.
        #[arg(long)]
        release: bool,
    },
    /// Build and run nettrust (as root), the release build; arguments after `--` go to nettrust.
    Run {
        /// Run the debug build instead of the release build.
        #[arg(long)]
        debug: bool,
        /// Arguments for nettrust.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every fuzz target (cargo-fuzz, nightly) for a while.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        time: u64,
    },
    /// rustfmt check and clippy (userspace, and the eBPF crate on its own target).
    Lint,
    /// Run every test: lints, unit tests, then the root integration tests.
    Test {
        /// Only the unit tests (no root needed).
        #[arg(long)]
        unit_only: bool,
    },
    /// Steady DNS load with expiry active (as root, in network namespaces of its own): fails on
    /// RSS drift >= 5% after warm-up, any DNS error, or a packet to an unauthorized address.
    Soak {
        /// Length of the measured run after the warm-up (fractions allowed: 0.5 is 30 s).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Warm-up under load before RSS is judged.
        #[arg(long, default_value_t = 60)]
        warmup_seconds: u64,
        /// Query rate; by default half of the maximum nettrust reaches here (measured first).
        #[arg(long)]
        qps: Option<u32>,
        /// Soak the debug build instead of the release build.
        #[arg(long)]
        debug: bool,
        /// Soak this nettrust binary as it is (no build; CI passes the one the tests built).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Benchmarks (as root, in network namespaces of their own): prints a table, writes
    /// target/bench/results.md and target/bench/chart.png.
    Bench {
        /// What to measure.
        #[arg(value_enum, default_value_t = BenchWhat::All)]
        what: BenchWhat,
        /// CI smoke: one short run per figure, small host counts, debug build.
        #[arg(long)]
        smoke: bool,
        /// Seconds per dnsperf throughput run.
        #[arg(long)]
        seconds: Option<u32>,
        /// Runs per figure (the median is reported with min–max).
        #[arg(long)]
        runs: Option<u32>,
        /// dns only: the variants to run, e.g. `ab` for the upstream and nettrust eBPF (default
        /// `abcdefgh`, all of them; (h) is DNS capture, `bench_capture.rs`).
        #[arg(long)]
        variants: Option<String>,
        /// Benchmark this nettrust binary as it is (no build; its eBPF object is embedded), e.g.
        /// a saved build of an earlier commit, run alternately with the current build on the
        /// same machine. dns, datapath and memory only: the commit bench compiles the checkout.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// dns only: also run this nettrust binary as it is for variants (b) and (c), in the same
        /// runs as the one under test (which goes first alternates), its figures marked with
        /// its path: before/after figures of two commits measured side by side.
        #[arg(long)]
        compare: Option<PathBuf>,
    },
    /// The minimal relay of `bench dns`, variant (f), run by the benchmark in its namespace.
    #[command(hide = true)]
    Relay {
        /// Address to serve clients on.
        listen: std::net::SocketAddr,
        /// The upstream every query goes to.
        upstream: std::net::SocketAddr,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchWhat {
    /// dnsperf: upstream, nettrust eBPF and nftables, dnsmasq forwarding with and without nftset.
    Dns,
    /// iperf3 through no filter, eBPF and nftables with 0 / 10k / 1M authorized hosts.
    Datapath,
    /// Latency of authorizing one answer into each backend.
    Commit,
    /// Kernel map memory and daemon RSS with 1M authorized hosts.
    Memory,
    /// Load time and peak RSS of a 1M-line policy allow-list and a 1M-line blacklist.
    Policy,
    /// Everything.
    All,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Cmd::Setup => {
            setup::toolchain()?;
            setup::python_tools()?;
            setup::packages()?;
        }
        Cmd::Build { release } => {
            build(&root, release)?;
        }
        Cmd::Run { debug, args } => run(&root, debug, args)?,
        Cmd::Fuzz { time } => {
            setup::toolchain()?;
            fuzz::run(&root, time)?;
        }
        Cmd::Lint => {
            setup::toolchain()?;
            lint(&root)?;
        }
        Cmd::Test { unit_only } => test(&root, unit_only)?,
        Cmd::Soak {
            minutes,
            warmup_seconds,
            qps,
            debug,
            binary,
        } => {
            setup::packages()?;
            let binary = match binary {
                Some(binary) => given_binary(&binary)?,
                None => build(&root, !debug)?,
            };
            let seconds = (minutes * 60.0).round() as u64;
            soak::run(
                &binary,
                &soak::Options {
                    seconds,
                    warmup: warmup_seconds,
                    qps,
                },
            )?;
        }
        Cmd::Bench { .. } => bench(&root, cli.command)?,
        Cmd::Relay { listen, upstream } => relay::run(listen, upstream)?,
    }
    Ok(())
}

/// `cargo xtask run`: builds and runs the daemon with `args`, the repository's `config.toml`
/// unless they name a configuration.
fn run(root: &Path, debug: bool, mut args: Vec<String>) -> Result<()> {
    let binary = build(root, !debug)?;
    let is_run = args
        .first()
        .is_none_or(|a| a.starts_with('-') || a == "run");
    if is_run
        && !args
            .iter()
            .any(|a| a == "--config" || a.starts_with("--config="))
    {
        args.push("--config".into());
        args.push(root_owned_config(&root.join("config.toml"))?);
    }
    let status = setup::as_root(&binary, &args)
        .status()
        .context("starting nettrust")?;
    if !status.success() {
        bail!("nettrust exited with {status}");
    }
    Ok(())
}

/// `cargo xtask bench`.
fn bench(root: &Path, command: Cmd) -> Result<()> {
    let Cmd::Bench {
        what,
        smoke,
        seconds,
        runs,
        variants,
        binary,
        compare,
    } = command
    else {
        unreachable!("bench is called with the bench command");
    };
    setup::packages()?;
    let mut opts = if smoke {
        bench::Options::smoke()
    } else {
        bench::Options::full()
    };
    opts.seconds = seconds.unwrap_or(opts.seconds);
    opts.runs = runs.unwrap_or(opts.runs).max(1);
    if let Some(variants) = variants {
        if let Some(bad) = variants.chars().find(|c| !"abcdefgh".contains(*c)) {
            bail!("--variants {variants:?}: {bad:?} is not one of a, b, c, d, e, f, g, h");
        }
        opts.variants = variants;
    }
    let what = match what {
        BenchWhat::Dns => bench::What::Dns,
        BenchWhat::Datapath => bench::What::Datapath,
        BenchWhat::Commit => bench::What::Commit,
        BenchWhat::Memory => bench::What::Memory,
        BenchWhat::Policy => bench::What::Policy,
        BenchWhat::All => bench::What::All,
    };
    if let Some(compare) = compare {
        if what != bench::What::Dns {
            bail!("--compare: only the dns benchmark runs two binaries side by side");
        }
        opts.compare = Some(given_binary(&compare)?);
    }
    let binary = match binary {
        Some(_) if matches!(what, bench::What::Commit | bench::What::All) => bail!(
            "--binary: the commit bench compiles the checkout's bench target, not a binary; \
             give dns, datapath or memory"
        ),
        Some(binary) => given_binary(&binary)?,
        None => build(root, opts.release)?,
    };
    let report = bench::run(root, &binary, what, &opts)?;
    if smoke && what == bench::What::All {
        report.check_complete()?;
    }
    Ok(())
}

/// A `--binary` path, absolute (the daemon is started from another directory's view of it) and
/// checked to be a file.
fn given_binary(binary: &Path) -> Result<PathBuf> {
    let path = binary
        .canonicalize()
        .with_context(|| format!("--binary {}", binary.display()))?;
    if !path.is_file() {
        bail!("--binary {}: not a file", binary.display());
    }
    Ok(path)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// A `cargo` command with the bpf-linker cache on PATH.
pub(crate) fn cargo(root: &Path) -> Result<Command> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root).env("PATH", setup::path_with_tools()?);
    Ok(cmd)
}

fn build(root: &Path, release: bool) -> Result<PathBuf> {
    setup::toolchain()?;
    let mut cmd = cargo(root)?;
    cmd.args(["build", "--package", "nettrust"]);
    if release {
        cmd.arg("--release");
    }
    setup::status(&mut cmd)?;
    Ok(root
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("nettrust"))
}

fn lint(root: &Path) -> Result<()> {
    let mut fmt = cargo(root)?;
    fmt.args(["fmt", "--all", "--check"]);
    setup::status(&mut fmt)?;
    let mut clippy = cargo(root)?;
    clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        "nettrust-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    setup::status(&mut clippy)?;
    let mut clippy_ebpf = Command::new("rustup");
    clippy_ebpf
        .current_dir(root)
        .env("PATH", setup::path_with_tools()?);
    clippy_ebpf.args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        "nettrust-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]);
    setup::status(&mut clippy_ebpf)?;
    systemd_unit_security(root)
}

/// `systemd-analyze security --offline` on dist/nettrust.service must rate it OK or better.
/// `systemd-analyze` is installed when missing; the lint fails if it cannot run.
fn systemd_unit_security(root: &Path) -> Result<()> {
    let unit = root.join("dist/nettrust.service");
    setup::install(setup::LINT_PACKAGES)
        .context("the unit-file lint needs systemd-analyze (Debian package systemd)")?;
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--root=/"])
        .arg(&unit)
        .output()
        .context("running systemd-analyze security on dist/nettrust.service")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let verdict = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .with_context(|| {
            format!(
                "systemd-analyze gave no rating: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    eprintln!("xtask: {}", verdict.trim());
    if !(verdict.contains(" OK") || verdict.contains(" SAFE")) {
        bail!("dist/nettrust.service is rated worse than OK: {verdict}");
    }
    Ok(())
}

fn test(root: &Path, unit_only: bool) -> Result<()> {
    setup::toolchain()?;
    setup::python_tools()?;
    if !unit_only {
        setup::packages()?;
    }
    lint(root)?;
    let mut unit = cargo(root)?;
    unit.args(["test", "--workspace", "--exclude", "nettrust-ebpf"]);
    setup::status(&mut unit)?;
    fuzz::ci(root)?;
    if unit_only {
        return Ok(());
    }
    // The root suites (every file in nettrust/tests): real eBPF, cgroups, network namespaces and
    // DNS servers; one test at a time.
    let mut build_tests = cargo(root)?;
    build_tests.args(["test", "--package", "nettrust", "--test", "*", "--no-run"]);
    setup::status(&mut build_tests)?;
    let mut root_tests = if setup::is_root() {
        cargo(root)?
    } else {
        let mut cmd = Command::new("sudo");
        cmd.current_dir(root).args([
            "-E",
            "env",
            &format!("PATH={}", setup::path_with_tools()?.to_string_lossy()),
            "cargo",
        ]);
        cmd
    };
    root_tests.args([
        "test",
        "--package",
        "nettrust",
        "--test",
        "*",
        "--",
        "--ignored",
        "--test-threads=1",
    ]);
    setup::status(&mut root_tests)?;
    setup::status(&mut setup::as_root(
        &std::env::current_exe()?,
        &soak::ci_args(root),
    ))?;
    bench::smoke(root, &build(root, false)?)
}

/// The path of `config` to hand to the daemon. nettrust, running as root, refuses a config file
/// that another user owns or could replace (its directories included), as a checkout in a
/// user's home is; such a file is copied to a root-owned `/run/nettrust-xtask/config.toml`.
fn root_owned_config(config: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let config = config
        .canonicalize()
        .with_context(|| format!("reading {}", config.display()))?;
    // The file and each directory above it: owned by root, not writable by group or others
    // (a sticky directory such as /tmp excepted).
    let root_owned = config.ancestors().all(|p| {
        std::fs::metadata(p).is_ok_and(|m| {
            let sticky_dir = m.is_dir() && m.mode() & 0o1000 != 0;
            m.uid() == 0 && (m.mode() & 0o022 == 0 || sticky_dir)
        })
    });
    if root_owned {
        return Ok(config.display().to_string());
    }
    let staged = "/run/nettrust-xtask/config.toml";
    eprintln!(
        "xtask: {} is not owned by root all the way up, which nettrust refuses as root; running with a root-owned copy at {staged} (edit the copy for SIGHUP reloads)",
        config.display()
    );
    let args = [
        "-D",
        "-m",
        "0644",
        "-o",
        "0",
        "-g",
        "0",
        &config.display().to_string(),
        staged,
    ]
    .map(String::from);
    let status = setup::as_root(Path::new("install"), &args)
        .status()
        .context("starting install")?;
    if !status.success() {
        bail!(
            "copying {} to {staged} failed with {status}",
            config.display()
        );
    }
    Ok(staged.into())
}
