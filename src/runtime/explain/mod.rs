//! `portico explain`: which listener, route, plugins, upstream and target a request would
//! meet, and why — computed with the same tables the proxy uses, without sending anything.

use std::fmt::Write;

use http::{HeaderMap, Method};

use super::{Action, Snapshot};
use crate::config::secret::{Credentials, REDACTED};
use crate::routing::{Conditions, PathMatch, RequestView, normalize_host, path};

mod aggregate;
mod plugins;
mod settings;
#[cfg(test)]
mod tests;

/// A request to explain.
#[derive(Debug)]
pub(crate) struct Question<'a> {
    /// Method.
    pub(crate) method: Method,
    /// Absolute URL, like `http://api.example.com:8080/users/42?x=1`.
    pub(crate) url: &'a str,
    /// Extra headers; a `Host` here overrides the URL's host.
    pub(crate) headers: HeaderMap,
    /// The peer address: what hashing balancers, `ip_restriction` and limits by ip see.
    pub(crate) client: std::net::IpAddr,
}

impl<'a> Question<'a> {
    /// A question from the words a user typed: a method, a URL and `Name: value` headers.
    pub(crate) fn parse(method: &str, url: &'a str, headers: &[String]) -> Result<Self, String> {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("invalid method `{method}`"))?;
        let mut map = HeaderMap::new();
        for h in headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| "invalid header: expected `Name: value`".to_owned())?;
            let name = http::HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("invalid header name `{}`", name.trim()))?;
            // The value may be a credential: never repeated.
            let value = http::HeaderValue::from_str(value.trim())
                .map_err(|_| format!("invalid value for header `{name}`"))?;
            map.append(name, value);
        }
        Ok(Question {
            method,
            url,
            headers: map,
            client: std::net::IpAddr::from([127, 0, 0, 1]),
        })
    }
}

/// A question that cannot be answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QuestionError {
    /// The URL does not parse.
    #[error("invalid URL `{url}`: {source}")]
    Url {
        /// The URL as given.
        url: String,
        /// What `http` found.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// The URL has no host, so no listener or route can be picked.
    #[error("the URL `{0}` needs a host, like http://localhost:8080/")]
    NoHost(String),
    /// Nothing listens.
    #[error("the config has no listeners")]
    NoListeners,
}

/// What `explain` decided, in fields (for `portico test`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The listener that takes the request.
    pub(crate) listener: Option<String>,
    /// The route chosen; `None` when no route matches (or the listener has no routes).
    pub(crate) route: Option<String>,
    /// The upstream the request (or connection) goes to.
    pub(crate) upstream: Option<String>,
    /// That upstream's targets, as written in the config.
    pub(crate) targets: Vec<String>,
    /// The status portico decides: that of `respond`, `redirect`, a refusal (400, 404, a
    /// plugin's), or 200 when it lets the request through to its action. `None` on layer 4.
    pub(crate) status: Option<u16>,
    /// The path sent upstream (after `path_policy` and `rewrite`).
    pub(crate) path: Option<String>,
}

/// The answer, as lines of text; `Err` when the question itself is malformed.
pub(crate) fn explain(snap: &Snapshot, q: &Question<'_>) -> Result<String, QuestionError> {
    decide(snap, q).map(|(text, _)| text)
}

/// The answer, as lines of text and as fields.
pub(crate) fn decide(
    snap: &Snapshot,
    q: &Question<'_>,
) -> Result<(String, Decision), QuestionError> {
    let mut decision = Decision::default();
    let text = explain_into(snap, q, &mut decision)?;
    Ok((text, decision))
}

/// The status of the `result` line a plugin that answered wrote last.
fn stopped_status(out: &str) -> Option<u16> {
    let line = out.lines().rev().find(|l| l.starts_with("result    "))?;
    line["result    ".len()..].get(..3)?.parse().ok()
}

fn set_upstream(decision: &mut Decision, upstream: &super::Upstream) {
    decision.upstream = Some(upstream.name.to_string());
    decision.targets = upstream
        .targets
        .iter()
        .map(|t| t.address.to_string())
        .collect();
}

