//! `cluster.etcd` against a real etcd: three portico nodes run the shared config etcd holds,
//! a route written through one node's admin API serves on all three, conflicting writes on
//! two nodes lose nothing (one 412), an invalid config is refused by every node, and nodes
//! keep serving while etcd is away and catch up after, even past a compaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::admin_api::call;
use crate::support::etcd::Etcd;
use crate::support::{Portico, TestUpstream, fill, get};

fn node(etcd: &str, id: &str) -> String {
    fill(
        "\
workers: 1
admin: { listen: 127.0.0.1:0 }
cluster:
  node_id: @ID@
  etcd: { endpoints: [ '@ETCD@' ], timeout: 1s, lease_ttl: 3s }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
",
        &[("ETCD", etcd), ("ID", id)],
    )
}

fn shared(a: &str, b: &str) -> String {
    shared_with(a, b, "")
}

/// The shared config with route `a`, then `more` routes (YAML list items).
fn shared_with(a: &str, b: &str, more: &str) -> String {
    fill(
        "\
routes:
  - { name: a, match: { path_prefix: /a }, upstream: a }
@MORE@upstreams:
  a: { targets: [ { address: '@A@' } ] }
  b: { targets: [ { address: '@B@' } ] }
",
        &[("A", a), ("B", b), ("MORE", more)],
    )
}

fn admin(node: &Portico) -> String {
    node.admin.clone().expect("an admin address")
}

async fn health(node: &Portico) -> serde_json::Value {
    get(&admin(node), "/health").await.json()
}

