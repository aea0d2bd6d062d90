//! A client of etcd's v3 API (3.4 or later) through the JSON gateway every etcd serves on its
//! client URLs (`/v3/kv/range`, `/v3/kv/txn`, `/v3/watch`, `/v3/lease/*`): keys and values
//! in base64, 64-bit numbers as strings. Only what portico needs: reads (at a revision),
//! writes guarded by a key's revision, leases, and one watch stream.
//!
//! Calls go to one endpoint at a time; a failed call moves the next one to the next
//! endpoint, so a node fails over to any member of the etcd cluster.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};

/// Largest answer read from etcd (a config and its history fit easily).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Why an etcd call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Error {
    /// No endpoint answered (connect, timeout, or a broken answer): etcd is unreachable.
    Unreachable(String),
    /// etcd answered with an error (the revision was compacted, say).
    Refused {
        /// The gRPC code etcd gave (11: out of range, e.g. a compacted revision).
        code: i64,
        /// etcd's message.
        message: String,
    },
}

impl Error {
    /// The revision asked for is older than etcd's compaction.
    pub(crate) fn compacted(&self) -> bool {
        matches!(self, Error::Refused { message, .. } if message.contains("compacted"))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Unreachable(why) => write!(f, "etcd is unreachable: {why}"),
            Error::Refused { message, .. } => write!(f, "etcd refused: {message}"),
        }
    }
}

/// One key as etcd keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kv {
    /// The key.
    pub(crate) key: Vec<u8>,
    /// The value.
    pub(crate) value: Vec<u8>,
    /// The revision that last wrote it.
    pub(crate) mod_revision: i64,
    /// The revision that created it.
    pub(crate) create_revision: i64,
    /// How many times it was written since it was created.
    pub(crate) version: i64,
    /// The lease it is bound to (0: none).
    pub(crate) lease: i64,
}

/// One change a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The key was written.
    Put(Kv),
    /// The key was deleted at this revision.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// The deleting revision.
        revision: i64,
    },
}

/// What a watch stream gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WatchItem {
    /// Changes, in revision order, and the store's revision when they were sent.
    Events(Vec<Event>, i64),
    /// The watch asked for revisions etcd already compacted away (up to this one): read
    /// the key afresh.
    Compacted(i64),
}

/// The etcd cluster at `endpoints`.
#[derive(Debug)]
pub(crate) struct Client {
    endpoints: Vec<Endpoint>,
    /// The endpoint calls go to now.
    current: AtomicUsize,
    /// Most time one call may take.
    timeout: Duration,
}

/// One `http://HOST:PORT` client URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// `HOST:PORT`, for the connection and the `Host` field.
    authority: String,
}

