//! Upstream connections: one pool per target, split per worker thread.
//!
//! A connection stays on the worker that opened it, so each worker keeps its own idle list: a
//! request never hands a connection to another thread, and the per-worker lock is never
//! contended. A plain-TCP HTTP/1.1 connection is driven by the request that holds it (see
//! `h1`); a TLS one, an upgrade and HTTP/2 by hyper's client, on a task of the worker. HTTP/1.1 connections are checked out for one exchange and checked back in
//! when the response body ends; an HTTP/2 connection is shared by all requests of its worker.
//! Pools live in a registry keyed by upstream and target, so a reload keeps them.
//!
//! An idle connection is closed once it has been idle for the pool's `idle_timeout` (see
//! `idle` for HTTP/1.1, `h2idle` for a shared HTTP/2 connection); every check-in and close wakes the upstream's waiters for a free
//! connection (see `breaker`). A worker's HTTP/1.1 idle list is also trimmed to recent demand:
//! it keeps no more connections than its requests held at once over the pool's
//! `demand_window`, closing the oldest idle ones first (see `trim`).
//!
//! For an upstream with `proxy_protocol`, a new connection starts with a PROXY header that
//! names one client: an HTTP/1.1 connection then belongs to that client address (and port)
//! and is only reused for it, and HTTP/2 connections are not shared at all.

pub(crate) mod breaker;
pub(crate) mod check;
pub(crate) mod h1;
mod h2idle;

use h1::H1;
mod idle;
mod trim;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use rustls_pki_types::ServerName;

use crate::body::Body;
use crate::tls::UpstreamTls;
use h2idle::{Activity, Tracked};
use idle::Lease;

/// Most bytes read ahead of the client from an HTTP/1.1 upstream connection (hyper's read
/// buffer; its default is about 400 KiB). A client that reads slowly holds at most this much
/// of the upstream's answer here; the rest waits in the kernel and at the upstream.
const UPSTREAM_READ_AHEAD: usize = 32 << 10;

/// Marks the current thread as worker `index` (0 is the control thread).
pub(crate) fn set_worker(index: usize) {
    crate::worker::set(index);
}

fn worker() -> usize {
    crate::worker::index()
}

/// Live state of one target: its addresses, its load and its idle connections.
#[derive(Debug)]
pub(crate) struct TargetState {
    /// The address as written in the config (`host:port`).
    pub(crate) address: Arc<str>,
    /// Current resolved addresses; empty until a name resolves.
    pub(crate) addrs: ArcSwap<Vec<SocketAddr>>,
    /// Requests in flight to this target.
    pub(crate) inflight: AtomicUsize,
    /// Open connections to this target (all workers).
    pub(crate) open: Arc<AtomicUsize>,
    /// Health, ejection, slow start and latency.
    pub(crate) health: crate::health::TargetHealth,
    /// What the tries sent here came to, counted by [`TargetOutcome`].
    pub(crate) outcomes: crate::observe::sharded::Counters8,
    /// The running active check, while the config in force has one.
    checker: Mutex<Option<Checker>>,
    /// The upstream's "a connection was checked in or closed" signal.
    freed: Arc<breaker::Freed>,
    next_addr: AtomicUsize,
    idle: Box<[Mutex<Slot>]>,
    shared_h2: Box<[Mutex<Option<SharedH2>>]>,
}

/// What one try sent to a target came to: its index in [`TargetState::outcomes`] and its
/// `outcome` label in `portico_upstream_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetOutcome {
    /// An answer with a 1xx status (a protocol switch).
    Informational,
    /// 2xx.
    Success,
    /// 3xx.
    Redirection,
    /// 4xx.
    ClientError,
    /// 5xx.
    ServerError,
    /// No connection could be made.
    ConnectFailure,
    /// No answer within the timeout.
    Timeout,
    /// The connection broke or the answer could not be read.
    Failed,
}

impl TargetOutcome {
    /// Every outcome, in counter order.
    pub(crate) const ALL: [TargetOutcome; 8] = [
        TargetOutcome::Informational,
        TargetOutcome::Success,
        TargetOutcome::Redirection,
        TargetOutcome::ClientError,
        TargetOutcome::ServerError,
        TargetOutcome::ConnectFailure,
        TargetOutcome::Timeout,
        TargetOutcome::Failed,
    ];

