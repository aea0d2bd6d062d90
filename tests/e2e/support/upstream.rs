//! A real HTTP upstream on 127.0.0.1:0 that records what it receives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub peer: SocketAddr,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body_len: usize,
}

pub type Body = BoxBody<Bytes, std::io::Error>;

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A test upstream server.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    /// `GET /healthz` answers 200 while this is true, 503 otherwise.
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}

impl TestUpstream {
    /// Starts an upstream that answers by path (see `answer`).
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let name_owned = name.to_owned();
        let seen2 = Arc::clone(&seen);
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let conns2 = Arc::clone(&conns);
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let healthy2 = Arc::clone(&healthy);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let seen = Arc::clone(&seen2);
                let name = name_owned.clone();
                let healthy = Arc::clone(&healthy2);
                let conn = tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let seen = Arc::clone(&seen);
                        let name = name.clone();
                        let healthy = healthy.load(std::sync::atomic::Ordering::Relaxed);
                        async move {
                            if req.uri().path() == "/healthz" {
                                let status = if healthy { 200 } else { 503 };
                                return Ok::<_, Infallible>(
                                    Response::builder().status(status).body(full("ok")).unwrap(),
                                );
                            }
                            Ok::<_, Infallible>(answer(&name, peer, &seen, req).await)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
                conns2.lock().unwrap().push(conn.abort_handle());
            }
        });
        TestUpstream {
            addr,
            name: name.to_owned(),
            seen,
            task,
            conns,
            healthy,
        }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Stops listening and cuts every open connection, as a crashed server would.
    pub fn kill(&self) {
        self.task.abort();
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy
            .store(healthy, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }

    /// Waits (bounded) until the upstream has seen at least `n` requests.
    pub async fn wait_count(&self, n: usize, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while self.count() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} saw {} requests, not {n}, within {timeout:?}",
                self.name,
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn answer(
    name: &str,
    peer: SocketAddr,
    seen: &Mutex<Vec<Seen>>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let record = |body_len| {
        seen.lock().unwrap().push(Seen {
            peer,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body_len,
        })
    };
    if path == "/upgrade" {
        record(0);
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on.await {
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(full(""))
            .unwrap();
    }
    if path == "/echo" {
        // Stream the body back as it arrives, counting it.
        record(0);
        let body = req.into_body().map_err(std::io::Error::other).boxed();
        return Response::new(body);
    }
    if path == "/count" {
        let mut total = 0usize;
        let mut body = req.into_body();
        let mut seen_req = Seen {
            peer,
            method: Method::POST,
            uri: Uri::from_static("/count"),
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            body_len: 0,
        };
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => total += f.data_ref().map_or(0, |d| d.len()),
                // An incomplete body is not a request the upstream received.
                Err(_) => {
                    return Response::builder()
                        .status(400)
                        .body(full("broken body"))
                        .unwrap();
                }
            }
        }
        seen_req.body_len = total;
        seen.lock().unwrap().push(seen_req);
        return Response::new(full(total.to_string()));
    }
    record(0);
    if let Some(code) = path.strip_prefix("/status/") {
        let status = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        return Response::builder().status(status).body(full("")).unwrap();
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
        return Response::new(full("slow"));
    }
    if let Some(n) = path.strip_prefix("/big/") {
        let total: usize = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(0usize, move |sent| {
            let chunk = chunk.clone();
            async move {
                if sent >= total {
                    return None;
                }
                let n = chunk.len().min(total - sent);
                Some((
                    Ok::<_, std::io::Error>(Frame::data(chunk.slice(..n))),
                    sent + n,
                ))
            }
        });
        return Response::new(BodyExt::boxed(StreamBody::new(stream)));
    }
    if path == "/trailers" {
        let frames = vec![
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"body"))),
            Ok(Frame::trailers({
                let mut t = HeaderMap::new();
                t.insert("x-checksum", "abc".parse().unwrap());
                t
            })),
        ];
        return Response::builder()
            .header("trailer", "x-checksum")
            .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
            .unwrap();
    }
    if path == "/json" {
        return Response::builder()
            .header("content-type", "application/json")
            .header("x-internal", "1")
            .body(full(r#"{"secret":"s","user":{"mail":"a@b"},"n":1}"#))
            .unwrap();
    }
    if path == "/close" {
        return Response::builder()
            .header("connection", "close")
            .body(full(format!("{name} closes")))
            .unwrap();
    }
    Response::builder()
        .header("x-upstream", name)
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must be removed")
        .header("keep-alive", "timeout=5")
        .body(full(format!("{name} {}", req.uri())))
        .unwrap()
}
