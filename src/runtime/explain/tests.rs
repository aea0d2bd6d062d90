//! The explain text: plugins evaluated on the request, forwarding settings, and no secret.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::{Question, explain};

fn snapshot(text: &str) -> crate::runtime::Snapshot {
    crate::runtime::compile::compile_str(text).unwrap_or_else(|errors| panic!("{errors:#?}"))
}

fn ask(
    snap: &crate::runtime::Snapshot,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    peer: &str,
) -> String {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let q = Question {
        method: Method::from_bytes(method.as_bytes()).unwrap(),
        url,
        headers: map,
        client: peer.parse().unwrap(),
    };
    explain(snap, &q).unwrap()
}

const KEYS: &str = "\
listeners: [ { name: web, bind: 127.0.0.1:8080 } ]
consumers:
  - { name: alice, api_keys: [alice-key-123456], groups: [paid] }
  - { name: bob, api_keys: [bob-key-1234567], groups: [free] }
routes:
  - name: keys
    match: { path_prefix: /keys/ }
    plugins:
      - key_auth: { query: api_key }
      - acl: { allow: [paid] }
      - rate_limit: { limit: 5, window: 10s, by: consumer }
      - rate_limit: { limit: 50, window: 1m, by: 'header:x-api-key' }
      - rate_limit: { limit: 9, window: 1s, by: 'header:x-tenant' }
      - rate_limit: { limit: 7, window: 1m, by: ip }
    respond: { status: 200 }
  - name: matcher
    match: { path_prefix: /m/, headers: { x-api-key: alice-key-123456, x-tenant: acme }, query: { token: sesame-secret-1, page: '2' } }
    respond: { status: 200 }
";

#[test]
fn a_key_maps_to_its_consumer_and_limits_say_their_key_and_policy() {
    let snap = snapshot(KEYS);
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/keys/1",
        &[("x-api-key", "alice-key-123456"), ("x-tenant", "acme")],
        "192.0.2.7",
    );
    assert!(
        out.contains("key sent in header x-api-key (value not shown)"),
        "{out}"
    );
    assert!(
        out.contains("→ passes: authenticated as consumer alice"),
        "{out}"
    );
    assert!(
        out.contains("consumer alice in groups [paid]; allow [paid] deny []"),
        "{out}"
    );
    assert!(
        out.contains("counts by consumer alice; policy 5;w=10 (RateLimit-Policy)"),
        "{out}"
    );
    assert!(
        out.contains(
            "counts by header x-api-key (its value, a credential, is not shown); policy 50;w=60"
        ),
        "{out}"
    );
    assert!(
        out.contains("counts by header x-tenant = acme; policy 9;w=1"),
        "{out}"
    );
    assert!(
        out.contains("counts by ip 192.0.2.7; policy 7;w=60"),
        "{out}"
    );
    assert!(out.contains("action    respond 200"), "{out}");
    assert!(!out.contains("alice-key-123456"), "{out}");

    // From the query, redacted wherever the URL shows.
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/keys/1?api_key=bob-key-1234567",
        &[],
        "127.0.0.1",
    );
    assert!(out.contains("key sent in query parameter api_key"), "{out}");
    assert!(out.contains("authenticated as consumer bob"), "{out}");
    assert!(
        out.contains("→ answers 403 Forbidden — the consumer is in no group allowed on this route"),
        "{out}"
    );
    assert!(
        out.contains("result    403 Forbidden from acl [route]"),
        "{out}"
    );
    assert!(!out.contains("action    "), "{out}");
    assert!(!out.contains("bob-key-1234567"), "{out}");

    // Why a request gets 401.
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/keys/1",
        &[("x-api-key", "not-a-known-key")],
        "127.0.0.1",
    );
    assert!(
        out.contains("answers 401 Unauthorized — the API key is not valid"),
        "{out}"
    );
    assert!(
        out.contains("www-authenticate: Key realm=\"portico\""),
        "{out}"
    );
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/keys/1",
        &[],
        "127.0.0.1",
    );
    assert!(
        out.contains("reads the key from header x-api-key or query parameter api_key: none sent"),
        "{out}"
    );
    assert!(
        out.contains("answers 401 Unauthorized — an API key is required"),
        "{out}"
    );
}

