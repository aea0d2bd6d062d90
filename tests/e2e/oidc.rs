//! `oidc` through the real binary against a real OpenID Provider (`oidc-provider` under node,
//! `tests/e2e/oidc/`): a full login with the cookie-jar client and with headless Chromium,
//! PKCE, the session reused without the provider, refresh, logout (RP-initiated), API clients,
//! `acl` on the consumer, and the provider's JWT access tokens as bearer tokens.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::oidc_op::{KEY_A, SECRET, send};
use crate::support::oidc::{LoginOpts, Provider, browser, login};
use crate::support::{H1, Portico, TestUpstream, fill, temp_dir};

/// A private RSA JWK for the provider, made by node (the provider is started twice on one
/// port, and keeps its keys across).
pub(crate) fn private_jwk() -> Value {
    let out = std::process::Command::new("node")
        .args([
            "-e",
            "const {generateKeyPairSync}=require('node:crypto');\
             const {privateKey}=generateKeyPairSync('rsa',{modulusLength:2048});\
             console.log(JSON.stringify({...privateKey.export({format:'jwk'}),kid:'k-e2e',use:'sig',alg:'RS256'}))",
        ])
        .output()
        .expect("node");
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

pub(crate) fn op_config(
    web: Option<&str>,
    jwks: &Value,
    port: Option<u16>,
    extra: &Value,
) -> Value {
    let web = web.unwrap_or("127.0.0.1:9");
    let mut config = json!({
        "clients": [{
            "client_id": "portico",
            "client_secret": SECRET,
            "redirect_uris": [format!("http://{web}/oauth2/callback")],
            "post_logout_redirect_uris": [format!("http://{web}/bye"), format!("http://{web}/")],
            "token_endpoint_auth_method": "client_secret_basic",
        }],
        "accounts": {
            "alice": { "sub": "alice-sub", "email": "alice@example.com", "name": "Alice" },
            "bob": { "sub": "bob-sub", "email": "bob@example.com" },
        },
        "ttl": { "AccessToken": 600, "IdToken": 600, "RefreshToken": 3600, "Session": 3600 },
        "issueRefreshToken": true,
        "jwks": jwks,
    });
    if let Some(port) = port {
        config["port"] = json!(port);
    }
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    config
}

fn gw_config(issuer: &str, upstream: &str, extra: &[&str]) -> String {
    let mut lines = String::new();
    for line in extra {
        lines.push_str("\n          ");
        lines.push_str(line);
    }
    let oidc = fill(
        "      - oidc:
          issuer: '@ISSUER@'
          client_id: portico
          client_secret: @SECRET@
          scopes: [openid, email]
          session: { keys: ['@KEY@'], secure: false }
          claims_to_headers: { email: x-user-email }
          logout: { redirect: /bye }@EXTRA@",
        &[
            ("ISSUER", issuer),
            ("SECRET", SECRET),
            ("KEY", KEY_A),
            ("EXTRA", &lines),
        ],
    );
    fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
consumers:
  - { name: alice-sub, groups: [admins] }
routes:
  - name: admin
    match: { path_prefix: /admin }
    plugins:
@OIDC@
      - acl: { allow: [admins] }
    upstream: u
  - name: app
    plugins:
@OIDC@
    upstream: u
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
",
        &[("OIDC", &oidc), ("UP", upstream)],
    )
}

/// The provider, and portico in front of the upstream. The provider must know portico's
/// callback, and portico the provider's issuer: the provider starts, portico starts on its
/// issuer (discovery and keys are read at start), then the provider starts again on the same
/// port with the same keys and portico's callback registered.
struct Setup {
    op: Provider,
    gw: Portico,
    up: TestUpstream,
    web: String,
}

