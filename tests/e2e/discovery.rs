//! DNS targets, the admin targets view, and real curl against the quickstart shape.

use std::process::Command;
use std::time::Duration;

use crate::support::{Portico, TestUpstream, get};

#[tokio::test]
async fn dns_targets_resolve_and_show_in_admin() {
    let a = TestUpstream::start("A").await;
    let port = a.addr.port();
    let gw = Portico::start(&format!(
        "\
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - {{ name: web, bind: 127.0.0.1:0 }}
routes:
  - {{ name: all, upstream: named }}
upstreams:
  named:
    resolve_every: 1s
    targets: [ {{ address: 'localhost:{port}' }} ]
"
    ));
    let reply = get(&gw.addr("web"), "/dns").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("x-upstream"), Some("A"));
    let targets = get(gw.admin.as_deref().unwrap(), "/upstreams/named/targets")
        .await
        .json();
    let target = &targets["targets"][0];
    assert_eq!(target["address"], format!("localhost:{port}"));
    let resolved: Vec<String> = target["resolved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(
        resolved.contains(&format!("127.0.0.1:{port}")),
        "{resolved:?}"
    );
    assert!(
        target["idle_connections"].as_u64().unwrap() >= 1,
        "{targets}"
    );
    // Re-resolution keeps working and keeps the same answer.
    assert!(gw.wait_log("target resolved", Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get(&gw.addr("web"), "/dns").await.status, 200);
}

#[test]
fn curl_sees_round_robin_over_http1_and_h2c() {
    let quickstart = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart.yaml"
    ))
    .unwrap();
    // The quickstart's fixed ports may be taken on a test machine: move them to free ones.
    let mut config = quickstart;
    for port in ["8080", "9001", "9002", "9003", "9901"] {
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        config = config.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{free}"));
    }
    let gw = Portico::start(&config);
    let url = format!("http://{}/", gw.addr("web"));
    let mut bodies = Vec::new();
    for flag in ["--http1.1", "--http2-prior-knowledge", "--http1.1"] {
        let out = Command::new("curl")
            .args(["-s", "-i", flag, &url])
            .output()
            .expect("curl is installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.to_ascii_lowercase().contains("x-served-by: portico"),
            "{text}"
        );
        bodies.push(text.lines().last().unwrap_or_default().to_owned());
    }
    assert_eq!(
        bodies,
        [
            "hello from backend 1",
            "hello from backend 2",
            "hello from backend 3"
        ]
    );
}
