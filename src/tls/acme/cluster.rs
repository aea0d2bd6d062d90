//! ACME in a cluster (`cluster.etcd` with `secret_key`): one node at a time orders or renews
//! a certificate, under a lock in etcd, and stores it there sealed; every node serves it.
//!
//! etcd layout, under `PREFIX acme/` (names: the certificate's domains, lowercase, sorted,
//! joined by `,`):
//!
//! ```text
//! certs/NAMES                    the certificate chain and key (sealed JSON)
//! accounts/DIRECTORY             the ACME account's credentials (sealed JSON)
//! locks/NAMES                    the node ordering NAMES now, bound to its lease
//! challenges/http-01/TOKEN       an HTTP-01 key authorization, bound to the same lease
//! challenges/tls-alpn-01/NAME    a TLS-ALPN-01 digest (base64), bound to the same lease
//! ```
//!
//! The lock is a key created only if it does not exist, bound to a lease the holder keeps
//! alive while it orders and revokes when done; a holder that crashes lets its lease expire
//! (`cluster.etcd.lease_ttl`), and with it the lock and its challenges. Every node watches
//! `PREFIX acme/`: a stored certificate is served at once, and a published challenge is
//! answered by whichever node the CA reaches. The holder tells the CA a challenge is ready
//! only once its own watch delivered it (etcd sends a change to every watcher at once), and
//! a short settling time more.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::seal::SealKey;
use super::{AcmeError, AcmeState, Checked, Pems, Settings, Store};
use crate::cluster::Cluster;
use crate::cluster::etcd::{Event, Kv, WatchItem};

/// Most time the holder waits for its watch to deliver a challenge it published.
const ECHO_WAIT: Duration = Duration::from_secs(2);
/// Time given to the other nodes' watches after the holder's own delivered a challenge.
const SETTLE: Duration = Duration::from_millis(150);

/// This node's link to the etcd the cluster's certificates are kept in.
#[derive(Debug)]
pub(crate) struct Link {
    cluster: Arc<Cluster>,
    /// The newest store revision the watch has applied.
    seen: AtomicI64,
    /// Woken when `seen` moves.
    seen_now: tokio::sync::Notify,
    /// Challenges this node answers because etcd holds them (forgotten when the watch starts
    /// afresh, then read again).
    remote: Mutex<Remote>,
    /// The watch, started with the first shared certificate.
    watch: OnceLock<crate::background::BackgroundTask>,
}

#[derive(Debug, Default)]
struct Remote {
    tokens: HashSet<String>,
    names: HashSet<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Link {
    pub(super) fn new(cluster: Arc<Cluster>) -> Self {
        Link {
            cluster,
            seen: AtomicI64::new(0),
            seen_now: tokio::sync::Notify::new(),
            remote: Mutex::new(Remote::default()),
            watch: OnceLock::new(),
        }
    }

    /// `PREFIX acme/`.
    fn prefix(&self) -> Vec<u8> {
        format!("{}acme/", self.cluster.prefix).into_bytes()
    }

    /// `PREFIX acme/` + `rest`.
    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}acme/{rest}", self.cluster.prefix).into_bytes()
    }

    /// Starts the watch of `PREFIX acme/`, once.
    pub(super) fn start_watch(
        self: &Arc<Self>,
        store: &Arc<Store>,
        live_tasks: &prometheus_client::metrics::gauge::Gauge,
    ) {
        self.watch.get_or_init(|| {
            crate::background::spawn(live_tasks, watch(Arc::downgrade(store), Arc::clone(self)))
        });
    }

    fn saw(&self, revision: i64) {
        self.seen.fetch_max(revision, Ordering::Relaxed);
        self.seen_now.notify_waiters();
    }

    /// Waits until the watch applied `revision` (false: not within [`ECHO_WAIT`]).
    async fn wait_seen(&self, revision: i64) -> bool {
        let deadline = tokio::time::Instant::now() + ECHO_WAIT;
        loop {
            // Made before the check, so a wake-up between the two is not lost.
            let notified = self.seen_now.notified();
            if self.seen.load(Ordering::Relaxed) >= revision {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }
}

/// The etcd name of a certificate: its domains, lowercase, sorted, joined by `,`.
fn names(settings: &Settings) -> String {
    let mut domains: Vec<String> = settings
        .domains
        .iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    domains.sort();
    domains.dedup();
    domains.join(",")
}

/// The node ordering a certificate, while it orders: it publishes the challenges.
pub(super) struct Holder<'a> {
    link: &'a Link,
    lease: i64,
}

