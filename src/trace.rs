//! Distributed tracing: W3C trace context (`traceparent`, `tracestate`) read from requests,
//! created where absent and sent on to targets, and the spans of sampled requests exported
//! over OTLP/HTTP (protobuf) by a thread of their own. A full export queue drops spans and
//! counts them (`portico_trace_spans_dropped_total`); the request path never waits on it.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;

/// `traceparent`.
pub(crate) static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Requests' span batches queued for the exporter at most.
const QUEUE: usize = 4096;
/// Spans sent in one export at most.
const BATCH: usize = 512;
/// The longest a span waits to be exported.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// A W3C trace context: the ids a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    /// The trace.
    pub(crate) trace_id: [u8; 16],
    /// The span the context names (the caller's, in an incoming header).
    pub(crate) span_id: [u8; 8],
    /// The `sampled` flag.
    pub(crate) sampled: bool,
}

impl TraceContext {
    /// A valid version-00 `traceparent`: lowercase hex ids, not all zero.
    pub(crate) fn parse(value: &[u8]) -> Option<Self> {
        // 00-<32 hex>-<16 hex>-<2 hex>
        if value.len() != 55 || &value[..3] != b"00-" || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flags = [0u8; 1];
        hex_into(&value[3..35], &mut trace_id)?;
        hex_into(&value[36..52], &mut span_id)?;
        hex_into(&value[53..55], &mut flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    /// The `traceparent` value naming `span_id` as the parent.
    pub(crate) fn header(&self, span_id: [u8; 8]) -> HeaderValue {
        let mut out = Vec::with_capacity(55);
        out.extend_from_slice(b"00-");
        push_hex(&mut out, &self.trace_id);
        out.push(b'-');
        push_hex(&mut out, &span_id);
        out.extend_from_slice(if self.sampled { b"-01" } else { b"-00" });
        // Hex and dashes only.
        HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The trace id in lowercase hex.
    pub(crate) fn trace_hex(&self) -> String {
        let mut out = Vec::with_capacity(32);
        push_hex(&mut out, &self.trace_id);
        String::from_utf8(out).unwrap_or_default()
    }
}

fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// A new random span id (never all zero).
pub(crate) fn span_id() -> [u8; 8] {
    (crate::random::random_u64() | 1).to_be_bytes()
}

fn trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&crate::random::random_u64().to_be_bytes());
    id[8..].copy_from_slice(&(crate::random::random_u64() | 1).to_be_bytes());
    id
}

/// What a span was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Work inside portico (a plugin phase).
    Internal = 1,
    /// The downstream request.
    Server = 2,
    /// A call portico made (a try sent to a target, an aggregate call).
    Client = 3,
}

/// An attribute value.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
}

/// One finished span.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) parent: Option<[u8; 8]>,
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) attributes: Vec<(&'static str, Value)>,
    pub(crate) error: bool,
}

