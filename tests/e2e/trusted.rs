//! `trusted_proxies`: the client address from `X-Forwarded-For` / `Forwarded` of trusted
//! peers only; forged headers from anyone else are ignored and not forwarded.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::{H1, Portico, TestUpstream, cli, fill, temp_dir};

const CONFIG: &str = "
trusted_proxies: @TRUSTED@
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: guarded
    match: { path_prefix: /guarded }
    upstream: u
    plugins: [ { ip_restriction: { deny: [203.0.113.7] } } ]
  - name: allowed
    match: { path_prefix: /allowed }
    upstream: u
    plugins: [ { ip_restriction: { allow: [203.0.113.0/24] } } ]
  - name: limited
    match: { path_prefix: /limited }
    upstream: u
    plugins: [ { rate_limit: { limit: 1, window: 1m, by: ip } } ]
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@U@' } ] }
";

/// One request with these extra headers: the status.
async fn send(gw: &Portico, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut conn = H1::connect(&gw.addr("web")).await;
    let mut req = Request::get(path).header("host", "trusted.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let reply = conn
        .send(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    reply.status
}

#[tokio::test]
async fn forged_headers_from_an_untrusted_peer_are_ignored() {
    let up = TestUpstream::start("A").await;
    // The test connects from 127.0.0.1, which is not trusted here.
    let gw = Portico::start(&fill(
        CONFIG,
        &[("U", &up.addr()), ("TRUSTED", "[10.0.0.0/8]")],
    ));
    let forged = [
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9"),
        ("x-real-ip", "203.0.113.9"),
    ];
    // An allow-list of the forged address does not let the peer in.
    assert_eq!(send(&gw, "/allowed", &forged).await, 403);
    // Limits by ip count the peer, whatever address each request claims.
    assert_eq!(
        send(&gw, "/limited/1", &[("x-forwarded-for", "198.51.100.1")]).await,
        200
    );
    assert_eq!(
        send(&gw, "/limited/2", &[("x-forwarded-for", "198.51.100.2")]).await,
        429
    );
    // Not forwarded as sent: the upstream sees the peer only.
    assert_eq!(send(&gw, "/open", &forged).await, 200);
    let seen = up.last();
    assert_eq!(seen.uri.path(), "/open");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(
        seen.headers.get("forwarded").is_none(),
        "{:?}",
        seen.headers
    );
    assert!(
        seen.headers.get("x-real-ip").is_none(),
        "{:?}",
        seen.headers
    );
    let client = gw.access_entry("/open")["client"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(client.starts_with("127.0.0.1:"), "{client}");
}

#[tokio::test]
async fn a_trusted_peer_names_the_right_most_untrusted_hop() {
    let up = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(
        CONFIG,
        &[("U", &up.addr()), ("TRUSTED", "[127.0.0.1/32, 10.0.0.0/8]")],
    ));
    let chain = [("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.0.0.5")];
    // 10.0.0.5 and the peer are trusted: the client is 203.0.113.7, which is denied.
    assert_eq!(send(&gw, "/guarded/a", &chain).await, 403);
    assert_eq!(gw.access_entry("/guarded/a")["client"], "203.0.113.7");
    assert_eq!(
        send(&gw, "/guarded/b", &[("x-forwarded-for", "203.0.113.8")]).await,
        200
    );
    // The upstream gets the chain with the peer appended; X-Real-IP of a trusted peer stays.
    let hops = [
        ("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.0.0.5"),
        ("x-real-ip", "203.0.113.7"),
    ];
    assert_eq!(send(&gw, "/chain", &hops).await, 200);
    let seen = up.last();
    assert_eq!(
        seen.headers["x-forwarded-for"],
        "198.51.100.1, 203.0.113.7, 10.0.0.5, 127.0.0.1"
    );
    assert_eq!(seen.headers["x-real-ip"], "203.0.113.7");
    assert_eq!(gw.access_entry("/chain")["client"], "203.0.113.7");

    // Several trusted hops and nothing else: the left-most.
    let all_trusted = [("x-forwarded-for", "10.0.0.9, 10.0.0.5")];
    assert_eq!(send(&gw, "/all-trusted", &all_trusted).await, 200);
    assert_eq!(gw.access_entry("/all-trusted")["client"], "10.0.0.9");

    // Forwarded (RFC 7239) with a quoted IPv6 node, when there is no X-Forwarded-For.
    let forwarded = [(
        "forwarded",
        "for=unknown, for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.5",
    )];
    assert_eq!(send(&gw, "/forwarded", &forwarded).await, 200);
    assert_eq!(
        gw.access_entry("/forwarded")["client"],
        "[2001:db8::1]:4711"
    );

    // Garbage is skipped, never a 500: with nothing usable the client is the peer.
    let garbage = [("x-forwarded-for", "garbage, , 300.1.1.1, [::1, 1.2.3:80")];
    assert_eq!(send(&gw, "/garbage", &garbage).await, 200);
    let client = gw.access_entry("/garbage")["client"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(client.starts_with("127.0.0.1:"), "{client}");
    let mixed = [("x-forwarded-for", "203.0.113.7, nonsense")];
    assert_eq!(send(&gw, "/guarded/mixed", &mixed).await, 403);

    // Limits by ip count the client each request names through the trusted peer.
    let one = [("x-forwarded-for", "198.51.100.1")];
    let two = [("x-forwarded-for", "198.51.100.2")];
    assert_eq!(send(&gw, "/limited/1", &one).await, 200);
    assert_eq!(send(&gw, "/limited/2", &two).await, 200);
    assert_eq!(send(&gw, "/limited/3", &one).await, 429);
}

#[tokio::test]
async fn a_listener_list_replaces_the_top_level_one() {
    let up = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(
        "
trusted_proxies: [10.0.0.0/8]
listeners:
  - { name: web, bind: 127.0.0.1:0 }
  - { name: inner, bind: 127.0.0.1:0, trusted_proxies: [127.0.0.1/32] }
  - { name: none, bind: 127.0.0.1:0, trusted_proxies: [] }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[("U", &up.addr())],
    ));
    for (listener, path, xff) in [
        ("web", "/top", "127.0.0.1"),
        ("inner", "/own", "203.0.113.7, 127.0.0.1"),
        ("none", "/nobody", "127.0.0.1"),
    ] {
        let mut conn = H1::connect(&gw.addr(listener)).await;
        let req = Request::get(path)
            .header("host", "trusted.test")
            .header("x-forwarded-for", "203.0.113.7")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(conn.send(req).await.unwrap().status, 200);
        assert_eq!(up.last().headers["x-forwarded-for"], xff, "{listener}");
    }
    assert_eq!(gw.access_entry("/own")["client"], "203.0.113.7");
    let top = gw.access_entry("/top")["client"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(top.starts_with("127.0.0.1:"), "{top}");
}

#[test]
fn bad_blocks_are_reported_at_their_position() {
    let dir = temp_dir("trusted-bad");
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "trusted_proxies: [10.0.0.0/8, 10.0.0.0/33]
listeners:
  - { name: web, bind: 127.0.0.1:0, trusted_proxies: [nope] }
  - { name: raw, bind: 127.0.0.1:0, protocol: tcp, upstream: u, trusted_proxies: [10.0.0.1] }
upstreams:
  u: { targets: [ { address: 127.0.0.1:1 } ] }
",
    )
    .unwrap();
    let file = file.display().to_string();
    let (code, _, stderr) = cli(&["validate", "-c", &file]);
    assert_eq!(code, 1, "{stderr}");
    for expected in [
        format!(
            "{file}:1:31: trusted_proxies: invalid address block `10.0.0.0/33`: expected like \
             10.0.0.0/8"
        ),
        format!(
            "{file}:3:55: trusted_proxies: invalid address block `nope`: expected like \
             10.0.0.0/8"
        ),
        format!(
            "{file}:4:13: trusted_proxies applies to http and https listeners (a layer 4 \
             listener reads no forwarding headers)"
        ),
    ] {
        assert!(stderr.contains(&expected), "{expected}\n{stderr}");
    }
}

#[test]
fn explain_shows_the_decision() {
    let dir = temp_dir("trusted-explain");
    let file = dir.join("edge.yaml");
    std::fs::write(
        &file,
        "trusted_proxies: [10.0.0.0/8]
listeners:
  - { name: web, bind: 127.0.0.1:8080 }
routes:
  - name: all
    upstream: u
    plugins: [ { ip_restriction: { deny: [203.0.113.7] } } ]
upstreams:
  u: { targets: [ { address: 127.0.0.1:1 } ] }
",
    )
    .unwrap();
    let file = file.display().to_string();
    let xff = "X-Forwarded-For: 198.51.100.1, 203.0.113.7, 10.0.0.3";
    let url = "http://localhost:8080/";
    let (code, out, err) = cli(&[
        "explain", "-c", &file, "GET", url, "-H", xff, "--peer", "10.0.0.2",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "client    203.0.113.7 (from X-Forwarded-For: the right-most hop not in \
             trusted_proxies; the peer 10.0.0.2 is a trusted proxy); 1 trusted hop(s) passed over"
        ),
        "{out}"
    );
    assert!(out.contains("403 Forbidden"), "{out}");
    let (code, out, err) = cli(&[
        "explain",
        "-c",
        &file,
        "GET",
        url,
        "-H",
        xff,
        "--peer",
        "198.51.100.50",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "client    198.51.100.50 (the peer: it is not in trusted_proxies, so its \
             X-Forwarded-For, Forwarded and X-Real-IP are ignored and removed)"
        ),
        "{out}"
    );
    assert!(!out.contains("403 Forbidden"), "{out}");
    let forwarded = "Forwarded: for=\"[2001:db8::1]:4711\"";
    let (_, out, _) = cli(&[
        "explain", "-c", &file, "GET", url, "-H", forwarded, "--peer", "10.0.0.2",
    ]);
    assert!(
        out.contains("client    [2001:db8::1]:4711 (from Forwarded: the right-most for="),
        "{out}"
    );
}

#[tokio::test]
async fn ip_hash_balances_by_the_decided_client() {
    let a = TestUpstream::start("A").await;
    let b = TestUpstream::start("B").await;
    let config = "
listeners:
  - { name: web, bind: 127.0.0.1:0 }
  - { name: open, bind: 127.0.0.1:0, trusted_proxies: [127.0.0.1/32] }
trusted_proxies: []
routes:
  - { name: all, upstream: u }
upstreams:
  u:
    balance: ip_hash
    targets: [ { address: '@A@' }, { address: '@B@' } ]
";
    let gw = Portico::start(&fill(config, &[("A", &a.addr()), ("B", &b.addr())]));
    // Forged addresses from an untrusted peer: one client, one target.
    for listener in ["web", "open"] {
        for i in 0..20 {
            let mut conn = H1::connect(&gw.addr(listener)).await;
            let req = Request::get(format!("/{listener}/{i}"))
                .header("host", "trusted.test")
                .header("x-forwarded-for", format!("198.51.100.{i}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            assert_eq!(conn.send(req).await.unwrap().status, 200);
        }
    }
    let on = |up: &TestUpstream, prefix: &str| {
        up.seen()
            .iter()
            .filter(|s| s.uri.path().starts_with(prefix))
            .count()
    };
    let web = (on(&a, "/web/"), on(&b, "/web/"));
    assert!(web == (20, 0) || web == (0, 20), "{web:?}");
    // Through a trusted peer: twenty clients, spread over both targets.
    let open = (on(&a, "/open/"), on(&b, "/open/"));
    assert!(
        open.0 > 0 && open.1 > 0 && open.0 + open.1 == 20,
        "{open:?}"
    );
}

#[tokio::test]
async fn a_proxy_protocol_address_is_the_peer_that_is_judged() {
    use crate::proxy_protocol::{read_to_close, v2_header};
    use tokio::io::AsyncWriteExt;
    let up = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(
        "
trusted_proxies: [203.0.113.0/24]
listeners:
  - { name: web, bind: 127.0.0.1:0, proxy_protocol: { trusted: [127.0.0.1/32] } }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[("U", &up.addr())],
    ));
    let web: std::net::SocketAddr = gw.addr("web").parse().unwrap();
    for (source, path, xff, client) in [
        // The conveyed source is a trusted proxy: its X-Forwarded-For names the client.
        (
            "203.0.113.7:4000",
            "/via-proxy",
            "198.51.100.9, 203.0.113.7",
            "198.51.100.9",
        ),
        // The conveyed source is not: it is the client, and its claim is dropped.
        (
            "198.51.100.50:4000",
            "/direct",
            "198.51.100.50",
            "198.51.100.50:4000",
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(web).await.unwrap();
        let mut bytes = v2_header(source.parse().unwrap(), web);
        bytes.extend_from_slice(
            format!(
                "GET {path} HTTP/1.1\r\nhost: t\r\nx-forwarded-for: 198.51.100.9\r\n\
                 connection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        stream.write_all(&bytes).await.unwrap();
        let answer = String::from_utf8(read_to_close(&mut stream).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(up.last().headers["x-forwarded-for"], xff, "{path}");
        assert_eq!(gw.access_entry(path)["client"], client, "{path}");
    }
}
