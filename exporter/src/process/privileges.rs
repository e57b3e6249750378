//! What the process may do. Loading BPF programs and attaching them to
//! tracepoints needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN on kernels
//! before 5.8); without them every `bpf()` call fails with EPERM, so the
//! daemon checks up front and says so in one line.
//!
//! Once every program is attached and every listener is open, nothing the
//! daemon does needs a privilege: maps are read and updated through the file
//! descriptors it holds (since Linux 6.5 map operations on a held fd need no
//! capability), listeners are open, and configuration files are read as the
//! runtime user. [`drop_privileges`] then switches to `--runtime.user` and
//! drops every capability for good. It runs before any other thread exists:
//! capabilities are per thread, and threads started later inherit the empty
//! sets.
//!
//! Except on kernels before 6.5 with `kernel.unprivileged_bpf_disabled`
//! set (distribution kernels 5.15 and 6.1 ship with it set): there every
//! `bpf()` command, map reads on held descriptors included, fails with
//! EPERM without CAP_BPF (or CAP_SYS_ADMIN), so the daemon keeps CAP_BPF,
//! and nothing else, in its effective and permitted sets
//! ([`maps_need_cap_bpf`]).

use std::{ffi::CString, fs, io};

/// Capability numbers from `linux/capability.h`.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Missing privileges, reported before anything is loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrivilegeError {
    #[error(
        "loading BPF programs needs root or the capabilities CAP_BPF and CAP_PERFMON \
         (effective set is {effective:#x}); run as root or grant them, e.g. systemd's \
         AmbientCapabilities=CAP_BPF CAP_PERFMON"
    )]
    MissingCapabilities { effective: u64 },
    #[error("cannot read the effective capabilities from /proc/self/status: {0}")]
    Unreadable(String),
}

/// The account `--runtime.user` names, looked up at start-up (before
/// anything is loaded, so a typo fails fast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuntimeUser {
    pub(crate) name: String,
    pub(crate) uid: libc::uid_t,
    pub(crate) gid: libc::gid_t,
    /// Supplementary groups of the account, from the group database.
    pub(crate) groups: Vec<libc::gid_t>,
}

/// Failures while giving privileges up; each is fatal: a daemon that meant to
/// drop privileges must not keep serving with them.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DropError {
    #[error("--runtime.user={0}: no such user (check `getent passwd {0}`; a numeric UID or UID:GID needs no entry)")]
    UnknownUser(String),
    #[error("--runtime.user={user}: switching to it needs root (CAP_SETUID and CAP_SETGID): {call} failed: {source}")]
    Switch {
        user: String,
        call: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot drop capabilities: {call} failed: {source}")]
    Capabilities {
        call: &'static str,
        #[source]
        source: io::Error,
    },
}

impl RuntimeUser {
    /// Looks `name` up in the password and group databases. A numeric
    /// `UID` or `UID:GID` with no entry there is taken as it is (group =
    /// UID when not given, no supplementary groups): a `FROM scratch`
    /// container image has no `/etc/passwd`, and Kubernetes' `runAsUser`
    /// is numeric too.
    pub(crate) fn lookup(name: &str) -> Result<Self, DropError> {
        let unknown = || DropError::UnknownUser(name.to_owned());
        let c_name = CString::new(name).map_err(|_| unknown())?;
        let by_name = Self::lookup_name(name, &c_name);
        match (by_name, numeric_ids(name)) {
            (Some(user), _) => Ok(user),
            (None, Some((uid, gid))) => Ok(Self { name: name.to_owned(), uid, gid, groups: Vec::new() }),
            (None, None) => Err(unknown()),
        }
    }

