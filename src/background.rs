//! Background tasks owned by what needs them.
//!
//! A JWKS refresher, an active health check or an ACME renewal runs for as long as the state
//! that needs it is alive (the kept JWKS keys, the target's state, the ACME state): its
//! [`BackgroundTask`] handle is held there, and dropping the handle stops the task at its
//! next await. The task itself holds only what it works on, or a weak reference to its owner,
//! so the owner can go. Compiling never spawns one; a snapshot starts its tasks only when it
//! is about to serve.

use std::future::Future;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;

/// A running background task; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct BackgroundTask {
    _stop: oneshot::Sender<()>,
}

/// Decrements the live-task gauge when the task's future is gone, however it ended.
struct Counted(Gauge);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Spawns `work` on the current runtime, counted in `live` while it runs.
///
/// Must be called from within a tokio runtime (the control thread's).
pub(crate) fn spawn(
    live: &Gauge,
    work: impl Future<Output = ()> + Send + 'static,
) -> BackgroundTask {
    let (stop, stopped) = oneshot::channel::<()>();
    live.inc();
    let counted = Counted(live.clone());
    tokio::spawn(async move {
        let _counted = counted;
        // The sender is never used to send: the receiver completes (with an error) exactly
        // when the handle is dropped.
        tokio::select! {
            () = work => {}
            _ = stopped => {}
        }
    });
    BackgroundTask { _stop: stop }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn dropping_the_handle_stops_the_task() {
        let live = Gauge::default();
        let task = spawn(&live, std::future::pending());
        assert_eq!(live.get(), 1);
        drop(task);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while live.get() != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the task kept running"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_finished_task_is_no_longer_counted() {
        let live = Gauge::default();
        let _task = spawn(&live, async {});
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while live.get() != 0 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
    }
}
