//! The access log's field set, written when the answer ends; SIGUSR1 reopens a log file;
//! and the upstream, TLS and plugin series of /metrics.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::client::get;
use crate::support::fill;
use crate::support::pki::Ca;
use crate::support::portico::{Portico, temp_dir};
use crate::support::upstream::TestUpstream;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Runs curl off the test's runtime, which also serves the upstream.
async fn curl(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(&args)
            .output()
            .expect("curl")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn lines_carry_bytes_durations_tls_and_the_trace_id() {
    let up = TestUpstream::start("A").await;
    let dir = temp_dir("access-log");
    let ca = Ca::new(&dir, "access log CA");
    let pair = ca.leaf("a", "a.test", &["a.test"], false, false);
    let gw = Portico::start_in(
        &dir,
        &fill(
            "\
workers: 1
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
  - name: secure
    bind: 127.0.0.1:0
    protocol: https
    tls: { certificates: [ { cert_file: '@CERT@', key_file: '@KEY@' } ] }
consumers:
  - { name: alice, api_keys: [alice-secret-key] }
routes:
  - name: locked
    match: { path_prefix: /locked }
    upstream: u
    plugins: [ { key_auth: {} } ]
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
",
            &[
                ("UP", &up.addr()),
                ("CERT", &pair.cert()),
                ("KEY", &pair.key()),
            ],
        ),
    );
    let web = gw.addr("web");
    let secure = gw.addr("secure");
    let port = secure.rsplit(':').next().unwrap().to_owned();
    let body = "b".repeat(1000);
    let echoed = curl(&[
        "--cacert",
        &ca.cert_path().display().to_string(),
        "--resolve",
        &format!("a.test:{port}:127.0.0.1"),
        "-H",
        &format!("traceparent: {TRACEPARENT}"),
        "--data-binary",
        &body,
        &format!("https://a.test:{port}/echo"),
    ])
    .await;
    assert_eq!(echoed.len(), 1000, "{echoed}");
    let line = gw.access_entry("/echo");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["bytes_in"], 1000, "{line}");
    assert_eq!(line["bytes_out"], 1000, "{line}");
    assert_eq!(line["tls_version"], "TLSv1.3", "{line}");
    assert_eq!(line["sni"], "a.test", "{line}");
    assert_eq!(
        line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{line}"
    );
    assert_eq!(line["route"], "all");
    assert_eq!(line["target"], up.addr().as_str());
    let (head, upstream, total) = (
        line["head_ms"].as_f64().unwrap(),
        line["upstream_ms"].as_f64().unwrap(),
        line["duration_ms"].as_f64().unwrap(),
    );
    assert!(
        0.0 < upstream && upstream <= head && head <= total,
        "{line}"
    );
    assert!(line.get("aborted").is_none(), "{line}");

    // A streamed answer: counted as it is sent, the line written at its end.
    let big = get(&web, "/big/300000").await;
    assert_eq!(big.body.len(), 300_000);
    let line = gw.access_entry("/big/300000");
    assert_eq!(line["bytes_out"], 300_000, "{line}");
    assert_eq!(line["bytes_in"], 0, "{line}");
    assert_eq!(line["tls_version"], serde_json::Value::Null, "{line}");
    assert_eq!(line["trace_id"], serde_json::Value::Null, "{line}");

    // A plugin's refusal names the plugin, and no try was sent.
    let refused = get(&web, "/locked").await;
    assert_eq!(refused.status, 401);
    let line = gw.access_entry("/locked");
    assert_eq!(line["answered_by"], "key_auth", "{line}");
    assert_eq!(line["attempts"], 0, "{line}");
    assert_eq!(line["upstream_ms"], serde_json::Value::Null, "{line}");

    // A handshake that fails: a TLS record header and nothing sensible after it.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(&secure).await.unwrap();
        raw.write_all(b"\x16\x03\x01\x00\x05hello").await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest)).await;
    }

    let admin = gw.admin.clone().unwrap();
    let target = up.addr();
    let want = [
        r#"portico_tls_handshakes_total{listener="secure",result="ok"} 1"#.to_owned(),
        r#"portico_tls_handshakes_total{listener="secure",result="failed"} 1"#.to_owned(),
        format!(
            r#"portico_upstream_requests_total{{upstream="u",target="{target}",outcome="2xx"}} 2"#
        ),
        format!(r#"portico_upstream_connections{{upstream="u",target="{target}",state="open"}}"#),
        format!(r#"portico_upstream_connections{{upstream="u",target="{target}",state="idle"}}"#),
        format!(r#"portico_upstream_in_flight{{upstream="u",target="{target}"}} 0"#),
        r#"portico_plugin_answers_total{route="locked",plugin="key_auth",status="401"} 1"#
            .to_owned(),
        "portico_access_log_dropped_total 0".to_owned(),
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = get(&admin, "/metrics").await.body;
        let missing: Vec<_> = want.iter().filter(|w| !text.contains(w.as_str())).collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "missing {missing:?} in\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_failing_target_is_counted_by_outcome() {
    // A port nobody listens on: every try is a connect failure.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = closed.local_addr().unwrap().to_string();
    drop(closed);
    let gw = Portico::start(&fill(
        "\
workers: 1
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@GONE@' } ] }
",
        &[("GONE", &gone)],
    ));
    let answer = get(&gw.addr("web"), "/x").await;
    assert_eq!(answer.status, 502);
    // The default retry policy tries a connect failure again.
    let tries = gw.access_entry("/x")["attempts"].as_u64().unwrap();
    assert_eq!(tries, 2);
    let text = get(gw.admin.as_ref().unwrap(), "/metrics").await.body;
    let series = format!(
        r#"portico_upstream_requests_total{{upstream="u",target="{gone}",outcome="connect_failure"}} {tries}"#
    );
    assert!(text.contains(&series), "{series} in\n{text}");
    assert!(!text.contains(r#"outcome="2xx""#), "{text}");
}

#[tokio::test]
async fn sigusr1_reopens_a_moved_log_file() {
    let up = TestUpstream::start("A").await;
    let dir = temp_dir("access-reopen");
    let path = dir.join("access.log");
    let moved = dir.join("access.log.1");
    let gw = Portico::start_in(
        &dir,
        &fill(
            "\
workers: 1
access_log: { path: '@LOG@' }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
",
            &[("UP", &up.addr()), ("LOG", &path.display().to_string())],
        ),
    );
    let web = gw.addr("web");
    let wait_for = |file: &std::path::Path, needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{} never held {needle}: {text}",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    assert_eq!(get(&web, "/before").await.status, 200);
    wait_for(&path, "\"/before\"");
    std::fs::rename(&path, &moved).unwrap();
    gw.signal("USR1");
    assert!(gw.wait_log("reopening the access log", Duration::from_secs(5)));
    assert_eq!(get(&web, "/after").await.status, 200);
    let fresh = wait_for(&path, "\"/after\"");
    assert!(!fresh.contains("/before"), "{fresh}");
    let old = std::fs::read_to_string(&moved).unwrap();
    assert!(old.contains("/before") && !old.contains("/after"), "{old}");
}
