//! `grpc_web`: gRPC-Web clients (browsers) to gRPC upstreams.
//!
//! A gRPC-Web call (`application/grpc-web`, `application/grpc-web+proto`, or the base64 text
//! forms `application/grpc-web-text[+proto]`) is sent on as gRPC: `content-type:
//! application/grpc[+proto]`, `te: trailers`, and for the text forms the body decoded from
//! base64. The answer goes back as gRPC-Web: the upstream's message frames as they come,
//! then its trailers as a last frame (flag `0x80`, then `name:value\r\n` lines), the whole
//! body base64-encoded for the text forms. A trailers-only answer keeps its status in the
//! head, as gRPC-Web allows. Unary and server-streaming calls work; gRPC-Web has no client
//! streams.

use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header, request, response};

use super::{BodyFilter, Flow, Plugin};
use crate::body::{BodyError, ChunkFilter};
use crate::ctx::RequestCtx;
use crate::error::ProxyError;

/// How a gRPC-Web call encodes its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Binary frames, as gRPC's.
    Binary,
    /// The frames in base64.
    Text,
}

/// The gRPC-Web mode of a request's `content-type`, if it is a gRPC-Web call.
pub(crate) fn mode(headers: &HeaderMap) -> Option<Mode> {
    let value = headers.get(header::CONTENT_TYPE)?.as_bytes();
    let rest = value
        .get(..20)
        .filter(|p| p.eq_ignore_ascii_case(b"application/grpc-web"))
        .map(|_| &value[20..])?;
    let (mode, rest) = match rest.get(..5) {
        Some(t) if t.eq_ignore_ascii_case(b"-text") => (Mode::Text, &rest[5..]),
        _ => (Mode::Binary, rest),
    };
    matches!(rest.first(), None | Some(b'+' | b';')).then_some(mode)
}

/// The `grpc-status` a gRPC-Web answer carried in its last frame, for the access log.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrailerStatus(pub(crate) Arc<OnceLock<HeaderValue>>);

/// What the response steps need of a gRPC-Web call.
#[derive(Debug, Clone)]
struct WebCall {
    mode: Mode,
    /// The client's content type, sent back on the answer.
    content_type: HeaderValue,
}

/// A compiled `grpc_web`.
#[derive(Debug)]
pub(crate) struct GrpcWeb;

impl Plugin for GrpcWeb {
    fn name(&self) -> &'static str {
        "grpc_web"
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        let Some(mode) = mode(&head.headers) else {
            return Ok(Flow::Continue);
        };
        let headers = &mut head.headers;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/grpc-web"));
        let proto = content_type
            .as_bytes()
            .windows(6)
            .any(|w| w.eq_ignore_ascii_case(b"+proto"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(if proto {
                "application/grpc+proto"
            } else {
                "application/grpc"
            }),
        );
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.remove("x-grpc-web");
        if mode == Mode::Text {
            // Decoding changes the length.
            headers.remove(header::CONTENT_LENGTH);
        }
        ctx.slots.insert(WebCall { mode, content_type });
        ctx.slots.insert(TrailerStatus::default());
        Ok(Flow::Continue)
    }

    fn request_body(&self, ctx: &mut RequestCtx, _head: &request::Parts) -> Option<BodyFilter> {
        let call = ctx.slots.get::<WebCall>()?;
        (call.mode == Mode::Text).then(|| BodyFilter::Chunks(Box::new(Decode::default())))
    }

    fn on_response(&self, ctx: &RequestCtx, head: &mut response::Parts) {
        let Some(call) = ctx.slots.get::<WebCall>() else {
            return;
        };
        // What portico or the upstream answered as gRPC goes back as gRPC-Web.
        if is_grpc(&head.headers) {
            head.headers
                .insert(header::CONTENT_TYPE, call.content_type.clone());
            head.headers.remove(header::CONTENT_LENGTH);
            head.extensions.insert(Converting);
        }
    }

