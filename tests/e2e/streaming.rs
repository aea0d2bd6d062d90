//! Large bodies stream both ways with backpressure: memory stays bounded. Server-Sent Events
//! pass event by event, under the route's stream limits rather than the listener's idle timeout.

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

/// An SSE upstream. `/tick`: ten events, one every 100 ms. `/quiet/MS`: an event, MS of
/// silence, another, the end. `/forever`: an event every 100 ms until the body is dropped
/// (portico closed the connection), which is reported on the channel.
async fn sse_upstream() -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    use std::convert::Infallible;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let path = req.uri().path().to_owned();
                let closed_tx = closed_tx.clone();
                async move {
                    /// Reports when the body is dropped before its end.
                    struct Gone(Option<tokio::sync::mpsc::UnboundedSender<()>>);
                    impl Drop for Gone {
                        fn drop(&mut self) {
                            if let Some(tx) = self.0.take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                    let plan: Vec<(u64, String)> = if path == "/tick" {
                        (0..10).map(|i| (100, format!("data: {i}\n\n"))).collect()
                    } else if let Some(ms) = path.strip_prefix("/quiet/") {
                        vec![
                            (0, "data: first\n\n".into()),
                            (ms.parse().unwrap(), "data: second\n\n".into()),
                        ]
                    } else {
                        (0..10_000)
                            .map(|i| (100, format!("data: {i}\n\n")))
                            .collect()
                    };
                    let forever = path == "/forever";
                    let gone = Gone(forever.then_some(closed_tx));
                    let stream = futures_util::stream::unfold(
                        (plan.into_iter(), gone),
                        |(mut plan, gone)| async move {
                            let (wait, event) = plan.next()?;
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                            Some((
                                Ok::<_, Infallible>(Frame::data(Bytes::from(event))),
                                (plan, gone),
                            ))
                        },
                    );
                    let response = http::Response::builder()
                        .header("content-type", "text/event-stream")
                        .header("cache-control", "no-cache")
                        .body(StreamBody::new(stream))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, closed)
}

const SSE_CONFIG: &str = "\
workers: 1
listeners:
  - { name: web, bind: 127.0.0.1:0, limits: { idle_timeout: 1s } }
routes:
  - { name: short, match: { path_prefix: /short }, rewrite: { strip_prefix: /short }, stream_idle_timeout: 1s, upstream: sse }
  - { name: shaped, match: { path_prefix: /shaped }, rewrite: { strip_prefix: /shaped }, plugins: [ { response_shape: { format: auto } } ], upstream: sse }
  - { name: all, upstream: sse }
upstreams:
  sse: { targets: [ { address: '@SSE@' } ] }
";

/// Sends a GET and returns the response's body, to be read frame by frame.
async fn open_stream(addr: &str, path: &str) -> (http::StatusCode, hyper::body::Incoming) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "x")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body())
}

/// Reads frames until the end (or an error), with their arrival times.
async fn frames(body: &mut hyper::body::Incoming) -> (Vec<(std::time::Instant, Bytes)>, bool) {
    let mut out = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        out.push((std::time::Instant::now(), data));
                    }
                }
                Err(_) => return false,
            }
        }
        true
    };
    let ended = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the stream neither ended nor broke");
    (out, ended)
}

/// Each event is passed on as it comes: ten events, one by one, about 100 ms apart.
fn assert_spaced(got: &[(std::time::Instant, Bytes)]) {
    let events: Vec<&[u8]> = got.iter().map(|(_, d)| &d[..]).collect();
    assert_eq!(events.len(), 10, "events were coalesced: {events:?}");
    for (i, (_, data)) in got.iter().enumerate() {
        assert_eq!(&data[..], format!("data: {i}\n\n").as_bytes());
    }
    for pair in got.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(50),
            "events arrived together: {gap:?}"
        );
    }
}

#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    let (sse, _closed) = sse_upstream().await;
    let gw = Portico::start(&fill(SSE_CONFIG, &[("SSE", &sse)]));
    let (status, mut body) = open_stream(&gw.addr("web"), "/tick").await;
    assert_eq!(status, 200);
    let (got, ended) = frames(&mut body).await;
    assert!(ended);
    assert_spaced(&got);
}

