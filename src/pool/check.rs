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
use http_body_util::{BodyExt, Full, Limited};
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
    /// The upstream's `proxy_protocol`: a check starts with a header on portico's own
    /// behalf (v2 `LOCAL`, v1 `PROXY UNKNOWN`).
    pub(crate) proxy_protocol: Option<crate::proxy_protocol::Version>,
    /// Probe this port of the target's address instead of the target's own.
    pub(crate) port: Option<u16>,
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
    /// `grpc.health.v1.Health/Check` for `service` must answer `SERVING`, over HTTP/2
    /// whatever the upstream's `protocol` (gRPC is HTTP/2 only).
    Grpc {
        /// The service asked about; empty for the whole server.
        service: String,
    },
}

/// The gRPC health check's method.
const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";

/// A `HealthCheckRequest { service }` in one gRPC message frame: uncompressed, length, then
/// field 1 (a string) when the service is named.
fn grpc_health_request(service: &str) -> Bytes {
    let mut message = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        message.push(0x0a);
        let mut len = service.len();
        while len >= 0x80 {
            message.push((len as u8) | 0x80);
            len >>= 7;
        }
        message.push(len as u8);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    Bytes::from(frame)
}

/// Whether a `HealthCheckResponse` frame says `SERVING` (field 1, the enum value 1).
fn grpc_serving(body: &[u8]) -> bool {
    let Some(message) = body.get(5..) else {
        return false;
    };
    if body[0] != 0 {
        return false;
    }
    let mut rest = message;
    // Fields in any order; only the varint field 1 matters, others are skipped.
    while let Some((&tag, tail)) = rest.split_first() {
        let (value, tail) = match varint(tail) {
            Some(v) if tag & 7 == 0 => v,
            Some((len, tail)) if tag & 7 == 2 => match tail.get(len as usize..) {
                Some(after) => {
                    rest = after;
                    continue;
                }
                None => return false,
            },
            _ => return false,
        };
        if tag == 0x08 {
            return value == 1;
        }
        rest = tail;
    }
    false
}

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// Probes `target` once; `true` when healthy.
pub(crate) async fn probe(target: &TargetState, check: &ActiveCheck) -> bool {
    let Some(mut addr) = target.addrs.load().first().copied() else {
        return false;
    };
    if let Some(port) = check.port {
        addr.set_port(port);
    }
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        if let Some(version) = check.proxy_protocol {
            use tokio::io::AsyncWriteExt;
            let header = crate::proxy_protocol::local_header(version);
            stream.write_all(&header).await.ok()?;
        }
        let http2 = check.http2 || matches!(check.kind, CheckKind::Grpc { .. });
        let (method, path, body) = match &check.kind {
            CheckKind::Tcp => return Some(true),
            CheckKind::Http { method, path, .. } => (method.clone(), path.as_str(), Bytes::new()),
            CheckKind::Grpc { service } => {
                (Method::POST, GRPC_HEALTH_PATH, grpc_health_request(service))
            }
        };
        let request = Request::builder().method(method);
        let request = if http2 {
            // HTTP/2 carries the authority in the request (RFC 9113 §8.3.1).
            let scheme = if check.tls.is_some() { "https" } else { "http" };
            request.uri(format!("{scheme}://{}{path}", target.address))
        } else {
            request
                .uri(path)
                .header(http::header::HOST, &*target.address)
        };
        let request = request.header(http::header::USER_AGENT, "portico-health-check");
        let request = if let CheckKind::Grpc { .. } = check.kind {
            request
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header(http::header::TE, "trailers")
        } else {
            request
        };
        let request = request.body(Full::new(body)).ok()?;
        let wants_body = match &check.kind {
            CheckKind::Http { body, .. } => body.is_some(),
            _ => true,
        };
        let answer = match &check.tls {
            None => exchange(TokioIo::new(stream), http2, request, wants_body).await?,
            Some(tls) => {
                let name = target.server_name(tls).ok()?;
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
                let stream = connector.connect(name, stream).await.ok()?;
                exchange(TokioIo::new(stream), http2, request, wants_body).await?
            }
        };
        Some(match &check.kind {
            CheckKind::Http { statuses, body, .. } => {
                let in_range = (statuses.0..=statuses.1).contains(&answer.status.as_u16());
                let found = body.as_ref().is_none_or(|needle| {
                    answer
                        .body
                        .windows(needle.len().max(1))
                        .any(|w| w == needle.as_bytes())
                });
                in_range && found
            }
            CheckKind::Grpc { .. } => {
                answer.status == StatusCode::OK
                    && answer.grpc_status.as_deref() == Some("0")
                    && grpc_serving(&answer.body)
            }
            CheckKind::Tcp => true,
        })
    };
    matches!(
        tokio::time::timeout(check.timeout, attempt).await,
        Ok(Some(true))
    )
}

/// What a check got back.
struct Answer {
    status: StatusCode,
    /// The body, when asked for (at most 64 KiB).
    body: Bytes,
    /// `grpc-status`, from the trailers or, for a trailers-only answer, the head.
    grpc_status: Option<String>,
}

/// Sends the check request over a fresh connection in HTTP/1.1 or HTTP/2; the status, and
/// the body when `read_body` (read while the connection's sender is still held).
async fn exchange<I>(
    io: I,
    http2: bool,
    request: Request<Full<Bytes>>,
    read_body: bool,
) -> Option<Answer>
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

async fn read(response: Response<Incoming>, read_body: bool) -> Option<Answer> {
    let status = response.status();
    let head_status = response.headers().get("grpc-status").cloned();
    if !read_body {
        return Some(Answer {
            status,
            body: Bytes::new(),
            grpc_status: None,
        });
    }
    // Bounded: a health page larger than 64 KiB is a failed check.
    let collected = Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await
        .ok()?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or(head_status.as_ref())
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Some(Answer {
        status,
        body: collected.to_bytes(),
        grpc_status,
    })
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
    fn grpc_health_messages() {
        assert_eq!(&grpc_health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_health_request("a.B")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
        let long = "s".repeat(200);
        assert_eq!(&grpc_health_request(&long)[5..8], &[0x0a, 0xc8, 0x01]);
        assert!(grpc_serving(&[0, 0, 0, 0, 2, 0x08, 1]));
        assert!(!grpc_serving(&[0, 0, 0, 0, 2, 0x08, 2]), "NOT_SERVING");
        assert!(!grpc_serving(&[0, 0, 0, 0, 0]), "UNKNOWN is the default");
        assert!(!grpc_serving(&[1, 0, 0, 0, 2, 0x08, 1]), "compressed");
        // An unknown length-delimited field before the status is skipped.
        assert!(grpc_serving(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1]));
        assert!(!grpc_serving(&[0, 0, 0, 0, 2, 0x12, 9]), "truncated");
    }

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
