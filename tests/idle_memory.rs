//! Heap bytes held per idle HTTP/1.1 keep-alive client connection, counted by a global
//! allocator: the server runs in this process, 500 connections each make one GET and then sit
//! idle, and the test fails when, once they are parked, the live heap grew by more than
//! 2 KiB per connection. Its own test binary, so that nothing else allocates meanwhile.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

mod counting;

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

const CONNS: usize = 500;
const LIMIT: isize = 2048;

/// A keep-alive upstream on its own threads (blocking, so it holds no heap per request).
fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let port = listener.local_addr().expect("upstream address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => {
                            let body = "idle";
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if reader.get_mut().write_all(answer.as_bytes()).is_err() {
                                return;
                            }
                        }
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
fn get_and_close(port: u16) -> bool {
    let Some(mut stream) = connect(port) else {
        return false;
    };
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: idle.test\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut all = Vec::new();
    stream.read_to_end(&mut all).is_ok() && all.starts_with(b"HTTP/1.1 200")
}

/// One GET on `stream`; true on a whole 200 answer.
fn get(stream: &mut TcpStream) -> bool {
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut got = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            return false;
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(length) = length
                && got.len() >= end + 4 + length
            {
                return head.starts_with("http/1.1 200");
            }
        }
    }
    false
}

fn connect(port: u16) -> Option<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    Some(stream)
}

#[test]
fn an_idle_keep_alive_connection_holds_at_most_2_kib() {
    let upstream = upstream();
    // A free port for the listener, told in the config.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = std::env::temp_dir().join(format!("portico-idle-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("portico.yaml");
    std::fs::write(
        &config,
        format!(
            "workers: 1\naccess_log: {{ enabled: false }}\n\
             listeners:\n  - {{ name: web, bind: 127.0.0.1:{port}, protocol: http }}\n\
             routes:\n  - {{ name: all, upstream: app }}\n\
             upstreams:\n  app:\n    targets: [ {{ address: 127.0.0.1:{upstream} }} ]\n"
        ),
    )
    .expect("write config");
    std::thread::spawn(move || {
        if let Err(err) = portico::bench::run_server(&config) {
            eprintln!("portico: {err}");
        }
    });

    // Ready once a GET is answered; warm up (lazy state, the upstream connection) with
    // connections the server closes, so that none of them counts in the baseline.
    let start = Instant::now();
    while !get_and_close(port) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "portico did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..10 {
        assert!(get_and_close(port), "warm-up GET");
    }
    let mut conns = Vec::with_capacity(CONNS);
    let before = counting::live();

    for _ in 0..CONNS {
        let mut stream = connect(port).expect("connect");
        assert!(get(&mut stream), "GET on a fresh connection");
        conns.push(stream);
    }
    let busy = (counting::live() - before) / CONNS as isize;

    // Parking follows a short idle delay: wait (bounded) for the heap to come down.
    let deadline = Instant::now() + Duration::from_secs(10);
    let per_conn = loop {
        let per = (counting::live() - before) / CONNS as isize;
        if per <= LIMIT || Instant::now() > deadline {
            break per;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "heap per idle keep-alive connection: {per_conn} bytes once parked ({busy} bytes just \
         after its answer), {CONNS} connections"
    );
    assert!(
        per_conn <= LIMIT,
        "an idle keep-alive connection holds {per_conn} bytes of heap (limit {LIMIT})"
    );

    // Parked connections still serve.
    for stream in conns.iter_mut().take(20) {
        assert!(get(stream), "GET on a parked connection");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
