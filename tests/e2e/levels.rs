//! Plugin precedence through the real proxy (route + consumer over consumer over route over
//! global), and secrets kept out of `GET /config`.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::{H1, Portico, TestUpstream, fill, get};

fn req(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut r = Request::get(path).header("host", "x");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::default()).unwrap()
}

const CONFIG: &str = "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
plugins:
  - request_headers: { set: { x-from: global, x-global-only: 'yes' } }
consumers:
  - name: alice
    api_keys: ['alice-key-123']
    plugins: [ { rate_limit: { limit: 3, window: 1m } } ]
  - { name: bob, api_keys: ['bob-key-4567'] }
routes:
  - name: plain
    match: { path_prefix: /plain/ }
    upstream: u
  - name: own
    match: { path_prefix: /own/ }
    plugins: [ { request_headers: { set: { x-from: route } } } ]
    upstream: u
  - name: x
    match: { path_prefix: /x/ }
    plugins:
      - key_auth: {}
      - rate_limit: { limit: 1, window: 1m, by: consumer }
    consumer_plugins:
      alice: [ { rate_limit: { limit: 2, window: 1m } } ]
    upstream: u
  - name: y
    match: { path_prefix: /y/ }
    plugins:
      - key_auth: {}
      - rate_limit: { limit: 1, window: 1m, by: consumer }
    upstream: u
  - name: keyed
    match: { path_prefix: /keyed/, headers: { x-api-key: alice-key-123 }, query: { token: open-sesame-42 } }
    upstream: u
upstreams:
  u: { targets: [ { address: '@U@' } ] }
";

#[tokio::test]
async fn a_route_plugin_replaces_the_global_one_of_its_name() {
    let up = TestUpstream::start("U").await;
    let gw = Portico::start(&fill(CONFIG, &[("U", &up.addr())]));
    let mut c = H1::connect(&gw.addr("web")).await;
    assert_eq!(c.send(req("/plain/a", &[])).await.unwrap().status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-from"], "global");
    assert_eq!(seen.headers["x-global-only"], "yes");

    assert_eq!(c.send(req("/own/a", &[])).await.unwrap().status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-from"], "route");
    // Every global instance of the name gives way, not only the settings the route repeats.
    assert!(
        seen.headers.get("x-global-only").is_none(),
        "{:?}",
        seen.headers
    );
}

/// The statuses of six requests on one connection with this key.
async fn statuses(web: &str, path: &str, key: &str) -> Vec<u16> {
    let mut c = H1::connect(web).await;
    let mut out = Vec::new();
    for _ in 0..6 {
        out.push(
            c.send(req(path, &[("x-api-key", key)]))
                .await
                .unwrap()
                .status,
        );
    }
    out
}

/// How many 200s before the first 429, and that only 429s follow.
fn passed(statuses: &[u16]) -> usize {
    let ok = statuses.iter().take_while(|s| **s == 200).count();
    assert!(statuses[ok..].iter().all(|s| *s == 429), "{statuses:?}");
    ok
}

#[tokio::test]
async fn route_consumer_over_consumer_over_route() {
    let up = TestUpstream::start("U").await;
    let gw = Portico::start(&fill(CONFIG, &[("U", &up.addr())]));
    let web = gw.addr("web");
    // On x: alice's limit there (2) beats her own (3), which would beat the route's (1).
    assert_eq!(passed(&statuses(&web, "/x/a", "alice-key-123").await), 2);
    // Bob carries nothing: the route's 1.
    assert_eq!(passed(&statuses(&web, "/x/a", "bob-key-4567").await), 1);
    // On y, where the route says nothing for her, alice's own 3 beats the route's 1; route x's
    // consumer_plugins do not reach here (her own bucket was not touched on x).
    assert_eq!(passed(&statuses(&web, "/y/a", "alice-key-123").await), 3);
    assert_eq!(passed(&statuses(&web, "/y/a", "bob-key-4567").await), 1);
    // Her limit on x counts on its own: still spent.
    assert_eq!(
        statuses(&web, "/x/a", "alice-key-123").await,
        [429; 6],
        "alice's limit on x"
    );
}

#[tokio::test]
async fn get_config_redacts_matcher_values_on_credentials() {
    let up = TestUpstream::start("U").await;
    let gw = Portico::start(&fill(CONFIG, &[("U", &up.addr())]));
    let admin = gw.admin.clone().unwrap();
    let reply = get(&admin, "/config").await;
    assert_eq!(reply.status, 200);
    for secret in ["alice-key-123", "bob-key-4567", "open-sesame-42"] {
        assert!(!reply.body.contains(secret), "{secret} in {}", reply.body);
    }
    let config = reply.json();
    let keyed = config["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "keyed")
        .unwrap();
    assert_eq!(keyed["match"]["headers"]["x-api-key"], "<redacted>");
    assert_eq!(keyed["match"]["query"]["token"], "<redacted>");
    let x = config["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "x")
        .unwrap();
    assert_eq!(
        x["consumer_plugins"]["alice"][0]["rate_limit"]["limit"], 2,
        "{x}"
    );
    // The matcher still works: the value is only hidden.
    let mut c = H1::connect(&gw.addr("web")).await;
    let r = c
        .send(req(
            "/keyed/a?token=open-sesame-42",
            &[("x-api-key", "alice-key-123")],
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}
