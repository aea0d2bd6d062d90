//! The memory store: answers by key, bounded in bytes, least recently used dropped first.
//!
//! A hash map from key to a slot of a vector, the slots linked in use order: a lookup, an
//! insert and an eviction are O(1). One mutex guards it; no work under it but moving links
//! and `Arc`s (bodies are shared bytes, never copied).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use prometheus_client::metrics::gauge::Gauge;

/// Most variants (`Vary`) kept under one key; a new one drops the oldest.
const MAX_VARIANTS: usize = 8;

/// Bytes counted for an entry besides its body and fields (links, timings).
const OVERHEAD: usize = 256;

/// One stored answer.
#[derive(Debug)]
pub(crate) struct Stored {
    /// `host/path?query`, as purges name it.
    pub(crate) url: Arc<str>,
    pub(crate) status: StatusCode,
    /// The answer's fields, `Content-Length` set to the body's.
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The request fields its `Vary` names, with the values they had.
    pub(crate) vary: Vec<(HeaderName, Option<HeaderValue>)>,
    /// When it was received.
    pub(crate) received: Instant,
    /// Its age then.
    pub(crate) initial_age: Duration,
    /// Its freshness lifetime.
    pub(crate) lifetime: Duration,
    /// How long past its lifetime it may be served while a refresh runs.
    pub(crate) stale_while_revalidate: Duration,
    /// How long past its lifetime it may be served when the upstream fails.
    pub(crate) stale_if_error: Duration,
    /// `must-revalidate`: never served stale.
    pub(crate) must_revalidate: bool,
    /// Whether it has a validator (`ETag` or `Last-Modified`).
    pub(crate) validators: bool,
}

impl Stored {
    /// Its current age (RFC 9111 §4.2.3).
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.initial_age
            .saturating_add(now.saturating_duration_since(self.received))
    }

    /// How long it has been stale (zero while fresh).
    pub(crate) fn staleness(&self, now: Instant) -> Duration {
        self.age(now).saturating_sub(self.lifetime)
    }

    /// Whether it is fresh, with `min_fresh` seconds to spare.
    pub(crate) fn fresh(&self, now: Instant, min_fresh: u64) -> bool {
        self.age(now).saturating_add(Duration::from_secs(min_fresh)) < self.lifetime
    }

    /// Whether it may be served stale while it is refreshed (RFC 5861 §3).
    pub(crate) fn serves_while_revalidating(&self, now: Instant) -> bool {
        !self.must_revalidate && self.staleness(now) <= self.stale_while_revalidate
    }

    /// Whether it may be served stale because the upstream failed (RFC 5861 §4).
    pub(crate) fn serves_on_error(&self, now: Instant) -> bool {
        !self.must_revalidate && self.staleness(now) <= self.stale_if_error
    }

    /// Whether a request with these fields selects it (RFC 9111 §4.1).
    pub(crate) fn selected_by(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| joined(request, name).as_ref() == value.as_ref())
    }

    /// Bytes it is counted for.
    pub(crate) fn size(&self) -> usize {
        let fields: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        self.body.len() + fields + self.url.len() + OVERHEAD
    }

    /// The same answer refreshed by a 304 (RFC 9111 §4.3.4): its fields updated from the
    /// 304's, its timings from now.
    pub(crate) fn refreshed(
        &self,
        update: &HeaderMap,
        timing: Timing,
        initial_age: Duration,
    ) -> Stored {
        let mut headers = self.headers.clone();
        for name in update.keys() {
            if name == http::header::CONTENT_LENGTH || name == super::X_CACHE {
                continue;
            }
            headers.remove(name);
            for value in update.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        Stored {
            url: Arc::clone(&self.url),
            status: self.status,
            headers,
            body: self.body.clone(),
            vary: self.vary.clone(),
            received: Instant::now(),
            initial_age,
            lifetime: timing.lifetime,
            stale_while_revalidate: timing.stale_while_revalidate,
            stale_if_error: timing.stale_if_error,
            must_revalidate: timing.must_revalidate,
            validators: self.validators,
        }
    }
}

/// What the directives of an answer say about its freshness.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) lifetime: Duration,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) must_revalidate: bool,
}

