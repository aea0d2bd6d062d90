//! Active health checks: each target is probed on its own timer, on the control thread, over a
//! fresh connection (so a check never borrows a pooled one and never waits behind traffic).

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::pool::TargetState;

/// What an active check does.
#[derive(Debug, Clone)]
pub struct ActiveCheck {
    /// HTTP request or bare TCP connect.
    pub kind: CheckKind,
    /// Time between checks of one target.
    pub interval: Duration,
    /// Up to this much is added to each interval, at random, so checks do not align.
    pub jitter: Duration,
    /// Time allowed for one check.
    pub timeout: Duration,
    /// Consecutive successes that bring a target back.
    pub healthy: u32,
    /// Consecutive failures that take a target out.
    pub unhealthy: u32,
    /// TLS, when the upstream speaks it: checks go over TLS too.
    pub tls: Option<crate::tls::UpstreamTls>,
}

/// The probe itself.
#[derive(Debug, Clone)]
pub enum CheckKind {
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
pub async fn probe(target: &TargetState, check: &ActiveCheck) -> bool {
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
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method.clone())
            .uri(path.as_str())
            .header(http::header::HOST, target.address.as_str())
            .header(http::header::USER_AGENT, "portico-health-check")
            .body(Empty::<Bytes>::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status();
        let in_range = (statuses.0..=statuses.1).contains(&status.as_u16());
        match body {
            None => Some(in_range),
            Some(needle) => {
                // Bounded: a health page larger than 64 KiB is a failed check.
                let bytes = Limited::new(response.into_body(), 64 * 1024)
                    .collect()
                    .await
                    .ok()?
                    .to_bytes();
                let found = bytes
                    .windows(needle.len().max(1))
                    .any(|w| w == needle.as_bytes());
                Some(in_range && found)
            }
        }
    };
    matches!(
        tokio::time::timeout(check.timeout, attempt).await,
        Ok(Some(true))
    )
}

/// Checks one target, with the settings in `check` at each probe, until the target's state
/// goes (or the task is stopped); reports transitions through `on_change`.
///
/// The task holds the target only while it probes: the target's state owns the task, not the
/// other way round.
pub async fn watch(
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
                crate::balance::random_u64() % (check.jitter.as_millis() as u64 + 1),
            )
        };
        tokio::time::sleep(check.interval + jitter).await;
    }
}

/// Parses an accepted status range: `200`, `200-399`.
pub fn parse_statuses(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("invalid status range `{text}`: expected like 200-399");
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
