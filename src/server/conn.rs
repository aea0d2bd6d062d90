//! One client connection: hyper's HTTP/1.1 + h2c server with portico's limits, and an idle
//! timer that costs one clock read per I/O call.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::Shared;
use crate::proxy::pipeline::{ConnInfo, handle};
use crate::runtime::Limits;

/// Builds hyper's server settings from a listener's limits.
pub fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
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
    busy: Arc<AtomicUsize>,
}

/// Serves one accepted connection until it closes or drains.
pub fn serve(
    shared: Arc<Shared>,
    info: ConnInfo,
    stream: TcpStream,
    builder: &auto::Builder<TokioExecutor>,
    idle_timeout: Duration,
    graceful: &GracefulShutdown,
) -> impl Future<Output = ()> + Send + 'static + use<> {
    let busy = Arc::new(AtomicUsize::new(0));
    let state = Arc::new(ConnState {
        shared,
        info,
        busy: Arc::clone(&busy),
    });
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let state = Arc::clone(&state);
        async move {
            state.busy.fetch_add(1, Ordering::Relaxed);
            let response = handle(&state.shared, &state.info, req).await;
            state.busy.fetch_sub(1, Ordering::Relaxed);
            Ok::<_, Infallible>(response)
        }
    });
    let io = TokioIo::new(IdleIo::new(stream, idle_timeout, busy));
    let conn = builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    let watcher = graceful.watch(conn);
    async move {
        if let Err(err) = watcher.await {
            tracing::debug!(error = %err, "client connection ended");
        }
    }
}

/// A stream that fails with `TimedOut` after `idle` without reads or writes while no
/// request is being processed.
pub struct IdleIo {
    inner: TcpStream,
    timer: Pin<Box<Sleep>>,
    idle: Duration,
    last: Instant,
    busy: Arc<AtomicUsize>,
}

impl IdleIo {
    fn new(inner: TcpStream, idle: Duration, busy: Arc<AtomicUsize>) -> Self {
        let now = Instant::now();
        IdleIo {
            inner,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            idle,
            last: now,
            busy,
        }
    }

    /// Checks the idle timer; re-arms it lazily from the last activity.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let deadline = self.last + self.idle;
            if deadline > now {
                self.timer.as_mut().reset(deadline);
            } else if self.busy.load(Ordering::Relaxed) > 0 {
                self.timer.as_mut().reset(now + self.idle);
            } else {
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
            }
        }
    }
}

impl AsyncRead for IdleIo {
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
                    this.last = Instant::now();
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

impl AsyncWrite for IdleIo {
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
