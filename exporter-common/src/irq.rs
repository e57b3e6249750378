//! The `irq` collector's map layout.
//!
//! Hard-interrupt and softirq counters and softirq time share one per-CPU
//! array slot, so the kernel side writes its own CPU's copy (no atomics) and
//! the daemon reads all of it, every CPU, with one map lookup.

/// Number of softirq vectors (the kernel's `NR_SOFTIRQS`, stable since
/// Linux 4.1): `HI` to `RCU`, the rows of `/proc/softirqs`.
pub const NR_SOFTIRQS: usize = 10;

/// Per-CPU array of [`IrqCounters`], one entry.
///
/// Bound: [`IRQ_COUNTERS_ENTRIES`] entry per CPU. The `vector` label takes
/// at most [`NR_SOFTIRQS`] values, one per array index; a vector number at
/// or past it (a future kernel's new vector) is not counted.
pub const IRQ_COUNTERS_MAP: &str = "IRQ_COUNTERS";

/// Number of entries in [`IRQ_COUNTERS_MAP`].
pub const IRQ_COUNTERS_ENTRIES: u32 = 1;

/// Per-CPU array of [`SoftirqEntered`], one entry: the softirq running on
/// this CPU and since when. Softirqs do not nest on one CPU, so one slot per
/// CPU is enough. Kernel-side only; no labels.
pub const SOFTIRQ_ENTERED_MAP: &str = "SOFTIRQ_ENTERED";

/// Interrupt counters of one CPU since the programs were attached.
///
/// Counters only grow; the daemon sums the CPUs' copies at scrape time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqCounters {
    /// `irq/irq_handler_entry` events: a device interrupt handler ran (once
    /// per handler, so a shared line with two handlers counts twice).
    pub hardirqs: u64,
    /// `irq/softirq_entry` events per vector, as in `/proc/softirqs`.
    pub softirqs: [u64; NR_SOFTIRQS],
    /// Nanoseconds from `softirq_entry` to `softirq_exit`, per vector.
    pub softirq_ns: [u64; NR_SOFTIRQS],
}

const _: () = assert!(size_of::<IrqCounters>() == (1 + 2 * NR_SOFTIRQS) * 8);

impl Default for IrqCounters {
    fn default() -> Self {
        Self { hardirqs: 0, softirqs: [0; NR_SOFTIRQS], softirq_ns: [0; NR_SOFTIRQS] }
    }
}

impl IrqCounters {
    /// Adds another CPU's counters to these, wrapping as the kernel's own
    /// counters do.
    pub fn merge(&mut self, other: &Self) {
        self.hardirqs = self.hardirqs.wrapping_add(other.hardirqs);
        for (mine, theirs) in self.softirqs.iter_mut().zip(other.softirqs.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
        for (mine, theirs) in self.softirq_ns.iter_mut().zip(other.softirq_ns.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
    }
}

/// The softirq running on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoftirqEntered {
    /// `bpf_ktime_get_ns()` at its `softirq_entry`, or 0 when none runs (or
    /// its entry was not seen).
    pub since_ns: u64,
    /// Its vector; the exit must name the same one to be timed, so a missed
    /// event never charges one vector with another's time.
    pub vec: u32,
    /// Explicit padding to 8-byte alignment.
    pub _padding: u32,
}

const _: () = assert!(size_of::<SoftirqEntered>() == 16);

crate::user_pod!(IrqCounters);
