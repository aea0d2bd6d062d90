//! Spec → [`Snapshot`]: resolves names, builds matchers, balancers and plugins, and reports
//! every problem at once with its position.
//!
//! Compiling is a function of the spec and of what live state it finds: it looks up target
//! state, plugin state and ACME state but adds none, registers no metric series and starts no
//! task. What a new config needs is handed over in the snapshot and made live when the
//! snapshot is started (`server::reload`), so a refused reload leaves everything as it was.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;

use super::{
    Action, Limits, Listener, ListenerRoute, Redirect, Respond, RetryPolicy, Rewrite, Route,
    Snapshot, Upstream,
};
use crate::balance::hash::{Maglev, Ring};
use crate::balance::{Algorithm, Balancer, HashKey, smooth_sequence};
use crate::config::spec::{
    BackslashSpec, BalanceSpec, CheckType, EncodedSlashSpec, ListenerProtocol, ListenerSpec,
    MatchSpec, MatrixParamsSpec, RetryCondition, RetryOnSpec, RetrySpec, RouteSpec, UpstreamSpec,
    Workers,
};
use crate::config::{At, Diagnostic, Diagnostics, Pos, Spec};
use crate::health::PassivePolicy;
use crate::observe::Metrics;
use crate::plugins::{self, PluginChain};
use crate::pool::check::{ActiveCheck, CheckKind};
use crate::pool::{PoolSettings, Registry};
use crate::routing::path::{Backslash, EncodedSlash, MatrixParams, PathPolicy};
use crate::routing::{Conditions, HostPattern, PathMatch, RouteTable, path};
use checks::{Shadows, Upstreams, did_you_mean};

/// What compiled tables attach to: live target state and metric families.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Env<'a> {
    /// Target state, kept across reloads.
    pub(crate) registry: &'a Registry,
    /// Metric families.
    pub(crate) metrics: &'a Metrics,
    /// ACME state, kept across reloads.
    pub(crate) acme: &'a crate::tls::acme::Store,
    /// Plugin state, kept across reloads.
    pub(crate) states: &'a crate::plugins::state::PluginStates,
}

