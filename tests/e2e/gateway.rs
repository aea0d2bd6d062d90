//! Gateway plugins through the real proxy: consumers, key_auth, acl, rate_limit, cors,
//! ip_restriction, request_size_limit, and the order they run in.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;

use crate::support::{H1, Portico, TestUpstream, fill, get};

const CONFIG: &str = "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
consumers:
  - { name: alice, api_keys: ['alice-key-123'], groups: [paid] }
  - { name: bob, api_keys: ['bob-key-4567'], groups: [free] }
routes:
  - name: paid
    match: { path_prefix: /paid/ }
    plugins: [ { acl: { allow: [paid] } }, { key_auth: {} } ]
    upstream: u
  - name: keyed
    match: { path_prefix: /keyed/ }
    plugins: [ { key_auth: { query: api_key } } ]
    upstream: u
  - name: limited
    match: { path_prefix: /limited/ }
    plugins:
      - cors: { origins: ['https://app.example.com'] }
      - rate_limit: { limit: 5, window: 2s, by: route }
    upstream: u
  - name: browser
    match: { path_prefix: /browser/ }
    plugins:
      - key_auth: {}
      - cors: { origins: ['https://*.example.com'], credentials: true, expose_headers: [x-upstream] }
    upstream: u
  - name: office
    match: { path_prefix: /office/ }
    plugins: [ { ip_restriction: { allow: [203.0.113.0/24], trusted_proxies: [127.0.0.0/8] } } ]
    respond: { status: 200, body: office }
  - name: blocked
    match: { path_prefix: /blocked/ }
    plugins:
      - cors: { origins: ['*'] }
      - ip_restriction: { deny: [127.0.0.0/8] }
    respond: { status: 200, body: never }
  - name: small
    match: { path_prefix: /small/ }
    plugins: [ { request_size_limit: { max: 1KiB } } ]
    rewrite: { strip_prefix: /small }
    upstream: u
upstreams:
  u: { targets: [ { address: '@U@' } ] }
";

async fn start() -> (TestUpstream, Portico) {
    let up = TestUpstream::start("U").await;
    let gw = Portico::start(&fill(CONFIG, &[("U", &up.addr())]));
    (up, gw)
}

fn req(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut r = Request::get(path).header("host", "x");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::default()).unwrap()
}

#[tokio::test]
async fn key_auth_and_acl_fail_closed() {
    let (up, gw) = start().await;
    let mut c = H1::connect(&gw.addr("web")).await;
    let r = c.send(req("/keyed/a", &[])).await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Key realm=\"portico\""));
    assert_eq!(r.json()["error"], "unauthorized");
    let r = c
        .send(req("/keyed/a", &[("x-api-key", "guess-key-999")]))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(
        !r.body.contains("guess-key-999"),
        "the error echoed the key: {}",
        r.body
    );
    let mut twice = req("/keyed/a", &[("x-api-key", "alice-key-123")]);
    twice
        .headers_mut()
        .append("x-api-key", "bob-key-4567".parse().unwrap());
    assert_eq!(
        c.send(twice).await.unwrap().status,
        401,
        "two keys are ambiguous"
    );
    // A key in a place the route does not read is no key.
    assert_eq!(
        c.send(req("/paid/a?api_key=alice-key-123", &[]))
            .await
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        up.count(),
        0,
        "nothing unauthenticated reached the upstream"
    );

    let r = c
        .send(req(
            "/keyed/a",
            &[("x-api-key", "alice-key-123"), ("x-consumer-name", "root")],
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(
        seen.headers["x-consumer-name"], "alice",
        "a forged identity header was replaced"
    );
    assert_eq!(seen.headers["x-consumer-groups"], "paid");
    assert!(
        !seen.headers.contains_key("x-api-key"),
        "the key was forwarded"
    );
    assert_eq!(
        c.send(req("/keyed/q?api_key=bob-key-4567", &[]))
            .await
            .unwrap()
            .status,
        200
    );

    assert_eq!(
        c.send(req("/paid/a", &[("x-api-key", "alice-key-123")]))
            .await
            .unwrap()
            .status,
        200
    );
    let r = c
        .send(req("/paid/a", &[("x-api-key", "bob-key-4567")]))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden");
    // No identity at all on a route without auth never passes an acl either.
    let r = c.send(req("/paid/a", &[])).await.unwrap();
    assert_eq!(
        r.status, 401,
        "authentication runs before the acl whatever the config order"
    );
}

#[tokio::test]
async fn key_auth_hides_a_query_key_and_keeps_the_other_parameters() {
    let (up, gw) = start().await;
    let mut c = H1::connect(&gw.addr("web")).await;
    let r = c
        .send(req("/keyed/q?a=1&api_key=bob-key-4567&b=x%20y&a=3", &[]))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().uri.query(),
        Some("a=1&b=x%20y&a=3"),
        "only the key parameter is removed, the rest keep their order"
    );
    // Percent-encoded, the parameter name is still the key's.
    let r = c
        .send(req("/keyed/q?api%5Fkey=bob-key-4567&z=9", &[]))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri.query(), Some("z=9"));
    let r = c
        .send(req("/keyed/q?api_key=bob-key-4567", &[]))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri.path(), "/keyed/q");
    assert_eq!(up.last().uri.query(), None, "no empty `?` is left");
}

