//! Header rules for a proxy hop (RFC 9110 §7.6): hop-by-hop fields, `Via`, `X-Forwarded-*`,
//! and the request id.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `x-request-id`.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) use crate::consumer::{X_CLIENT_CERT_SAN, X_CLIENT_CERT_SUBJECT};
/// `x-forwarded-for`.
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-host`.
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Fields that describe one connection, never the message (RFC 9110 §7.6.1).
///
/// `Trailer` is end-to-end (RFC 9110 §6.6.2) and stays: it announces the trailer fields, and
/// without it the next hop may drop them.
static HOP_BY_HOP: [&HeaderName; 7] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRANSFER_ENCODING,
];

/// What [`strip_hop_by_hop`] found that the caller may need.
#[derive(Debug, Default, Clone, Copy)]
pub struct HopInfo {
    /// The client accepts trailers (`TE: trailers`).
    pub(crate) te_trailers: bool,
    /// `Connection` listed `upgrade`.
    pub(crate) connection_upgrade: bool,
}

/// Removes hop-by-hop fields and every field named in `Connection`. `Upgrade` is removed
/// unless `keep_upgrade`; the caller re-adds `Connection: upgrade` for a real upgrade.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) -> HopInfo {
    let mut info = HopInfo::default();
    // Most messages carry none of these: one pass over the names instead of eight lookups.
    let any = headers
        .keys()
        .any(|name| *name == header::UPGRADE || HOP_BY_HOP.contains(&name));
    if !any {
        return info;
    }
    // Fields named in Connection are hop-by-hop too (RFC 9110 §7.6.1). The values are
    // clones (of shared bytes: no copy) so that the names can be removed while they are read,
    // and a name is looked up as text: no allocation for the usual `close` or `upgrade`.
    let mut connection = headers.get_all(header::CONNECTION).iter();
    let first = connection.next().cloned();
    let rest: Vec<HeaderValue> = connection.cloned().collect();
    for value in first.iter().chain(&rest) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for token in value.split(',').map(str::trim) {
            if token.is_empty() {
                continue;
            }
            if token.eq_ignore_ascii_case("upgrade") {
                info.connection_upgrade = true;
                if keep_upgrade {
                    continue;
                }
            }
            // Never let a client drop our own end-to-end fields this way.
            if !token.eq_ignore_ascii_case(X_REQUEST_ID.as_str())
                && !token.eq_ignore_ascii_case(header::HOST.as_str())
            {
                headers.remove(token);
            }
        }
    }
    if let Some(te) = headers.get(header::TE) {
        info.te_trailers = te
            .to_str()
            .map(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
    info
}

/// Appends a `Via` entry for this hop: `1.1 portico` (RFC 9110 §7.6.3).
pub(crate) fn append_via(headers: &mut HeaderMap, version: http::Version) {
    let value = match version {
        http::Version::HTTP_2 => HeaderValue::from_static("2 portico"),
        http::Version::HTTP_10 => HeaderValue::from_static("1.0 portico"),
        _ => HeaderValue::from_static("1.1 portico"),
    };
    headers.append(header::VIA, value);
}

/// The client address as a header value, made once per connection.
pub(crate) fn client_value(client: IpAddr) -> HeaderValue {
    use std::io::Write;
    // The longest address (IPv6 with an embedded IPv4 part) is 45 bytes.
    let mut text = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    let _ = write!(cursor, "{}", client.to_canonical());
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    // An IP address always prints as a valid header value.
    arena_value(&text[..len]).unwrap_or_else(|| HeaderValue::from_static("unknown"))
}

/// Sets `X-Forwarded-For` (appending the client to every prior entry), `-Proto` and `-Host`.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let mut prior = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    let value = if prior.peek().is_none() {
        // The common case: no copy, no allocation.
        client.clone()
    } else {
        let mut joined: Vec<u8> = Vec::with_capacity(64);
        for v in prior {
            let v = v.as_bytes().trim_ascii();
            if !v.is_empty() {
                joined.extend_from_slice(v);
                joined.extend_from_slice(b", ");
            }
        }
        joined.extend_from_slice(client.as_bytes());
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client.clone())
    };
    headers.insert(&X_FORWARDED_FOR, value);
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(host) => {
            headers.insert(&X_FORWARDED_HOST, host.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// The client's request id if it is sane (1–128 of `[A-Za-z0-9._:-]`), else a new one.
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let bytes = v.as_bytes();
        if !bytes.is_empty()
            && bytes.len() <= 128
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return v.clone();
        }
    }
    new_request_id()
}

std::thread_local! {
    static RNG: Cell<(u64, u64)> = Cell::new(seed());
}

fn seed() -> (u64, u64) {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut a = state.build_hasher();
    a.write_u64(1);
    let mut b = state.build_hasher();
    b.write_u64(2);
    (a.finish() | 1, b.finish() | 1)
}

/// xorshift128+: fast, per thread, not for secrets (ids only need to be unique).
fn next_random() -> u64 {
    RNG.with(|cell| {
        let (mut s1, s0) = cell.get();
        s1 ^= s1 << 23;
        let next = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
        cell.set((s0, next));
        next.wrapping_add(s0)
    })
}

/// A fresh 32-hex-digit request id.
pub(crate) fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let mut bits = u128::from(next_random()) << 64 | u128::from(next_random());
    for byte in &mut out {
        *byte = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    // Hex digits are always a valid header value.
    arena_value(&out).unwrap_or_else(|| HeaderValue::from_static("0"))
}

/// A short header value made per request or connection (a request id, a client address),
/// its bytes cut from a per-thread arena: making it, and every clone of it (request header,
/// response header, log), shares one buffer instead of allocating. `None` if the bytes are
/// not a valid header value.
fn arena_value(bytes: &[u8]) -> Option<HeaderValue> {
    if bytes.len() > ARENA_SIZE / 16 {
        return HeaderValue::from_bytes(bytes).ok();
    }
    let cut = ARENA.with_borrow_mut(|arena| {
        if arena.capacity() - arena.len() < bytes.len() {
            *arena = BytesMut::with_capacity(ARENA_SIZE);
        }
        arena.extend_from_slice(bytes);
        arena.split().freeze()
    });
    HeaderValue::from_maybe_shared(cut).ok()
}

/// An arena holds 256 request ids: a fresh one (one allocation, and one more when it is first
/// shared) every 256 requests of a thread. An arena lives while any value cut from it does.
const ARENA_SIZE: usize = 32 * 256;

thread_local! {
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strips_connection_named_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret, upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers, gzip"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        let info = strip_hop_by_hop(&mut h, false);
        assert!(info.te_trailers);
        assert!(info.connection_upgrade);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static(" 10.0.0.2 "));
        let client = client_value("127.0.0.1".parse().unwrap());
        set_forwarded(
            &mut h,
            &client,
            "http",
            Some(&HeaderValue::from_static("a.com")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        let mut fresh = HeaderMap::new();
        set_forwarded(&mut fresh, &client, "http", None);
        assert_eq!(fresh["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.com");
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        assert_eq!(request_id(&h).len(), 32);
        assert_ne!(request_id(&h), request_id(&h));
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("bad id<script>"));
        assert_ne!(request_id(&h), "bad id<script>");
    }

    fn hop_names() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "transfer-encoding",
            "upgrade",
        ])
        .prop_map(str::to_owned)
    }

    proptest! {
        /// No hop-by-hop field, and nothing named in Connection, survives.
        #[test]
        fn no_hop_by_hop_survives(
            hops in prop::collection::vec(hop_names(), 0..6),
            named in prop::collection::vec("x-[a-z]{1,8}", 0..4),
            plain in prop::collection::vec("y-[a-z]{1,8}", 0..4),
        ) {
            let mut h = HeaderMap::new();
            for name in hops.iter().chain(&named).chain(&plain) {
                h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("v"));
            }
            if !named.is_empty() {
                h.append("connection", HeaderValue::from_str(&named.join(", ")).unwrap());
            }
            strip_hop_by_hop(&mut h, false);
            for name in hops.iter().chain(&named) {
                prop_assert!(!h.contains_key(name.as_str()), "{} survived", name);
            }
            for name in &plain {
                prop_assert!(h.contains_key(name.as_str()));
            }
        }
    }
}
