//! The exporter's own metrics, kept in a `prometheus-client` registry:
//! scrapes, scrape durations, the front door's failures and reloads, and the
//! process metrics every Prometheus client library exposes (CPU, memory,
//! file descriptors, start time).
//!
//! They are few and fixed, so they are encoded by the registry's own text
//! encoders into the scrape's buffer, after the kernel statistics; for
//! protobuf, that text is transcoded (`exposition::protobuf`).

use std::{
    fmt, fs,
    sync::{Mutex, PoisonError, atomic::AtomicU64},
};

use bytes::{BufMut as _, BytesMut};
use prometheus_client::{
    encoding::{prometheus_text, text},
    metrics::{counter::Counter, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::exposition::self_families::{REQUESTS_IN_FLIGHT, SCRAPE_DURATION, SCRAPES, START_TIME};
use crate::exposition::{
    encode::{Encoder, Format},
    protobuf::Transcoding,
};

/// Scrape-duration histogram bounds, in seconds: a kernel-exporter scrape
/// takes well under a millisecond, a slow one tens of milliseconds.
const SCRAPE_BUCKETS: [f64; 10] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1];

pub(crate) struct SelfMetrics {
    /// Help texts are given without a final period: the registry adds one.
    registry: Registry,
    scrapes: Counter,
    scrape_duration: Histogram,
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_memory: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    requests_in_flight: Gauge,
    /// Protobuf scrapes: the text rendering and the transcoder's space,
    /// kept from scrape to scrape.
    transcoding: Mutex<(String, Transcoding)>,
}

impl SelfMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let scrapes = Counter::default();
        registry.register(SCRAPES.name, SCRAPES.help, scrapes.clone());
        let scrape_duration = Histogram::new(SCRAPE_BUCKETS);
        registry.register_with_unit(SCRAPE_DURATION.name, SCRAPE_DURATION.help, Unit::Seconds, scrape_duration.clone());

        let cpu_seconds = Counter::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "process_cpu",
            "Total user and system CPU time spent in seconds",
            Unit::Seconds,
            cpu_seconds.clone(),
        );
        let resident_memory = Gauge::default();
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory size in bytes",
            Unit::Bytes,
            resident_memory.clone(),
        );
        let virtual_memory = Gauge::default();
        registry.register_with_unit(
            "process_virtual_memory",
            "Virtual memory size in bytes",
            Unit::Bytes,
            virtual_memory.clone(),
        );
        let open_fds = Gauge::default();
        registry.register("process_open_fds", "Number of open file descriptors", open_fds.clone());
        let max_fds = Gauge::default();
        registry.register("process_max_fds", "Maximum number of open file descriptors", max_fds.clone());
        let start_time = Gauge::<f64, AtomicU64>::default();
        start_time.set(process_start_time_seconds().unwrap_or(0.0));
        registry.register_with_unit(
            "process_start_time",
            "Start time of the process since unix epoch in seconds",
            Unit::Seconds,
            start_time.clone(),
        );
        // The same instant under the exporter's own name, for dashboards
        // and alerts that select kernel_exporter_* only.
        registry.register_with_unit(START_TIME.name, START_TIME.help, Unit::Seconds, start_time);
        let requests_in_flight = Gauge::default();
        registry.register(REQUESTS_IN_FLIGHT.name, REQUESTS_IN_FLIGHT.help, requests_in_flight.clone());

        Self {
            registry,
            scrapes,
            scrape_duration,
            cpu_seconds,
            resident_memory,
            virtual_memory,
            open_fds,
            max_fds,
            requests_in_flight,
            transcoding: Mutex::default(),
        }
    }

    /// The in-flight gauge, for the HTTP server to move.
    pub(crate) fn requests_in_flight(&self) -> Gauge {
        self.requests_in_flight.clone()
    }

    /// The registry, for the front door to register its own metrics in
    /// (`front_door::metrics`): they are encoded with these, after them.
    pub(crate) fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Counts a served scrape that took `seconds` to build.
    pub(crate) fn observe_scrape(&self, seconds: f64) {
        self.scrapes.inc();
        self.scrape_duration.observe(seconds);
    }

    /// Refreshes the process metrics and appends every metric in the
    /// encoder's format (without OpenMetrics' `# EOF`, which the caller
    /// writes last).
    pub(crate) fn encode_into(&self, out: &mut Encoder<'_>) {
        self.refresh_process();
        // Writing into memory cannot fail; a metric that could not be
        // formatted would leave a partial line, which the tests catch.
        let _ = match out.format() {
            Format::Text => prometheus_text::encode(&mut BufWriter(out.buffer()), &self.registry),
            Format::OpenMetrics => text::encode_registry(&mut BufWriter(out.buffer()), &self.registry),
            Format::Protobuf => {
                let mut transcoding = self.transcoding.lock().unwrap_or_else(PoisonError::into_inner);
                let (text, scratch) = &mut *transcoding;
                text.clear();
                let written = prometheus_text::encode(text, &self.registry);
                out.transcode_text(text, scratch);
                written
            }
        };
    }

    /// [`Self::encode_into`] a buffer of its own (a complete body for
    /// protobuf, without `# EOF` for OpenMetrics).
    #[cfg(test)]
    pub(crate) fn encode(&self, format: Format, buf: &mut BytesMut) {
        let mut out = Encoder::with_format(buf, format);
        self.encode_into(&mut out);
        if format == Format::Protobuf {
            out.finish();
        }
    }

    fn refresh_process(&self) {
        let Ok(stat) = fs::read_to_string("/proc/self/stat") else { return };
        let Some(stat) = ProcessStat::parse(&stat) else { return };
        let ticks = clock_ticks_per_second();
        // A counter only goes up; the kernel's CPU time only grows.
        let cpu = (stat.utime + stat.stime) as f64 / ticks;
        let delta = cpu - self.cpu_seconds.get();
        if delta > 0.0 {
            self.cpu_seconds.inc_by(delta);
        }
        self.virtual_memory.set(i64::try_from(stat.vsize).unwrap_or(i64::MAX));
        self.resident_memory.set(stat.rss_pages.saturating_mul(page_size()));
        if let Some(fds) = count_open_fds() {
            self.open_fds.set(i64::try_from(fds).unwrap_or(i64::MAX));
        }
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit into `limit`.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } == 0 {
            self.max_fds.set(i64::try_from(limit.rlim_cur).unwrap_or(i64::MAX));
        }
    }
}

