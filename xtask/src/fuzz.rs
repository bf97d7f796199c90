//! `cargo xtask fuzz [--time SECS]`: runs every cargo-fuzz target in `fuzz/` for SECS seconds
//! (nightly + libFuzzer), seeded with the repository's own inputs (`fuzz/seeds/TARGET`, captured
//! from real dig/kdig traffic by `fuzz/capture-seeds.py`), and reports executions and crashes per
//! target. `cargo xtask test` runs [`ci`]: each target for [`CI_SECS`].

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

/// The targets in fuzz/fuzz_targets.
const TARGETS: &[&str] = &[
    "answer",
    "upstream",
    "query",
    "framing",
    "config",
    "domains_file",
];

/// Seconds per target in CI.
pub const CI_SECS: u64 = 30;

/// The CI run: every target for [`CI_SECS`] seconds.
pub fn ci(root: &Path) -> Result<()> {
    run(root, CI_SECS)
}

pub fn run(root: &Path, secs: u64) -> Result<()> {
    let have_cargo_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_cargo_fuzz {
        eprintln!("xtask: installing cargo-fuzz from crates.io...");
        crate::setup::status(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let fuzz_dir = root.join("fuzz");
    // Build every target once before the clock starts.
    let mut build = Command::new("rustup");
    build
        .current_dir(&fuzz_dir)
        .args(["run", "nightly", "cargo", "fuzz", "build"])
        .env("NETTRUST_EBPF_STUB", "1");
    crate::setup::status(&mut build)?;
    let mut summary = Vec::new();
    for target in TARGETS {
        // New inputs go to the (untracked) corpus; the committed seeds are only read.
        let corpus = root.join("target").join("fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        // `upstream` plays the upstream: it starts from the captured answers too.
        let seed_dir = if *target == "upstream" {
            "answer"
        } else {
            target
        };
        let seeds = fuzz_dir.join("seeds").join(seed_dir);
        std::fs::create_dir_all(&seeds)?;
        if *target == "config" {
            std::fs::copy(
                root.join("config.toml"),
                corpus.join("repository-config.toml"),
            )?;
        }
        let mut cmd = Command::new("rustup");
        cmd.current_dir(&fuzz_dir)
            .args(["run", "nightly", "cargo", "fuzz", "run", target])
            .arg(&corpus)
            .arg(&seeds)
            .args([
                "--",
                &format!("-max_total_time={secs}"),
                "-print_final_stats=1",
                "-timeout=10",
            ])
            // The fuzzed code paths do not need the eBPF object.
            .env("NETTRUST_EBPF_STUB", "1");
        eprintln!("xtask: fuzzing {target} for {secs}s");
        let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let stat = |name: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|n| n.trim().to_owned())
                .unwrap_or_else(|| "?".into())
        };
        let runs = stat("stat::number_of_executed_units:");
        if !out.status.success() {
            eprintln!("{log}");
            bail!("fuzz target {target} failed (crash or build error) after {runs} executions");
        }
        let cov = log
            .lines()
            .rev()
            .find_map(|l| l.split_once(" cov: "))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?");
        summary.push(format!(
            "{target}: {runs} executions in {secs}s, 0 crashes, coverage {cov} edges, peak RSS {} MB",
            stat("stat::peak_rss_mb:")
        ));
    }
    for line in summary {
        println!("{line}");
    }
    Ok(())
}