#[test]
fn matcher_values_on_credential_names_are_redacted() {
    let snap = snapshot(KEYS);
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/m/1?token=sesame-secret-1&page=2",
        &[("x-api-key", "alice-key-123456"), ("x-tenant", "acme")],
        "127.0.0.1",
    );
    assert!(
        out.contains(
            "header x-api-key=<redacted> header x-tenant=acme query page=2 query token=<redacted>"
        ),
        "{out}"
    );
    assert!(out.contains("route     matcher"), "{out}");
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/m/1?token=wrong",
        &[("x-api-key", "alice-key-123456"), ("x-tenant", "acme")],
        "127.0.0.1",
    );
    assert!(out.contains("no: query does not match"), "{out}");
    for secret in ["alice-key-123456", "sesame-secret-1", "wrong"] {
        assert!(!out.contains(secret), "{secret} printed: {out}");
    }
}

#[test]
fn a_basic_credential_is_verified_against_its_hash() {
    let hash = bcrypt::hash("carol-password", 4).unwrap();
    let snap = snapshot(&format!(
        "\
listeners: [ {{ name: web, bind: 127.0.0.1:8080 }} ]
consumers:
  - {{ name: carol, basic_auth: {{ username: carol, password_hash: '{hash}' }} }}
routes:
  - {{ name: b, plugins: [ {{ basic_auth: {{}} }} ], respond: {{ status: 204 }} }}
"
    ));
    let basic = |creds: &str| format!("Basic {}", base64(creds.as_bytes()));
    let good = basic("carol:carol-password");
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/",
        &[("authorization", &good)],
        "127.0.0.1",
    );
    assert!(
        out.contains("credentials for user carol; the password is checked"),
        "{out}"
    );
    assert!(
        out.contains("→ passes: authenticated as consumer carol"),
        "{out}"
    );
    assert!(out.contains("action    respond 204"), "{out}");
    let bad = basic("carol:guess");
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/",
        &[("authorization", &bad)],
        "127.0.0.1",
    );
    assert!(
        out.contains("answers 401 Unauthorized — unknown user or wrong password"),
        "{out}"
    );
    for secret in ["carol-password", good.as_str(), "guess", hash.as_str()] {
        assert!(!out.contains(secret), "{secret} printed: {out}");
    }
}

/// Standard base64, padded (RFC 4648 §4).
fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn token(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[test]
fn a_jwt_is_verified_offline_with_the_configured_keys() {
    const SECRET: &str = "a-long-enough-hmac-secret";
    let snap = snapshot(&format!(
        "\
listeners: [ {{ name: web, bind: 127.0.0.1:8080 }} ]
consumers: [ {{ name: dave, groups: [staff] }} ]
routes:
  - name: j
    plugins:
      - jwt: {{ keys: [ {{ alg: HS256, secret: {SECRET} }} ], issuers: [https://id.example.com], required_claims: [email] }}
      - acl: {{ allow: [staff] }}
    respond: {{ status: 200 }}
"
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = token(
        SECRET,
        serde_json::json!({ "sub": "dave", "iss": "https://id.example.com", "exp": now + 600, "email": "d@example.com" }),
    );
    let bearer = format!("Bearer {good}");
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/",
        &[("authorization", &bearer)],
        "127.0.0.1",
    );
    assert!(
        out.contains("token alg HS256 (token and signature not shown)"),
        "{out}"
    );
    assert!(out.contains("sub=\"dave\""), "{out}");
    assert!(
        out.contains("→ passes: authenticated as consumer dave"),
        "{out}"
    );
    assert!(out.contains("consumer dave in groups [staff]"), "{out}");
    let signature = good.rsplit('.').next().unwrap();
    for secret in [good.as_str(), signature, SECRET] {
        assert!(!out.contains(secret), "{secret} printed: {out}");
    }

    let expired = token(
        SECRET,
        serde_json::json!({ "sub": "dave", "iss": "https://id.example.com", "exp": now - 600, "email": "d@example.com" }),
    );
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/",
        &[("authorization", &format!("Bearer {expired}"))],
        "127.0.0.1",
    );
    assert!(
        out.contains("answers 401 Unauthorized — the token has expired"),
        "{out}"
    );
    let forged = token(
        "another-secret-of-length",
        serde_json::json!({ "sub": "dave", "iss": "https://id.example.com", "exp": now + 600, "email": "d@example.com" }),
    );
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/",
        &[("authorization", &format!("Bearer {forged}"))],
        "127.0.0.1",
    );
    assert!(
        out.contains("answers 401 Unauthorized — the token is not valid"),
        "{out}"
    );
    let foreign = token(
        SECRET,
        serde_json::json!({ "sub": "dave", "iss": "https://evil.example.com", "exp": now + 600, "email": "d@example.com" }),
    );
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/",
        &[("authorization", &format!("Bearer {foreign}"))],
        "127.0.0.1",
    );
    assert!(
        out.contains("the token is from an unaccepted issuer"),
        "{out}"
    );
    let bare = token(
        SECRET,
        serde_json::json!({ "sub": "dave", "iss": "https://id.example.com", "exp": now + 600 }),
    );
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/",
        &[("authorization", &format!("Bearer {bare}"))],
        "127.0.0.1",
    );
    assert!(out.contains("email missing"), "{out}");
    assert!(out.contains("the token lacks a required claim"), "{out}");
}

#[test]
fn a_jwt_from_a_jwks_url_is_not_verified_offline() {
    let snap = snapshot(
        "\
listeners: [ { name: web, bind: 127.0.0.1:8080 } ]
routes:
  - name: j
    plugins: [ { jwt: { jwks_url: 'https://id.example.com/jwks.json' } } ]
    respond: { status: 200 }
",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = token(
        "whatever-signed-it-12",
        serde_json::json!({ "sub": "erin", "exp": now + 60 }),
    );
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/",
        &[("authorization", &format!("Bearer {jwt}"))],
        "127.0.0.1",
    );
    assert!(
        out.contains("its key would come from jwks_url https://id.example.com/jwks.json, which is not fetched offline"),
        "{out}"
    );
    assert!(out.contains("sub=\"erin\""), "{out}");
    assert!(
        out.contains("not decided offline; if it passes, goes on as consumer erin"),
        "{out}"
    );
    assert!(out.contains("action    respond 200"), "{out}");
    assert!(!out.contains(&jwt), "{out}");
}

