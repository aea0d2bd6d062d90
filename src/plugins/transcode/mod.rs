//! `grpc_transcode` of a route: JSON clients to a gRPC upstream (docs/config.md,
//! "gRPC-JSON transcoding").
//!
//! Two steps in the route's chain, last of all: [`Transcode`] matches the request against
//! the `google.api.http` bindings, turns the head into a gRPC call's and the JSON body into
//! one message frame; on the way back [`Trailers`] (which sees the answer's body first) turns
//! the gRPC trailers into a last frame, so that [`Transcode`] finds the call's status in the
//! body: a unary answer is buffered and becomes JSON with the mapped HTTP status, a stream
//! becomes NDJSON or SSE as it comes.

pub(crate) mod rules;
mod status;
mod stream;
pub(crate) mod template;

pub(crate) mod json;

use super::grpc_web::TRAILER_FLAG;
use super::grpc_web::is_grpc;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header, request, response};

use super::{BodyFilter, Flow, Plugin, WholeBody};
use crate::body::{Body, BodyError, ChunkFilter};
use crate::config::spec::{GrpcTranscodeSpec, StreamFormatSpec};
use crate::ctx::RequestCtx;
use crate::error::ProxyError;

pub(crate) use rules::{Binding, BodyRule};

/// A compiled `grpc_transcode`.
#[derive(Debug)]
pub(crate) struct Transcode {
    bindings: Vec<Binding>,
    out: json::Output,
    max: usize,
    stream: StreamFormatSpec,
}

/// Why a `grpc_transcode` cannot be built.
#[derive(Debug)]
pub(crate) struct BuildError {
    /// Where: a `services` entry, or (None) the `grpc_transcode` key.
    pub(crate) pos: Option<crate::config::node::Pos>,
    /// What is wrong.
    pub(crate) message: String,
}

impl From<String> for BuildError {
    fn from(message: String) -> Self {
        BuildError { pos: None, message }
    }
}

/// Builds the route's two steps from its spec; `base` is the config file's folder.
pub(crate) fn build(
    spec: &GrpcTranscodeSpec,
    base: &std::path::Path,
) -> Result<[Arc<dyn Plugin>; 2], BuildError> {
    let path = base.join(spec.descriptor_set.as_str());
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let pool = rules::pool(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(unknown) = spec
        .services
        .iter()
        .find(|s| pool.get_service_by_name(s).is_none())
    {
        return Err(BuildError {
            pos: Some(unknown.pos),
            message: rules::unknown_service(&pool, unknown),
        });
    }
    let services: Vec<&str> = spec.services.iter().map(|s| s.as_str()).collect();
    let bindings = rules::bindings(&pool, &services)?;
    Ok([
        Arc::new(Transcode {
            bindings,
            out: json::Output {
                emit_defaults: spec.emit_defaults,
                original_names: spec.original_field_names,
            },
            max: usize::try_from(spec.max_body.0).unwrap_or(usize::MAX),
            stream: spec.stream,
        }),
        Arc::new(Trailers),
    ])
}

/// Path variables: field path and decoded value.
type Vars = Vec<(String, String)>;

/// The request's binding and what its path gave, for the body and answer steps.
#[derive(Debug, Clone)]
struct Call {
    binding: usize,
    vars: Arc<[(String, String)]>,
    query: Option<Box<str>>,
}

/// Marks an answer being turned into JSON.
#[derive(Debug, Clone, Copy)]
struct Converting;

impl Transcode {
    /// The binding a request matches and its path variables.
    pub(crate) fn find(
        &self,
        method: &http::Method,
        path: &str,
    ) -> Option<(&Binding, usize, Vars)> {
        self.bindings.iter().enumerate().find_map(|(i, b)| {
            if b.verb != *method {
                return None;
            }
            b.template.matches(path).map(|vars| (b, i, vars))
        })
    }

    fn binding<'a>(&'a self, ctx: &'a RequestCtx) -> Option<(&'a Call, &'a Binding)> {
        let call = ctx.slots.get::<Call>()?;
        Some((call, self.bindings.get(call.binding)?))
    }
}

