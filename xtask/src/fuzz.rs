//! `cargo xtask fuzz [--time SECS]`: runs every cargo-fuzz target in `fuzz/` for SECS seconds
//! (nightly + libFuzzer), seeded with the repository's own inputs, and reports executions and
//! crashes per target.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

/// The targets in fuzz/fuzz_targets.
const TARGETS: &[&str] = &["answer", "config"];

pub fn run(root: &Path, secs: u64) -> Result<()> {
    let have_cargo_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_cargo_fuzz {
        eprintln!("xtask: installing cargo-fuzz from crates.io...");
        crate::run_checked({
            let mut cmd = Command::new("cargo");
            cmd.args(["install", "cargo-fuzz", "--locked"]);
            cmd
        })?;
    }
    let fuzz_dir = root.join("fuzz");
    let mut summary = Vec::new();
    for target in TARGETS {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
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
            .args([
                "--",
                &format!("-max_total_time={secs}"),
                "-print_final_stats=1",
            ])
            // The fuzzed code paths do not need the eBPF object.
            .env("NETTRUST_EBPF_STUB", "1");
        eprintln!("xtask: fuzzing {target} for {secs}s");
        let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|n| n.trim().to_owned())
            .unwrap_or_else(|| "?".into());
        if !out.status.success() {
            eprintln!("{log}");
            bail!("fuzz target {target} failed (crash or build error) after {runs} executions");
        }
        summary.push(format!("{target}: {runs} executions in {secs}s, 0 crashes"));
    }
    for line in summary {
        println!("{line}");
    }
    Ok(())
}
