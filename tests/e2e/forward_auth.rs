//! `forward_auth` against a real auth service (examples/forward_auth_server.py): what it is
//! told, allow and deny relayed, forged identity removed, failing closed, balancing, the
//! decision cache seen from the service.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::client::Reply;
use crate::support::{H1, Portico, TestUpstream, fill, get};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The example auth service, stopped on drop.
pub(crate) struct AuthService {
    child: Child,
    pub(crate) addr: String,
}

impl AuthService {
    pub(crate) fn start() -> Self {
        let mut child = Command::new("python3")
            .arg(format!("{ROOT}/examples/forward_auth_server.py"))
            .arg("0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        AuthService { child, addr }
    }

    /// How many checks it got.
    pub(crate) async fn calls(&self) -> u64 {
        get(&self.addr, "/_calls")
            .await
            .body
            .trim()
            .parse()
            .unwrap()
    }

    /// The last check: method, path, and each header's values.
    pub(crate) async fn last(&self) -> Check {
        let v = get(&self.addr, "/_last").await.json();
        let headers = v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| {
                (
                    pair[0].as_str().unwrap().to_owned(),
                    pair[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        Check {
            method: v["method"].as_str().unwrap().to_owned(),
            path: v["path"].as_str().unwrap().to_owned(),
            headers,
        }
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the auth service was sent.
#[derive(Debug)]
pub(crate) struct Check {
    pub(crate) method: String,
    pub(crate) path: String,
    headers: Vec<(String, String)>,
}

impl Check {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let mut all = self.headers.iter().filter(|(n, _)| n == name);
        let first = all.next().map(|(_, v)| v.as_str());
        assert!(all.next().is_none(), "one {name} header");
        first
    }
}

async fn send(web: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut r = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "app.example");
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    H1::connect(web)
        .await
        .send(r.body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap()
}

fn config(auth: &[&str], upstream: &str, top: &str, plugin: &str) -> String {
    let targets: Vec<String> = auth
        .iter()
        .map(|a| format!("{{ address: '{a}' }}"))
        .collect();
    fill(
        "\
@TOP@
listeners:
  - { name: web, bind: 127.0.0.1:0 }
consumers:
  - { name: alice, groups: [admins] }
routes:
  - name: admin
    match: { path_prefix: /admin }
    plugins:
      - forward_auth:
          upstream: auth
          path: /check
          request_headers: [authorization]
          response_headers: [x-user]
          consumer_header: x-user
      - acl: { allow: [admins] }
    upstream: app
  - name: app
    plugins:
      - forward_auth:
          upstream: auth
@PLUGIN@
    upstream: app
upstreams:
  app: { targets: [ { address: '@U@' } ] }
  auth: { targets: [ @AUTH@ ] }
",
        &[
            ("TOP", top),
            ("PLUGIN", plugin),
            ("U", upstream),
            ("AUTH", &targets.join(", ")),
        ],
    )
}

const PLAIN: &str = "          path: /check
          request_headers: [authorization, accept]
          response_headers: [x-user]";

const SECRETS: &[&str] = &["tok-alice", "tok-bob", "alice-session", "sid-secret"];

/// No answer portico made shows a credential.
fn clean(reply: &Reply) {
    for t in SECRETS {
        assert!(!reply.body.contains(t), "`{t}` in {}", reply.body);
        for (_, v) in &reply.headers {
            assert!(!v.to_str().unwrap_or("").contains(t), "`{t}` in a header");
        }
    }
}

#[tokio::test]
async fn forward_auth_allows_relays_refusals_and_describes_the_request() {
    let auth = AuthService::start();
    let up = TestUpstream::start("U").await;
    let gw = Portico::start(&config(&[&auth.addr], &up.addr(), "", PLAIN));
    let web = gw.addr("web");

    // Allowed: on to the upstream with the copied header; the forged one is gone.
    let r = send(
        &web,
        "DELETE",
        "/orders/7?full=1&x=%2F",
        &[
            ("authorization", "Bearer tok-bob"),
            ("x-user", "admin"),
            ("cookie", "sid=sid-secret"),
            ("x-forwarded-for", "198.51.100.1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last();
    assert_eq!(seen.method, "DELETE");
    assert_eq!(seen.uri, "/orders/7?full=1&x=%2F");
    assert_eq!(
        seen.headers.get_all("x-user").iter().collect::<Vec<_>>(),
        ["bob"]
    );
    assert!(
        seen.headers.get("x-auth-debug").is_none(),
        "not a response header"
    );
    assert_eq!(seen.headers["cookie"], "sid=sid-secret");

    // What the auth service was told.
    let check = auth.last().await;
    assert_eq!(
        (check.method.as_str(), check.path.as_str()),
        ("GET", "/check")
    );
    assert_eq!(check.header("x-forwarded-method"), Some("DELETE"));
    assert_eq!(
        check.header("x-forwarded-uri"),
        Some("/orders/7?full=1&x=%2F")
    );
    assert_eq!(check.header("x-forwarded-host"), Some("app.example"));
    assert_eq!(check.header("x-forwarded-proto"), Some("http"));
    // Not from a trusted proxy: the forged hop is not believed.
    assert_eq!(check.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(check.header("authorization"), Some("Bearer tok-bob"));
    assert_eq!(check.header("cookie"), None, "not listed");
    assert_eq!(
        check.header("x-user"),
        None,
        "the forged header is not sent either"
    );
    assert_eq!(check.header("content-length"), None, "no body");

    // Refused: the auth service's status, listed headers and body.
    let r = send(&web, "GET", "/orders", &[("x-user", "alice")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"example\"")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-auth-debug").is_none(), "not a client header");
    assert_eq!(r.json()["message"], "sign in first");
    assert!(r.header("x-request-id").is_some());
    let count = up.count();

    // A browser is sent to the login page, intact.
    let r = send(&web, "GET", "/orders?page=2", &[("accept", "text/html")]).await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("http://login.example/login?rd=http%3A%2F%2Fapp.example%2Forders%3Fpage%3D2")
    );

    // The consumer named by the answer feeds acl.
    let r = send(
        &web,
        "GET",
        "/admin/users",
        &[("authorization", "Bearer tok-alice")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last();
    assert_eq!(seen.headers["x-user"], "alice");
    assert_eq!(seen.headers["x-consumer-name"], "alice");
    assert_eq!(seen.headers["x-consumer-groups"], "admins");
    // Bob passes the auth service's check of /admin? No: it refuses with 403 itself.
    let r = send(
        &web,
        "GET",
        "/admin/users",
        &[("authorization", "Bearer tok-bob")],
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (403, "admins only\n"));
    assert_eq!(up.count(), count + 1);

    // A refusal longer than max_body fails closed, and shows no credential.
    let r = send(
        &web,
        "GET",
        "/orders",
        &[("authorization", "Bearer tok-big")],
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "auth_unavailable");
    clean(&r);
    assert_eq!(up.count(), count + 1);
}

#[tokio::test]
async fn forward_auth_tells_the_trusted_client_address() {
    let auth = AuthService::start();
    let up = TestUpstream::start("U").await;
    let gw = Portico::start(&config(
        &[&auth.addr],
        &up.addr(),
        "trusted_proxies: [127.0.0.1/32]",
        PLAIN,
    ));
    let web = gw.addr("web");
    let r = send(
        &web,
        "GET",
        "/x",
        &[
            ("authorization", "Bearer tok-bob"),
            ("x-forwarded-for", "203.0.113.9, 127.0.0.1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let check = auth.last().await;
    assert_eq!(check.header("x-forwarded-for"), Some("203.0.113.9"));
}

/// An auth service that takes connections and never answers.
async fn hanging() -> (tokio::task::JoinHandle<()>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (task, addr)
}

#[tokio::test]
async fn forward_auth_fails_closed() {
    let up = TestUpstream::start("U").await;
    let (task, addr) = hanging().await;
    let gw = Portico::start(&config(
        &[&addr],
        &up.addr(),
        "",
        "          timeout: 500ms\n          request_headers: [authorization, cookie]",
    ));
    let web = gw.addr("web");
    let headers = [
        ("authorization", "Bearer tok-alice"),
        ("cookie", "session=alice-session"),
    ];
    let started = Instant::now();
    let r = send(&web, "GET", "/x", &headers).await;
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "auth_unavailable");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    clean(&r);
    task.abort();
    drop(gw);

    // Nothing listens: refused at once, still closed.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let gw = Portico::start(&config(&[&closed], &up.addr(), "", PLAIN));
    let r = send(&gw.addr("web"), "GET", "/x", &headers).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "auth_unavailable");
    clean(&r);
    assert_eq!(up.count(), 0, "never through");
}

#[tokio::test]
async fn forward_auth_balances_over_its_upstream() {
    let (one, two) = (AuthService::start(), AuthService::start());
    let up = TestUpstream::start("U").await;
    let gw = Portico::start(&config(&[&one.addr, &two.addr], &up.addr(), "", PLAIN));
    let web = gw.addr("web");
    for _ in 0..10 {
        let r = send(&web, "GET", "/x", &[("authorization", "Bearer tok-bob")]).await;
        assert_eq!(r.status, 200);
    }
    let (a, b) = (one.calls().await, two.calls().await);
    assert_eq!(a + b, 10);
    assert!(a >= 1 && b >= 1, "{a} and {b}");
}

#[tokio::test]
async fn forward_auth_caches_decisions() {
    let auth = AuthService::start();
    let up = TestUpstream::start("U").await;
    let gw = Portico::start(&config(
        &[&auth.addr],
        &up.addr(),
        "",
        "          request_headers: [authorization]
          response_headers: [x-user]
          cache: { key: [authorization], ttl: 1s, negative_ttl: 1s }",
    ));
    let web = gw.addr("web");
    let alice = [("authorization", "Bearer tok-alice")];
    for _ in 0..5 {
        assert_eq!(send(&web, "GET", "/x", &alice).await.status, 200);
    }
    let many: Vec<_> = (0..5)
        .map(|_| {
            let web = web.clone();
            tokio::spawn(async move { send(&web, "GET", "/x", &alice).await.status })
        })
        .collect();
    for task in many {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(auth.calls().await, 1, "ten requests, one check");
    // The cached decision still copies its header.
    assert_eq!(up.last().headers["x-user"], "alice");

    // Another key, another check; another path, another check.
    let bob = [("authorization", "Bearer tok-bob")];
    assert_eq!(send(&web, "GET", "/x", &bob).await.status, 200);
    assert_eq!(auth.calls().await, 2);
    assert_eq!(send(&web, "GET", "/y", &bob).await.status, 200);
    assert_eq!(auth.calls().await, 3);
    // Refusals are kept for negative_ttl.
    for _ in 0..3 {
        assert_eq!(send(&web, "GET", "/x", &[]).await.status, 401);
    }
    assert_eq!(auth.calls().await, 4);

    // Past the ttl, a new check.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(send(&web, "GET", "/x", &alice).await.status, 200);
    assert_eq!(auth.calls().await, 5);
}
