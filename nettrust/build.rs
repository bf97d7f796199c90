//! Builds the eBPF object (nettrust-ebpf) with aya-build and leaves it at `$OUT_DIR/nettrust`,
//! where `src/firewall/ebpf.rs` embeds it with `include_bytes_aligned!`.
//!
//! `NETTRUST_EBPF_STUB=1` writes an empty object instead, for machines without the eBPF toolchain
//! (the binary then refuses the eBPF backend at run time with a clear error). Plain `AYA_BUILD_SKIP`
//! would leave no file for `include_bytes_aligned!` to embed.
use anyhow::{Context as _, anyhow};
// Declared (not linked) so cargo rebuilds the embedded object when the eBPF crate changes.
use nettrust_ebpf as _;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=NETTRUST_EBPF_STUB");
    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if std::env::var_os("NETTRUST_EBPF_STUB").is_some_and(|v| v == "1") {
        println!("cargo:warning=NETTRUST_EBPF_STUB=1: embedding an empty eBPF object");
        std::fs::write(out_dir.join("nettrust"), [])?;
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "nettrust-ebpf")
        .ok_or_else(|| anyhow!("nettrust-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
