//! `oidc`'s settings and its request steps that need no provider call.

use std::sync::Arc;

use http::{HeaderValue, StatusCode, request};

use super::provider::Discovered;
use super::*;
use crate::config::spec::PluginSpec;

const KEY: &str = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";

/// The `oidc` spec of a global plugin list written as `extra` lines after the required keys.
fn spec(extra: &str) -> OidcSpec {
    let text = format!(
        "plugins:\n  - oidc:\n      issuer: https://id.example.com\n      client_id: portico\n      \
         client_secret: s3cret\n      session: {{ keys: ['{KEY}'] }}\n{extra}"
    );
    let (spec, errors) = crate::config::read_str("c.yaml", &text, &|_| None);
    assert!(errors.is_empty(), "{errors:?}");
    match &spec.plugins[0].value {
        PluginSpec::Oidc(oidc) => (**oidc).clone(),
        other => panic!("{other:?}"),
    }
}

fn build(spec: &OidcSpec) -> Result<Oidc, BuildError> {
    crate::plugins::with_test_env(|env| Oidc::new(spec, env))
}

fn error(extra: &str) -> String {
    build(&spec(extra)).expect_err("refused").to_string()
}

#[test]
fn settings_are_checked() {
    assert!(build(&spec("")).is_ok());
    let mut bad = spec("");
    bad.session.keys.value[0].value = "c2hvcnQ=".to_owned();
    assert_eq!(
        build(&bad).expect_err("refused").to_string(),
        "a session key must be 32 bytes, this one has 5"
    );
    bad.session.keys.value.clear();
    assert!(
        build(&bad)
            .err()
            .unwrap()
            .to_string()
            .contains("at least one key")
    );
    let mut bad = spec("");
    bad.client_secret.value.clear();
    assert_eq!(
        build(&bad).expect_err("refused").to_string(),
        "client_secret must not be empty"
    );
    let mut bad = spec("");
    bad.issuer.value = "ftp://id.example.com".to_owned();
    assert_eq!(
        build(&bad).expect_err("refused").to_string(),
        "issuer must be http:// or https://"
    );
    let mut bad = spec("");
    bad.session.cookie.value = "a b".to_owned();
    assert!(
        build(&bad)
            .err()
            .unwrap()
            .to_string()
            .starts_with("session.cookie must be")
    );
    assert_eq!(
        error("      allowed_redirect_origins: [https://app.example.com/path]\n"),
        "an allowed redirect origin is like https://app.example.com"
    );
    assert_eq!(
        error("      redirect_uri: /relative\n"),
        "redirect_uri must be an absolute http(s) URL"
    );
    assert_eq!(
        error("      redirect_path: callback\n"),
        "redirect_path must start with `/`"
    );
    let mut bad = spec("");
    bad.session.same_site = crate::config::spec_oidc::SameSite::None;
    bad.session.secure = false;
    assert!(
        build(&bad)
            .err()
            .unwrap()
            .to_string()
            .contains("needs session.secure")
    );
    let mut bad = spec("");
    bad.session.domain = Some("x; Secure=no".to_owned());
    assert_eq!(
        build(&bad).expect_err("refused").to_string(),
        "session.domain must be a host name"
    );
    assert_eq!(
        error("      logout: { redirect: 'https://evil.example/' }\n"),
        "logout.redirect must be a relative path or a URL on an allowed_redirect_origins origin"
    );
    // The secrets are never serialized (GET /config).
    let json = serde_json::to_string(&spec("")).unwrap();
    assert!(!json.contains("s3cret") && !json.contains(KEY), "{json}");
}

fn ctx() -> RequestCtx {
    RequestCtx::new(
        HeaderValue::from_static("id-1"),
        "127.0.0.1:1".parse().expect("an address"),
        Arc::from("web"),
    )
}

fn head(path: &str, headers: &[(&str, &str)]) -> request::Parts {
    let mut b = http::Request::get(path).header("host", "app.example.com");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("a request").into_parts().0
}

fn discovered(plugin: &Oidc) {
    plugin
        .shared
        .provider
        .current
        .store(Some(Arc::new(Discovered {
            authorization_endpoint: "https://id.example.com/authorize".to_owned(),
            token_endpoint: "https://id.example.com/token".parse().unwrap(),
            end_session_endpoint: Some("https://id.example.com/logout".to_owned()),
            keys: Vec::new(),
        })));
}

fn respond(flow: Flow) -> http::Response<crate::body::Body> {
    match flow {
        Flow::Respond(r) => r,
        Flow::Continue => panic!("went on"),
        _ => panic!("deferred"),
    }
}

