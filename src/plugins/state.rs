//! Plugin state kept across reloads: rate-limit buckets, JWKS key caches.
//!
//! A plugin's state is keyed by its identity: where it is written (the global list or a
//! route), which one of its kind it is there, and a digest of its spec. A reload that leaves
//! a plugin's spec as it was finds the same state and shares it; a changed or moved plugin
//! starts afresh. The store holds only weak references, so state lives exactly as long as a
//! snapshot using it, and compiling changes nothing in it: state made by a compile is handed
//! to the snapshot ([`Fresh`]) and enters the store only when that snapshot is started.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};

use crate::config::spec::PluginSpec;

/// Work a state does once before the first snapshot using it serves (a first fetch), and
/// the background tasks it then owns.
pub(crate) type StartWork = Pin<Box<dyn Future<Output = ()> + Send>>;

/// State a plugin keeps across reloads.
pub(crate) trait Kept: Any + Send + Sync {
    /// Called once, before the first snapshot using this state serves.
    fn start(self: Arc<Self>) -> StartWork {
        Box::pin(async {})
    }
}

/// Who a plugin is, across reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct StateKey {
    /// `global` or `route NAME`.
    owner: String,
    /// Which plugin of this kind in its list (0 for the first).
    nth: usize,
    /// SHA-256 of the spec as JSON (positions are not part of it).
    spec: [u8; 32],
}

impl StateKey {
    /// The key of the `nth` plugin of its kind, with spec `spec`, in `owner`'s list.
    pub(crate) fn new(owner: &str, nth: usize, spec: &PluginSpec) -> Self {
        // A spec serialises to JSON without fail: plain data, string keys.
        let json = serde_json::to_vec(spec).unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, &json);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        StateKey {
            owner: owner.to_owned(),
            nth,
            spec: out,
        }
    }
}

type AnyState = Arc<dyn Any + Send + Sync>;

/// A state made by a compile, not yet in the store.
pub(crate) struct Fresh {
    key: StateKey,
    any: AnyState,
    kept: Arc<dyn Kept>,
}

impl std::fmt::Debug for Fresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fresh").field("key", &self.key).finish()
    }
}

/// Every live plugin state, by identity.
#[derive(Debug, Default)]
pub(crate) struct PluginStates {
    map: Mutex<HashMap<StateKey, Weak<dyn Any + Send + Sync>>>,
}

impl PluginStates {
    fn find(&self, key: &StateKey) -> Option<AnyState> {
        let map = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.get(key).and_then(Weak::upgrade)
    }

    /// Starts fresh states and adds them to the store; forgets states nothing uses.
    pub(crate) async fn start(&self, fresh: Vec<Fresh>) {
        futures_util::future::join_all(fresh.iter().map(|f| Arc::clone(&f.kept).start())).await;
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.retain(|_, state| state.strong_count() > 0);
        for f in fresh {
            map.insert(f.key, Arc::downgrade(&f.any));
        }
    }

    /// Every live state of type `T` (the admin API's cache purge reaches every store).
    pub(crate) fn all<T: Kept>(&self) -> Vec<Arc<T>> {
        let map = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.values()
            .filter_map(Weak::upgrade)
            .filter_map(|state| state.downcast::<T>().ok())
            .collect()
    }

    /// How many states are alive (for tests).
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.map
            .lock()
            .map(|m| m.values().filter(|s| s.strong_count() > 0).count())
            .unwrap_or(0)
    }
}

/// What one plugin's constructor sees of the store: its key, the store, and where a compile
/// collects what it made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StateScope<'a> {
    states: &'a PluginStates,
    key: Option<&'a StateKey>,
    fresh: &'a Mutex<Vec<Fresh>>,
    /// What the plugins of one compile hold alone (a cache folder).
    claims: Option<&'a Mutex<Vec<String>>>,
}

impl<'a> StateScope<'a> {
    /// A scope over `states`, collecting new state into `fresh`; no key yet.
    pub(crate) fn new(states: &'a PluginStates, fresh: &'a Mutex<Vec<Fresh>>) -> Self {
        StateScope {
            states,
            key: None,
            fresh,
            claims: None,
        }
    }

    /// The same scope, noting in `claims` what plugins of this compile hold alone.
    pub(crate) fn with_claims(self, claims: &'a Mutex<Vec<String>>) -> Self {
        StateScope {
            claims: Some(claims),
            ..self
        }
    }

