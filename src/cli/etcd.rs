//! `portico config push | pull | history`: the shared config of a cluster (`cluster.etcd`)
//! moved into and out of etcd, and its revisions listed; and what `portico plan` compares
//! when it is asked about etcd.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::cluster::{self, etcd};
use crate::config::node::Node;
use crate::runtime::Snapshot;

/// Which etcd, and which node file the shared config is checked with.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// An etcd client URL, like http://127.0.0.1:2379 (repeat for several members;
    /// default: `cluster.etcd.endpoints` of the --config node file).
    #[arg(long = "etcd", value_name = "URL")]
    etcd: Vec<String>,
    /// The key prefix (default: the node file's `cluster.etcd.prefix`, else /portico/).
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
    /// A node's own config file: its `cluster.etcd` says where etcd is, and the shared
    /// config is checked merged into it (so the routes' listeners resolve).
    #[arg(short = 'c', long = "config", value_name = "NODE.yaml")]
    node: Option<PathBuf>,
}

impl Target {
    /// The etcd at `etcd` (or the node file's), under `prefix`, checked with `node`.
    pub(crate) fn new(etcd: Vec<String>, prefix: Option<String>, node: Option<PathBuf>) -> Self {
        Target { etcd, prefix, node }
    }
}

/// `portico config ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum Action {
    /// Checks FILE (the shared config: upstreams, routes, consumers, plugins) and writes it
    /// to etcd, where every node applies it within a second.
    Push {
        /// The shared config (YAML or JSON).
        file: PathBuf,
        #[command(flatten)]
        target: Target,
        /// Write only if the config in etcd is still at this revision (see `history`);
        /// without it, the push replaces whatever is there.
        #[arg(long, value_name = "REVISION")]
        if_revision: Option<i64>,
    },
    /// Prints the shared config etcd holds (at a past revision with --revision).
    Pull {
        #[command(flatten)]
        target: Target,
        /// A past revision (one `history` lists).
        #[arg(long, value_name = "REVISION")]
        revision: Option<i64>,
    },
    /// Lists the revisions of the shared config etcd still holds, newest first.
    History {
        #[command(flatten)]
        target: Target,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// What a [`Target`] names: the client, the config key, and the node file's document.
struct Resolved {
    client: etcd::Client,
    key: Vec<u8>,
    prefix: String,
    node: Option<(PathBuf, Node)>,
}

fn resolve(target: &Target) -> Result<Resolved, String> {
    let mut endpoints = target.etcd.clone();
    let mut prefix = target.prefix.clone();
    let mut timeout = std::time::Duration::from_secs(2);
    let mut node = None;
    if let Some(path) = &target.node {
        let (spec, errors) = crate::config::read(path);
        if let Some(first) = errors.first() {
            return Err(first.to_string());
        }
        if let Some(etcd) = spec.cluster.as_ref().and_then(|c| c.etcd.as_ref()) {
            if endpoints.is_empty() {
                endpoints = etcd.endpoints.iter().map(|e| e.value.clone()).collect();
            }
            prefix = prefix.or_else(|| Some(etcd.prefix.value.clone()));
            timeout = etcd.timeout.0;
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let document = crate::config::node::parse(&text)
            .map_err(|e| format!("{}:{}:{}: {e}", path.display(), e.pos.line, e.pos.col))?;
        node = Some((path.clone(), document));
    }
    if endpoints.is_empty() {
        return Err("name etcd with --etcd URL, or --config NODE.yaml with cluster.etcd".into());
    }
    let prefix = prefix.unwrap_or_else(|| "/portico/".to_owned());
    Ok(Resolved {
        client: etcd::Client::new(&endpoints, timeout)?,
        key: format!("{prefix}config").into_bytes(),
        prefix,
        node,
    })
}

fn block_on<T>(work: impl std::future::Future<Output = T>) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    Ok(runtime.block_on(work))
}

/// Runs a `portico config` command.
pub(crate) fn run(action: Action) -> ExitCode {
    let outcome = match action {
        Action::Push {
            file,
            target,
            if_revision,
        } => push(&file, &target, if_revision),
        Action::Pull { target, revision } => pull(&target, revision),
        Action::History { target, limit } => history(&target, limit),
    };
    match outcome {
        Ok(text) => {
            super::out(&text);
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("{message}");
            ExitCode::from(code)
        }
    }
}

/// Exit 1: etcd (or the target) failed; exit 2: the config is invalid.
type Outcome = Result<String, (u8, String)>;

fn push(file: &Path, target: &Target, if_revision: Option<i64>) -> Outcome {
    let text = std::fs::read_to_string(file)
        .map_err(|e| (1, format!("{}: cannot read: {e}", file.display())))?;
    let target = resolve(target).map_err(|e| (1, e))?;
    check(file, &text, target.node.as_ref()).map_err(|e| (2, e))?;
    let written = block_on(async {
        match if_revision {
            Some(expected) => {
                target
                    .client
                    .put_if(&target.key, text.as_bytes(), expected, 0)
                    .await
            }
            None => target
                .client
                .put(&target.key, text.as_bytes(), 0)
                .await
                .map(Some),
        }
    })
    .map_err(|e| (1, e))?
    .map_err(|e| (1, e.to_string()))?;
    match written {
        Some(revision) => Ok(format!(
            "{} written to etcd at {}config, revision {revision}\n",
            file.display(),
            target.prefix
        )),
        None => Err((
            1,
            format!(
                "not written: the config in etcd is no longer at revision {} (see `portico \
                 config history`)",
                if_revision.unwrap_or(0)
            ),
        )),
    }
}

/// Checks a shared config as a node would: no node-specific section, and valid merged into
/// the node file (or alone).
fn check(file: &Path, text: &str, node: Option<&(PathBuf, Node)>) -> Result<(), String> {
    let shared = cluster::parse_shared(text).map_err(|e| format!("{}:{e}", file.display()))?;
    match node {
        Some((path, document)) => {
            compile_merged(path, document, &shared).map_err(|problems| {
                format!(
                    "{} merged into {}:\n{problems}",
                    file.display(),
                    path.display()
                )
            })?;
        }
        None => {
            if let Err(errors) = super::compile(file) {
                return Err(errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"));
            }
        }
    }
    Ok(())
}

/// `shared` merged into the node file `document` at `path`, compiled.
pub(crate) fn compile_merged(
    path: &Path,
    document: &Node,
    shared: &Node,
) -> Result<Snapshot, String> {
    let merged = cluster::merge(document, shared);
    super::with_env(|env| crate::runtime::writes::compile_document(&merged, path, env))
        .map(|(snapshot, _)| snapshot)
        .map_err(|problems| {
            problems
                .iter()
                .filter(|p| p.severity == "error")
                .map(|p| format!("{}: {}", p.path.as_deref().unwrap_or("$"), p.message))
                .collect::<Vec<_>>()
                .join("\n")
        })
}

fn pull(target: &Target, revision: Option<i64>) -> Outcome {
    let target = resolve(target).map_err(|e| (1, e))?;
    let (kv, _) = block_on(target.client.get(&target.key, revision))
        .map_err(|e| (1, e))?
        .map_err(|e| (1, e.to_string()))?;
    match kv {
        Some(kv) => Ok(String::from_utf8_lossy(&kv.value).into_owned()),
        None => Err((
            1,
            format!("etcd holds no config at {}config", target.prefix),
        )),
    }
}

fn history(target: &Target, limit: usize) -> Outcome {
    let target = resolve(target).map_err(|e| (1, e))?;
    let (rows, end) = block_on(walk_back(&target.client, &target.key, limit))
        .map_err(|e| (1, e))?
        .map_err(|e| (1, e.to_string()))?;
    if rows.is_empty() {
        return Err((
            1,
            format!("etcd holds no config at {}config", target.prefix),
        ));
    }
    let mut text = format!(
        "{:>10}  {:>7}  {:>8}  sections\n",
        "revision", "version", "bytes"
    );
    for kv in &rows {
        let sections = cluster::parse_shared(&String::from_utf8_lossy(&kv.value))
            .map(|node| summary(&node))
            .unwrap_or_else(|e| format!("(invalid: {e})"));
        text.push_str(&format!(
            "{:>10}  {:>7}  {:>8}  {sections}\n",
            kv.mod_revision,
            kv.version,
            kv.value.len()
        ));
    }
    text.push_str(end);
    Ok(text)
}

/// `routes 3, upstreams 2` for a shared config.
fn summary(node: &Node) -> String {
    node.as_map()
        .map(|entries| {
            entries
                .iter()
                .map(|(k, v)| match &v.value {
                    crate::config::node::Value::Seq(items) => format!("{} {}", k.name, items.len()),
                    crate::config::node::Value::Map(items) => format!("{} {}", k.name, items.len()),
                    _ => k.name.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The key's versions from the newest back, each read at the revision before the last one
/// found, until it did not exist, etcd compacted the rest, or `limit`; and how it ended.
async fn walk_back(
    client: &etcd::Client,
    key: &[u8],
    limit: usize,
) -> Result<(Vec<etcd::Kv>, &'static str), etcd::Error> {
    let mut rows = Vec::new();
    let mut at = None;
    while rows.len() < limit {
        match client.get(key, at).await {
            Ok((Some(kv), _)) => {
                at = Some(kv.mod_revision - 1);
                let first = kv.version <= 1;
                rows.push(kv);
                if first || at == Some(0) {
                    return Ok((rows, "(the first version)\n"));
                }
            }
            Ok((None, _)) => return Ok((rows, "(the key did not exist before)\n")),
            Err(err) if err.compacted() && !rows.is_empty() => {
                return Ok((rows, "(older revisions were compacted)\n"));
            }
            Err(err) => return Err(err),
        }
    }
    Ok((rows, "(more: raise --limit)\n"))
}

/// A compiled config and how `plan` names it.
type Side = (Snapshot, String);

/// `portico plan --etcd ...`: the shared config etcd holds and the new one, each merged into
/// the node file (or alone), compiled; the snapshots to compare, with their labels.
pub(crate) fn plan_sides(new: &Path, target: &Target) -> Result<(Side, Side), (u8, String)> {
    let resolved = resolve(target).map_err(|e| (1, e))?;
    let new_text = std::fs::read_to_string(new)
        .map_err(|e| (2, format!("{}: cannot read: {e}", new.display())))?;
    let compile_side = |text: &str, label: &str| -> Result<Snapshot, String> {
        let shared = cluster::parse_shared(text).map_err(|e| format!("{label}:{e}"))?;
        match &resolved.node {
            Some((path, document)) => compile_merged(path, document, &shared),
            None => compile_merged(new, &cluster::shared_of(&shared), &shared),
        }
        .map_err(|e| format!("{label}:\n{e}"))
    };
    let new_snap = compile_side(&new_text, &new.display().to_string()).map_err(|e| (2, e))?;
    let (kv, _) = block_on(resolved.client.get(&resolved.key, None))
        .map_err(|e| (1, e))?
        .map_err(|e| (1, e.to_string()))?;
    let (old_text, revision) = kv.map_or((String::new(), 0), |kv| {
        (
            String::from_utf8_lossy(&kv.value).into_owned(),
            kv.mod_revision,
        )
    });
    let old_label = format!("etcd {}config at revision {revision}", resolved.prefix);
    let old_snap = compile_side(&old_text, &old_label)
        .map_err(|e| (1, format!("the config to compare with is invalid: {e}")))?;
    let old_label = format!("{old_label} ({})", old_snap.hash);
    let new_label = format!("{} ({})", new.display(), new_snap.hash);
    Ok(((old_snap, old_label), (new_snap, new_label)))
}
