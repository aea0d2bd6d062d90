//! Entry points for fuzzing the parsers portico owns, as plain functions over bytes.
//!
//! `fuzz/` (a separate cargo-fuzz crate, run by `fuzz/run.sh`) calls these; on stable, proptest drives
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

/// `Range`, `If-Range` and the preconditions of `static`: the first 8 bytes are the file's
/// length, the rest `RANGE\nIF-RANGE\nIF-MATCH\nIF-NONE-MATCH\nDATE\nACCEPT-ENCODING`. Every
/// range served lies within the file, in order first..=last, at most `MAX_RANGES` of them, and
/// several never add up to more than the file; a date reads back from its own printing.
pub fn range(data: &[u8]) {
    use crate::proxy::static_files::rules::{self, Ranges};
    use crate::runtime::static_files::Encoding;
    let (len, rest) = match data.split_first_chunk::<8>() {
        Some((len, rest)) => (u64::from_be_bytes(*len), rest),
        None => (data.len() as u64, data),
    };
    let text = String::from_utf8_lossy(rest);
    let mut fields = text.split('\n');
    let mut field = || fields.next().unwrap_or("");
    let (range, if_range, if_match, if_none_match, date, accept) =
        (field(), field(), field(), field(), field(), field());
    match rules::ranges(range, len) {
        Ranges::Whole | Ranges::Unsatisfiable => {}
        Ranges::Parts(parts) => {
            assert!(!parts.is_empty() && parts.len() <= rules::MAX_RANGES);
            for &(first, last) in &parts {
                assert!(
                    first <= last && last < len,
                    "{first}-{last} of {len}: {range:?}"
                );
            }
            if parts.len() > 1 {
                let total = parts
                    .iter()
                    .try_fold(0u64, |sum, (first, last)| sum.checked_add(last - first + 1));
                assert!(total.is_some_and(|t| t <= len), "ranges past the file");
            }
        }
    }
    let modified = len % (253_402_300_800); // before year 10000
    let etag = "\"abc\"";
    let _ = rules::if_range(if_range, etag, modified);
    assert!(rules::if_range(&rules::http_date(modified), etag, modified));
    assert!(rules::if_range(etag, etag, modified));
    let conditions = rules::Conditions {
        if_match: Some(if_match).filter(|s| !s.is_empty()),
        if_unmodified_since: Some(date),
        if_none_match: Some(if_none_match).filter(|s| !s.is_empty()),
        if_modified_since: Some(date),
    };
    let _ = rules::evaluate(&conditions, etag, modified);
    if let Some(secs) = rules::parse_http_date(date)
        && secs < 253_402_300_800
    {
        let printed = rules::http_date(secs);
        assert_eq!(
            rules::parse_http_date(&printed),
            Some(secs),
            "{date:?} -> {printed}"
        );
    }
    let offered = [Encoding::Zstd, Encoding::Br, Encoding::Gzip];
    let chosen = rules::accepted(Some(accept), &offered);
    let mut seen = Vec::new();
    for e in &chosen {
        assert!(!seen.contains(e), "an encoding chosen twice: {accept:?}");
        seen.push(*e);
    }
}

