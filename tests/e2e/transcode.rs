//! gRPC-JSON transcoding through the real proxy: curl and a hyper JSON client on one side, a
//! real grpcio server (tests/e2e/grpc/transcode_peer.py, shop.proto) on the other, the
//! descriptor set made by protoc in the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::support::client::H1;
use crate::support::peer::Peer;
use crate::support::{Portico, cli, fill, temp_dir};

const PROTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/grpc");

/// The Shop server; it exits when dropped.
fn shop() -> Peer {
    Peer::python([Path::new(PROTOS).join("transcode_peer.py")])
}

/// Writes `dir/NAME` as the descriptor set of `proto` (in tests/e2e/grpc), with its imports.
pub fn descriptor_set(proto: &str, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I", PROTOS, "--include_imports"])
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg(proto)
        .status()
        .unwrap();
    assert!(status.success(), "protoc failed");
    out
}

const CONFIG: &str = "\
admin: { listen: 127.0.0.1:0 }
listeners: [ { name: web, bind: 127.0.0.1:0 } ]
routes:
  - name: shop
    match: { path_prefix: /v1/ }
    grpc_transcode: { descriptor_set: shop.pb, services: [shop.v1.Shop]@EXTRA@ }
    upstream: shop
  - name: shop-rpc
    match: { path_prefix: /shop.v1.Shop/ }
    grpc_transcode: { descriptor_set: shop.pb }
    upstream: shop
upstreams:
  shop: { protocol: http2, targets: [ { address: '@S@' } ] }
";

fn start(extra: &str) -> (Peer, Portico) {
    let shop = shop();
    let dir = temp_dir("transcode");
    descriptor_set("shop.proto", &dir, "shop.pb");
    let gw = Portico::start_in(&dir, &fill(CONFIG, &[("S", &shop.addr), ("EXTRA", extra)]));
    (shop, gw)
}

fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-D",
            "/dev/stderr",
        ])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        body.to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn send(addr: &str, method: &str, path: &str, body: &str) -> crate::support::client::Reply {
    let mut h1 = H1::connect(addr).await;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shop.test")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    h1.send(req).await.unwrap()
}

