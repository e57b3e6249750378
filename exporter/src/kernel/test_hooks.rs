//! Fault injection for the end-to-end tests, so they can prove that a
//! collector the kernel refuses is reported down while the others serve.
//!
//! Each hook is an environment variable named `KERNEL_EXPORTER_TEST_*`
//! holding a collector's name; unset, the hooks change nothing.
//!
//! Compiled only with the `test-hooks` feature, which `cargo xtask test`
//! turns on for the binary the end-to-end tests run (and in unit tests).
//! Every other build, the release binary included, gets
//! `no_test_hooks.rs` in its place: the same calls, changing nothing, and
//! no `KERNEL_EXPORTER_TEST_*` variable is ever read.

use tracing::warn;

use super::programs::Programs;

/// `KERNEL_EXPORTER_TEST_VERIFIER_REJECTS=<collector>`: that collector's
/// last program is loaded with its final `exit` instruction turned into a
/// jump to itself. The verifier refuses the endless loop, so the collector
/// fails at load time after its other programs were loaded and attached,
/// which is the case where a half-attached collector must be unloaded.
pub(crate) const VERIFIER_REJECTS_ENV: &str = "KERNEL_EXPORTER_TEST_VERIFIER_REJECTS";

/// `KERNEL_EXPORTER_TEST_MAP_MAX_ENTRIES=<map>=<n>`: the object's map is
/// created with room for `n` entries, so a test can fill it and watch the
/// programs report the updates that fail.
pub(crate) const MAP_MAX_ENTRIES_ENV: &str = "KERNEL_EXPORTER_TEST_MAP_MAX_ENTRIES";

/// The map and bound [`MAP_MAX_ENTRIES_ENV`] asks for, if any.
pub(crate) fn map_max_entries() -> Option<(String, u32)> {
    let value = std::env::var(MAP_MAX_ENTRIES_ENV).ok()?;
    let parsed = value.split_once('=').and_then(|(map, n)| Some((map.to_owned(), n.parse().ok()?)));
    match &parsed {
        Some((map, n)) => warn!("{MAP_MAX_ENTRIES_ENV}: map {map} gets room for {n} entries, for a test"),
        None => warn!("{MAP_MAX_ENTRIES_ENV}={value}: not MAP=N; ignored"),
    }
    parsed
}

/// `KERNEL_EXPORTER_TEST_ASSUME_MAPS_NEED_CAP_BPF=1`: the daemon takes
/// this kernel for one where map reads need CAP_BPF (before 6.5, with
/// `unprivileged_bpf_disabled` set), so the end-to-end tests can prove it
/// serves with CAP_BPF alone. The reason to log, when set.
pub(crate) fn assume_maps_need_cap_bpf() -> Option<String> {
    const ENV: &str = "KERNEL_EXPORTER_TEST_ASSUME_MAPS_NEED_CAP_BPF";
    std::env::var_os(ENV).map(|_| format!("{ENV} is set (a test hook)"))
}

/// `KERNEL_EXPORTER_TEST_MISSING_TRACEPOINT=<collector>`: that collector
/// looks for a tracepoint no kernel has, so the end-to-end tests can prove
/// that a missing tracepoint takes down that collector and nothing else.
const MISSING_TRACEPOINT_ENV: &str = "KERNEL_EXPORTER_TEST_MISSING_TRACEPOINT";
const MISSING_TRACEPOINT: &str = "kernel_exporter_test_missing";

/// The tracepoint name to use for `spec`'s tracepoint `name`.
pub(crate) fn tracepoint_name(spec: &impl Programs, name: &'static str) -> &'static str {
    if std::env::var_os(MISSING_TRACEPOINT_ENV).is_some_and(|broken| broken == spec.name()) {
        MISSING_TRACEPOINT
    } else {
        name
    }
}

/// `BPF_JMP | BPF_EXIT`.
const EXIT: u8 = 0x95;
/// `BPF_JMP | BPF_JA` with offset -1: jump to this very instruction.
const JUMP_TO_SELF: [u8; 8] = [0x05, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00];

/// The BPF object to load: the embedded one, or a patched copy when a hook
/// asks for one.
pub(crate) enum BpfObject {
    Embedded(&'static [u8]),
    /// `len` bytes in 8-byte aligned storage, as the ELF parser requires.
    Patched {
        words: Vec<u64>,
        len: usize,
    },
}

impl BpfObject {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Self::Embedded(bytes) => bytes,
            // SAFETY: `words` holds at least `len` initialised bytes (see
            // `patched`), and u8 has no alignment or validity requirement.
            Self::Patched { words, len } => unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), *len) },
        }
    }
}

/// The object with any test hook applied.
pub(crate) fn bpf_object<S: Programs>(embedded: &'static [u8], specs: &[&S]) -> BpfObject {
    let unpatched = || BpfObject::Embedded(embedded);
    let Some(wanted) = std::env::var_os(VERIFIER_REJECTS_ENV) else { return unpatched() };
    let Some(program) =
        specs.iter().find(|spec| wanted == spec.name()).and_then(|spec| spec.tracepoints().last()).map(|tp| tp.program)
    else {
        warn!("{VERIFIER_REJECTS_ENV}={}: no such enabled collector; loading unchanged", wanted.to_string_lossy());
        return unpatched();
    };
    match patched(embedded, program) {
        Some(object) => {
            warn!("{VERIFIER_REJECTS_ENV}: program {program} is loaded with an endless loop, for a test");
            object
        }
        None => {
            warn!("{VERIFIER_REJECTS_ENV}: cannot find the final exit of program {program}; loading unchanged");
            unpatched()
        }
    }
}

