//! Tracing through the binary: W3C trace context continued, created and sent on, and the
//! span tree exported over OTLP/HTTP to a real receiver (opentelemetry-proto's messages,
//! decoded by tests/e2e/otlp/receiver.py).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;

use crate::support::H1;
use crate::support::fill;
use crate::support::portico::Portico;
use crate::support::upstream::TestUpstream;

/// The receiver, with the spans it printed.
pub struct Receiver {
    child: Child,
    pub port: u16,
    spans: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    pub fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/otlp/receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with opentelemetry-proto (scripts/test.sh installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("the receiver's port").unwrap();
        let port = first.strip_prefix("listening ").unwrap().parse().unwrap();
        let spans: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let into = Arc::clone(&spans);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                into.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        Receiver { child, port, spans }
    }

    /// The spans of `trace`, once `count` of them arrived, its `request` span among them.
    pub async fn trace(&self, trace: &str, count: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans: Vec<_> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s["trace_id"] == trace)
                .cloned()
                .collect();
            // The receiver writes a batch's spans one line at a time, and a request's own
            // span comes after its children: wait for it too.
            if spans.len() >= count && spans.iter().any(|s| s["name"] == "request") {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} spans of {trace}: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn get(path: &str, traceparent: Option<&str>) -> http::Request<Full<bytes::Bytes>> {
    let mut request = http::Request::get(path).header("host", "api.test");
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp);
    }
    request.body(Full::default()).unwrap()
}

#[tokio::test]
async fn spans_form_a_tree_under_the_callers_span_and_targets_see_their_try() {
    let receiver = Receiver::start();
    let up = TestUpstream::start("A").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().to_string();
    drop(closed);
    let gw = Portico::start(&fill(
        "\
workers: 1
tracing:
  endpoint: http://127.0.0.1:@PORT@/v1/traces
  service_name: edge-test
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: api
    upstream: u
    plugins: [ { request_headers: { set: { x-traced: yes } } } ]
upstreams:
  u:
    balance: round_robin
    targets: [ { address: '@DEAD@' }, { address: '@UP@' } ]
",
        &[
            ("PORT", &receiver.port.to_string()),
            ("DEAD", &dead),
            ("UP", &up.addr()),
        ],
    ));
    let web = gw.addr("web");
    let mut client = H1::connect(&web).await;

    // Round robin over a dead and a live target: of two calls, one tries the dead one first.
    let callers = [
        ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
        ("1af7651916cd43dd8448eb211c80319d", "c7ad6b7169203332"),
    ];
    let mut retried = None;
    for (trace, parent) in callers {
        let tp = format!("00-{trace}-{parent}-01");
        let r = client.send(get("/x", Some(&tp))).await.unwrap();
        assert_eq!(r.status, 200);
        // The target sees the same trace, with the try's span as its parent, sampled.
        let seen = up.last().headers["traceparent"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            seen.starts_with(&format!("00-{trace}-")) && seen.ends_with("-01"),
            "{seen}"
        );
        let try_span = seen.split('-').nth(2).unwrap().to_owned();
        assert_ne!(try_span, parent);

        let spans = receiver.trace(trace, 3).await;
        let server: Vec<_> = spans.iter().filter(|s| s["name"] == "request").collect();
        assert_eq!(server.len(), 1, "{spans:#?}");
        let server = server[0];
        assert_eq!(server["parent"], parent);
        assert_eq!(server["kind"], 2);
        assert_eq!(server["service"], "edge-test");
        assert_eq!(server["scope"], "portico");
        assert_eq!(server["content_type"], "application/x-protobuf");
        assert_eq!(server["path"], "/v1/traces");
        assert_eq!(server["attributes"]["http.route"], "api");
        assert_eq!(server["attributes"]["http.request.method"], "GET");
        assert_eq!(server["attributes"]["http.response.status_code"], 200);
        let children = |name: &str| -> Vec<&serde_json::Value> {
            spans
                .iter()
                .filter(|s| s["name"] == name && s["parent"] == server["span_id"])
                .collect()
        };
        let plugins = children("plugins request");
        assert_eq!(plugins.len(), 1, "{spans:#?}");
        assert_eq!(
            plugins[0]["attributes"]["portico.plugins"],
            "request_headers"
        );
        let tries = children("upstream attempt");
        assert!(!tries.is_empty() && tries.len() <= 2, "{spans:#?}");
        let last = tries
            .iter()
            .find(|t| t["span_id"] == try_span.as_str())
            .unwrap();
        assert_eq!(last["kind"], 3);
        assert_eq!(last["attributes"]["server.address"], up.addr().as_str());
        assert_eq!(last["attributes"]["http.response.status_code"], 200);
        assert_eq!(last["status"], 0);
        for span in &spans {
            let (start, end) = (
                span["start"].as_u64().unwrap(),
                span["end"].as_u64().unwrap(),
            );
            assert!(start <= end, "{span}");
            assert!(
                server["start"].as_u64().unwrap() <= start
                    && end <= server["end"].as_u64().unwrap(),
                "{span} outside {server}"
            );
        }
        if tries.len() == 2 {
            let first = tries
                .iter()
                .find(|t| t["span_id"] != try_span.as_str())
                .unwrap();
            assert_eq!(first["attributes"]["server.address"], dead.as_str());
            assert_eq!(first["attributes"]["portico.attempt"], 1);
            assert_eq!(first["status"], 2, "a failed try is an error: {first}");
            assert_eq!(last["attributes"]["portico.attempt"], 2);
            retried = Some(trace);
        }
    }
    assert!(retried.is_some(), "no call tried the dead target first");

    // A caller that does not sample: its decision holds, nothing is exported for it.
    let quiet = "2af7651916cd43dd8448eb211c80319e";
    let tp = format!("00-{quiet}-d7ad6b7169203333-00");
    assert_eq!(
        client.send(get("/quiet", Some(&tp))).await.unwrap().status,
        200
    );
    let seen = up.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        seen.starts_with(&format!("00-{quiet}-")) && seen.ends_with("-00"),
        "{seen}"
    );

    // No context: a new trace, sampled at the ratio (1 by default), in the access log too.
    assert_eq!(client.send(get("/fresh", None)).await.unwrap().status, 200);
    let seen = up.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let fresh = seen.split('-').nth(1).unwrap().to_owned();
    assert_eq!(fresh.len(), 32);
    assert_eq!(gw.access_entry("/fresh")["trace_id"], fresh.as_str());
    let spans = receiver.trace(&fresh, 3).await;
    let server = spans.iter().find(|s| s["name"] == "request").unwrap();
    assert_eq!(
        server["parent"], "",
        "a new trace's request span is its root"
    );

    // By now every span of the unsampled call would have been exported with the others.
    let exported = receiver.spans.lock().unwrap().clone();
    assert!(
        exported.iter().all(|s| s["trace_id"] != quiet),
        "{exported:#?}"
    );
}

