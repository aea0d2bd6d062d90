//! `compression` through the real binary: curl against a real upstream, each encoding
//! decoded back to the upstream's exact bytes; negotiation, what is never compressed, the
//! head edits, SSE event by event, request bodies decoded and zip bombs refused.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;

use crate::support::{Portico, fill, temp_dir};

/// A JSON document of about `n` bytes, the same every time.
fn json_of(n: usize) -> Bytes {
    let mut out = String::from("{\"items\":[");
    let mut i = 0;
    while out.len() + 40 < n {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{{\"id\":{i},\"name\":\"item number {i}\"}}"));
        i += 1;
    }
    out.push_str("]}");
    Bytes::from(out)
}

type Reply = http::Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>;

fn answer(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    let mut builder = http::Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body.into()).boxed()).unwrap()
}

/// The upstream: each path a kind of answer.
async fn route(req: http::Request<hyper::body::Incoming>) -> Reply {
    let path = req.uri().path().to_owned();
    let json = json_of(8 << 10);
    let len = json.len().to_string();
    match path.as_str() {
        "/json" => answer(
            200,
            &[
                ("content-type", "application/json; charset=utf-8"),
                ("content-length", &len),
                ("etag", "\"v1\""),
                ("accept-ranges", "bytes"),
                ("vary", "Origin"),
            ],
            json,
        ),
        "/small" => answer(
            200,
            &[("content-type", "application/json")],
            "{\"ok\":true}",
        ),
        "/problem" => answer(404, &[("content-type", "application/problem+json")], json),
        "/png" => answer(200, &[("content-type", "image/png")], vec![7u8; 8 << 10]),
        "/unsized" => {
            let chunks = (0..4).map(|i| {
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!("line {i}\n").repeat(50))))
            });
            http::Response::builder()
                .header("content-type", "text/plain")
                .body(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
                .unwrap()
        }
        "/encoded" => answer(
            200,
            &[("content-type", "text/plain"), ("content-encoding", "gzip")],
            gzip(&json),
        ),
        "/no-transform" => answer(
            200,
            &[
                ("content-type", "application/json"),
                ("cache-control", "public, no-transform"),
            ],
            json,
        ),
        "/range" => answer(
            206,
            &[
                ("content-type", "application/json"),
                ("content-range", &format!("bytes 0-1999/{len}")),
            ],
            json.slice(..2000),
        ),
        "/sse" => {
            let stream = futures_util::stream::unfold(0u32, |i| async move {
                if i == 5 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let event = Bytes::from(format!("data: {i}\n\n"));
                Some((Ok::<_, Infallible>(Frame::data(event)), i + 1))
            });
            http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(stream).boxed())
                .unwrap()
        }
        "/echo" => {
            let encoding = req
                .headers()
                .get("content-encoding")
                .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
            let declared = req
                .headers()
                .get("content-length")
                .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
            match req.into_body().collect().await {
                Ok(body) => answer(
                    200,
                    &[
                        ("content-type", "application/octet-stream"),
                        ("x-got-encoding", &encoding),
                        ("x-got-length", &declared),
                    ],
                    body.to_bytes(),
                ),
                Err(_) => answer(400, &[], "broken body"),
            }
        }
        _ => answer(404, &[], ""),
    }
}

async fn upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req| async move {
                    Ok::<_, Infallible>(route(req).await)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

const CONFIG: &str = "\
workers: 1
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: prefer-gzip
    match: { path_prefix: /gz }
    rewrite: { strip_prefix: /gz }
    upstream: u
    plugins: [ { compression: { encodings: [gzip, br, zstd], level: fastest } } ]
  - name: edited
    match: { path_prefix: /edited }
    rewrite: { strip_prefix: /edited }
    upstream: u
    plugins:
      - response_transformer: { json: { set: { via: portico } } }
      - compression: {}
  - name: decode
    match: { path_prefix: /up }
    rewrite: { strip_prefix: /up }
    upstream: u
    plugins: [ { compression: { request: { decompress: true, max_size: 10MiB } } } ]
  - name: all
    upstream: u
    plugins: [ { compression: { min_size: 1KiB } } ]
upstreams:
  u: { targets: [ { address: '@U@' } ] }
";

async fn start() -> Portico {
    let u = upstream().await;
    Portico::start(&fill(CONFIG, &[("U", &u)]))
}

/// What curl got: status, headers (names lower case), the body as it came.
pub(crate) struct Got {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Got {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }
}

/// Runs curl (off the runtime's thread, which serves the upstream) on `url` with `args`.
pub(crate) async fn curl(args: &[&str], url: String) -> Got {
    let dir = temp_dir("curl");
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let heads = dir.join("headers");
        let body = dir.join("body");
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "-D"])
            .arg(&heads)
            .arg("-o")
            .arg(&body)
            .args(&args)
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&heads).unwrap();
        let mut lines = text.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Got {
            status,
            headers,
            body: std::fs::read(&body).unwrap_or_default(),
        }
    })
    .await
    .unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Decodes a body in `encoding` with the crates portico encodes with.
