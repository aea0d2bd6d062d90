//! One client connection: hyper's HTTP/1.1 + h2c server with portico's limits, and an idle
//! timer that costs one clock read per I/O call.
//!
//! An idle HTTP/1.1 connection is closed; an idle HTTP/2 connection is shut down gracefully
//! (GOAWAY, RFC 9113 §6.8), and PING frames do not count as use: keep-alive pings, ours or the
//! client's, must not keep an idle connection open forever.
//!
//! hyper answers some malformed HTTP/1.1 heads itself, before the service sees them; `IdleIo`
//! rewrites those answers into portico's JSON ones when it can tell them apart for certain
//! (see `early` and `IdleIo::poll_early`).

pub(super) mod early;
mod flood;
mod gate;
mod stream;

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::Shared;
use super::listeners::{Lifecycle, Phase};
use super::scan::{FrameScan, HeadScan};
use crate::body::{Body, BodyError};
use crate::error::MAX_HEADER_FIELDS;
use crate::proxy::pipeline::{ConnInfo, Framing, handle};
use crate::runtime::Limits;

/// hyper's cap on header lines in one HTTP/1.1 head: portico's own limit
/// ([`MAX_HEADER_FIELDS`]). A head over it gets hyper's 431, which `IdleIo` rewrites into
/// portico's JSON one. hyper keeps room for this many lines on every head it parses; up to
/// its default of 100 that room is on the stack, above it two heap allocations per head.
const HYPER_MAX_HEADERS: usize = MAX_HEADER_FIELDS;
const _: () = assert!(HYPER_MAX_HEADERS <= 100);

/// Builds hyper's server settings from a listener's limits.
pub(crate) fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The same settings as `http1_builder`, which serves a connection back from parking.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_headers(HYPER_MAX_HEADERS)
        .max_buf_size(http1_max_buf(limits));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        // Rapid reset (CVE-2023-44487): streams the client resets before they are accepted
        // are kept only this many at once, beyond which the connection gets a GOAWAY. The
        // flood guard (`flood`) weighs the resets of accepted streams.
        .max_pending_accept_reset_streams(PENDING_ACCEPT_RESETS)
        // MadeYouReset (CVE-2025-8671): streams the server must reset because of the
        // client's errors; past this many the connection gets a GOAWAY.
        .max_local_error_reset_streams(LOCAL_ERROR_RESETS)
        // Response bytes held per stream for a client that leaves its window closed.
        .max_send_buf_size(limits.send_buffer)
        // WebSocket over HTTP/2 (RFC 8441).
        .enable_connect_protocol()
        .max_header_list_size(
            u32::try_from(limits.max_header_size + limits.max_uri_length).unwrap_or(u32::MAX),
        )
        // No keep-alive PINGs (and no timer for them on every connection): the idle timeout
        // ends an unused connection, the route's stream limits a stream in progress.
        .keep_alive_interval(None);
    builder
}

/// hyper's HTTP/1.1 settings for a connection back from parking (see [`builder`]).
fn http1_builder(max_buf: usize) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Head and idle timeouts are ours (see `IdleIo`): hyper's would also cut idle
        // keep-alive connections at the head timeout.
        .header_read_timeout(None)
        .keep_alive(true)
        .max_headers(HYPER_MAX_HEADERS)
        .max_buf_size(max_buf);
    builder
}

/// hyper's cap on its HTTP/1.1 read buffer: our own check answers 431 in JSON below this;
/// hyper's hard cap sits above it.
fn http1_max_buf(limits: &Limits) -> usize {
    (limits.max_header_size + limits.max_uri_length + 16 * 1024).max(8192)
}

/// How long an HTTP/1.1 connection waits with nothing to do before it is parked: its hyper
/// connection (read and write buffers, parser and dispatcher state) is dropped, and the
/// connection waits for readability holding only the socket and its timers. Long enough that
/// a busy keep-alive connection never pays for the rebuild, short enough that connections
/// opened in a burst do not hold their buffers long.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(250);

