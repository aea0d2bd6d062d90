//! Layer-4 and WebSocket peer for benchmarks (see `bench/compare.sh`): one binary that is the
//! upstream server and the load generator, on a single-threaded tokio runtime.
//!
//! Server: `bench_l4 serve [--listen ADDR]` prints `listening ADDR` once bound, then serves
//! every connection by what it sends first:
//! - `source\n`: the server writes 64 KiB blocks until the client goes away (bulk transfer);
//! - `GET ` (an HTTP/1.1 WebSocket upgrade): the server answers 101 and echoes every frame it
//!   receives as an unmasked frame of the same opcode (a close frame is answered and ends it);
//! - anything else: echoed back byte for byte.
//!
//! Clients (each runs for `--seconds S` with `--conns N` connections, then prints one line
//! `result ops=N bytes=B seconds=S p50_us=P p99_us=P errors=E`):
//! - `bench_l4 bulk ADDR`: each connection asks for `source` and reads; ops = MiB received;
//! - `bench_l4 connect ADDR`: each loop connects, writes 16 bytes, reads them back and closes;
//!   ops = connections completed, with their latency;
//! - `bench_l4 ws ADDR [--size N]`: each connection upgrades once, then sends a masked binary
//!   frame of N bytes (default 32) and waits for its echo; ops = round trips, with latency.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BLOCK: usize = 64 * 1024;
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC11B65";

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    mode: String,
    addr: String,
    conns: usize,
    seconds: f64,
    size: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mode = args
        .next()
        .ok_or("usage: bench_l4 serve|bulk|connect|ws ...")?;
    let mut out = Args {
        addr: String::from("127.0.0.1:0"),
        mode,
        conns: 50,
        seconds: 10.0,
        size: 32,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => out.addr = value("--listen")?,
            "--conns" => out.conns = value("--conns")?.parse().map_err(|e| format!("{e}"))?,
            "--seconds" => out.seconds = value("--seconds")?.parse().map_err(|e| format!("{e}"))?,
            "--size" => out.size = value("--size")?.parse().map_err(|e| format!("{e}"))?,
            other if !other.starts_with('-') => out.addr = other.to_owned(),
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args = parse_args()?;
    if args.mode == "serve" {
        return serve(&args.addr).await;
    }
    let addr: SocketAddr = args.addr.parse()?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        let mode = args.mode.clone();
        let size = args.size;
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let result = match mode.as_str() {
                "bulk" => bulk(addr, deadline, &mut tally).await,
                "connect" => connect(addr, deadline, &mut tally).await,
                "ws" => ws(addr, size, deadline, &mut tally).await,
                other => Err(format!("unknown mode {other}").into()),
            };
            if result.is_err() {
                tally.errors += 1;
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await?;
        all.ops += t.ops;
        all.bytes += t.bytes;
        all.errors += t.errors;
        all.latencies.extend(t.latencies);
    }
    let seconds = started.elapsed().as_secs_f64();
    if args.mode == "bulk" {
        all.ops = all.bytes >> 20;
    }
    all.latencies.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.latencies.is_empty() {
            return 0;
        }
        let i = ((all.latencies.len() as f64 * p).ceil() as usize).clamp(1, all.latencies.len());
        all.latencies[i - 1]
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "result ops={} bytes={} seconds={seconds:.3} p50_us={} p99_us={} errors={}",
        all.ops,
        all.bytes,
        pct(0.50),
        pct(0.99),
        all.errors
    )?;
    Ok(())
}

#[derive(Default)]
struct Tally {
    ops: u64,
    bytes: u64,
    errors: u64,
    latencies: Vec<u32>,
}

fn micros(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX)
}

async fn bulk(addr: SocketAddr, deadline: Instant, tally: &mut Tally) -> Result<(), Error> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"source\n").await?;
    let mut buf = vec![0u8; BLOCK];
    while Instant::now() < deadline {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err("closed".into());
        }
        tally.bytes += n as u64;
    }
    Ok(())
}

async fn connect(addr: SocketAddr, deadline: Instant, tally: &mut Tally) -> Result<(), Error> {
    let msg = *b"ping-0123456789\n";
    let mut back = [0u8; 16];
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        stream.write_all(&msg).await?;
        stream.read_exact(&mut back).await?;
        if back != msg {
            return Err("echo differs".into());
        }
        drop(stream);
        tally.latencies.push(micros(t0));
        tally.ops += 1;
        tally.bytes += 16;
    }
    Ok(())
}