#[tokio::test]
async fn rate_limit_hammered_concurrently_lets_only_the_limit_through() {
    let (up, gw) = start().await;
    let web = gw.addr("web");
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let web = web.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = H1::connect(&web).await;
            let mut statuses = Vec::new();
            for _ in 0..10 {
                let r = c.send(req("/limited/x", &[])).await.unwrap();
                if r.status == 429 {
                    assert!(r.header("retry-after").is_some());
                    assert_eq!(r.header("ratelimit-limit"), Some("5"));
                    assert_eq!(r.header("ratelimit-policy"), Some("5;w=2"));
                    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
                    assert_eq!(r.json()["error"], "rate_limited");
                } else {
                    assert!(r.header("ratelimit-remaining").is_some());
                }
                statuses.push(r.status);
            }
            statuses
        }));
    }
    let mut passed = 0;
    let mut limited = 0;
    for t in tasks {
        for s in t.await.unwrap() {
            match s {
                200 => passed += 1,
                429 => limited += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    let elapsed = started.elapsed();
    // 5 per 2 s: 5 at once, then one every 400 ms.
    let allowed = 5 + (elapsed.as_millis() / 400) as usize;
    assert!(
        passed >= 5 && passed <= allowed,
        "{passed} passed in {elapsed:?}"
    );
    assert_eq!(passed + limited, 80);
    assert_eq!(up.count(), passed);
    let metrics = get(gw.admin.as_deref().unwrap(), "/metrics").await.body;
    assert!(
        metrics.contains(&format!(
            "portico_rate_limited_total{{route=\"limited\"}} {limited}"
        )),
        "{metrics}"
    );

    // Limits apply before a CORS preflight is answered.
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("/limited/x")
        .header("host", "x")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .body(Full::default())
        .unwrap();
    let r = H1::connect(&web).await.send(preflight).await.unwrap();
    assert_eq!(r.status, 429, "a limited client got a preflight answer");
}

#[tokio::test]
async fn cors_preflights_and_marks_responses() {
    let (_up, gw) = start().await;
    let mut c = H1::connect(&gw.addr("web")).await;
    let preflight = |origin: &str| {
        Request::builder()
            .method("OPTIONS")
            .uri("/browser/x")
            .header("host", "x")
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "x-api-key, content-type")
            .body(Full::default())
            .unwrap()
    };
    // The preflight needs no key: browsers send none with it.
    let r = c.send(preflight("https://app.example.com")).await.unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("x-api-key, content-type")
    );
    assert!(
        r.header("access-control-allow-methods")
            .unwrap()
            .contains("PUT")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = c.send(preflight("https://evil.test")).await.unwrap();
    assert_eq!(r.status, 403);
    assert!(r.header("access-control-allow-origin").is_none());

    let r = c
        .send(req(
            "/browser/x",
            &[
                ("origin", "https://shop.example.com"),
                ("x-api-key", "alice-key-123"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example.com"),
        "credentials: the origin, never *"
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-upstream")
    );
    let r = c
        .send(req(
            "/browser/x",
            &[
                ("origin", "https://evil.test"),
                ("x-api-key", "alice-key-123"),
            ],
        ))
        .await
        .unwrap();
    assert!(r.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn ip_rules_run_first_and_trust_only_listed_proxies() {
    let (_up, gw) = start().await;
    let mut c = H1::connect(&gw.addr("web")).await;
    // Behind a trusted proxy (the test client is on 127.0.0.1), the forwarded client counts.
    let r = c
        .send(req("/office/x", &[("x-forwarded-for", "203.0.113.9")]))
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "office"));
    let r = c
        .send(req("/office/x", &[("x-forwarded-for", "198.51.100.1")]))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    // A denied address is refused before a CORS preflight or a fixed answer.
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("/blocked/x")
        .header("host", "x")
        .header("origin", "https://a.test")
        .header("access-control-request-method", "GET")
        .body(Full::default())
        .unwrap();
    assert_eq!(c.send(preflight).await.unwrap().status, 403);
    assert_eq!(c.send(req("/blocked/x", &[])).await.unwrap().status, 403);
}

#[tokio::test]
async fn request_size_limit_refuses_declared_and_streamed_bodies() {
    let (up, gw) = start().await;
    let web = gw.addr("web");
    let mut c = H1::connect(&web).await;
    let big = Request::post("/small/count")
        .header("host", "x")
        .body(Full::new(Bytes::from(vec![b'a'; 2000])))
        .unwrap();
    let r = c.send(big).await.unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "payload_too_large");
    let ok = Request::post("/small/count")
        .header("host", "x")
        .body(Full::new(Bytes::from(vec![b'a'; 500])))
        .unwrap();
    let mut c = H1::connect(&web).await;
    assert_eq!(c.send(ok).await.unwrap().body, "500");

    // Chunked, no length declared: cut when it passes the limit, never forwarded whole.
    let stream = tokio::net::TcpStream::connect(&web).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let chunks = (0..8).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'b'; 300]))));
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let r = sender
        .send_request(
            Request::post("/small/count")
                .header("host", "x")
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let _ = r.into_body().collect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        up.seen().iter().all(|s| s.body_len <= 1024),
        "an oversized body was delivered"
    );
}

