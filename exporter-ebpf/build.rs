//! Rebuilds the BPF object when `bpf-linker` changes (for instance when
//! `cargo xtask build` reinstalls it for a new nightly LLVM): the linker is
//! not a cargo dependency, so cargo cannot see that on its own.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    let linker = env::var_os("PATH").and_then(|path| {
        env::split_paths(&path).map(|dir| dir.join("bpf-linker")).find(|candidate: &PathBuf| candidate.is_file())
    });
    if let Some(linker) = linker {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
