//! Types shared by the kernel programs (`exporter-ebpf`) and the daemon
//! (`kernel-exporter`).
//!
//! Everything here is `#[repr(C)]`, `Copy`, and free of `bool` and implicit
//! padding, because both sides read the same bytes out of BPF maps: the
//! layout *is* the interface. Each shared type's size is asserted at compile
//! time so a change that moves a field breaks the build instead of the
//! numbers. Map names are constants here so the two sides cannot disagree.
//!
//! A collector's layout lives in a module named after the collector.
#![no_std]
#![deny(missing_docs)]

pub mod allowlist;
pub mod block;
pub mod cgroup;
pub mod histogram;
pub mod irq;
pub mod map_updates;
pub mod mm;
pub mod net;
pub mod sched;
pub mod signal;
pub mod syscalls;
pub mod tcp;

/// Implements `aya::Pod` for shared types when the daemon asks for it.
macro_rules! user_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `#[repr(C)]`, `Copy`, has no padding (its
            // size is asserted next to its definition) and every bit pattern
            // is a valid value (it holds only integers).
            unsafe impl aya::Pod for $ty {}
        )*
    };
}
pub(crate) use user_pod;
