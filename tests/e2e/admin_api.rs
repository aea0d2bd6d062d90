//! Admin API writes against the real binary: `PUT /config`, one route, upstream or consumer at
//! a time, `ETag`/`If-Match`, auth, `admin.writes: refuse`, divergence from the file, and
//! `/openapi.json`.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::client::Reply;
use crate::support::{H1, Portico, TestUpstream, get};

/// One admin request on a fresh connection.
pub(crate) async fn call(
    admin: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    H1::connect(admin).await.send(req).await.unwrap()
}

async fn hash(admin: &str) -> String {
    get(admin, "/health").await.json()["config_hash"]
        .as_str()
        .unwrap()
        .to_owned()
}

const BASE: &str = "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: ping, match: { path: /ping }, respond: { status: 200, body: pong } }
";

#[tokio::test]
async fn items_written_one_at_a_time_serve_at_once_and_bad_writes_change_nothing() {
    let a = TestUpstream::start("A").await;
    let gw = Portico::start(BASE);
    let (web, admin) = (gw.addr("web"), gw.admin.clone().unwrap());

    let config = get(&admin, "/config").await;
    let h0 = hash(&admin).await;
    assert_eq!(config.header("etag"), Some(format!("\"{h0}\"").as_str()));
    assert_eq!(get(&web, "/users/1").await.status, 404);

    // An upstream, then a route to it: the route serves at once.
    let up = call(
        &admin,
        "PUT",
        "/upstreams/api",
        &[("content-type", "application/json")],
        &format!(r#"{{"targets": [{{"address": "{}"}}]}}"#, a.addr()),
    )
    .await;
    assert_eq!(up.status, 201, "{}", up.body);
    let h1 = up.json()["config_hash"].as_str().unwrap().to_owned();
    assert_ne!(h1, h0);
    assert_eq!(up.header("etag"), Some(format!("\"{h1}\"").as_str()));
    let route = call(
        &admin,
        "PUT",
        "/routes/users",
        &[],
        "match: { path_prefix: /users }\nupstream: api\n",
    )
    .await;
    assert_eq!(route.status, 201, "{}", route.body);
    assert_eq!(route.json()["result"], "created");
    let served = get(&web, "/users/1").await;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(a.last().uri.path(), "/users/1");

    // Reading one item back: as written, in the running config's shape.
    let read = get(&admin, "/routes/users").await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json()["upstream"], "api");
    assert_eq!(read.json()["match"]["path_prefix"], "/users");
    let read = get(&admin, "/upstreams/api").await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.json()["targets"][0]["address"], a.addr());

    // An invalid write: 400 with the JSON path; nothing changed.
    let before = hash(&admin).await;
    let bad = call(
        &admin,
        "PUT",
        "/routes/broken",
        &[],
        r#"{"match": {"path_prefix": "no-slash"}, "upstream": "api"}"#,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let body = bad.json();
    assert_eq!(body["error"], "invalid_config");
    let paths: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["path"].as_str())
        .collect();
    assert!(
        paths.contains(&"routes[2].match.path_prefix"),
        "{paths:?}: {body}"
    );
    let unknown = call(
        &admin,
        "PUT",
        "/routes/lost",
        &[],
        r#"{"match": {"path_prefix": "/lost"}, "upstream": "nowhere"}"#,
    )
    .await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    assert!(
        unknown.body.contains("routes[2].upstream"),
        "{}",
        unknown.body
    );
    let mismatch = call(
        &admin,
        "PUT",
        "/routes/users",
        &[],
        r#"{"name": "other", "respond": {"status": 204}}"#,
    )
    .await;
    assert_eq!(mismatch.status, 400, "{}", mismatch.body);
    assert_eq!(hash(&admin).await, before);
    assert_eq!(get(&web, "/users/2").await.status, 200);
    assert_eq!(get(&admin, "/routes/broken").await.status, 404);

    // An upstream a route uses is not deleted, and says where it is used.
    let refused = call(&admin, "DELETE", "/upstreams/api", &[], "").await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.json()["error"], "in_use");
    assert_eq!(refused.json()["used_at"][0], "routes[1].upstream");
    assert_eq!(hash(&admin).await, before);
    assert_eq!(
        call(&admin, "DELETE", "/consumers/nobody", &[], "")
            .await
            .status,
        404
    );

    // Writes are reloads with trigger `admin`; the refused one is recorded too.
    let reloads = get(&admin, "/reloads").await.json();
    let list = reloads["reloads"].as_array().unwrap();
    let admin_applied = list
        .iter()
        .filter(|r| r["trigger"] == "admin" && r["result"] == "applied")
        .count();
    assert_eq!(admin_applied, 2, "{reloads}");
    assert!(
        list.iter()
            .any(|r| r["trigger"] == "admin" && r["result"] == "refused"),
        "{reloads}"
    );

    // The running config diverges from the file, and says how.
    let health = get(&admin, "/health").await.json();
    assert_eq!(health["source"], "admin");
    assert_eq!(health["diverged_from_file"], true);
    let file = get(&admin, "/config?source=file").await.json();
    assert_eq!(file["diverged_from_file"], true);
    assert_eq!(file["difference"]["routes"]["only_running"][0], "users");
    assert_eq!(file["difference"]["upstreams"]["only_running"][0], "api");
    assert_eq!(file["config"]["routes"].as_array().unwrap().len(), 1);

    // Deleting the route, then the upstream, works.
    let gone = call(&admin, "DELETE", "/routes/users", &[], "").await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    assert_eq!(get(&web, "/users/3").await.status, 404);
    assert_eq!(
        call(&admin, "DELETE", "/upstreams/api", &[], "")
            .await
            .status,
        200
    );

    // SIGHUP reads the file again: admin changes are replaced.
    call(
        &admin,
        "PUT",
        "/routes/extra",
        &[],
        "{ match: { path: /extra }, respond: { status: 201 } }",
    )
    .await;
    assert_eq!(get(&web, "/extra").await.status, 201);
    assert!(gw.reload(BASE), "{}", gw.log_text());
    let health = get(&admin, "/health").await.json();
    assert_eq!(health["source"], "file");
    assert_eq!(health["diverged_from_file"], false);
    assert_eq!(health["config_hash"].as_str().unwrap(), h0);
    assert_eq!(get(&web, "/extra").await.status, 404);
}

