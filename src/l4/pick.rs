//! Which target takes a relayed connection: the upstream's balancer over the client address,
//! skipping targets that are down, ejected, at their connection limit or already tried, with
//! a retry on another target when a connect fails or times out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use super::Io;
use crate::health::Outcome;
use crate::pool::TargetState;
use crate::runtime::Upstream;
use crate::tls::UpstreamTls;
use crate::view::RequestView;

/// Most targets one connection tries.
pub(crate) const MAX_TRIES: usize = 3;

/// A connection made to a target, counted against it while it lives.
pub(crate) struct Opened {
    /// The stream to the target (TLS when the upstream has `tls:`).
    pub(crate) io: Io,
    /// The target's index in the upstream.
    pub(crate) target: usize,
    /// Targets tried, this one included.
    pub(crate) attempts: u32,
    /// Keeps the target's connection count up.
    pub(crate) _open: OpenGuard,
}

/// Why no connection was made.
#[derive(Debug)]
pub(crate) struct Refused {
    /// `no_target` (none available) or `connect_failed` (every try failed).
    pub(crate) result: &'static str,
    /// Targets tried.
    pub(crate) attempts: u32,
    /// The last target tried, if any.
    pub(crate) target: Option<usize>,
    /// What went wrong, for the log.
    pub(crate) reason: String,
}

/// One relayed connection counted on its target: in flight (which `least_request` reads as
/// least connections) and open (which the circuit breaker's limits read).
pub(crate) struct OpenGuard(Arc<TargetState>);

impl OpenGuard {
    fn new(target: &Arc<TargetState>) -> Self {
        target.inflight.fetch_add(1, Ordering::Relaxed);
        target.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(Arc::clone(target))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Opens a TCP connection to `target` within the upstream's `connect_timeout`, and sends the
/// upstream's PROXY protocol header first when it has one. Every relayed connection to an
/// upstream is made here; `client` is the address the connection is for and `local` the one
/// it was made to (as a trusted PROXY header conveyed them, if any).
pub(crate) async fn connect(
    upstream: &Upstream,
    target: &TargetState,
    (client, local): (SocketAddr, SocketAddr),
) -> std::io::Result<TcpStream> {
    let Some(addr) = target.addrs.load().first().copied() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the target's name has not resolved",
        ));
    };
    let stream =
        match tokio::time::timeout(upstream.pool.connect_timeout, TcpStream::connect(addr)).await {
            Ok(connected) => connected?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connect timed out after {:?}",
                        upstream.pool.connect_timeout
                    ),
                ));
            }
        };
    let mut stream = stream;
    let _ = stream.set_nodelay(true);
    if let Some(version) = upstream.proxy_protocol {
        use tokio::io::AsyncWriteExt;
        let header = crate::proxy_protocol::header(version, client, local);
        stream.write_all(&header).await?;
    }
    tracing::trace!(%client, target = %target.address, "relay connected");
    Ok(stream)
}

/// [`connect`], then TLS when `tls` is set (within the connect timeout as well).
async fn connect_io(
    upstream: &Upstream,
    target: &TargetState,
    tls: Option<&UpstreamTls>,
    addrs: (SocketAddr, SocketAddr),
) -> std::io::Result<Io> {
    let stream = connect(upstream, target, addrs).await?;
    let Some(tls) = tls else {
        return Ok(Box::new(stream));
    };
    let name = target.server_name(tls).map_err(std::io::Error::other)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
    match tokio::time::timeout(
        upstream.pool.connect_timeout,
        connector.connect(name, stream),
    )
    .await
    {
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(err)) => Err(std::io::Error::other(format!("TLS handshake: {err}"))),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

/// Picks a target for `client` and connects, trying up to [`MAX_TRIES`] targets (and no more
/// than the upstream has). `addrs` are the client's address and the one it connected to.
pub(crate) async fn open(
    upstream: &Upstream,
    tls: Option<&UpstreamTls>,
    addrs: (SocketAddr, SocketAddr),
) -> Result<Opened, Refused> {
    let client = addrs.0;
    let view = RequestView::connection(client.ip());
    let tries = upstream.targets.len().clamp(1, MAX_TRIES);
    let mut tried: Vec<usize> = Vec::new();
    let mut reason = String::from("no available target");
    while tried.len() < tries {
        if let Some(max) = upstream.max_connections {
            let open: usize = upstream
                .targets
                .iter()
                .map(|t| t.open.load(Ordering::Relaxed))
                .sum();
            if open >= max {
                reason = format!("circuit_breaker.max_connections ({max}) reached");
                break;
            }
        }
        let mut exclude = tried.clone();
        if let Some(max) = upstream.max_connections_per_target {
            exclude.extend(
                upstream
                    .targets
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.open.load(Ordering::Relaxed) >= max)
                    .map(|(i, _)| i),
            );
        }
        let Some(index) = upstream.balancer.select(&upstream.targets, &view, &exclude) else {
            break;
        };
        if exclude.contains(&index) {
            // The balancer's panic mode spreads over every target; a tried or full one is
            // still not taken.
            break;
        }
        let target = &upstream.targets[index];
        tried.push(index);
        // Counted before the connect, so that concurrent picks see it.
        let guard = OpenGuard::new(target);
        match connect_io(upstream, target, tls, addrs).await {
            Ok(io) => {
                record(upstream, index, Outcome::Success);
                return Ok(Opened {
                    io,
                    target: index,
                    attempts: tried.len() as u32,
                    _open: guard,
                });
            }
            Err(err) => {
                tracing::warn!(
                    upstream = %upstream.name,
                    target = %target.address,
                    %client,
                    error = %err,
                    "relay connect failed"
                );
                record(upstream, index, Outcome::Failure);
                reason = format!("connect to {} failed: {err}", target.address);
            }
        }
    }
    Err(Refused {
        result: if tried.is_empty() {
            "no_target"
        } else {
            "connect_failed"
        },
        attempts: tried.len() as u32,
        target: tried.last().copied(),
        reason,
    })
}

/// Feeds passive outlier detection: a connect that failed counts against the target, one
/// that succeeded for it.
fn record(upstream: &Upstream, index: usize, outcome: Outcome) {
    let Some(policy) = &upstream.passive else {
        return;
    };
    let target = &upstream.targets[index];
    if outcome == Outcome::Success && target.health.clean() {
        return;
    }
    upstream.record_outcome(target, policy, outcome);
}
