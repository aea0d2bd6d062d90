//! `portico plan`: what a reload to a new config would change, item by item, and what each
//! change costs: `hitless`, `drains connections`, or `needs a restart`.
//!
//! Both configs are compared as `GET /config` serves them (defaults filled in, secrets
//! redacted), so the running one can come from the admin API; a changed secret shows as no
//! change.

use serde_json::Value;

/// What a change costs when it is applied by a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Cost {
    /// New requests and connections get it; nothing running is touched.
    Hitless,
    /// Some open connections end: a removed listener drains, a removed target's pooled
    /// connections close, tunnels on a removed route or upstream end.
    Drains,
    /// A reload keeps the old setting; only a restart (or an upgrade) applies it.
    Restart,
}

impl Cost {
    fn label(self) -> &'static str {
        match self {
            Cost::Hitless => "hitless",
            Cost::Drains => "drains connections",
            Cost::Restart => "needs a restart",
        }
    }
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// `listeners`, `routes`, `upstreams`, `certificates`, `plugins`, `consumers`, `settings`.
    pub(crate) section: &'static str,
    /// `+` added, `-` removed, `~` changed.
    pub(crate) sign: char,
    /// What, in words.
    pub(crate) what: String,
    /// Its cost.
    pub(crate) cost: Cost,
}

fn change(section: &'static str, sign: char, what: String, cost: Cost) -> Change {
    Change {
        section,
        sign,
        what,
        cost,
    }
}

/// Items of a section as `(name, value)`: list items by their `name`, upstreams by the
/// first of each `[name, value]` pair (or a mapping's keys).
fn items(config: &Value, key: &str) -> Vec<(String, Value)> {
    match config.get(key) {
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Array(pair) if pair.len() == 2 && pair[0].is_string() => (
                    pair[0].as_str().unwrap_or_default().to_owned(),
                    pair[1].clone(),
                ),
                _ => (
                    item.get("name")
                        .and_then(Value::as_str)
                        .map_or_else(|| format!("#{i}"), str::to_owned),
                    item.clone(),
                ),
            })
            .collect(),
        Some(Value::Object(map)) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => Vec::new(),
    }
}

fn find<'a>(list: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    list.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// The top-level keys of two objects whose values differ, leaving out `skip`.
fn differing(old: &Value, new: &Value, skip: &[&str]) -> Vec<String> {
    let mut keys: Vec<&String> = old
        .as_object()
        .into_iter()
        .chain(new.as_object())
        .flat_map(|m| m.keys())
        .filter(|k| !skip.contains(&k.as_str()))
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| old.get(k.as_str()) != new.get(k.as_str()))
        .cloned()
        .collect()
}

fn show(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "none".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Every change from `old` to `new`, in section order.
pub(crate) fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    listeners(old, new, &mut out);
    named(
        "routes",
        "route",
        old,
        new,
        &["plugins"],
        Cost::Drains,
        &mut out,
    );
    upstreams(old, new, &mut out);
    certificates(old, new, &mut out);
    plugins(old, new, &mut out);
    named(
        "consumers",
        "consumer",
        old,
        new,
        &[],
        Cost::Hitless,
        &mut out,
    );
    settings(old, new, &mut out);
    out
}