#[tokio::test]
async fn put_config_replaces_the_whole_and_reports_line_and_column() {
    let gw = Portico::start(BASE);
    let (web, admin) = (gw.addr("web"), gw.admin.clone().unwrap());
    let h0 = hash(&admin).await;

    let broken = "admin: { listen: 127.0.0.1:0 }\nlisteners:\n  - { name: web, bind: 127.0.0.1:0 }\nroutes:\n  - { name: ping, match: { path: /ping }, respnd: { status: 200 } }\n";
    let bad = call(&admin, "PUT", "/config", &[], broken).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let problem = &bad.json()["problems"][0];
    assert_eq!(problem["line"], 5, "{}", bad.body);
    assert!(problem["col"].as_u64().unwrap() > 1, "{}", bad.body);
    assert_eq!(problem["path"], "routes[0].respnd", "{}", bad.body);
    assert_eq!(hash(&admin).await, h0);

    // JSON is accepted as well as YAML; the listener keeps its socket.
    let whole = r#"{
  "admin": {"listen": "127.0.0.1:0"},
  "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
  "routes": [{"name": "ping", "match": {"path": "/ping"}, "respond": {"status": 200, "body": "pong v2"}}]
}"#;
    let ok = call(
        &admin,
        "PUT",
        "/config",
        &[("if-match", &format!("\"{h0}\""))],
        whole,
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let h1 = ok.json()["config_hash"].as_str().unwrap().to_owned();
    assert_eq!(hash(&admin).await, h1);
    assert_eq!(get(&web, "/ping").await.body, "pong v2");

    // An admin write may not drop the admin section it came through.
    let headless = "listeners: [ { name: web, bind: 127.0.0.1:0 } ]\nroutes: [ { name: ping, respond: { status: 200 } } ]\n";
    let refused = call(&admin, "PUT", "/config", &[], headless).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(hash(&admin).await, h1);
}