    fn response_body(&self, ctx: &RequestCtx, head: &response::Parts) -> Option<BodyFilter> {
        let call = ctx.slots.get::<WebCall>()?;
        head.extensions.get::<Converting>()?;
        Some(BodyFilter::Chunks(Box::new(Encode {
            mode: call.mode,
            carry: BytesMut::new(),
            status: ctx
                .slots
                .get::<TrailerStatus>()
                .cloned()
                .unwrap_or_default(),
        })))
    }
}

/// The flag of the frame that carries trailers in a body (gRPC-Web's last frame).
pub(crate) const TRAILER_FLAG: u8 = 0x80;

/// Trailer fields as a body frame: the flag, a 4-byte length, then `name:value\r\n` lines.
pub(crate) fn trailer_frame<'a>(
    fields: impl IntoIterator<Item = (&'a http::HeaderName, &'a HeaderValue)>,
) -> BytesMut {
    let mut block = BytesMut::new();
    for (name, value) in fields {
        block.put_slice(name.as_str().as_bytes());
        block.put_u8(b':');
        block.put_slice(value.as_bytes());
        block.put_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(5 + block.len());
    frame.put_u8(TRAILER_FLAG);
    frame.put_u32(u32::try_from(block.len()).unwrap_or(u32::MAX));
    frame.put_slice(&block);
    frame
}

/// Marks a response whose body is turned into gRPC-Web.
#[derive(Debug, Clone, Copy)]
struct Converting;

/// Whether a message's `content-type` is gRPC's: `application/grpc`, alone or with a
/// `+format` or parameters (gRPC-Web's `application/grpc-web` is not).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// Base64 text to bytes, across chunk boundaries; each 4-character group decodes alone, so
/// separately padded segments (one per message) decode too.
#[derive(Default)]
struct Decode {
    carry: Vec<u8>,
}

impl ChunkFilter for Decode {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BodyError> {
        self.carry
            .extend(data.iter().filter(|b| !b.is_ascii_whitespace()));
        let whole = self.carry.len() / 4 * 4;
        let mut out = Vec::with_capacity(whole / 4 * 3);
        for group in self.carry[..whole].chunks(4) {
            STANDARD
                .decode_vec(group, &mut out)
                .map_err(|e| format!("invalid grpc-web-text body: {e}"))?;
        }
        self.carry.drain(..whole);
        Ok(out.into())
    }

    fn wants_end(&self) -> bool {
        true
    }

    fn end(
        &mut self,
        trailers: Option<HeaderMap>,
    ) -> Result<(Bytes, Option<HeaderMap>), BodyError> {
        if !self.carry.is_empty() {
            return Err("the grpc-web-text body ends inside a base64 group".into());
        }
        Ok((Bytes::new(), trailers))
    }
}

/// The upstream's frames on to the client, its trailers as the last frame; in text mode all
/// of it in base64 (whole 3-byte groups as they come, the rest padded at the end).
struct Encode {
    mode: Mode,
    carry: BytesMut,
    status: TrailerStatus,
}

impl Encode {
    fn text(&mut self, data: &[u8], last: bool) -> Bytes {
        self.carry.extend_from_slice(data);
        let take = if last {
            self.carry.len()
        } else {
            self.carry.len() / 3 * 3
        };
        let group = self.carry.split_to(take);
        Bytes::from(STANDARD.encode(&group))
    }
}

impl ChunkFilter for Encode {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BodyError> {
        Ok(match self.mode {
            Mode::Binary => data,
            Mode::Text => self.text(&data, false),
        })
    }

    fn wants_end(&self) -> bool {
        true
    }

    fn end(
        &mut self,
        trailers: Option<HeaderMap>,
    ) -> Result<(Bytes, Option<HeaderMap>), BodyError> {
        let mut frame = BytesMut::new();
        if let Some(trailers) = &trailers {
            if let Some(status) = trailers.get("grpc-status") {
                let _ = self.status.0.set(status.clone());
            }
            frame = trailer_frame(trailers);
        }
        let out = match self.mode {
            Mode::Binary => frame.freeze(),
            Mode::Text => {
                // The messages' base64 ends padded; the trailer frame is its own segment.
                let mut out = BytesMut::from(&self.text(&[], true)[..]);
                if !frame.is_empty() {
                    out.put_slice(STANDARD.encode(&frame).as_bytes());
                }
                out.freeze()
            }
        };
        Ok((out, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn modes_are_told_by_the_content_type() {
        assert_eq!(mode(&ct("application/grpc-web")), Some(Mode::Binary));
        assert_eq!(mode(&ct("application/grpc-web+proto")), Some(Mode::Binary));
        assert_eq!(mode(&ct("application/grpc-web-text")), Some(Mode::Text));
        assert_eq!(
            mode(&ct("Application/gRPC-Web-Text+proto")),
            Some(Mode::Text)
        );
        assert_eq!(mode(&ct("application/grpc")), None);
        assert_eq!(mode(&ct("application/grpc-webx")), None);
    }

    #[test]
    fn text_decodes_across_chunks_and_padded_segments() {
        let mut d = Decode::default();
        let msg = STANDARD.encode(b"\x00\x00\x00\x00\x02hi");
        let two = format!("{msg}{}", STANDARD.encode(b"\x00\x00\x00\x00\x01z"));
        let (a, b) = two.split_at(5);
        let mut out = d
            .chunk(Bytes::copy_from_slice(a.as_bytes()))
            .unwrap()
            .to_vec();
        out.extend_from_slice(&d.chunk(Bytes::copy_from_slice(b.as_bytes())).unwrap());
        assert_eq!(out, b"\x00\x00\x00\x00\x02hi\x00\x00\x00\x00\x01z");
        assert!(d.end(None).is_ok());
        let mut cut = Decode::default();
        cut.chunk(Bytes::from_static(b"AAA")).unwrap();
        assert!(cut.end(None).is_err());
        assert!(
            Decode::default()
                .chunk(Bytes::from_static(b"!!!!"))
                .is_err()
        );
    }

    #[test]
    fn trailers_become_the_last_frame() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("ok"));
        let mut e = Encode {
            mode: Mode::Binary,
            carry: BytesMut::new(),
            status: TrailerStatus::default(),
        };
        assert_eq!(
            e.chunk(Bytes::from_static(b"\x00\x00\x00\x00\x00"))
                .unwrap(),
            &b"\x00\x00\x00\x00\x00"[..]
        );
        let (last, left) = e.end(Some(trailers.clone())).unwrap();
        assert!(left.is_none());
        let block = b"grpc-status:0\r\ngrpc-message:ok\r\n";
        let mut want = vec![0x80, 0, 0, 0, block.len() as u8];
        want.extend_from_slice(block);
        assert_eq!(&last[..], &want[..]);
        assert_eq!(e.status.0.get().unwrap(), "0");

        let mut t = Encode {
            mode: Mode::Text,
            carry: BytesMut::new(),
            status: TrailerStatus::default(),
        };
        let mut out = t
            .chunk(Bytes::from_static(b"\x00\x00\x00\x00\x02h"))
            .unwrap()
            .to_vec();
        assert_eq!(out.len(), 8, "whole groups only");
        out.extend_from_slice(&t.chunk(Bytes::from_static(b"i")).unwrap());
        let (last, _) = t.end(Some(trailers)).unwrap();
        out.extend_from_slice(&last);
        let text = String::from_utf8(out).unwrap();
        let (messages, frame) = text.split_at(STANDARD.encode(b"\x00\x00\x00\x00\x02hi").len());
        assert_eq!(
            STANDARD.decode(messages).unwrap(),
            b"\x00\x00\x00\x00\x02hi"
        );
        assert_eq!(STANDARD.decode(frame).unwrap(), want);
    }
}