/// Entries of /proc/self/fd, without the allocation per entry that
/// `std::fs::read_dir` makes: a scrape's allocations must not depend on how
/// many files are open.
fn count_open_fds() -> Option<usize> {
    // SAFETY: opendir takes a NUL-terminated path and returns a stream we
    // own until closedir; readdir's entries are only inspected before the
    // next call.
    unsafe {
        let dir = libc::opendir(c"/proc/self/fd".as_ptr());
        if dir.is_null() {
            return None;
        }
        let mut count = 0usize;
        loop {
            let entry = libc::readdir(dir);
            if entry.is_null() {
                break;
            }
            if (*entry).d_name[0] != b'.' as libc::c_char {
                count += 1;
            }
        }
        libc::closedir(dir);
        // The stream itself was one of the open descriptors.
        Some(count.saturating_sub(1))
    }
}

/// `fmt::Write` into the scrape buffer.
struct BufWriter<'a>(&'a mut BytesMut);

impl fmt::Write for BufWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

/// The fields of `/proc/self/stat` the process metrics use.
#[derive(Debug, PartialEq, Eq)]
struct ProcessStat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: i64,
}

impl ProcessStat {
    fn parse(stat: &str) -> Option<Self> {
        // The command name (field 2) is in parentheses and may hold spaces
        // and parentheses itself: count fields from the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state).
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        Some(Self {
            utime: field(14)?,
            stime: field(15)?,
            starttime: field(22)?,
            vsize: field(23)?,
            rss_pages: fields.get(24 - 3)?.parse().ok()?,
        })
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn page_size() -> i64 {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size } else { 4096 }
}

/// Boot time from /proc/stat plus the process's start in ticks after boot.
fn process_start_time_seconds() -> Option<f64> {
    let stat = ProcessStat::parse(&fs::read_to_string("/proc/self/stat").ok()?)?;
    let boot_time: f64 = fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot_time + stat.starttime as f64 / clock_ticks_per_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_awkward_names() {
        let stat = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 4242 \
                    123456789 1500 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            ProcessStat::parse(stat),
            Some(ProcessStat { utime: 250, stime: 50, starttime: 4242, vsize: 123_456_789, rss_pages: 1500 })
        );
        assert_eq!(ProcessStat::parse("garbage"), None);
    }

    #[test]
    fn encodes_both_formats_with_the_naming_rules() {
        let metrics = SelfMetrics::new();
        metrics.observe_scrape(0.0003);
        let mut text = BytesMut::new();
        metrics.encode(Format::Text, &mut text);
        let text = std::str::from_utf8(&text).unwrap();
        assert!(
            text.contains("# TYPE kernel_exporter_scrapes_total counter\nkernel_exporter_scrapes_total 1\n"),
            "{text}"
        );
        assert!(text.contains("kernel_exporter_scrape_duration_seconds_bucket{le=\"0.0005\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"), "{text}");
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(text.contains("\nprocess_start_time_seconds "), "{text}");
        assert!(!text.contains("# EOF"), "{text}");

        let mut openmetrics = BytesMut::new();
        metrics.encode(Format::OpenMetrics, &mut openmetrics);
        let openmetrics = std::str::from_utf8(&openmetrics).unwrap();
        assert!(openmetrics.contains("# TYPE kernel_exporter_scrapes counter\n"), "{openmetrics}");
        assert!(openmetrics.contains("\nkernel_exporter_scrapes_total 1\n"), "{openmetrics}");
        assert!(!openmetrics.contains("# EOF"), "{openmetrics}");
    }
}
