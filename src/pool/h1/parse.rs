//! An upstream's HTTP/1.1 response, parsed from bytes: the head, how its body is framed, and
//! the body's decoder. No I/O here: the exchange feeds bytes as they arrive.
//!
//! Strict where a lenient reading could frame the message differently from the next hop:
//! a response with both `Content-Length` and `Transfer-Encoding`, a transfer coding other than
//! `chunked` alone, differing or malformed `Content-Length` values, obs-fold, a malformed chunk
//! size or chunk end are all refused, and the exchange answers 502.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version, header};

/// Most header fields in a response head (as hyper's client).
pub(crate) const MAX_HEADERS: usize = 100;

/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a response could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    /// The head is not HTTP/1.x.
    #[error("the upstream's response head is malformed")]
    Head,
    /// The head (or the trailers) went past the limit.
    #[error("the upstream's response head is too large")]
    TooLarge,
    /// The body's framing is ambiguous or not supported.
    #[error("the upstream's response framing is ambiguous")]
    Framing,
    /// A chunk of a chunked body is malformed.
    #[error("the upstream's chunked body is malformed")]
    Chunk,
    /// The connection closed before the message was complete.
    #[error("the upstream closed the connection before the response was complete")]
    Incomplete,
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct Head {
    /// The status.
    pub(crate) status: StatusCode,
    /// HTTP/1.0 or HTTP/1.1.
    pub(crate) version: Version,
    /// The header fields, in order.
    pub(crate) headers: HeaderMap,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// Parses a response head from the start of `buf`, taking it out of `buf` once complete.
/// `Ok(None)`: more bytes are needed (and `buf` is shorter than `max_head`).
pub(crate) fn parse_head(buf: &mut BytesMut, max_head: usize) -> Result<Option<Head>, ParseError> {
    // Not zeroed first: httparse writes the fields it finds.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(ParseError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooLarge),
        Err(_) => return Err(ParseError::Head),
    };
    if len > max_head {
        return Err(ParseError::TooLarge);
    }
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(ParseError::Head)?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(ParseError::Head),
    };
    // Where each field sits in the head (within `max_head`, below 64 KiB), so the values can
    // share its bytes.
    let base = buf.as_ptr() as usize;
    let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    let count = response.headers.len();
    let offset = |p: *const u8| u16::try_from(p as usize - base).map_err(|_| ParseError::TooLarge);
    for (span, field) in spans.iter_mut().zip(response.headers.iter()) {
        let name_len = u16::try_from(field.name.len()).map_err(|_| ParseError::TooLarge)?;
        let value_len = u16::try_from(field.value.len()).map_err(|_| ParseError::TooLarge)?;
        *span = (
            offset(field.name.as_ptr())?,
            name_len,
            offset(field.value.as_ptr())?,
            value_len,
        );
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(name, name_len, value, value_len) in &spans[..count] {
        let (name, name_len) = (usize::from(name), usize::from(name_len));
        let (value, value_len) = (usize::from(value), usize::from(value_len));
        let name =
            HeaderName::from_bytes(&head[name..name + name_len]).map_err(|_| ParseError::Head)?;
        let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len))
            .map_err(|_| ParseError::Head)?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
    }))
}

/// How the body of `head` is delimited, for a request with method HEAD when `head_request`.
pub(crate) fn framing(head: &Head, head_request: bool) -> Result<Framing, ParseError> {
    let te = head.headers.get_all(header::TRANSFER_ENCODING);
    let has_te = te.iter().next().is_some();
    let cl = head.headers.get_all(header::CONTENT_LENGTH);
    let has_cl = cl.iter().next().is_some();
    if has_te && has_cl {
        return Err(ParseError::Framing);
    }
    let length = if has_cl {
        Some(content_length(cl.iter())?)
    } else {
        None
    };
    if has_te {
        if head.version != Version::HTTP_11 {
            return Err(ParseError::Framing);
        }
        // Only `chunked`, alone: another coding would reach the client undecoded once the
        // hop-by-hop field is gone.
        let mut codings = 0;
        for value in te.iter() {
            let text = value.to_str().map_err(|_| ParseError::Framing)?;
            for coding in text.split(',') {
                let coding = coding.trim_matches([' ', '\t']);
                if coding.is_empty() {
                    continue;
                }
                if !coding.eq_ignore_ascii_case("chunked") {
                    return Err(ParseError::Framing);
                }
                codings += 1;
            }
        }
        if codings != 1 {
            return Err(ParseError::Framing);
        }
    }
    let status = head.status.as_u16();
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    Ok(match length {
        Some(n) => Framing::Length(n),
        None if has_te => Framing::Chunked,
        None => Framing::Close,
    })
}

/// The one length every `Content-Length` value (and list member) states.
fn content_length<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Result<u64, ParseError> {
    let mut length = None;
    for value in values {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(ParseError::Framing);
            }
            let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|l| l != n) {
                return Err(ParseError::Framing);
            }
            length = Some(n);
        }
    }
    length.ok_or(ParseError::Framing)
}

/// Whether the connection may carry another exchange after this response, by its version
/// and `Connection` field (the framing decides the rest).
pub(crate) fn keep_alive(head: &Head) -> bool {
    let mut close = false;
    let mut keep = false;
    for value in head.headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    !close && (head.version == Version::HTTP_11 || keep)
}

/// What the decoder has for the body's reader.
#[derive(Debug)]
pub(crate) enum Step {
    /// Body bytes.
    Data(Bytes),
    /// The trailers of a chunked body; the body has ended.
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// More bytes are needed.
    More,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data, with this much left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailers or the final CRLF.
    Trailers,
}

/// Decodes a response body from the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoder {
    /// This much left.
    Length(u64),
    /// A chunked body.
    Chunked(Chunk),
    /// Everything until the connection closes.
    Close,
    /// The body has ended.
    Done,
}

