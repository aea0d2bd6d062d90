//! `protocol: udp` listeners through the real binary: flows balanced and kept on one target,
//! answers back to the right client, a DNS exchange, idle expiry, health checks, the session
//! bound, and reloads.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::support::udp::{DnsServer, UdpEcho, answer, ask, client, dns_parse, dns_query, metric};
use crate::support::{Portico, cli, fill, get, temp_dir};

/// Waits (up to 5 s) until the metric series satisfies `ok`; returns its last value.
async fn wait_metric(admin: &str, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let value = metric(&get(admin, "/metrics").await.body, series);
        if ok(value) || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn text(answer: &[u8]) -> String {
    String::from_utf8_lossy(answer).into_owned()
}

const ONE: &str = "
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: dns, bind: 127.0.0.1:0, protocol: udp, upstream: echo }
upstreams:
  echo: { targets: [ { address: @ECHO@ } ] }
";

#[tokio::test]
async fn udp_each_client_gets_its_own_replies() {
    let echo = UdpEcho::start("a").await;
    let gw = Portico::start(&fill(ONE, &[("ECHO", &echo.addr())]));
    let addr = gw.addr("dns");
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(client(&addr).await);
    }
    // Every client sends before any reads: answers must still find their own client.
    for round in 0..3 {
        for (i, c) in clients.iter().enumerate() {
            c.send(format!("client {i} round {round}").as_bytes())
                .await
                .unwrap();
        }
        for (i, c) in clients.iter().enumerate() {
            let got = answer(c, Duration::from_secs(5)).await.unwrap();
            assert_eq!(text(&got), format!("a client {i} round {round}"));
        }
    }
    // Five flows, five upstream-side sockets: one source port per client.
    let ports: HashSet<u16> = echo.sources().iter().map(|s| s.port()).collect();
    assert_eq!(ports.len(), 5, "{:?}", echo.sources());

    // The largest IPv4 payload goes through whole, both ways.
    let big: Vec<u8> = (0..65_507u32).map(|i| (i % 251) as u8).collect();
    let back = ask(&clients[0], &big).await;
    assert_eq!(back.len(), big.len());
    assert!(back == big);

    let admin = gw.admin.clone().unwrap();
    let metrics = get(&admin, "/metrics").await.body;
    let series = |s: &str| metric(&metrics, s);
    assert_eq!(
        series(r#"portico_udp_datagrams_total{listener="dns",direction="in"}"#),
        16.0
    );
    assert_eq!(
        series(r#"portico_udp_datagrams_total{listener="dns",direction="out"}"#),
        16.0
    );
    let small: f64 = (0..5)
        .flat_map(|i| (0..3).map(move |r| format!("client {i} round {r}").len() as f64))
        .sum();
    assert_eq!(
        series(r#"portico_udp_bytes_total{listener="dns",direction="in"}"#),
        small + 65_507.0
    );
    // Each answer carries the echo's two-byte prefix, except the large one.
    assert_eq!(
        series(r#"portico_udp_bytes_total{listener="dns",direction="out"}"#),
        small + 15.0 * 2.0 + 65_507.0
    );
    assert_eq!(series(r#"portico_udp_sessions_total{listener="dns"}"#), 5.0);
    assert_eq!(
        series(r#"portico_udp_sessions_active{listener="dns"}"#),
        5.0
    );
}

#[tokio::test]
async fn udp_round_robin_spreads_flows_and_each_flow_sticks() {
    let a = UdpEcho::start("a").await;
    let b = UdpEcho::start("b").await;
    let gw = Portico::start(&fill(
        "
listeners:
  - { name: dns, bind: 127.0.0.1:0, protocol: udp, upstream: pair }
upstreams:
  pair:
    balance: round_robin
    targets: [ { address: @A@ }, { address: @B@ } ]
",
        &[("A", &a.addr()), ("B", &b.addr())],
    ));
    let addr = gw.addr("dns");
    let mut by_target: HashMap<String, usize> = HashMap::new();
    for i in 0..6 {
        let c = client(&addr).await;
        let mut seen = HashSet::new();
        for round in 0..4 {
            let got = text(&ask(&c, format!("{i}.{round}").as_bytes()).await);
            let (target, payload) = got.split_once(' ').unwrap();
            assert_eq!(payload, format!("{i}.{round}"));
            seen.insert(target.to_owned());
        }
        assert_eq!(seen.len(), 1, "flow {i} moved between targets: {seen:?}");
        *by_target
            .entry(seen.into_iter().next().unwrap())
            .or_default() += 1;
    }
    // Six flows over two targets: round robin gives each a share.
    assert_eq!(by_target.get("a").copied().unwrap_or(0), 3, "{by_target:?}");
    assert_eq!(by_target.get("b").copied().unwrap_or(0), 3, "{by_target:?}");
}

#[tokio::test]
async fn udp_ip_hash_keeps_every_flow_of_a_client_address_on_one_target() {
    let a = UdpEcho::start("a").await;
    let b = UdpEcho::start("b").await;
    let gw = Portico::start(&fill(
        "
listeners:
  - { name: dns, bind: 127.0.0.1:0, protocol: udp, upstream: pair }
upstreams:
  pair: { balance: ip_hash, targets: [ { address: @A@ }, { address: @B@ } ] }
",
        &[("A", &a.addr()), ("B", &b.addr())],
    ));
    let addr = gw.addr("dns");
    let mut targets = HashSet::new();
    for i in 0..8 {
        // A new port each time, one address: a new flow, the same hash.
        let c = client(&addr).await;
        let got = text(&ask(&c, format!("{i}").as_bytes()).await);
        targets.insert(got.split(' ').next().unwrap().to_owned());
    }
    assert_eq!(targets.len(), 1, "{targets:?}");
    let ports: HashSet<u16> = a
        .sources()
        .iter()
        .chain(b.sources().iter())
        .map(|s| s.port())
        .collect();
    assert_eq!(ports.len(), 8, "eight flows, eight sessions");
}

#[tokio::test]
async fn udp_dns_query_is_answered_with_its_transaction_id() {
    let dns = DnsServer::start(&[("www.example.test", Ipv4Addr::new(192, 0, 2, 7))]).await;
    let gw = Portico::start(&fill(
        "
admin: { listen: 127.0.0.1:0 }
listeners:
  - name: dns
    bind: 127.0.0.1:0
    protocol: udp
    upstream: resolvers
    udp: { responses: 1 }
upstreams:
  resolvers: { targets: [ { address: @DNS@ } ] }
",
        &[("DNS", &dns.addr())],
    ));
    let addr = gw.addr("dns");
    let c = client(&addr).await;
    let (id, rcode, a) = dns_parse(&ask(&c, &dns_query(0x5a17, "www.example.test")).await);
    assert_eq!(
        (id, rcode, a),
        (0x5a17, 0, Some(Ipv4Addr::new(192, 0, 2, 7)))
    );
    // `responses: 1`: the answer ended the session.
    let admin = gw.admin.clone().unwrap();
    let active = r#"portico_udp_sessions_active{listener="dns"}"#;
    assert_eq!(wait_metric(&admin, active, |v| v == 0.0).await, 0.0);
    // The same client asks again: a new session, and its own id back.
    let (id, rcode, a) = dns_parse(&ask(&c, &dns_query(0x0102, "nothing.example.test")).await);
    assert_eq!((id, rcode, a), (0x0102, 3, None), "NXDOMAIN");
    let total = r#"portico_udp_sessions_total{listener="dns"}"#;
    assert_eq!(wait_metric(&admin, total, |v| v == 2.0).await, 2.0);
}

#[tokio::test]
async fn udp_idle_session_expires_and_the_next_datagram_opens_a_new_one() {
    let echo = UdpEcho::start("a").await;
    let gw = Portico::start(&fill(
        "
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: dns, bind: 127.0.0.1:0, protocol: udp, upstream: echo, udp: { session_timeout: 300ms } }
upstreams:
  echo: { targets: [ { address: @ECHO@ } ] }
",
        &[("ECHO", &echo.addr())],
    ));
    let c = client(&gw.addr("dns")).await;
    assert_eq!(text(&ask(&c, b"one").await), "a one");
    assert_eq!(text(&ask(&c, b"two").await), "a two");
    let first = echo.sources();
    assert_eq!(first[0], first[1], "one session, one upstream-side socket");
    let admin = gw.admin.clone().unwrap();
    let active = r#"portico_udp_sessions_active{listener="dns"}"#;
    assert_eq!(wait_metric(&admin, active, |v| v == 1.0).await, 1.0);
    let started = Instant::now();
    assert_eq!(wait_metric(&admin, active, |v| v == 0.0).await, 0.0);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "expired too early"
    );
    assert_eq!(text(&ask(&c, b"three").await), "a three");
    let after = echo.sources();
    assert_ne!(
        after[2], after[0],
        "a new session has a new upstream-side socket"
    );
    let total = r#"portico_udp_sessions_total{listener="dns"}"#;
    assert_eq!(wait_metric(&admin, total, |v| v == 2.0).await, 2.0);
}

#[tokio::test]
async fn udp_target_down_by_its_check_gets_no_flows() {
    // Both targets' checks probe port HEALTH of the target's address: only 127.0.0.1 has a
    // TCP listener there, so the target on 127.0.0.2 is taken out.
    let up = UdpEcho::start_on("127.0.0.1", "up").await;
    let down = UdpEcho::start_on("127.0.0.2", "down").await;
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health_port = health.local_addr().unwrap().port().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = health.accept().await {
            drop(stream);
        }
    });
    let gw = Portico::start(&fill(
        "
listeners:
  - { name: dns, bind: 127.0.0.1:0, protocol: udp, upstream: pair }
upstreams:
  pair:
    balance: round_robin
    targets: [ { address: @UP@ }, { address: @DOWN@ } ]
    health_check:
      active: { type: tcp, port: @PORT@, interval: 50ms, timeout: 200ms, unhealthy: 1 }
",
        &[
            ("UP", &up.addr()),
            ("DOWN", &down.addr()),
            ("PORT", &health_port),
        ],
    ));
    assert!(
        gw.wait_log(
            &format!("target unhealthy upstream=pair target={}", down.addr()),
            Duration::from_secs(5)
        ),
        "{}",
        gw.log_text()
    );
    let addr = gw.addr("dns");
    for i in 0..6 {
        let c = client(&addr).await;
        assert_eq!(
            text(&ask(&c, format!("{i}").as_bytes()).await),
            format!("up {i}")
        );
    }
    assert!(down.sources().is_empty());
}

#[tokio::test]
async fn udp_unreachable_target_is_ejected_by_passive_checks() {
    let a = UdpEcho::start("a").await;
    let b = UdpEcho::start("b").await;
    let gw = Portico::start(&fill(
        "
listeners:
  - { name: dns, bind: 127.0.0.1:0, protocol: udp, upstream: pair }
upstreams:
  pair: { balance: round_robin, targets: [ { address: @A@ }, { address: @B@ } ] }
",
        &[("A", &a.addr()), ("B", &b.addr())],
    ));
    let addr = gw.addr("dns");
    // b goes away: datagrams to its port get an ICMP port unreachable.
    let dead = b.addr();
    drop(b);
    let mut lost = 0;
    let mut answered_in_a_row = 0;
    for i in 0..30 {
        let c = client(&addr).await;
        c.send(format!("{i}").as_bytes()).await.unwrap();
        match answer(&c, Duration::from_millis(300)).await {
            Some(got) => {
                assert_eq!(text(&got), format!("a {i}"));
                answered_in_a_row += 1;
            }
            None => {
                lost += 1;
                answered_in_a_row = 0;
            }
        }
        if answered_in_a_row == 6 {
            break;
        }
    }
    assert_eq!(
        answered_in_a_row,
        6,
        "flows still go to the dead target ({lost} lost)\n{}",
        gw.log_text()
    );
    // The default passive policy: three unreachable datagrams in a row take it out.
    assert_eq!(lost, 3);
    assert!(
        gw.wait_log(
            &format!("target ejected after failures upstream=pair target={dead}"),
            Duration::from_secs(1)
        ),
        "{}",
        gw.log_text()
    );
}

#[tokio::test]
async fn udp_max_sessions_drops_datagrams_of_new_flows() {
    let echo = UdpEcho::start("a").await;
    let gw = Portico::start(&fill(
        "
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: dns, bind: 127.0.0.1:0, protocol: udp, upstream: echo, udp: { max_sessions: 2 } }
upstreams:
  echo: { targets: [ { address: @ECHO@ } ] }
",
        &[("ECHO", &echo.addr())],
    ));
    let addr = gw.addr("dns");
    let (one, two, three) = (
        client(&addr).await,
        client(&addr).await,
        client(&addr).await,
    );
    assert_eq!(text(&ask(&one, b"1").await), "a 1");
    assert_eq!(text(&ask(&two, b"2").await), "a 2");
    three.send(b"3").await.unwrap();
    let admin = gw.admin.clone().unwrap();
    let full = r#"portico_udp_dropped_total{listener="dns",reason="sessions_full"}"#;
    assert_eq!(wait_metric(&admin, full, |v| v == 1.0).await, 1.0);
    assert_eq!(answer(&three, Duration::from_millis(100)).await, None);
    // Flows that have a session go on.
    assert_eq!(text(&ask(&one, b"1 again").await), "a 1 again");
    assert_eq!(echo.sources().len(), 3);
}

const RELOAD: &str = "
listeners:
  - { name: dns, bind: 127.0.0.1:0, protocol: udp, upstream: echo }
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: all, upstream: web }
upstreams:
  echo: { balance: round_robin, targets: [ @TARGETS@ ] }
  web: { targets: [ { address: 127.0.0.1:9 } ] }