/// A client stream that an idle connection can wait on without a read buffer.
pub(crate) trait Park {
    /// Whether connections on this stream are parked when idle.
    const PARKS: bool;
    /// Ready once the stream has bytes (or an end, or an error) to read.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Park for tokio::net::TcpStream {
    const PARKS: bool = true;
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

/// TLS connections are not parked: rustls keeps its own buffers (and may hold plaintext the
/// socket's readiness would not announce).
impl Park for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    const PARKS: bool = false;
    fn poll_readable(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What `IdleIo` asks of `serve` through [`ConnShared::signal`].
const SIGNAL_NONE: u8 = 0;
/// The HTTP/1.1 connection is idle and hyper holds nothing of it: park it.
const SIGNAL_PARK: u8 = 1;
/// The HTTP/2 connection went idle: shut it down gracefully.
const SIGNAL_H2_IDLE: u8 = 2;

/// Where an idle connection's stream goes back to when its hyper connection is dropped.
struct Slot<S> {
    /// Set while `serve` drops hyper's connection to park it.
    parking: AtomicBool,
    io: Mutex<Option<IdleIo<S>>>,
}

/// The stream as hyper holds it: dropped while parking, it gives the stream back to its slot.
/// No lock or extra work on any I/O call.
struct Lease<S> {
    io: Option<IdleIo<S>>,
    slot: Arc<Slot<S>>,
}

impl<S> Lease<S> {
    fn io(&mut self) -> io::Result<&mut IdleIo<S>> {
        self.io
            .as_mut()
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl<S> Drop for Lease<S> {
    fn drop(&mut self) {
        if self.slot.parking.load(Ordering::Relaxed)
            && let Ok(mut slot) = self.slot.io.lock()
        {
            *slot = self.io.take();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Lease<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_read(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lease<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_write(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io
            .as_ref()
            .is_some_and(|io| io.inner.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_flush(cx),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_shutdown(cx),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

/// hyper's side of a connection: the first one (which detects the version), one built for an
/// HTTP/1.1 connection back from parking, or none while parked. Boxed, so that a parked
/// connection's task holds only a pointer's worth of it.
enum Hyper<A, B> {
    Auto(Pin<Box<A>>),
    Http1(Pin<Box<B>>),
    Parked,
}

impl<A, B> Hyper<A, B> {
    /// The first hyper connection; `resume` builds those after parking.
    fn first<S>(conn: Pin<Box<A>>, _resume: &impl Fn(Lease<S>) -> B) -> Self {
        Hyper::Auto(conn)
    }
}

type ConnError = Box<dyn std::error::Error + Send + Sync>;

impl<A, B, EA, EB> Future for Hyper<A, B>
where
    A: Future<Output = Result<(), EA>>,
    B: Future<Output = Result<(), EB>>,
    EA: Into<ConnError>,
    EB: Into<ConnError>,
{
    type Output = Result<(), ConnError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Hyper::Auto(conn) => conn.as_mut().poll(cx).map_err(Into::into),
            Hyper::Http1(conn) => conn.as_mut().poll(cx).map_err(Into::into),
            Hyper::Parked => Poll::Pending,
        }
    }
}

/// Streams reset by the client before hyper accepted them, kept at once (h2's default).
const PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server may reset for the client's protocol errors on one connection.
const LOCAL_ERROR_RESETS: usize = 200;

struct ConnState {
    shared: Arc<Shared>,
    info: ConnInfo,
    conn: Arc<ConnShared>,
}

/// Serves one accepted connection until it closes, idles out, or its listener drains.
///
/// An idle HTTP/1.1 connection is parked after [`PARK_AFTER`] (see `IdleIo::settled` for
/// what idle means): its hyper connection is dropped and it waits for readability with no
/// buffer; then a new HTTP/1.1 hyper connection takes the stream on, the version known.
pub(crate) fn serve<S>(
    shared: Arc<Shared>,
    info: ConnInfo,
    stream: S,
    builder: &auto::Builder<TokioExecutor>,
    limits: &Limits,
    mut lifecycle: Lifecycle,
) -> impl Future<Output = ()> + Send + 'static + use<S>
where
    S: AsyncRead + AsyncWrite + Park + Unpin + Send + 'static,
{
    let conn = Arc::new(ConnShared {
        gate: gate::SendGate::new(limits.send_buffer),
        ..ConnShared::default()
    });
    let mut info = info;
    info.framing = Some(Arc::clone(&conn) as Arc<dyn Framing>);
    info.tunnels = Some(Arc::new(stream::Host::new(
        Arc::clone(&shared),
        lifecycle.clone(),
        Arc::clone(&conn),
    )));
    let state = Arc::new(ConnState {
        shared,
        info,
        conn: Arc::clone(&conn),
    });
    let service = move || {
        let state = Arc::clone(&state);
        service_fn(move |req: hyper::Request<Incoming>| {
            let state = Arc::clone(&state);
            async move {
                // A guard, not a pair of calls: hyper drops this future when an HTTP/2 client
                // resets the stream (RST_STREAM, RFC 9113 §6.4), and the count must come down.
                let _busy = Busy::enter(&state.conn);
                // Boxed: hyper keeps room for one request future in every connection, idle or
                // not; a box makes that room a pointer instead of a few KiB.
                let (response, limits) =
                    Box::pin(handle(&state.shared, &state.info, req.map(Body::stream))).await;
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    // What follows is the tunnel's, never hyper's answer to rewrite.
                    state.conn.upgraded.store(true, Ordering::Relaxed);
                }
                let conn = Arc::clone(&state.conn);
                conn.open.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Infallible>(response.map(|body| Tracked {
                    body: stream::Timed::new(body, limits),
                    conn,
                }))
            }
        })
    };
    let idle = Arc::clone(&conn);
    let park_after = S::PARKS.then_some(PARK_AFTER);
    let slot = Arc::new(Slot {
        parking: AtomicBool::new(false),
        io: Mutex::new(None),
    });
    let lease = Lease {
        io: Some(IdleIo::new(stream, limits, conn, park_after)),
        slot: Arc::clone(&slot),
    };
    // Boxed here, not in the future below: what that future captures, it holds while it lives.
    let first = Box::pin(
        builder
            .serve_connection_with_upgrades(TokioIo::new(lease), service())
            .into_owned(),
    );
    let max_buf = http1_max_buf(limits);
    // hyper's HTTP/1.1 connection for a stream back from parking.
    let resume = move |lease: Lease<S>| {
        http1_builder(max_buf)
            .serve_connection(TokioIo::new(lease), service())
            .with_upgrades()
    };
    async move {
        let mut conn = Hyper::first(first, &resume);
        let mut closing = false;
        let mut by: Option<Instant> = None;
        loop {
            // Also checked here: a TLS handshake may end after the listener changed phase.
            match lifecycle.phase() {
                Phase::Run => {}
                Phase::Drain if !closing => {
                    // With no request in progress, hyper would close the connection at once:
                    // one accepted just before the drain unread (its protocol is not known
                    // yet), an idle keep-alive one as its client may be sending. Either way
                    // that client would see a reset. So such a connection gets a moment for
                    // its next request, which is served and then closes it (HTTP/1.1:
                    // keep-alive off; HTTP/2: GOAWAY). A request starting wakes `idle`.
                    if by.is_none() {
                        idle.drain_wait.store(true, Ordering::Relaxed);
                    }
                    let at = *by.get_or_insert_with(|| Instant::now() + DRAIN_GRACE);
                    if idle.busy.load(Ordering::Relaxed) > 0 || Instant::now() >= at {
                        closing = true;
                        match &mut conn {
                            Hyper::Auto(c) => c.as_mut().graceful_shutdown(),
                            Hyper::Http1(c) => c.as_mut().graceful_shutdown(),
                            Hyper::Parked => {}
                        }
                    }
                }
                Phase::Drain => {}
                Phase::Stop => return,
            }
            tokio::select! {
                result = &mut conn => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "client connection ended");
                    }
                    if idle.tunnels.load(Ordering::Relaxed) > 0 {
                        // Boxed: only an upgraded connection gets here.
                        Box::pin(tunnels_end(&idle, &mut lifecycle)).await;
                    }
                    return;
                }
                // The drain's moment for a next request is over.
                () = grace(by), if !closing => {}
                () = idle.idle.notified(), if !closing => {
                    match idle.signal.swap(SIGNAL_NONE, Ordering::Relaxed) {
                        // HTTP/2 went idle, or a request started on a draining connection:
                        // GOAWAY (HTTP/2) or keep-alive off, then hyper closes once done.
                        signal
                            if signal == SIGNAL_H2_IDLE
                                || (by.is_some() && idle.busy.load(Ordering::Relaxed) > 0) =>
                        {
                            closing = true;
                            match &mut conn {
                                Hyper::Auto(c) => c.as_mut().graceful_shutdown(),
                                Hyper::Http1(c) => c.as_mut().graceful_shutdown(),
                                Hyper::Parked => {}
                            }
                        }
                        // Nothing happened on the connection since `IdleIo` asked (any byte
                        // either way withdraws the signal), and nothing is in progress.
                        // Not while draining: the drain's moment for a next request goes on.
                        SIGNAL_PARK
                            if by.is_none()
                                && idle.busy.load(Ordering::Relaxed) == 0
                                && idle.open.load(Ordering::Relaxed) == 0 =>
                        {
                            slot.parking.store(true, Ordering::Relaxed);
                            // Frees hyper's buffers and state; the stream goes to the slot.
                            drop(std::mem::replace(&mut conn, Hyper::Parked));
                            slot.parking.store(false, Ordering::Relaxed);
                            // The freed buffers go back to the kernel soon (see `memtrim`).
                            super::memtrim::parked();
                            if !park(&slot, &mut lifecycle).await {
                                return;
                            }
                            let Some(mut io) = slot.io.lock().ok().and_then(|mut io| io.take())
                            else {
                                return;
                            };
                            io.resumed();
                            let lease = Lease {
                                io: Some(io),
                                slot: Arc::clone(&slot),
                            };
                            conn = Hyper::Http1(Box::pin(resume(lease)));
                        }
                        _ => {}
                    }
                }
                phase = lifecycle.changed() => {
                    if phase == Phase::Stop {
                        if idle.tunnels.load(Ordering::Relaxed) > 0 {
                            // WebSockets over HTTP/2 send their close frames on this
                            // connection: a moment for them, then it closes.
                            let _ = Box::pin(tokio::time::timeout(TUNNEL_CLOSE, &mut conn)).await;
                        }
                        // The drain timeout passed: dropping the connection closes it.
                        return;
                    }
                }
            }
        }
    }
}

/// Waits, parked, with the stream in its slot, until the client sends something (or
/// closes) or the listener drains (the drain gives the connection its moment for a next
/// request, unparked); `false` when the connection is to close instead: its idle timeout
/// passed, or the drain timeout.
async fn park<S: AsyncRead + AsyncWrite + Park + Unpin>(
    slot: &Slot<S>,
    lifecycle: &mut Lifecycle,
) -> bool {
    match lifecycle.phase() {
        Phase::Run => {}
        Phase::Drain => return true,
        Phase::Stop => return false,
    }
    // Locked only here and when parking: by this task alone.
    let readable = std::future::poll_fn(|cx| match slot.io.lock() {
        Ok(mut io) => match io.as_mut() {
            Some(io) => io.poll_parked(cx),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        },
        Err(_) => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
    });
    tokio::select! {
        woke = readable => match woke {
            Ok(()) => true,
            Err(err) => {
                tracing::debug!(error = %err, "client connection ended");
                false
            }
        },
        phase = lifecycle.changed() => phase == Phase::Drain,
    }
}

/// An upgraded HTTP/1.1 connection lives on in its tunnel: it still counts as the listener's
/// until the tunnel ends (which the drain bounds).
async fn tunnels_end(conn: &ConnShared, lifecycle: &mut Lifecycle) {
    let mut stop_at = None;
    while conn.tunnels.load(Ordering::Relaxed) > 0 {
        let grace = async {
            match stop_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = conn.tunnel_done.notified() => {}
            // The tunnels close at the drain deadline themselves (close frames); a moment
            // for them, no more.
            phase = lifecycle.changed(), if stop_at.is_none() => {
                if phase == Phase::Stop {
                    stop_at = Some(Instant::now() + TUNNEL_CLOSE);
                }
            }
            () = grace => return,
        }
    }
}

/// How long a draining connection with no request in progress is given for its next one: a
/// request already on its way when the drain began arrives well within this.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Ends at `at`; never without it. The timer is boxed, made only while draining: every
/// connection's future, parked ones too, would otherwise hold room for it.
async fn grace(at: Option<Instant>) {
    match at {
        Some(at) => Box::pin(tokio::time::sleep_until(at)).await,
        None => std::future::pending().await,
    }
}

/// How long an HTTP/2 connection carrying tunnels stays after the drain deadline, for their
/// close frames.
const TUNNEL_CLOSE: Duration = Duration::from_millis(600);

/// Counts one request in progress on a connection, for as long as its future lives.
struct Busy<'a>(&'a ConnShared);

impl<'a> Busy<'a> {
    fn enter(conn: &'a ConnShared) -> Self {
        conn.started.fetch_add(1, Ordering::Relaxed);
        conn.busy.fetch_add(1, Ordering::Relaxed);
        if conn.drain_wait.load(Ordering::Relaxed) {
            // A draining connection waited for this request: it closes once it is answered.
            conn.idle.notify_one();
        }
        Busy(conn)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts itself done when hyper drops it: by then hyper has put all
    /// of the response into its write buffer (or given up on the connection). Until then the
    /// connection is in use, whatever the listener's idle timeout: the route's stream limits
    /// time the body instead.
    struct Tracked {
        #[pin]
        body: stream::Timed,
        conn: Arc<ConnShared>,
    }

    impl PinnedDrop for Tracked {
        fn drop(this: Pin<&mut Self>) {
            this.conn.finished.fetch_add(1, Ordering::Relaxed);
            this.conn.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        // A slow reader: hyper's write buffer already holds the send buffer's worth.
        if this.conn.gate.full(cx) {
            return Poll::Pending;
        }
        let polled = this.body.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.conn.gate.taken(data.len());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Per-connection state shared by the I/O wrapper and the request service.
#[derive(Debug, Default)]
pub(crate) struct ConnShared {
    /// Requests being processed on this connection.
    pub(crate) busy: AtomicUsize,
    /// Requests started on this connection so far.
    pub(crate) started: AtomicUsize,
    /// Responses hyper is done with (their bodies dropped).
    finished: AtomicUsize,
    /// Response bodies hyper has not finished with yet, and open tunnels.
    open: AtomicUsize,
    /// Open tunnels (HTTP/2 streams among them keep the connection).
    tunnels: AtomicUsize,
    /// Told when a tunnel ends.
    tunnel_done: Notify,
    /// A response switched protocols: the bytes after it are a tunnel's.
    upgraded: AtomicBool,
    /// The byte scanner (see [`super::scan`]); locked only by this connection's tasks.
    pub(crate) scan: Mutex<HeadScan>,
    /// Woken when `IdleIo` asks `serve` for something (what, in `signal`), or when a request
    /// started on a connection draining (`drain_wait`).
    idle: Notify,
    /// `SIGNAL_PARK`, `SIGNAL_H2_IDLE` or `SIGNAL_NONE`.
    signal: AtomicU8,
    /// The listener drains and this connection waits for a next request to close after.
    drain_wait: AtomicBool,
    /// Bounds the response bytes hyper buffers for a slow HTTP/1.1 reader.
    gate: gate::SendGate,
}

impl Framing for ConnShared {
    fn take_ambiguous(&self) -> bool {
        self.scan
            .lock()
            .map(|mut s| s.take_ambiguous())
            .unwrap_or(false)
    }
}

/// The client stream, with portico's timers: a request head must arrive within
/// `header_timeout` of its first byte, and a connection with no request in progress and no
/// bytes moving for `idle_timeout` is closed. One clock read per I/O call; the timer is
/// re-armed lazily. On HTTP/2 only frames other than PING are use, and idleness asks for a
/// graceful shutdown first; the connection is cut if it is still open `idle_timeout` later.
pub(crate) struct IdleIo<S> {
    inner: S,
    timer: Pin<Box<Sleep>>,
    idle: Duration,
    header: Duration,
    last: Instant,
    head_started: Option<Instant>,
    /// `conn.started` when `head_started` was set: a request since means that head is done.
    head_gen: usize,
    conn: Arc<ConnShared>,
    /// Frame boundaries both ways, once the connection is known to speak HTTP/2.
    /// Boxed: most connections never speak HTTP/2, and a parked one holds this struct.
    frames: Option<Box<H2Frames>>,
    /// When an idle HTTP/2 connection was asked to shut down.
    closing: Option<Instant>,
    /// hyper's next write may be its own answer to a malformed head (see `poll_early`): the
    /// `started` count when that became so.
    early: Option<usize>,
    /// portico's answer being written in place of hyper's.
    replacing: Option<Box<Replacing>>,
    /// Longest a write may wait for the client to accept bytes.
    send: Duration,
    /// Runs while a write waits, from the first refusal: the send timeout.
    send_timer: Option<Pin<Box<Sleep>>>,
    /// A write is waiting on the client.
    send_stalled: bool,
    /// Idle time after which the connection is parked; `None` when it never is.
    park_after: Option<Duration>,
    /// Parking was considered since the last activity (and asked for, if it could be).
    park_asked: bool,
    /// The stream was read from (see [`FIRST_READ`]).
    read_once: bool,
    /// Bytes of the first read that hyper's short first read had no room for, served to
    /// hyper before the stream is read again.
    ahead: Option<Box<Ahead>>,
}

/// The first read takes up to this many bytes, whatever room hyper's read has: hyper's
/// version detection reads 24 bytes, and the rest of a small request then comes from here
/// instead of a second read call.
const FIRST_READ: usize = 4096;

/// Bytes read ahead of hyper, and how many of them it took.
struct Ahead {
    bytes: Vec<u8>,
    at: usize,
}

/// portico's answer in place of hyper's canned one, as far as it is written.
struct Replacing {
    bytes: Vec<u8>,
    written: usize,
    /// The length of hyper's answer, reported as written once ours is.
    replaced: usize,
}

struct H2Frames {
    read: FrameScan,
    write: FrameScan,
    /// The HTTP/2 flood guard.
    flood: flood::Flood,
}

impl<S: AsyncRead + AsyncWrite + Unpin> IdleIo<S> {
    fn new(inner: S, limits: &Limits, conn: Arc<ConnShared>, park_after: Option<Duration>) -> Self {
        let (idle, header) = (limits.idle_timeout, limits.header_timeout);
        let now = Instant::now();
        IdleIo {
            inner,
            timer: Box::pin(tokio::time::sleep_until(
                now + idle.min(header).min(park_after.unwrap_or(Duration::MAX)),
            )),
            idle,
            header,
            last: now,
            // The first request's head is due `header` after the connection opens.
            head_started: Some(now),
            head_gen: 0,
            conn,
            frames: None,
            closing: None,
            // Nothing written and no request started: hyper's first write may be its own.
            early: Some(0),
            replacing: None,
            send: limits.send_timeout,
            send_timer: None,
            send_stalled: false,
            park_after,
            park_asked: false,
            read_once: false,
            ahead: None,
        }
    }

    /// When this connection is to be parked, if nothing happens before.
    fn park_at(&self) -> Option<Instant> {
        if self.park_asked
            || self.frames.is_some()
            || self.closing.is_some()
            || self.head_started.is_some()
        {
            return None;
        }
        self.park_after.map(|after| self.last + after)
    }

    /// Whether hyper holds nothing of this HTTP/1.1 connection: no request in progress, no
    /// response being written, no tunnel, and every byte read belongs to a request it has
    /// taken in and answered (so its read buffer holds no unread byte, see
    /// [`HeadScan::settled`]). Then its connection can be dropped and a new one built later.
    fn settled(&self) -> bool {
        let started = self.conn.started.load(Ordering::Relaxed);
        self.ahead.is_none()
            && self.frames.is_none()
            && self.closing.is_none()
            && self.head_started.is_none()
            && self.replacing.is_none()
            && !self.send_stalled
            && !self.conn.upgraded.load(Ordering::Relaxed)
            && self.conn.busy.load(Ordering::Relaxed) == 0
            && self.conn.open.load(Ordering::Relaxed) == 0
            && self.conn.finished.load(Ordering::Relaxed) == started
            && self
                .conn
                .scan
                .lock()
                .is_ok_and(|scan| scan.settled(started))
    }

    /// Asks `serve` to park the connection, if it is settled; either way not again before
    /// the next activity.
    fn ask_park(&mut self) {
        self.park_asked = true;
        if self.settled() {
            self.conn.signal.store(SIGNAL_PARK, Ordering::Relaxed);
            self.conn.idle.notify_one();
        }
    }

    /// Something happened on the connection: a park asked for is withdrawn.
    fn active(&mut self) {
        if self.park_asked {
            self.park_asked = false;
            let _ = self.conn.signal.compare_exchange(
                SIGNAL_PARK,
                SIGNAL_NONE,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Back from parking: a head is likely to start now, and its timeout must be kept (the
    /// timer was armed for the idle timeout alone).
    fn resumed(&mut self) {
        self.park_asked = false;
        let now = Instant::now();
        self.rearm(now, now + self.idle);
    }

    /// Parked: ready when the client sends something or closes, an error when the idle
    /// timeout passes first.
    fn poll_parked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        S: Park,
    {
        if self.inner.poll_readable(cx).is_ready() {
            // hyper's read tells what it is, an error among others.
            return Poll::Ready(Ok(()));
        }
        self.poll_idle(cx).map(Err)
    }

    /// Forgets the head timer once the head it timed became a request.
    fn settle_head(&mut self) {
        if self.head_started.is_some() && self.conn.started.load(Ordering::Relaxed) != self.head_gen
        {
            self.head_started = None;
        }
    }

    fn deadline(&mut self) -> Option<Instant> {
        self.settle_head();
        // A request in progress, a response body still being sent, or a tunnel: the route's
        // stream limits govern those, not the listener's idle timeout.
        if self.conn.busy.load(Ordering::Relaxed) > 0
            || self.conn.open.load(Ordering::Relaxed) > 0
            || self.conn.upgraded.load(Ordering::Relaxed)
        {
            return None;
        }
        if let Some(closing) = self.closing {
            return Some(closing + self.idle);
        }
        let idle = self.last + self.idle;
        Some(match self.head_started {
            Some(started) => idle.min(started + self.header),
            None => idle,
        })
    }

    /// Re-arms the timer for `at`, or sooner: while the connection may be parked, the timer
    /// fires at least every `park_after`, so that it finds the moment (the timer is re-armed
    /// only when it fires, never by I/O).
    fn rearm(&mut self, now: Instant, at: Instant) {
        let at = match self.park_after {
            Some(after)
                if !self.park_asked
                    && self.frames.is_none()
                    && !self.conn.upgraded.load(Ordering::Relaxed) =>
            {
                at.min(now + after)
            }
            _ => at,
        };
        self.timer.as_mut().reset(at);
    }

    /// Checks the timers; re-arms lazily from the last activity.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let deadline = self.deadline();
            if let (Some(at), Some(due)) = (self.park_at(), deadline) {
                if at <= now {
                    self.ask_park();
                    continue;
                }
                if at < due {
                    self.timer.as_mut().reset(at);
                    continue;
                }
            }
            match deadline {
                None => self.rearm(now, now + self.idle),
                Some(deadline) if deadline > now => self.rearm(now, deadline),
                Some(_) if self.frames.is_some() && self.closing.is_none() => {
                    // Idle HTTP/2: `serve` sends GOAWAY; the timer now guards the close.
                    self.closing = Some(now);
                    self.conn.signal.store(SIGNAL_H2_IDLE, Ordering::Relaxed);
                    self.conn.idle.notify_one();
                }
                Some(_) => {
                    let what = if self.head_started.is_some() {
                        "request head timeout"
                    } else {
                        "idle timeout"
                    };
                    return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what));
                }
            }
        }
    }

    /// Notes bytes read from the client; the reason to close an HTTP/2 flood, if any.
    fn received(&mut self, bytes: &[u8]) -> Option<&'static str> {
        let now = Instant::now();
        self.active();
        if let Some(frames) = &mut self.frames {
            if frames.read.feed(bytes) {
                self.last = now;
            }
            return frames
                .flood
                .check(&frames.read.counts, &frames.write.counts, now);
        }
        self.last = now;
        if self.conn.upgraded.load(Ordering::Relaxed) {
            // A tunnel's bytes: no request head to time or scan (the tunnel times itself).
            return None;
        }
        self.settle_head();
        if self.head_started.is_none() && self.conn.busy.load(Ordering::Relaxed) == 0 {
            self.head_started = Some(now);
            self.head_gen = self.conn.started.load(Ordering::Relaxed);
        }
        if let Ok(mut scan) = self.conn.scan.lock() {
            scan.feed(bytes);
            if scan.http2 {
                // h2 multiplexes: streams, not heads, keep it busy; only idleness counts.
                let mut read = FrameScan::client();
                read.feed(bytes);
                self.frames = Some(Box::new(H2Frames {
                    read,
                    write: FrameScan::server(),
                    flood: flood::Flood::new(now),
                }));
                self.conn.gate.off();
                self.head_started = None;
            }
        }
        None
    }

    /// Notes `n` bytes written from `bufs`.
    fn sent(&mut self, bufs: &[io::IoSlice<'_>], mut n: usize) {
        if n == 0 {
            return;
        }
        self.send_stalled = false;
        self.active();
        let Some(frames) = &mut self.frames else {
            self.last = Instant::now();
            self.conn.gate.sent(n);
            return;
        };
        let mut used = false;
        for buf in bufs {
            if n == 0 {
                break;
            }
            let take = buf.len().min(n);
            used |= frames.write.feed(&buf[..take]);
            n -= take;
        }
        if used {
            self.last = Instant::now();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> IdleIo<S> {
    /// Whether nothing but hyper itself can write next on this HTTP/1.1 connection: every
    /// response of the service so far (`started` of them) was wholly in hyper's write buffer
    /// when hyper flushed it empty, and no request started since.
    fn hyper_alone(&self, started: usize) -> bool {
        self.frames.is_none()
            && !self.conn.upgraded.load(Ordering::Relaxed)
            && self.conn.started.load(Ordering::Relaxed) == started
            && self.conn.finished.load(Ordering::Relaxed) == started
    }

    /// Replaces hyper's canned answer to a malformed head by portico's JSON one.
    ///
    /// hyper writes that answer only when a head fails to parse, and then closes. It is
    /// recognised only as the whole of the first write after hyper flushed its buffer empty
    /// with every response of the service wholly out and no request started since (or, at
    /// the start, before anything was written): then no byte of it can be the service's. Any
    /// other write, recognised or not, ends the chance until the next such flush. Returns
    /// `None` to pass `bufs` through untouched.
    fn poll_early(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Option<Poll<io::Result<usize>>> {
        if self.replacing.is_none() {
            let started = self.early.take()?;
            let offered: usize = bufs.iter().map(|b| b.len()).sum();
            if offered > early::LONGEST || !self.hyper_alone(started) {
                return None;
            }
            let mut flat = [0u8; early::LONGEST];
            let mut len = 0;
            for buf in bufs {
                flat[len..len + buf.len()].copy_from_slice(buf);
                len += buf.len();
            }
            let (which, date) = early::recognise(&flat[..len])?;
            let (status, bytes) = early::answer(which, date);
            tracing::debug!(status = status.as_u16(), "malformed request head refused");
            self.replacing = Some(Box::new(Replacing {
                bytes,
                written: 0,
                replaced: len,
            }));
        }
        let replacing = self.replacing.as_mut()?;
        while replacing.written < replacing.bytes.len() {
            let rest = &replacing.bytes[replacing.written..];
            match Pin::new(&mut self.inner).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => {
                    return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => {
                    replacing.written += n;
                    self.last = Instant::now();
                }
                Poll::Ready(Err(err)) => return Some(Poll::Ready(Err(err))),
                Poll::Pending => return Some(Poll::Pending),
            }
        }
        // hyper offers the same bytes again after a pending write; never report more.
        let offered: usize = bufs.iter().map(|b| b.len()).sum();
        let replaced = replacing.replaced.min(offered);
        self.replacing = None;
        Some(Poll::Ready(Ok(replaced)))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> IdleIo<S> {
    /// A write the client refused: pending until the send timeout passes with no byte
    /// accepted, then an error that closes the connection. One clock read per stall.
    fn poll_send_timeout(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if !self.send_stalled {
            self.send_stalled = true;
            let at = Instant::now() + self.send;
            match &mut self.send_timer {
                Some(timer) => timer.as_mut().reset(at),
                None => self.send_timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let expired = match &mut self.send_timer {
            Some(timer) => timer.as_mut().poll(cx).is_ready(),
            None => false,
        };
        if expired {
            tracing::debug!("client accepted no bytes within the send timeout");
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "send timeout")));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = if let Some(ahead) = this.ahead.as_mut() {
            let rest = &ahead.bytes[ahead.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            ahead.at += n;
            if ahead.at >= ahead.bytes.len() {
                this.ahead = None;
            }
            Poll::Ready(Ok(()))
        } else if !this.read_once && buf.remaining() < FIRST_READ {
            let mut room = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
            let mut first = ReadBuf::uninit(&mut room);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut first);
            if let Poll::Ready(Ok(())) = polled {
                this.read_once = true;
                let got = first.filled();
                let fit = got.len().min(buf.remaining());
                buf.put_slice(&got[..fit]);
                if got.len() > fit {
                    this.ahead = Some(Box::new(Ahead {
                        bytes: got[fit..].to_vec(),
                        at: 0,
                    }));
                }
            }
            polled
        } else {
            this.read_once = true;
            Pin::new(&mut this.inner).poll_read(cx, buf)
        };
        match polled {
            Poll::Ready(result) => {
                if buf.filled().len() > before
                    && let Some(why) = this.received(&buf.filled()[before..])
                {
                    tracing::debug!(reason = why, "HTTP/2 flood: connection closed");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why)));
                }
                Poll::Ready(result)
            }
            Poll::Pending => match this.poll_idle(cx) {
                Poll::Ready(err) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let bufs = [io::IoSlice::new(buf)];
        if let Some(polled) = this.poll_early(cx, &bufs) {
            return polled;
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        match polled {
            Poll::Ready(Ok(n)) => this.sent(&bufs, n),
            Poll::Pending => return this.poll_send_timeout(cx),
            Poll::Ready(Err(_)) => {}
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(polled) = this.poll_early(cx, bufs) {
            return polled;
        }
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        match polled {
            Poll::Ready(Ok(n)) => this.sent(bufs, n),
            Poll::Pending => return this.poll_send_timeout(cx),
            Poll::Ready(Err(_)) => {}
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper's HTTP/1.1 connection flushes its transport only once its own write buffer
        // is empty: if every response so far is done, its next write is its own.
        let started = this.conn.started.load(Ordering::Relaxed);
        if this.replacing.is_none() && this.hyper_alone(started) {
            this.early = Some(started);
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn limits() -> Limits {
        Limits {
            max_header_size: 16 * 1024,
            max_uri_length: 8 * 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10,
            max_concurrent_streams: 100,
            send_timeout: Duration::from_secs(10),
            send_buffer: 64 * 1024,
            per_ip: None,
        }
    }

    #[tokio::test]
    async fn a_short_first_read_takes_the_whole_request_in_one_read() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let conn = Arc::new(ConnShared {
            gate: gate::SendGate::new(64 * 1024),
            ..ConnShared::default()
        });
        let mut io = IdleIo::new(server, &limits(), conn, None);
        let request = b"GET /a/long/enough/path HTTP/1.1\r\nHost: example.com\r\n\r\n";
        client.write_all(request).await.unwrap();

        // hyper's version detection reads 24 bytes; the rest is kept, not left in the stream.
        let mut first = [0u8; 24];
        io.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, &request[..24]);
        assert!(io.ahead.is_some());
        assert!(!io.settled(), "bytes kept ahead of hyper: never parked");
        // The stream is read only once the kept bytes are all taken, in order.
        client.write_all(b"NEXT").await.unwrap();
        let mut rest = vec![0u8; request.len() - 24];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, &request[24..]);
        assert!(io.ahead.is_none());
        let mut next = [0u8; 4];
        io.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"NEXT");
    }
}
