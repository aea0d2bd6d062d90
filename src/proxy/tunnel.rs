//! Upgraded connections (WebSocket and other `Upgrade` protocols): bytes relayed both ways as
//! they come, under the route's `stream_idle_timeout` and `max_stream_duration`, kept through
//! a drain or a reload until its deadline. A WebSocket's frame boundaries are tracked each
//! way (see [`ws`]), so at a deadline both peers get a close frame 1001 (going away) rather
//! than a reset.

pub(crate) mod h2;
pub(crate) mod ws;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::observe::TunnelMetrics;
use crate::runtime::StreamLimits;

/// What the server side gives a tunnel: a hold on its listener's drain, and the reloads.
pub(crate) trait TunnelHost: Send + Sync + std::fmt::Debug {
    /// A hold on the listener (its drain waits while the hold lives), and a future that
    /// resolves when the drain deadline has passed.
    fn hold(&self) -> Hold;
    /// Changes with each reload applied.
    fn reloads(&self) -> watch::Receiver<u64>;
    /// After a reload: `None` while the route (on this listener) still forwards to this
    /// upstream, else the drain timeout after which the tunnel is closed.
    fn removed(&self, listener: &str, route: &str, upstream: &str) -> Option<Duration>;
}

/// A tunnel's hold on its listener: the drain waits while `_guard` lives; `stop` resolves at
/// the drain deadline.
pub(crate) struct Hold {
    pub(crate) _guard: Box<dyn Send + Sync>,
    pub(crate) stop: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Everything a tunnel needs besides its two ends.
#[derive(Debug)]
pub(crate) struct Setup {
    /// The server side, when the connection came through a listener.
    pub(crate) host: Option<Arc<dyn TunnelHost>>,
    pub(crate) listener: Arc<str>,
    pub(crate) route: Arc<str>,
    pub(crate) upstream: Arc<str>,
    pub(crate) limits: StreamLimits,
    pub(crate) metrics: TunnelMetrics,
}

/// Whether the upstream's `Upgrade` answers what the client asked: each protocol it names
/// is one the client offered (compared without regard to case).
pub(crate) fn upgrade_matches(asked: &HeaderValue, answered: Option<&HeaderValue>) -> bool {
    let tokens = |v: &HeaderValue| -> Vec<String> {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let Some(answered) = answered else {
        return false;
    };
    let offered = tokens(asked);
    let chosen = tokens(answered);
    !chosen.is_empty() && chosen.iter().all(|t| offered.contains(t))
}

/// Whether an `Upgrade` value names WebSocket.
pub(crate) fn is_websocket(upgrade: Option<&HeaderValue>) -> bool {
    upgrade.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Why a tunnel was closed by portico rather than by its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// The drain deadline of the listener, or of a reload that removed the route.
    Drain,
    Idle,
    MaxDuration,
}

impl Closing {
    fn reason(self) -> &'static str {
        match self {
            Closing::Open => "peer",
            Closing::Drain => "drain",
            Closing::Idle => "stream_idle_timeout",
            Closing::MaxDuration => "max_stream_duration",
        }
    }
}

/// The tunnel between an upgraded client and upstream, run until both are done. The hold on
/// the listener is taken at once, before the future first runs: the connection counts the
/// tunnel from the moment its `101` leaves.
pub(crate) fn run(
    setup: Setup,
    client: OnUpgrade,
    upstream: OnUpgrade,
    websocket: bool,
) -> impl Future<Output = ()> + Send + 'static {
    let hold = setup.host.as_ref().map(|h| h.hold());
    relay(setup, hold, client, upstream, websocket)
}

async fn relay(
    setup: Setup,
    hold: Option<Hold>,
    client: OnUpgrade,
    upstream: OnUpgrade,
    websocket: bool,
) {
    let (client, upstream) = tokio::join!(client, upstream);
    let (client, upstream) = match (client, upstream) {
        (Ok(client), Ok(upstream)) => (TokioIo::new(client), TokioIo::new(upstream)),
        (Err(err), _) | (_, Err(err)) => {
            tracing::debug!(error = %err, "upgrade failed");
            return;
        }
    };
    setup.metrics.active.inc();
    let started = Instant::now();
    let activity = Activity::new(started);
    let (closing_tx, closing) = watch::channel(Closing::Open);
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let up = Pump {
        read: client_read,
        write: upstream_write,
        frames: websocket.then(ws::Frames::default),
        close: websocket.then(|| {
            ws::masked_close_going_away((crate::random::random_u64() as u32).to_be_bytes()).to_vec()
        }),
        bytes: &setup.metrics.to_upstream,
        activity: &activity,
    };
    let down = Pump {
        read: upstream_read,
        write: client_write,
        frames: websocket.then(ws::Frames::default),
        close: websocket.then(|| ws::CLOSE_GOING_AWAY.to_vec()),
        bytes: &setup.metrics.to_client,
        activity: &activity,
    };
    let relay = async { tokio::join!(up.run(closing.clone()), down.run(closing.clone())) };
    let watchdog = watchdog(&setup, started, &activity, hold, closing_tx);
    let (sent, received) = tokio::select! {
        done = relay => done,
        // The watchdog never returns: it asks the pumps to close, and they end on their own
        // (bounded by the close grace).
        never = watchdog => match never {},
    };
    setup.metrics.active.dec();
    let reason = *closing.borrow();
    let duration_ms = started.elapsed().as_millis() as u64;
    if reason == Closing::Open {
        tracing::info!(route = %setup.route, sent, received, duration_ms, "tunnel closed");
    } else {
        tracing::info!(
            route = %setup.route,
            reason = reason.reason(),
            sent,
            received,
            duration_ms,
            "tunnel closed by portico"
        );
    }
}

