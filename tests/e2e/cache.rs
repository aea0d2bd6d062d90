//! The `cache` plugin against an upstream that counts its requests and sets
//! `Cache-Control`, `ETag` and `Vary` per path: freshness and `Age`, expiry, revalidation
//! (304 from the upstream), `Vary`, collapsing, stale-while-revalidate, stale-if-error with
//! the upstream down,
//! purge through the admin API, what is never stored, `HEAD` from a `GET` entry, and a
//! poisoning attempt through an unkeyed header.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::support::client::Reply;
use crate::support::{H1, Portico, fill, get};

/// An origin that answers by path, counts requests per path and notes the conditional
/// fields it gets; one connection per request, so stopping it refuses the next one.
struct Origin {
    addr: SocketAddr,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    /// The last `If-None-Match` seen, by path.
    conditionals: Arc<Mutex<HashMap<String, String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(path: &str, req: &Request<Incoming>, n: usize) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut b = Response::builder();
    let mut body = format!("{path} #{n}");
    let base = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match base {
        "fresh" | "purge" | "head" | "slow" => b = b.header("cache-control", "max-age=60"),
        "short" => {
            b = b
                .header("cache-control", "max-age=2")
                .header("etag", "\"v1\"");
            if header("if-none-match") == "\"v1\"" {
                return b.status(304).body(Full::new(Bytes::new())).unwrap();
            }
        }
        "vary" => {
            b = b
                .header("cache-control", "max-age=60")
                .header("vary", "Accept-Language, Accept-Encoding");
            body = format!(
                "lang={} enc={} #{n}",
                header("accept-language"),
                header("accept-encoding")
            );
        }
        "private" => b = b.header("cache-control", "private, max-age=60"),
        "nostore" => b = b.header("cache-control", "no-store"),
        "cookie" => {
            b = b
                .header("cache-control", "max-age=60")
                .header("set-cookie", "sid=abc")
        }
        "auth" => b = b.header("cache-control", "max-age=60"),
        "authpublic" => b = b.header("cache-control", "public, max-age=60"),
        "star" => b = b.header("cache-control", "max-age=60").header("vary", "*"),
        "xfh" => {
            b = b.header("cache-control", "max-age=60");
            body = format!("host={} #{n}", header("x-forwarded-host"));
        }
        "sie" => b = b.header("cache-control", "max-age=1, stale-if-error=60"),
        "swr" => b = b.header("cache-control", "max-age=2, stale-while-revalidate=30"),
        "big" => {
            b = b.header("cache-control", "max-age=60");
            body = "x".repeat(2 << 20);
        }
        "heuristic" => {}
        _ => {}
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

impl Origin {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let conditionals: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let (c2, k2) = (Arc::clone(&counts), Arc::clone(&conditionals));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (counts, conds) = (Arc::clone(&c2), Arc::clone(&k2));
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let path = req.uri().path().to_owned();
                        let n = {
                            let mut counts = counts.lock().unwrap();
                            let n = counts.entry(path.clone()).or_default();
                            *n += 1;
                            *n
                        };
                        if let Some(v) = req.headers().get("if-none-match") {
                            conds
                                .lock()
                                .unwrap()
                                .insert(path.clone(), v.to_str().unwrap().to_owned());
                        }
                        async move {
                            if path.starts_with("/slow") {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                            Ok::<_, Infallible>(answer(&path, &req, n))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin {
            addr,
            counts,
            conditionals,
            task,
        }
    }

    fn count(&self, path: &str) -> usize {
        self.counts.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn conditional(&self, path: &str) -> Option<String> {
        self.conditionals.lock().unwrap().get(path).cloned()
    }
}

fn config(origin: &str) -> String {
    fill(
        "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: heuristic
    match: { path_prefix: /heuristic }
    plugins:
      - cache: { ttl: 60s }
    upstream: origin
  - name: down
    match: { path_prefix: /down }
    plugins:
      - cache: { ttl: 60s }
    upstream: nowhere
  - name: app
    plugins:
      - cache: { key_headers: [x-tenant] }
    upstream: origin
upstreams:
  origin: { targets: [ { address: '@O@' } ] }
  nowhere: { targets: [ { address: '127.0.0.1:1' } ] }
",
        &[("O", origin)],
    )
}

async fn send(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "example.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    H1::connect(addr)
        .await
        .send(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap()
}

async fn fetch(addr: &str, path: &str) -> Reply {
    send(addr, "GET", path, &[]).await
}

fn cache_header(r: &Reply) -> &str {
    r.header("x-cache").unwrap_or("")
}

#[tokio::test]
async fn cache_serves_fresh_answers_with_age_and_expires_them() {
    let origin = Origin::start().await;
    let gw = Portico::start(&config(&origin.addr.to_string()));
    let web = gw.addr("web");

    let first = fetch(&web, "/fresh").await;
    assert_eq!((first.status, cache_header(&first)), (200, "MISS"));
    assert_eq!(first.body, "/fresh #1");
    let mut last_age = 0;
    for _ in 0..5 {
        let r = fetch(&web, "/fresh").await;
        assert_eq!(
            (r.status, cache_header(&r), r.body.as_str()),
            (200, "HIT", "/fresh #1")
        );
        last_age = r.header("age").unwrap().parse::<u64>().unwrap();
    }
    assert_eq!(origin.count("/fresh"), 1, "five hits, one upstream request");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = fetch(&web, "/fresh").await;
    let age: u64 = r.header("age").unwrap().parse().unwrap();
    assert!(
        age >= 1 && age > last_age,
        "Age grows: {last_age} then {age}"
    );

    // The query is part of the key.
    let r = fetch(&web, "/fresh?page=2").await;
    assert_eq!(cache_header(&r), "MISS");

    // Past max-age=2 the answer is stale: the next request goes upstream again, with the
    // stored ETag; the 304 refreshes the entry and the client gets the whole body.
    let r = fetch(&web, "/short").await;
    assert_eq!((cache_header(&r), r.body.as_str()), ("MISS", "/short #1"));
    let r = fetch(&web, "/short").await;
    assert_eq!(cache_header(&r), "HIT");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = fetch(&web, "/short").await;
    assert_eq!(
        (r.status, cache_header(&r), r.body.as_str()),
        (200, "REVALIDATED", "/short #1")
    );
    assert_eq!(origin.count("/short"), 2);
    assert_eq!(origin.conditional("/short").as_deref(), Some("\"v1\""));
    // Refreshed: fresh again.
    let r = fetch(&web, "/short").await;
    assert_eq!(cache_header(&r), "HIT");
    assert_eq!(origin.count("/short"), 2);
    // The client's own conditional is answered from the store.
    let r = send(&web, "GET", "/short", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!((r.status, cache_header(&r)), (304, "HIT"));
    // no-cache from the client: revalidated, not served as it is.
    let r = send(&web, "GET", "/short", &[("cache-control", "no-cache")]).await;
    assert_eq!((r.status, cache_header(&r)), (200, "REVALIDATED"));
    assert_eq!(origin.count("/short"), 3);
    // no-store from the client: not looked up.
    let r = send(&web, "GET", "/fresh", &[("cache-control", "no-store")]).await;
    assert_eq!(cache_header(&r), "BYPASS");

    // Heuristic freshness only where `ttl` is set: the same answer without Cache-Control is
    // stored on the `heuristic` route, not on `app`.
    fetch(&web, "/heuristic").await;
    let r = fetch(&web, "/heuristic").await;
    assert_eq!(cache_header(&r), "HIT");
    assert_eq!(origin.count("/heuristic"), 1);
    fetch(&web, "/other").await;
    let r = fetch(&web, "/other").await;
    assert_eq!(cache_header(&r), "MISS");
    assert_eq!(origin.count("/other"), 2);

    // HEAD is served from the GET entry, without its body.
    fetch(&web, "/head").await;
    let r = send(&web, "HEAD", "/head", &[]).await;
    assert_eq!(
        (r.status, cache_header(&r), r.body.as_str()),
        (200, "HIT", "")
    );
    assert_eq!(origin.count("/head"), 1);

    let metrics = get(gw.admin.as_ref().unwrap(), "/metrics").await.body;
    assert!(
        metrics.contains("portico_cache_requests_total{route=\"app\",result=\"hit\"}"),
        "{metrics}"
    );
    let stored = metrics
        .lines()
        .find(|l| l.starts_with("portico_cache_stored_bytes "))
        .unwrap();
    assert!(!stored.ends_with(" 0"), "{stored}");
}

#[tokio::test]
async fn cache_keeps_variants_apart_and_is_not_poisoned_by_unkeyed_headers() {
    let origin = Origin::start().await;
    let gw = Portico::start(&config(&origin.addr.to_string()));
    let web = gw.addr("web");
    let fr = [("accept-language", "fr"), ("accept-encoding", "gzip")];
    let de = [("accept-language", "de"), ("accept-encoding", "gzip")];
    let fr_br = [("accept-language", "fr"), ("accept-encoding", "br")];
    for (headers, body) in [
        (&fr, "lang=fr enc=gzip #1"),
        (&de, "lang=de enc=gzip #2"),
        (&fr_br, "lang=fr enc=br #3"),
    ] {
        let r = send(&web, "GET", "/vary", headers).await;
        assert_eq!((cache_header(&r), r.body.as_str()), ("MISS", body));
    }
    for (headers, body) in [
        (&fr, "lang=fr enc=gzip #1"),
        (&de, "lang=de enc=gzip #2"),
        (&fr_br, "lang=fr enc=br #3"),
    ] {
        let r = send(&web, "GET", "/vary", headers).await;
        assert_eq!((cache_header(&r), r.body.as_str()), ("HIT", body));
    }
    assert_eq!(origin.count("/vary"), 3);

    // key_headers: another tenant is another key.
    fetch(&web, "/fresh").await;
    let r = send(&web, "GET", "/fresh", &[("x-tenant", "b")]).await;
    assert_eq!(cache_header(&r), "MISS");
    let r = send(&web, "GET", "/fresh", &[("x-tenant", "b")]).await;
    assert_eq!(cache_header(&r), "HIT");

    // An X-Forwarded-Host of the client's never reaches the upstream (portico sets it
    // from Host), so the stored answer is the one every client would get.
    let r = send(&web, "GET", "/xfh", &[("x-forwarded-host", "evil.example")]).await;
    assert_eq!(r.body, "host=example.test #1");
    let r = fetch(&web, "/xfh").await;
    assert_eq!(
        (cache_header(&r), r.body.as_str()),
        ("HIT", "host=example.test #1")
    );
}

#[tokio::test]
async fn cache_never_stores_private_answers_or_its_own_errors() {
    let origin = Origin::start().await;
    let gw = Portico::start(&config(&origin.addr.to_string()));
    let web = gw.addr("web");
    for (path, headers) in [
        ("/private", &[][..]),
        ("/nostore", &[][..]),
        ("/cookie", &[][..]),
        ("/star", &[][..]),
        ("/auth", &[("authorization", "Bearer t")][..]),
    ] {
        for _ in 0..2 {
            let r = send(&web, "GET", path, headers).await;
            assert_eq!((r.status, cache_header(&r)), (200, "MISS"), "{path}");
        }
        assert_eq!(origin.count(path), 2, "{path} is not stored");
    }
    // Over max_object_size (1MiB by default): passed on whole, not stored.
    for _ in 0..2 {
        let r = fetch(&web, "/big").await;
        assert_eq!(
            (r.status, r.body.len(), cache_header(&r)),
            (200, 2 << 20, "MISS")
        );
    }
    assert_eq!(origin.count("/big"), 2);

    // `public` lets an answer to a request with Authorization be stored (RFC 9111 §3.5).
    let auth = [("authorization", "Bearer t")];
    send(&web, "GET", "/authpublic", &auth).await;
    let r = send(&web, "GET", "/authpublic", &auth).await;
    assert_eq!(cache_header(&r), "HIT");

    // portico's own 502 is never stored, even with a heuristic ttl.
    for _ in 0..2 {
        let r = fetch(&web, "/down").await;
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (502, Some("upstream_connect_failed"))
        );
        assert_ne!(cache_header(&r), "HIT");
    }

    // A POST on a URL drops what is stored for it.
    fetch(&web, "/purge/post").await;
    assert_eq!(cache_header(&fetch(&web, "/purge/post").await), "HIT");
    let r = send(&web, "POST", "/purge/post", &[]).await;
    assert_eq!(cache_header(&r), "BYPASS");
    assert_eq!(cache_header(&fetch(&web, "/purge/post").await), "MISS");
}

#[tokio::test]
async fn cache_collapses_concurrent_misses_into_one_upstream_request() {
    let origin = Origin::start().await;
    let gw = Portico::start(&config(&origin.addr.to_string()));
    let web = gw.addr("web");
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let web = web.clone();
        tasks.push(tokio::spawn(async move { fetch(&web, "/slow").await }));
    }
    let mut results: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "/slow #1"));
        *results.entry(cache_header(&r).to_owned()).or_default() += 1;
    }
    assert_eq!(
        origin.count("/slow"),
        1,
        "one upstream request: {results:?}"
    );
    assert_eq!(results.get("MISS"), Some(&1), "{results:?}");
}

#[tokio::test]
async fn cache_serves_stale_when_the_upstream_is_down_and_purges_through_the_admin_api() {
    let origin = Origin::start().await;
    let gw = Portico::start(&config(&origin.addr.to_string()));
    let web = gw.addr("web");
    let admin = gw.admin.clone().unwrap();
    fetch(&web, "/sie").await;
    for path in ["/purge/a", "/purge/b", "/purge/c?x=1"] {
        fetch(&web, path).await;
        assert_eq!(cache_header(&fetch(&web, path).await), "HIT");
    }

    // Purge by key, then by prefix; the answer counts what was dropped.
    let purge = |body: &'static str| {
        let admin = admin.clone();
        async move {
            let req = Request::builder()
                .method("POST")
                .uri("/cache/purge")
                .header("host", "admin")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            H1::connect(&admin).await.send(req).await.unwrap()
        }
    };
    let r = purge(r#"{"key": "http://example.test/purge/a"}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["purged"], 1);
    assert_eq!(cache_header(&fetch(&web, "/purge/a").await), "MISS");
    assert_eq!(cache_header(&fetch(&web, "/purge/b").await), "HIT");
    let r = purge(r#"{"prefix": "http://example.test/purge/"}"#).await;
    assert_eq!(r.json()["purged"], 3, "{}", r.body);
    assert_eq!(cache_header(&fetch(&web, "/purge/b").await), "MISS");
    assert_eq!(cache_header(&fetch(&web, "/purge/c?x=1").await), "MISS");
    let r = purge(r#"{"url": 1}"#).await;
    assert_eq!(r.status, 400);

    // The upstream goes away: past max-age=1, within stale-if-error=60, the stored answer
    // is served, marked STALE.
    drop(origin);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = fetch(&web, "/sie").await;
    assert_eq!(
        (r.status, cache_header(&r), r.body.as_str()),
        (200, "STALE", "/sie #1")
    );
    // Nothing stored: portico's error.
    let r = fetch(&web, "/fresh").await;
    assert_eq!(r.status, 502);
}

#[tokio::test]
async fn cache_serves_stale_while_it_revalidates_in_the_background() {
    let origin = Origin::start().await;
    let gw = Portico::start(&config(&origin.addr.to_string()));
    let web = gw.addr("web");
    assert_eq!(cache_header(&fetch(&web, "/swr").await), "MISS");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Stale, within stale-while-revalidate=30: served at once, refreshed behind it. (The
    // upstream's Date has whole seconds: an answer may arrive up to 1 s old.)
    let r = fetch(&web, "/swr").await;
    assert_eq!((cache_header(&r), r.body.as_str()), ("STALE", "/swr #1"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while origin.count("/swr") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no background refresh"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = fetch(&web, "/swr").await;
        if r.body == "/swr #2" {
            assert_eq!(cache_header(&r), "HIT");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refresh was not stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(origin.count("/swr"), 2);
}
