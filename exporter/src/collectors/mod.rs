//! The collector registry and what every collector has in common.
//!
//! A collector is one concept in three places: its kernel programs
//! (`exporter-ebpf/src/<name>.rs`), its map layout
//! (`exporter-common/src/<name>.rs`) and the module here that turns its maps
//! into metric families. Adding one means those three files plus one line in
//! [`REGISTRY`].

mod block;
mod irq;
mod mm;
mod net;
mod procfs;
mod sched;
mod signal;
mod syscall_names;
mod syscalls;
mod tcp;

use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuArray, PerCpuHashMap},
};

// The loader's view of a collector lives in `kernel`; the collectors name
// these types from here, with the rest of what they share.
#[cfg(test)]
use crate::exposition::encode::Family;
pub(crate) use crate::kernel::programs::{CollectorError, KernelOffset, Tracepoint};
use crate::{
    exposition::encode::Encoder,
    kernel::{
        bpf::{Kernel, LoadError},
        btf::Btf,
        programs::Programs,
    },
};

/// Every collector the daemon knows, in the order they appear in scrapes.
pub(crate) const REGISTRY: &[CollectorSpec] =
    &[sched::SPEC, syscalls::SPEC, mm::SPEC, irq::SPEC, signal::SPEC, block::SPEC, tcp::SPEC, net::SPEC];

/// What the daemon needs to know about a collector before loading it.
#[derive(Debug)]
pub(crate) struct CollectorSpec {
    /// Used in `--collector.NAME` and in the `collector` label.
    pub(crate) name: &'static str,
    /// One line for `--help`.
    pub(crate) help: &'static str,
    pub(crate) default_enabled: bool,
    /// The programs to load and attach, all or nothing.
    pub(crate) tracepoints: &'static [Tracepoint],
    /// Kernel struct members whose offsets the programs read from globals.
    pub(crate) offsets: &'static [KernelOffset],
    /// Every family the collector may write, for the naming tests.
    #[cfg(test)]
    pub(crate) families: &'static [Family],
    /// Takes the collector's maps out of the loaded object once its programs
    /// are attached.
    pub(crate) open: OpenFn,
}

impl Programs for CollectorSpec {
    fn name(&self) -> &'static str {
        self.name
    }

    fn tracepoints(&self) -> &'static [Tracepoint] {
        self.tracepoints
    }

    fn offsets(&self) -> &'static [KernelOffset] {
        self.offsets
    }

    fn kernel_values(&self, btf: &Btf) -> Result<Vec<(&'static str, u32)>, CollectorError> {
        kernel_values(self, btf)
    }
}

/// An enabled collector, working or not.
pub(crate) struct LoadedCollector {
    pub(crate) name: &'static str,
    pub(crate) state: Result<Box<dyn Collector>, CollectorError>,
}

