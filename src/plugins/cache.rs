//! `cache`: an RFC 9111 shared cache of a route's answers, in memory, bounded in bytes, and
//! optionally on disk too ([`disk`]: written through, read on a memory miss).
//!
//! The request step looks the key up: a fresh answer is served from the store (`x-cache:
//! HIT`, with its `Age`); a miss goes on to the upstream, and concurrent misses of one key
//! wait for the first one's answer instead (request collapsing). The answer step
//! ([`Plugin::on_answer`]) sees the route's answer before any response step: a storable one
//! is teed into the store as it streams to the client (never buffered for it), an
//! upstream's 304 to portico's own revalidation becomes the stored answer, and a failure
//! (the upstream's 5xx or portico's own error) becomes the stale answer within its
//! `stale-if-error` window. A stale answer within its `stale-while-revalidate` window is
//! served at once while one background request ([`super::Subrequests::call_route`])
//! refreshes it. Answers are stored as the route's action gave them: response steps run on
//! hits as on fresh answers, and portico's own errors are never stored.
//!
//! The key is the host, the canonical path and the query, and the configured
//! `key_headers`; `Vary` selects among the answers of one key. Nothing else of a request
//! changes what it is served.

pub(crate) mod disk;
pub(crate) mod rules;
pub(crate) mod store;
mod tee;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header, request, response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::{BuildEnv, BuildError, Deferred, Flow, Phase, Plugin};
use crate::body::Body;
use crate::config::spec_cache::CacheSpec;
use crate::ctx::RequestCtx;
use crate::error::ProxyError;
use crate::observe::CacheLabels;
use rules::Directives;
pub(crate) use store::Store;
use store::{Begin, Fill, Stored, Timing};
use tee::{Pending, Tee};

/// `x-cache`: what the cache did with the request.
pub(crate) static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Marks a response served from the store: it is never stored again.
#[derive(Debug, Clone, Copy)]
struct FromCache;

/// The `cache` plugin.
#[derive(Debug)]
pub(crate) struct Cache {
    store: Arc<Store>,
    policy: Policy,
    key_headers: Vec<HeaderName>,
    lock_timeout: Duration,
    requests: Family<CacheLabels, Counter>,
}

/// What the request step left for the answer step.
#[derive(Clone)]
enum Slot {
    /// Not looked up (`no-store`, a range, another method).
    Bypass,
    /// A method that changes the resource: a success drops what is stored for its URL.
    Invalidate(Arc<str>),
    /// Looked up and not served from the store.
    Miss(Arc<Miss>),
}

struct Miss {
    key: Arc<str>,
    url: Arc<str>,
    /// The request's fields, for the `Vary` of the answer and the client's conditionals.
    request: HeaderMap,
    /// Whether the answer may be stored (a `GET`).
    get: bool,
    /// The request had `Authorization` (RFC 9111 §3.5).
    authorized: bool,
    /// The stored answer, stale: portico asked the upstream whether it still holds.
    stale: Option<Arc<Stored>>,
    /// Whether the upstream request carries portico's own validators.
    revalidating: bool,
    /// This request fetches the key for the others.
    fill: Option<Arc<Fill>>,
}