/// Waits until `check` holds, or fails after `limit`; how long it took.
async fn until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn status_of(node: &Portico, path: &str) -> u16 {
    get(&node.addr("web"), path).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_run_the_config_in_etcd_and_writes_on_one_serve_on_all() {
    let etcd = Etcd::start();
    let a = TestUpstream::start("A").await;
    let b = TestUpstream::start("B").await;
    let revision = etcd.put("/portico/config", &shared(&a.addr(), &b.addr()));
    // n2 names a dead endpoint first: its calls fail over to the live one.
    let nodes: Vec<Portico> = (0..3)
        .map(|i| {
            let endpoints = match i {
                2 => format!(
                    "http://127.0.0.1:{}', '{}",
                    crate::support::free_port(),
                    etcd.url()
                ),
                _ => etcd.url(),
            };
            Portico::start(&node(&endpoints, &format!("n{i}")))
        })
        .collect();
    for node in &nodes {
        let reply = get(&node.addr("web"), "/a").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "A /a"));
        let health = health(node).await;
        assert_eq!(health["source"], "etcd", "{health}");
        assert_eq!(health["cluster"]["etcd"]["connected"], true, "{health}");
        assert_eq!(health["cluster"]["etcd"]["revision"], revision, "{health}");
    }

    // A route written through node 0 serves on all three.
    let route = r#"{ "match": { "path_prefix": "/b" }, "upstream": "b" }"#;
    let written = call(&admin(&nodes[0]), "PUT", "/routes/b", &[], route).await;
    assert_eq!(written.status, 201, "{}", written.body);
    let took = until(Duration::from_secs(5), "route b on every node", || async {
        let mut all = true;
        for node in &nodes {
            all &= status_of(node, "/b").await == 200;
        }
        all
    })
    .await;
    println!("a route written on one node served on all three after {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (text, _) = etcd.get("/portico/config").expect("the config in etcd");
    assert!(text.contains("\"b\""), "{text}");

    // Every node lists the three, on one revision.
    let listed = until(
        Duration::from_secs(5),
        "three nodes on one revision",
        || async {
            let nodes = get(&admin(&nodes[0]), "/cluster/nodes").await.json();
            nodes["nodes"].as_array().is_some_and(|l| l.len() == 3)
                && nodes["all_same_revision"] == true
        },
    )
    .await;
    println!("node list agreed after {listed:?}");
    let list = get(&admin(&nodes[2]), "/cluster/nodes").await.json();
    let ids: Vec<&str> = list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["n0", "n1", "n2"], "{list}");
    assert_eq!(list["nodes"][1]["address"], admin(&nodes[1]), "{list}");

    // Two admins, two nodes, one base: one write applies, the other is told (412).
    let etag = |node: &Portico| {
        let admin = admin(node);
        async move {
            get(&admin, "/config")
                .await
                .header("etag")
                .unwrap()
                .to_owned()
        }
    };
    let (tag1, tag2) = (etag(&nodes[1]).await, etag(&nodes[2]).await);
    let (admin1, admin2) = (admin(&nodes[1]), admin(&nodes[2]));
    let (match1, match2) = ([("if-match", tag1.as_str())], [("if-match", tag2.as_str())]);
    let one = call(
        &admin1,
        "PUT",
        "/routes/c1",
        &match1,
        r#"{ "match": { "path": "/c1" }, "upstream": "a" }"#,
    );
    let two = call(
        &admin2,
        "PUT",
        "/routes/c2",
        &match2,
        r#"{ "match": { "path": "/c2" }, "upstream": "b" }"#,
    );
    let (one, two) = tokio::join!(one, two);
    let mut statuses = [one.status, two.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 412], "{} / {}", one.body, two.body);
    let (text, _) = etcd.get("/portico/config").unwrap();
    assert_eq!(
        [text.contains("\"c1\""), text.contains("\"c2\"")],
        [one.status == 201, two.status == 201],
        "{text}"
    );
    // The loser retries on a fresh read and both stand.
    let (loser, path, upstream) = if one.status == 412 {
        (&nodes[1], "c1", "a")
    } else {
        (&nodes[2], "c2", "b")
    };
    until(
        Duration::from_secs(5),
        "the loser's node catches up",
        || async {
            health(loser).await["cluster"]["etcd"]["revision"]
                == health(&nodes[0]).await["cluster"]["etcd"]["revision"]
        },
    )
    .await;
    let tag = etag(loser).await;
    let body = format!(r#"{{ "match": {{ "path": "/{path}" }}, "upstream": "{upstream}" }}"#);
    let retried = call(
        &admin(loser),
        "PUT",
        &format!("/routes/{path}"),
        &[("if-match", &tag)],
        &body,
    )
    .await;
    assert_eq!(retried.status, 201, "{}", retried.body);
    until(
        Duration::from_secs(5),
        "c1 and c2 on every node",
        || async {
            let mut all = true;
            for node in &nodes {
                all &= status_of(node, "/c1").await == 200 && status_of(node, "/c2").await == 200;
            }
            all
        },
    )
    .await;

    // PUT /config takes the shared config alone: node sections are refused at their line.
    let whole = call(
        &admin(&nodes[2]),
        "PUT",
        "/config",
        &[],
        "routes: []\nlisteners: []\n",
    )
    .await;
    assert_eq!(whole.status, 400, "{}", whole.body);
    assert!(
        whole.body.contains("body:2:1") && whole.body.contains("node-specific"),
        "{}",
        whole.body
    );
    let (before, _) = etcd.get("/portico/config").unwrap();
    let replaced = format!("{before}\n");
    let whole = call(&admin(&nodes[2]), "PUT", "/config", &[], &replaced).await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    assert_eq!(etcd.get("/portico/config").unwrap().0, replaced);

    // An invalid config in etcd: every node refuses it, says why and keeps serving.
    let bad = etcd.put(
        "/portico/config",
        "routes:\n  - { name: a, match: { path_prefix: /a }, upstream: nowhere }\n",
    );
    for node in &nodes {
        until(Duration::from_secs(5), "the refusal in /health", || async {
            health(node).await["cluster"]["etcd"]["refused_revision"] == bad
        })
        .await;
        let health = health(node).await;
        let reason = health["cluster"]["etcd"]["refused_reason"]
            .as_str()
            .unwrap();
        assert!(reason.contains("nowhere"), "{reason}");
        assert!(reason.contains(&format!("revision {bad}")), "{reason}");
        assert_eq!(status_of(node, "/b").await, 200);
    }
    until(Duration::from_secs(5), "n0 listed degraded", || async {
        let list = get(&admin(&nodes[0]), "/cluster/nodes").await.json();
        list["nodes"][0]["health"] == "degraded"
    })
    .await;
    // A node that stops leaves the list at once (before its lease would expire).
    let mut nodes = nodes;
    let mut gone = nodes.pop().unwrap();
    gone.terminate(Duration::from_secs(10));
    let list = get(&admin(&nodes[0]), "/cluster/nodes").await.json();
    assert_eq!(list["nodes"].as_array().unwrap().len(), 2, "{list}");

    // Node-specific sections never come from etcd.
    let node_section = etcd.put("/portico/config", "listeners: []\n");
    until(Duration::from_secs(5), "a node section refused", || async {
        health(&nodes[1]).await["cluster"]["etcd"]["refused_revision"] == node_section
    })
    .await;
    assert_eq!(status_of(&nodes[1], "/b").await, 200);

    // SIGHUP re-reads the node's own file and keeps the shared config in force.
    let more = node(&etcd.url(), "n1").replace(
        "listeners:\n",
        "listeners:\n  - { name: web2, bind: 127.0.0.1:0 }\n",
    );
    assert!(nodes[1].reload(&more), "{}", nodes[1].log_text());
    let reply = get(&nodes[1].bound("web2").unwrap(), "/b").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "B /b"));
    assert_eq!(health(&nodes[1]).await["source"], "etcd");
}

