//! `quota`: a count per key over fixed windows of wall-clock time (hours, days), in memory.
//!
//! Windows are the multiples of `period` since 1970-01-01 00:00 UTC, so `period: 1d` starts
//! again at midnight UTC and `1h` on the hour. Within a window at most `limit` requests pass;
//! the next one gets 429 with `Retry-After` set to the seconds left in the window. Unlike
//! `rate_limit`'s bucket, nothing refills before the window ends. Counts are kept across
//! reloads while the plugin's spec and place stay the same, and live in 16 shards bounded by
//! `max_keys`: a shard at its share first forgets keys of past windows; past that, new keys
//! share one overflow count for the rest of the window, so a flood of new keys can never
//! reset the counts of the keys already held.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderValue, StatusCode, request, response};

use super::rate_limit::{Figures, LimitKey, Limited, verdict};
use super::{BuildError, Flow, Phase, Plugin};
use crate::config::spec::QuotaSpec;
use crate::ctx::RequestCtx;
use crate::error::{ProxyError, error_response};

const SHARDS: usize = 16;

/// The key new keys share once a shard is full of keys of the current window; no
/// `by:` key can take this value (header values have no NUL).
const OVERFLOW: &str = "\0overflow";

/// A compiled `quota`.
#[derive(Debug)]
pub(crate) struct Quota {
    key: LimitKey,
    limit: u32,
    /// The window, in seconds.
    period: u64,
    /// `RateLimit-Policy`, e.g. `1000;w=86400`.
    policy: HeaderValue,
    shard_cap: usize,
    counts: Arc<Counts>,
    limited: Limited,
}

/// Per key: the window it was last counted in, and its count there.
#[derive(Debug)]
struct Counts(Vec<Mutex<HashMap<String, (u64, u32)>>>);

impl crate::plugins::state::Kept for Counts {}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Quota {
    /// Checks the spec.
    pub(crate) fn new(spec: &QuotaSpec, env: super::BuildEnv<'_>) -> Result<Self, BuildError> {
        if *spec.limit == 0 {
            return Err(BuildError::ZeroQuota);
        }
        let period = spec.period.0.as_secs();
        if period == 0 || spec.period.0.subsec_nanos() != 0 {
            return Err(BuildError::QuotaPeriod);
        }
        let policy = format!("{};w={period}", *spec.limit);
        Ok(Quota {
            key: LimitKey::parse(&spec.by)?,
            limit: *spec.limit,
            period,
            policy: HeaderValue::from_str(&policy).map_err(|_| BuildError::QuotaPeriod)?,
            shard_cap: (spec.max_keys / SHARDS).max(1),
            counts: env
                .state
                .keep(|| Counts((0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect())),
            limited: env.metrics.rate_limited_family(),
        })
    }

    /// Counts one request of `key` at `now` (seconds since the epoch): `Ok((remaining,
    /// seconds to the window's end))`, or `Err(seconds to the window's end)` when the
    /// window's quota is used up.
    pub(crate) fn check(&self, key: &str, now: u64) -> Result<(u32, u64), u64> {
        let window = now / self.period;
        let left = (window + 1) * self.period - now;
        let shard = &self.counts.0[crate::balance::hash::hash64(key.as_bytes()) as usize % SHARDS];
        let mut map = match shard.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut key = key;
        if map.len() >= self.shard_cap && !map.contains_key(key) {
            map.retain(|_, (seen, _)| *seen == window);
            if map.len() >= self.shard_cap {
                key = OVERFLOW;
            }
        }
        let count = match map.get_mut(key) {
            Some(count) => count,
            None => map.entry(key.to_owned()).or_insert((window, 0)),
        };
        if count.0 != window {
            *count = (window, 0);
        }
        if count.1 >= self.limit {
            return Err(left);
        }
        count.1 += 1;
        Ok((self.limit - count.1, left))
    }
}

impl Plugin for Quota {
    fn name(&self) -> &'static str {
        "quota"
    }

