//! Minimal upstream server for benchmarks (see `bench/compare.sh` and BENCHMARKS.md).
//!
//! A hyper 1.x server speaking HTTP/1.1 and h2c (prior knowledge) on one port, on a
//! single-threaded tokio runtime. Routes:
//!
//! - `GET /`      → 200, 13-byte body `Hello, world!`
//! - `GET /16k`   → 200, 16,384-byte body (one repeated byte: compresses to almost nothing)
//! - `GET /json`  → 200, a ~16 KiB JSON document (`application/json`): records with
//!   pseudo-random but fixed values, compressible as typical API answers are (gzip 1 and 6 to
//!   ~22% and ~17% of its size); the same bytes on every run
//! - `POST /echo` → 200, the request body streamed back
//! - anything else → 404
//!
//! Usage: `bench_upstream [--listen ADDR] [--delay-ms N]`. `--listen` defaults to
//! `127.0.0.1:0`; `--delay-ms N` holds every response for N ms (a `tokio::time::sleep` before
//! the response is sent) to play a slow target. Prints exactly one line, `listening ADDR` with
//! the bound address, to stdout once the socket is listening.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

const HELLO: &[u8] = b"Hello, world!";
static BODY_16K: [u8; 16 * 1024] = [b'x'; 16 * 1024];

/// The `/json` body: 136 records (16.3 KB), values from a fixed linear congruential sequence.
fn json_body() -> Bytes {
    const WORDS: [&str; 12] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliet", "kilo", "lima",
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x >> 33
    };
    let mut out = String::from("[");
    for id in 0..136u64 {
        let (a, b, c, d) = (next(), next(), next(), next());
        if id > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"id\":{id},\"name\":\"{} {}\",\"email\":\"{}.{}@example.com\",\
             \"active\":{},\"score\":{}.{:02},\"tags\":[\"{}\",\"{}\"]}}",
            WORDS[(a % 12) as usize],
            WORDS[(b % 12) as usize],
            WORDS[(a % 12) as usize],
            a % 100_000,
            c % 2 == 0,
            b % 1000,
            c % 100,
            WORDS[(d % 12) as usize],
            WORDS[((d >> 8) % 12) as usize],
        ));
    }
    out.push(']');
    Bytes::from(out)
}

type ResBody = Either<Full<Bytes>, Incoming>;

fn full(status: StatusCode, body: &'static [u8]) -> Response<ResBody> {
    let mut res = Response::new(Either::Left(Full::new(Bytes::from_static(body))));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    res
}

async fn handle(
    req: Request<Incoming>,
    delay: Option<Duration>,
    json: Bytes,
) -> Result<Response<ResBody>, Infallible> {
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let res = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => full(StatusCode::OK, HELLO),
        (&Method::GET, "/16k") => full(StatusCode::OK, &BODY_16K),
        (&Method::GET, "/json") => {
            let mut res = Response::new(Either::Left(Full::new(json)));
            res.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            res
        }
        (&Method::POST, "/echo") => {
            // Stream the request body straight back; hyper forwards the frames as they arrive.
            let mut res = Response::new(Either::Right(req.into_body()));
            res.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            res
        }
        _ => full(StatusCode::NOT_FOUND, b"not found"),
    };
    Ok(res)
}

struct Args {
    listen: SocketAddr,
    /// Added before every response; `None` for `--delay-ms 0` or without the flag.
    delay: Option<Duration>,
}

fn parse_delay(v: &str) -> Result<Option<Duration>, String> {
    let ms: u64 = v
        .parse()
        .map_err(|e| format!("bad --delay-ms value {v:?}: {e}"))?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

fn parse_args() -> Result<Args, String> {
    let mut listen = String::from("127.0.0.1:0");
    let mut delay = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--listen" {
            listen = args.next().ok_or("--listen needs an address")?;
        } else if let Some(v) = arg.strip_prefix("--listen=") {
            listen = v.to_owned();
        } else if arg == "--delay-ms" {
            delay = parse_delay(&args.next().ok_or("--delay-ms needs a number")?)?;
        } else if let Some(v) = arg.strip_prefix("--delay-ms=") {
            delay = parse_delay(v)?;
        } else if arg == "-h" || arg == "--help" {
            println!(
                "usage: bench_upstream [--listen ADDR] [--delay-ms N]   \
                 (default 127.0.0.1:0, no delay)"
            );
            std::process::exit(0);
        } else {
            return Err(format!("unknown argument: {arg}"));
        }
    }
    let listen = listen
        .parse()
        .map_err(|e| format!("bad --listen address {listen:?}: {e}"))?;
    Ok(Args { listen, delay })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args { listen, delay } = parse_args()?;
    let listener = TcpListener::bind(listen).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {}", listener.local_addr()?)?;
        out.flush()?;
    }

    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let json = json_body();
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // e.g. EMFILE under an idle-connection test: back off instead of spinning.
                eprintln!("accept error: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Best effort: a failure only costs latency, not correctness.
        let _ = stream.set_nodelay(true);
        let builder = Arc::clone(&builder);
        let json = json.clone();
        tokio::spawn(async move {
            // Connection errors (peer resets, aborted requests) are normal under load.
            let _ = builder
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| handle(req, delay, json.clone())),
                )
                .await;
        });
    }
}