#[tokio::test]
async fn if_match_refuses_a_lost_update() {
    let gw = Portico::start(BASE);
    let (web, admin) = (gw.addr("web"), gw.admin.clone().unwrap());
    let etag = get(&admin, "/config")
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    let first = call(
        &admin,
        "PUT",
        "/routes/a",
        &[("if-match", &etag)],
        "{ match: { path: /a }, respond: { status: 200, body: first } }",
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let second = call(
        &admin,
        "PUT",
        "/routes/a",
        &[("if-match", &etag)],
        "{ match: { path: /a }, respond: { status: 200, body: second } }",
    )
    .await;
    assert_eq!(second.status, 412, "{}", second.body);
    assert_eq!(second.json()["error"], "precondition_failed");
    assert_eq!(second.header("etag"), first.header("etag"));
    assert_eq!(get(&web, "/a").await.body, "first");
    // With the ETag the first write gave, the retry applies.
    let retry = call(
        &admin,
        "PUT",
        "/routes/a",
        &[("if-match", first.header("etag").unwrap())],
        "{ match: { path: /a }, respond: { status: 200, body: second } }",
    )
    .await;
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(get(&web, "/a").await.body, "second");
}

#[tokio::test]
async fn writes_need_the_token() {
    let config = "\
admin: { listen: 127.0.0.1:0, token: s3cret-admin }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: ping, match: { path: /ping }, respond: { status: 200 } }
";
    let gw = Portico::start(config);
    let (web, admin) = (gw.addr("web"), gw.admin.clone().unwrap());
    let body = "{ match: { path: /new }, respond: { status: 202 } }";
    let none = call(&admin, "PUT", "/routes/new", &[], body).await;
    assert_eq!(none.status, 401);
    let wrong = call(
        &admin,
        "PUT",
        "/routes/new",
        &[("authorization", "Bearer nope")],
        body,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        call(&admin, "DELETE", "/routes/ping", &[], "").await.status,
        401
    );
    assert_eq!(call(&admin, "PUT", "/config", &[], "{}").await.status, 401);
    assert_eq!(get(&web, "/new").await.status, 404);
    let good = call(
        &admin,
        "PUT",
        "/routes/new",
        &[("authorization", "Bearer s3cret-admin")],
        body,
    )
    .await;
    assert_eq!(good.status, 201, "{}", good.body);
    assert_eq!(get(&web, "/new").await.status, 202);
    // The token never comes back.
    let config = call(
        &admin,
        "GET",
        "/config",
        &[("authorization", "Bearer s3cret-admin")],
        "",
    )
    .await;
    assert!(!config.body.contains("s3cret-admin"), "{}", config.body);
}

#[test]
fn an_admin_off_loopback_without_a_token_does_not_start() {
    let config = "\
admin: { listen: 0.0.0.0:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: ping, respond: { status: 200 } }
";
    let Err(log) = Portico::try_start(config) else {
        panic!("portico started with an unauthenticated admin API off loopback");
    };
    assert!(log.contains("needs a `token`"), "{log}");
}

#[tokio::test]
async fn writes_refused_by_config() {
    let config = "\
admin: { listen: 127.0.0.1:0, writes: refuse }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: ping, match: { path: /ping }, respond: { status: 200 } }
";
    let gw = Portico::start(config);
    let admin = gw.admin.clone().unwrap();
    let h0 = hash(&admin).await;
    for (method, path) in [
        ("PUT", "/config"),
        ("PUT", "/routes/x"),
        ("DELETE", "/routes/ping"),
        ("PUT", "/upstreams/x"),
        ("DELETE", "/consumers/x"),
    ] {
        let reply = call(&admin, method, path, &[], "{}").await;
        assert_eq!(reply.status, 403, "{method} {path}: {}", reply.body);
        assert_eq!(reply.json()["error"], "writes_refused");
    }
    assert_eq!(hash(&admin).await, h0);
    assert_eq!(get(&admin, "/routes/ping").await.status, 200);
    assert_eq!(get(&admin, "/health").await.json()["source"], "file");
}

#[tokio::test]
async fn openapi_document_parses_and_covers_the_writes() {
    let gw = Portico::start(BASE);
    let admin = gw.admin.clone().unwrap();
    let reply = get(&admin, "/openapi.json").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let doc = reply.json();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/config",
        "/routes/{name}",
        "/upstreams/{name}",
        "/consumers/{name}",
    ] {
        assert!(doc["paths"][path]["put"].is_object(), "{path}");
    }
    assert!(doc["paths"]["/routes/{name}"]["delete"].is_object());
    // A method an endpoint does not answer is 405 with Allow.
    let wrong = call(&admin, "POST", "/routes/x", &[], "").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET, PUT, DELETE"));
}

#[test]
fn plan_labels_each_change_and_refuses_an_invalid_config() {
    let dir = crate::support::temp_dir("plan");
    let old = dir.join("old.yaml");
    let new = dir.join("new.yaml");
    std::fs::write(
        &old,
        "workers: 2\nlisteners:\n  - { name: web, bind: 127.0.0.1:8080 }\nroutes:\n  - { name: a, match: { path_prefix: /a }, upstream: u }\nupstreams:\n  u: { targets: [ { address: 127.0.0.1:9001 }, { address: 127.0.0.1:9002 } ] }\n",
    )
    .unwrap();
    std::fs::write(
        &new,
        "workers: 4\nlisteners:\n  - { name: web, bind: 127.0.0.1:8081 }\nroutes:\n  - { name: a, match: { path_prefix: /a }, upstream: u }\n  - { name: b, match: { path_prefix: /b }, respond: { status: 204 } }\nupstreams:\n  u: { targets: [ { address: 127.0.0.1:9001, weight: 5 } ] }\n",
    )
    .unwrap();
    let (old, new) = (old.display().to_string(), new.display().to_string());
    let (code, out, err) = crate::support::cli(&["plan", "-c", &new, "--from", &old]);
    assert_eq!(code, 0, "{out}{err}");
    let squeezed: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for want in [
        "~ web: bind 127.0.0.1:8080 -> 127.0.0.1:8081 (the old socket drains) drains connections",
        "+ route b hitless",
        "~ upstream u: target 127.0.0.1:9001 weight 1 -> 5 hitless",
        "- upstream u: target 127.0.0.1:9002 (its pooled connections close; requests in flight finish) drains connections",
        "~ workers: 2 -> 4 needs a restart",
    ] {
        assert!(squeezed.iter().any(|l| l == want), "no `{want}` in:\n{out}");
    }
    let (code, out, _) = crate::support::cli(&["plan", "-c", &old, "--from", &old]);
    assert_eq!(code, 0);
    assert!(out.contains("no changes"), "{out}");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "routes: [ { name: x, upstrem: y } ]\n").unwrap();
    let (code, _, err) =
        crate::support::cli(&["plan", "-c", &bad.display().to_string(), "--from", &old]);
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.yaml:1:22: unknown key `upstrem`"),
        "{err}"
    );
}