    /// The outcome of an answer with `status`.
    pub(crate) fn of_status(status: u16) -> Self {
        match status {
            ..200 => TargetOutcome::Informational,
            200..300 => TargetOutcome::Success,
            300..400 => TargetOutcome::Redirection,
            400..500 => TargetOutcome::ClientError,
            _ => TargetOutcome::ServerError,
        }
    }

    /// The label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            TargetOutcome::Informational => "1xx",
            TargetOutcome::Success => "2xx",
            TargetOutcome::Redirection => "3xx",
            TargetOutcome::ClientError => "4xx",
            TargetOutcome::ServerError => "5xx",
            TargetOutcome::ConnectFailure => "connect_failure",
            TargetOutcome::Timeout => "timeout",
            TargetOutcome::Failed => "failed",
        }
    }
}

/// A worker's shared HTTP/2 connection and what its driver reads of its use.
type SharedH2 = (http2::SendRequest<Body>, Arc<Activity>);

/// A worker's idle HTTP/1.1 connections (oldest first) and the demand they are trimmed to.
#[derive(Debug, Default)]
struct Slot {
    list: Vec<Idle>,
    demand: trim::Demand,
}

#[derive(Debug)]
struct Idle {
    sender: H1,
    since: Instant,
    lease: Arc<Lease>,
    /// The client whose PROXY header the connection carried; only its requests reuse it.
    owner: Option<SocketAddr>,
}

/// The PROXY protocol header a new connection starts with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProxyHeader {
    /// v1 or v2.
    pub(crate) version: crate::proxy_protocol::Version,
    /// The downstream client (the connection is its alone).
    pub(crate) client: SocketAddr,
    /// The address the client connected to.
    pub(crate) local: SocketAddr,
}

/// Settings that may change on reload without dropping a pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolSettings {
    /// Most idle connections per worker (the settings are copied into every request's
    /// future: kept small).
    pub(crate) max_idle: u32,
    /// Idle connections older than this are closed.
    pub(crate) idle_timeout: Duration,
    /// TCP connect timeout.
    pub(crate) connect_timeout: Duration,
    /// Idle connections beyond the peak in use over this window (in milliseconds: the
    /// settings are copied into every request's future) are closed; zero: none.
    pub(crate) demand_window_ms: u32,
}

/// A ready connection for one exchange.
pub(crate) enum Conn {
    /// An HTTP/1.1 connection; the [`Checkin`] goes with the response body.
    H1(Checkin),
    /// A shared HTTP/2 connection.
    H2(http2::SendRequest<Body>),
}

/// `Checkin::worker` once the check-in was counted back into its slot's demand.
const RELEASED: usize = usize::MAX;

/// Returns an HTTP/1.1 connection to its pool.
pub(crate) struct Checkin {
    target: Arc<TargetState>,
    worker: usize,
    sender: Option<H1>,
    lease: Arc<Lease>,
    settings: PoolSettings,
    owner: Option<SocketAddr>,
}

impl std::fmt::Debug for Checkin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkin")
            .field("target", &self.target.address)
            .finish()
    }
}

impl crate::body::Checkin for Checkin {
    fn release(self: Box<Self>) {
        Checkin::release(*self);
    }
}

