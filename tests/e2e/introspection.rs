//! `oauth2_introspection` against a real introspection endpoint (examples/introspection_server.py):
//! decisions, the cache seen from the endpoint, identity for later plugins, failing closed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::client::Reply;
use crate::support::{H1, Portico, TestUpstream, cli, fill, get, temp_dir};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SECRET: &str = "s3cret-for-tests";

/// The stand-in endpoint, stopped on drop.
pub(crate) struct Endpoint {
    child: Child,
    pub(crate) addr: String,
}

impl Endpoint {
    pub(crate) fn start(secret: &str) -> Self {
        Self::start_with(&["0", "portico", secret])
    }

    fn start_with(args: &[&str]) -> Self {
        let mut child = Command::new("python3")
            .arg(format!("{ROOT}/examples/introspection_server.py"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Endpoint { child, addr }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    /// How many introspection calls it got.
    pub(crate) async fn calls(&self) -> u64 {
        get(&self.addr, "/calls").await.body.trim().parse().unwrap()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn request(path: &str, token: Option<&str>) -> Request<Full<Bytes>> {
    let mut r = Request::get(path)
        .header("host", "x")
        .header("x-user-id", "forged");
    if let Some(token) = token {
        r = r.header("authorization", format!("Bearer {token}"));
    }
    r.body(Full::default()).unwrap()
}

async fn send(web: &str, path: &str, token: Option<&str>) -> Reply {
    H1::connect(web)
        .await
        .send(request(path, token))
        .await
        .unwrap()
}

/// No answer shows a token or the client secret.
fn clean(reply: &Reply, tokens: &[&str]) {
    for t in tokens.iter().chain(&[SECRET]) {
        assert!(!reply.body.contains(t), "`{t}` in {}", reply.body);
        for (_, v) in &reply.headers {
            assert!(!v.to_str().unwrap_or("").contains(t), "`{t}` in a header");
        }
    }
}

fn config(url: &str, upstream: &str, extra: &str) -> String {
    fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
admin: { listen: 127.0.0.1:0 }
consumers:
  - { name: alice, groups: [admins] }
  - { name: bob }
routes:
  - name: admin
    match: { path_prefix: /admin }
    plugins:
      - oauth2_introspection:
          introspection_url: '@URL@'
          client_id: portico
          client_secret: ${INTROSPECTION_SECRET}
      - acl: { allow: [admins] }
      - rate_limit: { by: consumer, limit: 100, window: 1m }
    upstream: u
  - name: api
    plugins:
      - oauth2_introspection:
          introspection_url: '@URL@'
          client_id: portico
          client_secret: ${INTROSPECTION_SECRET}
          scopes: [read]
          audience: [api]
          claims_to_headers: { sub: x-user-id, scope: x-scopes }
          hide_credentials: true
@EXTRA@
    upstream: u
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[("URL", url), ("U", upstream), ("EXTRA", extra)],
    )
}

const TOKENS: &[&str] = &[
    "tok-good",
    "tok-readonly",
    "tok-writer",
    "tok-inactive",
    "tok-expired",
    "tok-otheraud",
    "tok-slow",
    "tok-garbage",
];

#[tokio::test]
async fn introspection_decides_caches_and_names_the_consumer() {
    let endpoint = Endpoint::start(SECRET);
    let up = TestUpstream::start("U").await;
    let dir = temp_dir("introspection");
    let gw = Portico::start_in_env(
        &dir,
        &config(&endpoint.url(), &up.addr(), ""),
        &[("INTROSPECTION_SECRET", SECRET)],
    );
    let web = gw.addr("web");

    // No token: a challenge without an error code, and no call.
    let r = send(&web, "/api/x", None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\"")
    );
    assert_eq!(endpoint.calls().await, 0);

    // An active token with the scope: on to the upstream with its claims.
    let r = send(&web, "/api/x", Some("tok-good")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last();
    assert_eq!(
        seen.headers["x-user-id"], "alice",
        "the forged header was replaced"
    );
    assert_eq!(seen.headers["x-scopes"], "read write");
    assert_eq!(seen.headers["x-consumer-name"], "alice");
    assert_eq!(seen.headers["x-consumer-groups"], "admins");
    assert!(
        seen.headers.get("authorization").is_none(),
        "hide_credentials"
    );
    assert_eq!(endpoint.calls().await, 1);

    // Cached: 20 more requests, 10 of them at once, make no call.
    for _ in 0..10 {
        assert_eq!(send(&web, "/api/x", Some("tok-good")).await.status, 200);
    }
    let many: Vec<_> = (0..10)
        .map(|_| {
            let web = web.clone();
            tokio::spawn(async move { send(&web, "/api/x", Some("tok-good")).await.status })
        })
        .collect();
    for task in many {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(endpoint.calls().await, 1, "one call for one token");

    // Concurrent misses of one new token share one call.
    let before = endpoint.calls().await;
    let many: Vec<_> = (0..8)
        .map(|_| {
            let web = web.clone();
            tokio::spawn(async move { send(&web, "/admin/x", Some("tok-readonly")).await.status })
        })
        .collect();
    for task in many {
        assert_eq!(task.await.unwrap(), 403, "bob is not an admin");
    }
    assert_eq!(endpoint.calls().await, before + 1);

    // Two Authorization headers: refused without a call.
    let before = endpoint.calls().await;
    let two = Request::get("/api/x")
        .header("host", "x")
        .header("authorization", "Bearer tok-good")
        .header("authorization", "Bearer tok-readonly")
        .body(Full::default())
        .unwrap();
    let r = H1::connect(&web).await.send(two).await.unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\", error=\"invalid_token\"")
    );
    assert_eq!(endpoint.calls().await, before);

    // Refusals, with RFC 6750 errors.
    for (token, status, error) in [
        ("tok-inactive", 401, "invalid_token"),
        ("tok-expired", 401, "invalid_token"),
        ("tok-otheraud", 401, "invalid_token"),
        ("tok-writer", 403, "insufficient_scope\", scope=\"read"),
    ] {
        let r = send(&web, "/api/x", Some(token)).await;
        assert_eq!(r.status, status, "{token}: {}", r.body);
        assert_eq!(
            r.header("www-authenticate"),
            Some(format!("Bearer realm=\"portico\", error=\"{error}\"").as_str()),
            "{token}"
        );
        assert_eq!(
            r.json()["error"],
            if status == 401 {
                "unauthorized"
            } else {
                "forbidden"
            }
        );
        clean(&r, TOKENS);
    }
    // Negative answers are cached too.
    let before = endpoint.calls().await;
    for token in ["tok-inactive", "tok-expired", "tok-otheraud", "tok-writer"] {
        assert_ne!(send(&web, "/api/x", Some(token)).await.status, 200);
    }
    assert_eq!(
        endpoint.calls().await,
        before,
        "refusals come from the cache"
    );

    // The consumer serves acl after introspection.
    let r = send(&web, "/admin/x", Some("tok-good")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().headers["x-consumer-name"], "alice");
    assert!(
        up.last().headers.get("authorization").is_some(),
        "kept without hide_credentials"
    );
    let r = send(&web, "/admin/x", Some("tok-readonly")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    clean(&r, TOKENS);

    // The secret is not shown by GET /config.
    let shown = get(gw.admin.as_deref().unwrap(), "/config").await;
    assert_eq!(shown.status, 200);
    assert!(!shown.body.contains(SECRET), "{}", shown.body);
    assert!(shown.body.contains("<redacted>"), "{}", shown.body);
}

#[tokio::test]
async fn introspection_posts_credentials_and_expires_answers() {
    let endpoint = Endpoint::start(SECRET);
    let up = TestUpstream::start("U").await;
    let dir = temp_dir("introspection-post");
    let extra =
        "          client_auth: post\n          cache_ttl: 300ms\n          negative_cache_ttl: 0s";
    let gw = Portico::start_in_env(
        &dir,
        &config(&endpoint.url(), &up.addr(), extra),
        &[("INTROSPECTION_SECRET", SECRET)],
    );
    let web = gw.addr("web");
    assert_eq!(send(&web, "/api/x", Some("tok-good")).await.status, 200);
    assert_eq!(send(&web, "/api/x", Some("tok-good")).await.status, 200);
    assert_eq!(endpoint.calls().await, 1);
    // Past cache_ttl, a new call.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(send(&web, "/api/x", Some("tok-good")).await.status, 200);
        if endpoint.calls().await == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the answer was never fetched again"
        );
    }
    // negative_cache_ttl: 0s keeps no refusal.
    let before = endpoint.calls().await;
    for _ in 0..3 {
        assert_eq!(send(&web, "/api/x", Some("tok-inactive")).await.status, 401);
    }
    assert_eq!(endpoint.calls().await, before + 3);
}

#[tokio::test]
async fn introspection_fails_closed() {
    let endpoint = Endpoint::start("another-secret");
    let up = TestUpstream::start("U").await;
    let dir = temp_dir("introspection-fail");
    let extra = "          timeout: 500ms";
    let gw = Portico::start_in_env(
        &dir,
        &config(&endpoint.url(), &up.addr(), extra),
        &[("INTROSPECTION_SECRET", SECRET)],
    );
    let web = gw.addr("web");
    // The endpoint refuses portico's credentials (401): 503, not cached.
    for _ in 0..2 {
        let r = send(&web, "/api/x", Some("tok-good")).await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.json()["error"], "auth_unavailable");
        clean(&r, TOKENS);
    }
    assert_eq!(endpoint.calls().await, 2, "failures are not cached");
    assert_eq!(up.count(), 0, "never open");
    drop(gw);

    let endpoint = Endpoint::start(SECRET);
    let gw = Portico::start_in_env(
        &dir,
        &config(&endpoint.url(), &up.addr(), extra),
        &[("INTROSPECTION_SECRET", SECRET)],
    );
    let web = gw.addr("web");
    // Too slow: 503 within the timeout.
    let started = Instant::now();
    let r = send(&web, "/api/x", Some("tok-slow")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    clean(&r, TOKENS);
    // Not JSON: 503.
    let r = send(&web, "/api/x", Some("tok-garbage")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    // Down: 503.
    drop(endpoint);
    let r = send(&web, "/api/x", Some("tok-good")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "auth_unavailable");
    clean(&r, TOKENS);
    assert_eq!(up.count(), 0, "never open");
}

#[test]
fn introspection_settings_are_checked_and_explained() {
    let dir = temp_dir("introspection-cli");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: api
    plugins:
      - oauth2_introspection:
          introspection_url: 'ftp://idp.example/introspect'
          client_id: portico
          client_secret: s
    upstream: u
  - name: two
    plugins:
      - oauth2_introspection:
          introspection_url: 'https://idp.example/introspect'
          client_id: ' '
          client_secret: s
    upstream: u
upstreams:
  u: { targets: [ { address: 127.0.0.1:9 } ] }
",
    )
    .unwrap();
    let (code, _, err) = cli(&["validate", "-c", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("bad.yaml:7:"), "{err}");
    assert!(
        err.contains("bad.yaml:15:") && err.contains("client_id must not be empty"),
        "{err}"
    );

    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: api
    plugins:
      - oauth2_introspection:
          introspection_url: 'http://127.0.0.1:9/introspect'
          client_id: portico
          client_secret: very-secret-value
    upstream: u
upstreams:
  u: { targets: [ { address: 127.0.0.1:9 } ] }
",
    )
    .unwrap();
    let (code, out, err) = cli(&[
        "explain",
        "-c",
        good.to_str().unwrap(),
        "-H",
        "Authorization: Bearer opaque-token-value",
        "GET",
        "http://localhost/x",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("would be POSTed to http://127.0.0.1:9/introspect"),
        "{out}"
    );
    assert!(
        !out.contains("opaque-token-value") && !out.contains("very-secret-value"),
        "{out}"
    );
}

#[tokio::test]
async fn introspection_over_https_verifies_the_endpoint() {
    let dir = temp_dir("introspection-tls");
    let ca = crate::support::pki::Ca::new(&dir, "idp CA");
    let pair = ca.leaf("idp", "localhost", &["localhost"], false, false);
    let endpoint = Endpoint::start_with(&[
        "0",
        "portico",
        SECRET,
        pair.cert.to_str().unwrap(),
        pair.key.to_str().unwrap(),
    ]);
    let port = endpoint.addr.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://localhost:{port}/introspect");
    let up = TestUpstream::start("U").await;
    // Verified with the configured CA: the token is checked.
    let gw = Portico::start_in_env(
        &dir,
        &config(&url, &up.addr(), "          ca_file: ca.pem"),
        &[("INTROSPECTION_SECRET", SECRET)],
    );
    let r = send(&gw.addr("web"), "/api/x", Some("tok-good")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().headers["x-user-id"], "alice");
    drop(gw);
    // With the system roots the private CA is not trusted: fail closed.
    let gw = Portico::start_in_env(
        &dir,
        &config(&url, &up.addr(), ""),
        &[("INTROSPECTION_SECRET", SECRET)],
    );
    let r = send(&gw.addr("web"), "/api/x", Some("tok-good")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "auth_unavailable");
    assert_eq!(up.count(), 1);
}
