//! The embedded BPF object: loading it, and loading and attaching each
//! enabled collector's programs on its own, so one collector's failure
//! (missing tracepoint, verifier rejection) leaves the others working.
//!
//! Disabled collectors' programs are never loaded into the kernel. Dropping
//! [`Kernel`] detaches and unloads everything.

use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, TracePoint},
};
use tracing::{debug, error, info};

use crate::{
    collectors::{Collector, CollectorError, CollectorSpec},
    tracefs::Tracefs,
};

/// The object built from `exporter-ebpf` by `build.rs`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kernel-exporter-bpf"));

/// Failure to load the object as a whole (before any collector).
#[derive(Debug, thiserror::Error)]
#[error("cannot load the BPF object into the kernel: {0}")]
pub(crate) struct LoadError(#[source] aya::EbpfError);

/// Owns the loaded object, and with it every attached program.
pub(crate) struct Kernel {
    _ebpf: Ebpf,
}

/// An enabled collector, working or not.
pub(crate) struct LoadedCollector {
    pub(crate) name: &'static str,
    pub(crate) state: Result<Box<dyn Collector>, CollectorError>,
}

impl Kernel {
    /// Loads the object (maps are created here), then each collector in
    /// `specs`: its programs are verified, loaded and attached, and its maps
    /// handed to it. Only a failure of the object itself is an error.
    pub(crate) fn load(specs: &[&'static CollectorSpec]) -> Result<(Self, Vec<LoadedCollector>), LoadError> {
        let tracefs = Tracefs::find();
        // Tracepoints and field offsets are checked against this kernel
        // before loading, because the offsets go into the object.
        let prepared: Vec<Result<Vec<(&'static str, u32)>, CollectorError>> = specs
            .iter()
            .map(|spec| {
                let tracefs = tracefs.as_ref().ok_or(CollectorError::TracefsNotMounted)?;
                prepare(tracefs, spec)
            })
            .collect();

        let mut loader = EbpfLoader::new();
        for offsets in prepared.iter().flatten() {
            for (global, offset) in offsets {
                // must_exist: a name the object lacks is a build mismatch,
                // and loading with a wrong offset would count garbage.
                loader.override_global(global, offset, true);
            }
        }
        let mut ebpf = loader.load(BPF_OBJECT).map_err(LoadError)?;

        let collectors = specs
            .iter()
            .zip(prepared)
            .map(|(spec, prepared)| {
                let state = prepared.and_then(|_| attach(&mut ebpf, spec)).and_then(|()| (spec.open)(&mut ebpf));
                match &state {
                    Ok(_) => info!(collector = spec.name, programs = spec.tracepoints.len(), "collector attached"),
                    Err(error) => {
                        detach(&mut ebpf, spec);
                        error!(collector = spec.name, "collector is down: {}", one_line(error));
                    }
                }
                LoadedCollector { name: spec.name, state }
            })
            .collect();
        Ok((Self { _ebpf: ebpf }, collectors))
    }
}

/// Checks that every tracepoint of `spec` exists, and reads its field
/// offsets from tracefs.
fn prepare(tracefs: &Tracefs, spec: &CollectorSpec) -> Result<Vec<(&'static str, u32)>, CollectorError> {
    for tp in spec.tracepoints {
        // Checked first so a kernel without the tracepoint gets an error
        // that says so, not a bare ENOENT from deep inside attach.
        if !tracefs.has_event(tp.category, tp.name) {
            return Err(CollectorError::MissingTracepoint { category: tp.category, name: tp.name });
        }
    }
    let mut offsets: Vec<(&'static str, u32)> = Vec::with_capacity(spec.fields.len());
    for wanted in spec.fields {
        let missing = || CollectorError::Field {
            category: wanted.category,
            event: wanted.event,
            field: wanted.field,
            size: wanted.size,
        };
        let field = tracefs
            .field(wanted.category, wanted.event, wanted.field)
            .filter(|field| field.size == wanted.size)
            .ok_or_else(missing)?;
        // Events of one class share a global; they must agree.
        match offsets.iter().find(|(global, _)| *global == wanted.global) {
            Some(&(_, offset)) if offset != field.offset => return Err(missing()),
            Some(_) => {}
            None => offsets.push((wanted.global, field.offset)),
        }
    }
    debug!(collector = spec.name, tracefs = %tracefs.root().display(), ?offsets, "field offsets");
    Ok(offsets)
}

fn attach(ebpf: &mut Ebpf, spec: &CollectorSpec) -> Result<(), CollectorError> {
    for tp in spec.tracepoints {
        let program = tracepoint_program(ebpf, tp.program)?;
        program.load().map_err(|source| {
            if let ProgramError::LoadError { verifier_log, .. } = &source {
                debug!(program = tp.program, "verifier log:\n{verifier_log}");
            }
            CollectorError::Load { program: tp.program, source: Box::new(source) }
        })?;
        program.attach(tp.category, tp.name).map_err(|source| CollectorError::Attach {
            program: tp.program,
            category: tp.category,
            name: tp.name,
            source: Box::new(source),
        })?;
        debug!(program = tp.program, tracepoint = %format_args!("{}/{}", tp.category, tp.name), "attached");
    }
    Ok(())
}

/// Unloads whatever part of a failed collector got loaded, so a half
/// attached collector never counts.
fn detach(ebpf: &mut Ebpf, spec: &CollectorSpec) {
    for tp in spec.tracepoints {
        if let Ok(program) = tracepoint_program(ebpf, tp.program) {
            // Unloading a program that was never loaded fails harmlessly.
            let _ = program.unload();
        }
    }
}

fn tracepoint_program<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut TracePoint, CollectorError> {
    ebpf.program_mut(program).and_then(|p| p.try_into().ok()).ok_or(CollectorError::MissingProgram { program })
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