pub(crate) fn decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(data).unwrap(),
        other => panic!("unexpected encoding {other}"),
    }
    out
}

#[tokio::test]
async fn each_encoding_decodes_to_the_upstreams_bytes() {
    let gw = start().await;
    let url = format!("http://{}/json", gw.addr("web"));
    let json = json_of(8 << 10);
    for encoding in ["gzip", "br", "zstd"] {
        let got = curl(
            &["-H", &format!("Accept-Encoding: {encoding}")],
            url.clone(),
        )
        .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("content-encoding"), Some(encoding));
        assert_eq!(got.header("content-length"), None);
        assert!(
            got.body.len() < json.len() / 2,
            "{encoding}: {}",
            got.body.len()
        );
        assert_eq!(decode(encoding, &got.body), json, "{encoding}");
    }
    // curl's own decoders agree; it offers all three and zstd is preferred.
    let got = curl(&["--compressed"], url).await;
    assert_eq!(got.header("content-encoding"), Some("zstd"));
    assert_eq!(got.body, json);
}

#[tokio::test]
async fn q_values_choose_and_refuse() {
    let gw = start().await;
    let web = gw.addr("web");
    let url = format!("http://{web}/json");
    let cases = [
        ("gzip;q=0.5, br;q=1", Some("br")),
        ("gzip, br, zstd", Some("zstd")),
        ("br;q=0.8, gzip;q=0.8", Some("br")),
        ("*", Some("zstd")),
        ("*, zstd;q=0", Some("br")),
        ("*;q=0", None),
        ("identity", None),
        ("gzip;q=0", None),
        ("br;q=0.3, identity;q=1", None),
        ("deflate", None),
    ];
    for (accept, expected) in cases {
        let got = curl(&["-H", &format!("Accept-Encoding: {accept}")], url.clone()).await;
        assert_eq!(got.header("content-encoding"), expected, "{accept}");
        if expected.is_none() {
            assert_eq!(got.body, json_of(8 << 10), "{accept}");
        }
    }
    // The configured preference breaks ties: this route offers gzip first.
    let got = curl(
        &["-H", "Accept-Encoding: zstd, br, gzip"],
        format!("http://{web}/gz/json"),
    )
    .await;
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &got.body), json_of(8 << 10));
    // No Accept-Encoding: as it is, but still marked as varying with it.
    let got = curl(&[], url).await;
    assert_eq!(got.header("content-encoding"), None);
    assert_eq!(got.header("vary"), Some("Origin, Accept-Encoding"));
}

#[tokio::test]
async fn the_head_says_what_changed() {
    let gw = start().await;
    let got = curl(
        &["-H", "Accept-Encoding: gzip"],
        format!("http://{}/json", gw.addr("web")),
    )
    .await;
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    assert_eq!(got.header("etag"), Some("W/\"v1\""));
    assert_eq!(got.header("vary"), Some("Origin, Accept-Encoding"));
    assert_eq!(got.count("vary"), 1);
    assert_eq!(got.header("accept-ranges"), None);
    assert_eq!(got.header("content-length"), None);
    assert_eq!(got.header("transfer-encoding"), Some("chunked"));
}