fn explain_into(
    snap: &Snapshot,
    q: &Question<'_>,
    decision: &mut Decision,
) -> Result<String, QuestionError> {
    let uri: http::Uri = q.url.parse().map_err(|source| QuestionError::Url {
        url: shown_url(q.url),
        source,
    })?;
    let authority = uri
        .authority()
        .ok_or_else(|| QuestionError::NoHost(shown_url(q.url)))?;
    // The port a client would connect to: the URL's, else its scheme's default.
    let port = authority
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let mut out = String::new();
    let secrets = Credentials::of(&snap.spec);
    let query = uri.query().map(|q| secrets.redact_query(q));

    // A URL names a TCP port: a udp listener on the same number is only the last resort.
    let by_port = snap
        .listeners
        .iter()
        .filter(|l| l.addr.port() == port)
        .min_by_key(|l| l.udp.is_some());
    let (listener, why) = match by_port {
        Some(l) => (l, format!("its port {port} is the URL's")),
        None => match snap.listeners.first() {
            Some(l) => (
                l,
                format!("no listener has port {port}; using the first one"),
            ),
            None => return Err(QuestionError::NoListeners),
        },
    };
    let _ = writeln!(
        out,
        "listener  {} ({}) — {why}",
        listener.name, listener.addr
    );
    decision.listener = Some(listener.name.to_string());
    if let Some(accept) = &listener.proxy_protocol {
        let verdict = if accept.trusts(q.client) {
            "a trusted source: its header's client address is the client (the peer stands in here)"
        } else {
            "not a trusted source: a header from it is refused and the connection closed"
        };
        let _ = writeln!(
            out,
            "proxy     PROXY protocol v1/v2 first, within {}{}; peer {} is {verdict}",
            crate::config::units::Dur(accept.timeout),
            if accept.optional {
                " (optional from trusted sources)"
            } else {
                ""
            },
            q.client,
        );
    }
    explain_admission(&mut out, listener, q.client);

    if let Some(udp) = &listener.udp {
        let upstream = &udp.upstream;
        set_upstream(decision, upstream);
        let _ = writeln!(
            out,
            "udp       not HTTP: each flow (client address and port) goes to upstream `{}` ({}), \
             its session ends after {} idle",
            upstream.name,
            upstream.balancer.name(),
            crate::config::units::Dur(udp.session_timeout),
        );
        target_line(
            &mut out,
            upstream,
            &crate::balance::RequestView::connection(q.client),
        );
        return Ok(out);
    }
    if let Some(passthrough) = &listener.passthrough {
        if let Some(upstream) = explain_passthrough(&mut out, passthrough, authority.host(), q) {
            set_upstream(decision, upstream);
        }
        return Ok(out);
    }
    if let Some(stream) = &listener.stream {
        set_upstream(decision, &stream.upstream);
        explain_stream(&mut out, listener, stream, q);
        return Ok(out);
    }

    // The client address, as the proxy decides it before routing.
    let resolved;
    let q = match &listener.trusted_proxies {
        Some(trusted) => {
            let peer = std::net::SocketAddr::new(q.client, 0);
            let decision = trusted.decide(peer, &q.headers);
            let _ = writeln!(out, "client    {}", decision.describe(q.client));
            let mut headers = q.headers.clone();
            trusted.apply(peer, &mut headers);
            resolved = Question {
                method: q.method.clone(),
                url: q.url,
                headers,
                client: decision.client.ip(),
            };
            &resolved
        }
        None => q,
    };
    let host_header = q
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    // The authority's host only: a `user:password@` part is never sent as the Host.
    let host = normalize_host(host_header.unwrap_or(authority.host())).into_owned();
    let raw_path = uri.path();
    let normal = match path::normalize(raw_path) {
        Ok(p) => p.into_owned(),
        Err(err) => {
            let _ = writeln!(out, "result    400 Bad Request — {err}");
            decision.status = Some(400);
            return Ok(out);
        }
    };
    let _ = write!(out, "request   {} host={host} path={normal}", q.method);
    if normal != raw_path {
        let _ = write!(out, " (normalised from {raw_path})");
    }
    out.push('\n');

    if let Some((port, status)) = listener.redirect_https {
        let location = super::https_location(port, &host, &normal, query.as_deref());
        decision.status = Some(status.as_u16());
        let _ = writeln!(
            out,
            "action    redirect {status} to {location} — the listener sends every request to \
             https (ACME HTTP-01 challenges excepted); routes are not consulted"
        );
        return Ok(out);
    }

    let view = RequestView {
        client: q.client,
        host: &host,
        path: &normal,
        query: uri.query(),
        method: &q.method,
        headers: &q.headers,
    };
    let winner = listener.table.find(&view);
    for (i, entry) in listener.routes.iter().enumerate() {
        let cond = listener.table.conditions(i);
        let verdict = match why_not(cond, &view) {
            None if Some(i) == winner => "matches — chosen (most specific)".to_owned(),
            None => "matches, but a more specific route wins".to_owned(),
            Some(reason) => format!("no: {reason}"),
        };
        let _ = writeln!(
            out,
            "  route {:<20} {:<40} {verdict}",
            entry.route.name,
            describe(cond, &secrets)
        );
    }
    let Some(index) = winner else {
        // Global plugins still run on a request no route takes (address rules, limits).
        let _ = writeln!(out, "route     (none): the global plugins run, then 404");
        if plugins::explain(&snap.global, q, &uri, &mut out, &secrets) == plugins::Outcome::Passed {
            let _ = writeln!(out, "result    404 Not Found — no route matches");
            decision.status = Some(404);
        } else {
            decision.status = stopped_status(&out);
        }
        return Ok(out);
    };
    let route = &listener.routes[index].route;
    let _ = writeln!(out, "route     {}", route.name);
    decision.route = Some(route.name.to_string());
    // The route's path policy, as the proxy applies it (routing/path.rs).
    let same_route = |kept: &str| {
        let kept = RequestView { path: kept, ..view };
        listener.table.find(&kept) == Some(index)
    };
    let normal = match route.path_policy.apply(raw_path, same_route) {
        Ok(Some(kept)) => {
            let _ = writeln!(out, "path      forwarded as {kept} (path_policy)");
            kept
        }
        Ok(None) => normal,
        Err(err) => {
            let _ = writeln!(out, "result    400 Bad Request — {err}");
            decision.status = Some(400);
            return Ok(out);
        }
    };
    match plugins::explain(&route.plugins, q, &uri, &mut out, &secrets) {
        plugins::Outcome::Stopped => {
            decision.status = stopped_status(&out);
            return Ok(out);
        }
        plugins::Outcome::Passed => {}
    }
    decision.status = Some(200);
    match &route.action {
        Action::Respond(r) => {
            let _ = writeln!(out, "action    respond {}", r.status);
            decision.status = Some(r.status.as_u16());
        }
        Action::Static(site) => {
            let _ = writeln!(out, "action    static files under {}", site.root.display());
        }
        Action::Aggregate(agg) => {
            let req = aggregate::Request {
                path: &normal,
                query: uri.query(),
                headers: &q.headers,
            };
            aggregate::explain(&mut out, agg, &req, &secrets);
        }
        Action::Redirect(r) => {
            decision.status = Some(r.status.as_u16());
            let _ = writeln!(
                out,
                "action    redirect {} to {}",
                r.status,
                r.location(&host, &normal, query.as_deref())
            );
        }
        Action::Forward {
            arms,
            sequence,
            next,
        } => {
            let arm =
                sequence[next.load(std::sync::atomic::Ordering::Relaxed) % sequence.len()] as usize;
            let upstream = &arms[arm];
            set_upstream(decision, upstream);
            if arms.len() > 1 {
                let names: Vec<&str> = arms.iter().map(|u| &*u.name).collect();
                let _ = writeln!(
                    out,
                    "action    split over {}; next goes to {}",
                    names.join(", "),
                    upstream.name
                );
            } else {
                let _ = writeln!(out, "action    forward to upstream {}", upstream.name);
            }
            if let Some(rewrite) = &route.rewrite {
                let _ = writeln!(out, "rewrite   {normal} → {}", rewrite.apply(&normal));
                decision.path = Some(rewrite.apply(&normal).into_owned());
            } else {
                decision.path = Some(normal.clone());
            }
            let pick = crate::balance::RequestView {
                client: q.client,
                host: "",
                method: &http::Method::GET,
                headers: &q.headers,
                path: &normal,
                query: uri.query(),
            };
            target_line(&mut out, upstream, &pick);
            settings::explain(&mut out, route, upstream, &snap.spec);
        }
    }
    Ok(out)
}