impl Holder<'_> {
    /// Publishes an HTTP-01 key authorization to every node.
    pub(super) async fn http01(
        &self,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), AcmeError> {
        let at = self.link.key(&format!("challenges/http-01/{token}"));
        self.publish(&at, key_authorization.as_bytes()).await
    }

    /// Publishes a TLS-ALPN-01 digest to every node.
    pub(super) async fn tls_alpn01(&self, name: &str, digest: &[u8]) -> Result<(), AcmeError> {
        let at = self.link.key(&format!("challenges/tls-alpn-01/{name}"));
        self.publish(&at, B64.encode(digest).as_bytes()).await
    }

    async fn publish(&self, at: &[u8], value: &[u8]) -> Result<(), AcmeError> {
        let revision = self
            .link
            .cluster
            .client
            .put(at, value, self.lease)
            .await
            .map_err(AcmeError::Etcd)?;
        if !self.link.wait_seen(revision).await {
            tracing::warn!(
                "etcd: this node's watch did not deliver a published ACME challenge in time; the other nodes may not answer it"
            );
        }
        tokio::time::sleep(SETTLE).await;
        Ok(())
    }
}

/// One check: the stored certificate is taken up; if it is due, the lock is taken and a new
/// one ordered (unless someone stored one meanwhile).
pub(super) async fn check(
    store: &Store,
    link: &Link,
    state: &AcmeState,
    settings: &Settings,
    key: &SealKey,
) -> Result<Checked, AcmeError> {
    let name = names(settings);
    let cert_at = link.key(&format!("certs/{name}"));
    take_stored(link, state, settings, key, &cert_at).await?;
    if !super::due(state, settings) {
        return Ok(Checked::Fresh);
    }
    let client = &link.cluster.client;
    let lock_at = link.key(&format!("locks/{name}"));
    // The holder's certificate comes through the watch; a crashed holder's lock goes when
    // its lease does.
    let busy = Checked::Busy(link.cluster.lease_ttl / 2);
    let (holder, _) = client.get(&lock_at, None).await.map_err(AcmeError::Etcd)?;
    if holder.is_some() {
        return Ok(busy);
    }
    let lease = client
        .grant(link.cluster.lease_ttl)
        .await
        .map_err(AcmeError::Etcd)?;
    let node = link.cluster.node_id.as_bytes();
    let taken = client.put_if(&lock_at, node, 0, lease).await;
    if !matches!(taken, Ok(Some(_))) {
        let _ = client.revoke(lease).await;
        return match taken {
            Err(err) => Err(AcmeError::Etcd(err)),
            _ => Ok(busy),
        };
    }
    let keeper = KeepAlive::start(&link.cluster, lease);
    let result = async {
        // Stored by another node between the first read and the lock?
        take_stored(link, state, settings, key, &cert_at).await?;
        if !super::due(state, settings) {
            return Ok(Checked::Fresh);
        }
        let account = account(link, settings, key).await?;
        tracing::info!(domains = ?settings.domains, node = %link.cluster.node_id, "ordering a certificate for the cluster");
        let holder = Holder { link, lease };
        let pems = super::order(store, state, settings, &account, Some(&holder)).await?;
        let issued = super::certified(&pems)?;
        let plain = serde_json::to_vec(&pems)?;
        let sealed = key.seal(&cert_at, &plain).map_err(|source| AcmeError::Sealed {
            at: cert_at.clone(),
            source,
        })?;
        client
            .put(&cert_at, &sealed, 0)
            .await
            .map_err(AcmeError::Etcd)?;
        keep_on_disk(settings, &pems);
        state.cert.store(Some(Arc::new(issued)));
        Ok(Checked::Issued)
    }
    .await;
    drop(keeper);
    // The lock and the challenges go with the lease (or expire with it, if etcd is away).
    let _ = client.revoke(lease).await;
    result
}

/// The disk copy is a cache for a start while etcd is away; failing to write it is logged.
fn keep_on_disk(settings: &Settings, pems: &Pems) {
    if let Err(err) = super::keep_on_disk(settings, pems) {
        tracing::warn!(error = %err, "cannot keep the certificate from etcd on disk");
    }
}

/// Renews a lease every third of its time until dropped.
struct KeepAlive(tokio::task::JoinHandle<()>);