#[test]
fn explain_lists_plugins_in_the_order_they_run() {
    let dir = crate::support::temp_dir("explain-plugins");
    let file = dir.join("c.yaml");
    std::fs::write(&file, fill(CONFIG, &[("U", "127.0.0.1:9")])).unwrap();
    let file = file.display().to_string();
    let (code, out, err) = crate::support::cli(&[
        "explain",
        "-c",
        &file,
        "GET",
        "http://x/paid/a",
        "-H",
        "x-api-key: alice-key-123",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("plugins   key_auth [route] → acl [route]"),
        "{out}"
    );
    assert!(
        out.contains("key_auth [route] (Authenticate; 401 without a valid API key)"),
        "{out}"
    );
    assert!(
        out.contains("acl [route] (Authorize; 403 outside the allowed groups)"),
        "{out}"
    );
    // Without a key the request stops at key_auth: acl is not reached.
    let (_, out, _) = crate::support::cli(&["explain", "-c", &file, "GET", "http://x/paid/a"]);
    assert!(
        out.contains("result    401 Unauthorized from key_auth [route]"),
        "{out}"
    );
    assert!(!out.contains("  acl [route]"), "{out}");
}

#[tokio::test]
async fn basic_auth_mtls_auth_and_mock() {
    use argon2::PasswordHasher;
    let up = TestUpstream::start("U").await;
    let bcrypt_hash = bcrypt::hash("bob-password", 4).unwrap();
    let salt = argon2::password_hash::SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
    let argon_hash = argon2::Argon2::default()
        .hash_password(b"carol-password", &salt)
        .unwrap()
        .to_string();
    let dir = crate::support::temp_dir("basic");
    let ca = crate::support::pki::Ca::new(&dir, "test CA");
    let server = ca.leaf("server", "api.test", &["api.test"], false, false);
    let client_ca = crate::support::pki::Ca::new(&crate::support::temp_dir("clients"), "client CA");
    let dave = client_ca.leaf("dave", "dave", &["dave.example"], true, false);
    let config = fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
  - name: secure
    bind: 127.0.0.1:0
    protocol: https
    tls:
      certificates: [ { cert_file: '@SC@', key_file: '@SK@' } ]
      client_auth: { ca_file: '@CCA@', required: false }
consumers:
  - { name: bob, basic_auth: { username: bob, password_hash: '@BCRYPT@' } }
  - { name: carol, basic_auth: { username: carol, password_hash: '@ARGON@' } }
  - { name: dave, cert_subject: CN=dave }
routes:
  - { name: basic, match: { path_prefix: /basic/ }, plugins: [ { basic_auth: {} } ], upstream: u }
  - { name: mtls, match: { path_prefix: /mtls/ }, plugins: [ { mtls_auth: {} } ], upstream: u }
  - name: mock
    match: { path_prefix: /mock/ }
    plugins: [ { respond: { status: 418, body: teapot } }, { basic_auth: {} } ]
    upstream: u
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[
            ("SC", &server.cert()),
            ("SK", &server.key()),
            ("CCA", &client_ca.cert_path().display().to_string()),
            ("BCRYPT", &bcrypt_hash),
            ("ARGON", &argon_hash),
            ("U", &up.addr()),
        ],
    );
    let gw = Portico::start(&config);
    let mut c = H1::connect(&gw.addr("web")).await;
    let basic = |user: &str, password: &str| {
        use std::fmt::Write;
        let raw = format!("{user}:{password}");
        // Standard base64 of the pair.
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in raw.as_bytes().chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b))
                << (8 * (3 - chunk.len()));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        let mut header = String::new();
        let _ = write!(header, "Basic {out}");
        header
    };
    for (user, password) in [("bob", "bob-password"), ("carol", "carol-password")] {
        let auth = basic(user, password);
        for _ in 0..2 {
            // The second time comes from the cache of verified passwords.
            let r = c
                .send(req("/basic/x", &[("authorization", &auth)]))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{user}");
            assert_eq!(up.last().headers["x-consumer-name"], user);
            assert!(!up.last().headers.contains_key("authorization"));
        }
    }
    let r = c
        .send(req("/basic/x", &[("authorization", &basic("bob", "nope"))]))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .starts_with("Basic realm=\"portico\"")
    );
    assert_eq!(c.send(req("/basic/x", &[])).await.unwrap().status, 401);

    // The mock answers only after authentication, whatever the list order says.
    assert_eq!(c.send(req("/mock/x", &[])).await.unwrap().status, 401);
    let r = c
        .send(req(
            "/mock/x",
            &[("authorization", &basic("bob", "bob-password"))],
        ))
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (418, "teapot"));

    // mtls_auth: a verified certificate names the consumer; a forged header does not.
    assert_eq!(
        c.send(req("/mtls/x", &[("x-client-cert-subject", "CN=dave")]))
            .await
            .unwrap()
            .status,
        401
    );
    let client = crate::support::pki::client_config(&ca.cert_path(), Some(&dave), &[b"http/1.1"]);
    let stream = crate::support::pki::connect(&gw.addr("secure"), "api.test", client)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = sender
        .send_request(
            Request::get("/mtls/x")
                .header("host", "api.test")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().headers["x-consumer-name"], "dave");
}

