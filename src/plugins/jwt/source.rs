//! Where a `jwt` token is read from: the `Authorization: Bearer` header, then the configured
//! cookie, then the configured query parameter; and how it is hidden from the upstream.

use http::{HeaderMap, HeaderValue, header, request};

/// The places a token may come from.
#[derive(Debug, Default)]
pub(super) struct Sources {
    /// `cookie:`.
    pub(super) cookie: Option<String>,
    /// `query:`.
    pub(super) query: Option<String>,
    /// `hide_credentials:`.
    pub(super) hide: bool,
}

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum From {
    /// `Authorization: Bearer`.
    Header,
    /// The configured cookie.
    Cookie,
    /// The configured query parameter.
    Query,
}

impl From {
    /// As `explain` names it, before the token's algorithm: nothing for the header.
    pub(super) fn describe(self, sources: &Sources) -> String {
        match self {
            From::Header => String::new(),
            From::Cookie => format!("from cookie {}, ", sources.cookie.as_deref().unwrap_or("")),
            From::Query => format!(
                "from query parameter {}, ",
                sources.query.as_deref().unwrap_or("")
            ),
        }
    }
}

/// The bearer token of an `Authorization` value.
fn bearer(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    text.strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .map(str::trim)
}

impl Sources {
    /// The token and where it came from, in the order header, cookie, query.
    pub(super) fn find(&self, head: &request::Parts) -> Option<(String, From)> {
        if let Some(token) = head.headers.get(header::AUTHORIZATION).and_then(bearer) {
            return Some((token.to_owned(), From::Header));
        }
        if let Some(name) = &self.cookie
            && let Some(token) = crate::view::cookie(&head.headers, name)
            && !token.is_empty()
        {
            return Some((token.to_owned(), From::Cookie));
        }
        if let Some(name) = &self.query
            && let Some((_, token)) = head
                .uri
                .query()
                .and_then(|q| crate::view::query_pairs(q).find(|(k, _)| k == name))
            && !token.is_empty()
        {
            return Some((token, From::Query));
        }
        None
    }

    /// With `hide_credentials`, removes the token from every place it may be in.
    pub(super) fn hide(&self, head: &mut request::Parts) {
        if !self.hide {
            return;
        }
        if head
            .headers
            .get(header::AUTHORIZATION)
            .and_then(bearer)
            .is_some()
        {
            head.headers.remove(header::AUTHORIZATION);
        }
        if let Some(name) = &self.cookie {
            remove_cookie(&mut head.headers, name);
        }
        if let Some(name) = &self.query {
            super::super::key_auth::hide_query_parameter(&mut head.uri, name);
        }
    }
}

/// Removes cookie `name` from every `Cookie` field, keeping the others in order; a field left
/// empty goes.
fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    if !headers.contains_key(header::COOKIE) {
        return;
    }
    let mut kept: Vec<HeaderValue> = Vec::new();
    let mut changed = false;
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else {
            kept.push(value.clone());
            continue;
        };
        let pairs: Vec<&str> = text
            .split(';')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .collect();
        let rest: Vec<&str> = pairs
            .iter()
            .copied()
            .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k).trim() != name)
            .collect();
        if rest.len() == pairs.len() {
            kept.push(value.clone());
            continue;
        }
        changed = true;
        if !rest.is_empty()
            && let Ok(value) = HeaderValue::from_str(&rest.join("; "))
        {
            kept.push(value);
        }
    }
    if changed {
        headers.remove(header::COOKIE);
        for value in kept {
            headers.append(header::COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn sources(hide: bool) -> Sources {
        Sources {
            cookie: Some("session".into()),
            query: Some("access_token".into()),
            hide,
        }
    }

    #[test]
    fn header_then_cookie_then_query() {
        let s = sources(false);
        let h = head(
            "/x?access_token=q",
            &[("authorization", "Bearer h"), ("cookie", "a=1; session=c")],
        );
        assert_eq!(s.find(&h), Some(("h".into(), From::Header)));
        let h = head("/x?access_token=q", &[("cookie", "a=1; session=c")]);
        assert_eq!(s.find(&h), Some(("c".into(), From::Cookie)));
        let h = head("/x?a=1&access_token=q", &[("authorization", "Basic eA==")]);
        assert_eq!(s.find(&h), Some(("q".into(), From::Query)));
        assert_eq!(s.find(&head("/x?session=c", &[])), None);
        assert_eq!(
            Sources::default().find(&head("/x?access_token=q", &[])),
            None
        );
    }

    #[test]
    fn hidden_from_every_place() {
        let mut h = head(
            "/x?a=1&access_token=q&b=2",
            &[
                ("authorization", "Bearer h"),
                ("cookie", "a=1; session=c; b=2"),
                ("cookie", "session=d"),
            ],
        );
        sources(true).hide(&mut h);
        assert!(h.headers.get("authorization").is_none());
        let cookies: Vec<_> = h.headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
        assert_eq!(h.uri, "/x?a=1&b=2");
        let mut h = head("/x?access_token=q", &[("cookie", "session=c")]);
        sources(false).hide(&mut h);
        assert_eq!(h.uri, "/x?access_token=q");
        assert_eq!(h.headers["cookie"], "session=c");
    }
}