impl KeepAlive {
    fn start(cluster: &Arc<Cluster>, lease: i64) -> Self {
        let cluster = Arc::clone(cluster);
        let every = (cluster.lease_ttl / 3).max(Duration::from_millis(500));
        KeepAlive(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match cluster.client.keep_alive(lease).await {
                    Ok(left) if left <= 0 => {
                        tracing::warn!(
                            "etcd: the ACME lock's lease expired while ordering; another node may order too"
                        );
                        return;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "etcd: cannot renew the ACME lock's lease")
                    }
                }
            }
        }))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the certificate etcd holds at `at`, when it is newer than the one in force.
async fn take_stored(
    link: &Link,
    state: &AcmeState,
    settings: &Settings,
    key: &SealKey,
    at: &[u8],
) -> Result<(), AcmeError> {
    let (found, _) = link
        .cluster
        .client
        .get(at, None)
        .await
        .map_err(AcmeError::Etcd)?;
    match found {
        Some(kv) => take(state, settings, key, &kv),
        None => Ok(()),
    }
}

/// Serves the sealed certificate in `kv` when it is newer than the one in force.
fn take(state: &AcmeState, settings: &Settings, key: &SealKey, kv: &Kv) -> Result<(), AcmeError> {
    let plain = key
        .open(&kv.key, &kv.value)
        .map_err(|source| AcmeError::Sealed {
            at: kv.key.clone(),
            source,
        })?;
    let pems: Pems = serde_json::from_slice(&plain).map_err(|source| AcmeError::Unreadable {
        at: kv.key.clone(),
        source,
    })?;
    let issued = super::certified(&pems)?;
    let newer = state
        .cert
        .load()
        .as_ref()
        .is_none_or(|current| issued.not_after > current.not_after);
    if newer {
        keep_on_disk(settings, &pems);
        state.cert.store(Some(Arc::new(issued)));
        tracing::info!(domains = ?settings.domains, "serving the certificate stored in etcd");
    }
    Ok(())
}

/// The ACME account etcd holds for the directory, or a new one stored there.
async fn account(
    link: &Link,
    settings: &Settings,
    key: &SealKey,
) -> Result<instant_acme::Account, AcmeError> {
    let builder = super::builder(settings)?;
    let at = link.key(&format!("accounts/{}", settings.directory));
    let client = &link.cluster.client;
    let (found, _) = client.get(&at, None).await.map_err(AcmeError::Etcd)?;
    if let Some(kv) = found {
        let plain = key
            .open(&at, &kv.value)
            .map_err(|source| AcmeError::Sealed {
                at: at.clone(),
                source,
            })?;
        let credentials =
            serde_json::from_slice(&plain).map_err(|source| AcmeError::Unreadable {
                at: at.clone(),
                source,
            })?;
        return builder
            .from_credentials(credentials)
            .await
            .map_err(AcmeError::Account);
    }
    let (account, credentials) = super::new_account(builder, settings).await?;
    let sealed = key
        .seal(&at, &serde_json::to_vec(&credentials)?)
        .map_err(|source| AcmeError::Sealed {
            at: at.clone(),
            source,
        })?;
    client.put(&at, &sealed, 0).await.map_err(AcmeError::Etcd)?;
    Ok(account)
}

/// First pause after a failed watch; doubled per failure up to [`WATCH_MAX_PAUSE`].
const WATCH_FIRST_PAUSE: Duration = Duration::from_millis(100);
const WATCH_MAX_PAUSE: Duration = Duration::from_secs(5);