#[tokio::test]
async fn transformers_edit_headers_query_and_json_bodies() {
    let up = TestUpstream::start("U").await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: edit
    plugins:
      - request_transformer:
          headers: { remove: [x-drop], rename: { x-old: x-new }, set: { x-set: yes-set } }
          query: { remove: [debug], rename: { q: query }, set: { v: '2' } }
          json: { remove: [password], rename: { user.mail: user.email }, set: { source: portico } }
          max_body: 1KiB
      - response_transformer:
          headers: { remove: [x-internal], add: { x-edited: 'true' } }
          json: { remove: [secret], rename: { user.mail: user.email } }
    upstream: u
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[("U", &up.addr())],
    ));
    let web = gw.addr("web");
    let mut c = H1::connect(&web).await;
    let r = c
        .send(req(
            "/q?q=shoes&debug=1&keep=ok",
            &[("x-drop", "1"), ("x-old", "o")],
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert!(!seen.headers.contains_key("x-drop"));
    assert_eq!(seen.headers["x-new"], "o");
    assert_eq!(seen.headers["x-set"], "yes-set");
    assert_eq!(seen.uri.query(), Some("query=shoes&keep=ok&v=2"));

    let body = r#"{"password":"p","user":{"mail":"a@b"},"keep":1}"#;
    let post = Request::post("/echo")
        .header("host", "x")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = c.send(post).await.unwrap();
    let echoed: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        echoed,
        serde_json::json!({"user": {"email": "a@b"}, "keep": 1, "source": "portico"})
    );

    // Responses: JSON fields and headers.
    let r = c.send(req("/json", &[])).await.unwrap();
    assert_eq!(r.header("x-edited"), Some("true"));
    assert!(r.header("x-internal").is_none());
    assert_eq!(
        r.json(),
        serde_json::json!({"user": {"email": "a@b"}, "n": 1})
    );
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );

    // A JSON request body over max_body is refused, not edited in part.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000));
    let post = Request::post("/echo")
        .header("host", "x")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(big)))
        .unwrap();
    assert_eq!(
        H1::connect(&web).await.send(post).await.unwrap().status,
        413
    );
}

