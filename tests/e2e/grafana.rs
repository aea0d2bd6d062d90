//! The Grafana dashboard and Prometheus scrape example in docs/grafana/ name only metrics that
//! portico exposes.

use std::collections::BTreeSet;
use std::path::Path;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{H1, Portico, TestUpstream, fill, get};

const CONFIG: &str = "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
  - name: strict
    bind: 127.0.0.1:0
    limits: { connections_per_ip: 1, requests_per_ip: { limit: 1, window: 1m } }
  - { name: pg, bind: 127.0.0.1:0, protocol: tcp, upstream: app }
routes:
  - name: app
    listeners: [web, strict]
    upstream: app
    plugins: [ { rate_limit: { limit: 1, window: 1m } } ]
  - name: cached
    listeners: [web]
    match: { path_prefix: /c }
    upstream: app
    plugins: [ { cache: { ttl: 60s } } ]
upstreams:
  app: { targets: [ { address: '@A@' } ] }
";

/// Every `portico_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("portico_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        names.insert(text[start..end].to_owned());
        i = end;
    }
    names
}

/// The metric families `/metrics` declares (`# TYPE NAME kind`).
fn families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The family a series name belongs to (`_total` of a counter, `_bucket` of a histogram...).
fn family_of<'a>(name: &'a str, declared: &BTreeSet<String>) -> Option<&'a str> {
    if declared.contains(name) {
        return Some(name);
    }
    ["_total", "_bucket", "_sum", "_count", "_created"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| declared.contains(*base))
}

#[tokio::test]
async fn the_grafana_dashboard_uses_only_exposed_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana");
    let dashboard = std::fs::read_to_string(root.join("portico.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut queries = String::new();
    for panel in parsed["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel without a query: {panel}");
        for target in targets {
            queries.push_str(target["expr"].as_str().unwrap());
            queries.push('\n');
        }
    }
    for variable in parsed["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"].as_str() {
            queries.push_str(query);
            queries.push('\n');
        }
    }
    let used = metric_names(&queries);
    assert!(used.len() >= 12, "{used:?}");

    // Traffic that makes every series the dashboard reads.
    let a = TestUpstream::start("A").await;
    let config = fill(CONFIG, &[("A", &a.addr())]);
    let gw = Portico::start(&config);
    let web = gw.addr("web");
    assert_eq!(get(&web, "/").await.status, 200);
    assert_eq!(get(&web, "/").await.status, 429, "rate_limit");
    assert_eq!(get(&web, "/c").await.status, 200, "cache");
    let mut held = H1::connect(&gw.addr("strict")).await;
    held.get("x", "/").await;
    assert_eq!(held.get("x", "/").await.status, 429, "requests_per_ip");
    let mut second = tokio::net::TcpStream::connect(gw.addr("strict"))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "connections_per_ip"
    );
    let mut relayed = tokio::net::TcpStream::connect(gw.addr("pg")).await.unwrap();
    relayed
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), relayed.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "layer 4 relay");
    drop(relayed);
    assert!(gw.reload(&config), "{}", gw.log_text());
    let admin = gw.admin.clone().unwrap();
    // Layer 4 byte counts are written when the relay ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    let exposition = loop {
        let text = get(&admin, "/metrics").await.body;
        if text.contains("portico_l4_bytes_total") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let declared = families(&exposition);
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| family_of(name, &declared).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses metrics portico does not expose: {missing:?}\nexposed: {declared:?}"
    );
    // The request the test made is in the series the first panels read.
    assert!(
        exposition.contains("portico_requests_total{listener=\"web\",route=\"app\""),
        "{exposition}"
    );
    assert!(
        exposition.contains(
            "portico_request_duration_seconds_bucket{le=\"0.0001\",route=\"app\",upstream=\"app\"}"
        ),
        "{exposition}"
    );

    // The scrape example reads the admin API's /metrics, which the dashboard's `job` names.
    let scrape = std::fs::read_to_string(root.join("prometheus.yml")).unwrap();
    assert!(scrape.contains("job_name: portico"), "{scrape}");
    assert!(scrape.contains("metrics_path: /metrics"), "{scrape}");
}
