//! Placeholders in a call's path, query and headers: `{path.NAME}`, `{query.NAME}`,
//! `{header.NAME}`, `{consumer}`, `{claim.NAME}` and `{CALL.FIELD.PATH}` (a field of an
//! earlier call's answer). `{{` and `}}` stand for literal braces.

use serde_json::Value;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Text as written.
    Literal(String),
    /// A path template parameter.
    Path(String),
    /// A query parameter of the client's request.
    Query(String),
    /// A header of the client's request.
    Header(String),
    /// The consumer's name.
    Consumer,
    /// A verified JWT claim.
    Claim(String),
    /// A field of an earlier call's answer.
    Call {
        /// The call's name.
        call: String,
        /// The dotted path inside its answer.
        field: Vec<String>,
    },
}

/// A parsed template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Template(pub(crate) Vec<Piece>);

/// Why a template does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TemplateError {
    /// `{` without `}`, or a lone `}`.
    #[error("unbalanced `{{` or `}}` (write `{{{{` or `}}}}` for a literal brace)")]
    Unbalanced,
    /// `{}` or `{path.}`.
    #[error("empty placeholder `{{{0}}}`")]
    Empty(String),
    /// `{name}` with no field.
    #[error(
        "placeholder `{{{0}}}` names neither a request value (path., query., header., claim., consumer) nor a call's field (CALL.FIELD)"
    )]
    Unknown(String),
}

fn nonempty(inner: &str, rest: &str) -> Result<String, TemplateError> {
    if rest.is_empty() {
        Err(TemplateError::Empty(inner.to_owned()))
    } else {
        Ok(rest.to_owned())
    }
}

fn placeholder(inner: &str) -> Result<Piece, TemplateError> {
    if inner == "consumer" {
        return Ok(Piece::Consumer);
    }
    let Some((head, rest)) = inner.split_once('.') else {
        return Err(if inner.is_empty() {
            TemplateError::Empty(String::new())
        } else {
            TemplateError::Unknown(inner.to_owned())
        });
    };
    Ok(match head {
        "path" => Piece::Path(nonempty(inner, rest)?),
        "query" => Piece::Query(nonempty(inner, rest)?),
        "header" => Piece::Header(nonempty(inner, rest)?.to_ascii_lowercase()),
        "claim" => Piece::Claim(nonempty(inner, rest)?),
        call => {
            if call.is_empty() || rest.split('.').any(str::is_empty) {
                return Err(TemplateError::Empty(inner.to_owned()));
            }
            Piece::Call {
                call: call.to_owned(),
                field: rest.split('.').map(str::to_owned).collect(),
            }
        }
    })
}

impl Template {
    /// Parses a template.
    pub(crate) fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            let tail = &rest[at..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                literal.push_str(&tail[..1]);
                rest = &tail[2..];
                continue;
            }
            if tail.starts_with('}') {
                return Err(TemplateError::Unbalanced);
            }
            let end = tail.find('}').ok_or(TemplateError::Unbalanced)?;
            let inner = &tail[1..end];
            if inner.contains('{') {
                return Err(TemplateError::Unbalanced);
            }
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(placeholder(inner)?);
            rest = &tail[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Template(pieces))
    }

    /// The text with every placeholder filled by `fill`; `None` from `fill` stops it.
    pub(crate) fn expand(&self, mut fill: impl FnMut(&Piece) -> Option<String>) -> Option<String> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                other => out.push_str(&fill(other)?),
            }
        }
        Some(out)
    }
}

impl std::fmt::Display for Piece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Piece::Literal(text) => f.write_str(&text.replace('{', "{{").replace('}', "}}")),
            Piece::Path(n) => write!(f, "{{path.{n}}}"),
            Piece::Query(n) => write!(f, "{{query.{n}}}"),
            Piece::Header(n) => write!(f, "{{header.{n}}}"),
            Piece::Consumer => f.write_str("{consumer}"),
            Piece::Claim(n) => write!(f, "{{claim.{n}}}"),
            Piece::Call { call, field } => write!(f, "{{{call}.{}}}", field.join(".")),
        }
    }
}

/// A JSON value as placeholder text: strings as they are, numbers and booleans as written;
/// `null`, objects and arrays give nothing.
pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Percent-encodes a value for a path segment or a query component: everything but the
/// unreserved characters of RFC 3986 §2.3.
pub(crate) fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_placeholder() {
        let t = Template::parse("/u/{path.id}?q={query.q}&h={header.X-A}&c={consumer}&j={claim.sub}&o={user.address.city}{{x}}").unwrap();
        let out = t.expand(|p| Some(format!("<{p}>"))).unwrap();
        assert_eq!(
            out,
            "/u/<{path.id}>?q=<{query.q}>&h=<{header.x-a}>&c=<{consumer}>&j=<{claim.sub}>&o=<{user.address.city}>{x}"
        );
    }

    #[test]
    fn refuses_bad_templates() {
        assert_eq!(Template::parse("/{a"), Err(TemplateError::Unbalanced));
        assert_eq!(Template::parse("/a}"), Err(TemplateError::Unbalanced));
        assert!(matches!(
            Template::parse("/{}"),
            Err(TemplateError::Empty(_))
        ));
        assert!(matches!(
            Template::parse("/{path.}"),
            Err(TemplateError::Empty(_))
        ));
        assert!(matches!(
            Template::parse("/{user..x}"),
            Err(TemplateError::Empty(_))
        ));
        assert!(matches!(
            Template::parse("/{id}"),
            Err(TemplateError::Unknown(_))
        ));
    }

    #[test]
    fn encodes_values() {
        assert_eq!(encode("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(encode("é"), "%C3%A9");
        assert_eq!(text(&serde_json::json!(42)), Some("42".into()));
        assert_eq!(text(&serde_json::json!(null)), None);
    }
}
