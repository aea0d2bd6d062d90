//! Decisions an authentication plugin keeps (`oauth2_introspection`, `forward_auth`): by a
//! SHA-256 key (never the credential itself), until an instant, bounded; and the calls under
//! way, so concurrent requests with one key share one call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A SHA-256: the cache key (no credential is ever kept).
pub(crate) type Key = [u8; 32];

/// One call under way: every request for its key waits on it; `None` if the call failed.
type Pending<V> = tokio::sync::OnceCell<Option<Arc<V>>>;

/// Decisions by key, until an instant; and the calls under way.
#[derive(Debug)]
pub(crate) struct Decisions<V> {
    kept: Mutex<HashMap<Key, (Arc<V>, Instant)>>,
    pending: Mutex<HashMap<Key, Arc<Pending<V>>>>,
    max: usize,
}

impl<V> Decisions<V> {
    /// At most `max` decisions (at least 1).
    pub(crate) fn new(max: usize) -> Self {
        Decisions {
            kept: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    /// The live decision for `key`.
    pub(crate) fn get(&self, key: &Key) -> Option<Arc<V>> {
        let mut kept = self.kept.lock().ok()?;
        match kept.get(key) {
            Some((value, until)) if *until > Instant::now() => Some(Arc::clone(value)),
            Some(_) => {
                kept.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` for `ttl`; when full, expired decisions are dropped first and, if none
    /// had expired, the decision is not kept.
    pub(crate) fn put(&self, key: Key, value: Arc<V>, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        if kept.len() >= self.max && !kept.contains_key(&key) {
            let now = Instant::now();
            kept.retain(|_, (_, until)| *until > now);
            if kept.len() >= self.max {
                return;
            }
        }
        kept.insert(key, (value, Instant::now() + ttl));
    }

    /// How many decisions are kept (expired ones included until looked up or pushed out).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.kept.lock().map_or(0, |k| k.len())
    }

    /// Whether no call is under way.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> bool {
        self.pending.lock().is_ok_and(|p| p.is_empty())
    }

    /// The decision for `key`: kept, or from one call shared by every request waiting for
    /// the same key. `call` runs only if this request is the one that makes the call; it
    /// gives the decision and how long it may be kept.
    pub(crate) async fn shared<F>(&self, key: Key, call: F) -> Option<Arc<V>>
    where
        F: Future<Output = Option<(V, Duration)>>,
    {
        if let Some(kept) = self.get(&key) {
            return Some(kept);
        }
        let cell = match self.pending.lock() {
            Ok(mut pending) => Arc::clone(pending.entry(key).or_default()),
            Err(_) => Arc::new(tokio::sync::OnceCell::new()),
        };
        // Forgets the call once this request is done with it, even if the request is dropped
        // while waiting (a client gone), so abandoned calls leave nothing behind.
        let guard = Forget {
            pending: &self.pending,
            key,
            cell,
        };
        guard
            .cell
            .get_or_init(|| async {
                // A call that finished meanwhile kept its decision.
                if let Some(kept) = self.get(&key) {
                    return Some(kept);
                }
                let (value, ttl) = call.await?;
                let value = Arc::new(value);
                self.put(key, Arc::clone(&value), ttl);
                Some(value)
            })
            .await
            .clone()
    }
}

/// Removes a finished or abandoned call from the pending ones when dropped.
struct Forget<'a, V> {
    pending: &'a Mutex<HashMap<Key, Arc<Pending<V>>>>,
    key: Key,
    cell: Arc<Pending<V>>,
}

impl<V> Drop for Forget<'_, V> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.pending.lock()
            && pending
                .get(&self.key)
                .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
            // Unfinished with other requests waiting (each holding it): the last one removes it.
            && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2)
        {
            pending.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_expiring() {
        let d: Decisions<u8> = Decisions::new(2);
        d.put([1; 32], Arc::new(1), Duration::from_secs(60));
        d.put([2; 32], Arc::new(2), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(d.get(&[2; 32]).is_none(), "expired");
        d.put([2; 32], Arc::new(2), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        // Full: the expired decision makes room.
        d.put([3; 32], Arc::new(3), Duration::from_secs(60));
        assert_eq!(d.get(&[3; 32]).as_deref(), Some(&3));
        // Full of live decisions: a new one is not kept.
        d.put([4; 32], Arc::new(4), Duration::from_secs(60));
        assert!(d.get(&[4; 32]).is_none());
        assert_eq!(d.len(), 2);
        // A zero ttl keeps nothing.
        d.put([1; 32], Arc::new(9), Duration::ZERO);
        assert_eq!(d.get(&[1; 32]).as_deref(), Some(&1));
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_call() {
        let d: Decisions<u8> = Decisions::new(10);
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let call = || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Some((7, Duration::from_secs(60)))
        };
        let (a, b, c) = tokio::join!(
            d.shared([5; 32], call()),
            d.shared([5; 32], call()),
            d.shared([5; 32], call())
        );
        assert_eq!(
            (a.as_deref(), b.as_deref(), c.as_deref()),
            (Some(&7), Some(&7), Some(&7))
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(d.pending.lock().unwrap().is_empty());
        // A failed call is not kept, and is forgotten.
        assert!(d.shared([6; 32], async { None }).await.is_none());
        assert!(d.get(&[6; 32]).is_none());
        assert!(d.pending.lock().unwrap().is_empty());
        // An abandoned call leaves nothing behind.
        let waiting = d.shared([8; 32], std::future::pending());
        assert!(
            tokio::time::timeout(Duration::from_millis(20), waiting)
                .await
                .is_err()
        );
        assert!(d.pending.lock().unwrap().is_empty());
    }
}
