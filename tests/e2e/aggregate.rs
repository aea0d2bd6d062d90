//! The `aggregate` action through the real binary, against purpose-built upstreams: JSON,
//! XML and form backends, a slow one, a failing one, one that never answers.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::support::{Portico, cli, fill, get};

/// What the backend saw: each request's target and when it started and ended.
#[derive(Debug, Default)]
pub struct Log {
    pub calls: Vec<(String, Instant, Option<Instant>)>,
    /// Requests whose handler was dropped before it answered.
    pub cancelled: Vec<String>,
}

/// A backend answering by path:
/// `/users/ID` JSON user; `/orders?user=ID` a JSON array; `/xml` XML; `/form` a form body;
/// `/items/A1` XML; `/text` plain text; `/orders?user=13` 500; `/fail` 500 with an internal detail; `/slow?ms=N` JSON after N ms;
/// `/hang` never answers; `/big` a 4 KiB JSON string; `/bad-xml` broken XML.
pub struct Backend {
    pub addr: String,
    pub log: Arc<Mutex<Log>>,
    pub changed: Arc<tokio::sync::Notify>,
    /// `/hedge` answers after 5 s while this is true.
    pub slow: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Marks a request cancelled unless it finished.
struct Guard {
    target: String,
    log: Arc<Mutex<Log>>,
    changed: Arc<tokio::sync::Notify>,
    done: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.log.lock().unwrap().cancelled.push(self.target.clone());
            self.changed.notify_waiters();
        }
    }
}

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap()
}

async fn answer(target: &str, slow: bool) -> Response<Full<Bytes>> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if let Some(id) = path.strip_prefix("/users/") {
        let body = serde_json::json!({"id": id, "name": "Ada", "secret": "s3",
            "address": {"city": "Paris", "zip": "75001"}, "favourite": "A1"});
        let mut r = reply(200, "application/json", body.to_string());
        r.headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        return r;
    }
    match path {
        "/orders" if query == "user=13" => {
            reply(500, "text/plain", "orders db at 10.1.2.3 is down")
        }
        "/orders" => {
            let user = query.strip_prefix("user=").unwrap_or("");
            let body = serde_json::json!([{"order": 1, "user": user, "internal": true},
                {"order": 2, "user": user, "internal": true}]);
            reply(200, "application/json", body.to_string())
        }
        "/xml" => reply(
            200,
            "application/xml",
            r#"<?xml version="1.0"?><stock sku="A1"><item>x</item><item>y</item><count>3</count></stock>"#,
        ),
        "/items/A1" => reply(
            200,
            "application/xml",
            r#"<item sku="A1"><name>Desk lamp</name><stock>3</stock></item>"#,
        ),
        "/bad-xml" => reply(200, "application/xml", "<stock><item></stock>"),
        "/form" => reply(
            200,
            "application/x-www-form-urlencoded",
            "balance=12.5&currency=EUR",
        ),
        "/text" => reply(200, "text/plain", "all good"),
        "/fail" => reply(500, "text/plain", "db at 10.1.2.3 exploded"),
        "/big" => reply(200, "application/json", format!("\"{}\"", "x".repeat(4096))),
        "/slow" => {
            let ms: u64 = query
                .strip_prefix("ms=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(300);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply(200, "application/json", format!("{{\"slept\": {ms}}}"))
        }
        "/hedge" => {
            if slow {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            let from = if slow { "slow" } else { "fast" };
            reply(200, "application/json", format!("{{\"from\": \"{from}\"}}"))
        }
        "/hang" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        _ => reply(404, "text/plain", "no"),
    }
}

impl Backend {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let log: Arc<Mutex<Log>> = Arc::default();
        let changed = Arc::new(tokio::sync::Notify::new());
        let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (log2, changed2, slow2) = (Arc::clone(&log), Arc::clone(&changed), Arc::clone(&slow));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (log, changed) = (Arc::clone(&log2), Arc::clone(&changed2));
                let slow = Arc::clone(&slow2);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (log, changed) = (Arc::clone(&log), Arc::clone(&changed));
                        let slow = slow.load(std::sync::atomic::Ordering::Relaxed);
                        async move {
                            let target = req.uri().to_string();
                            let index = {
                                let mut l = log.lock().unwrap();
                                l.calls.push((target.clone(), Instant::now(), None));
                                l.calls.len() - 1
                            };
                            changed.notify_waiters();
                            let mut guard = Guard {
                                target: target.clone(),
                                log: Arc::clone(&log),
                                changed: Arc::clone(&changed),
                                done: false,
                            };
                            let response = answer(&target, slow).await;
                            guard.done = true;
                            log.lock().unwrap().calls[index].2 = Some(Instant::now());
                            changed.notify_waiters();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            log,
            changed,
            slow,
            task,
        }
    }

    /// Waits (bounded) until `check` holds for the log.
    pub async fn wait(&self, what: &str, check: impl Fn(&Log) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.changed.notified();
            if check(&self.log.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out waiting for {what}: {:?}",
                    self.log.lock().unwrap()
                );
            }
        }
    }

    fn span(&self, prefix: &str) -> (Instant, Instant) {
        let log = self.log.lock().unwrap();
        let (_, start, end) = log
            .calls
            .iter()
            .find(|(t, _, _)| t.starts_with(prefix))
            .unwrap_or_else(|| panic!("no call to {prefix}: {log:?}"));
        (*start, end.expect("the call finished"))
    }
}