/// A TCP relay to etcd that the test can cut (closing what it relays and refusing new
/// connections) and mend: one node losing etcd while the others do not.
struct Relay {
    addr: String,
    cut: Arc<AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    async fn start(to: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let (cuts, _) = tokio::sync::watch::channel(0u64);
        let (flag, watch) = (Arc::clone(&cut), cuts.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if flag.load(Ordering::SeqCst) {
                    continue;
                }
                let to = to.clone();
                let mut cut_now = watch.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_now.changed() => {}
                    }
                });
            }
        });
        Relay { addr, cut, cuts }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_keep_serving_without_etcd_and_catch_up_after_it_and_after_a_compaction() {
    let mut etcd = Etcd::start();
    let a = TestUpstream::start("A").await;
    let b = TestUpstream::start("B").await;
    etcd.put("/portico/config", &shared(&a.addr(), &b.addr()));
    let relay = Relay::start(format!("127.0.0.1:{}", etcd.port)).await;
    let direct = Portico::start(&node(&etcd.url(), "direct"));
    let relayed = Portico::start(&node(&format!("http://{}", relay.addr), "relayed"));
    for node in [&direct, &relayed] {
        assert_eq!(status_of(node, "/a").await, 200);
    }
    // A node that keeps a copy of the config it runs (cluster.etcd.cache).
    let cached_dir = crate::support::temp_dir("etcd-cache");
    let cached_config = node(&etcd.url(), "cached").replace(
        "lease_ttl: 3s }",
        "lease_ttl: 3s, cache: last-config.yaml }",
    );
    let mut cached = Portico::start_in(&cached_dir, &cached_config);
    assert_eq!(status_of(&cached, "/a").await, 200);
    let kept = std::fs::read_to_string(cached_dir.join("last-config.yaml")).unwrap();
    assert!(kept.contains("name: a"), "{kept}");

    // etcd stopped: both keep serving and say so.
    etcd.kill();
    for node in [&direct, &relayed] {
        until(
            Duration::from_secs(10),
            "disconnected in /health",
            || async { health(node).await["cluster"]["etcd"]["connected"] == false },
        )
        .await;
        assert_eq!(status_of(node, "/a").await, 200);
        let metrics = get(&admin(node), "/metrics").await.body;
        assert!(
            metrics.contains("portico_cluster_etcd_connected 0"),
            "{metrics}"
        );
        let refused = call(
            &admin(node),
            "PUT",
            "/routes/x",
            &[],
            r#"{ "upstream": "a" }"#,
        )
        .await;
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert_eq!(refused.json()["error"], "cluster_unavailable");
    }

    // Started again while etcd is away, it serves the copy it kept.
    cached.terminate(Duration::from_secs(10));
    let cached = Portico::start_in(&cached_dir, &cached_config);
    assert_eq!(status_of(&cached, "/a").await, 200);
    let seen = health(&cached).await;
    assert_eq!(seen["cluster"]["etcd"]["connected"], false, "{seen}");
    assert_eq!(seen["source"], "etcd", "{seen}");
    assert!(cached.wait_log("serving the copy kept", Duration::from_secs(1)));

    // Restarted: a change made meanwhile reaches every node.
    etcd.restart();
    let with_b = shared_with(
        &a.addr(),
        &b.addr(),
        "  - { name: b, match: { path_prefix: /b }, upstream: b }\n",
    );
    let revision = etcd.put("/portico/config", &with_b);
    for node in [&direct, &relayed, &cached] {
        until(
            Duration::from_secs(15),
            "caught up after etcd came back",
            || async { status_of(node, "/b").await == 200 },
        )
        .await;
        assert_eq!(health(node).await["cluster"]["etcd"]["revision"], revision);
    }

    // One node cut off while the config moves on and the history is compacted past it.
    relay.cut();
    until(
        Duration::from_secs(10),
        "the relayed node disconnected",
        || async { health(&relayed).await["cluster"]["etcd"]["connected"] == false },
    )
    .await;
    etcd.put("/portico/config", &shared(&a.addr(), &b.addr()));
    let last = etcd.put("/portico/config", &with_b.replace("/b", "/c"));
    etcd.compact(last);
    relay.mend();
    until(
        Duration::from_secs(15),
        "caught up past the compaction",
        || async { status_of(&relayed, "/c").await == 200 },
    )
    .await;
    assert_eq!(status_of(&relayed, "/b").await, 404);
    assert_eq!(health(&relayed).await["cluster"]["etcd"]["revision"], last);
    assert!(
        relayed.wait_log("compacted", Duration::from_secs(1)),
        "{}",
        relayed.log_text()
    );
    assert_eq!(status_of(&direct, "/c").await, 200);
}

