//! Automatic HTTPS: certificates from an ACME CA (RFC 8555) with the HTTP-01 and TLS-ALPN-01
//! (RFC 8737) challenges, kept on disk, renewed ahead of expiry.
//!
//! Each ACME-enabled listener has an [`AcmeState`], found again by storage folder through the
//! [`Store`], so reloads keep it. The listener's certificate resolver reads the state on every
//! handshake: the issued certificate, or the challenge certificate when the CA connects with
//! ALPN `acme-tls/1`. While a renewal runs, the old certificate keeps being served.
//!
//! Compiling only looks states up: a new one is made outside the store, and a config's
//! settings are applied, the state entered in the store and its renewal task started only
//! when that config is about to serve ([`Store::start`]). The store holds weak references
//! and the renewal task belongs to the state, so a listener removed by a reload takes its
//! state and its task with it.
//!
//! With `cluster.etcd`, the nodes share their certificates through etcd instead
//! ([`cluster`]): one node at a time orders, under a lock, and every node serves the result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

mod cluster;
pub(crate) mod seal;

pub(crate) use cluster::Link;

/// The ALPN protocol of TLS-ALPN-01 validation connections.
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path prefix HTTP-01 challenges are fetched under.
pub(crate) const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Which challenge proves control of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// A token served over plain HTTP on port 80.
    Http01,
    /// A special certificate served over TLS with ALPN `acme-tls/1`.
    TlsAlpn01,
}

/// An ACME-enabled listener's settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Directory URL.
    pub(crate) directory: String,
    /// Contact e-mail.
    pub(crate) email: Option<String>,
    /// Names on the certificate.
    pub(crate) domains: Vec<String>,
    /// Challenge type.
    pub(crate) challenge: Challenge,
    /// Where the account and certificates live.
    pub(crate) storage: PathBuf,
    /// A CA to trust for the directory's own HTTPS (test CAs such as pebble).
    pub(crate) directory_ca: Option<PathBuf>,
    /// Renew when the certificate has less than this left.
    pub(crate) renew_before: Duration,
    /// How often to check.
    pub(crate) check_every: Duration,
    /// With `cluster.etcd`: the key that seals what is kept in etcd (none: this node orders
    /// and keeps its certificates alone).
    pub(crate) seal: Option<Arc<seal::SealKey>>,
}

/// An issued certificate and its expiry, swapped as one so they always match.
#[derive(Debug)]
pub(crate) struct Issued {
    /// The certificate chain and key.
    pub(crate) key: Arc<CertifiedKey>,
    /// The leaf's expiry, Unix seconds.
    pub(crate) not_after: i64,
}

/// Live ACME state of one listener.
#[derive(Debug)]
pub(crate) struct AcmeState {
    /// Settings in force (replaced when a reloaded config starts).
    pub(crate) settings: Mutex<Settings>,
    /// The issued certificate, once there is one.
    pub(crate) cert: ArcSwapOption<Issued>,
    /// TLS-ALPN-01 certificates by name, while validation runs.
    pub(crate) alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// The renewal task, started once; it stops when the state goes.
    renewal: OnceLock<crate::background::BackgroundTask>,
}

impl AcmeState {
    /// The certificate for a handshake, if ACME has one for it.
    pub(crate) fn pick(
        &self,
        server_name: Option<&str>,
        alpn_challenge: bool,
    ) -> Option<Arc<CertifiedKey>> {
        if alpn_challenge {
            let name = server_name?.to_ascii_lowercase();
            return self.alpn.lock().ok()?.get(&name).cloned();
        }
        self.cert
            .load()
            .as_ref()
            .map(|issued| Arc::clone(&issued.key))
    }
}