impl Checkin {
    /// The exchange is complete: keep the connection for the next request.
    pub(crate) fn release(mut self) {
        let sender = self.sender.take().filter(|s| !s.is_closed());
        let Some(slot) = self.target.idle.get(self.worker) else {
            return;
        };
        let mut idle = match slot.lock() {
            Ok(idle) => idle,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Counted back into the slot's demand here, not again on drop.
        self.worker = RELEASED;
        let now = crate::health::now_ms();
        let window = u64::from(self.settings.demand_window_ms);
        idle.demand.returned(now, window);
        let Some(sender) = sender else {
            // Closed: dropping the sender ends its driver, and its close wakes waiters.
            return;
        };
        if idle.list.len() >= self.settings.max_idle as usize {
            return;
        }
        // Idle from now: its driver closes it after `idle_timeout` unless taken first.
        self.lease.check_in(self.settings.idle_timeout);
        idle.list.push(Idle {
            sender,
            since: Instant::now(),
            lease: Arc::clone(&self.lease),
            owner: self.owner,
        });
        let keep = idle.demand.keep_idle(now, window);
        let closing = trim::surplus(&mut idle.list, keep);
        drop(idle);
        close_surplus(closing);
        self.target.freed.notify_waiters();
    }

    /// The connection, when hyper's client drives it.
    pub(crate) fn sender(&mut self) -> Option<&mut http1::SendRequest<Body>> {
        match self.sender.as_mut()? {
            H1::Hyper(sender) => Some(sender),
            H1::Raw(_) => None,
        }
    }
}

impl Drop for Checkin {
    /// Not released (the exchange failed or was cancelled): the request no longer holds a
    /// connection, whatever becomes of it.
    fn drop(&mut self) {
        if self.worker == RELEASED {
            return;
        }
        if let Some(slot) = self.target.idle.get(self.worker) {
            let mut idle = match slot.lock() {
                Ok(idle) => idle,
                Err(poisoned) => poisoned.into_inner(),
            };
            idle.demand.returned(
                crate::health::now_ms(),
                u64::from(self.settings.demand_window_ms),
            );
        }
    }
}

/// Closes idle connections trimmed from a list: marked closed so that their driver does not
/// wait for the idle timeout, and dropped (dropping a sender ends its connection).
fn close_surplus(closing: Vec<Idle>) {
    for entry in closing {
        entry.lease.close();
        tracing::debug!("surplus idle upstream connection closed");
    }
}

/// Why no connection to a target could be had. The request path turns it into the client's
/// error, with the upstream's name.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The target's name has not resolved to an address (yet).
    #[error("the target has no address")]
    NoAddress,
    /// The TCP connection (or the TLS handshake over it) failed.
    #[error("connecting to {target} failed")]
    Connect {
        /// The address tried.
        target: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection was not made within the connect timeout.
    #[error("connecting to {target} timed out")]
    Timeout {
        /// The address tried.
        target: SocketAddr,
    },
    /// The HTTP handshake on a new connection failed.
    #[error("the HTTP handshake failed")]
    Handshake(#[source] hyper::Error),
}

/// A target's active check task and the settings it reads before each probe.
#[derive(Debug)]
struct Checker {
    check: Arc<ArcSwap<check::ActiveCheck>>,
    _task: crate::background::BackgroundTask,
}

impl TargetState {
    /// Checks the target actively with `check`: the running task takes the new settings at
    /// its next probe, or `start` starts one with the settings it is handed.
    pub(crate) fn check_with(
        &self,
        check: check::ActiveCheck,
        start: impl FnOnce(Arc<ArcSwap<check::ActiveCheck>>) -> crate::background::BackgroundTask,
    ) {
        let mut slot = match self.checker.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        match &*slot {
            Some(running) => running.check.store(Arc::new(check)),
            None => {
                let shared = Arc::new(ArcSwap::from_pointee(check));
                let task = start(Arc::clone(&shared));
                *slot = Some(Checker {
                    check: shared,
                    _task: task,
                });
            }
        }
    }

    /// The config has no active check for the target any more: the task stops and the
    /// checks' verdict no longer holds the target out.
    pub(crate) fn stop_checks(&self) {
        let stopped = match self.checker.lock() {
            Ok(mut s) => s.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if stopped.is_some() {
            self.health.forget_checks();
        }
    }

    /// `slots`: one per worker plus the control thread; `freed` is the upstream's.
    fn new(
        address: &str,
        addrs: Vec<SocketAddr>,
        freed: Arc<breaker::Freed>,
        slots: usize,
    ) -> Self {
        TargetState {
            address: Arc::from(address),
            addrs: ArcSwap::from_pointee(addrs),
            inflight: AtomicUsize::new(0),
            open: Arc::default(),
            health: crate::health::TargetHealth::default(),
            outcomes: Default::default(),
            checker: Mutex::new(None),
            freed,
            next_addr: AtomicUsize::new(0),
            idle: (0..slots).map(|_| Mutex::default()).collect(),
            shared_h2: (0..slots).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Number of idle HTTP/1.1 connections across workers.
    pub(crate) fn idle_count(&self) -> usize {
        self.idle
            .iter()
            .map(|slot| slot.lock().map(|l| l.list.len()).unwrap_or(0))
            .sum()
    }

    fn pick_addr(&self) -> Option<SocketAddr> {
        let addrs = self.addrs.load();
        if addrs.is_empty() {
            return None;
        }
        let i = self.next_addr.fetch_add(1, Ordering::Relaxed) % addrs.len();
        Some(addrs[i])
    }

    /// The worker's shared HTTP/2 connection, when it is open.
    fn shared_h2_conn(&self, worker: usize, settings: PoolSettings) -> Option<Conn> {
        let slot = self.shared_h2.get(worker)?;
        let shared = slot.lock().ok()?;
        let (sender, activity) = shared.as_ref()?;
        if sender.is_closed() {
            return None;
        }
        // Before the request opens its stream: the connection is not idle from now.
        activity.handed_out(settings.idle_timeout);
        Some(Conn::H2(sender.clone()))
    }

    /// A connection for one request, reused when possible; with `proxy`, a new connection
    /// starts with that PROXY header and is reused only for the same client.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        http2: bool,
        settings: PoolSettings,
        tls: Option<&UpstreamTls>,
        proxy: Option<ProxyHeader>,
    ) -> Result<Conn, ConnectError> {
        let worker = worker();
        if let Some(proxy) = proxy {
            return Box::pin(self.connect_private(worker, http2, settings, tls, proxy)).await;
        }
        if http2 {
            if let Some(conn) = self.shared_h2_conn(worker, settings) {
                return Ok(conn);
            }
            // Boxed, as below: the setup's state (dial, TLS, handshake) is large, and it would
            // otherwise be part of every request's future, copied with it.
            return Box::pin(self.connect_h2(worker, settings, tls)).await;
        }
        if let Some((sender, lease)) = self.checkout(worker, settings, None) {
            return Ok(Conn::H1(
                self.checkin(worker, sender, lease, settings, None),
            ));
        }
        Box::pin(self.open_new_h1(worker, settings, tls, None)).await
    }

    /// A connection that carries `proxy`'s header: an HTTP/1.1 one of the same client when
    /// one is idle, else a new one; HTTP/2 ones are never shared.
    async fn connect_private(
        self: &Arc<Self>,
        worker: usize,
        http2: bool,
        settings: PoolSettings,
        tls: Option<&UpstreamTls>,
        proxy: ProxyHeader,
    ) -> Result<Conn, ConnectError> {
        if http2 {
            let stream = self.dial(settings, Some(&proxy)).await?;
            let activity = Arc::new(Activity::default());
            activity.handed_out(settings.idle_timeout);
            let sender = match tls {
                None => self.open_h2(stream, activity).await?,
                Some(tls) => {
                    let stream = self.tls_handshake(tls, stream, settings).await?;
                    self.open_h2(stream, activity).await?
                }
            };
            return Ok(Conn::H2(sender));
        }
        let owner = Some(proxy.client);
        if let Some((sender, lease)) = self.checkout(worker, settings, owner) {
            return Ok(Conn::H1(
                self.checkin(worker, sender, lease, settings, owner),
            ));
        }
        self.open_new_h1(worker, settings, tls, Some(&proxy)).await
    }

    /// A new HTTP/1.1 connection: dial (and the PROXY header), TLS when configured,
    /// handshake.
    async fn open_new_h1(
        self: &Arc<Self>,
        worker: usize,
        settings: PoolSettings,
        tls: Option<&UpstreamTls>,
        proxy: Option<&ProxyHeader>,
    ) -> Result<Conn, ConnectError> {
        let stream = self.dial(settings, proxy).await?;
        let (sender, lease) = match tls {
            None => {
                let lease = Arc::new(Lease::new());
                let open = OpenConn::new(&self.open, &self.freed);
                self.watch_idle(worker, Arc::clone(&lease));
                let conn = h1::RawConn::new(stream, Arc::clone(&lease), open);
                (H1::Raw(conn), lease)
            }
            Some(tls) => {
                let stream = self.tls_handshake(tls, stream, settings).await?;
                self.open_h1(TokioIo::new(stream)).await?
            }
        };
        let owner = proxy.map(|p| p.client);
        if let Some(slot) = self.idle.get(worker) {
            let mut idle = match slot.lock() {
                Ok(idle) => idle,
                Err(poisoned) => poisoned.into_inner(),
            };
            idle.demand.took(
                crate::health::now_ms(),
                u64::from(settings.demand_window_ms),
            );
        }
        Ok(Conn::H1(
            self.checkin(worker, sender, lease, settings, owner),
        ))
    }

    async fn open_h1<I>(&self, io: I) -> Result<(H1, Arc<Lease>), ConnectError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(UPSTREAM_READ_AHEAD)
            .handshake(io)
            .await
            .map_err(ConnectError::Handshake)?;
        let lease = Arc::new(Lease::new());
        let open = OpenConn::new(&self.open, &self.freed);
        drive(
            conn.with_upgrades(),
            Expiry::Lease(Arc::clone(&lease)),
            open,
        );
        Ok((H1::Hyper(sender), lease))
    }
}

/// Runs a connection's I/O on this worker, counted as open (by `open`) while it lives, until
/// it has been idle for its timeout (dropping the connection closes it).
fn drive(
    conn: impl Future<Output = Result<(), hyper::Error>> + Send + 'static,
    expiry: Expiry,
    open: OpenConn,
) {
    // A connection handed over from portico's own client has a task waiting on its lease:
    // told when the connection is gone (an upgrade takes it for good).
    let lease = match &expiry {
        Expiry::Lease(lease) => Some(Arc::clone(lease)),
        Expiry::Streams(_) => None,
    };
    tokio::spawn(async move {
        let idle = async {
            match expiry {
                Expiry::Lease(lease) => lease.expired().await,
                Expiry::Streams(activity) => activity.expired().await,
            }
        };
        let ended = tokio::select! {
            ended = conn => ended,
            () = idle => {
                tracing::debug!("idle upstream connection closed");
                Ok(())
            }
        };
        if let Err(err) = ended {
            tracing::debug!(error = %err, "upstream connection ended");
        }
        if let Some(lease) = lease {
            lease.gone();
        }
        drop(open);
    });
}

impl TargetState {
    async fn open_h2<I>(
        &self,
        io: I,
        activity: Arc<Activity>,
    ) -> Result<http2::SendRequest<Body>, ConnectError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(Tracked::new(io, Arc::clone(&activity)));
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(io)
            .await
            .map_err(ConnectError::Handshake)?;
        drive(
            conn,
            Expiry::Streams(activity),
            OpenConn::new(&self.open, &self.freed),
        );
        Ok(sender)
    }

    /// The name TLS sends and verifies: the configured SNI, or the target's host.
    pub(crate) fn server_name(
        &self,
        tls: &UpstreamTls,
    ) -> Result<ServerName<'static>, rustls_pki_types::InvalidDnsNameError> {
        if let Some(name) = &tls.sni {
            return Ok(name.clone());
        }
        let host = self
            .address
            .rsplit_once(':')
            .map_or(&*self.address, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned())
    }

    /// TLS over a fresh TCP connection; SNI is the configured name or the target's host.
    async fn tls_handshake(
        &self,
        tls: &UpstreamTls,
        stream: TcpStream,
        settings: PoolSettings,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
        let target = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let failed = |source: std::io::Error| ConnectError::Connect { target, source };
        let name = self
            .server_name(tls)
            .map_err(|e| failed(std::io::Error::other(e)))?;
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(&tls.config));
        match tokio::time::timeout(settings.connect_timeout, connector.connect(name, stream)).await
        {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(err)) => Err(failed(err)),
            Err(_) => Err(ConnectError::Timeout { target }),
        }
    }

    fn checkin(
        self: &Arc<Self>,
        worker: usize,
        sender: H1,
        lease: Arc<Lease>,
        settings: PoolSettings,
        owner: Option<SocketAddr>,
    ) -> Checkin {
        Checkin {
            target: Arc::clone(self),
            worker,
            sender: Some(sender),
            lease,
            settings,
            owner,
        }
    }

    /// The most recent idle connection of `owner` (`None`: connections without a PROXY
    /// header, all of them when the upstream sends none). Counts the connection the request
    /// takes (a reused one here, or the new one it opens instead) in the slot's demand, and
    /// trims the idle list to it.
    fn checkout(
        &self,
        worker: usize,
        settings: PoolSettings,
        owner: Option<SocketAddr>,
    ) -> Option<(H1, Arc<Lease>)> {
        let mut idle = self.idle.get(worker)?.lock().ok()?;
        let mut found = None;
        // Without PROXY headers every entry matches and this is the last one: a pop.
        while let Some(at) = idle.list.iter().rposition(|e| e.owner == owner) {
            let entry = idle.list.remove(at);
            if entry.sender.is_closed() || entry.since.elapsed() > settings.idle_timeout {
                continue;
            }
            // Lost the race with its idle close: that one is closing, try the next.
            if !entry.lease.check_out() {
                continue;
            }
            if entry.sender.is_ready() {
                found = Some((entry.sender, entry.lease));
                break;
            }
        }
        let now = crate::health::now_ms();
        let window = u64::from(settings.demand_window_ms);
        if found.is_some() {
            idle.demand.took(now, window);
        }
        let keep = idle.demand.keep_idle(now, window);
        // After a reuse the request's connection is counted; before a new one is opened it
        // is not yet, so one more idle entry than the peak allows would be kept: none is.
        let keep = if found.is_some() {
            keep
        } else {
            keep.map(|k| k.saturating_sub(1))
        };
        let closing = trim::surplus(&mut idle.list, keep);
        drop(idle);
        close_surplus(closing);
        found
    }

    async fn connect_h2(
        self: &Arc<Self>,
        worker: usize,
        settings: PoolSettings,
        tls: Option<&UpstreamTls>,
    ) -> Result<Conn, ConnectError> {
        if let Some(conn) = self.shared_h2_conn(worker, settings) {
            return Ok(conn);
        }
        let stream = self.dial(settings, None).await?;
        let activity = Arc::new(Activity::default());
        activity.handed_out(settings.idle_timeout);
        let sender = match tls {
            None => self.open_h2(stream, Arc::clone(&activity)).await?,
            Some(tls) => {
                let stream = self.tls_handshake(tls, stream, settings).await?;
                self.open_h2(stream, Arc::clone(&activity)).await?
            }
        };
        if let Some(slot) = self.shared_h2.get(worker)
            && let Ok(mut shared) = slot.lock()
        {
            *shared = Some((sender.clone(), activity));
        }
        Ok(Conn::H2(sender))
    }

    /// A TCP connection to one of the target's addresses; with `proxy`, its header is
    /// written first (before TLS, as the PROXY protocol wants).
    async fn dial(
        &self,
        settings: PoolSettings,
        proxy: Option<&ProxyHeader>,
    ) -> Result<TcpStream, ConnectError> {
        use tokio::io::AsyncWriteExt;
        let target = self.pick_addr().ok_or(ConnectError::NoAddress)?;
        let dial = async {
            let mut stream = TcpStream::connect(target).await?;
            // Small writes (request heads) must not wait for Nagle.
            let _ = stream.set_nodelay(true);
            if let Some(p) = proxy {
                let header = crate::proxy_protocol::header(p.version, p.client, p.local);
                stream.write_all(&header).await?;
            }
            Ok(stream)
        };
        tokio::time::timeout(settings.connect_timeout, dial)
            .await
            .map_err(|_| ConnectError::Timeout { target })?
            .map_err(|source| ConnectError::Connect { target, source })
    }
}

