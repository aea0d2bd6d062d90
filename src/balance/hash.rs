//! Consistent hashing: a weighted hash ring (ketama style) and a Maglev lookup table, plus the
//! request keys they hash.
//!
//! Both are built once per config; a lookup is a binary search (ring) or one index (Maglev).
//! Hashes are FNV-1a with a SplitMix64 finish: stable across runs and builds, so a restart or a
//! reload of the same targets maps every key to the same target.

use std::net::IpAddr;

use crate::view::RequestView;

/// A stable 64-bit hash of `bytes`.
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64's finaliser: spreads FNV's weak low bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a hashing balancer hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// The request path.
    Path,
    /// A request header's value.
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// A query parameter's (decoded) value.
    Query(String),
}

/// A `hash_key` that is none of the known keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid hash_key `{0}`: expected client_ip, path, header:NAME, cookie:NAME or query:NAME")]
pub(crate) struct HashKeyError(String);

impl HashKey {
    /// Parses `client_ip`, `path`, `header:NAME`, `cookie:NAME` or `query:NAME`.
    pub(crate) fn parse(text: &str) -> Result<Self, HashKeyError> {
        let bad = || HashKeyError(text.to_owned());
        Ok(match text.split_once(':') {
            None if text == "client_ip" => HashKey::ClientIp,
            None if text == "path" => HashKey::Path,
            Some(("header", name)) if !name.is_empty() => {
                HashKey::Header(http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?)
            }
            Some(("cookie", name)) if !name.is_empty() => HashKey::Cookie(name.to_owned()),
            Some(("query", name)) if !name.is_empty() => HashKey::Query(name.to_owned()),
            _ => return Err(bad()),
        })
    }

    /// The hash of this key for a request; a missing header, cookie or parameter hashes the
    /// client address instead, so such requests still spread and stay put per client.
    pub(crate) fn hash(&self, req: &RequestView<'_>) -> u64 {
        let client = || match req.client {
            IpAddr::V4(ip) => hash64(&ip.octets()),
            IpAddr::V6(ip) => hash64(&ip.octets()),
        };
        match self {
            HashKey::ClientIp => client(),
            HashKey::Path => hash64(req.path.as_bytes()),
            HashKey::Header(name) => req
                .headers
                .get(name)
                .map_or_else(client, |v| hash64(v.as_bytes())),
            HashKey::Cookie(name) => {
                cookie(req.headers, name).map_or_else(client, |v| hash64(v.as_bytes()))
            }
            HashKey::Query(name) => req
                .query
                .and_then(|q| crate::view::query_pairs(q).find(|(k, _)| k == name))
                .map_or_else(client, |(_, v)| hash64(v.as_bytes())),
        }
    }
}

pub(crate) use crate::view::cookie;

/// A weighted hash ring: `POINTS_PER_WEIGHT` points per unit of weight per target.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    points: Vec<(u64, u32)>,
}

/// Points each unit of weight puts on the ring; more points, smoother shares.
pub(crate) const POINTS_PER_WEIGHT: u32 = 160;

