//! `rate_limit`: GCRA (the generic cell rate algorithm) per key, in memory.
//!
//! A bucket of `burst` requests (the `limit` unless given) refilled at `limit` per `window`,
//! one every `window / limit`: `limit: 5, window: 10s` lets 5 through at once, then one every
//! 2 s, so a client that waits a whole window has its 5 again. In any span of `window` at most
//! `burst + limit - 1` requests pass (`2 × limit - 1` by default, at the window's edges). Keys live in
//! 16 sharded maps; a shard over its share of `max_keys` first forgets keys whose allowance is
//! full again, then (under a flood of new keys) starts over, so memory stays bounded. The
//! buckets are kept across reloads while the plugin's spec and place stay the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, header, request, response};

use super::{BuildError, Deferred, Flow, Phase, Plugin};
use crate::admission::Rate;
use crate::config::spec::RateLimitSpec;
use crate::ctx::RequestCtx;
use crate::error::{ProxyError, error_response};

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

const SHARDS: usize = 16;

/// What a limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LimitKey {
    /// The client address.
    Ip,
    /// The authenticated consumer (unauthenticated requests share one key).
    Consumer,
    /// The route: one budget for everyone.
    Route,
    /// A header's value.
    Header(HeaderName),
}

impl LimitKey {
    /// `ip`, `consumer`, `route` or `header:NAME`, as `by:` says.
    pub(crate) fn parse(by: &str) -> Result<Self, BuildError> {
        Ok(match by {
            "ip" => LimitKey::Ip,
            "consumer" => LimitKey::Consumer,
            "route" => LimitKey::Route,
            other => match other.strip_prefix("header:") {
                Some(name) => LimitKey::Header(
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|e| BuildError::header_name(name, e))?,
                ),
                None => {
                    return Err(BuildError::LimitKey {
                        by: other.to_owned(),
                    });
                }
            },
        })
    }

    /// What this request counts as.
    pub(crate) fn of(&self, ctx: &RequestCtx, head: &request::Parts) -> String {
        match self {
            LimitKey::Ip => ctx.client.ip().to_canonical().to_string(),
            LimitKey::Consumer => ctx
                .consumer
                .as_ref()
                .map_or_else(String::new, |c| c.name.clone()),
            LimitKey::Route => String::new(),
            LimitKey::Header(name) => head
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default(),
        }
    }

    /// What `explain` says this request counts as (never a credential's value).
    pub(crate) fn describe(
        &self,
        ctx: &RequestCtx,
        head: &request::Parts,
        secrets: &crate::config::secret::Credentials,
    ) -> String {
        match self {
            LimitKey::Ip => format!("counts by ip {}", ctx.client.ip().to_canonical()),
            LimitKey::Consumer => match &ctx.consumer {
                Some(c) => format!("counts by consumer {}", c.name),
                None => "counts by consumer: none authenticated, so one key shared by all \
                         unauthenticated requests"
                    .to_owned(),
            },
            LimitKey::Route => "counts by route: one budget for every client".to_owned(),
            LimitKey::Header(name) if secrets.header(name.as_str()) => {
                format!("counts by header {name} (its value, a credential, is not shown)")
            }
            LimitKey::Header(name) => match head.headers.get(name) {
                Some(value) => format!(
                    "counts by header {name} = {}",
                    String::from_utf8_lossy(value.as_bytes())
                ),
                None => format!("counts by header {name}: absent, so one shared key"),
            },
        }
    }

    /// A limit by consumer needs authentication first; the others run before everything.
    pub(crate) fn phase(&self) -> Phase {
        if *self == LimitKey::Consumer {
            Phase::Authorize
        } else {
            Phase::Access
        }
    }
}

/// A compiled `rate_limit`.
#[derive(Debug)]
pub(crate) struct RateLimit {
    key: LimitKey,
    limit: u32,
    /// `RateLimit-Policy`: the configured policy, e.g. `5;w=10` (IETF httpapi ratelimit
    /// headers).
    policy: HeaderValue,
    /// This node's buckets (also the fallback of a cluster limit).
    local: Arc<Local>,
    limited: Limited,
    /// With `scope: cluster`: the shared Redis and this limiter's name there.
    cluster: Option<(Arc<super::cluster::Redis>, Arc<str>)>,
}

/// `portico_rate_limited_total`, by route.
pub(super) type Limited = prometheus_client::metrics::family::Family<
    crate::observe::metrics::RouteLabels,
    prometheus_client::metrics::counter::Counter,
>;

/// Each key's theoretical arrival time, in shards; kept across reloads.
#[derive(Debug)]
struct Buckets(Vec<Mutex<HashMap<String, u64>>>);

