//! Layer 4 listeners (`tcp`, `tls`, `tls_passthrough`): their upstream, SNI routing, and the
//! keys that make no sense for a relayed connection, each reported at its position.

use std::collections::HashSet;
use std::sync::Arc;

use super::checks::Upstreams;
use crate::config::spec::{
    ListenerProtocol, ListenerSpec, RouteSpec, UpstreamProtocol, UpstreamSpec,
};
use crate::config::{At, Diagnostics, Spec};
use crate::routing::HostPattern;
use crate::runtime::{Passthrough, Stream};

/// The protocol's name as written in the config.
fn protocol_name(protocol: ListenerProtocol) -> &'static str {
    match protocol {
        ListenerProtocol::Http => "http",
        ListenerProtocol::Https => "https",
        ListenerProtocol::TlsPassthrough => "tls_passthrough",
        ListenerProtocol::Tcp => "tcp",
        ListenerProtocol::Tls => "tls",
        ListenerProtocol::Udp => "udp",
    }
}

/// SNI routing of a `tls_passthrough` listener.
pub(super) fn compile_passthrough(
    spec: &ListenerSpec,
    upstreams: &Upstreams<'_>,
    specs: &[(At<String>, UpstreamSpec)],
    diags: &mut Diagnostics,
) -> Option<Passthrough> {
    if spec.protocol != ListenerProtocol::TlsPassthrough {
        if !spec.sni.is_empty() {
            diags.error(
                spec.name.pos,
                "`sni` applies to `protocol: tls_passthrough` listeners",
            );
        }
        if spec.upstream.is_some() && !spec.protocol.is_l4() {
            diags.error(
                spec.name.pos,
                "`upstream` applies to `tcp`, `tls`, `udp` and `tls_passthrough` listeners",
            );
        }
        return None;
    }
    let find = |name: &At<String>, diags: &mut Diagnostics| {
        let found = upstreams.find(name, diags)?;
        relayable(spec.protocol, name, specs, diags);
        Some(found)
    };
    let mut routes = Vec::new();
    for (pattern, upstream) in &spec.sni {
        match HostPattern::parse(pattern) {
            Ok(p) => {
                if let Some(u) = find(upstream, diags) {
                    routes.push((p, u));
                }
            }
            Err(err) => diags.error(upstream.pos, err.to_string()),
        }
    }
    // Exact names first, then longer wildcards before shorter ones.
    routes.sort_by_key(|(p, _)| std::cmp::Reverse(p.rank()));
    let default = spec.upstream.as_ref().and_then(|u| find(u, diags));
    // Judged on what was written: an entry naming a broken upstream has its own error.
    if spec.sni.is_empty() && spec.upstream.is_none() {
        diags.error(
            spec.name.pos,
            "a tls_passthrough listener needs `sni` entries or an `upstream`",
        );
    }
    Some(Passthrough { routes, default })
}

/// The upstream of a `tcp` or `tls` listener.
pub(super) fn compile_stream(
    spec: &ListenerSpec,
    upstreams: &Upstreams<'_>,
    specs: &[(At<String>, UpstreamSpec)],
    diags: &mut Diagnostics,
) -> Option<Stream> {
    if !matches!(spec.protocol, ListenerProtocol::Tcp | ListenerProtocol::Tls) {
        return None;
    }
    let what = protocol_name(spec.protocol);
    let Some(name) = &spec.upstream else {
        diags.error(
            spec.name.pos,
            format!("a {what} listener needs `upstream: NAME` (where its connections go)"),
        );
        return None;
    };
    let upstream = upstreams.find(name, diags)?;
    relayable(spec.protocol, name, specs, diags);
    // The upstream's TLS as for HTTP, but without ALPN: the bytes are not HTTP.
    let tls = upstream.tls.as_ref().map(|t| {
        let mut config = (*t.config).clone();
        config.alpn_protocols.clear();
        crate::tls::UpstreamTls {
            config: Arc::new(config),
            sni: t.sni.clone(),
        }
    });
    Some(Stream { upstream, tls })
}

