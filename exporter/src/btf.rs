//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) to find where
//! a member sits in a kernel struct, e.g. `task_struct.pid`.
//!
//! Raw tracepoint programs receive the tracepoint's arguments (pointers to
//! kernel structs), not a fixed record, so they need member offsets of the
//! running kernel. The daemon reads them here at start-up and writes them
//! into the BPF object's globals before loading it, which is what CO-RE
//! relocations do for C programs. Only the type section is walked; nothing
//! is kept after start-up.

use std::{fs, path::Path};

/// Where the running kernel publishes its BTF.
pub(crate) const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

// BTF kinds (linux/btf.h), for the size of the data that follows each type.
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// Why a member offset could not be found.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum BtfError {
    #[error("cannot read the kernel's BTF from {VMLINUX_BTF}: {0} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Unreadable(String),
    #[error("the kernel's BTF is malformed: {0}")]
    Malformed(&'static str),
}

/// A parsed type section: every type's offset in `types`, by id.
pub(crate) struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    /// Byte offset of type `id` in `types` (id 0 is `void`, unused).
    index: Vec<usize>,
}

/// A struct member: offset in bytes from the start of the struct and the
/// size in bytes of its type, where the type has a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) offset: u32,
    pub(crate) size: Option<u32>,
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub(crate) fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub(crate) fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = fs::read(path).map_err(|e| BtfError::Unreadable(e.to_string()))?;
        Self::parse(&data)
    }

    pub(crate) fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u16_at = |at: usize| data.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |at: usize| data.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if u16_at(0) != Some(MAGIC) {
            return Err(BtfError::Malformed("bad magic (only little-endian BTF is supported)"));
        }
        let header = |at| u32_at(at).map(|v| v as usize).ok_or(BtfError::Malformed("short header"));
        let (header_len, type_off, type_len, str_off, str_len) =
            (header(4)?, header(8)?, header(12)?, header(16)?, header(20)?);
        let section = |off: usize, len: usize| {
            data.get(header_len + off..header_len + off + len).ok_or(BtfError::Malformed("section out of bounds"))
        };
        let types = section(type_off, type_len)?.to_vec();
        let strings = section(str_off, str_len)?.to_vec();

        let mut index = vec![0];
        let mut at = 0;
        while at < types.len() {
            index.push(at);
            let info = read_u32(&types, at + 4).ok_or(BtfError::Malformed("truncated type"))?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                _ => 0,
            };
            at += 12 + extra;
        }
        Ok(Self { types, strings, index })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// (kind, vlen, kind_flag, name offset, size-or-type) of type `id`.
    fn header(&self, id: u32) -> Option<(u32, usize, bool, u32, u32)> {
        let at = *self.index.get(id as usize)?;
        let name = read_u32(&self.types, at)?;
        let info = read_u32(&self.types, at + 4)?;
        let size_or_type = read_u32(&self.types, at + 8)?;
        Some(((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31 == 1, name, size_or_type))
    }

    /// Offset of `member` in struct `name`, searching anonymous struct and
    /// union members too (randomized or grouped layouts put fields there).
    pub(crate) fn member(&self, name: &str, member: &str) -> Option<Member> {
        let id = (1..self.index.len() as u32).find(|&id| {
            self.header(id).is_some_and(|(kind, vlen, _, name_off, _)| {
                kind == KIND_STRUCT && vlen > 0 && self.name(name_off) == name.as_bytes()
            })
        })?;
        self.find_member(id, member.as_bytes(), 0)
    }

    fn find_member(&self, id: u32, wanted: &[u8], base_bits: u32) -> Option<Member> {
        let (kind, vlen, kind_flag, _, _) = self.header(id)?;
        if kind != KIND_STRUCT && kind != KIND_UNION {
            return None;
        }
        let start = self.index[id as usize] + 12;
        for i in 0..vlen {
            let at = start + i * 12;
            let (name_off, type_id, raw_offset) =
                (read_u32(&self.types, at)?, read_u32(&self.types, at + 4)?, read_u32(&self.types, at + 8)?);
            // With kind_flag the high 8 bits are a bitfield size.
            let bits = base_bits + if kind_flag { raw_offset & 0x00ff_ffff } else { raw_offset };
            let name = self.name(name_off);
            if name == wanted {
                return Some(Member { offset: bits / 8, size: self.size_of(type_id) });
            }
            if name.is_empty()
                && let Some(found) = self.find_member(self.resolve(type_id), wanted, bits)
            {
                return Some(found);
            }
        }
        None
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        // typedef, volatile, const, restrict, type_tag
        for _ in 0..32 {
            match self.header(id) {
                Some((8..=11 | 18, _, _, _, next)) => id = next,
                _ => break,
            }
        }
        id
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        let id = self.resolve(id);
        match self.header(id)? {
            (KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64, _, _, _, size) => Some(size),
            (2, ..) => Some(8), // pointer
            _ => None,
        }
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built BTF: `struct task { int a; struct { long b; union { int pid; }; }; }`
    /// with `pid` at byte 16.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0long\0task\0a\0b\0pid\0".to_vec();
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            strings.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() as u32 + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend_from_slice(&w.to_le_bytes()));
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        // 1: int (4 bytes)
        push(&[name("int"), info(KIND_INT, 0), 4, 32]);
        // 2: long (8 bytes)
        push(&[name("long"), info(KIND_INT, 0), 8, 64]);
        // 3: anonymous union { int pid; }
        push(&[0, info(KIND_UNION, 1), 4, name("pid"), 1, 0]);
        // 4: anonymous struct { long b; union ...; } (union at bit 64)
        push(&[0, info(KIND_STRUCT, 2), 16, name("b"), 2, 0, 0, 3, 64]);
        // 5: struct task { int a; struct ...; } (anonymous struct at bit 64)
        push(&[name("task"), info(KIND_STRUCT, 2), 24, name("a"), 1, 0, 0, 4, 64]);

        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]); // version, flags
        for word in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            data.extend_from_slice(&word.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn finds_members_in_anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member("task", "a"), Some(Member { offset: 0, size: Some(4) }));
        assert_eq!(btf.member("task", "pid"), Some(Member { offset: 16, size: Some(4) }));
        assert_eq!(btf.member("task", "nope"), None);
        assert_eq!(btf.member("other", "pid"), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, not even close").is_err());
        assert!(Btf::parse(&[]).is_err());
    }

    #[test]
    fn reads_the_running_kernel() {
        // The machines this project runs on have BTF (DESIGN.md); without it
        // the collectors that need offsets report down, which the end-to-end
        // tests cover.
        let Ok(btf) = Btf::from_kernel() else { return };
        let pid = btf.member("task_struct", "pid").expect("task_struct.pid");
        assert_eq!(pid.size, Some(4));
        assert!(pid.offset > 0);
    }
}