fn note(v: &Value) -> Value {
    serde_json::from_str(v["note"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn rules_bind_path_query_and_body() {
    let (_shop, gw) = start("");
    let web = gw.addr("web");

    // GET with nested path template, repeated and nested query fields (curl).
    let (code, body, head) = curl(&[&format!(
        "http://{web}/v1/shelves/s1/books/b%202?view=FULL&tags=a&tags=b&filter.minPages=10&filter.in_print=true&big=9007199254740993"
    )]);
    assert_eq!(code, 200, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], "shelves/s1/books/b 2");
    assert_eq!(v["tags"], json!(["a", "b"]));
    assert_eq!(
        note(&v),
        json!({ "name": "shelves/s1/books/b 2", "view": "FULL", "tags": ["a", "b"],
                "filter": { "minPages": 10, "inPrint": true }, "big": "9007199254740993" })
    );

    // The additional binding reaches the same method.
    let r = send(&web, "GET", "/v1/books/42", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"], "42");

    // The same over HTTP/2 (h2c), with the stream of a server-streaming method.
    let r = crate::support::client::h2_get(&web, "shop.test", "/v1/books/43").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.json()["id"], "43");
    let r = crate::support::client::h2_get(&web, "shop.test", "/v1/shelves/s3/books?count=2").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        "{\"id\":\"shelves/s3/books/0\"}\n{\"id\":\"shelves/s3/books/1\",\"pageCount\":1}\n"
    );

    // response_body: only the reply's `title` field.
    let r = send(&web, "GET", "/v1/shelves/s1/books/b1:title", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!("title of shelves/s1/books/b1"));

    // body: "book", path field `parent`, query field `request_id`.
    let r = send(
        &web,
        "POST",
        "/v1/shelves/s9/books?requestId=r-1",
        r#"{"title":"Emma","pageCount":320,"tags":["x"]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["shelf"], "shelves/s9");
    assert_eq!(v["title"], "Emma");
    assert_eq!(v["pageCount"], 320);
    assert_eq!(
        note(&v),
        json!({ "parent": "shelves/s9", "requestId": "r-1",
                "book": { "title": "Emma", "pageCount": 320, "tags": ["x"] } })
    );

    // body: "*" with a nested path field `book.id` that wins over the body's.
    let (code, body, _) = curl(&[
        "-X",
        "PATCH",
        "-H",
        "content-type: application/json",
        "--data",
        r#"{"book":{"id":"ignored","title":"New"},"updateMask":"title,pageCount"}"#,
        &format!("http://{web}/v1/books/b7"),
    ]);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], "b7");
    assert_eq!(v["title"], "New");
    assert_eq!(note(&v)["updateMask"], "title,pageCount");

    // A custom verb with a `**` template.
    let r = send(&web, "SEARCH", "/v1/a/b/c", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({ "id": "a/b/c", "note": "search" }));

    // A method without a rule is on the default binding (on the second route); one with a
    // rule is not.
    let r = send(
        &web,
        "POST",
        "/shop.v1.Shop/Everything",
        r#"{"label":"n1"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({ "label": "n1" }));
    let r = send(&web, "POST", "/shop.v1.Shop/GetBook", r#"{"name":"n1"}"#).await;
    assert_eq!(r.status, 404, "{}", r.body);

    // A gRPC client on a transcoding route passes as it is.
    let out = Command::new("python3")
        .arg(Path::new(PROTOS).join("transcode_peer.py"))
        .args(["call", &web, "g1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "g1 Dune\n");

    // No binding: portico's 404.
    let r = send(&web, "DELETE", "/v1/books/42", "").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"], "no_route");
}

#[tokio::test]
async fn every_well_known_type_round_trips() {
    let (_shop, gw) = start("");
    let web = gw.addr("web");
    let wkt = json!({
        "at": "2024-05-06T07:08:09.123Z",
        "took": "3.500s",
        "big": "123456789012345",
        "label": "hello",
        "flag": true,
        "ratio": 0.25,
        "attrs": { "a": 1.0, "b": [true, null, "s"], "c": { "d": "e" } },
        "anything": [1.0, "two"],
        "list": [{ "k": "v" }, 3.0],
        "mask": "title,pageCount,filter.minPages",
        "nothing": {},
        "packed": { "@type": "type.googleapis.com/shop.v1.Book", "id": "b1", "pageCount": 12 },
        "blob": "AAEC/w==",
        "count": 7
    });
    let r = send(&web, "POST", "/shop.v1.Shop/Everything", &wkt.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), wkt);
    // Through curl too, as a client would.
    let (code, body, _) = curl(&[
        "-H",
        "content-type: application/json",
        "--data",
        &wkt.to_string(),
        &format!("http://{web}/shop.v1.Shop/Everything"),
    ]);
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), wkt);
}

#[tokio::test]
async fn errors_map_to_http_statuses() {
    let (_shop, gw) = start("");
    let web = gw.addr("web");
    for (grpc, code, http) in [
        ("NOT_FOUND", 5, 404),
        ("INVALID_ARGUMENT", 3, 400),
        ("UNAUTHENTICATED", 16, 401),
        ("PERMISSION_DENIED", 7, 403),
        ("RESOURCE_EXHAUSTED", 8, 429),
        ("UNIMPLEMENTED", 12, 501),
        ("UNAVAILABLE", 14, 503),
        ("DEADLINE_EXCEEDED", 4, 504),
        ("INTERNAL", 13, 500),
    ] {
        let body = json!({ "code": grpc, "message": format!("it is {grpc}") }).to_string();
        let r = send(&web, "POST", "/v1/fail", &body).await;
        assert_eq!(r.status, http, "{grpc}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.json(),
            json!({ "code": code, "message": format!("it is {grpc}"), "details": [] })
        );
    }

    // Malformed JSON, a body that is no object for `body: "*"`, an unknown field.
    for (path, bad, why) in [
        ("/v1/fail", "{\"code\":", "not JSON"),
        ("/v1/fail", "[1,2]", "must be a JSON object"),
        ("/v1/shelves/s1/books", "{\"nope\":1}", "nope"),
    ] {
        let r = send(&web, "POST", path, bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.json()["error"], "request_invalid");
        assert!(
            r.json()["message"].as_str().unwrap().contains(why),
            "{}",
            r.body
        );
    }
    let r = send(&web, "POST", "/v1/fail", "{\"title\":").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["message"].as_str().unwrap().contains("not JSON"),
        "{}",
        r.body
    );
    let r = send(&web, "GET", "/v1/books/1?nosuch=1", "").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("nosuch"), "{}", r.body);
}

