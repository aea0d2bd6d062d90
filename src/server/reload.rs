//! The control thread: start-up, SIGHUP reload, SIGTERM drain, and DNS re-resolution.
//!
//! A reload validates and compiles the file, binds any new listener, starts the new snapshot
//! (first JWKS fetches, kept state entered, renewals and health checks started), then swaps
//! it in one store. Listeners whose name and address are unchanged keep their sockets and
//! their connections; removed ones stop accepting and drain. Any failure leaves the running
//! config in place and is logged and kept for the admin API; since compiling changes no live
//! state, a refused reload leaves nothing behind.
//!
//! DNS names are resolved by a task of their own, so a slow resolver never delays a signal.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::signal::unix::{SignalKind, signal};

use super::Shared;
use super::listeners::{ListenerSet, bind};
use super::open::{admin_socket, open_listeners, start_listeners};
use super::upgrade::{self, SocketKind};
use crate::background::{self, BackgroundTask};
use crate::config;
use crate::observe::{AccessLog, Metrics};
use crate::plugins::state::PluginStates;
use crate::pool::{self, Registry};
use crate::runtime::writes::{self, Refusal, Write, Written};
use crate::runtime::{self, Snapshot, compile::Env};
use crate::tls::acme::Store as AcmeStore;

/// Why portico could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// The config is invalid; every problem is listed.
    #[error("invalid config:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<config::Diagnostic>),
    /// The sockets could not be taken from the running process, which keeps serving.
    #[error("upgrade failed; the running process keeps serving")]
    Upgrade(#[source] upgrade::UpgradeError),
    /// A socket or thread could not be set up.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Why a reload was refused; the running config stays.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    /// The new config is invalid; every problem is listed, one a line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<config::Diagnostic>),
    /// The config the admin API wrote no longer compiles (a file it names changed).
    #[error("{0}")]
    Document(String),
    /// A new listener's address could not be bound.
    #[error("cannot bind listener `{name}` to {addr}: {source}")]
    Bind {
        /// The listener.
        name: Arc<str>,
        /// Its address.
        addr: std::net::SocketAddr,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A bound listener could not start accepting.
    #[error("cannot start listener: {0}")]
    Start(#[source] io::Error),
}

pub(super) fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// Reads the file at `path` once and compiles it against live state, changing none of it:
/// the snapshot and the document it was written as.
pub(crate) fn load(
    path: &Path,
    registry: &Registry,
    metrics: &Metrics,
    acme: &AcmeStore,
    states: &PluginStates,
) -> Result<(Snapshot, config::node::Node), Vec<config::Diagnostic>> {
    let env = Env {
        registry,
        metrics,
        acme,
        states,
    };
    writes::load_file(path, env)
}

/// The compile environment of the running process.
pub(super) fn env_of(shared: &Shared) -> Env<'_> {
    Env {
        registry: &shared.registry,
        metrics: &shared.metrics,
        acme: &shared.acme,
        states: &shared.states,
    }
}

/// Logs what the config does that is likely not meant; it runs all the same.
fn log_warnings(snap: &Snapshot) {
    for warning in &snap.warnings {
        tracing::warn!("{warning}");
    }
}

/// Runs portico on the config at `path` until SIGTERM or SIGINT, or until a new process took
/// its sockets; returns after draining. With `upgrade_from`, the listening sockets are taken
/// from the process serving that upgrade socket.
pub(crate) fn run(path: &Path, upgrade_from: Option<&Path>) -> Result<(), StartError> {
    // Pools are sized by worker count, which the spec tells before anything is compiled
    // (errors, if any, are reported by the compile below, all at once).
    let workers = runtime::compile::worker_count(&config::read(path).0.workers);
    let registry = Registry::new(workers);
    let metrics = Metrics::new();
    let acme = Arc::new(AcmeStore::default());
    let states = PluginStates::default();
    let (snapshot, document) =
        load(path, &registry, &metrics, &acme, &states).map_err(StartError::Config)?;
    let cluster = match snapshot.spec.cluster.as_ref().and_then(|c| c.etcd.as_ref()) {
        Some(etcd) => {
            let id = snapshot
                .spec
                .cluster
                .as_ref()
                .and_then(|c| c.node_id.as_ref())
                .map_or_else(
                    || {
                        crate::cluster::default_node_id(
                            // Port 0 is no name: nodes on ephemeral ports take the pid.
                            snapshot
                                .admin
                                .as_ref()
                                .map(|(a, _)| a.port())
                                .filter(|p| *p != 0),
                        )
                    },
                    |id| id.value.clone(),
                );
            let base = path.parent().unwrap_or(Path::new("."));
            let made =
                crate::cluster::Cluster::new(etcd, id, base).map_err(|e| StartError::Io {
                    what: "cluster.etcd".into(),
                    source: io::Error::other(e),
                })?;
            let made = Arc::new(made);
            // ACME listeners share their certificates through this etcd.
            acme.join(Arc::clone(&made));
            Some(made)
        }
        None => None,
    };
    log_warnings(&snapshot);
    let access_log = if snapshot.spec.access_log.enabled {
        AccessLog::open(&snapshot.spec.access_log.path, metrics.access_log_dropped()).map_err(
            io_error(format!(
                "cannot open access log {}",
                snapshot.spec.access_log.path
            )),
        )?
    } else {
        AccessLog::disabled()
    };
    let tracer = match &snapshot.tracing {
        Some(settings) => Some(
            crate::trace::Tracer::start(settings.clone(), metrics.trace_spans_dropped())
                .map_err(io_error("cannot start the trace exporter"))?,
        ),
        None => None,
    };
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_error("cannot start the control runtime"))?;
    let (handles, stops) = start_workers(workers, snapshot.spec.pin_workers)?;
    let result = control.block_on(async move {
        let mut snapshot = snapshot;
        let mut merged = None;
        if let Some(cluster) = &cluster {
            let env = Env {
                registry: &registry,
                metrics: &metrics,
                acme: &acme,
                states: &states,
            };
            if let Some((from_etcd, document)) =
                super::cluster::start_config(cluster, &document, path, env).await
            {
                log_warnings(&from_etcd);
                snapshot = from_etcd;
                merged = Some(document);
            }
        }
        start_snapshot(&mut snapshot, &states, &acme, &metrics).await;
        let shared = Arc::new(
            Shared::new(
                snapshot,
                registry,
                metrics,
                (access_log, tracer),
                path.to_owned(),
                acme,
                states,
            )
            .with_cluster(cluster),
        );
        set_source(&shared, document, writes::Origin::File);
        if let (Some(merged), Some(cluster)) = (merged, &shared.cluster) {
            super::cluster::set_source(&shared, merged, cluster.status.applied());
        }
        commit_registry(&shared);
        control_loop(shared, handles, upgrade_from).await
    });
    for stop in stops {
        let _ = stop.send(());
    }
    result
}