fn listeners(old: &Value, new: &Value, out: &mut Vec<Change>) {
    let (before, after) = (items(old, "listeners"), items(new, "listeners"));
    for (name, listener) in &after {
        let Some(was) = find(&before, name) else {
            let bind = show(listener.get("bind"));
            out.push(change(
                "listeners",
                '+',
                format!("{name} on {bind}"),
                Cost::Hitless,
            ));
            continue;
        };
        let udp = |l: &Value| l.get("protocol").and_then(Value::as_str) == Some("udp");
        if was.get("bind") != listener.get("bind") {
            out.push(change(
                "listeners",
                '~',
                format!(
                    "{name}: bind {} -> {} (the old socket drains)",
                    show(was.get("bind")),
                    show(listener.get("bind"))
                ),
                Cost::Drains,
            ));
        } else if udp(was) != udp(listener) {
            out.push(change(
                "listeners",
                '~',
                format!(
                    "{name}: protocol {} -> {} (a new socket; the old one drains)",
                    show(was.get("protocol")),
                    show(listener.get("protocol"))
                ),
                Cost::Drains,
            ));
        } else if was.get("protocol") != listener.get("protocol") {
            out.push(change(
                "listeners",
                '~',
                format!(
                    "{name}: protocol {} -> {} (new connections; open ones keep theirs)",
                    show(was.get("protocol")),
                    show(listener.get("protocol"))
                ),
                Cost::Hitless,
            ));
        }
        let max = |l: &Value| {
            l.get("limits")
                .and_then(|m| m.get("max_connections"))
                .cloned()
        };
        let same_socket = was.get("bind") == listener.get("bind") && !udp(listener);
        if same_socket && max(was) != max(listener) {
            out.push(change(
                "listeners",
                '~',
                format!(
                    "{name}: limits.max_connections {} -> {}",
                    show(max(was).as_ref()),
                    show(max(listener).as_ref())
                ),
                Cost::Restart,
            ));
        }
        let mut rest = differing(was, listener, &["bind", "protocol", "tls"]);
        if max(was) != max(listener) {
            // Reported above (or moot with a new socket); the other limits apply at once.
            let limits = |l: &Value| {
                let mut l = l.get("limits").cloned().unwrap_or(Value::Null);
                if let Some(map) = l.as_object_mut() {
                    map.remove("max_connections");
                }
                l
            };
            if limits(was) == limits(listener) {
                rest.retain(|k| k != "limits");
            }
        }
        let tls_rest = differing(
            was.get("tls").unwrap_or(&Value::Null),
            listener.get("tls").unwrap_or(&Value::Null),
            &["certificates", "acme"],
        );
        if !tls_rest.is_empty() {
            rest.push(format!("tls.{}", tls_rest.join(", tls.")));
        }
        if !rest.is_empty() {
            out.push(change(
                "listeners",
                '~',
                format!("{name}: {} (new connections)", rest.join(", ")),
                Cost::Hitless,
            ));
        }
    }
    for (name, _) in &before {
        if find(&after, name).is_none() {
            out.push(change(
                "listeners",
                '-',
                format!("{name} (stops accepting; open connections drain)"),
                Cost::Drains,
            ));
        }
    }
}

/// Routes and consumers: added and changed items are hitless; a removed one costs `removed`.
fn named(
    section: &'static str,
    item: &str,
    old: &Value,
    new: &Value,
    skip: &[&str],
    removed: Cost,
    out: &mut Vec<Change>,
) {
    let (before, after) = (items(old, section), items(new, section));
    for (name, value) in &after {
        match find(&before, name) {
            None => out.push(change(
                section,
                '+',
                format!("{item} {name}"),
                Cost::Hitless,
            )),
            Some(was) => {
                let keys = differing(was, value, skip);
                if !keys.is_empty() {
                    out.push(change(
                        section,
                        '~',
                        format!("{item} {name}: {}", keys.join(", ")),
                        Cost::Hitless,
                    ));
                }
            }
        }
    }
    for (name, _) in &before {
        if find(&after, name).is_none() {
            let note = if removed == Cost::Drains {
                " (requests in flight finish; its open tunnels end)"
            } else {
                ""
            };
            out.push(change(
                section,
                '-',
                format!("{item} {name}{note}"),
                removed,
            ));
        }
    }
}

