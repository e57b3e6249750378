//! `cargo xtask image`: the container image `kernel-exporter:<version>`,
//! `FROM scratch` with one statically linked binary (musl; the BPF object is
//! embedded in it), built into the local container store.
//!
//! No base image: nothing can be pulled on the project's machines, and the
//! daemon needs nothing but the kernel, so the image has no shell, no libc
//! and no package manager to patch. The container engine is Docker when its
//! daemon answers, otherwise podman (installed from Debian when missing),
//! run with the flags this machine's hybrid cgroups and low hard limits
//! need (see [`Engine`]).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::prereq::{self, Toolchain, say};

/// The target of the static build.
pub(crate) const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// Where the binary lives in the image; the DaemonSet's exec probes name it.
pub(crate) const IMAGE_BINARY: &str = "/kernel-exporter";

/// The image's name in the local store.
pub(crate) fn image_name() -> String {
    format!("kernel-exporter:{}", env!("CARGO_PKG_VERSION"))
}

/// A container engine and the global flags it needs on this machine.
pub(crate) struct Engine {
    pub(crate) program: &'static str,
    /// Before the subcommand.
    pub(crate) global: Vec<String>,
    /// For `run`: explicit limits, since podman's defaults exceed this
    /// machine's hard RLIMIT_NOFILE and RLIMIT_NPROC.
    pub(crate) run_limits: Vec<String>,
}

impl Engine {
    /// Docker if its daemon answers, else podman (installing podman and runc
    /// from Debian when missing).
    pub(crate) fn ensure() -> anyhow::Result<Self> {
        let docker_answers = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .is_ok_and(|out| out.status.success());
        let limits = run_limits();
        if docker_answers {
            say("ok", "container engine: docker (its daemon answers)");
            return Ok(Self { program: "docker", global: Vec::new(), run_limits: limits });
        }
        prereq::ensure_debian_packages(&[("podman", "podman"), ("runc", "runc")])?;
        // crun (podman's default) refuses hybrid cgroups; runc with cgroupfs
        // works on both kinds.
        let global = if Path::new("/sys/fs/cgroup/cgroup.controllers").is_file() {
            Vec::new()
        } else {
            vec!["--runtime".to_owned(), "runc".to_owned(), "--cgroup-manager=cgroupfs".to_owned()]
        };
        say(
            "ok",
            &format!(
                "container engine: podman{}{}",
                if global.is_empty() { String::new() } else { format!(" {}", global.join(" ")) },
                if docker_answers { "" } else { " (no docker daemon answers)" }
            ),
        );
        Ok(Self { program: "podman", global, run_limits: limits })
    }

    pub(crate) fn command(&self) -> Command {
        let mut command = Command::new(self.program);
        command.args(&self.global);
        command
    }
}

/// `--ulimit` flags at this process's hard limits (capped at the values a
/// daemon like this wants), which the container can always be given.
fn run_limits() -> Vec<String> {
    let hard = |resource| {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit.
        if unsafe { libc::getrlimit(resource, &raw mut limit) } == 0 { Some(limit.rlim_max) } else { None }
    };
    let nofile = hard(libc::RLIMIT_NOFILE).unwrap_or(1024).min(65_536);
    let nproc = hard(libc::RLIMIT_NPROC).unwrap_or(1000).min(4096);
    vec![format!("--ulimit=nofile={nofile}:{nofile}"), format!("--ulimit=nproc={nproc}:{nproc}")]
}

/// What `cargo xtask image` made.
pub(crate) struct Built {
    pub(crate) engine: Engine,
    pub(crate) image: String,
    pub(crate) binary: PathBuf,
    /// podman only: its default seccomp profile with `bpf()` allowed to a
    /// holder of CAP_BPF (see [`seccomp_profile`]).
    pub(crate) seccomp: Option<PathBuf>,
}

pub(crate) fn image() -> anyhow::Result<()> {
    let built = build()?;
    let size = image_size(&built)?;
    say("ok", &format!("image {} ({:.1} MB), binary {}", built.image, size as f64 / 1e6, built.binary.display()));
    let seccomp =
        built.seccomp.as_ref().map(|path| format!(" --security-opt=seccomp={}", path.display())).unwrap_or_default();
    println!(
        "xtask: run it with\n  {engine} {global}run -d --name kernel-exporter {limits} \\\n    --cap-drop=ALL --cap-add=BPF \
         --cap-add=PERFMON --read-only --security-opt=no-new-privileges{seccomp} --network=host \\\n    \
         -v /etc/kernel-exporter:/etc/kernel-exporter:ro {image} \\\n    --web.listen-address=:9569 \
         --web.config.file=/etc/kernel-exporter/web-config.yml\n\
         (to leave root as well: --cap-add=SETUID --cap-add=SETGID and --runtime.user=65534; \
         with --collector.cgroup, mount the host's cgroup2 hierarchy read-only too)",
        engine = built.engine.program,
        global = built.engine.global.iter().map(|flag| format!("{flag} ")).collect::<String>(),
        limits = built.engine.run_limits.join(" "),
        image = built.image,
    );
    Ok(())
}

