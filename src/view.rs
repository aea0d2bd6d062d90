//! The request as routing, balancing and `explain` look at it: one borrowed view, made once
//! per request, with the path and host already in their canonical forms. A leaf.

use std::net::IpAddr;

use http::{HeaderMap, Method};

/// The parts of a request that decide where it goes.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The downstream client's address (for `ip_hash` and `hash_key: client_ip`).
    pub client: IpAddr,
    /// Lower-case host without port or trailing dot; empty when the request had none.
    pub host: &'a str,
    /// Canonical path (see `routing::path::normalize`).
    pub path: &'a str,
    /// Raw query string, without `?`.
    pub query: Option<&'a str>,
    /// Request method.
    pub method: &'a Method,
    /// Request headers.
    pub headers: &'a HeaderMap,
}
