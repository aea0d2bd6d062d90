//! Giving the memory of parked connections back to the kernel.
//!
//! Parking an idle HTTP/1.1 connection frees hyper's read and write buffers, but glibc's
//! allocator keeps freed memory in its heaps: the small state each parked connection keeps
//! sits between the freed buffers, so a heap cannot shrink from its top, and the process
//! keeps the pages resident. `malloc_trim` hands every whole free page inside the heaps back
//! (`MADV_DONTNEED`). The control thread looks four times a second and trims once a burst of
//! parking is over (a look that finds none after one that found some), or every two seconds
//! while connections keep parking. A process whose connections do not park never pays for
//! it, and the request path is unchanged (parking only raises a flag).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the control thread looks whether connections were parked.
const EVERY: Duration = Duration::from_millis(250);
/// Most time between two trims while connections keep parking.
const AT_MOST: Duration = Duration::from_secs(2);

/// Set when a connection parked since the last look.
static PARKED: AtomicBool = AtomicBool::new(false);

/// A connection has just been parked; the flag is written only when it changes.
pub(crate) fn parked() {
    if !PARKED.load(Ordering::Relaxed) {
        PARKED.store(true, Ordering::Relaxed);
    }
}

/// Trims the heaps after parking, for as long as the process runs (on the control thread).
pub(crate) async fn run() {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = false;
    let mut last = Instant::now();
    loop {
        tick.tick().await;
        // Read first: the line the workers write is written here only when it was set.
        let parking = PARKED.load(Ordering::Relaxed) && PARKED.swap(false, Ordering::Relaxed);
        pending |= parking;
        if pending && (!parking || last.elapsed() >= AT_MOST) {
            trim();
            pending = false;
            last = Instant::now();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    let started = Instant::now();
    // SAFETY: malloc_trim takes no pointer and has no precondition; it locks each arena
    // itself while it releases free pages.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released, took = ?started.elapsed(), "heap trimmed after parking");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
