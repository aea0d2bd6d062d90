//! ACME in a cluster: three portico nodes on one real etcd and one pebble. One node orders
//! each certificate, under the lock in etcd, and stores it sealed; every node serves it; a
//! node started later takes it from etcd without ordering; a restart keeps it.
//!
//! Pebble validates on fixed ports (`httpPort`, `tlsPort`), so a fourth portico in front
//! spreads those connections over the nodes (L4, round robin), like a load balancer before
//! a cluster: each challenge is answered by whichever node the CA reaches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::acme::{Pebble, pebble_directory, pebble_root, start_pebble_on};
use crate::support::etcd::Etcd;
use crate::support::pki::{self, Ca};
use crate::support::{Portico, fill, free_port, temp_dir};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

const NODE: &str = "\
workers: 1
admin: { listen: 127.0.0.1:0 }
cluster:
  node_id: @ID@
  etcd:
    endpoints: ['@ETCD@']
    prefix: /acme-e2e/
    lease_ttl: 3s
    secret_key: '${PORTICO_CLUSTER_KEY}'
listeners:
  - name: alpn
    bind: 127.0.0.1:@ALPN@
    protocol: https
    tls:
      acme:
        directory: '@DIR@'
        directory_ca_file: '@CA@'
        domains: [alpn.cluster.test]
        renew_before: @RENEW@
        check_every: 1s
  - name: viahttp
    bind: 127.0.0.1:0
    protocol: https
    tls:
      acme:
        directory: '@DIR@'
        directory_ca_file: '@CA@'
        domains: [http.cluster.test]
        challenge: http_01
        renew_before: @RENEW@
        check_every: 1s
  - { name: web, bind: 127.0.0.1:@WEB@ }
routes:
  - { name: hello, respond: { status: 200, body: secured } }
";

struct Node {
    dir: std::path::PathBuf,
    config: String,
}

impl Node {
    fn new(id: &str, etcd: &Etcd, directory: &str, ca: &Ca, renew: &str) -> Self {
        let config = fill(
            NODE,
            &[
                ("ID", id),
                ("ETCD", &etcd.url()),
                ("DIR", directory),
                ("CA", &ca.cert_path().display().to_string()),
                ("ALPN", &free_port().to_string()),
                ("WEB", &free_port().to_string()),
                ("RENEW", renew),
            ],
        );
        Node {
            dir: temp_dir(&format!("acme-cluster-{id}")),
            config,
        }
    }

    fn start(&self) -> Portico {
        Portico::start_in_env(&self.dir, &self.config, &[("PORTICO_CLUSTER_KEY", KEY)])
    }
}

/// The serial of the certificate `addr` serves for `name`, once it serves one.
async fn serial(addr: &str, name: &str, client: &Arc<rustls::ClientConfig>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(stream) = pki::connect(addr, name, Arc::clone(client)).await {
            assert_eq!(pki::peer_names(&stream), vec![name.to_owned()]);
            let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
            let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
            return cert.raw_serial_as_string();
        }
        assert!(
            Instant::now() < deadline,
            "{addr} serves no certificate for {name}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn logs(nodes: &[Portico]) -> String {
    nodes
        .iter()
        .map(Portico::log_text)
        .collect::<Vec<_>>()
        .join("\n----\n")
}

/// How many certificates pebble (logging in `dir`) issued.
fn issued(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("pebble.log"))
        .unwrap()
        .matches("Issued certificate serial")
        .count()
}

fn orders(nodes: &[&Portico]) -> usize {
    nodes
        .iter()
        .map(|n| n.count_lines("ordering a certificate for the cluster"))
        .sum()
}

/// Three nodes on one etcd, the L4 front, and pebble, started in that order.
struct Rig {
    dir: std::path::PathBuf,
    ca: Ca,
    etcd: Etcd,
    directory: String,
    specs: Vec<Node>,
    nodes: Vec<Portico>,
    front: Portico,
    pebble: Pebble,
}