/// The `HOST:PORT` of an etcd client URL, or why it is not one.
pub(crate) fn parse_endpoint(url: &str) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("`{url}` is not a URL like http://127.0.0.1:2379"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`{url}`: TLS to etcd is not supported; reach etcd over a trusted network \
                 or a local TLS-terminating sidecar"
            ));
        }
        _ => return Err(format!("`{url}` is not a URL like http://127.0.0.1:2379")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{url}` names no host"));
    };
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("`{url}`: an etcd endpoint has no path"));
    }
    let host = authority.host();
    let port = authority.port_u16().unwrap_or(2379);
    Ok(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

impl Client {
    /// A client of the etcd members at `endpoints` (each `http://HOST:PORT`).
    pub(crate) fn new(endpoints: &[String], timeout: Duration) -> Result<Self, String> {
        if endpoints.is_empty() {
            return Err("no etcd endpoint".into());
        }
        let endpoints = endpoints
            .iter()
            .map(|url| parse_endpoint(url).map(|authority| Endpoint { authority }))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Client {
            endpoints,
            current: AtomicUsize::new(0),
            timeout,
        })
    }

    /// The endpoint calls go to now, as `HOST:PORT`.
    pub(crate) fn endpoint(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.endpoints.len();
        &self.endpoints[i].authority
    }

    /// Moves calls to the next endpoint (after one failed).
    pub(crate) fn fail_over(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// One unary call: `body` posted to `path` on the current endpoint, then, if that does
    /// not answer, on each other endpoint once.
    async fn call(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let body = Bytes::from(body.to_string());
        let mut last = String::new();
        for _ in 0..self.endpoints.len() {
            let authority = self.endpoint().to_owned();
            match tokio::time::timeout(self.timeout, post(&authority, path, body.clone())).await {
                Ok(Ok((status, answer))) => return decode(status, &answer),
                Ok(Err(err)) => last = format!("{authority}: {err}"),
                Err(_) => last = format!("{authority}: no answer in {:?}", self.timeout),
            }
            self.fail_over();
        }
        Err(Error::Unreachable(last))
    }

    /// The key `key` at `revision` (the latest with `None`), and the store's revision.
    pub(crate) async fn get(
        &self,
        key: &[u8],
        revision: Option<i64>,
    ) -> Result<(Option<Kv>, i64), Error> {
        let mut ask = json!({ "key": B64.encode(key) });
        if let Some(revision) = revision {
            ask["revision"] = json!(revision.to_string());
        }
        let answer = self.call("/v3/kv/range", &ask).await?;
        let kv = kvs(&answer).into_iter().next();
        Ok((kv, header_revision(&answer)))
    }

    /// Every key under `prefix`, in key order, and the store's revision.
    pub(crate) async fn list(&self, prefix: &[u8]) -> Result<(Vec<Kv>, i64), Error> {
        let ask = json!({ "key": B64.encode(prefix), "range_end": B64.encode(range_end(prefix)) });
        let answer = self.call("/v3/kv/range", &ask).await?;
        Ok((kvs(&answer), header_revision(&answer)))
    }

    /// Writes `value` at `key` (bound to `lease` unless 0); the new revision.
    pub(crate) async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, Error> {
        let answer = self
            .call("/v3/kv/put", &put_request(key, value, lease))
            .await?;
        Ok(header_revision(&answer))
    }

    /// Writes `value` at `key` only if the key was last written at `expected` (0: only if it
    /// does not exist). `Ok(Some(revision))` when written, `Ok(None)` when the key had moved
    /// on (someone else wrote it).
    pub(crate) async fn put_if(
        &self,
        key: &[u8],
        value: &[u8],
        expected: i64,
        lease: i64,
    ) -> Result<Option<i64>, Error> {
        let ask = json!({
            "compare": [{
                "key": B64.encode(key),
                "target": "MOD",
                "result": "EQUAL",
                "mod_revision": expected.to_string(),
            }],
            "success": [{ "request_put": put_request(key, value, lease) }],
        });
        let answer = self.call("/v3/kv/txn", &ask).await?;
        Ok(truthy(&answer["succeeded"]).then(|| header_revision(&answer)))
    }

    /// A lease of `ttl`; its id.
    pub(crate) async fn grant(&self, ttl: Duration) -> Result<i64, Error> {
        let ask = json!({ "TTL": ttl.as_secs().max(1).to_string() });
        let answer = self.call("/v3/lease/grant", &ask).await?;
        Ok(number(&answer["ID"]))
    }

    /// Renews lease `id`; the seconds it has left (0 or less: it expired).
    pub(crate) async fn keep_alive(&self, id: i64) -> Result<i64, Error> {
        let answer = self
            .call("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))
            .await?;
        // The stream's first (and only) answer.
        Ok(number(&answer["result"]["TTL"]))
    }

    /// Ends lease `id` now: the keys bound to it go.
    pub(crate) async fn revoke(&self, id: i64) -> Result<(), Error> {
        self.call("/v3/lease/revoke", &json!({ "ID": id.to_string() }))
            .await
            .map(drop)
    }

    /// Watches `key` (with `prefix`, every key under it) from `start` on. The stream ends
    /// (`None`) when the connection does; a new watch then resumes where it stopped.
    pub(crate) async fn watch(&self, key: &[u8], prefix: bool, start: i64) -> Result<Watch, Error> {
        let mut ask = json!({ "create_request": {
            "key": B64.encode(key),
            "start_revision": start.to_string(),
        }});
        if prefix {
            ask["create_request"]["range_end"] = json!(B64.encode(range_end(key)));
        }
        let authority = self.endpoint().to_owned();
        let opened = tokio::time::timeout(
            self.timeout,
            open(&authority, "/v3/watch", Bytes::from(ask.to_string())),
        )
        .await;
        match opened {
            Ok(Ok(body)) => Ok(Watch {
                body,
                buffer: Vec::new(),
            }),
            Ok(Err(err)) => {
                self.fail_over();
                Err(Error::Unreachable(format!("{authority}: {err}")))
            }
            Err(_) => {
                self.fail_over();
                Err(Error::Unreachable(format!(
                    "{authority}: no answer in {:?}",
                    self.timeout
                )))
            }
        }
    }
}

/// An open watch stream: one JSON object a line.
pub(crate) struct Watch {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    /// The next changes; `None` when the stream ended (etcd went away, or it was cancelled).
    pub(crate) async fn next(&mut self) -> Option<Result<WatchItem, Error>> {
        loop {
            while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match watch_line(&line) {
                    Ok(Some(item)) => return Some(Ok(item)),
                    Ok(None) => continue,
                    Err(err) => return Some(Err(err)),
                }
            }
            if self.buffer.len() > MAX_ANSWER {
                return Some(Err(Error::Unreachable(
                    "a watch answer is too large".into(),
                )));
            }
            let frame = self.body.frame().await?;
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Err(err) => return Some(Err(Error::Unreachable(err.to_string()))),
            }
        }
    }
}

