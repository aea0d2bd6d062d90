//! One watch per node on the shared config key: every change goes to the control thread,
//! which applies it as a reload. After a lost connection the watch resumes from the revision
//! after the last one seen, so no change is missed; when etcd compacted those revisions
//! away, the key is read afresh (a full reload, not a stuck node). Reconnects back off with
//! jitter, so many nodes do not storm a restarted etcd.

use std::sync::Arc;
use std::time::Duration;

use super::Cluster;
use super::etcd::{Event, WatchItem};

/// A change of the shared config, for the control thread.
#[derive(Debug)]
pub(crate) struct Change {
    /// The config key's revision.
    pub(crate) revision: i64,
    /// The config text; none when the key was deleted (the file's own sections run again).
    pub(crate) text: Option<String>,
}

/// First pause after a failure; doubled per failure up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Watches until the control thread stops listening.
pub(crate) async fn run(cluster: Arc<Cluster>, changes: tokio::sync::mpsc::Sender<Change>) {
    let key = cluster.config_key();
    // The revision to watch from; none: read the key first.
    let mut from: Option<i64> = None;
    let mut failures: u32 = 0;
    loop {
        if changes.is_closed() {
            return;
        }
        let start = match from {
            Some(start) => start,
            None => match cluster.fetch().await {
                Ok((found, store)) => {
                    let change = match found {
                        Some((text, revision)) => Change {
                            revision,
                            text: Some(text),
                        },
                        None => Change {
                            revision: 0,
                            text: None,
                        },
                    };
                    if fresh(&cluster, change.revision) && changes.send(change).await.is_err() {
                        return;
                    }
                    store + 1
                }
                Err(_) => {
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(super::backoff(failures, FIRST_PAUSE, MAX_PAUSE)).await;
                    continue;
                }
            },
        };
        from = Some(start);
        match cluster.client.watch(&key, false, start).await {
            Ok(mut watch) => {
                cluster.status.reached();
                failures = 0;
                loop {
                    let lost = cluster.status.lost_now.notified();
                    let item = tokio::select! {
                        item = watch.next() => item,
                        () = lost => None,
                    };
                    let Some(item) = item else {
                        cluster.status.lost("the watch connection to etcd ended");
                        break;
                    };
                    match item {
                        Ok(WatchItem::Events(events, _)) => {
                            let Some(change) = last_change(events) else {
                                continue;
                            };
                            from = Some(change.revision + 1);
                            cluster.status.saw(change.revision);
                            if changes.send(change).await.is_err() {
                                return;
                            }
                        }
                        Ok(WatchItem::Compacted(upto)) => {
                            tracing::info!(
                                compacted = upto,
                                "etcd: revisions since the last one seen were compacted; \
                                 reading the config afresh"
                            );
                            from = None;
                            break;
                        }
                        Err(err) => {
                            failed(&cluster, &err, &mut from);
                            break;
                        }
                    }
                }
            }
            Err(err) => failed(&cluster, &err, &mut from),
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(super::backoff(failures, FIRST_PAUSE, MAX_PAUSE)).await;
    }
}

/// After a failed watch: a compacted start revision means reading the key afresh; any other
/// failure means etcd is unreachable.
fn failed(cluster: &Cluster, err: &super::etcd::Error, from: &mut Option<i64>) {
    if err.compacted() {
        *from = None;
    } else {
        cluster.status.lost(&err.to_string());
    }
}

/// Whether a config at `revision` is news to this node: neither in force nor refused.
fn fresh(cluster: &Cluster, revision: i64) -> bool {
    revision != cluster.status.applied() && revision != cluster.status.refused()
}

/// The newest state among `events` of the one key watched.
fn last_change(events: Vec<Event>) -> Option<Change> {
    events.into_iter().last().map(|event| match event {
        Event::Put(kv) => Change {
            revision: kv.mod_revision,
            text: Some(String::from_utf8_lossy(&kv.value).into_owned()),
        },
        Event::Delete { revision, .. } => Change {
            revision,
            text: None,
        },
    })
}
