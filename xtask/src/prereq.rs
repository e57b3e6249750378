//! Prerequisites, each checked and set up idempotently, one line each.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The `bpf-linker` release this project builds with; its LLVM major must
/// match the nightly's (see DESIGN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Prints one setup line.
pub(crate) fn say(status: &str, what: &str) {
    println!("xtask: [{status:^5}] {what}");
}

/// The workspace root (where the top-level Cargo.toml is).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// A toolchain able to build the BPF object, and the environment to run
/// cargo with so it finds it.
pub(crate) struct Toolchain {
    /// `PATH` with `$CARGO_HOME/bin` first, where `bpf-linker` is installed.
    path: OsString,
}

impl Toolchain {
    /// Checks, and where needed sets up, the nightly toolchain, `rust-src`
    /// and `bpf-linker`.
    pub(crate) fn ensure() -> anyhow::Result<Self> {
        let cargo_home = cargo_home()?;
        let cargo_bin = cargo_home.join("bin");
        let path = env::join_paths(
            std::iter::once(cargo_bin.clone()).chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
        )
        .context("PATH cannot hold $CARGO_HOME/bin")?;

        let nightly = Nightly::find()?;
        say("ok", &format!("nightly toolchain present ({}, LLVM {})", nightly.release, nightly.llvm_version));

        nightly.ensure_rust_src()?;
        ensure_bpf_linker(&nightly, &cargo_home, &cargo_bin, &path)?;
        Ok(Self { path })
    }

    /// A `cargo` command that finds `bpf-linker`.
    pub(crate) fn cargo(&self) -> Command {
        let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        command.env("PATH", &self.path).current_dir(workspace_root());
        command
    }

    /// The nightly toolchain's `cargo` (through rustup), finding what is
    /// installed in `$CARGO_HOME/bin`: cargo-fuzz needs nightly's sanitizer
    /// flags.
    pub(crate) fn nightly_cargo(&self) -> Command {
        let mut command = Command::new("rustup");
        command.args(["run", "nightly", "cargo"]).env("PATH", &self.path).current_dir(workspace_root());
        command
    }

    /// Builds the BPF object and the daemon; returns the daemon's path.
    pub(crate) fn build(&self, release: bool) -> anyhow::Result<PathBuf> {
        self.build_with(release, &[])
    }

    /// The debug daemon with the `test-hooks` feature (fault injection
    /// through `KERNEL_EXPORTER_TEST_*` variables): the binary the
    /// end-to-end tests run, and the only build that has the hooks.
    ///
    /// Copied to its own name: any later build of the package without the
    /// feature (`cargo test` builds the binary for the package's own
    /// integration tests) writes `target/debug/kernel-exporter` again.
    pub(crate) fn build_for_tests(&self) -> anyhow::Result<PathBuf> {
        let built = self.build_with(false, &["test-hooks"])?;
        let copy = built.with_file_name("kernel-exporter-test-hooks");
        fs::copy(&built, &copy).with_context(|| format!("cannot copy {} to {}", built.display(), copy.display()))?;
        say("ok", &format!("with the test hooks: {}", copy.display()));
        Ok(copy)
    }

    fn build_with(&self, release: bool, features: &[&str]) -> anyhow::Result<PathBuf> {
        let profile = if release { "release" } else { "debug" };
        let with = if features.is_empty() { String::new() } else { format!(", features {}", features.join(",")) };
        say("build", &format!("kernel-exporter and its BPF object ({profile}{with})"));
        let mut cargo = self.cargo();
        cargo.args(["build", "--package", "kernel-exporter"]);
        if release {
            cargo.arg("--release");
        }
        if !features.is_empty() {
            cargo.args(["--features", &features.join(",")]);
        }
        run_checked(&mut cargo, "cargo build --package kernel-exporter")?;
        let binary = target_dir().join(profile).join("kernel-exporter");
        say("ok", &format!("built {}", binary.display()));
        Ok(binary)
    }
}

/// `$CARGO_TARGET_DIR` or the workspace's `target/`.
pub(crate) fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

pub(crate) fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

struct Nightly {
    release: String,
    llvm_version: String,
    sysroot: PathBuf,
}

