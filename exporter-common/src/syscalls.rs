//! The `syscalls` collector's map layout.
//!
//! Calls and errors of every syscall number live in one per-CPU array entry,
//! so the daemon reads the whole table of all CPUs with one map lookup.

/// Per-CPU array of [`SyscallCounts`], one entry.
///
/// Bound: the `syscall` label takes at most [`MAX_SYSCALLS`] values (one per
/// syscall number below it); higher numbers are not counted.
pub const SYSCALL_COUNTS_MAP: &str = "SYSCALL_COUNTS";

/// Syscall numbers counted: `0..MAX_SYSCALLS`. Every architecture's table
/// ends below 512 today (x86_64 and aarch64 stop at 469).
pub const MAX_SYSCALLS: usize = 512;

/// The range of return values that are errors: `-MAX_ERRNO..=-1`, the
/// kernel's `IS_ERR_VALUE` convention. Other negative returns (none of the
/// common syscalls has one) are results, not errors.
pub const MAX_ERRNO: i64 = 4095;

/// Names of the kernel member offsets the daemon writes in before load.
pub mod offsets {
    /// The syscall number in `struct pt_regs`.
    pub const PT_REGS_SYSCALL_NR: &str = "PT_REGS_SYSCALL_NR";
}

/// Per-syscall-number counters of one CPU (8 KiB).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallCounts {
    /// Entries into syscall `nr` (`raw_syscalls/sys_enter`), so calls that
    /// never return (`exit`, `exit_group`, a successful `execve` of a
    /// 32-bit image) are counted too.
    pub calls: [u64; MAX_SYSCALLS],
    /// Returns of syscall `nr` with an error (`raw_syscalls/sys_exit`).
    pub errors: [u64; MAX_SYSCALLS],
}

const _: () = assert!(size_of::<SyscallCounts>() == 2 * MAX_SYSCALLS * 8);

impl Default for SyscallCounts {
    fn default() -> Self {
        Self { calls: [0; MAX_SYSCALLS], errors: [0; MAX_SYSCALLS] }
    }
}

impl SyscallCounts {
    /// Adds another CPU's counters to these.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.calls.iter_mut().zip(other.calls.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
    }
}

crate::user_pod!(SyscallCounts);