/// Worker threads `workers:` asks for.
pub(crate) fn worker_count(workers: &Workers) -> usize {
    match workers {
        Workers::Count(n) => *n,
        Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// Reads the file at `path` and compiles it. What parsed is compiled even when something did
/// not, so the errors of both steps come at once.
pub(crate) fn load(path: &Path, env: Env<'_>) -> Result<Snapshot, Vec<Diagnostic>> {
    let (spec, errors) = crate::config::read(path);
    compile_read(spec, errors, &path.display().to_string(), env)
}

/// Compiles what `config::read` returned; its `errors` come first in the answer.
pub(crate) fn compile_read(
    spec: Spec,
    mut errors: Vec<Diagnostic>,
    file: &str,
    env: Env<'_>,
) -> Result<Snapshot, Vec<Diagnostic>> {
    match compile(spec, file, env) {
        Ok(snap) if errors.is_empty() => return Ok(snap),
        Ok(snap) => errors.extend(snap.warnings.iter().cloned()),
        // A value the reader found in error (an unset `${VAR}`, say) is not reported again
        // for what follows from it (too short a key).
        Err(more) => {
            let read: Vec<_> = errors.iter().map(|d| d.pos).collect();
            errors.extend(more.into_iter().filter(|d| !read.contains(&d.pos)));
        }
    }
    crate::config::sort_diagnostics(&mut errors);
    Err(errors)
}

/// Compiles `spec` (read from `file`) into a snapshot, or returns every problem found.
pub(crate) fn compile(spec: Spec, file: &str, env: Env<'_>) -> Result<Snapshot, Vec<Diagnostic>> {
    let mut diags = Diagnostics::new(file);

    let workers = worker_count(&spec.workers);

    let admin = spec.admin.as_ref().and_then(|admin| {
        let addr = parse_addr(&admin.listen, &mut diags)?;
        if !addr.ip().is_loopback() && admin.token.as_deref().is_none_or(str::is_empty) {
            diags.error(
                admin.listen.pos,
                "the admin API listens off loopback, so it needs a `token`",
            );
        }
        Some((addr, admin.token.clone()))
    });

    let debug = spec.debug.as_ref().and_then(|debug| {
        let name = match http::HeaderName::from_bytes(debug.header.as_bytes()) {
            Ok(name) => name,
            Err(_) => {
                diags.error(
                    debug.token.pos,
                    format!("debug.header `{}` is not a valid header name", debug.header),
                );
                return None;
            }
        };
        if debug.token.chars().count() < 16 {
            diags.error(
                debug.token.pos,
                "debug.token must be 16 characters or more (use `${ENV}`)",
            );
            return None;
        }
        Some(super::DebugHeader {
            name,
            token: debug.token.as_bytes().into(),
        })
    });

    let tracing = spec.tracing.as_ref().and_then(|t| {
        let endpoint = match t.endpoint.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => uri,
            _ => {
                diags.error(
                    t.endpoint.pos,
                    format!(
                        "tracing.endpoint `{}` must be an http:// URL with a host, like \
                         http://127.0.0.1:4318/v1/traces",
                        *t.endpoint
                    ),
                );
                return None;
            }
        };
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            diags.error(
                t.endpoint.pos,
                format!(
                    "tracing.sample_ratio must be from 0 to 1, not {}",
                    t.sample_ratio
                ),
            );
            return None;
        }
        Some(crate::trace::Settings {
            endpoint,
            ratio: t.sample_ratio,
            service: t.service_name.clone(),
            timeout: t.timeout.0,
        })
    });

    let upstreams = compile_upstreams(&spec.upstreams, env, &mut diags);
    let by_name = Upstreams {
        compiled: upstreams.iter().map(|u| (&*u.name, u)).collect(),
        declared: spec.upstreams.iter().map(|(n, _)| n.as_str()).collect(),
        unparsed: &spec.unparsed,
    };

    let consumers = match crate::plugins::auth::Consumers::build(&spec.consumers) {
        Ok(c) => Arc::new(c),
        Err(err) => {
            diags.error(err.pos(), err.to_string());
            Arc::default()
        }
    };
    let mut consumer_names: HashMap<&str, Pos> = HashMap::new();
    for consumer in &spec.consumers {
        if let Some(first) = consumer_names.insert(&consumer.name, consumer.name.pos) {
            diags.error(
                consumer.name.pos,
                format!(
                    "duplicate consumer name `{}` (first at line {})",
                    *consumer.name, first.line
                ),
            );
        }
    }
    let config_dir = Path::new(file)
        .parent()
        .unwrap_or(Path::new("."))
        .to_owned();
    let fresh = std::sync::Mutex::new(Vec::new());
    let claims = std::sync::Mutex::new(Vec::new());
    let find_upstream = |name: &str| {
        if let Some(u) = by_name.compiled.get(name) {
            return Ok(super::aggregate::PluginCall::target(u));
        }
        if by_name.declared.contains(&name) || by_name.unparsed.declares("upstreams", name) {
            return Err(format!("upstream `{name}` has errors (see above)"));
        }
        Err(format!(
            "upstream `{name}` is not defined{}",
            checks::did_you_mean(name, by_name.declared.iter().copied())
        ))
    };
    let redis = spec
        .cluster
        .as_ref()
        .and_then(|c| c.redis.as_ref())
        .and_then(|r| {
            let made = crate::plugins::cluster::Redis::new(
                &r.url,
                r.timeout.0,
                r.fallback,
                &r.prefix,
                env.metrics.cluster_decisions(),
            );
            match made {
                Ok(redis) => Some(Arc::new(redis)),
                Err(err) => {
                    diags.error(r.url.pos, format!("cluster.redis.url: {err}"));
                    None
                }
            }
        });
    if let Some(etcd) = spec.cluster.as_ref().and_then(|c| c.etcd.as_ref()) {
        crate::cluster::check(etcd, &mut diags);
    }
    let build_env = plugins::BuildEnv {
        consumers: &consumers,
        metrics: env.metrics,
        base: &config_dir,
        state: crate::plugins::state::StateScope::new(env.states, &fresh).with_claims(&claims),
        upstreams: plugins::UpstreamLookup(&find_upstream),
        redis: redis.as_ref(),
    };
    let global_plugins = compile_plugins(&spec.plugins, "global", build_env, &mut diags, false);
    let consumer_plugins = compile_consumer_plugins(&spec.consumers, build_env, &mut diags);

    // Routes, with their position for table errors.
    let mut routes: Vec<(Arc<Route>, Option<Conditions>, &RouteSpec)> = Vec::new();
    let mut route_names: HashMap<&str, Pos> = HashMap::new();
    for spec_route in &spec.routes {
        if let Some(first) = route_names.insert(&spec_route.name, spec_route.name.pos) {
            diags.error(
                spec_route.name.pos,
                format!(
                    "duplicate route name `{}` (first at line {})",
                    *spec_route.name, first.line
                ),
            );
        }
        let conditions = compile_match(&spec_route.matches, &mut diags);
        if let Some(route) = compile_route(
            spec_route,
            &by_name,
            (&global_plugins, &consumer_plugins),
            (&consumer_names, &spec.unparsed),
            build_env,
            &mut diags,
        ) {
            routes.push((Arc::new(route), conditions, spec_route));
        }
    }

    let listener_names: Vec<&str> = spec.listeners.iter().map(|l| l.name.as_str()).collect();
    for spec_route in &spec.routes {
        for name in spec_route.listeners.iter().flatten() {
            if !listener_names.contains(&name.as_str())
                && !spec.unparsed.declares("listeners", name)
            {
                diags.error(
                    name.pos,
                    format!(
                        "route `{}` names listener `{}`, which does not exist{}",
                        *spec_route.name,
                        **name,
                        did_you_mean(name, listener_names.iter().copied())
                    ),
                );
            }
        }
    }
    let mut shadows = Shadows::default();

    let base = Path::new(file).parent().unwrap_or(Path::new("."));
    let upgrade = spec.upgrade.as_ref().and_then(|upgrade| {
        if upgrade.socket.trim().is_empty() {
            diags.error(upgrade.socket.pos, "`upgrade.socket` must be a file path");
            return None;
        }
        Some(resolve_path(base, &upgrade.socket))
    });
    let mut tls_files = Vec::new();
    let mut acme = Vec::new();
    let acme_cluster = crate::tls::acme::seal::cluster_key(spec.cluster.as_ref(), &mut diags);
    // A lint for a file that reads and compiles cleanly so far: with a route that did not
    // parse whole, "not used" would only repeat its error.
    if diags.list.is_empty() && spec.unparsed.partial.is_empty() {
        checks::unused_upstreams(&spec, &mut diags);
        lints::lint(&spec, &mut diags);
    }
    let mut listeners = Vec::new();
    let mut seen_names: HashMap<&str, Pos> = HashMap::new();
    // UDP and TCP ports are apart: a udp listener may share a TCP listener's address.
    let mut seen_addrs: Vec<(SocketAddr, Pos, bool)> = Vec::new();
    let trusted_proxies = super::client_addr::compile(spec.trusted_proxies.as_ref(), &mut diags);
    for spec_listener in &spec.listeners {
        if let Some(first) = seen_names.insert(&spec_listener.name, spec_listener.name.pos) {
            diags.error(
                spec_listener.name.pos,
                format!(
                    "duplicate listener name `{}` (first at line {})",
                    *spec_listener.name, first.line
                ),
            );
        }
        let Some(addr) = parse_addr(&spec_listener.bind, &mut diags) else {
            continue;
        };
        let datagrams = spec_listener.protocol == ListenerProtocol::Udp;
        if addr.port() != 0 {
            if let Some((_, first, _)) = seen_addrs
                .iter()
                .find(|(other, _, udp)| *udp == datagrams && overlaps(*other, addr))
            {
                diags.error(
                    spec_listener.bind.pos,
                    format!(
                        "two listeners bind {addr} (the other at line {})",
                        first.line
                    ),
                );
            }
            seen_addrs.push((addr, spec_listener.bind.pos, datagrams));
        }
        if let Some((admin_addr, _)) = admin
            && !datagrams
            && admin_addr.port() != 0
            && overlaps(admin_addr, addr)
        {
            diags.error(
                spec_listener.bind.pos,
                format!("listener binds {addr}, the admin API's address"),
            );
        }
        let limits = &spec_listener.limits;
        if limits.max_header_size.0 < 1024 {
            diags.error(
                spec_listener.bind.pos,
                "limits.max_header_size must be at least 1KiB",
            );
        }
        if limits.send_buffer.0 < 16 << 10 {
            diags.error(
                spec_listener.bind.pos,
                "limits.send_buffer must be at least 16KiB",
            );
        }
        if limits.send_timeout.0.is_zero() {
            diags.error(
                spec_listener.bind.pos,
                "limits.send_timeout must be longer than 0",
            );
        }
        let listener_tls = compile_listener_tls(
            spec_listener,
            base,
            (env.acme, &mut acme, &acme_cluster),
            &mut tls_files,
            &mut diags,
        );
        let redirect_https = spec_listener.redirect_https.as_ref().and_then(|r| {
            if spec_listener.protocol != ListenerProtocol::Http {
                diags.error(
                    r.status.pos,
                    "redirect_https applies to `protocol: http` listeners",
                );
            }
            match *r.status {
                301 | 302 | 307 | 308 => StatusCode::from_u16(*r.status).ok().map(|s| (r.port, s)),
                _ => {
                    diags.error(
                        r.status.pos,
                        "redirect_https.status must be 301, 302, 307 or 308",
                    );
                    None
                }
            }
        });
        let hsts = spec_listener.hsts.as_ref().and_then(|h| {
            if spec_listener.protocol != ListenerProtocol::Https {
                diags.error(
                    spec_listener.name.pos,
                    "hsts applies to `protocol: https` listeners",
                );
            }
            let mut value = format!("max-age={}", h.max_age.0.as_secs());
            if h.include_subdomains {
                value.push_str("; includeSubDomains");
            }
            if h.preload {
                value.push_str("; preload");
            }
            HeaderValue::from_str(&value).ok()
        });
        let passthrough =
            l4::compile_passthrough(spec_listener, &by_name, &spec.upstreams, &mut diags);
        let stream = l4::compile_stream(spec_listener, &by_name, &spec.upstreams, &mut diags);
        let listener_tls = l4::listener_alpn(spec_listener, listener_tls);
        let udp = udp::compile_udp(spec_listener, &spec.upstreams, &by_name, &mut diags);
        let name: Arc<str> = Arc::from(spec_listener.name.as_str());
        let mut attached = Vec::new();
        let mut conditions = Vec::new();
        let mut positions = Vec::new();
        shadows.next_listener();
        for (index, (route, cond, spec_route)) in routes.iter().enumerate() {
            let wanted = spec_route
                .listeners
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n.as_str() == &*name));
            let Some(cond) = cond else { continue };
            if spec_listener.protocol.is_l4() {
                l4::no_routes(spec_listener, spec_route, &mut diags);
                continue;
            }
            if !wanted {
                continue;
            }
            let metrics = match &route.action {
                Action::Forward { arms, .. } => arms
                    .iter()
                    .map(|u| env.metrics.route(&name, &route.name, &u.name))
                    .collect(),
                _ => vec![env.metrics.route(&name, &route.name, "")],
            };
            attached.push(ListenerRoute {
                route: Arc::clone(route),
                metrics,
            });
            conditions.push(cond.clone());
            positions.push(spec_route.name.pos);
            shadows.attach(index, &spec_route.matches);
        }
        let table = match RouteTable::build(conditions) {
            Ok(table) => table,
            Err(errors) => {
                for err in errors {
                    diags.error(positions[err.route], err.to_string());
                }
                RouteTable::default()
            }
        };
        listeners.push(Listener {
            name,
            addr,
            limits: Limits {
                max_header_size: limits.max_header_size.bytes(),
                max_uri_length: limits.max_uri_length.bytes(),
                header_timeout: limits.header_timeout.0,
                idle_timeout: limits.idle_timeout.0,
                max_connections: limits.max_connections.max(1),
                max_concurrent_streams: limits.max_concurrent_streams.max(1),
                send_timeout: limits.send_timeout.0,
                send_buffer: limits.send_buffer.bytes(),
                per_ip: admission::per_ip(spec_listener, &mut diags),
            },
            overload: admission::overload(spec_listener, &mut diags),
            routes: attached,
            table,
            tls: listener_tls,
            redirect_https,
            hsts,
            passthrough,
            stream,
            proxy_protocol: compile_proxy_accept(spec_listener, &mut diags),
            trusted_proxies: listener_trusted(spec_listener, trusted_proxies.as_ref(), &mut diags),
            udp,
        });
    }
    l4::per_target_limits(&spec, &mut diags);

    shadows.report(|i| (&*routes[i].0.name, routes[i].2.name.pos), &mut diags);

    // An item that parsed only in part has its own errors already; errors about it as a
    // whole (reported at its name) may be about what was dropped.
    let partial = &spec.unparsed.partial;
    diags.list.retain(|d| !partial.contains(&d.pos));

    for upstream in &spec.upstreams {
        if let Some(tls) = &upstream.1.tls {
            for file in [&tls.ca_file, &tls.cert_file, &tls.key_file]
                .into_iter()
                .flatten()
            {
                tls_files.push(resolve_path(base, file));
            }
        }
    }
    let fresh = match fresh.into_inner() {
        Ok(f) => f,
        Err(poisoned) => poisoned.into_inner(),
    };
    let ((), warnings) = diags.finish(())?;
    Ok(Snapshot {
        hash: super::history::config_hash(&spec),
        spec,
        listeners,
        upstreams,
        workers,
        admin,
        tracing,
        debug,
        upgrade,
        tls_files,
        global: PluginChain::build(&global_plugins, &[], &consumer_plugins, &HashMap::new()),
        warnings,
        fresh,
        acme,
    })
}

