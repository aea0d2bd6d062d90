//! Every way a request can fail inside portico, with the status and JSON body it gets.
//!
//! Errors surface here and only here: the pipeline returns a [`ProxyError`] and
//! [`ProxyError::into_response`] writes `{"error", "message", "request_id"}`.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::Body;

/// The most header lines an HTTP/1 request may carry; more is [`ProxyError::TooManyHeaders`].
pub(crate) const MAX_HEADER_FIELDS: usize = 100;

/// Every `error` code portico's JSON answers carry, with its status: the proxy's own
/// ([`ProxyError::code`]), the plugins', the early answers written on the raw socket, and the
/// admin API's. docs/config.md's errors table lists each one; a test checks that table and that
/// every code the sources pass to a JSON answer builder is here with the same status.
pub(crate) const ERROR_CODES: &[(&str, u16)] = &[
    ("bad_request", 400),
    ("invalid_config", 400),
    ("plain_http_on_https", 400),
    ("request_invalid", 400),
    ("login_invalid", 400),
    ("unauthorized", 401),
    ("login_failed", 401),
    ("forbidden", 403),
    ("cors_forbidden", 403),
    ("login_denied", 403),
    ("writes_refused", 403),
    ("no_route", 404),
    ("not_found", 404),
    ("method_not_allowed", 405),
    ("in_use", 409),
    ("not_applied", 409),
    ("precondition_failed", 412),
    ("payload_too_large", 413),
    ("uri_too_long", 414),
    ("rate_limited", 429),
    ("host_not_allowed", 403),
    ("rate_limit_unavailable", 503),
    ("cluster_unavailable", 503),
    ("quota_exceeded", 429),
    ("range_not_satisfiable", 416),
    ("headers_too_large", 431),
    ("internal", 500),
    ("upstream_connect_failed", 502),
    ("upstream_failed", 502),
    ("upstream_response_too_large", 502),
    ("aggregate_failed", 502),
    ("upstream_response_invalid", 502),
    ("no_healthy_target", 503),
    ("circuit_open", 503),
    ("overloaded", 503),
    ("auth_unavailable", 503),
    ("upstream_timeout", 504),
    ("aggregate_timeout", 504),
];

/// Whether `code` is in [`ERROR_CODES`] with `status`.
pub(crate) fn is_listed(status: StatusCode, code: &str) -> bool {
    ERROR_CODES
        .iter()
        .any(|(c, s)| *c == code && *s == status.as_u16())
}