/// How a connection's driver knows it has been idle long enough.
enum Expiry {
    /// HTTP/1.1: checked in and not taken again.
    Lease(Arc<Lease>),
    /// Shared HTTP/2: no open stream and no hand-out.
    Streams(Arc<Activity>),
}

/// Counts one open connection for as long as it lives; its close wakes the upstream's
/// waiters for a free connection.
struct OpenConn {
    open: Arc<AtomicUsize>,
    freed: Arc<breaker::Freed>,
}

impl OpenConn {
    fn new(open: &Arc<AtomicUsize>, freed: &Arc<breaker::Freed>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        OpenConn {
            open: Arc::clone(open),
            freed: Arc::clone(freed),
        }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.freed.notify_waiters();
    }
}

/// Every target's state, keyed by upstream name and address; shared across reloads.
///
/// Compiling only looks entries up (a new target gets state outside the registry); the
/// entries become exactly those of a config when it is put in force ([`Registry::commit`]),
/// so a refused reload leaves the registry as it was.
#[derive(Debug)]
pub(crate) struct Registry {
    targets: Mutex<HashMap<(String, String), Arc<TargetState>>>,
    upstreams: Mutex<HashMap<String, Arc<UpstreamState>>>,
    /// Pool slots per target: one per worker plus the control thread.
    slots: usize,
}

