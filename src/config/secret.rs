//! Which header, query-parameter and cookie names carry credentials, so that `explain` and
//! `GET /config` print `<redacted>` instead of their values. One rule for both.

use super::spec::{PluginSpec, Spec};

/// Name parts that mark a credential: `x-api-key`, `access_token`, `client_secret`,
/// `password`, `x-auth-user`...
const MARKS: &[&str] = &["key", "token", "secret", "password", "auth"];

/// Header names that always carry credentials.
const HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// Whether a header, query-parameter or cookie name looks like a credential by itself: the
/// credential headers of HTTP, or a name containing `key`, `token`, `secret`, `password` or
/// `auth` (in any casing).
pub(crate) fn is_credential_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    HEADERS.contains(&lower.as_str()) || MARKS.iter().any(|m| lower.contains(m))
}

/// The names a config reads credentials from: every name [`is_credential_name`] accepts, plus
/// the headers and query parameters its `key_auth` plugins read and the cookies and query
/// parameters its `jwt` plugins read, wherever they are.
#[derive(Debug, Clone, Default)]
pub(crate) struct Credentials {
    headers: Vec<String>,
    query: Vec<String>,
    cookies: Vec<String>,
}

impl Credentials {
    /// The names of this config.
    pub(crate) fn of(spec: &Spec) -> Self {
        let mut out = Credentials::default();
        let lists = spec
            .plugins
            .iter()
            .chain(spec.routes.iter().flat_map(|r| {
                r.plugins
                    .iter()
                    .chain(r.consumer_plugins.values().flatten())
            }))
            .chain(spec.consumers.iter().flat_map(|c| c.plugins.iter()));
        for plugin in lists {
            if let PluginSpec::KeyAuth(key) = &plugin.value {
                out.headers.push(key.header.to_ascii_lowercase());
                out.query.extend(key.query.clone());
            }
            if let PluginSpec::Oidc(oidc) = &plugin.value {
                out.cookies.push(oidc.session.cookie.value.clone());
            }
            if let PluginSpec::Jwt(jwt) = &plugin.value {
                out.query.extend(jwt.query.clone());
                out.cookies.extend(jwt.cookie.clone());
            }
        }
        out
    }

