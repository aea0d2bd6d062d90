//! `explain`'s plugin lines: the route's plugins are run on the request as the proxy would run
//! them (nothing is sent; a password hash is verified, a JWT checked with the configured
//! keys), each with the level it comes from, what it found and its verdict, and the plugins
//! more specific levels replaced. Nothing here prints a credential.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, request};

use super::Question;
use crate::config::secret::Credentials;
use crate::ctx::RequestCtx;
use crate::plugins::{Explained, InForce, Plugin, PluginChain, run_on_request};

/// Whether the request gets past the plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Every plugin lets it on: the route's action follows.
    Passed,
    /// A plugin answers it (the `result` line says how).
    Stopped,
}

/// Runs the chain's plugins on the question's request and appends what they do.
pub(super) fn explain(
    chain: &PluginChain,
    q: &Question<'_>,
    uri: &http::Uri,
    out: &mut String,
    secrets: &Credentials,
) -> Outcome {
    let base = chain.in_force(None);
    if base.steps().is_empty() && chain.scoped_consumers().is_empty() {
        let _ = writeln!(out, "plugins   (none)");
        return Outcome::Passed;
    }
    let mut builder = http::Request::builder()
        .method(q.method.clone())
        .uri(uri.clone());
    if let Some(headers) = builder.headers_mut() {
        *headers = q.headers.clone();
    }
    let mut head = match builder.body(()) {
        Ok(request) => request.into_parts().0,
        Err(err) => {
            let _ = writeln!(out, "plugins   not evaluated: {err}");
            return Outcome::Passed;
        }
    };
    let mut ctx = RequestCtx::new(
        HeaderValue::from_static("explain"),
        SocketAddr::new(q.client, 0),
        Arc::from("explain"),
    );
    // Deferred plugin work (a password hash) runs on a blocking thread, as in the proxy.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            let _ = writeln!(out, "plugins   not evaluated: {err}");
            return Outcome::Passed;
        }
    };
    runtime.block_on(evaluate(chain, &mut ctx, &mut head, out, secrets))
}

async fn evaluate(
    chain: &PluginChain,
    ctx: &mut RequestCtx,
    head: &mut request::Parts,
    out: &mut String,
    secrets: &Credentials,
) -> Outcome {
    let base = chain.in_force(None);
    if base.steps().is_empty() {
        let _ = writeln!(out, "plugins   (none before a consumer is known)");
    } else {
        let _ = writeln!(
            out,
            "plugins   {} (by phase; level in brackets)",
            names(base.placed())
        );
    }
    let scoped = chain.scoped_consumers();
    if !scoped.is_empty() {
        let _ = writeln!(
            out,
            "          consumers with plugins of their own here: {}",
            scoped.join(", ")
        );
    }
    replaced_lines(out, base, false);
    for plugin in base.steps() {
        plugin.observe(ctx, head);
    }
    for (plugin, level) in base.placed().take(base.authenticated()) {
        if step(plugin, level, ctx, head, out, secrets).await == Outcome::Stopped {
            return Outcome::Stopped;
        }
    }
    let consumer = ctx.consumer.as_ref().map(|c| c.name.clone());
    let in_force = chain.in_force(consumer.as_deref());
    if let Some(name) = consumer.as_deref()
        && scoped.contains(&name)
    {
        let _ = writeln!(
            out,
            "consumer  {name}: in force after authentication: {}",
            names(in_force.placed().skip(in_force.authenticated()))
        );
        replaced_lines(out, in_force, true);
    }
    for (plugin, level) in in_force.placed().skip(in_force.authenticated()) {
        if step(plugin, level, ctx, head, out, secrets).await == Outcome::Stopped {
            return Outcome::Stopped;
        }
    }
    Outcome::Passed
}

fn names<'a>(
    placed: impl Iterator<Item = (&'a Arc<dyn Plugin>, &'a crate::plugins::Level)>,
) -> String {
    let names: Vec<String> = placed
        .map(|(p, level)| format!("{} [{level}]", p.name()))
        .collect();
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(" → ")
    }
}

/// The plugins left out for more specific ones; `scoped`: only those a consumer's level
/// left out (the others were listed with the route's chain).
fn replaced_lines(out: &mut String, in_force: &InForce, scoped: bool) {
    for r in in_force
        .replaced()
        .iter()
        .filter(|r| !scoped || r.by.consumer_scoped())
    {
        let _ = writeln!(
            out,
            "replaced  {} [{}] by the {} [{}] in force",
            r.plugin.plugin.name(),
            r.plugin.level,
            r.plugin.plugin.name(),
            r.by
        );
    }
}

/// One plugin: its notes, then its verdict on the request.
async fn step(
    plugin: &Arc<dyn Plugin>,
    level: &crate::plugins::Level,
    ctx: &mut RequestCtx,
    head: &mut request::Parts,
    out: &mut String,
    secrets: &Credentials,
) -> Outcome {
    let before = ctx.consumer.as_ref().map(|c| c.name.clone());
    let (notes, offline) = match plugin.explain(ctx, head, secrets) {
        Explained::Run(notes) => (notes, false),
        Explained::Offline(notes) => (notes, true),
    };
    let _ = writeln!(
        out,
        "  {} [{level}] ({:?}{})",
        plugin.name(),
        plugin.phase(),
        plugin
            .stops()
            .map_or_else(String::new, |s| format!("; {s}"))
    );
    for note in notes {
        let _ = writeln!(out, "          {note}");
    }
    let gained = |ctx: &RequestCtx| {
        let now = ctx.consumer.as_ref().map(|c| c.name.clone());
        match now {
            Some(name) if before.as_deref() != Some(name.as_str()) => {
                format!(": authenticated as consumer {name}")
            }
            _ => String::new(),
        }
    };
    if offline {
        let _ = writeln!(
            out,
            "          → not decided offline; if it passes, goes on{}",
            gained(ctx).replacen(": authenticated", "", 1)
        );
        return Outcome::Passed;
    }
    match run_on_request(plugin, ctx, head, &crate::plugins::NoSubrequests).await {
        Ok(None) => {
            let _ = writeln!(out, "          → passes{}", gained(ctx));
            Outcome::Passed
        }
        Ok(Some(response)) => {
            let (parts, body) = response.into_parts();
            let message = message(body).await;
            let shown: Vec<String> = parts
                .headers
                .iter()
                .filter(|(name, _)| {
                    let name = name.as_str();
                    name.starts_with("access-control-")
                        || name == "www-authenticate"
                        || name == "retry-after"
                        || name == "vary"
                })
                .map(|(name, value)| {
                    format!("{name}: {}", String::from_utf8_lossy(value.as_bytes()))
                })
                .collect();
            let _ = writeln!(
                out,
                "          → answers {}{}",
                parts.status,
                message.map_or_else(String::new, |m| format!(" — {m}"))
            );
            for header in &shown {
                let _ = writeln!(out, "            {header}");
            }
            let _ = writeln!(
                out,
                "result    {} from {} [{level}]; later plugins and the route's action do not run",
                parts.status,
                plugin.name()
            );
            Outcome::Stopped
        }
        Err(err) => {
            let _ = writeln!(out, "          → fails: {} {err}", err.status());
            let _ = writeln!(out, "result    {} from {}", err.status(), plugin.name());
            Outcome::Stopped
        }
    }
}

/// The `message` of one of portico's JSON error bodies (never a credential).
async fn message(body: crate::body::Body) -> Option<String> {
    use http_body_util::BodyExt;
    let bytes = http_body_util::Limited::new(body, 64 * 1024)
        .collect()
        .await
        .ok()?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("message")?.as_str().map(str::to_owned)
}