/// A failed request, as the client will see it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// No route matched the request.
    #[error("no route matched the request")]
    NoRoute,
    /// The request is malformed or ambiguous.
    #[error("{0}")]
    BadRequest(&'static str),
    /// The head had both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.1).
    #[error("the request has both Content-Length and Transfer-Encoding")]
    AmbiguousFraming,
    /// The request target is longer than the listener allows.
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request head is larger than the listener allows.
    #[error("the request headers are larger than {limit} bytes")]
    HeadersTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request has more header fields than [`MAX_HEADER_FIELDS`].
    #[error("the request has more than {limit} header fields")]
    TooManyHeaders {
        /// The limit.
        limit: usize,
    },
    /// The method is not served by a proxy (CONNECT).
    #[error("method {0} is not allowed")]
    MethodNotAllowed(http::Method),
    /// Every target of the upstream is unavailable (or it has none).
    #[error("upstream `{upstream}` has no available target")]
    NoTarget {
        /// The upstream's name.
        upstream: String,
    },
    /// The upstream's circuit breaker is open (too many requests or connections).
    #[error("upstream `{upstream}` is at its {limit} limit")]
    CircuitOpen {
        /// The upstream's name.
        upstream: String,
        /// Which limit: `max_requests` or `max_connections`.
        limit: &'static str,
    },
    /// The client address is over its listener's `limits.requests_per_ip`.
    #[error("too many requests from this address; see Retry-After")]
    ClientRateLimited {
        /// Seconds until the next request is allowed.
        retry_after: u64,
    },
    /// The listener is at its `overload` limit and the wait for a place ran out.
    #[error("the listener is overloaded ({limit} requests in flight); retry later")]
    Overloaded {
        /// The limit in force.
        limit: usize,
    },
    /// The TCP connection to the target could not be made.
    #[error("connecting to upstream `{upstream}` target {target} failed")]
    Connect {
        /// The upstream's name.
        upstream: String,
        /// The target address.
        target: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection to the target timed out.
    #[error("connecting to upstream `{upstream}` target {target} timed out")]
    ConnectTimeout {
        /// The upstream's name.
        upstream: String,
        /// The target address.
        target: SocketAddr,
    },
    /// The HTTP exchange with the target failed.
    #[error("upstream `{upstream}` failed to answer")]
    Upstream {
        /// The upstream's name.
        upstream: String,
        /// The cause.
        #[source]
        source: crate::body::BodyError,
    },
    /// The upstream switched to a protocol the client did not ask for.
    #[error("upstream `{upstream}` switched to a protocol the client did not ask for")]
    BadUpgrade {
        /// The upstream's name.
        upstream: String,
    },
    /// The request body is larger than the route allows.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// A response body that a plugin needs whole is larger than it may buffer.
    #[error("the upstream's response is larger than {limit} bytes")]
    ResponseTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// A retry was wanted, but the upstream's retry budget was spent; the failure of the last
    /// try stands.
    #[error("{0}; not retried: the upstream's retry budget is spent")]
    BudgetSpent(Box<ProxyError>),
    /// The upstream's response body broke off while portico was reading it whole.
    #[error("the upstream's response broke off")]
    BrokenResponse,
    /// The request body from the client was broken (bad chunking, early close).
    #[error("the request body could not be read")]
    ClientBody,
    /// The target did not answer within the route's timeout.
    #[error("upstream `{upstream}` did not answer within {}ms", timeout.as_micros().div_ceil(1000))]
    Timeout {
        /// The upstream's name.
        upstream: String,
        /// The timeout that fired.
        timeout: std::time::Duration,
    },
    /// A call of an aggregate failed (its upstream's error, status or answer); the message
    /// names the call, never its target.
    #[error("aggregate call `{call}` failed: {reason}")]
    AggregateFailed {
        /// The call's name.
        call: std::sync::Arc<str>,
        /// What went wrong, in words that name no address.
        reason: String,
    },
    /// A call of an aggregate did not finish in time.
    #[error("aggregate call `{call}` did not finish in time")]
    AggregateTimeout {
        /// The call's name.
        call: std::sync::Arc<str>,
    },
}

impl ProxyError {
    /// The status code the client receives.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::BudgetSpent(inner) => inner.status(),
            ProxyError::ResponseTooLarge { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) | ProxyError::ClientBody | ProxyError::AmbiguousFraming => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge { .. } | ProxyError::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoTarget { .. }
            | ProxyError::CircuitOpen { .. }
            | ProxyError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ClientRateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::BadUpgrade { .. }
            | ProxyError::BrokenResponse => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout { .. } | ProxyError::Timeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::AggregateFailed { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::AggregateTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The stable machine-readable code in the JSON body.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ProxyError::BudgetSpent(inner) => inner.code(),
            ProxyError::ResponseTooLarge { .. } => "upstream_response_too_large",
            ProxyError::NoRoute => "no_route",
            ProxyError::BadRequest(_) | ProxyError::ClientBody | ProxyError::AmbiguousFraming => {
                "bad_request"
            }
            ProxyError::UriTooLong { .. } => "uri_too_long",
            ProxyError::PayloadTooLarge { .. } => "payload_too_large",
            ProxyError::HeadersTooLarge { .. } | ProxyError::TooManyHeaders { .. } => {
                "headers_too_large"
            }
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::NoTarget { .. } => "no_healthy_target",
            ProxyError::CircuitOpen { .. } => "circuit_open",
            ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::ClientRateLimited { .. } => "rate_limited",
            ProxyError::Connect { .. } => "upstream_connect_failed",
            ProxyError::Upstream { .. }
            | ProxyError::BadUpgrade { .. }
            | ProxyError::BrokenResponse => "upstream_failed",
            ProxyError::ConnectTimeout { .. } | ProxyError::Timeout { .. } => "upstream_timeout",
            ProxyError::AggregateFailed { .. } => "aggregate_failed",
            ProxyError::AggregateTimeout { .. } => "aggregate_timeout",
        }
    }

    /// Whether the connection must close after this answer, because what follows on it can
    /// no longer be framed with confidence.
    pub(crate) fn closes_connection(&self) -> bool {
        // After any malformed request, as nginx does: what follows may be misframed.
        matches!(
            self.status(),
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE
        )
    }

    /// The JSON error response.
    pub(crate) fn to_response(&self, request_id: &HeaderValue) -> Response<Body> {
        let mut response =
            error_response(self.status(), self.code(), &self.to_string(), request_id);
        let retry_after = match self {
            ProxyError::ClientRateLimited { retry_after } => Some(*retry_after),
            // A place opens within moments; a second is the shortest the field says.
            ProxyError::Overloaded { .. } => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// What marks an answer as portico's own error (JSON here; a gRPC status for gRPC calls):
/// its code and message, kept in the response's extensions.
#[derive(Debug, Clone)]
pub(crate) struct OwnError {
    /// The `error` code of the JSON body.
    pub(crate) code: &'static str,
    /// The message of the JSON body.
    pub(crate) message: Box<str>,
}

/// A JSON error response in portico's format.
pub(crate) fn error_response(
    status: StatusCode,
    code: &'static str,
    message: &str,
    request_id: &HeaderValue,
) -> Response<Body> {
    debug_assert!(
        is_listed(status, code),
        "`{code}` ({status}) is not in ERROR_CODES"
    );
    let body = serde_json::json!({
        "error": code,
        "message": message,
        "request_id": request_id.to_str().unwrap_or_default(),
    });
    let mut response = Response::new(Body::full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response.extensions_mut().insert(OwnError {
        code,
        message: message.into(),
    });
    response
}

#[cfg(test)]
mod tests;
