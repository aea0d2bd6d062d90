//! Entry points for fuzzing the parsers portico owns, as plain functions over bytes.
//!
//! `fuzz/` (a separate crate for `cargo +nightly fuzz`) calls these; on stable, proptest drives
//! the same functions below, and every saved input under `fuzz/corpus/` is replayed by a normal
//! test. Each function panics only when an invariant breaks.

use std::sync::OnceLock;

use http::{HeaderName, HeaderValue, Method, Request, Uri};

use crate::config;
use crate::observe::Metrics;
use crate::pool::Registry;
use crate::proxy::headers::strip_hop_by_hop;
use crate::routing::{RequestView, normalize_host, path, query_pairs};
use crate::runtime::{self, Snapshot, compile::Env};
use crate::server::scan::HeadScan;

/// Config text → spec → snapshot; must never panic, whatever the text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name.len() < 8).then(|| "127.0.0.1:1".to_owned());
    if let Ok(spec) = config::load_str("fuzz.yaml", text, &env) {
        let registry = Registry::default();
        let metrics = Metrics::new();
        let acme = crate::tls::acme::Store::default();
        let _ = runtime::compile(
            spec,
            "fuzz.yaml",
            Env {
                registry: &registry,
                metrics: &metrics,
                acme: &acme,
                states: &Default::default(),
            },
        );
    }
}

const ROUTES: &str = "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: exact, match: { path: /exact }, respond: { status: 200 } }
  - { name: tpl, match: { path_template: '/users/{id}', methods: [GET] }, respond: { status: 200 } }
  - { name: pre, match: { hosts: ['*.example.com'], path_prefix: /api/ }, respond: { status: 200 } }
  - { name: re, match: { path_regex: '/r/[0-9]+', headers: { x-a: b } }, respond: { status: 200 } }
  - { name: q, match: { path_prefix: /q, query: { a: b } }, respond: { status: 200 } }
";

fn table() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let spec = config::load_str("routes.yaml", ROUTES, &|_| None).unwrap_or_default();
        let registry = Registry::default();
        let metrics = Metrics::new();
        let acme = crate::tls::acme::Store::default();
        // The fixed config above compiles; an empty snapshot would only weaken the fuzzing.
        runtime::compile(
            spec,
            "routes.yaml",
            Env {
                registry: &registry,
                metrics: &metrics,
                acme: &acme,
                states: &Default::default(),
            },
        )
        .unwrap_or_else(|_| unreachable!("the fuzz routing table compiles"))
    })
}

/// A raw HTTP/1.1 request head through everything portico does with one before forwarding.
pub fn request_head(data: &[u8]) {
    // The framing scanner, fed in uneven pieces, agrees with itself.
    let mut whole = HeadScan::default();
    whole.feed(data);
    let mut pieces = HeadScan::default();
    for chunk in data.chunks(7) {
        pieces.feed(chunk);
    }
    assert_eq!(
        whole.ambiguous, pieces.ambiguous,
        "scanner depends on read boundaries"
    );

    // Parse as hyper does (httparse), then build the head hyper would hand over.
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(data) else {
        return;
    };
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Ok(uri) = target.parse::<Uri>() else {
        return;
    };
    let mut builder = Request::builder().method(method).uri(uri);
    for h in parsed.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (mut head, ()) = request.into_parts();

    let snap = table();
    let Some(listener) = snap.listeners.first() else {
        return;
    };
    let host = crate::proxy::pipeline::decode(listener, &head);
    if let Ok(normal) = path::normalize(head.uri.path()) {
        let again = path::normalize(&normal).map(|p| p.into_owned());
        assert_eq!(
            again.as_deref(),
            Ok(&*normal),
            "normalisation is not idempotent"
        );
        assert!(normal.starts_with('/'));
        assert!(
            !normal.split('/').any(|s| s == ".." || s == "."),
            "dot segment survived: {normal}"
        );
        let host = host.ok().flatten();
        let host = normalize_host(host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""));
        let view = RequestView {
            client: std::net::IpAddr::from([127, 0, 0, 1]),
            host: &host,
            path: &normal,
            query: head.uri.query(),
            method: &head.method,
            headers: &head.headers,
        };
        if let Some(route) = listener.table.find(&view) {
            assert!(
                listener.table.conditions(route).matches(&view),
                "router chose a route that does not match"
            );
        }
    }
    if let Some(q) = head.uri.query() {
        let _ = query_pairs(q).count();
    }
    let named: Vec<String> = head
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|t| t != "x-request-id" && t != "host")
        .collect();
    strip_hop_by_hop(&mut head.headers, false);
    for name in [
        "connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(!head.headers.contains_key(name), "{name} survived");
    }
    for name in named {
        if HeaderName::from_bytes(name.as_bytes()).is_ok() {
            assert!(
                !head.headers.contains_key(name.as_str()),
                "{name} (named in Connection) survived"
            );
        }
    }
}