/// A path from the config, relative to the config file's folder.
fn resolve_path(base: &Path, file: &str) -> PathBuf {
    let path = Path::new(file);
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

/// The TLS server config of an https listener; every problem is reported at its file's position.
fn compile_listener_tls(
    spec: &ListenerSpec,
    base: &Path,
    (acme_store, acme_listeners, acme_cluster): (
        &crate::tls::acme::Store,
        &mut Vec<(Arc<crate::tls::acme::AcmeState>, crate::tls::acme::Settings)>,
        &crate::tls::acme::seal::ClusterKey,
    ),
    tls_files: &mut Vec<PathBuf>,
    diags: &mut Diagnostics,
) -> Option<Arc<rustls::ServerConfig>> {
    let Some(tls) = &spec.tls else {
        if matches!(
            spec.protocol,
            ListenerProtocol::Https | ListenerProtocol::Tls
        ) {
            diags.error(
                spec.name.pos,
                format!(
                    "{} listener needs `tls: {{ certificates: [...] }}`",
                    if spec.protocol == ListenerProtocol::Tls {
                        "a tls"
                    } else {
                        "an https"
                    }
                ),
            );
        }
        return None;
    };
    if !matches!(
        spec.protocol,
        ListenerProtocol::Https | ListenerProtocol::Tls
    ) {
        diags.error(
            spec.name.pos,
            "`tls` applies to `protocol: https` and `protocol: tls` listeners",
        );
        return None;
    }
    if tls.certificates.is_empty() && tls.acme.is_none() {
        diags.error(
            spec.name.pos,
            "an https listener needs `certificates` or `acme`",
        );
        return None;
    }
    let acme = tls.acme.as_ref().and_then(|a| {
        use crate::config::spec::AcmeChallengeSpec;
        use crate::tls::acme::seal::ClusterKey;
        use crate::tls::acme::{Challenge, Settings};
        let seal = match acme_cluster {
            ClusterKey::Off | ClusterKey::Invalid => None,
            ClusterKey::Key(key) => Some(Arc::clone(key)),
            ClusterKey::Missing => {
                diags.error(
                    a.directory.pos,
                    "tls.acme with cluster.etcd: the nodes share certificates through etcd, \
                     sealed with `cluster.etcd.secret_key` (32 bytes in base64, the same on \
                     every node; make one with `openssl rand -base64 32`), which is not set",
                );
                None
            }
        };
        if !a.directory.starts_with("https://") && !a.directory.starts_with("http://") {
            diags.error(a.directory.pos, "acme.directory must be an http(s) URL");
        }
        if a.domains.is_empty() {
            diags.error(a.domains.pos, "acme.domains needs at least one name");
            return None;
        }
        for domain in a.domains.iter() {
            if HostPattern::parse(domain).is_err() {
                diags.error(a.domains.pos, format!("invalid domain `{domain}`"));
                return None;
            }
        }
        let storage = match &a.storage {
            Some(dir) => resolve_path(base, dir),
            None => base.join("acme").join(&a.domains[0]),
        };
        let settings = Settings {
            directory: a.directory.value.clone(),
            email: a.email.clone(),
            domains: a.domains.value.clone(),
            challenge: match a.challenge {
                AcmeChallengeSpec::TlsAlpn01 => Challenge::TlsAlpn01,
                AcmeChallengeSpec::Http01 => Challenge::Http01,
            },
            storage,
            directory_ca: a.directory_ca_file.as_ref().map(|f| resolve_path(base, f)),
            renew_before: a.renew_before.0,
            check_every: a.check_every.0.max(std::time::Duration::from_millis(100)),
            seal,
        };
        // Two listeners sharing a storage folder share one state (and one renewal).
        let state = match acme_listeners
            .iter()
            .find(|(_, s)| s.storage == settings.storage)
        {
            Some((state, _)) => Arc::clone(state),
            None => {
                let state = acme_store.state(&settings);
                acme_listeners.push((Arc::clone(&state), settings));
                state
            }
        };
        Some(state)
    });
    let mut loaded = Vec::new();
    for cert in tls.certificates.iter() {
        let cert_path = resolve_path(base, &cert.cert_file);
        let key_path = resolve_path(base, &cert.key_file);
        tls_files.push(cert_path.clone());
        tls_files.push(key_path.clone());
        match crate::tls::load_pair(&cert_path, &key_path) {
            Ok(c) => loaded.push(c),
            Err(err) => {
                let pos = if err.in_key_file() {
                    cert.key_file.pos
                } else {
                    cert.cert_file.pos
                };
                diags.error(pos, err.to_string());
            }
        }
    }
    let client_auth = match &tls.client_auth {
        Some(auth) => {
            let path = resolve_path(base, &auth.ca_file);
            tls_files.push(path.clone());
            match crate::tls::roots(&path) {
                Ok(roots) => Some(crate::tls::ClientAuth {
                    roots,
                    required: auth.required,
                }),
                Err(err) => {
                    diags.error(auth.ca_file.pos, err.to_string());
                    return None;
                }
            }
        }
        None => None,
    };
    if loaded.len() != tls.certificates.len() {
        return None;
    }
    match crate::tls::server_config(&loaded, client_auth.as_ref(), acme) {
        Ok(config) => Some(config),
        Err(err) => {
            diags.error(tls.certificates.pos, err.to_string());
            None
        }
    }
}

/// Whether two bind addresses would collide on one port.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.ip().is_unspecified() && a.is_ipv4() == b.is_ipv4())
            || (b.ip().is_unspecified() && a.is_ipv4() == b.is_ipv4()))
}

