//! `jwt` against forged, expired, misaddressed and well-formed tokens.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

use crate::support::{H1, Portico, TestUpstream, fill, temp_dir};

const SECRET: &str = "a-long-enough-hmac-secret-for-tests";

pub(crate) fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut base = serde_json::json!({
        "sub": "alice", "email": "alice@example.com", "iss": "https://idp.test",
        "aud": "orders", "exp": now() + 300,
    });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

pub(crate) fn hs(kid: Option<&str>, claims: &serde_json::Value, secret: &[u8]) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Keys {
    dir: std::path::PathBuf,
    rsa_private: Vec<u8>,
    rsa_public: Vec<u8>,
    ec_private: Vec<u8>,
    ed_private: Vec<u8>,
}

fn keys() -> Keys {
    let dir = temp_dir("jwt");
    let p = |name: &str| dir.join(name).display().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p("rsa.key"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &p("rsa.key"),
        "-pubout",
        "-out",
        &p("rsa.pub"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &p("ec.key"),
    ]);
    openssl(&["pkey", "-in", &p("ec.key"), "-pubout", "-out", &p("ec.pub")]);
    openssl(&["genpkey", "-algorithm", "ED25519", "-out", &p("ed.key")]);
    openssl(&["pkey", "-in", &p("ed.key"), "-pubout", "-out", &p("ed.pub")]);
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    Keys {
        rsa_private: read("rsa.key"),
        rsa_public: read("rsa.pub"),
        ec_private: read("ec.key"),
        ed_private: read("ed.key"),
        dir,
    }
}

/// Serves a JWKS document and counts fetches.
pub(crate) async fn jwks_server(doc: String) -> (String, Arc<AtomicUsize>) {
    let (url, count, _) = jwks_server_with_switch(doc).await;
    (url, count)
}

/// Like `jwks_server`; while the flag is set, it answers 503.
pub(crate) async fn jwks_server_with_switch(
    doc: String,
) -> (String, Arc<AtomicUsize>, Arc<std::sync::atomic::AtomicBool>) {
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url, count) = serve_jwks(doc, Arc::clone(&down)).await;
    (url, count, down)
}

async fn serve_jwks(
    doc: String,
    down: Arc<std::sync::atomic::AtomicBool>,
) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (doc, counter, down) = (doc.clone(), Arc::clone(&counter), Arc::clone(&down));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let doc = doc.clone();
                    let status = if down.load(Ordering::Relaxed) {
                        503
                    } else {
                        200
                    };
                    async move {
                        let mut response = http::Response::new(Full::new(Bytes::from(doc)));
                        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}/jwks.json"), count)
}