#[tokio::test]
async fn sizes_and_types() {
    let gw = start().await;
    let web = gw.addr("web");
    let ae = ["-H", "Accept-Encoding: gzip"];
    // Below min_size: as it is, but it varies.
    let got = curl(&ae, format!("http://{web}/small")).await;
    assert_eq!(got.header("content-encoding"), None);
    assert_eq!(got.body, b"{\"ok\":true}");
    assert_eq!(got.header("vary"), Some("Accept-Encoding"));
    // A type not listed: as it is, and no Vary added.
    let got = curl(&ae, format!("http://{web}/png")).await;
    assert_eq!(got.header("content-encoding"), None);
    assert_eq!(got.body.len(), 8 << 10);
    assert_eq!(got.header("vary"), None);
    // A `+json` type, on an error answer too.
    let got = curl(&ae, format!("http://{web}/problem")).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &got.body), json_of(8 << 10));
    // Unknown length: compressed, whatever its size turns out to be.
    let got = curl(&ae, format!("http://{web}/unsized")).await;
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    let text: String = (0..4).map(|i| format!("line {i}\n").repeat(50)).collect();
    assert_eq!(decode("gzip", &got.body), text.as_bytes());
}

#[tokio::test]
async fn what_is_never_compressed() {
    let gw = start().await;
    let web = gw.addr("web");
    let ae = ["-H", "Accept-Encoding: gzip, br, zstd"];
    let json = json_of(8 << 10);
    // Already encoded: untouched, bytes and all.
    let got = curl(&ae, format!("http://{web}/encoded")).await;
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &got.body), json);
    // no-transform.
    let got = curl(&ae, format!("http://{web}/no-transform")).await;
    assert_eq!(got.header("content-encoding"), None);
    assert_eq!(got.body, json);
    // A 206 from the upstream.
    let got = curl(&ae, format!("http://{web}/range")).await;
    assert_eq!(got.status, 206);
    assert_eq!(got.header("content-encoding"), None);
    assert_eq!(got.body, &json[..2000]);
    // A request with Range: the bytes as the upstream has them.
    let got = curl(
        &[ae[0], ae[1], "-H", "Range: bytes=0-99"],
        format!("http://{web}/json"),
    )
    .await;
    assert_eq!(got.header("content-encoding"), None);
    assert_eq!(got.header("etag"), Some("\"v1\""));
    // HEAD: no body, no encoding; the length the upstream declared stays.
    let got = curl(&[ae[0], ae[1], "-I"], format!("http://{web}/json")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-encoding"), None);
    assert_eq!(
        got.header("content-length"),
        Some(json.len().to_string().as_str())
    );
    assert_eq!(got.header("vary"), Some("Origin, Accept-Encoding"));
}

#[tokio::test]
async fn body_edits_happen_before_compression() {
    let gw = start().await;
    let got = curl(
        &["-H", "Accept-Encoding: br"],
        format!("http://{}/edited/json", gw.addr("web")),
    )
    .await;
    assert_eq!(got.header("content-encoding"), Some("br"));
    let doc: serde_json::Value = serde_json::from_slice(&decode("br", &got.body)).unwrap();
    assert_eq!(doc["via"], "portico");
    assert_eq!(doc["items"][3]["id"], 3);
}

#[tokio::test]
async fn sse_arrives_event_by_event_compressed() {
    let gw = start().await;
    for encoding in ["gzip", "br", "zstd"] {
        let stream = tokio::net::TcpStream::connect(gw.addr("web"))
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/sse")
            .header("host", "x")
            .header("accept-encoding", encoding)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.headers()["content-encoding"], encoding);
        let mut body = resp.into_body();
        // Each frame is decoded as it arrives: an event is readable the moment it is sent.
        let mut decoder = Streaming::new(encoding);
        let mut arrivals = Vec::new();
        let read = async {
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    let before = decoder.events();
                    decoder.feed(&data);
                    for _ in before..decoder.events() {
                        arrivals.push(Instant::now());
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap();
        let text = String::from_utf8(decoder.output()).unwrap();
        let expected: String = (0..5).map(|i| format!("data: {i}\n\n")).collect();
        assert_eq!(text, expected, "{encoding}");
        assert_eq!(arrivals.len(), 5, "{encoding}");
        for pair in arrivals.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= Duration::from_millis(50),
                "{encoding}: events together {gap:?}"
            );
        }
    }
}