fn parse_addr(text: &At<String>, diags: &mut Diagnostics) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            diags.error(
                text.pos,
                format!(
                    "invalid address `{}`: expected IP:PORT, like 127.0.0.1:8080",
                    **text
                ),
            );
            None
        }
    }
}

fn compile_upstreams(
    specs: &[(At<String>, UpstreamSpec)],
    env: Env<'_>,
    diags: &mut Diagnostics,
) -> Vec<Arc<Upstream>> {
    let mut out = Vec::new();
    for (name, spec) in specs {
        if spec.targets.is_empty() {
            diags.error(
                spec.targets.pos,
                format!("upstream `{}` has no targets", **name),
            );
            continue;
        }
        let mut ok = true;
        for target in spec.targets.iter() {
            if let Err(err) = check_target_address(&target.address) {
                diags.error(target.address.pos, err.to_string());
                ok = false;
            }
            if *target.weight == 0 {
                diags.error(target.weight.pos, "a target's weight must be at least 1");
                ok = false;
            }
        }
        if !ok {
            continue;
        }
        let weights: Vec<u32> = spec.targets.iter().map(|t| *t.weight).collect();
        let Some(upstream) = compile_upstream(name, spec, weights, env, diags) else {
            continue;
        };
        out.push(Arc::new(upstream));
    }
    out
}

