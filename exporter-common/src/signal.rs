//! The `signal` collector's map layout.
//!
//! One per-CPU array entry holds a counter per signal number, so the kernel
//! side bumps its own CPU's copy and the daemon reads every signal of every
//! CPU with one map lookup.

/// Highest signal number Linux has on every architecture (`_NSIG` = 64).
pub const MAX_SIGNAL: usize = 64;

/// Per-CPU array of [`SignalCounts`], one entry.
///
/// Bound: the `signal` label takes at most [`MAX_SIGNAL`] values, one per
/// signal number `1..=MAX_SIGNAL`; any other number is not counted.
pub const SIGNALS_GENERATED_MAP: &str = "SIGNALS_GENERATED";

/// Number of entries in [`SIGNALS_GENERATED_MAP`].
pub const SIGNALS_GENERATED_ENTRIES: u32 = 1;

/// Signals generated on one CPU since the programs were attached, indexed
/// by signal number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalCounts {
    /// `generated[sig]`: `signal/signal_generate` events for signal `sig`.
    /// Index 0 (no signal has that number) stays 0; it is there so the
    /// signal number is the index, with no arithmetic the verifier must
    /// follow.
    pub generated: [u64; MAX_SIGNAL + 1],
}

const _: () = assert!(size_of::<SignalCounts>() == (MAX_SIGNAL + 1) * 8);

impl Default for SignalCounts {
    fn default() -> Self {
        Self { generated: [0; MAX_SIGNAL + 1] }
    }
}

impl SignalCounts {
    /// Adds another CPU's counts to these, wrapping as the kernel's own
    /// counters do.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.generated.iter_mut().zip(other.generated.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
    }
}

crate::user_pod!(SignalCounts);
