//! `cors` (Fetch standard, CORS protocol): preflights are answered here; allowed origins get
//! `Access-Control-Allow-Origin` on every response. With credentials, the origin is echoed,
//! never `*`; responses vary on `Origin`.

use http::{HeaderMap, HeaderValue, Method, StatusCode, header, request, response};

use super::{BuildError, Flow, Phase, Plugin};
use crate::body::Body;
use crate::config::spec::CorsSpec;
use crate::ctx::RequestCtx;
use crate::error::{ProxyError, error_response};

#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    Any,
    Exact(String),
    /// `https://*.example.com`: scheme and a suffix starting with `.`.
    Suffix {
        scheme: String,
        suffix: String,
    },
}

impl OriginRule {
    fn parse(text: &str) -> Result<Self, BuildError> {
        if text == "*" {
            return Ok(OriginRule::Any);
        }
        let (scheme, host) = text.split_once("://").ok_or_else(|| BuildError::Origin {
            origin: text.to_owned(),
        })?;
        match host.strip_prefix("*.") {
            Some(suffix) => Ok(OriginRule::Suffix {
                scheme: scheme.to_ascii_lowercase(),
                suffix: format!(".{}", suffix.to_ascii_lowercase()),
            }),
            None => Ok(OriginRule::Exact(text.to_ascii_lowercase())),
        }
    }

    fn matches(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(o) => *o == origin,
            OriginRule::Suffix { scheme, suffix } => {
                origin.split_once("://").is_some_and(|(s, host)| {
                    s == scheme && host.len() > suffix.len() && host.ends_with(suffix.as_str())
                })
            }
        }
    }
}

/// A compiled `cors`.
#[derive(Debug)]
pub(crate) struct Cors {
    origins: Vec<OriginRule>,
    methods: HeaderValue,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

fn join(list: &[String]) -> Result<Option<HeaderValue>, BuildError> {
    if list.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&list.join(", "))
        .map(Some)
        .map_err(BuildError::HeaderList)
}

impl Cors {
    /// Checks origins and lists.
    pub(crate) fn new(spec: &CorsSpec) -> Result<Self, BuildError> {
        let origins = spec
            .origins
            .iter()
            .map(|o| OriginRule::parse(o))
            .collect::<Result<Vec<_>, _>>()?;
        if origins.is_empty() {
            return Err(BuildError::NoOrigins);
        }
        Ok(Cors {
            origins,
            methods: join(&spec.methods)?.unwrap_or_else(|| HeaderValue::from_static("GET")),
            headers: join(&spec.headers)?,
            expose: join(&spec.expose_headers)?,
            credentials: spec.credentials,
            max_age: HeaderValue::from(spec.max_age.0.as_secs()),
        })
    }

    fn allowed(&self, origin: &HeaderValue) -> bool {
        origin
            .to_str()
            .is_ok_and(|o| self.origins.iter().any(|r| r.matches(o)))
    }

    /// `*` only for any-origin without credentials; otherwise the origin itself.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if !self.credentials && self.origins.contains(&OriginRule::Any) {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    fn mark(&self, headers: &mut HeaderMap, origin: &HeaderValue) {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// The request's `Origin`, when this route's CORS rules allow it (for the response).
#[derive(Debug, Clone)]
struct AllowedOrigin(HeaderValue);

/// A CORS preflight: `OPTIONS` with `Access-Control-Request-Method` (Fetch standard §3.2.2).
fn is_preflight(head: &request::Parts) -> bool {
    head.method == Method::OPTIONS
        && head
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

impl Plugin for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn explain(
        &self,
        _ctx: &mut RequestCtx,
        head: &request::Parts,
        _secrets: &crate::config::secret::Credentials,
    ) -> super::Explained {
        let note = match head.headers.get(header::ORIGIN) {
            None => "no Origin: not a CORS request".to_owned(),
            Some(value) => {
                let origin = String::from_utf8_lossy(value.as_bytes()).into_owned();
                let allowed = if self.allowed(value) {
                    "allowed"
                } else {
                    "not allowed"
                };
                if is_preflight(head) {
                    format!("preflight from {origin}: origin {allowed}")
                } else {
                    format!(
                        "request from {origin} (not a preflight: OPTIONS with \
                         Access-Control-Request-Method): origin {allowed}"
                    )
                }
            }
        };
        super::Explained::Run(vec![note])
    }

    fn stops(&self) -> Option<&'static str> {
        Some("answers preflights; 403 to foreign origins")
    }

    fn phase(&self) -> Phase {
        Phase::Preflight
    }

    fn observe(&self, ctx: &mut RequestCtx, head: &request::Parts) {
        // Noted before any plugin may answer, so a 429 or 401 carries the CORS headers too and
        // the page can read why it was refused.
        if let Some(origin) = head.headers.get(header::ORIGIN)
            && !is_preflight(head)
            && self.allowed(origin)
        {
            ctx.slots.insert(AllowedOrigin(origin.clone()));
        }
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        let Some(origin) = head.headers.get(header::ORIGIN).cloned() else {
            return Ok(Flow::Continue);
        };
        let preflight = is_preflight(head);
        if !self.allowed(&origin) {
            if preflight {
                return Ok(Flow::Respond(error_response(
                    StatusCode::FORBIDDEN,
                    "cors_forbidden",
                    "this origin may not call this route",
                    &ctx.request_id,
                )));
            }
            // An ordinary request from a foreign origin goes through unmarked: the browser
            // withholds the response from the page.
            return Ok(Flow::Continue);
        }
        if preflight {
            let mut response = http::Response::new(Body::Empty);
            *response.status_mut() = StatusCode::NO_CONTENT;
            let headers = response.headers_mut();
            self.mark(headers, &origin);
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            let requested = head
                .headers
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned();
            if let Some(allowed) = self.headers.clone().or(requested) {
                headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed);
            }
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
            return Ok(Flow::Respond(response));
        }
        Ok(Flow::Continue)
    }

    fn on_response(&self, ctx: &RequestCtx, head: &mut response::Parts) {
        if let Some(AllowedOrigin(origin)) = ctx.slots.get::<AllowedOrigin>() {
            self.mark(&mut head.headers, origin);
            if let Some(expose) = &self.expose {
                head.headers
                    .insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_rules() {
        let exact = OriginRule::parse("https://app.example.com").unwrap();
        assert!(exact.matches("https://APP.example.com"));
        assert!(!exact.matches("http://app.example.com"));
        let wild = OriginRule::parse("https://*.example.com").unwrap();
        assert!(wild.matches("https://a.example.com"));
        assert!(!wild.matches("https://example.com"));
        assert!(!wild.matches("https://evil-example.com"));
        assert!(!wild.matches("http://a.example.com"));
        assert!(OriginRule::parse("example.com").is_err());
    }
}