fn compile_upstream(
    name: &At<String>,
    spec: &UpstreamSpec,
    weights: Vec<u32>,
    env: Env<'_>,
    diags: &mut Diagnostics,
) -> Option<Upstream> {
    let before = diags.list.len();
    let addresses: Vec<(&str, u32)> = spec
        .targets
        .iter()
        .map(|t| (t.address.as_str(), *t.weight))
        .collect();
    let key = match &spec.hash_key {
        Some(text) => match HashKey::parse(text) {
            Ok(key) => key,
            Err(err) => {
                diags.error(text.pos, err.to_string());
                HashKey::ClientIp
            }
        },
        None => HashKey::ClientIp,
    };
    if let Some(text) = &spec.hash_key
        && !matches!(spec.balance, BalanceSpec::RingHash | BalanceSpec::Maglev)
    {
        diags.error(text.pos, "hash_key applies to balance: ring_hash or maglev");
    }
    let algorithm = match spec.balance {
        BalanceSpec::RoundRobin => match smooth_sequence(&weights) {
            Some(sequence) => Algorithm::RoundRobin {
                sequence,
                next: AtomicUsize::new(0),
            },
            None => {
                diags.error(
                    spec.targets.pos,
                    format!(
                        "the target weights of `{}` are too large (their sum divided by their \
                         greatest common divisor must be at most {})",
                        **name,
                        crate::balance::MAX_WEIGHT_SUM
                    ),
                );
                return None;
            }
        },
        BalanceSpec::LeastRequest => Algorithm::LeastRequest {
            next: AtomicUsize::new(0),
        },
        BalanceSpec::Random => Algorithm::Random,
        BalanceSpec::P2cEwma => Algorithm::P2cEwma,
        BalanceSpec::RingHash => Algorithm::RingHash {
            ring: Ring::build(&addresses),
            key,
        },
        BalanceSpec::Maglev => Algorithm::Maglev {
            table: Maglev::build(&addresses),
            key,
        },
        BalanceSpec::IpHash => Algorithm::RingHash {
            ring: Ring::build(&addresses),
            key: HashKey::ClientIp,
        },
    };
    let health = spec.health_check.clone().unwrap_or_default();
    let active = health.active.as_ref().and_then(|a| {
        let method = match Method::from_bytes(a.method.to_ascii_uppercase().as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                diags.error(a.method.pos, format!("invalid method `{}`", *a.method));
                return None;
            }
        };
        let statuses = match crate::pool::check::parse_statuses(&a.expect_status) {
            Ok(s) => s,
            Err(err) => {
                diags.error(a.expect_status.pos, err.to_string());
                return None;
            }
        };
        if !a.path.starts_with('/') {
            diags.error(a.method.pos, "health_check.active.path must start with `/`");
        }
        if let Some(port) = a.port.as_ref().filter(|p| ***p == 0) {
            diags.error(port.pos, "health_check.active.port must be 1-65535");
        }
        Some(ActiveCheck {
            kind: match a.kind {
                CheckType::Http => CheckKind::Http {
                    method,
                    path: a.path.clone(),
                    statuses,
                    body: a.body_contains.clone(),
                },
                CheckType::Tcp => CheckKind::Tcp,
                CheckType::Grpc => CheckKind::Grpc {
                    service: a.service.clone(),
                },
            },
            interval: a.interval.0.max(std::time::Duration::from_millis(10)),
            jitter: a.jitter.0,
            timeout: a.timeout.0,
            healthy: a.healthy.max(1),
            unhealthy: a.unhealthy.max(1),
            tls: None,
            http2: false,
            proxy_protocol: None,
            port: a.port.as_ref().map(|p| **p),
        })
    });
    let passive = health.passive.as_ref().map(|p| PassivePolicy {
        consecutive_failures: p.consecutive_failures,
        error_rate_percent: p.error_rate.min(100),
        min_requests: p.min_requests,
        window: p.window.0,
        eject_for: p.eject_for.0,
        max_eject: p.max_eject.0.max(p.eject_for.0),
        max_ejected_percent: p.max_ejected_percent.min(100),
        connect_only: false,
    });
    // Without a passive policy, targets that cannot be reached are still taken out.
    let passive = passive.or(Some(PassivePolicy::CONNECT_FAILURES));
    if let Some(sticky) = &spec.sticky
        && (sticky.cookie.is_empty()
            || !sticky
                .cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        diags.error(
            sticky.cookie.pos,
            "a sticky cookie name is letters, digits, `_` and `-`",
        );
    }
    let tls = spec.tls.as_ref().and_then(|t| {
        let base = Path::new(diags.file())
            .parent()
            .unwrap_or(Path::new("."))
            .to_owned();
        let path = |f: &Option<At<String>>| f.as_ref().map(|f| resolve_path(&base, f));
        let identity = match (path(&t.cert_file), path(&t.key_file)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                diags.error(
                    name.pos,
                    "upstream tls needs both cert_file and key_file, or neither",
                );
                return None;
            }
        };
        let sni = match &t.sni {
            Some(sni) => match rustls_pki_types::ServerName::try_from(sni.value.clone()) {
                Ok(n) => Some(n),
                Err(_) => {
                    diags.error(sni.pos, format!("invalid server name `{}`", **sni));
                    return None;
                }
            },
            None => None,
        };
        let ca = path(&t.ca_file);
        let identity_refs = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        match crate::tls::client_config(
            ca.as_deref(),
            identity_refs,
            t.verify,
            spec.protocol.http2(),
        ) {
            Ok(config) => Some(crate::tls::UpstreamTls { config, sni }),
            Err(err) => {
                use crate::tls::ClientTlsError;
                let file = match &err {
                    ClientTlsError::Ca(_) => t.ca_file.as_ref(),
                    ClientTlsError::Identity(e) if e.in_key_file() => t.key_file.as_ref(),
                    ClientTlsError::Identity(_) => t.cert_file.as_ref(),
                    ClientTlsError::Setup(_) => None,
                };
                diags.error(file.map_or(name.pos, |f| f.pos), err.to_string());
                None
            }
        }
    });
    if diags.list.len() > before {
        return None;
    }
    // Checks speak the upstream's protocol: TLS and HTTP/2 as its traffic does.
    let active = active.map(|mut check| {
        check.tls = tls.clone();
        check.http2 = spec.protocol.http2();
        check.proxy_protocol = spec.proxy_protocol.map(proxy_version);
        check
    });
    // A target written twice is one target (one pool, one in-flight count), as it is once
    // the registry holds it.
    let mut made: HashMap<&str, Arc<crate::pool::TargetState>> = HashMap::new();
    let state = env.registry.upstream(name);
    let targets = spec
        .targets
        .iter()
        .map(|t| {
            Arc::clone(
                made.entry(t.address.as_str())
                    .or_insert_with(|| env.registry.target(name, &t.address, &state.freed)),
            )
        })
        .collect();
    Some(Upstream {
        name: Arc::from(name.as_str()),
        balancer: Balancer {
            algorithm,
            weights,
            slow_start: spec.slow_start.map_or(std::time::Duration::ZERO, |d| d.0),
            panic: health.panic,
        },
        targets,
        http2: spec.protocol.http2(),
        pool: PoolSettings {
            max_idle: u32::try_from(spec.pool.max_idle).unwrap_or(u32::MAX),
            idle_timeout: spec.pool.idle_timeout.0,
            connect_timeout: spec.connect_timeout.0,
            demand_window_ms: u32::try_from(spec.pool.demand_window.0.as_millis())
                .unwrap_or(u32::MAX),
        },
        resolve_every: spec.resolve_every.0,
        state,
        passive,
        active,
        sticky: spec
            .sticky
            .as_ref()
            .map(|s| (s.cookie.value.clone(), s.ttl.0)),
        max_requests: spec.circuit_breaker.as_ref().and_then(|c| c.max_requests),
        max_connections: spec
            .circuit_breaker
            .as_ref()
            .and_then(|c| c.max_connections),
        max_pending: spec.circuit_breaker.as_ref().and_then(|c| c.max_pending),
        max_connections_per_target: spec
            .circuit_breaker
            .as_ref()
            .and_then(|c| c.max_connections_per_target.as_ref())
            .map(|m| m.value.max(1)),
        tls,
        proxy_protocol: spec.proxy_protocol.map(proxy_version),
    })
}

fn proxy_version(v: crate::config::spec::ProxyProtocolVersion) -> crate::proxy_protocol::Version {
    match v {
        crate::config::spec::ProxyProtocolVersion::V1 => crate::proxy_protocol::Version::V1,
        crate::config::spec::ProxyProtocolVersion::V2 => crate::proxy_protocol::Version::V2,
    }
}

/// A listener's `trusted_proxies`: its own list, else the top level's.
fn listener_trusted(
    spec: &ListenerSpec,
    top: Option<&Arc<super::client_addr::TrustedProxies>>,
    diags: &mut Diagnostics,
) -> Option<Arc<super::client_addr::TrustedProxies>> {
    if spec.trusted_proxies.is_some() && spec.protocol.is_l4() {
        diags.error(
            spec.name.pos,
            "trusted_proxies applies to http and https listeners (a layer 4 listener reads no \
             forwarding headers)",
        );
        return None;
    }
    match &spec.trusted_proxies {
        Some(own) => super::client_addr::compile(Some(own), diags),
        None => top.cloned(),
    }
}