fn bearer(token: &str) -> Request<Full<Bytes>> {
    Request::get("/api/x")
        .header("host", "x")
        .header("authorization", format!("Bearer {token}"))
        .header("x-user-email", "forged@evil.test")
        .body(Full::default())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_with_pinned_algorithms() {
    let k = keys();
    let up = TestUpstream::start("U").await;
    let jwks_doc = serde_json::json!({"keys": [
        {"kty": "oct", "kid": "from-jwks", "alg": "HS256", "k": b64url(b"jwks-secret-0123456789abcdef")}
    ]})
    .to_string();
    let (jwks_url, fetches) = jwks_server(jwks_doc).await;
    let config = fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
consumers:
  - { name: alice, groups: [paid] }
routes:
  - name: api
    plugins:
      - jwt:
          keys:
            - { alg: HS256, secret: '@SECRET@' }
            - { kid: rsa-1, alg: RS256, public_key_file: rsa.pub }
            - { kid: ec-1, alg: ES256, public_key_file: ec.pub }
            - { kid: ed-1, alg: EdDSA, public_key_file: ed.pub }
          jwks: { keys: [ { kty: oct, kid: inline-1, alg: HS256, k: '@INLINE@' } ] }
          jwks_url: '@JWKS@'
          issuers: [https://idp.test]
          audiences: [orders]
          leeway: 5s
          claims_to_headers: { email: x-user-email }
    upstream: u
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[
            ("SECRET", SECRET),
            ("JWKS", &jwks_url),
            ("U", &up.addr()),
            ("INLINE", &b64url(b"inline-secret-0123456789abcdef")),
        ],
    );
    let gw = Portico::start_in(&k.dir, &config);
    let mut c = H1::connect(&gw.addr("web")).await;
    let web = gw.addr("web");
    let status = |token: String| {
        let (req, web) = (bearer(&token), web.clone());
        async move { H1::connect(&web).await.send(req).await.unwrap() }
    };

    // Valid tokens of every key type.
    let good = claims(serde_json::json!({}));
    let r = c
        .send(bearer(&hs(None, &good, SECRET.as_bytes())))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last();
    assert_eq!(seen.headers["x-consumer-name"], "alice");
    assert_eq!(seen.headers["x-consumer-groups"], "paid");
    assert_eq!(
        seen.headers["x-user-email"], "alice@example.com",
        "the forged claim header was replaced"
    );
    for (kid, alg, key) in [
        (
            "rsa-1",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&k.rsa_private).unwrap(),
        ),
        (
            "ec-1",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&k.ec_private).unwrap(),
        ),
        (
            "ed-1",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&k.ed_private).unwrap(),
        ),
    ] {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        let token = encode(&header, &good, &key).unwrap();
        assert_eq!(status(token).await.status, 200, "{kid}");
    }

    // A key from the inline JWKS.
    assert_eq!(
        status(hs(
            Some("inline-1"),
            &good,
            b"inline-secret-0123456789abcdef"
        ))
        .await
        .status,
        200
    );

    // `alg: none`, in any casing, with or without a signature.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let head = b64url(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
        let body = b64url(good.to_string().as_bytes());
        for token in [format!("{head}.{body}."), format!("{head}.{body}.c2ln")] {
            let r = status(token).await;
            assert_eq!(r.status, 401, "alg {alg}");
            assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
        }
    }
    // The RSA public key used as an HMAC secret, under the RSA key's kid or none.
    for kid in [Some("rsa-1"), None] {
        assert_eq!(
            status(hs(kid, &good, &k.rsa_public)).await.status,
            401,
            "HS/RS confusion with kid {kid:?}"
        );
    }
    // Expired, not yet valid, wrong audience, wrong issuer, no exp, wrong secret.
    for (case, token) in [
        (
            "expired",
            hs(
                None,
                &claims(serde_json::json!({"exp": now() - 60})),
                SECRET.as_bytes(),
            ),
        ),
        (
            "not yet valid",
            hs(
                None,
                &claims(serde_json::json!({"nbf": now() + 60})),
                SECRET.as_bytes(),
            ),
        ),
        (
            "audience",
            hs(
                None,
                &claims(serde_json::json!({"aud": "billing"})),
                SECRET.as_bytes(),
            ),
        ),
        (
            "issuer",
            hs(
                None,
                &claims(serde_json::json!({"iss": "https://evil.test"})),
                SECRET.as_bytes(),
            ),
        ),
        (
            "no exp",
            hs(
                None,
                &serde_json::json!({"sub": "alice", "aud": "orders", "iss": "https://idp.test"}),
                SECRET.as_bytes(),
            ),
        ),
        (
            "wrong secret",
            hs(None, &good, b"another-secret-of-enough-length"),
        ),
        ("garbage", "not.a.token".to_owned()),
    ] {
        let r = status(token).await;
        assert_eq!(r.status, 401, "{case}: {}", r.body);
        assert!(!r.body.contains(SECRET));
    }
    // Two Authorization headers.
    let mut two = bearer(&hs(None, &good, SECRET.as_bytes()));
    two.headers_mut()
        .append("authorization", "Bearer x".parse().unwrap());
    assert_eq!(c.send(two).await.unwrap().status, 401);

    // A key from the JWKS URL works; unknown kids do not make portico refetch without bound.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = status(hs(
            Some("from-jwks"),
            &good,
            b"jwks-secret-0123456789abcdef",
        ))
        .await;
        if r.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the JWKS key never worked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = fetches.load(Ordering::Relaxed);
    for i in 0..30 {
        let r = status(hs(Some(&format!("unknown-{i}")), &good, SECRET.as_bytes())).await;
        assert_eq!(r.status, 401);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra = fetches.load(Ordering::Relaxed) - before;
    assert!(extra <= 1, "{extra} JWKS fetches for 30 unknown kids");
}