impl Default for Registry {
    /// A registry for the control thread alone (validation, tests).
    fn default() -> Self {
        Registry::new(0)
    }
}

/// Live state of one upstream (all its targets), kept across reloads.
#[derive(Debug, Default)]
pub(crate) struct UpstreamState {
    /// Requests in flight to the upstream.
    pub(crate) inflight: AtomicUsize,
    /// Requests waiting for a connection (circuit breaker `max_pending`).
    pub(crate) pending: AtomicUsize,
    /// Notified when a connection to any of its targets is checked in or closes.
    pub(crate) freed: Arc<breaker::Freed>,
    /// This second's first tries, counted per worker (every request counts: no line
    /// shared by the workers is written for it).
    budget_requests: crate::observe::sharded::PerSecond,
    /// The second `budget_retries` counts for; both are written on retries only.
    budget_second: std::sync::atomic::AtomicU64,
    budget_retries: std::sync::atomic::AtomicU32,
}

impl UpstreamState {
    /// Counts a first try, for the retry budget.
    pub(crate) fn count_request(&self) {
        self.budget_requests.inc(crate::health::now_ms() / 1000);
    }

    /// Takes one retry from this second's budget: `percent` of this second's requests, but
    /// at least `min`. `false` when the budget is spent.
    pub(crate) fn take_retry(&self, percent: u32, min: u32) -> bool {
        let second = crate::health::now_ms() / 1000;
        if self.budget_second.load(Ordering::Relaxed) != second
            && self.budget_second.swap(second, Ordering::Relaxed) != second
        {
            self.budget_retries.store(0, Ordering::Relaxed);
        }
        let requests = u32::try_from(self.budget_requests.get(second)).unwrap_or(u32::MAX);
        let allowed = (requests.saturating_mul(percent) / 100).max(min);
        self.budget_retries.fetch_add(1, Ordering::Relaxed) < allowed
    }
}

