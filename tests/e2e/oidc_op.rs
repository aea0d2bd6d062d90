//! A small OpenID Provider that misbehaves on purpose, for the `oidc` attack tests: discovery,
//! a JWKS with an RSA key made for the run, an authorization endpoint that sends the browser
//! straight back with a code, and a token endpoint answering whatever ID token the test asks
//! for ([`Mint`]). Also the portico config and the client steps of a login that those tests
//! share.

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
use crate::support::{H1, fill, temp_dir};

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
pub(crate) fn config_session(
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

pub(crate) const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml");

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