/// A URL as error messages show it: without a `user:password@` part or a query, either of
/// which may hold a credential.
fn shown_url(url: &str) -> String {
    let (mut base, query) = match url.split_once('?') {
        Some((base, _)) => (base.to_owned(), "?<query not shown>"),
        None => (url.to_owned(), ""),
    };
    if let Some(start) = base.find("://").map(|i| i + 3) {
        let end = base[start..].find('/').map_or(base.len(), |i| start + i);
        if let Some(at) = base[start..end].rfind('@') {
            base.replace_range(start..=start + at, "");
        }
    }
    base + query
}

/// A `tls_passthrough` listener: no HTTP, the ClientHello's server name picks the upstream.
fn explain_passthrough<'a>(
    out: &mut String,
    passthrough: &'a crate::runtime::Passthrough,
    host: &str,
    q: &Question<'_>,
) -> Option<&'a super::Upstream> {
    // The client sends the URL's host as SNI (RFC 6066 §3); a Host header never reaches us.
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let _ = writeln!(
        out,
        "tls       passthrough: not terminated, routed by the server name (SNI) {name}"
    );
    let entry = passthrough.routes.iter().find(|(p, _)| p.matches(&name));
    let upstream = match (entry, &passthrough.default) {
        (Some((pattern, upstream)), _) => {
            let _ = writeln!(
                out,
                "sni       {name} matches entry {} — chosen",
                describe_host(pattern)
            );
            upstream
        }
        (None, Some(upstream)) => {
            let _ = writeln!(
                out,
                "sni       {name} matches no entry; the listener's `upstream` takes it"
            );
            upstream
        }
        (None, None) => {
            let _ = writeln!(
                out,
                "result    connection closed — no sni entry matches {name} and the listener has no `upstream`"
            );
            return None;
        }
    };
    let _ = writeln!(
        out,
        "action    pass the TLS bytes through to upstream {}",
        upstream.name
    );
    let pick = crate::balance::RequestView::connection(q.client);
    target_line(out, upstream, &pick);
    Some(upstream)
}