/// One line of a watch stream: changes, a compaction, or nothing to report (the watch's
/// creation, progress notes).
fn watch_line(line: &[u8]) -> Result<Option<WatchItem>, Error> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| Error::Unreachable(format!("a watch answer is not JSON: {e}")))?;
    if let Some(err) = value.get("error") {
        return Err(refused(err));
    }
    let result = &value["result"];
    let compact = number(&result["compact_revision"]);
    if compact > 0 {
        return Ok(Some(WatchItem::Compacted(compact)));
    }
    if truthy(&result["canceled"]) {
        return Err(Error::Refused {
            code: 1,
            message: result["cancel_reason"]
                .as_str()
                .unwrap_or("the watch was cancelled")
                .to_owned(),
        });
    }
    let Some(events) = result["events"].as_array() else {
        return Ok(None);
    };
    let events = events
        .iter()
        .filter_map(|event| {
            let kv = parse_kv(&event["kv"])?;
            Some(if event["type"].as_str() == Some("DELETE") {
                Event::Delete {
                    key: kv.key,
                    revision: kv.mod_revision,
                }
            } else {
                Event::Put(kv)
            })
        })
        .collect();
    Ok(Some(WatchItem::Events(events, header_revision(result))))
}

fn put_request(key: &[u8], value: &[u8], lease: i64) -> Value {
    let mut put = json!({ "key": B64.encode(key), "value": B64.encode(value) });
    if lease != 0 {
        put["lease"] = json!(lease.to_string());
    }
    put
}

/// The first key after every key that starts with `prefix`.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: to the end of the keyspace.
    vec![0]
}

