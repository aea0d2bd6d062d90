//! The control thread's side of `cluster.etcd`: the config etcd holds at start, each change
//! the watch reports applied as a reload, and admin writes that go to etcd first, guarded by
//! the config key's revision (so two admins on two nodes cannot lose each other's update).

use std::sync::Arc;

use crate::cluster::watch::Change;
use crate::cluster::{self, Cluster};
use crate::config::node::Node;
use crate::runtime::compile::Env;
use crate::runtime::writes::{self, Edit, Problem, Refusal, Written};
use crate::runtime::{Shared, Snapshot};
use crate::server::listeners::ListenerSet;
use tokio::runtime::Handle;

/// How often a write without `If-Match` is retried when another write got in first.
const WRITE_TRIES: usize = 5;

/// The config a node starts with: its file merged with the shared config etcd holds, or,
/// when etcd cannot be reached or holds an invalid config, the file alone (said in the log
/// and `/health`; the watch applies etcd's once it can).
pub(super) async fn start_config(
    cluster: &Cluster,
    file: &Node,
    path: &std::path::Path,
    env: Env<'_>,
) -> Option<(Snapshot, Node)> {
    let (text, revision) = match cluster.fetch().await {
        Ok((found, _)) => found?,
        Err(err) => match cluster.remembered() {
            Some(kept) => {
                tracing::warn!(
                    error = %err,
                    revision = kept.1,
                    "etcd: cannot read the shared config at start; serving the copy kept in \
                     cluster.etcd.cache until etcd answers"
                );
                kept
            }
            None => {
                tracing::error!(
                    error = %err,
                    "etcd: cannot read the shared config at start; serving the file's own \
                     sections until etcd answers"
                );
                return None;
            }
        },
    };
    match compile(cluster, file, &text, revision, path, env) {
        Ok((snapshot, merged)) => {
            cluster.status.set_applied(revision);
            cluster.remember(&text, revision);
            tracing::info!(revision, "etcd: serving the shared config");
            Some((snapshot, merged))
        }
        Err(reason) => {
            cluster.status.refuse(revision, &reason);
            tracing::error!("etcd config refused at start, the file's own sections run:\n{reason}");
            None
        }
    }
}

/// The config at `revision` (`text`) merged into `file` and compiled; or why it is refused.
fn compile(
    cluster: &Cluster,
    file: &Node,
    text: &str,
    revision: i64,
    path: &std::path::Path,
    env: Env<'_>,
) -> Result<(Snapshot, Node), String> {
    let at = format!("etcd {}config at revision {revision}", cluster.prefix);
    let shared = cluster::parse_shared(text).map_err(|e| format!("{at}:{e}"))?;
    let merged = cluster::merge(file, &shared);
    let (snapshot, _) = writes::compile_document(&merged, path, env)
        .map_err(|problems| format!("{at}:\n{}", super::reload::describe(&problems)))?;
    Ok((snapshot, merged))
}

/// Applies a change the watch reported (recorded with trigger `etcd`), or keeps the running
/// config and says why; `true` when applied.
pub(super) async fn apply_change(
    shared: &Arc<Shared>,
    workers: &[Handle],
    listeners: &mut ListenerSet,
    change: Change,
) -> bool {
    let Some(cluster) = shared.cluster.as_deref() else {
        return false;
    };
    let applied = cluster.status.applied();
    if change.revision != 0 && change.revision <= applied {
        // Written by this node's own admin API, and already in force.
        return false;
    }
    let source = super::reload::current_source(shared);
    let env = super::reload::env_of(shared);
    let compiled = match &change.text {
        Some(text) => compile(
            cluster,
            &source.file,
            text,
            change.revision,
            &shared.config_path,
            env,
        ),
        None => {
            // The key was deleted: the file's own sections run again.
            let merged = cluster::merge(&source.file, &cluster::shared_of(&source.file));
            writes::compile_document(&merged, &shared.config_path, env)
                .map(|(snapshot, _)| (snapshot, merged))
                .map_err(|problems| super::reload::describe(&problems))
        }
    };
    let (snapshot, merged) = match compiled {
        Ok(done) => done,
        Err(reason) => {
            cluster.status.refuse(change.revision, &reason);
            return super::reload::record_reload(shared, "etcd", None, Some(reason));
        }
    };
    let hash = Arc::clone(&snapshot.hash);
    match super::reload::apply(shared, workers, listeners, snapshot).await {
        Ok(()) => {
            set_source(shared, merged, change.revision);
            cluster.status.set_applied(change.revision);
            if let Some(text) = &change.text {
                cluster.remember(text, change.revision);
            }
            tracing::info!(revision = change.revision, "etcd: config change applied");
            super::reload::record_reload(shared, "etcd", Some(hash), None)
        }
        Err(err) => {
            let reason = err.to_string();
            cluster.status.refuse(change.revision, &reason);
            super::reload::record_reload(shared, "etcd", Some(hash), Some(reason))
        }
    }
}