impl Timing {
    /// What `cc` says, with this freshness lifetime.
    pub(crate) fn of(cc: &super::rules::Directives, lifetime: Duration) -> Self {
        let secs = |s: Option<u64>| Duration::from_secs(s.unwrap_or(0));
        Timing {
            lifetime: if cc.no_cache {
                Duration::ZERO
            } else {
                lifetime
            },
            stale_while_revalidate: secs(cc.stale_while_revalidate),
            stale_if_error: secs(cc.stale_if_error),
            must_revalidate: cc.must_revalidate,
        }
    }
}

/// Every value of one request field, joined as one list (`None` when absent).
pub(crate) fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let rest: Vec<&HeaderValue> = values.collect();
    if rest.is_empty() {
        return Some(first.clone());
    }
    let mut all = first.as_bytes().to_vec();
    for v in rest {
        all.extend_from_slice(b", ");
        all.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&all).ok()
}

const NIL: usize = usize::MAX;

struct Node {
    key: Arc<str>,
    variants: Vec<Arc<Stored>>,
    size: usize,
    prev: usize,
    next: usize,
}

#[derive(Default)]
struct Lru {
    map: HashMap<Arc<str>, usize>,
    nodes: Vec<Node>,
    free: Vec<usize>,
    /// Most recently used.
    head: usize,
    /// Least recently used.
    tail: usize,
    bytes: usize,
}

impl Lru {
    fn new() -> Self {
        Lru {
            head: NIL,
            tail: NIL,
            ..Lru::default()
        }
    }

    fn unlink(&mut self, at: usize) {
        let (prev, next) = (self.nodes[at].prev, self.nodes[at].next);
        match prev {
            NIL => self.head = next,
            p => self.nodes[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n].prev = prev,
        }
    }

    fn push_front(&mut self, at: usize) {
        self.nodes[at].prev = NIL;
        self.nodes[at].next = self.head;
        if self.head != NIL {
            self.nodes[self.head].prev = at;
        }
        self.head = at;
        if self.tail == NIL {
            self.tail = at;
        }
    }

    fn touch(&mut self, at: usize) {
        if self.head != at {
            self.unlink(at);
            self.push_front(at);
        }
    }

    fn remove_at(&mut self, at: usize) -> usize {
        self.unlink(at);
        let node = &mut self.nodes[at];
        let size = node.size;
        self.map.remove(&node.key);
        node.variants = Vec::new();
        node.size = 0;
        self.free.push(at);
        self.bytes -= size;
        size
    }
}

/// Who fetches a key now: requests that miss the same key wait for it.
pub(crate) struct Fill {
    store: Arc<Store>,
    key: Arc<str>,
    id: u64,
    /// Dropped with the fill: waiters wake up.
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for Fill {
    fn drop(&mut self) {
        let mut pending = lock(&self.store.pending);
        if pending.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            pending.remove(&self.key);
        }
    }
}

impl std::fmt::Debug for Fill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fill({})", self.key)
    }
}

/// What a request that misses learns: it fetches the key, or someone already does.
pub(crate) enum Begin {
    /// This request fetches it; others wait until the fill is dropped.
    Fill(Arc<Fill>),
    /// Another request fetches it: this ends when that one is done.
    Wait(tokio::sync::watch::Receiver<()>),
}

/// The fetches under way, by key: the fill's id and a receiver that ends with it.
type Pending = HashMap<Arc<str>, (u64, tokio::sync::watch::Receiver<()>)>;

/// The answers of one `cache` plugin, kept across reloads that leave its spec as it was.
pub(crate) struct Store {
    lru: Mutex<Lru>,
    pending: Mutex<Pending>,
    next_fill: std::sync::atomic::AtomicU64,
    max_bytes: usize,
    /// `portico_cache_stored_bytes`, shared by every store.
    gauge: Gauge,
    /// The disk store behind the memory one, when configured.
    disk: Option<Arc<super::disk::Disk>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({} bytes)", self.bytes())
    }
}

impl super::super::state::Kept for Store {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Store {
    /// An empty store of at most `max_bytes`.
    pub(crate) fn new(
        max_bytes: usize,
        gauge: Gauge,
        disk: Option<Arc<super::disk::Disk>>,
    ) -> Self {
        Store {
            lru: Mutex::new(Lru::new()),
            pending: Mutex::new(HashMap::new()),
            next_fill: std::sync::atomic::AtomicU64::new(0),
            max_bytes,
            gauge,
            disk,
        }
    }

    /// The disk store, when configured.
    pub(crate) fn disk(&self) -> Option<&Arc<super::disk::Disk>> {
        self.disk.as_ref()
    }

