//! The kernel's own cost of running a BPF program on a tracepoint, measured
//! with a program that does nothing (`r0 = 0; exit`).
//!
//! What a tracepoint program costs per event is the kernel's dispatch (the
//! traced syscall path, the recursion guard, an indirect call into the JIT
//! image) plus the program's body. Only the body is ours to make cheaper;
//! the benchmark attaches this empty program to the same tracepoints, under
//! the same load, to tell the two apart. The xtask has no BPF library: the
//! two-instruction program is loaded with the bpf(2) syscall directly.

use std::{ffi::CString, io};

const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_TEST_RUN: i64 = 10;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_RAW_TRACEPOINT_OPEN: i64 = 17;
const BPF_ENABLE_STATS: i64 = 32;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const BPF_STATS_RUN_TIME: u32 = 0;
/// `sizeof(union bpf_attr)` in the 6.x UAPI; the kernel accepts any size
/// whose tail beyond what it knows is zero.
const ATTR_SIZE: usize = 144;
/// `sizeof(struct bpf_prog_info)` and the offsets of its run statistics.
const PROG_INFO_SIZE: usize = 232;
const PROG_INFO_RUN_TIME_NS: usize = 192;
const PROG_INFO_RUN_CNT: usize = 200;
const SYS_BPF: i64 = if cfg!(target_arch = "aarch64") { 280 } else { 321 };

unsafe extern "C" {
    fn syscall(number: i64, ...) -> i64;
    fn close(fd: i32) -> i32;
}

/// A zeroed `union bpf_attr` with little-endian fields written at offsets.
struct Attr([u8; ATTR_SIZE]);

impl Attr {
    fn new() -> Self {
        Self([0; ATTR_SIZE])
    }

    fn u32(mut self, offset: usize, value: u32) -> Self {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn u64(mut self, offset: usize, value: u64) -> Self {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn call(&mut self, command: i64) -> io::Result<i32> {
        // SAFETY: the buffer is a valid bpf_attr of ATTR_SIZE bytes; every
        // pointer in it points at memory that outlives the call.
        let result = unsafe { syscall(SYS_BPF, command, self.0.as_mut_ptr(), ATTR_SIZE as u32) };
        if result < 0 { Err(io::Error::last_os_error()) } else { Ok(result as i32) }
    }
}

/// An owned file descriptor, closed on drop.
struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned and closed once.
        unsafe { close(self.0) };
    }
}

/// A hand-assembled raw tracepoint program, attached to some raw
/// tracepoints until dropped.
pub(crate) struct Program {
    program: Fd,
    _links: Vec<Fd>,
}

impl Program {
    /// The empty program on `tracepoints`.
    pub(crate) fn attach(tracepoints: &[&str]) -> anyhow::Result<Self> {
        // r0 = 0; exit
        Self::load_and_attach(b"xtask_empty", &[0x0000_0000_0000_00b7, 0x0000_0000_0000_0095], tracepoints)
    }

    /// Loads `instructions` (name at most 15 bytes) and attaches them.
    pub(crate) fn load_and_attach(name: &[u8], instructions: &[u64], tracepoints: &[&str]) -> anyhow::Result<Self> {
        let license = c"GPL";
        let mut load = Attr::new()
            .u32(0, BPF_PROG_TYPE_RAW_TRACEPOINT)
            .u32(4, instructions.len() as u32)
            .u64(8, instructions.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64);
        let name = &name[..name.len().min(15)];
        load.0[48..48 + name.len()].copy_from_slice(name);
        let what = String::from_utf8_lossy(name);
        let program = Fd(load.call(BPF_PROG_LOAD).map_err(|e| anyhow::anyhow!("cannot load {what}: {e}"))?);
        let mut links = Vec::new();
        for tracepoint in tracepoints {
            let name = CString::new(*tracepoint)?;
            let link = Attr::new()
                .u64(0, name.as_ptr() as u64)
                .u32(8, program.0 as u32)
                .call(BPF_RAW_TRACEPOINT_OPEN)
                .map_err(|e| anyhow::anyhow!("cannot attach {what} to {tracepoint}: {e}"))?;
            links.push(Fd(link));
        }
        Ok(Self { program, _links: links })
    }

