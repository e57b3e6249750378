//! Builds the BPF object (`exporter-ebpf`, target `bpfel-unknown-none`) into
//! `OUT_DIR`, where `src/kernel/bpf.rs` embeds it, and records what
//! `kernel_exporter_build_info` reports.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let workspace = manifest_dir.parent().ok_or_else(|| anyhow!("{} has no parent", manifest_dir.display()))?;

    build_bpf_object(workspace)?;
    record_bpf_object_id()?;
    record_build_info(workspace);
    Ok(())
}

fn build_bpf_object(workspace: &Path) -> anyhow::Result<()> {
    let ebpf_dir = workspace.join("exporter-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("exporter-ebpf path is not UTF-8")?;
    // The kernel side also compiles the shared layouts; aya-build only
    // watches the BPF crate itself.
    println!("cargo:rerun-if-changed={}", workspace.join("exporter-common").display());
    aya_build::build_ebpf(
        [aya_build::Package { name: "exporter-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the BPF object failed; `cargo xtask build` installs what it needs \
         (nightly rust-src, bpf-linker)",
    )
}

/// A content hash of the BPF object (FNV-1a, 64 bits): `--version` shows
/// it, so a daemon and the object it carries can be told apart from others.
fn record_bpf_object_id() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = std::fs::read(out_dir.join("kernel-exporter-bpf")).context("the BPF object was not built")?;
    let hash = object
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    println!("cargo:rustc-env=KERNEL_EXPORTER_BPF_OBJECT_ID={hash:016x}");
    Ok(())
}

fn record_build_info(workspace: &Path) {
    let git_dir = workspace.join(".git");
    for watched in ["HEAD", "packed-refs"] {
        println!("cargo:rerun-if-changed={}", git_dir.join(watched).display());
    }
    if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD")) {
        if let Some(reference) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed={}", git_dir.join(reference).display());
        }
    }
    let revision = command_output("git", &["-C", &workspace.display().to_string(), "rev-parse", "--short=12", "HEAD"])
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KERNEL_EXPORTER_REVISION={revision}");

    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rustc_version = command_output(&rustc, &["--version"])
        .and_then(|line| line.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KERNEL_EXPORTER_RUSTC_VERSION={rustc_version}");
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|text| !text.is_empty())
}