/// The trace of one request: its context, its own (server) span and the spans finished
/// under it, sent to the exporter when the request ends — when it is sampled.
#[derive(Debug)]
pub(crate) struct RequestTrace {
    /// The context sent on: this request's trace, naming its server span.
    pub(crate) context: TraceContext,
    /// The caller's span, when the request came with a context.
    pub(crate) parent: Option<[u8; 8]>,
    /// The incoming `tracestate`, passed on unchanged.
    pub(crate) state: Option<HeaderValue>,
    /// When the request started (Unix nanoseconds), and the clock to time spans by.
    started: (u64, Instant),
    spans: Mutex<Vec<Span>>,
    /// The server span's attributes known at the start.
    request: Vec<(&'static str, Value)>,
}

impl RequestTrace {
    /// Unix nanoseconds at `at`.
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        let (unix, clock) = self.started;
        let since = at.saturating_duration_since(clock).as_nanos();
        unix.saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// Records a span under the server span that ran from `start` to now.
    pub(crate) fn span(
        &self,
        name: &'static str,
        kind: Kind,
        start: Instant,
        id: [u8; 8],
        attributes: Vec<(&'static str, Value)>,
        error: bool,
    ) {
        if !self.context.sampled {
            return;
        }
        let span = Span {
            trace_id: self.context.trace_id,
            span_id: id,
            parent: Some(self.context.span_id),
            name,
            kind,
            start: self.nanos(start),
            end: self.nanos(Instant::now()),
            attributes,
            error,
        };
        if let Ok(mut spans) = self.spans.lock() {
            spans.push(span);
        }
    }

    /// The trace of a call made for this request: its own span under this request's, for
    /// the call's tries to hang under. Given back with [`RequestTrace::adopt`].
    pub(crate) fn child(&self) -> RequestTrace {
        RequestTrace {
            context: TraceContext {
                span_id: span_id(),
                ..self.context
            },
            parent: Some(self.context.span_id),
            state: self.state.clone(),
            started: (self.nanos(Instant::now()), Instant::now()),
            spans: Mutex::new(Vec::new()),
            request: Vec::new(),
        }
    }

    /// Takes back a call's trace: its spans, and the call's own span, from its start to now.
    pub(crate) fn adopt(
        &self,
        call: RequestTrace,
        name: &'static str,
        attributes: Vec<(&'static str, Value)>,
        error: bool,
    ) {
        if !self.context.sampled {
            return;
        }
        let mut spans = call.spans.into_inner().unwrap_or_default();
        spans.push(Span {
            trace_id: call.context.trace_id,
            span_id: call.context.span_id,
            parent: call.parent,
            name,
            kind: Kind::Client,
            start: call.started.0,
            end: self.nanos(Instant::now()),
            attributes,
            error,
        });
        if let Ok(mut mine) = self.spans.lock() {
            mine.extend(spans);
        }
    }

    /// The `traceparent` a call made for this request carries, naming `span_id`.
    pub(crate) fn header(&self, span_id: [u8; 8]) -> HeaderValue {
        self.context.header(span_id)
    }
}

/// Decides sampling, and hands finished requests' spans to the exporter.
#[derive(Debug)]
pub(crate) struct Tracer {
    ratio: f64,
    sender: SyncSender<Vec<Span>>,
    dropped: Counter,
}

/// What the tracer needs from the config.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `http://HOST:PORT/PATH` of an OTLP/HTTP traces receiver.
    pub(crate) endpoint: http::Uri,
    /// Share of new traces sampled, 0..=1 (a request with a context follows its flag).
    pub(crate) ratio: f64,
    /// `service.name` of the spans' resource.
    pub(crate) service: String,
    /// Most time one export may take.
    pub(crate) timeout: Duration,
}

impl Tracer {
    /// Starts the exporter thread.
    pub(crate) fn start(settings: Settings, dropped: Counter) -> std::io::Result<Self> {
        let (sender, receiver) = sync_channel::<Vec<Span>>(QUEUE);
        let ratio = settings.ratio;
        std::thread::Builder::new()
            .name("portico-trace-export".into())
            .spawn(move || export_loop(&settings, &receiver))?;
        Ok(Tracer {
            ratio,
            sender,
            dropped,
        })
    }

    /// The trace of a request with these headers: the caller's context continued (its
    /// sampling decision kept), or a new trace sampled at the configured ratio.
    pub(crate) fn begin(&self, head: &http::request::Parts) -> RequestTrace {
        let headers = &head.headers;
        let incoming = headers
            .get(&TRACEPARENT)
            .and_then(|v| TraceContext::parse(v.as_bytes()));
        let (context, parent, state) = match incoming {
            Some(caller) => (
                TraceContext {
                    span_id: span_id(),
                    ..caller
                },
                Some(caller.span_id),
                headers.get("tracestate").cloned(),
            ),
            None => (
                TraceContext {
                    trace_id: trace_id(),
                    span_id: span_id(),
                    sampled: crate::random::chance(self.ratio),
                },
                None,
                None,
            ),
        };
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        RequestTrace {
            context,
            parent,
            state,
            started: (unix, Instant::now()),
            spans: Mutex::new(Vec::new()),
            request: match context.sampled {
                true => vec![
                    (
                        "http.request.method",
                        Value::Str(head.method.as_str().to_owned()),
                    ),
                    ("url.path", Value::Str(head.uri.path().to_owned())),
                ],
                false => Vec::new(),
            },
        }
    }

    /// Ends a request's trace with its server span, and queues its spans for export.
    pub(crate) fn end(
        &self,
        trace: &RequestTrace,
        name: &'static str,
        more: Vec<(&'static str, Value)>,
        error: bool,
    ) {
        if !trace.context.sampled {
            return;
        }
        let mut attributes = trace.request.clone();
        attributes.extend(more);
        let mut spans = match trace.spans.lock() {
            Ok(mut spans) => std::mem::take(&mut *spans),
            Err(_) => return,
        };
        spans.push(Span {
            trace_id: trace.context.trace_id,
            span_id: trace.context.span_id,
            parent: trace.parent,
            name,
            kind: Kind::Server,
            start: trace.started.0,
            end: trace.nanos(Instant::now()),
            attributes,
            error,
        });
        let n = spans.len() as u64;
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.sender.try_send(spans)
        {
            self.dropped.inc_by(n);
        }
    }
}

/// The exporter thread: batches spans for up to a second (or [`BATCH`] of them) and posts
/// each batch; a batch the receiver refuses or does not take in time is dropped and logged.
fn export_loop(settings: &Settings, receiver: &Receiver<Vec<Span>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "tracing: cannot start the exporter");
            return;
        }
    };
    let mut batch: Vec<Span> = Vec::new();
    let mut since = Instant::now();
    loop {
        let wait = FLUSH_EVERY.saturating_sub(since.elapsed());
        match receiver.recv_timeout(wait) {
            Ok(spans) => {
                if batch.is_empty() {
                    since = Instant::now();
                }
                batch.extend(spans);
                if batch.len() < BATCH {
                    continue;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if batch.is_empty() {
                    return;
                }
            }
        }
        if batch.is_empty() {
            since = Instant::now();
            continue;
        }
        let body = otlp::request(&settings.service, &batch);
        let spans = batch.len();
        batch.clear();
        since = Instant::now();
        let sent = runtime.block_on(async {
            tokio::time::timeout(settings.timeout, post(&settings.endpoint, body)).await
        });
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(spans, error = %err, "tracing: export failed"),
            Err(_) => tracing::warn!(spans, "tracing: export timed out"),
        }
    }
}