/// Loads the BPF object and the collectors in `specs` ([`Kernel::load`]),
/// each opened with `options`; the kernel keeps the programs attached.
pub(crate) fn load(
    specs: &[&'static CollectorSpec],
    options: &CollectorOptions,
    sources_tracked: u32,
) -> Result<(Kernel, Vec<LoadedCollector>), LoadError> {
    let (kernel, states) =
        Kernel::load(specs, sources_tracked, options.bpf_run_stats, |spec, ebpf| (spec.open)(ebpf, options))?;
    let collectors = specs.iter().zip(states).map(|(spec, state)| LoadedCollector { name: spec.name, state }).collect();
    Ok((kernel, collectors))
}

/// How a collector takes its maps out of the loaded object.
pub(crate) type OpenFn = fn(&mut Ebpf, &CollectorOptions) -> Result<Box<dyn Collector>, CollectorError>;

/// Options of individual collectors, from `--collector.NAME.OPTION` flags.
#[derive(Debug, Default, Clone)]
pub(crate) struct CollectorOptions {
    /// `--collector.block.device-exclude`: block devices (by name, as in
    /// /proc/diskstats) whose series are not exported.
    pub(crate) block_device_exclude: Option<regex::Regex>,
    /// `--collector.net.device-exclude`: network devices (by name, as in
    /// /proc/net/dev) whose series are not exported.
    pub(crate) net_device_exclude: Option<regex::Regex>,
    /// `--bpf.run-stats`: keep the kernel's BPF run statistics on, for
    /// `kernel_exporter_bpf_program_*`.
    pub(crate) bpf_run_stats: bool,
}

/// A collector whose programs are attached: it reads its maps at scrape time.
pub(crate) trait Collector: Send + Sync {
    /// Writes the collector's metric families. On error nothing it wrote is
    /// kept; the caller reports the collector down for this scrape.
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError>;
}

/// Reading one entry of a per-CPU map, all CPUs at once. Behind a trait so
/// the collectors' arithmetic and labels are tested without a kernel.
pub(crate) trait PerCpuRead<T>: Send + Sync {
    /// Calls `each` with every possible CPU's copy of entry `index`.
    fn for_each_cpu(&self, index: u32, each: &mut dyn FnMut(&T)) -> Result<(), MapError>;
}

impl<T: aya::Pod + Send + Sync> PerCpuRead<T> for PerCpuArray<MapData, T> {
    fn for_each_cpu(&self, index: u32, each: &mut dyn FnMut(&T)) -> Result<(), MapError> {
        // One BPF_MAP_LOOKUP_ELEM returns the entry of every possible CPU.
        let values = self.get(&index, 0)?;
        values.iter().for_each(each);
        Ok(())
    }
}

/// Reading and pruning a per-CPU hash map, whose keys come and go (the
/// `block` collector's devices). Behind a trait so the collectors' label
/// and churn logic are tested without a kernel.
pub(crate) trait PerCpuHashRead<K, V>: Send + Sync {
    /// Every key in the map now.
    fn keys(&self) -> Result<Vec<K>, MapError>;
    /// Calls `each` with every possible CPU's value of `key`.
    fn for_each_cpu(&self, key: &K, each: &mut dyn FnMut(&V)) -> Result<(), MapError>;
    /// Deletes `key` (all CPUs' values).
    fn remove(&mut self, key: &K) -> Result<(), MapError>;
}

impl<K, V> PerCpuHashRead<K, V> for crate::kernel::batch::BatchedPerCpuHash<K, V>
where
    K: aya::Pod + Eq + std::hash::Hash + Send + Sync,
    V: aya::Pod + Send + Sync,
{
    fn keys(&self) -> Result<Vec<K>, MapError> {
        Self::keys(self)
    }

    fn for_each_cpu(&self, key: &K, each: &mut dyn FnMut(&V)) -> Result<(), MapError> {
        Self::for_each_cpu(self, key, each)
    }

    fn remove(&mut self, key: &K) -> Result<(), MapError> {
        Self::remove(self, key)
    }
}

impl<K: aya::Pod + Send + Sync, V: aya::Pod + Send + Sync> PerCpuHashRead<K, V> for PerCpuHashMap<MapData, K, V> {
    fn keys(&self) -> Result<Vec<K>, MapError> {
        Self::keys(self).collect()
    }

    fn for_each_cpu(&self, key: &K, each: &mut dyn FnMut(&V)) -> Result<(), MapError> {
        // One BPF_MAP_LOOKUP_ELEM returns the value of every possible CPU.
        let values = self.get(key, 0)?;
        values.iter().for_each(each);
        Ok(())
    }

    fn remove(&mut self, key: &K) -> Result<(), MapError> {
        Self::remove(self, key)
    }
}

/// Takes a per-CPU hash map out of the object for a collector to own,
/// read in batches ([`crate::kernel::batch`]).
pub(crate) fn take_per_cpu_hash<K, V>(
    ebpf: &mut Ebpf,
    map: &'static str,
) -> Result<crate::kernel::batch::BatchedPerCpuHash<K, V>, CollectorError>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    let raw = ebpf.take_map(map).ok_or(CollectorError::MissingMap { map })?;
    // Checks the type and the key and value sizes against K and V.
    let checked = PerCpuHashMap::<_, K, V>::try_from(&raw)
        .map(drop)
        .map_err(|source| CollectorError::Map { map, source: Box::new(source) });
    checked?;
    let (aya::maps::Map::PerCpuHashMap(data) | aya::maps::Map::PerCpuLruHashMap(data)) = raw else {
        return Err(CollectorError::Map { map, source: Box::new(MapError::InvalidName { name: map.to_owned() }) });
    };
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, io_error)| CollectorError::Map { map, source: Box::new(MapError::IoError(io_error)) })?;
    Ok(crate::kernel::batch::BatchedPerCpuHash::new(data, cpus))
}