/// `Cache-Control`, `Vary`, `Expires`/`Age` and the conditionals of `cache`, from
/// `CACHE-CONTROL\nVARY\nEXPIRES\nAGE\nIF-NONE-MATCH\nETAG\nHOST\nTARGET`. Directives stay
/// within RFC 9111's bounds, freshness arithmetic never overflows, and the key of a request
/// is the key its purge URL names.
pub fn cache_control(data: &[u8]) {
    use crate::plugins::cache::{self, rules};
    use std::time::{Duration, SystemTime};
    let mut fields = data.split(|&b| b == b'\n');
    let mut field = || fields.next().unwrap_or(b"");
    let mut response = http::HeaderMap::new();
    let mut request = http::HeaderMap::new();
    let put = |map: &mut http::HeaderMap, name: http::HeaderName, value: &[u8]| {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            map.append(name, v);
        }
    };
    let cc = field();
    put(&mut response, http::header::CACHE_CONTROL, cc);
    put(&mut request, http::header::CACHE_CONTROL, cc);
    put(&mut response, http::header::VARY, field());
    put(&mut response, http::header::EXPIRES, field());
    put(&mut response, http::header::AGE, field());
    put(&mut request, http::header::IF_NONE_MATCH, field());
    put(&mut response, http::header::ETAG, field());
    let host = field();
    let target = field();
    let directives = rules::Directives::parse(&response);
    for d in [
        directives.max_age,
        directives.s_maxage,
        directives.min_fresh,
        directives.stale_while_revalidate,
        directives.stale_if_error,
    ]
    .into_iter()
    .flatten()
    {
        assert!(d <= 1 << 31, "a delta past 2^31: {d}");
    }
    assert_eq!(rules::Directives::parse(&request), directives);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let lifetime = rules::lifetime(
        http::StatusCode::OK,
        &response,
        &directives,
        Some(Duration::from_secs(60)),
        now,
    );
    let _ = rules::initial_age(&response, now);
    let _ = rules::not_modified(&request, &response);
    let timing = cache::store::Timing::of(&directives, lifetime.unwrap_or_default());
    if directives.no_cache {
        assert_eq!(timing.lifetime, Duration::ZERO);
    }
    let _ = cache::vary_names(&response).count();
    // The key of a request and the key of its purge URL agree. (A Host that is not visible
    // ASCII is no host at all, to routing and to keys alike; a purge URL cannot name one.)
    let (Ok(host), Ok(target)) = (std::str::from_utf8(host), std::str::from_utf8(target)) else {
        return;
    };
    if host.is_empty()
        || !host.bytes().all(|b| b.is_ascii_graphic())
        || host.contains(['/', '?', '#', '@'])
        || !target.starts_with('/')
    {
        return;
    }
    let (Ok(uri), Ok(host_value)) = (target.parse::<Uri>(), HeaderValue::from_str(host)) else {
        return;
    };
    if uri.path_and_query().map(|p| p.as_str()) != Some(target) {
        return;
    }
    let Ok(request) = Request::builder()
        .uri(uri)
        .header(http::header::HOST, host_value)
        .body(())
    else {
        return;
    };
    let (head, ()) = request.into_parts();
    let key = cache::url_of(&head);
    assert_eq!(
        cache::purge_url(&format!("http://{host}{target}")).as_deref(),
        Some(&*key),
        "a purge names another key"
    );
}

/// A disk cache entry's file as `cache` reads it back: the raw bytes, and the bytes under a
/// correct magic, version and digest (a file of another build, or one changed on disk).
/// Never panics; an entry that reads writes back to a file that reads the same.
pub fn cache_entry(data: &[u8]) {
    use crate::plugins::cache::disk;
    use std::time::Instant;
    const KEY: &str = "example.com/a\naccept:";
    const NOW: u64 = 1_800_000_000;
    let _ = disk::decode(data, KEY, NOW);
    let mut file = b"PCDE\x00\x01".to_vec();
    file.extend_from_slice(data);
    let digest = ring::digest::digest(&ring::digest::SHA256, &file);
    file.extend_from_slice(digest.as_ref());
    let Ok(stored) = disk::decode(&file, KEY, NOW) else {
        return;
    };
    let now = Instant::now();
    let _ = (stored.age(now), stored.staleness(now), stored.size());
    let _ = stored.fresh(now, 1 << 31);
    let _ = (
        stored.serves_while_revalidating(now),
        stored.serves_on_error(now),
    );
    let again = disk::encode(KEY, &stored, NOW);
    let back = disk::decode(&again, KEY, NOW).expect("a written entry reads back");
    assert_eq!(
        (back.status, &back.headers, &back.body, &back.vary),
        (stored.status, &stored.headers, &stored.body, &stored.vary)
    );
    assert_eq!(
        (back.initial_age, back.lifetime, back.stale_while_revalidate),
        (
            stored.initial_age,
            stored.lifetime,
            stored.stale_while_revalidate
        )
    );
    assert_eq!(
        (back.stale_if_error, back.must_revalidate, back.validators),
        (
            stored.stale_if_error,
            stored.must_revalidate,
            stored.validators
        )
    );
}