/// Records the merged document of the config in force and its etcd revision.
pub(super) fn set_source(shared: &Shared, merged: Node, revision: i64) {
    let mut source = match shared.source.lock() {
        Ok(source) => source,
        Err(poisoned) => poisoned.into_inner(),
    };
    source.document = Arc::new(merged);
    source.origin = writes::Origin::Etcd;
    source.revision = revision;
    source.writes = 0;
}

/// An admin write on a node in a cluster: the edit is made to the shared config etcd holds
/// now, checked merged into this node's file, written to etcd only if nobody wrote since it
/// was read, then put in force here (the other nodes get it from their watch).
pub(super) async fn write(
    shared: &Arc<Shared>,
    workers: &[Handle],
    listeners: &mut ListenerSet,
    edit: &Edit,
    if_match: Option<&[String]>,
) -> Result<Written, Refusal> {
    let Some(cluster) = shared.cluster.as_deref() else {
        return Err(Refusal::Stopping);
    };
    let key = cluster.config_key();
    for _ in 0..WRITE_TRIES {
        let current = shared.snapshot.load_full();
        let source = super::reload::current_source(shared);
        let (found, _) = cluster
            .fetch()
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        let (base, revision) = match &found {
            Some((text, revision)) => match cluster::parse_shared(text) {
                Ok(node) => (node, *revision),
                // A whole new config replaces a broken one; an edit needs a base.
                Err(_) if matches!(edit, Edit::Whole(_)) => {
                    (cluster::shared_of(&source.file), *revision)
                }
                Err(err) => {
                    return Err(Refusal::Bad(format!(
                        "the shared config in etcd (revision {revision}) does not parse \
                         ({err}); replace it whole with PUT /config"
                    )));
                }
            },
            None => (cluster::shared_of(&source.file), 0),
        };
        if let Some(tags) = if_match {
            let named = tags.iter().any(|t| t == "*" || **t == *current.hash);
            if !named || revision != cluster.status.applied() {
                return Err(Refusal::Precondition {
                    current: Arc::clone(&current.hash),
                });
            }
        }
        let (next_shared, created, text) = match edit {
            Edit::Whole(text) => {
                let node = cluster::parse_shared(text)
                    .map_err(|e| Refusal::Invalid(vec![problem(format!("body:{e}"))]))?;
                (node, false, text.clone())
            }
            Edit::Put { .. } | Edit::Delete { .. } => {
                let (node, created) = writes::apply_edit(&base, edit)?;
                let text = writes::render(&node).0;
                (node, created, text)
            }
        };
        let merged = cluster::merge(&source.file, &next_shared);
        let (snapshot, warnings) = match writes::compile_document(
            &merged,
            &shared.config_path,
            super::reload::env_of(shared),
        ) {
            Ok(done) => done,
            Err(problems) => {
                let reason = super::reload::describe(&problems);
                super::reload::record_reload(shared, "admin", None, Some(reason));
                return Err(Refusal::Invalid(problems));
            }
        };
        let written = cluster
            .client
            .put_if(&key, text.as_bytes(), revision, 0)
            .await
            .map_err(|e| {
                if matches!(e, cluster::etcd::Error::Unreachable(_)) {
                    cluster.status.lost(&e.to_string());
                }
                Refusal::Unavailable(e.to_string())
            })?;
        let Some(new_revision) = written else {
            // Someone wrote between the read and this write.
            if if_match.is_some() {
                return Err(Refusal::Precondition {
                    current: Arc::clone(&current.hash),
                });
            }
            continue;
        };
        cluster.status.saw(new_revision);
        let written = Written {
            hash: Arc::clone(&snapshot.hash),
            created,
            restart_required: Vec::new(),
            warnings,
        };
        return super::reload::put_write_in_force(
            shared,
            workers,
            listeners,
            snapshot,
            written,
            |shared| {
                set_source(shared, merged, new_revision);
                cluster.status.set_applied(new_revision);
                cluster.remember(&text, new_revision);
            },
        )
        .await;
    }
    Err(Refusal::Unavailable(format!(
        "other writes kept getting in first ({WRITE_TRIES} tries); retry"
    )))
}

fn problem(message: String) -> Problem {
    Problem {
        severity: "error",
        path: None,
        line: None,
        col: None,
        message,
    }
}