#[tokio::test]
async fn too_large_bodies_get_413() {
    let (_shop, gw) = start(", max_body: 1KiB");
    let web = gw.addr("web");
    let big = json!({ "title": "x".repeat(2000) }).to_string();
    let r = send(&web, "POST", "/v1/shelves/s1/books", &big).await;
    assert_eq!(r.status, 413, "{}", r.body);
    let small = json!({ "title": "x".repeat(100) }).to_string();
    let r = send(&web, "POST", "/v1/shelves/s1/books", &small).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn server_streams_as_ndjson() {
    let (_shop, gw) = start("");
    let web = gw.addr("web");
    let (code, body, head) = curl(&["-N", &format!("http://{web}/v1/shelves/s1/books?count=3")]);
    assert_eq!(code, 200, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/x-ndjson"),
        "{head}"
    );
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({ "id": "shelves/s1/books/0" }),
            json!({ "id": "shelves/s1/books/1", "pageCount": 1 }),
            json!({ "id": "shelves/s1/books/2", "pageCount": 2 }),
        ]
    );
    // A failure after the start: the stream ends with an error object.
    let r = send(&web, "GET", "/v1/shelves/s1/books?count=5&failAfter=2", "").await;
    assert_eq!(r.status, 200);
    let lines: Vec<Value> = r
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", r.body);
    assert_eq!(
        lines[2],
        json!({ "error": { "code": 14, "message": "shelf went away", "details": [] } })
    );
}

#[tokio::test]
async fn server_streams_as_sse() {
    let (_shop, gw) = start(", stream: sse");
    let web = gw.addr("web");
    let r = send(&web, "GET", "/v1/shelves/s2/books?count=2&failAfter=1", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        r.body,
        "data: {\"id\":\"shelves/s2/books/0\"}\n\n\
         event: error\ndata: {\"code\":14,\"details\":[],\"message\":\"shelf went away\"}\n\n"
    );
}

#[tokio::test]
async fn output_options() {
    let (_shop, gw) = start(", emit_defaults: true, original_field_names: true");
    let web = gw.addr("web");
    let r = send(&web, "GET", "/v1/books/42", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["page_count"], 0);
    assert_eq!(v["shelf"], "");
    assert!(v.get("pageCount").is_none(), "{v}");
}

#[test]
fn config_errors_point_at_the_key() {
    let dir = temp_dir("transcode-bad");
    descriptor_set("shop.proto", &dir, "shop.pb");
    std::fs::write(dir.join("junk.pb"), b"\xff\xff\xffnot a descriptor").unwrap();
    let base = "\
listeners: [ { name: web, bind: 127.0.0.1:0 } ]
routes:
  - name: shop
    grpc_transcode: @T@
    upstream: shop
upstreams:
  shop: { protocol: http2, targets: [ { address: 127.0.0.1:1 } ] }
";
    for (spec, wanted) in [
        ("{ descriptor_set: missing.pb }", "cannot read"),
        (
            "{ descriptor_set: junk.pb }",
            "not a protobuf FileDescriptorSet",
        ),
        (
            "{ descriptor_set: shop.pb }\n    rewrite: { strip_prefix: /v1 }",
            "grpc_transcode cannot be combined with rewrite",
        ),
        (
            "{ descriptor_set: shop.pb, services: [shop.v1.Shop, shop.v1.Nope] }",
            "service `shop.v1.Nope` is not in the descriptor set (it has: shop.v1.Shop)",
        ),
    ] {
        let file = dir.join("bad.yaml");
        let text = fill(base, &[("T", spec)]);
        std::fs::write(&file, &text).unwrap();
        let (code, out, err) = cli(&["validate", "-c", file.to_str().unwrap()]);
        assert_ne!(code, 0, "{spec}: {out}");
        let all = format!("{out}{err}");
        // At the key, or at the `services` entry that is wrong.
        let line = text.lines().nth(3).unwrap();
        let col = match line.find("shop.v1.Nope") {
            Some(at) => at + 1,
            None => line.find('{').unwrap() + 1,
        };
        assert!(
            all.contains(&format!("bad.yaml:4:{col}: ")),
            "{spec}: {all}"
        );
        assert!(all.contains(wanted), "{spec}: {all}");
    }
}