/// A 64-bit number etcd wrote as a string (or a number); 0 when absent.
fn number(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn truthy(value: &Value) -> bool {
    value.as_bool().unwrap_or(false)
}

fn header_revision(answer: &Value) -> i64 {
    number(&answer["header"]["revision"])
}

fn bytes_of(value: &Value) -> Vec<u8> {
    value
        .as_str()
        .and_then(|s| B64.decode(s).ok())
        .unwrap_or_default()
}

fn parse_kv(value: &Value) -> Option<Kv> {
    value.as_object()?;
    Some(Kv {
        key: bytes_of(&value["key"]),
        value: bytes_of(&value["value"]),
        mod_revision: number(&value["mod_revision"]),
        create_revision: number(&value["create_revision"]),
        version: number(&value["version"]),
        lease: number(&value["lease"]),
    })
}

fn kvs(answer: &Value) -> Vec<Kv> {
    answer["kvs"]
        .as_array()
        .map(|list| list.iter().filter_map(parse_kv).collect())
        .unwrap_or_default()
}

fn refused(err: &Value) -> Error {
    let message = err
        .get("message")
        .or(Some(err))
        .and_then(Value::as_str)
        .unwrap_or("an error")
        .to_owned();
    Error::Refused {
        code: number(&err["code"]),
        message,
    }
}

/// An answer's JSON, or etcd's error in it.
fn decode(status: http::StatusCode, answer: &[u8]) -> Result<Value, Error> {
    let value: Value = serde_json::from_slice(answer).map_err(|_| {
        Error::Unreachable(format!(
            "answered {status} with what is not etcd's JSON (is this an etcd client URL?)"
        ))
    })?;
    if !status.is_success() || value.get("error").is_some() {
        return Err(refused(&value));
    }
    Ok(value)
}

/// Opens a connection to `authority` and posts `body` to `path`; the answer's head and
/// its body, still streaming.
async fn open(authority: &str, path: &str, body: Bytes) -> Result<hyper::body::Incoming, String> {
    let (status, body) = exchange(authority, path, body).await?;
    if !status.is_success() {
        let text = http_body_util::Limited::new(body, 64 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return Err(decode(status, &text)
            .err()
            .map_or_else(|| format!("answered {status}"), |e| e.to_string()));
    }
    Ok(body)
}

async fn exchange(
    authority: &str,
    path: &str,
    body: Bytes,
) -> Result<(http::StatusCode, hyper::body::Incoming), String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    // The connection lives as long as its answer is read.
    tokio::spawn(conn);
    let request = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok((response.status(), response.into_body()))
}

/// One unary call: the answer's status and whole body.
async fn post(
    authority: &str,
    path: &str,
    body: Bytes,
) -> Result<(http::StatusCode, Bytes), String> {
    let (status, body) = exchange(authority, path, body).await?;
    let body = http_body_util::Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_is_the_next_prefix() {
        assert_eq!(range_end(b"/portico/nodes/"), b"/portico/nodes0".to_vec());
        assert_eq!(range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(range_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn endpoints_are_http_urls() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:2379").as_deref(),
            Ok("127.0.0.1:2379")
        );
        assert_eq!(parse_endpoint("http://[::1]:23").as_deref(), Ok("[::1]:23"));
        assert_eq!(parse_endpoint("http://etcd").as_deref(), Ok("etcd:2379"));
        assert!(parse_endpoint("https://etcd:2379").is_err());
        assert!(parse_endpoint("etcd:2379").is_err());
        assert!(parse_endpoint("http://etcd:2379/v3").is_err());
    }

    #[test]
    fn watch_lines_give_events_and_compactions() {
        let created = br#"{"result":{"header":{"revision":"2"},"created":true}}"#;
        assert_eq!(watch_line(created), Ok(None));
        let put = br#"{"result":{"header":{"revision":"3"},"events":[{"kv":{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}}]}}"#;
        let Ok(Some(WatchItem::Events(events, 3))) = watch_line(put) else {
            panic!("a put event");
        };
        assert_eq!(
            events,
            vec![Event::Put(Kv {
                key: b"foo".to_vec(),
                value: b"baz".to_vec(),
                mod_revision: 3,
                create_revision: 2,
                version: 2,
                lease: 0,
            })]
        );
        let deleted =
            br#"{"result":{"header":{"revision":"4"},"events":[{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"4"}}]}}"#;
        assert!(matches!(
            watch_line(deleted),
            Ok(Some(WatchItem::Events(ref e, 4))) if e == &[Event::Delete { key: b"foo".to_vec(), revision: 4 }]
        ));
        let compacted = br#"{"result":{"header":{},"canceled":true,"compact_revision":"3"}}"#;
        assert_eq!(watch_line(compacted), Ok(Some(WatchItem::Compacted(3))));
    }

    #[test]
    fn errors_say_when_a_revision_was_compacted() {
        let answer = br#"{"error":"etcdserver: mvcc: required revision has been compacted","message":"etcdserver: mvcc: required revision has been compacted","code":11}"#;
        let err = decode(http::StatusCode::BAD_REQUEST, answer).unwrap_err();
        assert!(err.compacted());
        assert!(decode(http::StatusCode::OK, b"<html>").is_err());
    }
}
