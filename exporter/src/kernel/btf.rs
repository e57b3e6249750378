//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) to find where
//! a member sits in a kernel struct, e.g. `task_struct.pid` or, through
//! nested structs, `net.ns.inum`, and the values of a kernel enum, e.g.
//! `enum skb_drop_reason`.
//!
//! Raw tracepoint programs receive the tracepoint's arguments (pointers to
//! kernel structs), not a fixed record, so they need member offsets of the
//! running kernel. The daemon reads them here at start-up and writes them
//! into the BPF object's globals before loading it, which is what CO-RE
//! relocations do for C programs. Only the type section is walked; nothing
//! is kept after start-up.
//!
//! Hand-written rather than aya's BTF parser because of what it costs: with
//! aya's parse of the same file the start-up peak RSS was 29.4 MiB, with
//! this walk alone it is 12.8 MiB (README, *Performance*).

use std::{
    fs,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

/// Where the running kernel publishes its BTF.
pub(crate) const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

// BTF kinds (linux/btf.h), for the size of the data that follows each type.
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
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

/// The running kernel's BTF while start-up needs it: parsed once for all
/// collectors, dropped by [`release_kernel`] so it does not stay resident.
static KERNEL: Mutex<Option<Arc<Btf>>> = Mutex::new(None);

/// The running kernel's BTF, parsed on first use.
pub(crate) fn kernel() -> Result<Arc<Btf>, BtfError> {
    let mut cached = KERNEL.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(btf) = cached.as_ref() {
        return Ok(Arc::clone(btf));
    }
    let btf = Arc::new(Btf::from_kernel()?);
    *cached = Some(Arc::clone(&btf));
    Ok(btf)
}

/// Drops the cached BTF once every collector is open.
pub(crate) fn release_kernel() {
    KERNEL.lock().unwrap_or_else(PoisonError::into_inner).take();
}

/// A parsed type section: every type's offset in `types`, by id.
pub(crate) struct Btf {
    /// The whole file: the sections are read in place, not copied, to keep
    /// the start-up peak of memory to one copy of the kernel's BTF.
    data: Vec<u8>,
    types: std::ops::Range<usize>,
    strings: std::ops::Range<usize>,
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
        Self::parse(data)
    }

    pub(crate) fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let u16_at = |at: usize| data.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |at: usize| data.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if u16_at(0) != Some(MAGIC) {
            return Err(BtfError::Malformed("bad magic (only little-endian BTF is supported)"));
        }
        let header = |at| u32_at(at).map(|v| v as usize).ok_or(BtfError::Malformed("short header"));
        let (header_len, type_off, type_len, str_off, str_len) =
            (header(4)?, header(8)?, header(12)?, header(16)?, header(20)?);
        let section = |off: usize, len: usize| {
            let range = header_len + off..header_len + off + len;
            data.get(range.clone()).map(|_| range).ok_or(BtfError::Malformed("section out of bounds"))
        };
        let types_range = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let types = &data[types_range.clone()];

        let mut index = vec![0];
        let mut at = 0;
        while at < types.len() {
            index.push(at);
            let info = read_u32(types, at + 4).ok_or(BtfError::Malformed("truncated type"))?;
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
        Ok(Self { data, types: types_range, strings, index })
    }

    fn types(&self) -> &[u8] {
        &self.data[self.types.clone()]
    }

    fn strings(&self) -> &[u8] {
        &self.data[self.strings.clone()]
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings().get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// (kind, vlen, kind_flag, name offset, size-or-type) of type `id`.
    fn header(&self, id: u32) -> Option<(u32, usize, bool, u32, u32)> {
        let at = *self.index.get(id as usize)?;
        let name = read_u32(self.types(), at)?;
        let info = read_u32(self.types(), at + 4)?;
        let size_or_type = read_u32(self.types(), at + 8)?;
        Some(((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31 == 1, name, size_or_type))
    }

    /// Offset of `member` in struct `name`, searching anonymous struct and
    /// union members too (randomized or grouped layouts put fields there).
    ///
    /// `member` may be a dotted path into members that are structs
    /// themselves (`ns.inum` in `net`: the `inum` of the embedded
    /// `struct ns_common ns`); the offset is then from the start of `name`
    /// and the size is the last member's.
    pub(crate) fn member(&self, name: &str, member: &str) -> Option<Member> {
        let mut id = self.named_type(&[KIND_STRUCT], name)?;
        let mut bits = 0;
        let mut found = None;
        for part in member.split('.') {
            // An empty name would match the first anonymous member.
            if part.is_empty() {
                return None;
            }
            let (member_bits, type_id) = self.find_member(self.resolve(id), part.as_bytes(), bits)?;
            bits = member_bits;
            id = type_id;
            found = Some(Member { offset: bits / 8, size: self.size_of(type_id) });
        }
        found
    }

    /// The enumerators of enum `name` (`ENUM` or `ENUM64`) and their
    /// values, in declaration order; `None` if the kernel has no such enum.
    pub(crate) fn enum_values(&self, name: &str) -> Option<Vec<(String, i64)>> {
        let id = self.named_type(&[KIND_ENUM, KIND_ENUM64], name)?;
        let (kind, vlen, signed, _, _) = self.header(id)?;
        let start = self.index[id as usize] + 12;
        (0..vlen)
            .map(|i| {
                let (name_off, value) = if kind == KIND_ENUM {
                    let at = start + i * 8;
                    let raw = read_u32(self.types(), at + 4)?;
                    // kind_flag marks a signed enum; unsigned ones (masks
                    // like 0xffff0000) must not turn negative.
                    (read_u32(self.types(), at)?, if signed { i64::from(raw as i32) } else { i64::from(raw) })
                } else {
                    let at = start + i * 12;
                    let (lo, hi) = (read_u32(self.types(), at + 4)?, read_u32(self.types(), at + 8)?);
                    (read_u32(self.types(), at)?, ((u64::from(hi) << 32) | u64::from(lo)) as i64)
                };
                Some((String::from_utf8_lossy(self.name(name_off)).into_owned(), value))
            })
            .collect()
    }

    /// The type id of the typedef `btf_trace_<tracepoint>` the kernel
    /// declares for every tracepoint: a BTF tracepoint program is loaded
    /// against it (`attach_btf_id`).
    pub(crate) fn tracepoint_type_id(&self, tracepoint: &str) -> Option<u32> {
        let wanted = format!("btf_trace_{tracepoint}");
        (1..self.index.len() as u32).find(|&id| {
            self.header(id).is_some_and(|(kind, _, _, name_off, _)| {
                kind == KIND_TYPEDEF && self.name(name_off) == wanted.as_bytes()
            })
        })
    }

    /// The first type of one of `kinds` named `name` that has members
    /// (not a forward declaration).
    fn named_type(&self, kinds: &[u32], name: &str) -> Option<u32> {
        (1..self.index.len() as u32).find(|&id| {
            self.header(id).is_some_and(|(kind, vlen, _, name_off, _)| {
                kinds.contains(&kind) && vlen > 0 && self.name(name_off) == name.as_bytes()
            })
        })
    }

    /// The bit offset (plus `base_bits`) and type of member `wanted` of the
    /// struct or union `id`.
    fn find_member(&self, id: u32, wanted: &[u8], base_bits: u32) -> Option<(u32, u32)> {
        let (kind, vlen, kind_flag, _, _) = self.header(id)?;
        if kind != KIND_STRUCT && kind != KIND_UNION {
            return None;
        }
        let start = self.index[id as usize] + 12;
        for i in 0..vlen {
            let at = start + i * 12;
            let (name_off, type_id, raw_offset) =
                (read_u32(self.types(), at)?, read_u32(self.types(), at + 4)?, read_u32(self.types(), at + 8)?);
            // With kind_flag the high 8 bits are a bitfield size.
            let bits = base_bits + if kind_flag { raw_offset & 0x00ff_ffff } else { raw_offset };
            let name = self.name(name_off);
            if name == wanted {
                return Some((bits, type_id));
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

/// A BTF blob in which type `id` is `typedef void btf_trace_<tracepoint>`
/// and every type before it a plain `void *`.
///
/// aya loads a BTF tracepoint program with the type id it looks up by name
/// in an `aya::Btf`, and builds that only by parsing a whole BTF: its own
/// parse of the kernel's (about 17 MB of heap) would undo the start-up
/// memory the daemon saves by parsing BTF itself. Parsing this stand-in
/// yields the same id for the same name, at 12 bytes per type (about
/// 120 KB for `sched_switch` on 6.18), and the kernel sees only the id.
pub(crate) fn tracepoint_stand_in(tracepoint: &str, id: u32) -> Vec<u8> {
    const HEADER_LEN: u32 = 24;
    let mut strings = vec![0];
    let name_off = strings.len() as u32;
    strings.extend_from_slice(b"btf_trace_");
    strings.extend_from_slice(tracepoint.as_bytes());
    strings.push(0);
    let types_len = id * 12;
    let mut blob = Vec::with_capacity((HEADER_LEN + types_len) as usize + strings.len());
    blob.extend_from_slice(&MAGIC.to_le_bytes());
    blob.extend_from_slice(&[1, 0]); // version 1, no flags
    for word in [HEADER_LEN, 0, types_len, types_len, strings.len() as u32] {
        blob.extend_from_slice(&word.to_le_bytes());
    }
    for _ in 1..id {
        // An anonymous `void *`: name 0, kind PTR, type 0.
        for word in [0, KIND_PTR << 24, 0] {
            blob.extend_from_slice(&word.to_le_bytes());
        }
    }
    // Of `void`: only the name and the id matter.
    for word in [name_off, KIND_TYPEDEF << 24, 0] {
        blob.extend_from_slice(&word.to_le_bytes());
    }
    blob.extend_from_slice(&strings);
    blob
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built BTF:
    ///
    /// ```c
    /// struct task { int a; struct { long b; union { int pid; }; }; };  // pid at byte 16
    /// typedef struct { long n; } wrap_t;
    /// struct outer { int x; struct task t; wrap_t w; };                // t at 8, w at 32
    /// enum reason;                                                     // forward declaration
    /// enum reason { R_A = 0, R_B = 2, R_MASK = 0xffff0000 };           // unsigned
    /// enum sign { S_NEG = -1 };                                        // signed
    /// enum big { BIG = 1 << 40 };                                      // ENUM64
    /// ```
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0long\0task\0a\0b\0pid\0wrap_t\0n\0outer\0x\0t\0w\0reason\0R_A\0R_B\0R_MASK\0\
                        sign\0S_NEG\0big\0BIG\0"
            .to_vec();
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            strings.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() as u32 + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend_from_slice(&w.to_le_bytes()));
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        const KIND_FLAG: u32 = 1 << 31;
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
        // 6: anonymous struct { long n; }
        push(&[0, info(KIND_STRUCT, 1), 8, name("n"), 2, 0]);
        // 7: typedef wrap_t -> 6
        push(&[name("wrap_t"), info(KIND_TYPEDEF, 0), 6]);
        // 8: struct outer { int x; struct task t; wrap_t w; } (t at bit 64, w at bit 256)
        push(&[name("outer"), info(KIND_STRUCT, 3), 40, name("x"), 1, 0, name("t"), 5, 64, name("w"), 7, 256]);
        // 9: enum reason; (forward declaration: no values)
        push(&[name("reason"), info(KIND_ENUM, 0), 4]);
        // 10: enum reason { R_A = 0, R_B = 2, R_MASK = 0xffff0000 }
        push(&[name("reason"), info(KIND_ENUM, 3), 4, name("R_A"), 0, name("R_B"), 2, name("R_MASK"), 0xffff_0000]);
        // 11: enum sign { S_NEG = -1 } (kind_flag: signed)
        push(&[name("sign"), info(KIND_ENUM, 1) | KIND_FLAG, 4, name("S_NEG"), u32::MAX]);
        // 12: enum big { BIG = 1 << 40 } (ENUM64: low word, high word)
        push(&[name("big"), info(KIND_ENUM64, 1), 8, name("BIG"), 0, 1 << 8]);

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
        let btf = Btf::parse(sample()).unwrap();
        assert_eq!(btf.member("task", "a"), Some(Member { offset: 0, size: Some(4) }));
        assert_eq!(btf.member("task", "pid"), Some(Member { offset: 16, size: Some(4) }));
        assert_eq!(btf.member("task", "nope"), None);
        assert_eq!(btf.member("other", "pid"), None);
    }

    #[test]
    fn follows_member_paths_through_nested_structs_and_typedefs() {
        let btf = Btf::parse(sample()).unwrap();
        assert_eq!(btf.member("outer", "t"), Some(Member { offset: 8, size: Some(24) }));
        assert_eq!(btf.member("outer", "t.pid"), Some(Member { offset: 24, size: Some(4) }));
        assert_eq!(btf.member("outer", "w.n"), Some(Member { offset: 32, size: Some(8) }));
        // A path into a member that is not a struct, or a missing step.
        assert_eq!(btf.member("outer", "x.y"), None);
        assert_eq!(btf.member("outer", "t.nope"), None);
        assert_eq!(btf.member("outer", "t."), None);
    }

    #[test]
    fn reads_enum_values() {
        let btf = Btf::parse(sample()).unwrap();
        // The forward declaration before the definition is skipped.
        assert_eq!(
            btf.enum_values("reason"),
            Some(vec![("R_A".to_owned(), 0), ("R_B".to_owned(), 2), ("R_MASK".to_owned(), 0xffff_0000)])
        );
        assert_eq!(btf.enum_values("sign"), Some(vec![("S_NEG".to_owned(), -1)]));
        assert_eq!(btf.enum_values("big"), Some(vec![("BIG".to_owned(), 1 << 40)]));
        assert_eq!(btf.enum_values("task"), None);
        assert_eq!(btf.enum_values("nope"), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, not even close".to_vec()).is_err());
        assert!(Btf::parse(Vec::new()).is_err());
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
        let inum = btf.member("net", "ns.inum").expect("net.ns.inum");
        assert_eq!(inum.size, Some(4));
        let reasons = btf.enum_values("skb_drop_reason").expect("enum skb_drop_reason");
        assert!(reasons.iter().any(|(name, _)| name == "SKB_DROP_REASON_NO_SOCKET"), "{reasons:?}");
    }

    #[test]
    fn the_tracepoint_stand_in_has_the_kernels_id_for_the_name() {
        for id in [1, 2, 10_300] {
            let blob = tracepoint_stand_in("sched_switch", id);
            let ours = Btf::parse(blob.clone()).expect("our parser reads it");
            assert_eq!(ours.tracepoint_type_id("sched_switch"), Some(id));
            assert_eq!(ours.tracepoint_type_id("sched_wakeup"), None);
            // aya looks the name up the same way; its parse must accept it
            // (the end-to-end tests then load a program with it).
            aya::Btf::parse(&blob, aya::Endianness::Little).expect("aya reads it");
        }
    }
}