impl crate::plugins::state::Kept for Buckets {}

impl RateLimit {
    /// Checks the spec.
    pub(crate) fn new(spec: &RateLimitSpec, env: super::BuildEnv<'_>) -> Result<Self, BuildError> {
        if *spec.limit == 0 {
            return Err(BuildError::ZeroLimit);
        }
        if spec.window.0.is_zero() {
            return Err(BuildError::ZeroWindow);
        }
        let key = LimitKey::parse(&spec.by)?;
        let burst = spec.burst.unwrap_or(*spec.limit);
        if burst == 0 {
            return Err(BuildError::ZeroBurst);
        }
        let rate = Rate::new(*spec.limit, spec.window.0, burst).ok_or(BuildError::ZeroLimit)?;
        let cluster = match spec.scope {
            crate::config::spec::LimitScope::Local => None,
            crate::config::spec::LimitScope::Cluster => {
                let redis = env.redis.ok_or(BuildError::NoClusterRedis)?;
                let id = env
                    .state
                    .id("rate_limit")
                    .unwrap_or_else(|| "rate_limit".into());
                Some((Arc::clone(redis), Arc::from(id)))
            }
        };
        let window = spec.window.0.as_secs().max(1);
        let policy = if burst == *spec.limit {
            format!("{};w={window}", *spec.limit)
        } else {
            format!("{};w={window};burst={burst}", *spec.limit)
        };
        Ok(RateLimit {
            key,
            limit: *spec.limit,
            policy: HeaderValue::from_str(&policy).map_err(|_| BuildError::ZeroBurst)?,
            local: Arc::new(Local {
                rate,
                burst,
                shard_cap: (spec.max_keys / SHARDS).max(1),
                shards: env
                    .state
                    .keep(|| Buckets((0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect())),
            }),
            limited: env.metrics.rate_limited_family(),
            cluster,
        })
    }

    /// One GCRA step: `Ok(remaining)` or `Err(wait)`.
    pub(crate) fn check(&self, key: &str, now: u64) -> Result<(u32, u64), u64> {
        self.local.check(key, now)
    }
}

/// A verdict in ns as the headers give it, in whole seconds (at least 1).
fn in_seconds(checked: Result<(u32, u64), u64>) -> Result<(u32, u64), u64> {
    checked
        .map(|(remaining, reset)| (remaining, Duration::from_nanos(reset).as_secs().max(1)))
        .map_err(|wait| Duration::from_nanos(wait).as_secs_f64().ceil().max(1.0) as u64)
}

/// The 429 of a limit.
fn refusal(request_id: &HeaderValue) -> http::Response<crate::body::Body> {
    error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests; see Retry-After",
        request_id,
    )
}

impl RateLimit {
    /// A decision of scope `cluster`: the step runs in Redis; when Redis cannot decide in
    /// time, the configured fallback does (this node's own buckets for `local`).
    fn in_cluster(
        &self,
        ctx: &RequestCtx,
        redis: Arc<super::cluster::Redis>,
        redis_key: String,
        key: String,
    ) -> Flow {
        let local = Arc::clone(&self.local);
        let (interval, tolerance, burst) = (local.rate.interval, local.rate.tolerance, local.burst);
        let (limit, policy, limited) = (self.limit, self.policy.clone(), self.limited.clone());
        let (request_id, route) = (ctx.request_id.clone(), ctx.route.clone());
        Flow::Defer(Box::pin(async move {
            use crate::config::spec::RedisFallback;
            let checked = match redis.step(&redis_key, interval, tolerance).await {
                Ok(step) => {
                    redis.decided("redis");
                    step.map(|next| {
                        let used = next.div_ceil(interval);
                        (u64::from(burst).saturating_sub(used) as u32, next)
                    })
                }
                Err(_) => match redis.fallback {
                    RedisFallback::Local => {
                        redis.decided("local");
                        local.check(&key, crate::admission::now_ns())
                    }
                    RedisFallback::Open => {
                        redis.decided("open");
                        return Deferred::Continue(None);
                    }
                    RedisFallback::Closed => {
                        redis.decided("closed");
                        return Deferred::Respond(error_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "rate_limit_unavailable",
                            "the shared rate limit cannot be checked now; try again",
                            &request_id,
                        ));
                    }
                },
            };
            match in_seconds(checked) {
                Ok((remaining, reset)) => Deferred::Apply(Box::new(move |ctx, _| {
                    Figures {
                        limit,
                        remaining,
                        reset,
                        policy,
                    }
                    .note(ctx);
                })),
                Err(wait) => {
                    let mut ctx = RequestCtx::new(
                        request_id,
                        std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                        Arc::from(""),
                    );
                    ctx.route = route;
                    match verdict(&mut ctx, Err(wait), (limit, &policy), &limited, refusal) {
                        Flow::Respond(response) => Deferred::Respond(response),
                        _ => Deferred::Continue(None),
                    }
                }
            }
        }))
    }
}