    /// Bytes stored.
    pub(crate) fn bytes(&self) -> usize {
        lock(&self.lru).bytes
    }

    /// The variant of `key` that `request` selects, marked as just used.
    pub(crate) fn find(&self, key: &str, request: &HeaderMap) -> Option<Arc<Stored>> {
        let mut lru = lock(&self.lru);
        let at = *lru.map.get(key)?;
        let found = lru.nodes[at]
            .variants
            .iter()
            .find(|v| v.selected_by(request))
            .cloned();
        if found.is_some() {
            lru.touch(at);
        }
        found
    }

    /// Stores `stored` under `key` in memory and (queued, off the worker) on disk.
    pub(crate) fn put(&self, key: Arc<str>, stored: Arc<Stored>) {
        if let Some(disk) = &self.disk {
            disk.write(Arc::clone(&key), Arc::clone(&stored));
        }
        self.put_memory(key, stored);
    }

    /// Stores `stored` under `key` in memory, replacing the variant it matches; drops the
    /// least recently used entries past the store's size.
    pub(crate) fn put_memory(&self, key: Arc<str>, stored: Arc<Stored>) {
        let size = stored.size();
        if size > self.max_bytes {
            return;
        }
        let mut lru = lock(&self.lru);
        let before = lru.bytes;
        let at = match lru.map.get(&key) {
            Some(&at) => at,
            None => {
                let node = Node {
                    key: Arc::clone(&key),
                    variants: Vec::new(),
                    size: 0,
                    prev: NIL,
                    next: NIL,
                };
                let at = match lru.free.pop() {
                    Some(at) => {
                        lru.nodes[at] = node;
                        at
                    }
                    None => {
                        lru.nodes.push(node);
                        lru.nodes.len() - 1
                    }
                };
                lru.map.insert(key, at);
                lru.push_front(at);
                at
            }
        };
        let node = &mut lru.nodes[at];
        node.variants.retain(|v| v.vary != stored.vary);
        if node.variants.len() >= MAX_VARIANTS {
            node.variants.remove(0);
        }
        node.variants.push(stored);
        let new_size: usize = node.variants.iter().map(|v| v.size()).sum();
        let old_size = std::mem::replace(&mut node.size, new_size);
        lru.bytes = lru.bytes - old_size + new_size;
        lru.touch(at);
        while lru.bytes > self.max_bytes && lru.tail != NIL {
            let tail = lru.tail;
            lru.remove_at(tail);
        }
        self.account(before, lru.bytes);
    }

    /// Drops the entries whose URL `matches`, in memory and on disk; returns how many (the
    /// larger of the two counts) and the bytes freed in memory.
    pub(crate) fn purge(&self, matches: impl Fn(&str) -> bool) -> (usize, usize) {
        let on_disk = self.disk.as_ref().map_or(0, |d| d.purge(&matches));
        let mut lru = lock(&self.lru);
        let before = lru.bytes;
        let found: Vec<usize> = lru
            .map
            .values()
            .copied()
            .filter(|&at| {
                lru.nodes[at]
                    .variants
                    .first()
                    .is_some_and(|v| matches(&v.url))
            })
            .collect();
        let mut bytes = 0;
        for at in &found {
            bytes += lru.remove_at(*at);
        }
        self.account(before, lru.bytes);
        (found.len().max(on_disk), bytes)
    }

    fn account(&self, before: usize, after: usize) {
        let delta = after as i64 - before as i64;
        self.gauge.inc_by(delta);
    }

    /// Claims the fetch of `key`, or joins the one under way.
    pub(crate) fn begin(self: &Arc<Self>, key: &Arc<str>) -> Begin {
        let mut pending = lock(&self.pending);
        if let Some((_, rx)) = pending.get(key) {
            return Begin::Wait(rx.clone());
        }
        let (tx, rx) = tokio::sync::watch::channel(());
        let id = self
            .next_fill
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        pending.insert(Arc::clone(key), (id, rx));
        Begin::Fill(Arc::new(Fill {
            store: Arc::clone(self),
            key: Arc::clone(key),
            id,
            _done: tx,
        }))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let bytes = lock(&self.lru).bytes;
        self.gauge.dec_by(bytes as i64);
    }
}

/// Now, as a wall-clock time for date fields.
pub(crate) fn wall_now() -> SystemTime {
    SystemTime::now()
}
