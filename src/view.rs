//! The request as routing, balancing and `explain` look at it: one borrowed view, made once
//! per request, with the path and host already in their canonical forms, and the readers of
//! its cookie and query. A leaf.

use std::net::IpAddr;

use http::{HeaderMap, Method};

/// The parts of a request that decide where it goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestView<'a> {
    /// The downstream client's address (for `ip_hash` and `hash_key: client_ip`).
    pub(crate) client: IpAddr,
    /// Lower-case host without port or trailing dot; empty when the request had none.
    pub(crate) host: &'a str,
    /// Canonical path (see `routing::path::normalize`).
    pub(crate) path: &'a str,
    /// Raw query string, without `?`.
    pub(crate) query: Option<&'a str>,
    /// Request method.
    pub(crate) method: &'a Method,
    /// Request headers.
    pub(crate) headers: &'a HeaderMap,
}

impl RequestView<'static> {
    /// A relayed connection's or datagram flow's view, for balancing: its client address
    /// and nothing else (no host, path or headers to hash).
    pub(crate) fn connection(client: IpAddr) -> Self {
        static NO_HEADERS: std::sync::LazyLock<HeaderMap> =
            std::sync::LazyLock::new(HeaderMap::new);
        RequestView {
            client,
            host: "",
            path: "/",
            query: None,
            method: &Method::GET,
            headers: &NO_HEADERS,
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` fields (RFC 6265 §5.4).
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Decoded `key=value` pairs of a query string (`+` is a space, as in forms; text that is
/// not UTF-8 is replaced, a `%` without two hex digits kept).
pub(crate) fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}
