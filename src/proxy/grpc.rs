//! gRPC calls (`content-type: application/grpc...`) through the proxy.
//!
//! Calls are proxied like any HTTP/2 request (trailers relayed, streams both ways); what
//! differs is how portico itself answers and how long it waits:
//! - portico's own refusals and failures (no route, 401, 403, 429, no healthy target,
//!   timeouts...) are trailers-only gRPC responses — HTTP 200, `grpc-status` and
//!   `grpc-message` in the head, no body — instead of JSON, so gRPC clients see a gRPC status
//!   (see [`status_of`]);
//! - `grpc-timeout` is honoured: the call's deadline is the earlier of it and the route's
//!   `timeout`, and the upstream is sent that deadline as its `grpc-timeout`.

pub(crate) use crate::plugins::grpc_web::is_grpc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::body::{Body, Watch};
use crate::error::OwnError;
use crate::observe::metrics::GrpcLabels;
use crate::plugins::grpc_web::{Mode, TrailerStatus};

pub(crate) static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// What kind of gRPC call a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// gRPC itself.
    Grpc,
    /// gRPC-Web, binary or text.
    Web(Mode),
}

/// The gRPC call a request is, if any, by its `content-type`.
pub(crate) fn call(headers: &HeaderMap) -> Option<Call> {
    if is_grpc(headers) {
        return Some(Call::Grpc);
    }
    crate::plugins::grpc_web::mode(headers).map(Call::Web)
}

/// The `grpc-timeout` of a request: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub(crate) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A deadline as a `grpc-timeout` value, in the finest unit that fits 8 digits (rounded
/// down, never below 1 unit).
pub(crate) fn timeout_value(left: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let units: [(u128, u8); 6] = [
        (left.as_nanos(), b'n'),
        (left.as_micros(), b'u'),
        (left.as_millis(), b'm'),
        (u128::from(left.as_secs()), b'S'),
        (u128::from(left.as_secs() / 60), b'M'),
        (u128::from(left.as_secs() / 3600), b'H'),
    ];
    let (n, unit) = units
        .into_iter()
        .find(|(n, _)| *n <= MAX)
        .unwrap_or((MAX, b'H'));
    let text = format!("{}{}", n.max(1), unit as char);
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("1n"))
}

/// gRPC status codes portico answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Code {
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// The gRPC status of one of portico's own answers: by its error code where that says
/// more than the HTTP status, else by the status as gRPC maps HTTP statuses.
pub(crate) fn status_of(code: &str, status: StatusCode) -> Code {
    match code {
        "upstream_timeout" => return Code::DeadlineExceeded,
        "rate_limited" | "quota_exceeded" | "payload_too_large" => {
            return Code::ResourceExhausted;
        }
        "request_invalid" => return Code::InvalidArgument,
        "no_healthy_target"
        | "circuit_open"
        | "overloaded"
        | "upstream_connect_failed"
        | "upstream_failed" => {
            return Code::Unavailable;
        }
        _ => {}
    }
    match status.as_u16() {
        400 | 431 | 414 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 | 405 => Code::Unimplemented,
        413 | 429 => Code::ResourceExhausted,
        502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// Percent-encodes a `grpc-message`: bytes outside printable ASCII, and `%` itself.
fn message_value(message: &str) -> HeaderValue {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static(""))
}

/// For a gRPC call: one of portico's own answers as a trailers-only gRPC response (the
/// answer's other fields, such as `WWW-Authenticate`, `Retry-After` and `RateLimit-*`,
/// stay). Answers from the upstream pass as they are.
pub(crate) fn answer(response: Response<Body>, call: Call) -> Response<Body> {
    let Some(own) = response.extensions().get::<OwnError>() else {
        return response;
    };
    let status = status_of(own.code, response.status());
    let message = message_value(&own.message);
    let (mut parts, _) = response.into_parts();
    parts.status = StatusCode::OK;
    let headers = &mut parts.headers;
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(match call {
            Call::Grpc => "application/grpc",
            Call::Web(Mode::Binary) => "application/grpc-web+proto",
            Call::Web(Mode::Text) => "application/grpc-web-text+proto",
        }),
    );
    headers.insert(&GRPC_STATUS, HeaderValue::from(status as u16));
    headers.insert(&GRPC_MESSAGE, message);
    Response::from_parts(parts, Body::Empty)
}

/// What is written when a gRPC call ends: its access-log line (with `grpc_status` and the
/// whole call's duration) and its count in `portico_grpc_responses_total`.
struct CallEnd {
    tail: Option<super::access::Tail>,
    counter: Family<GrpcLabels, Counter>,
    route: Option<std::sync::Arc<str>>,
    upstream: Option<std::sync::Arc<str>>,
    /// Where a gRPC-Web answer's status goes, its trailers having become a frame.
    web_status: Option<TrailerStatus>,
    done: bool,
}

