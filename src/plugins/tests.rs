//! The plugin chain's steps, without sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, request};
use http_body_util::BodyExt;

use super::*;
use crate::body::BodyError;

fn ctx() -> RequestCtx {
    RequestCtx::new(
        http::HeaderValue::from_static("id-1"),
        "127.0.0.1:1".parse().expect("an address"),
        Arc::from("web"),
    )
}

fn head() -> request::Parts {
    http::Request::post("/")
        .body(())
        .expect("a request")
        .into_parts()
        .0
}

/// Upper-cases each chunk as it passes.
#[derive(Debug)]
struct Upper;

struct UpperFilter;

impl ChunkFilter for UpperFilter {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BodyError> {
        Ok(Bytes::from(data.to_ascii_uppercase()))
    }
}

impl Plugin for Upper {
    fn name(&self) -> &'static str {
        "upper"
    }
    fn request_body(&self, _: &mut RequestCtx, _: &request::Parts) -> Option<BodyFilter> {
        Some(BodyFilter::Chunks(Box::new(UpperFilter)))
    }
    fn response_body(&self, _: &RequestCtx, _: &response::Parts) -> Option<BodyFilter> {
        Some(BodyFilter::Chunks(Box::new(UpperFilter)))
    }
}

/// Wraps the whole body in brackets, or refuses one that says "no"; counts its log steps.
#[derive(Debug, Default)]
struct Bracket {
    logged: AtomicUsize,
}

struct BracketEdit;

impl WholeBody for BracketEdit {
    fn apply(
        self: Box<Self>,
        _: &RequestCtx,
        _: &mut HeaderMap,
        body: Bytes,
    ) -> Result<Bytes, Box<http::Response<Body>>> {
        if body.as_ref() == b"NO" {
            let mut refusal = http::Response::new(Body::full("refused"));
            *refusal.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            return Err(Box::new(refusal));
        }
        Ok(Bytes::from(format!("[{}]", String::from_utf8_lossy(&body))))
    }
}

impl Plugin for Bracket {
    fn name(&self) -> &'static str {
        "bracket"
    }
    fn request_body(&self, _: &mut RequestCtx, _: &request::Parts) -> Option<BodyFilter> {
        Some(BodyFilter::Whole {
            max: 8,
            edit: Box::new(BracketEdit),
        })
    }
    fn response_body(&self, _: &RequestCtx, _: &response::Parts) -> Option<BodyFilter> {
        Some(BodyFilter::Whole {
            max: 8,
            edit: Box::new(BracketEdit),
        })
    }
    fn log(&self, _: &RequestCtx, record: &LogRecord) {
        if record.status == StatusCode::OK && record.elapsed > std::time::Duration::ZERO {
            self.logged.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn text(body: Body) -> String {
    let bytes = body.collect().await.expect("a whole body").to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn request_body_steps_run_in_chain_order() {
    let chain = PluginChain::new(vec![Arc::new(Upper), Arc::new(Bracket::default())]);
    let mut head = head();
    let step = chain
        .request_body(&mut ctx(), &mut head, Body::full("abc"))
        .await
        .expect("no error");
    let BodyStep::Continue(body) = step else {
        panic!("no answer expected");
    };
    assert_eq!(
        text(body).await,
        "[ABC]",
        "the whole-body step sees the filtered chunks"
    );
    assert_eq!(head.headers["content-length"], "5");

    // The other order: the chunk filter sees the rebuilt body.
    let chain = PluginChain::new(vec![Arc::new(Bracket::default()), Arc::new(Upper)]);
    let BodyStep::Continue(body) = chain
        .request_body(&mut ctx(), &mut head, Body::full("abc"))
        .await
        .expect("no error")
    else {
        panic!("no answer expected");
    };
    assert_eq!(text(body).await, "[ABC]");
}

#[tokio::test]
async fn a_whole_body_step_may_answer_or_refuse_a_large_body() {
    let chain = PluginChain::new(vec![Arc::new(Bracket::default())]);
    let step = chain
        .request_body(&mut ctx(), &mut head(), Body::full("NO"))
        .await
        .expect("no error");
    let BodyStep::Respond(response) = step else {
        panic!("an answer expected");
    };
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let Err(err) = chain
        .request_body(&mut ctx(), &mut head(), Body::full("more than eight bytes"))
        .await
    else {
        panic!("a large body is refused");
    };
    assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let (parts, _) = http::Response::new(()).into_parts();
    let Err(err) = chain
        .response_body(&ctx(), parts, Body::full("more than eight bytes"))
        .await
    else {
        panic!("a large response body is refused");
    };
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn response_body_steps_run_last_plugin_first() {
    let chain = PluginChain::new(vec![Arc::new(Bracket::default()), Arc::new(Upper)]);
    let (parts, _) = http::Response::new(()).into_parts();
    let response = chain
        .response_body(&ctx(), parts, Body::full("ok"))
        .await
        .expect("no error");
    assert_eq!(response.headers()["content-length"], "4");
    assert_eq!(text(response.into_body()).await, "[OK]");
}

#[test]
fn log_steps_run_once_each() {
    let bracket = Arc::new(Bracket::default());
    let chain = PluginChain::new(vec![Arc::new(Upper), bracket.clone()]);
    chain.log(
        &ctx(),
        &LogRecord {
            status: StatusCode::OK,
            elapsed: std::time::Duration::from_millis(1),
        },
    );
    assert_eq!(bracket.logged.load(Ordering::Relaxed), 1);
}

#[test]
fn build_errors_say_what_the_user_wrote() {
    let mut spec = crate::config::spec::HeaderOpsSpec::default();
    spec.set.insert("x-ok".into(), "bad\nvalue".into());
    let err = headers::HeaderOps::compile(&spec).unwrap_err();
    assert_eq!(err.to_string(), "invalid value for header `x-ok`");
    assert!(std::error::Error::source(&err).is_some());

    spec.remove.push("bad name".into());
    let err = headers::HeaderOps::compile(&spec).unwrap_err();
    assert_eq!(err.to_string(), "invalid header name `bad name`");

    let err = ip_restriction::Cidr::parse("10.0.0.0/33").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid address block `10.0.0.0/33`: expected like 10.0.0.0/8"
    );
    let err = BuildError::KeyMaterial {
        alg: jsonwebtoken::Algorithm::RS256,
        hmac: false,
    };
    assert_eq!(err.to_string(), "a RS256 key needs a `public_key_file`");
}

#[test]
fn the_name_list_is_what_the_config_accepts() {
    for name in NAMES {
        let text = format!("plugins: [ {{ {name}: {{}} }} ]\n");
        let (_, errors) = crate::config::read_str("p.yaml", &text, &|_| None);
        assert!(
            errors.iter().all(|e| !e.to_string().contains("unknown")),
            "{name}: {errors:?}"
        );
    }
    // And nothing is missing: the parser's own list of names is this one.
    let (_, errors) = crate::config::read_str("p.yaml", "plugins: [ { nosuch: {} } ]\n", &|_| None);
    let message = errors.iter().map(ToString::to_string).collect::<String>();
    let listed = message
        .split("expected one of: ")
        .nth(1)
        .unwrap_or_default()
        .trim();
    assert_eq!(listed.split(", ").collect::<Vec<_>>(), NAMES, "{message}");
}
