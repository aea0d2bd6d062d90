//! The `static` action: files under a root folder, answered with validators, preconditions,
//! ranges and precompressed siblings (RFC 9110 §8.8, §13, §14).
//!
//! The path is the canonical one (routing/path.rs) and is decoded once here; a client path
//! that held an encoded or raw separator (`%2F`, `%5C`, `\`) is refused outright, as is a
//! decoded segment with a NUL, a separator or a dot-segment. Paths without links are opened
//! on the worker with `openat2` beneath the root (`beneath.rs`); the rest, and listings, are
//! looked up on the blocking pool (`lookup.rs`). File contents are read without blocking the
//! worker (`body.rs`): from the page cache at once, else on the blocking pool.

mod beneath;
mod body;
mod lookup;
mod mime;
pub(crate) mod rules;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use crate::body::Body;
use crate::error::{ProxyError, error_response};
use crate::runtime::static_files::StaticSite;

use body::{FileBody, Piece};
use lookup::{Found, Lookup};
use rules::{Conditions, Precondition, Ranges};

/// Why a path is refused before lookup (400).
const SEPARATOR: ProxyError = ProxyError::BadRequest(
    "the request path contains an encoded or raw separator, which static files refuse",
);

/// Answers a request on a `static` route. `raw` is the client's own target when it was not
/// canonical.
pub(crate) async fn serve(
    site: &Arc<StaticSite>,
    head: &http::request::Parts,
    raw: Option<&http::Uri>,
    request_id: &HeaderValue,
) -> Result<Response<Body>, ProxyError> {
    let is_head = head.method == Method::HEAD;
    if head.method != Method::GET && !is_head {
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("method {} is not allowed on static files", head.method),
            request_id,
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(response);
    }
    if raw.is_some_and(|raw| has_separator(raw.path().as_bytes())) {
        return Err(SEPARATOR);
    }
    let path = head.uri.path();
    let rest = match &site.strip_prefix {
        None => path,
        Some(prefix) => match path.strip_prefix(prefix.as_str()) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => return Ok(not_found(request_id)),
        },
    };
    let slash = rest.ends_with('/');
    let mut segments = Vec::new();
    for segment in rest.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_decode(segment.as_bytes());
        if decoded.is_empty()
            || decoded == b"."
            || decoded == b".."
            || decoded.iter().any(|b| matches!(b, 0 | b'/' | b'\\'))
        {
            return Err(SEPARATOR);
        }
        if decoded[0] == b'.' && !site.dotfiles {
            return Ok(not_found(request_id));
        }
        segments.push(decoded);
    }
    let h = &head.headers;
    let text = |name: header::HeaderName| h.get(name).and_then(|v| v.to_str().ok());
    let accepted = rules::accepted(text(header::ACCEPT_ENCODING), &site.precompressed);
    let fallback = site.fallback.is_some()
        && (text(header::ACCEPT).is_some_and(|a| a.contains("text/html"))
            || segments.last().is_none_or(|s| !s[1..].contains(&b'.')));
    let found = match beneath::lookup(site, &segments, slash, &accepted, fallback) {
        Some(found) => found,
        None => {
            let site = Arc::clone(site);
            let shown = path.to_owned();
            let slow = tokio::task::spawn_blocking(move || {
                lookup::lookup(&site, &segments, slash, &shown, &accepted, fallback)
            })
            .await;
            let Ok(found) = slow else {
                // The lookup task panicked or was cancelled at shutdown.
                return Ok(error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the file could not be looked up",
                    request_id,
                ));
            };
            found
        }
    };
    let found = match found {
        Lookup::File(found) => found,
        Lookup::Slash => {
            let target = match head.uri.query() {
                Some(q) => format!("{path}/?{q}"),
                None => format!("{path}/"),
            };
            let location = HeaderValue::from_str(&target)
                .map_err(|_| ProxyError::BadRequest("the request target is invalid"))?;
            let mut response = Response::new(Body::Empty);
            *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
            response.headers_mut().insert(header::LOCATION, location);
            return Ok(response);
        }
        Lookup::Listing(html) => {
            let len = html.len();
            let mut response = Response::new(if is_head {
                Body::Empty
            } else {
                Body::full(html)
            });
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            return Ok(response);
        }
        Lookup::Missing | Lookup::Refused => return Ok(not_found(request_id)),
    };
    let conditions = Conditions {
        if_match: text(header::IF_MATCH),
        if_unmodified_since: text(header::IF_UNMODIFIED_SINCE),
        if_none_match: text(header::IF_NONE_MATCH),
        if_modified_since: text(header::IF_MODIFIED_SINCE),
    };
    let range = (head.method == Method::GET)
        .then(|| text(header::RANGE))
        .flatten()
        .map(|r| (r, text(header::IF_RANGE)));
    Ok(answer(site, found, &conditions, range, is_head, request_id))
}

