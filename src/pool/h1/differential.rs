//! The response parser against hyper's client: the same bytes read by both must give the same
//! status, fields, body, trailers and end of message, or be refused by portico's parser where
//! it is stricter on purpose. Used by the `h1_response` fuzz target and the property tests.

use bytes::BytesMut;
use http::HeaderMap;

use super::parse::{self, Decoder, Framing, Step};

/// What reading one response came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Read {
    /// Refused (malformed, ambiguous, cut short).
    Refused,
    /// A complete message.
    Message {
        /// The final status.
        status: u16,
        /// The head's fields, in order.
        headers: Vec<(String, Vec<u8>)>,
        /// The body, decoded.
        body: Vec<u8>,
        /// The trailers' fields, in order.
        trailers: Vec<(String, Vec<u8>)>,
        /// Where the message ended, when its framing says (not for a body read to the
        /// connection's close, nor after a 101).
        end: Option<usize>,
    },
}

fn fields(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn message(
    status: http::StatusCode,
    headers: &HeaderMap,
    body: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
    end: Option<usize>,
) -> Read {
    Read::Message {
        status: status.as_u16(),
        headers: fields(headers),
        body,
        trailers,
        end,
    }
}

/// portico's parser over `data`, given to it in pieces of `step` bytes (any split must read
/// the same); the connection closes after the last byte.
pub(crate) fn ours(data: &[u8], head_request: bool, step: usize) -> Read {
    let step = step.max(1);
    let mut fed = 0;
    let mut buf = BytesMut::new();
    let mut feed = |buf: &mut BytesMut| {
        let next = (fed + step).min(data.len());
        buf.extend_from_slice(&data[fed..next]);
        let more = next > fed;
        fed = next;
        more
    };
    let head = loop {
        match parse::parse_head(&mut buf, super::super::UPSTREAM_READ_AHEAD) {
            Err(_) => return Read::Refused,
            Ok(Some(head)) => {
                let status = head.status.as_u16();
                if (100..200).contains(&status) && status != 101 {
                    continue;
                }
                break head;
            }
            Ok(None) => {
                if !feed(&mut buf) {
                    return Read::Refused;
                }
            }
        }
    };
    let Ok(framing) = parse::framing(&head, head_request) else {
        return Read::Refused;
    };
    let mut decoder = Decoder::new(framing);
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    loop {
        match decoder.decode(&mut buf, super::super::UPSTREAM_READ_AHEAD) {
            Err(_) => return Read::Refused,
            Ok(Step::Data(data)) => body.extend_from_slice(&data),
            Ok(Step::Trailers(map)) => {
                trailers = fields(&map);
                break;
            }
            Ok(Step::End) => break,
            Ok(Step::More) => {
                if !feed(&mut buf) && decoder.eof().is_err() {
                    return Read::Refused;
                }
            }
        }
    }
    let delimited =
        framing != Framing::Close && head.status != http::StatusCode::SWITCHING_PROTOCOLS;
    let end = delimited.then(|| fed - buf.len());
    message(head.status, &head.headers, body, trailers, end)
}

/// hyper's client over `data` (the connection closes after it), on a runtime of its own.
pub(crate) fn hyper(data: &[u8], head_request: bool) -> Read {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Read::Refused;
    };
    runtime.block_on(hyper_read(data.to_vec(), head_request))
}

