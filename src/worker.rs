//! Which worker thread this is: the index that per-worker state (idle upstream connections,
//! metric shards) is kept under. 0 is the control thread and any thread that is not a worker.

std::thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as worker `index` (from 1).
pub(crate) fn set(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// The current thread's worker index.
pub(crate) fn index() -> usize {
    WORKER.with(std::cell::Cell::get)
}