impl Ring {
    /// Builds the ring; a point's position depends only on its target's address and number, so
    /// adding or removing a target moves only the keys on that target's arcs.
    pub(crate) fn build(targets: &[(&str, u32)]) -> Self {
        let mut points = Vec::new();
        for (index, (address, weight)) in targets.iter().enumerate() {
            let count = weight.saturating_mul(POINTS_PER_WEIGHT).min(100_000);
            for n in 0..count {
                let label = format!("{address}#{n}");
                points.push((hash64(label.as_bytes()), index as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The targets clockwise from `hash`, first one first; `usable` filters.
    pub(crate) fn pick(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(h, _)| *h < hash);
        let n = self.points.len();
        (0..n)
            .map(|i| self.points[(start + i) % n].1 as usize)
            .find(|&t| usable(t))
    }
}

/// Maglev's lookup table (Eisenbud et al., NSDI 2016), weighted by repeating each target's
/// turn `weight` times per round.
#[derive(Debug, Clone)]
pub(crate) struct Maglev {
    table: Vec<u32>,
}

/// Table size: a prime well above 100 × the number of targets.
pub(crate) const MAGLEV_SIZE: usize = 65_537;

impl Maglev {
    /// Fills the table from each target's permutation (offset and skip from its address).
    pub(crate) fn build(targets: &[(&str, u32)]) -> Self {
        let m = MAGLEV_SIZE as u64;
        if targets.is_empty() {
            return Maglev { table: Vec::new() };
        }
        let perms: Vec<(u64, u64)> = targets
            .iter()
            .map(|(address, _)| {
                let offset = hash64(format!("{address}/offset").as_bytes()) % m;
                let skip = hash64(format!("{address}/skip").as_bytes()) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; targets.len()];
        let mut table = vec![u32::MAX; MAGLEV_SIZE];
        let mut filled = 0;
        'fill: loop {
            for (i, (_, weight)) in targets.iter().enumerate() {
                for _ in 0..(*weight).max(1) {
                    let (offset, skip) = perms[i];
                    let mut slot = (offset + next[i] * skip) % m;
                    while table[slot as usize] != u32::MAX {
                        next[i] += 1;
                        slot = (offset + next[i] * skip) % m;
                    }
                    table[slot as usize] = i as u32;
                    next[i] += 1;
                    filled += 1;
                    if filled == MAGLEV_SIZE {
                        break 'fill;
                    }
                }
            }
        }
        Maglev { table }
    }

    /// The target for `hash`; when it is not usable, the table is probed further with a
    /// second hash so each key still lands on a stable alternative.
    pub(crate) fn pick(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let mut h = hash;
        for _ in 0..64 {
            let t = self.table[(h % self.table.len() as u64) as usize] as usize;
            if usable(t) {
                return Some(t);
            }
            h = mix(h.wrapping_add(0x9e37_79b9_7f4a_7c15));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn shares(pick: impl Fn(u64) -> usize, targets: usize, keys: u64) -> Vec<f64> {
        let mut counts = vec![0u64; targets];
        for k in 0..keys {
            counts[pick(hash64(&k.to_le_bytes()))] += 1;
        }
        counts.iter().map(|&c| c as f64 / keys as f64).collect()
    }

    /// Share of keys that change target between two pickers.
    fn moved(a: impl Fn(u64) -> usize, b: impl Fn(u64) -> usize, keys: u64) -> f64 {
        let changed = (0..keys)
            .filter(|k| {
                let h = hash64(&k.to_le_bytes());
                a(h) != b(h)
            })
            .count();
        changed as f64 / keys as f64
    }

    #[test]
    fn ring_spreads_by_weight_and_moves_few_keys() {
        let addrs = addresses(5);
        let four: Vec<(&str, u32)> = addrs[..4].iter().map(|a| (a.as_str(), 1)).collect();
        let five: Vec<(&str, u32)> = addrs.iter().map(|a| (a.as_str(), 1)).collect();
        let r4 = Ring::build(&four);
        let r5 = Ring::build(&five);
        for share in shares(|h| r4.pick(h, |_| true).unwrap(), 4, 100_000) {
            assert!((share - 0.25).abs() < 0.05, "{share}");
        }
        // Adding a fifth target moves about a fifth of the keys, all of them to the new one.
        let m = moved(
            |h| r4.pick(h, |_| true).unwrap(),
            |h| r5.pick(h, |_| true).unwrap(),
            100_000,
        );
        assert!((0.14..0.26).contains(&m), "moved {m}");
        for k in 0..10_000u64 {
            let h = hash64(&k.to_le_bytes());
            let (a, b) = (r4.pick(h, |_| true).unwrap(), r5.pick(h, |_| true).unwrap());
            assert!(a == b || b == 4);
        }
        let weighted: Vec<(&str, u32)> = vec![(addrs[0].as_str(), 1), (addrs[1].as_str(), 3)];
        let rw = Ring::build(&weighted);
        let s = shares(|h| rw.pick(h, |_| true).unwrap(), 2, 100_000);
        assert!((s[1] - 0.75).abs() < 0.05, "{s:?}");
    }

    #[test]
    fn maglev_spreads_and_moves_few_keys() {
        let addrs = addresses(5);
        let four: Vec<(&str, u32)> = addrs[..4].iter().map(|a| (a.as_str(), 1)).collect();
        let five: Vec<(&str, u32)> = addrs.iter().map(|a| (a.as_str(), 1)).collect();
        let m4 = Maglev::build(&four);
        let m5 = Maglev::build(&five);
        for share in shares(|h| m4.pick(h, |_| true).unwrap(), 4, 100_000) {
            assert!((share - 0.25).abs() < 0.02, "{share}");
        }
        let m = moved(
            |h| m4.pick(h, |_| true).unwrap(),
            |h| m5.pick(h, |_| true).unwrap(),
            100_000,
        );
        // Ideal is 1/5; Maglev trades a little extra movement for perfect balance.
        assert!((0.18..0.30).contains(&m), "moved {m}");
        // Removing a target moves its keys and few others.
        let three: Vec<(&str, u32)> = addrs[..3].iter().map(|a| (a.as_str(), 1)).collect();
        let m3 = Maglev::build(&three);
        let m = moved(
            |h| m4.pick(h, |_| true).unwrap(),
            |h| m3.pick(h, |_| true).unwrap(),
            100_000,
        );
        assert!((0.24..0.36).contains(&m), "moved {m}");
    }

    #[test]
    fn unusable_targets_are_skipped_stably() {
        let addrs = addresses(3);
        let t: Vec<(&str, u32)> = addrs.iter().map(|a| (a.as_str(), 1)).collect();
        let ring = Ring::build(&t);
        let maglev = Maglev::build(&t);
        for k in 0..1000u64 {
            let h = hash64(&k.to_le_bytes());
            assert_ne!(ring.pick(h, |i| i != 1), Some(1));
            assert_ne!(maglev.pick(h, |i| i != 1), Some(1));
            // Keys of healthy targets do not move when another target is down.
            let r = ring.pick(h, |_| true).unwrap();
            if r != 1 {
                assert_eq!(ring.pick(h, |i| i != 1), Some(r));
            }
            let m = maglev.pick(h, |_| true).unwrap();
            if m != 1 {
                assert_eq!(maglev.pick(h, |i| i != 1), Some(m));
            }
        }
    }

    #[test]
    fn keys_and_cookies() {
        let mut headers = http::HeaderMap::new();
        headers.insert("cookie", "a=1; session=\"abc\"; b=2".parse().unwrap());
        assert_eq!(cookie(&headers, "session"), Some("abc"));
        assert_eq!(cookie(&headers, "nope"), None);
        assert_eq!(
            HashKey::parse("header:x-user").unwrap(),
            HashKey::Header("x-user".parse().unwrap())
        );
        assert!(HashKey::parse("header:").is_err());
        assert_eq!(
            HashKey::parse("body").unwrap_err().to_string(),
            "invalid hash_key `body`: expected client_ip, path, header:NAME, cookie:NAME or query:NAME"
        );
        let ctx = RequestView {
            client: "10.1.2.3".parse().unwrap(),
            host: "",
            method: &http::Method::GET,
            headers: &headers,
            path: "/p",
            query: Some("u=7"),
        };
        assert_eq!(HashKey::Cookie("session".into()).hash(&ctx), hash64(b"abc"));
        assert_eq!(HashKey::Query("u".into()).hash(&ctx), hash64(b"7"));
        assert_eq!(
            HashKey::Header("x-missing".parse().unwrap()).hash(&ctx),
            HashKey::ClientIp.hash(&ctx)
        );
    }
}