/// Every listener's ACME state, plus the HTTP-01 tokens all http listeners answer.
#[derive(Debug, Default)]
pub(crate) struct Store {
    states: Mutex<HashMap<PathBuf, Weak<AcmeState>>>,
    tokens: Mutex<HashMap<String, String>>,
    /// The cluster's etcd, when `cluster.etcd` is set (joined once, at start).
    link: OnceLock<Arc<Link>>,
}

impl Store {
    /// This node shares certificates through `cluster`'s etcd: states whose settings carry a
    /// sealing key are kept there from now on. Called once, before any config starts.
    pub(crate) fn join(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.link.set(Arc::new(Link::new(cluster)));
    }

    /// The live state kept in `storage`, or a new one loaded from disk (not yet in the store:
    /// a config that is never started leaves the store as it was).
    pub(crate) fn state(&self, settings: &Settings) -> Arc<AcmeState> {
        let live = self
            .states
            .lock()
            .ok()
            .and_then(|states| states.get(&settings.storage).and_then(Weak::upgrade));
        if let Some(state) = live {
            return state;
        }
        // A certificate from an earlier run is served at once.
        let cert = load_stored(&settings.storage)
            .ok()
            .map(|(key, not_after)| Arc::new(Issued { key, not_after }));
        Arc::new(AcmeState {
            settings: Mutex::new(settings.clone()),
            cert: ArcSwapOption::new(cert),
            alpn: Mutex::new(HashMap::new()),
            renewal: OnceLock::new(),
        })
    }

    /// A config is about to serve: applies its settings, keeps its states, starts renewals
    /// not running yet, and forgets states no config uses.
    pub(crate) fn start(
        self: &Arc<Self>,
        wanted: Vec<(Arc<AcmeState>, Settings)>,
        live_tasks: &prometheus_client::metrics::gauge::Gauge,
    ) {
        let mut states = match self.states.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        states.retain(|_, state| state.strong_count() > 0);
        for (state, settings) in wanted {
            states.insert(settings.storage.clone(), Arc::downgrade(&state));
            let link = settings.seal.as_ref().and(self.link.get());
            if let Ok(mut current) = state.settings.lock() {
                *current = settings;
            }
            if let Some(link) = link {
                link.start_watch(self, live_tasks);
            }
            state.renewal.get_or_init(|| {
                crate::background::spawn(
                    live_tasks,
                    maintain(Arc::clone(self), Arc::downgrade(&state)),
                )
            });
        }
    }

    /// How many ACME states are alive.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.states
            .lock()
            .map(|s| s.values().filter(|s| s.strong_count() > 0).count())
            .unwrap_or(0)
    }

    /// The key authorization for an HTTP-01 token, if a validation is running.
    pub(crate) fn http01(&self, token: &str) -> Option<String> {
        self.tokens.lock().ok()?.get(token).cloned()
    }
}

