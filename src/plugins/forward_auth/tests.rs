use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::config::spec::PluginSpec;
use crate::plugins::{BuildEnv, SubError, Subrequests, UpstreamLookup};

fn spec(yaml: &str) -> ForwardAuthSpec {
    let text = format!("plugins:\n  - forward_auth: {yaml}\n");
    let spec = crate::config::load_str("c.yaml", &text, &|_| None).unwrap_or_else(|d| {
        panic!(
            "{:?}",
            d.iter().map(ToString::to_string).collect::<Vec<_>>()
        )
    });
    match &spec.plugins[0].value {
        PluginSpec::ForwardAuth(s) => s.clone(),
        other => panic!("{other:?}"),
    }
}

fn lookup(name: &str) -> Result<SubTarget, String> {
    if name == "auth" {
        Ok(SubTarget {
            name: Arc::from("auth"),
            inner: Arc::new(()),
        })
    } else {
        Err(format!("upstream `{name}` is not defined"))
    }
}

fn build(yaml: &str) -> Result<ForwardAuth, BuildError> {
    let spec = spec(yaml);
    crate::plugins::with_test_env(|env| {
        ForwardAuth::new(
            &spec,
            BuildEnv {
                upstreams: UpstreamLookup(&lookup),
                redis: None,
                ..env
            },
        )
    })
}

fn request(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
    let mut builder = http::Request::post(uri).header("host", "app.example");
    for (n, v) in headers {
        builder = builder.header(*n, *v);
    }
    builder.body(()).unwrap().into_parts().0
}

fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> SubResult {
    let mut builder = http::Response::builder().status(status);
    for (n, v) in headers {
        builder = builder.header(*n, *v);
    }
    Ok(builder.body(Bytes::from(body.to_owned())).unwrap())
}

#[test]
fn settings_are_checked_at_their_position() {
    let err = build("{ upstream: nope }").unwrap_err();
    assert_eq!(err.to_string(), "upstream `nope` is not defined");
    assert_eq!(err.pos().map(|p| (p.line, p.col)), Some((2, 31)));
    let err =
        build("{ upstream: auth, request_headers: [authorization, 'bad name'] }").unwrap_err();
    assert_eq!(err.to_string(), "invalid header name `bad name`");
    assert_eq!(err.pos().map(|p| p.line), Some(2));
    for (yaml, want) in [
        (
            "{ upstream: auth, path: check }",
            "path must be an absolute path",
        ),
        ("{ upstream: auth, method: 'G T' }", "method `G T`"),
        ("{ upstream: auth, cache: { key: [] } }", "cache.key needs"),
        (
            "{ upstream: auth, cache: { key: [cookie], ttl: 0s } }",
            "cache.ttl must",
        ),
    ] {
        let err = build(yaml).unwrap_err().to_string();
        assert!(err.starts_with(want), "{yaml}: {err}");
    }
    let ok = build("{ upstream: auth }").unwrap();
    assert_eq!(ok.shared.path, "/");
    assert_eq!(ok.shared.method, Some(Method::GET));
    assert_eq!(ok.shared.timeout, Duration::from_secs(2));
    assert_eq!(ok.shared.max_body, 64 * 1024);
    assert_eq!(
        ok.shared.client_headers,
        ["www-authenticate", "location", "set-cookie", "content-type"]
    );
}

#[test]
fn the_check_describes_the_request() {
    let auth = build(
        "{ upstream: auth, path: /verify?x=1, request_headers: [authorization], method: original }",
    )
    .unwrap();
    let head = request(
        "/orders/7?full=1",
        &[("authorization", "Bearer t"), ("cookie", "sid=secret")],
    );
    let check = auth.shared.check(&head);
    assert_eq!(check.method, Method::POST);
    assert_eq!(check.uri, "/verify?x=1");
    assert_eq!(check.headers["x-forwarded-method"], "POST");
    assert_eq!(check.headers["x-forwarded-uri"], "/orders/7?full=1");
    assert_eq!(check.headers["x-forwarded-host"], "app.example");
    assert_eq!(check.headers["authorization"], "Bearer t");
    assert!(check.headers.get("cookie").is_none(), "not listed");
    assert!(check.headers.get("host").is_none());
    let get = build("{ upstream: auth }").unwrap();
    assert_eq!(get.shared.check(&head).method, Method::GET);
}

#[test]
fn keys_hash_the_listed_headers_and_the_target() {
    let auth = build("{ upstream: auth, cache: { key: [authorization, cookie] } }").unwrap();
    let cache = auth.shared.cache.as_ref().unwrap();
    let key = |uri: &str, h: &[(&str, &str)]| auth.shared.key(cache, &request(uri, h));
    let a = key("/a", &[("authorization", "Bearer 1")]);
    assert_eq!(
        a,
        key("/a", &[("authorization", "Bearer 1"), ("x-other", "y")])
    );
    assert_ne!(a, key("/a", &[("authorization", "Bearer 2")]));
    assert_ne!(a, key("/b", &[("authorization", "Bearer 1")]));
    assert_ne!(
        a,
        key("/a", &[("authorization", "Bearer 1"), ("cookie", "")])
    );
    // Values cannot slide from one header to the next.
    assert_ne!(
        key("/a", &[("authorization", "ab"), ("cookie", "c")]),
        key("/a", &[("authorization", "a"), ("cookie", "bc")])
    );
}

