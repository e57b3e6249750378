//! The exposition formats: writing metric families as Prometheus text or
//! OpenMetrics into one reused buffer, and the shared latency histogram.
//!
//! It knows nothing of the kernel, the collectors or HTTP.

pub(crate) mod encode;
pub(crate) mod histogram;
pub(crate) mod self_families;