    fn stops(&self) -> Option<&'static str> {
        Some("429 once the period's quota is used up")
    }

    fn explain(
        &self,
        ctx: &mut RequestCtx,
        head: &request::Parts,
        secrets: &crate::config::secret::Credentials,
    ) -> super::Explained {
        let key = self.key.describe(ctx, head, secrets);
        let policy = String::from_utf8_lossy(self.policy.as_bytes());
        let now = now_secs();
        let left = (now / self.period + 1) * self.period - now;
        super::Explained::Run(vec![format!(
            "{key}; policy {policy} (RateLimit-Policy); the current period ends in {left} s \
             (periods are multiples of {} s since 1970-01-01 00:00 UTC)",
            self.period
        )])
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
        Ok(verdict(
            ctx,
            self.check(&key, now_secs()),
            (self.limit, &self.policy),
            &self.limited,
            |request_id| {
                error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "quota_exceeded",
                    "quota used up for this period; see Retry-After",
                    request_id,
                )
            },
        ))
    }

    fn on_response(&self, ctx: &RequestCtx, head: &mut response::Parts) {
        Figures::write(ctx, head);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::At;
    use crate::config::units::Dur;

    fn quota(limit: u32, period: Duration, by: &str, max_keys: usize) -> Result<Quota, BuildError> {
        let spec = QuotaSpec {
            limit: At {
                pos: Default::default(),
                value: limit,
            },
            period: Dur(period),
            by: At {
                pos: Default::default(),
                value: by.into(),
            },
            max_keys,
        };
        crate::plugins::with_test_env(|env| Quota::new(&spec, env))
    }

    const DAY: u64 = 86_400;

    #[test]
    fn a_daily_quota_counts_exactly_and_starts_again_at_midnight_utc() {
        let q = quota(1000, Duration::from_secs(DAY), "consumer", 1000).unwrap();
        // 2026-12-01 10:00:00 UTC.
        let morning = 1_796_119_200;
        assert_eq!(morning % DAY, 10 * 3600);
        let remaining: Vec<u32> = (0..1000)
            .map(|i| q.check("alice", morning + i).expect("within the quota").0)
            .collect();
        assert_eq!(remaining[0], 999);
        assert_eq!(remaining[999], 0);
        // The 1001st, at any time of that day, waits for midnight.
        assert_eq!(q.check("alice", morning + 1000), Err(14 * 3600 - 1000));
        assert_eq!(q.check("alice", morning + 14 * 3600 - 1), Err(1));
        // Nothing refills before: 1000 in the day, not one more.
        let late = (morning + 1001..morning + 14 * 3600)
            .step_by(97)
            .filter(|t| q.check("alice", *t).is_ok())
            .count();
        assert_eq!(late, 0);
        // Another consumer has its own count.
        assert_eq!(q.check("bob", morning + 5), Ok((999, 14 * 3600 - 5)));
        // At midnight UTC the day starts again, with the whole quota.
        let midnight = morning + 14 * 3600;
        assert_eq!(q.check("alice", midnight), Ok((999, DAY)));
        assert_eq!(q.policy, "1000;w=86400");
    }

    #[test]
    fn hourly_windows_are_on_the_hour() {
        let q = quota(2, Duration::from_secs(3600), "ip", 1000).unwrap();
        let t = 1_796_119_200 + 59 * 60; // 10:59:00
        assert_eq!(q.check("k", t), Ok((1, 60)));
        assert_eq!(q.check("k", t + 1), Ok((0, 59)));
        assert_eq!(q.check("k", t + 2), Err(58));
        assert_eq!(
            q.check("k", t + 60),
            Ok((1, 3600)),
            "11:00 starts a new hour"
        );
    }

    #[test]
    fn a_flood_of_new_keys_never_resets_the_keys_held() {
        let q = quota(3, Duration::from_secs(DAY), "ip", 160).unwrap();
        let t = 1_796_119_200;
        for _ in 0..3 {
            q.check("held", t).unwrap();
        }
        for i in 0..10_000 {
            let _ = q.check(&format!("new-{i}"), t);
        }
        assert!(
            q.check("held", t + 1).is_err(),
            "the used-up key stays used up"
        );
        let total: usize = q.counts.0.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= 160 + SHARDS, "{total}");
        // Keys of past windows give way to new ones.
        assert!(q.check("newcomer", t + DAY).is_ok());
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(matches!(
            quota(0, Duration::from_secs(60), "ip", 10),
            Err(BuildError::ZeroQuota)
        ));
        assert!(matches!(
            quota(1, Duration::from_millis(1500), "ip", 10),
            Err(BuildError::QuotaPeriod)
        ));
        assert!(matches!(
            quota(1, Duration::ZERO, "ip", 10),
            Err(BuildError::QuotaPeriod)
        ));
        assert!(matches!(
            quota(1, Duration::from_secs(60), "cookie", 10),
            Err(BuildError::LimitKey { .. })
        ));
    }
}
