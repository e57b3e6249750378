//! One scrape: every collector's families, the collectors' health and the
//! build information, written into one buffer that is reused from scrape to
//! scrape and handed to hyper without a copy; and the exporter's own metrics.
//!
//! It builds bodies; serving them (HTTP, auth, negotiation) is the front
//! door's, which depends on this module and never the other way round.

pub(crate) mod program_stats;
pub(crate) mod self_metrics;

use std::{
    sync::{Mutex, PoisonError},
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use tracing::warn;

use crate::exposition::self_families::{BUILD_INFO, COLLECTOR_DURATION, COLLECTOR_UP};
use crate::{
    collectors::LoadedCollector,
    collectors::{Collector, CollectorError, REGISTRY},
    exposition::encode::{Encoder, Format, Series},
    scrape::self_metrics::SelfMetrics,
};

// Collector health is tracked in a u64 bit set during a scrape.
const _: () = assert!(REGISTRY.len() <= 64);

/// Builds scrape bodies. Shared by every connection.
pub(crate) struct Scraper {
    collectors: Vec<Entry>,
    build_info: Series,
    self_metrics: SelfMetrics,
    /// The exporter's own statistics that read the kernel (BPF program
    /// run statistics): written after the collectors' health, never
    /// reported as collectors.
    internal: Vec<Box<dyn Collector>>,
    buffer: Mutex<Buffer>,
}

struct Entry {
    name: &'static str,
    state: Result<Box<dyn Collector>, CollectorError>,
    up: Series,
    duration: Series,
}

/// The collectors one scrape reads, as a bit per collector (in the order
/// the scraper holds them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Selection(u64);

/// A `collect[]`/`exclude[]` query that cannot be served.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SelectError {
    #[error("collect[] and exclude[] cannot be used together")]
    Both,
    #[error("collector {0:?} is unknown or not enabled")]
    Unknown(String),
}

struct Buffer {
    bytes: BytesMut,
    /// Size of the previous body: the next scrape reserves this much, which
    /// takes the old allocation back once hyper has dropped the last body.
    last_len: usize,
}