/// Builds the static binary and the image; idempotent (the engine's layer
/// cache makes an unchanged rebuild a no-op).
pub(crate) fn build() -> anyhow::Result<Built> {
    let toolchain = Toolchain::ensure()?;
    let binary = build_static(&toolchain)?;
    let engine = Engine::ensure()?;
    let context = prereq::target_dir().join("image/context");
    let _ = fs::remove_dir_all(&context);
    fs::create_dir_all(&context).with_context(|| format!("cannot create {}", context.display()))?;
    fs::copy(&binary, context.join("kernel-exporter"))
        .with_context(|| format!("cannot copy {} into {}", binary.display(), context.display()))?;
    fs::write(context.join("Containerfile"), containerfile(&revision()))
        .with_context(|| format!("cannot write {}/Containerfile", context.display()))?;
    let image = image_name();
    say("build", &format!("image {image} FROM scratch ({} build)", engine.program));
    prereq::run_checked(
        engine
            .command()
            // --quiet still prints the image id; the line below names it.
            .stdout(std::process::Stdio::null())
            .args(["build", "--quiet", "--file"])
            .arg(context.join("Containerfile"))
            .args(["--tag", &image])
            .arg(&context),
        &format!("{} build --tag {image}", engine.program),
    )?;
    let seccomp = if engine.program == "podman" { Some(seccomp_profile()?) } else { None };
    Ok(Built { engine, image, binary, seccomp })
}

/// The image's size as the engine reports it, in bytes.
pub(crate) fn image_size(built: &Built) -> anyhow::Result<u64> {
    let out = built
        .engine
        .command()
        .args(["image", "inspect", "--format", "{{.Size}}", &built.image])
        .output()
        .context("cannot inspect the image")?;
    String::from_utf8_lossy(&out.stdout).trim().parse().context("the engine printed no image size")
}

/// The daemon built for [`MUSL_TARGET`], checked to be statically linked.
pub(crate) fn build_static(toolchain: &Toolchain) -> anyhow::Result<PathBuf> {
    prereq::ensure_debian_packages(&[("musl-gcc", "musl-tools")])?;
    ensure_rust_target(MUSL_TARGET)?;
    say("build", &format!("kernel-exporter, static (release, {MUSL_TARGET})"));
    let mut cargo = toolchain.cargo();
    cargo
        .args(["build", "--release", "--package", "kernel-exporter", "--target", MUSL_TARGET])
        // ring's C and assembly against musl's headers.
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc");
    prereq::run_checked(&mut cargo, &format!("cargo build --release --target {MUSL_TARGET}"))?;
    let binary = prereq::target_dir().join(MUSL_TARGET).join("release/kernel-exporter");
    let bytes = fs::read(&binary).with_context(|| format!("cannot read {}", binary.display()))?;
    if let Some(interpreter) = elf_interpreter(&bytes)? {
        bail!("{} asks for the dynamic loader {interpreter}: it is not static", binary.display());
    }
    say("ok", &format!("built {} (static, {:.1} MB)", binary.display(), bytes.len() as f64 / 1e6));
    Ok(binary)
}

fn ensure_rust_target(target: &str) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("cannot run `rustup target list --installed`")?;
    if String::from_utf8_lossy(&installed.stdout).lines().any(|line| line.trim() == target) {
        say("ok", &format!("Rust target {target} present"));
        return Ok(());
    }
    say("setup", &format!("adding the Rust target {target} (rustup target add {target})"));
    prereq::run_checked(Command::new("rustup").args(["target", "add", target]), &format!("rustup target add {target}"))
}

/// The `PT_INTERP` of a 64-bit little-endian ELF file, if it has one.
fn elf_interpreter(elf: &[u8]) -> anyhow::Result<Option<String>> {
    let read = |at: usize, len: usize| elf.get(at..at + len).context("truncated ELF file");
    let u16_at = |at| read(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |at| read(at, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize);
    if read(0, 5)? != b"\x7fELF\x02" {
        bail!("not a 64-bit ELF file");
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?);
    for index in 0..phnum {
        let header = phoff + index * phentsize;
        const PT_INTERP: u32 = 3;
        let kind = read(header, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))?;
        if kind == PT_INTERP {
            let (offset, size) = (u64_at(header + 8)?, u64_at(header + 32)?);
            let path = read(offset, size)?;
            return Ok(Some(String::from_utf8_lossy(path).trim_end_matches('\0').to_owned()));
        }
    }
    Ok(None)
}

