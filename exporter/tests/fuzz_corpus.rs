//! Replays every fuzz target's committed corpus (`fuzz/corpus/<target>/`)
//! and crash reproducers (`fuzz/regressions/<target>/`) through the same
//! functions libFuzzer drives, checking the same properties: what
//! `cargo xtask fuzz` found once stays fixed, without nightly, sanitizers or
//! libFuzzer.

use std::{
    fs,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
};

use kernel_exporter::fuzzing::{DECODED_TARGETS, TARGETS, Target};

// The protobuf round trip's decoder and property: dev-dependencies here,
// never the daemon's (see `fuzz/protobuf_round_trip.rs`).
#[path = "../../tests/src/metrics_proto.rs"]
mod metrics_proto;
#[path = "../../fuzz/protobuf_round_trip.rs"]
mod protobuf_round_trip;

/// The targets whose check lives outside the daemon, by name.
fn decoded_target(name: &str) -> Target {
    match name {
        "protobuf_round_trip" => protobuf_round_trip::check,
        other => panic!("no check for the decoded target {other}"),
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted; none if it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries.map(|entry| entry.expect("read the directory").path()).filter(|p| p.is_file()).collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => panic!("cannot read {}: {error}", dir.display()),
    };
    files.sort();
    files
}

/// Runs `target` over every file of `dir`; the files whose input broke a
/// property, with the panic message.
fn replay(target: Target, dir: &Path) -> (usize, Vec<String>) {
    let files = inputs(dir);
    let failures = files
        .iter()
        .filter_map(|file| {
            let data = fs::read(file).unwrap_or_else(|error| panic!("cannot read {}: {error}", file.display()));
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| target(&data)));
            outcome.err().map(|payload| {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                format!("{}: {message}", file.display())
            })
        })
        .collect();
    (files.len(), failures)
}

#[test]
fn every_target_has_a_fuzz_target_and_a_seeded_corpus() {
    let names = TARGETS.iter().map(|(name, _)| *name).chain(DECODED_TARGETS.iter().copied());
    for name in names {
        let source = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(source.is_file(), "{} is missing", source.display());
        let corpus = fuzz_dir().join("corpus").join(name);
        assert!(!inputs(&corpus).is_empty(), "{} holds no seed inputs", corpus.display());
    }
}

#[test]
fn corpora_and_crash_reproducers_replay_clean() {
    let mut failures = Vec::new();
    let targets = TARGETS.iter().copied().chain(DECODED_TARGETS.iter().map(|name| (*name, decoded_target(name))));
    for (name, target) in targets {
        for kind in ["corpus", "regressions"] {
            let (count, failed) = replay(target, &fuzz_dir().join(kind).join(name));
            println!("{name}: {count} inputs from fuzz/{kind}/{name}, {} failed", failed.len());
            failures.extend(failed);
        }
    }
    assert!(failures.is_empty(), "inputs that break a property:\n{}", failures.join("\n"));
}