const CONFIG: &str = "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: profile
    match: { path_template: '/profile/{id}' }
    aggregate:
      calls:
        - { name: user, upstream: users, path: '/users/{path.id}', group: user, deny: [secret] }
        - name: orders
          upstream: orders
          path: '/orders?user={user.id}'
          group: orders
          collection: true
          deny: [internal]
      on_error: fail
  - name: parallel
    match: { path: /parallel }
    aggregate:
      calls:
        - { name: a, upstream: users, path: '/slow?ms=300', group: a }
        - { name: b, upstream: orders, path: '/slow?ms=301', group: b }
  - name: formats
    match: { path: /formats }
    aggregate:
      calls:
        - { name: stock, upstream: users, path: /xml, target: stock, rename: { '@sku': sku } }
        - { name: account, upstream: orders, path: /form, group: account }
        - { name: note, upstream: users, path: /text, group: note }
  - name: failing
    match: { path: /failing }
    aggregate:
      calls:
        - { name: user, upstream: users, path: /users/7, allow: [id, address.city] }
        - { name: broken, upstream: orders, path: /fail, required: false }
        - { name: shaky, upstream: orders, path: /bad-xml, required: false }
        - { name: huge, upstream: orders, path: /big, max_body: 1KiB, required: false }
      on_error: '@POLICY@'
  - name: must
    match: { path: /must }
    aggregate:
      on_error: partial
      calls:
        - { name: user, upstream: users, path: /users/7 }
        - { name: broken, upstream: orders, path: /fail }
  - name: slowpoke
    match: { path: /slowpoke }
    aggregate:
      on_error: partial
      timeout: 200ms
      calls:
        - { name: user, upstream: users, path: /users/8, group: user }
        - { name: stuck, upstream: orders, path: /hang, required: false }
  - name: timeout-fail
    match: { path: /timeout }
    aggregate:
      calls:
        - { name: stuck, upstream: orders, path: /hang, timeout: 150ms }
  - name: hang
    match: { path: /hang }
    aggregate:
      calls:
        - { name: stuck, upstream: orders, path: /hang }
  - name: cached
    match: { path: /cached }
    aggregate:
      calls:
        - { name: a, upstream: users, path: /users/1, group: a }
        - { name: b, upstream: users, path: /users/2, group: b }
  - name: shaped
    match: { path_prefix: /shaped/ }
    rewrite: { strip_prefix: /shaped }
    plugins:
      - response_shape: { target: stock, deny: [count], rename: { '@sku': sku }, group: stock, max_body: 1KiB }
    upstream: users
