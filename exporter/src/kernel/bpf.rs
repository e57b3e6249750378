//! The embedded BPF object: loading it, and loading and attaching each
//! enabled collector's programs on its own, so one collector's failure
//! (missing tracepoint, verifier rejection) leaves the others working.
//!
//! Disabled collectors' programs are never loaded into the kernel. Dropping
//! [`Kernel`] detaches and unloads everything.

use std::io;

use aya::{
    Ebpf, EbpfLoader,
    programs::{BtfTracePoint, ProgramError, RawTracePoint},
};
use exporter_common::map_updates::{MAP_UPDATE_FAILURES_MAP, MapUpdateFailures, UPDATED_MAPS};
use tracing::{debug, error, info, warn};

use super::{
    programs::{CollectorError, Programs, Tracepoint, TracepointKind},
    test_hooks::{self, tracepoint_name},
    tracefs::Tracefs,
};

/// The object built from `exporter-ebpf` by `build.rs`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kernel-exporter-bpf"));

/// The embedded BPF object, for the test hooks' unit tests.
#[cfg(test)]
pub(crate) fn embedded_object() -> &'static [u8] {
    BPF_OBJECT
}

/// Failure to load the object as a whole (before any collector).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("cannot load the BPF object into the kernel: {0}")]
    Object(#[source] aya::EbpfError),
    /// Guessing would size per-CPU reads wrong: the kernel writes one value
    /// per possible CPU, past the end of a smaller buffer.
    #[error("cannot count the possible CPUs ({path}), which sizes every per-CPU map read: {source}")]
    Cpus {
        path: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Owns the loaded object, and with it every attached program.
pub(crate) struct Kernel {
    ebpf: Ebpf,
    /// Keeps the kernel's BPF run-time statistics on for as long as the
    /// daemon runs (`BPF_ENABLE_STATS`); `None` when the kernel refused
    /// (it needs CAP_SYS_ADMIN), and then run times are not exposed.
    _run_stats: Option<std::os::fd::OwnedFd>,
    /// Every hash-type map, by name, with its bound: their fill is
    /// `kernel_exporter_bpf_map_entries`.
    map_counters: std::sync::Mutex<MapCounters>,
    /// Failed map updates per map, counted by the programs.
    update_failures: Option<aya::maps::PerCpuArray<aya::maps::MapData, MapUpdateFailures>>,
    /// The programs' log buffer, until the runtime takes it to forward it.
    logger: std::sync::Mutex<Option<aya_log::EbpfLogger<crate::kernel::program_log::KernelLog>>>,
}

impl Kernel {
    /// Whether the kernel keeps BPF run statistics for us (`--bpf.run-stats`).
    pub(crate) fn run_stats_on(&self) -> bool {
        self._run_stats.is_some()
    }

    /// The names of the hash-type maps [`Kernel::map_entries`] reports.
    pub(crate) fn map_names(&self, mut each: impl FnMut(&str)) {
        let state = self.map_counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.counters.iter().for_each(|(name, _, _)| each(name));
    }

    /// Calls `each` with the name, entries and bound of every hash-type
    /// map. Counting walks whole maps, so counts are refreshed at most every
    /// [`MAP_COUNT_INTERVAL`]; a fill level does not need to be fresher.
    pub(crate) fn map_entries(&self, mut each: impl FnMut(&str, u64, u32)) {
        let mut state = self.map_counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let MapCounters { counters, counted } = &mut *state;
        let stale = counted.as_ref().is_none_or(|(at, _)| at.elapsed() >= MAP_COUNT_INTERVAL);
        if stale {
            let entries = counters
                .iter_mut()
                .map(|(name, _, counter)| {
                    counter.count().unwrap_or_else(|error| {
                        debug!(map = name.as_str(), "cannot count the map's entries: {error}");
                        0
                    })
                })
                .collect();
            *counted = Some((std::time::Instant::now(), entries));
        }
        if let Some((_, entries)) = counted.as_ref() {
            for ((name, bound, _), entries) in counters.iter().zip(entries) {
                each(name, *entries, *bound);
            }
        }
    }

    /// The programs' log, for [`crate::kernel::program_log::forward`] to read; `None`
    /// once taken or when the object logs nothing.
    pub(crate) fn take_logger(&self) -> Option<aya_log::EbpfLogger<crate::kernel::program_log::KernelLog>> {
        self.logger.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// Calls `each` with the name and the failed updates so far of every
    /// map the programs create entries in.
    pub(crate) fn map_update_failures(&self, mut each: impl FnMut(&'static str, u64)) {
        let mut totals = MapUpdateFailures::default();
        if let Some(map) = &self.update_failures {
            match map.get(&0, 0) {
                Ok(cpus) => cpus.iter().for_each(|cpu| {
                    for (total, count) in totals.counts.iter_mut().zip(cpu.counts) {
                        *total = total.wrapping_add(count);
                    }
                }),
                Err(error) => debug!("cannot read {MAP_UPDATE_FAILURES_MAP}: {error}"),
            }
        }
        for map in UPDATED_MAPS {
            each(map.name, totals.counts.get(map.index as usize).copied().unwrap_or(0));
        }
    }

    /// The loaded object, for what is not a collector: the allowlist
    /// socket filter (attached to sockets, not to a tracepoint) takes its
    /// program and maps from here.
    pub(crate) fn object(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Calls `each` with the name, total run time and run count of every
    /// loaded program (one `BPF_OBJ_GET_INFO_BY_FD` each).
    pub(crate) fn program_stats(&self, mut each: impl FnMut(&str, std::time::Duration, u64)) {
        for (name, program) in self.ebpf.programs() {
            // Programs of disabled or failed collectors are not loaded.
            if let Ok(info) = program.info() {
                each(name, info.run_time(), info.run_count());
            }
        }
    }

    /// Loads the object (maps are created here), then each collector in
    /// `specs`: its programs are verified, loaded and attached, and `open`
    /// takes its maps out of the object. Only a failure of the object itself
    /// is an error; each collector's own outcome is in the list, in order.
    ///
    /// `sources_tracked` bounds the allowlist's per-source map
    /// (`--web.allowlist-sources-tracked`); it is sized at load.
    /// `run_stats` (`--bpf.run-stats`) keeps the kernel's run statistics on.
    pub(crate) fn load<S: Programs, T>(
        specs: &[&S],
        sources_tracked: u32,
        run_stats: bool,
        mut open: impl FnMut(&S, &mut Ebpf) -> Result<T, CollectorError>,
    ) -> Result<(Self, Vec<Result<T, CollectorError>>), LoadError> {
        let tracefs = Tracefs::find();
        // The kernel's BTF is parsed once, only if a collector needs it,
        // and released when every collector is open.
        // Tracepoints and member offsets are checked against this kernel
        // before loading, because the offsets go into the object.
        let prepared: Vec<Result<Prepared, CollectorError>> =
            specs.iter().map(|&spec| prepare(tracefs.as_ref(), spec)).collect();

        // The programs need no CO-RE relocations (member offsets come from
        // `btf.rs`), so the loader gets no BTF; ours is dropped first.
        crate::kernel::btf::release_kernel();
        release_freed_memory();
        let mut loader = loader_without_btf();
        loader.btf(None);
        release_freed_memory();
        // Network collectors count only the devices and sockets of the
        // exporter's own namespace; 0 matches none (their `open` reports why).
        let netns_inum = own_netns_inum().unwrap_or(0);
        loader.override_global(exporter_common::net::NETNS_INUM_GLOBAL, &netns_inum, true);
        for prepared in prepared.iter().flatten() {
            for (global, offset) in &prepared.globals {
                // must_exist: a name the object lacks is a build mismatch,
                // and loading with a wrong offset would count garbage.
                loader.override_global(global, offset, true);
            }
        }
        loader.map_max_entries(exporter_common::allowlist::SOURCES_MAP, sources_tracked);
        // Borrowed by the loader until it loads.
        let test_bound = test_hooks::map_max_entries();
        if let Some((map, entries)) = &test_bound {
            loader.map_max_entries(map, *entries);
        }
        let mut ebpf = {
            // A patched copy, if a test hook made one, is freed at once.
            let object = test_hooks::bpf_object(BPF_OBJECT, specs);
            loader.load(object.bytes()).map_err(LoadError::Object)?
        };
        // Before the collectors take their maps out of the object.
        let cpus = aya::util::nr_cpus().map_err(|(path, source)| LoadError::Cpus { path, source })?;
        let map_counters = hash_map_counters(&ebpf, cpus);
        let update_failures =
            ebpf.take_map(MAP_UPDATE_FAILURES_MAP).and_then(|map| aya::maps::PerCpuArray::try_from(map).ok());
        let logger =
            match aya_log::EbpfLogger::init_with_logger(&mut ebpf, crate::kernel::program_log::KernelLog::new()) {
                Ok(logger) => Some(logger),
                Err(error) => {
                    warn!("the BPF programs' messages will not be logged: {error}");
                    None
                }
            };

        // Programs of the collectors that are up: a program two collectors
        // share (`sched_switch`) is loaded once, and stays when the other
        // collector fails.
        let mut in_use: Vec<&'static str> = Vec::new();
        let collectors = specs
            .iter()
            .zip(prepared)
            .map(|(&spec, prepared)| {
                let state = prepared
                    .and_then(|prepared| attach(&mut ebpf, spec, &prepared))
                    .and_then(|()| open(spec, &mut ebpf));
                match &state {
                    Ok(_) => {
                        in_use.extend(spec.tracepoints().iter().map(|tp| tp.program));
                        info!(collector = spec.name(), programs = spec.tracepoints().len(), "collector attached");
                    }
                    Err(error) => {
                        detach(&mut ebpf, spec, &in_use);
                        error!(collector = spec.name(), "collector is down: {}", down_reason(error));
                    }
                }
                state
            })
            .collect();
        crate::kernel::btf::release_kernel();
        release_freed_memory();
        Ok((
            Self {
                ebpf,
                _run_stats: if run_stats { enable_run_stats() } else { None },
                map_counters: std::sync::Mutex::new(MapCounters { counters: map_counters, counted: None }),
                update_failures,
                logger: std::sync::Mutex::new(logger),
            },
            collectors,
        ))
    }
}

/// What a collector's programs need from the running kernel, found before
/// the object is loaded.
#[derive(Debug, Default)]
struct Prepared {
    /// `(global, value)`: member offsets and kernel values written into the
    /// object before load.
    globals: Vec<(&'static str, u32)>,
    /// `(program, type id)` of each BTF tracepoint program: the id of the
    /// kernel's `btf_trace_<tracepoint>` typedef it is loaded against.
    btf_ids: Vec<(&'static str, u32)>,
}

/// Checks that every tracepoint of `spec` exists (where tracefs shows
/// it; raw tracepoints attach without tracefs), and finds the kernel member
/// offsets and BTF type ids its programs need.
fn prepare(tracefs: Option<&Tracefs>, spec: &impl Programs) -> Result<Prepared, CollectorError> {
    if let Some(tracefs) = tracefs {
        for tp in spec.tracepoints() {
            // Checked first so a kernel without the tracepoint gets an error
            // that says so, not a bare ENOENT from deep inside attach.
            let name = tracepoint_name(spec, tp.name);
            if !tracefs.has_event(tp.category, name) {
                return Err(CollectorError::MissingTracepoint { category: tp.category, name });
            }
        }
    }
    let needs_btf = |tp: &&Tracepoint| tp.kind == TracepointKind::Btf;
    if spec.offsets().is_empty() && !spec.tracepoints().iter().any(|tp| needs_btf(&tp)) {
        return Ok(Prepared::default());
    }
    let btf = crate::kernel::btf::kernel()?;
    let mut globals = spec
        .offsets()
        .iter()
        .map(|wanted| {
            btf.member(wanted.type_name, wanted.member)
                .filter(|member| member.size == Some(wanted.size))
                .map(|member| (wanted.global, member.offset))
                .ok_or(CollectorError::KernelType {
                    type_name: wanted.type_name,
                    member: wanted.member,
                    size: wanted.size,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    globals.extend(spec.kernel_values(&btf)?);
    let btf_ids = spec
        .tracepoints()
        .iter()
        .filter(needs_btf)
        .map(|tp| {
            let name = tracepoint_name(spec, tp.name);
            btf.tracepoint_type_id(name)
                .map(|id| (tp.program, id))
                .ok_or(CollectorError::MissingTracepoint { category: tp.category, name })
        })
        .collect::<Result<Vec<_>, _>>()?;
    debug!(collector = spec.name(), ?globals, ?btf_ids, "kernel member offsets and BTF ids");
    Ok(Prepared { globals, btf_ids })
}

/// Inode number of the exporter's network namespace: the one whose
/// `/proc/net` it sees, and the one its network statistics are about.
pub(crate) fn own_netns_inum() -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let inode = std::fs::metadata("/proc/self/ns/net")?.ino();
    u32::try_from(inode).map_err(|_| io::Error::other(format!("namespace inode {inode} is not a 32-bit number")))
}

fn attach(ebpf: &mut Ebpf, spec: &impl Programs, prepared: &Prepared) -> Result<(), CollectorError> {
    for tp in spec.tracepoints() {
        let name = tracepoint_name(spec, tp.name);
        let load_error = |source: ProgramError| {
            if let ProgramError::LoadError { verifier_log, .. } = &source {
                debug!(program = tp.program, "verifier log:\n{verifier_log}");
            }
            CollectorError::Load { program: tp.program, source: Box::new(source) }
        };
        let attach_error = |source: ProgramError| match &source {
            ProgramError::SyscallError(error) if error.io_error.kind() == io::ErrorKind::NotFound => {
                CollectorError::MissingTracepoint { category: tp.category, name }
            }
            _ => CollectorError::Attach { program: tp.program, category: tp.category, name, source: Box::new(source) },
        };
        let missing = || CollectorError::MissingProgram { program: tp.program };
        // Loaded and attached already for a collector before this one that
        // shares the program (a failed collector unloads its own).
        if ebpf.program(tp.program).is_some_and(|program| program.fd().is_ok()) {
            debug!(program = tp.program, "attached already, shared with another collector");
            continue;
        }
        match tp.kind {
            TracepointKind::Raw => {
                let program: &mut RawTracePoint =
                    ebpf.program_mut(tp.program).and_then(|p| p.try_into().ok()).ok_or_else(missing)?;
                program.load().map_err(load_error)?;
                program.attach(name).map_err(attach_error)?;
            }
            TracepointKind::Btf => {
                let id = prepared
                    .btf_ids
                    .iter()
                    .find_map(|(program, id)| (*program == tp.program).then_some(*id))
                    .ok_or(CollectorError::MissingTracepoint { category: tp.category, name })?;
                let stand_in =
                    aya::Btf::parse(&crate::kernel::btf::tracepoint_stand_in(name, id), aya::Endianness::Little)
                        .map_err(|source| load_error(ProgramError::Btf(source)))?;
                let program: &mut BtfTracePoint =
                    ebpf.program_mut(tp.program).and_then(|p| p.try_into().ok()).ok_or_else(missing)?;
                program.load(name, &stand_in).map_err(load_error)?;
                program.attach().map_err(attach_error)?;
            }
        }
        debug!(program = tp.program, tracepoint = %format_args!("{}/{}", tp.category, tp.name), "attached");
    }
    Ok(())
}

/// Unloads whatever part of a failed collector got loaded, so a half
/// attached collector never counts; programs in `in_use` (shared with a
/// collector that is up) stay.
fn detach(ebpf: &mut Ebpf, spec: &impl Programs, in_use: &[&str]) {
    for tp in spec.tracepoints() {
        if in_use.contains(&tp.program) {
            continue;
        }
        let Some(program) = ebpf.program_mut(tp.program) else { continue };
        // Unloading a program that was never loaded fails harmlessly.
        let _ = match tp.kind {
            TracepointKind::Raw => <&mut RawTracePoint>::try_from(program).map(RawTracePoint::unload),
            TracepointKind::Btf => <&mut BtfTracePoint>::try_from(program).map(BtfTracePoint::unload),
        };
    }
}

/// How often map fill levels are recounted.
const MAP_COUNT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The entry counters and their last counts.
pub(crate) struct MapCounters {
    counters: Vec<(String, u32, crate::kernel::batch::EntryCounter)>,
    counted: Option<(std::time::Instant, Vec<u64>)>,
}

/// Entry counters for every hash-type map of the object, on duplicated
/// descriptors (a map the kernel does not describe is left out).
/// `cpus`: possible CPUs, the number of values per key of a per-CPU map.
fn hash_map_counters(ebpf: &Ebpf, cpus: usize) -> Vec<(String, u32, crate::kernel::batch::EntryCounter)> {
    use std::os::fd::AsFd as _;
    ebpf.maps()
        .filter_map(|(name, map)| {
            let (data, per_cpu) = match map {
                aya::maps::Map::HashMap(data) | aya::maps::Map::LruHashMap(data) => (data, false),
                aya::maps::Map::PerCpuHashMap(data) | aya::maps::Map::PerCpuLruHashMap(data) => (data, true),
                _ => return None,
            };
            let info = data.info().ok()?;
            let fd = data.fd().as_fd().try_clone_to_owned().ok()?;
            let counter = crate::kernel::batch::EntryCounter::new(
                fd,
                info.key_size() as usize,
                info.value_size() as usize,
                per_cpu,
                cpus,
            );
            Some((name.to_owned(), info.max_entries(), counter))
        })
        .collect()
}

/// Turns the kernel's per-program run statistics on for the daemon's
/// lifetime (`--bpf.run-stats`). They cost two clock reads per program run
/// — measured here, they more than double the syscalls collector's cost
/// per event — which is why they are off unless asked for.
fn enable_run_stats() -> Option<std::os::fd::OwnedFd> {
    match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => Some(fd),
        Err(error) => {
            info!(
                "--bpf.run-stats: the kernel refused to enable BPF run statistics (it needs CAP_SYS_ADMIN): {}; \
                 kernel_exporter_bpf_program_run* are left out",
                error.io_error
            );
            None
        }
    }
}

/// `EbpfLoader::new()` without its parse of the kernel's BTF.
///
/// aya 0.14's only constructor parses `/sys/kernel/btf/vmlinux` (about
/// 25 MB of heap for a 5 MB file) even for a caller that then says
/// `btf(None)`; that parse alone was most of the daemon's peak memory. For
/// the duration of the call the soft open-files limit is lowered to the
/// lowest free descriptor, so the one `open` inside fails at once (EMFILE)
/// and the loader starts without BTF, which is what `btf(None)` would leave
/// anyway. Done only while the process has a single thread, so no other
/// thread can be refused a descriptor meanwhile; otherwise, or if the limit
/// cannot be changed, the loader is built the ordinary way.
fn loader_without_btf() -> EbpfLoader<'static> {
    let single_threaded = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status.lines().find_map(|line| line.strip_prefix("Threads:")).map(|n| n.trim() == "1"))
        .unwrap_or(false);
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    if !single_threaded || unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return EbpfLoader::new();
    }
    // SAFETY: opening /dev/null read-only has no side effect; the descriptor
    // (the lowest free one) is closed at once.
    let lowest_free = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if lowest_free < 0 {
        return EbpfLoader::new();
    }
    // SAFETY: closing the descriptor just opened.
    unsafe { libc::close(lowest_free) };
    let lowered = libc::rlimit { rlim_cur: lowest_free as libc::rlim_t, rlim_max: limit.rlim_max };
    // SAFETY: setrlimit reads the struct it is given; lowering the soft
    // limit below the hard limit needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) } != 0 {
        return EbpfLoader::new();
    }
    let loader = EbpfLoader::new();
    // SAFETY: as above; restores the limit read before.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        warn!("could not restore the open-files limit after creating the BPF loader");
    }
    loader
}

/// Hands memory freed after start-up (the kernel's BTF, the object's
/// parse) back to the system, so it does not stay in the resident set.
/// musl's allocator (the static container build) returns freed pages to
/// the kernel on its own and has no `malloc_trim`.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0)
    };
}

/// An error and its causes on one line: verifier logs are many lines long
/// (the whole log goes to debug level).
fn one_line(error: &dyn std::error::Error) -> String {
    const LIMIT: usize = 600;
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    let mut line: String = line.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > LIMIT {
        let mut cut = LIMIT;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("… (full verifier log at --log.level=debug)");
    }
    line
}

/// The line a collector that went down logs. For a verifier rejection that
/// is the verifier's reason (the last line of its log before the
/// statistics), which the first few hundred characters of the log, all
/// register states, would not reach.
fn down_reason(error: &CollectorError) -> String {
    if let CollectorError::Load { program, source } = error
        && let ProgramError::LoadError { io_error, verifier_log } = source.as_ref()
        && let Some(reason) = verifier_reason(&verifier_log.to_string())
    {
        return format!(
            "the kernel's verifier rejected program {program} ({io_error}): {reason} \
             (full verifier log at --log.level=debug)"
        );
    }
    one_line(error)
}

/// The last line of a verifier log that is not a statistic or a state dump.
fn verifier_reason(log: &str) -> Option<&str> {
    const TRAILERS: [&str; 5] = ["verification time", "stack depth", "processed ", "cur state:", "old state:"];
    log.lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty() && !TRAILERS.iter().any(|trailer| line.starts_with(trailer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifiers_reason_is_its_last_line_before_the_statistics() {
        // The end of a real log (the test hook's endless loop, kernel 6.18).
        let log = "29: (b7) r0 = 0                       ; R0=0\n30: (05) goto pc-1\n\
                   infinite loop detected at insn 30\ncur state: R0=0 R1=scalar() R10=fp0\n\
                   old state: R0=0 R1=scalar() R10=fp0\nverification time 140 usec\nstack depth 16\n\
                   processed 30 insns (limit 1000000) max_states_per_insn 0 total_states 3 peak_states 3 mark_read 0\n";
        assert_eq!(verifier_reason(log), Some("infinite loop detected at insn 30"));
        assert_eq!(
            verifier_reason("R1 invalid mem access 'scalar'\nprocessed 3 insns\n"),
            Some("R1 invalid mem access 'scalar'")
        );
        assert_eq!(verifier_reason("\nprocessed 3 insns\n"), None);
    }
}