async fn ws(
    addr: SocketAddr,
    size: usize,
    deadline: Instant,
    tally: &mut Tally,
) -> Result<(), Error> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let head = read_head(&mut stream).await?;
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("no upgrade: {}", head.lines().next().unwrap_or("")).into());
    }
    // A masked binary frame (mask 0: the payload goes out as is).
    let mut frame = Vec::with_capacity(size + 14);
    frame.push(0x82);
    push_len(&mut frame, size, true);
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.resize(frame.len() + size, b'x');
    let mut back = vec![0u8; size + 10];
    let echo_len = size + header_len(size, false);
    while Instant::now() < deadline {
        let t0 = Instant::now();
        stream.write_all(&frame).await?;
        stream.read_exact(&mut back[..echo_len]).await?;
        tally.latencies.push(micros(t0));
        tally.ops += 1;
        tally.bytes += size as u64;
    }
    Ok(())
}

fn header_len(len: usize, masked: bool) -> usize {
    let base = if len < 126 {
        2
    } else if len <= 0xffff {
        4
    } else {
        10
    };
    base + if masked { 4 } else { 0 }
}

fn push_len(frame: &mut Vec<u8>, len: usize, masked: bool) {
    let mask = if masked { 0x80 } else { 0 };
    if len < 126 {
        frame.push(mask | len as u8);
    } else if len <= 0xffff {
        frame.push(mask | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(mask | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

async fn read_head(stream: &mut TcpStream) -> Result<String, Error> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || stream.read(&mut byte).await? == 0 {
            return Err("bad head".into());
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

async fn serve(listen: &str) -> Result<(), Error> {
    let listener = TcpListener::bind(listen).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {}", listener.local_addr()?)?;
        out.flush()?;
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                eprintln!("accept error: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            // Resets and early closes are normal under load.
            let _ = serve_one(stream).await;
        });
    }
}

async fn serve_one(mut stream: TcpStream) -> Result<(), Error> {
    let mut buf = vec![0u8; BLOCK];
    let mut have = 0;
    // Enough bytes to tell the three kinds apart.
    loop {
        let seen = &buf[..have];
        let undecided = |word: &[u8]| seen.len() < word.len() && word.starts_with(seen);
        if !(undecided(b"source\n") || undecided(b"GET ")) {
            break;
        }
        let n = stream.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok(());
        }
        have += n;
    }
    if buf[..have].starts_with(b"source\n") {
        let block = vec![b'x'; BLOCK];
        loop {
            stream.write_all(&block).await?;
        }
    }
    if buf[..have].starts_with(b"GET ") {
        return serve_ws(stream, buf, have).await;
    }
    // Echo.
    stream.write_all(&buf[..have]).await?;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

async fn serve_ws(mut stream: TcpStream, mut buf: Vec<u8>, mut have: usize) -> Result<(), Error> {
    let end = loop {
        if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if have == buf.len() {
            return Err("head too large".into());
        }
        let n = stream.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok(());
        }
        have += n;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .ok_or("no Sec-WebSocket-Key")?;
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{WS_GUID}").as_bytes(),
    );
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(answer.as_bytes()).await?;
    buf.copy_within(end..have, 0);
    have -= end;
    let mut out = Vec::with_capacity(BLOCK);
    loop {
        // Parse whole frames from what is buffered; read more when a frame is incomplete.
        let mut at = 0;
        out.clear();
        let mut closing = false;
        while let Some((opcode, start, len, mask)) = frame_at(&buf[at..have]) {
            let payload = &buf[at + start..at + start + len];
            out.push(0x80 | opcode);
            push_len(&mut out, len, false);
            let from = out.len();
            out.extend_from_slice(payload);
            if let Some(mask) = mask {
                for (i, b) in out[from..].iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
            }
            at += start + len;
            if opcode == 0x8 {
                closing = true;
                break;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        if closing {
            return Ok(());
        }
        buf.copy_within(at..have, 0);
        have -= at;
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok(());
        }
        have += n;
    }
}

/// A whole frame at the start of `buf`: opcode, payload start, payload length, mask.
fn frame_at(buf: &[u8]) -> Option<(u8, usize, usize, Option<[u8; 4]>)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    let mask = if masked {
        let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    (buf.len() >= at + len).then_some((opcode, at, len, mask))
}