/// A listener's `proxy_protocol`: every trusted block must parse.
fn compile_proxy_accept(
    spec: &crate::config::spec::ListenerSpec,
    diags: &mut Diagnostics,
) -> Option<Arc<super::ProxyAccept>> {
    let accept = spec.proxy_protocol.as_ref()?;
    if spec.protocol == ListenerProtocol::Udp {
        diags.error(
            spec.name.pos,
            "proxy_protocol applies to TCP listeners; a udp listener reads no PROXY header",
        );
        return None;
    }
    let mut trusted = Vec::with_capacity(accept.trusted.len());
    for block in &accept.trusted {
        match crate::plugins::ip_restriction::Cidr::parse(block) {
            Ok(cidr) => trusted.push(cidr),
            Err(err) => diags.error(block.pos, format!("proxy_protocol.trusted: {err}")),
        }
    }
    if accept.trusted.is_empty() {
        diags.error(
            spec.name.pos,
            "proxy_protocol.trusted needs at least one source block (a header from anyone \
             else is refused)",
        );
    }
    Some(Arc::new(super::ProxyAccept {
        trusted,
        optional: accept.optional,
        timeout: accept.timeout.0,
    }))
}

fn compile_retry(spec: &RetrySpec, diags: &mut Diagnostics) -> Option<RetryPolicy> {
    if *spec.attempts == 0 {
        diags.error(
            spec.attempts.pos,
            "retry.attempts counts the first try too: at least 1",
        );
        return None;
    }
    let mut policy = RetryPolicy {
        attempts: (*spec.attempts).min(10),
        on_connect_failure: false,
        on_reset: false,
        on_timeout: false,
        on_status: Vec::new(),
        per_try_timeout: spec.per_try_timeout.map(|d| d.0),
        backoff: (spec.backoff.0, spec.max_backoff.0.max(spec.backoff.0)),
        budget: (spec.budget_percent, spec.budget_min),
        non_idempotent: spec.non_idempotent,
    };
    for on in &spec.on {
        match on.value {
            RetryOnSpec::Condition(RetryCondition::ConnectFailure) => {
                policy.on_connect_failure = true
            }
            RetryOnSpec::Condition(RetryCondition::Reset) => policy.on_reset = true,
            RetryOnSpec::Condition(RetryCondition::Timeout) => policy.on_timeout = true,
            RetryOnSpec::Status(code) => policy.on_status.push(code),
        }
    }
    Some(policy)
}

/// A target address that is neither `IP:PORT` nor `NAME:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid target address `{0}`: expected HOST:PORT, like 10.0.0.5:8080 or api.internal:80")]
struct TargetAddressError(String);

/// `IP:PORT` or `NAME:PORT` with a non-zero port.
fn check_target_address(address: &str) -> Result<(), TargetAddressError> {
    if address.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || TargetAddressError(address.to_owned());
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0
        || host.is_empty()
        || host.parse::<IpAddr>().is_ok()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(bad());
    }
    Ok(())
}

/// The plugins each consumer carries.
fn compile_consumer_plugins(
    specs: &[crate::config::spec::ConsumerSpec],
    env: plugins::BuildEnv<'_>,
    diags: &mut Diagnostics,
) -> plugins::ConsumerPlugins {
    let mut map = HashMap::new();
    for consumer in specs.iter().filter(|c| !c.plugins.is_empty()) {
        let owner = format!("consumer {}", *consumer.name);
        let chain = compile_scoped_plugins(&consumer.plugins, &owner, env, diags);
        map.insert(consumer.name.to_string(), chain);
    }
    plugins::ConsumerPlugins(Arc::new(map))
}

/// Plugins for one consumer (its own, or a route's for it). A `rate_limit` counts by consumer
/// unless its `by` says otherwise: the limit is that consumer's. A plugin that runs before
/// authentication is refused: it would run before anyone knows the consumer.
fn compile_scoped_plugins(
    specs: &[At<crate::config::spec::PluginSpec>],
    owner: &str,
    env: plugins::BuildEnv<'_>,
    diags: &mut Diagnostics,
) -> Vec<Arc<dyn plugins::Plugin>> {
    let scoped: Vec<At<crate::config::spec::PluginSpec>> = specs
        .iter()
        .map(|p| match &p.value {
            crate::config::spec::PluginSpec::RateLimit(limit) if limit.by.pos == Pos::default() => {
                let mut limit = limit.clone();
                limit.by.value = "consumer".to_owned();
                At {
                    pos: p.pos,
                    value: crate::config::spec::PluginSpec::RateLimit(limit),
                }
            }
            _ => p.clone(),
        })
        .collect();
    let mut chain = compile_plugins(&scoped, owner, env, diags, true);
    chain.sort_by_key(|p| p.phase());
    chain
}

/// Builds the plugins of `owner`'s list (`global` or `route NAME`); each gets the state kept
/// for its identity: owner, how many of its kind come before it, and its spec. `scoped`
/// plugins apply to one consumer: those that run before authentication are refused.
fn compile_plugins(
    specs: &[At<crate::config::spec::PluginSpec>],
    owner: &str,
    env: plugins::BuildEnv<'_>,
    diags: &mut Diagnostics,
    scoped: bool,
) -> Vec<Arc<dyn plugins::Plugin>> {
    let mut chain = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let kind = std::mem::discriminant(&spec.value);
        let nth = specs[..i]
            .iter()
            .filter(|s| std::mem::discriminant(&s.value) == kind)
            .count();
        let key = crate::plugins::state::StateKey::new(owner, nth, spec);
        let env = plugins::BuildEnv {
            state: env.state.with_key(&key),
            ..env
        };
        match plugins::build(spec, env) {
            Ok(plugin) if scoped && plugin.phase() <= plugins::Phase::Authenticate => {
                diags.error(
                    spec.pos,
                    format!(
                        "`{}` runs before authentication ({:?} phase), so it cannot apply to \
                         one consumer; put it in the route's or the global `plugins`",
                        plugin.name(),
                        plugin.phase()
                    ),
                );
            }
            Ok(plugin) => chain.push(plugin),
            Err(err) => diags.error(err.pos().unwrap_or(spec.pos), err.to_string()),
        }
        checks::plugin_warnings(spec, diags);
    }
    chain
}