/// Path normalisation and every route path policy: the canonical form is stable and holds no
/// separator, parameter or dot-segment a backend could read differently.
pub fn path(data: &[u8]) {
    use path::{Backslash, EncodedSlash, MatrixParams, PathPolicy};
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = path::normalize(raw) else {
        return;
    };
    let canonical = |p: &str| {
        let upper = p.to_ascii_uppercase();
        p.starts_with('/')
            && !p.contains("//")
            && !p.contains('\\')
            && !p.contains(';')
            && !upper.contains("%2F")
            && !upper.contains("%5C")
            && !p.split('/').any(|s| s == "." || s == "..")
    };
    assert!(canonical(&normal), "not canonical: {raw} -> {normal}");
    assert_eq!(
        path::normalize(&normal).as_deref(),
        Ok(&*normal),
        "normalisation is not idempotent"
    );
    for encoded_slash in [EncodedSlash::Keep, EncodedSlash::Reject] {
        for matrix_params in [MatrixParams::Strip, MatrixParams::Keep] {
            let policy = PathPolicy {
                encoded_slash,
                backslash: Backslash::Decode,
                matrix_params,
            };
            let Ok(Some(kept)) = policy.apply(raw, |_| true) else {
                continue;
            };
            assert!(kept.starts_with('/') && !kept.contains("//") && !kept.contains('\\'));
            assert!(
                !kept
                    .split('/')
                    .map(|s| s.split(';').next().unwrap_or(""))
                    .any(|s| s == "." || s == ".."),
                "dot segment kept: {raw} -> {kept}"
            );
            let again = match policy.apply(&kept, |_| true) {
                Ok(Some(again)) => again,
                Ok(None) => path::normalize(&kept)
                    .map(|p| p.into_owned())
                    .unwrap_or_default(),
                Err(err) => err.to_string(),
            };
            assert_eq!(again, kept, "kept form is not stable");
        }
    }
}

/// The SNI reader of `tls_passthrough`: never panics, and a complete hello gives a name or none.
pub fn client_hello(data: &[u8]) {
    let whole = crate::l4::sni::server_name(data);
    // Feeding more bytes never turns a finished answer back into "need more".
    if !matches!(whole, crate::l4::sni::Parsed::NeedMore) {
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0u8; 16]);
        assert_eq!(
            crate::l4::sni::server_name(&longer),
            whole,
            "trailing bytes changed the answer"
        );
    }
}

/// The PROXY protocol header reader of listeners: never panics, a header's length lies within
/// the input and its bounds, and bytes after a complete header never change the answer.
pub fn proxy_protocol(data: &[u8]) {
    use crate::proxy_protocol::{MAX_V1, MAX_V2, Parsed, parse};
    let whole = parse(data);
    if let Parsed::Header { len, .. } = whole {
        assert!(len <= data.len(), "a header longer than its input");
        assert!(len <= MAX_V1.max(MAX_V2), "a header past the bounds");
        assert_eq!(
            parse(&data[..len]),
            whole,
            "the header alone reads otherwise"
        );
    }
    if !matches!(whole, Parsed::Incomplete) {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(parse(&longer), whole, "trailing bytes changed the answer");
    }
}

/// `trusted_proxies`: `X-FORWARDED-FOR\nFORWARDED` as a trusted peer (127.0.0.1, with
/// 10.0.0.0/8 trusted too) and an untrusted one sent them. Never panics; the untrusted peer is
/// always its own client and loses the headers; the trusted one's client is the peer or an
/// address the headers named, untrusted unless every named hop was trusted.
pub fn forwarded_for(data: &[u8]) {
    use crate::plugins::ip_restriction::Cidr;
    use crate::runtime::client_addr::{Source, TrustedProxies};
    let blocks = ["127.0.0.1/32", "10.0.0.0/8"];
    let trusted = TrustedProxies::new(blocks.iter().filter_map(|b| Cidr::parse(b).ok()).collect());
    let (xff, fwd) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(xff) {
        headers.insert("x-forwarded-for", v);
    }
    if let Ok(v) = HeaderValue::from_bytes(fwd) {
        headers.insert("forwarded", v);
    }
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 4000));
    let decision = trusted.decide(peer, &headers);
    match decision.source {
        Source::UntrustedPeer => panic!("the trusted peer was not trusted"),
        Source::TrustedPeer => assert_eq!(decision.client, peer),
        Source::XForwardedFor | Source::Forwarded => {
            assert!(
                !trusted.trusts(decision.client.ip()),
                "a trusted hop was taken"
            )
        }
        Source::XForwardedForLeftmost | Source::ForwardedLeftmost => {
            assert!(
                trusted.trusts(decision.client.ip()),
                "an untrusted hop was passed over"
            )
        }
    }
    let outsider = std::net::SocketAddr::from(([192, 0, 2, 1], 4000));
    let mut scrubbed = headers.clone();
    assert_eq!(trusted.apply(outsider, &mut scrubbed), outsider);
    assert!(!scrubbed.contains_key("x-forwarded-for") && !scrubbed.contains_key("forwarded"));
}

