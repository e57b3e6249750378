//! Reading a whole per-CPU hash map with `BPF_MAP_LOOKUP_BATCH`: up to a
//! batch of entries, every CPU's value of each, per syscall, instead of a
//! `GET_NEXT_KEY` plus a `LOOKUP_ELEM` per entry (aya 0.14 has no batch
//! operations). A container host with thousands of veth devices is read in
//! a handful of syscalls.
//!
//! Hand-written on that figure: a per-CPU hash of 4,096 entries is read in
//! 0.90 ms in batches, against 8.5 ms one entry per syscall
//! (`benches/maps.rs`; README, *Performance*).
//!
//! A walk takes a snapshot: keys and values land in buffers kept from
//! scrape to scrape, so a steady-state scrape allocates nothing here.

use std::{
    collections::HashMap,
    hash::Hash,
    io,
    marker::PhantomData,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{Mutex, PoisonError},
};

use aya::maps::{MapData, MapError};

/// `enum bpf_cmd` values (linux/bpf.h).
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per syscall. The value buffer holds this many entries
/// for every possible CPU; the batch shrinks on hosts with many CPUs so the
/// buffer stays near 1 MiB.
const MAX_BATCH: usize = 256;
const VALUE_BUFFER_BUDGET: usize = 1 << 20;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The element-operation member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A per-CPU hash map read in batches.
pub(crate) struct BatchedPerCpuHash<K, V> {
    data: MapData,
    cpus: usize,
    snapshot: Mutex<Snapshot<K, V>>,
    _types: PhantomData<(K, V)>,
}

struct Snapshot<K, V> {
    keys: Vec<K>,
    /// `cpus` values per key, in key order.
    values: Vec<V>,
    index: HashMap<K, usize>,
    buffers: BatchBuffers,
}

/// What one `BPF_MAP_LOOKUP_BATCH` call of a walk produced.
enum Step<'a> {
    /// The buffers grew and the walk starts over: drop what came so far.
    Restart,
    /// `count` keys and their values, packed.
    Entries { keys: &'a [u8], values: &'a [u8], count: usize },
}

/// Buffers, kept between walks, for walking a hash-type map in batches.
struct BatchBuffers {
    keys: Vec<u8>,
    values: Vec<u8>,
    batch: usize,
    key_size: usize,
    value_stride: usize,
}

impl BatchBuffers {
    /// `value_stride`: bytes per entry's value as the batch commands pack
    /// them (a per-CPU map's value rounded up to 8, times the CPUs).
    fn new(key_size: usize, value_stride: usize) -> Self {
        let batch = (VALUE_BUFFER_BUDGET / value_stride.max(1)).clamp(1, MAX_BATCH);
        Self { keys: vec![0; batch * key_size], values: vec![0; batch * value_stride], batch, key_size, value_stride }
    }

    /// Walks the whole map behind `fd`, batch by batch.
    fn walk(&mut self, fd: libc::c_int, mut each: impl FnMut(Step<'_>)) -> io::Result<()> {
        // Hash maps' batch cursor is a bucket index.
        let mut cursor = 0u32;
        let mut next = 0u32;
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { (&raw const cursor) as u64 },
                out_batch: (&raw mut next) as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: self.batch as u32,
                map_fd: fd as u32,
                ..BatchAttr::default()
            };
            // SAFETY: the attr points at buffers sized for `count` keys and
            // values of the map's sizes, which the kernel fills; `next` and
            // `cursor` are u32 as hash maps' batch tokens are.
            let rc =
                unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &raw mut attr, size_of::<BatchAttr>()) };
            let error = (rc < 0).then(io::Error::last_os_error);
            match error.as_ref().and_then(io::Error::raw_os_error) {
                None | Some(libc::ENOENT) => {}
                // A bucket holds more entries than the batch: grow and
                // start over.
                Some(libc::ENOSPC) if self.batch < 1 << 16 => {
                    self.batch *= 2;
                    self.keys.resize(self.batch * self.key_size, 0);
                    self.values.resize(self.batch * self.value_stride, 0);
                    each(Step::Restart);
                    first = true;
                    continue;
                }
                Some(_) => return Err(error.unwrap_or_else(|| io::Error::other("bpf(BPF_MAP_LOOKUP_BATCH)"))),
            }
            let count = attr.count as usize;
            each(Step::Entries {
                keys: &self.keys[..count * self.key_size],
                values: &self.values[..count * self.value_stride],
                count,
            });
            if error.is_some() {
                return Ok(());
            }
            cursor = next;
            first = false;
        }
    }
}