    fn lookup_name(name: &str, c_name: &std::ffi::CStr) -> Option<Self> {
        // SAFETY: `passwd` is plain data (integers and pointers); all-zero
        // is a valid value that getpwnam_r overwrites.
        let mut passwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buffer = vec![0 as libc::c_char; 16 * 1024];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to live memory of the stated size;
        // getpwnam_r fills `passwd` with pointers into `buffer`.
        let rc = unsafe {
            libc::getpwnam_r(c_name.as_ptr(), &raw mut passwd, buffer.as_mut_ptr(), buffer.len(), &raw mut found)
        };
        if rc != 0 || found.is_null() {
            return None;
        }
        let (uid, gid) = (passwd.pw_uid, passwd.pw_gid);
        let mut groups = vec![0 as libc::gid_t; 64];
        loop {
            let mut count = groups.len() as libc::c_int;
            // SAFETY: `groups` has room for `count` gids; getgrouplist
            // writes at most that many and the needed count.
            let rc = unsafe { libc::getgrouplist(c_name.as_ptr(), gid, groups.as_mut_ptr(), &raw mut count) };
            if rc >= 0 {
                groups.truncate(usize::try_from(count).unwrap_or(0));
                break;
            }
            // Too small: `count` now holds the size needed.
            let needed = usize::try_from(count).unwrap_or(0).max(groups.len() * 2);
            if needed > 65_536 {
                groups.clear();
                break;
            }
            groups.resize(needed, 0);
        }
        Some(Self { name: name.to_owned(), uid, gid, groups })
    }
}

/// `UID` or `UID:GID`, both decimal; root (0) is refused: switching to it
/// would be no drop at all.
fn numeric_ids(name: &str) -> Option<(libc::uid_t, libc::gid_t)> {
    let (uid, gid) = name.split_once(':').map_or((name, None), |(uid, gid)| (uid, Some(gid)));
    let parse = |text: &str| {
        (!text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())).then(|| text.parse::<u32>().ok()).flatten()
    };
    let uid = parse(uid)?;
    let gid = match gid {
        Some(gid) => parse(gid)?,
        None => uid,
    };
    (uid != 0 && gid != 0).then_some((uid, gid))
}

/// Why map operations on the descriptors the daemon holds still need
/// CAP_BPF after start-up; `None` when they need no capability.
///
/// `assumed`: a reason given by the caller (the end-to-end tests' hook,
/// `kernel::test_hooks::assume_maps_need_cap_bpf`), taken as it is.
pub(crate) fn maps_need_cap_bpf(assumed: Option<String>) -> Option<String> {
    if assumed.is_some() {
        return assumed;
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = kernel_version(&release);
    if version.is_some_and(|version| version >= (6, 5)) {
        return None;
    }
    // Unreadable: assume the stricter setting, as a kernel without the
    // file (no BPF syscall sysctl) is not one this daemon runs on anyway.
    let disabled =
        fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled").map_or(true, |value| value.trim() != "0");
    let release = release.trim();
    disabled.then(|| match version {
        Some(_) => format!(
            "kernel {release} is older than 6.5 and kernel.unprivileged_bpf_disabled is set, so every bpf() call, \
             map reads included, needs CAP_BPF"
        ),
        None => format!("kernel version {release:?} is unreadable, so map reads may need CAP_BPF"),
    })
}

/// (major, minor) of a kernel release string like `6.1.0-18-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Switches to `user` (when given) and drops every capability from every
/// set, but CAP_BPF when `keep_bpf` (see [`maps_need_cap_bpf`]), then sets
/// no_new_privs. Call with no other thread running.
pub(crate) fn drop_privileges(user: Option<&RuntimeUser>, keep_bpf: bool) -> Result<(), DropError> {
    let capabilities = |call: &'static str| DropError::Capabilities { call, source: io::Error::last_os_error() };
    // The bounding set can only shrink while CAP_SETPCAP is held (root); a
    // daemon started with ambient CAP_BPF and CAP_PERFMON only (the systemd
    // unit) already runs with a bounding set the unit narrowed.
    let last_cap = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse::<libc::c_ulong>().ok())
        .unwrap_or(63);
    for cap in (0..=last_cap).filter(|&cap| !(keep_bpf && cap == libc::c_ulong::from(CAP_BPF))) {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
            return Err(capabilities("prctl(PR_CAPBSET_DROP)"));
        }
    }
    if let Some(user) = user {
        let switch = |call: &'static str| DropError::Switch {
            user: user.name.clone(),
            call,
            source: io::Error::last_os_error(),
        };
        // Without it, leaving uid 0 empties the permitted set, and
        // CAP_BPF could not be kept.
        // SAFETY: prctl with integer arguments only.
        if keep_bpf && unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
            return Err(capabilities("prctl(PR_SET_KEEPCAPS)"));
        }
        // SAFETY: plain syscalls on integers and a live gid slice; glibc
        // applies set*id to every thread (there is only this one).
        unsafe {
            if libc::setgroups(user.groups.len(), user.groups.as_ptr()) != 0 {
                return Err(switch("setgroups"));
            }
            if libc::setresgid(user.gid, user.gid, user.gid) != 0 {
                return Err(switch("setresgid"));
            }
            if libc::setresuid(user.uid, user.uid, user.uid) != 0 {
                return Err(switch("setresuid"));
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) } != 0 {
        return Err(capabilities("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"));
    }
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    if keep_bpf {
        // Capabilities 32 and up are in the second word.
        let bit = 1u32 << (CAP_BPF - 32);
        data[1] = CapData { effective: bit, permitted: bit, inheritable: 0 };
    }
    // SAFETY: capset reads one header and two data words (version 3).
    if unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) } != 0 {
        return Err(capabilities("capset"));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(capabilities("prctl(PR_SET_NO_NEW_PRIVS)"));
    }
    Ok(())
}