    /// Runs the program once on a raw tracepoint context whose first
    /// argument is `arg` (BPF_PROG_TEST_RUN); its return value.
    pub(crate) fn test_run(&self, arg: u64) -> anyhow::Result<u32> {
        let context = [arg];
        let mut attr = Attr::new()
            .u32(0, self.program.0 as u32)
            .u32(40, size_of_val(&context) as u32)
            .u64(48, context.as_ptr() as u64);
        attr.call(BPF_PROG_TEST_RUN).map_err(|e| anyhow::anyhow!("cannot test-run a program: {e}"))?;
        Ok(u32::from_ne_bytes([attr.0[4], attr.0[5], attr.0[6], attr.0[7]]))
    }

    /// (run time ns, runs) since load; zero unless [`RunStats`] are on.
    pub(crate) fn run_stats(&self) -> anyhow::Result<(u64, u64)> {
        let mut info = [0u8; PROG_INFO_SIZE];
        Attr::new()
            .u32(0, self.program.0 as u32)
            .u32(4, PROG_INFO_SIZE as u32)
            .u64(8, info.as_mut_ptr() as u64)
            .call(BPF_OBJ_GET_INFO_BY_FD)
            .map_err(|e| anyhow::anyhow!("cannot read the empty program's statistics: {e}"))?;
        let field = |offset: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&info[offset..offset + 8]);
            u64::from_ne_bytes(bytes)
        };
        Ok((field(PROG_INFO_RUN_TIME_NS), field(PROG_INFO_RUN_CNT)))
    }
}

/// The kernel's BPF run-time statistics, on while this lives.
pub(crate) struct RunStats {
    _fd: Fd,
}

impl RunStats {
    pub(crate) fn enable() -> anyhow::Result<Self> {
        let fd = Attr::new()
            .u32(0, BPF_STATS_RUN_TIME)
            .call(BPF_ENABLE_STATS)
            .map_err(|e| anyhow::anyhow!("cannot enable BPF run statistics: {e}"))?;
        Ok(Self { _fd: Fd(fd) })
    }
}

/// Where a bucket program takes its value from.
#[derive(Clone, Copy)]
pub(crate) enum Value {
    /// The clock (`bpf_ktime_get_ns`), kept to its low 30 bits (0–1.07 s),
    /// the range of the latencies the collectors time: for the per-event
    /// cost on a tracepoint.
    Clock,
    /// The raw tracepoint's first argument: for checking the result with
    /// BPF_PROG_TEST_RUN.
    Argument,
}

/// Which latency-bucket computation a program runs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Bucket {
    /// Only the value, no bucket: the reference the others are measured from.
    None,
    /// Before issue 17: `floor(log2(ns))` clamped to 35.
    Log2Nanoseconds,
    /// Since: the smallest `b` with `ns <= floor(1e9 * 2^(b-30))`, 41 over
    /// 2^10 s (`exporter_common::histogram::bucket`).
    Log2Seconds,
}

/// BPF instruction encoding (`struct bpf_insn`, little-endian).
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64 | (dst as u64) << 8 | (src as u64) << 12 | (off as u16 as u64) << 16 | (imm as u32 as u64) << 32
}

// Opcodes used below (BPF_ALU64 / BPF_JMP classes).
const MOV_K: u8 = 0xb7;
const MOV_X: u8 = 0xbf;
const ADD_K: u8 = 0x07;
const SUB_K: u8 = 0x17;
const DIV_K: u8 = 0x37;
const LSH_K: u8 = 0x67;
const RSH_K: u8 = 0x77;
const AND_K: u8 = 0x57;
const JEQ_K: u8 = 0x15;
const JGT_X: u8 = 0x2d;
const JLT_K: u8 = 0xa5;
const JLE_K: u8 = 0xb5;
const LDX_DW: u8 = 0x79;
const LD_IMM64: u8 = 0x18;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const BPF_FUNC_KTIME_GET_NS: i32 = 5;