impl CallEnd {
    fn finish(&mut self, status: Option<&HeaderValue>, aborted: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let web = self.web_status.as_ref().and_then(|w| w.0.get()).cloned();
        let status = status
            .or(web.as_ref())
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        self.counter
            .get_or_create(&GrpcLabels {
                route: self.route.as_deref().unwrap_or("").to_owned(),
                upstream: self.upstream.as_deref().unwrap_or("").to_owned(),
                grpc_status: status.to_owned(),
            })
            .inc();
        if let Some(tail) = self.tail.as_mut() {
            let status = status
                .parse::<u32>()
                .map_or(serde_json::Value::Null, Into::into);
            tail.write(aborted, |fields| {
                fields.insert("grpc_status".into(), status);
            });
        }
    }
}

impl Watch for CallEnd {
    fn data(&mut self, len: usize) {
        if let Some(tail) = self.tail.as_mut() {
            tail.sent(len);
        }
    }
    fn end(mut self: Box<Self>, trailers: Option<&HeaderMap>) {
        self.finish(trailers.and_then(|t| t.get(&GRPC_STATUS)), false);
    }
}

impl Drop for CallEnd {
    /// A call whose response never ended: the client went away (or the stream broke), which
    /// gRPC calls CANCELLED.
    fn drop(&mut self) {
        self.finish(Some(&HeaderValue::from_static("1")), true);
    }
}

/// For a gRPC call: counts it and writes its access-log line (`tail`, when the log is on)
/// once it ends — now, when the answer carries its status in the head (trailers-only) or has
/// no body; else when the body's trailers pass.
pub(crate) fn watch(
    response: Response<Body>,
    shared: &crate::runtime::Shared,
    ctx: &crate::ctx::RequestCtx,
    tail: Option<super::access::Tail>,
) -> Response<Body> {
    let mut end = CallEnd {
        tail,
        counter: shared.metrics.grpc_family(),
        route: ctx.route.clone(),
        upstream: ctx.upstream.clone(),
        web_status: ctx.slots.get::<TrailerStatus>().cloned(),
        done: false,
    };
    if let Some(status) = response.headers().get(&GRPC_STATUS) {
        end.finish(Some(status), false);
        return response;
    }
    if http_body::Body::is_end_stream(response.body()) {
        end.finish(None, false);
        return response;
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.watch(Box::new(end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;x=1",
        ] {
            assert!(is_grpc(&headers(&[("content-type", yes)])), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/grpcx",
            "application/json",
            "text",
        ] {
            assert!(!is_grpc(&headers(&[("content-type", no)])), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn timeouts_parse_and_print_in_every_unit() {
        let t = |v: &str| timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("10S"), Some(Duration::from_secs(10)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10s", "-1S", "1.5S", "10"] {
            assert_eq!(t(bad), None, "{bad}");
        }
        assert_eq!(timeout_value(Duration::from_millis(250)), "250000u");
        assert_eq!(timeout_value(Duration::from_secs(30)), "30000000u");
        assert_eq!(timeout_value(Duration::from_secs(3600)), "3600000m");
        assert_eq!(
            timeout_value(Duration::from_secs(86_400 * 365)),
            "31536000S"
        );
        assert_eq!(
            timeout_value(Duration::from_secs(86_400 * 3650)),
            "5256000M"
        );
        assert_eq!(timeout_value(Duration::ZERO), "1n");
        for d in [1u64, 999, 123_456_789, 10_000_000_000] {
            let d = Duration::from_micros(d);
            let back = timeout(&headers(&[(
                "grpc-timeout",
                timeout_value(d).to_str().unwrap(),
            )]));
            assert!(
                back.unwrap() <= d && back.unwrap() >= d.mul_f64(0.99),
                "{d:?}"
            );
        }
    }

    #[test]
    fn own_errors_become_trailers_only_statuses() {
        let rid = HeaderValue::from_static("r1");
        let limited = crate::error::error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; see Retry-After",
            &rid,
        );
        let answer = answer(limited, Call::Grpc);
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()["grpc-status"], "8");
        assert_eq!(answer.headers()["content-type"], "application/grpc");
        assert_eq!(
            answer.headers()["grpc-message"],
            "too many requests; see Retry-After"
        );
        assert!(http_body::Body::is_end_stream(answer.body()));
        let cases = [
            ("upstream_timeout", 504, Code::DeadlineExceeded),
            ("no_healthy_target", 503, Code::Unavailable),
            ("unauthorized", 401, Code::Unauthenticated),
            ("forbidden", 403, Code::PermissionDenied),
            ("no_route", 404, Code::Unimplemented),
            ("quota_exceeded", 429, Code::ResourceExhausted),
            ("request_invalid", 400, Code::InvalidArgument),
            ("bad_request", 400, Code::Internal),
        ];
        for (code, status, want) in cases {
            assert_eq!(
                status_of(code, StatusCode::from_u16(status).unwrap()),
                want,
                "{code}"
            );
        }
        assert_eq!(message_value("100% ü"), "100%25 %C3%BC");
        // An upstream's answer is left alone.
        let upstream = Response::new(Body::full("x"));
        assert!(answer_is_untouched(upstream));
    }

    fn answer_is_untouched(response: Response<Body>) -> bool {
        let out = answer(response, Call::Grpc);
        out.headers().get("grpc-status").is_none() && out.status() == StatusCode::OK
    }
}