/// Makes a compiled snapshot ready to serve: its new plugin state is started (a first JWKS
/// fetch, bounded) and kept, its ACME listeners get their settings and renewal tasks, and its
/// targets' active health checks start or take their new settings.
async fn start_snapshot(
    next: &mut Snapshot,
    states: &PluginStates,
    acme: &Arc<AcmeStore>,
    metrics: &Metrics,
) {
    states.start(std::mem::take(&mut next.fresh)).await;
    acme.start(std::mem::take(&mut next.acme), metrics.background_tasks());
    health_checks(next, metrics);
}

/// The target registry becomes that of the config in force.
fn commit_registry(shared: &Shared) {
    let snap = shared.snapshot.load_full();
    shared.registry.commit(
        snap.upstreams
            .iter()
            .map(|u| (&*u.name, &u.state, u.targets.as_slice())),
    );
}

type WorkerStop = tokio::sync::oneshot::Sender<()>;

fn start_workers(count: usize, pin: bool) -> Result<(Vec<Handle>, Vec<WorkerStop>), StartError> {
    let mut handles = Vec::with_capacity(count);
    let mut stops = Vec::with_capacity(count);
    let cpus = if pin { allowed_cpus() } else { Vec::new() };
    if pin && cpus.is_empty() {
        tracing::warn!(
            "pin_workers: the CPUs this process may use are unknown; workers are not pinned"
        );
    }
    for index in 0..count {
        let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all();
        if cpu.is_some() {
            // A worker's blocking threads (file reads, name lookups) are started by the
            // pinned worker and would inherit its one CPU: they get every CPU back.
            let all = cpus.clone();
            builder.on_thread_start(move || pin_to_set(&all));
        }
        let runtime = builder
            .build()
            .map_err(io_error("cannot start a worker runtime"))?;
        handles.push(runtime.handle().clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        std::thread::Builder::new()
            .name(format!("portico-worker-{index}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to(index, cpu);
                }
                pool::set_worker(index + 1);
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(io_error("cannot start a worker thread"))?;
    }
    Ok((handles, stops))
}

/// The admin API's socket and task.
struct Admin {
    configured: std::net::SocketAddr,
    local: std::net::SocketAddr,
    /// A duplicate of its socket, for a handover.
    kept: Option<std::net::TcpListener>,
    task: tokio::task::JoinHandle<()>,
}

/// Listens on the upgrade socket at `path`.
fn bind_offer(path: &Path, replacing: bool) -> Result<upgrade::Offer, StartError> {
    let offer = upgrade::Offer::bind(path, replacing).map_err(io_error(format!(
        "cannot listen on the upgrade socket {}",
        path.display()
    )))?;
    tracing::info!(path = %offer.path().display(), "upgrade socket listening");
    Ok(offer)
}

/// The next process on the upgrade socket; never, without one.
async fn accept_upgrade(
    offer: Option<&upgrade::Offer>,
) -> Option<io::Result<tokio::net::UnixStream>> {
    match offer {
        Some(offer) => Some(offer.accept().await),
        None => std::future::pending().await,
    }
}

/// The pid of the new process, once it serves; never, without a handover under way.
async fn handed_over(
    serving: &mut Option<tokio::sync::oneshot::Receiver<upgrade::Serving>>,
) -> Option<upgrade::Serving> {
    let Some(told) = serving.as_mut() else {
        return std::future::pending().await;
    };
    let told = told.await.ok();
    // An abandoned exchange drops its sender: wait for the next one.
    *serving = None;
    told
}

/// Duplicates of every listening socket, described for a new process.
fn offered(listeners: &ListenerSet, admin: Option<&Admin>) -> io::Result<Vec<upgrade::Offered>> {
    let mut out = Vec::new();
    for (name, bound) in &listeners.bound {
        let fds = bound
            .fds
            .iter()
            .map(std::os::fd::OwnedFd::try_clone)
            .collect::<io::Result<Vec<_>>>()?;
        out.push(upgrade::Offered {
            name: Arc::clone(name),
            kind: if bound.udp {
                SocketKind::Udp
            } else {
                SocketKind::Tcp
            },
            configured: bound.configured,
            local: bound.local,
            fds,
        });
    }
    if let Some(admin) = admin
        && let Some(kept) = &admin.kept
    {
        out.push(upgrade::Offered {
            name: Arc::from("admin"),
            kind: SocketKind::Admin,
            configured: admin.configured,
            local: admin.local,
            fds: vec![kept.try_clone()?.into()],
        });
    }
    Ok(out)
}

/// The CPUs this process may run on, in order (empty if the kernel does not say).
fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&cpu| set.is_set(cpu))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Pins the calling thread (worker `index`) to `cpu`.
fn pin_to(index: usize, cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    match rustix::thread::sched_setaffinity(None, &set) {
        Ok(()) => tracing::debug!(worker = index, cpu, "worker pinned"),
        Err(err) => tracing::warn!(worker = index, cpu, error = %err, "cannot pin the worker"),
    }
}

/// Lets the calling thread run on any of `cpus`.
fn pin_to_set(cpus: &[usize]) {
    let mut set = rustix::thread::CpuSet::new();
    for &cpu in cpus {
        set.set(cpu);
    }
    if let Err(err) = rustix::thread::sched_setaffinity(None, &set) {
        tracing::warn!(error = %err, "cannot widen a blocking thread's CPUs");
    }
}

async fn control_loop(
    shared: Arc<Shared>,
    workers: Vec<Handle>,
    upgrade_from: Option<&Path>,
) -> Result<(), StartError> {
    let mut hangup = signal(SignalKind::hangup()).map_err(io_error("cannot handle SIGHUP"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(io_error("cannot handle SIGTERM"))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(io_error("cannot handle SIGINT"))?;
    let mut reopen =
        signal(SignalKind::user_defined1()).map_err(io_error("cannot handle SIGUSR1"))?;

    // Names are resolved before the listeners open, but a signal is heard meanwhile.
    let resolve_now = Arc::new(tokio::sync::Notify::new());
    let (first_pass, resolved) = tokio::sync::oneshot::channel();
    let _resolver = spawn_resolver(Arc::clone(&shared), Arc::clone(&resolve_now), first_pass);
    // Runs until the control runtime ends with the process.
    drop(tokio::spawn(super::memtrim::run()));
    tokio::select! {
        _ = resolved => {}
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    }

    let snap = shared.snapshot.load_full();
    let mut listeners = ListenerSet {
        keep_fds: snap.upgrade.is_some(),
        ..ListenerSet::default()
    };
    // A fresh start claims its upgrade socket before binding anything, so a conflict there
    // leaves no listener half-open; an upgrade takes the old process's sockets first.
    let mut offer = match (&snap.upgrade, upgrade_from) {
        (Some(path), None) => Some(bind_offer(path, false)?),
        _ => None,
    };
    let mut handover = match upgrade_from {
        Some(path) => Some(upgrade::take(path).await.map_err(StartError::Upgrade)?),
        None => None,
    };
    let opened = open_listeners(&shared, &workers, &listeners, handover.as_mut())?;
    let admin_socket = match snap.admin {
        Some((addr, _)) => Some((addr, admin_socket(addr, handover.as_mut())?)),
        None => None,
    };
    start_listeners(&shared, &workers, &mut listeners, opened)?;
    let mut admin = None;
    if let Some((addr, socket)) = admin_socket {
        let local = socket.local_addr().map_err(io_error("admin address"))?;
        let kept = match listeners.keep_fds {
            true => Some(socket.try_clone().map_err(io_error("admin socket"))?),
            false => None,
        };
        let socket = tokio::net::TcpListener::from_std(socket)
            .map_err(io_error(format!("cannot start the admin API on {addr}")))?;
        tracing::info!(addr = %local, "admin listening");
        let task = tokio::spawn(crate::admin::serve(Arc::clone(&shared), socket));
        admin = Some(Admin {
            configured: addr,
            local,
            kept,
            task,
        });
    }
    if let Some(handover) = handover.take() {
        handover.serving().await;
        if let Some(path) = &snap.upgrade {
            // Serving already: a socket that cannot be placed costs the next upgrade, not this.
            match bind_offer(path, upgrade_from == Some(path.as_path())) {
                Ok(o) => offer = Some(o),
                Err(err) => tracing::error!("{err}; the next upgrade needs a restart"),
            }
        }
    }
    drop(snap);
    tracing::info!(workers = workers.len(), "ready");

    let mut stamps = file_stamps(&shared.snapshot.load());
    let mut file_tick = tokio::time::interval(Duration::from_secs(1));
    let mut exchange: Option<tokio::task::JoinHandle<()>> = None;
    let mut serving: Option<tokio::sync::oneshot::Receiver<upgrade::Serving>> = None;
    let mut handed = None;
    let mut admin_writes = shared.writes.rx.lock().ok().and_then(|mut rx| rx.take());
    let mut etcd_changes = shared.cluster.as_ref().map(|cluster| {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        drop(tokio::spawn(crate::cluster::watch::run(
            Arc::clone(cluster),
            tx,
        )));
        let address = admin
            .as_ref()
            .map(|a| a.local.to_string())
            .unwrap_or_default();
        drop(tokio::spawn(crate::cluster::nodes::run(
            Arc::clone(cluster),
            address,
        )));
        rx
    });
    loop {
        tokio::select! {
            Some(change) = next_change(etcd_changes.as_mut()) => {
                let started = std::time::SystemTime::now();
                if super::cluster::apply_change(&shared, &workers, &mut listeners, change).await {
                    resolve_now.notify_one();
                    stamps = stamps_after(&shared.snapshot.load(), started);
                }
            }
            Some(write) = next_write(admin_writes.as_mut()) => {
                let started = std::time::SystemTime::now();
                let Write { edit, if_match, reply } = write;
                let outcome =
                    admin_write(&shared, &workers, &mut listeners, &edit, if_match.as_deref()).await;
                if outcome.is_ok() {
                    resolve_now.notify_one();
                    stamps = stamps_after(&shared.snapshot.load(), started);
                }
                let _ = reply.send(outcome);
            }
            _ = hangup.recv() => {
                let started = std::time::SystemTime::now();
                if reload(&shared, &workers, &mut listeners, "signal").await {
                    resolve_now.notify_one();
                }
                stamps = stamps_after(&shared.snapshot.load(), started);
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = reopen.recv() => {
                tracing::info!("SIGUSR1: reopening the access log");
                shared.access_log.reopen();
            }
            Some(accepted) = accept_upgrade(offer.as_ref()) => {
                let stream = match accepted {
                    Ok(stream) => stream,
                    Err(err) => {
                        tracing::warn!(error = %err, "upgrade socket accept failed");
                        continue;
                    }
                };
                if exchange.as_ref().is_some_and(|e| !e.is_finished()) {
                    tokio::spawn(upgrade::refuse(stream, "an upgrade is already under way"));
                    continue;
                }
                match offered(&listeners, admin.as_ref()) {
                    Ok(sockets) => {
                        tracing::info!("upgrade: a new process asks for the sockets");
                        let (tell, told) = tokio::sync::oneshot::channel();
                        exchange = Some(tokio::spawn(upgrade::hand_over(stream, sockets, tell)));
                        serving = Some(told);
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "upgrade: cannot duplicate the sockets");
                        tokio::spawn(upgrade::refuse(stream, "cannot duplicate the sockets"));
                    }
                }
            }
            Some(told) = handed_over(&mut serving) => {
                tracing::info!(new_pid = told.pid, "upgrade: handed over");
                handed = Some(told.stopped);
                break;
            }
            _ = file_tick.tick() => {
                // A changed certificate or key file reloads the config: new handshakes use it.
                let now = file_stamps(&shared.snapshot.load());
                if now != stamps {
                    tracing::info!("certificate files changed; reloading");
                    let started = std::time::SystemTime::now();
                    if reload(&shared, &workers, &mut listeners, "files").await {
                        resolve_now.notify_one();
                    }
                    stamps = stamps_after(&shared.snapshot.load(), started);
                }
            }
        }
    }
    tracing::info!("draining");
    let drains = listeners.stop_all();
    if let Some(cluster) = &shared.cluster {
        crate::cluster::nodes::leave(cluster).await;
    }
    drop(offer);
    if let Some(stopped) = handed {
        // The admin API stops accepting too: the new process answers it now.
        if let Some(admin) = admin {
            admin.task.abort();
        }
        let _ = stopped.send(());
    }
    for drain in drains {
        let _ = drain.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Re-reads the config file and applies it, or keeps the running one; `true` when applied.
/// `trigger` says what asked (`signal`, `files`), for the reload history. SIGHUP always
/// reads the file, so it replaces what admin API writes changed.
pub(crate) async fn reload(
    shared: &Arc<Shared>,
    workers: &[Handle],
    listeners: &mut ListenerSet,
    trigger: &'static str,
) -> bool {
    let mut compiled = None;
    let outcome = try_reload(shared, workers, listeners, trigger, &mut compiled).await;
    record_reload(
        shared,
        trigger,
        compiled,
        outcome.err().map(|e| e.to_string()),
    )
}

/// Logs, counts and records the end of a reload attempt; `true` when it applied. `hash` is
/// that of the config it compiled, if it compiled; `refused` says why it did not apply.
pub(crate) fn record_reload(
    shared: &Shared,
    trigger: &'static str,
    hash: Option<Arc<str>>,
    refused: Option<String>,
) -> bool {
    let applied = refused.is_none();
    shared.metrics.reload(applied);
    match &refused {
        None => {
            let hash = hash.as_deref().unwrap_or("");
            shared.metrics.config_hash(hash);
            tracing::info!(trigger, config_hash = hash, "config reloaded");
        }
        Some(reason) => {
            tracing::error!(
                trigger,
                "reload refused, the running config stays:\n{reason}"
            );
        }
    }
    if let Ok(mut last) = shared.last_reload_error.lock() {
        last.clone_from(&refused);
    }
    shared.history.record(trigger, hash, refused);
    applied
}

/// The stamps to compare the next look with, after a reload that began at `started`.
///
/// A file written while the reload read it (a certificate copied before its key, say) may
/// have been compiled half-old; its stamp is then left out, so the next look sees a change
/// and reloads again. File times are coarse, so "while" reaches a second back.
fn stamps_after(
    snap: &Snapshot,
    started: std::time::SystemTime,
) -> Vec<Option<(std::time::SystemTime, u64)>> {
    let recent = started
        .checked_sub(Duration::from_secs(1))
        .unwrap_or(started);
    file_stamps(snap)
        .into_iter()
        .map(|stamp| stamp.filter(|(modified, _)| *modified < recent))
        .collect()
}

/// Modification times (and sizes) of the TLS files the config uses.
fn file_stamps(snap: &Snapshot) -> Vec<Option<(std::time::SystemTime, u64)>> {
    snap.tls_files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// Puts a snapshot's active health checks in place: one task per target, owned by the
/// target's state, so a kept target keeps its task (with the new settings) across reloads.
fn health_checks(snap: &Snapshot, metrics: &Metrics) {
    for upstream in &snap.upstreams {
        for target in &upstream.targets {
            let Some(check) = &upstream.active else {
                target.stop_checks();
                continue;
            };
            let name = Arc::clone(&upstream.name);
            let weak = Arc::downgrade(target);
            target.check_with(check.clone(), |settings| {
                background::spawn(
                    metrics.background_tasks(),
                    crate::pool::check::watch(weak, settings, move |target, up| {
                        if up {
                            tracing::info!(upstream = %name, target = %target.address, "target healthy");
                        } else {
                            tracing::warn!(upstream = %name, target = %target.address, "target unhealthy");
                        }
                    }),
                )
            });
        }
    }
}

async fn try_reload(
    shared: &Arc<Shared>,
    workers: &[Handle],
    listeners: &mut ListenerSet,
    trigger: &'static str,
    compiled: &mut Option<Arc<str>>,
) -> Result<(), ReloadError> {
    let source = current_source(shared);
    if trigger == "files" && source.origin != writes::Origin::File {
        // A certificate changed under a config the admin API wrote: that config is compiled
        // again (so it reads the new files), not the file it replaced.
        let (next, _) =
            writes::compile_document(&source.document, &shared.config_path, env_of(shared))
                .map_err(|problems| ReloadError::Document(describe(&problems)))?;
        *compiled = Some(Arc::clone(&next.hash));
        return apply(shared, workers, listeners, next).await;
    }
    let (next, document) = load(
        &shared.config_path,
        &shared.registry,
        &shared.metrics,
        &shared.acme,
        &shared.states,
    )
    .map_err(ReloadError::Config)?;
    if source.origin == writes::Origin::Etcd {
        // The file's node-specific sections, with the shared config in force from etcd.
        let merged = crate::cluster::merge(&document, &crate::cluster::shared_of(&source.document));
        let (next, _) = writes::compile_document(&merged, &shared.config_path, env_of(shared))
            .map_err(|problems| ReloadError::Document(describe(&problems)))?;
        *compiled = Some(Arc::clone(&next.hash));
        apply(shared, workers, listeners, next).await?;
        set_source(shared, document, writes::Origin::File);
        super::cluster::set_source(shared, merged, source.revision);
        return Ok(());
    }
    *compiled = Some(Arc::clone(&next.hash));
    apply(shared, workers, listeners, next).await?;
    set_source(shared, document, writes::Origin::File);
    Ok(())
}

/// The document of the config in force.
pub(super) fn current_source(shared: &Shared) -> writes::Source {
    match shared.source.lock() {
        Ok(source) => source.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Records the document of the config just put in force.
fn set_source(shared: &Shared, document: config::node::Node, origin: writes::Origin) {
    let mut source = match shared.source.lock() {
        Ok(source) => source,
        Err(poisoned) => poisoned.into_inner(),
    };
    source.writes = match origin {
        writes::Origin::File | writes::Origin::Etcd => 0,
        writes::Origin::Admin => source.writes + 1,
    };
    source.document = Arc::new(document);
    if origin == writes::Origin::File {
        source.file = Arc::clone(&source.document);
        source.revision = 0;
    }
    source.origin = origin;
}

/// The errors among `problems`, one a line: `body:LINE:COL: message` or `PATH: message`.
pub(super) fn describe(problems: &[writes::Problem]) -> String {
    problems
        .iter()
        .filter(|p| p.severity == "error")
        .map(|p| match (&p.path, p.line) {
            (_, Some(line)) => format!("body:{line}:{}: {}", p.col.unwrap_or(0), p.message),
            (Some(path), None) => format!("{path}: {}", p.message),
            (None, None) => p.message.clone(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The next change of the shared config in etcd; never, without a cluster.
async fn next_change(
    changes: Option<&mut tokio::sync::mpsc::Receiver<crate::cluster::watch::Change>>,
) -> Option<crate::cluster::watch::Change> {
    match changes {
        Some(changes) => changes.recv().await,
        None => std::future::pending().await,
    }
}

/// The next admin write; never, without the queue.
async fn next_write(queue: Option<&mut tokio::sync::mpsc::Receiver<Write>>) -> Option<Write> {
    match queue {
        Some(queue) => queue.recv().await,
        None => std::future::pending().await,
    }
}

/// Applies one admin API write as a reload is applied (recorded with trigger `admin`), or
/// says why not; the running config stays on any refusal.
async fn admin_write(
    shared: &Arc<Shared>,
    workers: &[Handle],
    listeners: &mut ListenerSet,
    edit: &writes::Edit,
    if_match: Option<&[String]>,
) -> Result<Written, Refusal> {
    if shared.cluster.is_some() {
        return super::cluster::write(shared, workers, listeners, edit, if_match).await;
    }
    let current = shared.snapshot.load_full();
    let source = current_source(shared);
    let prepared = match writes::prepare(
        &current,
        &source.document,
        edit,
        if_match,
        &shared.config_path,
        env_of(shared),
    ) {
        Ok(prepared) => prepared,
        Err(Refusal::Invalid(problems)) => {
            let reason = describe(&problems);
            record_reload(shared, "admin", None, Some(reason));
            return Err(Refusal::Invalid(problems));
        }
        Err(other) => return Err(other),
    };
    let writes::Prepared {
        snapshot,
        document,
        created,
        warnings,
    } = prepared;
    let written = Written {
        hash: Arc::clone(&snapshot.hash),
        created,
        restart_required: Vec::new(),
        warnings,
    };
    put_write_in_force(shared, workers, listeners, snapshot, written, |shared| {
        set_source(shared, document, writes::Origin::Admin);
    })
    .await
}

/// Puts the snapshot of an admin write in force as a reload is (recorded with trigger
/// `admin`); `in_force` records where it came from once it applied. The answer is `written`
/// with the settings that wait for a restart.
pub(super) async fn put_write_in_force(
    shared: &Arc<Shared>,
    workers: &[Handle],
    listeners: &mut ListenerSet,
    snapshot: Snapshot,
    mut written: Written,
    in_force: impl FnOnce(&Shared),
) -> Result<Written, Refusal> {
    let hash = Arc::clone(&written.hash);
    match apply(shared, workers, listeners, snapshot).await {
        Ok(()) => {
            in_force(shared);
            record_reload(shared, "admin", Some(hash), None);
            written.restart_required = shared
                .restart_required
                .lock()
                .map(|list| list.clone())
                .unwrap_or_default();
            Ok(written)
        }
        Err(err) => {
            let reason = err.to_string();
            record_reload(shared, "admin", Some(hash), Some(reason.clone()));
            Err(Refusal::Apply(reason))
        }
    }
}

/// Puts a compiled snapshot in force: binds its new listeners, starts it, swaps it in and
/// stops the listeners it no longer has. A failure before the swap changes nothing.
pub(crate) async fn apply(
    shared: &Arc<Shared>,
    workers: &[Handle],
    listeners: &mut ListenerSet,
    mut next: Snapshot,
) -> Result<(), ReloadError> {
    let pending = restart_required(&shared.started, workers.len(), listeners, &next);
    // Bind what is new before anything changes, so a failure leaves all as it was.
    let mut fresh = Vec::new();
    let mut fresh_udp = Vec::new();
    for listener in &next.listeners {
        let kept = listeners
            .bound
            .get(&listener.name)
            .is_some_and(|b| b.configured == listener.addr && b.udp == listener.udp.is_some());
        if !kept && listener.udp.is_some() {
            let (name, addr) = (Arc::clone(&listener.name), listener.addr);
            let ours = listeners.holds_udp_port(addr);
            match super::udp::bind(addr, workers.len(), ours) {
                Ok(sockets) => fresh_udp.push((name, addr, sockets)),
                Err(source) => return Err(ReloadError::Bind { name, addr, source }),
            }
        } else if !kept {
            let addr = listener.addr;
            // A listener renamed, or moved between addresses of one port, shares with itself.
            let ours = listeners.holds_port(addr);
            let sockets = bind(addr, workers.len(), ours).map_err(|source| ReloadError::Bind {
                name: Arc::clone(&listener.name),
                addr,
                source,
            })?;
            fresh.push((
                Arc::clone(&listener.name),
                listener.addr,
                sockets,
                listener.limits.max_connections,
            ));
        }
    }
    start_snapshot(&mut next, &shared.states, &shared.acme, &shared.metrics).await;
    let next = Arc::new(next);
    shared.snapshot.store(Arc::clone(&next));
    // Each worker lets go of the old config (requests still on it keep it until they end).
    for worker in workers {
        worker.spawn(async { crate::runtime::shared::unpin() });
    }
    // Tunnels check that their route and upstream are still there.
    shared.generation.send_modify(|g| *g = g.wrapping_add(1));
    commit_registry(shared);
    log_warnings(&next);
    if !pending.is_empty() {
        tracing::warn!(
            "applied, except what needs a restart: {}",
            pending.join("; ")
        );
    }
    if let Ok(mut list) = shared.restart_required.lock() {
        *list = pending;
    }

    let wanted: Vec<&str> = next.listeners.iter().map(|l| &*l.name).collect();
    let stale: Vec<Arc<str>> = listeners
        .bound
        .iter()
        .filter(|(name, bound)| {
            !wanted.contains(&&***name)
                || next
                    .listener(name)
                    .is_some_and(|l| l.addr != bound.configured || l.udp.is_some() != bound.udp)
        })
        .map(|(name, _)| Arc::clone(name))
        .collect();
    for name in stale {
        listeners.remove(&name);
    }
    for (name, addr, sockets, max_connections) in fresh {
        listeners
            .start(shared, workers, name, addr, sockets, max_connections)
            .map_err(ReloadError::Start)?;
    }
    for (name, addr, sockets) in fresh_udp {
        listeners
            .start_udp(shared, workers, name, addr, sockets)
            .map_err(ReloadError::Start)?;
    }
    Ok(())
}

/// Settings of `next` that differ from what runs and that only a restart applies: the
/// worker count, the access log, the admin address, and the connection limit of a listener
/// that keeps its socket. Each as `setting: running -> wanted`.
fn restart_required(
    started: &crate::runtime::Started,
    workers: usize,
    listeners: &ListenerSet,
    next: &Snapshot,
) -> Vec<String> {
    let mut out = Vec::new();
    if next.workers != workers {
        out.push(format!("workers: {workers} -> {}", next.workers));
    }
    if next.spec.pin_workers != started.pin_workers {
        out.push(format!(
            "pin_workers: {} -> {}",
            started.pin_workers, next.spec.pin_workers
        ));
    }
    let log = |a: &crate::config::spec::AccessLogSpec| {
        if a.enabled {
            a.path.clone()
        } else {
            "off".to_owned()
        }
    };
    let (running, wanted) = (log(&started.access_log), log(&next.spec.access_log));
    if running != wanted {
        out.push(format!("access_log: {running} -> {wanted}"));
    }
    let tracing = next
        .spec
        .tracing
        .as_ref()
        .map(|t| serde_json::json!(t).to_string());
    if tracing != started.tracing {
        let show = |t: &Option<String>| t.clone().unwrap_or_else(|| "off".to_owned());
        out.push(format!(
            "tracing: {} -> {}",
            show(&started.tracing),
            show(&tracing)
        ));
    }
    let admin = next.admin.as_ref().map(|(addr, _)| *addr);
    if admin != started.admin {
        let show = |a: Option<std::net::SocketAddr>| a.map_or("none".to_owned(), |a| a.to_string());
        out.push(format!(
            "admin.listen: {} -> {}",
            show(started.admin),
            show(admin)
        ));
    }
    if next.upgrade != started.upgrade {
        let show = |p: &Option<std::path::PathBuf>| {
            p.as_ref()
                .map_or("none".to_owned(), |p| p.display().to_string())
        };
        out.push(format!(
            "upgrade.socket: {} -> {}",
            show(&started.upgrade),
            show(&next.upgrade)
        ));
    }
    for listener in &next.listeners {
        if let Some(bound) = listeners.bound.get(&listener.name)
            && bound.configured == listener.addr
            && !bound.udp
            && bound.max_connections != listener.limits.max_connections
        {
            out.push(format!(
                "listener `{}` max_connections: {} -> {}",
                listener.name, bound.max_connections, listener.limits.max_connections
            ));
        }
    }
    out
}

/// Resolves DNS names of targets on its own task: every second the names that are due, and
/// all of them after a reload. `first_pass` is told when the first round is done.
fn spawn_resolver(
    shared: Arc<Shared>,
    now: Arc<tokio::sync::Notify>,
    first_pass: tokio::sync::oneshot::Sender<()>,
) -> BackgroundTask {
    let live = shared.metrics.background_tasks().clone();
    background::spawn(&live, async move {
        let mut due: HashMap<(String, String), Instant> = HashMap::new();
        resolve_all(&shared, &mut due, true).await;
        let _ = first_pass.send(());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let force = tokio::select! {
                _ = tick.tick() => false,
                () = now.notified() => true,
            };
            resolve_all(&shared, &mut due, force).await;
        }
    })
}

/// Resolves DNS names of targets that are due (all of them when `force`); each lookup runs on
/// a blocking thread and is given up after 5 s.
async fn resolve_all(shared: &Shared, due: &mut HashMap<(String, String), Instant>, force: bool) {
    let snap = shared.snapshot.load_full();
    let now = Instant::now();
    for upstream in &snap.upstreams {
        for target in &upstream.targets {
            if target.address.parse::<std::net::SocketAddr>().is_ok() {
                continue;
            }
            let key = (upstream.name.to_string(), target.address.to_string());
            if !force && due.get(&key).is_some_and(|at| *at > now) {
                continue;
            }
            due.insert(key, now + upstream.resolve_every);
            let lookup = tokio::net::lookup_host(target.address.to_string());
            match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                Ok(Ok(addrs)) => {
                    let mut addrs: Vec<_> = addrs.collect();
                    addrs.sort();
                    addrs.dedup();
                    if **target.addrs.load() != addrs {
                        tracing::info!(upstream = %upstream.name, target = %target.address, ?addrs, "target resolved");
                        target.addrs.store(Arc::new(addrs));
                    }
                }
                Ok(Err(err)) => {
                    tracing::warn!(upstream = %upstream.name, target = %target.address, error = %err, "cannot resolve target; keeping its last addresses");
                }
                Err(_) => {
                    tracing::warn!(upstream = %upstream.name, target = %target.address, "resolving target timed out");
                }
            }
        }
    }
}