impl Nightly {
    fn find() -> anyhow::Result<Self> {
        let verbose = match output("rustup", &["run", "nightly", "rustc", "-vV"]) {
            Ok(text) => text,
            Err(_) => {
                say("setup", "installing the nightly toolchain (rustup toolchain install nightly)");
                run_checked(
                    Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal", "--component", "rust-src"]),
                    "rustup toolchain install nightly",
                )
                .context("the nightly toolchain is missing; install it with `rustup toolchain install nightly --component rust-src`")?;
                output("rustup", &["run", "nightly", "rustc", "-vV"])?
            }
        };
        let field =
            |name: &str| verbose.lines().find_map(|line| line.strip_prefix(name)).map(|value| value.trim().to_owned());
        let release = field("release:").context("`rustc +nightly -vV` printed no release line")?;
        let llvm_version = field("LLVM version:").context("`rustc +nightly -vV` printed no LLVM version")?;
        let sysroot = PathBuf::from(output("rustup", &["run", "nightly", "rustc", "--print", "sysroot"])?.trim());
        Ok(Self { release, llvm_version, sysroot })
    }

    fn llvm_major(&self) -> &str {
        self.llvm_version.split('.').next().unwrap_or(&self.llvm_version)
    }

    fn ensure_rust_src(&self) -> anyhow::Result<()> {
        let marker = self.sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
        if marker.is_file() {
            say("ok", "rust-src present for nightly");
            return Ok(());
        }
        say("setup", "adding rust-src to nightly (rustup component add rust-src --toolchain nightly)");
        run_checked(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
            "rustup component add rust-src --toolchain nightly",
        )
        .context("cannot add rust-src; run `rustup component add rust-src --toolchain nightly`")
    }

    /// The nightly's own `libLLVM.so.*`, which bpf-linker links against
    /// (Debian's LLVM is older than the nightly's).
    fn libllvm(&self) -> anyhow::Result<PathBuf> {
        let lib = self.sysroot.join("lib");
        fs::read_dir(&lib)
            .with_context(|| format!("cannot list {}", lib.display()))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name().and_then(|name| name.to_str()).is_some_and(|name| {
                    name.starts_with("libLLVM.so.") || (name.starts_with("libLLVM-") && name.ends_with(".so"))
                })
            })
            .with_context(|| format!("the nightly toolchain has no libLLVM.so.* in {}", lib.display()))
    }
}

fn ensure_bpf_linker(nightly: &Nightly, cargo_home: &Path, cargo_bin: &Path, path: &OsString) -> anyhow::Result<()> {
    let libllvm = nightly.libllvm()?;
    let soname =
        libllvm.file_name().and_then(|name| name.to_str()).context("libLLVM file name is not UTF-8")?.to_owned();
    let installed = cargo_bin.join("bpf-linker");
    match linker_state(&installed, &soname, path) {
        LinkerState::Ready => {
            say("ok", &format!("bpf-linker {BPF_LINKER_VERSION} present, linked against the nightly's {soname}"));
            return Ok(());
        }
        LinkerState::Missing => say(
            "setup",
            &format!(
                "installing bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {} (about a minute)",
                nightly.llvm_major()
            ),
        ),
        LinkerState::Stale(why) => say(
            "setup",
            &format!(
                "reinstalling bpf-linker {BPF_LINKER_VERSION} for the nightly's LLVM {} ({why})",
                nightly.llvm_major()
            ),
        ),
    }

    // bpf-linker finds LLVM through LLVM_PREFIX/lib/libLLVM.so at build time
    // and records LLVM_PREFIX/lib as its run path, so the folder must outlive
    // the build: it lives in CARGO_HOME, one per nightly LLVM.
    let prefix = cargo_home.join("bpf-linker-llvm").join(&soname);
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    for link in ["libLLVM.so", soname.as_str()] {
        let link = lib.join(link);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), libllvm.display()))?;
    }

    let feature = format!("llvm-{}", nightly.llvm_major());
    let spec = format!("bpf-linker@{BPF_LINKER_VERSION}");
    let mut install = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    install
        .args(["install", &spec, "--locked", "--force", "--no-default-features", "--features", &feature])
        .arg("--root")
        .arg(cargo_home)
        .env("LLVM_PREFIX", &prefix)
        .env("PATH", path);
    run_checked(&mut install, &format!("cargo install {spec}")).with_context(|| {
        format!(
            "cannot install bpf-linker; run `LLVM_PREFIX={} cargo install {spec} --locked --no-default-features --features {feature}`",
            prefix.display()
        )
    })?;
    match linker_state(&installed, &soname, path) {
        LinkerState::Ready => {
            say("ok", &format!("bpf-linker {BPF_LINKER_VERSION} installed in {}", cargo_bin.display()));
            Ok(())
        }
        LinkerState::Missing => bail!("bpf-linker was installed but {} does not exist", installed.display()),
        LinkerState::Stale(why) => bail!("bpf-linker was installed but is still unusable: {why}"),
    }
}

