//! A cluster of portico nodes on etcd (`cluster.etcd`): the shared config every node runs,
//! watched and applied as a reload is; admin writes guarded by the key's revision; and the
//! node list, each node's entry bound to a lease.
//!
//! etcd layout, under the configured prefix (`/portico/` by default):
//!
//! ```text
//! PREFIX config          the shared config (YAML or JSON text): upstreams, routes, ...
//! PREFIX nodes/ID        one node's entry (JSON), bound to its lease
//! ```
//!
//! A node's own file keeps what is node-specific ([`NODE_SECTIONS`]); the rest comes from
//! etcd once etcd holds a config (until then, the file's own sections run).

pub(crate) mod etcd;
pub(crate) mod nodes;
pub(crate) mod watch;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use crate::config::Diagnostics;
use crate::config::node::{Node, Value};
use crate::config::spec::EtcdSpec;

/// Top-level sections that stay in each node's own file and that etcd never holds.
pub(crate) const NODE_SECTIONS: &[&str] = &[
    "workers",
    "pin_workers",
    "drain_timeout",
    "admin",
    "access_log",
    "upgrade",
    "tracing",
    "cluster",
    "listeners",
];

/// Checks `cluster.etcd` (the config compile calls it).
pub(crate) fn check(spec: &EtcdSpec, diags: &mut Diagnostics) {
    if spec.endpoints.is_empty() {
        diags.error(
            spec.prefix.pos,
            "cluster.etcd.endpoints: name at least one etcd client URL, like http://127.0.0.1:2379",
        );
    }
    for endpoint in &spec.endpoints {
        if let Err(err) = etcd::parse_endpoint(endpoint) {
            diags.error(endpoint.pos, format!("cluster.etcd.endpoints: {err}"));
        }
    }
    if spec.prefix.is_empty() {
        diags.error(spec.prefix.pos, "cluster.etcd.prefix: must not be empty");
    }
    if spec.timeout.0.is_zero() {
        diags.error(spec.prefix.pos, "cluster.etcd.timeout: must be more than 0");
    }
    if spec.lease_ttl.0 < Duration::from_secs(2) {
        diags.error(
            spec.prefix.pos,
            "cluster.etcd.lease_ttl: must be at least 2s (it is renewed every third of it)",
        );
    }
}

/// One node's link to the cluster's etcd, and what it knows of it.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// The etcd client.
    pub(crate) client: etcd::Client,
    /// The key prefix.
    pub(crate) prefix: String,
    /// This node's name.
    pub(crate) node_id: String,
    /// The lease time of this node's entry.
    pub(crate) lease_ttl: Duration,
    /// Where the last shared config applied is kept (`cluster.etcd.cache`).
    pub(crate) cache: Option<std::path::PathBuf>,
    /// What this node knows of etcd.
    pub(crate) status: Status,
}

/// What a node knows of etcd, for `/health`, metrics and the dashboard.
#[derive(Debug, Default)]
pub(crate) struct Status {
    connected: AtomicBool,
    /// The config key's revision in force here (0: the file's own sections run).
    applied: AtomicI64,
    /// The newest revision of the config key this node saw.
    seen: AtomicI64,
    /// Why etcd cannot be reached, and since when; none while connected.
    trouble: Mutex<Option<(SystemTime, String)>>,
    /// The last config revision refused here, and why.
    refused: Mutex<Option<(i64, String)>>,
    /// Woken when a call finds etcd unreachable, so an open watch is started afresh.
    pub(crate) lost_now: tokio::sync::Notify,
    /// Woken when the revision in force changes (or one is refused), for the node list.
    pub(crate) changed: tokio::sync::Notify,
    /// The lease of this node's entry in the node list (0: none yet).
    pub(crate) lease: AtomicI64,
}