impl Rig {
    fn start(tag: &str, renew: &str) -> Self {
        let dir = temp_dir(tag);
        let ca = Ca::new(&dir, "directory CA");
        let etcd = Etcd::start();
        let (http_port, tls_port, directory_port) = (free_port(), free_port(), free_port());
        let directory = pebble_directory(directory_port);
        let specs: Vec<Node> = ["n1", "n2", "n3"]
            .iter()
            .map(|id| Node::new(id, &etcd, &directory, &ca, renew))
            .collect();
        // The nodes start before the CA does: their first tries fail before any order, and
        // they try again (one at a time, under the lock) once pebble answers.
        let nodes: Vec<Portico> = specs.iter().map(Node::start).collect();
        let targets = |listener: &str| {
            nodes
                .iter()
                .map(|n| format!("{{ address: '{}' }}", n.addr(listener)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let front = Portico::start(&fill(
            "\
listeners:
  - { name: alpn, bind: 127.0.0.1:@TLS@, protocol: tcp, upstream: alpn }
  - { name: http, bind: 127.0.0.1:@HTTP@, protocol: tcp, upstream: http }
upstreams:
  alpn: { targets: [ @ALPN@ ] }
  http: { targets: [ @WEB@ ] }
",
            &[
                ("TLS", &tls_port.to_string()),
                ("HTTP", &http_port.to_string()),
                ("ALPN", &targets("alpn")),
                ("WEB", &targets("web")),
            ],
        ));
        let pebble = start_pebble_on(&dir, &ca, http_port, tls_port, directory_port);
        Rig {
            dir,
            ca,
            etcd,
            directory,
            specs,
            nodes,
            front,
            pebble,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_orders_and_every_node_serves_the_certificate() {
    let Rig {
        dir,
        ca,
        etcd,
        directory,
        specs,
        nodes,
        front,
        pebble,
    } = Rig::start("acme-cluster", "30d");

    // Both certificates end up served by all three nodes.
    let deadline = Instant::now() + Duration::from_secs(90);
    let ready = |n: &Portico| {
        n.count_lines("certificate issued")
            + n.count_lines("serving the certificate stored in etcd")
    };
    while nodes.iter().map(ready).sum::<usize>() < 6 {
        assert!(
            Instant::now() < deadline,
            "not every node got both certificates:\n{}",
            logs(&nodes)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let root = pebble_root(&pebble, &dir);
    let client = pki::client_config(&root, None, &[b"http/1.1"]);
    let mut alpn = Vec::new();
    let mut http = Vec::new();
    for node in &nodes {
        alpn.push(serial(&node.addr("alpn"), "alpn.cluster.test", &client).await);
        http.push(serial(&node.addr("viahttp"), "http.cluster.test", &client).await);
    }
    assert!(alpn.iter().all(|s| *s == alpn[0]), "{alpn:?}");
    assert!(http.iter().all(|s| *s == http[0]), "{http:?}");
    assert_ne!(alpn[0], http[0]);

    // Exactly one order per certificate, by the nodes' logs and by the CA's.
    let all: Vec<&Portico> = nodes.iter().collect();
    assert_eq!(orders(&all), 2);
    assert_eq!(issued(&dir), 2);
    // The two nodes that did not order held each challenge too, ready for the CA; and the
    // CA's HTTP-01 requests, spread by the front, were answered by more than the one node.
    for kind in ["an HTTP-01", "a TLS-ALPN-01"] {
        let needle = format!("answering {kind} challenge another node published");
        let holding = nodes.iter().filter(|n| n.count_lines(&needle) == 1).count();
        assert_eq!(holding, 2, "{kind}");
    }
    let answered = nodes
        .iter()
        .filter(|n| {
            n.lines().iter().any(|l| {
                l.contains("/.well-known/acme-challenge/") && l.contains(r#""status":200"#)
            })
        })
        .count();
    assert!(answered >= 2, "{answered} node(s) answered the CA");

    // The key never shows in GET /config.
    let config = crate::support::get(nodes[0].admin.as_ref().unwrap(), "/config").await;
    assert_eq!(config.status, 200);
    assert!(config.body.contains("<redacted>"), "{}", config.body);
    assert!(!config.body.contains(KEY));

    // etcd holds them sealed: no PEM in the clear.
    let (stored, _) = etcd.get("/acme-e2e/acme/certs/alpn.cluster.test").unwrap();
    assert!(stored.starts_with("portico-sealed-1:"), "{stored}");
    assert!(!stored.contains("BEGIN"));

    // A node started later, with nothing on disk, serves them without ordering.
    let late_spec = Node::new("n4", &etcd, &directory, &ca, "30d");
    let late = late_spec.start();
    assert_eq!(
        serial(&late.addr("alpn"), "alpn.cluster.test", &client).await,
        alpn[0]
    );
    assert_eq!(
        serial(&late.addr("viahttp"), "http.cluster.test", &client).await,
        http[0]
    );
    assert_eq!(
        late.count_lines("ordering a certificate"),
        0,
        "{}",
        late.log_text()
    );
    assert_eq!(issued(&dir), 2);

    // A node with another key can open nothing in etcd: it says so, and orders nothing.
    let wrong_spec = Node::new("n5", &etcd, &directory, &ca, "30d");
    let wrong = Portico::start_in_env(
        &wrong_spec.dir,
        &wrong_spec.config,
        &[(
            "PORTICO_CLUSTER_KEY",
            "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=",
        )],
    );
    assert!(
        wrong.wait_log(
            "cannot be opened with cluster.etcd.secret_key",
            Duration::from_secs(10)
        ),
        "{}",
        wrong.log_text()
    );
    assert_eq!(wrong.count_lines("ordering a certificate"), 0);
    drop(wrong);
    assert_eq!(issued(&dir), 2);

    // Restarted, every node serves the same certificate again, and none orders: the CA is
    // gone and the files on disk too, so it comes from etcd.
    drop(front);
    drop(pebble);
    drop(nodes);
    drop(late);
    for spec in &specs {
        std::fs::remove_dir_all(spec.dir.join("acme")).unwrap();
    }
    let again: Vec<Portico> = specs.iter().map(Node::start).collect();
    for node in &again {
        assert_eq!(
            serial(&node.addr("alpn"), "alpn.cluster.test", &client).await,
            alpn[0]
        );
        assert_eq!(
            serial(&node.addr("viahttp"), "http.cluster.test", &client).await,
            http[0]
        );
    }
    assert_eq!(orders(&again.iter().collect::<Vec<_>>()), 0);
}

#[test]
fn a_cluster_acme_config_needs_the_secret_key() {
    let dir = temp_dir("acme-cluster-validate");
    let config = "\
cluster:
  etcd: { endpoints: ['http://127.0.0.1:2379'] }
listeners:
  - name: secure
    bind: 127.0.0.1:0
    protocol: https
    tls:
      acme: { directory: 'https://ca.test/dir', domains: [a.test] }
";
    let path = dir.join("portico.yaml");
    std::fs::write(&path, config).unwrap();
    let (code, _, err) = crate::support::cli(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("portico.yaml:8:") && err.contains("cluster.etcd.secret_key"),
        "{err}"
    );

    let short = config.replace(
        "endpoints: ['http://127.0.0.1:2379'] }",
        "endpoints: ['http://127.0.0.1:2379'], secret_key: c2hvcnQ= }",
    );
    std::fs::write(&path, short).unwrap();
    let (code, _, err) = crate::support::cli(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("portico.yaml:2:") && err.contains("must be 32 bytes in base64, not 5"),
        "{err}"
    );
}

/// Each order's span on one node, `(start, end)` as log timestamps (RFC 3339, fixed width, so
/// they compare as text): from "ordering" to its outcome, for the certificate of `domain`.
fn order_spans(node: &Portico, domain: &str) -> Vec<(String, String)> {
    let tag = format!(r#"domains=["{domain}"]"#);
    let mut spans = Vec::new();
    let mut open: Option<String> = None;
    for line in node.lines().iter().filter(|l| l.contains(&tag)) {
        let at = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        if line.contains("ordering a certificate for the cluster") {
            open = Some(at);
        } else if (line.contains("certificate issued") || line.contains("certificate order failed"))
            && let Some(start) = open.take()
        {
            spans.push((start, at));
        }
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_happen_one_node_at_a_time() {
    // Renewing long before expiry makes every check of every node find the certificate due:
    // the nodes renew over and over, and only the lock keeps them one at a time.
    let rig = Rig::start("acme-cluster-renew", "3650d");
    let deadline = Instant::now() + Duration::from_secs(120);
    while issued(&rig.dir) < 8 {
        assert!(Instant::now() < deadline, "{}", logs(&rig.nodes));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for domain in ["alpn.cluster.test", "http.cluster.test"] {
        let mut spans: Vec<(String, String)> = rig
            .nodes
            .iter()
            .flat_map(|n| order_spans(n, domain))
            .collect();
        spans.sort();
        assert!(spans.len() >= 3, "{domain}: {spans:?}");
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 < pair[1].0,
                "{domain}: overlapping orders {pair:?}"
            );
        }
    }
    // Every node serves one certificate of the same CA (the newest it has seen).
    let root = pebble_root(&rig.pebble, &rig.dir);
    let client = pki::client_config(&root, None, &[b"http/1.1"]);
    for node in &rig.nodes {
        serial(&node.addr("alpn"), "alpn.cluster.test", &client).await;
    }
}