async fn hyper_read(data: Vec<u8>, head_request: bool) -> Read {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let len = data.len();
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(client))
    .await
    else {
        return Read::Refused;
    };
    let driver = tokio::spawn(conn.without_shutdown());
    let peer = tokio::spawn(async move {
        // The request first (hyper writes it before it reads), then the answer and a close.
        let mut request = [0u8; 1024];
        let _ = server.read(&mut request).await;
        let _ = server.write_all(&data).await;
        let _ = server.shutdown().await;
        server
    });
    let method = if head_request {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    let request = http::Request::builder()
        .method(method)
        .uri("/")
        .header("host", "x")
        .body(http_body_util::Empty::new());
    let Ok(request) = request else {
        return Read::Refused;
    };
    let waited = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let response = sender.send_request(request).await.ok()?;
        let (head, body) = response.into_parts();
        let collected = body.collect().await.ok()?;
        let trailers = collected.trailers().map(fields).unwrap_or_default();
        let body = collected.to_bytes().to_vec();
        Some((head, body, trailers))
    })
    .await;
    let Ok(Some((head, body, trailers))) = waited else {
        driver.abort();
        return Read::Refused;
    };
    drop(sender);
    // Where the message ended: what hyper read beyond it, and what it left unread.
    let end = match tokio::time::timeout(std::time::Duration::from_secs(5), driver).await {
        Ok(Ok(Ok(parts))) => {
            let mut io = parts.io.into_inner();
            let mut rest = Vec::new();
            let _ = io.read_to_end(&mut rest).await;
            Some(len - parts.read_buf.len() - rest.len())
        }
        _ => None,
    };
    let _ = peer.await;
    message(head.status, &head.headers, body, trailers, end)
}

/// Whether portico's parser may refuse this response although hyper reads it: its framing is
/// ambiguous (both `Content-Length` and `Transfer-Encoding`, a coding besides `chunked`,
/// `Transfer-Encoding` in HTTP/1.0), or a chunk is malformed in a way hyper forgives.
pub(crate) fn stricter(data: &[u8]) -> bool {
    let mut fields = [httparse::EMPTY_HEADER; parse::MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let mut rest = data;
    loop {
        let Ok(httparse::Status::Complete(len)) = response.parse(rest) else {
            return true;
        };
        if response
            .code
            .is_some_and(|c| (100..200).contains(&c) && c != 101)
        {
            rest = &rest[len..];
            fields = [httparse::EMPTY_HEADER; parse::MAX_HEADERS];
            response = httparse::Response::new(&mut fields);
            continue;
        }
        break;
    }
    let named = |name: &str| {
        response
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    let te = named("transfer-encoding");
    let cl = named("content-length");
    if !te.is_empty() {
        let codings: Vec<String> = te
            .iter()
            .flat_map(|v| v.split(',').map(|c| c.trim().to_owned()))
            .filter(|c| !c.is_empty())
            .collect();
        let chunked_alone = codings.len() == 1 && codings[0] == "chunked";
        if !cl.is_empty() || !chunked_alone || response.version != Some(1) {
            return true;
        }
        return false;
    }
    // Several values, a list, or a malformed value (hyper skips it where no body follows).
    let malformed =
        |v: &String| v.trim().is_empty() || !v.trim().bytes().all(|b| b.is_ascii_digit());
    cl.len() > 1 || cl.iter().any(|v| v.contains(',') || malformed(v))
}

/// Reads `data` with both (the first byte says HEAD when odd, the second how portico's parser
/// is fed) and panics when they disagree beyond what [`stricter`] allows.
pub(crate) fn check(data: &[u8]) {
    let (head_request, step, data) = match data {
        [flags, step, rest @ ..] => (flags & 1 == 1, usize::from(*step), rest),
        _ => return,
    };
    let whole = ours(data, head_request, data.len());
    let split = ours(data, head_request, step);
    assert_eq!(whole, split, "the split changed the reading");
    let theirs = hyper(data, head_request);
    match (&whole, &theirs) {
        (Read::Refused, Read::Refused) => {}
        (Read::Refused, Read::Message { .. }) => {
            assert!(stricter(data), "refused what hyper reads: {theirs:?}");
        }
        (Read::Message { .. }, Read::Refused) => {
            panic!("read what hyper refuses: {whole:?}");
        }
        (
            Read::Message {
                status,
                headers,
                body,
                trailers,
                end,
            },
            Read::Message {
                status: s,
                headers: h,
                body: b,
                trailers: t,
                end: e,
            },
        ) => {
            assert_eq!((status, headers, body, trailers), (s, h, b, t));
            // hyper tells the end only when the connection stayed usable.
            if let (Some(end), Some(e)) = (end, e) {
                assert_eq!(end, e, "the message ends elsewhere");
            }
        }
    }
}
