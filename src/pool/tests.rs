//! The pool against a real HTTP/1.1 server on 127.0.0.1: idle close, and the wake-ups the
//! circuit breaker waits on.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::{Conn, PoolSettings, Registry};

/// An HTTP/1.1 server without an idle timeout of its own; counts open connections, and
/// every connection it accepted.
async fn server() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let open = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&open);
    let accepts = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            accepts.fetch_add(1, Ordering::Relaxed);
            counted.fetch_add(1, Ordering::Relaxed);
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("hi"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
                counted.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    (addr, open, accepted)
}

fn settings(idle_timeout: Duration) -> PoolSettings {
    PoolSettings {
        max_idle: 8,
        idle_timeout,
        connect_timeout: Duration::from_secs(2),
        demand_window_ms: 0,
    }
}

async fn until(what: &str, deadline: Duration, done: impl Fn() -> bool) {
    let end = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < end, "{what} within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_idle_connection_closes_after_the_idle_timeout_and_one_in_use_does_not() {
    let (addr, server_open, _) = server().await;
    let registry = Registry::default();
    let upstream = registry.upstream("u");
    let target = registry.target("u", &addr, &upstream.freed);
    let Ok(Conn::H1(checkin)) = target
        .connect(false, settings(Duration::from_millis(100)), None, None)
        .await
    else {
        panic!("no HTTP/1.1 connection");
    };
    // In use well past the idle timeout: it stays open.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(target.open.load(Ordering::Relaxed), 1);
    checkin.release();
    assert_eq!(target.idle_count(), 1);
    until("the idle connection closed", Duration::from_secs(3), || {
        target.open.load(Ordering::Relaxed) == 0 && server_open.load(Ordering::Relaxed) == 0
    })
    .await;
}

#[tokio::test]
async fn a_check_in_and_a_close_wake_a_waiter_for_a_connection() {
    let (addr, _, _) = server().await;
    let registry = Registry::default();
    let upstream = registry.upstream("u");
    let target = registry.target("u", &addr, &upstream.freed);
    let connect = || target.connect(false, settings(Duration::from_secs(60)), None, None);
    let Ok(Conn::H1(first)) = connect().await else {
        panic!("no HTTP/1.1 connection");
    };
    let Ok(Conn::H1(second)) = connect().await else {
        panic!("no HTTP/1.1 connection");
    };
    let deadline = Instant::now() + Duration::from_secs(5);

    // Checked in: an idle connection is there to take.
    let waited = Instant::now();
    let (free, ()) = tokio::join!(
        upstream.wait_for_connection(deadline, || target.idle_count() == 0),
        async { first.release() },
    );
    assert!(free && waited.elapsed() < Duration::from_secs(2));

    // Closed: one fewer open connection.
    let open_before = target.open.load(Ordering::Relaxed);
    assert_eq!(open_before, 2);
    let waited = Instant::now();
    let (free, ()) = tokio::join!(
        upstream.wait_for_connection(deadline, || target.open.load(Ordering::Relaxed) >= 2),
        async { drop(second) },
    );
    assert!(free && waited.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn after_a_burst_the_pool_shrinks_to_recent_demand_and_a_steady_load_keeps_its_own() {
    let (addr, server_open, accepted) = server().await;
    let registry = Registry::default();
    let upstream = registry.upstream("u");
    let target = registry.target("u", &addr, &upstream.freed);
    let settings = PoolSettings {
        demand_window_ms: 400,
        ..settings(Duration::from_secs(60))
    };
    let take = || async {
        match target.connect(false, settings, None, None).await {
            Ok(Conn::H1(checkin)) => checkin,
            _ => panic!("no HTTP/1.1 connection"),
        }
    };
    // A burst of 8 at once: all kept idle (max_idle is 8) while the window remembers it.
    let mut burst = Vec::new();
    for _ in 0..8 {
        burst.push(take().await);
    }
    for checkin in burst {
        checkin.release();
    }
    assert_eq!(target.idle_count(), 8);
    assert_eq!(target.open.load(Ordering::Relaxed), 8);

    // Then two at a time: within about a window (and a quarter) the surplus is closed.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (a, b) = (take().await, take().await);
        a.release();
        b.release();
        if target.open.load(Ordering::Relaxed) == 2 && server_open.load(Ordering::Relaxed) == 2 {
            break;
        }
        assert!(Instant::now() < end, "the pool did not shrink to 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(target.idle_count(), 2);

    // The same load for three more windows: no connection is closed or opened.
    let before = accepted.load(Ordering::Relaxed);
    let end = Instant::now() + Duration::from_millis(1_200);
    while Instant::now() < end {
        let (a, b) = (take().await, take().await);
        a.release();
        b.release();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        before,
        "steady load churned"
    );
    assert_eq!(target.open.load(Ordering::Relaxed), 2);

    // A request whose exchange fails (its check-in dropped) no longer counts as in use.
    drop(take().await);
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let a = take().await;
        a.release();
        if target.open.load(Ordering::Relaxed) == 1 {
            break;
        }
        assert!(Instant::now() < end, "the pool did not shrink to 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn lookups_enter_nothing_and_commit_makes_the_entries_a_configs() {
    let registry = Registry::new(2);
    let freed = std::sync::Arc::new(super::breaker::Freed::default());
    let a = registry.target("u", "10.0.0.1:80", &freed);
    let state = registry.upstream("u");
    assert!(
        !Arc::ptr_eq(&a, &registry.target("u", "10.0.0.1:80", &freed)),
        "a lookup entered a target"
    );
    assert_eq!(
        a.idle.len(),
        3,
        "one pool slot per worker and the control thread"
    );

    registry.commit([("u", &state, std::slice::from_ref(&a))]);
    assert!(Arc::ptr_eq(
        &a,
        &registry.target("u", "10.0.0.1:80", &freed)
    ));
    assert!(Arc::ptr_eq(&state, &registry.upstream("u")));

    // A config compiled but never put in force (a refused reload) changes nothing.
    let b = registry.target("u", "10.0.0.2:80", &freed);
    assert!(Arc::ptr_eq(
        &a,
        &registry.target("u", "10.0.0.1:80", &freed)
    ));
    assert!(!Arc::ptr_eq(
        &b,
        &registry.target("u", "10.0.0.2:80", &freed)
    ));

    // The next config in force drops what it no longer names.
    registry.commit([("u", &state, std::slice::from_ref(&b))]);
    assert!(!Arc::ptr_eq(
        &a,
        &registry.target("u", "10.0.0.1:80", &freed)
    ));
    assert!(Arc::ptr_eq(
        &b,
        &registry.target("u", "10.0.0.2:80", &freed)
    ));
}