#[test]
fn without_the_provider_every_request_fails_closed() {
    let plugin = build(&spec("")).unwrap();
    for accept in ["text/html", "application/json"] {
        let r = respond(
            plugin
                .on_request(&mut ctx(), &mut head("/x", &[("accept", accept)]))
                .unwrap(),
        );
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

#[test]
fn browsers_go_to_the_provider_and_api_clients_get_401() {
    let plugin = build(&spec("      scopes: [email, openid]\n")).unwrap();
    discovered(&plugin);
    let r = respond(
        plugin
            .on_request(&mut ctx(), &mut head("/a?b=c", &[("accept", "text/html")]))
            .unwrap(),
    );
    assert_eq!(r.status(), StatusCode::FOUND);
    let location = r.headers()[http::header::LOCATION].to_str().unwrap();
    let (base, query) = location.split_once('?').unwrap();
    assert_eq!(base, "https://id.example.com/authorize");
    let q: std::collections::HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(q["redirect_uri"], "https://app.example.com/oauth2/callback");
    assert_eq!(q["scope"], "openid email");
    assert_eq!(q["code_challenge_method"], "S256");
    let set = r.headers()[http::header::SET_COOKIE].to_str().unwrap();
    assert!(
        set.starts_with(&format!("portico_session_tx_{}=", &q["state"][..16])),
        "{set}"
    );
    assert!(set.contains("; Secure"), "{set}");
    // The transaction opens and holds the verifier of the challenge sent.
    let (name, value) = set.split(';').next().unwrap().split_once('=').unwrap();
    let tx: session::Transaction =
        serde_json::from_slice(&plugin.shared.sealer.open(name, value).unwrap()).unwrap();
    assert_eq!(redirect::challenge(&tx.verifier), q["code_challenge"]);
    assert_eq!(
        (tx.state.as_str(), tx.nonce.as_str()),
        (q["state"].as_str(), q["nonce"].as_str())
    );
    assert_eq!(tx.target, "/a?b=c");

    let r = respond(
        plugin
            .on_request(
                &mut ctx(),
                &mut head("/a", &[("accept", "application/json")]),
            )
            .unwrap(),
    );
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()[http::header::WWW_AUTHENTICATE],
        "Bearer realm=\"portico\""
    );
}

#[test]
fn a_session_cookie_is_the_identity() {
    let plugin = build(&spec(
        "      claims_to_headers: { email: x-user-email }\n      consumer_claim: email\n",
    ))
    .unwrap();
    discovered(&plugin);
    let now = now_secs();
    let session = Session {
        claims: serde_json::from_str(r#"{"sub":"u1","email":"a@example.com"}"#).unwrap(),
        created: now,
        ends: now + 60,
        access_expires: Some(now + 3600),
        refresh_token: Some("rt".to_owned()),
        id_token: None,
    };
    let sealed = plugin
        .shared
        .sealer
        .seal("portico_session", &serde_json::to_vec(&session).unwrap())
        .unwrap();
    let cookie = format!("a=1; portico_session={sealed}; b=2");
    let mut c = ctx();
    let mut h = head("/x", &[("cookie", &cookie), ("x-user-email", "forged")]);
    assert!(matches!(
        plugin.on_request(&mut c, &mut h).unwrap(),
        Flow::Continue
    ));
    assert_eq!(h.headers["x-user-email"], "a@example.com");
    assert_eq!(h.headers[http::header::COOKIE], "a=1; b=2");
    assert_eq!(c.consumer.as_ref().unwrap().name, "a@example.com");
    assert!(c.slots.get::<crate::plugins::jwt::Claims>().is_some());
    // `explain` finds it too, offline.
    let notes = match plugin.explain(
        &mut ctx(),
        &head("/x", &[("cookie", &cookie)]),
        &Default::default(),
    ) {
        crate::plugins::Explained::Offline(notes) => notes,
        other => panic!("{other:?}"),
    };
    assert!(
        notes[0].starts_with("a session cookie that opens: email a@example.com"),
        "{notes:?}"
    );
    // Ended: a login again, and the cookie goes.
    let ended = Session {
        ends: now - 1,
        ..session
    };
    let sealed = plugin
        .shared
        .sealer
        .seal("portico_session", &serde_json::to_vec(&ended).unwrap())
        .unwrap();
    let r = respond(
        plugin
            .on_request(
                &mut ctx(),
                &mut head("/x", &[("cookie", &format!("portico_session={sealed}"))]),
            )
            .unwrap(),
    );
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()[http::header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}

#[test]
fn logout_goes_to_the_provider_with_a_safe_return() {
    let plugin = build(&spec(
        "      allowed_redirect_origins: [https://other.example.com]\n",
    ))
    .unwrap();
    discovered(&plugin);
    let r = plugin
        .shared
        .logout(&head("/oauth2/logout?rd=https%3A%2F%2Fevil.example", &[]));
    let location = r.headers()[http::header::LOCATION].to_str().unwrap();
    assert!(location.starts_with("https://id.example.com/logout?post_logout_redirect_uri=https%3A%2F%2Fapp.example.com%2F&client_id=portico"), "{location}");
    let r = plugin.shared.logout(&head(
        "/oauth2/logout?rd=https%3A%2F%2Fother.example.com%2Fbye",
        &[],
    ));
    let location = r.headers()[http::header::LOCATION].to_str().unwrap();
    assert!(
        location.contains("post_logout_redirect_uri=https%3A%2F%2Fother.example.com%2Fbye"),
        "{location}"
    );
}

#[test]
fn unauthenticated_decides_between_redirect_and_401() {
    for (setting, accept, want) in [
        ("deny", "text/html", StatusCode::UNAUTHORIZED),
        ("redirect", "application/json", StatusCode::FOUND),
        ("auto", "*/*", StatusCode::UNAUTHORIZED),
        ("auto", "text/html;q=0.9", StatusCode::FOUND),
    ] {
        let plugin = build(&spec(&format!("      unauthenticated: {setting}\n"))).unwrap();
        discovered(&plugin);
        let r = respond(
            plugin
                .on_request(&mut ctx(), &mut head("/", &[("accept", accept)]))
                .unwrap(),
        );
        assert_eq!(r.status(), want, "{setting} {accept}");
    }
}
