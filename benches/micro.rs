//! Micro-benchmarks of the hot functions alone: route lookup, header rules, balancer picks,
//! and one request through the whole pipeline in process (no socket).
//!
//! Run with `cargo bench --bench micro`; figures are per call.

use std::net::IpAddr;
use std::sync::LazyLock;

use http::{HeaderMap, HeaderValue, Method, Request};
use portico::bench::{Body, Gateway, set_forwarded, strip_hop_by_hop};

fn main() {
    divan::main();
}

/// Forty prefix routes, forty templates, a few exact paths and a regex: a mid-sized gateway.
fn config() -> String {
    let mut routes = String::new();
    for i in 0..40 {
        routes.push_str(&format!(
            "  - {{ name: prefix{i}, match: {{ path_prefix: /svc{i}/ }}, upstream: rr }}\n"
        ));
        routes.push_str(&format!(
            "  - {{ name: tpl{i}, match: {{ path_template: '/api/v{i}/users/{{id}}' }}, upstream: rr }}\n"
        ));
    }
    let targets: Vec<String> = (0..10)
        .map(|i| format!("{{ address: '127.0.0.1:{}' }}", 9000 + i))
        .collect();
    let targets = targets.join(", ");
    format!(
        "\
listeners:
  - {{ name: web, bind: 127.0.0.1:0 }}
routes:
{routes}  - {{ name: hello, match: {{ path: /hello }}, respond: {{ status: 200, body: hi }} }}
  - name: keyed
    match: {{ path: /keyed }}
    plugins: [ {{ response_headers: {{ set: {{ x-a: b }} }} }}, {{ cors: {{ origins: ['https://a.test'] }} }} ]
    respond: {{ status: 200, body: hi }}
  - {{ name: re, match: {{ path_regex: '^/files/[a-z]+\\\\.txt$' }}, upstream: rr }}
upstreams:
  rr: {{ targets: [ {targets} ] }}
  p2c: {{ balance: p2c_ewma, targets: [ {targets} ] }}
  maglev: {{ balance: maglev, hash_key: client_ip, targets: [ {targets} ] }}
"
    )
}

static GATEWAY: LazyLock<Gateway> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    rt.block_on(Gateway::start(&config()))
});

fn browser_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-US,en;q=0.5"),
        ("cookie", "session=abcdef0123456789; theme=dark"),
        ("connection", "keep-alive"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

mod route {
    use super::*;

    #[divan::bench(args = ["/svc39/orders", "/api/v20/users/42", "/hello", "/files/readme.txt", "/missing"])]
    fn lookup(path: &str) -> bool {
        let headers = HeaderMap::new();
        GATEWAY.route(
            &Method::GET,
            "api.example.com",
            divan::black_box(path),
            &headers,
        )
    }
}

mod headers {
    use super::*;

    #[divan::bench]
    fn hop_by_hop_and_forwarded(bencher: divan::Bencher) {
        let client = HeaderValue::from_static("127.0.0.1");
        let host = HeaderValue::from_static("api.example.com");
        bencher
            .with_inputs(browser_headers)
            .bench_local_refs(|headers| {
                strip_hop_by_hop(headers, false);
                set_forwarded(headers, &client, "http", Some(&host));
            });
    }
}

mod balance {
    use super::*;

    #[divan::bench(args = ["rr", "p2c", "maglev"])]
    fn pick(upstream: &str) -> Option<usize> {
        let headers = HeaderMap::new();
        let client: IpAddr = [10, 1, 2, 3].into();
        GATEWAY.pick(divan::black_box(upstream), client, &headers)
    }
}

mod pipeline {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    }

    fn request(path: &str) -> Request<Body> {
        let mut request = Request::get(path).body(Body::Empty).expect("a request");
        *request.headers_mut() = browser_headers();
        request
    }

    /// A fixed answer: decode, route, exit and log, no plugin.
    #[divan::bench]
    fn respond(bencher: divan::Bencher) {
        let rt = runtime();
        bencher
            .with_inputs(|| request("/hello"))
            .bench_local_values(|req| rt.block_on(GATEWAY.request(req)));
    }

    /// The same with two plugins on the way in and out.
    #[divan::bench]
    fn respond_with_plugins(bencher: divan::Bencher) {
        let rt = runtime();
        bencher
            .with_inputs(|| {
                let mut req = request("/keyed");
                req.headers_mut()
                    .insert("origin", HeaderValue::from_static("https://a.test"));
                req
            })
            .bench_local_values(|req| rt.block_on(GATEWAY.request(req)));
    }

    /// No route: a JSON 404.
    #[divan::bench]
    fn not_found(bencher: divan::Bencher) {
        let rt = runtime();
        bencher
            .with_inputs(|| request("/nowhere/at/all"))
            .bench_local_values(|req| rt.block_on(GATEWAY.request(req)));
    }
}