impl Plugin for Transcode {
    fn name(&self) -> &'static str {
        "grpc_transcode"
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        if is_grpc(&head.headers) {
            // A gRPC client on the same route: its call passes as it is.
            return Ok(Flow::Continue);
        }
        let Some((binding, index, vars)) = self.find(&head.method, head.uri.path()) else {
            return Err(ProxyError::NoRoute);
        };
        ctx.slots.insert(Call {
            binding: index,
            vars: vars.into(),
            query: head.uri.query().map(Box::from),
        });
        let mut parts = head.uri.clone().into_parts();
        parts.path_and_query = Some(binding.method.path.clone());
        head.uri = http::Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("bad URI"))?;
        head.method = http::Method::POST;
        let headers = &mut head.headers;
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.remove(header::ACCEPT_ENCODING);
        headers.remove("grpc-accept-encoding");
        headers.remove("grpc-encoding");
        headers.remove(header::CONTENT_LENGTH);
        Ok(Flow::Continue)
    }

    fn request_body(&self, ctx: &mut RequestCtx, _head: &request::Parts) -> Option<BodyFilter> {
        let (call, binding) = self.binding(ctx)?;
        Some(BodyFilter::Whole {
            max: self.max,
            edit: Box::new(Encode {
                desc: binding.method.desc.input(),
                rule: binding.body.clone(),
                vars: Arc::clone(&call.vars),
                query: call.query.clone(),
            }),
        })
    }

    fn on_response(&self, ctx: &RequestCtx, head: &mut response::Parts) {
        if self.binding(ctx).is_none() || !is_grpc(&head.headers) {
            return;
        }
        head.extensions.insert(Converting);
        let streaming = self
            .binding(ctx)
            .is_some_and(|(_, b)| b.method.desc.is_server_streaming());
        if streaming && head.status == StatusCode::OK && !head.headers.contains_key("grpc-status") {
            strip_grpc(&mut head.headers);
            head.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(match self.stream {
                    StreamFormatSpec::Ndjson => "application/x-ndjson",
                    StreamFormatSpec::Sse => "text/event-stream",
                }),
            );
        }
    }

    fn response_body(&self, ctx: &RequestCtx, head: &response::Parts) -> Option<BodyFilter> {
        let (_, binding) = self.binding(ctx)?;
        head.extensions.get::<Converting>()?;
        let output = binding.method.desc.output();
        let failed = head
            .headers
            .get("grpc-status")
            .is_some_and(|s| s.as_bytes() != b"0");
        if binding.method.desc.is_server_streaming() && !failed && head.status == StatusCode::OK {
            return Some(BodyFilter::Chunks(Box::new(stream::Stream::new(
                output,
                binding.response_body.clone(),
                self.out,
                self.stream,
                self.max,
            ))));
        }
        Some(BodyFilter::Whole {
            max: self.max.saturating_add(64 * 1024),
            edit: Box::new(Decode {
                desc: output,
                field: binding.response_body.clone(),
                out: self.out,
                status: head.status,
            }),
        })
    }

    fn explain(
        &self,
        ctx: &mut RequestCtx,
        head: &request::Parts,
        _secrets: &crate::config::secret::Credentials,
    ) -> super::Explained {
        let _ = ctx;
        super::Explained::Run(explain(self, head))
    }
}

/// What `explain` says of a request: the method, the binding, where the fields come from.
fn explain(transcode: &Transcode, head: &request::Parts) -> Vec<String> {
    let Some((binding, _, vars)) = transcode.find(&head.method, head.uri.path()) else {
        let mut notes = vec![format!(
            "no binding matches {} {}: 404 no_route",
            head.method,
            head.uri.path()
        )];
        notes.extend(transcode.bindings.iter().map(|b| {
            format!(
                "binding {} {} -> {}",
                b.verb, b.template.text, b.method.path
            )
        }));
        return notes;
    };
    let mut notes = vec![
        format!(
            "gRPC method {} ({}{})",
            binding.method.path,
            if binding.method.desc.is_server_streaming() {
                "server streaming, "
            } else {
                "unary, "
            },
            match transcode.stream {
                _ if !binding.method.desc.is_server_streaming() => "JSON answer",
                StreamFormatSpec::Ndjson => "answered as NDJSON",
                StreamFormatSpec::Sse => "answered as SSE",
            }
        ),
        format!(
            "binding {} {}{}",
            binding.verb,
            binding.template.text,
            if binding.default {
                " (default, no http rule)"
            } else {
                ""
            }
        ),
    ];
    if !vars.is_empty() {
        let list: Vec<String> = vars.iter().map(|(f, v)| format!("{f}={v:?}")).collect();
        notes.push(format!("from the path: {}", list.join(", ")));
    }
    match &binding.body {
        BodyRule::Whole => notes.push("from the body: the whole message (body: \"*\")".to_owned()),
        BodyRule::Field(f) => notes.push(format!("from the body: field `{f}`")),
        BodyRule::None => notes.push("from the body: nothing (no body rule)".to_owned()),
    }
    if binding.body != BodyRule::Whole {
        let names: Vec<&str> = head
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').map_or(p, |(n, _)| n))
            .collect();
        notes.push(if names.is_empty() {
            "from the query: nothing".to_owned()
        } else {
            format!("from the query: {}", names.join(", "))
        });
    }
    if let Some(field) = &binding.response_body {
        notes.push(format!("answer body: field `{field}` of the reply"));
    }
    notes
}

/// JSON request to one gRPC message frame.
struct Encode {
    desc: prost_reflect::MessageDescriptor,
    rule: BodyRule,
    vars: Arc<[(String, String)]>,
    query: Option<Box<str>>,
}