#[test]
fn answers_decide() {
    let auth = build(
        "{ upstream: auth, response_headers: [x-user], consumer_header: x-user, \
           cache: { key: [cookie], ttl: 5s, negative_ttl: 1s } }",
    )
    .unwrap();
    let s = &auth.shared;
    match s.decide(answer(204, &[("x-user", "alice"), ("x-other", "1")], "")) {
        Some((Decision::Allow { headers, consumer }, ttl)) => {
            assert_eq!(
                headers,
                [(
                    HeaderName::from_static("x-user"),
                    HeaderValue::from_static("alice")
                )]
            );
            assert_eq!(consumer.as_deref(), Some("alice"));
            assert_eq!(ttl, Duration::from_secs(5));
        }
        other => panic!("{other:?}"),
    }
    match s.decide(answer(
        401,
        &[
            ("www-authenticate", "Basic"),
            ("x-debug", "1"),
            ("content-type", "text/plain"),
        ],
        "who?",
    )) {
        Some((
            Decision::Deny {
                status,
                headers,
                body,
            },
            ttl,
        )) => {
            assert_eq!(status, 401);
            assert_eq!(headers.len(), 2);
            assert_eq!(body, "who?");
            assert_eq!(ttl, Duration::from_secs(1));
        }
        other => panic!("{other:?}"),
    }
    // A refusal that sets a cookie is never reused.
    match s.decide(answer(
        302,
        &[("location", "/login"), ("set-cookie", "state=1")],
        "",
    )) {
        Some((Decision::Deny { .. }, ttl)) => assert_eq!(ttl, Duration::ZERO),
        other => panic!("{other:?}"),
    }
    assert!(s.decide(Err(SubError::TooLarge)).is_none());
    assert!(s.decide(Err(SubError::Failed("down"))).is_none());
}

/// Answers every call with `status`, counting the calls.
struct Canned {
    status: u16,
    calls: AtomicUsize,
}

impl Subrequests for Canned {
    fn call(
        &self,
        _ctx: &RequestCtx,
        _target: &SubTarget,
        head: request::Parts,
        _max_body: usize,
    ) -> std::pin::Pin<Box<dyn Future<Output = SubResult> + Send>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        assert!(head.headers.get("x-user").is_none());
        Box::pin(std::future::ready(answer(
            self.status,
            &[("x-user", "alice"), ("www-authenticate", "Bearer")],
            "no",
        )))
    }
}

fn ctx() -> RequestCtx {
    RequestCtx::new(
        HeaderValue::from_static("id-1"),
        "127.0.0.1:1".parse().unwrap(),
        Arc::from("web"),
    )
}

#[tokio::test]
async fn the_chain_runs_the_check_and_reuses_decisions() {
    let plugin: Arc<dyn Plugin> = Arc::new(
        build("{ upstream: auth, response_headers: [x-user], cache: { key: [authorization] } }")
            .unwrap(),
    );
    let calls = Canned {
        status: 200,
        calls: AtomicUsize::new(0),
    };
    for _ in 0..3 {
        let mut ctx = ctx();
        let mut head = request("/", &[("authorization", "Bearer 1"), ("x-user", "forged")]);
        let answered = crate::plugins::run_on_request(&plugin, &mut ctx, &mut head, &calls)
            .await
            .unwrap();
        assert!(answered.is_none());
        assert_eq!(head.headers["x-user"], "alice");
        assert_eq!(head.headers.get_all("x-user").iter().count(), 1);
    }
    assert_eq!(calls.calls.load(Ordering::SeqCst), 1);

    let deny = Canned {
        status: 403,
        calls: AtomicUsize::new(0),
    };
    let mut head = request("/", &[("authorization", "Bearer 2")]);
    let answered = crate::plugins::run_on_request(&plugin, &mut ctx(), &mut head, &deny)
        .await
        .unwrap()
        .expect("relayed");
    assert_eq!(answered.status(), 403);
    assert_eq!(answered.headers()["www-authenticate"], "Bearer");
    assert!(
        answered.headers().get("x-user").is_none(),
        "not a client header"
    );

    // No call possible: 503, never through.
    let mut head = request("/", &[("authorization", "Bearer 3")]);
    let answered = crate::plugins::run_on_request(
        &plugin,
        &mut ctx(),
        &mut head,
        &crate::plugins::NoSubrequests,
    )
    .await
    .unwrap()
    .expect("fails closed");
    assert_eq!(answered.status(), 503);
}
