//! What outlives a request on a connection: response bodies timed by the route's stream
//! limits, and the server side of its tunnels (the listener's drain, reloads).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::super::Shared;
use super::super::listeners::{Lifecycle, Phase};
use crate::body::{Body, BodyError};
use crate::proxy::tunnel::{Hold, TunnelHost};
use crate::runtime::{Action, StreamLimits};

/// A response body stopped by the route's `stream_idle_timeout` or `max_stream_duration`.
#[derive(Debug, thiserror::Error)]
#[error("the response body passed the route's {0}")]
pub(crate) struct StreamTimeout(&'static str);

/// The timer of a timed body. It costs nothing while the body never has to wait (most
/// answers): the clock is read and a timer armed only when a poll finds no frame ready.
struct Timer {
    limits: StreamLimits,
    /// When the body last had to wait after a frame (or first had to wait).
    last: Option<Instant>,
    /// A frame passed since `last`.
    moved: bool,
    /// `max_stream_duration` from the response head.
    max_at: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
}

pin_project_lite::pin_project! {
    /// A response body under the route's stream limits: no frame for `stream_idle_timeout`,
    /// or a body still going at `max_stream_duration`, ends it with an error (hyper then
    /// closes the connection, or resets the HTTP/2 stream), so a cut body never looks whole.
    pub(crate) struct Timed {
        #[pin]
        body: Body,
        timer: Option<Timer>,
    }
}

impl Timed {
    /// `body`, timed by `limits` when there are any (portico's own answers have none).
    pub(crate) fn new(body: Body, limits: Option<StreamLimits>) -> Self {
        use http_body::Body as _;
        let timer = limits
            .filter(|_| !body.is_end_stream())
            .map(|limits| Timer {
                limits,
                last: None,
                moved: false,
                // The only clock read a body that never waits pays, and only with a maximum.
                max_at: limits.max.map(|max| Instant::now() + max),
                sleep: None,
            });
        Timed { body, timer }
    }
}

impl http_body::Body for Timed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        let Some(timer) = this.timer.as_mut() else {
            return polled;
        };
        if polled.is_ready() {
            timer.moved = true;
            if let Some(max_at) = timer.max_at
                && Instant::now() >= max_at
            {
                return Poll::Ready(Some(Err(Box::new(StreamTimeout("max_stream_duration")))));
            }
            return polled;
        }
        // No frame ready: the body has to wait, idle from now unless it already was.
        if timer.moved || timer.last.is_none() {
            timer.last = Some(Instant::now());
            timer.moved = false;
        }
        loop {
            let last = timer.last.unwrap_or_else(Instant::now);
            let idle_at = last + timer.limits.idle;
            let due = timer.max_at.map_or(idle_at, |max| max.min(idle_at));
            let sleep = timer
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if sleep.deadline() != due {
                sleep.as_mut().reset(due);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if timer.max_at.is_some_and(|max| max <= now) {
                tracing::debug!("response body cut at max_stream_duration");
                return Poll::Ready(Some(Err(Box::new(StreamTimeout("max_stream_duration")))));
            }
            if idle_at <= now {
                tracing::debug!("response body cut at stream_idle_timeout");
                return Poll::Ready(Some(Err(Box::new(StreamTimeout("stream_idle_timeout")))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The server side of a connection's tunnels.
#[derive(Debug)]
pub(super) struct Host {
    shared: Arc<Shared>,
    lifecycle: Lifecycle,
    conn: Arc<super::ConnShared>,
}

impl Host {
    pub(super) fn new(
        shared: Arc<Shared>,
        lifecycle: Lifecycle,
        conn: Arc<super::ConnShared>,
    ) -> Self {
        Host {
            shared,
            lifecycle,
            conn,
        }
    }
}

/// A tunnel open on a connection: like a response body in progress, it keeps the listener's
/// idle timeout away (an HTTP/2 connection carrying a WebSocket is not idle).
struct InUse(Arc<super::ConnShared>);

impl InUse {
    fn new(conn: &Arc<super::ConnShared>) -> Self {
        conn.open.fetch_add(1, Ordering::Relaxed);
        conn.tunnels.fetch_add(1, Ordering::Relaxed);
        InUse(Arc::clone(conn))
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.tunnels.fetch_sub(1, Ordering::Relaxed);
        self.0.tunnel_done.notify_one();
    }
}

impl TunnelHost for Host {
    fn hold(&self) -> Hold {
        let guard = (self.lifecycle.clone(), InUse::new(&self.conn));
        let mut lifecycle = self.lifecycle.clone();
        let stop = Box::pin(async move {
            while lifecycle.phase() != Phase::Stop {
                if lifecycle.changed().await == Phase::Stop {
                    return;
                }
            }
        });
        Hold {
            _guard: Box::new(guard),
            stop,
        }
    }

    fn reloads(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    fn removed(&self, listener: &str, route: &str, upstream: &str) -> Option<Duration> {
        let snap = self.shared.snapshot.load();
        let forwards = |action: &Action| match action {
            Action::Forward { arms, .. } => arms.iter().any(|a| &*a.name == upstream),
            _ => false,
        };
        let alive = snap.upstream(upstream).is_some()
            && snap.listener(listener).is_some_and(|l| {
                l.routes
                    .iter()
                    .any(|r| &*r.route.name == route && forwards(&r.route.action))
            });
        (!alive).then_some(snap.spec.drain_timeout.0)
    }
}