/// A limiter's buckets on this node: the whole limiter with `scope: local`, the fallback
/// of one with `scope: cluster`.
#[derive(Debug)]
struct Local {
    /// The GCRA rate: `window / limit` apart, `burst` at once.
    rate: Rate,
    /// The bucket's capacity.
    burst: u32,
    shard_cap: usize,
    shards: Arc<Buckets>,
}

impl Local {
    fn check(&self, key: &str, now: u64) -> Result<(u32, u64), u64> {
        gcra(
            &self.shards,
            self.shard_cap,
            &self.rate,
            self.burst,
            key,
            now,
        )
    }
}

/// One GCRA step on `shards`: `Ok((remaining, next - now))` or `Err(wait)` (ns).
fn gcra(
    shards: &Buckets,
    shard_cap: usize,
    rate: &Rate,
    burst: u32,
    key: &str,
    now: u64,
) -> Result<(u32, u64), u64> {
    let shard = &shards.0[crate::balance::hash::hash64(key.as_bytes()) as usize % SHARDS];
    let mut map = match shard.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    if map.len() >= shard_cap && !map.contains_key(key) {
        // Forget keys whose allowance is whole again; under a flood of new keys, start over.
        map.retain(|_, tat| *tat > now);
        if map.len() >= shard_cap {
            map.clear();
        }
    }
    let next = rate.step(map.get(key).copied(), now)?;
    map.insert(key.to_owned(), next);
    let used = (next - now).div_ceil(rate.interval);
    let remaining = u64::from(burst).saturating_sub(used) as u32;
    Ok((remaining, next - now))
}

/// `RateLimit-*` values for the response: limit, remaining, seconds to reset, and every
/// policy in force. With several limits (a rate and a quota, say) the figures are the
/// tightest one's and `RateLimit-Policy` lists them all.
#[derive(Debug, Clone)]
pub(super) struct Figures {
    pub(super) limit: u32,
    pub(super) remaining: u32,
    pub(super) reset: u64,
    pub(super) policy: HeaderValue,
}

impl Figures {
    /// Records one limit's figures for the response.
    pub(super) fn note(self, ctx: &mut RequestCtx) {
        let Some(held) = ctx.slots.get_mut::<Figures>() else {
            ctx.slots.insert(self);
            return;
        };
        let policy = [held.policy.as_bytes(), b", ", self.policy.as_bytes()].concat();
        let policy = HeaderValue::from_bytes(&policy).unwrap_or_else(|_| held.policy.clone());
        if (self.remaining, std::cmp::Reverse(self.reset))
            < (held.remaining, std::cmp::Reverse(held.reset))
        {
            *held = self;
        }
        held.policy = policy;
    }

    /// Writes the figures on a response (unless an upstream sent its own).
    pub(super) fn write(ctx: &RequestCtx, head: &mut response::Parts) {
        if let Some(figures) = ctx.slots.get::<Figures>()
            && !head.headers.contains_key(&RATELIMIT_LIMIT)
        {
            let headers = &mut head.headers;
            headers.insert(&RATELIMIT_LIMIT, HeaderValue::from(figures.limit));
            headers.insert(&RATELIMIT_REMAINING, HeaderValue::from(figures.remaining));
            headers.insert(&RATELIMIT_RESET, HeaderValue::from(figures.reset));
            headers.insert(&RATELIMIT_POLICY, figures.policy.clone());
        }
    }
}

/// A limit's verdict, in seconds: `Ok((remaining, to reset))` or `Err(to wait)`. Passing
/// notes the figures for the response; refusing answers the 429 `refusal` makes (given the
/// request id) with `Retry-After` and the `RateLimit-*` fields, counted in
/// `portico_rate_limited_total`.
pub(super) fn verdict(
    ctx: &mut RequestCtx,
    checked: Result<(u32, u64), u64>,
    (limit, policy): (u32, &HeaderValue),
    limited: &Limited,
    refusal: impl FnOnce(&HeaderValue) -> http::Response<crate::body::Body>,
) -> Flow {
    let retry_after = match checked {
        Ok((remaining, reset)) => {
            Figures {
                limit,
                remaining,
                reset,
                policy: policy.clone(),
            }
            .note(ctx);
            return Flow::Continue;
        }
        Err(wait) => wait,
    };
    limited
        .get_or_create(&crate::observe::metrics::RouteLabels {
            route: ctx.route.as_deref().unwrap_or("").to_owned(),
        })
        .inc();
    let mut response = refusal(&ctx.request_id);
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    headers.insert(&RATELIMIT_LIMIT, HeaderValue::from(limit));
    headers.insert(&RATELIMIT_POLICY, policy.clone());
    headers.insert(&RATELIMIT_REMAINING, HeaderValue::from(0));
    headers.insert(&RATELIMIT_RESET, HeaderValue::from(retry_after));
    Flow::Respond(response)
}

