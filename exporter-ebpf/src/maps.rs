//! The two ways programs touch maps: their own CPU's slot of a per-CPU
//! array, and creating an entry that may fail.
//!
//! Every program goes through these, so the rules are in one place: a
//! per-CPU slot is only ever touched by one program run at a time (a
//! program does not nest in itself on one CPU, and programs sharing a slot
//! bump different fields), and a failed update is never silent.

use aya_ebpf::{EbpfContext, maps::PerCpuArray};
use aya_log_ebpf::warn;
use exporter_common::map_updates::{MapUpdateFailures, UpdatedMap};

/// Bound: one entry per CPU; the `map` label has one value per
/// `UPDATED_MAPS` name.
#[aya_ebpf::macros::map]
static MAP_UPDATE_FAILURES: PerCpuArray<MapUpdateFailures> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's copy of entry 0 of `map`.
#[inline(always)]
pub(crate) fn this_cpu<T>(map: &'static PerCpuArray<T>) -> Option<&'static mut T> {
    // SAFETY: this CPU's slot of a per-CPU map, valid for the program's run;
    // no other run touches it meanwhile (see the module doc).
    map.get_ptr_mut(0).map(|slot| unsafe { &mut *slot })
}

/// Counts a failed update of `map` and logs it with the kernel's error and
/// what the key was. Called on the failure path only: the success path pays
/// nothing for it.
///
/// `name` is `map.name`, passed apart as a literal: inside a constant
/// struct a string is a pointer stored in the object's data, which the
/// loader does not relocate, while a literal at the call site is.
#[inline(always)]
pub(crate) fn update_failed<C: EbpfContext>(
    ctx: &C,
    map: UpdatedMap,
    name: &'static str,
    error: impl Into<i64>,
    key: &'static str,
) {
    let error: i64 = error.into();
    if let Some(failures) = this_cpu(&MAP_UPDATE_FAILURES)
        && let Some(count) = failures.counts.get_mut(map.index as usize)
    {
        *count += 1;
    }
    warn!(ctx, "cannot add a {} to BPF map {}: error {}", key, name, error);
}