";

#[tokio::test]
async fn udp_reload_keeps_sessions_and_removing_the_listener_closes_it() {
    let a = UdpEcho::start("a").await;
    let b = UdpEcho::start("b").await;
    let only_a = format!("{{ address: {} }}", a.addr());
    let gw = Portico::start(&fill(RELOAD, &[("TARGETS", &only_a)]));
    let addr = gw.addr("dns");
    let kept = client(&addr).await;
    assert_eq!(text(&ask(&kept, b"before").await), "a before");

    // A second target: the listener keeps its socket and the flow its session and target.
    let both = format!("{only_a}, {{ address: {} }}", b.addr());
    let next = fill(RELOAD, &[("TARGETS", &both)]);
    assert!(gw.reload(&next), "{}", gw.log_text());
    assert_eq!(text(&ask(&kept, b"after").await), "a after");
    assert_eq!(a.sources()[0], a.sources()[1], "the same session");
    // New flows use the new config.
    let mut targets = HashSet::new();
    for i in 0..4 {
        let c = client(&addr).await;
        targets.insert(text(&ask(&c, format!("{i}").as_bytes()).await)[..1].to_owned());
    }
    assert!(targets.contains("b"), "{targets:?}");

    // a leaves the upstream: the flow's next datagram picks again, and finds b.
    let only_b = fill(
        RELOAD,
        &[("TARGETS", &format!("{{ address: {} }}", b.addr()))],
    );
    assert!(gw.reload(&only_b), "{}", gw.log_text());
    assert_eq!(text(&ask(&kept, b"moved").await), "b moved");
    let next = only_b;

    // Without the listener, its socket is closed: the address is free again.
    let without = next.replace(
        "  - { name: dns, bind: 127.0.0.1:0, protocol: udp, upstream: echo }\n",
        "",
    );
    assert!(!without.contains("protocol: udp"));
    assert!(gw.reload(&without), "{}", gw.log_text());
    let deadline = Instant::now() + Duration::from_secs(5);
    let rebound = loop {
        match std::net::UdpSocket::bind(&addr) {
            Ok(s) => break Some(s),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(_) => break None,
        }
    };
    assert!(
        rebound.is_some(),
        "{addr} is still bound after the listener was removed"
    );
    kept.send(b"gone").await.unwrap();
    assert_eq!(answer(&kept, Duration::from_millis(200)).await, None);
}