/// The descriptor set of tests/e2e/grpc/shop.proto (every well-known type, HTTP rules).
const SHOP: &[u8] = include_bytes!("../fuzz/shop.pb");

/// gRPC-JSON transcoding's request side: the first byte picks a binding of shop.proto, the
/// rest is `QUERY\nBODY`. Never panics; a request that is accepted encodes to a message that
/// decodes and writes back as JSON, and that JSON reads back as the same message.
pub fn transcode_json(data: &[u8]) {
    use crate::plugins::transcode::{json, rules};
    static BINDINGS: OnceLock<Vec<rules::Binding>> = OnceLock::new();
    let bindings = BINDINGS.get_or_init(|| {
        rules::pool(SHOP)
            .and_then(|pool| rules::bindings(&pool, &[]))
            .unwrap_or_default()
    });
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Some(binding) = bindings.get(usize::from(pick) % bindings.len().max(1)) else {
        return;
    };
    let (query, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(at) => (std::str::from_utf8(&rest[..at]).ok(), &rest[at + 1..]),
        None => (None, rest),
    };
    let desc = binding.method.desc.input();
    let vars: Vec<(String, String)> = binding
        .template
        .vars
        .iter()
        .map(|v| (v.field.clone(), "fuzz".to_owned()))
        .collect();
    let parts = json::Parts {
        vars: &vars,
        query,
        body,
    };
    let Ok(message) = json::request(&desc, &binding.body, &parts) else {
        return;
    };
    let bytes = prost::Message::encode_to_vec(&message);
    let out = json::Output {
        emit_defaults: false,
        original_names: false,
    };
    let written = json::response(&desc, &bytes, None, out).expect("an encoded message decodes");
    let again = json::request(
        &desc,
        &crate::plugins::transcode::BodyRule::Whole,
        &json::Parts {
            vars: &[],
            query: None,
            body: written.to_string().as_bytes(),
        },
    )
    .expect("written JSON reads back");
    // A NaN or infinite DoubleValue/FloatValue is written as `null` (which reads back as
    // unset): the JSON library has no such number. Other nulls (Struct's) round-trip, but
    // they cannot be told apart here, so a written null ends the check.
    if written.to_string().contains("null") {
        return;
    }
    let rewritten = json::response(&desc, &prost::Message::encode_to_vec(&again), None, out)
        .expect("an encoded message decodes");
    assert_eq!(rewritten, written, "JSON round trip changed the message");
}