async fn setup(op_extra: Value, gw_extra: &[&str]) -> Setup {
    let jwks = json!({ "keys": [private_jwk()] });
    let first = Provider::start(op_config(None, &jwks, None, &op_extra));
    let (issuer, port) = (first.issuer().to_owned(), first.port());
    let up = TestUpstream::start("u").await;
    let gw = Portico::start(&gw_config(&issuer, &up.addr(), gw_extra));
    let web = gw.addr("web");
    drop(first);
    let op = Provider::start(op_config(Some(&web), &jwks, Some(port), &op_extra));
    assert_eq!(op.issuer(), issuer);
    Setup { op, gw, up, web }
}

#[tokio::test]
async fn login_reuse_acl_api_clients_and_logout() {
    let Setup { op, gw, up, web } = setup(json!({}), &[]).await;
    let jar = temp_dir("oidc-e2e-jar").join("jar.json");

    // A full login, ending at the upstream.
    let done = login(
        &format!("http://{web}/app/hello?x=1"),
        &LoginOpts::default().jar(&jar),
    )
    .await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.url, format!("http://{web}/app/hello?x=1"));
    let auth = done
        .hops
        .iter()
        .find(|h| h.url.starts_with(&format!("{}/auth?", op.issuer())))
        .expect("the authorization request");
    assert!(
        auth.url.contains("code_challenge=") && auth.url.contains("code_challenge_method=S256")
    );
    assert!(auth.url.contains("nonce=") && auth.url.contains("state="));
    assert!(op.requests().iter().any(|r| r == "POST /token 200"));
    let seen = up.last();
    assert_eq!(seen.headers["x-user-email"], "alice@example.com");
    let cookies = seen
        .headers
        .get("cookie")
        .map_or("", |c| c.to_str().unwrap());
    assert!(!cookies.contains("portico_session"), "{cookies}");
    let session = done.cookie("portico_session").expect("the session cookie");
    assert!(session.http_only && !session.secure);
    assert_eq!(session.same_site.as_deref(), Some("Lax"));
    assert_eq!(session.path, "/");
    assert!(
        done.cookies
            .iter()
            .all(|c| !c.name.starts_with("portico_session_tx_")),
        "the login's cookie is gone"
    );

    // The session reused: no provider call.
    let (auths, tokens) = (op.count("/auth"), op.count("/token"));
    let again = login(
        &format!("http://{web}/app/again"),
        &LoginOpts::default().jar(&jar),
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.hops.len(), 1, "{:?}", again.hops);
    assert_eq!((op.count("/auth"), op.count("/token")), (auths, tokens));

    // acl on the consumer: alice is an admin, bob is not.
    let admin = login(
        &format!("http://{web}/admin/x"),
        &LoginOpts::default().jar(&jar),
    )
    .await;
    assert_eq!(admin.status, 200);
    let bob_jar = temp_dir("oidc-e2e-bob").join("jar.json");
    let bob = login(
        &format!("http://{web}/admin/x"),
        &LoginOpts::user("bob").jar(&bob_jar),
    )
    .await;
    assert_eq!(bob.status, 403, "{}", bob.body);
    let bob_app = login(
        &format!("http://{web}/app/x"),
        &LoginOpts::user("bob").jar(&bob_jar),
    )
    .await;
    assert_eq!(bob_app.status, 200);
    assert_eq!(up.last().headers["x-user-email"], "bob@example.com");

    // An API client: 401 with a challenge, never a redirect.
    let r = send(&web, "/app/x", &[("accept", "application/json")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\"")
    );

    // RP-initiated logout: the provider's end_session endpoint, the cookie cleared.
    let out = login(
        &format!("http://{web}/oauth2/logout"),
        &LoginOpts::default()
            .jar(&jar)
            .stop_at(format!("http://{web}/bye")),
    )
    .await;
    assert!(out.url.starts_with(&format!("http://{web}/bye")), "{out:?}");
    assert!(out.hops.iter().any(
        |h| h.url.starts_with(&format!("{}/session/end?", op.issuer()))
            && h.url.contains("id_token_hint=")
    ));
    assert!(
        op.requests()
            .iter()
            .any(|r| r == "POST /session/end/confirm 303"),
        "{:?}",
        op.requests()
    );
    assert!(out.cookie("portico_session").is_none(), "{:?}", out.cookies);
    // The next request logs in again.
    let next = login(
        &format!("http://{web}/app/after"),
        &LoginOpts::default()
            .jar(&jar)
            .stop_at(format!("{}/auth", op.issuer())),
    )
    .await;
    assert!(
        next.url.starts_with(&format!("{}/auth?", op.issuer())),
        "{next:?}"
    );
    assert!(!gw.log_text().contains("panicked"));
}

