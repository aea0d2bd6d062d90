//! `oidc` against a provider that misbehaves on purpose (a small OpenID Provider written here:
//! discovery, a JWKS with an RSA key made for the run, an authorization endpoint that sends the
//! browser straight back with a code, and a token endpoint answering whatever ID token the test
//! wants): replayed and unknown states, wrong nonces, ID tokens for another client, expired, or
//! signed with `none` or HS256 keyed by the public key; tampered, truncated and foreign session
//! cookies; key rotation; open redirects; the provider down; refresh; and no secret in any
//! error body.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::jwt::{b64url, now};
use crate::support::client::Reply;
use crate::support::{H1, Portico, TestUpstream, fill, temp_dir};

pub(crate) const SECRET: &str = "rp-secret-never-shown";
/// Session keys: 32 bytes each, base64.
pub(crate) const KEY_A: &str = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
pub(crate) const KEY_B: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";

/// An RSA key pair made by openssl for the run: the private PEM and the JWK's `n`.
struct Rsa {
    private: Vec<u8>,
    public: Vec<u8>,
    n: String,
}

fn openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rsa(tag: &str) -> Rsa {
    let dir = temp_dir(tag);
    let key = dir.join("key.pem").display().to_string();
    let public = dir.join("pub.pem").display().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &key,
    ]);
    openssl(&["pkey", "-in", &key, "-pubout", "-out", &public]);
    let modulus = openssl(&["rsa", "-in", &key, "-noout", "-modulus"]);
    let hex = modulus.trim().strip_prefix("Modulus=").unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    Rsa {
        private: std::fs::read(&key).unwrap(),
        public: std::fs::read(&public).unwrap(),
        n: b64url(&bytes),
    }
}

fn keys() -> &'static (Rsa, Rsa) {
    static KEYS: OnceLock<(Rsa, Rsa)> = OnceLock::new();
    KEYS.get_or_init(|| (rsa("oidc-op-key"), rsa("oidc-other-key")))
}

/// What the token endpoint's ID token is like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Mint {
    #[default]
    Good,
    WrongNonce,
    NoNonce,
    OtherAudience,
    SeveralAudiencesNoAzp,
    OtherAzp,
    OtherIssuer,
    Expired,
    FutureIat,
    AlgNone,
    Hs256WithPublicKey,
    OtherKey,
    UnknownKid,
    /// A good token with a 6000-byte claim (a long group list): the session takes chunks.
    Big,
}

#[derive(Debug, Default)]
pub(crate) struct OpState {
    pub(crate) mint: Mint,
    /// The nonce of each code's authorization request.
    pub(crate) nonces: std::collections::HashMap<String, String>,
    pub(crate) auth_queries: Vec<String>,
    pub(crate) token_forms: Vec<String>,
    pub(crate) token_auth: Vec<String>,
    /// Every token and code it issued (to look for in error bodies).
    pub(crate) issued: Vec<String>,
    /// `expires_in` of access tokens.
    pub(crate) expires_in: u64,
    /// The status of refresh grants (200 when 0).
    pub(crate) refresh_status: u16,
    pub(crate) end_session: bool,
    pub(crate) jwks_calls: usize,
    /// Codes and tokens issued so far.
    pub(crate) counter: u64,
}