#[tokio::test]
async fn request_validator_checks_bodies_and_openapi_operations() {
    let up = TestUpstream::start("U").await;
    let dir = crate::support::temp_dir("openapi");
    std::fs::write(
        dir.join("api.yaml"),
        "\
openapi: 3.0.3
info: { title: orders, version: '1' }
paths:
  /orders/{id}:
    parameters:
      - { name: id, in: path, required: true, schema: { type: integer, minimum: 1 } }
    get:
      parameters:
        - { name: expand, in: query, schema: { type: boolean } }
        - { name: x-tenant, in: header, required: true, schema: { type: string } }
  /orders:
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: '#/components/schemas/Order' }
components:
  schemas:
    Order:
      type: object
      required: [item, quantity]
      properties:
        item: { type: string }
        quantity: { type: integer, minimum: 1 }
",
    )
    .unwrap();
    let gw = Portico::start_in(
        &dir,
        &fill(
            "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: schema
    match: { path_prefix: /echo }
    plugins:
      - request_validator:
          body_schema: { type: object, required: [name], properties: { name: { type: string, minLength: 2 } } }
    upstream: u
  - name: api
    plugins: [ { request_validator: { openapi_file: api.yaml } } ]
    upstream: u
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
            &[("U", &up.addr())],
        ),
    );
    let web = gw.addr("web");
    let post = |path: &str, body: &str| {
        Request::post(path)
            .header("host", "x")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    };
    let send = |r: Request<Full<Bytes>>| {
        let web = web.clone();
        async move { H1::connect(&web).await.send(r).await.unwrap() }
    };
    let r = send(post("/echo", r#"{"name":"ok"}"#)).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, r#"{"name":"ok"}"#),
        "the checked body is forwarded whole"
    );
    let r = send(post("/echo", r#"{"name":1}"#)).await;
    assert_eq!(r.status, 400);
    let body = r.json();
    assert_eq!(body["error"], "request_invalid");
    assert!(
        body["errors"][0].as_str().unwrap().contains("/name"),
        "{body}"
    );
    assert_eq!(send(post("/echo", "not json")).await.status, 400);

    // OpenAPI: path parameters, query and header parameters, bodies through $ref.
    assert_eq!(
        send(req("/orders/7?expand=true", &[("x-tenant", "t1")]))
            .await
            .status,
        200
    );
    // The validator checks the path the upstream gets: the normalised one.
    let r = send(req("/v1/../orders/%37?expand=true", &[("x-tenant", "t1")])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().uri.path(), "/orders/7");
    for (path, headers, what) in [
        ("/orders/0", vec![("x-tenant", "t1")], "minimum"),
        ("/orders/abc", vec![("x-tenant", "t1")], "integer"),
        (
            "/orders/7?expand=maybe",
            vec![("x-tenant", "t1")],
            "boolean",
        ),
        ("/orders/7", vec![], "x-tenant"),
        ("/nowhere", vec![], "not in the API description"),
    ] {
        let r = send(req(path, &headers)).await;
        assert_eq!(r.status, 400, "{path}");
        assert!(r.body.contains(what), "{path}: {}", r.body);
    }
    let r = send(
        Request::delete("/orders/7")
            .header("host", "x")
            .header("x-tenant", "t")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert!(r.body.contains("not allowed"), "{}", r.body);
    assert_eq!(
        send(post("/orders", r#"{"item":"pen","quantity":2}"#))
            .await
            .status,
        200
    );
    let r = send(post("/orders", r#"{"item":"pen","quantity":0}"#)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = send(post("/orders", "")).await;
    assert_eq!(r.status, 400, "a required body is missing: {}", r.body);
    assert!(up.seen().iter().all(|s| s.uri.path() != "/nowhere"));
}

#[tokio::test]
async fn consumers_carry_their_own_limits_and_headers() {
    let up = TestUpstream::start("U").await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
consumers:
  - name: alice
    api_keys: ['alice-key-123']
    plugins:
      - rate_limit: { limit: 2, window: 1m }
      - request_headers: { set: { x-tier: gold } }
  - name: bob
    api_keys: ['bob-key-4567']
    plugins: [ { rate_limit: { limit: 4, window: 1m } } ]
  - { name: carol, api_keys: ['carol-key-890'] }
routes:
  - name: tiered
    plugins:
      - key_auth: {}
      - rate_limit: { limit: 1, window: 1m, by: consumer }
    upstream: u
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[("U", &up.addr())],
    ));
    let web = gw.addr("web");
    let mut c = H1::connect(&web).await;
    let passed = |key: &'static str| {
        let web = web.clone();
        async move {
            let mut c = H1::connect(&web).await;
            let mut statuses = Vec::new();
            for _ in 0..6 {
                statuses.push(c.send(req("/x", &[("x-api-key", key)])).await.unwrap());
            }
            statuses
        }
    };
    // Each consumer's own limit replaces the route's: 2 for alice, 4 for bob, the route's 1
    // for carol, who carries none. Counted separately.
    let alice = passed("alice-key-123").await;
    let bob = passed("bob-key-4567").await;
    let carol = passed("carol-key-890").await;
    let ok = |r: &[crate::support::client::Reply]| r.iter().filter(|r| r.status == 200).count();
    assert_eq!((ok(&alice), ok(&bob), ok(&carol)), (2, 4, 1));
    assert_eq!(alice[0].header("ratelimit-policy"), Some("2;w=60"));
    assert_eq!(alice[0].header("ratelimit-remaining"), Some("1"));
    assert_eq!(bob[5].status, 429);
    assert_eq!(carol[0].header("ratelimit-policy"), Some("1;w=60"));
    // Alice's own header plugin ran for her requests only.
    let tiers: Vec<Option<String>> = up
        .seen()
        .iter()
        .map(|s| {
            s.headers
                .get("x-tier")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        tiers
            .iter()
            .filter(|t| t.as_deref() == Some("gold"))
            .count(),
        2
    );
    assert_eq!(tiers.len(), 7);
    // Without a key, authentication refuses before any consumer plugin runs.
    assert_eq!(c.send(req("/x", &[])).await.unwrap().status, 401);
}

#[tokio::test]
async fn daily_quotas_count_exactly_per_consumer_and_survive_a_reload() {
    let up = TestUpstream::start("U").await;
    let config = fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
consumers:
  - name: alice
    api_keys: ['alice-key-123']
    plugins: [ { quota: { limit: 3, period: 1d } } ]
  - name: bob
    api_keys: ['bob-key-4567']
    plugins:
      - quota: { limit: 5, period: 1d }
      - rate_limit: { limit: 2, window: 1h }
routes:
  - name: metered
    plugins: [ { key_auth: {} } ]
    upstream: u
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[("U", &up.addr())],
    );
    let gw = Portico::start(&config);
    let mut c = H1::connect(&gw.addr("web")).await;
    let mut alice = Vec::new();
    for _ in 0..5 {
        alice.push(
            c.send(req("/x", &[("x-api-key", "alice-key-123")]))
                .await
                .unwrap(),
        );
    }
    let statuses: Vec<u16> = alice.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let remaining: Vec<&str> = alice[..3]
        .iter()
        .map(|r| r.header("ratelimit-remaining").unwrap())
        .collect();
    assert_eq!(remaining, ["2", "1", "0"]);
    assert_eq!(alice[0].header("ratelimit-policy"), Some("3;w=86400"));
    let refused = &alice[3];
    assert_eq!(refused.json()["error"], "quota_exceeded");
    // The quota comes back at midnight UTC, not a window after the first request.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86_400 - now % 86_400;
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(retry.abs_diff(to_midnight) <= 2, "{retry} vs {to_midnight}");
    assert_eq!(
        refused.header("ratelimit-reset"),
        Some(retry.to_string().as_str())
    );

    // Bob carries a rate and a quota: the tighter one's figures, both policies.
    let first = c
        .send(req("/x", &[("x-api-key", "bob-key-4567")]))
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("5;w=86400, 2;w=3600")
    );
    assert_eq!(first.header("ratelimit-limit"), Some("2"));
    assert_eq!(first.header("ratelimit-remaining"), Some("1"));

    // A reload of the same config keeps the counts: alice stays refused.
    assert!(gw.reload(&config));
    let after = c
        .send(req("/x", &[("x-api-key", "alice-key-123")]))
        .await
        .unwrap();
    assert_eq!(after.status, 429);
    assert_eq!(up.seen().len(), 4);
}
