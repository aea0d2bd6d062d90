//! TLS: SNI and ALPN with real clients, certificate errors at validate time, hot reload, mTLS,
//! upstream TLS, redirect to https and HSTS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::pki::{self, Ca};
use crate::support::{Portico, TestUpstream, cli, fill, get, temp_dir};

async fn h1_over(
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", "a.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

struct Setup {
    ca: Ca,
    dir: std::path::PathBuf,
    default: pki::Pair,
    wild: pki::Pair,
}

fn setup() -> Setup {
    let dir = temp_dir("tls");
    let ca = Ca::new(&dir, "portico test CA");
    let default = ca.leaf("default", "default.test", &["default.test"], false, false);
    // Written as a.pem / a.key and named relative to the config file.
    ca.leaf("a", "a.test", &["a.test"], false, false);
    let wild = ca.leaf("wild", "wild", &["*.wild.test"], false, false);
    Setup {
        ca,
        dir,
        default,
        wild,
    }
}

fn https_config(s: &Setup, upstream: &str, extra: &str) -> String {
    fill(
        "\
listeners:
  - name: secure
    bind: 127.0.0.1:0
    protocol: https
    tls:
      certificates:
        - { cert_file: '@DC@', key_file: '@DK@' }
        - { cert_file: a.pem, key_file: a.key }
        - { cert_file: '@WC@', key_file: '@WK@' }
@EXTRA@
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[
            ("DC", &s.default.cert()),
            ("DK", &s.default.key()),
            ("WC", &s.wild.cert()),
            ("WK", &s.wild.key()),
            ("U", upstream),
            ("EXTRA", extra),
        ],
    )
}

/// Starts portico with its config file in the certificates' folder (relative paths work).
fn start_in(dir: &std::path::Path, config: &str) -> Portico {
    Portico::start_in(dir, config)
}

#[tokio::test]
async fn sni_chooses_the_certificate_and_alpn_the_protocol() {
    let s = setup();
    let up = TestUpstream::start("A").await;
    let gw = start_in(&s.dir, &https_config(&s, &up.addr(), ""));
    let addr = gw.addr("secure");
    let plain = pki::client_config(&s.ca.cert_path(), None, &[b"http/1.1"]);
    for (sni, want) in [
        ("a.test", "a.test"),
        ("x.wild.test", "*.wild.test"),
        ("unknown.test", "default.test"),
    ] {
        // A client that verifies against the name it asked for only accepts the right cert;
        // the default one is checked by looking at it.
        let config = if sni == "unknown.test" {
            pki::client_config(&s.ca.cert_path(), None, &[b"http/1.1"])
        } else {
            Arc::clone(&plain)
        };
        let stream = match pki::connect(&addr, sni, config).await {
            Ok(stream) => stream,
            Err(err) => {
                assert_eq!(sni, "unknown.test", "{err}");
                // Name mismatch is the verifier's complaint: the default cert was served.
                assert!(
                    err.to_string().contains("NotValidForName")
                        || err.to_string().contains("certificate"),
                    "{err}"
                );
                continue;
            }
        };
        assert_eq!(pki::peer_names(&stream), vec![want.to_owned()]);
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (status, _) = h1_over(stream, "/x", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(up.last().headers["x-forwarded-proto"], "https");
    }

    // ALPN h2.
    let h2 = pki::client_config(&s.ca.cert_path(), None, &[b"h2", b"http/1.1"]);
    let stream = pki::connect(&addr, "a.test", h2).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            http::Request::get("https://a.test/h2")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_see_tls_1_2_and_1_3_only_and_resume() {
    let s = setup();
    let up = TestUpstream::start("A").await;
    let gw = start_in(&s.dir, &https_config(&s, &up.addr(), ""));
    let addr = gw.addr("secure");
    let port = addr.rsplit_once(':').unwrap().1.to_owned();
    let url = format!("https://a.test:{port}/curl");
    let resolve = format!("a.test:{port}:127.0.0.1");
    let ca = s.ca.cert_path().display().to_string();
    let run = |args: &[&str]| {
        tokio::task::block_in_place(|| {
            std::process::Command::new("curl")
                .args(args)
                .output()
                .expect("curl")
        })
    };
    let out = run(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--http2",
        &url,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2");
    let out = run(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--http1.1",
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        &url,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 1.1");
    let out = run(&[
        "-s",
        "-o",
        "/dev/null",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--tlsv1.0",
        "--tls-max",
        "1.1",
        &url,
    ]);
    assert!(!out.status.success(), "TLS 1.1 was accepted");
    // openssl: SNI picks the certificate, ALPN gives h2, and a saved session resumes.
    let session = s.dir.join("session.pem").display().to_string();
    let openssl = |extra: &[&str]| {
        let mut args = vec![
            "s_client",
            "-connect",
            &addr,
            "-servername",
            "a.test",
            "-CAfile",
            &ca,
            "-alpn",
            "h2",
        ];
        args.extend_from_slice(extra);
        tokio::task::block_in_place(|| {
            let mut child = std::process::Command::new("openssl")
                .args(&args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("openssl");
            // Give the server a moment to send its session tickets, then close.
            std::thread::sleep(Duration::from_millis(300));
            drop(child.stdin.take());
            let out = child.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let first = openssl(&["-sess_out", &session]);
    assert!(
        first.contains("subject=CN") && first.contains("a.test"),
        "{first}"
    );
    assert!(first.contains("ALPN protocol: h2"), "{first}");
    assert!(first.contains("Verify return code: 0 (ok)"), "{first}");
    let second = openssl(&["-sess_in", &session]);
    assert!(second.contains("Reused, TLSv1.3"), "{second}");
}

#[test]
fn validate_reports_certificate_problems_with_positions() {
    let s = setup();
    let expired = s.ca.leaf("expired", "old.test", &["old.test"], false, true);
    let config = format!(
        "\
listeners:
  - name: secure
    bind: 127.0.0.1:0
    protocol: https
    tls:
      certificates:
        - {{ cert_file: missing.pem, key_file: a.key }}
        - {{ cert_file: a.pem, key_file: default.key }}
        - {{ cert_file: {}, key_file: {} }}
  - {{ name: bare, bind: 127.0.0.1:0, protocol: https }}
",
        expired.cert(),
        expired.key()
    );
    let file = s.dir.join("bad.yaml");
    std::fs::write(&file, config).unwrap();
    let file = file.display().to_string();
    let (code, _, stderr) = cli(&["validate", "-c", &file]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("{file}:7:24: cannot read certificate file")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:8:41: the key in"))
            && stderr.contains("does not match the certificate"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:9:24:")) && stderr.contains("expired"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:10:13: an https listener needs")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_is_served_without_dropping_connections() {
    let s = setup();
    let up = TestUpstream::start("A").await;
    let gw = start_in(&s.dir, &https_config(&s, &up.addr(), ""));
    let addr = gw.addr("secure");
    let config = pki::client_config(&s.ca.cert_path(), None, &[b"http/1.1"]);
    let old = pki::connect(&addr, "a.test", Arc::clone(&config))
        .await
        .unwrap();
    let old_der = old.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(old))
        .await
        .unwrap();
    tokio::spawn(conn);

    // Replace a.test's certificate and key on disk.
    let fresh = s.ca.leaf("a-next", "a.test", &["a.test"], false, false);
    std::fs::copy(&fresh.cert, s.dir.join("a.pem")).unwrap();
    std::fs::copy(&fresh.key, s.dir.join("a.key")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stream = pki::connect(&addr, "a.test", Arc::clone(&config))
            .await
            .unwrap();
        if stream.get_ref().1.peer_certificates().unwrap()[0] != old_der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before the change still works.
    let resp = sender
        .send_request(
            http::Request::get("/still")
                .header("host", "a.test")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_and_passes_its_identity() {
    let s = setup();
    let client_ca = Ca::new(&temp_dir("client-ca"), "client CA");
    let alice = client_ca.leaf("alice", "alice", &["alice.example"], true, false);
    let up = TestUpstream::start("A").await;
    let extra = format!(
        "      client_auth: {{ ca_file: {}, required: true }}",
        client_ca.cert_path().display()
    );
    let config = https_config(&s, &up.addr(), "");
    let config = config.replacen("\nroutes:", &format!("\n{extra}\nroutes:\n  - {{ name: alice, match: {{ headers: {{ x-client-cert-subject: CN=alice }}, path: /who }}, respond: {{ status: 200, body: hello-alice }} }}"), 1);
    let gw = start_in(&s.dir, &config);
    let addr = gw.addr("secure");

    // Without a certificate: no request gets through.
    let anonymous = pki::client_config(&s.ca.cert_path(), None, &[b"http/1.1"]);
    let refused = match pki::connect(&addr, "a.test", anonymous).await {
        Err(_) => true,
        Ok(stream) => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            sender
                .send_request(
                    http::Request::get("/x")
                        .header("host", "a.test")
                        .body(Empty::<Bytes>::new())
                        .unwrap(),
                )
                .await
                .is_err()
        }
    };
    assert!(refused, "a client without a certificate got through");
    assert_eq!(up.count(), 0);

    let with_cert = pki::client_config(&s.ca.cert_path(), Some(&alice), &[b"http/1.1"]);
    let stream = pki::connect(&addr, "a.test", Arc::clone(&with_cert))
        .await
        .unwrap();
    let (status, _) = h1_over(stream, "/x", &[("x-client-cert-subject", "CN=mallory")]).await;
    assert_eq!(status, 200);
    let seen = up.last();
    assert_eq!(
        seen.headers["x-client-cert-subject"], "CN=alice",
        "the forged subject was replaced"
    );
    assert_eq!(seen.headers["x-client-cert-san"], "DNS:alice.example");
    // The identity is there for routing too.
    let stream = pki::connect(&addr, "a.test", with_cert).await.unwrap();
    let (status, body) = h1_over(stream, "/who", &[]).await;
    assert_eq!((status, body.as_str()), (200, "hello-alice"));
}

/// An HTTPS upstream answering with its ALPN protocol and the SNI it saw.
async fn tls_upstream(pair: &pki::Pair) -> String {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(&pair.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&pair.key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_owned();
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let body = format!("tls {:?} sni={sni}", req.version());
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from(body)),
                            ))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_tls_over_http1_and_h2_with_verification() {
    let s = setup();
    let up_pair = s.ca.leaf("up", "up.test", &["up.test"], false, false);
    let up = tls_upstream(&up_pair).await;
    let other_ca = Ca::new(&temp_dir("other-ca"), "someone else");
    let config = fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: h1, match: { path_prefix: /h1/ }, upstream: h1 }
  - { name: h2, match: { path_prefix: /h2/ }, upstream: h2 }
  - { name: wrongca, match: { path_prefix: /wrong/ }, upstream: wrongca }
  - { name: noverify, match: { path_prefix: /insecure/ }, upstream: noverify }
upstreams:
  h1: { targets: [ { address: '@UP@' } ], tls: { sni: up.test, ca_file: '@CA@' } }
  h2: { protocol: http2, targets: [ { address: '@UP@' } ], tls: { sni: up.test, ca_file: '@CA@' } }
  wrongca: { targets: [ { address: '@UP@' } ], tls: { sni: up.test, ca_file: '@OTHER@' } }
  noverify: { targets: [ { address: '@UP@' } ], tls: { sni: up.test, verify: false } }
",
        &[
            ("UP", &up),
            ("CA", &s.ca.cert_path().display().to_string()),
            ("OTHER", &other_ca.cert_path().display().to_string()),
        ],
    );
    let gw = Portico::start(&config);
    let web = gw.addr("web");
    let reply = get(&web, "/h1/x").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "tls HTTP/1.1 sni=up.test")
    );
    let reply = get(&web, "/h2/x").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "tls HTTP/2.0 sni=up.test")
    );
    let reply = get(&web, "/wrong/x").await;
    assert_eq!(
        reply.status, 502,
        "an unverifiable upstream was trusted: {}",
        reply.body
    );
    let reply = get(&web, "/insecure/x").await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn http_redirects_to_https_and_https_sends_hsts() {
    let s = setup();
    let up = TestUpstream::start("A").await;
    let extra = "    hsts: { max_age: 1d, include_subdomains: true }\n  - { name: web, bind: 127.0.0.1:0, redirect_https: { port: 8443 } }";
    let gw = start_in(&s.dir, &https_config(&s, &up.addr(), extra));
    let reply = crate::support::H1::connect(&gw.addr("web"))
        .await
        .get("shop.example:80", "/p?q=1")
        .await;
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.header("location"),
        Some("https://shop.example:8443/p?q=1")
    );
    assert_eq!(up.count(), 0);
    let config = pki::client_config(&s.ca.cert_path(), None, &[b"http/1.1"]);
    let stream = pki::connect(&gw.addr("secure"), "a.test", config)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            http::Request::get("/x")
                .header("host", "a.test")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=86400; includeSubDomains"
    );
}

#[tokio::test]
async fn passthrough_routes_by_sni_without_terminating() {
    let s = setup();
    let db = s.ca.leaf("db", "db.test", &["db.test"], false, false);
    let web = s.ca.leaf("web", "web", &["*.web.test"], false, false);
    let db_up = tls_upstream(&db).await;
    let web_up = tls_upstream(&web).await;
    let config = fill(
        "\
listeners:
  - name: pt
    bind: 127.0.0.1:0
    protocol: tls_passthrough
    sni: { db.test: db, '*.web.test': web }
  - name: pt-default
    bind: 127.0.0.1:0
    protocol: tls_passthrough
    sni: { db.test: db }
    upstream: web
upstreams:
  db: { targets: [ { address: '@DB@' } ] }
  web: { targets: [ { address: '@WEB@' } ] }
",
        &[("DB", &db_up), ("WEB", &web_up)],
    );
    let gw = Portico::start(&config);
    let client = pki::client_config(&s.ca.cert_path(), None, &[b"http/1.1"]);
    // The certificate the client sees is the upstream's own: portico did not terminate.
    for (listener, sni, body) in [
        ("pt", "db.test", "tls HTTP/1.1 sni=db.test"),
        ("pt", "a.web.test", "tls HTTP/1.1 sni=a.web.test"),
        (
            "pt-default",
            "other.web.test",
            "tls HTTP/1.1 sni=other.web.test",
        ),
    ] {
        let stream = pki::connect(&gw.addr(listener), sni, Arc::clone(&client))
            .await
            .unwrap();
        let (status, got) = h1_over(stream, "/", &[]).await;
        assert_eq!((status, got.as_str()), (200, body));
    }
    // No route for the name: the connection is closed.
    assert!(
        pki::connect(&gw.addr("pt"), "nobody.test", client)
            .await
            .is_err()
    );
}

/// A self-signed certificate made by the openssl CLI, with a key of the given algorithm.
fn openssl_cert(dir: &std::path::Path, name: &str, algorithm: &[&str]) -> (String, String) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ])
        .args(["-addext", &format!("subjectAltName=DNS:{name}")])
        .args(algorithm)
        .args([
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert.display().to_string(), key.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_ecdsa_and_ed25519_keys_and_real_clients() {
    let s = setup();
    let dir = &s.dir;
    let (rsa_cert, rsa_key) = openssl_cert(dir, "rsa.test", &["-newkey", "rsa:2048"]);
    let (ed_cert, ed_key) = openssl_cert(dir, "ed.test", &["-newkey", "ed25519"]);
    let client_ca = Ca::new(&temp_dir("curl-client-ca"), "client CA");
    let bob = client_ca.leaf("bob", "bob", &["bob.example"], true, false);
    let up = TestUpstream::start("A").await;
    let config = fill(
        "\
listeners:
  - name: secure
    bind: 127.0.0.1:0
    protocol: https
    tls:
      certificates:
        - { cert_file: '@DC@', key_file: '@DK@' }
        - { cert_file: '@RC@', key_file: '@RK@' }
        - { cert_file: '@EC@', key_file: '@EK@' }
      client_auth: { ca_file: '@CCA@', required: false }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[
            ("DC", &s.default.cert()),
            ("DK", &s.default.key()),
            ("RC", &rsa_cert),
            ("RK", &rsa_key),
            ("EC", &ed_cert),
            ("EK", &ed_key),
            ("CCA", &client_ca.cert_path().display().to_string()),
            ("U", &up.addr()),
        ],
    );
    let gw = start_in(dir, &config);
    let addr = gw.addr("secure");
    let port = addr.rsplit_once(':').unwrap().1.to_owned();
    let curl = |name: &str, cafile: &str, extra: &[&str]| {
        let url = format!("https://{name}:{port}/k");
        let resolve = format!("{name}:{port}:127.0.0.1");
        let mut args = vec![
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            cafile,
            "--resolve",
            &resolve,
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        let out = tokio::task::block_in_place(|| {
            std::process::Command::new("curl")
                .args(&args)
                .output()
                .unwrap()
        });
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Each key type serves its own name (the self-signed certificates are their own CAs).
    assert_eq!(curl("rsa.test", &rsa_cert, &[]), "200");
    assert_eq!(curl("ed.test", &ed_cert, &[]), "200");
    // Optional client certificates: anonymous passes, a certificate is verified and passed on.
    assert!(!up.last().headers.contains_key("x-client-cert-subject"));
    let ca = s.ca.cert_path().display().to_string();
    assert_eq!(
        curl(
            "default.test",
            &ca,
            &["--cert", &bob.cert(), "--key", &bob.key()]
        ),
        "200"
    );
    assert_eq!(up.last().headers["x-client-cert-subject"], "CN=bob");

    // h2load over TLS: every request succeeds.
    let url = format!("https://127.0.0.1:{port}/h2load");
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new("h2load")
            .args(["-n", "200", "-c", "4", "-m", "5", &url])
            .output()
            .expect("h2load")
    });
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(report.contains("200 succeeded, 0 failed"), "{report}");
    assert!(report.contains("Application protocol: h2"), "{report}");
}

#[tokio::test]
async fn plain_http_on_an_https_port_gets_a_hint() {
    let s = setup();
    let up = TestUpstream::start("A").await;
    let gw = start_in(&s.dir, &https_config(&s, &up.addr(), ""));
    let addr = gw.addr("secure");
    let answer = crate::support::raw(
        &addr,
        b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.contains("\"error\":\"plain_http_on_https\""),
        "{answer}"
    );
    assert!(answer.contains("x-request-id: "), "{answer}");
    assert_eq!(up.count(), 0);
    // TLS on the same port still works.
    let config = pki::client_config(&s.ca.cert_path(), None, &[b"http/1.1"]);
    let tls = pki::connect(&addr, "a.test", config).await.unwrap();
    assert!(pki::peer_names(&tls).iter().any(|n| n == "a.test"));
}
