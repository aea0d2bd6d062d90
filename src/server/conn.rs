//! One client connection: hyper's HTTP/1.1 + h2c server with portico's limits, and an idle
//! timer that costs one clock read per I/O call.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::Shared;
use super::scan::HeadScan;
use crate::proxy::body::Body;
use crate::proxy::pipeline::{ConnInfo, handle};
use crate::runtime::Limits;

/// Builds hyper's server settings from a listener's limits.
pub fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Head and idle timeouts are ours (see `IdleIo`): hyper's would also cut idle
        // keep-alive connections at the head timeout.
        .header_read_timeout(None)
        .keep_alive(true)
        // Our own check answers 431 in JSON below this; hyper's hard cap sits above it.
        .max_buf_size((limits.max_header_size + limits.max_uri_length + 16 * 1024).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(
            u32::try_from(limits.max_header_size + limits.max_uri_length).unwrap_or(u32::MAX),
        )
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

struct ConnState {
    shared: Arc<Shared>,
    info: ConnInfo,
}

/// Serves one accepted connection until it closes or drains.
pub fn serve<S>(
    shared: Arc<Shared>,
    info: ConnInfo,
    stream: S,
    builder: &auto::Builder<TokioExecutor>,
    limits: &Limits,
    watcher: Watcher,
) -> impl Future<Output = ()> + Send + 'static + use<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::clone(&info.conn);
    let state = Arc::new(ConnState { shared, info });
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let state = Arc::clone(&state);
        async move {
            state.info.conn.started.fetch_add(1, Ordering::Relaxed);
            state.info.conn.busy.fetch_add(1, Ordering::Relaxed);
            // Boxed: hyper keeps room for one request future in every connection, idle or
            // not; a box makes that room a pointer instead of a few KiB.
            let response =
                Box::pin(handle(&state.shared, &state.info, req.map(Body::stream))).await;
            state.info.conn.busy.fetch_sub(1, Ordering::Relaxed);
            Ok::<_, Infallible>(response)
        }
    });
    let io = TokioIo::new(IdleIo::new(
        stream,
        limits.idle_timeout,
        limits.header_timeout,
        conn,
    ));
    let conn = builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    let watcher = watcher.watch(conn);
    async move {
        if let Err(err) = watcher.await {
            tracing::debug!(error = %err, "client connection ended");
        }
    }
}

/// Per-connection state shared by the I/O wrapper and the request service.
#[derive(Debug, Default)]
pub struct ConnShared {
    /// Requests being processed on this connection.
    pub busy: AtomicUsize,
    /// Requests started on this connection so far.
    pub started: AtomicUsize,
    /// The byte scanner (see [`super::scan`]); locked only by this connection's tasks.
    pub scan: Mutex<HeadScan>,
}

impl ConnShared {
    /// Claims one head that carried both `Content-Length` and `Transfer-Encoding`.
    pub fn take_ambiguous(&self) -> bool {
        self.scan
            .lock()
            .map(|mut s| s.take_ambiguous())
            .unwrap_or(false)
    }
}

/// The client stream, with portico's timers: a request head must arrive within
/// `header_timeout` of its first byte, and a connection with no request in progress and no
/// bytes moving for `idle_timeout` is closed. One clock read per I/O call; the timer is
/// re-armed lazily.
pub struct IdleIo<S> {
    inner: S,
    timer: Pin<Box<Sleep>>,
    idle: Duration,
    header: Duration,
    last: Instant,
    head_started: Option<Instant>,
    /// `conn.started` when `head_started` was set: a request since means that head is done.
    head_gen: usize,
    conn: Arc<ConnShared>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> IdleIo<S> {
    fn new(inner: S, idle: Duration, header: Duration, conn: Arc<ConnShared>) -> Self {
        let now = Instant::now();
        IdleIo {
            inner,
            timer: Box::pin(tokio::time::sleep_until(now + idle.min(header))),
            idle,
            header,
            last: now,
            // The first request's head is due `header` after the connection opens.
            head_started: Some(now),
            head_gen: 0,
            conn,
        }
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
        if self.conn.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let idle = self.last + self.idle;
        Some(match self.head_started {
            Some(started) => idle.min(started + self.header),
            None => idle,
        })
    }

    /// Checks the timers; re-arms lazily from the last activity.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            match self.deadline() {
                None => self.timer.as_mut().reset(now + self.idle),
                Some(deadline) if deadline > now => self.timer.as_mut().reset(deadline),
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

    fn received(&mut self, bytes: &[u8]) {
        let now = Instant::now();
        self.last = now;
        self.settle_head();
        if self.head_started.is_none() && self.conn.busy.load(Ordering::Relaxed) == 0 {
            self.head_started = Some(now);
            self.head_gen = self.conn.started.load(Ordering::Relaxed);
        }
        if let Ok(mut scan) = self.conn.scan.lock() {
            scan.feed(bytes);
            if scan.http2 {
                // h2 multiplexes: streams, not heads, keep it busy; only idleness counts.
                self.header = self.idle;
            }
        }
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
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.received(&buf.filled()[before..]);
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
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            this.last = Instant::now();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            this.last = Instant::now();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
