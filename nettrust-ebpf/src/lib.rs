#![no_std]
#![expect(
    unused_crate_dependencies,
    reason = "the dependencies serve the eBPF program (the binary target), not this stub"
)]
// This file exists so that `nettrust` can name this crate as a build-dependency; the program itself
// is the `nettrust` binary target (src/main.rs), built for bpfel-unknown-none by aya-build.
