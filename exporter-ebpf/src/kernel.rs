//! Reading members of the kernel structs raw tracepoints pass.
//!
//! Raw tracepoints hand programs the tracepoint's own arguments (pointers
//! to `task_struct`, `pt_regs`, ...) instead of a copied record: cheaper per
//! event, and each program has its own recursion guard, so a program is
//! never skipped because another BPF program or a map syscall is active on
//! the CPU (classic tracepoint programs are, silently). Member offsets
//! differ between kernels, so they are globals the daemon fills in from the
//! running kernel's BTF before loading. The defaults are placeholders.

use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::map, maps::PerCpuArray};

/// Declares a member-offset global the daemon overwrites at load time.
macro_rules! kernel_offset {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[unsafe(no_mangle)]
        static $name: u32 = 0;
    };
}
pub(crate) use kernel_offset;

/// Reads a `T` at `base` plus the offset held in `offset` (a
/// [`kernel_offset!`] global).
#[inline(always)]
pub(crate) fn read_member<T>(base: u64, offset: &u32) -> Option<T> {
    // SAFETY: volatile so the compiler reads the loaded value instead of
    // folding in the default.
    let offset = unsafe { core::ptr::read_volatile(offset) };
    if base == 0 {
        return None;
    }
    let address = base.wrapping_add(u64::from(offset)) as *const T;
    // SAFETY: bpf_probe_read_kernel checks the address; any T of plain
    // integers is valid for any bytes.
    unsafe { bpf_probe_read_kernel(address) }.ok()
}

/// Loads a `T` at `base` plus the offset held in `offset` (a
/// [`kernel_offset!`] global), where `base` is a pointer whose BTF type the
/// verifier knows: an argument of a BTF tracepoint, or a pointer member
/// loaded from one. The verifier checks the access against that type and
/// the JIT emits one plain load that cannot fault (a bad address reads as
/// 0), instead of a `bpf_probe_read_kernel` call.
///
/// # Safety
///
/// `base` must be such a BTF-typed pointer and the offset that of a member
/// of its type of `T`'s size; the verifier refuses the program otherwise.
#[inline(always)]
pub(crate) unsafe fn load_member<T: Copy>(base: *const u8, offset: &u32) -> T {
    // SAFETY: volatile so the compiler reads the loaded (frozen, so known to
    // the verifier) value instead of folding in the default.
    let offset = unsafe { core::ptr::read_volatile(offset) };
    // SAFETY: see the function's contract; volatile keeps it one load of
    // exactly `T`'s size, which is what the verifier matches to the member.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize).cast::<T>()) }
}

/// Inode number of the exporter's network namespace, written in by the
/// daemon (`exporter_common::net::NETNS_INUM_GLOBAL`). Network statistics
/// are those of this namespace only, as `/proc/net` shows them to the
/// exporter.
#[unsafe(no_mangle)]
static NETNS_INUM: u32 = 0;

kernel_offset!(
    /// Offset of `ns.inum` in `struct net`; a collector that calls
    /// [`in_exporter_netns`] lists it in its offsets.
    NET_NS_INUM
);

/// Address of the exporter's `struct net`, learned on each CPU at the first
/// packet or socket whose namespace has [`NETNS_INUM`]: after that, telling
/// a namespace apart is a comparison instead of a kernel memory read (a
/// helper call, tens of nanoseconds, on every packet). The namespace lives
/// as long as the exporter is in it, so its address cannot be reused.
///
/// Bound: one entry per CPU; nothing in it becomes a label.
#[map]
static OWN_NETNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Whether the `struct net` at `net` is the exporter's network namespace.
#[inline(always)]
pub(crate) fn in_exporter_netns(net: u64) -> bool {
    if net == 0 {
        return false;
    }
    let known = OWN_NETNS.get_ptr_mut(0);
    if let Some(known) = known {
        // SAFETY: this CPU's slot of a per-CPU map, valid for the program's
        // run; every writer stores the same address.
        let address = unsafe { *known };
        if address != 0 {
            return address == net;
        }
    }
    // SAFETY: volatile so the loaded value is read, not the default.
    let own = unsafe { core::ptr::read_volatile(&NETNS_INUM) };
    let ours = own != 0 && read_member::<u32>(net, &NET_NS_INUM) == Some(own);
    if ours && let Some(known) = known {
        // SAFETY: as above.
        unsafe { *known = net };
    }
    ours
}