/// Values from the kernel's BTF other than member offsets (flag values
/// that moved between kernels) that `spec`'s programs read from globals,
/// as `(global, value)`; written in before load like the offsets.
fn kernel_values(spec: &CollectorSpec, btf: &Btf) -> Result<Vec<(&'static str, u32)>, CollectorError> {
    if spec.name == block::SPEC.name { block::kernel_values(btf) } else { Ok(Vec::new()) }
}

/// Takes a per-CPU array out of the object for a collector to own.
pub(crate) fn take_per_cpu_array<T: aya::Pod>(
    ebpf: &mut Ebpf,
    map: &'static str,
) -> Result<PerCpuArray<MapData, T>, CollectorError> {
    let raw = ebpf.take_map(map).ok_or(CollectorError::MissingMap { map })?;
    PerCpuArray::try_from(raw).map_err(|source| CollectorError::Map { map, source: Box::new(source) })
}

/// The syscalls collector over any map reader, for the allocation test.
#[cfg(test)]
pub(crate) fn syscalls_for_test(
    counts: impl PerCpuRead<exporter_common::syscalls::SyscallCounts> + 'static,
) -> Box<dyn Collector> {
    syscalls::for_test(counts)
}

#[cfg(test)]
pub(crate) mod testing {
    //! A per-CPU map in memory, for the collectors' unit tests.

    use super::*;

    /// `cpus[cpu][index]`.
    pub(crate) struct FakePerCpu<T> {
        pub(crate) cpus: Vec<Vec<T>>,
    }

    /// What `collector` writes, as text; panics if it fails.
    pub(crate) fn scrape(collector: &dyn Collector) -> String {
        let mut buf = bytes::BytesMut::new();
        collector.collect(&mut Encoder::new(&mut buf)).expect("collect");
        String::from_utf8(buf.to_vec()).expect("UTF-8")
    }

    /// A per-CPU hash: key → one value per CPU.
    pub(crate) struct FakePerCpuHash<K, V> {
        pub(crate) entries: std::collections::BTreeMap<K, Vec<V>>,
    }

    impl<K: Ord + Copy + Send + Sync, V: Send + Sync> PerCpuHashRead<K, V> for FakePerCpuHash<K, V> {
        fn keys(&self) -> Result<Vec<K>, MapError> {
            Ok(self.entries.keys().copied().collect())
        }

        fn for_each_cpu(&self, key: &K, each: &mut dyn FnMut(&V)) -> Result<(), MapError> {
            self.entries.get(key).ok_or(MapError::KeyNotFound)?.iter().for_each(each);
            Ok(())
        }

        fn remove(&mut self, key: &K) -> Result<(), MapError> {
            self.entries.remove(key).map(drop).ok_or(MapError::KeyNotFound)
        }
    }

    impl<T: Send + Sync> PerCpuRead<T> for FakePerCpu<T> {
        fn for_each_cpu(&self, index: u32, each: &mut dyn FnMut(&T)) -> Result<(), MapError> {
            for cpu in &self.cpus {
                let value =
                    cpu.get(index as usize).ok_or(MapError::OutOfBounds { index, max_entries: cpu.len() as u32 })?;
                each(value);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_and_families_follow_the_rules() {
        let mut names = std::collections::HashSet::new();
        for spec in REGISTRY {
            assert!(names.insert(spec.name), "collector {} registered twice", spec.name);
            assert!(spec.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{}", spec.name);
            assert!(!spec.tracepoints.is_empty(), "{} attaches nothing", spec.name);
            for family in spec.families {
                assert!(family.is_valid(), "{family:?}");
                assert!(family.name.starts_with("kernel_"), "{}", family.name);
                assert!(!family.name.starts_with("kernel_exporter_"), "{} is a host statistic", family.name);
            }
        }
    }
}