/// The misbehaving provider, on a thread and runtime of its own (portico's start-up, which
/// waits for discovery, blocks the test's runtime).
pub(crate) struct Evil {
    pub(crate) issuer: String,
    pub(crate) state: Arc<Mutex<OpState>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Evil {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn json_response(status: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

impl Evil {
    pub(crate) async fn start() -> Self {
        let state: Arc<Mutex<OpState>> = Arc::new(Mutex::new(OpState {
            expires_in: 300,
            end_session: true,
            ..OpState::default()
        }));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let st = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let issuer = format!("http://{}", listener.local_addr().unwrap());
                ready_tx.send(issuer.clone()).unwrap();
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            return;
                        };
                        let (st, iss) = (Arc::clone(&st), issuer.clone());
                        tokio::spawn(async move {
                            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                                let (st, iss) = (Arc::clone(&st), iss.clone());
                                async move { Ok::<_, Infallible>(serve(&st, &iss, req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
            // The runtime drops here with every connection task: the provider is gone.
        });
        let issuer = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Evil {
            issuer,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub(crate) fn set(&self, f: impl FnOnce(&mut OpState)) {
        f(&mut self.state.lock().unwrap());
    }

    pub(crate) fn get<T>(&self, f: impl FnOnce(&OpState) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    /// A JWT access token signed by the provider's key.
    pub(crate) fn access_token(&self, claims: Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("k1".into());
        let key = EncodingKey::from_rsa_pem(&keys().0.private).unwrap();
        encode(&header, &claims, &key).unwrap()
    }
}

fn id_token(issuer: &str, mint: Mint, nonce: &str) -> String {
    let (good, other) = keys();
    let t = now();
    let mut claims = json!({
        "iss": issuer, "sub": "alice-sub", "aud": "portico", "exp": t + 300, "iat": t,
        "nonce": nonce, "email": "alice@example.com", "name": "Alice",
    });
    match mint {
        Mint::Good
        | Mint::AlgNone
        | Mint::Hs256WithPublicKey
        | Mint::OtherKey
        | Mint::UnknownKid => {}
        Mint::Big => {
            let groups: Vec<String> = (0..400).map(|i| format!("group-{i:08}")).collect();
            claims["groups"] = json!(groups);
        }
        Mint::WrongNonce => claims["nonce"] = json!("not-the-nonce"),
        Mint::NoNonce => {
            claims.as_object_mut().unwrap().remove("nonce");
        }
        Mint::OtherAudience => claims["aud"] = json!("another-client"),
        Mint::SeveralAudiencesNoAzp => claims["aud"] = json!(["portico", "another-client"]),
        Mint::OtherAzp => claims["azp"] = json!("another-client"),
        Mint::OtherIssuer => claims["iss"] = json!("https://evil.example"),
        Mint::Expired => {
            claims["exp"] = json!(t - 600);
            claims["iat"] = json!(t - 1200);
        }
        Mint::FutureIat => claims["iat"] = json!(t + 3600),
    }
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    match mint {
        Mint::AlgNone => {
            let head = b64url(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
            format!("{head}.{}.", b64url(claims.to_string().as_bytes()))
        }
        Mint::Hs256WithPublicKey => {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("k1".into());
            encode(&header, &claims, &EncodingKey::from_secret(&good.public)).unwrap()
        }
        Mint::OtherKey => encode(
            &header,
            &claims,
            &EncodingKey::from_rsa_pem(&other.private).unwrap(),
        )
        .unwrap(),
        Mint::UnknownKid => {
            header.kid = Some("k-unknown".into());
            encode(
                &header,
                &claims,
                &EncodingKey::from_rsa_pem(&good.private).unwrap(),
            )
            .unwrap()
        }
        _ => encode(
            &header,
            &claims,
            &EncodingKey::from_rsa_pem(&good.private).unwrap(),
        )
        .unwrap(),
    }
}

async fn serve(
    st: &Mutex<OpState>,
    issuer: &str,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    match path.as_str() {
        "/.well-known/openid-configuration" => {
            let mut doc = json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{issuer}/auth"),
                "token_endpoint": format!("{issuer}/token"),
                "jwks_uri": format!("{issuer}/jwks"),
                "id_token_signing_alg_values_supported": ["RS256"],
            });
            if st.lock().unwrap().end_session {
                doc["end_session_endpoint"] = json!(format!("{issuer}/end"));
            }
            json_response(200, doc)
        }
        "/jwks" => {
            st.lock().unwrap().jwks_calls += 1;
            json_response(
                200,
                json!({ "keys": [ {
                    "kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
                    "n": keys().0.n, "e": "AQAB",
                } ] }),
            )
        }
        "/auth" => {
            let params: std::collections::HashMap<String, String> =
                form_urlencoded::parse(query.as_bytes())
                    .into_owned()
                    .collect();
            let mut s = st.lock().unwrap();
            s.auth_queries.push(query.clone());
            s.counter += 1;
            let code = format!("code-{}-{}", s.counter, now());
            let nonce = params.get("nonce").cloned().unwrap_or_default();
            s.nonces.insert(code.clone(), nonce);
            s.issued.push(code.clone());
            let location = format!(
                "{}?code={code}&state={}",
                params["redirect_uri"],
                params.get("state").cloned().unwrap_or_default()
            );
            Response::builder()
                .status(302)
                .header("location", location)
                .body(Full::default())
                .unwrap()
        }
        "/token" => {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let form = String::from_utf8_lossy(&body).into_owned();
            let mut s = st.lock().unwrap();
            s.token_forms.push(form.clone());
            s.token_auth.push(auth);
            if form.contains("grant_type=refresh_token") && s.refresh_status > 200 {
                return json_response(s.refresh_status, json!({"error": "invalid_grant"}));
            }
            s.counter += 1;
            let code = form_urlencoded::parse(form.as_bytes())
                .find(|(k, _)| k == "code")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            let nonce = s.nonces.get(&code).cloned().unwrap_or_default();
            let id = id_token(issuer, s.mint, &nonce);
            let access = format!("AT-secret-{}", s.counter);
            let refresh = format!("RT-secret-{}", s.counter);
            s.issued
                .extend([id.clone(), access.clone(), refresh.clone()]);
            let mut answer = json!({
                "access_token": access, "token_type": "Bearer", "expires_in": s.expires_in,
                "refresh_token": refresh,
            });
            // A refresh answer without an ID token is allowed (OpenID Connect Core §12.2).
            if !form.contains("grant_type=refresh_token") {
                answer["id_token"] = json!(id);
            }
            json_response(200, answer)
        }
        _ => json_response(404, json!({"error": "not_found"})),
    }
}

pub(crate) fn config(issuer: &str, upstream: &str, keys: &[&str], extra: &[&str]) -> String {
    config_session(issuer, upstream, keys, "", extra)
}

/// `config` with more `session` settings (`, lifetime: 2s`).
fn config_session(
    issuer: &str,
    upstream: &str,
    keys: &[&str],
    session: &str,
    extra: &[&str],
) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("'{k}'")).collect();
    let mut extra_lines = String::new();
    for line in extra {
        extra_lines.push_str("\n          ");
        extra_lines.push_str(line);
    }
    fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
admin: { listen: 127.0.0.1:0 }
consumers:
  - { name: alice-sub, groups: [admins] }
routes:
  - name: app
    plugins:
      - oidc:
          issuer: '@ISSUER@'
          client_id: portico
          client_secret: @SECRET@
          session: { keys: [@KEYS@], secure: false@SESSION@ }
          claims_to_headers: { email: x-user-email }
          allowed_redirect_origins: [https://allowed.example]@EXTRA@
      - acl: { allow: [admins] }
    upstream: u
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
",
        &[
            ("ISSUER", issuer),
            ("SECRET", SECRET),
            ("KEYS", &keys.join(", ")),
            ("SESSION", session),
            ("EXTRA", &extra_lines),
            ("UP", upstream),
        ],
    )
}

pub(crate) async fn send(web: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut r = Request::get(path).header("host", web);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    H1::connect(web)
        .await
        .send(r.body(Full::default()).unwrap())
        .await
        .unwrap()
}

/// Every `Set-Cookie` of a reply as `name=value` (deletions included, with an empty value).
pub(crate) fn set_cookies(r: &Reply) -> Vec<(String, String, String)> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let text = v.to_str().unwrap().to_owned();
            let pair = text.split(';').next().unwrap().to_owned();
            let (n, val) = pair.split_once('=').unwrap();
            (n.to_owned(), val.to_owned(), text)
        })
        .collect()
}

/// A `Cookie` header with the live cookies of a reply.
pub(crate) fn cookie_header(r: &Reply) -> String {
    set_cookies(r)
        .into_iter()
        .filter(|(_, v, _)| !v.is_empty())
        .map(|(n, v, _)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml");

/// A login up to the callback: portico's redirect (with the transaction cookie), then the
/// provider's redirect back. Returns the callback's path and query and the transaction cookie.
pub(crate) async fn to_callback(web: &str, path: &str) -> (String, String, Reply) {
    let start = send(web, path, &[HTML]).await;
    assert_eq!(start.status, 302, "{}", start.body);
    let location = start.header("location").unwrap().to_owned();
    let uri: http::Uri = location.parse().unwrap();
    let op = uri.authority().unwrap().to_string();
    let back = send(&op, uri.path_and_query().unwrap().as_str(), &[]).await;
    assert_eq!(back.status, 302);
    let callback: http::Uri = back.header("location").unwrap().parse().unwrap();
    (
        callback.path_and_query().unwrap().to_string(),
        cookie_header(&start),
        start,
    )
}

/// A whole login; the session cookie header.
pub(crate) async fn log_in(web: &str, path: &str) -> (String, Reply) {
    let (callback, tx, _) = to_callback(web, path).await;
    let done = send(web, &callback, &[("cookie", &tx)]).await;
    assert_eq!(done.status, 302, "{}", done.body);
    (cookie_header(&done), done)
}

/// Error bodies seen, to check none of them holds a secret.
#[derive(Default)]
struct Bodies(Vec<String>);

impl Bodies {
    fn keep(&mut self, r: &Reply) -> &mut Self {
        self.0.push(r.body.clone());
        self
    }

    fn check(&self, op: &Evil, cookies: &[String]) {
        let issued = op.get(|s| s.issued.clone());
        for body in &self.0 {
            assert!(!body.contains(SECRET), "{body}");
            for t in &issued {
                assert!(!body.contains(t.as_str()), "{body} holds {t}");
            }
            for c in cookies {
                for part in c.split("; ") {
                    let value = part.split_once('=').map_or(part, |(_, v)| v);
                    if value.len() > 8 {
                        assert!(!body.contains(value), "{body} holds a cookie value");
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn logs_in_and_every_callback_attack_is_refused() {
    let op = Evil::start().await;
    let up = TestUpstream::start("u").await;
    let gw = Portico::start(&config(
        &op.issuer,
        &up.addr(),
        &[KEY_A],
        &["client_auth: post"],
    ));
    let web = gw.addr("web");
    let mut bodies = Bodies::default();

    // A good login: the authorization request has PKCE, the token request the verifier.
    let (callback, tx, start) = to_callback(&web, "/app/page?x=1").await;
    let auth = op.get(|s| s.auth_queries.last().cloned().unwrap());
    let params: std::collections::HashMap<String, String> = form_urlencoded::parse(auth.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], "portico");
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["code_challenge"].len(), 43);
    assert_eq!(params["scope"], "openid");
    assert_eq!(
        params["redirect_uri"],
        format!("http://{web}/oauth2/callback")
    );
    assert!(params["state"].len() >= 43 && params["nonce"].len() >= 43);
    let tx_set = &set_cookies(&start)[0].2;
    assert!(
        tx_set.contains("HttpOnly") && tx_set.contains("SameSite=Lax"),
        "{tx_set}"
    );
    assert!(tx_set.contains("Path=/oauth2/callback") && tx_set.contains("Max-Age=600"));
    let done = send(&web, &callback, &[("cookie", &tx)]).await;
    assert_eq!(done.status, 302, "{}", done.body);
    assert_eq!(done.header("location"), Some("/app/page?x=1"));
    let form = op.get(|s| s.token_forms.last().cloned().unwrap());
    assert!(form.contains("grant_type=authorization_code") && form.contains("code_verifier="));
    assert!(
        form.contains("client_id=portico") && form.contains("client_secret="),
        "{form}"
    );
    let session = set_cookies(&done)
        .into_iter()
        .find(|(n, _, _)| n == "portico_session")
        .unwrap();
    assert!(
        session.2.contains("HttpOnly")
            && session.2.contains("SameSite=Lax")
            && session.2.contains("Path=/")
    );
    assert!(!session.2.contains("Secure"), "secure: false");
    // The transaction cookie goes.
    assert!(
        set_cookies(&done)
            .iter()
            .any(|(n, v, t)| n.starts_with("portico_session_tx_")
                && v.is_empty()
                && t.contains("Max-Age=0"))
    );
    let cookie = format!("portico_session={}; theme=dark", session.1);
    let r = send(
        &web,
        "/app/page",
        &[("cookie", &cookie), ("x-user-email", "forged@evil")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last();
    assert_eq!(seen.headers["x-user-email"], "alice@example.com");
    assert_eq!(
        seen.headers["cookie"], "theme=dark",
        "portico's cookies stay with portico"
    );
    let tokens_before = op.get(|s| s.token_forms.len());
    // Reused: no provider call.
    assert_eq!(
        send(&web, "/app/again", &[("cookie", &cookie)])
            .await
            .status,
        200
    );
    assert_eq!(op.get(|s| s.token_forms.len()), tokens_before);

    // The same callback again, with the same transaction cookie: refused (the state was used).
    let again = send(&web, &callback, &[("cookie", &tx)]).await;
    assert_eq!(again.status, 400, "{}", again.body);
    assert_eq!(again.json()["error"], "login_invalid");
    bodies.keep(&again);
    assert_eq!(
        op.get(|s| s.token_forms.len()),
        tokens_before,
        "no code exchange"
    );

    // A state from no transaction, with and without some transaction cookie.
    let (other_cb, other_tx, _) = to_callback(&web, "/app").await;
    let forged = other_cb.replace("state=", "state=Z");
    for cookie in [other_tx.as_str(), ""] {
        let r = send(&web, &forged, &[("cookie", cookie)]).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.json()["error"], "login_invalid");
        bodies.keep(&r);
    }
    // A code without its transaction cookie (another browser).
    let r = send(&web, &other_cb, &[]).await;
    assert_eq!(r.status, 400);
    bodies.keep(&r);

    // Each bad ID token: 401 login_failed, and no session.
    for mint in [
        Mint::WrongNonce,
        Mint::NoNonce,
        Mint::OtherAudience,
        Mint::SeveralAudiencesNoAzp,
        Mint::OtherAzp,
        Mint::OtherIssuer,
        Mint::Expired,
        Mint::FutureIat,
        Mint::AlgNone,
        Mint::Hs256WithPublicKey,
        Mint::OtherKey,
        Mint::UnknownKid,
    ] {
        op.set(|s| s.mint = mint);
        let (cb, tx, _) = to_callback(&web, "/app").await;
        let r = send(&web, &cb, &[("cookie", &tx)]).await;
        assert_eq!(r.status, 401, "{mint:?}: {}", r.body);
        assert_eq!(r.json()["error"], "login_failed", "{mint:?}");
        assert!(
            !set_cookies(&r)
                .iter()
                .any(|(n, v, _)| n == "portico_session" && !v.is_empty()),
            "{mint:?} set a session"
        );
        bodies.keep(&r);
    }
    op.set(|s| s.mint = Mint::Good);

    // The provider's own refusal: its error name only.
    let (cb, tx, _) = to_callback(&web, "/app").await;
    let state = cb.split("state=").nth(1).unwrap().to_owned();
    let r = send(
        &web,
        &format!("/oauth2/callback?error=access_denied&state={state}"),
        &[("cookie", &tx)],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "login_denied");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .ends_with("access_denied")
    );
    bodies.keep(&r);
    let r = send(
        &web,
        "/oauth2/callback?error=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        &[],
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(!r.body.contains("script"), "{}", r.body);
    bodies.keep(&r);
    let r = send(&web, "/oauth2/callback?code=abc", &[]).await;
    assert_eq!(r.status, 400);
    bodies.keep(&r);

    bodies.check(&op, &[cookie, tx]);
    assert!(!gw.log_text().contains("panicked"));
}

#[tokio::test]
async fn bad_session_cookies_mean_a_new_login_and_old_keys_still_open() {
    let op = Evil::start().await;
    let up = TestUpstream::start("u").await;
    let gw = Portico::start(&config(&op.issuer, &up.addr(), &[KEY_A], &[]));
    let web = gw.addr("web");
    let (cookie, _) = log_in(&web, "/app").await;
    assert_eq!(send(&web, "/app", &[("cookie", &cookie)]).await.status, 200);
    let value = cookie.strip_prefix("portico_session=").unwrap().to_owned();
    let mut bodies = Bodies::default();

    let mut flipped = value.clone().into_bytes();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let other_key = {
        // A session sealed by another portico with another key.
        let gw2 = Portico::start(&config(&op.issuer, &up.addr(), &[KEY_B], &[]));
        let (c, _) = log_in(&gw2.addr("web"), "/app").await;
        c.strip_prefix("portico_session=").unwrap().to_owned()
    };
    for bad in [
        flipped.as_str(),
        &value[..value.len() - 10],
        &value[..20],
        "",
        "garbage!!",
        other_key.as_str(),
    ] {
        let c = format!("portico_session={bad}");
        // A browser logs in again; the bad cookie is cleared.
        let r = send(&web, "/app", &[("cookie", &c), HTML]).await;
        assert_eq!(r.status, 302, "{bad}: {}", r.body);
        assert!(
            r.header("location")
                .unwrap()
                .starts_with(&format!("{}/auth?", op.issuer))
        );
        if !bad.is_empty() {
            assert!(
                set_cookies(&r)
                    .iter()
                    .any(|(n, v, t)| n == "portico_session"
                        && v.is_empty()
                        && t.contains("Max-Age=0")),
                "{bad}"
            );
        }
        // An API client gets 401 with a challenge.
        let r = send(
            &web,
            "/app",
            &[("cookie", &c), ("accept", "application/json")],
        )
        .await;
        assert_eq!(r.status, 401, "{bad}: {}", r.body);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"portico\"")
        );
        assert_eq!(r.json()["error"], "unauthorized");
        bodies.keep(&r);
    }
    bodies.check(&op, std::slice::from_ref(&cookie));

    // Rotation: a new key first, the old one second: the old session still opens, and a new
    // login is sealed with the new key.
    assert!(gw.reload(&config(&op.issuer, &up.addr(), &[KEY_B, KEY_A], &[])));
    let r = send(&web, "/app", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (fresh, _) = log_in(&web, "/app").await;
    // The old key gone: the old session is over, the new one lives.
    assert!(gw.reload(&config(&op.issuer, &up.addr(), &[KEY_B], &[])));
    assert_eq!(send(&web, "/app", &[("cookie", &cookie)]).await.status, 401);
    assert_eq!(send(&web, "/app", &[("cookie", &fresh)]).await.status, 200);
    assert!(!gw.log_text().contains("panicked"));
}

#[tokio::test]
async fn redirects_stay_on_relative_paths_and_allowed_origins() {
    let op = Evil::start().await;
    op.set(|s| s.end_session = false);
    let up = TestUpstream::start("u").await;
    let gw = Portico::start(&config(&op.issuer, &up.addr(), &[KEY_A], &[]));
    let web = gw.addr("web");
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    for (target, want) in [
        ("//evil.example", "/"),
        ("https://evil.example", "/"),
        ("/\\evil.example", "/"),
        ("/%2F%2Fevil.example", "/"),
        ("\\\\evil.example", "/"),
        ("https:evil.example", "/"),
        ("/\t/evil.example", "/"),
        ("/\n/evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("https://allowed.example.evil.example/", "/"),
        ("https://allowed.example@evil.example/", "/"),
        ("/good/path?q=1", "/good/path?q=1"),
        ("https://allowed.example/x", "https://allowed.example/x"),
    ] {
        // After logout.
        let r = send(&web, &format!("/oauth2/logout?rd={}", encode(target)), &[]).await;
        assert_eq!(r.status, 302, "{target:?}");
        assert_eq!(r.header("location"), Some(want), "logout to {target:?}");
        // After login (a login started with `rd`).
        let start = send(
            &web,
            &format!("/oauth2/callback?rd={}", encode(target)),
            &[],
        )
        .await;
        assert_eq!(start.status, 302);
        let uri: http::Uri = start.header("location").unwrap().parse().unwrap();
        let back = send(
            uri.authority().unwrap().as_ref(),
            uri.path_and_query().unwrap().as_str(),
            &[],
        )
        .await;
        let cb: http::Uri = back.header("location").unwrap().parse().unwrap();
        let done = send(
            &web,
            cb.path_and_query().unwrap().as_str(),
            &[("cookie", &cookie_header(&start))],
        )
        .await;
        assert_eq!(done.status, 302, "{}", done.body);
        assert_eq!(done.header("location"), Some(want), "login to {target:?}");
    }
    // The path asked for is where the login ends; a `//` one never leaves the origin.
    let (_, done) = log_in(&web, "//evil.example/x").await;
    let location = done.header("location").unwrap();
    assert!(
        location.starts_with('/') && !location.starts_with("//"),
        "{location}"
    );
}

#[tokio::test]
async fn logout_clears_the_session_and_goes_to_the_provider() {
    let op = Evil::start().await;
    let up = TestUpstream::start("u").await;
    let gw = Portico::start(&config(
        &op.issuer,
        &up.addr(),
        &[KEY_A],
        &["logout: { redirect: /bye }"],
    ));
    let web = gw.addr("web");
    let (cookie, _) = log_in(&web, "/app").await;
    let r = send(&web, "/oauth2/logout", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 302);
    let location = r.header("location").unwrap();
    assert!(
        location.starts_with(&format!("{}/end?id_token_hint=", op.issuer)),
        "{location}"
    );
    assert!(location.contains(&format!(
        "post_logout_redirect_uri={}",
        form_urlencoded::byte_serialize(format!("http://{web}/bye").as_bytes()).collect::<String>()
    )));
    assert!(location.contains("client_id=portico"));
    assert!(
        set_cookies(&r)
            .iter()
            .any(|(n, v, t)| n == "portico_session" && v.is_empty() && t.contains("Max-Age=0"))
    );
    // Local only when the provider has no end-session endpoint.
    let gw2 = Portico::start(&config(
        &op.issuer,
        &up.addr(),
        &[KEY_A],
        &["logout: { redirect: /bye, provider: false }"],
    ));
    let r = send(&gw2.addr("web"), "/oauth2/logout", &[("cookie", &cookie)]).await;
    assert_eq!(r.header("location"), Some("/bye"));
}

#[tokio::test]
async fn refresh_before_expiry_and_a_refused_refresh_ends_the_session() {
    let op = Evil::start().await;
    op.set(|s| s.expires_in = 10);
    let up = TestUpstream::start("u").await;
    let gw = Portico::start(&config(
        &op.issuer,
        &up.addr(),
        &[KEY_A],
        &["refresh_before: 30s"],
    ));
    let web = gw.addr("web");
    let (cookie, _) = log_in(&web, "/app").await;
    // The access token expires within 30 s: the refresh grant, a new cookie, and on.
    let r = send(&web, "/app", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let form = op.get(|s| s.token_forms.last().cloned().unwrap());
    assert!(
        form.contains("grant_type=refresh_token") && form.contains("refresh_token=RT-secret-"),
        "{form}"
    );
    assert!(op.get(|s| s.token_auth.last().unwrap().starts_with("Basic ")));
    let renewed = cookie_header(&r);
    assert!(renewed.starts_with("portico_session="), "{renewed}");
    assert_ne!(renewed, cookie);
    assert_eq!(up.last().headers["x-user-email"], "alice@example.com");
    // A refused refresh: the session ends (a browser logs in again, the cookie goes).
    op.set(|s| s.refresh_status = 400);
    let r = send(&web, "/app", &[("cookie", &renewed), HTML]).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert!(
        set_cookies(&r)
            .iter()
            .any(|(n, v, _)| n == "portico_session" && v.is_empty())
    );
    let r = send(&web, "/app", &[("cookie", &renewed)]).await;
    assert_eq!(r.status, 401);
    let mut bodies = Bodies::default();
    bodies.keep(&r).check(&op, &[renewed]);
}

#[tokio::test]
async fn bearer_access_tokens_by_the_provider_keys() {
    let op = Evil::start().await;
    let up = TestUpstream::start("u").await;
    let gw = Portico::start(&config(
        &op.issuer,
        &up.addr(),
        &[KEY_A],
        &["bearer_audience: [api]"],
    ));
    let web = gw.addr("web");
    let t = now();
    let good = op.access_token(json!({"iss": op.issuer, "sub": "alice-sub", "aud": "api", "exp": t + 60, "email": "alice@example.com"}));
    let r = send(
        &web,
        "/app",
        &[("authorization", &format!("Bearer {good}"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().headers["x-user-email"], "alice@example.com");
    for bad in [
        op.access_token(
            json!({"iss": op.issuer, "sub": "alice-sub", "aud": "portico-other", "exp": t + 60}),
        ),
        op.access_token(
            json!({"iss": "https://evil.example", "sub": "alice-sub", "aud": "api", "exp": t + 60}),
        ),
        op.access_token(
            json!({"iss": op.issuer, "sub": "alice-sub", "aud": "api", "exp": t - 600}),
        ),
        "not-a-jwt".to_owned(),
    ] {
        let r = send(&web, "/app", &[("authorization", &format!("Bearer {bad}"))]).await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("invalid_token")
        );
        assert!(!r.body.contains(&bad));
    }
    // A valid token of a consumer the acl refuses.
    let bob = op.access_token(json!({"iss": op.issuer, "sub": "bob", "aud": "api", "exp": t + 60}));
    let r = send(&web, "/app", &[("authorization", &format!("Bearer {bob}"))]).await;
    assert_eq!(r.status, 403, "{}", r.body);
}

#[tokio::test]
async fn the_provider_down_fails_closed() {
    // Down at start: portico starts, warns, and answers 503.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let up = TestUpstream::start("u").await;
    let gw = Portico::start(&config(&dead, &up.addr(), &[KEY_A], &["timeout: 1s"]));
    assert!(
        gw.log_text()
            .contains("the OpenID Provider cannot be reached")
    );
    let web = gw.addr("web");
    for accept in ["text/html", "application/json"] {
        let r = send(&web, "/app", &[("accept", accept)]).await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.json()["error"], "auth_unavailable");
    }
    let r = send(&web, "/app", &[("authorization", "Bearer x.y.z")]).await;
    assert_eq!(r.status, 503);
    assert_eq!(up.count(), 0, "never open");

    // Down mid-session: a login in flight cannot finish (503), a refresh cannot happen (503).
    let op = Evil::start().await;
    op.set(|s| s.expires_in = 10);
    let gw = Portico::start(&config(&op.issuer, &up.addr(), &[KEY_A], &["timeout: 1s"]));
    let web = gw.addr("web");
    let (cookie, _) = log_in(&web, "/app").await;
    let (cb, tx, _) = to_callback(&web, "/app").await;
    drop(op);
    let r = send(&web, &cb, &[("cookie", &tx)]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "auth_unavailable");
    let r = send(&web, "/app", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(up.count(), 0);
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test]
async fn concurrent_logins_long_sessions_and_the_lifetime() {
    let op = Evil::start().await;
    let up = TestUpstream::start("u").await;
    let gw = Portico::start(&config_session(
        &op.issuer,
        &up.addr(),
        &[KEY_A],
        ", lifetime: 2s",
        &[],
    ));
    let web = gw.addr("web");

    // Two tabs start a login each, in one browser; both finish, in either order.
    let (cb1, tx1, _) = to_callback(&web, "/one").await;
    let (cb2, tx2, _) = to_callback(&web, "/two").await;
    let both = format!("{tx1}; {tx2}");
    let r2 = send(&web, &cb2, &[("cookie", &both)]).await;
    assert_eq!(
        (r2.status, r2.header("location")),
        (302, Some("/two")),
        "{}",
        r2.body
    );
    let r1 = send(&web, &cb1, &[("cookie", &both)]).await;
    assert_eq!(
        (r1.status, r1.header("location")),
        (302, Some("/one")),
        "{}",
        r1.body
    );

    // The session ends after its lifetime, whatever the cookie says.
    let cookie = cookie_header(&r1);
    assert_eq!(send(&web, "/x", &[("cookie", &cookie)]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(send(&web, "/x", &[("cookie", &cookie)]).await.status, 401);

    // A session too long for one cookie is split, read back whole, and cleared whole.
    op.set(|s| s.mint = Mint::Big);
    let (big, done) = log_in(&web, "/big").await;
    let names: Vec<String> = set_cookies(&done)
        .into_iter()
        .filter(|(n, v, _)| n.starts_with("portico_session") && !v.is_empty())
        .map(|(n, _, _)| n)
        .collect();
    // The claims and the ID token both hold the long list: three chunks.
    let want: Vec<String> = (0..names.len())
        .map(|i| format!("portico_session.{i}"))
        .collect();
    assert!(names.len() >= 2 && names == want, "{names:?}");
    assert!(set_cookies(&done).iter().all(|(_, v, _)| v.len() <= 3800));
    let r = send(&web, "/big", &[("cookie", &format!("{big}; other=1"))]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().headers["cookie"], "other=1");
    let out = send(&web, "/oauth2/logout", &[("cookie", &big)]).await;
    let cleared: Vec<String> = set_cookies(&out)
        .into_iter()
        .filter(|(_, v, t)| v.is_empty() && t.contains("Max-Age=0"))
        .map(|(n, _, _)| n)
        .collect();
    for name in std::iter::once("portico_session".to_owned()).chain(want) {
        assert!(cleared.contains(&name), "{name} not cleared: {cleared:?}");
    }
    // One chunk alone does not open.
    let first = big.split("; ").next().unwrap();
    assert_eq!(send(&web, "/big", &[("cookie", first)]).await.status, 401);
}

#[tokio::test]
async fn requests_together_share_one_refresh() {
    let op = Evil::start().await;
    op.set(|s| s.expires_in = 5);
    let up = TestUpstream::start("u").await;
    let gw = Portico::start(&config(&op.issuer, &up.addr(), &[KEY_A], &[]));
    let web = gw.addr("web");
    let (cookie, _) = log_in(&web, "/app").await;
    let before = op.get(|s| s.token_forms.len());
    let sends = (0..8).map(|i| {
        let (web, cookie) = (web.clone(), cookie.clone());
        tokio::spawn(
            async move { send(&web, &format!("/asset/{i}"), &[("cookie", &cookie)]).await },
        )
    });
    for r in futures_util::future::join_all(sends).await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(cookie_header(&r).starts_with("portico_session="));
    }
    assert_eq!(
        op.get(|s| s.token_forms.len()),
        before + 1,
        "one refresh grant for eight requests"
    );
}