/// The last time a byte moved either way, in milliseconds since the tunnel started.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new(started: Instant) -> Self {
        Activity {
            started,
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// How long a pump that was asked to close may still wait for the end of the frame in
/// progress before it closes anyway.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Watches the deadlines; asks the pumps to close when one passes. Never returns.
async fn watchdog(
    setup: &Setup,
    started: Instant,
    activity: &Activity,
    hold: Option<Hold>,
    closing: watch::Sender<Closing>,
) -> std::convert::Infallible {
    let mut hold = hold;
    let mut reloads = setup.host.as_ref().map(|h| h.reloads());
    let max_at = setup.limits.max.map(|max| started + max);
    // Set when a reload removed the route or its upstream.
    let mut removed_at: Option<Instant> = None;
    let why = loop {
        let idle_at = activity.last() + setup.limits.idle;
        let next = [Some(idle_at), max_at, removed_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(idle_at);
        let held = async {
            match hold.as_mut() {
                Some(hold) => hold.stop.as_mut().await,
                None => std::future::pending().await,
            }
        };
        let reloaded = async {
            match reloads.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = held => break Closing::Drain,
            changed = reloaded => {
                if !changed {
                    reloads = None;
                    continue;
                }
                let host = setup.host.as_ref();
                match host.and_then(|h| h.removed(&setup.listener, &setup.route, &setup.upstream)) {
                    Some(drain) if removed_at.is_none() => {
                        tracing::info!(route = %setup.route, "route or upstream removed; tunnel closes at the drain deadline");
                        removed_at = Some(Instant::now() + drain);
                    }
                    Some(_) => {}
                    // Put back by a later reload: the tunnel stays.
                    None => removed_at = None,
                }
            }
            () = tokio::time::sleep_until(next) => {
                let now = Instant::now();
                if removed_at.is_some_and(|at| at <= now) {
                    break Closing::Drain;
                }
                if max_at.is_some_and(|at| at <= now) {
                    break Closing::MaxDuration;
                }
                if activity.last() + setup.limits.idle <= now {
                    break Closing::Idle;
                }
            }
        }
    };
    closing.send_replace(why);
    // Keep the hold (the drain waits for the close frames), and wait for the pumps.
    std::future::pending().await
}

/// One direction of a tunnel.
struct Pump<'a, R, W> {
    read: R,
    write: W,
    /// Frame boundaries, for a WebSocket.
    frames: Option<ws::Frames>,
    /// The close frame this direction sends at a deadline, for a WebSocket.
    close: Option<Vec<u8>>,
    bytes: &'a prometheus_client::metrics::counter::Counter,
    activity: &'a Activity,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Pump<'_, R, W> {
    /// Copies until the reading side ends, or until portico closes the tunnel. Returns the
    /// bytes copied.
    async fn run(mut self, mut closing: watch::Receiver<Closing>) -> u64 {
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0u64;
        let mut grace: Option<Instant> = None;
        loop {
            let stopping = grace.is_some();
            if stopping && self.frames.as_ref().is_none_or(ws::Frames::at_boundary) {
                break;
            }
            let read = async {
                match grace {
                    Some(at) => tokio::time::timeout_at(at, self.read.read(&mut buf))
                        .await
                        .ok(),
                    None => Some(self.read.read(&mut buf).await),
                }
            };
            let n = tokio::select! {
                biased;
                changed = closing.changed(), if grace.is_none() => {
                    if changed.is_err() || *closing.borrow() != Closing::Open {
                        grace = Some(Instant::now() + CLOSE_GRACE);
                    }
                    continue;
                }
                read = read => match read {
                    // The grace passed mid-frame: no close frame can be placed.
                    None => {
                        self.close = None;
                        break;
                    }
                    Some(Ok(0)) | Some(Err(_)) => {
                        // The peer is done sending: tell the other side, nothing to inject.
                        let _ = self.write.shutdown().await;
                        return total;
                    }
                    Some(Ok(n)) => n,
                },
            };
            let take = match &mut self.frames {
                Some(frames) => frames.feed(&buf[..n], stopping),
                None => n,
            };
            if take > 0 && self.write.write_all(&buf[..take]).await.is_err() {
                return total;
            }
            total += take as u64;
            self.bytes.inc_by(take as u64);
            self.activity.touch();
            if take < n {
                // Stopped at a frame boundary; what follows is not sent.
                break;
            }
        }
        let mut closed = false;
        if let Some(close) = &self.close
            && self.frames.as_ref().is_some_and(ws::Frames::at_boundary)
        {
            closed = self.write.write_all(close).await.is_ok();
            let _ = self.write.flush().await;
        }
        let _ = self.write.shutdown().await;
        if closed {
            // The closing handshake: the peer's own close frame, then its end, are read and
            // dropped (briefly), so the close frame sent the other way is not cut off by a
            // reset of a connection that still has bytes coming in.
            let drain = async {
                while let Ok(n) = self.read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
        }
        total
    }
}