#[tokio::test]
async fn sse_passes_a_response_shape_plugin_untouched() {
    let (sse, _closed) = sse_upstream().await;
    let gw = Portico::start(&fill(SSE_CONFIG, &[("SSE", &sse)]));
    let (status, mut body) = open_stream(&gw.addr("web"), "/shaped/tick").await;
    assert_eq!(status, 200);
    let (got, ended) = frames(&mut body).await;
    assert!(ended);
    assert_spaced(&got);
}

#[tokio::test]
async fn a_quiet_sse_stream_outlives_the_listener_idle_timeout() {
    let (sse, _closed) = sse_upstream().await;
    let gw = Portico::start(&fill(SSE_CONFIG, &[("SSE", &sse)]));
    // Silent for 2.5 s, past the listener's idle_timeout (1 s): the route's 5m default holds.
    let (_, mut body) = open_stream(&gw.addr("web"), "/quiet/2500").await;
    let (got, ended) = frames(&mut body).await;
    assert!(ended, "the stream was cut");
    let events: Vec<&[u8]> = got.iter().map(|(_, d)| &d[..]).collect();
    assert_eq!(events, [&b"data: first\n\n"[..], b"data: second\n\n"]);
    let silence = got[1].0 - got[0].0;
    assert!(silence >= Duration::from_millis(2400), "{silence:?}");
}

#[tokio::test]
async fn a_quiet_sse_stream_is_cut_at_the_routes_stream_idle_timeout() {
    let (sse, _closed) = sse_upstream().await;
    let gw = Portico::start(&fill(SSE_CONFIG, &[("SSE", &sse)]));
    let (_, mut body) = open_stream(&gw.addr("web"), "/short/quiet/2500").await;
    let started = std::time::Instant::now();
    let (got, ended) = frames(&mut body).await;
    assert!(!ended, "a cut stream must not look complete");
    let events: Vec<&[u8]> = got.iter().map(|(_, d)| &d[..]).collect();
    assert_eq!(events, [&b"data: first\n\n"[..]]);
    let cut = started.elapsed();
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_millis(2400),
        "{cut:?}"
    );
}

#[tokio::test]
async fn a_client_gone_closes_the_upstream_request_at_once() {
    let (sse, mut closed) = sse_upstream().await;
    let gw = Portico::start(&fill(SSE_CONFIG, &[("SSE", &sse)]));
    let (_, mut body) = open_stream(&gw.addr("web"), "/forever").await;
    for _ in 0..2 {
        body.frame().await.unwrap().unwrap();
    }
    drop(body);
    let gone = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(2), closed.recv())
        .await
        .expect("the upstream request outlived its client")
        .unwrap();
    assert!(
        gone.elapsed() < Duration::from_millis(500),
        "{:?}",
        gone.elapsed()
    );
}

#[tokio::test]
async fn a_busy_stream_ends_at_the_routes_max_stream_duration() {
    let (sse, _closed) = sse_upstream().await;
    let config = SSE_CONFIG.replace(
        "  - { name: all, upstream: sse }",
        "  - { name: capped, match: { path_prefix: /capped }, rewrite: { strip_prefix: /capped }, max_stream_duration: 700ms, upstream: sse }\n  - { name: all, upstream: sse }",
    );
    let gw = Portico::start(&fill(&config, &[("SSE", &sse)]));
    let started = std::time::Instant::now();
    let (_, mut body) = open_stream(&gw.addr("web"), "/capped/forever").await;
    let (got, ended) = frames(&mut body).await;
    assert!(!ended, "a cut stream must not look complete");
    // An event every 100 ms, never quiet: cut by its length alone.
    assert!((3..=9).contains(&got.len()), "{} events", got.len());
    let cut = started.elapsed();
    assert!(
        cut >= Duration::from_millis(650) && cut < Duration::from_secs(3),
        "{cut:?}"
    );
}