/// `Accept-Encoding` negotiation of `compression` and the media ranges of `content_types`,
/// from `ACCEPT-ENCODING\nMEDIA-RANGE\nCONTENT-TYPE`: the coding chosen is one offered that
/// the client accepts, and a media range that parses prints a range that matches the same.
pub fn accept_encoding(data: &[u8]) {
    use crate::config::spec_compression::Encoding;
    use crate::plugins::compression::negotiate::{MediaRange, choose};
    let mut fields = data.split(|&b| b == b'\n');
    let mut field = || fields.next().unwrap_or(b"");
    let accept = field();
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(accept) {
        headers.insert(http::header::ACCEPT_ENCODING, v);
    }
    let orders: [&[Encoding]; 4] = [
        &[Encoding::Zstd, Encoding::Br, Encoding::Gzip],
        &[Encoding::Gzip, Encoding::Br],
        &[Encoding::Gzip],
        &[],
    ];
    for offered in orders {
        if let Some(chosen) = choose(&headers, offered) {
            assert!(offered.contains(&chosen), "{chosen:?} was not offered");
            // Asking for the chosen coding alone never turns it down.
            let token = match chosen {
                Encoding::Zstd => "zstd",
                Encoding::Br => "br",
                Encoding::Gzip => "gzip",
            };
            let mut only = http::HeaderMap::new();
            only.insert(
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_static(token),
            );
            assert_eq!(choose(&only, offered), Some(chosen));
        }
    }
    let (Ok(range), Ok(essence)) = (std::str::from_utf8(field()), std::str::from_utf8(field()))
    else {
        return;
    };
    if let Some(parsed) = MediaRange::parse(range) {
        let _ = parsed.matches(essence);
        if let MediaRange::Exact(exact) = &parsed {
            assert!(parsed.matches(exact), "{exact} does not match itself");
        }
    }
}

/// The templates of aggregate calls: a template that parses prints back to text that parses
/// to the same template, and `encode` leaves only unreserved bytes and escapes.
pub fn template(data: &[u8]) {
    use crate::aggregate::template::{Template, encode};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = Template::parse(text) {
        let printed: String = parsed.0.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            Template::parse(&printed).as_ref(),
            Ok(&parsed),
            "{text:?} printed as {printed:?}"
        );
        let expanded = parsed.expand(|p| Some(format!("<{p}>")));
        assert!(expanded.is_some());
    }
    let encoded = encode(text);
    assert!(
        encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b))
    );
    let decoded: Vec<u8> = percent_decode(encoded.as_bytes());
    assert_eq!(decoded, text.as_bytes(), "encode does not decode back");
}

fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push(hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// An upstream's HTTP/1.1 response, read by portico's own client parser (`pool::h1::parse`)
/// and by hyper's client: the first byte says whether the request was HEAD (odd), the second
/// how portico's parser is fed (in pieces of that many bytes). Both read the same status,
/// fields, body, trailers and end of message, or portico's parser refuses a response whose
/// framing is ambiguous.
pub fn h1_response(data: &[u8]) {
    crate::pool::h1::differential::check(data);
}

/// The HTTP/2 frame scanner (`h2frame`, `server::scan::FrameScan`): the first byte picks how
/// the rest is cut into reads. However cut, it finds the same frame headers as a plain walk
/// of the bytes, the same counts, and the same answer to "was anything but PING sent".
pub fn h2_frames(data: &[u8]) {
    use crate::h2frame::{Frames, Piece};
    use crate::server::scan::FrameScan;
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut % 32) + 1;
    // The plain walk: a 9-byte header, then its payload.
    let mut expected = Vec::new();
    let mut at = 0;
    while at + 9 <= data.len() {
        let h = &data[at..at + 9];
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let stream = u32::from_be_bytes([h[5] & 0x7f, h[6], h[7], h[8]]);
        expected.push((h[3], h[4], stream));
        at += 9 + len;
    }
    let mut found = Vec::new();
    let mut frames = Frames::default();
    for piece in data.chunks(cut) {
        frames.feed(piece, |p| {
            if let Piece::Header {
                kind,
                flags,
                stream,
            } = p
            {
                found.push((kind, flags, stream));
            }
        });
    }
    assert_eq!(found, expected, "frames depend on read boundaries");
    let mut whole = FrameScan::server();
    let used = whole.feed(data);
    let mut pieces = FrameScan::server();
    let used_in_pieces = data
        .chunks(cut)
        .fold(false, |used, piece| pieces.feed(piece) | used);
    assert_eq!(used, used_in_pieces, "use depends on read boundaries");
    let (a, b) = (whole.counts, pieces.counts);
    assert_eq!(
        (a.headers, a.resets, a.control),
        (b.headers, b.resets, b.control)
    );
    assert_eq!(
        a.headers,
        expected.iter().filter(|f| f.0 == 0x1).count() as u64
    );
    let mut client = FrameScan::client();
    let _ = client.feed(data);
}

