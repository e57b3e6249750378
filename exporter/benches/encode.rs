//! Encoder throughput: series written per second into the reused buffer,
//! for plain counters, labelled counters and log2 histograms, in text and
//! (histograms, labelled counters) OpenMetrics and protobuf.
//!
//! The encoder modules are compiled in from the daemon's sources (the daemon
//! is a binary crate); they depend only on `bytes`, `itoa`, `ryu` and the
//! shared layouts.

#![allow(dead_code, unreachable_pub, reason = "the daemon's modules, compiled here for their encoder alone")]

#[path = "../src/exposition/mod.rs"]
mod exposition;

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use exporter_common::histogram::Log2Histogram;
use exposition::{
    encode::{Encoder, Family, Format, Series},
    histogram,
};

const SYSCALLS: Family = Family::counter("kernel_syscalls_total", "Syscalls entered, by syscall.");
const LATENCY: Family = Family::histogram("kernel_block_io_latency_seconds", "Block I/O latency.");

fn encoder(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let series: Vec<Series> =
        (0..500).map(|nr| Series::new(&SYSCALLS, &[("syscall", &format!("syscall_{nr}"))])).collect();
    let mut buf = BytesMut::with_capacity(64 * 1024);

    group.throughput(Throughput::Elements(series.len() as u64));
    group.bench_function("labelled_counters_500", |b| {
        b.iter(|| {
            buf.clear();
            let mut out = Encoder::with_format(&mut buf, Format::Text);
            out.family(&SYSCALLS);
            for (i, s) in series.iter().enumerate() {
                out.sample(s, black_box(1_000_000 + i as u64 * 7919));
            }
            black_box(buf.len())
        });
    });

    // The same 500 labelled counters through prometheus-client, the crate
    // the front door's own counters use: what moving the per-source,
    // per-program and per-map families onto it would cost per scrape.
    {
        use prometheus_client::{
            encoding::text::encode,
            metrics::{counter::Counter, family::Family as ClientFamily},
            registry::Registry,
        };
        let mut registry = Registry::default();
        let family = ClientFamily::<Vec<(String, String)>, Counter>::default();
        registry.register("kernel_syscalls", "Syscalls entered, by syscall.", family.clone());
        for nr in 0..500u64 {
            family.get_or_create(&vec![("syscall".to_owned(), format!("syscall_{nr}"))]).inc_by(1_000_000 + nr * 7919);
        }
        let mut text = String::with_capacity(64 * 1024);
        group.bench_function("labelled_counters_500_prometheus_client", |b| {
            b.iter(|| {
                text.clear();
                encode(&mut text, &registry).expect("encoding into a String");
                black_box(text.len())
            });
        });
    }

    group.bench_function("float_gauges_500", |b| {
        b.iter(|| {
            buf.clear();
            let mut out = Encoder::with_format(&mut buf, Format::Text);
            for (i, s) in series.iter().enumerate() {
                out.sample_f64(s, black_box(i as f64 * 0.001_234_5));
            }
            black_box(buf.len())
        });
    });

    // A histogram is 24 bounds + Inf + sum + count = 27 series.
    let histograms: Vec<histogram::HistogramSeries> = (0..20)
        .map(|d| histogram::HistogramSeries::new(&LATENCY, &[("device", &format!("sd{d}")), ("op", "read")]))
        .collect();
    let mut values = Log2Histogram::default();
    for shift in 8..30 {
        values.record(1 << shift);
    }
    // The same 20 histograms in each format: protobuf writes each as one
    // message with its classic and native buckets.
    group.throughput(Throughput::Elements(histograms.len() as u64 * 27));
    for (name, format) in [
        ("histograms_20", Format::Text),
        ("histograms_20_openmetrics", Format::OpenMetrics),
        ("histograms_20_protobuf", Format::Protobuf),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                let mut out = Encoder::with_format(&mut buf, format);
                out.family(&LATENCY);
                for h in &histograms {
                    out.histogram(h, black_box(&values));
                }
                out.finish();
                black_box(buf.len())
            });
        });
    }
    group.throughput(Throughput::Elements(series.len() as u64));
    group.bench_function("labelled_counters_500_protobuf", |b| {
        b.iter(|| {
            buf.clear();
            let mut out = Encoder::with_format(&mut buf, Format::Protobuf);
            out.family(&SYSCALLS);
            for (i, s) in series.iter().enumerate() {
                out.sample(s, black_box(1_000_000 + i as u64 * 7919));
            }
            out.finish();
            black_box(buf.len())
        });
    });
    group.finish();
}

criterion_group!(benches, encoder);
criterion_main!(benches);
