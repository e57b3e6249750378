//! `cargo xtask install`: puts the release binary, the systemd unit, the
//! example web config and the system user in place, idempotently.
//!
//! Each step prints one line: what it did, that it was already in place, or
//! (with `--dry-run`) what it would do. `--root DIR` installs into another
//! root (an image being built, or a test's temporary folder): every path is
//! taken inside it, and the user is created in its `etc/passwd` by
//! `useradd --root`. The unit and the example config are compiled into this
//! program from `deploy/`, so what is installed is what the tests checked.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{PermissionsExt as _, chown},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::prereq::{self, Toolchain, say};

/// The unit as shipped; its `ExecStart` names [`SHIPPED_BINARY`].
const UNIT: &str = include_str!("../../deploy/kernel-exporter.service");
/// Installed, not enabled: socket activation is the operator's choice (the
/// file says how).
const SOCKET_UNIT: &str = include_str!("../../deploy/kernel-exporter.socket");
const WEB_CONFIG: &str = include_str!("../../deploy/web-config.yml");
const SHIPPED_BINARY: &str = "/usr/local/bin/kernel-exporter";

/// The dedicated system user (and group) the service runs as.
const USER: &str = "kernel-exporter";
const UNIT_PATH: &str = "etc/systemd/system/kernel-exporter.service";
const SOCKET_UNIT_PATH: &str = "etc/systemd/system/kernel-exporter.socket";
const CONFIG_DIR: &str = "etc/kernel-exporter";
const CONFIG_FILE: &str = "web-config.yml";

/// What `cargo xtask install` was asked to do.
pub(crate) struct Options {
    /// Where the binary goes on the target system: `<prefix>/bin`.
    pub(crate) prefix: PathBuf,
    /// The target system's root; `/` is this machine.
    pub(crate) root: PathBuf,
    /// An already built daemon instead of a release build.
    pub(crate) binary: Option<PathBuf>,
    pub(crate) dry_run: bool,
}

pub(crate) fn install(options: &Options) -> anyhow::Result<()> {
    if !options.prefix.is_absolute() {
        bail!("--prefix must be an absolute path on the target system, not {}", options.prefix.display());
    }
    if !options.dry_run && !prereq::is_root() {
        bail!(
            "installing writes under /etc and creates a system user, which needs root; \
             run `sudo -E env PATH=\"$PATH\" cargo xtask install` (or add --dry-run to see the steps)"
        );
    }
    let built = match &options.binary {
        Some(binary) => {
            if !binary.is_file() {
                bail!("--binary {} does not exist", binary.display());
            }
            binary.clone()
        }
        None => Toolchain::ensure()?.build(true)?,
    };
    // useradd --root wants an absolute path; a missing root is a typo, not
    // something to create.
    let root = fs::canonicalize(&options.root)
        .with_context(|| format!("--root {} is not an existing folder", options.root.display()))?;
    let target = Target { root, dry_run: options.dry_run };

    target.ensure_user()?;
    let binary = options.prefix.join("bin/kernel-exporter");
    let binary_bytes = fs::read(&built).with_context(|| format!("cannot read {}", built.display()))?;
    target.put_file(&binary, &binary_bytes, 0o755, None, Overwrite::IfDifferent)?;
    let unit = unit_for(&binary)?;
    let unit_changed = target.put_file(
        Path::new("/").join(UNIT_PATH).as_path(),
        unit.as_bytes(),
        0o644,
        None,
        Overwrite::IfDifferent,
    )?;
    let socket_changed = target.put_file(
        Path::new("/").join(SOCKET_UNIT_PATH).as_path(),
        SOCKET_UNIT.as_bytes(),
        0o644,
        None,
        Overwrite::IfDifferent,
    )?;
    // The config may hold secrets (users' hashes, key paths): readable by the
    // service's group, nobody else.
    let config_dir = Path::new("/").join(CONFIG_DIR);
    target.ensure_dir(&config_dir, 0o750, Some(USER))?;
    target.put_file(&config_dir.join(CONFIG_FILE), WEB_CONFIG.as_bytes(), 0o640, Some(USER), Overwrite::Never)?;
    target.reload_systemd(unit_changed || socket_changed)?;
    Ok(())
}

