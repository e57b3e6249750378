//! The process itself: privileges (checking them, dropping them), resource
//! limits, signals held across start-up, and logging.
//!
//! It knows nothing of the kernel programs, metrics or HTTP.

pub(crate) mod limits;
pub(crate) mod logging;
pub(crate) mod privileges;
pub(crate) mod signals;
