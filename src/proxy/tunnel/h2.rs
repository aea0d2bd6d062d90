//! WebSocket over HTTP/2 (RFC 8441): an extended CONNECT with `:protocol: websocket` is
//! routed like a GET of its path and bridged to an HTTP/1.1 upgrade upstream, with a fresh
//! `Sec-WebSocket-Key` whose answer is checked. The frames are the same both ways.

use base64::Engine;
use http::{HeaderValue, Method, Version, header};

use crate::proxy::headers::HopInfo;

/// The `Sec-WebSocket-Accept` the upstream must answer with, kept with the request.
#[derive(Debug, Clone)]
pub(crate) struct H2WebSocket {
    pub(crate) accept: HeaderValue,
}

/// The GUID of RFC 6455 §1.3.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether the request is an extended CONNECT for WebSocket; if so it becomes a GET of its
/// path, for routing and plugins.
pub(crate) fn accept(head: &mut http::request::Parts) -> bool {
    if head.method != Method::CONNECT || head.version != Version::HTTP_2 {
        return false;
    }
    let websocket = head
        .extensions
        .get::<hyper::ext::Protocol>()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    if websocket {
        head.method = Method::GET;
        head.extensions.remove::<hyper::ext::Protocol>();
    }
    websocket
}

/// Adds the HTTP/1.1 upgrade fields the upstream needs (after the hop-by-hop fields of the
/// client were stripped).
pub(crate) fn to_upgrade(head: &mut http::request::Parts, hop: &mut HopInfo) {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&crate::random::random_u64().to_le_bytes());
    nonce[8..].copy_from_slice(&crate::random::random_u64().to_le_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let headers = &mut head.headers;
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&key) {
        headers.insert(header::SEC_WEBSOCKET_KEY, value);
    }
    headers
        .entry(header::SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
    hop.connection_upgrade = true;
    head.extensions.insert(H2WebSocket {
        accept: accept_for(&key),
    });
}

/// The `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub(crate) fn accept_for(key: &str) -> HeaderValue {
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(GUID.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    let value = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_accept_value_is_rfc_6455s() {
        // RFC 6455 §1.3's example.
        assert_eq!(
            super::accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