impl Scraper {
    pub(crate) fn new(collectors: Vec<LoadedCollector>, self_metrics: SelfMetrics) -> Self {
        let collectors = collectors
            .into_iter()
            .map(|LoadedCollector { name, state }| Entry {
                name,
                state,
                up: Series::new(&COLLECTOR_UP, &[("collector", name)]),
                duration: Series::new(&COLLECTOR_DURATION, &[("collector", name)]),
            })
            .collect();
        let build_info = Series::new(
            &BUILD_INFO,
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", env!("KERNEL_EXPORTER_REVISION")),
                ("rustc_version", env!("KERNEL_EXPORTER_RUSTC_VERSION")),
            ],
        );
        Self {
            collectors,
            build_info,
            self_metrics,
            internal: Vec::new(),
            buffer: Mutex::new(Buffer { bytes: BytesMut::new(), last_len: 4096 }),
        }
    }

    /// Adds the exporter's own kernel-side statistics to every scrape.
    pub(crate) fn with_internal(mut self, internal: Box<dyn Collector>) -> Self {
        self.internal.push(internal);
        self
    }

    /// Every collector.
    pub(crate) fn all(&self) -> Selection {
        Selection(if self.collectors.len() >= 64 { u64::MAX } else { (1u64 << self.collectors.len()) - 1 })
    }

    /// The collectors node_exporter's `collect[]=NAME` (only these) or
    /// `exclude[]=NAME` (all but these) query parameters select; names must
    /// be enabled collectors.
    pub(crate) fn select(&self, collect: &[String], exclude: &[String]) -> Result<Selection, SelectError> {
        let mask = |names: &[String]| {
            names.iter().try_fold(0u64, |mask, name| {
                let i = self
                    .collectors
                    .iter()
                    .position(|entry| entry.name == name)
                    .ok_or_else(|| SelectError::Unknown(name.clone()))?;
                Ok(mask | 1 << i)
            })
        };
        match (collect.is_empty(), exclude.is_empty()) {
            (true, true) => Ok(self.all()),
            (false, true) => mask(collect).map(Selection),
            (true, false) => mask(exclude).map(|excluded| Selection(self.all().0 & !excluded)),
            (false, false) => Err(SelectError::Both),
        }
    }

    /// Reads the selected collectors' maps and returns the exposition body.
    pub(crate) fn scrape(&self, format: Format, selection: Selection) -> Bytes {
        let started = Instant::now();
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let Buffer { bytes, last_len } = &mut *buffer;
        bytes.reserve(*last_len);
        let mut out = Encoder::with_format(bytes, format);

        let selected = |i: usize| selection.0 >> i & 1 == 1;
        let mut up = 0u64;
        // Seconds per collector, kept on the stack (at most 64 collectors).
        let mut durations = [0f64; 64];
        for (i, entry) in self.collectors.iter().enumerate() {
            let Ok(collector) = &entry.state else { continue };
            if !selected(i) {
                continue;
            }
            let mark = out.mark();
            let started = Instant::now();
            match collector.collect(&mut out) {
                Ok(()) => up |= 1 << i,
                Err(error) => {
                    out.rollback(mark);
                    warn!(collector = entry.name, "cannot read the collector's maps: {error}");
                }
            }
            durations[i] = started.elapsed().as_secs_f64();
        }

        out.family(&COLLECTOR_UP);
        for (i, entry) in self.collectors.iter().enumerate().filter(|(i, _)| selected(*i)) {
            out.sample(&entry.up, (up >> i) & 1);
        }
        out.family(&COLLECTOR_DURATION);
        for (i, entry) in self.collectors.iter().enumerate().filter(|(i, _)| selected(*i)) {
            out.sample_f64(&entry.duration, durations[i]);
        }
        out.family(&BUILD_INFO);
        out.sample(&self.build_info, 1);
        for internal in &self.internal {
            let mark = out.mark();
            if let Err(error) = internal.collect(&mut out) {
                out.rollback(mark);
                warn!("cannot read the exporter's own kernel statistics: {error}");
            }
        }
        self.self_metrics.encode_into(&mut out);
        out.finish();

        *last_len = bytes.len();
        // Seen from the next scrape on.
        self.self_metrics.observe_scrape(started.elapsed().as_secs_f64());
        bytes.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use aya::maps::MapError;

    use super::*;
    use crate::exposition::encode::Family;

    struct Fixed(Result<(), ()>);

    impl Collector for Fixed {
        fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
            out.single(&Family::counter("kernel_test_events_total", "Test events."), 7);
            self.0.map_err(|()| MapError::KeyNotFound)
        }
    }

    fn scraper() -> Scraper {
        Scraper::new(
            vec![
                LoadedCollector { name: "good", state: Ok(Box::new(Fixed(Ok(())))) },
                LoadedCollector { name: "failing", state: Ok(Box::new(Fixed(Err(())))) },
                LoadedCollector {
                    name: "missing",
                    state: Err(CollectorError::MissingTracepoint { category: "x", name: "y" }),
                },
            ],
            SelfMetrics::new(),
        )
    }

    #[test]
    fn one_failing_collector_does_not_fail_the_scrape() {
        let body = scraper().scrape(Format::Text, scraper().all());
        let text = std::str::from_utf8(&body).unwrap();
        // The failing collector's partial output is rolled back.
        assert_eq!(text.matches("kernel_test_events_total 7\n").count(), 1, "{text}");
        assert!(text.contains("kernel_exporter_collector_up{collector=\"good\"} 1\n"), "{text}");
        assert!(text.contains("kernel_exporter_collector_up{collector=\"failing\"} 0\n"), "{text}");
        assert!(text.contains("kernel_exporter_collector_up{collector=\"missing\"} 0\n"), "{text}");
        assert!(text.contains("kernel_exporter_build_info{version=\""), "{text}");
        assert!(text.contains("\nkernel_exporter_scrapes_total 0\n"), "{text}");
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
    }

    #[test]
    fn the_buffer_is_reused_once_the_body_is_dropped() {
        // Bodies differ only in the measured durations.
        fn stable(body: &[u8]) -> String {
            std::str::from_utf8(body)
                .unwrap()
                .lines()
                .filter(|l| {
                    !l.contains("_duration_seconds")
                        && !l.starts_with("kernel_exporter_scrapes")
                        && !l.starts_with("process_")
                })
                .collect()
        }
        let scraper = scraper();
        let first = scraper.scrape(Format::Text, scraper.all());
        let expected = stable(&first);
        let region = first.as_ptr() as usize..first.as_ptr() as usize + 4096;
        drop(first);
        // Bodies dropped after sending: every scrape writes into the first
        // allocation, going back to its start when the end is reached.
        for _ in 0..50 {
            let body = scraper.scrape(Format::Text, scraper.all());
            assert!(region.contains(&(body.as_ptr() as usize)), "scrape allocated a new buffer");
            assert_eq!(stable(&body), expected);
        }
        // Bodies still held (slow clients) are never overwritten: later
        // scrapes move to fresh memory instead.
        let held: Vec<Bytes> = (0..50).map(|_| scraper.scrape(Format::Text, scraper.all())).collect();
        assert!(held.iter().all(|body| stable(body) == expected));
        assert!(held.iter().any(|body| !region.contains(&(body.as_ptr() as usize))));
    }

    #[test]
    fn collect_and_exclude_select_collectors() {
        let scraper = scraper();
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(scraper.select(&[], &[]), Ok(scraper.all()));
        assert_eq!(scraper.select(&names(&["failing"]), &[]), Ok(Selection(0b010)));
        assert_eq!(scraper.select(&[], &names(&["good"])), Ok(Selection(0b110)));
        assert_eq!(scraper.select(&names(&["good"]), &names(&["good"])), Err(SelectError::Both));
        assert_eq!(scraper.select(&names(&["nope"]), &[]), Err(SelectError::Unknown("nope".to_owned())));

        let body = scraper.scrape(Format::Text, Selection(0b001));
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains("kernel_exporter_collector_up{collector=\"good\"} 1\n"), "{text}");
        assert!(!text.contains("collector=\"failing\""), "{text}");
        assert!(text.contains("kernel_exporter_collector_scrape_duration_seconds{collector=\"good\"} "), "{text}");
    }

    #[test]
    fn openmetrics_body_ends_with_eof() {
        let scraper = scraper();
        let body = scraper.scrape(Format::OpenMetrics, scraper.all());
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.contains("# TYPE kernel_test_events counter\nkernel_test_events_total 7\n"), "{text}");
    }

    #[test]
    fn protobuf_body_decodes_with_the_exporters_own_metrics() {
        use crate::exposition::metrics_proto::{MetricType, decode_delimited};
        let scraper = scraper();
        // Twice: the second scrape has a scrape duration observed.
        drop(scraper.scrape(Format::Protobuf, scraper.all()));
        let body = scraper.scrape(Format::Protobuf, scraper.all());
        let families = decode_delimited(&body).expect("a delimited MetricFamily stream");
        let family = |name: &str| {
            families.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no {name} in {families:?}"))
        };
        let events = family("kernel_test_events_total");
        assert_eq!(events.r#type, MetricType::Counter as i32);
        assert_eq!(events.metric.len(), 1, "the failing collector's output is rolled back");
        assert_eq!(events.metric[0].counter.as_ref().unwrap().value, 7.0);
        let up = family("kernel_exporter_collector_up");
        assert_eq!(up.metric.len(), 3);
        assert_eq!(family("kernel_exporter_scrapes_total").metric[0].counter.as_ref().unwrap().value, 1.0);
        let duration = family("kernel_exporter_scrape_duration_seconds");
        assert_eq!(duration.r#type, MetricType::Histogram as i32);
        let histogram = duration.metric[0].histogram.as_ref().unwrap();
        assert_eq!(histogram.sample_count, 1);
        assert_eq!(histogram.bucket.len(), 10, "classic buckets without +Inf");
        assert!(family("process_resident_memory_bytes").metric[0].gauge.as_ref().unwrap().value > 0.0);
        // Names are unique: one message per family.
        let mut names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), families.len());
    }

    #[test]
    fn families_follow_the_rules() {
        assert!(COLLECTOR_DURATION.is_valid());
        assert!(COLLECTOR_UP.is_valid());
        assert!(BUILD_INFO.is_valid());
    }
}

