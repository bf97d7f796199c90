//! Idempotent installation of what building and testing nettrust needs.
//!
//! bpf-linker has no usable prebuilt download and Debian's LLVM is too old, so it is built from
//! crates.io against the nightly toolchain's own libLLVM (`LLVM_PREFIX` pointing at a directory
//! whose `lib/libLLVM.so` links to it, with the `llvm-NN` feature of the nightly's LLVM version).
//! A small wrapper script puts that library on the loader path.

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The nightly toolchain used for the eBPF object (aya-build runs `rustup run nightly`).
const NIGHTLY: &str = "nightly";
/// bpf-linker release known to work with aya 0.14 and LLVM 21–23.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The Kubernetes manifest validator (PyPI; its schemas ship in the package, so it validates
/// offline) the manifests test runs.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// Commands the root tests run (or, as an absolute path, a file they use), and the Debian package
/// that provides each.
const PACKAGES: &[(&str, &str)] = &[
    ("dnsmasq", "dnsmasq-base"),
    ("dig", "dnsutils"),
    ("socat", "socat"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("curl", "curl"),
    ("kdig", "knot-dnsutils"),
    ("dnsperf", "dnsperf"),
    // The benchmark (cargo xtask bench, and its smoke run in cargo xtask test).
    ("iperf3", "iperf3"),
    ("rsvg-convert", "librsvg2-bin"),
    // The nftables root tests inspect the per-namespace ruleset (never used by nettrust itself).
    ("nft", "nftables"),
    // The systemd root test boots a real systemd in a container to run dist/nettrust.service.
    ("systemd-nspawn", "systemd-container"),
    // The metrics tests check the /metrics exposition with Prometheus' own parsers: promtool for
    // the 0.0.4 text, the Python client's OpenMetrics parser (a path: a module, not a command).
    ("promtool", "prometheus"),
    (
        "/usr/lib/python3/dist-packages/prometheus_client/openmetrics/parser.py",
        "python3-prometheus-client",
    ),
];

/// What the lint needs: `systemd-analyze security` rates dist/nettrust.service.
pub const LINT_PACKAGES: &[(&str, &str)] = &[("systemd-analyze", "systemd")];

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `program args`, through sudo when not root.
pub fn as_root(program: &Path, args: &[impl AsRef<OsStr>]) -> Command {
    let mut cmd = if is_root() {
        Command::new(program)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(program);
        sudo
    };
    cmd.args(args);
    cmd
}

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("nettrust-tools")
}

fn tools_bin() -> PathBuf {
    cache_dir().join("bin")
}

/// PATH with the cached tools first.
pub fn path_with_tools() -> Result<OsString> {
    let mut paths = vec![tools_bin()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    Ok(std::env::join_paths(paths)?)
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` (echoing it), its output shown; an error when it cannot start or fails.
pub(crate) fn status(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Nightly with rust-src, and bpf-linker matching the nightly's LLVM.
pub fn toolchain() -> Result<()> {
    let have_nightly = Command::new("rustup")
        .args(["run", NIGHTLY, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_nightly {
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    bpf_linker()
}

fn bpf_linker() -> Result<()> {
    let version = output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"]))?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc does not report its LLVM version")?
        .to_owned();
    let sysroot = PathBuf::from(
        output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))?
            .trim(),
    );
    let libdir = sysroot.join("lib");
    let cache = cache_dir();
    let stamp = cache.join("bpf-linker.stamp");
    let wanted = format!("{BPF_LINKER_VERSION} {version}");
    let wrapper = tools_bin().join("bpf-linker");
    if wrapper.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {llvm_major} (about a minute)..."
    );
    let llvm_prefix = cache.join("llvm");
    std::fs::create_dir_all(llvm_prefix.join("lib"))?;
    let lib = std::fs::read_dir(&libdir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with("libLLVM.so.")
                    && n.to_string_lossy().contains("-rust-")
            })
        })
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", libdir.display()))?;
    let link = llvm_prefix.join("lib").join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link)?;
    let install_root = cache.join("bpf-linker");
    status(
        Command::new("rustup")
            .args([
                "run",
                NIGHTLY,
                "cargo",
                "install",
                "bpf-linker",
                "--locked",
                "--force",
            ])
            .args([
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{llvm_major}"))
            .arg("--root")
            .arg(&install_root)
            .env("LLVM_PREFIX", &llvm_prefix),
    )?;
    std::fs::create_dir_all(tools_bin())?;
    write_wrapper(
        &wrapper,
        &install_root.join("bin").join("bpf-linker"),
        &libdir,
    )?;
    output(Command::new(&wrapper).arg("--version"))
        .context("the freshly built bpf-linker does not run")?;
    std::fs::write(&stamp, wanted)?;
    Ok(())
}

fn write_wrapper(wrapper: &Path, real: &Path, libdir: &Path) -> Result<()> {
    write_script(
        wrapper,
        &format!(
            "# Written by cargo xtask setup: bpf-linker needs the nightly toolchain's libLLVM.\nLD_LIBRARY_PATH='{}'${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}} exec '{}' \"$@\"\n",
            libdir.display(),
            real.display()
        ),
    )
}

/// Writes an executable shell script `body` at `path`.
fn write_script(path: &Path, body: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("#!/bin/sh\n{body}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Whether `name` is on the PATH (or in the usual sbin/bin directories); an absolute `name` is
/// looked up as it is (`Path::join` keeps an absolute path).
fn have_command(name: &str) -> bool {
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.iter().any(|d| d.join(name).is_file())
}

/// Debian packages the root tests use.
pub fn packages() -> Result<()> {
    install(PACKAGES)
}

/// Installs the Debian package of each command in `wanted` that is not on the PATH.
pub fn install(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(cmd, _)| !have_command(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let apt = |args: &[&str]| {
        let mut cmd = as_root(Path::new("apt-get"), args);
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    status(&mut apt(&["update", "-qq"]))?;
    status(apt(&["install", "-y", "-qq", "--no-install-recommends"]).args(&missing))?;
    Ok(())
}

/// kubernetes-validate, installed from PyPI into the tools cache (`python/`, with the interpreter
/// that installed it, since its dependencies carry compiled modules) behind a wrapper in the
/// tools' `bin`, for the test that validates `deploy/kubernetes`.
pub fn python_tools() -> Result<()> {
    let target = cache_dir().join("python");
    let marker = target.join("kubernetes_validate-1.37.0.dist-info");
    let wrapper = tools_bin().join("kubernetes-validate");
    if marker.is_dir() && wrapper.is_file() {
        return Ok(());
    }
    let python = output(Command::new("python3").args(["-c", "import sys; print(sys.executable)"]))?;
    let python = python.trim();
    status(
        Command::new(python)
            .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
            .arg(&target)
            .arg(KUBERNETES_VALIDATE),
    )?;
    std::fs::create_dir_all(tools_bin())?;
    write_script(
        &wrapper,
        &format!(
            "PYTHONPATH='{}' exec '{python}' -m kubernetes_validate \"$@\"\n",
            target.display()
        ),
    )
}
