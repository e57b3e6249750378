//! Linux syscall numbers to names, for the `syscall` label of
//! `kernel_syscalls_total`.
//!
//! The tables are generated (`syscall_tables.rs`, by `cargo xtask codegen`)
//! from the kernel UAPI headers of Debian's `linux-libc-dev`, plus the
//! syscalls of kernels newer than those headers, listed in the generator.
//!
//! Names are the header's `__NR_` names without the prefix. Numbers with no
//! name (gaps in the tables, syscalls newer than these headers, anything at
//! or above `MAX_SYSCALLS`) map to `None`.

#[cfg(test)]
use exporter_common::syscalls::MAX_SYSCALLS;

#[cfg(any(test, target_arch = "aarch64"))]
use super::syscall_tables::AARCH64;
#[cfg(any(test, target_arch = "x86_64"))]
use super::syscall_tables::X86_64;

/// Name of syscall `nr` on the architecture this daemon was built for.
pub(crate) fn syscall_name(nr: u32) -> Option<&'static str> {
    lookup(NATIVE, nr)
}

fn lookup(table: &'static [(u16, &'static str)], nr: u32) -> Option<&'static str> {
    let nr = u16::try_from(nr).ok()?;
    let i = table.binary_search_by_key(&nr, |&(n, _)| n).ok()?;
    Some(table[i].1)
}

#[cfg(target_arch = "x86_64")]
const NATIVE: &[(u16, &str)] = X86_64;
#[cfg(target_arch = "aarch64")]
const NATIVE: &[(u16, &str)] = AARCH64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const NATIVE: &[(u16, &str)] = &[];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::{AARCH64, MAX_SYSCALLS, X86_64, lookup, syscall_name};

    #[test]
    fn x86_64_known_numbers() {
        for (nr, name) in [
            (0, "read"),
            (1, "write"),
            (3, "close"),
            (110, "getppid"),
            (231, "exit_group"),
            (257, "openat"),
            (435, "clone3"),
        ] {
            assert_eq!(lookup(X86_64, nr), Some(name), "x86_64 {nr}");
        }
    }

    #[test]
    fn aarch64_known_numbers() {
        for (nr, name) in [
            (38, "renameat"),
            (56, "openat"),
            (57, "close"),
            (62, "lseek"),
            (63, "read"),
            (64, "write"),
            (79, "newfstatat"),
            (80, "fstat"),
            (94, "exit_group"),
            (163, "getrlimit"),
            (164, "setrlimit"),
            (173, "getppid"),
            (222, "mmap"),
            (435, "clone3"),
        ] {
            assert_eq!(lookup(AARCH64, nr), Some(name), "aarch64 {nr}");
        }
    }

    #[test]
    fn gaps_and_out_of_range_are_none() {
        // 244..=259 are reserved for arch-specific syscalls, which arm64 has none of.
        assert_eq!(lookup(AARCH64, 244), None);
        assert_eq!(lookup(X86_64, 336), None);
        assert_eq!(lookup(X86_64, 470), None);
        let max = u32::try_from(MAX_SYSCALLS).unwrap();
        assert_eq!(lookup(X86_64, max), None);
        assert_eq!(lookup(AARCH64, max), None);
        assert_eq!(syscall_name(max), None);
        assert_eq!(syscall_name(u32::MAX), None);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn native_is_x86_64() {
        assert_eq!(syscall_name(257), Some("openat"));
    }

    #[test]
    #[cfg(target_arch = "aarch64")]
    fn native_is_aarch64() {
        assert_eq!(syscall_name(56), Some("openat"));
    }

    #[test]
    fn tables_are_well_formed() {
        for (arch, table) in [("x86_64", X86_64), ("aarch64", AARCH64)] {
            assert!(table.windows(2).all(|w| w[0].0 < w[1].0), "{arch}: numbers not strictly increasing");
            let mut names = HashSet::new();
            for &(nr, name) in table {
                assert!(usize::from(nr) < MAX_SYSCALLS, "{arch}: {nr} {name}");
                assert!(!name.is_empty(), "{arch}: {nr} has an empty name");
                assert!(
                    name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "{arch}: {nr} {name:?}"
                );
                assert!(names.insert(name), "{arch}: {name} appears twice");
            }
        }
    }
}
