//! The OpenID Provider the `oidc` tests run against (`tests/e2e/oidc/`), with the test itself
//! as the relying party: the authorization-code flow with PKCE, state and nonce through both
//! real clients (`login.mjs` and headless Chromium), the code exchange, the refresh grant, JWT
//! access tokens and the request log. These tests also pin down the provider's behaviour.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::support::H1;
use crate::support::oidc::{LoginOpts, LoginResult, Provider, browser, login};

const SECRET: &str = "rp-secret-for-tests";

/// The relying party's redirect_uri: answers 200 "got it" and records each query string.
struct Callback {
    base: String,
    queries: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Callback {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let queries: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = Arc::clone(&queries);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        seen.lock()
                            .unwrap()
                            .push(req.uri().query().unwrap_or("").to_owned());
                        async {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "text/html")
                                    .body(Full::new(Bytes::from_static(b"got it")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Callback {
            base,
            queries,
            task,
        }
    }

    fn redirect_uri(&self) -> String {
        format!("{}/cb", self.base)
    }

    fn last(&self, name: &str) -> Option<String> {
        let queries = self.queries.lock().unwrap();
        let query = queries.last()?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn random(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    SystemRandom::new().fill(&mut bytes).unwrap();
    URL_SAFE_NO_PAD.encode(bytes)
}

fn config(redirect_uri: &str, extra: Value) -> Value {
    let mut config = json!({
        "clients": [{
            "client_id": "portico",
            "client_secret": SECRET,
            "redirect_uris": [redirect_uri],
            "post_logout_redirect_uris": [redirect_uri.replace("/cb", "/bye")],
            "token_endpoint_auth_method": "client_secret_basic",
        }],
        "accounts": {
            "alice": { "sub": "alice-sub", "email": "alice@example.com", "name": "Alice" },
        },
        "ttl": { "AccessToken": 600, "IdToken": 600, "RefreshToken": 3600, "Session": 3600 },
        "issueRefreshToken": true,
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    config
}

/// An authorization request built by hand, with its PKCE verifier, state and nonce.
struct AuthRequest {
    url: String,
    verifier: String,
    state: String,
    nonce: String,
}

fn auth_request(op: &Provider, redirect_uri: &str) -> AuthRequest {
    let verifier = random(32);
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    let (state, nonce) = (random(16), random(16));
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", "portico")
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    AuthRequest {
        url: format!("{}/auth?{query}", op.issuer()),
        verifier,
        state,
        nonce,
    }
}

/// POSTs a form to the token endpoint with client_secret_basic.
async fn token(op: &Provider, form: &[(&str, &str)]) -> (u16, Value) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let basic = STANDARD.encode(format!("portico:{SECRET}"));
    let req = Request::post("/token")
        .header("host", op.addr())
        .header("authorization", format!("Basic {basic}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let reply = H1::connect(op.addr()).await.send(req).await.unwrap();
    (reply.status, reply.json())
}

fn payload(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// The callback got a code and the same state; the code gives an ID token (with the nonce and
/// the account's claims) and a refresh token; the refresh grant works.
async fn exchange(op: &Provider, cb: &Callback, auth: &AuthRequest) -> Value {
    exchange_code(op, cb, auth).await.1
}

/// `exchange`, and the code it used.
async fn exchange_code(op: &Provider, cb: &Callback, auth: &AuthRequest) -> (String, Value) {
    assert_eq!(cb.last("state").as_deref(), Some(auth.state.as_str()));
    assert_eq!(cb.last("iss").as_deref(), Some(op.issuer()));
    let code = cb.last("code").expect("a code at the callback");
    let redirect_uri = cb.redirect_uri();
    let (status, tokens) = token(
        op,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", &auth.verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let id = payload(tokens["id_token"].as_str().expect("an id_token"));
    assert_eq!(id["nonce"], auth.nonce.as_str());
    assert_eq!(id["iss"], op.issuer());
    assert_eq!(id["aud"], "portico");
    assert_eq!(id["sub"], "alice-sub");
    assert_eq!(id["email"], "alice@example.com");
    let refresh = tokens["refresh_token"].as_str().expect("a refresh_token");

    let (status, refreshed) = token(
        op,
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    assert!(refreshed["access_token"].is_string());
    assert_eq!(
        payload(refreshed["id_token"].as_str().unwrap())["sub"],
        "alice-sub"
    );
    (code, tokens)
}

#[tokio::test]
async fn login_by_hand_with_pkce_state_nonce_and_refresh() {
    let cb = Callback::start().await;
    let op = Provider::start(config(&cb.redirect_uri(), json!({})));
    let jar = crate::support::temp_dir("oidc-jar").join("jar.json");

    // Discovery names the endpoints the relying party uses.
    let discovery = H1::connect(op.addr())
        .await
        .get(op.addr(), "/.well-known/openid-configuration")
        .await
        .json();
    assert_eq!(discovery["issuer"], op.issuer());
    for (key, path) in [
        ("authorization_endpoint", "/auth"),
        ("token_endpoint", "/token"),
        ("jwks_uri", "/jwks"),
        ("end_session_endpoint", "/session/end"),
        ("userinfo_endpoint", "/me"),
    ] {
        assert_eq!(discovery[key], format!("{}{path}", op.issuer()));
    }
    assert_eq!(
        discovery["code_challenge_methods_supported"],
        json!(["S256"])
    );

    let auth = auth_request(&op, &cb.redirect_uri());
    let done = login(&auth.url, &LoginOpts::default().jar(&jar)).await;
    assert_eq!((done.status, done.body.as_str()), (200, "got it"));
    assert!(done.url.starts_with(&cb.redirect_uri()), "{}", done.url);
    // authorize → login page → login → resume → consent page → consent → resume → callback
    let statuses: Vec<u16> = done.hops.iter().map(|h| h.status).collect();
    assert_eq!(
        statuses,
        [303, 200, 303, 303, 200, 303, 303, 200],
        "{:?}",
        done.hops
    );
    let session = done
        .cookie("_session")
        .expect("the provider's session cookie");
    assert!(session.http_only && !session.secure && session.path == "/");
    assert_eq!(session.domain, "127.0.0.1");
    // It expires with ttl.Session (3600 s here).
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    let left = session.expires.expect("a persistent cookie") - now_ms;
    assert!((3_500_000.0..=3_700_000.0).contains(&left), "{left} ms");
    let tokens = exchange(&op, &cb, &auth).await;
    // Without a resource indicator the access token is opaque and good at userinfo.
    assert_eq!(
        tokens["access_token"].as_str().unwrap().split('.').count(),
        1
    );

    // The jar carries the provider's session: a second authorization needs no form at all,
    // and --stop-at hands the callback URL over without requesting it.
    let before = cb.queries.lock().unwrap().len();
    let again = auth_request(&op, &cb.redirect_uri());
    let stopped = login(
        &again.url,
        &LoginOpts::default().jar(&jar).stop_at(cb.redirect_uri()),
    )
    .await;
    assert_eq!(stopped.hops.len(), 1, "{:?}", stopped.hops);
    assert_eq!(
        stopped.query("state").as_deref(),
        Some(again.state.as_str())
    );
    assert!(stopped.query("code").is_some());
    assert_eq!(cb.queries.lock().unwrap().len(), before);

    // PKCE is required of every client.
    let no_pkce = auth.url.replace("code_challenge", "x_challenge");
    let refused = login(&no_pkce, &LoginOpts::default().stop_at(cb.redirect_uri())).await;
    assert_eq!(refused.query("error").as_deref(), Some("invalid_request"));

    // RP-initiated logout ends the provider's session (and the refresh token with it).
    let bye = format!("{}/bye", cb.base);
    let logout_url = format!(
        "{}/session/end?client_id=portico&post_logout_redirect_uri={}&state=s1",
        op.issuer(),
        form_urlencoded::byte_serialize(bye.as_bytes()).collect::<String>()
    );
    let out = login(&logout_url, &LoginOpts::default().jar(&jar)).await;
    assert_eq!(
        (out.status, out.url.as_str()),
        (200, &*format!("{bye}?state=s1"))
    );
    assert!(out.cookie("_session").is_none(), "{:?}", out.cookies);
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (status, _) = token(
        &op,
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
    )
    .await;
    assert_eq!(status, 400);

    // Every request is logged, so a test counts calls at the provider.
    assert_eq!(op.count("/token"), 3, "{:?}", op.requests());
    assert_eq!(op.count("/.well-known/openid-configuration"), 1);
    assert!(
        op.requests()
            .iter()
            .any(|r| r == "POST /session/end/confirm 303")
    );
}

#[tokio::test]
async fn jwt_access_tokens_for_a_resource_indicator() {
    let cb = Callback::start().await;
    let op = Provider::start(config(
        &cb.redirect_uri(),
        json!({ "resource": {
            "indicator": "https://api.portico.test",
            "scope": "api:read",
            "claims": ["email"],
        } }),
    ));
    let auth = auth_request(&op, &cb.redirect_uri());
    let scoped = auth
        .url
        .replace("scope=openid+email", "scope=openid+email+api%3Aread");
    let done: LoginResult = login(&scoped, &LoginOpts::default()).await;
    assert_eq!(done.status, 200);
    let (code, tokens) = exchange_code(&op, &cb, &auth).await;
    let at = tokens["access_token"].as_str().unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(at.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "RS256");
    let claims = payload(at);
    assert_eq!(claims["iss"], op.issuer());
    assert_eq!(claims["aud"], "https://api.portico.test");
    assert_eq!(claims["sub"], "alice-sub");
    assert_eq!(claims["client_id"], "portico");
    assert_eq!(claims["scope"], "api:read");
    assert_eq!(claims["email"], "alice@example.com");
    // Signed with a key from the provider's JWKS.
    let jwks = H1::connect(op.addr())
        .await
        .get(op.addr(), "/jwks")
        .await
        .json();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == header["kid"])
    );

    // A code is single-use: a replay is refused (and oidc-provider then revokes the grant).
    let redirect_uri = cb.redirect_uri();
    let (status, again) = token(
        &op,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", &auth.verifier),
        ],
    )
    .await;
    assert_eq!(
        (status, again["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (status, _) = token(
        &op,
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
    )
    .await;
    assert_eq!(status, 400, "the replay revoked the grant");
}

#[tokio::test]
async fn login_in_headless_chromium() {
    let cb = Callback::start().await;
    let op = Provider::start(config(&cb.redirect_uri(), json!({})));
    let auth = auth_request(&op, &cb.redirect_uri());
    let done = browser(&auth.url, None).await;
    assert_eq!(done.status, 200);
    assert!(done.url.starts_with(&cb.redirect_uri()), "{}", done.url);
    assert_eq!(done.body.trim(), "got it");
    assert!(done.cookie("_session").is_some(), "{:?}", done.cookies);
    exchange(&op, &cb, &auth).await;

    // The second URL is visited in the same browser: the provider's session is reused.
    let first = auth_request(&op, &cb.redirect_uri());
    let second = auth_request(&op, &cb.redirect_uri());
    let reused = browser(&first.url, Some(&second.url)).await;
    assert_eq!(reused.status, 200);
    assert_eq!(cb.last("state").as_deref(), Some(second.state.as_str()));
    exchange(&op, &cb, &second).await;
}

#[tokio::test]
async fn stopped_and_back_on_the_same_issuer() {
    let cb = Callback::start().await;
    let mut op = Provider::start(config(&cb.redirect_uri(), json!({})));
    let (issuer, port) = (op.issuer().to_owned(), op.port());
    op.stop();
    assert!(tokio::net::TcpStream::connect(op.addr()).await.is_err());
    assert!(op.requests().is_empty());
    let back = Provider::start(config(&cb.redirect_uri(), json!({ "port": port })));
    assert_eq!(back.issuer(), issuer);
    let auth = auth_request(&back, &cb.redirect_uri());
    assert_eq!(login(&auth.url, &LoginOpts::default()).await.status, 200);
    exchange(&back, &cb, &auth).await;
}
