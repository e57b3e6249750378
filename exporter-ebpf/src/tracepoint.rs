//! Reading fields of classic tracepoint records.
//!
//! Field offsets are globals in the object: the daemon reads each one from
//! the running kernel's tracefs `format` file and writes it in before
//! loading, so a kernel that moves a field gets the right offset instead of
//! garbage. The defaults are the layout of current kernels.

use aya_ebpf::programs::TracePointContext;

/// Declares a field-offset global the daemon overwrites at load time.
macro_rules! field_offset {
    ($(#[$doc:meta])* $name:ident = $default:expr) => {
        $(#[$doc])*
        #[unsafe(no_mangle)]
        static $name: u32 = $default;
    };
}
pub(crate) use field_offset;

/// Reads a `T` at the offset stored in `offset` (a [`field_offset!`] global).
#[inline(always)]
pub(crate) fn read_field<T>(ctx: &TracePointContext, offset: &u32) -> Option<T> {
    // SAFETY: volatile so the compiler reads the loaded value instead of
    // folding in the default; the global is a plain u32.
    let offset = unsafe { core::ptr::read_volatile(offset) };
    // SAFETY: `read_at` is a bounds-checked bpf_probe_read of the record;
    // any T of plain integers is valid for any bytes.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}