/// A view of [`Status`] at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct StatusView {
    /// Whether the last etcd call succeeded.
    pub(crate) connected: bool,
    /// The endpoint calls go to.
    pub(crate) endpoint: String,
    /// The config revision in force (0: none from etcd yet).
    pub(crate) revision: i64,
    /// The newest config revision seen.
    pub(crate) seen_revision: i64,
    /// Why etcd cannot be reached.
    pub(crate) error: Option<String>,
    /// Since when (seconds since the Unix epoch).
    pub(crate) disconnected_since: Option<u64>,
    /// The last config revision this node refused.
    pub(crate) refused_revision: Option<i64>,
    /// Why it was refused.
    pub(crate) refused_reason: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Status {
    /// An etcd call succeeded.
    pub(crate) fn reached(&self) {
        self.connected.store(true, Ordering::Relaxed);
        *lock(&self.trouble) = None;
    }

    /// An etcd call failed: etcd is unreachable for `why`.
    pub(crate) fn lost(&self, why: &str) {
        let was = self.connected.swap(false, Ordering::Relaxed);
        let mut trouble = lock(&self.trouble);
        let since = trouble
            .as_ref()
            .map_or_else(SystemTime::now, |(since, _)| *since);
        if was || trouble.is_none() {
            tracing::warn!(
                error = why,
                "etcd: unreachable; serving the last good config"
            );
        }
        *trouble = Some((since, why.to_owned()));
        self.lost_now.notify_waiters();
    }

    /// The last config revision refused here (0: none).
    pub(crate) fn refused(&self) -> i64 {
        lock(&self.refused).as_ref().map_or(0, |(r, _)| *r)
    }

    /// Whether the last etcd call succeeded.
    pub(crate) fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The config revision in force (0: none from etcd).
    pub(crate) fn applied(&self) -> i64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// The config at `revision` is in force.
    pub(crate) fn set_applied(&self, revision: i64) {
        self.applied.store(revision, Ordering::Relaxed);
        self.saw(revision);
        let mut refused = lock(&self.refused);
        if refused.as_ref().is_some_and(|(r, _)| *r <= revision) {
            *refused = None;
        }
        self.changed.notify_one();
    }

    /// The config key reached `revision`.
    pub(crate) fn saw(&self, revision: i64) {
        self.seen.fetch_max(revision, Ordering::Relaxed);
    }

    /// The newest config revision seen.
    pub(crate) fn seen(&self) -> i64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// The config at `revision` was refused for `why`.
    pub(crate) fn refuse(&self, revision: i64, why: &str) {
        *lock(&self.refused) = Some((revision, why.to_owned()));
        self.changed.notify_one();
    }
}

impl Cluster {
    /// The link `spec` describes for the node `node_id`; a relative cache path is taken
    /// from `base`.
    pub(crate) fn new(
        spec: &EtcdSpec,
        node_id: String,
        base: &std::path::Path,
    ) -> Result<Self, String> {
        let endpoints: Vec<String> = spec.endpoints.iter().map(|e| e.value.clone()).collect();
        Ok(Cluster {
            client: etcd::Client::new(&endpoints, spec.timeout.0)?,
            prefix: spec.prefix.value.clone(),
            node_id,
            lease_ttl: spec.lease_ttl.0,
            cache: spec.cache.as_ref().map(|c| base.join(&c.value)),
            status: Status::default(),
        })
    }

    /// Keeps `text` (the shared config at `revision`, just applied) in the cache file, if
    /// there is one: written beside it, then renamed over it, so a crash leaves the old copy.
    pub(crate) fn remember(&self, text: &str, revision: i64) {
        let Some(path) = &self.cache else {
            return;
        };
        let fresh = path.with_extension("tmp");
        let written = std::fs::write(&fresh, format!("{revision}\n{text}"))
            .and_then(|()| std::fs::rename(&fresh, path));
        if let Err(err) = written {
            tracing::warn!(path = %path.display(), error = %err, "etcd: cannot write the config cache");
        }
    }

    /// The shared config the cache file keeps and its revision, if it holds one.
    pub(crate) fn remembered(&self) -> Option<(String, i64)> {
        let text = std::fs::read_to_string(self.cache.as_ref()?).ok()?;
        let (revision, config) = text.split_once('\n')?;
        Some((config.to_owned(), revision.parse().ok()?))
    }

    /// The key of the shared config.
    pub(crate) fn config_key(&self) -> Vec<u8> {
        format!("{}config", self.prefix).into_bytes()
    }

    /// The prefix of the node list.
    pub(crate) fn nodes_prefix(&self) -> Vec<u8> {
        format!("{}nodes/", self.prefix).into_bytes()
    }

    /// What this node knows of etcd now.
    pub(crate) fn view(&self) -> StatusView {
        let trouble = lock(&self.status.trouble).clone();
        let refused = lock(&self.status.refused).clone();
        StatusView {
            connected: self.status.connected(),
            endpoint: self.client.endpoint().to_owned(),
            revision: self.status.applied(),
            seen_revision: self.status.seen(),
            disconnected_since: trouble.as_ref().map(|(since, _)| {
                since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            }),
            error: trouble.map(|(_, why)| why),
            refused_revision: refused.as_ref().map(|(r, _)| *r),
            refused_reason: refused.map(|(_, why)| why),
        }
    }