/// Whether a raw path holds `%2F`, `%5C` (either case) or `\`.
fn has_separator(path: &[u8]) -> bool {
    path.contains(&b'\\')
        || path.windows(3).any(|w| {
            w[0] == b'%' && w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f')
                || w[0] == b'%' && w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c')
        })
}

/// Decodes `%XX` escapes (the canonical path has only valid ones).
fn percent_decode(segment: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(segment.len());
    let mut i = 0;
    while i < segment.len() {
        if segment[i] == b'%'
            && i + 2 < segment.len()
            && let (Some(h), Some(l)) = (hex(segment[i + 1]), hex(segment[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(segment[i]);
            i += 1;
        }
    }
    out
}

/// 404 `not_found`.
fn not_found(request_id: &HeaderValue) -> Response<Body> {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no file at this path",
        request_id,
    )
}

/// The strong entity tag of a file: its size, modification time and inode, and the
/// encoding of a precompressed sibling.
fn etag(found: &Found) -> String {
    let m = &found.meta;
    let suffix = found.encoding.map_or("", |e| e.token());
    let sep = if suffix.is_empty() { "" } else { "-" };
    format!(
        "\"{:x}-{:x}.{:x}-{:x}{sep}{suffix}\"",
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino()
    )
}

/// The answer for a file found: preconditions, then the range, then the body.
fn answer(
    site: &StaticSite,
    found: Found,
    conditions: &Conditions<'_>,
    range: Option<(&str, Option<&str>)>,
    is_head: bool,
    request_id: &HeaderValue,
) -> Response<Body> {
    let len = found.meta.len();
    // Never later than now (RFC 9110 §8.8.2.1): a file stamped in the future is as new as
    // the answer.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let modified = u64::try_from(found.meta.mtime()).unwrap_or(0).min(now);
    let tag = etag(&found);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&tag) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&rules::http_date(modified)) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    if let Some(cc) = &site.cache_control {
        headers.insert(header::CACHE_CONTROL, cc.clone());
    }
    if !site.precompressed.is_empty() {
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    match rules::evaluate(conditions, &tag, modified) {
        Precondition::Pass => {}
        Precondition::NotModified => {
            let mut response = Response::new(Body::Empty);
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            *response.headers_mut() = headers;
            return response;
        }
        Precondition::Failed => {
            let mut response = error_response(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "a precondition of the request does not hold for the file",
                request_id,
            );
            response.headers_mut().extend(headers);
            return response;
        }
    }
    let content_type = mime::content_type(site, &found.name);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(enc) = found.encoding {
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(enc.token()),
        );
    }
    let parts = match range {
        Some((value, if_range)) if if_range.is_none_or(|v| rules::if_range(v, &tag, modified)) => {
            rules::ranges(value, len)
        }
        _ => Ranges::Whole,
    };
    let (status, pieces) = match parts {
        Ranges::Whole => {
            headers.insert(header::CONTENT_TYPE, content_type);
            (StatusCode::OK, vec![Piece::Span { offset: 0, len }])
        }
        Ranges::Unsatisfiable => {
            let mut response = error_response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                "none of the requested ranges overlaps the file",
                request_id,
            );
            headers.remove(header::CONTENT_ENCODING);
            response.headers_mut().extend(headers);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return response;
        }
        Ranges::Parts(list) if list.len() == 1 => {
            let (first, last) = list[0];
            headers.insert(header::CONTENT_TYPE, content_type);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (
                StatusCode::PARTIAL_CONTENT,
                vec![Piece::Span {
                    offset: first,
                    len: last - first + 1,
                }],
            )
        }
        Ranges::Parts(list) => {
            let boundary = format!(
                "{:016x}{:016x}",
                crate::random::random_u64(),
                crate::random::random_u64()
            );
            let ct = content_type.to_str().unwrap_or("application/octet-stream");
            let mut pieces = Vec::with_capacity(list.len() * 2 + 1);
            for (first, last) in list {
                pieces.push(Piece::Bytes(Bytes::from(format!(
                    "\r\n--{boundary}\r\nContent-Type: {ct}\r\nContent-Range: bytes {first}-{last}/{len}\r\n\r\n"
                ))));
                pieces.push(Piece::Span {
                    offset: first,
                    len: last - first + 1,
                });
            }
            pieces.push(Piece::Bytes(Bytes::from(format!("\r\n--{boundary}--\r\n"))));
            if let Ok(v) =
                HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}"))
            {
                headers.insert(header::CONTENT_TYPE, v);
            }
            (StatusCode::PARTIAL_CONTENT, pieces)
        }
    };
    let body = FileBody::new(found.file, pieces);
    let length = http_body::Body::size_hint(&body).exact().unwrap_or(len);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    let body = if is_head || length == 0 {
        Body::Empty
    } else if status == StatusCode::OK
        && let Some(data) = body.read_small()
    {
        Body::full(data)
    } else {
        Body::local(body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
