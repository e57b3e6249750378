//! The front door, a pipeline in this order: the kernel allowlist drops
//! unknown sources' packets → listeners → the connection table → TLS →
//! HTTP (server) → basic auth → routes and the access log; the web config
//! and its reloads decide how each stage behaves.
//!
//! It serves what `scrape` builds; it never reads BPF maps for scrapes itself.

pub(crate) mod access_log;
pub(crate) mod allowlist;
pub(crate) mod auth;
mod auth_workers;
mod bans;
pub(crate) mod cidr;
pub(crate) mod connections;
mod duration;
pub(crate) mod healthcheck;
pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod reload;
pub(crate) mod requests;
pub(crate) mod routes;
pub(crate) mod server;
pub(crate) mod systemd_socket;
pub(crate) mod tls;
pub(crate) mod tls_settings;
pub(crate) mod web_config;
mod yaml_budget;