/// The shipped unit with `ExecStart` pointing at `binary`; the rest of the
/// command line stays as written.
fn unit_for(binary: &Path) -> anyhow::Result<String> {
    let binary = binary.to_str().context("the binary's path is not UTF-8")?;
    let mut replaced = 0;
    let mut unit = String::with_capacity(UNIT.len());
    for line in UNIT.lines() {
        match line.strip_prefix("ExecStart=").and_then(|command| command.strip_prefix(SHIPPED_BINARY)) {
            Some(args) => {
                replaced += 1;
                unit.push_str(&format!("ExecStart={binary}{args}"));
            }
            None => unit.push_str(line),
        }
        unit.push('\n');
    }
    if replaced != 1 {
        bail!("deploy/kernel-exporter.service must have one ExecStart={SHIPPED_BINARY} line, found {replaced}");
    }
    Ok(unit)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Overwrite {
    /// Ours (the binary, the unit): replaced when it differs.
    IfDifferent,
    /// The operator's (the web config): created once, then never touched.
    Never,
}

/// The system being installed into.
struct Target {
    root: PathBuf,
    dry_run: bool,
}

impl Target {
    /// `path` (absolute on the target system) as a path on this machine.
    fn host(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    fn is_this_machine(&self) -> bool {
        self.root == Path::new("/")
    }

    /// `getent` on this machine (users may come from NSS, not only
    /// /etc/passwd); the target's own files under another root.
    fn lookup(&self, database: &str, name: &str) -> anyhow::Result<Option<u32>> {
        if self.is_this_machine() {
            let out = Command::new("getent")
                .args([database, name])
                .output()
                .with_context(|| format!("cannot run `getent {database} {name}`"))?;
            // Exit 2: not found; anything else that is not 0 is a failure.
            return match out.status.code() {
                Some(0) => Ok(Some(third_field(&String::from_utf8_lossy(&out.stdout), database)?)),
                Some(2) => Ok(None),
                _ => bail!("`getent {database} {name}` failed ({})", out.status),
            };
        }
        let file = self.host(&Path::new("/etc").join(database));
        let text = match fs::read_to_string(&file) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("cannot read {}", file.display())),
        };
        text.lines()
            .find(|line| line.split(':').next() == Some(name))
            .map(|line| third_field(line, database))
            .transpose()
    }

    fn ensure_user(&self) -> anyhow::Result<()> {
        let where_ = if self.is_this_machine() { String::new() } else { format!(" in {}", self.root.display()) };
        if let Some(uid) = self.lookup("passwd", USER)? {
            say("ok", &format!("system user {USER} (uid {uid}) already in place{where_}"));
            return Ok(());
        }
        let mut useradd = Command::new("useradd");
        if !self.is_this_machine() {
            useradd.arg("--root").arg(&self.root);
        }
        useradd.args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "kernel-exporter",
            USER,
        ]);
        let shown = format!("{useradd:?}").replace('"', "");
        if self.dry_run {
            say("would", &format!("create the system user {USER}{where_}: {shown}"));
            return Ok(());
        }
        say("setup", &format!("creating the system user {USER}{where_}: {shown}"));
        prereq::run_checked(&mut useradd, "useradd")
            .with_context(|| format!("cannot create the system user {USER}; run `{shown}`"))
    }

    /// The group's id, or `None` in a dry run that has not created it yet.
    fn gid(&self, group: &str) -> anyhow::Result<Option<u32>> {
        match self.lookup("group", group)? {
            Some(gid) => Ok(Some(gid)),
            None if self.dry_run => Ok(None),
            None => bail!("the group {group} does not exist after creating the user {USER}"),
        }
    }

    fn ensure_dir(&self, dir: &Path, mode: u32, group: Option<&str>) -> anyhow::Result<()> {
        let host = self.host(dir);
        let owner = group.map_or_else(String::new, |group| format!(", root:{group}"));
        if host.is_dir() {
            say("ok", &format!("{} already in place", host.display()));
            return Ok(());
        }
        if self.dry_run {
            say("would", &format!("create {} (mode {mode:o}{owner})", host.display()));
            return Ok(());
        }
        fs::create_dir_all(&host).with_context(|| format!("cannot create {}", host.display()))?;
        self.set_owner_and_mode(&host, mode, group)?;
        say("setup", &format!("created {} (mode {mode:o}{owner})", host.display()));
        Ok(())
    }

    /// Writes `bytes` to `path` (absolute on the target) unless the same
    /// bytes are already there; returns whether it wrote (or would write).
    fn put_file(
        &self,
        path: &Path,
        bytes: &[u8],
        mode: u32,
        group: Option<&str>,
        overwrite: Overwrite,
    ) -> anyhow::Result<bool> {
        let host = self.host(path);
        let owner = group.map_or_else(String::new, |group| format!(", root:{group}"));
        let existing = match fs::read(&host) {
            Ok(existing) => Some(existing),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(error).with_context(|| format!("cannot read {}", host.display())),
        };
        let (verb, done) = match (&existing, overwrite) {
            (Some(existing), _) if existing == bytes => {
                say("ok", &format!("{} already in place", host.display()));
                return Ok(false);
            }
            (Some(_), Overwrite::Never) => {
                say("ok", &format!("{} exists and is kept as it is (not overwritten)", host.display()));
                return Ok(false);
            }
            (Some(_), Overwrite::IfDifferent) => ("replace", "replaced"),
            (None, _) => ("install", "installed"),
        };
        if self.dry_run {
            say("would", &format!("{verb} {} (mode {mode:o}{owner})", host.display()));
            return Ok(true);
        }
        let dir = host.parent().context("an installed file has a parent folder")?;
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // A new file renamed over the old one: a running binary is replaced
        // without "text file busy", and nobody ever reads half a file.
        let file_name = host.file_name().and_then(|name| name.to_str()).context("file name is UTF-8")?;
        let staging = dir.join(format!(".{file_name}.xtask-install"));
        let mut file = fs::File::create(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", staging.display()))?;
        drop(file);
        self.set_owner_and_mode(&staging, mode, group)?;
        fs::rename(&staging, &host)
            .with_context(|| format!("cannot move {} to {}", staging.display(), host.display()))?;
        say("setup", &format!("{done} {} (mode {mode:o}{owner})", host.display()));
        Ok(true)
    }

    fn set_owner_and_mode(&self, path: &Path, mode: u32, group: Option<&str>) -> anyhow::Result<()> {
        let gid = match group {
            Some(group) => self.gid(group)?,
            None => Some(0),
        };
        chown(path, Some(0), gid).with_context(|| format!("cannot change the owner of {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))
    }

    /// Tells a running systemd about a new unit; says how to start it.
    fn reload_systemd(&self, unit_changed: bool) -> anyhow::Result<()> {
        let running = self.is_this_machine() && Path::new("/run/systemd/system").is_dir();
        if !running {
            say("ok", "no systemd running on the target; enable with `systemctl enable --now kernel-exporter` there");
            return Ok(());
        }
        if unit_changed {
            if self.dry_run {
                say("would", "run systemctl daemon-reload");
            } else {
                say("setup", "systemctl daemon-reload");
                prereq::run_checked(Command::new("systemctl").arg("daemon-reload"), "systemctl daemon-reload")?;
            }
        }
        say(
            "ok",
            "start with `systemctl enable --now kernel-exporter`; after an upgrade, `systemctl restart kernel-exporter`",
        );
        Ok(())
    }
}

/// The id in a `passwd` or `group` line (`name:x:ID:...`).
fn third_field(line: &str, database: &str) -> anyhow::Result<u32> {
    line.trim()
        .split(':')
        .nth(2)
        .and_then(|id| id.parse().ok())
        .with_context(|| format!("malformed {database} entry {:?}", line.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_runs_the_installed_binary() {
        let unit = unit_for(Path::new("/opt/ke/bin/kernel-exporter")).unwrap();
        let exec: Vec<&str> = unit.lines().filter(|line| line.starts_with("ExecStart=")).collect();
        assert_eq!(
            exec,
            ["ExecStart=/opt/ke/bin/kernel-exporter --web.config.file=/etc/kernel-exporter/web-config.yml"]
        );
        // Everything else as shipped.
        assert_eq!(unit.lines().count(), UNIT.lines().count());
        assert_eq!(unit_for(Path::new(SHIPPED_BINARY)).unwrap(), UNIT);
    }

    #[test]
    fn ids_come_from_the_third_field() {
        assert_eq!(third_field("kernel-exporter:x:999:999::/nonexistent:/usr/sbin/nologin\n", "passwd").unwrap(), 999);
        assert_eq!(third_field("kernel-exporter:x:998:", "group").unwrap(), 998);
        assert!(third_field("kernel-exporter:x", "group").is_err());
    }

    #[test]
    fn paths_are_taken_inside_the_root() {
        let target = Target { root: PathBuf::from("/tmp/image"), dry_run: true };
        assert_eq!(target.host(Path::new("/etc/kernel-exporter")), Path::new("/tmp/image/etc/kernel-exporter"));
        let this = Target { root: PathBuf::from("/"), dry_run: true };
        assert_eq!(this.host(Path::new("/usr/local/bin/x")), Path::new("/usr/local/bin/x"));
    }
}