#[tokio::test]
async fn the_refresh_grant_before_the_access_token_expires() {
    let Setup { op, up, web, gw: _gw } = setup(
        json!({ "ttl": { "AccessToken": 3, "IdToken": 600, "RefreshToken": 3600, "Session": 3600 } }),
        &["refresh_before: 2s"],
    )
    .await;
    let jar = temp_dir("oidc-e2e-refresh").join("jar.json");
    let done = login(
        &format!("http://{web}/app"),
        &LoginOpts::default().jar(&jar),
    )
    .await;
    assert_eq!(done.status, 200);
    let tokens = op.count("/token");
    let first = done.cookie("portico_session").unwrap().value.clone();
    // Time passes: the access token is within 2 s of its end.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let after = login(
        &format!("http://{web}/app/later"),
        &LoginOpts::default().jar(&jar),
    )
    .await;
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(after.hops.len(), 1, "no login again");
    assert_eq!(op.count("/token"), tokens + 1, "one refresh grant");
    assert_ne!(
        after.cookie("portico_session").unwrap().value,
        first,
        "resealed"
    );
    assert_eq!(up.last().headers["x-user-email"], "alice@example.com");
}

#[tokio::test]
async fn headless_chromium_logs_in() {
    let Setup {
        up,
        web,
        gw: _gw,
        op: _op,
    } = setup(json!({}), &[]).await;
    let done = browser(
        &format!("http://{web}/app/browser"),
        Some(&format!("http://{web}/app/next")),
    )
    .await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.url, format!("http://{web}/app/next"));
    assert!(done.cookie("portico_session").is_some());
    let seen = up.last();
    assert_eq!(seen.uri.path(), "/app/next");
    assert_eq!(seen.headers["x-user-email"], "alice@example.com");
}

#[tokio::test]
async fn the_providers_jwt_access_tokens_as_bearer_tokens() {
    let Setup {
        op,
        up,
        web,
        gw: _gw,
    } = setup(
        json!({ "resource": { "indicator": "https://api.portico.test", "claims": ["email"] } }),
        &["bearer_audience: ['https://api.portico.test']"],
    )
    .await;
    // The test logs in as the client by hand (its own PKCE) to get an access token.
    let verifier = URL_SAFE_NO_PAD.encode([7u8; 32]);
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    let redirect_uri = format!("http://{web}/oauth2/callback");
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", "portico")
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email")
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("state", "state-by-hand")
        .append_pair("nonce", "nonce-by-hand")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    let at_callback = login(
        &format!("{}/auth?{query}", op.issuer()),
        &LoginOpts::default().stop_at(redirect_uri.clone()),
    )
    .await;
    let code = at_callback.query("code").expect("a code");
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", &code)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("code_verifier", &verifier)
        .finish();
    let req = Request::post("/token")
        .header("host", op.addr())
        .header(
            "authorization",
            format!("Basic {}", STANDARD.encode(format!("portico:{SECRET}"))),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))
        .unwrap();
    let tokens = H1::connect(op.addr()).await.send(req).await.unwrap().json();
    let access = tokens["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned();
    assert_eq!(access.split('.').count(), 3, "a JWT");
    let r = send(
        &web,
        "/app/api",
        &[
            ("authorization", &format!("Bearer {access}")),
            ("accept", "application/json"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().headers["x-user-email"], "alice@example.com");
    // The ID token is not an access token for this audience.
    let id = tokens["id_token"].as_str().unwrap();
    let r = send(
        &web,
        "/app/api",
        &[("authorization", &format!("Bearer {id}"))],
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(!r.body.contains(id) && !r.body.contains(&access));
}
