//! What every worker and the control thread share while portico runs: the config in force,
//! target and plugin state kept across reloads, metrics, the access log, ACME state.

use std::path::PathBuf;
use std::sync::Mutex;

use arc_swap::ArcSwap;

use crate::observe::{AccessLog, Metrics};
use crate::pool::Registry;
use crate::runtime::Snapshot;

/// State shared by every worker and the control thread.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The config in force; requests load it once and keep it.
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Target state, kept across reloads.
    pub(crate) registry: Registry,
    /// Metric families.
    pub(crate) metrics: Metrics,
    /// The access log.
    pub(crate) access_log: AccessLog,
    /// The span exporter and sampler, when tracing is configured (read at start only).
    pub(crate) tracer: Option<crate::trace::Tracer>,
    /// The config file, re-read on reload.
    pub(crate) config_path: PathBuf,
    /// Why the last reload failed, if it did (served by the admin API).
    pub(crate) last_reload_error: Mutex<Option<String>>,
    /// Settings as they were at start, which a reload does not change.
    pub(crate) started: Started,
    /// Changed settings that wait for a restart, like `workers: 2 -> 4` (served by the admin
    /// API); empty when the file and the running process agree.
    pub(crate) restart_required: Mutex<Vec<String>>,
    /// ACME state and HTTP-01 tokens.
    pub(crate) acme: std::sync::Arc<crate::tls::acme::Store>,
    /// Plugin state (rate-limit buckets, JWKS keys), kept across reloads.
    pub(crate) states: crate::plugins::state::PluginStates,
    /// Counts the reloads applied; tunnels watch it to check their route is still there.
    pub(crate) generation: tokio::sync::watch::Sender<u64>,
    /// The start and the most recent reloads, with their result and config hash.
    pub(crate) history: crate::runtime::history::History,
    /// The document of the config in force and where it came from (file or admin writes).
    pub(crate) source: Mutex<crate::runtime::writes::Source>,
    /// Admin API writes on their way to the control thread.
    pub(crate) writes: crate::runtime::writes::Queue,
    /// The cluster's etcd, when `cluster.etcd` is set (read at start only).
    pub(crate) cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
}

impl Shared {
    /// The state of a portico serving `snapshot`, compiled with `registry`, `metrics`, `acme`
    /// and `states`.
    pub(crate) fn new(
        snapshot: Snapshot,
        registry: Registry,
        metrics: Metrics,
        (access_log, tracer): (AccessLog, Option<crate::trace::Tracer>),
        config_path: PathBuf,
        acme: std::sync::Arc<crate::tls::acme::Store>,
        states: crate::plugins::state::PluginStates,
    ) -> Self {
        let started = Started {
            access_log: snapshot.spec.access_log.clone(),
            tracing: snapshot
                .spec
                .tracing
                .as_ref()
                .map(|t| serde_json::json!(t).to_string()),
            pin_workers: snapshot.spec.pin_workers,
            admin: snapshot.admin.as_ref().map(|(addr, _)| *addr),
            upgrade: snapshot.upgrade.clone(),
        };
        let history = crate::runtime::history::History::default();
        history.record("start", Some(std::sync::Arc::clone(&snapshot.hash)), None);
        metrics.config_hash(&snapshot.hash);
        Shared {
            history,
            started,
            restart_required: Mutex::new(Vec::new()),
            snapshot: ArcSwap::from_pointee(snapshot),
            registry,
            metrics,
            access_log,
            tracer,
            config_path,
            last_reload_error: Mutex::new(None),
            acme,
            states,
            generation: tokio::sync::watch::Sender::new(0),
            source: Mutex::new(crate::runtime::writes::Source::default()),
            writes: crate::runtime::writes::Queue::default(),
            cluster: None,
        }
    }

    /// The same, in the cluster whose etcd `cluster` links to.
    pub(crate) fn with_cluster(
        mut self,
        cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
    ) -> Self {
        self.cluster = cluster;
        self
    }
}

std::thread_local! {
    /// This thread's hold on the config in force (see [`Shared::pin`]).
    static PINNED: std::cell::RefCell<Option<std::sync::Arc<Pinned>>> =
        const { std::cell::RefCell::new(None) };
}

/// The config in force, held by one worker: requests on that worker count themselves in
/// this allocation of its own, so starting and ending a request writes no cache line that
/// other workers write too (an `Arc<Snapshot>` clone per request would: its count is shared
/// by every worker).
#[derive(Debug)]
pub(crate) struct Pinned(std::sync::Arc<Snapshot>);

impl std::ops::Deref for Pinned {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.0
    }
}

impl Shared {
    /// The config in force, for one request to keep until it is done, whatever reloads
    /// happen meanwhile. Checking that this thread's hold is still the config in force reads
    /// the shared pointer without writing it.
    pub(crate) fn pin(&self) -> std::sync::Arc<Pinned> {
        let current = self.snapshot.load();
        PINNED.with_borrow_mut(|slot| match slot {
            Some(pinned) if std::sync::Arc::ptr_eq(&pinned.0, &current) => {
                std::sync::Arc::clone(pinned)
            }
            _ => {
                let fresh = std::sync::Arc::new(Pinned(arc_swap::Guard::into_inner(current)));
                *slot = Some(std::sync::Arc::clone(&fresh));
                fresh
            }
        })
    }
}

/// Lets go of this thread's hold on a config (after a reload, so that the old config is
/// dropped once its last request ends, even on a worker that gets no new request).
pub(crate) fn unpin() {
    PINNED.with_borrow_mut(Option::take);
}

/// Settings read once at start: a reload that changes them is reported as waiting for a
/// restart, never applied half-way.
#[derive(Debug, Clone)]
pub(crate) struct Started {
    /// The access log that was opened.
    pub(crate) access_log: crate::config::spec::AccessLogSpec,
    /// `tracing` as started, as JSON (`None`: off).
    pub(crate) tracing: Option<String>,
    /// Whether the workers were pinned to CPUs.
    pub(crate) pin_workers: bool,
    /// The admin API's configured address, if it was started.
    pub(crate) admin: Option<std::net::SocketAddr>,
    /// The upgrade socket it listens on, if any.
    pub(crate) upgrade: Option<std::path::PathBuf>,
}
