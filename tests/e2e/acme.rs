//! Automatic HTTPS against a real ACME CA: Debian's `pebble`, with `pebble-challtestsrv` as its
//! DNS (every name → 127.0.0.1). Pebble validates TLS-ALPN-01 on its `tlsPort` and HTTP-01 on
//! its `httpPort`, so portico's listeners take exactly those ports.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::pki::{self, Ca};
use crate::support::{Portico, fill, temp_dir};

pub(crate) struct Pebble {
    children: Vec<Child>,
    pub(crate) directory: String,
    management: u16,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) use crate::support::free_port;

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn start_pebble(
    dir: &std::path::Path,
    ca: &Ca,
    http_port: u16,
    tls_port: u16,
) -> Pebble {
    start_pebble_on(dir, ca, http_port, tls_port, free_port())
}

/// Pebble's directory URL when it listens on `port`.
pub(crate) fn pebble_directory(port: u16) -> String {
    format!("https://localhost:{port}/dir")
}

/// Like [`start_pebble`], with the directory on `listen` ([`pebble_directory`]) and pebble's
/// log in `dir/pebble.log`.
pub(crate) fn start_pebble_on(
    dir: &std::path::Path,
    ca: &Ca,
    http_port: u16,
    tls_port: u16,
    listen: u16,
) -> Pebble {
    let server = ca.leaf(
        "pebble",
        "localhost",
        &["localhost", "127.0.0.1"],
        false,
        false,
    );
    let (management, dns, dns_management) = (free_port(), free_port(), free_port());
    let config = format!(
        r#"{{"pebble": {{"listenAddress": "127.0.0.1:{listen}", "managementListenAddress": "127.0.0.1:{management}",
            "certificate": "{}", "privateKey": "{}", "httpPort": {http_port}, "tlsPort": {tls_port},
            "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#,
        server.cert(),
        server.key()
    );
    let config_path = dir.join("pebble.json");
    std::fs::write(&config_path, config).unwrap();
    let dns_server = Command::new("pebble-challtestsrv")
        .args([
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
        ])
        .args([
            "-dns01",
            &format!("127.0.0.1:{dns}"),
            "-management",
            &format!("127.0.0.1:{dns_management}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pebble-challtestsrv (apt-get install pebble)");
    let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
    let pebble = Command::new("pebble")
        .args([
            "-config",
            &config_path.display().to_string(),
            "-dnsserver",
            &format!("127.0.0.1:{dns}"),
            "-strict=false",
        ])
        // Quick validations; nonce rejection stays on (5%), so the client's retries are exercised.
        .env("PEBBLE_VA_NOSLEEP", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("pebble (apt-get install pebble)");
    let mut started = Pebble {
        children: vec![dns_server, pebble],
        directory: pebble_directory(listen),
        management,
    };
    wait_port(listen);
    wait_port(management);
    started.children.shrink_to_fit();
    started
}

/// The root that pebble signs with (new at every start), as a PEM file.
pub(crate) fn pebble_root(pebble: &Pebble, dir: &std::path::Path) -> std::path::PathBuf {
    let out = Command::new("curl")
        .args([
            "-sfk",
            &format!("https://127.0.0.1:{}/roots/0", pebble.management),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let path = dir.join("pebble-root.pem");
    std::fs::write(&path, out.stdout).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_issued_renewed_and_reused_across_restarts() {
    let dir = temp_dir("acme");
    let ca = Ca::new(&dir, "directory CA");
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = start_pebble(&dir, &ca, http_port, tls_port);
    let template = "\
listeners:
  - name: alpn
    bind: 127.0.0.1:@TLS@
    protocol: https
    tls:
      acme:
        directory: '@DIR@'
        directory_ca_file: '@CA@'
        email: ops@portico.test
        domains: [alpn.portico.test]
        renew_before: @RENEW@
        check_every: 1s
  - name: viahttp
    bind: 127.0.0.1:0
    protocol: https
    tls:
      acme:
        directory: '@DIR@'
        directory_ca_file: '@CA@'
        domains: [http.portico.test]
        challenge: http_01
  - { name: plain, bind: 127.0.0.1:@HTTP@ }
routes:
  - { name: hello, respond: { status: 200, body: secured } }
";
    let ca_path = ca.cert_path().display().to_string();
    let directory = pebble.directory.clone();
    let vars = |renew: &'static str| {
        fill(
            template,
            &[
                ("TLS", &tls_port.to_string()),
                ("HTTP", &http_port.to_string()),
                ("DIR", &directory),
                ("CA", &ca_path),
                ("RENEW", renew),
            ],
        )
    };
    // Renew long before expiry: every check renews, so a renewal shows within seconds.
    let gw = Portico::start_in(&dir, &vars("3650d"));
    assert!(
        gw.wait_log_count("certificate issued", 2, Duration::from_secs(90)),
        "{}",
        gw.log_text()
    );
    let root = pebble_root(&pebble, &dir);
    let client = pki::client_config(&root, None, &[b"http/1.1"]);
    let port_of = |name: &str| gw.addr(name);
    let first = pki::connect(&port_of("alpn"), "alpn.portico.test", Arc::clone(&client))
        .await
        .unwrap();
    let first_der = first.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        pki::peer_names(&first),
        vec!["alpn.portico.test".to_owned()]
    );
    let via_http = pki::connect(
        &port_of("viahttp"),
        "http.portico.test",
        Arc::clone(&client),
    )
    .await
    .unwrap();
    assert_eq!(
        pki::peer_names(&via_http),
        vec!["http.portico.test".to_owned()]
    );
    assert!(dir.join("acme/alpn.portico.test/cert.pem").exists());
    assert!(dir.join("acme/alpn.portico.test/account.json").exists());

    // A renewal replaces the certificate; every handshake meanwhile still gets one.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stream = pki::connect(&port_of("alpn"), "alpn.portico.test", Arc::clone(&client))
            .await
            .unwrap();
        if stream.get_ref().1.peer_certificates().unwrap()[0] != first_der {
            break;
        }
        assert!(Instant::now() < deadline, "no renewal:\n{}", gw.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(gw);

    // Restarted with the CA gone, portico serves what it stored.
    drop(pebble);
    let gw = Portico::start_in(&dir, &vars("1d"));
    let stream = pki::connect(&gw.addr("alpn"), "alpn.portico.test", client)
        .await
        .unwrap();
    assert_eq!(
        pki::peer_names(&stream),
        vec!["alpn.portico.test".to_owned()]
    );
}
