//! A server-streaming answer as NDJSON or SSE, written as its messages come.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use prost_reflect::MessageDescriptor;

use super::status::Status;
use super::{Frames, TRAILER_FLAG, json, status};
use crate::body::{BodyError, ChunkFilter};
use crate::config::spec::StreamFormatSpec;

/// The streaming filter.
pub(super) struct Stream {
    desc: MessageDescriptor,
    field: Option<String>,
    out: json::Output,
    format: StreamFormatSpec,
    max: usize,
    frames: Frames,
    /// A status has been written: nothing follows.
    done: bool,
}

impl Stream {
    pub(super) fn new(
        desc: MessageDescriptor,
        field: Option<String>,
        out: json::Output,
        format: StreamFormatSpec,
        max: usize,
    ) -> Self {
        Stream {
            desc,
            field,
            out,
            format,
            max,
            frames: Frames::default(),
            done: false,
        }
    }

    fn write(&self, out: &mut BytesMut, value: &serde_json::Value, error: bool) {
        let text = value.to_string();
        match self.format {
            StreamFormatSpec::Ndjson => {
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\n");
            }
            StreamFormatSpec::Sse => {
                if error {
                    out.extend_from_slice(b"event: error\n");
                }
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\n\n");
            }
        }
    }

    /// The last thing written when a call fails after its start.
    fn error(&mut self, out: &mut BytesMut, status: &Status) {
        let value = match self.format {
            StreamFormatSpec::Ndjson => serde_json::json!({ "error": status.json() }),
            StreamFormatSpec::Sse => status.json(),
        };
        self.write(out, &value, true);
        self.done = true;
    }

    fn drain(&mut self, out: &mut BytesMut) {
        while !self.done {
            match self.frames.next(self.max) {
                Ok(None) => break,
                Ok(Some((TRAILER_FLAG, block))) => {
                    let status = status::from_block(&block);
                    if status.code != 0 {
                        self.error(out, &status);
                    }
                    self.done = true;
                }
                Ok(Some((_, message))) => {
                    match json::response(&self.desc, &message, self.field.as_deref(), self.out) {
                        Ok(value) => self.write(out, &value, false),
                        Err(why) => self.error(
                            out,
                            &Status {
                                code: 13,
                                message: why,
                            },
                        ),
                    }
                }
                Err(why) => self.error(
                    out,
                    &Status {
                        code: 13,
                        message: why,
                    },
                ),
            }
        }
    }
}

impl ChunkFilter for Stream {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BodyError> {
        if self.done {
            return Ok(Bytes::new());
        }
        self.frames.push(&data);
        let mut out = BytesMut::new();
        self.drain(&mut out);
        Ok(out.freeze())
    }

    fn wants_end(&self) -> bool {
        true
    }

    fn end(
        &mut self,
        _trailers: Option<HeaderMap>,
    ) -> Result<(Bytes, Option<HeaderMap>), BodyError> {
        let mut out = BytesMut::new();
        if !self.done {
            self.error(&mut out, &Status::missing());
        }
        Ok((out.freeze(), None))
    }
}
