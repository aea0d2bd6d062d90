//! One view of the path: the route portico picks, the key it asks for and the path the upstream
//! receives all follow the path a backend would resolve (`%2F`, `\` and `;params` included).

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::{H1, Portico, TestUpstream, cli, fill, temp_dir};

const ROUTES: &str = "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
consumers:
  - { name: alice, api_keys: ['alice-key-123'] }
routes:
  - name: a
    match: { path_prefix: /a/ }
    plugins: [ { response_headers: { add: { x-route: a } } } ]
    upstream: u
  - name: private
    match: { path_prefix: /private/ }
    plugins: [ { key_auth: {} }, { response_headers: { add: { x-route: private } } } ]
    upstream: u
  - name: limited
    match: { path_prefix: /limited/ }
    plugins:
      - rate_limit: { limit: 1, window: 1h, burst: 2, by: route }
      - response_headers: { add: { x-route: limited } }
    upstream: u
  - name: public
    match: { path_prefix: / }
    plugins: [ { response_headers: { add: { x-route: public } } } ]
    upstream: u
@EXTRA@
upstreams:
  u: { targets: [ { address: '@U@' } ] }
";

/// Routes with a `path_policy`, added to the three above.
const POLICIES: &str = "  - name: files
    match: { path_prefix: /files/ }
    path_policy: { encoded_slash: keep }
    plugins: [ { response_headers: { add: { x-route: files } } } ]
    upstream: u
  - name: strict
    match: { path_prefix: /strict/ }
    path_policy: { encoded_slash: reject, backslash: reject, matrix_params: reject }
    plugins: [ { response_headers: { add: { x-route: strict } } } ]
    upstream: u
  - name: servlet
    match: { path_prefix: /servlet/ }
    path_policy: { matrix_params: keep }
    plugins: [ { response_headers: { add: { x-route: servlet } } } ]
    upstream: u";

/// What a request must come to.
#[derive(Debug)]
enum Outcome {
    /// Forwarded by this route; the upstream saw this path.
    Routed(&'static str, &'static str),
    /// Refused by `key_auth` (the route was `private`).
    NeedsKey,
    /// Refused as a bad path.
    Refused,
}
use Outcome::{NeedsKey, Refused, Routed};

impl Outcome {
    fn describe(&self) -> String {
        match self {
            Routed(route, seen) => format!("routed by {route}, upstream saw {seen}"),
            NeedsKey => "401 from private".to_owned(),
            Refused => "400".to_owned(),
        }
    }
}

async fn start(extra: &str) -> (TestUpstream, Portico) {
    let up = TestUpstream::start("U").await;
    let config = fill(ROUTES, &[("U", &up.addr()), ("EXTRA", extra)]);
    (up, Portico::start(&config))
}

/// Sends `path` as is (a fresh connection each: a 400 closes it) and says what came of it.
async fn outcome(web: &str, path: &str, key: Option<&str>) -> String {
    let mut request = Request::get(path).header("host", "x");
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let request = request.body(Full::<Bytes>::default()).unwrap();
    let reply = H1::connect(web).await.send(request).await.unwrap();
    let route = reply.header("x-route").unwrap_or("-");
    match reply.status {
        // The echo upstream answers `U <target it received>`.
        200 => match reply.body.strip_prefix("U ") {
            Some(seen) => format!("routed by {route}, upstream saw {seen}"),
            None => format!("200 from {route}: {}", reply.body),
        },
        401 => format!("401 from {route}"),
        400 => "400".to_owned(),
        other => format!("{other} from {route}: {}", reply.body),
    }
}