#[tokio::test]
async fn no_writes_once_a_reload_dropped_the_admin_section() {
    let gw = Portico::start(BASE);
    let admin = gw.admin.clone().unwrap();
    let without = "listeners:\n  - { name: web, bind: 127.0.0.1:0 }\nroutes:\n  - { name: ping, match: { path: /ping }, respond: { status: 200 } }\n";
    assert!(gw.reload(without), "{}", gw.log_text());
    let reply = call(
        &admin,
        "PUT",
        "/routes/x",
        &[],
        "{ respond: { status: 200 } }",
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.json()["error"], "writes_refused");
    assert_eq!(get(&admin, "/routes/x").await.status, 404);
}

#[tokio::test]
async fn a_changed_certificate_recompiles_the_admin_written_config() {
    let dir = crate::support::temp_dir("admin-certs");
    let ca = crate::support::pki::Ca::new(&dir, "admin test CA");
    let pair = ca.leaf("site", "localhost", &["localhost"], false, false);
    let config = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - name: web\n    bind: 127.0.0.1:0\n    protocol: https\n    tls: {{ certificates: [ {{ cert_file: {}, key_file: {} }} ] }}\nroutes:\n  - {{ name: ping, match: {{ path: /ping }}, respond: {{ status: 200 }} }}\n",
        pair.cert(),
        pair.key()
    );
    let gw = Portico::start_in(&dir, &config);
    let admin = gw.admin.clone().unwrap();
    let put = call(
        &admin,
        "PUT",
        "/routes/added",
        &[],
        "{ match: { path: /added }, respond: { status: 201 } }",
    )
    .await;
    assert_eq!(put.status, 201, "{}", put.body);
    // The certificate is renewed in place.
    ca.leaf("site", "localhost", &["localhost"], false, false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let reloads = get(&admin, "/reloads").await.json();
        let files = reloads["reloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["trigger"] == "files")
            .cloned();
        if let Some(record) = files {
            assert_eq!(record["result"], "applied", "{reloads}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload for the new certificate: {reloads}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The admin write is still in force, and still reported as such.
    assert_eq!(get(&admin, "/routes/added").await.status, 200);
    let health = get(&admin, "/health").await.json();
    assert_eq!(health["source"], "admin", "{health}");
}

#[tokio::test]
async fn without_a_token_browsers_must_name_a_loopback_host() {
    let gw = Portico::start(
        "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
",
    );
    let admin = gw.admin.clone().unwrap();
    let ask = |host: &'static str, browser: bool| {
        let admin = admin.clone();
        async move {
            let mut request = Request::get("/health").header("host", host);
            if browser {
                request = request.header("sec-fetch-site", "same-origin");
            }
            let request = request.body(Full::new(Bytes::new())).unwrap();
            H1::connect(&admin).await.send(request).await.unwrap()
        }
    };
    // A page whose name was rebound to 127.0.0.1: refused.
    let rebound = ask("evil.example:9901", true).await;
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    assert!(
        rebound.body.contains("host_not_allowed"),
        "{}",
        rebound.body
    );
    // The operator's own browser on a loopback name, and clients that are not browsers.
    for host in [
        "127.0.0.1:9901",
        "localhost:9901",
        "[::1]:9901",
        "admin.localhost",
    ] {
        assert_eq!(ask(host, true).await.status, 200, "{host}");
    }
    assert_eq!(ask("evil.example", false).await.status, 200);
    // The dashboard's page is refused to a rebound name too.
    let request = Request::get("/")
        .header("host", "evil.example")
        .header("sec-fetch-site", "none")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        H1::connect(&admin)
            .await
            .send(request)
            .await
            .unwrap()
            .status,
        403
    );
}
