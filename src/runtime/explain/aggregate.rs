//! `explain` for an `aggregate` route: the call plan, with each call's request as this
//! request would make it (fields of earlier answers shown as pending placeholders).

use std::fmt::Write;

use http::HeaderMap;

use crate::aggregate::template::{self, Piece, Template};
use crate::config::secret::{Credentials, REDACTED, is_credential_name};
use crate::runtime::aggregate::Aggregate;

/// The request values the templates read in explain.
pub(super) struct Request<'a> {
    /// Canonical path.
    pub(super) path: &'a str,
    /// The query as the URL gives it.
    pub(super) query: Option<&'a str>,
    /// The question's headers.
    pub(super) headers: &'a HeaderMap,
}

fn expand(agg: &Aggregate, t: &Template, req: &Request<'_>, encode: bool) -> String {
    let query: Vec<(String, String)> = req
        .query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let text = t.expand(|piece| {
        let filled = match piece {
            Piece::Path(name) => agg
                .path_template
                .as_ref()
                .and_then(|p| p.get(req.path, name))
                .unwrap_or_default(),
            Piece::Query(name) => query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            Piece::Header(name) => req
                .headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            // Known only once plugins and earlier calls ran.
            other => return Some(other.to_string()),
        };
        Some(if encode {
            template::encode(&filled)
        } else {
            filled
        })
    });
    text.unwrap_or_default()
}

/// Writes the plan.
pub(super) fn explain(out: &mut String, agg: &Aggregate, req: &Request<'_>, secrets: &Credentials) {
    let policy = if agg.partial { "partial" } else { "fail" };
    let timeout = agg
        .timeout
        .map_or_else(|| "none".to_owned(), |t| format!("{}ms", t.as_millis()));
    let _ = writeln!(
        out,
        "action    aggregate {} calls in {} stages; on_error {policy}; timeout {timeout}",
        agg.calls.len(),
        agg.stages.len()
    );
    for (stage, calls) in agg.stages.iter().enumerate() {
        let names: Vec<&str> = calls.iter().map(|&i| &*agg.calls[i].name).collect();
        let together = if calls.len() > 1 {
            " (in parallel)"
        } else {
            ""
        };
        let _ = writeln!(out, "  stage {}: {}{together}", stage + 1, names.join(", "));
        for &i in calls {
            let call = &agg.calls[i];
            let deps: Vec<&str> = call.deps.iter().map(|&d| &*agg.calls[d].name).collect();
            let _ = writeln!(
                out,
                "    call {} → upstream {}: {} {}{}{}{}",
                call.name,
                call.upstream.name,
                call.method,
                expand(agg, &call.path, req, true),
                if call.required { "" } else { " (optional)" },
                call.hedge
                    .map(|h| format!("; hedged after {}ms", h.as_millis()))
                    .unwrap_or_default(),
                if deps.is_empty() {
                    String::new()
                } else {
                    format!("; waits for {}", deps.join(", "))
                }
            );
            for (name, value) in &call.headers {
                let shown = if is_credential_name(name.as_str()) || secrets.header(name.as_str()) {
                    REDACTED.to_owned()
                } else {
                    expand(agg, value, req, false)
                };
                let _ = writeln!(out, "      header {name}: {shown}");
            }
        }
    }
}