impl Decoder {
    /// The decoder for a body framed so.
    pub(crate) fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunk::Size),
            Framing::Close => Decoder::Close,
        }
    }

    /// Whether the body has ended.
    pub(crate) fn done(&self) -> bool {
        *self == Decoder::Done
    }

    /// The body bytes left, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// The next step from `buf` (taking what it consumes); `max_trailers` bounds the trailer
    /// section.
    pub(crate) fn decode(
        &mut self,
        buf: &mut BytesMut,
        max_trailers: usize,
    ) -> Result<Step, ParseError> {
        match *self {
            Decoder::Done => Ok(Step::End),
            Decoder::Close if buf.is_empty() => Ok(Step::More),
            Decoder::Close => Ok(Step::Data(buf.split().freeze())),
            Decoder::Length(_) if buf.is_empty() => Ok(Step::More),
            Decoder::Length(left) => {
                let take = left.min(buf.len() as u64);
                let data = buf.split_to(take as usize).freeze();
                *self = if take == left {
                    Decoder::Done
                } else {
                    Decoder::Length(left - take)
                };
                Ok(Step::Data(data))
            }
            Decoder::Chunked(state) => self.chunked(state, buf, max_trailers),
        }
    }

    /// The connection closed: the end of a read-to-close body, else a cut one.
    pub(crate) fn eof(&mut self) -> Result<Step, ParseError> {
        match self {
            Decoder::Close | Decoder::Done => {
                *self = Decoder::Done;
                Ok(Step::End)
            }
            _ => Err(ParseError::Incomplete),
        }
    }

    fn chunked(
        &mut self,
        mut state: Chunk,
        buf: &mut BytesMut,
        max_trailers: usize,
    ) -> Result<Step, ParseError> {
        loop {
            match state {
                Chunk::Size => {
                    let Some(size) = chunk_size(buf)? else {
                        *self = Decoder::Chunked(state);
                        return Ok(Step::More);
                    };
                    state = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        *self = Decoder::Chunked(state);
                        return Ok(Step::More);
                    }
                    let take = left.min(buf.len() as u64);
                    let data = buf.split_to(take as usize).freeze();
                    state = if take == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - take)
                    };
                    *self = Decoder::Chunked(state);
                    // Past the chunk's end, the framing that follows is taken now when it
                    // is there, so the last data frame can tell that the body ended.
                    if state == Chunk::DataEnd {
                        self.settle(buf)?;
                    }
                    return Ok(Step::Data(data));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        *self = Decoder::Chunked(state);
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ParseError::Chunk);
                    }
                    buf.advance(2);
                    state = Chunk::Size;
                }
                Chunk::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Decoder::Done;
                        return Ok(Step::End);
                    }
                    let Some(trailers) = trailers(buf, max_trailers)? else {
                        *self = Decoder::Chunked(state);
                        return Ok(Step::More);
                    };
                    *self = Decoder::Done;
                    return Ok(Step::Trailers(trailers));
                }
            }
        }
    }

    /// Takes the framing after a chunk's data (its CRLF, the next size line, and the final
    /// CRLF of a body without trailers) as far as `buf` has it, without data.
    fn settle(&mut self, buf: &mut BytesMut) -> Result<(), ParseError> {
        loop {
            match *self {
                Decoder::Chunked(Chunk::DataEnd) if buf.len() >= 2 => {
                    if &buf[..2] != b"\r\n" {
                        return Err(ParseError::Chunk);
                    }
                    buf.advance(2);
                    *self = Decoder::Chunked(Chunk::Size);
                }
                Decoder::Chunked(Chunk::Size) => match chunk_size(buf)? {
                    Some(0) => *self = Decoder::Chunked(Chunk::Trailers),
                    Some(n) => {
                        *self = Decoder::Chunked(Chunk::Data(n));
                        return Ok(());
                    }
                    None => return Ok(()),
                },
                Decoder::Chunked(Chunk::Trailers) if buf.starts_with(b"\r\n") => {
                    buf.advance(2);
                    *self = Decoder::Done;
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
    }
}

/// A chunk-size line (`HEX [ws] [; extensions] CRLF`) at the start of `buf`, taken out of it.
fn chunk_size(buf: &mut BytesMut) -> Result<Option<u64>, ParseError> {
    let Some(lf) = buf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
        if buf.len() >= MAX_CHUNK_LINE {
            return Err(ParseError::Chunk);
        }
        return Ok(None);
    };
    let line = &buf[..lf];
    let Some(line) = line.strip_suffix(b"\r") else {
        return Err(ParseError::Chunk);
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(ParseError::Chunk);
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16).ok_or(ParseError::Chunk)?;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or(ParseError::Chunk)?;
    }
    let rest = &line[digits..];
    let rest = rest.trim_ascii_start();
    if !rest.is_empty() {
        // Extensions are ignored, but must be printable text after a `;`.
        let valid = rest[0] == b';' && rest.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        if !valid {
            return Err(ParseError::Chunk);
        }
    }
    buf.advance(lf + 1);
    Ok(Some(size))
}

/// A trailer section ending in an empty line at the start of `buf`, taken out of it.
fn trailers(buf: &mut BytesMut, max: usize) -> Result<Option<HeaderMap>, ParseError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, parsed) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) if buf.len() >= max => return Err(ParseError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooLarge),
        Err(_) => return Err(ParseError::Chunk),
    };
    if len > max {
        return Err(ParseError::TooLarge);
    }
    let mut map = HeaderMap::with_capacity(parsed.len());
    for field in parsed {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| ParseError::Chunk)?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| ParseError::Chunk)?;
        map.append(name, value);
    }
    buf.advance(len);
    Ok(Some(map))
}
