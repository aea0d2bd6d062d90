//! Circuit-breaker primitives: bounded slots and a wait for a free upstream connection.
//!
//! [`try_acquire`] takes a slot of a counter only while fewer than `max` are taken, with a
//! compare-exchange loop: a burst of concurrent requests can never push the count past `max`
//! (a load followed by an increment lets every request of a burst pass the check first).
//! [`UpstreamState::wait_for_connection`] sleeps until a connection of the upstream is checked
//! in or closes, woken by the upstream's `Freed` wake-up, instead of polling.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::UpstreamState;

/// One taken slot of a counter (requests in flight, requests waiting); given back on drop.
#[derive(Debug)]
#[must_use = "the slot is given back when this is dropped"]
pub(crate) struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes one slot of `count` when fewer than `max` are taken; `None` when all are.
pub(crate) fn try_acquire(count: &AtomicUsize, max: usize) -> Option<Slot<'_>> {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
            (taken < max).then_some(taken + 1)
        })
        .ok()
        .map(|_| Slot(count))
}

/// Takes one slot of `count` with no limit: counting only, given back on drop.
pub(crate) fn acquire(count: &AtomicUsize) -> Slot<'_> {
    count.fetch_add(1, Ordering::AcqRel);
    Slot(count)
}

impl UpstreamState {
    /// A slot among the upstream's requests in flight: `None` at `max_requests` (circuit
    /// open); without a limit, always a slot (the count still feeds the balancer).
    pub(crate) fn try_request(&self, max_requests: Option<usize>) -> Option<Slot<'_>> {
        match max_requests {
            Some(max) => try_acquire(&self.inflight, max),
            None => Some(acquire(&self.inflight)),
        }
    }

    /// A slot among the requests waiting for a connection: `None` at `max_pending`.
    pub(crate) fn try_pending(&self, max_pending: usize) -> Option<Slot<'_>> {
        try_acquire(&self.pending, max_pending)
    }

    /// Waits until `full()` is false, re-checking each time a connection of this upstream is
    /// checked in or closes; `false` when `deadline` passes first.
    pub(crate) async fn wait_for_connection(
        &self,
        deadline: Instant,
        full: impl Fn() -> bool,
    ) -> bool {
        wait_until_free(&self.freed, deadline, full).await
    }
}

/// The wake-up of requests waiting for a connection of an upstream. Check-ins and closes
/// call [`Freed::notify_waiters`] on every request, so it costs one atomic load while nobody
/// waits (a `Notify` alone would take a lock each time).
#[derive(Debug, Default)]
pub(crate) struct Freed {
    waiting: AtomicUsize,
    notify: Notify,
}

impl Freed {
    /// A connection was checked in or closed: wakes every waiter, if there is one.
    pub(crate) fn notify_waiters(&self) {
        // SeqCst with the waiter's increment: either this sees the waiter, or the waiter's
        // check after its increment sees the freed connection.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// Counts one waiter while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The wait itself: registers before each check, so a wake-up between the check and the
/// sleep is not lost.
async fn wait_until_free(freed: &Freed, deadline: Instant, full: impl Fn() -> bool) -> bool {
    freed.waiting.fetch_add(1, Ordering::SeqCst);
    let _waiting = Waiting(&freed.waiting);
    loop {
        let notified = freed.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !full() {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return !full();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_never_takes_more_than_max() {
        const MAX: usize = 5;
        let count = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let granted = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(std::sync::Barrier::new(32));
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let (count, peak, granted, start) = (
                    Arc::clone(&count),
                    Arc::clone(&peak),
                    Arc::clone(&granted),
                    Arc::clone(&start),
                );
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..200 {
                        if let Some(slot) = try_acquire(&count, MAX) {
                            granted.fetch_add(1, Ordering::Relaxed);
                            peak.fetch_max(count.load(Ordering::Acquire), Ordering::Relaxed);
                            std::thread::yield_now();
                            drop(slot);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= MAX, "{peak:?}");
        assert!(granted.load(Ordering::Relaxed) > 0);
        assert_eq!(
            count.load(Ordering::Relaxed),
            0,
            "every slot was given back"
        );
    }

    #[test]
    fn slots_are_given_back_on_drop() {
        let count = AtomicUsize::new(0);
        let a = try_acquire(&count, 2).unwrap();
        let b = try_acquire(&count, 2).unwrap();
        assert!(try_acquire(&count, 2).is_none());
        drop(a);
        let c = try_acquire(&count, 2).unwrap();
        assert!(try_acquire(&count, 0).is_none(), "max 0 takes nothing");
        drop((b, c));
        assert_eq!(count.load(Ordering::Relaxed), 0);
        let state = UpstreamState::default();
        let unlimited: Vec<_> = (0..10).map(|_| state.try_request(None).unwrap()).collect();
        assert_eq!(state.inflight.load(Ordering::Relaxed), 10);
        assert!(state.try_request(Some(10)).is_none());
        drop(unlimited);
        assert!(state.try_pending(1).is_some());
    }

    #[tokio::test]
    async fn a_waiter_is_woken_by_a_freed_connection_not_a_timer() {
        let state = Arc::new(UpstreamState::default());
        let full = Arc::new(AtomicBool::new(true));
        let (s, f) = (Arc::clone(&state), Arc::clone(&full));
        let freer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            f.store(false, Ordering::Relaxed);
            s.freed.notify_waiters();
        });
        let started = Instant::now();
        let deadline = started + Duration::from_secs(5);
        assert!(
            state
                .wait_for_connection(deadline, || full.load(Ordering::Relaxed))
                .await
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        freer.await.unwrap();
    }

    #[tokio::test]
    async fn a_waiter_gives_up_at_its_deadline() {
        let state = UpstreamState::default();
        let started = Instant::now();
        let free = state
            .wait_for_connection(started + Duration::from_millis(50), || true)
            .await;
        assert!(!free);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_wake_without_a_free_connection_keeps_waiting() {
        let state = Arc::new(UpstreamState::default());
        let s = Arc::clone(&state);
        let spurious = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                s.freed.notify_waiters();
            }
        });
        let started = Instant::now();
        let free = state
            .wait_for_connection(started + Duration::from_millis(150), || true)
            .await;
        assert!(!free);
        assert!(started.elapsed() >= Duration::from_millis(150));
        spurious.await.unwrap();
    }
}