upstreams:
  users: { targets: [ { address: '@USERS@' } ] }
  orders: { targets: [ { address: '@ORDERS@' } ] }
";

async fn start(policy: &str) -> (Backend, Backend, Portico) {
    let users = Backend::start().await;
    let orders = Backend::start().await;
    let config = fill(
        CONFIG,
        &[
            ("USERS", &users.addr),
            ("ORDERS", &orders.addr),
            ("POLICY", policy),
        ],
    );
    let gw = Portico::start(&config);
    (users, orders, gw)
}

#[tokio::test]
async fn a_dependent_call_gets_the_first_calls_field() {
    let (_users, orders, gw) = start("fail").await;
    let reply = get(&gw.addr("web"), "/profile/42").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-portico-completed"), Some("true"));
    // The orders answer set no cache-control: the merged one is not cacheable.
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(
        reply.json(),
        serde_json::json!({
            "user": {"id": "42", "name": "Ada", "address": {"city": "Paris", "zip": "75001"},
                "favourite": "A1"},
            "orders": [{"order": 1, "user": "42"}, {"order": 2, "user": "42"}],
        })
    );
    let log = orders.log.lock().unwrap();
    assert_eq!(log.calls[0].0, "/orders?user=42");
}

#[tokio::test]
async fn the_merged_answer_is_cacheable_only_when_every_answer_is() {
    let (_users, _orders, gw) = start("fail").await;
    // Both answers say `max-age=60`.
    let reply = get(&gw.addr("web"), "/cached").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("cache-control"), Some("max-age=60"));
    assert_eq!(reply.json()["b"]["id"], "2");
    // No upstream header but the documented ones reaches the client.
    assert!(reply.header("server").is_none() && reply.header("via").is_none());
}

#[tokio::test]
async fn independent_calls_overlap() {
    let (users, orders, gw) = start("fail").await;
    let reply = get(&gw.addr("web"), "/parallel").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.json(),
        serde_json::json!({"a": {"slept": 300}, "b": {"slept": 301}})
    );
    let (a_start, a_end) = users.span("/slow");
    let (b_start, b_end) = orders.span("/slow");
    // Each started before the other ended: they ran at the same time.
    assert!(a_start < b_end && b_start < a_end, "no overlap");
    let total = a_end.max(b_end) - a_start.min(b_start);
    assert!(total < Duration::from_millis(550), "took {total:?}");
}

#[tokio::test]
async fn xml_form_and_text_answers_become_json() {
    let (_users, _orders, gw) = start("fail").await;
    let reply = get(&gw.addr("web"), "/formats").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.json(),
        serde_json::json!({
            "sku": "A1", "item": ["x", "y"], "count": "3",
            "account": {"balance": "12.5", "currency": "EUR"},
            "note": {"text": "all good"},
        })
    );
}

#[tokio::test]
async fn failures_under_fail_and_partial() {
    let (_users, orders, gw) = start("fail").await;
    let reply = get(&gw.addr("web"), "/failing").await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["error"], "aggregate_failed");
    assert!(
        body["message"].as_str().unwrap().contains("`broken`"),
        "{body}"
    );
    assert!(!reply.body.contains(&orders.addr) && !reply.body.contains("10.1.2.3"));
    drop(gw);

    let (_users, orders, gw) = start("partial").await;
    let reply = get(&gw.addr("web"), "/failing").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("x-portico-completed"), Some("false"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let body = reply.json();
    assert_eq!(body["id"], "7");
    assert_eq!(body["address"], serde_json::json!({"city": "Paris"}));
    assert!(body.get("name").is_none());
    let errors = body["errors"].as_array().unwrap();
    let names: Vec<&str> = errors.iter().map(|e| e["call"].as_str().unwrap()).collect();
    assert_eq!(names, ["broken", "shaky", "huge"]);
    assert!(errors[0]["message"].as_str().unwrap().contains("500"));
    assert!(errors[1]["message"].as_str().unwrap().contains("XML"));
    assert!(errors[2]["message"].as_str().unwrap().contains("max_body"));
    assert!(!reply.body.contains(&orders.addr) && !reply.body.contains("10.1.2.3"));

    // A required call fails the request even under partial.
    let reply = get(&gw.addr("web"), "/must").await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(reply.json()["error"], "aggregate_failed");
}