/// A decoder fed frame by frame, counting the complete events decoded so far.
enum Streaming {
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Streaming {
    fn new(encoding: &str) -> Self {
        match encoding {
            "gzip" => Streaming::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
            "br" => Streaming::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            _ => Streaming::Zstd(zstd::stream::write::Decoder::new(Vec::new()).unwrap()),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        match self {
            Streaming::Gzip(w) => {
                w.write_all(data).unwrap();
                w.flush().unwrap();
            }
            Streaming::Br(w) => {
                w.write_all(data).unwrap();
                w.flush().unwrap();
            }
            Streaming::Zstd(w) => {
                w.write_all(data).unwrap();
                w.flush().unwrap();
            }
        }
    }

    fn output(&self) -> Vec<u8> {
        match self {
            Streaming::Gzip(w) => w.get_ref().clone(),
            Streaming::Br(w) => w.get_ref().clone(),
            Streaming::Zstd(w) => w.get_ref().clone(),
        }
    }

    fn events(&self) -> usize {
        self.output().windows(2).filter(|w| w == b"\n\n").count()
    }
}

fn write(dir: &Path, name: &str, data: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn request_bodies_are_decoded() {
    let gw = start().await;
    let web = gw.addr("web");
    let dir = temp_dir("bodies");
    let plain = json_of(64 << 10);
    let encoded: [(&str, Vec<u8>); 3] = [
        ("gzip", gzip(&plain)),
        ("br", {
            let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
            w.write_all(&plain).unwrap();
            w.into_inner()
        }),
        ("zstd", zstd::encode_all(&plain[..], 3).unwrap()),
    ];
    for (encoding, body) in &encoded {
        let file = write(&dir, encoding, body);
        let got = curl(
            &[
                "-H",
                &format!("Content-Encoding: {encoding}"),
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &format!("@{file}"),
            ],
            format!("http://{web}/up/echo"),
        )
        .await;
        assert_eq!(got.status, 200, "{encoding}");
        assert_eq!(got.header("x-got-encoding"), Some("none"), "{encoding}");
        assert_eq!(got.header("x-got-length"), Some("none"), "{encoding}");
        assert_eq!(got.body, plain, "{encoding}");
    }
    // A body that is not what its Content-Encoding says: a broken request body.
    let file = write(&dir, "garbage", b"this is not gzip at all, not even close");
    let got = curl(
        &[
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            &format!("@{file}"),
        ],
        format!("http://{web}/up/echo"),
    )
    .await;
    assert_eq!(got.status, 400);
    let error: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(error["error"], "bad_request", "{error}");
    // Where decoding is off, the body goes on as it came.
    let file = write(&dir, "as-is", &encoded[0].1);
    let got = curl(
        &[
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            &format!("@{file}"),
        ],
        format!("http://{web}/echo"),
    )
    .await;
    assert_eq!(got.header("x-got-encoding"), Some("gzip"));
    assert_eq!(got.body, encoded[0].1);
}

/// A zstd frame of `blocks` RLE blocks of 128 KiB of zeros each: 4 bytes per block.
fn zstd_bomb(blocks: usize) -> Vec<u8> {
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd];
    // No content size, no checksum, no dictionary; a 128 KiB window.
    out.extend_from_slice(&[0x00, 0x38]);
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = (128u32 << 10) << 3 | 1 << 1 | last;
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.push(0);
    }
    out
}

#[tokio::test]
async fn zip_bombs_are_refused_with_413() {
    let gw = start().await;
    let web = gw.addr("web");
    let dir = temp_dir("bombs");
    // 10 GiB of zeros in 320 KiB.
    let zstd = zstd_bomb(10 << 13);
    assert_eq!(zstd.len(), 6 + 4 * (10 << 13));
    // 64 MiB of zeros in about 64 KiB.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![0u8; 64 << 20]).unwrap();
    let gz = enc.finish().unwrap();
    assert!(gz.len() < 100 << 10, "{}", gz.len());
    for (encoding, body) in [("zstd", zstd), ("gzip", gz)] {
        let file = write(&dir, encoding, &body);
        let started = Instant::now();
        let got = curl(
            &[
                "-H",
                &format!("Content-Encoding: {encoding}"),
                "--data-binary",
                &format!("@{file}"),
            ],
            format!("http://{web}/up/echo"),
        )
        .await;
        assert_eq!(got.status, 413, "{encoding}");
        let error: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(error["error"], "payload_too_large", "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
