//! kernel-exporter's BPF programs, one module per collector.
//!
//! Every program follows the same rules: count into per-CPU maps (no atomics,
//! no locks, no shared cache lines on the hot path), no unbounded loops, no
//! helper calls that can sleep, and every map has a fixed size bound written
//! next to it. The daemon reads the maps at scrape time.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod allowlist;
#[cfg(target_arch = "bpf")]
mod block;
#[cfg(target_arch = "bpf")]
mod cgroup;
#[cfg(target_arch = "bpf")]
mod irq;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod mm;
#[cfg(target_arch = "bpf")]
mod net;
#[cfg(target_arch = "bpf")]
mod sched;
#[cfg(target_arch = "bpf")]
mod signal;
#[cfg(target_arch = "bpf")]
mod syscalls;
#[cfg(target_arch = "bpf")]
mod tcp;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; there is nothing
    // to unwind to in the kernel.
    loop {}
}

/// Tracepoints and the helpers used here are exported to GPL programs only.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// The BPF crate has nothing to run on the host; this keeps host-target
/// builds of the whole workspace (`cargo clippy --workspace`) compiling.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