impl Cache {
    /// Builds the plugin; its store is kept across reloads that leave the spec as it was.
    pub(crate) fn new(spec: &CacheSpec, env: BuildEnv<'_>) -> Result<Self, BuildError> {
        let key_headers = spec
            .key_headers
            .iter()
            .map(|name| {
                HeaderName::from_bytes(name.value.as_bytes()).map_err(|_| BuildError::At {
                    pos: name.pos,
                    message: format!("invalid header name `{}`", name.value),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let max_bytes = usize::try_from(spec.max_size.0).unwrap_or(usize::MAX);
        let gauge = env.metrics.cache_bytes().clone();
        let disk = match &spec.disk {
            Some(d) => {
                let dir = env.base.join(&d.value.path);
                disk::prepare(&dir).map_err(|message| BuildError::At {
                    pos: d.pos,
                    message,
                })?;
                let folder = std::fs::canonicalize(&dir).unwrap_or(dir);
                if !env
                    .state
                    .claim(format!("cache folder {}", folder.display()))
                {
                    return Err(BuildError::At {
                        pos: d.pos,
                        message: format!(
                            "the cache folder `{}` is used by another `cache` plugin",
                            folder.display()
                        ),
                    });
                }
                Some((folder, d.value.max_size.0))
            }
            None => None,
        };
        let store = env.state.keep(|| {
            let disk = disk.and_then(|(dir, max)| {
                // A changed plugin on the same folder keeps its disk store (and what it
                // knows): one writer per folder.
                let live = env.state.live::<Store>();
                if let Some(kept) = live.iter().find_map(|s| s.disk().filter(|d| d.dir() == dir))
                {
                    kept.resize(max);
                    return Some(Arc::clone(kept));
                }
                match disk::Disk::open(dir, max) {
                    Ok(disk) => Some(Arc::new(disk)),
                    Err(e) => {
                        tracing::warn!(target: "portico::cache", error = %e, "disk store not started");
                        None
                    }
                }
            });
            Store::new(max_bytes, gauge, disk)
        });
        Ok(Cache {
            store,
            policy: Policy {
                heuristic: spec.ttl.map(|t| t.0),
                max_object: usize::try_from(spec.max_object_size.0).unwrap_or(usize::MAX),
            },
            key_headers,
            lock_timeout: spec.lock_timeout.0,
            requests: env.metrics.cache_requests(),
        })
    }

    fn count(&self, ctx: &RequestCtx, result: &'static str) {
        self.requests
            .get_or_create(&CacheLabels {
                route: ctx.route.as_deref().unwrap_or("").to_owned(),
                result,
            })
            .inc();
    }

    /// The key: `host/path?query`, then each key header's values.
    fn key(&self, url: &str, headers: &HeaderMap) -> Arc<str> {
        let mut key = url.to_owned();
        for name in &self.key_headers {
            key.push('\n');
            key.push_str(name.as_str());
            key.push(':');
            if let Some(v) = store::joined(headers, name) {
                key.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
        }
        Arc::from(key)
    }

    /// `stale-while-revalidate`: the stale answer now (`x-cache: STALE`), and one refresh of
    /// it in the background (none when a request of the key is already fetching).
    fn refresh_later(
        &self,
        ctx: &mut RequestCtx,
        head: &request::Parts,
        key: Arc<str>,
        url: Arc<str>,
        stale: Arc<Stored>,
        now: Instant,
    ) -> Flow {
        self.count(ctx, "stale");
        let head_only = head.method == Method::HEAD;
        let response = serve(&stale, &head.headers, head_only, "STALE", now);
        let Begin::Fill(fill) = self.store.begin(&key) else {
            return Flow::Respond(response);
        };
        let mut fetch = http::Request::new(()).into_parts().0;
        fetch.uri = head.uri.clone();
        fetch.headers = head.headers.clone();
        for name in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
            header::CACHE_CONTROL,
        ] {
            fetch.headers.remove(name);
        }
        let revalidating = stale.validators;
        if let Some(etag) = stale.headers.get(header::ETAG) {
            fetch.headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = stale.headers.get(header::LAST_MODIFIED) {
            fetch
                .headers
                .insert(header::IF_MODIFIED_SINCE, modified.clone());
        }
        let miss = Miss {
            key,
            url,
            request: head.headers.clone(),
            get: true,
            authorized: head.headers.contains_key(header::AUTHORIZATION),
            stale: Some(stale),
            revalidating,
            fill: None,
        };
        let policy = self.policy;
        let store = Arc::clone(&self.store);
        Flow::Subrequest(Box::new(move |ctx, calls| {
            let call = calls.call_route(ctx, fetch, policy.max_object);
            tokio::spawn(async move {
                // Waiters look again once the refresh is stored (or failed).
                let _fill = fill;
                if let Ok(answer) = call.await {
                    policy.absorb(&store, &miss, answer);
                }
            });
            Box::pin(std::future::ready(Deferred::Respond(response)))
        }))
    }

    /// A memory miss of a key that may be on disk: the file is read on the blocking pool; a
    /// valid one is promoted into memory and served when fresh, or revalidated (or kept for
    /// `stale-if-error`) like a stale answer in memory; anything else is a miss.
    fn look_on_disk(
        &self,
        ctx: &RequestCtx,
        head: &request::Parts,
        key: Arc<str>,
        url: Arc<str>,
        cc: Directives,
    ) -> Flow {
        let store = Arc::clone(&self.store);
        let requests = self.requests.clone();
        let route = ctx.route.as_deref().unwrap_or("").to_owned();
        let request = head.headers.clone();
        let head_only = head.method == Method::HEAD;
        let timeout = self.lock_timeout;
        Flow::Defer(Box::pin(async move {
            let (load_store, load_key) = (Arc::clone(&store), Arc::clone(&key));
            let loaded = tokio::task::spawn_blocking(move || {
                load_store.disk().and_then(|d| d.load(&load_key))
            })
            .await
            .ok()
            .flatten();
            let now = Instant::now();
            let found = loaded.filter(|s| s.selected_by(&request)).map(Arc::new);
            if let Some(stored) = &found {
                store.put_memory(Arc::clone(&key), Arc::clone(stored));
                if serves_fresh(stored, &cc, now) {
                    requests
                        .get_or_create(&CacheLabels {
                            route,
                            result: "hit",
                        })
                        .inc();
                    return Deferred::Respond(serve(stored, &request, head_only, "HIT", now));
                }
            }
            let stale = found.filter(|s| s.validators || s.serves_on_error(now));
            // Concurrent misses of the key collapse here as in memory: one fetches, the
            // others wait for its answer (bounded), then go to the upstream too.
            let begun = (!head_only).then(|| store.begin(&key));
            let begun = match begun {
                Some(Begin::Wait(mut rx)) => {
                    let _ = tokio::time::timeout(timeout, rx.changed()).await;
                    let now = Instant::now();
                    if let Some(found) = store.find(&key, &request).filter(|f| f.fresh(now, 0)) {
                        requests
                            .get_or_create(&CacheLabels {
                                route,
                                result: "hit",
                            })
                            .inc();
                        return Deferred::Respond(serve(&found, &request, head_only, "HIT", now));
                    }
                    Some(Begin::Wait(rx))
                }
                other => other,
            };
            Deferred::Apply(Box::new(
                move |ctx: &mut RequestCtx, head: &mut request::Parts| {
                    let (miss, _) = prepare_miss(&store, head, key, url, stale, begun);
                    ctx.slots.insert(Slot::Miss(Arc::new(miss)));
                },
            ))
        }))
    }

    /// The request step's answer for a miss: fetch (with validators when a stale answer
    /// has some), or wait for the request already fetching.
    fn miss(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
        key: Arc<str>,
        url: Arc<str>,
        stale: Option<Arc<Stored>>,
    ) -> Flow {
        let get = head.method == Method::GET;
        let (miss, wait) = prepare_miss(&self.store, head, key, url, stale, None);
        let miss = Arc::new(miss);
        ctx.slots.insert(Slot::Miss(Arc::clone(&miss)));
        let Some(mut rx) = wait else {
            return Flow::Continue;
        };
        // Someone fetches this key: wait for its answer (bounded), then serve it if it
        // was stored, else go to the upstream too.
        let store = Arc::clone(&self.store);
        let timeout = self.lock_timeout;
        let requests = self.requests.clone();
        let route = ctx.route.as_deref().unwrap_or("").to_owned();
        Flow::Defer(Box::pin(async move {
            let _ = tokio::time::timeout(timeout, rx.changed()).await;
            let now = Instant::now();
            match store.find(&miss.key, &miss.request) {
                Some(found) if found.fresh(now, 0) => {
                    requests
                        .get_or_create(&CacheLabels {
                            route,
                            result: "hit",
                        })
                        .inc();
                    Deferred::Respond(serve(&found, &miss.request, !get, "HIT", now))
                }
                _ => Deferred::Continue(None),
            }
        }))
    }
}

/// Whether `stored` may be served as it is to a request with these directives.
fn serves_fresh(stored: &Stored, cc: &Directives, now: Instant) -> bool {
    let within_max_age = cc
        .max_age
        .is_none_or(|max| stored.age(now) <= Duration::from_secs(max));
    !cc.no_cache && within_max_age && stored.fresh(now, cc.min_fresh.unwrap_or(0))
}

/// A miss of `key`: claims its fetch (or learns who fetches it; `begun` when the caller
/// already did) and puts portico's own validators on the request when a stale answer has
/// some.
fn prepare_miss(
    store: &Arc<Store>,
    head: &mut request::Parts,
    key: Arc<str>,
    url: Arc<str>,
    stale: Option<Arc<Stored>>,
    begun: Option<Begin>,
) -> (Miss, Option<tokio::sync::watch::Receiver<()>>) {
    let get = head.method == Method::GET;
    let mut miss = Miss {
        key: Arc::clone(&key),
        url,
        request: head.headers.clone(),
        get,
        authorized: head.headers.contains_key(header::AUTHORIZATION),
        stale,
        revalidating: false,
        fill: None,
    };
    let begun = match begun {
        Some(begun) => Some(begun),
        None => get.then(|| store.begin(&key)),
    };
    let wait = match begun {
        Some(Begin::Fill(fill)) => {
            miss.fill = Some(fill);
            None
        }
        Some(Begin::Wait(rx)) => Some(rx),
        None => None,
    };
    if let Some(stale) = miss.stale.as_ref().filter(|s| s.validators) {
        // Portico's own validators replace the client's: the client's are checked
        // against the answer it gets.
        head.headers.remove(header::IF_NONE_MATCH);
        head.headers.remove(header::IF_MODIFIED_SINCE);
        if let Some(etag) = stale.headers.get(header::ETAG) {
            head.headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = stale.headers.get(header::LAST_MODIFIED) {
            head.headers
                .insert(header::IF_MODIFIED_SINCE, modified.clone());
        }
        miss.revalidating = true;
    }
    (miss, wait)
}

/// What decides whether and how long answers are stored.
#[derive(Debug, Clone, Copy)]
struct Policy {
    /// `ttl`: freshness for answers that say nothing.
    heuristic: Option<Duration>,
    /// `max_object_size`.
    max_object: usize,
}

impl Policy {
    /// Whether an answer may be stored, and for how long it is fresh.
    fn storable(&self, miss: &Miss, head: &response::Parts) -> Option<Timing> {
        let status = head.status;
        if !miss.get
            || status == StatusCode::PARTIAL_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status.is_informational()
            || head.headers.contains_key(header::SET_COOKIE)
        {
            return None;
        }
        let cc = Directives::parse(&head.headers);
        if cc.no_store || cc.private {
            return None;
        }
        if miss.authorized && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
            return None;
        }
        if vary_names(&head.headers).any(|n| n.is_none()) {
            // `Vary: *` (or a name that is not one): no request is ever the same.
            return None;
        }
        if content_length(&head.headers).is_some_and(|len| len > self.max_object as u64) {
            return None;
        }
        let lifetime = rules::lifetime(
            status,
            &head.headers,
            &cc,
            self.heuristic,
            store::wall_now(),
        )?;
        let timing = Timing::of(&cc, lifetime);
        let validators = head.headers.contains_key(header::ETAG)
            || head.headers.contains_key(header::LAST_MODIFIED);
        if timing.lifetime.is_zero() && !validators && timing.stale_if_error.is_zero() {
            return None;
        }
        Some(timing)
    }

    /// A stale answer refreshed by the upstream's 304 (RFC 9111 §4.3.4), and whether it
    /// may be stored (not when the 304 says `no-store`).
    fn refresh(&self, stale: &Stored, update: &HeaderMap) -> (Arc<Stored>, bool) {
        let cc = Directives::parse(update);
        let mut merged = stale.headers.clone();
        for name in update.keys() {
            merged.remove(name);
            for v in update.get_all(name) {
                merged.append(name.clone(), v.clone());
            }
        }
        let wall = store::wall_now();
        let lifetime = rules::lifetime(stale.status, &merged, &cc, self.heuristic, wall)
            .unwrap_or(Duration::ZERO);
        let refreshed = Arc::new(stale.refreshed(
            update,
            Timing::of(&cc, lifetime),
            rules::initial_age(update, wall),
        ));
        (refreshed, !cc.no_store)
    }

    /// What an answer to `miss` is stored as, when it is storable; `None` else.
    fn pending(&self, miss: &Miss, head: &response::Parts, now: Instant) -> Option<Pending> {
        let timing = self.storable(miss, head)?;
        let vary = vary_names(&head.headers)
            .flatten()
            .map(|name| {
                let value = store::joined(&miss.request, &name);
                (name, value)
            })
            .collect();
        let mut headers = head.headers.clone();
        headers.remove(&X_CACHE);
        headers.remove(header::AGE);
        Some(Pending {
            key: Arc::clone(&miss.key),
            url: Arc::clone(&miss.url),
            status: head.status,
            headers,
            vary,
            received: now,
            initial_age: rules::initial_age(&head.headers, store::wall_now()),
            timing,
        })
    }

    /// Stores the answer of a background refresh: a 304 refreshes the stale answer, a
    /// storable answer replaces it, anything else leaves it.
    fn absorb(&self, store: &Store, miss: &Miss, answer: http::Response<Bytes>) {
        let (head, body) = answer.into_parts();
        if head.status == StatusCode::NOT_MODIFIED {
            if let Some(stale) = miss.stale.as_ref().filter(|_| miss.revalidating) {
                let (refreshed, keep) = self.refresh(stale, &head.headers);
                if keep {
                    store.put(Arc::clone(&miss.key), refreshed);
                }
            }
            return;
        }
        if head.status.is_server_error() {
            return;
        }
        if let Some(pending) = self.pending(miss, &head, Instant::now()) {
            let (key, stored) = pending.into_stored(body);
            store.put(key, Arc::new(stored));
        }
    }
}

/// The names of the `Vary` fields; `None` for `*` or a name that is not one.
pub(crate) fn vary_names(headers: &HeaderMap) -> impl Iterator<Item = Option<HeaderName>> + '_ {
    headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("*").split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            if n == "*" {
                None
            } else {
                HeaderName::from_bytes(n.as_bytes()).ok()
            }
        })
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The stored answer for a request: 304 when the client's own conditional holds, no body
/// for `HEAD`, its `Age`, and `x-cache`.
fn serve(
    stored: &Stored,
    request: &HeaderMap,
    head_only: bool,
    result: &'static str,
    now: Instant,
) -> http::Response<Body> {
    let mut headers = stored.headers.clone();
    let not_modified = rules::not_modified(request, &stored.headers);
    let status = if not_modified {
        headers.remove(header::CONTENT_LENGTH);
        StatusCode::NOT_MODIFIED
    } else {
        stored.status
    };
    headers.insert(header::AGE, HeaderValue::from(stored.age(now).as_secs()));
    headers.insert(&X_CACHE, HeaderValue::from_static(result));
    let body = if head_only || not_modified {
        Body::Empty
    } else {
        Body::full(stored.body.clone())
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.extensions_mut().insert(FromCache);
    response
}

fn mark(response: &mut http::Response<Body>, result: &'static str) {
    mark_head(response.headers_mut(), result);
}

fn mark_head(headers: &mut HeaderMap, result: &'static str) {
    headers.insert(&X_CACHE, HeaderValue::from_static(result));
}

/// The host (normalised) and the target, as keys and purges name them: `host/path?query`.
pub(crate) fn url_of(head: &request::Parts) -> Arc<str> {
    let host = head
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| head.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut url = crate::routing::normalize_host(host).into_owned();
    url.push_str(target);
    Arc::from(url)
}

/// The URL a purge names, as keys name it: `http://host/path?query` → `host/path?query`
/// (the scheme and the port are not part of the key).
pub(crate) fn purge_url(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let (host, target) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let mut out = crate::routing::normalize_host(host).into_owned();
    out.push_str(target);
    Some(out)
}

/// What a purge drops, in every cache store.
pub(crate) enum Purge {
    /// Every answer of this URL (all variants).
    Key(String),
    /// Every answer whose URL starts with this.
    Prefix(String),
}

/// Drops what `purge` names from every live store; returns the entries and bytes dropped.
pub(crate) fn purge(states: &super::state::PluginStates, purge: &Purge) -> (usize, usize) {
    let mut total = (0, 0);
    for store in states.all::<Store>() {
        let (n, bytes) = match purge {
            Purge::Key(url) => store.purge(|u| u == url),
            Purge::Prefix(prefix) => store.purge(|u| u.starts_with(prefix.as_str())),
        };
        total.0 += n;
        total.1 += bytes;
    }
    total
}

impl Plugin for Cache {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn phase(&self) -> Phase {
        Phase::Transform
    }

    fn takes_answers(&self) -> bool {
        true
    }

    fn stops(&self) -> Option<&'static str> {
        Some("answers from its store while it holds a fresh answer for the request")
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        let method = &head.method;
        if method != Method::GET && method != Method::HEAD {
            let slot = if method.is_safe() {
                Slot::Bypass
            } else {
                Slot::Invalidate(url_of(head))
            };
            ctx.slots.insert(slot);
            return Ok(Flow::Continue);
        }
        let cc = Directives::parse(&head.headers);
        if cc.no_store || head.headers.contains_key(header::RANGE) {
            ctx.slots.insert(Slot::Bypass);
            return Ok(Flow::Continue);
        }
        let url = url_of(head);
        let key = self.key(&url, &head.headers);
        let now = Instant::now();
        let found = self.store.find(&key, &head.headers);
        if found.is_none()
            && let Some(disk) = self.store.disk()
            && disk.may_have(&key)
        {
            return Ok(self.look_on_disk(ctx, head, key, url, cc));
        }
        if let Some(stored) = &found
            && serves_fresh(stored, &cc, now)
        {
            self.count(ctx, "hit");
            let head_only = head.method == Method::HEAD;
            return Ok(Flow::Respond(serve(
                stored,
                &head.headers,
                head_only,
                "HIT",
                now,
            )));
        }
        if let Some(stale) = found
            .as_ref()
            .filter(|s| !cc.no_cache && s.serves_while_revalidating(now))
        {
            let stale = Arc::clone(stale);
            return Ok(self.refresh_later(ctx, head, key, url, stale, now));
        }
        Ok(self.miss(ctx, head, key, url, found))
    }

    fn on_answer(
        &self,
        ctx: &RequestCtx,
        answer: Result<http::Response<Body>, ProxyError>,
    ) -> Result<http::Response<Body>, ProxyError> {
        let Some(slot) = ctx.slots.get::<Slot>() else {
            return answer;
        };
        if let Ok(response) = &answer
            && response.extensions().get::<FromCache>().is_some()
        {
            return answer;
        }
        let miss = match slot {
            Slot::Bypass => {
                self.count(ctx, "bypass");
                return answer.map(|mut r| {
                    mark(&mut r, "BYPASS");
                    r
                });
            }
            Slot::Invalidate(url) => {
                self.count(ctx, "bypass");
                return answer.map(|mut r| {
                    if r.status().is_success() || r.status().is_redirection() {
                        self.store.purge(|u| u == &**url);
                    }
                    mark(&mut r, "BYPASS");
                    r
                });
            }
            Slot::Miss(miss) => miss,
        };
        let now = Instant::now();
        let failed = match &answer {
            Ok(r) => r.status().is_server_error(),
            Err(err) => err.status().is_server_error(),
        };
        if failed {
            if let Some(stale) = miss.stale.as_ref().filter(|s| s.serves_on_error(now)) {
                self.count(ctx, "stale");
                return Ok(serve(stale, &miss.request, !miss.get, "STALE", now));
            }
            self.count(ctx, "miss");
            return answer.map(|mut r| {
                mark(&mut r, "MISS");
                r
            });
        }
        let Ok(response) = answer else { return answer };
        let (mut head, body) = response.into_parts();
        if head.status == StatusCode::NOT_MODIFIED
            && miss.revalidating
            && let Some(stale) = &miss.stale
        {
            let (refreshed, keep) = self.policy.refresh(stale, &head.headers);
            if keep {
                self.store
                    .put(Arc::clone(&miss.key), Arc::clone(&refreshed));
            }
            self.count(ctx, "revalidated");
            return Ok(serve(
                &refreshed,
                &miss.request,
                !miss.get,
                "REVALIDATED",
                now,
            ));
        }
        self.count(ctx, "miss");
        let Some(pending) = self.policy.pending(miss, &head, now) else {
            mark_head(&mut head.headers, "MISS");
            return Ok(http::Response::from_parts(head, body));
        };
        mark_head(&mut head.headers, "MISS");
        let tee = Tee {
            store: Arc::clone(&self.store),
            max: self.policy.max_object,
            buf: Vec::new(),
            len: 0,
            expected: content_length(&head.headers),
            entry: Some(pending),
            _fill: miss.fill.clone(),
        };
        Ok(http::Response::from_parts(head, body.filter(Box::new(tee))))
    }
}

#[cfg(test)]
mod disk_tests;
#[cfg(test)]
mod tests;
