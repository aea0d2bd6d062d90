//! portico in process, for the micro-benchmarks in `benches/` and the pipeline's own tests:
//! route lookup, header rules, balancer picks and whole requests without a socket. Not a
//! stable API.

use std::sync::Arc;

use http::{HeaderMap, Method, Request, Response};

use crate::observe::{AccessLog, Metrics};
use crate::plugins::state::PluginStates;
use crate::pool::Registry;
use crate::proxy::pipeline::{ConnInfo, handle};
use crate::routing::RequestView;
use crate::runtime::Shared;
use crate::runtime::compile::Env;
use crate::tls::acme::Store;

pub use crate::body::Body;
pub use crate::proxy::headers::{set_forwarded, strip_hop_by_hop};

/// A compiled config served in process, as if from one connection of 127.0.0.1.
#[derive(Debug)]
pub struct Gateway {
    shared: Shared,
    conn: ConnInfo,
}

impl Gateway {
    /// Compiles `yaml` and starts it as `portico run` would (plugin state such as a first
    /// JWKS fetch included); panics with the diagnostics when it is not valid.
    pub async fn start(yaml: &str) -> Self {
        let spec = match crate::config::load_str("bench.yaml", yaml, &|_| None) {
            Ok(spec) => spec,
            Err(diags) => panic!("invalid config: {diags:?}"),
        };
        let registry = Registry::default();
        let metrics = Metrics::new();
        let acme = Arc::new(Store::default());
        let states = PluginStates::default();
        let env = Env {
            registry: &registry,
            metrics: &metrics,
            acme: &acme,
            states: &states,
        };
        let mut snapshot = match crate::runtime::compile(spec, "bench.yaml", env) {
            Ok(snapshot) => snapshot,
            Err(diags) => panic!("invalid config: {diags:?}"),
        };
        states.start(std::mem::take(&mut snapshot.fresh)).await;
        let listener: Arc<str> = match snapshot.listeners.first() {
            Some(l) => Arc::clone(&l.name),
            None => Arc::from("web"),
        };
        let client = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
        let conn = ConnInfo {
            client,
            local: client,
            listener,
            framing: None,
            client_value: crate::proxy::headers::client_value(client.ip()),
            scheme: "http",
            client_cert: None,
            tls: None,
            tunnels: None,
            admission: None,
        };
        let shared = Shared::new(
            snapshot,
            registry,
            metrics,
            (AccessLog::disabled(), None),
            "bench.yaml".into(),
            acme,
            states,
        );
        Gateway { shared, conn }
    }

    /// The whole pipeline for one request.
    pub async fn request(&self, request: Request<Body>) -> Response<Body> {
        handle(&self.shared, &self.conn, request).await.0
    }

    /// The route the first listener picks for a request (the routing stage alone).
    pub fn route(&self, method: &Method, host: &str, path: &str, headers: &HeaderMap) -> bool {
        let snap = self.shared.snapshot.load();
        let Some(listener) = snap.listeners.first() else {
            return false;
        };
        let (path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        let view = RequestView {
            client: std::net::IpAddr::from([127, 0, 0, 1]),
            host,
            path,
            query,
            method,
            headers,
        };
        listener.find(&view).is_some()
    }

    /// A balancer pick of upstream `name` for a client (the select stage alone).
    pub fn pick(&self, name: &str, client: std::net::IpAddr, headers: &HeaderMap) -> Option<usize> {
        let snap = self.shared.snapshot.load();
        let upstream = snap.upstream(name)?;
        let ctx = RequestView {
            client,
            host: "",
            method: &http::Method::GET,
            headers,
            path: "/",
            query: None,
        };
        upstream.balancer.select(&upstream.targets, &ctx, &[])
    }
}

/// Runs the server on the config file at `config`, as `portico run` does, until the process
/// ends: for tests that measure the whole process (`tests/idle_memory.rs`).
pub fn run_server(config: &std::path::Path) -> Result<(), String> {
    crate::server::reload::run(config, None).map_err(|err| err.to_string())
}
