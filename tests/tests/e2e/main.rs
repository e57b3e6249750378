//! End-to-end tests: the real daemon, the real kernel, real clients.
//! One target with a module per area; run one at a time
//! (`--test-threads=1`), since they share the kernel's state.

mod allowlist;
mod block;
mod cgroup;
mod collectors;
mod deploy;
mod deployment;
mod docs;
mod faults;
mod formats;
mod front_door;
mod hostile;
mod http;
mod irq;
mod lifecycle;
mod mm;
mod native_histograms;
mod net;
mod privileges;
mod sched;
mod self_monitoring;
mod signal;
mod socket_activation;
mod syscalls;
mod tcp;
