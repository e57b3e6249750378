//! Families, labels and values made up from the input, written by the
//! daemon's protobuf encoder and decoded by prost; the property is in
//! `fuzz/protobuf_round_trip.rs`.

#![no_main]

#[path = "../../tests/src/metrics_proto.rs"]
mod metrics_proto;
#[path = "../protobuf_round_trip.rs"]
mod protobuf_round_trip;

libfuzzer_sys::fuzz_target!(|data: &[u8]| protobuf_round_trip::check(data));