#[test]
fn udp_config_errors_are_reported_at_their_position() {
    let dir = temp_dir("udp-errors");
    let file = dir.join("udp.yaml");
    std::fs::write(
        &file,
        "\
listeners:
  - { name: dns, bind: 127.0.0.1:5353, protocol: udp }
  - { name: g, bind: 127.0.0.1:5354, protocol: udp, upstream: greeter }
  - { name: p, bind: 127.0.0.1:5355, protocol: udp, upstream: greeter, proxy_protocol: { trusted: [10.0.0.0/8] } }
upstreams:
  greeter: { protocol: grpc, targets: [ { address: 127.0.0.1:50051 } ] }
",
    )
    .unwrap();
    let (code, _, stderr) = cli(&["validate", "--config", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        stderr
            .contains("udp.yaml:2:13: a udp listener needs an `upstream` to send its datagrams to"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "udp.yaml:3:63: upstream `greeter` sets `protocol: grpc`, which a udp listener cannot use"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "udp.yaml:4:13: proxy_protocol applies to TCP listeners; a udp listener reads no PROXY header"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn udp_listener_stops_at_once_on_sigterm_and_explain_names_its_upstream() {
    let echo = UdpEcho::start("a").await;
    let config = fill(ONE, &[("ECHO", &echo.addr())]);
    let mut gw = Portico::start(&config);
    let c = client(&gw.addr("dns")).await;
    assert_eq!(text(&ask(&c, b"hi").await), "a hi");
    // An open session holds nothing up: UDP has nothing to drain.
    let started = Instant::now();
    let status = gw
        .terminate(Duration::from_secs(10))
        .expect("portico exits");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(gw.wait_log("stopped", Duration::from_secs(1)));

    let dir = temp_dir("udp-explain");
    let file = dir.join("udp.yaml");
    std::fs::write(&file, config.replace("127.0.0.1:0", "127.0.0.1:5353")).unwrap();
    let (code, stdout, stderr) = cli(&[
        "explain",
        "-c",
        file.to_str().unwrap(),
        "GET",
        "http://127.0.0.1:5353/",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(
            "udp       not HTTP: each flow (client address and port) goes to upstream `echo` (round_robin), its session ends after 1m idle"
        ),
        "{stdout}"
    );
}

#[tokio::test]
async fn udp_and_http_listeners_share_a_port() {
    let echo = UdpEcho::start("a").await;
    let web = crate::support::TestUpstream::start("web").await;
    // A port that is free for TCP; UDP's ports are apart, so it is used for both.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let gw = Portico::start(&fill(
        "
listeners:
  - { name: dns, bind: 127.0.0.1:@PORT@, protocol: udp, upstream: echo }
  - { name: web, bind: 127.0.0.1:@PORT@ }
routes:
  - { name: all, upstream: web }
upstreams:
  echo: { targets: [ { address: @ECHO@ } ] }
  web: { targets: [ { address: @WEB@ } ] }
",
        &[
            ("PORT", &port),
            ("ECHO", &echo.addr()),
            ("WEB", &web.addr()),
        ],
    ));
    assert_eq!(gw.addr("dns"), gw.addr("web"));
    let c = client(&gw.addr("dns")).await;
    assert_eq!(text(&ask(&c, b"over udp").await), "a over udp");
    let reply = get(&gw.addr("web"), "/over-tcp").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "web /over-tcp");
}