/// A `tcp` or `tls` listener: no HTTP, every connection goes to the listener's upstream.
fn explain_stream(
    out: &mut String,
    listener: &super::Listener,
    stream: &crate::runtime::Stream,
    q: &Question<'_>,
) {
    if listener.tls.is_some() {
        let _ = writeln!(
            out,
            "tls       terminated with the listener's certificates; the bytes inside are relayed"
        );
    }
    let _ = writeln!(
        out,
        "action    relay the connection (layer 4) to upstream {}{}",
        stream.upstream.name,
        if stream.tls.is_some() {
            " over TLS"
        } else {
            ""
        }
    );
    let pick = crate::balance::RequestView::connection(q.client);
    target_line(out, &stream.upstream, &pick);
}

fn target_line(
    out: &mut String,
    upstream: &super::Upstream,
    pick: &crate::balance::RequestView<'_>,
) {
    match upstream.balancer.peek(&upstream.targets, pick) {
        Some(t) => {
            let _ = writeln!(
                out,
                "target    {} (next pick of {})",
                upstream.targets[t].address,
                upstream.balancer.name()
            );
        }
        None => {
            let _ = writeln!(out, "target    none available");
        }
    }
}

fn describe_host(pattern: &crate::routing::HostPattern) -> String {
    match pattern {
        crate::routing::HostPattern::Exact(n) => n.clone(),
        crate::routing::HostPattern::Suffix(s) => format!("*{s}"),
    }
}

