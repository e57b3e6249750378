//! `signal`: signals generated per signal, counted by the kernel program in
//! `exporter-ebpf/src/signal.rs` and summed over CPUs here.
//!
//! "Generated" is the kernel's word for an attempt to send: `kill(2)`,
//! `tgkill(2)`, `sigqueue(3)`, timers, faults (`SIGSEGV`), the kernel's own
//! `SIGCHLD` and `SIGKILL`. Every attempt counts, including signals the
//! target ignores or already has pending, which are then never delivered.

use aya::{Ebpf, maps::MapError};
use exporter_common::signal::{MAX_SIGNAL, SIGNALS_GENERATED_MAP, SignalCounts};

use super::{Collector, CollectorError, CollectorOptions, CollectorSpec, PerCpuRead, Tracepoint};
use crate::exposition::encode::{Encoder, Family, Series};

const GENERATED: Family = Family::counter(
    "kernel_signals_generated_total",
    "Signals sent to tasks, by signal, counting every attempt including ignored and already-pending ones \
     (signal:signal_generate).",
);

/// Names of the standard signals 1..=31, indexed by number − 1: Linux's
/// numbering on x86_64 (and arm64, which shares it).
const STANDARD: [&str; 31] = [
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// glibc's `SIGRTMIN`: it keeps 32 and 33 for its threads library.
const SIGRTMIN: usize = 34;

/// The `signal` label of signal `sig` (1..=64).
///
/// 1..=31 have standard names. 32 and 33 are real-time signals the C
/// library reserves and names nothing; they are `SIG32` and `SIG33`. From
/// 34 on, the names are glibc's as a program sees them: `SIGRTMIN`,
/// `SIGRTMIN+1` … `SIGRTMIN+29`, and `SIGRTMAX` for 64. (`kill -l` names
/// 50..=63 `SIGRTMAX-14`..`SIGRTMAX-1`; one rule for the whole range reads
/// back to a number more easily.)
fn signal_name(sig: usize) -> String {
    match sig {
        1..=31 => STANDARD[sig - 1].to_owned(),
        MAX_SIGNAL => "SIGRTMAX".to_owned(),
        SIGRTMIN => "SIGRTMIN".to_owned(),
        s if s > SIGRTMIN && s < MAX_SIGNAL => format!("SIGRTMIN+{}", s - SIGRTMIN),
        s => format!("SIG{s}"),
    }
}

pub(super) const SPEC: CollectorSpec = CollectorSpec {
    name: "signal",
    help: "signals generated, per signal, from the signal_generate tracepoint; fires once per signal sent, a few \
           ns above the kernel's floor",
    default_enabled: true,
    tracepoints: &[Tracepoint::raw("signal_generate", "signal", "signal_generate")],
    offsets: &[],
    kernel_values: None,
    options: &[],
    #[cfg(test)]
    families: &[GENERATED],
    open,
};

fn open(ebpf: &mut Ebpf, _options: &CollectorOptions) -> Result<Box<dyn Collector>, CollectorError> {
    let counts = super::take_per_cpu_array::<SignalCounts>(ebpf, SIGNALS_GENERATED_MAP)?;
    Ok(Box::new(Signal::new(counts)))
}

struct Signal<C> {
    counts: C,
    /// `series[sig - 1]` for every signal 1..=64, built once: which signals
    /// a host sees changes over time, and a scrape must not allocate.
    series: Box<[Series]>,
}

impl<C> Signal<C> {
    fn new(counts: C) -> Self {
        let series = (1..=MAX_SIGNAL).map(|sig| Series::new(&GENERATED, &[("signal", &signal_name(sig))])).collect();
        Self { counts, series }
    }
}

impl<C: PerCpuRead<SignalCounts>> Collector for Signal<C> {
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        let mut total = SignalCounts::default();
        self.counts.for_each_cpu(0, &mut |cpu| total.merge(cpu))?;
        // Most hosts see a handful of the 64 signals: a signal that was
        // never sent has no series rather than 64 mostly-zero ones. Counters
        // never go back, so a series once shown stays.
        let generated = total.generated.get(1..).unwrap_or_default();
        if generated.iter().all(|&count| count == 0) {
            return Ok(());
        }
        out.family(&GENERATED);
        for (series, &count) in self.series.iter().zip(generated) {
            if count != 0 {
                out.sample(series, count);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::collectors::testing::{FakePerCpu, scrape};

    fn counts(pairs: &[(usize, u64)]) -> SignalCounts {
        let mut counts = SignalCounts::default();
        for &(sig, n) in pairs {
            counts.generated[sig] = n;
        }
        counts
    }

    #[test]
    fn sums_every_cpu_and_shows_only_signals_seen() {
        let signal = Signal::new(FakePerCpu {
            cpus: vec![vec![counts(&[(17, 3), (10, 1)])], vec![counts(&[(17, 4), (64, 2)])], vec![counts(&[])]],
        });
        let text = scrape(&signal);
        let samples: Vec<&str> = text.lines().filter(|line| !line.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "kernel_signals_generated_total{signal=\"SIGUSR1\"} 1",
                "kernel_signals_generated_total{signal=\"SIGCHLD\"} 7",
                "kernel_signals_generated_total{signal=\"SIGRTMAX\"} 2",
            ],
            "{text}"
        );
        assert_eq!(text.matches("# TYPE kernel_signals_generated_total counter\n").count(), 1, "{text}");
    }

    #[test]
    fn nothing_counted_writes_nothing() {
        let signal = Signal::new(FakePerCpu { cpus: vec![vec![SignalCounts::default()]; 2] });
        assert_eq!(scrape(&signal), "");
    }

    #[test]
    fn index_zero_is_never_a_series() {
        // Slot 0 is no signal: even if it held something, it is not exposed.
        let signal = Signal::new(FakePerCpu { cpus: vec![vec![counts(&[(0, 9), (9, 1)])]] });
        let text = scrape(&signal);
        assert_eq!(text.matches("kernel_signals_generated_total{").count(), 1, "{text}");
        assert!(text.contains("{signal=\"SIGKILL\"} 1\n"), "{text}");
    }

    #[test]
    fn label_values_are_64_distinct_names() {
        let names: Vec<String> = (1..=MAX_SIGNAL).map(signal_name).collect();
        assert_eq!(names.len(), 64);
        assert_eq!(names.iter().collect::<std::collections::HashSet<_>>().len(), 64, "{names:?}");
        assert_eq!(names[0], "SIGHUP");
        assert_eq!(names[libc::SIGUSR1 as usize - 1], "SIGUSR1");
        assert_eq!(names[libc::SIGCHLD as usize - 1], "SIGCHLD");
        assert_eq!(names[libc::SIGURG as usize - 1], "SIGURG");
        assert_eq!(names[libc::SIGSYS as usize - 1], "SIGSYS");
        assert_eq!(names[31], "SIG32");
        assert_eq!(names[32], "SIG33");
        assert_eq!(names[33], "SIGRTMIN");
        assert_eq!(names[34], "SIGRTMIN+1");
        assert_eq!(names[62], "SIGRTMIN+29");
        assert_eq!(names[63], "SIGRTMAX");
        // glibc's run-time values agree with the names.
        assert_eq!(libc::SIGRTMIN() as usize, SIGRTMIN);
        assert_eq!(libc::SIGRTMAX() as usize, MAX_SIGNAL);
        // Every standard name matches libc's number for it on this target.
        for (name, number) in [
            ("SIGHUP", libc::SIGHUP),
            ("SIGSTKFLT", libc::SIGSTKFLT),
            ("SIGWINCH", libc::SIGWINCH),
            ("SIGPWR", libc::SIGPWR),
        ] {
            assert_eq!(names[number as usize - 1], name);
        }
    }

    #[test]
    fn map_errors_are_reported() {
        let signal = Signal::new(FakePerCpu::<SignalCounts> { cpus: vec![vec![]] });
        let mut buf = BytesMut::new();
        assert!(signal.collect(&mut Encoder::new(&mut buf)).is_err());
    }
}