const BROWSER: &str = "\
listeners: [ { name: web, bind: 127.0.0.1:8080 } ]
routes:
  - name: app
    plugins:
      - ip_restriction: { allow: [203.0.113.0/24], trusted_proxies: [10.0.0.0/8] }
      - cors: { origins: ['https://app.example.com'], methods: [GET, POST], headers: [authorization], max_age: 10m }
    upstream: u
    retry: { attempts: 3, on: [connect_failure, reset, 503], budget_percent: 10, budget_min: 2 }
    timeout: 15s
upstreams:
  u:
    balance: ring_hash
    targets: [ { address: 127.0.0.1:9001 }, { address: 127.0.0.1:9002 } ]
    health_check:
      active: { path: /healthz, interval: 5s }
      passive: { consecutive_failures: 3, eject_for: 20s }
    sticky: { cookie: srv, ttl: 30m }
";

#[test]
fn preflights_and_addresses_are_judged() {
    let snap = snapshot(BROWSER);
    let preflight = [
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "POST"),
        ("x-forwarded-for", "203.0.113.5"),
    ];
    let out = ask(
        &snap,
        "OPTIONS",
        "http://localhost:8080/",
        &preflight,
        "10.0.0.2",
    );
    assert!(
        out.contains(
            "client 203.0.113.5 (from X-Forwarded-For: the peer 10.0.0.2 is a trusted proxy)"
        ),
        "{out}"
    );
    assert!(
        out.contains("preflight from https://app.example.com: origin allowed"),
        "{out}"
    );
    assert!(out.contains("→ answers 204 No Content"), "{out}");
    assert!(
        out.contains("access-control-allow-origin: https://app.example.com"),
        "{out}"
    );
    assert!(
        out.contains("access-control-allow-methods: GET, POST"),
        "{out}"
    );
    assert!(out.contains("access-control-max-age: 600"), "{out}");
    assert!(
        out.contains("result    204 No Content from cors [route]"),
        "{out}"
    );

    let foreign = [
        ("origin", "https://evil.example.com"),
        ("access-control-request-method", "POST"),
    ];
    let out = ask(
        &snap,
        "OPTIONS",
        "http://localhost:8080/",
        &foreign,
        "203.0.113.9",
    );
    assert!(
        out.contains("client 203.0.113.9 (the request's client address)"),
        "{out}"
    );
    assert!(out.contains("origin not allowed"), "{out}");
    assert!(
        out.contains("answers 403 Forbidden — this origin may not call this route"),
        "{out}"
    );

    // A peer outside the list, and one that is not a trusted proxy, whatever XFF says.
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/",
        &[("x-forwarded-for", "203.0.113.5")],
        "198.51.100.1",
    );
    assert!(
        out.contains("client 198.51.100.1 (the request's client address)"),
        "{out}"
    );
    assert!(
        out.contains("answers 403 Forbidden — the client address may not use this route"),
        "{out}"
    );
}

