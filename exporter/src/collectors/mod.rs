//! The collector registry and what every collector has in common.
//!
//! A collector is one concept in three places: its kernel programs
//! (`exporter-ebpf/src/<name>.rs`), its map layout
//! (`exporter-common/src/<name>.rs`) and the module here that turns its maps
//! into metric families. Adding one means those three files plus one line in
//! [`REGISTRY`]: everything collector-specific (kernel values, options)
//! reaches the loader and the command line through its [`CollectorSpec`].
//!
//! Collectors read their own maps and write through the encoder; they know
//! nothing of scrapes' bookkeeping, HTTP or the front door.

mod block;
mod cgroup;
mod irq;
mod mm;
mod net;
mod procfs;
mod sched;
mod signal;
mod syscall_names;
mod syscall_tables;
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
    &[sched::SPEC, syscalls::SPEC, mm::SPEC, irq::SPEC, signal::SPEC, block::SPEC, tcp::SPEC, net::SPEC, cgroup::SPEC];

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
    /// Other values from the kernel's BTF the programs read from globals
    /// ([`Programs::kernel_values`]); `None` for a collector without any.
    pub(crate) kernel_values: Option<KernelValuesFn>,
    /// The collector's `--collector.NAME.OPTION=VALUE` flags; their values
    /// reach `open` in [`CollectorOptions`].
    pub(crate) options: &'static [CollectorOption],
    /// Every family the collector may write, for the naming tests.
    #[cfg(test)]
    pub(crate) families: &'static [Family],
    /// Takes the collector's maps out of the loaded object once its programs
    /// are attached.
    pub(crate) open: OpenFn,
}

impl CollectorOptions {
    /// The value given for `collector`'s option `option`, if any.
    pub(crate) fn regex(&self, collector: &str, option: &str) -> Option<&regex::Regex> {
        self.regexes.iter().find(|(c, o, _)| *c == collector && *o == option).map(|(_, _, regex)| regex)
    }

    /// The value given for `collector`'s [`OptionKind::Count`] option
    /// `option`, if any.
    pub(crate) fn count(&self, collector: &str, option: &str) -> Option<usize> {
        self.counts.iter().find(|(c, o, _)| *c == collector && *o == option).map(|(_, _, count)| *count)
    }
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
        self.kernel_values.map_or_else(|| Ok(Vec::new()), |values| values(btf))
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

/// Finds a collector's [`Programs::kernel_values`] in the kernel's BTF.
pub(crate) type KernelValuesFn = fn(&Btf) -> Result<Vec<(&'static str, u32)>, CollectorError>;

/// A `--collector.<collector>.<name>=VALUE` flag, declared by its collector.
#[derive(Debug)]
pub(crate) struct CollectorOption {
    pub(crate) name: &'static str,
    /// One line for `--help`.
    pub(crate) help: &'static str,
    pub(crate) kind: OptionKind,
}

/// What a [`CollectorOption`]'s value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OptionKind {
    /// A regex (`CollectorOptions::regex`).
    Regex,
    /// A positive whole number (`CollectorOptions::count`); the collector
    /// knows its default.
    Count,
}

/// Options of individual collectors, from the `--collector.NAME.OPTION`
/// flags their specs declare.
#[derive(Debug, Default, Clone)]
pub(crate) struct CollectorOptions {
    /// `(collector, option, value)` of every regex option given.
    pub(crate) regexes: Vec<(&'static str, &'static str, regex::Regex)>,
    /// `(collector, option, value)` of every count option given.
    pub(crate) counts: Vec<(&'static str, &'static str, usize)>,
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
            for option in spec.options {
                assert!(option.name.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{}", option.name);
                assert_eq!(spec.options.iter().filter(|o| o.name == option.name).count(), 1, "{}", option.name);
            }
            for family in spec.families {
                assert!(family.is_valid(), "{family:?}");
                assert!(family.name.starts_with("kernel_"), "{}", family.name);
                assert!(!family.name.starts_with("kernel_exporter_"), "{} is a host statistic", family.name);
            }
        }
    }

    /// Everything collector-specific reaches the loader and the command
    /// line through the collector's spec: a test-only collector, built as
    /// the real ones are, needs no line anywhere else.
    #[test]
    fn a_collector_reaches_the_loader_through_its_spec_alone() {
        fn values(_: &Btf) -> Result<Vec<(&'static str, u32)>, CollectorError> {
            Ok(vec![("TEST_GLOBAL", 7)])
        }
        fn open(_: &mut Ebpf, _: &CollectorOptions) -> Result<Box<dyn Collector>, CollectorError> {
            Err(CollectorError::MissingMap { map: "test" })
        }
        const OPTION: CollectorOption =
            CollectorOption { name: "thing-exclude", help: "Things to leave out", kind: OptionKind::Regex };
        const TEST: CollectorSpec = CollectorSpec {
            name: "test",
            help: "a collector for this test",
            default_enabled: false,
            tracepoints: &[],
            offsets: &[],
            kernel_values: Some(values),
            options: &[OPTION],
            families: &[],
            open,
        };
        let btf = Btf::parse(crate::kernel::btf::tracepoint_stand_in("test", 1)).expect("a BTF");
        assert_eq!(Programs::kernel_values(&TEST, &btf).unwrap(), [("TEST_GLOBAL", 7)]);
        let without = REGISTRY.iter().find(|spec| spec.kernel_values.is_none()).expect("a collector without");
        assert_eq!(Programs::kernel_values(without, &btf).unwrap(), []);
        let options = CollectorOptions {
            regexes: vec![("test", "thing-exclude", regex::Regex::new("^x").unwrap())],
            ..Default::default()
        };
        // What `open` reads its option with.
        assert!(options.regex(TEST.name, OPTION.name).is_some());
        assert!(options.regex("block", "thing-exclude").is_none());
    }
}