/// The converters of aggregate calls' answers: `CONTENT-TYPE\nBODY`. Never panics; a form
/// keeps every value it was given, text keeps the body.
pub fn convert(data: &[u8]) {
    use crate::aggregate::convert::{self, Format};
    let (content_type, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (std::str::from_utf8(&data[..at]).ok(), &data[at + 1..]),
        None => (None, data),
    };
    let format = Format::of(content_type);
    let _ = convert::convert(body, format);
    let serde_json::Value::Object(form) = convert::form(body) else {
        panic!("a form is not an object");
    };
    let values: usize = form
        .values()
        .map(|v| match v {
            serde_json::Value::Array(items) => items.len(),
            _ => 1,
        })
        .sum();
    assert_eq!(
        values,
        form_urlencoded::parse(body).count(),
        "a form value was lost"
    );
    if let Ok(text) = std::str::from_utf8(body) {
        let value = convert::convert(body, Format::Text).expect("text converts");
        assert_eq!(value["text"].as_str(), Some(text));
    }
}

/// Durations and sizes of the config: one that parses prints as text that parses to the same.
pub fn units(data: &[u8]) {
    use crate::config::units::{Dur, Size};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = Dur::parse(text) {
        assert_eq!(Dur::parse(&d.to_string()), Ok(d), "{text:?} printed as {d}");
    }
    if let Ok(s) = Size::parse(text) {
        assert_eq!(
            Size::parse(&s.to_string()),
            Ok(s),
            "{text:?} printed as {s}"
        );
    }
}

