//! What the process may do. Loading BPF programs and attaching them to
//! tracepoints needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN on kernels
//! before 5.8); without them every `bpf()` call fails with EPERM, so the
//! daemon checks up front and says so in one line.

use std::fs;

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
    fn parses_cap_eff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        assert_eq!(effective_capabilities(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
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
