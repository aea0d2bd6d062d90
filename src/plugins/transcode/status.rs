//! gRPC statuses: from trailers, to HTTP statuses and `google.rpc.Status` JSON.

use http::{HeaderMap, StatusCode};

/// A call's `grpc-status` and `grpc-message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) code: u32,
    pub(crate) message: String,
}

impl Status {
    /// A call that ended without a status: INTERNAL, as gRPC clients treat it.
    pub(crate) fn missing() -> Self {
        Status {
            code: 13,
            message: "the upstream sent no grpc-status".to_owned(),
        }
    }

    /// The `google.rpc.Status` JSON of it.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code, "message": self.message, "details": [] })
    }
}

/// The status in a head (a trailers-only answer), if any.
pub(crate) fn from_headers(headers: &HeaderMap) -> Option<Status> {
    let code = headers.get("grpc-status")?;
    Some(Status {
        code: parse_code(code.as_bytes()),
        message: headers
            .get("grpc-message")
            .map(|m| percent_decode(m.as_bytes()))
            .unwrap_or_default(),
    })
}

/// The status in a trailer block (`name:value\r\n` lines).
pub(crate) fn from_block(block: &[u8]) -> Status {
    let mut status = Status::missing();
    let mut seen = false;
    for line in block.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"grpc-status") {
            status.code = parse_code(value);
            seen = true;
        } else if name.eq_ignore_ascii_case(b"grpc-message") {
            status.message = percent_decode(value);
        }
    }
    if seen && status.message == Status::missing().message {
        status.message.clear();
    }
    status
}

fn parse_code(value: &[u8]) -> u32 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(2)
}

/// `grpc-message` is percent-encoded UTF-8.
fn percent_decode(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    super::template::decode(&text, true).unwrap_or_else(|| text.into_owned())
}

/// The HTTP status for a non-zero gRPC code (the mapping of `google.rpc.Code`).
pub(crate) fn http_status(code: u32) -> StatusCode {
    match code {
        0 => StatusCode::OK,
        1 => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST), // CANCELLED
        3 | 9 | 11 => StatusCode::BAD_REQUEST, // INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE
        4 => StatusCode::GATEWAY_TIMEOUT,      // DEADLINE_EXCEEDED
        5 => StatusCode::NOT_FOUND,            // NOT_FOUND
        6 | 10 => StatusCode::CONFLICT,        // ALREADY_EXISTS, ABORTED
        7 => StatusCode::FORBIDDEN,            // PERMISSION_DENIED
        8 => StatusCode::TOO_MANY_REQUESTS,    // RESOURCE_EXHAUSTED
        12 => StatusCode::NOT_IMPLEMENTED,     // UNIMPLEMENTED
        14 => StatusCode::SERVICE_UNAVAILABLE, // UNAVAILABLE
        16 => StatusCode::UNAUTHORIZED,        // UNAUTHENTICATED
        _ => StatusCode::INTERNAL_SERVER_ERROR, // UNKNOWN, INTERNAL, DATA_LOSS, and others
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_block() {
        let table = [
            (5, 404),
            (3, 400),
            (16, 401),
            (7, 403),
            (14, 503),
            (4, 504),
            (8, 429),
            (12, 501),
            (13, 500),
            (2, 500),
            (6, 409),
            (1, 499),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "code {code}");
        }
        let s = from_block(b"grpc-status:5\r\ngrpc-message:no%20such%20book\r\n");
        assert_eq!(
            s,
            Status {
                code: 5,
                message: "no such book".into()
            }
        );
        assert_eq!(from_block(b"").code, 13);
    }
}
