#![no_std]
// This file exists so that `nettrust` can name this crate as a build-dependency; the program itself
// is the `nettrust` binary target (src/main.rs), built for bpfel-unknown-none by aya-build.