/// Fails with one clear line unless the process can load and attach BPF
/// tracepoint programs.
pub(crate) fn ensure_can_load_bpf() -> Result<(), PrivilegeError> {
    let status = fs::read_to_string("/proc/self/status").map_err(|e| PrivilegeError::Unreadable(e.to_string()))?;
    let effective = effective_capabilities(&status)
        .ok_or_else(|| PrivilegeError::Unreadable("no parsable CapEff line".to_owned()))?;
    if can_load_bpf(effective) { Ok(()) } else { Err(PrivilegeError::MissingCapabilities { effective }) }
}

fn can_load_bpf(effective: u64) -> bool {
    let has = |cap: u32| effective & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// The `CapEff:` mask of a `/proc/PID/status` text.
pub(crate) fn effective_capabilities(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_users_need_no_passwd_entry() {
        assert_eq!(numeric_ids("65534"), Some((65534, 65534)));
        assert_eq!(numeric_ids("1000:2000"), Some((1000, 2000)));
        for bad in ["", "0", "0:5", "5:0", "-1", "12a", "1:", ":1", "99999999999", "1:2:3"] {
            assert_eq!(numeric_ids(bad), None, "{bad}");
        }
        let user = RuntimeUser::lookup("4242:4343").unwrap();
        assert_eq!((user.uid, user.gid, user.groups.len()), (4242, 4343, 0));
        // A name in the database wins over its digits; `root` is uid 0 by name.
        assert_eq!(RuntimeUser::lookup("root").unwrap().uid, 0);
        assert!(matches!(RuntimeUser::lookup("no-such-user-here"), Err(DropError::UnknownUser(_))));
    }

    #[test]
    fn parses_cap_eff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        assert_eq!(effective_capabilities(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
    }

    #[test]
    fn looks_users_up() {
        let root = RuntimeUser::lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        let error = RuntimeUser::lookup("no-such-user-kernel-exporter").unwrap_err();
        assert!(error.to_string().contains("no such user"), "{error}");
        assert!(RuntimeUser::lookup("nul\0byte").is_err());
    }

    #[test]
    fn reads_kernel_versions() {
        assert_eq!(kernel_version("6.1.0-18-amd64\n"), Some((6, 1)));
        assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(kernel_version("6.18.0"), Some((6, 18)));
        assert_eq!(kernel_version("junk"), None);
    }

    #[test]
    fn bpf_needs_both_or_sys_admin() {
        assert!(can_load_bpf(1 << CAP_SYS_ADMIN));
        assert!(can_load_bpf((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!can_load_bpf(1 << CAP_BPF));
        assert!(!can_load_bpf(1 << CAP_PERFMON));
        assert!(!can_load_bpf(0));
    }
}