/// `r2 = floor(log2(r1))` for r1 >= 1, as `exporter_common::histogram`
/// writes it and LLVM compiles it: five halving steps and a last compare;
/// clobbers r1 and r3.
fn floor_log2(out: &mut Vec<u64>) {
    out.push(insn(MOV_K, 2, 0, 0, 0));
    for shift in [32, 16, 8, 4, 2] {
        out.extend([
            insn(MOV_X, 3, 1, 0, 0),
            insn(RSH_K, 3, 0, 0, shift),
            insn(JEQ_K, 3, 0, 2, 0),
            insn(MOV_X, 1, 3, 0, 0),
            insn(ADD_K, 2, 0, 0, shift),
        ]);
    }
    out.extend([insn(JLT_K, 1, 0, 1, 2), insn(ADD_K, 2, 0, 0, 1)]);
}

/// A program that computes `bucket` of its value and returns it.
pub(crate) fn bucket_program(value: Value, bucket: Bucket) -> Vec<u64> {
    let mut out = match value {
        Value::Clock => {
            vec![insn(CALL, 0, 0, 0, BPF_FUNC_KTIME_GET_NS), insn(MOV_X, 1, 0, 0, 0), insn(AND_K, 1, 0, 0, 0x3fff_ffff)]
        }
        Value::Argument => vec![insn(LDX_DW, 1, 1, 0, 0)],
    };
    match bucket {
        Bucket::None => out.push(insn(MOV_X, 2, 1, 0, 0)),
        Bucket::Log2Nanoseconds => {
            floor_log2(&mut out);
            out.extend([insn(JLT_K, 2, 0, 1, 36), insn(MOV_K, 2, 0, 0, 35)]);
        }
        Bucket::Log2Seconds => {
            const TOP_FINITE_NS: u64 = 1_024_000_000_000;
            let mut tail = Vec::new();
            // ceil(ns * 2^21 / 5^9): the value in units of 2^-30 s.
            tail.extend([
                insn(LSH_K, 1, 0, 0, 21),
                insn(ADD_K, 1, 0, 0, 1_953_124),
                insn(DIV_K, 1, 0, 0, 1_953_125),
                insn(MOV_K, 2, 0, 0, 0),
            ]);
            let mut log = vec![insn(SUB_K, 1, 0, 0, 1)];
            floor_log2(&mut log);
            log.push(insn(ADD_K, 2, 0, 0, 1));
            // units <= 1: bucket 0.
            tail.push(insn(JLE_K, 1, 0, log.len() as i16, 1));
            tail.extend(log);
            out.extend([
                insn(MOV_K, 2, 0, 0, 41),
                insn(LD_IMM64, 4, 0, 0, TOP_FINITE_NS as u32 as i32),
                insn(0, 0, 0, 0, (TOP_FINITE_NS >> 32) as i32),
                insn(JGT_X, 1, 4, tail.len() as i16, 0),
            ]);
            out.extend(tail);
        }
    }
    out.extend([insn(MOV_X, 0, 2, 0, 0), insn(EXIT, 0, 0, 0, 0)]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_mov_and_exit() {
        // BPF_ALU64 | BPF_MOV | BPF_K with dst r0, imm 0; then BPF_JMP | BPF_EXIT.
        assert_eq!(0x0000_0000_0000_00b7u64.to_le_bytes()[0], 0x07 | 0xb0);
        assert_eq!(0x0000_0000_0000_0095u64.to_le_bytes()[0], 0x05 | 0x90);
        let attr = Attr::new().u32(4, 2).u64(8, 0x1122);
        assert_eq!(attr.0[4], 2);
        assert_eq!(attr.0[8], 0x22);
        assert_eq!(insn(MOV_K, 0, 0, 0, 0), 0xb7);
        assert_eq!(insn(EXIT, 0, 0, 0, 0), 0x95);
        // r1 = *(u64 *)(r1 + 0); if r3 == 0 goto +2; r1 /= 1953125
        assert_eq!(insn(LDX_DW, 1, 1, 0, 0), 0x1179);
        assert_eq!(insn(JEQ_K, 3, 0, 2, 0), 0x0002_0315);
        assert_eq!(insn(DIV_K, 1, 0, 0, 1_953_125) >> 32, 1_953_125);
        assert_eq!(insn(JLE_K, 1, 0, -1, 1) >> 16 & 0xffff, 0xffff);
    }
}
