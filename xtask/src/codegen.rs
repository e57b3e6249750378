//! `cargo xtask codegen [--check]`: the generated sources, made again from
//! their inputs.
//!
//! The syscall name tables (`exporter/src/collectors/syscall_tables.rs`)
//! come from the kernel UAPI headers of Debian's `linux-libc-dev`: x86_64's
//! `asm/unistd_64.h` read as it is, and the generic `asm-generic/unistd.h`
//! that arm64 uses run through the C preprocessor with the switches arm64
//! sets, so numbers defined for both word sizes (`__NR3264_*`) get their
//! 64-bit name as on a real arm64 build. Syscalls newer than the headers
//! this Debian release ships are listed in [`NEWER_THAN_HEADERS`], each with
//! the kernel release that added it; when the headers catch up, the list
//! shrinks and the output stays the same.
//!
//! `--check` regenerates in memory and fails naming the file when the
//! committed one differs, which `cargo xtask test` runs first: a hand edit of
//! a generated file, or a change of its inputs, cannot land unnoticed.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::prereq::{self, say};

/// Where the generated tables go, from the workspace root.
const SYSCALL_TABLES: &str = "exporter/src/collectors/syscall_tables.rs";

const X86_64_HEADER: &str = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";
const GENERIC_HEADER: &str = "/usr/include/asm-generic/unistd.h";

/// The `__ARCH_WANT_*` switches arm64 builds `asm-generic/unistd.h` with
/// (`arch/arm64/include/uapi/asm/unistd.h`).
const ARM64_SWITCHES: &[&str] = &[
    "__ARCH_WANT_RENAMEAT",
    "__ARCH_WANT_NEW_STAT",
    "__ARCH_WANT_SET_GET_RLIMIT",
    "__ARCH_WANT_SYS_CLONE3",
    "__ARCH_WANT_MEMFD_SECRET",
];

/// Which tables a syscall added after the headers' release is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tables {
    /// x86_64 only.
    X86_64,
    /// The generic table (arm64) and x86_64, with the same number.
    Both,
}

/// `(number, name, tables, release)`: syscalls the kernels after Debian
/// bookworm's `linux-libc-dev` (6.1) added, from their syscall tables.
const NEWER_THAN_HEADERS: &[(u16, &str, Tables, &str)] = &[
    (335, "uretprobe", Tables::X86_64, "6.11"),
    (451, "cachestat", Tables::Both, "6.5"),
    (452, "fchmodat2", Tables::Both, "6.6"),
    (453, "map_shadow_stack", Tables::Both, "6.6"),
    (454, "futex_wake", Tables::Both, "6.7"),
    (455, "futex_wait", Tables::Both, "6.7"),
    (456, "futex_requeue", Tables::Both, "6.7"),
    (457, "statmount", Tables::Both, "6.8"),
    (458, "listmount", Tables::Both, "6.8"),
    (459, "lsm_get_self_attr", Tables::Both, "6.8"),
    (460, "lsm_set_self_attr", Tables::Both, "6.8"),
    (461, "lsm_list_modules", Tables::Both, "6.8"),
    (462, "mseal", Tables::Both, "6.10"),
    (463, "setxattrat", Tables::Both, "6.13"),
    (464, "getxattrat", Tables::Both, "6.13"),
    (465, "listxattrat", Tables::Both, "6.13"),
    (466, "removexattrat", Tables::Both, "6.13"),
    (467, "open_tree_attr", Tables::Both, "6.15"),
    (468, "file_getattr", Tables::Both, "6.17"),
    (469, "file_setattr", Tables::Both, "6.17"),
];

pub(crate) fn codegen(check: bool) -> anyhow::Result<()> {
    ensure_inputs()?;
    let generated = syscall_tables()?;
    let path = prereq::workspace_root().join(SYSCALL_TABLES);
    if check {
        let committed = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if committed != generated {
            bail!(
                "{SYSCALL_TABLES} is not what `cargo xtask codegen` makes from its inputs; run it and commit the \
                 result (never edit the file by hand)"
            );
        }
        say("codegen", &format!("{SYSCALL_TABLES} is up to date"));
    } else {
        fs::write(&path, generated).with_context(|| format!("cannot write {}", path.display()))?;
        say("codegen", &format!("wrote {SYSCALL_TABLES}"));
    }
    Ok(())
}

/// The headers and the preprocessor, from Debian's packages.
fn ensure_inputs() -> anyhow::Result<()> {
    prereq::ensure_debian_packages(&[("cpp", "cpp")])?;
    if !Path::new(X86_64_HEADER).exists() || !Path::new(GENERIC_HEADER).exists() {
        prereq::apt_install(&["linux-libc-dev"])?;
    }
    Ok(())
}

/// The whole generated file.
fn syscall_tables() -> anyhow::Result<String> {
    let header = fs::read_to_string(X86_64_HEADER).with_context(|| format!("cannot read {X86_64_HEADER}"))?;
    let mut x86_64 = x86_64_table(&header);
    let mut generic = generic_table(&preprocessed_macros()?);
    for &(nr, name, tables, _) in NEWER_THAN_HEADERS {
        x86_64.entry(nr).or_insert_with(|| name.to_owned());
        if tables == Tables::Both {
            generic.entry(nr).or_insert_with(|| name.to_owned());
        }
    }
    if x86_64.len() < 300 || generic.len() < 250 {
        bail!("the syscall headers look truncated: {} x86_64 and {} generic names", x86_64.len(), generic.len());
    }
    Ok(render(&x86_64, &generic))
}

