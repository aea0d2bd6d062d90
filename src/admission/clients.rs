//! Per-client-address tables: open connections and request rates, each in 16 sharded maps
//! whose locks are never held across an await. A connection count is removed when it reaches
//! zero; a rate entry is forgotten once its allowance is whole again. Each table tracks at most
//! `max_clients` addresses (rounded up to a multiple of the shard count); a new address past
//! that is refused (`max_clients`) until room is made, so memory stays bounded under a flood
//! of addresses.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Admission, Rate};
use crate::observe::admission::Refusal;

const SHARDS: usize = 16;

/// Rate entries of a full shard are swept for expired ones at most this often.
const SWEEP_EVERY_NS: u64 = 100_000_000;

/// The key a client address counts under: IPv4 as it is (an IPv4-mapped IPv6 address counts
/// as its IPv4 address), IPv6 cut to its first `prefix` bits.
pub(crate) fn client_key(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u32::from(prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

fn shard_of(key: &IpAddr) -> usize {
    let bits = match key {
        IpAddr::V4(v4) => u128::from(u32::from(*v4)),
        IpAddr::V6(v6) => u128::from(*v6),
    };
    // Fold and mix: the shard only spreads lock contention.
    let folded = (bits as u64) ^ ((bits >> 64) as u64);
    (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % SHARDS
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn shard_cap(max_clients: usize) -> usize {
    max_clients.div_ceil(SHARDS).max(1)
}

/// Open connections per address.
#[derive(Debug)]
pub(super) struct Counts {
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

/// One open connection's place in its address's count; given back on drop.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    admission: Arc<Admission>,
    key: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let shard = &self.admission.connections.shards[shard_of(&self.key)];
        let mut map = lock(shard);
        if let Some(count) = map.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl Counts {
    pub(super) fn enter(
        &self,
        admission: &Arc<Admission>,
        key: IpAddr,
        limit: u32,
        max_clients: usize,
    ) -> Result<ClientSlot, Refusal> {
        let mut map = lock(&self.shards[shard_of(&key)]);
        let full = map.len() >= shard_cap(max_clients);
        match map.get_mut(&key) {
            Some(count) if *count >= limit => return Err(Refusal::PerIp),
            Some(count) => *count += 1,
            None if full => return Err(Refusal::MaxClients),
            None if limit == 0 => return Err(Refusal::PerIp),
            None => {
                map.insert(key, 1);
            }
        }
        drop(map);
        Ok(ClientSlot {
            admission: Arc::clone(admission),
            key,
        })
    }

    /// Addresses with open connections (for tests).
    #[cfg(test)]
    pub(super) fn tracked(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

/// One shard of rate entries: each address's theoretical arrival time (GCRA).
#[derive(Debug, Default)]
struct RateShard {
    tats: HashMap<IpAddr, u64>,
    swept_at: u64,
}

/// Request rates per address.
#[derive(Debug)]
pub(super) struct Rates {
    shards: Box<[Mutex<RateShard>]>,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Rates {
    /// One GCRA step at `now` (ns): `Err((reason, wait in ns))` when refused.
    pub(super) fn check(
        &self,
        key: IpAddr,
        rate: &Rate,
        max_clients: usize,
        now: u64,
    ) -> Result<(), (Refusal, u64)> {
        let mut shard = lock(&self.shards[shard_of(&key)]);
        let known = shard.tats.get(&key).copied();
        if known.is_none() && shard.tats.len() >= shard_cap(max_clients) {
            // Forget addresses whose allowance is whole again, at most every so often, so
            // that a flood of new addresses cannot make every request sweep the shard.
            if now.saturating_sub(shard.swept_at) >= SWEEP_EVERY_NS {
                shard.swept_at = now;
                shard.tats.retain(|_, tat| *tat > now);
            }
            if shard.tats.len() >= shard_cap(max_clients) {
                return Err((Refusal::MaxClients, SWEEP_EVERY_NS));
            }
        }
        let next = rate
            .step(known, now)
            .map_err(|wait| (Refusal::PerIp, wait))?;
        shard.tats.insert(key, next);
        Ok(())
    }

    /// Addresses tracked (for tests).
    #[cfg(test)]
    pub(super) fn tracked(&self) -> usize {
        self.shards.iter().map(|s| lock(s).tats.len()).sum()
    }
}
