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

/// The empty program, attached to some raw tracepoints until dropped.
pub(crate) struct EmptyProgram {
    program: Fd,
    _links: Vec<Fd>,
}

impl EmptyProgram {
    pub(crate) fn attach(tracepoints: &[&str]) -> anyhow::Result<Self> {
        // r0 = 0; exit
        let instructions: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
        let license = c"GPL";
        let mut load = Attr::new()
            .u32(0, BPF_PROG_TYPE_RAW_TRACEPOINT)
            .u32(4, instructions.len() as u32)
            .u64(8, instructions.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64);
        load.0[48..59].copy_from_slice(b"xtask_empty");
        let program =
            Fd(load.call(BPF_PROG_LOAD).map_err(|e| anyhow::anyhow!("cannot load the empty program: {e}"))?);
        let mut links = Vec::new();
        for tracepoint in tracepoints {
            let name = CString::new(*tracepoint)?;
            let link = Attr::new()
                .u64(0, name.as_ptr() as u64)
                .u32(8, program.0 as u32)
                .call(BPF_RAW_TRACEPOINT_OPEN)
                .map_err(|e| anyhow::anyhow!("cannot attach the empty program to {tracepoint}: {e}"))?;
            links.push(Fd(link));
        }
        Ok(Self { program, _links: links })
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
    }
}
