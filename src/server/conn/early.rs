//! hyper's own answers to requests it cannot parse, rewritten into portico's.
//!
//! hyper refuses some HTTP/1.1 heads before portico's service sees them (a bad request
//! line, bad header bytes, obs-fold, a broken `Content-Length`, more header lines than its
//! cap, a head past its read buffer) and writes a bodiless answer of its own:
//!
//! ```text
//! HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: <IMF-fixdate>\r\n\r\n
//! ```
//!
//! with 400, 431 or 414, then closes the connection. [`recognise`] tells those exact bytes
//! apart and [`answer`] builds portico's JSON answer in their place. When that may happen
//! without ever touching a response of the service is decided in `IdleIo` (see
//! [`super::IdleIo`]).

use http::StatusCode;

/// The statuses hyper answers with by itself, and the JSON error codes they become.
const CANNED: [(StatusCode, &[u8], &str, &str); 3] = [
    (
        StatusCode::BAD_REQUEST,
        b"400 Bad Request",
        "bad_request",
        "the request head could not be parsed",
    ),
    (
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        b"431 Request Header Fields Too Large",
        "headers_too_large",
        "the request head is larger than portico reads, or has too many header lines",
    ),
    (
        StatusCode::URI_TOO_LONG,
        b"414 URI Too Long",
        "uri_too_long",
        "the request target is longer than 65534 bytes",
    ),
];

/// The longest canned answer hyper writes, in bytes.
pub(super) const LONGEST: usize = 128;

/// Length of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7).
const DATE_LEN: usize = 29;

/// Which canned answer `bytes` is, exactly and entirely, with its `date` value.
pub(super) fn recognise(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let rest = bytes.strip_prefix(b"HTTP/1.1 ")?;
    let (which, rest) = CANNED.iter().enumerate().find_map(|(i, (_, line, ..))| {
        Some((i, rest.strip_prefix(*line)?.strip_prefix(b"\r\n")?))
    })?;
    let rest = rest.strip_prefix(b"connection: close\r\ncontent-length: 0\r\ndate: ")?;
    let (date, rest) = rest.split_at_checked(DATE_LEN)?;
    if rest != b"\r\n\r\n"
        || !date.ends_with(b" GMT")
        || !date.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
    {
        return None;
    }
    Some((which, date))
}

/// portico's answer in place of canned answer `which`: same status and `date`, a JSON body,
/// a fresh `x-request-id`, and `connection: close` (hyper closes after it, as before).
pub(super) fn answer(which: usize, date: &[u8]) -> (StatusCode, Vec<u8>) {
    let (status, line, code, message) = CANNED[which];
    (status, json_answer(line, code, message, Some(date)))
}

/// portico's JSON error answer as raw HTTP/1.1 bytes, for answers written on the socket
/// before hyper (or TLS) takes the connection: `line` is the status line's code and reason, a
/// fresh `x-request-id`, `connection: close`.
pub(in crate::server) fn json_answer(
    line: &[u8],
    code: &str,
    message: &str,
    date: Option<&[u8]>,
) -> Vec<u8> {
    debug_assert!(
        std::str::from_utf8(&line[..line.len().min(3)])
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .is_some_and(|s| crate::error::is_listed(s, code)),
        "`{code}` is not in ERROR_CODES with this status"
    );
    let id = crate::proxy::headers::new_request_id();
    let id = id.to_str().unwrap_or_default();
    let body =
        serde_json::json!({ "error": code, "message": message, "request_id": id }).to_string();
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\nx-request-id: ");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    if let Some(date) = date {
        out.extend_from_slice(b"\r\ndate: ");
        out.extend_from_slice(date);
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Tue, 01 Dec 2026 21:08:35 GMT";

    fn canned(line: &str) -> String {
        format!("HTTP/1.1 {line}\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n")
    }

    #[test]
    fn recognises_exactly_hypers_answers() {
        for (i, line) in [
            "400 Bad Request",
            "431 Request Header Fields Too Large",
            "414 URI Too Long",
        ]
        .into_iter()
        .enumerate()
        {
            let bytes = canned(line);
            assert!(bytes.len() <= LONGEST);
            assert_eq!(
                recognise(bytes.as_bytes()),
                Some((i, DATE.as_bytes())),
                "{line}"
            );
            // Anything more, less or different is not hyper's answer.
            assert_eq!(recognise(&bytes.as_bytes()[..bytes.len() - 1]), None);
            assert_eq!(recognise(format!("{bytes}x").as_bytes()), None);
        }
        for other in [
            canned("404 Not Found"),
            canned("400 Bad Request").replace("connection: close\r\n", ""),
            canned("400 Bad Request").replace("content-length: 0", "content-length: 1"),
            canned("400 Bad Request").replace("\r\n\r\n", "\r\nx-request-id: a\r\n\r\n"),
            canned("400 Bad Request").replace("HTTP/1.1", "HTTP/1.0"),
            canned("400 Bad Request").replace(" GMT", " UTC"),
        ] {
            assert_eq!(recognise(other.as_bytes()), None, "{other:?}");
        }
    }

    #[test]
    fn answers_in_json_with_a_request_id() {
        let (status, bytes) = answer(1, DATE.as_bytes());
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\ncontent-type: application/json\r\n"));
        assert!(head.contains("\r\nconnection: close\r\n"));
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        assert!(head.ends_with(&format!("\r\ndate: {DATE}")));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "headers_too_large");
        let id = json["request_id"].as_str().unwrap();
        assert_eq!(id.len(), 32);
        assert!(head.contains(&format!("\r\nx-request-id: {id}\r\n")));
    }
}