    /// The shared config in etcd now: its text and the key's revision (none when etcd holds
    /// none), and the store's revision. Marks etcd reached or lost.
    pub(crate) async fn fetch(&self) -> Result<(Option<(String, i64)>, i64), etcd::Error> {
        match self.client.get(&self.config_key(), None).await {
            Ok((kv, store)) => {
                self.status.reached();
                let Some(kv) = kv else {
                    return Ok((None, store));
                };
                self.status.saw(kv.mod_revision);
                // Not UTF-8: compiled as text all the same, so the refusal says where.
                let text = String::from_utf8_lossy(&kv.value).into_owned();
                Ok((Some((text, kv.mod_revision)), store))
            }
            Err(err) => {
                if matches!(err, etcd::Error::Unreachable(_)) {
                    self.status.lost(&err.to_string());
                }
                Err(err)
            }
        }
    }
}

/// This node's default name: the host name and the admin port (or the process id).
pub(crate) fn default_node_id(admin_port: Option<u16>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "portico".to_owned());
    match admin_port {
        Some(port) => format!("{host}:{port}"),
        None => format!("{host}-{}", std::process::id()),
    }
}

/// The shared config text from etcd, parsed: a mapping without node-specific sections (an
/// empty text is an empty config).
pub(crate) fn parse_shared(text: &str) -> Result<Node, String> {
    let node = crate::config::node::parse(text)
        .map_err(|err| format!("{}:{}: {err}", err.pos.line, err.pos.col))?;
    match &node.value {
        Value::Null => Ok(Node {
            pos: node.pos,
            value: Value::Map(Vec::new()),
        }),
        Value::Map(entries) => {
            if let Some((key, _)) = entries
                .iter()
                .find(|(k, _)| NODE_SECTIONS.contains(&k.name.as_str()))
            {
                return Err(format!(
                    "{}:{}: `{}` is node-specific: it stays in each node's own file, not in \
                     etcd (etcd holds the shared rest: upstreams, routes, consumers, plugins)",
                    key.pos.line, key.pos.col, key.name
                ));
            }
            Ok(node)
        }
        _ => Err("the shared config must be a mapping of sections".into()),
    }
}

/// The file's shared sections alone (what a cluster without a config in etcd runs).
pub(crate) fn shared_of(file: &Node) -> Node {
    Node {
        pos: file.pos,
        value: Value::Map(sections(file, false)),
    }
}

/// The config a node runs: its file's node-specific sections, then `shared`'s.
pub(crate) fn merge(file: &Node, shared: &Node) -> Node {
    let mut entries = sections(file, true);
    if let Some(more) = shared.as_map() {
        entries.extend(more.iter().cloned());
    }
    Node {
        pos: file.pos,
        value: Value::Map(entries),
    }
}

/// The node-specific sections of `file` (`node`), or the others.
fn sections(file: &Node, node: bool) -> Vec<(crate::config::node::Key, Node)> {
    file.as_map()
        .map(|entries| {
            entries
                .iter()
                .filter(|(k, _)| NODE_SECTIONS.contains(&k.name.as_str()) == node)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// A jittered back-off: `base` doubled per failure up to `cap`, then spread over ±50%.
pub(crate) fn backoff(failures: u32, base: Duration, cap: Duration) -> Duration {
    let plain = base.saturating_mul(1 << failures.min(16)).min(cap);
    let spread = 0.5 + (crate::random::random_u64() % 1000) as f64 / 1000.0;
    plain.mul_f64(spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(node: &Node) -> Vec<String> {
        node.as_map()
            .map(|e| e.iter().map(|(k, _)| k.name.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_node_keeps_its_own_sections_and_takes_the_rest_from_etcd() {
        let file = crate::config::node::parse(
            "admin: { listen: 127.0.0.1:9000 }\nlisteners: []\nroutes: [ { name: old } ]\n",
        )
        .expect("parses");
        let shared = parse_shared("upstreams: {}\nroutes: [ { name: new } ]\n").expect("parses");
        let merged = merge(&file, &shared);
        assert_eq!(keys(&merged), ["admin", "listeners", "upstreams", "routes"]);
        assert_eq!(keys(&shared_of(&file)), ["routes"]);
    }

    #[test]
    fn etcd_never_holds_node_sections() {
        let err = parse_shared("routes: []\nlisteners: []\n").expect_err("refused");
        assert!(
            err.starts_with("2:1: `listeners` is node-specific"),
            "{err}"
        );
        assert!(parse_shared("- a\n").is_err());
        assert_eq!(
            keys(&parse_shared("").expect("empty is empty")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        for failures in 0..40 {
            let d = backoff(failures, base, cap);
            assert!(d <= cap.mul_f64(1.5), "{d:?}");
            assert!(d >= base.mul_f64(0.5), "{d:?}");
        }
    }
}