fn compile_match(spec: &MatchSpec, diags: &mut Diagnostics) -> Option<Conditions> {
    let before = diags.list.len();
    let mut hosts = Vec::new();
    for host in &spec.hosts {
        match HostPattern::parse(host) {
            Ok(h) => hosts.push(h),
            Err(err) => diags.error(host.pos, err.to_string()),
        }
    }
    let given: Vec<&At<String>> = [
        &spec.path,
        &spec.path_prefix,
        &spec.path_template,
        &spec.path_regex,
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() > 1 {
        diags.error(
            given[1].pos,
            "a route matches the path one way: give only one of path, path_prefix, path_template, path_regex",
        );
    }
    let check_normal = |text: &At<String>, diags: &mut Diagnostics| -> Option<String> {
        match path::normalize(text) {
            Ok(normal) if normal == text.as_str() => Some(normal.into_owned()),
            Ok(normal) => {
                diags.error(
                    text.pos,
                    format!(
                        "path `{}` is not in normal form; requests arrive as `{normal}`",
                        **text
                    ),
                );
                None
            }
            Err(err) => {
                diags.error(text.pos, format!("invalid path `{}`: {err}", **text));
                None
            }
        }
    };
    let path = if let Some(p) = &spec.path {
        check_normal(p, diags).map(PathMatch::Exact)
    } else if let Some(p) = &spec.path_prefix {
        check_normal(p, diags).map(|p| PathMatch::Prefix(p.trim_end_matches('/').to_owned()))
    } else if let Some(t) = &spec.path_template {
        if !t.starts_with('/') {
            diags.error(t.pos, "a path template must start with `/`");
            None
        } else {
            let mut probe = matchit::Router::new();
            match probe.insert(t.as_str(), ()) {
                Ok(()) => Some(PathMatch::Template(t.value.clone())),
                Err(err) => {
                    diags.error(t.pos, format!("invalid path template `{}`: {err}", **t));
                    None
                }
            }
        }
    } else if let Some(r) = &spec.path_regex {
        match Regex::new(&format!("^(?:{})$", r.as_str())) {
            Ok(regex) => Some(PathMatch::Regex(regex)),
            Err(err) => {
                diags.error(r.pos, format!("invalid path regex: {err}"));
                None
            }
        }
    } else {
        Some(PathMatch::Any)
    };
    let mut methods = Vec::new();
    for m in &spec.methods {
        match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(method) => methods.push(method),
            Err(_) => diags.error(m.pos, format!("invalid method `{}`", **m)),
        }
    }
    let mut headers = Vec::new();
    for (name, value) in &spec.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            _ => diags.error(
                value.pos,
                format!("invalid header condition `{name}: {}`", **value),
            ),
        }
    }
    let cookies = spec
        .cookies
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let query = spec
        .query
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if diags.list.len() > before {
        return None;
    }
    Some(Conditions {
        hosts,
        path: path?,
        methods,
        headers,
        query,
        cookies,
    })
}

fn compile_route(
    spec: &RouteSpec,
    upstreams: &Upstreams<'_>,
    (global, consumers): (&[Arc<dyn plugins::Plugin>], &plugins::ConsumerPlugins),
    (consumer_names, unparsed): (&HashMap<&str, Pos>, &crate::config::Unparsed),
    env: plugins::BuildEnv<'_>,
    diags: &mut Diagnostics,
) -> Option<Route> {
    let before = diags.list.len();
    let actions = usize::from(spec.upstream.is_some())
        + usize::from(spec.split.is_some())
        + usize::from(spec.respond.is_some())
        + usize::from(spec.redirect.is_some())
        + usize::from(spec.aggregate.is_some())
        + usize::from(spec.static_files.is_some());
    if actions != 1 {
        diags.error(
            spec.name.pos,
            format!(
                "route `{}` must have exactly one action (upstream, split, respond, redirect, aggregate or static), found {actions}",
                *spec.name
            ),
        );
        return None;
    }
    let find = |name: &At<String>, diags: &mut Diagnostics| upstreams.find(name, diags);
    let action = if let Some(name) = &spec.upstream {
        find(name, diags).map(|u| Action::Forward {
            arms: vec![u],
            sequence: vec![0],
            next: AtomicUsize::new(0),
        })
    } else if let Some(split) = &spec.split {
        let mut arms = Vec::new();
        let mut weights = Vec::new();
        for arm in split.iter() {
            if let Some(u) = find(&arm.upstream, diags) {
                arms.push(u);
                weights.push(arm.weight);
            }
        }
        if split.is_empty() {
            diags.error(split.pos, "`split` needs at least one upstream");
        }
        match smooth_sequence(&weights) {
            Some(sequence) if arms.len() == split.len() => Some(Action::Forward {
                arms,
                sequence,
                next: AtomicUsize::new(0),
            }),
            Some(_) => None,
            None => {
                diags.error(
                    split.pos,
                    "split weights must be at least 1 and not too large",
                );
                None
            }
        }
    } else if let Some(respond) = &spec.respond {
        let status = match StatusCode::from_u16(*respond.status) {
            Ok(s) if s.as_u16() >= 200 => Some(s),
            _ => {
                diags.error(
                    respond.status.pos,
                    "respond.status must be between 200 and 599",
                );
                None
            }
        };
        let mut headers = compile_headers(&respond.headers, diags);
        if !respond.body.is_empty() && !headers.contains_key(http::header::CONTENT_TYPE) {
            headers.insert(
                http::header::CONTENT_TYPE,
                crate::plugins::respond::default_content_type(respond.body.as_bytes()),
            );
        }
        status.map(|status| {
            Action::Respond(Respond {
                status,
                body: Bytes::from(respond.body.clone()),
                headers,
            })
        })
    } else if let Some(redirect) = &spec.redirect {
        let status = match *redirect.status {
            301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(*redirect.status).ok(),
            _ => {
                diags.error(
                    redirect.status.pos,
                    "redirect.status must be 301, 302, 303, 307 or 308",
                );
                None
            }
        };
        if redirect.to.is_empty() {
            diags.error(redirect.to.pos, "redirect.to must not be empty");
        }
        status.map(|status| {
            Action::Redirect(Redirect {
                status,
                to: redirect.to.value.clone(),
            })
        })
    } else if let Some(site) = &spec.static_files {
        if spec.rewrite.is_some() {
            diags.error(
                spec.name.pos,
                "rewrite applies to routes that forward; a static route takes static.strip_prefix",
            );
        }
        if spec.mirror.is_some() {
            diags.error(spec.name.pos, "mirror applies to routes that forward");
        }
        super::static_files::compile(site, env.base, diags).map(|s| Action::Static(Arc::new(s)))
    } else {
        None
    };

    let rewrite = spec.rewrite.as_ref().and_then(|r| {
        let given = usize::from(r.strip_prefix.is_some())
            + usize::from(r.replace_prefix.is_some())
            + usize::from(r.regex.is_some());
        if given != 1 {
            diags.error(
                spec.name.pos,
                "rewrite takes exactly one of strip_prefix, replace_prefix, regex",
            );
            return None;
        }
        if let Some(prefix) = &r.strip_prefix {
            return Some(Rewrite::StripPrefix(
                prefix.trim_end_matches('/').to_owned(),
            ));
        }
        if let Some(to) = &r.replace_prefix {
            let Some(from) = &spec.matches.path_prefix else {
                diags.error(to.pos, "rewrite.replace_prefix needs match.path_prefix");
                return None;
            };
            return Some(Rewrite::ReplacePrefix {
                from: from.trim_end_matches('/').to_owned(),
                to: to.value.clone(),
            });
        }
        let pattern = r.regex.as_ref()?;
        let Some(replace) = &r.replace else {
            diags.error(pattern.pos, "rewrite.regex needs rewrite.replace");
            return None;
        };
        match Regex::new(pattern) {
            Ok(regex) => Some(Rewrite::Regex {
                regex,
                replace: replace.clone(),
            }),
            Err(err) => {
                diags.error(pattern.pos, format!("invalid rewrite regex: {err}"));
                None
            }
        }
    });

    let path_policy = compile_path_policy(spec, diags);
    let retry = spec.retry.as_ref().and_then(|r| compile_retry(r, diags));
    let action = match &spec.aggregate {
        Some(agg) => aggregate::compile(spec, agg, upstreams, retry.as_ref(), diags),
        None => action,
    };
    let mirror = spec.mirror.as_ref().and_then(|m| {
        if !(0.0..=100.0).contains(&*m.percent) {
            diags.error(m.percent.pos, "mirror.percent must be between 0 and 100");
        }
        find(&m.upstream, diags).map(|u| (u, *m.percent / 100.0))
    });
    if spec.retry.is_some()
        && !matches!(action, Some(Action::Forward { .. } | Action::Aggregate(_)))
        && action.is_some()
    {
        diags.error(
            spec.name.pos,
            "retry applies to routes that forward (upstream, split or aggregate)",
        );
    }
    let owner = format!("route {}", *spec.name);
    let mut own = compile_plugins(&spec.plugins, &owner, env, diags, false);
    if let Some(transcode) = &spec.grpc_transcode {
        if spec.upstream.is_none() && spec.split.is_none() {
            diags.error(
                transcode.pos,
                "grpc_transcode needs a route that forwards (upstream or split)",
            );
        }
        if spec.rewrite.is_some() {
            diags.error(
                transcode.pos,
                "grpc_transcode cannot be combined with rewrite: the upstream path is the gRPC method's",
            );
        }
        match plugins::transcode::build(transcode, env.base) {
            Ok(steps) => own.extend(steps),
            Err(err) => diags.error(
                err.pos.unwrap_or(transcode.pos),
                format!("grpc_transcode: {}", err.message),
            ),
        }
    }
    let mut on_route = HashMap::new();
    for (consumer, list) in &spec.consumer_plugins {
        if !consumer_names.contains_key(consumer.as_str())
            && !unparsed.declares("consumers", consumer)
        {
            diags.error(
                consumer.pos,
                format!(
                    "consumer_plugins names consumer `{}`, which does not exist{}",
                    **consumer,
                    checks::did_you_mean(consumer, consumer_names.keys().copied())
                ),
            );
            continue;
        }
        let owner = format!("route {} consumer {}", *spec.name, **consumer);
        let chain = compile_scoped_plugins(list, &owner, env, diags);
        on_route.insert(consumer.value.clone(), chain);
    }

    if spec.stream_idle_timeout.0.is_zero()
        || spec.max_stream_duration.is_some_and(|d| d.0.is_zero())
    {
        diags.error(
            spec.name.pos,
            format!(
                "route {}: stream_idle_timeout and max_stream_duration must be longer than 0",
                *spec.name
            ),
        );
    }
    if diags.list.len() > before {
        return None;
    }
    Some(Route {
        name: Arc::from(spec.name.as_str()),
        action: action?,
        plugins: PluginChain::build(global, &own, consumers, &on_route),
        rewrite,
        path_policy,
        timeout: spec.timeout.map(|t| t.0),
        retry,
        mirror,
        stream: super::StreamLimits {
            idle: spec.stream_idle_timeout.0,
            max: spec.max_stream_duration.map(|d| d.0),
        },
    })
}