/// A `tls` listener offers no ALPN (the bytes it relays are not HTTP), but for ACME's
/// `acme-tls/1` when it obtains its certificates by TLS-ALPN-01.
pub(super) fn listener_alpn(
    spec: &ListenerSpec,
    config: Option<Arc<rustls::ServerConfig>>,
) -> Option<Arc<rustls::ServerConfig>> {
    let config = config?;
    if spec.protocol != ListenerProtocol::Tls {
        return Some(config);
    }
    let mut config = (*config).clone();
    config
        .alpn_protocols
        .retain(|p| p.as_slice() == crate::tls::acme::ACME_TLS_ALPN);
    Some(Arc::new(config))
}

/// Keys of an upstream that mean nothing to a relayed connection, reported where the
/// listener names the upstream (or at the key).
fn relayable(
    protocol: ListenerProtocol,
    name: &At<String>,
    specs: &[(At<String>, UpstreamSpec)],
    diags: &mut Diagnostics,
) {
    let Some((_, upstream)) = specs.iter().find(|(n, _)| n.as_str() == name.as_str()) else {
        return;
    };
    let what = protocol_name(protocol);
    if upstream.protocol != UpstreamProtocol::Http1 {
        diags.error(
            name.pos,
            format!(
                "upstream `{}` speaks `protocol: {}`, which a {what} listener does not: its \
                 connections carry bytes, not HTTP requests (leave `protocol` out)",
                **name,
                match upstream.protocol {
                    UpstreamProtocol::Http2 => "http2",
                    UpstreamProtocol::Grpc => "grpc",
                    UpstreamProtocol::Http1 => "http1",
                }
            ),
        );
    }
    if let Some(key) = &upstream.hash_key
        && key.as_str() != "client_ip"
    {
        diags.error(
            key.pos,
            format!(
                "upstream `{}` is used by a {what} listener, whose connections have no `{}` to \
                 hash: use `client_ip` or leave `hash_key` out",
                **name,
                key.as_str()
            ),
        );
    }
    if upstream.sticky.is_some() {
        diags.error(
            name.pos,
            format!(
                "upstream `{}` has `sticky` (a cookie), which a {what} listener cannot set: use \
                 `balance: ip_hash` for stickiness by client address",
                **name
            ),
        );
    }
    if protocol == ListenerProtocol::TlsPassthrough && upstream.tls.is_some() {
        diags.error(
            name.pos,
            format!(
                "upstream `{}` has `tls`, but a tls_passthrough listener relays the client's own \
                 TLS untouched: leave `tls` out (or use `protocol: tls` to terminate and \
                 encrypt again)",
                **name
            ),
        );
    }
}

/// A route that names a layer 4 listener in its `listeners:` is an error: such a listener
/// serves no HTTP routes. Routes without `listeners:` simply do not attach to it.
pub(super) fn no_routes(listener: &ListenerSpec, route: &RouteSpec, diags: &mut Diagnostics) {
    let Some(names) = &route.listeners else {
        return;
    };
    for name in names
        .iter()
        .filter(|n| n.as_str() == listener.name.as_str())
    {
        diags.error(
            name.pos,
            format!(
                "route `{}` names listener `{}`, a {} listener, which relays {} and serves no \
                 routes",
                *route.name,
                *listener.name,
                protocol_name(listener.protocol),
                if listener.protocol == ListenerProtocol::Udp {
                    "datagrams"
                } else {
                    "connections"
                }
            ),
        );
    }
}

/// `circuit_breaker.max_connections_per_target` counts relayed connections only: on an
/// upstream that no layer 4 listener uses it would limit nothing.
pub(super) fn per_target_limits(spec: &Spec, diags: &mut Diagnostics) {
    let relayed: HashSet<&str> = spec
        .listeners
        .iter()
        .filter(|l| l.protocol.is_l4())
        .flat_map(|l| l.upstream.iter().chain(l.sni.values()))
        .map(|u| u.as_str())
        .collect();
    for (name, upstream) in &spec.upstreams {
        let Some(limit) = upstream
            .circuit_breaker
            .as_ref()
            .and_then(|c| c.max_connections_per_target.as_ref())
        else {
            continue;
        };
        if !relayed.contains(name.as_str()) {
            diags.error(
                limit.pos,
                format!(
                    "max_connections_per_target limits connections relayed by tcp, tls and \
                     tls_passthrough listeners, and no such listener uses upstream `{}` (for \
                     HTTP, use max_connections)",
                    **name
                ),
            );
        }
    }
}
