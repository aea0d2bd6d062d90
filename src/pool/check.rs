//! Active health checks: each target is probed on its own timer, on the control thread, over a
//! fresh connection (so a check never borrows a pooled one and never waits behind traffic).
//!
//! A check speaks what the traffic speaks: TLS when the upstream has `tls` (same roots, client
//! certificate, SNI and ALPN), and HTTP/2 when it is an `http2` upstream (prior knowledge over
//! cleartext, ALPN `h2` over TLS). An upstream that only speaks those would otherwise fail
//! every check while serving traffic fine.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::TargetState;

/// What an active check does.
#[derive(Debug, Clone)]
pub(crate) struct ActiveCheck {
    /// HTTP request or bare TCP connect.
    pub(crate) kind: CheckKind,
    /// Time between checks of one target.
    pub(crate) interval: Duration,
    /// Up to this much is added to each interval, at random, so checks do not align.
    pub(crate) jitter: Duration,
    /// Time allowed for one check.
    pub(crate) timeout: Duration,
    /// Consecutive successes that bring a target back.
    pub(crate) healthy: u32,
    /// Consecutive failures that take a target out.
    pub(crate) unhealthy: u32,
    /// TLS, when the upstream speaks it: checks go over TLS too.
    pub(crate) tls: Option<crate::tls::UpstreamTls>,
    /// The upstream speaks HTTP/2: checks do too.
    pub(crate) http2: bool,
}

/// The probe itself.
#[derive(Debug, Clone)]
pub(crate) enum CheckKind {
    /// `METHOD path` must answer a status in `statuses` (and contain `body` when given).
    Http {
        /// Method.
        method: Method,
        /// Path and query.
        path: String,
        /// Accepted status range, inclusive.
        statuses: (u16, u16),
        /// A substring the body must contain.
        body: Option<String>,
    },
    /// A TCP connection must open.
    Tcp,
}

/// Probes `target` once; `true` when healthy.
pub(crate) async fn probe(target: &TargetState, check: &ActiveCheck) -> bool {
    let Some(addr) = target.addrs.load().first().copied() else {
        return false;
    };
    let attempt = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let CheckKind::Http {
            method,
            path,
            statuses,
            body,
        } = &check.kind
        else {
            return Some(true);
        };
        let request = Request::builder().method(method.clone());
        let request = if check.http2 {
            // HTTP/2 carries the authority in the request (RFC 9113 §8.3.1).
            let scheme = if check.tls.is_some() { "https" } else { "http" };
            request.uri(format!("{scheme}://{}{path}", target.address))
        } else {
            request
                .uri(path.as_str())
                .header(http::header::HOST, &*target.address)
        };
        let request = request
            .header(http::header::USER_AGENT, "portico-health-check")
            .body(Empty::<Bytes>::new())
            .ok()?;
        let wants_body = body.is_some();
        let (status, bytes) = match &check.tls {
            None => exchange(TokioIo::new(stream), check.http2, request, wants_body).await?,
            Some(tls) => {
                let name = target.server_name(tls).ok()?;
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
                let stream = connector.connect(name, stream).await.ok()?;
                exchange(TokioIo::new(stream), check.http2, request, wants_body).await?
            }
        };
        let in_range = (statuses.0..=statuses.1).contains(&status.as_u16());
        let found = body.as_ref().is_none_or(|needle| {
            bytes
                .windows(needle.len().max(1))
                .any(|w| w == needle.as_bytes())
        });
        Some(in_range && found)
    };
    matches!(
        tokio::time::timeout(check.timeout, attempt).await,
        Ok(Some(true))
    )
}

/// Sends the check request over a fresh connection in HTTP/1.1 or HTTP/2; the status, and
/// the body when `read_body` (read while the connection's sender is still held).
async fn exchange<I>(
    io: I,
    http2: bool,
    request: Request<Empty<Bytes>>,
    read_body: bool,
) -> Option<(StatusCode, Bytes)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if http2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .ok()?;
        tokio::spawn(conn);
        let response = sender.send_request(request).await.ok()?;
        let read = read(response, read_body).await;
        drop(sender);
        read
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
        tokio::spawn(conn);
        let response = sender.send_request(request).await.ok()?;
        let read = read(response, read_body).await;
        drop(sender);
        read
    }
}

async fn read(response: Response<Incoming>, read_body: bool) -> Option<(StatusCode, Bytes)> {
    let status = response.status();
    if !read_body {
        return Some((status, Bytes::new()));
    }
    // Bounded: a health page larger than 64 KiB is a failed check.
    let bytes = Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some((status, bytes))
}

/// Checks one target, with the settings in `check` at each probe, until the target's state
/// goes (or the task is stopped); reports transitions through `on_change`.
///
/// The task holds the target only while it probes: the target's state owns the task, not the
/// other way round.
pub(crate) async fn watch(
    target: Weak<TargetState>,
    check: Arc<ArcSwap<ActiveCheck>>,
    on_change: impl Fn(&TargetState, bool) + Send,
) {
    loop {
        let Some(live) = target.upgrade() else { return };
        let check = check.load_full();
        let ok = probe(&live, &check).await;
        if let Some(up) = live.health.record_check(ok, check.healthy, check.unhealthy) {
            on_change(&live, up);
        }
        drop(live);
        let jitter = if check.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_millis(
                crate::random::random_u64() % (check.jitter.as_millis() as u64 + 1),
            )
        };
        tokio::time::sleep(check.interval + jitter).await;
    }
}

/// An `expect_status` that is not a status or a range of statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid status range `{0}`: expected like 200-399")]
pub(crate) struct StatusRangeError(String);

/// Parses an accepted status range: `200`, `200-399`.
pub(crate) fn parse_statuses(text: &str) -> Result<(u16, u16), StatusRangeError> {
    let bad = || StatusRangeError(text.to_owned());
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (lo.trim(), hi.trim()),
        None => (text.trim(), text.trim()),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
        return Err(bad());
    }
    let _ = StatusCode::from_u16(lo).map_err(|_| bad())?;
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges() {
        assert_eq!(parse_statuses("200-399"), Ok((200, 399)));
        assert_eq!(parse_statuses("204"), Ok((204, 204)));
        assert_eq!(
            parse_statuses("399-200").unwrap_err().to_string(),
            "invalid status range `399-200`: expected like 200-399"
        );
    }
}
