//! `google.api.http` path templates: `/v1/{name=shelves/*/books/*}:verb`.
//!
//! ```text
//! Template = "/" Segments [ ":" Verb ]
//! Segments = Segment { "/" Segment }
//! Segment  = "*" | "**" | LITERAL | Variable
//! Variable = "{" FieldPath [ "=" Segments ] "}"
//! ```
//!
//! `**` may only be the last segment. A variable without `= ...` is one segment (`*`).

/// One segment of a compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(String),
    /// One segment, any text.
    Star,
    /// Any number of segments (the rest of the path).
    Rest,
}

/// A variable: the field it fills and the segments it spans.
#[derive(Debug, Clone)]
pub(crate) struct Var {
    /// The field path, dotted (`book.id`).
    pub(crate) field: String,
    start: usize,
    end: usize,
}

/// A compiled path template.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    segs: Vec<Seg>,
    pub(crate) vars: Vec<Var>,
    verb: Option<String>,
    /// As written.
    pub(crate) text: String,
}

impl Template {
    /// Parses a template; the error says what is wrong.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| format!("path template `{text}` must start with `/`"))?;
        let mut segs = Vec::new();
        let mut vars = Vec::new();
        let mut verb = None;
        let mut chars = rest;
        let err = |why: &str| format!("path template `{text}`: {why}");
        loop {
            if let Some(inner) = chars.strip_prefix('{') {
                let close = inner.find('}').ok_or_else(|| err("a `{` is not closed"))?;
                let body = &inner[..close];
                chars = &inner[close + 1..];
                let (field, pattern) = match body.split_once('=') {
                    Some((f, p)) => (f, p),
                    None => (body, "*"),
                };
                if field.is_empty()
                    || !field.split('.').all(|p| {
                        !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    })
                {
                    return Err(err(&format!("`{field}` is not a field path")));
                }
                let start = segs.len();
                for part in pattern.split('/') {
                    segs.push(segment(part).map_err(|w| err(&w))?);
                }
                vars.push(Var {
                    field: field.to_owned(),
                    start,
                    end: segs.len(),
                });
            } else {
                let end = chars.find(['/', ':']).unwrap_or(chars.len());
                let part = &chars[..end];
                if part.contains(['{', '}']) {
                    return Err(err("a variable must be a whole segment"));
                }
                segs.push(segment(part).map_err(|w| err(&w))?);
                chars = &chars[end..];
            }
            match chars.as_bytes().first() {
                None => break,
                Some(b'/') => chars = &chars[1..],
                Some(b':') => {
                    let v = &chars[1..];
                    if v.is_empty() || v.contains(['/', '{', '}', '*']) {
                        return Err(err("the verb after `:` must be a literal"));
                    }
                    verb = Some(v.to_owned());
                    break;
                }
                Some(_) => return Err(err("a variable must be a whole segment")),
            }
        }
        if let Some(at) = segs.iter().position(|s| *s == Seg::Rest)
            && at + 1 != segs.len()
        {
            return Err(err("`**` must be the last segment"));
        }
        Ok(Template {
            segs,
            vars,
            verb,
            text: text.to_owned(),
        })
    }

    /// The variables' values if `path` (as sent, percent-encoded) matches: field path and
    /// decoded value, in template order.
    pub(crate) fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut path = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            path = path.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        } else if path
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
        {
            // A verb the template does not have.
            let rest = self.segs.last() == Some(&Seg::Rest);
            if !rest {
                return None;
            }
        }
        let parts: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        // Where each template segment's text starts in `parts`.
        let mut spans = Vec::with_capacity(self.segs.len() + 1);
        let mut at = 0;
        for seg in &self.segs {
            spans.push(at);
            match seg {
                Seg::Literal(lit) => {
                    if parts.get(at).is_none_or(|p| *p != lit) {
                        return None;
                    }
                    at += 1;
                }
                Seg::Star => {
                    if parts.get(at).is_none_or(|p| p.is_empty()) {
                        return None;
                    }
                    at += 1;
                }
                Seg::Rest => at = parts.len(),
            }
        }
        spans.push(at);
        if at != parts.len() {
            return None;
        }
        let mut out = Vec::with_capacity(self.vars.len());
        for var in &self.vars {
            let text = parts[spans[var.start]..spans[var.end]].join("/");
            let single = var.end - var.start == 1 && self.segs[var.start] == Seg::Star;
            out.push((var.field.clone(), decode(&text, single)?));
        }
        Some(out)
    }

    /// How many literal segments it has (for `explain`).
    #[cfg(test)]
    fn literals(&self) -> usize {
        self.segs
            .iter()
            .filter(|s| matches!(s, Seg::Literal(_)))
            .count()
    }
}

fn segment(part: &str) -> Result<Seg, String> {
    Ok(match part {
        "*" => Seg::Star,
        "**" => Seg::Rest,
        "" => return Err("empty segment".to_owned()),
        lit if lit.contains(['*', '{', '}', '=']) => {
            return Err(format!("`{lit}` is not a segment"));
        }
        lit => Seg::Literal(lit.to_owned()),
    })
}

/// Percent-decodes a path value; a multi-segment value keeps `%2F` as written, as the
/// template rules say. None when the result is not UTF-8.
pub(crate) fn decode(text: &str, single: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
            && (single || b != b'/')
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_variables_and_rest() {
        let t = Template::parse("/v1/{name=shelves/*/books/*}").unwrap();
        assert_eq!(t.literals(), 3);
        assert_eq!(
            t.matches("/v1/shelves/s1/books/b%202").unwrap(),
            vec![("name".to_owned(), "shelves/s1/books/b 2".to_owned())]
        );
        assert!(t.matches("/v1/shelves/s1/books").is_none());
        let t = Template::parse("/v1/{book.id}/files/{path=**}:get").unwrap();
        let m = t.matches("/v1/7/files/a/b/c:get").unwrap();
        assert_eq!(m[0], ("book.id".to_owned(), "7".to_owned()));
        assert_eq!(m[1], ("path".to_owned(), "a/b/c".to_owned()));
        assert!(t.matches("/v1/7/files/a").is_none());
    }

    #[test]
    fn bad_templates() {
        for bad in [
            "v1",
            "/v1/{x",
            "/v1/**/x",
            "/v1/a{x}",
            "/v1/{x=}",
            "/v1/x:",
            "/v1/{a..b}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