#[test]
fn forwarding_settings_are_listed() {
    let snap = snapshot(BROWSER);
    let out = ask(&snap, "GET", "http://localhost:8080/", &[], "203.0.113.5");
    assert!(out.contains("no Origin: not a CORS request"), "{out}");
    assert!(out.contains("action    forward to upstream u"), "{out}");
    assert!(
        out.contains("retry     3 attempts in all, on connect_failure, reset, 503; budget 10% of requests + 2/s"),
        "{out}"
    );
    assert!(out.contains("timeouts  route 15s, connect 5s"), "{out}");
    assert!(
        out.contains("balancer  ring_hash over 2 target(s)"),
        "{out}"
    );
    assert!(
        out.contains("health    active GET /healthz every 5s (timeout 1s, expect 200-399, 2 up / 3 down); passive: eject after 3 consecutive failures for 20s"),
        "{out}"
    );
    assert!(out.contains("sticky    cookie srv for 30m"), "{out}");

    let plain = snapshot(
        "\
listeners: [ { name: web, bind: 127.0.0.1:8080 } ]
routes: [ { name: r, upstream: u } ]
upstreams: { u: { targets: [ { address: 127.0.0.1:9001 } ] } }
",
    );
    let out = ask(&plain, "GET", "http://localhost:8080/", &[], "127.0.0.1");
    assert!(out.contains("plugins   (none)"), "{out}");
    assert!(
        out.contains("retry     2 attempts in all, on connect_failure; budget 20% of requests + 3/s (default: no `retry`)"),
        "{out}"
    );
    assert!(out.contains("timeouts  route none, connect 5s"), "{out}");
    assert!(out.contains("health    no health_check"), "{out}");
    assert!(out.contains("sticky    off"), "{out}");
}

#[test]
fn levels_and_replacements_are_shown() {
    let snap = snapshot(
        "\
listeners: [ { name: web, bind: 127.0.0.1:8080 } ]
plugins: [ { request_headers: { set: { x-from: global } } } ]
consumers:
  - { name: alice, api_keys: [alice-key-123456], plugins: [ { rate_limit: { limit: 3, window: 1m } } ] }
  - { name: bob, api_keys: [bob-key-1234567] }
routes:
  - name: x
    plugins:
      - key_auth: {}
      - rate_limit: { limit: 1, window: 1m, by: consumer }
      - request_headers: { set: { x-from: route } }
    consumer_plugins:
      alice: [ { rate_limit: { limit: 2, window: 1m } } ]
    respond: { status: 200 }
",
    );
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/",
        &[("x-api-key", "alice-key-123456")],
        "127.0.0.1",
    );
    assert!(
        out.contains("plugins   key_auth [route] → rate_limit [route] → request_headers [route]"),
        "{out}"
    );
    assert!(
        out.contains("consumers with plugins of their own here: alice"),
        "{out}"
    );
    assert!(
        out.contains("replaced  request_headers [global] by the request_headers [route] in force"),
        "{out}"
    );
    assert!(
        out.contains("consumer  alice: in force after authentication: rate_limit [route+consumer alice] → request_headers [route]"),
        "{out}"
    );
    assert!(
        out.contains(
            "replaced  rate_limit [route] by the rate_limit [route+consumer alice] in force"
        ),
        "{out}"
    );
    assert!(
        out.contains("replaced  rate_limit [consumer alice] by the rate_limit [route+consumer alice] in force"),
        "{out}"
    );
    assert!(
        out.contains("counts by consumer alice; policy 2;w=60"),
        "{out}"
    );

    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/",
        &[("x-api-key", "bob-key-1234567")],
        "127.0.0.1",
    );
    assert!(out.contains("authenticated as consumer bob"), "{out}");
    assert!(!out.contains("consumer  bob"), "{out}");
    assert!(
        out.contains("counts by consumer bob; policy 1;w=60"),
        "{out}"
    );
}

