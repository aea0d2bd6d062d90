//! `oidc` against a provider that misbehaves on purpose (`oidc_op.rs`): replayed and unknown
//! states, wrong nonces, ID tokens for another client, expired, or signed with `none` or HS256
//! keyed by the public key; tampered, truncated and foreign session cookies; key rotation; open
//! redirects; the provider down; refresh; chunked sessions; and no secret in any error body.

use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;

use crate::jwt::now;
use crate::oidc_op::{
    Evil, HTML, KEY_A, KEY_B, Mint, SECRET, config, config_session, cookie_header, log_in, send,
    set_cookies, to_callback,
};
use crate::support::client::Reply;
use crate::support::{Portico, TestUpstream};

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

    // The same callback again, with the same transaction cookie: refused (the state was used),
    // across a reload too.
    assert!(gw.reload(&format!(
        "{}\n# reloaded\n",
        config(&op.issuer, &up.addr(), &[KEY_A], &["client_auth: post"])
    )));
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
    // The unknown `kid` asked for one early JWKS fetch (start-up made the first); another
    // unknown `kid` within the minute asks for none.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while op.get(|s| s.jwks_calls) < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(op.get(|s| s.jwks_calls), 2);
    let (cb, tx, _) = to_callback(&web, "/app").await;
    assert_eq!(send(&web, &cb, &[("cookie", &tx)]).await.status, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        op.get(|s| s.jwks_calls),
        2,
        "at most one early refresh a minute"
    );
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

    // Logins by result.
    let metrics = crate::support::get(gw.admin.as_deref().unwrap(), "/metrics")
        .await
        .body;
    for line in [
        "portico_oidc_events_total{event=\"login\",result=\"success\"} 1",
        "portico_oidc_events_total{event=\"login\",result=\"replayed\"} 1",
        "portico_oidc_events_total{event=\"login\",result=\"invalid_state\"} 3",
        "portico_oidc_events_total{event=\"login\",result=\"id_token_invalid\"} 13",
        "portico_oidc_events_total{event=\"login\",result=\"provider_error\"} 2",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
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

#[tokio::test]
async fn a_strict_session_cookie_moves_on_from_a_page_of_its_own() {
    let op = Evil::start().await;
    let up = TestUpstream::start("u").await;
    let gw = Portico::start(&config_session(
        &op.issuer,
        &up.addr(),
        &[KEY_A],
        ", same_site: strict",
        &[],
    ));
    let web = gw.addr("web");
    let (cb, tx, start) = to_callback(&web, "/a?b=1&c='x'%22").await;
    // The login's own cookie stays Lax: it must come back from the provider's site.
    assert!(set_cookies(&start)[0].2.contains("SameSite=Lax"));
    let done = send(&web, &cb, &[("cookie", &tx)]).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(
        done.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        done.body
            .contains("content=\"0;url=/a?b=1&amp;c=&#39;x&#39;%22\""),
        "{}",
        done.body
    );
    let session = set_cookies(&done)
        .into_iter()
        .find(|(n, _, _)| n == "portico_session")
        .unwrap();
    assert!(session.2.contains("SameSite=Strict"));
    let r = send(
        &web,
        "/a",
        &[("cookie", &format!("portico_session={}", session.1))],
    )
    .await;
    assert_eq!(r.status, 200);
}