    /// Claims `what` for this plugin alone in this compile: false when another plugin of
    /// the compile already claimed it.
    pub(crate) fn claim(&self, what: String) -> bool {
        let Some(claims) = self.claims else {
            return true;
        };
        let mut claims = match claims.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if claims.contains(&what) {
            return false;
        }
        claims.push(what);
        true
    }

    /// The same scope for the plugin with identity `key`.
    pub(crate) fn with_key(self, key: &'a StateKey) -> Self {
        StateScope {
            key: Some(key),
            ..self
        }
    }

    /// Every live state of type `T`, whatever its identity: a changed plugin may seed its new
    /// state from its old one (a changed `jwt` keeps serving the keys of its URL).
    pub(crate) fn live<T: Kept>(&self) -> Vec<Arc<T>> {
        let map = match self.states.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.values()
            .filter_map(Weak::upgrade)
            .filter_map(|state| state.downcast::<T>().ok())
            .collect()
    }

    /// The plugin's kept state: the live one of the same identity, or a new one from `make`.
    /// A name of this plugin's place that every node compiling the same config gives it
    /// (`route users/rate_limit#0/1a2b3c4d`); none outside a config.
    pub(crate) fn id(&self, kind: &str) -> Option<String> {
        let key = self.key?;
        let digest: String = key.spec[..4].iter().map(|b| format!("{b:02x}")).collect();
        Some(format!("{}/{kind}#{}/{digest}", key.owner, key.nth))
    }

    pub(crate) fn keep<T: Kept>(&self, make: impl FnOnce() -> T) -> Arc<T> {
        let Some(key) = self.key else {
            return Arc::new(make());
        };
        let mut fresh = match self.fresh.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        let made_here = fresh
            .iter()
            .find(|f| &f.key == key)
            .map(|f| Arc::clone(&f.any));
        if let Some(found) = made_here.or_else(|| self.states.find(key))
            && let Ok(state) = found.downcast::<T>()
        {
            return state;
        }
        let state = Arc::new(make());
        fresh.push(Fresh {
            key: key.clone(),
            any: Arc::clone(&state) as AnyState,
            kept: Arc::clone(&state) as Arc<dyn Kept>,
        });
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Counter(std::sync::atomic::AtomicU32);
    impl Kept for Counter {}

    fn spec(limit: u32) -> PluginSpec {
        use crate::config::At;
        PluginSpec::RateLimit(crate::config::spec::RateLimitSpec {
            limit: At {
                pos: Default::default(),
                value: limit,
            },
            window: crate::config::units::Dur(std::time::Duration::from_secs(1)),
            burst: None,
            by: At {
                pos: Default::default(),
                value: "ip".into(),
            },
            max_keys: 100,
            scope: Default::default(),
        })
    }

    #[tokio::test]
    async fn same_identity_shares_state_once_started_and_nothing_before() {
        let states = PluginStates::default();
        let key = StateKey::new("route a", 0, &spec(5));
        let fresh = Mutex::new(Vec::new());
        let scope = StateScope::new(&states, &fresh);
        let first = scope.with_key(&key).keep(Counter::default);
        first.0.store(7, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(states.live(), 0, "a compile put nothing in the store");

        // A compile that is never started (a refused reload) leaves the store alone.
        let refused = Mutex::new(Vec::new());
        let other = StateScope::new(&states, &refused)
            .with_key(&key)
            .keep(Counter::default);
        assert_eq!(other.0.load(std::sync::atomic::Ordering::Relaxed), 0);
        drop(refused);

        states.start(fresh.into_inner().unwrap()).await;
        let next = Mutex::new(Vec::new());
        let again = StateScope::new(&states, &next)
            .with_key(&key)
            .keep(Counter::default);
        assert!(Arc::ptr_eq(&first, &again));
        assert!(next.lock().unwrap().is_empty());

        // Another spec, another owner or another position is another plugin.
        for other in [
            StateKey::new("route a", 0, &spec(6)),
            StateKey::new("route b", 0, &spec(5)),
            StateKey::new("route a", 1, &spec(5)),
        ] {
            let fresh = Mutex::new(Vec::new());
            let state = StateScope::new(&states, &fresh)
                .with_key(&other)
                .keep(Counter::default);
            assert!(!Arc::ptr_eq(&first, &state));
        }

        // State dies with the last snapshot using it.
        drop((first, again));
        assert_eq!(states.live(), 0);
    }
}
