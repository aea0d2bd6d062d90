//! The idle timeout of a pooled HTTP/1.1 connection.
//!
//! Each connection has a [`Lease`] shared by its driver task and whoever holds it (a request,
//! or the idle list). Checking in marks it idle with the time; the driver, on its own timer,
//! closes the connection once it has stayed idle for the pool's `idle_timeout`. Checking out
//! and the close race on one compare-exchange, so a connection is never closed under a request
//! nor handed out after its close.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use crate::health::now_ms;

/// A request (or the code handing it out) has the connection.
const IN_USE: u8 = 0;
/// In the idle list since `idle_since_ms`.
const IDLE: u8 = 1;
/// Closed by its idle timeout: never handed out again.
const CLOSED: u8 = 2;
/// The connection is gone (dropped): nothing waits for its idle time any more.
const GONE: u8 = 3;

/// Who has a pooled connection right now, and since when it is idle.
#[derive(Debug)]
pub(crate) struct Lease {
    state: AtomicU8,
    /// When it was last checked in ([`now_ms`]).
    idle_since_ms: AtomicU64,
    /// The pool's idle timeout as of the last check-in.
    timeout_ms: AtomicU64,
}

impl Lease {
    /// A lease held by the request that opened the connection.
    pub(crate) fn new() -> Self {
        Lease {
            state: AtomicU8::new(IN_USE),
            idle_since_ms: AtomicU64::new(0),
            timeout_ms: AtomicU64::new(0),
        }
    }

    /// Back in the idle list: the idle time starts now. Stores only, no wake-up: the driver
    /// looks at the lease on its own timer, so the request path pays no task switch for it.
    pub(crate) fn check_in(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.timeout_ms.store(ms, Ordering::Relaxed);
        self.idle_since_ms.store(now_ms(), Ordering::Relaxed);
        let _ = self
            .state
            .compare_exchange(IN_USE, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Takes an idle connection for a request; `false` when its idle close won the race.
    pub(crate) fn check_out(&self) -> bool {
        self.state
            .compare_exchange(IDLE, IN_USE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Trimmed from the idle list: never handed out again, and not waited on by its driver.
    pub(crate) fn close(&self) {
        let _ = self
            .state
            .compare_exchange(IDLE, CLOSED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The connection was dropped, wherever it was.
    pub(crate) fn gone(&self) {
        self.state.store(GONE, Ordering::Release);
    }

    /// Resolves once the connection has been idle for its timeout (and is marked closed),
    /// or is closed or gone already.
    /// Wakes at most once per timeout while the connection is in use, and once when the idle
    /// time of its last check-in runs out.
    pub(crate) async fn expired(&self) {
        loop {
            // Before the first check-in no timeout is known yet: look again in a second.
            let timeout = match self.timeout_ms.load(Ordering::Relaxed) {
                0 => 1_000,
                ms => ms,
            };
            let state = self.state.load(Ordering::Acquire);
            if state == CLOSED || state == GONE {
                return;
            }
            let wait = if state == IDLE {
                let idle_for = now_ms().saturating_sub(self.idle_since_ms.load(Ordering::Relaxed));
                if idle_for >= timeout {
                    if self
                        .state
                        .compare_exchange(IDLE, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return;
                    }
                    // Checked out meanwhile: in use now.
                    timeout
                } else {
                    timeout - idle_for
                }
            } else {
                timeout
            };
            tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_connection_expires_after_its_timeout() {
        let lease = Lease::new();
        lease.check_in(Duration::from_millis(100));
        let started = tokio::time::Instant::now();
        lease.expired().await;
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(!lease.check_out(), "a closed connection was handed out");
    }

    #[tokio::test]
    async fn a_connection_in_use_does_not_expire() {
        let lease = Lease::new();
        lease.check_in(Duration::from_millis(100));
        assert!(lease.check_out());
        let waited = tokio::time::timeout(Duration::from_millis(300), lease.expired()).await;
        assert!(waited.is_err(), "expired while in use");
    }

    #[tokio::test]
    async fn reuse_restarts_the_idle_time() {
        let lease = std::sync::Arc::new(Lease::new());
        lease.check_in(Duration::from_millis(100));
        let started = tokio::time::Instant::now();
        let reuse = std::sync::Arc::clone(&lease);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(80)).await;
            assert!(reuse.check_out());
            reuse.check_in(Duration::from_millis(100));
        });
        lease.expired().await;
        assert!(started.elapsed() >= Duration::from_millis(180));
    }
}