/// Why a certificate order (or a step of it) failed; the current certificate stays.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcmeError {
    /// The directory cannot be reached or read.
    #[error("ACME client: {0}")]
    Client(#[source] instant_acme::Error),
    /// The account cannot be loaded or created.
    #[error("ACME account: {0}")]
    Account(#[source] instant_acme::Error),
    /// The account credentials do not serialize.
    #[error(transparent)]
    Credentials(#[from] serde_json::Error),
    /// The storage folder cannot be created.
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// A file in the storage folder cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The CA refused the order.
    #[error("new order: {0}")]
    NewOrder(#[source] instant_acme::Error),
    /// An authorization cannot be fetched.
    #[error("authorization: {0}")]
    Authorization(#[source] instant_acme::Error),
    /// The CA does not offer the configured challenge.
    #[error("the CA offers no {0:?} challenge")]
    NoChallenge(ChallengeType),
    /// A challenge cannot be set ready.
    #[error("challenge: {0}")]
    Challenge(#[source] instant_acme::Error),
    /// The order did not become ready.
    #[error("validation: {0}")]
    Validation(#[source] instant_acme::Error),
    /// The order ended in another state than ready.
    #[error("the order ended {0:?}")]
    OrderEnded(OrderStatus),
    /// The order cannot be finalized.
    #[error("finalize: {0}")]
    Finalize(#[source] instant_acme::Error),
    /// The certificate cannot be downloaded.
    #[error("certificate: {0}")]
    Certificate(#[source] instant_acme::Error),
    /// The chain from the CA is not PEM.
    #[error("bad certificate from the CA: {0:?}")]
    BadChain(#[source] rustls_pki_types::pem::Error),
    /// The key from the order is not PEM.
    #[error("bad key: {0:?}")]
    BadKey(#[source] rustls_pki_types::pem::Error),
    /// rustls cannot use the key (or it does not match the chain).
    #[error(transparent)]
    Key(#[from] rustls::Error),
    /// The TLS-ALPN-01 certificate cannot be made.
    #[error(transparent)]
    AlpnCertificate(#[from] rcgen::Error),
    /// The TLS-ALPN-01 key is not in a form rustls reads.
    #[error("{0}")]
    AlpnKey(&'static str),
    /// The certificate stored by an earlier run is unusable.
    #[error(transparent)]
    Stored(#[from] super::PairError),
    /// etcd cannot be reached, or refused a call.
    #[error("{0}")]
    Etcd(crate::cluster::etcd::Error),
    /// What etcd holds does not open with `cluster.etcd.secret_key`.
    #[error("{}: {source}", String::from_utf8_lossy(at))]
    Sealed {
        /// The etcd key.
        at: Vec<u8>,
        /// Why it does not open.
        #[source]
        source: seal::SealError,
    },
    /// What etcd holds at a key opens but is not what portico keeps there.
    #[error(
        "{}: not a stored certificate or account: {source}",
        String::from_utf8_lossy(at)
    )]
    Unreadable {
        /// The etcd key.
        at: Vec<u8>,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError + '_ {
    move |source| AcmeError::Write {
        path: path.to_owned(),
        source,
    }
}

fn load_stored(dir: &Path) -> Result<(Arc<CertifiedKey>, i64), AcmeError> {
    let loaded = super::load_pair(&dir.join("cert.pem"), &dir.join("key.pem"))?;
    Ok((loaded.key, loaded.not_after))
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Keeps one listener's certificate fresh for as long as its state lives.
///
/// The task holds the state only while it works on it, so the state (and with it the task's
/// handle) goes when the last config using it does.
async fn maintain(store: Arc<Store>, state: Weak<AcmeState>) {
    let mut failures = 0u32;
    loop {
        let Some(live) = state.upgrade() else { return };
        let settings = match live.settings.lock() {
            Ok(s) => s.clone(),
            Err(_) => return,
        };
        let checked = match (store.link.get(), &settings.seal) {
            (Some(link), Some(key)) => cluster::check(&store, link, &live, &settings, key).await,
            _ if due(&live, &settings) => issue(&store, &live, &settings)
                .await
                .map(|()| Checked::Issued),
            _ => Ok(Checked::Fresh),
        };
        let wait = match checked {
            Ok(Checked::Fresh) => {
                failures = 0;
                settings.check_every
            }
            Ok(Checked::Issued) => {
                failures = 0;
                tracing::info!(domains = ?settings.domains, "certificate issued");
                settings.check_every
            }
            Ok(Checked::Busy(wait)) => {
                failures = 0;
                wait.min(settings.check_every)
            }
            Err(err) => {
                failures += 1;
                tracing::warn!(domains = ?settings.domains, error = %err, "certificate order failed; the current certificate stays");
                // 2 s, 4 s, ... up to an hour.
                Duration::from_secs(1 << failures.min(11)).min(Duration::from_secs(3600))
            }
        };
        drop(live);
        tokio::time::sleep(wait).await;
    }
}

/// What one check of a certificate came to.
enum Checked {
    /// The certificate in force is good for longer than `renew_before`.
    Fresh,
    /// This node ordered a new one (and, in a cluster, stored it in etcd).
    Issued,
    /// Another node of the cluster holds the lock (it orders now, or crashed and its lease
    /// runs out): look again after this long.
    Busy(Duration),
}

/// Whether `state` has no certificate, or one with less than `renew_before` left.
fn due(state: &AcmeState, settings: &Settings) -> bool {
    state
        .cert
        .load()
        .as_ref()
        .map(|issued| issued.not_after - now_unix())
        .is_none_or(|left| left < settings.renew_before.as_secs() as i64)
}

/// A client of the configured directory.
fn builder(settings: &Settings) -> Result<instant_acme::AccountBuilder, AcmeError> {
    match &settings.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    }
    .map_err(AcmeError::Client)
}

/// The account to order with and its credentials to keep, made at the directory.
async fn new_account(
    builder: instant_acme::AccountBuilder,
    settings: &Settings,
) -> Result<(Account, AccountCredentials), AcmeError> {
    let contact = settings.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    builder
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await
        .map_err(AcmeError::Account)
}

async fn account(settings: &Settings) -> Result<Account, AcmeError> {
    let builder = builder(settings)?;
    let path = settings.storage.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(credentials) = serde_json::from_str::<AccountCredentials>(&text)
    {
        return builder
            .from_credentials(credentials)
            .await
            .map_err(AcmeError::Account);
    }
    let (account, credentials) = new_account(builder, settings).await?;
    let text = serde_json::to_string(&credentials)?;
    write_private(&path, text.as_bytes())?;
    Ok(account)
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), AcmeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_error(&tmp))?;
    file.write_all(data).map_err(write_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(write_error(path))
}

fn create_storage(settings: &Settings) -> Result<(), AcmeError> {
    std::fs::create_dir_all(&settings.storage).map_err(|source| AcmeError::CreateDir {
        path: settings.storage.clone(),
        source,
    })
}

async fn issue(store: &Store, state: &AcmeState, settings: &Settings) -> Result<(), AcmeError> {
    create_storage(settings)?;
    let account = account(settings).await?;
    let pems = order(store, state, settings, &account, None).await?;
    install(state, settings, &pems)
}

/// An issued certificate chain and its key, as PEM.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Pems {
    /// The private key.
    key: String,
    /// The chain, leaf first.
    chain: String,
}

/// Places one order for `settings`' names and sees it through: challenges answered here (and,
/// with `holder`, published to the cluster's nodes), the order finalized; the chain and key.
async fn order(
    store: &Store,
    state: &AcmeState,
    settings: &Settings,
    account: &Account,
    holder: Option<&cluster::Holder<'_>>,
) -> Result<Pems, AcmeError> {
    let identifiers: Vec<Identifier> = settings
        .domains
        .iter()
        .cloned()
        .map(Identifier::Dns)
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(AcmeError::NewOrder)?;
    let kind = match settings.challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut tokens = Vec::new();
    let mut alpn_names = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(AcmeError::Authorization)?;
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| AcmeError::NoChallenge(kind.clone()))?;
            let key_auth = challenge.key_authorization();
            let name = challenge.identifier().to_string().to_ascii_lowercase();
            match settings.challenge {
                Challenge::Http01 => {
                    if let Ok(mut t) = store.tokens.lock() {
                        t.insert(challenge.token.clone(), key_auth.as_str().to_owned());
                    }
                    tokens.push(challenge.token.clone());
                    if let Some(holder) = holder {
                        holder.http01(&challenge.token, key_auth.as_str()).await?;
                    }
                }
                Challenge::TlsAlpn01 => {
                    let digest = key_auth.digest();
                    let cert = alpn_certificate(&name, digest.as_ref())?;
                    if let Ok(mut a) = state.alpn.lock() {
                        a.insert(name.clone(), cert);
                    }
                    if let Some(holder) = holder {
                        holder.tls_alpn01(&name, digest.as_ref()).await?;
                    }
                    alpn_names.push(name);
                }
            }
            challenge.set_ready().await.map_err(AcmeError::Challenge)?;
        }
        let retries = RetryPolicy::new().timeout(Duration::from_secs(90));
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(AcmeError::Validation)?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::OrderEnded(status));
        }
        let key_pem = order.finalize().await.map_err(AcmeError::Finalize)?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(AcmeError::Certificate)?;
        Ok((key_pem, chain_pem))
    }
    .await;
    // Challenges are answered only while they run.
    if let Ok(mut t) = store.tokens.lock() {
        for token in &tokens {
            t.remove(token);
        }
    }
    if let Ok(mut a) = state.alpn.lock() {
        for name in &alpn_names {
            a.remove(name);
        }
    }
    let (key, chain) = result?;
    Ok(Pems { key, chain })
}

/// The certificate in `pems`, ready to serve.
fn certified(pems: &Pems) -> Result<Issued, AcmeError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pems.chain.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(AcmeError::BadChain)?;
    let key = PrivateKeyDer::from_pem_slice(pems.key.as_bytes()).map_err(AcmeError::BadKey)?;
    let certified = CertifiedKey::from_der(chain.clone(), key, &super::provider())?;
    let not_after = chain
        .first()
        .and_then(|leaf| super::identity(leaf))
        .map_or(0, |id| id.not_after);
    Ok(Issued {
        key: Arc::new(certified),
        not_after,
    })
}

/// Keeps `pems` in the storage folder, where a restart finds them.
fn keep_on_disk(settings: &Settings, pems: &Pems) -> Result<(), AcmeError> {
    create_storage(settings)?;
    write_private(&settings.storage.join("key.pem"), pems.key.as_bytes())?;
    write_private(&settings.storage.join("cert.pem"), pems.chain.as_bytes())
}

/// The certificate in `pems` is served from now on, and kept on disk.
fn install(state: &AcmeState, settings: &Settings, pems: &Pems) -> Result<(), AcmeError> {
    let issued = certified(pems)?;
    keep_on_disk(settings, pems)?;
    state.cert.store(Some(Arc::new(issued)));
    Ok(())
}

/// The self-signed certificate that answers a TLS-ALPN-01 validation (RFC 8737 §3).
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(AcmeError::AlpnKey)?;
    let signing = super::provider().key_provider.load_private_key(key_der)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, domain: &str) -> Settings {
        Settings {
            directory: "http://127.0.0.1:9/directory".into(),
            email: None,
            domains: vec![domain.into()],
            challenge: Challenge::Http01,
            storage: dir.to_owned(),
            directory_ca: None,
            renew_before: Duration::from_secs(30 * 86400),
            check_every: Duration::from_secs(3600),
            seal: None,
        }
    }

    #[tokio::test]
    async fn only_a_started_config_changes_acme_state() {
        let dir = std::env::temp_dir().join(format!("portico-acme-unit-{}", std::process::id()));
        let store = Arc::new(Store::default());
        let live = prometheus_client::metrics::gauge::Gauge::default();

        // Compiled, never started: nothing in the store, no renewal.
        let unstarted = store.state(&settings(&dir, "a.test"));
        assert_eq!((store.live(), live.get()), (0, 0));
        drop(unstarted);

        let first = store.state(&settings(&dir, "a.test"));
        store.start(vec![(Arc::clone(&first), settings(&dir, "a.test"))], &live);
        assert_eq!((store.live(), live.get()), (1, 1));

        // A refused reload with other settings finds the state and leaves its settings.
        let again = store.state(&settings(&dir, "b.test"));
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.settings.lock().unwrap().domains, ["a.test"]);
        drop(again);

        // The listener is gone: its state and its renewal go too.
        drop(first);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while live.get() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the renewal outlived its state"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(store.live(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
