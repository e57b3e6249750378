//! Declares the `bpf_target_arch` cfg, and rebuilds the BPF object when `bpf-linker` changes (for instance when
//! `cargo xtask build` reinstalls it for a new nightly LLVM): the linker is
//! not a cargo dependency, so cargo cannot see that on its own.

use std::{env, path::PathBuf};

fn main() {
    // aya-build passes `--cfg bpf_target_arch="..."` for the host the object
    // is built for; declare it so cfg checks know the name.
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"aarch64\", \"arm\", \"loongarch64\", \"mips\", \"mips64\", \"powerpc64\", \"riscv64\", \"s390x\", \"x86_64\"))"
    );
    println!("cargo:rerun-if-env-changed=PATH");
    let linker = env::var_os("PATH").and_then(|path| {
        env::split_paths(&path).map(|dir| dir.join("bpf-linker")).find(|candidate: &PathBuf| candidate.is_file())
    });
    if let Some(linker) = linker {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
