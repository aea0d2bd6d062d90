//! The idle timeout of a pooled HTTP/1.1 connection.
//!
//! Each connection has a [`Lease`] shared by its driver task and whoever holds it (a request,
//! or the idle list). Checking in marks it idle and wakes the driver, which closes the
//! connection once it has stayed idle for the pool's `idle_timeout`. Checking out and the
//! close race on one compare-exchange, so a connection is never closed under a request nor
//! handed out after its close.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

const IN_USE: u8 = 0;
const IDLE: u8 = 1;
const CLOSED: u8 = 2;

/// Who has a pooled connection right now.
#[derive(Debug)]
pub(crate) struct Lease {
    state: AtomicU8,
    /// The idle timeout in force when it was last checked in, in milliseconds.
    timeout_ms: AtomicU64,
    /// Wakes the driver when the connection is checked in.
    checked_in: Notify,
}

impl Lease {
    /// A lease for a new connection, in use by the request that opened it.
    pub(crate) fn new() -> Self {
        Lease {
            state: AtomicU8::new(IN_USE),
            timeout_ms: AtomicU64::new(0),
            checked_in: Notify::new(),
        }
    }

    /// The connection goes to the idle list; it closes after `timeout` unless taken first.
    pub(crate) fn check_in(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.timeout_ms.store(ms, Ordering::Relaxed);
        if self
            .state
            .compare_exchange(IN_USE, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.checked_in.notify_one();
        }
    }

    /// Takes an idle connection for a request; `false` when it has been closed.
    pub(crate) fn check_out(&self) -> bool {
        self.state
            .compare_exchange(IDLE, IN_USE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Resolves when the connection has been idle for its timeout, and marks it closed: the
    /// driver then drops the connection.
    pub(crate) async fn expired(&self) {
        loop {
            let checked_in = self.checked_in.notified();
            tokio::pin!(checked_in);
            // Registered before the state is read, so a check-in in between still wakes us.
            checked_in.as_mut().enable();
            if self.state.load(Ordering::Acquire) != IDLE {
                checked_in.await;
                continue;
            }
            let timeout = Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed));
            tokio::select! {
                () = tokio::time::sleep(timeout) => {
                    if self
                        .state
                        .compare_exchange(IDLE, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return;
                    }
                }
                // Taken and checked in again meanwhile: the idle time starts over.
                () = &mut checked_in => {}
            }
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