fn describe(cond: &Conditions, secrets: &Credentials) -> String {
    let mut parts = Vec::new();
    if !cond.hosts.is_empty() {
        let hosts: Vec<String> = cond.hosts.iter().map(describe_host).collect();
        parts.push(format!("hosts={}", hosts.join(",")));
    }
    match &cond.path {
        PathMatch::Any => {}
        PathMatch::Exact(p) => parts.push(format!("path={p}")),
        PathMatch::Template(t) => parts.push(format!("template={t}")),
        PathMatch::Prefix(p) => parts.push(format!("prefix={}/", p)),
        PathMatch::Regex(r) => parts.push(format!("regex={}", r.as_str())),
    }
    if !cond.methods.is_empty() {
        let methods: Vec<&str> = cond.methods.iter().map(Method::as_str).collect();
        parts.push(format!("methods={}", methods.join(",")));
    }
    // A value on a credential name is a secret: shown as <redacted>, and `why_not` says only
    // whether it matches.
    for (name, value) in &cond.headers {
        let value = if secrets.header(name.as_str()) {
            REDACTED
        } else {
            value.to_str().unwrap_or("?")
        };
        parts.push(format!("header {name}={value}"));
    }
    for (name, value) in &cond.query {
        let value = if secrets.query(name) { REDACTED } else { value };
        parts.push(format!("query {name}={value}"));
    }
    for (name, value) in &cond.cookies {
        let value = if secrets.cookie(name) {
            REDACTED
        } else {
            value
        };
        parts.push(format!("cookie {name}={value}"));
    }
    if parts.is_empty() {
        "(matches everything)".into()
    } else {
        parts.join(" ")
    }
}

fn why_not(cond: &Conditions, view: &RequestView<'_>) -> Option<String> {
    if !cond.hosts.is_empty() && !cond.hosts.iter().any(|h| h.matches(view.host)) {
        return Some(format!("host {} not listed", view.host));
    }
    if !cond.path.matches(view.path) {
        return Some(format!("path {} does not match", view.path));
    }
    cond.check_rest(view)
        .err()
        .map(|what| format!("{what} does not match"))
}

/// The listener's per-address limits and load shedding, and what this client counts as.
fn explain_admission(out: &mut String, listener: &super::Listener, client: std::net::IpAddr) {
    use crate::config::units::Dur;
    if let Some(per_ip) = &listener.limits.per_ip {
        let mut limits = Vec::new();
        if let Some(n) = per_ip.connections {
            limits.push(format!("{n} connections at once"));
        }
        if let Some(rate) = &per_ip.rate {
            limits.push(format!(
                "a request every {} ({} at once), then 429",
                Dur(std::time::Duration::from_nanos(rate.interval)),
                rate.tolerance / rate.interval.max(1) + 1,
            ));
        }
        let _ = writeln!(
            out,
            "per ip    {} per client address; this client counts as {} (IPv6 by /{})",
            limits.join(", "),
            crate::admission::client_key(client, per_ip.ipv6_prefix),
            per_ip.ipv6_prefix,
        );
    }
    if let Some(overload) = &listener.overload {
        let limit = match &overload.adaptive {
            Some(a) => format!(
                "an adaptive limit from {} (between {} and {}, recomputed every {})",
                a.initial_limit,
                a.min_limit,
                overload.max_in_flight,
                Dur(a.interval)
            ),
            None => format!("at most {}", overload.max_in_flight),
        };
        let _ = writeln!(
            out,
            "overload  {limit} requests in flight; beyond it a request waits up to {}, then 503 \
             overloaded (respond and redirect routes are never shed)",
            Dur(overload.queue_timeout),
        );
    }
}