/// Checks every case, and reports all that differ at once.
async fn check(web: &str, key: Option<&str>, cases: &[(&str, Outcome)]) {
    let mut wrong = Vec::new();
    for (path, expected) in cases {
        let got = outcome(web, path, key).await;
        let expected = expected.describe();
        if got != expected {
            wrong.push(format!("{path}: expected {expected}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn encoded_separators_and_params_route_as_the_backend_resolves() {
    let (_up, gw) = start("").await;
    let web = gw.addr("web");
    check(
        &web,
        None,
        &[
            ("/a/b", Routed("a", "/a/b")),
            ("/a/b;x", Routed("a", "/a/b")),
            // Out of `/a/` through a separator the backend decodes.
            ("/a/..%2fadmin", Routed("public", "/admin")),
            ("/a/..%2Fadmin", Routed("public", "/admin")),
            ("/a/..%5cadmin", Routed("public", "/admin")),
            ("/a/..%5Cadmin", Routed("public", "/admin")),
            ("/a/..\\admin", Routed("public", "/admin")),
            ("/a/%2e%2e%2fadmin", Routed("public", "/admin")),
            // …or through a dot-segment with parameters, as servlet containers read it.
            ("/a/..;/admin", Routed("public", "/admin")),
            ("/a/..;x=1/admin", Routed("public", "/admin")),
            ("/a/%2E%2E;/admin", Routed("public", "/admin")),
            ("/a/.;/b", Routed("a", "/a/b")),
            // Into `/private/` past its key: the key is asked for.
            ("/private%2Fdata", NeedsKey),
            ("/private%2fdata", NeedsKey),
            ("/private%5Cdata", NeedsKey),
            ("/private%5cdata", NeedsKey),
            ("/private\\data", NeedsKey),
            ("/private;x", NeedsKey),
            ("/private;x/data", NeedsKey),
            ("/private;jsessionid=1", NeedsKey),
            ("/a/..;/private/data", NeedsKey),
            ("/a/..%2Fprivate/data", NeedsKey),
            ("/a/x%2F..%2F..%2Fprivate/data", NeedsKey),
            ("//private//data", NeedsKey),
            // Out of `/private` again: what the backend serves is `/`.
            ("/private%2f..", Routed("public", "/")),
            ("/private%2F..", Routed("public", "/")),
            ("/private%2F..%2Fpub", Routed("public", "/pub")),
            // `%3B` is data to the backend as well; `%25` is never decoded.
            ("/private%3Bx", Routed("public", "/private%3Bx")),
            ("/private%252Fdata", Routed("public", "/private%252Fdata")),
            // What cannot be reconciled.
            ("/%2e%2e/private/data", Refused),
            ("/..;/private/data", Refused),
            ("/a/..%2f..%2fprivate", Refused),
            ("/a/..%5C..%5Cprivate", Refused),
            ("/a/%00", Refused),
            ("/private%00/data", Refused),
            ("/a/%zz", Refused),
        ],
    )
    .await;
    // One budget for `/limited/`, however the path is spelled.
    let limited = [
        outcome(&web, "/limited;x/a", None).await,
        outcome(&web, "/limited%2Fb", None).await,
        outcome(&web, "/limited\\c", None).await,
    ];
    assert_eq!(limited[0], "routed by limited, upstream saw /limited/a");
    assert_eq!(limited[1], "routed by limited, upstream saw /limited/b");
    assert!(limited[2].starts_with("429 from limited"), "{limited:?}");
    check(
        &web,
        Some("alice-key-123"),
        &[
            ("/private%2Fdata", Routed("private", "/private/data")),
            ("/private;x/data;y", Routed("private", "/private/data")),
            ("/private\\data", Routed("private", "/private/data")),
            ("/a/..;/private/data", Routed("private", "/private/data")),
            (
                "/private/./data/..%2Fmore",
                Routed("private", "/private/more"),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn path_policy_keeps_or_refuses_per_route() {
    let (_up, gw) = start(POLICIES).await;
    let web = gw.addr("web");
    check(
        &web,
        None,
        &[
            // `encoded_slash: keep`: `%2F` is data to the upstream, forwarded in upper case.
            ("/files/a%2fb", Routed("files", "/files/a%2Fb")),
            ("/files/a%5Cb;v=1", Routed("files", "/files/a%5Cb")),
            ("/files/a%2F..%2Fb", Routed("files", "/files/a%2F..%2Fb")),
            ("/files/x/../a%2Fb", Routed("files", "/files/a%2Fb")),
            // Still routed on the decoded path first: the key is asked for.
            ("/files/..%2Fprivate/x", NeedsKey),
            // Kept, the path would be another route's: refused.
            ("/x%2F..%2Ffiles/a", Refused),
            // The defaults still hold next to it.
            ("/a/..%2fadmin", Routed("public", "/admin")),
            // `reject`: refused, whatever the case.
            ("/strict/a%2Fb", Refused),
            ("/strict/a%2fb", Refused),
            ("/strict/a%5cb", Refused),
            ("/strict/a\\b", Refused),
            ("/strict/a;b", Refused),
            ("/strict;b/a", Refused),
            ("/strict/a%3Bb", Routed("strict", "/strict/a%3Bb")),
            ("/strict/./a//b", Routed("strict", "/strict/a/b")),
            // `matrix_params: keep`: forwarded on their segment, never matched.
            (
                "/servlet;jsessionid=A1/cart;v=%7e2",
                Routed("servlet", "/servlet;jsessionid=A1/cart;v=~2"),
            ),
            ("/servlet/x/..;y/cart", Routed("servlet", "/servlet/cart")),
            ("/servlet/..;/private/x", NeedsKey),
        ],
    )
    .await;
}

#[test]
fn explain_shows_the_canonical_and_the_kept_path() {
    let config = fill(ROUTES, &[("U", "127.0.0.1:9"), ("EXTRA", POLICIES)]);
    let file = temp_dir("paths").join("portico.yaml");
    std::fs::write(&file, config).unwrap();
    let file = file.display().to_string();
    let explain = |path: &str| {
        let (code, out, err) = cli(&["explain", "-c", &file, "GET", &format!("http://x{path}")]);
        assert_eq!(code, 0, "{err}");
        out
    };
    let out = explain("/a/..%2fadmin");
    assert!(
        out.contains("path=/admin (normalised from /a/..%2fadmin)"),
        "{out}"
    );
    assert!(out.contains("route     public"), "{out}");
    let out = explain("/files/a%2fb");
    assert!(out.contains("route     files"), "{out}");
    assert!(
        out.contains("path      forwarded as /files/a%2Fb (path_policy)"),
        "{out}"
    );
    let out = explain("/strict/a;b");
    assert!(out.contains("result    400 Bad Request"), "{out}");
    let out = explain("/%2e%2e/private");
    assert!(out.contains("result    400 Bad Request"), "{out}");
}

#[tokio::test]
async fn plugins_see_the_path_that_is_forwarded() {
    let up = TestUpstream::start("U").await;
    let dir = temp_dir("paths-openapi");
    std::fs::write(
        dir.join("api.yaml"),
        "\
openapi: 3.0.3
info: { title: pets, version: '1' }
paths:
  /pets/{name}:
    get:
      parameters:
        - { name: name, in: path, required: true, schema: { type: string, pattern: '^[a-z]+$' } }
  /notes/{text}:
    get:
      parameters:
        - { name: text, in: path, required: true, schema: { type: string } }
",
    )
    .unwrap();
    let config = format!(
        "\
listeners:
  - {{ name: web, bind: 127.0.0.1:0 }}
routes:
  - name: api
    plugins: [ {{ request_validator: {{ openapi_file: api.yaml }} }} ]
    upstream: u
upstreams:
  u: {{ targets: [ {{ address: '{}' }} ] }}
",
        up.addr()
    );
    let gw = Portico::start_in(&dir, &config);
    let web = gw.addr("web");
    let get = |path: &'static str| {
        let web = web.clone();
        async move {
            let request = Request::get(path)
                .header("host", "x")
                .body(Full::<Bytes>::default())
                .unwrap();
            H1::connect(&web).await.send(request).await.unwrap()
        }
    };
    // Parameters are checked without their `;params`, as the upstream gets them.
    let reply = get("/pets/rex;v=1").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "U /pets/rex"));
    // The validator checks `/admin`, which the upstream would get, not one `/notes/{text}`.
    let reply = get("/notes/x%2F..%2F..%2Fadmin").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.json()["error"], "request_invalid", "{}", reply.body);
    let reply = get("/notes/hello%20world").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "U /notes/hello%20world")
    );
}

#[tokio::test]
async fn the_https_redirect_keeps_the_path_for_the_https_side_to_resolve() {
    let gw = Portico::start(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0, redirect_https: { port: 8443 } }
routes:
  - { name: files, path_policy: { encoded_slash: keep }, respond: { status: 200 } }
",
    );
    let web = gw.addr("web");
    let location = |path: &'static str| {
        let web = web.clone();
        async move {
            let reply = H1::connect(&web).await.get("x", path).await;
            (reply.status, reply.header("location").map(str::to_owned))
        }
    };
    // `%2F` may be data to the route behind the https listener: it is not decoded here.
    assert_eq!(
        location("/files/a%2Fb;v=1?q=%2F").await,
        (308, Some("https://x:8443/files/a%2Fb;v=1?q=%2F".to_owned()))
    );
    // What no listener would serve is refused before redirecting.
    assert_eq!(location("/%2e%2e/x").await, (400, None));
}
