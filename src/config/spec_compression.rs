//! The `compression` plugin's spec: answers compressed with gzip, brotli or zstd as the
//! client accepts, request bodies optionally decoded; docs/config.md, "Compression".

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::de::At;
use super::units::Size;

/// `compression:` — compresses answers for clients that accept it (`Accept-Encoding`),
/// streamed chunk by chunk.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompressionSpec {
    /// The encodings offered, preferred first; among those the client accepts with the same
    /// q-value, the first listed wins.
    #[schemars(length(min = 1))]
    #[serde(default = "encodings")]
    pub(crate) encodings: Vec<At<Encoding>>,
    /// Answers whose `Content-Length` is below this are sent as they are; answers of unknown
    /// length are compressed.
    #[serde(default = "one_kibibyte")]
    pub(crate) min_size: Size,
    /// Media types compressed: `type/subtype`, `type/*`, `*/*`, or a suffix as `*/*+json`
    /// (every `…+json` type). By default text, JSON, JavaScript, XML and SVG.
    #[serde(default = "content_types")]
    pub(crate) content_types: Vec<At<String>>,
    /// Effort: `fastest`, `default` or `best` (gzip 1/6/9, brotli 1/4/5, zstd 1/3/6).
    #[serde(default)]
    pub(crate) level: Level,
    /// Request bodies sent with `Content-Encoding`.
    #[serde(default)]
    pub(crate) request: RequestDecompression,
}

/// An encoding of `encodings:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Encoding {
    /// Zstandard (RFC 8878).
    Zstd,
    /// Brotli (RFC 7932).
    Br,
    /// gzip (RFC 1952).
    Gzip,
}

/// How hard the encoders work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Level {
    /// gzip 1, brotli 1, zstd 1.
    Fastest,
    /// gzip 6, brotli 4, zstd 3.
    #[default]
    Default,
    /// gzip 9, brotli 5, zstd 6: smaller answers for more CPU, still fast enough to stream.
    Best,
}

/// `request:` of `compression`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestDecompression {
    /// Decode request bodies sent with `Content-Encoding: gzip`, `br` or `zstd` before they
    /// go upstream; off by default (the body passes as it came).
    #[serde(default)]
    pub(crate) decompress: bool,
    /// Most decoded bytes of one request body; past it the request is refused with 413
    /// `payload_too_large`.
    #[serde(default = "ten_mebibytes")]
    pub(crate) max_size: Size,
}

impl Default for RequestDecompression {
    fn default() -> Self {
        RequestDecompression {
            decompress: false,
            max_size: ten_mebibytes(),
        }
    }
}

fn encodings() -> Vec<At<Encoding>> {
    [Encoding::Zstd, Encoding::Br, Encoding::Gzip]
        .into_iter()
        .map(|value| At {
            pos: Default::default(),
            value,
        })
        .collect()
}

fn content_types() -> Vec<At<String>> {
    [
        "text/*",
        "application/json",
        "application/javascript",
        "application/xml",
        "image/svg+xml",
        "*/*+json",
        "*/*+xml",
    ]
    .into_iter()
    .map(|t| At {
        pos: Default::default(),
        value: t.to_owned(),
    })
    .collect()
}

fn one_kibibyte() -> Size {
    Size(1 << 10)
}

fn ten_mebibytes() -> Size {
    Size(10 << 20)
}