impl Registry {
    /// A registry whose pools have a slot for each of `workers` worker threads.
    pub(crate) fn new(workers: usize) -> Self {
        Registry {
            targets: Mutex::default(),
            upstreams: Mutex::default(),
            slots: workers + 1,
        }
    }

    /// The live state of a target, or new state (not entered: see [`Registry::commit`]). An
    /// IP literal resolves at once; a name starts with no address until the resolver fills
    /// it in.
    /// `freed` is the upstream state's wake-up for connection waiters (see
    /// `UpstreamState::wait_for_connection`).
    pub(crate) fn target(
        &self,
        upstream: &str,
        address: &str,
        freed: &Arc<breaker::Freed>,
    ) -> Arc<TargetState> {
        let targets = match self.targets.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(live) = targets.get(&(upstream.to_owned(), address.to_owned())) {
            return Arc::clone(live);
        }
        let had_targets = targets.keys().any(|(u, _)| u == upstream);
        let addrs = address
            .parse::<SocketAddr>()
            .map(|a| vec![a])
            .unwrap_or_default();
        let state = TargetState::new(address, addrs, Arc::clone(freed), self.slots);
        if had_targets {
            // Added by a reload: a slow start ramps it up (when configured).
            state.health.joined();
        }
        Arc::new(state)
    }

    /// The live state of upstream `name`, or new state (not entered).
    pub(crate) fn upstream(&self, name: &str) -> Arc<UpstreamState> {
        let upstreams = match self.upstreams.lock() {
            Ok(u) => u,
            Err(poisoned) => poisoned.into_inner(),
        };
        upstreams.get(name).map(Arc::clone).unwrap_or_default()
    }

    /// Makes the entries those of the config now in force: `upstreams` with their targets.
    pub(crate) fn commit<'a>(
        &self,
        upstreams: impl IntoIterator<Item = (&'a str, &'a Arc<UpstreamState>, &'a [Arc<TargetState>])>,
    ) {
        let mut targets = HashMap::new();
        let mut states = HashMap::new();
        for (name, state, list) in upstreams {
            states.insert(name.to_owned(), Arc::clone(state));
            for target in list {
                targets.insert(
                    (name.to_owned(), target.address.to_string()),
                    Arc::clone(target),
                );
            }
        }
        if let Ok(mut t) = self.targets.lock() {
            *t = targets;
        }
        if let Ok(mut u) = self.upstreams.lock() {
            *u = states;
        }
    }
}

#[cfg(test)]
mod tests;