#[cfg(test)]
mod allocations {
    //! Proof that a warmed-up scrape allocates nothing per series: a
    //! counting global allocator (per thread, so parallel tests do not
    //! disturb the count) around scrapes of 10 and of 500 series.

    use std::{
        alloc::{GlobalAlloc, Layout, System},
        cell::Cell,
    };

    use exporter_common::syscalls::{MAX_SYSCALLS, SyscallCounts};

    use super::*;
    use crate::collectors::{syscalls_for_test, testing::FakePerCpu};

    struct Counting;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    // SAFETY: forwards to the system allocator; only counts.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.with(|count| count.set(count.get() + 1));
            // SAFETY: same contract as ours.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as ours.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCATIONS.with(|count| count.set(count.get() + 1));
            // SAFETY: same contract as ours.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Allocations of one warmed-up scrape in `format` of a syscalls
    /// collector with `series` non-zero syscalls (calls and errors each).
    fn allocations_per_scrape(format: Format, series: usize) -> u64 {
        let mut counts = SyscallCounts::default();
        for nr in 0..series {
            counts.calls[nr] = 1 + nr as u64;
            counts.errors[nr] = 1;
        }
        let scraper = Scraper::new(
            vec![LoadedCollector {
                name: "syscalls",
                state: Ok(syscalls_for_test(FakePerCpu { cpus: vec![vec![counts]; 4] })),
            }],
            SelfMetrics::new(),
        );
        for _ in 0..3 {
            drop(scraper.scrape(format, scraper.all()));
        }
        let before = ALLOCATIONS.with(Cell::get);
        let body = scraper.scrape(format, scraper.all());
        let allocations = ALLOCATIONS.with(Cell::get) - before;
        assert!(body.len() > series * 2 * 20, "the scrape wrote {} bytes for {series} series", body.len());
        allocations
    }

    #[test]
    fn a_scrape_allocates_nothing_per_series() {
        for format in [Format::Text, Format::OpenMetrics, Format::Protobuf] {
            let few = allocations_per_scrape(format, 10);
            let many = allocations_per_scrape(format, MAX_SYSCALLS - 12);
            // The allocations left are fixed costs: the exporter's own
            // metrics (reading /proc/self) and the map read of each
            // collector.
            assert_eq!(
                few, many,
                "{format:?}: allocations per scrape grew with the series: {few} for 20 series, {many} for 1000"
            );
        }
    }
}