fn compile_path_policy(spec: &RouteSpec, diags: &mut Diagnostics) -> PathPolicy {
    let Some(policy) = &spec.path_policy else {
        return PathPolicy::default();
    };
    if policy.matrix_params == MatrixParamsSpec::Keep && spec.rewrite.is_some() {
        // A rewrite works on the matched path; the kept form may carry `;params` in the prefix.
        diags.error(
            policy.pos,
            "path_policy.matrix_params: keep cannot be combined with rewrite",
        );
    }
    PathPolicy {
        encoded_slash: match policy.encoded_slash {
            EncodedSlashSpec::Decode => EncodedSlash::Decode,
            EncodedSlashSpec::Keep => EncodedSlash::Keep,
            EncodedSlashSpec::Reject => EncodedSlash::Reject,
        },
        backslash: match policy.backslash {
            BackslashSpec::Decode => Backslash::Decode,
            BackslashSpec::Reject => Backslash::Reject,
        },
        matrix_params: match policy.matrix_params {
            MatrixParamsSpec::Strip => MatrixParams::Strip,
            MatrixParamsSpec::Keep => MatrixParams::Keep,
            MatrixParamsSpec::Reject => MatrixParams::Reject,
        },
    }
}

fn compile_headers(
    spec: &std::collections::BTreeMap<String, At<String>>,
    diags: &mut Diagnostics,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in spec {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => diags.error(value.pos, format!("invalid header `{name}: {}`", **value)),
        }
    }
    headers
}

mod admission;
mod aggregate;
mod checks;
mod l4;
mod lints;
mod udp;

/// Runs `f` with a fresh compile environment (registry, metrics, ACME store, plugin state),
/// for unit tests.
#[cfg(test)]
pub(crate) fn with_test_env<R>(f: impl FnOnce(Env<'_>) -> R) -> R {
    let registry = Registry::default();
    let metrics = Metrics::new();
    let acme = crate::tls::acme::Store::default();
    let states = crate::plugins::state::PluginStates::default();
    f(Env {
        registry: &registry,
        metrics: &metrics,
        acme: &acme,
        states: &states,
    })
}

/// Reads and compiles `text` as `c.yaml` the way `portico validate` does: the snapshot, or
/// every error (warnings too) as printed. For unit tests.
#[cfg(test)]
pub(crate) fn compile_str(text: &str) -> Result<Snapshot, Vec<String>> {
    let (spec, errors) = crate::config::read_str("c.yaml", text, &|_| None);
    with_test_env(|env| compile_read(spec, errors, "c.yaml", env))
        .map_err(|d| d.iter().map(ToString::to_string).collect())
}

#[cfg(test)]
mod precedence_tests;
#[cfg(test)]
mod tests;
