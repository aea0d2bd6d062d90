//! Tools for attack tests: a normal client whose latency is measured while an attacker runs,
//! raw HTTP/2 frames, and the portico process's resident memory.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::H1;

/// Resident memory (VmRSS) of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// What the normal client saw: how many of its requests were answered 200, and latencies.
#[derive(Debug)]
pub struct Served {
    pub ok: usize,
    pub total: usize,
    pub latencies: Vec<Duration>,
}

impl Served {
    /// The 99th percentile latency of the answered requests.
    pub fn p99(&self) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
    }

    /// Prints the p99 and checks that every request was answered.
    pub fn check(&self, attack: &str) {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        println!(
            "{attack}: normal client {}/{} answered, p50 {:?}, p99 {:?}",
            self.ok,
            self.total,
            sorted.get(sorted.len() / 2).copied().unwrap_or_default(),
            self.p99()
        );
        assert_eq!(
            self.ok, self.total,
            "{attack}: the normal client was not served: {self:?}"
        );
    }
}

/// `n` GETs of `path` from a normal client, one after another on fresh connections every 10
/// requests, each allowed `bound` (generous: the point is being served, not speed).
pub async fn normal_client(addr: String, path: &'static str, n: usize, bound: Duration) -> Served {
    let mut served = Served {
        ok: 0,
        total: n,
        latencies: Vec::with_capacity(n),
    };
    let mut conn: Option<H1> = None;
    for i in 0..n {
        let start = Instant::now();
        let attempt = async {
            if conn.is_none() || i % 10 == 0 {
                conn = Some(H1::connect(&addr).await);
            }
            let c = conn.as_mut()?;
            let req = http::Request::get(path)
                .header("host", "example.com")
                .body(http_body_util::Full::default())
                .ok()?;
            c.send(req).await.ok()
        };
        match tokio::time::timeout(bound, attempt).await {
            Ok(Some(reply)) if reply.status == 200 => {
                served.ok += 1;
                served.latencies.push(start.elapsed());
            }
            _ => conn = None,
        }
    }
    served
}

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

/// One HTTP/2 frame (RFC 9113 §4.1).
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK block for a GET of `path`: indexed `:method GET` and `:scheme http`, literal
/// `:authority` and `:path` with indexed names (RFC 7541 §6.2.1, Appendix A).
pub fn get_block(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x41, b"example.com".len() as u8];
    block.extend_from_slice(b"example.com");
    block.push(0x44);
    block.push(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    block
}

/// HEADERS for a GET of `path` on `stream`, with END_HEADERS and, when `end`, END_STREAM.
pub fn get_headers(stream: u32, path: &str, end: bool) -> Vec<u8> {
    frame(
        HEADERS,
        if end { 0x5 } else { 0x4 },
        stream,
        &get_block(path),
    )
}

/// A raw HTTP/2 client connection that sees every frame.
pub struct RawH2 {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// How an attacker's connection ended.
#[derive(Debug, Default)]
pub struct Ending {
    /// GOAWAY error codes received.
    pub goaway: Vec<u32>,
    /// The server closed the connection (EOF or a reset).
    pub closed: bool,
    /// Bytes of frames received.
    pub received: usize,
}

impl RawH2 {
    /// Connects and sends the preface and an empty SETTINGS frame.
    pub async fn connect(addr: &str) -> Self {
        Self::connect_with(addr, &[]).await
    }

    /// Connects and sends the preface and SETTINGS with `settings` (id, value pairs).
    pub async fn connect_with(addr: &str, settings: &[(u16, u32)]) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        stream
            .write_all(&frame(SETTINGS, 0, 0, &payload))
            .await
            .unwrap();
        RawH2 {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes bytes; `false` once the server has closed.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// Reads what has arrived within `wait`, noting GOAWAYs and the close.
    pub async fn drain(&mut self, wait: Duration, ending: &mut Ending) {
        let mut chunk = [0u8; 16384];
        let deadline = Instant::now() + wait;
        loop {
            let now = Instant::now();
            if now >= deadline || ending.closed {
                return;
            }
            match tokio::time::timeout(deadline - now, self.stream.read(&mut chunk)).await {
                Err(_) => return,
                Ok(Ok(0)) | Ok(Err(_)) => ending.closed = true,
                Ok(Ok(n)) => {
                    ending.received += n;
                    self.buf.extend_from_slice(&chunk[..n]);
                    while self.buf.len() >= 9 {
                        let len = (usize::from(self.buf[0]) << 16)
                            | (usize::from(self.buf[1]) << 8)
                            | usize::from(self.buf[2]);
                        if self.buf.len() < 9 + len {
                            break;
                        }
                        if self.buf[3] == GOAWAY && len >= 8 {
                            let code = &self.buf[13..17];
                            ending
                                .goaway
                                .push(u32::from_be_bytes([code[0], code[1], code[2], code[3]]));
                        }
                        self.buf.drain(..9 + len);
                    }
                }
            }
        }
    }
}

/// Runs `attack` rounds (each returning `false` once the server has closed the attacker)
/// until the normal client is done, the server closed the attacker, or `rounds` ran; the
/// normal client runs alongside. Returns what the normal client saw and how many rounds ran.
pub async fn under_attack<F, Fut>(
    addr: &str,
    path: &'static str,
    normal_requests: usize,
    rounds: usize,
    mut attack: F,
) -> (Served, usize)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = bool>,
{
    let normal = tokio::spawn(normal_client(
        addr.to_owned(),
        path,
        normal_requests,
        Duration::from_secs(10),
    ));
    let mut ran = 0;
    while ran < rounds && !normal.is_finished() {
        ran += 1;
        if !attack(ran).await {
            break;
        }
    }
    (normal.await.unwrap(), ran)
}