/// A copy of `elf` whose function `symbol` ends in [`JUMP_TO_SELF`].
fn patched(elf: &[u8], symbol: &str) -> Option<BpfObject> {
    let at = last_instruction(elf, symbol)?;
    let mut words = vec![0u64; elf.len().div_ceil(8)];
    // SAFETY: `words` spans at least `elf.len()` bytes; u8 has no alignment
    // or validity requirement.
    let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), elf.len()) };
    bytes.copy_from_slice(elf);
    bytes.get_mut(at..at + 8)?.copy_from_slice(&JUMP_TO_SELF);
    Some(BpfObject::Patched { words, len: elf.len() })
}

/// File offset of the last instruction of function `symbol` in a 64-bit
/// little-endian ELF file (what bpf-linker writes), if that instruction is
/// an `exit`.
fn last_instruction(elf: &[u8], symbol: &str) -> Option<usize> {
    const ELFCLASS64: u8 = 2;
    const ELFDATA2LSB: u8 = 1;
    const SHT_SYMTAB: u32 = 2;
    const STT_FUNC: u8 = 2;
    const SYM_SIZE: usize = 24;
    let bytes = |at: usize, n: usize| elf.get(at..at.checked_add(n)?);
    let u16_at = |at: usize| bytes(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| bytes(at, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |at: usize| bytes(at, 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    let usize_at = |at: usize| u64_at(at).and_then(|v| usize::try_from(v).ok());

    if bytes(0, 6)? != [0x7f, b'E', b'L', b'F', ELFCLASS64, ELFDATA2LSB] {
        return None;
    }
    let section_headers = usize_at(0x28)?;
    let header_size = usize::from(u16_at(0x3a)?);
    let sections = usize::from(u16_at(0x3c)?);
    let header = |index: usize| section_headers.checked_add(index.checked_mul(header_size)?);
    // (sh_type, sh_offset, sh_size, sh_link) of section `index`.
    let section = |index: usize| {
        let at = header(index)?;
        Some((u32_at(at + 4)?, usize_at(at + 24)?, usize_at(at + 32)?, u32_at(at + 40)?))
    };
    let (_, symbols, symbols_size, names_index) =
        (0..sections).filter_map(section).find(|(kind, ..)| *kind == SHT_SYMTAB)?;
    let (_, names, ..) = section(usize::try_from(names_index).ok()?)?;
    for entry in (symbols..symbols.checked_add(symbols_size)?).step_by(SYM_SIZE) {
        let name_at = names.checked_add(usize::try_from(u32_at(entry)?).ok()?)?;
        let name = elf.get(name_at..)?.split(|&b| b == 0).next()?;
        let info = *elf.get(entry + 4)?;
        if name != symbol.as_bytes() || info & 0xf != STT_FUNC {
            continue;
        }
        let (_, section_offset, ..) = section(usize::from(u16_at(entry + 6)?))?;
        let end = section_offset.checked_add(usize_at(entry + 8)?)?.checked_add(usize_at(entry + 16)?)?;
        let last = end.checked_sub(8)?;
        return (*elf.get(last)? == EXIT).then_some(last);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{
        btf::Btf,
        programs::{CollectorError, KernelOffset, Tracepoint},
    };

    /// A stand-in for the collectors' registry entries.
    struct NoCollector;

    impl Programs for NoCollector {
        fn name(&self) -> &'static str {
            "none"
        }

        fn tracepoints(&self) -> &'static [Tracepoint] {
            &[]
        }

        fn offsets(&self) -> &'static [KernelOffset] {
            &[]
        }

        fn kernel_values(&self, _btf: &Btf) -> Result<Vec<(&'static str, u32)>, CollectorError> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn finds_and_patches_the_final_exit_of_a_program() {
        let object = crate::kernel::bpf::embedded_object();
        let at = last_instruction(object, "sys_exit").expect("sys_exit ends in exit");
        assert_eq!(object[at], EXIT);
        let patched = patched(object, "sys_exit").expect("patched");
        let bytes = patched.bytes();
        assert_eq!(bytes.len(), object.len());
        assert_eq!(bytes.as_ptr() as usize % 8, 0, "aligned for the ELF parser");
        assert_eq!(&bytes[at..at + 8], JUMP_TO_SELF);
        // Nothing else changed.
        assert_eq!(&bytes[..at], &object[..at]);
        assert_eq!(&bytes[at + 8..], &object[at + 8..]);
        assert!(last_instruction(object, "no_such_program").is_none());
        assert!(last_instruction(b"not an ELF file", "sys_exit").is_none());
    }

    #[test]
    fn without_the_variable_the_embedded_object_is_loaded() {
        // The test runner never sets the variable.
        assert!(std::env::var_os(VERIFIER_REJECTS_ENV).is_none());
        let object = crate::kernel::bpf::embedded_object();
        let chosen = bpf_object::<NoCollector>(object, &[]);
        assert_eq!(chosen.bytes().as_ptr(), object.as_ptr());
    }
}
