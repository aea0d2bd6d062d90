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

/// An HTTP/1.1 server without an idle timeout of its own; counts open connections.
async fn server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let open = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&open);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
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
    (addr, open)
}

fn settings(idle_timeout: Duration) -> PoolSettings {
    PoolSettings {
        max_idle: 8,
        idle_timeout,
        connect_timeout: Duration::from_secs(2),
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
    let (addr, server_open) = server().await;
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
    let (addr, _) = server().await;
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