impl Plugin for RateLimit {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn explain(
        &self,
        ctx: &mut RequestCtx,
        head: &request::Parts,
        secrets: &crate::config::secret::Credentials,
    ) -> super::Explained {
        let key = self.key.describe(ctx, head, secrets);
        let policy = String::from_utf8_lossy(self.policy.as_bytes());
        super::Explained::Run(vec![format!("{key}; policy {policy} (RateLimit-Policy)")])
    }

    fn stops(&self) -> Option<&'static str> {
        Some("429 over the limit")
    }

    fn phase(&self) -> Phase {
        self.key.phase()
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        let key = self.key.of(ctx, head);
        if let Some((redis, id)) = &self.cluster {
            return Ok(self.in_cluster(ctx, Arc::clone(redis), redis.key(id, &key), key));
        }
        let checked = self.check(&key, crate::admission::now_ns());
        Ok(verdict(
            ctx,
            in_seconds(checked),
            (self.limit, &self.policy),
            &self.limited,
            refusal,
        ))
    }

    fn on_response(&self, ctx: &RequestCtx, head: &mut response::Parts) {
        Figures::write(ctx, head);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::At;
    use crate::config::units::Dur;

    fn limiter(limit: u32, window_ms: u64, burst: Option<u32>, max_keys: usize) -> RateLimit {
        let spec = RateLimitSpec {
            limit: At {
                pos: Default::default(),
                value: limit,
            },
            window: Dur(Duration::from_millis(window_ms)),
            burst,
            by: At {
                pos: Default::default(),
                value: "ip".into(),
            },
            max_keys,
            scope: Default::default(),
        };
        crate::plugins::with_test_env(|env| RateLimit::new(&spec, env).unwrap())
    }

    #[test]
    fn never_more_than_burst_plus_limit_per_window() {
        let rl = limiter(10, 1000, Some(5), 1000);
        let ms = 1_000_000u64;
        // Hammer every millisecond for 5 s; count in every sliding 1 s window.
        let mut passed = Vec::new();
        for t in 0..5000u64 {
            for _ in 0..3 {
                if rl.check("k", 1 + t * ms).is_ok() {
                    passed.push(t);
                }
            }
        }
        for start in 0..4000u64 {
            let n = passed
                .iter()
                .filter(|&&t| t >= start && t < start + 1000)
                .count();
            assert!(n <= 14, "{n} passed in the window from {start} ms");
        }
        // The bucket, then the long-run rate: 5 + 10 per second.
        assert!((54..=56).contains(&passed.len()), "{}", passed.len());
    }

    #[test]
    fn five_per_ten_seconds_means_five_at_once_then_one_every_two() {
        let rl = limiter(5, 10_000, None, 1000);
        let s = 1_000_000_000u64;
        let t0 = 1;
        let remaining: Vec<u32> = (0..5)
            .map(|_| rl.check("k", t0).expect("within the bucket").0)
            .collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let wait = rl.check("k", t0).expect_err("the sixth at once is refused");
        assert_eq!(wait, 2 * s, "the next one comes back after window / limit");
        assert!(rl.check("k", t0 + 2 * s - 1).is_err());
        assert!(rl.check("k", t0 + 2 * s).is_ok());
        assert!(rl.check("k", t0 + 2 * s).is_err());
        // A client that waits a whole window has its five again.
        let later = t0 + 2 * s + 10 * s;
        assert_eq!((0..6).filter(|_| rl.check("k", later).is_ok()).count(), 5);
        assert_eq!(rl.policy, "5;w=10");
        assert_eq!(limiter(5, 10_000, Some(2), 10).policy, "5;w=10;burst=2");
    }

    #[test]
    fn keys_are_bounded() {
        let rl = limiter(1, 60_000, None, 160);
        for i in 0..10_000 {
            let _ = rl.check(&format!("key-{i}"), 1);
        }
        let total: usize = rl
            .local
            .shards
            .0
            .iter()
            .map(|s| s.lock().unwrap().len())
            .sum();
        assert!(total <= 160, "{total}");
    }
}
