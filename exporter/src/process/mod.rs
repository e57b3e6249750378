//! The process itself: privileges (checking them, dropping them) and
//! logging.
//!
//! It knows nothing of the kernel programs, metrics or HTTP.

pub(crate) mod logging;
pub(crate) mod privileges;