/// `#define __NR_read 0` lines.
fn x86_64_table(header: &str) -> BTreeMap<u16, String> {
    header
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (Some("#define"), Some(name), Some(nr), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return None;
            };
            Some((nr.parse().ok()?, name.strip_prefix("__NR_")?.to_owned()))
        })
        .collect()
}

/// Every macro the generic header defines on a 64-bit arm64 build, as
/// `cpp -dM` prints them (`name value`).
fn preprocessed_macros() -> anyhow::Result<BTreeMap<String, String>> {
    // The header includes <asm/bitsperlong.h> for the word size; a stub
    // says 64 whatever machine this runs on.
    let stub = prereq::target_dir().join("codegen-include");
    fs::create_dir_all(stub.join("asm")).with_context(|| format!("cannot create {}", stub.display()))?;
    fs::write(stub.join("asm/bitsperlong.h"), "#define __BITS_PER_LONG 64\n")
        .with_context(|| format!("cannot write the stub header under {}", stub.display()))?;
    let mut cpp = Command::new("cpp");
    cpp.args(["-dM", "-undef", "-nostdinc", "-I"]).arg(&stub);
    for switch in ARM64_SWITCHES {
        cpp.arg(format!("-D{switch}"));
    }
    let out = cpp.arg(GENERIC_HEADER).output().context("cannot run cpp")?;
    if !out.status.success() {
        bail!("cpp {GENERIC_HEADER} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("#define ")?;
            let (name, value) = rest.split_once(' ')?;
            Some((name.to_owned(), value.trim().to_owned()))
        })
        .collect())
}

/// `__NR_name` macros whose value is a number, directly or through other
/// macros (`__NR_lseek` → `__NR3264_lseek` → `62`).
fn generic_table(macros: &BTreeMap<String, String>) -> BTreeMap<u16, String> {
    macros
        .iter()
        .filter_map(|(name, value)| {
            let name = name.strip_prefix("__NR_")?;
            // Counts and markers, not syscalls.
            if name == "syscalls" || name == "arch_specific_syscall" {
                return None;
            }
            Some((resolve(macros, value)?, name.to_owned()))
        })
        .collect()
}

/// The number `value` stands for, following at most a few macros.
fn resolve<'a>(macros: &'a BTreeMap<String, String>, mut value: &'a str) -> Option<u16> {
    for _ in 0..4 {
        let bare = value.trim_matches(|c| c == '(' || c == ')');
        if let Ok(nr) = bare.parse::<u16>() {
            return Some(nr);
        }
        value = macros.get(bare)?;
    }
    None
}

fn render(x86_64: &BTreeMap<u16, String>, generic: &BTreeMap<u16, String>) -> String {
    let mut out = String::from(
        "//! Generated by `cargo xtask codegen` (xtask/src/codegen.rs): do not edit.\n\
         //!\n\
         //! Syscall numbers and names from the kernel UAPI headers of Debian's\n\
         //! `linux-libc-dev` (x86_64: `asm/unistd_64.h`; aarch64: the generic\n\
         //! `asm-generic/unistd.h` preprocessed as arm64 builds it), plus the\n\
         //! syscalls of newer kernels listed in the generator.\n\n",
    );
    for (name, arch, table) in [("X86_64", "x86_64", x86_64), ("AARCH64", "aarch64", generic)] {
        let _ = write!(
            out,
            "/// {arch} syscalls, sorted by number.\n\
             #[cfg_attr(\n    not(any(test, target_arch = \"{arch}\")),\n    \
             expect(dead_code, reason = \"only {arch} builds look names up here; tests check it everywhere\")\n)]\n\
             pub(super) const {name}: &[(u16, &str)] = &[\n"
        );
        for (nr, syscall) in table {
            let _ = writeln!(out, "    ({nr}, \"{syscall}\"),");
        }
        out.push_str("];\n");
        if name == "X86_64" {
            out.push('\n');
        }
    }
    out
}

/// Where the workspace's generated file lives, for the tests.
#[cfg(test)]
fn tables_path() -> std::path::PathBuf {
    prereq::workspace_root().join(SYSCALL_TABLES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_header_defines_and_resolves_macro_chains() {
        let header = "#ifndef _ASM_UNISTD_64_H\n#define _ASM_UNISTD_64_H\n#define __NR_read 0\n#define __NR_write 1\n";
        let table = x86_64_table(header);
        assert_eq!(table.into_iter().collect::<Vec<_>>(), [(0, "read".to_owned()), (1, "write".to_owned())]);

        let macros: BTreeMap<String, String> = [
            ("__NR3264_lseek", "62"),
            ("__NR_lseek", "__NR3264_lseek"),
            ("__NR_read", "63"),
            ("__NR_syscalls", "470"),
            ("__NR_loop", "__NR_loop"),
            ("__SYSCALL", "(x, y)"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let table = generic_table(&macros);
        assert_eq!(table.into_iter().collect::<Vec<_>>(), [(62, "lseek".to_owned()), (63, "read".to_owned())]);
    }

    #[test]
    fn renders_what_the_collector_compiles() {
        let x86_64 = BTreeMap::from([(0, "read".to_owned())]);
        let generic = BTreeMap::from([(63, "read".to_owned())]);
        let text = render(&x86_64, &generic);
        assert!(text.contains("pub(super) const X86_64: &[(u16, &str)] = &[\n    (0, \"read\"),\n];\n"), "{text}");
        assert!(text.contains("pub(super) const AARCH64: &[(u16, &str)] = &[\n    (63, \"read\"),\n];\n"), "{text}");
        assert!(tables_path().ends_with(SYSCALL_TABLES));
    }
}
