//! Layer 4: `protocol: udp` listeners. Datagrams are balanced by flow — the client's address
//! and port: the first datagram of a flow picks a target with the upstream's balancer and
//! opens a session (an upstream-side socket connected to that target); later datagrams of
//! the flow take the same session, and what the target sends back on it goes to that client
//! from the listener's socket.
//!
//! Each worker has a socket of its own on the listener's address (`SO_REUSEPORT`); the
//! kernel spreads datagrams over them by a hash of the 4-tuple, so one flow always reaches
//! the same socket, and each socket's task keeps the sessions of its flows. The session
//! count bound is the listener's, over all of them.
//!
//! A session ends when idle for `udp.session_timeout` (either way), after `udp.responses`
//! answers when set, when its target leaves the upstream or is taken out by health checks
//! (the flow's next datagram picks again), and when the listener goes.

mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::observe::udp::UdpListenerMetrics;
use crate::runtime::{Shared, Snapshot, UdpListener};
use crate::view::RequestView;
use session::{Session, Table};

/// The largest datagram that can arrive: an IPv4 payload is at most 65,507 bytes and an
/// IPv6 one 65,527, so nothing is ever truncated.
const BUFFER: usize = 65_536;

/// Serves one socket of udp listener `name` until `stopped`; then ends its sessions.
///
/// `open` counts the listener's sessions over all its sockets.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    name: Arc<str>,
    socket: std::net::UdpSocket,
    mut stopped: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
) {
    let socket = match UdpSocket::from_std(socket) {
        Ok(s) => Arc::new(s),
        Err(err) => {
            tracing::error!(listener = %name, error = %err, "cannot register udp listener");
            return;
        }
    };
    let metrics = shared.metrics.udp().listener(&name);
    let table = Arc::new(Table::default());
    // Each session task holds a clone; `recv` returns `None` once all have ended.
    let (alive, mut gone) = mpsc::channel::<std::convert::Infallible>(1);
    let mut config = Current::default();
    let mut buf = vec![0u8; BUFFER];
    loop {
        let (len, client) = tokio::select! {
            biased;
            _ = stopped.changed() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(err) => {
                    // Nothing a client sends makes this fail; back off rather than spin.
                    tracing::warn!(listener = %name, error = %err, "udp receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        metrics.datagrams_in.inc();
        metrics.bytes_in.inc_by(len as u64);
        let snap = config.refresh(&shared, &name);
        let Some(udp) = config.listener(&snap) else {
            continue;
        };
        let flow = Flow {
            client,
            snapshot: config.generation,
        };
        let session = match table.find(client) {
            Some(s) if s.still_fits(udp, flow.snapshot) => s,
            found => {
                if let Some(stale) = found {
                    stale.close();
                }
                let context = Context {
                    socket: &socket,
                    table: &table,
                    metrics: &metrics,
                    open: &open,
                    stopped: &stopped,
                    alive: &alive,
                };
                match open_session(udp, &flow, &context).await {
                    Some(s) => s,
                    None => continue,
                }
            }
        };
        session.touch();
        if session.send(&buf[..len]).await.is_err() {
            metrics.send_failed.inc();
        }
    }
    // Closing the sessions closes their sockets; the listener's socket closes with the last.
    table.close_all();
    drop(alive);
    drop(socket);
    let _ = tokio::time::timeout(Duration::from_secs(1), gone.recv()).await;
    tracing::debug!(listener = %name, "udp listener socket closed");
}

/// The flow a datagram belongs to, and the config it arrived under.
struct Flow {
    client: SocketAddr,
    /// [`Current::generation`] when it arrived.
    snapshot: usize,
}

/// What a new session is attached to.
struct Context<'a> {
    socket: &'a Arc<UdpSocket>,
    table: &'a Arc<Table>,
    metrics: &'a UdpListenerMetrics,
    open: &'a Arc<AtomicUsize>,
    stopped: &'a watch::Receiver<bool>,
    alive: &'a mpsc::Sender<std::convert::Infallible>,
}

/// Picks a target for a new flow and opens its session; `None` (counted) when the datagram
/// is dropped instead.
async fn open_session(udp: &UdpListener, flow: &Flow, cx: &Context<'_>) -> Option<Arc<Session>> {
    let target = pick(udp, flow.client).or_else(|| {
        cx.metrics.no_target.inc();
        tracing::debug!(upstream = %udp.upstream.name, client = %flow.client, "no available udp target");
        None
    })?;
    let addr = target.addrs.load().first().copied().or_else(|| {
        cx.metrics.no_target.inc();
        None
    })?;
    // Counted before the socket opens, so concurrent workers never pass the bound together.
    if cx.open.fetch_add(1, Ordering::Relaxed) >= udp.max_sessions {
        cx.open.fetch_sub(1, Ordering::Relaxed);
        cx.metrics.full.inc();
        tracing::debug!(client = %flow.client, "udp sessions full; datagram dropped");
        return None;
    }
    let upstream = match connect(addr).await {
        Ok(s) => s,
        Err(err) => {
            cx.open.fetch_sub(1, Ordering::Relaxed);
            cx.metrics.send_failed.inc();
            // Debug only: out of file descriptors, every datagram would log; the counter shows it.
            tracing::debug!(upstream = %udp.upstream.name, target = %target.address, error = %err, "cannot open udp session socket");
            return None;
        }
    };
    let session = Session::new(upstream, Arc::clone(&udp.upstream), target, flow.snapshot);
    cx.table.insert(flow.client, Arc::clone(&session));
    cx.metrics.sessions.inc();
    cx.metrics.active.inc();
    session.target.inflight.fetch_add(1, Ordering::Relaxed);
    let task = session::Reply {
        session: Arc::clone(&session),
        client: flow.client,
        listener: Arc::clone(cx.socket),
        table: Arc::clone(cx.table),
        metrics: cx.metrics.clone(),
        timeout: udp.session_timeout,
        responses: udp.responses,
        stopped: cx.stopped.clone(),
        open: Arc::clone(cx.open),
        _alive: cx.alive.clone(),
    };
    tokio::spawn(task.run());
    Some(session)
}

/// The target a new flow from `client` goes to: the upstream's balancer, with the client's
/// address as the request (so `ip_hash`, `ring_hash` and `maglev` keep a client on one
/// target); unavailable targets are skipped.
fn pick(udp: &UdpListener, client: SocketAddr) -> Option<Arc<crate::pool::TargetState>> {
    let view = RequestView::connection(client.ip());
    let upstream = &udp.upstream;
    let index = upstream.balancer.select(&upstream.targets, &view, &[])?;
    upstream.targets.get(index).cloned()
}

/// An upstream-side socket connected to `target`, from an ephemeral port of the same family.
async fn connect(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    Ok(socket)
}

/// The config a listener socket follows: the snapshot in force, and its listener's index,
/// looked up again only when a reload swapped the snapshot.
#[derive(Default)]
struct Current {
    snapshot: Option<Arc<Snapshot>>,
    index: Option<usize>,
    /// Counts the snapshots seen. Sessions compare it rather than a snapshot's address,
    /// which a later snapshot may reuse once the earlier one is freed.
    generation: usize,
}

impl Current {
    /// The snapshot in force, refreshed when it changed.
    fn refresh(&mut self, shared: &Shared, name: &str) -> Arc<Snapshot> {
        let now = shared.snapshot.load();
        match &self.snapshot {
            Some(snap) if Arc::ptr_eq(snap, &now) => Arc::clone(snap),
            _ => {
                let snap = arc_swap::Guard::into_inner(now);
                self.generation = self.generation.wrapping_add(1);
                self.index = snap.listeners.iter().position(|l| &*l.name == name);
                self.snapshot = Some(Arc::clone(&snap));
                snap
            }
        }
    }

    /// This listener's UDP settings in `snap`; `None` if it is no longer a udp listener.
    fn listener<'a>(&self, snap: &'a Snapshot) -> Option<&'a UdpListener> {
        snap.listeners.get(self.index?)?.udp.as_ref()
    }
}
