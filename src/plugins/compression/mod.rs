//! `compression`: answers compressed with zstd, brotli or gzip as the client's
//! `Accept-Encoding` allows, streamed chunk by chunk; request bodies optionally decoded,
//! bounded in decoded bytes.
//!
//! The plugin runs in the access phase, so it is the first of its chain: its response steps
//! run last (they go last plugin first), after every plugin that edits the body or its head.

mod codec;
pub(crate) mod negotiate;

use http::{HeaderMap, HeaderValue, StatusCode, header, request, response};

use super::{BodyFilter, BuildError, Flow, Phase, Plugin};
use crate::config::spec_compression::{CompressionSpec, Encoding};
use crate::ctx::RequestCtx;
use crate::error::ProxyError;

pub(crate) use negotiate::{MediaRange, choose};

/// `compression`, compiled.
#[derive(Debug)]
pub(crate) struct Compression {
    encodings: Vec<Encoding>,
    min_size: u64,
    types: Vec<MediaRange>,
    levels: codec::Levels,
    /// Most decoded bytes of a request body, when request bodies are decoded.
    decompress: Option<u64>,
}

/// What the request said that the response steps need: the encoding chosen, when the answer
/// may be compressed at all.
#[derive(Debug, Clone, Copy)]
struct Chosen(Encoding);

/// The request body's encoding, decoded on its way upstream.
#[derive(Debug, Clone, Copy)]
struct Decode(Encoding);

impl Compression {
    /// Compiles the spec; a content type that is no media range is shown at its position.
    pub(crate) fn new(spec: &CompressionSpec) -> Result<Self, BuildError> {
        let types = spec
            .content_types
            .iter()
            .map(|t| {
                MediaRange::parse(&t.value).ok_or_else(|| BuildError::At {
                    pos: t.pos,
                    message: format!(
                        "content type `{}`: expected like text/html, text/* or */*+json",
                        t.value
                    ),
                })
            })
            .collect::<Result<_, _>>()?;
        let mut encodings: Vec<Encoding> = Vec::with_capacity(spec.encodings.len());
        for encoding in &spec.encodings {
            if encodings.contains(&encoding.value) {
                return Err(BuildError::At {
                    pos: encoding.pos,
                    message: format!(
                        "encoding `{}` is listed twice",
                        codec::token(encoding.value)
                    ),
                });
            }
            encodings.push(encoding.value);
        }
        Ok(Compression {
            encodings,
            min_size: spec.min_size.0,
            types,
            levels: codec::Levels::of(spec.level),
            decompress: spec.request.decompress.then_some(spec.request.max_size.0),
        })
    }

    /// Whether answers with these headers are of a type compressed here.
    fn compressible(&self, headers: &HeaderMap) -> bool {
        let Some(essence) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim)
        else {
            return false;
        };
        self.types.iter().any(|range| range.matches(essence))
    }

    /// Whether this answer must go as it is (besides its type).
    fn untouchable(&self, head: &response::Parts) -> bool {
        let headers = &head.headers;
        head.status == StatusCode::PARTIAL_CONTENT
            || headers.contains_key(header::CONTENT_RANGE)
            || headers
                .get(header::CONTENT_ENCODING)
                .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
            || headers
                .get_all(header::CACHE_CONTROL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
            || headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|len| len < self.min_size)
    }
}

impl Plugin for Compression {
    fn name(&self) -> &'static str {
        "compression"
    }

    fn phase(&self) -> Phase {
        Phase::Access
    }

    fn observe(&self, ctx: &mut RequestCtx, head: &request::Parts) {
        // A HEAD has no body to compress; a range is of the bytes as the upstream has them.
        if head.method == http::Method::HEAD || head.headers.contains_key(header::RANGE) {
            return;
        }
        // Nothing noted (no allocation) when the answer goes as it is anyway.
        if let Some(encoding) = choose(&head.headers, &self.encodings) {
            ctx.slots.insert(Chosen(encoding));
        }
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        if self.decompress.is_none() {
            return Ok(Flow::Continue);
        }
        let encoding = match head
            .headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.as_bytes().trim_ascii())
        {
            Some(v) if v.eq_ignore_ascii_case(b"gzip") || v.eq_ignore_ascii_case(b"x-gzip") => {
                Encoding::Gzip
            }
            Some(v) if v.eq_ignore_ascii_case(b"br") => Encoding::Br,
            Some(v) if v.eq_ignore_ascii_case(b"zstd") => Encoding::Zstd,
            // None, or an encoding (or a list of them) not decoded here: passed on as it is.
            _ => return Ok(Flow::Continue),
        };
        head.headers.remove(header::CONTENT_ENCODING);
        head.headers.remove(header::CONTENT_LENGTH);
        ctx.slots.insert(Decode(encoding));
        Ok(Flow::Continue)
    }

    fn request_body(&self, ctx: &mut RequestCtx, _head: &request::Parts) -> Option<BodyFilter> {
        let Decode(encoding) = *ctx.slots.get::<Decode>()?;
        let limit = self.decompress?;
        Some(BodyFilter::Chunks(Box::new(codec::Decoder::new(
            encoding, limit,
        ))))
    }

    fn on_response(&self, _ctx: &RequestCtx, head: &mut response::Parts) {
        // Every answer of a compressible type varies with Accept-Encoding, compressed this
        // time or not, so caches downstream keep the encodings apart.
        if self.compressible(&head.headers) {
            vary_accept_encoding(&mut head.headers);
        }
    }

    fn response_body_head(
        &self,
        ctx: &RequestCtx,
        head: &mut response::Parts,
    ) -> Option<BodyFilter> {
        let Chosen(encoding) = *ctx.slots.get::<Chosen>()?;
        if !self.compressible(&head.headers) || self.untouchable(head) {
            return None;
        }
        let encoder = codec::Encoder::new(encoding, self.levels).ok()?;
        let headers = &mut head.headers;
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(codec::token(encoding)),
        );
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::ACCEPT_RANGES);
        vary_accept_encoding(headers);
        weaken_etag(headers);
        Some(BodyFilter::Chunks(Box::new(encoder)))
    }
}

/// Adds `Accept-Encoding` to `Vary`, merged into one field with what is there.
fn vary_accept_encoding(headers: &mut HeaderMap) {
    let mut merged = String::new();
    for value in headers.get_all(header::VARY) {
        let Ok(text) = value.to_str() else {
            return;
        };
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token == "*" || token.eq_ignore_ascii_case("accept-encoding") {
                return;
            }
            if !merged.is_empty() {
                merged.push_str(", ");
            }
            merged.push_str(token);
        }
    }
    if merged.is_empty() {
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        return;
    }
    merged.push_str(", Accept-Encoding");
    if let Ok(value) = HeaderValue::from_str(&merged) {
        headers.insert(header::VARY, value);
    }
}

/// A strong `ETag` made weak: the compressed bytes are not the ones it names.
fn weaken_etag(headers: &mut HeaderMap) {
    let Some(etag) = headers.get(header::ETAG) else {
        return;
    };
    if etag.as_bytes().starts_with(b"W/") {
        return;
    }
    let mut weak = Vec::with_capacity(etag.len() + 2);
    weak.extend_from_slice(b"W/");
    weak.extend_from_slice(etag.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&weak) {
        headers.insert(header::ETAG, value);
    }
}

#[cfg(test)]
mod tests;
