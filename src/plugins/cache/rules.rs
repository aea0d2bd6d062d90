//! RFC 9111 rules: `Cache-Control` directives, freshness and age, and conditional requests.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode, header};

/// The `Cache-Control` directives portico acts on, of a request or a response.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Directives {
    /// `no-store`.
    pub(crate) no_store: bool,
    /// `no-cache` (with or without field names: both mean revalidate every time).
    pub(crate) no_cache: bool,
    /// `private` (with or without field names: never stored by a shared cache).
    pub(crate) private: bool,
    /// `public`.
    pub(crate) public: bool,
    /// `must-revalidate` or `proxy-revalidate`: never served stale.
    pub(crate) must_revalidate: bool,
    /// `max-age`.
    pub(crate) max_age: Option<u64>,
    /// `s-maxage`.
    pub(crate) s_maxage: Option<u64>,
    /// `min-fresh` (requests).
    pub(crate) min_fresh: Option<u64>,
    /// `stale-while-revalidate` (RFC 5861).
    pub(crate) stale_while_revalidate: Option<u64>,
    /// `stale-if-error` (RFC 5861).
    pub(crate) stale_if_error: Option<u64>,
}

/// Largest delta-seconds kept (RFC 9111 §1.2.2: 2^31).
const MAX_DELTA: u64 = 1 << 31;

impl Directives {
    /// Every `Cache-Control` field of `headers`, directive names case-insensitively.
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut out = Directives::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else {
                // Not visible ASCII: the strictest reading.
                out.no_store = true;
                continue;
            };
            for item in split_list(text) {
                let (name, arg) = match item.split_once('=') {
                    Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
                    None => (item.trim(), None),
                };
                let seconds = || arg.map(delta_seconds);
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => out.no_store = true,
                    "no-cache" => out.no_cache = true,
                    "private" => out.private = true,
                    "public" => out.public = true,
                    "must-revalidate" | "proxy-revalidate" => out.must_revalidate = true,
                    // A malformed age is taken as 0 (stale), never as absent.
                    "max-age" => out.max_age = Some(seconds().unwrap_or(0)),
                    "s-maxage" => out.s_maxage = Some(seconds().unwrap_or(0)),
                    "min-fresh" => out.min_fresh = seconds(),
                    "stale-while-revalidate" => out.stale_while_revalidate = seconds(),
                    "stale-if-error" => out.stale_if_error = seconds(),
                    _ => {}
                }
            }
        }
        out
    }
}

/// Splits a comma-separated list, keeping commas inside quoted strings.
fn split_list(text: &str) -> impl Iterator<Item = &str> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (at, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items.into_iter().filter(|item| !item.trim().is_empty())
}

/// Delta-seconds (RFC 9111 §1.2.2): digits, capped at 2^31; anything else is 0.
fn delta_seconds(text: &str) -> u64 {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    text.parse::<u64>().map_or(MAX_DELTA, |n| n.min(MAX_DELTA))
}

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1).
pub(crate) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// An HTTP date field.
pub(crate) fn date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
}

/// The freshness lifetime of a response (RFC 9111 §4.2.1): `s-maxage`, else `max-age`,
/// else `Expires` − `Date`, else `heuristic` for statuses that allow it. `None`: the answer
/// says nothing and no heuristic applies.
pub(crate) fn lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    cc: &Directives,
    heuristic: Option<Duration>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return Some(Duration::from_secs(s));
    }
    if headers.contains_key(header::EXPIRES) {
        // An invalid date (`0`) means already expired.
        let Some(expires) = date(headers, header::EXPIRES) else {
            return Some(Duration::ZERO);
        };
        let origin = date(headers, header::DATE).unwrap_or(now);
        return Some(expires.duration_since(origin).unwrap_or(Duration::ZERO));
    }
    if heuristically_cacheable(status) || cc.public {
        return heuristic;
    }
    None
}

/// The age of a response as it arrives (RFC 9111 §4.2.3): the larger of its `Age` and the
/// time since its `Date`.
pub(crate) fn initial_age(headers: &HeaderMap, now: SystemTime) -> Duration {
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .map_or(0, delta_seconds);
    let apparent = date(headers, header::DATE)
        .and_then(|d| now.duration_since(d).ok())
        .unwrap_or(Duration::ZERO);
    Duration::from_secs(age).max(apparent)
}

/// Whether an entity tag of `If-None-Match` matches `etag` (weak comparison, RFC 9110
/// §13.1.2).
pub(crate) fn none_match(if_none_match: &str, etag: Option<&str>) -> bool {
    let Some(etag) = etag else { return false };
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let etag = bare(etag);
    if_none_match.trim() == "*" || split_list(if_none_match).any(|t| bare(t) == etag)
}

/// Whether the client's conditional request (`If-None-Match`, else `If-Modified-Since`) is
/// met by a stored answer with these headers: it gets 304.
pub(crate) fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let etag = stored.get(header::ETAG).and_then(|v| v.to_str().ok());
    if let Some(inm) = request.get(header::IF_NONE_MATCH) {
        return inm.to_str().is_ok_and(|inm| none_match(inm, etag));
    }
    match (
        date(request, header::IF_MODIFIED_SINCE),
        date(stored, header::LAST_MODIFIED),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}