/// The cookies and redirect targets of `oidc`, from `COOKIE\nTARGET`: after `strip` no cookie
/// of the session is left for the upstream, and a login target is `/`, a relative path that
/// stays on the site, or a URL on an allowed origin.
pub fn oidc(data: &[u8]) {
    use crate::plugins::oidc::{redirect, session};
    const NAME: &str = "portico_session";
    let (cookie, target) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(cookie) {
        headers.insert(http::header::COOKIE, v);
    }
    let _ = session::read_sealed(&headers, NAME);
    let others: Vec<(String, String)> = session::cookies(&headers)
        .filter(|(c, _)| !session::is_ours(NAME, c))
        .map(|(c, v)| (c.to_owned(), v.to_owned()))
        .collect();
    session::strip(&mut headers, NAME);
    assert!(
        !session::cookies(&headers).any(|(c, _)| session::is_ours(NAME, c)),
        "a session cookie reached the upstream"
    );
    let kept: Vec<(String, String)> = session::cookies(&headers)
        .map(|(c, v)| (c.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(kept, others, "another cookie was changed");
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let origins = ["https://app.example.com".to_owned()];
    let safe = redirect::safe_target(target, &origins);
    if safe != "/" {
        assert_eq!(safe, target);
        let relative = safe.starts_with('/')
            && !safe.starts_with("//")
            && !safe.bytes().any(|b| b == b'\\' || b.is_ascii_control());
        let on_origin = redirect::origin_of(&safe).is_some_and(|o| o == origins[0]);
        assert!(relative || on_origin, "{safe:?} leaves the site");
    }
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
        assert!(replay("range", range) > 0);
        assert!(replay("cache_control", cache_control) > 0);
        assert!(replay("cache_entry", cache_entry) > 0);
        assert!(replay("accept_encoding", accept_encoding) > 0);
        assert!(replay("template", template) > 0);
        assert!(replay("h2_frames", h2_frames) > 0);
        assert!(replay("h1_response", h1_response) > 0);
        assert!(replay("convert", convert) > 0);
        assert!(replay("units", units) > 0);
        assert!(replay("oidc", oidc) > 0);
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
            range(&data);
            cache_control(&data);
            cache_entry(&data);
            accept_encoding(&data);
            template(&data);
            h2_frames(&data);
            convert(&data);
            units(&data);
            oidc(&data);
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
        fn ranges_hold_invariants(
            len in prop_oneof![0u64..2048, Just(u64::MAX), Just(u64::MAX / 2 + 1)],
            parts in prop::collection::vec(
                "(-?[0-9]{0,4}|[0-9]{1,4}-[0-9]{0,4}|184467440737095516[0-9]{2}-)", 0..6),
            date in prop::sample::select(vec![
                "Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
                "Sun Nov  6 08:49:37 1994", "Fri, 31 Dec 9999 23:59:60 GMT", "x", "",
            ]),
            accept in "([a-z*-]{0,6}(;q=[0-9.]{0,5})?, ?){0,4}",
        ) {
            let mut data = len.to_be_bytes().to_vec();
            data.extend_from_slice(format!("bytes={}\n\n\n\n{date}\n{accept}", parts.join(",")).as_bytes());
            range(&data);
        }

        #[test]
        fn cache_fields_hold_invariants(
            directives in prop::collection::vec(prop::sample::select(vec![
                "max-age=60", "s-maxage=\"5\"", "no-cache=\"a, b\"", "private", "no-store",
                "stale-while-revalidate=99999999999999999999", "min-fresh=x", "public", "max-age",
            ]), 0..5),
            vary in "([a-z*-]{0,8}, ?){0,3}",
            host in "[a-zA-Z0-9.:\\[\\]-]{1,16}",
            target in "/[a-z/?=&%.]{0,16}",
        ) {
            let data = format!("{}\n{vary}\nThu, 01 Jan 2026 00:00:00 GMT\n5\n\"a\"\n\"a\"\n{host}\n{target}", directives.join(", "));
            cache_control(data.as_bytes());
        }

        #[test]
        fn cache_entries_hold_invariants(
            cut in any::<prop::sample::Index>(),
            flip in any::<u8>(),
            secs in prop_oneof![Just(u64::MAX), any::<u64>(), 0u64..1000],
        ) {
            // A valid entry (as in corpus/cache_entry), one of its durations set, a byte changed.
            let mut data = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/cache_entry/entry")).unwrap();
            // initial_age sits after head length, key and stored_at.
            let at = 4 + 4 + "example.com/a\naccept:".len() + 8;
            data[at..at + 8].copy_from_slice(&secs.to_be_bytes());
            cache_entry(&data);
            let i = cut.index(data.len());
            data[i] ^= flip;
            cache_entry(&data);
        }

        #[test]
        fn negotiation_holds_invariants(
            accept in "(([a-zA-Z*-]{0,6}|gzip|br|zstd|identity)(;q=(0(\\.[0-9]{0,4})?|1(\\.0{0,3})?|[a-z]))?, ?){0,5}",
            range in "[a-z*+]{0,8}/[a-z*+]{0,8}",
        ) {
            accept_encoding(format!("{accept}\n{range}\n{range}").as_bytes());
        }

        #[test]
        fn templates_hold_invariants(
            pieces in prop::collection::vec(prop::sample::select(vec![
                "{path.id}", "{query.q}", "{header.X-A}", "{consumer}", "{claim.sub}", "{a.b.c}",
                "{{", "}}", "{", "}", "/", "x", "é", "{.}", "{a..b}", "{consumer.x}", "%",
            ]), 0..12)
        ) {
            template(pieces.concat().as_bytes());
        }

        #[test]
        fn frames_hold_invariants(
            cut in any::<u8>(),
            frames in prop::collection::vec((0u8..10, any::<u8>(), 0u32..8, 0usize..20), 0..8),
        ) {
            let mut data = vec![cut];
            for (kind, flags, stream, len) in frames {
                data.extend_from_slice(&[0, 0, len as u8, kind, flags]);
                data.extend_from_slice(&stream.to_be_bytes());
                data.extend(std::iter::repeat_n(0u8, len));
            }
            h2_frames(&data);
        }

        #[test]
        fn conversions_hold_invariants(
            content_type in prop::sample::select(vec![
                "application/x-www-form-urlencoded", "text/plain", "application/xml", "", "x+json",
            ]),
            body in "([a-z%+=&;]{0,6}){0,6}",
        ) {
            convert(format!("{content_type}\n{body}").as_bytes());
        }

        #[test]
        fn units_hold_invariants(number in "[0-9]{1,21}", unit in prop::sample::select(vec![
            "", "ms", "s", "m", "h", "d", "B", "KB", "MB", "GB", "KiB", "MiB", "GiB", " s", "x",
        ])) {
            units(format!("{number}{unit}").as_bytes());
        }

        #[test]
        fn oidc_inputs_hold_invariants(
            cookies in prop::collection::vec(prop::sample::select(vec![
                "portico_session=a", "portico_session.0=b", "portico_session.3=c", "x=1",
                "portico_session_tx_s=d", "portico_sessionx=e", "\"q\"=\"v\"", "bare", " ", "=z",
            ]), 0..6),
            target in prop::sample::select(vec![
                "/", "//evil", "/\\evil", "/%2fevil", "/a/b?c", "https://app.example.com/x",
                "https://APP.example.com", "http://app.example.com/", "https://evil/", "a", "/\t/x",
            ]),
        ) {
            oidc(format!("{}\n{target}", cookies.join("; ")).as_bytes());
        }

        #[test]
        fn config_like_text_never_panics(
            text in "(listeners|routes|upstreams|workers|admin)?:? ?[-{}\\[\\]a-z0-9:,. ]{0,80}(\n  [-{}\\[\\]a-z0-9:,. ]{0,40}){0,4}"
        ) {
            config(text.as_bytes());
        }
    }
}