#[tokio::test]
async fn a_bad_endpoint_is_refused_at_its_position() {
    let dir = crate::support::portico::temp_dir("tracing-bad");
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "tracing:\n  endpoint: https://collector.example/v1/traces\n  sample_ratio: 0.5\n",
    )
    .unwrap();
    let (code, out, err) =
        crate::support::portico::cli(&["validate", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let text = format!("{out}{err}");
    assert!(
        text.contains("bad.yaml:2:13: tracing.endpoint `https://collector.example/v1/traces` must be an http:// URL"),
        "{text}"
    );
}

#[tokio::test]
async fn aggregate_calls_are_spans_with_their_tries_under_them() {
    let receiver = Receiver::start();
    let up = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(
        "\
workers: 1
tracing: { endpoint: 'http://127.0.0.1:@PORT@/v1/traces' }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: both
    aggregate:
      calls:
        - { name: one, upstream: u, path: /json }
        - { name: two, upstream: u, path: /json }
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
",
        &[("PORT", &receiver.port.to_string()), ("UP", &up.addr())],
    ));
    let trace = "3af7651916cd43dd8448eb211c80319f";
    let tp = format!("00-{trace}-e7ad6b7169203334-01");
    let r = H1::connect(&gw.addr("web"))
        .await
        .send(get("/both", Some(&tp)))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // request, two calls, one try under each.
    let spans = receiver.trace(trace, 5).await;
    let server = spans.iter().find(|s| s["name"] == "request").unwrap();
    let calls: Vec<_> = spans
        .iter()
        .filter(|s| s["name"] == "aggregate call")
        .collect();
    assert_eq!(calls.len(), 2, "{spans:#?}");
    let mut names: Vec<_> = calls
        .iter()
        .map(|c| c["attributes"]["portico.call"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["one", "two"]);
    for call in &calls {
        assert_eq!(call["parent"], server["span_id"]);
        let tries: Vec<_> = spans
            .iter()
            .filter(|s| s["name"] == "upstream attempt" && s["parent"] == call["span_id"])
            .collect();
        assert_eq!(tries.len(), 1, "{spans:#?}");
    }
    // Each call's target saw the call's try as its parent, in the same trace.
    for seen in up.seen() {
        let tp = seen.headers["traceparent"].to_str().unwrap();
        assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");
    }
}
