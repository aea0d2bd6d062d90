//! The `cache` plugin's disk store through the real binary: answers that survive a
//! SIGTERM and a new start (a HIT, the upstream not called, `Age` counting the time in
//! between), a garbage or truncated file read as a miss and replaced, the folder kept under
//! `max_size`, purge by prefix and unsafe methods removing files, collapsing of misses that
//! read the disk, reloads, and unusable or shared folders refused at their line.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::support::client::Reply;
use crate::support::{H1, Portico, fill, temp_dir};

/// An origin that counts requests per path and answers `max-age=600` (`max-age=1` when
/// the path has `short`) with a body of `size` bytes when the path is `/size/N/...`, 300 ms
/// late when it is `/slow...`.
struct Origin {
    addr: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let c2 = Arc::clone(&counts);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counts = Arc::clone(&c2);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let path = req.uri().path().to_owned();
                        let n = {
                            let mut counts = counts.lock().unwrap();
                            let n = counts.entry(path.clone()).or_default();
                            *n += 1;
                            *n
                        };
                        let body = match path.strip_prefix("/size/") {
                            Some(rest) => {
                                let size: usize = rest.split('/').next().unwrap().parse().unwrap();
                                "x".repeat(size)
                            }
                            None => format!("{path} #{n}"),
                        };
                        let max_age = if path.contains("short") {
                            "max-age=1"
                        } else {
                            "max-age=600"
                        };
                        async move {
                            if path.starts_with("/slow") {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("cache-control", max_age)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin { addr, counts, task }
    }

    fn count(&self, path: &str) -> usize {
        self.counts.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn config(origin: &str, disk: &str) -> String {
    fill(
        "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: app
    plugins:
      - cache: { disk: @D@ }
    upstream: origin
upstreams:
  origin: { targets: [ { address: '@O@' } ] }
",
        &[("O", origin), ("D", disk)],
    )
}

async fn fetch(addr: &str, path: &str) -> Reply {
    let req = Request::builder()
        .uri(path)
        .header("host", "example.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    H1::connect(addr).await.send(req).await.unwrap()
}

/// The entry files of a folder (not the temporary ones), with their sizes.
fn entries(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(list) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    list.flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect()
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn x_cache(r: &Reply) -> &str {
    r.header("x-cache").unwrap_or("")
}

#[tokio::test]
async fn answers_survive_a_restart_as_hits_with_their_age() {
    let origin = Origin::start().await;
    let dir = temp_dir("cache-disk");
    let store = dir.join("store");
    let conf = config(&origin.addr, "{ path: store }");
    let mut gw = Portico::start_in(&dir, &conf);
    let web = gw.addr("web");
    let first = fetch(&web, "/page").await;
    let stored = Instant::now();
    assert_eq!((first.status, x_cache(&first)), (200, "MISS"));
    assert_eq!(first.body, "/page #1");
    until("the entry file", || entries(&store).len() == 1).await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&store).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    // Time passes, then a clean stop and a new start on the same folder.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        gw.terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let gw = Portico::start_in(&dir, &conf);
    let web = gw.addr("web");
    let again = fetch(&web, "/page").await;
    let elapsed = stored.elapsed().as_secs();
    assert_eq!(
        (again.status, x_cache(&again)),
        (200, "HIT"),
        "{}",
        gw.log_text()
    );
    assert_eq!(again.body, "/page #1");
    assert_eq!(origin.count("/page"), 1);
    let age: u64 = again.header("age").unwrap().parse().unwrap();
    assert!(
        age >= elapsed && elapsed >= 1,
        "age {age}, elapsed {elapsed}"
    );
    // Promoted into memory: served again without the disk.
    assert_eq!(x_cache(&fetch(&web, "/page").await), "HIT");
    assert_eq!(origin.count("/page"), 1);
}

#[tokio::test]
async fn a_garbage_or_truncated_file_is_a_miss_and_is_replaced() {
    let origin = Origin::start().await;
    let dir = temp_dir("cache-disk-bad");
    let store = dir.join("store");
    let conf = config(&origin.addr, "{ path: store }");
    let mut gw = Portico::start_in(&dir, &conf);
    let web = gw.addr("web");
    assert_eq!(x_cache(&fetch(&web, "/a").await), "MISS");
    until("the first file", || entries(&store).len() == 1).await;
    assert_eq!(x_cache(&fetch(&web, "/b").await), "MISS");
    until("the second file", || entries(&store).len() == 2).await;
    assert!(gw.terminate(Duration::from_secs(10)).is_some());
    let files = entries(&store);
    let good_len = files[0].1;
    // One becomes garbage, the other loses its end.
    std::fs::write(&files[0].0, b"garbage, not an entry").unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&files[1].0)
        .unwrap()
        .set_len(files[1].1 - 5)
        .unwrap();
    let gw = Portico::start_in(&dir, &conf);
    let web = gw.addr("web");
    for path in ["/a", "/b"] {
        let r = fetch(&web, path).await;
        assert_eq!((r.status, x_cache(&r)), (200, "MISS"), "{path}");
        assert_eq!(r.body, format!("{path} #2"));
    }
    // Both written again, whole.
    until("the files replaced", || {
        let now = entries(&store);
        now.len() == 2 && now.iter().all(|(_, len)| *len == good_len)
    })
    .await;
    assert_eq!(x_cache(&fetch(&web, "/a").await), "HIT");
}

#[tokio::test]
async fn the_folder_stays_under_max_size() {
    let origin = Origin::start().await;
    let dir = temp_dir("cache-disk-size");
    let store = dir.join("store");
    let max = 20 * 1024;
    let gw = Portico::start_in(
        &dir,
        &config(&origin.addr, "{ path: store, max_size: 20KiB }"),
    );
    let web = gw.addr("web");
    for i in 0..60 {
        let r = fetch(&web, &format!("/size/1000/{i}")).await;
        assert_eq!(r.status, 200);
        assert!(
            entries(&store).iter().map(|(_, l)| l).sum::<u64>() <= max + 1200,
            "past the size by more than one entry being evicted"
        );
    }
    until("the last entry written", || {
        entries(&store).iter().map(|(_, l)| l).sum::<u64>().le(&max) && entries(&store).len() >= 10
    })
    .await;
    let n = entries(&store).len();
    assert!((10..60).contains(&n), "{n} files");
    // The newest stays; the oldest went.
    drop(gw);
}

#[tokio::test]
async fn purge_by_prefix_removes_the_files() {
    let origin = Origin::start().await;
    let dir = temp_dir("cache-disk-purge");
    let store = dir.join("store");
    let conf = config(&origin.addr, "{ path: store }");
    let mut gw = Portico::start_in(&dir, &conf);
    let web = gw.addr("web");
    for path in ["/p/a", "/p/b", "/q/c"] {
        assert_eq!(x_cache(&fetch(&web, path).await), "MISS");
    }
    until("three files", || entries(&store).len() == 3).await;
    // After a restart, so that the memory store is empty: the disk index has the keys.
    assert!(gw.terminate(Duration::from_secs(10)).is_some());
    let gw = Portico::start_in(&dir, &conf);
    let web = gw.addr("web");
    let admin = gw.admin.clone().unwrap();
    let req = || {
        Request::builder()
            .method("POST")
            .uri("/cache/purge")
            .header("host", "admin")
            .body(Full::new(Bytes::from(
                r#"{"prefix": "http://example.test/p/"}"#,
            )))
            .unwrap()
    };
    // The scan may still be running: retry (bounded) until it has learned the keys.
    let mut purged = 0;
    for _ in 0..100 {
        let r = H1::connect(&admin).await.send(req()).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        purged += r.json()["purged"].as_u64().unwrap();
        if purged >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(purged, 2);
    until("two files removed", || entries(&store).len() == 1).await;
    assert_eq!(x_cache(&fetch(&web, "/q/c").await), "HIT");
    assert_eq!(x_cache(&fetch(&web, "/p/a").await), "MISS");
    assert_eq!(origin.count("/p/a"), 2);
}

#[tokio::test]
async fn an_unsafe_method_removes_the_file_of_its_url() {
    let origin = Origin::start().await;
    let dir = temp_dir("cache-disk-invalidate");
    let store = dir.join("store");
    let gw = Portico::start_in(&dir, &config(&origin.addr, "{ path: store }"));
    let web = gw.addr("web");
    assert_eq!(x_cache(&fetch(&web, "/doc").await), "MISS");
    assert_eq!(x_cache(&fetch(&web, "/other").await), "MISS");
    until("the files", || entries(&store).len() == 2).await;
    let req = Request::builder()
        .method("PUT")
        .uri("/doc")
        .header("host", "example.test")
        .body(Full::new(Bytes::from_static(b"new")))
        .unwrap();
    let r = H1::connect(&web).await.send(req).await.unwrap();
    assert_eq!((r.status, x_cache(&r)), (200, "BYPASS"));
    until("the file of /doc removed", || entries(&store).len() == 1).await;
    let r = fetch(&web, "/doc").await;
    assert_eq!((x_cache(&r), r.body.as_str()), ("MISS", "/doc #3"));
    assert_eq!(x_cache(&fetch(&web, "/other").await), "HIT");
}

#[tokio::test]
async fn concurrent_misses_make_one_upstream_request_with_a_disk_store() {
    let origin = Origin::start().await;
    let dir = temp_dir("cache-disk-collapse");
    let conf = config(&origin.addr, "{ path: store }");
    let mut gw = Portico::start_in(&dir, &conf);
    let web = gw.addr("web");
    let many = |path: &'static str| {
        let web = web.clone();
        async move {
            let tasks: Vec<_> = (0..50)
                .map(|_| {
                    let web = web.clone();
                    tokio::spawn(async move { fetch(&web, path).await })
                })
                .collect();
            for t in tasks {
                let r = t.await.unwrap();
                assert_eq!(
                    (r.status, r.body.as_str()),
                    (200, format!("{path} #1").as_str())
                );
            }
        }
    };
    many("/slow/a").await;
    assert_eq!(origin.count("/slow/a"), 1);
    // A stale entry on disk, not in memory, after a restart: every miss of it reads the disk
    // first, and they still make one upstream request.
    assert_eq!(fetch(&web, "/slow/short").await.body, "/slow/short #1");
    until("the files", || entries(&dir.join("store")).len() == 2).await;
    assert!(gw.terminate(Duration::from_secs(10)).is_some());
    let gw = Portico::start_in(&dir, &conf);
    let web = gw.addr("web");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let web = web.clone();
            tokio::spawn(async move { fetch(&web, "/slow/short").await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "/slow/short #2");
    }
    assert_eq!(origin.count("/slow/short"), 2);
    assert_eq!(x_cache(&fetch(&web, "/slow/a").await), "HIT");
    assert_eq!(origin.count("/slow/a"), 1);
}

#[tokio::test]
async fn a_reload_keeps_the_disk_store_and_a_changed_plugin_reads_it() {
    let origin = Origin::start().await;
    let dir = temp_dir("cache-disk-reload");
    let store = dir.join("store");
    let gw = Portico::start_in(&dir, &config(&origin.addr, "{ path: store }"));
    let web = gw.addr("web");
    assert_eq!(x_cache(&fetch(&web, "/r").await), "MISS");
    until("the file", || entries(&store).len() == 1).await;
    // The same settings: the same stores.
    assert!(gw.reload(&format!("{}\n", config(&origin.addr, "{ path: store }"))));
    assert_eq!(x_cache(&fetch(&web, "/r").await), "HIT");
    // Other settings: a new (empty) memory store, the same disk store.
    assert!(gw.reload(&config(&origin.addr, "{ path: store, max_size: 512MiB }")));
    let r = fetch(&web, "/r").await;
    assert_eq!((x_cache(&r), r.body.as_str()), ("HIT", "/r #1"));
    assert_eq!(origin.count("/r"), 1);
    assert_eq!(x_cache(&fetch(&web, "/r2").await), "MISS");
    until("the second file", || entries(&store).len() == 2).await;
    // A folder that cannot be used refuses the reload; the running config stays.
    assert!(!gw.reload(&config(&origin.addr, "{ path: portico.yaml }")));
    assert_eq!(x_cache(&fetch(&web, "/r").await), "HIT");
}

#[test]
fn an_unusable_folder_is_a_config_error_at_its_line() {
    let dir = temp_dir("cache-disk-unusable");
    std::fs::write(dir.join("a-file"), b"").unwrap();
    let conf = config("127.0.0.1:1", "{ path: a-file/below }");
    let err = match Portico::try_start_in(&dir, &conf) {
        Ok(_) => panic!("portico started on an unusable cache folder"),
        Err(log) => log,
    };
    assert!(err.contains("portico.yaml:7:"), "{err}");
    assert!(err.contains("cache folder"), "{err}");
}

#[test]
fn two_cache_plugins_cannot_share_a_folder() {
    let dir = temp_dir("cache-disk-shared");
    let conf = "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: a
    match: { path_prefix: /a }
    plugins:
      - cache: { disk: { path: store } }
    respond: { status: 200 }
  - name: b
    plugins:
      - cache: { disk: { path: ./store/ } }
    respond: { status: 200 }
";
    let err = match Portico::try_start_in(&dir, conf) {
        Ok(_) => panic!("portico started with one cache folder for two plugins"),
        Err(log) => log,
    };
    assert!(err.contains("portico.yaml:11:"), "{err}");
    assert!(err.contains("is used by another `cache` plugin"), "{err}");
}
