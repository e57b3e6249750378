//! A Debian root filesystem that boots a real systemd as PID 1 under
//! `systemd-nspawn`: the deployment tests install the unit into it with
//! `cargo xtask install --root` and drive it with `systemctl`.
//!
//! Made once with `debootstrap` from Debian's packages and kept under
//! `target/deploy/`, named after what it is made of, so a change of suite or
//! packages makes a new one and an interrupted build is never used (the
//! tree is renamed into place only when complete). The tests never change
//! it: each boots an overlay of it.

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::prereq::{self, say};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// systemd as PID 1, and D-Bus for `systemctl` and `systemd-analyze`.
const PACKAGES: &str = "systemd,systemd-sysv,dbus";

/// The cached root, made when missing.
pub(crate) fn ensure() -> anyhow::Result<PathBuf> {
    prereq::ensure_debian_packages(&[("debootstrap", "debootstrap"), ("systemd-nspawn", "systemd-container")])?;
    let key = format!("debootstrap --variant=minbase --include={PACKAGES} {SUITE} {MIRROR}");
    // A short stable name: FNV-1a of the recipe.
    let hash = key
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3));
    let deploy = prereq::target_dir().join("deploy");
    let root = deploy.join(format!("{SUITE}-systemd-{hash:016x}"));
    let recipe = root.join("etc/kernel-exporter-test-root");
    if fs::read_to_string(&recipe).is_ok_and(|text| text.trim() == key) {
        say("ok", &format!("Debian {SUITE} root with systemd cached in {}", root.display()));
        return Ok(root);
    }
    let staging = deploy.join(format!(".{SUITE}-systemd-{hash:016x}.partial"));
    let _ = fs::remove_dir_all(&staging);
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&deploy).with_context(|| format!("cannot create {}", deploy.display()))?;
    say("setup", &format!("making a Debian {SUITE} root with systemd ({key}; about two minutes)"));
    prereq::run_checked(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={PACKAGES}"), SUITE])
            .arg(&staging)
            .arg(MIRROR),
        "debootstrap",
    )?;
    // No console login to wait for: the tests talk to it with systemctl.
    let _ = fs::remove_file(staging.join("etc/systemd/system/getty.target.wants/getty@tty1.service"));
    fs::write(staging.join("etc/kernel-exporter-test-root"), format!("{key}\n"))
        .context("cannot mark the root complete")?;
    fs::rename(&staging, &root).with_context(|| format!("cannot move {} to {}", staging.display(), root.display()))?;
    say("ok", &format!("Debian {SUITE} root with systemd made in {}", root.display()));
    Ok(root)
}
