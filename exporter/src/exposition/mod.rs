//! The exposition formats: writing metric families as Prometheus text or
//! OpenMetrics into one reused buffer, and the shared latency histogram.
//!
//! It knows nothing of the kernel, the collectors or HTTP.

pub(crate) mod encode;
pub(crate) mod histogram;
pub(crate) mod protobuf;
pub(crate) mod self_families;

/// The end-to-end tests' independent decoder of the protobuf format, one
/// copy for both.
#[cfg(test)]
#[path = "../../../tests/src/metrics_proto.rs"]
pub(crate) mod metrics_proto;
