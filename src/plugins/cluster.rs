//! Limits counted together by several portico nodes in one Redis (`cluster.redis`): one
//! atomic script per decision, the same GCRA as the local limiter (so the same config means
//! the same limit, whatever the scope), over one multiplexed connection per node that
//! pipelines the decisions of every worker and reconnects by itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::config::spec::RedisFallback;
use crate::observe::metrics::DecisionLabels;

/// The decision, in Redis: the key's theoretical arrival time (µs, Redis' own clock, so
/// every node reads the same time) moves by one interval when the request may go.
/// Returns `{1, next - now}` when allowed, `{0, wait}` when not (µs).
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then return {0, allow_at - now} end
local next = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next), 'PX', math.ceil((next - now) / 1000) + 1)
return {1, next - now}
";

/// After a failed connect, how long decisions go to the fallback before the next try.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// One node's connection to a Redis, kept across reloads (by URL).
struct Link {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    /// No connect attempt before this (ns since the process clock's start).
    quiet_until: AtomicU64,
}

/// Every node-wide connection, by URL.
type Links = Mutex<Vec<(String, Arc<Link>)>>;

fn links() -> &'static Links {
    static LINKS: OnceLock<Links> = OnceLock::new();
    LINKS.get_or_init(Mutex::default)
}

/// `cluster.redis`, compiled.
pub(crate) struct Redis {
    link: Arc<Link>,
    script: redis::Script,
    timeout: Duration,
    pub(crate) fallback: RedisFallback,
    prefix: String,
    decisions: Family<DecisionLabels, Counter>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("timeout", &self.timeout)
            .field("fallback", &self.fallback)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Why Redis did not decide.
#[derive(Debug)]
pub(crate) struct Unavailable;

impl Redis {
    /// The Redis at `url` (its connection shared with earlier configs that named it).
    pub(crate) fn new(
        url: &str,
        timeout: Duration,
        fallback: RedisFallback,
        prefix: &str,
        decisions: Family<DecisionLabels, Counter>,
    ) -> Result<Self, String> {
        let mut all = links().lock().unwrap_or_else(|p| p.into_inner());
        let link = match all.iter().find(|(u, _)| u == url) {
            Some((_, link)) => Arc::clone(link),
            None => {
                let client = redis::Client::open(url).map_err(|e| e.to_string())?;
                let link = Arc::new(Link {
                    client,
                    conn: tokio::sync::OnceCell::new(),
                    quiet_until: AtomicU64::new(0),
                });
                all.push((url.to_owned(), Arc::clone(&link)));
                link
            }
        };
        Ok(Redis {
            link,
            script: redis::Script::new(GCRA),
            timeout,
            fallback,
            prefix: prefix.to_owned(),
            decisions,
        })
    }

    /// The Redis key of `key` under limiter `limiter`: one hash tag around both, so that
    /// whatever portico adds next for this key stays in the same Redis Cluster slot.
    pub(crate) fn key(&self, limiter: &str, key: &str) -> String {
        format!("{}{{rl:{limiter}:{key}}}", self.prefix)
    }

    /// Counts a decision by `by`.
    pub(crate) fn decided(&self, by: &'static str) {
        self.decisions.get_or_create(&DecisionLabels { by }).inc();
    }

    /// One GCRA step in Redis with `interval` and `tolerance` (ns): `Ok(Ok(next - now))` or
    /// `Ok(Err(wait))` (ns), or `Err` when Redis could not decide within the timeout.
    pub(crate) async fn step(
        &self,
        key: &str,
        interval: u64,
        tolerance: u64,
    ) -> Result<Result<u64, u64>, Unavailable> {
        let decided = tokio::time::timeout(self.timeout, self.ask(key, interval, tolerance)).await;
        match decided {
            Ok(Ok(verdict)) => Ok(verdict),
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "cluster.redis: no decision");
                Err(Unavailable)
            }
            Err(_) => Err(Unavailable),
        }
    }

    async fn ask(
        &self,
        key: &str,
        interval: u64,
        tolerance: u64,
    ) -> Result<Result<u64, u64>, String> {
        let mut conn = self.connection().await?;
        let (allowed, micros): (i64, i64) = self
            .script
            .key(key)
            .arg(interval / 1000)
            .arg(tolerance / 1000)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let nanos = u64::try_from(micros).unwrap_or(0).saturating_mul(1000);
        Ok(if allowed == 1 { Ok(nanos) } else { Err(nanos) })
    }

    /// The shared connection, made on first use; after a failed connect, none is tried for
    /// a second (decisions go to the fallback meanwhile).
    async fn connection(&self) -> Result<redis::aio::ConnectionManager, String> {
        if let Some(conn) = self.link.conn.get() {
            return Ok(conn.clone());
        }
        let now = crate::admission::now_ns();
        if now < self.link.quiet_until.load(Ordering::Relaxed) {
            return Err("reconnecting".to_owned());
        }
        let client = self.link.client.clone();
        let made = self
            .link
            .conn
            .get_or_try_init(|| async move {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                redis::aio::ConnectionManager::new_with_config(client, config).await
            })
            .await;
        match made {
            Ok(conn) => Ok(conn.clone()),
            Err(err) => {
                let quiet = u64::try_from(RECONNECT_AFTER.as_nanos()).unwrap_or(u64::MAX);
                self.link
                    .quiet_until
                    .store(now.saturating_add(quiet), Ordering::Relaxed);
                Err(err.to_string())
            }
        }
    }
}