impl WholeBody for Encode {
    fn apply(
        self: Box<Self>,
        ctx: &RequestCtx,
        _headers: &mut HeaderMap,
        body: Bytes,
    ) -> Result<Bytes, Box<http::Response<Body>>> {
        let parts = json::Parts {
            vars: &self.vars,
            query: self.query.as_deref(),
            body: &body,
        };
        let message = json::request(&self.desc, &self.rule, &parts).map_err(|why| {
            Box::new(crate::error::error_response(
                StatusCode::BAD_REQUEST,
                "request_invalid",
                &why,
                &ctx.request_id,
            ))
        })?;
        Ok(frame(&prost::Message::encode_to_vec(&message)))
    }
}

/// A gRPC message frame: not compressed, then the length, then the message.
pub(crate) fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
    out.freeze()
}

/// A buffered unary answer to JSON, with the HTTP status its `grpc-status` maps to.
struct Decode {
    desc: prost_reflect::MessageDescriptor,
    field: Option<String>,
    out: json::Output,
    status: StatusCode,
}

impl WholeBody for Decode {
    fn apply(
        self: Box<Self>,
        ctx: &RequestCtx,
        headers: &mut HeaderMap,
        body: Bytes,
    ) -> Result<Bytes, Box<http::Response<Body>>> {
        let broken = |why: String| {
            tracing::warn!(request_id = ?ctx.request_id, error = %why, "bad gRPC answer");
            Box::new(crate::error::error_response(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                "the upstream's gRPC answer cannot be read",
                &ctx.request_id,
            ))
        };
        let mut frames = Frames::default();
        frames.push(&body);
        let mut message = None;
        let mut grpc = status::from_headers(headers);
        loop {
            match frames.next(usize::MAX) {
                Ok(Some((TRAILER_FLAG, bytes))) => grpc = Some(status::from_block(&bytes)),
                Ok(Some((0, bytes))) if message.is_none() => message = Some(bytes),
                Ok(Some((0, _))) => return Err(broken("more than one message".into())),
                Ok(Some((flag, _))) => return Err(broken(format!("frame flag {flag:#x}"))),
                Ok(None) => break,
                Err(why) => return Err(broken(why)),
            }
        }
        if !frames.is_empty() {
            return Err(broken("the answer ends inside a frame".into()));
        }
        let grpc = grpc.unwrap_or(status::Status::missing());
        let (http_status, value) = if grpc.code != 0 {
            (status::http_status(grpc.code), grpc.json())
        } else if self.status != StatusCode::OK {
            return Err(broken(format!("HTTP status {}", self.status)));
        } else {
            let bytes = message.unwrap_or_default();
            let value = json::response(&self.desc, &bytes, self.field.as_deref(), self.out)
                .map_err(&broken)?;
            (StatusCode::OK, value)
        };
        let mut response = http::Response::new(Body::full(Bytes::from(value.to_string())));
        *response.status_mut() = http_status;
        let mut head = std::mem::take(headers);
        strip_grpc(&mut head);
        head.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        *response.headers_mut() = head;
        Err(Box::new(response))
    }
}

/// Drops the gRPC fields of an answer's head that mean nothing to a JSON client.
fn strip_grpc(headers: &mut HeaderMap) {
    for name in [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "grpc-encoding",
        "grpc-accept-encoding",
    ] {
        headers.remove(name);
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRAILER);
}

/// gRPC frames out of a byte stream.
#[derive(Default)]
pub(crate) struct Frames {
    buf: BytesMut,
}

impl Frames {
    /// More bytes.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Whether no partial frame is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next whole frame (flag, message), if there is one; an error for a compressed
    /// message or one longer than `max`.
    pub(crate) fn next(&mut self, max: usize) -> Result<Option<(u8, Bytes)>, String> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flag = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if flag & 1 != 0 {
            return Err("a compressed message (none was accepted)".into());
        }
        if len > max {
            return Err(format!("a message of {len} bytes, more than {max}"));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let mut frame = self.buf.split_to(5 + len);
        let _ = frame.split_to(5);
        Ok(Some((flag, frame.freeze())))
    }
}

/// Sees a transcoded answer's body before [`Transcode`]: writes its trailers as a last frame.
#[derive(Debug)]
pub(crate) struct Trailers;

impl Plugin for Trailers {
    fn name(&self) -> &'static str {
        "grpc_transcode_trailers"
    }

    fn response_body(&self, _ctx: &RequestCtx, head: &response::Parts) -> Option<BodyFilter> {
        head.extensions.get::<Converting>()?;
        Some(BodyFilter::Chunks(Box::new(TrailerFrame)))
    }
}

struct TrailerFrame;

impl ChunkFilter for TrailerFrame {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BodyError> {
        Ok(data)
    }

    fn wants_end(&self) -> bool {
        true
    }

    fn end(
        &mut self,
        trailers: Option<HeaderMap>,
    ) -> Result<(Bytes, Option<HeaderMap>), BodyError> {
        let Some(trailers) = trailers else {
            return Ok((Bytes::new(), None));
        };
        let fields = trailers
            .iter()
            .filter(|(name, _)| *name == "grpc-status" || *name == "grpc-message");
        Ok((super::grpc_web::trailer_frame(fields).freeze(), None))
    }
}