#[tokio::test]
async fn a_reload_reads_the_descriptor_set_again() {
    let shop = shop();
    let dir = temp_dir("transcode-reload");
    descriptor_set("shop.proto", &dir, "shop.pb");
    let config = fill(CONFIG, &[("S", &shop.addr), ("EXTRA", "")]);
    let gw = Portico::start_in(&dir, &config);
    let web = gw.addr("web");
    assert_eq!(send(&web, "GET", "/v1/books/1", "").await.status, 200);
    // A broken set is refused and the running one stays.
    std::fs::write(dir.join("shop.pb"), b"\xff\xffjunk").unwrap();
    assert!(!gw.reload(&config));
    assert_eq!(send(&web, "GET", "/v1/books/1", "").await.status, 200);
    // A set with other services replaces it: the shop's bindings are gone.
    descriptor_set("echo.proto", &dir, "shop.pb");
    let echo_only = config.replace(", services: [shop.v1.Shop]", "");
    assert!(gw.reload(&echo_only), "{}", gw.log_text());
    assert_eq!(send(&web, "GET", "/v1/books/1", "").await.status, 404);
}

#[test]
fn bad_http_rules_are_config_errors() {
    let dir = temp_dir("transcode-rule");
    std::fs::write(
        dir.join("bad.proto"),
        "syntax = \"proto3\";\npackage bad;\nimport \"http_rule.proto\";\n\
         message M { string name = 1; }\n\
         service S { rpc Get(M) returns (M) { option (google.api.http) = { get: \"/v1/{nosuch}\" }; } }\n",
    )
    .unwrap();
    let out = dir.join("bad.pb");
    let status = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I", PROTOS, "-I"])
        .arg(&dir)
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg(dir.join("bad.proto"))
        .status()
        .unwrap();
    assert!(status.success());
    let file = dir.join("rule.yaml");
    std::fs::write(
        &file,
        "\
listeners: [ { name: web, bind: 127.0.0.1:0 } ]
routes:
  - name: bad
    grpc_transcode: { descriptor_set: bad.pb }
    upstream: bad
upstreams:
  bad: { protocol: http2, targets: [ { address: 127.0.0.1:1 } ] }
",
    )
    .unwrap();
    let (code, out, err) = cli(&["validate", "-c", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    let all = format!("{out}{err}");
    assert!(all.contains("rule.yaml:4:"), "{all}");
    assert!(
        all.contains("method `bad.S.Get`") && all.contains("no field `nosuch`"),
        "{all}"
    );
}

#[test]
fn explain_shows_the_method_and_where_fields_come_from() {
    let dir = temp_dir("transcode-explain");
    descriptor_set("shop.proto", &dir, "shop.pb");
    let file = dir.join("explain.yaml");
    std::fs::write(
        &file,
        fill(CONFIG, &[("S", "127.0.0.1:9"), ("EXTRA", "")])
            .replace("admin: { listen: 127.0.0.1:0 }\n", "")
            .replace("127.0.0.1:0", "127.0.0.1:8080"),
    )
    .unwrap();
    let (code, out, err) = cli(&[
        "explain",
        "-c",
        file.to_str().unwrap(),
        "POST",
        "http://shop.test:8080/v1/shelves/s1/books?requestId=7",
    ]);
    assert_eq!(code, 0, "{err}");
    for wanted in [
        "gRPC method /shop.v1.Shop/CreateBook (unary",
        "binding POST /v1/{parent=shelves/*}/books",
        "from the path: parent=\"shelves/s1\"",
        "from the body: field `book`",
        "from the query: requestId",
    ] {
        assert!(out.contains(wanted), "{wanted}: {out}");
    }
}