#[tokio::test]
async fn timeouts_give_partial_or_504() {
    let (_users, orders, gw) = start("fail").await;
    let reply = get(&gw.addr("web"), "/slowpoke").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("x-portico-completed"), Some("false"));
    let body = reply.json();
    assert_eq!(body["user"]["id"], "8");
    assert_eq!(body["errors"][0]["call"], "stuck");
    assert_eq!(body["errors"][0]["error"], "aggregate_timeout");
    // The call still out was cancelled: its connection closed.
    orders
        .wait("the hanging call to be cancelled", |l| {
            !l.cancelled.is_empty()
        })
        .await;

    let reply = get(&gw.addr("web"), "/timeout").await;
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert_eq!(reply.json()["error"], "aggregate_timeout");
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_calls() {
    let (_users, orders, gw) = start("fail").await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr("web"))
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    orders
        .wait("the call to reach the upstream", |l| !l.calls.is_empty())
        .await;
    drop(stream);
    orders
        .wait("the upstream call to be cancelled", |l| {
            l.cancelled.iter().any(|t| t == "/hang")
        })
        .await;
}

fn write(name: &str, text: &str) -> String {
    let dir = crate::support::temp_dir("aggregate");
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn config_errors_point_at_the_call() {
    let file = write(
        "bad.yaml",
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: loop
    match: { path_template: '/p/{id}' }
    aggregate:
      calls:
        - { name: a, upstream: u, path: '/a?x={b.id}' }
        - { name: b, upstream: u, path: '/b?x={a.id}' }
  - name: unknown
    match: { path: /q }
    aggregate:
      calls:
        - { name: a, upstream: u, path: '/a' }
        - { name: c, upstream: u, path: '/c?x={usr.id}&y={path.id}' }
        - { name: d, upstream: u, path: '/d e' }
upstreams:
  u: { targets: [ { address: 127.0.0.1:9 } ] }
",
    );
    let (code, _, err) = cli(&["validate", "-c", &file]);
    assert_ne!(code, 0);
    assert!(
        err.contains("bad.yaml:8:")
            && err.contains("calls a, b take fields from each other in a cycle"),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml:15:")
            && err.contains(
                "call `c` takes a field from `usr`, which is not a call of this aggregate"
            ),
        "{err}"
    );
    assert!(
        err.contains("`{path.id}` needs the route to match with a path_template"),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml:16:") && err.contains("a call's path is not a valid request target"),
        "{err}"
    );
}

#[test]
fn explain_prints_the_call_plan() {
    let file = write(
        "plan.yaml",
        "\
listeners:
  - { name: web, bind: 127.0.0.1:8080 }
routes:
  - name: profile
    match: { path_template: '/profile/{id}' }
    aggregate:
      on_error: partial
      timeout: 2s
      calls:
        - { name: user, upstream: users, path: '/users/{path.id}', headers: { x-lang: '{query.lang}' } }
        - { name: orders, upstream: orders, path: '/orders?user={user.id}', required: false }
        - { name: stock, upstream: orders, method: post, path: /stock }
upstreams:
  users: { targets: [ { address: 127.0.0.1:9001 } ] }
  orders: { targets: [ { address: 127.0.0.1:9002 } ] }
",
    );
    let (code, out, err) = cli(&[
        "explain",
        "-c",
        &file,
        "GET",
        "http://localhost:8080/profile/42?lang=fr",
    ]);
    assert_eq!(code, 0, "{err}");
    for line in [
        "action    aggregate 3 calls in 2 stages; on_error partial; timeout 2000ms",
        "  stage 1: user, stock (in parallel)",
        "    call user → upstream users: GET /users/42",
        "      header x-lang: fr",
        "    call stock → upstream orders: POST /stock",
        "  stage 2: orders",
        "    call orders → upstream orders: GET /orders?user={user.id} (optional); waits for user",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
}

#[tokio::test]
async fn response_shape_converts_a_plain_routes_answer() {
    let (_users, _orders, gw) = start("fail").await;
    let web = gw.addr("web");
    let reply = get(&web, "/shaped/xml").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.json(),
        serde_json::json!({"stock": {"sku": "A1", "item": ["x", "y"]}})
    );
    let reply = get(&web, "/shaped/bad-xml").await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(reply.json()["error"], "upstream_response_invalid");
    let reply = get(&web, "/shaped/big").await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(reply.json()["error"], "upstream_response_too_large");
    // A non-2xx answer passes as it is.
    let reply = get(&web, "/shaped/fail").await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.body, "db at 10.1.2.3 exploded");
}

