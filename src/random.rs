//! Cheap per-thread randomness for spreading load (jitter, random picks, shares): not for
//! secrets. A leaf.

use std::cell::Cell;

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish() | 1
}

/// A fast per-thread pseudo-random number (SplitMix64); for spreading load, not for secrets.
pub(crate) fn random_u64() -> u64 {
    RNG.with(|cell| {
        let mut z = cell.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        cell.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// `true` with probability `p`.
pub(crate) fn chance(p: f64) -> bool {
    p >= 1.0 || ((random_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
}