#[tokio::test]
async fn no_token_gets_a_bare_challenge_and_required_claims_are_enforced() {
    let up = TestUpstream::start("U").await;
    let config = fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: strict
    match: { path_prefix: /strict/ }
    plugins:
      - jwt: { keys: [ { alg: HS256, secret: '@SECRET@' } ], required_claims: [sub, email] }
    upstream: u
  - name: lax
    plugins:
      - jwt: { keys: [ { alg: HS256, secret: '@SECRET@' } ] }
    upstream: u
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[("SECRET", SECRET), ("U", &up.addr())],
    );
    let gw = Portico::start(&config);
    let mut c = H1::connect(&gw.addr("web")).await;
    let get = |path: &str, auth: Option<String>| {
        let mut r = Request::get(path).header("host", "x");
        if let Some(auth) = auth {
            r = r.header("authorization", auth);
        }
        r.body(Full::default()).unwrap()
    };

    // RFC 6750 §3.1: no credentials (or another scheme) means no error code.
    for auth in [None, Some("Basic YWxpY2U6cHc=".to_owned())] {
        let r = c.send(get("/api/x", auth.clone())).await.unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"portico\""),
            "{auth:?}"
        );
    }
    // A presented token that fails is `invalid_token`.
    let r = c
        .send(get("/api/x", Some("Bearer not.a.token".to_owned())))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\", error=\"invalid_token\"")
    );

    let no_sub = serde_json::json!({"email": "a@example.com", "exp": now() + 300});
    let token = hs(None, &no_sub, SECRET.as_bytes());
    // Without `required_claims`, only `exp` is required.
    let r = c
        .send(get("/lax/x", Some(format!("Bearer {token}"))))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c
        .send(get("/strict/x", Some(format!("Bearer {token}"))))
        .await
        .unwrap();
    assert_eq!(
        r.status, 401,
        "a token without `sub` on a route requiring it"
    );
    assert!(r.body.contains("required claim"), "{}", r.body);
    let full = claims(serde_json::json!({}));
    let r = c
        .send(get(
            "/strict/x",
            Some(format!("Bearer {}", hs(None, &full, SECRET.as_bytes()))),
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
}

const JWKS_SECRET: &[u8] = b"jwks-secret-0123456789abcdef";

/// A config whose only key comes from `jwks_url`.
fn jwks_only(url: &str, upstream: &str, leeway: &str) -> String {
    fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: api
    plugins:
      - jwt: { jwks_url: '@JWKS@', leeway: @LEEWAY@ }
    upstream: u
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[("JWKS", url), ("U", upstream), ("LEEWAY", leeway)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_serve_the_first_request_after_start_and_after_reloads() {
    let up = TestUpstream::start("U").await;
    let doc = serde_json::json!({"keys": [
        {"kty": "oct", "kid": "k1", "alg": "HS256", "k": b64url(JWKS_SECRET)}
    ]})
    .to_string();
    let (url, fetches, down) = jwks_server_with_switch(doc).await;
    let gw = Portico::start(&jwks_only(&url, &up.addr(), "5s"));
    let token = hs(Some("k1"), &claims(serde_json::json!({})), JWKS_SECRET);
    let web = gw.addr("web");
    let first = H1::connect(&web).await.send(bearer(&token)).await.unwrap();
    assert_eq!(
        first.status, 200,
        "the first request after start: {}",
        first.body
    );
    assert_eq!(fetches.load(Ordering::Relaxed), 1);

    // An unchanged jwt keeps its keys: no refetch, no gap.
    let gw_reload = |config: String| {
        let gw = &gw;
        move || gw.reload(&config)
    };
    assert!(tokio::task::block_in_place(gw_reload(
        jwks_only(&url, &up.addr(), "5s") + "# touched\n"
    )));
    let r = H1::connect(&web).await.send(bearer(&token)).await.unwrap();
    assert_eq!(r.status, 200, "right after a reload: {}", r.body);
    assert_eq!(
        fetches.load(Ordering::Relaxed),
        1,
        "an unchanged jwt refetched"
    );

    // A changed jwt fetches before it serves.
    assert!(tokio::task::block_in_place(gw_reload(jwks_only(
        &url,
        &up.addr(),
        "10s"
    ))));
    let r = H1::connect(&web).await.send(bearer(&token)).await.unwrap();
    assert_eq!(r.status, 200, "right after a changed jwt: {}", r.body);
    assert_eq!(fetches.load(Ordering::Relaxed), 2);

    // A changed jwt whose first fetch fails keeps the keys its URL served so far.
    down.store(true, Ordering::Relaxed);
    assert!(tokio::task::block_in_place(gw_reload(jwks_only(
        &url,
        &up.addr(),
        "15s"
    ))));
    assert_eq!(fetches.load(Ordering::Relaxed), 3);
    let r = H1::connect(&web).await.send(bearer(&token)).await.unwrap();
    assert_eq!(r.status, 200, "a failed fetch dropped the keys: {}", r.body);
}

#[tokio::test]
async fn an_unreachable_jwks_url_does_not_stop_the_start() {
    let up = TestUpstream::start("U").await;
    // A port nothing listens on: the fetch fails at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", closed.local_addr().unwrap());
    drop(closed);
    let gw = Portico::start(&jwks_only(&url, &up.addr(), "5s"));
    assert!(
        gw.log_text().contains("cannot fetch JWKS"),
        "{}",
        gw.log_text()
    );
    let token = hs(Some("k1"), &claims(serde_json::json!({})), JWKS_SECRET);
    let r = H1::connect(&gw.addr("web"))
        .await
        .send(bearer(&token))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn tokens_from_a_cookie_or_a_query_parameter_and_hidden_when_configured() {
    let up = TestUpstream::start("U").await;
    let config = fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: hidden
    match: { path_prefix: /hidden/ }
    plugins:
      - jwt: { keys: [ { alg: HS256, secret: '@SECRET@' } ], cookie: session, query: access_token, hide_credentials: true }
    upstream: u
  - name: kept
    plugins:
      - jwt: { keys: [ { alg: HS256, secret: '@SECRET@' } ], cookie: session, query: access_token }
    upstream: u
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[("SECRET", SECRET), ("U", &up.addr())],
    );
    let gw = Portico::start(&config);
    let mut c = H1::connect(&gw.addr("web")).await;
    let token = hs(None, &claims(serde_json::json!({})), SECRET.as_bytes());
    let send = |path: String, headers: Vec<(&'static str, String)>| {
        let mut r = Request::get(path).header("host", "x");
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.body(Full::default()).unwrap()
    };

    // From a cookie: verified, the consumer known, the cookie forwarded unless hidden.
    let cookie = format!("theme=dark; session={token}; lang=en");
    let r = c
        .send(send("/kept/a".into(), vec![("cookie", cookie.clone())]))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last();
    assert_eq!(seen.headers["x-consumer-name"], "alice");
    assert_eq!(seen.headers["cookie"], cookie.as_str());
    let r = c
        .send(send("/hidden/a".into(), vec![("cookie", cookie.clone())]))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last();
    assert_eq!(seen.uri.path(), "/hidden/a");
    assert_eq!(seen.headers["cookie"], "theme=dark; lang=en");
    assert_eq!(seen.headers["x-consumer-name"], "alice");

    // From the query: the parameter goes when hidden, the others stay in order.
    let r = c
        .send(send(format!("/kept/q?x=1&access_token={token}"), vec![]))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        up.last().uri.query(),
        Some(format!("x=1&access_token={token}").as_str())
    );
    let r = c
        .send(send(
            format!("/hidden/q?x=1&access_token={token}&y=2"),
            vec![],
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().uri.query(), Some("x=1&y=2"));

    // The header comes first: a bad header token is not rescued by a good cookie.
    let r = c
        .send(send(
            "/kept/order".into(),
            vec![
                ("authorization", "Bearer not.a.token".into()),
                ("cookie", format!("session={token}")),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    // A bad cookie token is refused as invalid_token, and no token at all is a bare challenge.
    let r = c
        .send(send(
            "/kept/bad".into(),
            vec![("cookie", "session=not.a.token".into())],
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\", error=\"invalid_token\"")
    );
    assert!(!r.body.contains("not.a.token"), "{}", r.body);
    let r = c
        .send(send("/kept/none?session=x".into(), vec![]))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\"")
    );

    // Hidden from the header too.
    let r = c
        .send(send(
            "/hidden/h".into(),
            vec![("authorization", format!("Bearer {token}"))],
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(up.last().headers.get("authorization").is_none());
}

#[test]
fn explain_names_the_cookie_or_parameter_a_token_came_from() {
    let dir = temp_dir("jwt-explain");
    let file = dir.join("jwt.yaml");
    std::fs::write(
        &file,
        fill(
            "\
listeners:
  - { name: web, bind: 127.0.0.1:8080 }
routes:
  - name: r
    plugins:
      - jwt: { keys: [ { alg: HS256, secret: '@SECRET@' } ], cookie: session, query: access_token }
    upstream: u
upstreams:
  u: { targets: [ { address: 127.0.0.1:1 } ] }
",
            &[("SECRET", SECRET)],
        ),
    )
    .unwrap();
    let file = file.display().to_string();
    let token = hs(None, &claims(serde_json::json!({})), SECRET.as_bytes());
    let cookie = format!("Cookie: session={token}");
    let (code, out, err) = crate::support::cli(&[
        "explain",
        "-c",
        &file,
        "GET",
        "http://localhost:8080/",
        "-H",
        &cookie,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("token from cookie session, alg HS256 (token and signature not shown)"),
        "{out}"
    );
    assert!(out.contains("→ passes"), "{out}");
    let url = format!("http://localhost:8080/?access_token={token}");
    let (_, out, _) = crate::support::cli(&["explain", "-c", &file, "GET", &url]);
    assert!(
        out.contains("token from query parameter access_token, alg HS256"),
        "{out}"
    );
    assert!(!out.contains(&token), "{out}");
}