enum LinkerState {
    Ready,
    Missing,
    Stale(String),
}

/// Ready when it runs, is the pinned version, and was linked against this
/// nightly's LLVM (its ELF names the soname it needs).
fn linker_state(binary: &Path, soname: &str, path: &OsString) -> LinkerState {
    let Ok(bytes) = fs::read(binary) else {
        return LinkerState::Missing;
    };
    if !bytes.windows(soname.len()).any(|window| window == soname.as_bytes()) {
        return LinkerState::Stale(format!("it was built for another LLVM than {soname}"));
    }
    match Command::new(binary).arg("--version").env("PATH", path).output() {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout);
            if version.split_whitespace().nth(1) == Some(BPF_LINKER_VERSION) {
                LinkerState::Ready
            } else {
                LinkerState::Stale(format!("found {}", version.trim()))
            }
        }
        Ok(out) => LinkerState::Stale(format!(
            "`bpf-linker --version` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(error) => LinkerState::Stale(format!("cannot run it: {error}")),
    }
}

/// Mounts tracefs if no tracefs is mounted; tracepoint programs attach
/// through it.
pub(crate) fn ensure_tracefs() -> anyhow::Result<()> {
    if ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"]
        .iter()
        .any(|events| Path::new(events).is_dir())
    {
        say("ok", "tracefs mounted");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "tracefs is not mounted and mounting it needs root; run `sudo mount -t tracefs nodev /sys/kernel/tracing`"
        );
    }
    say("setup", "mounting tracefs (mount -t tracefs nodev /sys/kernel/tracing)");
    run_checked(
        Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]),
        "mount -t tracefs nodev /sys/kernel/tracing",
    )
}

/// Installs Debian packages that provide `commands` when one is missing.
pub(crate) fn ensure_debian_packages(needs: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> =
        needs.iter().filter(|(command, _)| !on_path(command)).map(|&(_, package)| package).collect();
    // Several commands can come from one package (prometheus, promtool).
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        let commands: Vec<&str> = needs.iter().map(|(command, _)| *command).collect();
        say("ok", &format!("{} present", commands.join(", ")));
        return Ok(());
    }
    apt_install(&missing)
}

/// Installs Debian `packages` with apt-get (as root).
pub(crate) fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let list = packages.join(" ");
    if !is_root() || !on_path("apt-get") {
        bail!("missing Debian packages: {list}; install them with `sudo apt-get install {list}`");
    }
    say("setup", &format!("installing Debian packages: {list} (apt-get)"));
    run_checked(Command::new("apt-get").args(["update", "-qq"]), "apt-get update")?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("apt-get install {list}"),
    )
    .with_context(|| format!("cannot install {list}; run `apt-get install {list}`"))
}

/// Installs Python modules the end-to-end tests use (the `import` name and
/// the PyPI package), when `python3` cannot import them.
pub(crate) fn ensure_python_modules(needs: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = needs
        .iter()
        .filter(|(module, _)| {
            !Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        let modules: Vec<&str> = needs.iter().map(|(module, _)| *module).collect();
        say("ok", &format!("python modules {} present", modules.join(", ")));
        return Ok(());
    }
    let list = missing.join(" ");
    say("setup", &format!("installing Python packages: {list} (pip)"));
    run_checked(
        Command::new("python3").args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(&missing),
        &format!("python3 -m pip install {list}"),
    )
    .with_context(|| format!("cannot install {list}; run `python3 -m pip install {list}`"))
}

pub(crate) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn on_path(command: &str) -> bool {
    env::var_os("PATH").is_some_and(|path| env::split_paths(&path).any(|dir| dir.join(command).is_file()))
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run `{program} {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with inherited output; fails if it does not exit 0.
pub(crate) fn run_checked(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("cannot start `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}