    /// Whether a header carries a credential.
    pub(crate) fn header(&self, name: &str) -> bool {
        is_credential_name(name) || self.headers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Whether a query parameter carries a credential.
    pub(crate) fn query(&self, name: &str) -> bool {
        is_credential_name(name) || self.query.iter().any(|q| q == name)
    }

    /// Whether a cookie carries a credential.
    pub(crate) fn cookie(&self, name: &str) -> bool {
        // An `oidc` session split into `NAME.0`, `NAME.1`..., and its `NAME_tx_...` logins.
        is_credential_name(name)
            || self.cookies.iter().any(|c| {
                name.strip_prefix(c.as_str())
                    .is_some_and(|r| r.is_empty() || r.starts_with('.') || r.starts_with("_tx_"))
            })
    }

    /// Replaces, in a serialized config (`GET /config`), what the typed serializers cannot
    /// know is secret with `<redacted>`: route matcher values on credential headers, query
    /// parameters and cookies, values that header and query edits (`request_headers`,
    /// transformers) set on credential names, and the private parts of inline JWKS keys.
    pub(crate) fn redact(&self, config: &mut serde_json::Value) {
        redact_plugins(config, None);
        self.redact_matchers(config);
    }

    fn redact_matchers(&self, config: &mut serde_json::Value) {
        let Some(routes) = config.get_mut("routes").and_then(|r| r.as_array_mut()) else {
            return;
        };
        for route in routes {
            let Some(matches) = route.get_mut("match") else {
                continue;
            };
            for (section, secret) in [
                ("headers", Self::header as fn(&Self, &str) -> bool),
                ("query", Self::query),
                ("cookies", Self::cookie),
            ] {
                if let Some(map) = matches.get_mut(section).and_then(|m| m.as_object_mut()) {
                    for (name, value) in map.iter_mut() {
                        if secret(self, name) {
                            *value = serde_json::Value::from(REDACTED);
                        }
                    }
                }
            }
        }
    }

    /// A query string with the values of credential parameters redacted.
    pub(crate) fn redact_query(&self, query: &str) -> String {
        query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if self.query(name) => format!("{name}={REDACTED}"),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Private members of a JWK (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
const JWK_PRIVATE: &[&str] = &["k", "d", "p", "q", "dp", "dq", "qi", "oth"];

/// Walks a serialized config: `set`/`add` maps of header and query edits lose their values on
/// credential names, inline JWKS keys their private members.
fn redact_plugins(value: &mut serde_json::Value, parent: Option<&str>) {
    match value {
        serde_json::Value::Object(map) => {
            let edits = matches!(
                parent,
                Some("request_headers" | "response_headers" | "headers" | "query")
            );
            for (key, child) in map.iter_mut() {
                if edits
                    && (key == "set" || key == "add")
                    && let Some(fields) = child.as_object_mut()
                {
                    for (name, v) in fields.iter_mut() {
                        if is_credential_name(name) {
                            *v = serde_json::Value::from(REDACTED);
                        }
                    }
                    continue;
                }
                if key == "jwks"
                    && let Some(keys) = child.get_mut("keys").and_then(|k| k.as_array_mut())
                {
                    for jwk in keys.iter_mut().filter_map(|k| k.as_object_mut()) {
                        for (member, v) in jwk.iter_mut() {
                            if JWK_PRIVATE.contains(&member.as_str()) {
                                *v = serde_json::Value::from(REDACTED);
                            }
                        }
                    }
                    continue;
                }
                redact_plugins(child, Some(key.as_str()));
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                redact_plugins(item, parent);
            }
        }
        _ => {}
    }
}

/// What is printed instead of a secret.
pub(crate) const REDACTED: &str = "<redacted>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_names() {
        for name in [
            "Authorization",
            "proxy-authorization",
            "cookie",
            "x-api-key",
            "apikey",
            "access_token",
            "client_secret",
            "password",
            "x-auth-user",
        ] {
            assert!(is_credential_name(name), "{name}");
        }
        for name in ["x-tenant", "accept", "canary", "user", "x-version"] {
            assert!(!is_credential_name(name), "{name}");
        }
    }

    #[test]
    fn key_auth_names_count_too() {
        let (spec, errors) = crate::config::read_str(
            "c.yaml",
            "routes:\n  - name: a\n    respond: { status: 200 }\n    plugins:\n      - key_auth: { header: x-caller, query: who }\n",
            &|_| None,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let creds = Credentials::of(&spec);
        assert!(creds.header("X-Caller"));
        assert!(creds.query("who"));
        assert!(!creds.header("x-tenant"));
        assert!(!creds.query("page"));
        assert_eq!(
            creds.redact_query("page=2&who=abc&api_key=k&x"),
            "page=2&who=<redacted>&api_key=<redacted>&x"
        );
        let mut value = serde_json::json!({
            "routes": [{ "match": {
                "headers": { "x-caller": "abc123456", "x-tenant": "acme" },
                "query": { "who": "abc", "page": "1" },
                "cookies": { "session_token": "s", "canary": "1" }
            } }]
        });
        creds.redact(&mut value);
        let m = &value["routes"][0]["match"];
        assert_eq!(m["headers"]["x-caller"], "<redacted>");
        assert_eq!(m["headers"]["x-tenant"], "acme");
        assert_eq!(m["query"]["who"], "<redacted>");
        assert_eq!(m["query"]["page"], "1");
        assert_eq!(m["cookies"]["session_token"], "<redacted>");
        assert_eq!(m["cookies"]["canary"], "1");
    }

    #[test]
    fn header_edits_and_inline_jwks_lose_their_secrets() {
        let mut value = serde_json::json!({
            "plugins": [
                { "request_headers": { "set": { "authorization": "Bearer up-token", "x-env": "prod" }, "remove": [] } },
                { "request_transformer": { "headers": { "add": { "x-api-key": "k-123" } }, "query": { "set": { "token": "t", "page": "1" } } } },
                { "jwt": { "jwks": { "keys": [ { "kty": "oct", "alg": "HS256", "k": "c2VjcmV0" } ] } } }
            ]
        });
        Credentials::default().redact(&mut value);
        let p = &value["plugins"];
        assert_eq!(
            p[0]["request_headers"]["set"]["authorization"],
            "<redacted>"
        );
        assert_eq!(p[0]["request_headers"]["set"]["x-env"], "prod");
        assert_eq!(
            p[1]["request_transformer"]["headers"]["add"]["x-api-key"],
            "<redacted>"
        );
        assert_eq!(
            p[1]["request_transformer"]["query"]["set"]["token"],
            "<redacted>"
        );
        assert_eq!(p[1]["request_transformer"]["query"]["set"]["page"], "1");
        assert_eq!(p[2]["jwt"]["jwks"]["keys"][0]["k"], "<redacted>");
        assert_eq!(p[2]["jwt"]["jwks"]["keys"][0]["alg"], "HS256");
        assert!(!value.to_string().contains("up-token"));
    }
}