#[test]
fn a_certificate_subject_can_be_given_as_its_header() {
    let snap = snapshot(
        "\
listeners: [ { name: web, bind: 127.0.0.1:8080 } ]
consumers: [ { name: frank, cert_subject: 'CN=frank' } ]
routes: [ { name: m, plugins: [ { mtls_auth: {} } ], respond: { status: 200 } } ]
",
    );
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/",
        &[("x-client-cert-subject", "CN=frank")],
        "127.0.0.1",
    );
    assert!(out.contains("certificate subject CN=frank"), "{out}");
    assert!(out.contains("authenticated as consumer frank"), "{out}");
    let out = ask(&snap, "GET", "http://localhost:8080/", &[], "127.0.0.1");
    assert!(out.contains("no client certificate"), "{out}");
    assert!(out.contains("answers 401 Unauthorized"), "{out}");
}

#[test]
fn urls_lose_their_credentials() {
    let snap = snapshot(KEYS);
    let out = ask(
        &snap,
        "GET",
        "http://bob:hunter2@localhost:8080/keys/1",
        &[],
        "127.0.0.1",
    );
    assert!(
        out.contains("request   GET host=localhost path=/keys/1"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");
    for url in [
        "http://bob:hunter2@localhost:8080/a b?api_key=sesame-1",
        "/keys/1?api_key=sesame-1",
    ] {
        let q = Question {
            method: Method::GET,
            url,
            headers: HeaderMap::new(),
            client: "127.0.0.1".parse().unwrap(),
        };
        let err = explain(&snap, &q).unwrap_err().to_string();
        assert!(err.contains("?<query not shown>"), "{err}");
        assert!(
            !err.contains("sesame-1") && !err.contains("hunter2"),
            "{err}"
        );
    }
}

#[test]
fn a_quota_says_its_key_policy_and_when_its_period_ends() {
    let snap = snapshot(
        "\
listeners: [ { name: web, bind: 127.0.0.1:8080 } ]
consumers:
  - { name: bob, api_keys: [bob-key-1234567], plugins: [ { quota: { limit: 1000, period: 1d } } ] }
routes:
  - { name: api, plugins: [ { key_auth: {} } ], respond: { status: 200 } }
",
    );
    let out = ask(
        &snap,
        "GET",
        "http://localhost:8080/x",
        &[("x-api-key", "bob-key-1234567")],
        "192.0.2.7",
    );
    assert!(
        out.contains("consumer  bob: in force after authentication: quota [consumer bob]"),
        "{out}"
    );
    assert!(
        out.contains("counts by consumer bob; policy 1000;w=86400 (RateLimit-Policy); the current period ends in "),
        "{out}"
    );
    assert!(!out.contains("bob-key-1234567"), "{out}");
}

#[test]
fn a_request_no_route_takes_still_meets_the_global_plugins() {
    let snap = snapshot(
        "\
listeners: [ { name: web, bind: 127.0.0.1:8080 } ]
plugins: [ { ip_restriction: { deny: [192.0.2.0/24] } } ]
routes:
  - { name: api, match: { path_prefix: /api/ }, respond: { status: 200 } }
",
    );
    let denied = ask(
        &snap,
        "GET",
        "http://localhost:8080/elsewhere",
        &[],
        "192.0.2.7",
    );
    assert!(denied.contains("ip_restriction [global]"), "{denied}");
    assert!(denied.contains("403"), "{denied}");
    assert!(!denied.contains("404 Not Found"), "{denied}");
    let unrouted = ask(
        &snap,
        "GET",
        "http://localhost:8080/elsewhere",
        &[],
        "198.51.100.1",
    );
    assert!(
        unrouted.contains("result    404 Not Found — no route matches"),
        "{unrouted}"
    );
}

#[test]
fn admission_says_the_limits_and_what_the_client_counts_as() {
    let snap = snapshot(
        "\
listeners:
  - name: web
    bind: 127.0.0.1:8080
    limits: { connections_per_ip: 8, requests_per_ip: { limit: 10, window: 1s, burst: 20 }, ipv6_prefix: 48 }
    overload: { max_in_flight: 100, queue_timeout: 50ms, adaptive: { initial_limit: 10 } }
routes:
  - { name: all, respond: { status: 200 } }
",
    );
    let out = ask(
        &snap,
        "GET",
        "http://example.com:8080/",
        &[],
        "2001:db8:1:2::9",
    );
    assert!(
        out.contains(
            "per ip    8 connections at once, a request every 100ms (20 at once), then 429 per \
             client address; this client counts as 2001:db8:1:: (IPv6 by /48)"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "overload  an adaptive limit from 10 (between 3 and 100, recomputed every 100ms)"
        ),
        "{out}"
    );
    assert!(
        out.contains("waits up to 50ms, then 503 overloaded"),
        "{out}"
    );
}