fn targets(upstream: &Value) -> Vec<(String, Value)> {
    upstream
        .get("targets")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|t| {
                    (
                        show(t.get("address")),
                        t.get("weight").cloned().unwrap_or(Value::Null),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn upstreams(old: &Value, new: &Value, out: &mut Vec<Change>) {
    let (before, after) = (items(old, "upstreams"), items(new, "upstreams"));
    for (name, upstream) in &after {
        let Some(was) = find(&before, name) else {
            let count = targets(upstream).len();
            out.push(change(
                "upstreams",
                '+',
                format!("upstream {name} ({count} targets)"),
                Cost::Hitless,
            ));
            continue;
        };
        let (t0, t1) = (targets(was), targets(upstream));
        for (address, _) in &t1 {
            if find(&t0, address).is_none() {
                out.push(change(
                    "upstreams",
                    '+',
                    format!("upstream {name}: target {address}"),
                    Cost::Hitless,
                ));
            }
        }
        for (address, weight) in &t0 {
            match find(&t1, address) {
                None => out.push(change(
                    "upstreams",
                    '-',
                    format!(
                        "upstream {name}: target {address} (its pooled connections close; \
                         requests in flight finish)"
                    ),
                    Cost::Drains,
                )),
                Some(now) if now != weight => out.push(change(
                    "upstreams",
                    '~',
                    format!(
                        "upstream {name}: target {address} weight {} -> {}",
                        show(Some(weight)),
                        show(Some(now))
                    ),
                    Cost::Hitless,
                )),
                Some(_) => {}
            }
        }
        let keys = differing(was, upstream, &["targets"]);
        if !keys.is_empty() {
            out.push(change(
                "upstreams",
                '~',
                format!("upstream {name}: {}", keys.join(", ")),
                Cost::Hitless,
            ));
        }
    }
    for (name, _) in &before {
        if find(&after, name).is_none() {
            out.push(change(
                "upstreams",
                '-',
                format!("upstream {name} (its connections close; tunnels to it end)"),
                Cost::Drains,
            ));
        }
    }
}

fn certificates(old: &Value, new: &Value, out: &mut Vec<Change>) {
    let (before, after) = (items(old, "listeners"), items(new, "listeners"));
    let certs = |l: &Value| {
        let tls = l.get("tls").cloned().unwrap_or(Value::Null);
        (
            tls.get("certificates").cloned().unwrap_or(Value::Null),
            tls.get("acme").cloned().unwrap_or(Value::Null),
        )
    };
    for (name, listener) in &after {
        let Some(was) = find(&before, name) else {
            continue;
        };
        let (c0, a0) = certs(was);
        let (c1, a1) = certs(listener);
        if c0 != c1 {
            out.push(change(
                "certificates",
                '~',
                format!("listener {name}: certificates (new handshakes use them)"),
                Cost::Hitless,
            ));
        }
        if a0 != a1 {
            out.push(change(
                "certificates",
                '~',
                format!("listener {name}: acme"),
                Cost::Hitless,
            ));
        }
    }
}

/// The plugin names of a list, in order.
fn plugin_names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .map(|p| match p {
                    Value::Object(m) => m.keys().next().cloned().unwrap_or_default(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn plugin_change(scope: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<Change>) {
    if old == new {
        return;
    }
    let (n0, n1) = (plugin_names(old), plugin_names(new));
    let mut parts: Vec<String> = Vec::new();
    for n in &n1 {
        if !n0.contains(n) {
            parts.push(format!("+{n}"));
        }
    }
    for n in &n0 {
        if !n1.contains(n) {
            parts.push(format!("-{n}"));
        }
    }
    let empty = Vec::new();
    let (l0, l1) = (
        old.and_then(Value::as_array).unwrap_or(&empty),
        new.and_then(Value::as_array).unwrap_or(&empty),
    );
    for (i, n) in n1.iter().enumerate() {
        let was = n0.iter().position(|m| m == n).and_then(|j| l0.get(j));
        if was.is_some() && was != l1.get(i) {
            parts.push(format!("~{n}"));
        }
    }
    if parts.is_empty() {
        parts.push("order".to_owned());
    }
    out.push(change(
        "plugins",
        '~',
        format!("{scope}: {}", parts.join(" ")),
        Cost::Hitless,
    ));
}

fn plugins(old: &Value, new: &Value, out: &mut Vec<Change>) {
    plugin_change("global", old.get("plugins"), new.get("plugins"), out);
    let (before, after) = (items(old, "routes"), items(new, "routes"));
    for (name, route) in &after {
        if let Some(was) = find(&before, name) {
            plugin_change(
                &format!("route {name}"),
                was.get("plugins"),
                route.get("plugins"),
                out,
            );
        }
    }
}

fn settings(old: &Value, new: &Value, out: &mut Vec<Change>) {
    let keys = differing(
        old,
        new,
        &["listeners", "routes", "upstreams", "consumers", "plugins"],
    );
    for key in keys {
        let (a, b) = (old.get(key.as_str()), new.get(key.as_str()));
        if key == "admin" {
            let listen = |v: Option<&Value>| v.and_then(|a| a.get("listen")).cloned();
            if listen(a) != listen(b) {
                out.push(change(
                    "settings",
                    '~',
                    format!(
                        "admin.listen: {} -> {}",
                        show(listen(a).as_ref()),
                        show(listen(b).as_ref())
                    ),
                    Cost::Restart,
                ));
            }
            let rest = differing(
                a.unwrap_or(&Value::Null),
                b.unwrap_or(&Value::Null),
                &["listen"],
            );
            if !rest.is_empty() {
                out.push(change(
                    "settings",
                    '~',
                    format!("admin.{}", rest.join(", admin.")),
                    Cost::Hitless,
                ));
            }
            continue;
        }
        let cost = match key.as_str() {
            "workers" | "pin_workers" | "access_log" | "upgrade" => Cost::Restart,
            _ => Cost::Hitless,
        };
        let what = match (a, b) {
            (Some(Value::Object(_)), _) | (_, Some(Value::Object(_))) => key.clone(),
            _ => format!("{key}: {} -> {}", show(a), show(b)),
        };
        out.push(change("settings", '~', what, cost));
    }
}

/// The plan as text: one line a change, grouped by section, then the count by cost.
pub(crate) fn render(from: &str, to: &str, changes: &[Change]) -> String {
    use std::fmt::Write as _;
    let mut text = format!("plan: {from} -> {to}\n");
    if changes.is_empty() {
        text.push_str("\nno changes\n");
        return text;
    }
    let width = changes
        .iter()
        .map(|c| c.what.chars().count())
        .max()
        .unwrap_or(0)
        .min(72);
    let mut section = "";
    for c in changes {
        if c.section != section {
            section = c.section;
            let _ = write!(text, "\n{section}:\n");
        }
        let _ = writeln!(
            text,
            "  {} {:<width$}  {}",
            c.sign,
            c.what,
            c.cost.label(),
            width = width
        );
    }
    let count = |cost| changes.iter().filter(|c| c.cost == cost).count();
    let _ = writeln!(
        text,
        "\n{} changes: {} hitless, {} drain connections, {} need a restart",
        changes.len(),
        count(Cost::Hitless),
        count(Cost::Drains),
        count(Cost::Restart)
    );
    text
}

/// `GET /config` of the portico whose admin API listens on `addr`: the config and its hash.
pub(crate) fn running_config(addr: &str, token: Option<&str>) -> Result<(Value, String), String> {
    use http_body_util::BodyExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async {
        let fetch = async {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("cannot reach the admin API at {addr}: {e}"))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("admin API at {addr}: {e}"))?;
            tokio::spawn(conn);
            let mut req = http::Request::get("/config").header(http::header::HOST, addr);
            if let Some(token) = token {
                req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let req = req
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("admin API at {addr}: {e}"))?;
            let status = resp.status();
            let hash = resp
                .headers()
                .get(http::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim_matches('"').to_owned())
                .unwrap_or_default();
            let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024 * 1024)
                .collect()
                .await
                .map_err(|e| format!("admin API at {addr}: {e}"))?
                .to_bytes();
            if status == http::StatusCode::UNAUTHORIZED {
                return Err(format!(
                    "the admin API at {addr} needs its token: pass --admin-token or set \
                     PORTICO_ADMIN_TOKEN"
                ));
            }
            if !status.is_success() {
                return Err(format!(
                    "the admin API at {addr} answered {status}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            let value: Value = serde_json::from_slice(&body)
                .map_err(|e| format!("the admin API at {addr} answered no JSON config: {e}"))?;
            Ok((value, hash))
        };
        match tokio::time::timeout(std::time::Duration::from_secs(10), fetch).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "the admin API at {addr} did not answer within 10 s"
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Value {
        let snap = crate::runtime::compile::compile_str(text).expect("compiles");
        serde_json::to_value(&snap.spec).unwrap()
    }

    const OLD: &str = "workers: 2\nlisteners:\n  - { name: web, bind: 127.0.0.1:8080 }\n  - { name: old, bind: 127.0.0.1:8081 }\nroutes:\n  - { name: a, match: { path_prefix: /a }, upstream: u }\n  - { name: gone, match: { path_prefix: /g }, respond: { status: 200 } }\nupstreams:\n  u: { targets: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 } ] }\n";

    #[test]
    fn each_change_has_its_cost() {
        let new = "workers: 4\nlisteners:\n  - { name: web, bind: 127.0.0.1:9090 }\n  - { name: more, bind: 127.0.0.1:8082 }\nroutes:\n  - { name: a, match: { path_prefix: /a }, upstream: u, timeout: 5s, plugins: [ { cors: { origins: ['*'] } } ] }\nupstreams:\n  u: { targets: [ { address: 127.0.0.1:1, weight: 3 }, { address: 127.0.0.1:3 } ] }\nconsumers: [ { name: bob, api_keys: [k-12345678] } ]\n";
        let changes = diff(&config(OLD), &config(new));
        let has = |section: &str, sign: char, what: &str, cost: Cost| {
            changes.iter().any(|c| {
                c.section == section && c.sign == sign && c.what.contains(what) && c.cost == cost
            })
        };
        assert!(
            has(
                "listeners",
                '~',
                "web: bind 127.0.0.1:8080 -> 127.0.0.1:9090",
                Cost::Drains
            ),
            "{changes:#?}"
        );
        assert!(has("listeners", '+', "more", Cost::Hitless), "{changes:#?}");
        assert!(has("listeners", '-', "old", Cost::Drains), "{changes:#?}");
        assert!(
            has("routes", '~', "route a: timeout", Cost::Hitless),
            "{changes:#?}"
        );
        assert!(
            has("routes", '-', "route gone", Cost::Drains),
            "{changes:#?}"
        );
        assert!(
            has("upstreams", '+', "target 127.0.0.1:3", Cost::Hitless),
            "{changes:#?}"
        );
        assert!(
            has("upstreams", '-', "target 127.0.0.1:2", Cost::Drains),
            "{changes:#?}"
        );
        assert!(
            has("upstreams", '~', "127.0.0.1:1 weight 1 -> 3", Cost::Hitless),
            "{changes:#?}"
        );
        assert!(
            has("plugins", '~', "route a: +cors", Cost::Hitless),
            "{changes:#?}"
        );
        assert!(
            has("consumers", '+', "consumer bob", Cost::Hitless),
            "{changes:#?}"
        );
        assert!(
            has("settings", '~', "workers: 2 -> 4", Cost::Restart),
            "{changes:#?}"
        );
        let text = render("old.yaml", "new.yaml", &changes);
        assert!(text.contains("needs a restart"), "{text}");
    }

    #[test]
    fn the_same_config_has_no_changes() {
        assert!(diff(&config(OLD), &config(OLD)).is_empty());
        assert!(render("a", "b", &[]).contains("no changes"));
    }
}