/// The XML converter of aggregate calls: never panics; a document it accepts is an object
/// with one member (the root element), and shaping it never panics either.
pub fn xml(data: &[u8]) {
    use crate::aggregate::{convert, shape};
    let Ok(value) = convert::xml(data) else {
        return;
    };
    let serde_json::Value::Object(top) = &value else {
        panic!("a converted document is not an object: {value}");
    };
    assert_eq!(top.len(), 1, "a converted document has one root: {value}");
    let root = top.keys().next().cloned().unwrap_or_default();
    let shaped = shape::Shape {
        target: Some(vec![root]),
        deny: vec![shape::path("@id")],
        rename: vec![(shape::path("#text"), shape::path("text"))],
        collection: true,
        ..Default::default()
    };
    let _ = shaped.fields(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn replay(target: &str, run: fn(&[u8])) -> usize {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut count = 0;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let data = std::fs::read(entry.path()).unwrap();
                run(&data);
                count += 1;
            }
        }
        count
    }

    #[test]
    fn saved_inputs_replay() {
        assert!(replay("config", config) > 0);
        assert!(replay("request_head", request_head) > 0);
        assert!(replay("client_hello", client_hello) > 0);
        assert!(replay("path", path) > 0);
        assert!(replay("transcode_json", transcode_json) > 0);
        assert!(replay("xml", xml) > 0);
        assert!(replay("proxy_protocol", proxy_protocol) > 0);
        assert!(replay("forwarded_for", forwarded_for) > 0);
    }

    fn head_like() -> impl Strategy<Value = Vec<u8>> {
        let method = prop::sample::select(vec!["GET", "POST", "HEAD", "CONNECT", "OPTIONS"]);
        let path = "(/[a-z.%0-9A-F]{0,6}){0,5}(\\?[a-z=&%0-9]{0,12})?";
        let header = prop::sample::select(vec![
            "Host: a.example.com",
            "Host: x",
            "Content-Length: 4",
            "Transfer-Encoding: chunked",
            "Connection: keep-alive, x-a",
            "x-a: b",
            "TE: trailers",
            "Upgrade: websocket",
            "Connection: upgrade",
            "Host: A.EXAMPLE.COM.:80",
            "transfer-encoding: gzip, chunked",
        ]);
        (method, path, prop::collection::vec(header, 0..6)).prop_map(|(m, p, hs)| {
            let p = if p.is_empty() { "/".to_owned() } else { p };
            let mut text = format!("{m} {p} HTTP/1.1\r\n");
            for h in hs {
                text.push_str(h);
                text.push_str("\r\n");
            }
            text.push_str("\r\n");
            text.into_bytes()
        })
    }

    proptest! {
        #[test]
        fn request_heads_hold_invariants(data in head_like()) {
            request_head(&data);
        }

        #[test]
        fn paths_hold_invariants(
            pieces in prop::collection::vec(prop::sample::select(vec![
                "/", "\\", ".", "..", ";", "a", "%2F", "%2f", "%5C", "%5c", "%2e", "%3B", "%25", "é",
            ]), 0..16)
        ) {
            path(format!("/{}", pieces.concat()).as_bytes());
        }

        #[test]
        fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
            request_head(&data);
            config(&data);
            client_hello(&data);
            path(&data);
            transcode_json(&data);
            xml(&data);
            proxy_protocol(&data);
            forwarded_for(&data);
        }

        #[test]
        fn proxy_headers_hold_invariants(
            v2 in any::<bool>(),
            source in any::<std::net::SocketAddr>(),
            destination in any::<std::net::SocketAddr>(),
            cut in any::<prop::sample::Index>(),
            noise in prop::collection::vec(any::<u8>(), 0..8),
        ) {
            use crate::proxy_protocol::{Version, header};
            let version = if v2 { Version::V2 } else { Version::V1 };
            let mut bytes = header(version, source, destination);
            proxy_protocol(&bytes);
            // A cut header, or one with a byte changed, still never panics.
            proxy_protocol(&bytes[..cut.index(bytes.len())]);
            let at = cut.index(bytes.len());
            for (i, b) in noise.iter().enumerate() {
                if let Some(byte) = bytes.get_mut(at + i) {
                    *byte ^= b;
                }
            }
            proxy_protocol(&bytes);
        }

        #[test]
        fn transcode_json_like_input_holds(
            pick in any::<u8>(),
            query in "([a-zA-Z_.]{1,12}=[a-z0-9%+.:-]{0,10}&?){0,4}",
            body in "\\{(\"[a-zA-Z_]{1,10}\": ?(\"[a-zA-Z0-9:.+-]{0,12}\"|[0-9.e-]{1,8}|true|null|\\[\\]|\\{\\}),? ?){0,4}\\}",
        ) {
            let mut data = vec![pick];
            data.extend_from_slice(query.as_bytes());
            data.push(b'\n');
            data.extend_from_slice(body.as_bytes());
            transcode_json(&data);
        }

        #[test]
        fn xml_like_text_never_panics(
            pieces in prop::collection::vec(prop::sample::select(vec![
                "<a>", "</a>", "<b x='1'>", "</b>", "<c/>", "text", "&amp;", "&#65;", "&bad;",
                "<![CDATA[x]]>", "<!-- c -->", "<?pi?>", "<", ">", "\"", "<a y=\"2\">",
            ]), 0..24)
        ) {
            xml(pieces.concat().as_bytes());
        }

        #[test]
        fn config_like_text_never_panics(
            text in "(listeners|routes|upstreams|workers|admin)?:? ?[-{}\\[\\]a-z0-9:,. ]{0,80}(\n  [-{}\\[\\]a-z0-9:,. ]{0,40}){0,4}"
        ) {
            config(text.as_bytes());
        }
    }
}
