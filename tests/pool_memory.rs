//! Heap bytes held per idle pooled HTTP/1.1 upstream connection, counted by a global
//! allocator: the server runs in this process, a burst of 200 concurrent requests (each with
//! `Connection: close` from the client, so that no client connection stays) leaves 200
//! upstream connections in the pool, and the test reports what each holds and fails above
//! its limit. Its own test binary, so that nothing else allocates meanwhile.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

mod counting;

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

const CONNS: usize = 200;
/// What an idle pooled upstream connection may hold, in heap bytes. With hyper's client
/// connection it holds about 37 KB in this test (its 8 KiB read buffer, its write buffer, the
/// request channel's first block and the driver task): this bounds that, and a lighter
/// connection should lower it.
const LIMIT: isize = 40 * 1024;

/// A keep-alive upstream on its own threads (blocking, so it holds no heap per request).
/// `GET /burst` is answered once `CONNS` of them have arrived, each on its own connection.
fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let port = listener.local_addr().expect("upstream address").port();
    let barrier = Arc::new(Barrier::new(CONNS));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                let mut burst = false;
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => {
                            if std::mem::take(&mut burst) {
                                barrier.wait();
                            }
                            let body = "idle";
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if reader.get_mut().write_all(answer.as_bytes()).is_err() {
                                return;
                            }
                        }
                        Ok(_) if line.starts_with("GET /burst ") => burst = true,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    port
}

/// One GET with `Connection: close` on a new connection, read to its end: true on a 200
/// answer after which the server closed the connection.
fn get_and_close(port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .is_err()
    {
        return false;
    }
    let request = format!("GET {path} HTTP/1.1\r\nHost: idle.test\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut all = Vec::new();
    stream.read_to_end(&mut all).is_ok() && all.starts_with(b"HTTP/1.1 200")
}

#[test]
fn an_idle_pooled_upstream_connection_is_cheap() {
    let upstream = upstream();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = std::env::temp_dir().join(format!("portico-pool-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("portico.yaml");
    std::fs::write(
        &config,
        format!(
            "workers: 1\naccess_log: {{ enabled: false }}\n\
             listeners:\n  - {{ name: web, bind: 127.0.0.1:{port}, protocol: http }}\n\
             routes:\n  - {{ name: all, upstream: app }}\n\
             upstreams:\n  app:\n    targets: [ {{ address: 127.0.0.1:{upstream} }} ]\n\
             \x20   pool: {{ max_idle: 1000, idle_timeout: 5m, demand_window: 5m }}\n"
        ),
    )
    .expect("write config");
    std::thread::spawn(move || {
        if let Err(err) = portico::bench::run_server(&config) {
            eprintln!("portico: {err}");
        }
    });
    let start = Instant::now();
    while !get_and_close(port, "/warm") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "portico did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..10 {
        assert!(get_and_close(port, "/warm"), "warm-up GET");
    }
    // Client connections are closed by the server shortly after their answer: wait for the
    // heap to settle before and after.
    let settled = || {
        let mut last = counting::live();
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(50));
            let now = counting::live();
            if now == last {
                break;
            }
            last = now;
        }
        last
    };
    let before = settled();
    let clients: Vec<_> = (0..CONNS)
        .map(|_| std::thread::spawn(move || get_and_close(port, "/burst")))
        .collect();
    for client in clients {
        assert!(client.join().unwrap_or(false), "burst GET");
    }
    let after = settled();
    let per_conn = (after - before) / (CONNS as isize - 1);
    println!(
        "heap per idle pooled upstream connection: {per_conn} bytes ({} connections)",
        CONNS - 1
    );
    assert!(
        per_conn <= LIMIT,
        "an idle pooled upstream connection holds {per_conn} bytes of heap (limit {LIMIT})"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
