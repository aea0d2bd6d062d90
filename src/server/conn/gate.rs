//! The send buffer of an HTTP/1.1 client connection: response bytes hyper has taken from the
//! body but not yet written to the client are held to `limits.send_buffer`.
//!
//! hyper buffers a response body up to its own buffer size (tied to the request-head buffer)
//! before it waits for the client; a client that reads slowly would hold that much, and the
//! upstream's read-ahead behind it. The gate stops handing hyper body bytes once as many as
//! the send buffer wait to be written, and lets the body go on when writes catch up. The
//! response body and the connection's I/O are polled by one task: the counts are plain
//! atomics, read and written by that task alone. HTTP/2 bounds each stream itself (h2's send
//! buffer), so the gate is off there.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Context;

use futures_util::task::AtomicWaker;

/// The gate of one connection.
#[derive(Debug, Default)]
pub(crate) struct SendGate {
    /// Most bytes waiting to be written; 0: no gate.
    limit: usize,
    /// Body bytes handed to hyper and not yet written (approximately: head bytes written
    /// count as body bytes, never below zero).
    pending: AtomicUsize,
    /// The connection speaks HTTP/2: no gate.
    off: AtomicBool,
    /// The body waits for writes to catch up.
    waiting: AtomicBool,
    waker: AtomicWaker,
}

impl SendGate {
    /// A gate of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        SendGate {
            limit,
            ..SendGate::default()
        }
    }

    /// Turns the gate off (HTTP/2).
    pub(crate) fn off(&self) {
        self.off.store(true, Ordering::Relaxed);
    }

    /// Whether the body must wait; if so, `cx` is woken when it may go on.
    pub(crate) fn full(&self, cx: &mut Context<'_>) -> bool {
        if self.limit == 0
            || self.off.load(Ordering::Relaxed)
            || self.pending.load(Ordering::Relaxed) < self.limit
        {
            return false;
        }
        self.waker.register(cx.waker());
        self.waiting.store(true, Ordering::Relaxed);
        // A write may have caught up since the first look.
        if self.pending.load(Ordering::Relaxed) < self.limit {
            self.waiting.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Notes `n` body bytes handed to hyper.
    pub(crate) fn taken(&self, n: usize) {
        self.pending.fetch_add(n, Ordering::Relaxed);
    }

    /// Notes `n` bytes written to the client; wakes the body once the buffer has room.
    pub(crate) fn sent(&self, n: usize) {
        let left = self.pending.load(Ordering::Relaxed).saturating_sub(n);
        self.pending.store(left, Ordering::Relaxed);
        if left < self.limit && self.waiting.swap(false, Ordering::Relaxed) {
            self.waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn holds_the_body_at_the_limit_and_wakes_it_when_writes_catch_up() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let gate = SendGate::new(100);
        gate.taken(60);
        assert!(!gate.full(&mut cx));
        gate.taken(60);
        assert!(gate.full(&mut cx));
        gate.sent(10);
        assert_eq!(count.0.load(Ordering::Relaxed), 0, "still 110 waiting");
        gate.sent(50);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(!gate.full(&mut cx));
        // Head bytes written beyond the body never make room in advance.
        gate.sent(1000);
        gate.taken(100);
        assert!(gate.full(&mut cx));
        gate.off();
        assert!(!gate.full(&mut cx));
    }
}
