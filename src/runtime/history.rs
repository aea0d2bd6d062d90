//! The config's content hash, and the record of recent reloads.
//!
//! The hash is taken over the compiled spec's canonical JSON (every key, defaults filled in,
//! in declaration order), so comments, key order and formatting do not change it while every
//! setting does. Logs, metrics (`portico_config_info{hash}`), `GET /health`, `GET /reloads`
//! and the admin API's `ETag` all carry it.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::config::Spec;

/// How many reloads `GET /reloads` remembers.
const KEPT: usize = 32;

/// The content hash of `spec`: the first 16 hex digits of the SHA-256 of its canonical JSON.
pub(crate) fn config_hash(spec: &Spec) -> Arc<str> {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &json);
    let mut hex = String::with_capacity(16);
    for byte in &digest.as_ref()[..8] {
        let _ = write!(hex, "{byte:02x}");
    }
    Arc::from(hex)
}

/// One reload attempt, or the start.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ReloadRecord {
    /// When it finished, in seconds since the Unix epoch.
    pub(crate) at_unix: f64,
    /// What asked for it: `start`, `signal` (SIGHUP), `files` (a certificate changed),
    /// `admin` (an admin API write).
    pub(crate) trigger: &'static str,
    /// `applied` or `refused`.
    pub(crate) result: &'static str,
    /// The hash of the config it compiled; none when it did not compile.
    pub(crate) hash: Option<String>,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// The most recent reloads, newest last.
#[derive(Debug, Default)]
pub(crate) struct History(Mutex<VecDeque<ReloadRecord>>);

impl History {
    /// Records one attempt; the oldest is forgotten past 32.
    pub(crate) fn record(
        &self,
        trigger: &'static str,
        hash: Option<Arc<str>>,
        error: Option<String>,
    ) {
        let at_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let record = ReloadRecord {
            at_unix,
            trigger,
            result: if error.is_none() {
                "applied"
            } else {
                "refused"
            },
            hash: hash.map(|h| h.to_string()),
            error,
        };
        let mut list = match self.0.lock() {
            Ok(list) => list,
            Err(poisoned) => poisoned.into_inner(),
        };
        if list.len() == KEPT {
            list.pop_front();
        }
        list.push_back(record);
    }

    /// The records, oldest first.
    pub(crate) fn list(&self) -> Vec<ReloadRecord> {
        match self.0.lock() {
            Ok(list) => list.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_follows_settings_not_formatting() {
        let hash = |text: &str| {
            let snap = crate::runtime::compile::compile_str(text).expect("compiles");
            snap.hash.clone()
        };
        let a = hash(
            "listeners: [ { name: web, bind: 127.0.0.1:0 } ]\nroutes: [ { name: r, respond: { status: 200 } } ]\n",
        );
        let b = hash(
            "# a comment\nlisteners:\n  - name: web\n    bind: 127.0.0.1:0\nroutes:\n  - { respond: { status: 200 }, name: r }\n",
        );
        let c = hash(
            "listeners: [ { name: web, bind: 127.0.0.1:0 } ]\nroutes: [ { name: r, respond: { status: 201 } } ]\n",
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn history_keeps_the_last_32() {
        let history = History::default();
        for i in 0..40 {
            let error = (i % 2 == 1).then(|| format!("bad {i}"));
            history.record("signal", None, error);
        }
        let list = history.list();
        assert_eq!(list.len(), 32);
        assert_eq!(list[31].error.as_deref(), Some("bad 39"));
        assert_eq!(list[31].result, "refused");
        assert_eq!(list[30].result, "applied");
    }
}
