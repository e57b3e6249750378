//! Reading BPF maps at scrape time, per map type, against real kernel maps:
//!
//! - a per-CPU array entry (the syscalls collector's 8 KiB of counters per
//!   CPU): one `BPF_MAP_LOOKUP_ELEM` returns every CPU's copy;
//! - a per-CPU hash (the net collector's devices) of 16, 256 and 4,096
//!   entries, read the daemon's way (`batch.rs`: `BPF_MAP_LOOKUP_BATCH`, up
//!   to 256 entries per syscall) and, for comparison, the per-entry way
//!   (`GET_NEXT_KEY` + `LOOKUP_ELEM` per entry, aya's iterator).
//!
//! Creating maps needs CAP_BPF: without it the benchmark says so and
//! measures nothing (`cargo xtask bench` runs as root). `batch.rs` is
//! compiled in from the daemon's sources, as the encoder benchmark does with
//! the encoder.

#![allow(dead_code, unreachable_pub, reason = "the daemon's module, compiled here for its reader alone")]

#[path = "../src/kernel/batch.rs"]
mod batch;

use std::{
    hint::black_box,
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

use aya::maps::{Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use exporter_common::syscalls::SyscallCounts;

/// A 32-byte value, four counters per key, as a device's traffic counters
/// were: the shape whose read cost the figures in README describe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FourCounters {
    rx_packets: u64,
    rest: [u64; 3],
}

// SAFETY: plain integers, `repr(C)`, no padding: any bytes are a valid value.
unsafe impl aya::Pod for FourCounters {}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

/// `BPF_MAP_CREATE` with the four leading members of `union bpf_attr`.
fn create_map(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 128];
    for (i, value) in [map_type, key_size, value_size, max_entries].into_iter().enumerate() {
        attr[i * 4..i * 4 + 4].copy_from_slice(&value.to_ne_bytes());
    }
    // SAFETY: a zeroed bpf_attr with the map-create members set; the kernel
    // reads `attr.len()` bytes of it.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn map_data(fd: OwnedFd) -> MapData {
    MapData::from_fd(fd).expect("map info")
}

fn cpus() -> usize {
    aya::util::nr_cpus().unwrap_or(1)
}

fn maps(c: &mut Criterion) {
    let array = match create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 4, size_of::<SyscallCounts>() as u32, 1) {
        Ok(data) => data,
        Err(error) => {
            eprintln!("maps: skipped, creating a BPF map needs CAP_BPF ({error}); run as root (cargo xtask bench)");
            return;
        }
    };
    let mut group = c.benchmark_group("maps");

    let array: PerCpuArray<MapData, SyscallCounts> =
        PerCpuArray::try_from(Map::PerCpuArray(map_data(array))).expect("a per-CPU array");
    group.throughput(Throughput::Elements(1));
    group.bench_function("per_cpu_array_8KiB_entry", |b| {
        b.iter(|| {
            let values = array.get(&0, 0).expect("lookup");
            black_box(values.iter().map(|counts| counts.calls[39]).sum::<u64>())
        });
    });

    for entries in [16u32, 256, 4096] {
        let fd =
            create_map(BPF_MAP_TYPE_PERCPU_HASH, 4, size_of::<FourCounters>() as u32, entries).expect("per-CPU hash");
        let batched = batch::BatchedPerCpuHash::<u32, FourCounters>::new(
            map_data(fd.try_clone().expect("dup the map descriptor")),
            cpus(),
        );
        let mut hash: PerCpuHashMap<MapData, u32, FourCounters> =
            PerCpuHashMap::try_from(Map::PerCpuHashMap(map_data(fd))).expect("a per-CPU hash");
        for key in 0..entries {
            let values: PerCpuValues<FourCounters> =
                PerCpuValues::try_from(vec![FourCounters { rx_packets: 1, ..FourCounters::default() }; cpus()])
                    .expect("per-CPU values");
            hash.insert(key, values, 0).expect("insert");
        }
        group.throughput(Throughput::Elements(u64::from(entries)));
        group.bench_function(format!("per_cpu_hash_{entries}_batched"), |b| {
            b.iter(|| {
                let mut packets = 0u64;
                for key in batched.keys().expect("batch walk") {
                    batched.for_each_cpu(&key, &mut |v| packets += v.rx_packets).expect("snapshot");
                }
                black_box(packets)
            });
        });
        group.bench_function(format!("per_cpu_hash_{entries}_per_entry_syscalls"), |b| {
            b.iter(|| {
                let mut packets = 0u64;
                for entry in hash.iter() {
                    let (_, values) = entry.expect("entry");
                    packets += values.iter().map(|v| v.rx_packets).sum::<u64>();
                }
                black_box(packets)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, maps);
criterion_main!(benches);