/// The commit the image is built from, `-dirty` when the tree has changes.
fn revision() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(prereq::workspace_root())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "HEAD"]) else { return "unknown".to_owned() };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|status| !status.is_empty());
    if dirty { format!("{commit}-dirty") } else { commit }
}

/// The image: the binary and labels, nothing else. It starts as root
/// holding only the capabilities the runtime grants (`--cap-add` /
/// the pod's `securityContext`); `--runtime.user` gives up root after
/// attaching.
fn containerfile(revision: &str) -> String {
    let version = env!("CARGO_PKG_VERSION");
    format!(
        "FROM scratch\n\
         COPY kernel-exporter {IMAGE_BINARY}\n\
         LABEL org.opencontainers.image.title=\"kernel-exporter\" \\\n      \
         org.opencontainers.image.description=\"Prometheus exporter for Linux hosts, fed by eBPF programs on kernel tracepoints\" \\\n      \
         org.opencontainers.image.version=\"{version}\" \\\n      \
         org.opencontainers.image.revision=\"{revision}\" \\\n      \
         org.opencontainers.image.source=\"{source}\" \\\n      \
         org.opencontainers.image.licenses=\"{license}\"\n\
         EXPOSE 9569/tcp\n\
         ENTRYPOINT [\"{IMAGE_BINARY}\"]\n",
        source = REPOSITORY,
        license = LICENSE,
    )
}

/// From the workspace's Cargo.toml, kept in step by a unit test.
const REPOSITORY: &str = "https://github.com/kernel-exporter/kernel-exporter";
const LICENSE: &str = "Apache-2.0";

/// podman's default seccomp profile (containers-common) allows `bpf()` only
/// to a holder of CAP_SYS_ADMIN; Docker's and containerd's current ones
/// also allow it to a holder of CAP_BPF, which is all this daemon holds.
/// This writes the installed default with exactly that one rule added, so
/// the container keeps every other restriction of the default.
pub(crate) fn seccomp_profile() -> anyhow::Result<PathBuf> {
    let default = Path::new("/usr/share/containers/seccomp.json");
    let text = fs::read_to_string(default)
        .with_context(|| format!("cannot read podman's default profile {}", default.display()))?;
    let mut profile: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", default.display()))?;
    let rules = profile
        .get_mut("syscalls")
        .and_then(serde_json::Value::as_array_mut)
        .with_context(|| format!("{} has no syscalls list", default.display()))?;
    // Every rule naming bpf() loses it; two rules then allow it, one per
    // capability (a rule's `includes.caps` must all be held).
    for rule in rules.iter_mut() {
        if let Some(names) = rule.get_mut("names").and_then(serde_json::Value::as_array_mut) {
            names.retain(|name| name != "bpf");
        }
    }
    rules.retain(|rule| rule.get("names").and_then(serde_json::Value::as_array).is_none_or(|names| !names.is_empty()));
    for cap in ["CAP_BPF", "CAP_SYS_ADMIN"] {
        rules.push(serde_json::json!({"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}}));
    }
    let path = prereq::target_dir().join("image/seccomp-bpf.json");
    fs::write(&path, serde_json::to_string_pretty(&profile)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    say("ok", &format!("seccomp profile for podman: {} (its default plus bpf() for CAP_BPF)", path.display()));
    Ok(path)
}

/// Where a test or an operator finds the image's files.
pub(crate) fn env_for_tests(built: &Built, command: &mut Command) {
    command
        .env("KERNEL_EXPORTER_IMAGE", &built.image)
        .env("KERNEL_EXPORTER_STATIC_BIN", &built.binary)
        .env("KERNEL_EXPORTER_ENGINE", built.engine.program)
        .env("KERNEL_EXPORTER_ENGINE_GLOBAL", built.engine.global.join(" "))
        .env("KERNEL_EXPORTER_ENGINE_LIMITS", built.engine.run_limits.join(" "));
    if let Some(seccomp) = &built.seccomp {
        command.env("KERNEL_EXPORTER_SECCOMP", seccomp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_workspace() {
        let manifest = include_str!("../../Cargo.toml");
        assert!(manifest.contains(&format!("repository = \"{REPOSITORY}\"")), "Cargo.toml's repository changed");
        assert!(manifest.contains(&format!("license = \"{LICENSE}\"")), "Cargo.toml's license changed");
        let file = containerfile("abc123");
        assert!(file.starts_with("FROM scratch\n"));
        for label in ["version=\"0.1.0\"", "revision=\"abc123\"", "source=\"https://"] {
            assert!(file.contains(&format!("org.opencontainers.image.{label}")), "{label} in\n{file}");
        }
    }

    #[test]
    fn finds_the_dynamic_loader_of_this_program() {
        let own = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(elf_interpreter(&own).unwrap().is_some_and(|path| path.contains("ld-linux")));
        assert!(elf_interpreter(b"not elf").is_err());
    }
}