/// Watches `PREFIX acme/` for as long as the store lives: stored certificates are served,
/// published challenges answered. Each (re)start reads the whole prefix first, so nothing
/// missed while away stays missed.
async fn watch(store: Weak<Store>, link: Arc<Link>) {
    let prefix = link.prefix();
    let mut failures = 0u32;
    loop {
        let from = match link.cluster.client.list(&prefix).await {
            Ok((kvs, revision)) => {
                let Some(store) = store.upgrade() else { return };
                forget_remote(&store, &link);
                for kv in &kvs {
                    put(&store, &link, kv);
                }
                link.saw(revision);
                Some(revision + 1)
            }
            Err(err) => {
                tracing::debug!(error = %err, "etcd: cannot read the ACME keys");
                None
            }
        };
        if let Some(from) = from {
            match link.cluster.client.watch(&prefix, true, from).await {
                Ok(mut changes) => {
                    failures = 0;
                    while let Some(Ok(WatchItem::Events(events, revision))) = changes.next().await {
                        let Some(store) = store.upgrade() else { return };
                        for event in &events {
                            match event {
                                Event::Put(kv) => put(&store, &link, kv),
                                Event::Delete { key, .. } => delete(&store, &link, key),
                            }
                        }
                        link.saw(revision);
                    }
                }
                Err(err) => tracing::debug!(error = %err, "etcd: cannot watch the ACME keys"),
            }
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(crate::cluster::backoff(
            failures,
            WATCH_FIRST_PAUSE,
            WATCH_MAX_PAUSE,
        ))
        .await;
    }
}

/// The live states and their settings.
fn live_states(store: &Store) -> Vec<(Arc<AcmeState>, Settings)> {
    let states: Vec<Arc<AcmeState>> = lock(&store.states)
        .values()
        .filter_map(Weak::upgrade)
        .collect();
    states
        .into_iter()
        .filter_map(|state| {
            let settings = state.settings.lock().ok()?.clone();
            Some((state, settings))
        })
        .collect()
}

/// Forgets the challenges taken from etcd (before reading them all again).
fn forget_remote(store: &Store, link: &Link) {
    let remote = std::mem::take(&mut *lock(&link.remote));
    {
        let mut tokens = lock(&store.tokens);
        for token in &remote.tokens {
            tokens.remove(token);
        }
    }
    for (state, _) in live_states(store) {
        let mut alpn = lock(&state.alpn);
        for name in &remote.names {
            alpn.remove(name);
        }
    }
}

/// A key under `PREFIX acme/` was written.
fn put(store: &Store, link: &Link, kv: &Kv) {
    let prefix = link.prefix();
    let Some(rest) = kv
        .key
        .strip_prefix(prefix.as_slice())
        .and_then(|rest| std::str::from_utf8(rest).ok())
    else {
        return;
    };
    if let Some(token) = rest.strip_prefix("challenges/http-01/") {
        let Ok(answer) = std::str::from_utf8(&kv.value) else {
            return;
        };
        let fresh = lock(&store.tokens)
            .insert(token.to_owned(), answer.to_owned())
            .is_none();
        lock(&link.remote).tokens.insert(token.to_owned());
        if fresh {
            tracing::info!(
                token,
                "answering an HTTP-01 challenge another node published in etcd"
            );
        }
    } else if let Some(name) = rest.strip_prefix("challenges/tls-alpn-01/") {
        let Ok(digest) = B64.decode(&kv.value) else {
            return;
        };
        let mut made = None;
        for (state, settings) in live_states(store) {
            if !settings
                .domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(name))
            {
                continue;
            }
            if made.is_none() {
                match super::alpn_certificate(name, &digest) {
                    Ok(cert) => made = Some(cert),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot make a TLS-ALPN-01 certificate");
                        return;
                    }
                }
            }
            let mut alpn = lock(&state.alpn);
            if alpn.contains_key(name) {
                // This node published it.
                continue;
            }
            if let Some(cert) = &made {
                alpn.insert(name.to_owned(), Arc::clone(cert));
                tracing::info!(
                    name,
                    "answering a TLS-ALPN-01 challenge another node published in etcd"
                );
            }
        }
        lock(&link.remote).names.insert(name.to_owned());
    } else if let Some(stored) = rest.strip_prefix("certs/") {
        for (state, settings) in live_states(store) {
            let Some(key) = &settings.seal else { continue };
            if names(&settings) != stored {
                continue;
            }
            if let Err(err) = take(&state, &settings, key, kv) {
                tracing::warn!(error = %err, "cannot serve the certificate stored in etcd");
            }
        }
    }
}

/// A key under `PREFIX acme/` was deleted: a challenge that ended.
fn delete(store: &Store, link: &Link, key: &[u8]) {
    let prefix = link.prefix();
    let Some(rest) = key
        .strip_prefix(prefix.as_slice())
        .and_then(|rest| std::str::from_utf8(rest).ok())
    else {
        return;
    };
    if let Some(token) = rest.strip_prefix("challenges/http-01/") {
        lock(&store.tokens).remove(token);
        lock(&link.remote).tokens.remove(token);
    } else if let Some(name) = rest.strip_prefix("challenges/tls-alpn-01/") {
        for (state, _) in live_states(store) {
            lock(&state.alpn).remove(name);
        }
        lock(&link.remote).names.remove(name);
    }
}
