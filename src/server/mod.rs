//! Stage `accept`: worker threads, listeners, reload and drain.
//!
//! portico runs one single-threaded runtime per worker thread; every listener has one
//! `SO_REUSEPORT` socket per worker, so the kernel spreads connections and a connection, its
//! requests and its upstream connections stay on one thread. The main thread runs the control
//! runtime: signals, reload, DNS, and the admin API.

pub mod conn;
pub mod listeners;
pub mod reload;
pub mod scan;

use std::path::PathBuf;
use std::sync::Mutex;

use arc_swap::ArcSwap;

use crate::observe::{AccessLog, Metrics};
use crate::pool::Registry;
use crate::runtime::Snapshot;

/// State shared by every worker and the control thread.
#[derive(Debug)]
pub struct Shared {
    /// The config in force; requests load it once and keep it.
    pub snapshot: ArcSwap<Snapshot>,
    /// Target state, kept across reloads.
    pub registry: Registry,
    /// Metric families.
    pub metrics: Metrics,
    /// The access log.
    pub access_log: AccessLog,
    /// The config file, re-read on reload.
    pub config_path: PathBuf,
    /// Why the last reload failed, if it did (served by the admin API).
    pub last_reload_error: Mutex<Option<String>>,
    /// ACME state and HTTP-01 tokens.
    pub acme: std::sync::Arc<crate::tls::acme::Store>,
    /// Plugin state (rate-limit buckets, JWKS keys), kept across reloads.
    pub states: crate::runtime::state::PluginStates,
}