/// Posts one OTLP/HTTP protobuf export.
async fn post(endpoint: &http::Uri, body: Vec<u8>) -> Result<(), String> {
    use http_body_util::{BodyExt, Full};
    let host = endpoint.host().ok_or("the endpoint has no host")?;
    let port = endpoint.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let authority = endpoint.authority().map_or(host, |a| a.as_str());
    let request = http::Request::post(endpoint.path())
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    // Read the answer through, so the receiver sees a clean exchange.
    let _ = response.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {status}"))
    }
}

/// The OTLP protobuf messages (opentelemetry-proto's `ExportTraceServiceRequest` and what it
/// holds), written field by field.
mod otlp {
    use super::{Span, Value};
    use prost::encoding::{WireType, encode_key, encode_varint};

    fn bytes(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(value.len() as u64, out);
        out.extend_from_slice(value);
    }

    fn varint(out: &mut Vec<u8>, tag: u32, value: u64) {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }

    fn fixed64(out: &mut Vec<u8>, tag: u32, value: u64) {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.extend_from_slice(&value.to_le_bytes());
    }

    /// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string_value = 1; int_value = 3 }`.
    fn key_value(out: &mut Vec<u8>, tag: u32, key: &str, value: &Value) {
        let mut any = Vec::new();
        match value {
            Value::Str(s) => bytes(&mut any, 1, s.as_bytes()),
            Value::Int(i) => varint(&mut any, 3, *i as u64),
        }
        let mut kv = Vec::new();
        bytes(&mut kv, 1, key.as_bytes());
        bytes(&mut kv, 2, &any);
        bytes(out, tag, &kv);
    }

    fn span(out: &mut Vec<u8>, span: &Span) {
        let mut s = Vec::with_capacity(128);
        bytes(&mut s, 1, &span.trace_id);
        bytes(&mut s, 2, &span.span_id);
        if let Some(parent) = &span.parent {
            bytes(&mut s, 4, parent);
        }
        bytes(&mut s, 5, span.name.as_bytes());
        varint(&mut s, 6, span.kind as u64);
        fixed64(&mut s, 7, span.start);
        fixed64(&mut s, 8, span.end);
        for (key, value) in &span.attributes {
            key_value(&mut s, 9, key, value);
        }
        // Status { code = 3 }: 2 is ERROR, 0 (unset) otherwise.
        if span.error {
            let mut status = Vec::new();
            varint(&mut status, 3, 2);
            bytes(&mut s, 15, &status);
        }
        bytes(out, 2, &s);
    }

    /// One `ExportTraceServiceRequest` of `spans` (each tagged with its trace).
    pub(super) fn request(service: &str, spans: &[Span]) -> Vec<u8> {
        let mut resource = Vec::new();
        key_value(
            &mut resource,
            1,
            "service.name",
            &Value::Str(service.to_owned()),
        );
        let mut scope = Vec::new();
        bytes(&mut scope, 1, b"portico");
        bytes(&mut scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
        let mut scope_spans = Vec::new();
        bytes(&mut scope_spans, 1, &scope);
        for s in spans {
            span(&mut scope_spans, s);
        }
        let mut resource_spans = Vec::new();
        bytes(&mut resource_spans, 1, &resource);
        bytes(&mut resource_spans, 2, &scope_spans);
        let mut out = Vec::new();
        bytes(&mut out, 1, &resource_spans);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip_and_bad_ones_are_refused() {
        let text = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(text).unwrap();
        assert!(ctx.sampled);
        assert_eq!(ctx.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.header(ctx.span_id).as_bytes(), text);
        for bad in [
            &b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            b"",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad:?}");
        }
        let unsampled =
            TraceContext::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!unsampled.unwrap().sampled);
    }
}
