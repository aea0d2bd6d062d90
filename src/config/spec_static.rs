//! The `static` route action's spec: files served from a folder.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::de::At;

/// `static:` — answers with files under a root folder, instead of forwarding.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StaticSpec {
    /// The folder served, relative to the config file's folder; it must exist.
    pub(crate) root: At<String>,
    /// A path prefix removed before the path is looked up under `root` (e.g. `/assets`); a
    /// request outside it is 404. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) strip_prefix: Option<At<String>>,
    /// File names tried, in order, for a path that names a folder.
    #[serde(default = "index_html")]
    pub(crate) index: Vec<At<String>>,
    /// Whether a folder without an index file is answered with an HTML listing of its
    /// entries (dot-files left out unless `dotfiles`); off by default (404).
    #[serde(default)]
    pub(crate) listing: bool,
    /// A file under `root` (e.g. `index.html`) answered, with status 200, for a GET or HEAD
    /// that names no file, when it accepts `text/html` or its last segment has no
    /// extension: the single-page-app fallback. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fallback: Option<At<String>>,
    /// `Cache-Control` of every file answer (and 304); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cache_control: Option<At<String>>,
    /// Whether files and folders whose name starts with `.` are served; by default they are
    /// 404, as if absent.
    #[serde(default)]
    pub(crate) dotfiles: bool,
    /// Whether a symbolic link whose target is outside `root` is followed. By default it is
    /// 404; links that resolve inside `root` are always followed.
    #[serde(default)]
    pub(crate) follow_symlinks: bool,
    /// Precompressed siblings looked for, in order of preference among equal `q` values:
    /// `br` (`FILE.br`), `zstd` (`FILE.zst`), `gzip` (`FILE.gz`). `[]` turns it off.
    #[serde(default = "encodings")]
    pub(crate) precompressed: Vec<At<String>>,
    /// Extra or replacing media types by file extension (without the dot), e.g.
    /// `{ wasm: application/wasm }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) mime_types: BTreeMap<String, At<String>>,
}

fn index_html() -> Vec<At<String>> {
    vec![At {
        pos: Default::default(),
        value: "index.html".into(),
    }]
}

fn encodings() -> Vec<At<String>> {
    ["br", "zstd", "gzip"]
        .into_iter()
        .map(|e| At {
            pos: Default::default(),
            value: e.into(),
        })
        .collect()
}
