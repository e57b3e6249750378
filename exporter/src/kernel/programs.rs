//! What the loader needs to know about one collector's programs, and why
//! they may not work: the tracepoints to attach, the kernel struct members
//! and values to write into the object before load, and the errors.
//!
//! A collector, seen from here, is a named group of programs and maps; what
//! its maps become (metric families) is `collectors`' business, not ours.

use aya::maps::MapError;

use super::btf::Btf;

/// One collector's programs, as the loader sees them. Implemented by the
/// collectors' registry entries, so everything collector-specific reaches
/// the loader through them and the loader never branches on a name.
pub(crate) trait Programs {
    /// For log lines and for the test hooks.
    fn name(&self) -> &'static str;
    /// The programs to load and attach, all or nothing.
    fn tracepoints(&self) -> &'static [Tracepoint];
    /// Kernel struct members whose offsets the programs read from globals.
    fn offsets(&self) -> &'static [KernelOffset];
    /// Values from the kernel's BTF other than member offsets (flag values
    /// that moved between kernels) that the programs read from globals, as
    /// `(global, value)`; written in before load like the offsets.
    fn kernel_values(&self, btf: &Btf) -> Result<Vec<(&'static str, u32)>, CollectorError>;
}

/// A tracepoint program and where it attaches.
#[derive(Debug)]
pub(crate) struct Tracepoint {
    /// The program's function name in `exporter-ebpf`.
    pub(crate) program: &'static str,
    pub(crate) category: &'static str,
    pub(crate) name: &'static str,
    pub(crate) kind: TracepointKind,
}

/// How a program attaches to its tracepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TracepointKind {
    /// A raw tracepoint: arguments as plain numbers, struct members read
    /// with `bpf_probe_read_kernel`. Needs nothing but the name.
    Raw,
    /// A BTF tracepoint (`tp_btf`): the verifier knows the arguments'
    /// types, so members are read with plain loads (tens of nanoseconds
    /// cheaper per read). Loading needs the kernel's BTF id of the
    /// tracepoint, which the daemon's own BTF parser finds. For hot paths.
    Btf,
}

impl Tracepoint {
    pub(crate) const fn raw(program: &'static str, category: &'static str, name: &'static str) -> Self {
        Self { program, category, name, kind: TracepointKind::Raw }
    }

    pub(crate) const fn btf(program: &'static str, category: &'static str, name: &'static str) -> Self {
        Self { program, category, name, kind: TracepointKind::Btf }
    }
}

/// A kernel struct member a program reads: its offset in the running
/// kernel, from BTF, is written into the BPF object's global `global`
/// before it is loaded.
#[derive(Debug)]
pub(crate) struct KernelOffset {
    pub(crate) global: &'static str,
    pub(crate) type_name: &'static str,
    pub(crate) member: &'static str,
    /// Size in bytes the program reads; a kernel with another size is refused.
    pub(crate) size: u32,
}

/// Why a collector is down. Each variant names the thing and, where there
/// is one, the fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CollectorError {
    #[error("tracepoint {category}/{name} does not exist in this kernel")]
    MissingTracepoint { category: &'static str, name: &'static str },
    #[error("{0}")]
    Btf(#[from] super::btf::BtfError),
    #[error("the kernel has no {type_name}.{member} of {size} bytes (from its BTF)")]
    KernelType { type_name: &'static str, member: &'static str, size: u32 },
    #[error("the BPF object has no program {program}: the daemon and BPF object were built from different sources")]
    MissingProgram { program: &'static str },
    #[error("the kernel rejected program {program}: {source}")]
    Load {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("cannot attach program {program} to tracepoint {category}/{name}: {source}")]
    Attach {
        program: &'static str,
        category: &'static str,
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("the kernel has no enum {name} (from its BTF)")]
    KernelEnum { name: &'static str },
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the BPF object has no map {map}: the daemon and BPF object were built from different sources")]
    MissingMap { map: &'static str },
    #[error("map {map} does not have the expected type or layout: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
}