#[test]
fn config_push_pull_history_and_plan_move_the_shared_config_through_etcd() {
    let etcd = Etcd::start();
    let dir = crate::support::temp_dir("etcd-cli");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let node = write("node.yaml", &node(&etcd.url(), "n0"));
    let v1 = write(
        "v1.yaml",
        "routes:\n  - { name: a, match: { path: /a }, respond: { status: 200, body: one } }\n",
    );
    let v2 = write(
        "v2.yaml",
        "routes:\n  - { name: a, match: { path: /a }, respond: { status: 200, body: two } }\n  \
         - { name: b, match: { path: /b }, respond: { status: 204 } }\n",
    );
    let dangling = write(
        "bad.yaml",
        "routes:\n  - { name: a, match: { path: /a }, upstream: nowhere }\n",
    );
    let node_only = write("listeners.yaml", "listeners: []\n");

    // The node file names etcd; a push is checked before it is written.
    let (code, out, err) = crate::support::cli(&["config", "push", &v1, "--config", &node]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revision"), "{out}");
    let (_, first) = etcd.get("/portico/config").unwrap();
    let (code, _, err) = crate::support::cli(&["config", "push", &dangling, "--etcd", &etcd.url()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.yaml:2:") && err.contains("nowhere"),
        "{err}"
    );
    let (code, _, err) =
        crate::support::cli(&["config", "push", &node_only, "--etcd", &etcd.url()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("listeners.yaml:1:1: `listeners` is node-specific"),
        "{err}"
    );
    assert_eq!(
        etcd.get("/portico/config").unwrap().1,
        first,
        "nothing written"
    );

    // plan against etcd labels each change.
    let (code, out, err) = crate::support::cli(&["plan", "--config", &v2, "--node", &node]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("revision {first}")), "{out}");
    assert!(
        out.contains("+ route b") && out.contains("~ route a"),
        "{out}"
    );

    // A guarded push refuses when someone wrote meanwhile.
    let stale = (first - 1).to_string();
    let (code, _, err) = crate::support::cli(&[
        "config",
        "push",
        &v2,
        "--config",
        &node,
        "--if-revision",
        &stale,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no longer at revision"), "{err}");
    let current = first.to_string();
    let (code, _, err) = crate::support::cli(&[
        "config",
        "push",
        &v2,
        "--config",
        &node,
        "--if-revision",
        &current,
    ]);
    assert_eq!(code, 0, "{err}");

    // pull gives back what was pushed, now and at the first revision; history lists both.
    let (code, out, _) = crate::support::cli(&["config", "pull", "--config", &node]);
    assert_eq!(
        (code, out.as_str()),
        (0, std::fs::read_to_string(&v2).unwrap().as_str())
    );
    let (code, out, _) =
        crate::support::cli(&["config", "pull", "--config", &node, "--revision", &current]);
    assert_eq!(
        (code, out.as_str()),
        (0, std::fs::read_to_string(&v1).unwrap().as_str())
    );
    let (code, out, _) = crate::support::cli(&["config", "history", "--config", &node]);
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(
        rows[0].contains("routes 2") && rows[1].contains("routes 1"),
        "{out}"
    );
    assert_eq!(rows[2], "(the first version)");

    // Without etcd: a clear error, exit 1.
    let (code, _, err) = crate::support::cli(&["config", "pull", "--etcd", "http://127.0.0.1:9"]);
    assert_eq!(code, 1);
    assert!(err.contains("etcd is unreachable"), "{err}");
}

#[test]
fn the_dashboard_lists_the_nodes_and_shows_etcd_lost() {
    use std::io::{BufRead, BufReader, Write};
    let mut etcd = Etcd::start();
    etcd.put("/portico/config", "routes: []\n");
    let nodes: Vec<Portico> = (0..2)
        .map(|i| Portico::start(&node(&etcd.url(), &format!("d{i}"))))
        .collect();
    let mut child = crate::dashboard::browser_script("dashboard_cluster.mjs")
        .args([format!("http://{}/", admin(&nodes[0])), "2".to_owned()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || -> serde_json::Value {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the page answers");
        serde_json::from_str(&line).unwrap()
    };
    let listed = next();
    assert_eq!(listed["step"], "listed", "{listed}");
    let text = listed["nodes"].as_str().unwrap();
    assert!(text.contains("d0") && text.contains("d1"), "{text}");
    assert!(
        listed["etcd"].as_str().unwrap().contains("connected"),
        "{listed}"
    );

    etcd.kill();
    writeln!(stdin, "go").unwrap();
    let lost = next();
    assert_eq!(lost["step"], "lost", "{lost}");
    assert_eq!(lost["pageErrors"], serde_json::json!([]), "{lost}");
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_runs_the_file_until_the_first_write_puts_it_in_etcd() {
    let etcd = Etcd::start();
    let bootstrap = format!(
        "{}routes:\n  - {{ name: ping, match: {{ path: /ping }}, respond: {{ status: 200, body: pong }} }}\n",
        node(&etcd.url(), "first")
    );
    let first = Portico::start(&bootstrap);
    assert_eq!(get(&first.addr("web"), "/ping").await.body, "pong");
    assert!(etcd.get("/portico/config").is_none());
    assert_eq!(health(&first).await["cluster"]["etcd"]["revision"], 0);

    // The first write creates the key from the file's shared sections and the change.
    let written = call(
        &admin(&first),
        "PUT",
        "/routes/pong",
        &[],
        r#"{ "match": { "path": "/pong" }, "respond": { "status": 200, "body": "ping" } }"#,
    )
    .await;
    assert_eq!(written.status, 201, "{}", written.body);
    let (text, revision) = etcd.get("/portico/config").expect("created");
    assert!(
        text.contains("\"ping\"") && text.contains("\"pong\""),
        "{text}"
    );
    assert!(!text.contains("listeners"), "{text}");
    assert_eq!(
        health(&first).await["cluster"]["etcd"]["revision"],
        revision
    );

    // A node joining later runs it, whatever its own file says.
    let second = Portico::start(&node(&etcd.url(), "second"));
    assert_eq!(get(&second.addr("web"), "/ping").await.body, "pong");
    assert_eq!(get(&second.addr("web"), "/pong").await.body, "ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_under_its_own_prefix_reads_and_writes_only_there() {
    let etcd = Etcd::start();
    etcd.put(
        "/portico/config",
        "routes:\n  - { name: other, respond: { status: 200, body: other-cluster } }\n",
    );
    etcd.put(
        "/shop/config",
        "routes:\n  - { name: shop, match: { path: /s }, respond: { status: 200, body: shop } }\n",
    );
    let shop = Portico::start(
        &node(&etcd.url(), "s0").replace("lease_ttl: 3s }", "lease_ttl: 3s, prefix: /shop/ }"),
    );
    assert_eq!(get(&shop.addr("web"), "/s").await.body, "shop");
    let written = call(
        &admin(&shop),
        "PUT",
        "/routes/t",
        &[],
        r#"{ "match": { "path": "/t" }, "respond": { "status": 200, "body": "t" } }"#,
    )
    .await;
    assert_eq!(written.status, 201, "{}", written.body);
    assert!(etcd.get("/shop/config").unwrap().0.contains("\"t\""));
    assert!(!etcd.get("/portico/config").unwrap().0.contains("\"t\""));
    let list = get(&admin(&shop), "/cluster/nodes").await.json();
    assert_eq!(list["nodes"][0]["id"], "s0", "{list}");
    let (code, out, _) = crate::support::cli(&[
        "config",
        "pull",
        "--etcd",
        &etcd.url(),
        "--prefix",
        "/shop/",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("\"t\""), "{out}");
}
