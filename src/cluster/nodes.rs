//! The node list: each node keeps an entry under `PREFIX nodes/ID`, bound to a lease it
//! renews every third of `cluster.etcd.lease_ttl`, so a node that stops (or loses etcd)
//! drops out of the list by itself. The entry is rewritten when what it says changes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::Cluster;

/// One node's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The node's name.
    pub(crate) id: String,
    /// Where its admin API listens (empty without one).
    pub(crate) address: String,
    /// portico's version on it.
    pub(crate) version: String,
    /// The shared config revision it runs (0: none from etcd).
    pub(crate) config_revision: i64,
    /// When it started (seconds since the Unix epoch).
    pub(crate) started: u64,
    /// `ok`, or `degraded` while its config lags (a refused revision).
    pub(crate) health: String,
}

/// This node's entry now.
pub(crate) fn entry(cluster: &Cluster, address: &str, started: SystemTime) -> Entry {
    let refused = cluster.status.refused();
    Entry {
        id: cluster.node_id.clone(),
        address: address.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        config_revision: cluster.status.applied(),
        started: started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        health: if refused > cluster.status.applied() {
            "degraded".to_owned()
        } else {
            "ok".to_owned()
        },
    }
}

/// Keeps this node's entry in etcd until the process ends.
pub(crate) async fn run(cluster: Arc<Cluster>, address: String) {
    let started = SystemTime::now();
    let key = [cluster.nodes_prefix(), cluster.node_id.as_bytes().to_vec()].concat();
    let renew = (cluster.lease_ttl / 3).max(Duration::from_millis(500));
    let mut lease: i64 = 0;
    let mut written: Option<Entry> = None;
    let mut failures: u32 = 0;
    loop {
        let now = entry(&cluster, &address, started);
        let step = async {
            if lease == 0 {
                lease = cluster.client.grant(cluster.lease_ttl).await?;
                written = None;
            } else if cluster.client.keep_alive(lease).await? <= 0 {
                // Expired meanwhile (etcd was away longer than the lease): a new one.
                lease = cluster.client.grant(cluster.lease_ttl).await?;
                written = None;
            }
            cluster
                .status
                .lease
                .store(lease, std::sync::atomic::Ordering::Relaxed);
            if written.as_ref() != Some(&now) {
                let value = serde_json::to_vec(&now).unwrap_or_default();
                cluster.client.put(&key, &value, lease).await?;
                written = Some(now.clone());
            }
            Ok::<_, super::etcd::Error>(())
        };
        let pause = match step.await {
            Ok(()) => {
                cluster.status.reached();
                failures = 0;
                renew
            }
            Err(err) => {
                cluster.status.lost(&err.to_string());
                failures = failures.saturating_add(1);
                super::backoff(failures, Duration::from_millis(200), renew)
            }
        };
        // Woken early when the config revision changes, so the list shows it at once.
        let _ = tokio::time::timeout(pause, cluster.status.changed.notified()).await;
    }
}

/// Takes this node out of the list at once (its lease revoked), as the process stops.
pub(crate) async fn leave(cluster: &Cluster) {
    let lease = cluster
        .status
        .lease
        .swap(0, std::sync::atomic::Ordering::Relaxed);
    if lease != 0
        && let Err(err) = cluster.client.revoke(lease).await
    {
        tracing::warn!(error = %err, "etcd: could not leave the node list; the entry expires by itself");
    }
}

/// Every node's entry, in id order, and the store's revision.
pub(crate) async fn list(cluster: &Cluster) -> Result<Vec<Entry>, super::etcd::Error> {
    let (kvs, _) = cluster.client.list(&cluster.nodes_prefix()).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}
