//! Large bodies stream both ways with backpressure: memory stays bounded.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;

use crate::support::{Portico, TestUpstream, fill};

const GIB: usize = 1 << 30;

#[tokio::test]
async fn one_gib_each_way_in_bounded_memory() {
    let a = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(
        "\
workers: 1
access_log: { enabled: false }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@A@' } ] }
",
        &[("A", &a.addr())],
    ));
    let web = gw.addr("web");
    let baseline = gw.peak_rss_kib();

    // Upload: 1 GiB in 64 KiB chunks, counted by the upstream.
    let stream = tokio::net::TcpStream::connect(&web).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let chunks = GIB / chunk.len();
    let body = StreamBody::new(futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone()))),
    ));
    let req = http::Request::post("/count")
        .header("host", "x")
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(120), sender.send_request(req))
        .await
        .expect("upload timed out")
        .unwrap();
    let counted = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(counted, GIB.to_string().as_bytes());

    // Download: 1 GiB streamed from the upstream.
    let stream = tokio::net::TcpStream::connect(&web).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("/big/{GIB}"))
        .header("host", "x")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    let mut total = 0usize;
    let download = async {
        while let Some(frame) = body.frame().await {
            total += frame.unwrap().data_ref().map_or(0, |d| d.len());
        }
    };
    tokio::time::timeout(Duration::from_secs(120), download)
        .await
        .expect("download timed out");
    assert_eq!(total, GIB);

    let grown = gw.peak_rss_kib().saturating_sub(baseline);
    assert!(
        grown < 32 * 1024,
        "portico grew by {grown} KiB while moving 2 GiB"
    );
    eprintln!("peak RSS growth while moving 2 GiB: {grown} KiB (baseline {baseline} KiB)");
}