#[tokio::test]
async fn request_values_claims_and_the_consumer_fill_placeholders() {
    let users = Backend::start().await;
    let secret = "a-long-enough-hmac-secret-for-tests";
    let config = fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: me
    match: { path_template: '/me/{section}' }
    plugins:
      - jwt: { keys: [ { alg: HS256, secret: '@SECRET@' } ] }
    aggregate:
      calls:
        - name: user
          upstream: users
          path: '/users/{claim.sub}?c={consumer}&t={claim.tenant}&s={path.section}&q={query.q}&l={header.accept-language}'
upstreams:
  users: { targets: [ { address: '@USERS@' } ] }
",
        &[("SECRET", secret), ("USERS", &users.addr)],
    );
    let gw = Portico::start(&config);
    let token = crate::jwt::hs(
        None,
        &crate::jwt::claims(serde_json::json!({"tenant": 7})),
        secret.as_bytes(),
    );
    let request = Request::get("/me/orders?q=a%20b")
        .header("host", "x")
        .header("authorization", format!("Bearer {token}"))
        .header("accept-language", "fr")
        .body(Full::default())
        .unwrap();
    let mut client = crate::support::H1::connect(&gw.addr("web")).await;
    let reply = client.send(request).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["id"], "alice");
    assert_eq!(
        users.log.lock().unwrap().calls[0].0,
        "/users/alice?c=alice&t=7&s=orders&q=a%20b&l=fr"
    );
    // Without a token the request plugins answer, and no call is made.
    let reply = get(&gw.addr("web"), "/me/orders").await;
    assert_eq!(reply.status, 401);
    assert_eq!(users.log.lock().unwrap().calls.len(), 1);
}

#[tokio::test]
async fn a_hedged_call_takes_the_first_good_answer() {
    let slow = Backend::start().await;
    slow.slow.store(true, std::sync::atomic::Ordering::Relaxed);
    let fast = Backend::start().await;
    let config = fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: hedged
    match: { path: /hedged }
    aggregate:
      calls:
        - { name: h, upstream: pair, path: /hedge, hedge: 50ms, timeout: 3s }
upstreams:
  pair: { targets: [ { address: '@SLOW@' }, { address: '@FAST@' } ] }
",
        &[("SLOW", &slow.addr), ("FAST", &fast.addr)],
    );
    let gw = Portico::start(&config);
    // Round robin: over two requests the slow target is asked first at least once.
    for _ in 0..2 {
        let started = Instant::now();
        let reply = get(&gw.addr("web"), "/hedged").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json(), serde_json::json!({"from": "fast"}));
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    // The slow try lost and was cancelled.
    slow.wait("the slow try to be cancelled", |l| {
        !l.calls.is_empty() && l.cancelled.len() == l.calls.len()
    })
    .await;

    let (code, _, err) = cli(&[
        "validate",
        "-c",
        &write(
            "hedge.yaml",
            &config.replace("path: /hedge, hedge", "method: POST, path: /hedge, hedge"),
        ),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("hedge.yaml:8:") && err.contains("hedge needs an idempotent method"),
        "{err}"
    );
}
