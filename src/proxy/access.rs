//! The access-log line of one HTTP request: its fields are gathered once the answer's head
//! is ready, and the line is written when the answer's body has been handed to the
//! connection (or dropped before its end), with the bytes each way and the whole duration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method, Response, Version};

use crate::body::{Body, Watch};
use crate::ctx::RequestCtx;
use crate::observe::access_log::LogHandle;

/// The fields of one line, in the order they are written.
pub(crate) type Fields = serde_json::Map<String, serde_json::Value>;

/// What the log needs of the request head, taken before the head moves on.
pub(crate) struct LogHead {
    method: Method,
    version: Version,
    path: String,
    trace_id: Option<String>,
    /// Bytes of the request body read so far; none for a request without a body.
    bytes_in: Option<Arc<AtomicU64>>,
}

impl LogHead {
    /// Takes what the line needs of `head`, and counts the bytes of `body` as they are read.
    pub(crate) fn take(head: &http::request::Parts, body: Body) -> (Self, Body) {
        use http_body::Body as _;
        let (body, bytes_in) = if body.is_end_stream() {
            (body, None)
        } else {
            let count = Arc::new(AtomicU64::new(0));
            (
                body.watch(Box::new(CountIn(Arc::clone(&count)))),
                Some(count),
            )
        };
        let head = LogHead {
            method: head.method.clone(),
            version: head.version,
            path: head.uri.path().to_owned(),
            trace_id: trace_id(&head.headers),
            bytes_in,
        };
        (head, body)
    }
}

/// The trace id of a valid W3C `traceparent` (version 00), lowercase hex.
fn trace_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_owned())
}

/// Counts a request body's bytes as they pass.
struct CountIn(Arc<AtomicU64>);

impl Watch for CountIn {
    fn data(&mut self, len: usize) {
        self.0.fetch_add(len as u64, Ordering::Relaxed);
    }
    fn end(self: Box<Self>, _trailers: Option<&HeaderMap>) {}
}

/// The fields known once the answer's head is ready.
pub(crate) fn fields(
    ctx: &RequestCtx,
    head: &LogHead,
    tls: Option<&crate::proxy::pipeline::TlsInfo>,
    status: u16,
) -> Fields {
    let elapsed = ctx.start.elapsed();
    let serde_json::Value::Object(mut fields) = serde_json::json!({
        "ts": epoch_seconds(SystemTime::now().checked_sub(elapsed)),
        "request_id": ctx.request_id.to_str().unwrap_or(""),
        "trace_id": ctx.trace.as_ref().map(|t| t.context.trace_hex()).or_else(|| head.trace_id.clone()),
        "client": crate::runtime::client_addr::shown(ctx.client),
        "listener": &*ctx.listener,
        "route": ctx.route.as_deref(),
        "upstream": ctx.upstream.as_deref(),
        "target": ctx.target.as_deref(),
        "attempts": ctx.attempts,
        "consumer": ctx.consumer.as_ref().map(|c| c.name.as_str()),
        "method": head.method.as_str(),
        "path": head.path,
        "protocol": format!("{:?}", head.version),
        "status": status,
        "tls_version": tls.map(|t| t.version),
        "sni": tls.and_then(|t| t.sni.as_deref()),
        "head_ms": duration_ms(elapsed),
        "upstream_ms": (ctx.attempts > 0).then(|| duration_ms(ctx.upstream_time())),
    }) else {
        return Fields::new();
    };
    if let Some(plugin) = crate::plugins::answered_by(ctx) {
        fields.insert("answered_by".into(), plugin.into());
    }
    if ctx.budget_spent {
        fields.insert("retry_budget_spent".into(), serde_json::Value::Bool(true));
    }
    fields
}

/// The end of a line, written when the answer is over.
pub(crate) struct Tail {
    fields: Option<Fields>,
    log: LogHandle,
    start: Instant,
    bytes_in: Option<Arc<AtomicU64>>,
    bytes_out: u64,
}

impl Tail {
    /// The rest of the line of a request that started at `start`.
    pub(crate) fn new(fields: Fields, log: LogHandle, start: Instant, head: &LogHead) -> Self {
        Tail {
            fields: Some(fields),
            log,
            start,
            bytes_in: head.bytes_in.clone(),
            bytes_out: 0,
        }
    }

    /// Counts bytes of the answer's body.
    pub(crate) fn sent(&mut self, len: usize) {
        self.bytes_out += len as u64;
    }

    /// Writes the line with `extra` fields (once; later calls do nothing).
    pub(crate) fn write(&mut self, aborted: bool, extra: impl FnOnce(&mut Fields)) {
        let Some(mut fields) = self.fields.take() else {
            return;
        };
        let bytes_in = self
            .bytes_in
            .as_ref()
            .map_or(0, |b| b.load(Ordering::Relaxed));
        fields.insert("bytes_in".into(), bytes_in.into());
        fields.insert("bytes_out".into(), self.bytes_out.into());
        fields.insert(
            "duration_ms".into(),
            duration_ms(self.start.elapsed()).into(),
        );
        if aborted {
            fields.insert("aborted".into(), serde_json::Value::Bool(true));
        }
        extra(&mut fields);
        self.log.write(line(&fields));
    }
}

/// Writes the line of a plain HTTP answer when its body ends: now for a body-less answer.
pub(crate) fn at_end(response: Response<Body>, mut tail: Tail) -> Response<Body> {
    use http_body::Body as _;
    if response.body().is_end_stream() {
        tail.write(false, |_| {});
        return response;
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.watch(Box::new(BodyEnd(tail))))
}

/// The watch on an answer's body that ends its line.
struct BodyEnd(Tail);

impl Watch for BodyEnd {
    fn data(&mut self, len: usize) {
        self.0.sent(len);
    }
    fn end(mut self: Box<Self>, _trailers: Option<&HeaderMap>) {
        self.0.write(false, |_| {});
    }
}

impl Drop for BodyEnd {
    /// An answer dropped before its end: the client went away, or the body broke.
    fn drop(&mut self) {
        self.0.write(true, |_| {});
    }
}

/// Milliseconds with three decimals, as the access log gives durations.
pub(crate) fn duration_ms(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

/// One access-log line of these fields.
pub(crate) fn line(fields: &Fields) -> String {
    let mut line = serde_json::to_string(fields).unwrap_or_default();
    line.push('\n');
    line
}

/// Seconds since the Unix epoch, with milliseconds.
fn epoch_seconds(at: Option<SystemTime>) -> f64 {
    at.and_then(|at| at.duration_since(UNIX_EPOCH).ok())
        .map(|d| (d.as_millis() as f64) / 1000.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_only_from_valid_traceparents() {
        let of = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("traceparent", v.parse().unwrap());
            trace_id(&h)
        };
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            of(good).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "\"><script>",
        ] {
            assert_eq!(of(bad), None, "{bad}");
        }
    }
}
