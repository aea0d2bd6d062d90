//! `grpc_transcode:` of a route (docs/config.md, "gRPC-JSON transcoding").

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::de::At;
use super::units::Size;

/// `grpc_transcode:` — JSON clients to a gRPC upstream.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrpcTranscodeSpec {
    /// A protobuf `FileDescriptorSet` file (`protoc --include_imports --descriptor_set_out`),
    /// relative to the config file; read and compiled once at load.
    pub(crate) descriptor_set: At<String>,
    /// Full names of the services served (`package.Service`); every service of the set when
    /// empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) services: Vec<At<String>>,
    /// Whether answers show fields at their default value (`0`, `""`, `false`, empty lists).
    #[serde(default)]
    pub(crate) emit_defaults: bool,
    /// Whether answers use the `.proto` field names (`user_id`) instead of lowerCamelCase
    /// (`userId`). Requests accept both.
    #[serde(default)]
    pub(crate) original_field_names: bool,
    /// Largest JSON request body and largest gRPC answer (or streamed message); a larger
    /// request gets 413, a larger answer 502.
    #[serde(default = "default_max_body")]
    pub(crate) max_body: Size,
    /// How server-streaming methods answer: `ndjson` (one JSON object a line) or `sse`
    /// (`data:` events).
    #[serde(default)]
    pub(crate) stream: StreamFormatSpec,
}

/// How a server-streaming method's messages are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StreamFormatSpec {
    /// `application/x-ndjson`: one JSON object per line.
    #[default]
    Ndjson,
    /// `text/event-stream`: one `data: {...}` event per message.
    Sse,
}

fn default_max_body() -> Size {
    Size(1024 * 1024)
}
