//! One scrape: every collector's families, the collectors' health and the
//! build information, written into one buffer that is reused from scrape to
//! scrape and handed to hyper without a copy.

use std::sync::{Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use tracing::warn;

use crate::{
    bpf::LoadedCollector,
    collectors::{Collector, CollectorError, REGISTRY},
    encode::{Encoder, Family, Series},
};

const COLLECTOR_UP: Family = Family::gauge(
    "kernel_exporter_collector_up",
    "Whether the collector's programs are attached and its maps were read in this scrape (1) or not (0).",
);
const BUILD_INFO: Family = Family::gauge(
    "kernel_exporter_build_info",
    "A metric with a constant '1' value labeled by version, revision and rustc_version from which kernel-exporter was built.",
);

// Collector health is tracked in a u64 bit set during a scrape.
const _: () = assert!(REGISTRY.len() <= 64);

/// Builds scrape bodies. Shared by every connection.
pub(crate) struct Scraper {
    collectors: Vec<Entry>,
    build_info: Series,
    buffer: Mutex<Buffer>,
}

struct Entry {
    name: &'static str,
    state: Result<Box<dyn Collector>, CollectorError>,
    up: Series,
}

struct Buffer {
    bytes: BytesMut,
    /// Size of the previous body: the next scrape reserves this much, which
    /// takes the old allocation back once hyper has dropped the last body.
    last_len: usize,
}

impl Scraper {
    pub(crate) fn new(collectors: Vec<LoadedCollector>) -> Self {
        let collectors = collectors
            .into_iter()
            .map(|LoadedCollector { name, state }| Entry {
                name,
                state,
                up: Series::new(&COLLECTOR_UP, &[("collector", name)]),
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
        Self { collectors, build_info, buffer: Mutex::new(Buffer { bytes: BytesMut::new(), last_len: 4096 }) }
    }

    /// Reads every collector's maps and returns the exposition body.
    pub(crate) fn scrape(&self) -> Bytes {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let Buffer { bytes, last_len } = &mut *buffer;
        bytes.reserve(*last_len);
        let mut out = Encoder::new(bytes);

        let mut up = 0u64;
        for (i, entry) in self.collectors.iter().enumerate() {
            let Ok(collector) = &entry.state else {
                continue;
            };
            let mark = out.mark();
            match collector.collect(&mut out) {
                Ok(()) => up |= 1 << i,
                Err(error) => {
                    out.rollback(mark);
                    warn!(collector = entry.name, "cannot read the collector's maps: {error}");
                }
            }
        }

        out.family(&COLLECTOR_UP);
        for (i, entry) in self.collectors.iter().enumerate() {
            out.sample(&entry.up, (up >> i) & 1);
        }
        out.family(&BUILD_INFO);
        out.sample(&self.build_info, 1);

        *last_len = bytes.len();
        bytes.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use aya::maps::MapError;

    use super::*;

    struct Fixed(Result<(), ()>);

    impl Collector for Fixed {
        fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
            out.single(&Family::counter("kernel_test_events_total", "Test events."), 7);
            self.0.map_err(|()| MapError::KeyNotFound)
        }
    }

    fn scraper() -> Scraper {
        Scraper::new(vec![
            LoadedCollector { name: "good", state: Ok(Box::new(Fixed(Ok(())))) },
            LoadedCollector { name: "failing", state: Ok(Box::new(Fixed(Err(())))) },
            LoadedCollector {
                name: "missing",
                state: Err(CollectorError::MissingTracepoint { category: "x", name: "y" }),
            },
        ])
    }

    #[test]
    fn one_failing_collector_does_not_fail_the_scrape() {
        let body = scraper().scrape();
        let text = std::str::from_utf8(&body).unwrap();
        // The failing collector's partial output is rolled back.
        assert_eq!(text.matches("kernel_test_events_total 7\n").count(), 1, "{text}");
        assert!(text.contains("kernel_exporter_collector_up{collector=\"good\"} 1\n"), "{text}");
        assert!(text.contains("kernel_exporter_collector_up{collector=\"failing\"} 0\n"), "{text}");
        assert!(text.contains("kernel_exporter_collector_up{collector=\"missing\"} 0\n"), "{text}");
        assert!(text.contains("kernel_exporter_build_info{version=\""), "{text}");
        assert!(text.ends_with("} 1\n"), "{text}");
    }

    #[test]
    fn the_buffer_is_reused_once_the_body_is_dropped() {
        let scraper = scraper();
        let first = scraper.scrape();
        let expected = first.to_vec();
        let region = first.as_ptr() as usize..first.as_ptr() as usize + 4096;
        drop(first);
        // Bodies dropped after sending: every scrape writes into the first
        // allocation, going back to its start when the end is reached.
        for _ in 0..50 {
            let body = scraper.scrape();
            assert!(region.contains(&(body.as_ptr() as usize)), "scrape allocated a new buffer");
            assert_eq!(&body[..], &expected[..]);
        }
        // Bodies still held (slow clients) are never overwritten: later
        // scrapes move to fresh memory instead.
        let held: Vec<Bytes> = (0..50).map(|_| scraper.scrape()).collect();
        assert!(held.iter().all(|body| body[..] == expected[..]));
        assert!(held.iter().any(|body| !region.contains(&(body.as_ptr() as usize))));
    }

    #[test]
    fn families_follow_the_rules() {
        assert!(COLLECTOR_UP.is_valid());
        assert!(BUILD_INFO.is_valid());
    }
}