impl<K: aya::Pod + Eq + Hash, V: aya::Pod> BatchedPerCpuHash<K, V> {
    pub(crate) fn new(data: MapData, cpus: usize) -> Self {
        let stride = size_of::<V>().next_multiple_of(8);
        Self {
            data,
            cpus,
            snapshot: Mutex::new(Snapshot {
                keys: Vec::new(),
                values: Vec::new(),
                index: HashMap::new(),
                buffers: BatchBuffers::new(size_of::<K>(), stride * cpus.max(1)),
            }),
            _types: PhantomData,
        }
    }

    fn fd(&self) -> i32 {
        self.data.fd().as_fd().as_raw_fd()
    }

    /// Walks the whole map into the snapshot.
    fn walk(&self, snapshot: &mut Snapshot<K, V>) -> io::Result<()> {
        let stride = size_of::<V>().next_multiple_of(8);
        let cpus = self.cpus;
        let Snapshot { keys, values, index, buffers } = snapshot;
        keys.clear();
        values.clear();
        index.clear();
        buffers.walk(self.fd(), |step| match step {
            Step::Restart => {
                keys.clear();
                values.clear();
                index.clear();
            }
            Step::Entries { keys: raw_keys, values: raw_values, count } => {
                for entry in 0..count {
                    // SAFETY: the kernel wrote `count` keys and their values;
                    // unaligned reads of plain-integer types, in bounds by
                    // the slices' lengths.
                    let key: K = unsafe { raw_keys.as_ptr().add(entry * size_of::<K>()).cast::<K>().read_unaligned() };
                    index.insert(key, keys.len());
                    keys.push(key);
                    for cpu in 0..cpus {
                        let at = (entry * cpus + cpu) * stride;
                        // SAFETY: as above.
                        values.push(unsafe { raw_values.as_ptr().add(at).cast::<V>().read_unaligned() });
                    }
                }
            }
        })
    }
}

// Inherent, with the collectors' `PerCpuHashRead` delegating to them, so
// this module stands alone (the map-read benchmark compiles it in).
impl<K, V> BatchedPerCpuHash<K, V>
where
    K: aya::Pod + Eq + Hash,
    V: aya::Pod,
{
    /// Walks the whole map (a snapshot for [`Self::for_each_cpu`]) and
    /// returns its keys.
    pub(crate) fn keys(&self) -> Result<Vec<K>, MapError> {
        let mut snapshot = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        self.walk(&mut snapshot).map_err(|io_error| {
            MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_lookup_batch", io_error })
        })?;
        Ok(snapshot.keys.clone())
    }

    /// Calls `each` with every CPU's value of `key` in the last snapshot.
    pub(crate) fn for_each_cpu(&self, key: &K, each: &mut dyn FnMut(&V)) -> Result<(), MapError> {
        let snapshot = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = *snapshot.index.get(key).ok_or(MapError::KeyNotFound)?;
        snapshot.values[entry * self.cpus..(entry + 1) * self.cpus].iter().for_each(each);
        Ok(())
    }

    /// Deletes `key` from the map and the snapshot.
    pub(crate) fn remove(&mut self, key: &K) -> Result<(), MapError> {
        let attr = ElemAttr { map_fd: self.fd() as u32, key: std::ptr::from_ref(key) as u64, ..ElemAttr::default() };
        // SAFETY: the attr points at one key of the map's key size.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_DELETE_ELEM, &raw const attr, size_of::<ElemAttr>()) };
        if rc < 0 {
            let io_error = io::Error::last_os_error();
            return Err(if io_error.raw_os_error() == Some(libc::ENOENT) {
                MapError::KeyNotFound
            } else {
                MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_delete_elem", io_error })
            });
        }
        self.snapshot.lock().unwrap_or_else(PoisonError::into_inner).index.remove(key);
        Ok(())
    }
}

/// Counts the entries of any hash-type map (hash, LRU hash, and their
/// per-CPU forms) by walking it in batches, for
/// `kernel_exporter_bpf_map_entries`. Works on a duplicate of the map's
/// descriptor, so collectors keep owning their maps.
pub(crate) struct EntryCounter {
    fd: std::os::fd::OwnedFd,
    buffers: BatchBuffers,
}

impl EntryCounter {
    /// `value_size` as the map declares it; per-CPU maps hold it rounded
    /// up to 8 bytes for every possible CPU.
    pub(crate) fn new(
        fd: std::os::fd::OwnedFd,
        key_size: usize,
        value_size: usize,
        per_cpu: bool,
        cpus: usize,
    ) -> Self {
        let value_stride = if per_cpu { value_size.next_multiple_of(8) * cpus.max(1) } else { value_size };
        Self { fd, buffers: BatchBuffers::new(key_size, value_stride) }
    }

    /// Entries in the map now.
    pub(crate) fn count(&mut self) -> io::Result<u64> {
        let mut total = 0u64;
        self.buffers.walk(self.fd.as_raw_fd(), |step| match step {
            Step::Restart => total = 0,
            Step::Entries { count, .. } => total += count as u64,
        })?;
        Ok(total)
    }
}
