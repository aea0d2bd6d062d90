//! [`ERROR_CODES`] against the sources that send codes and the docs that list them.

use std::collections::BTreeSet;
use std::path::Path;

use regex::Regex;

use super::ERROR_CODES;

/// The status a `StatusCode::NAME` constant stands for.
fn status_named(name: &str) -> u16 {
    match name {
        "BAD_REQUEST" => 400,
        "UNAUTHORIZED" => 401,
        "PAYMENT_REQUIRED" => 402,
        "FORBIDDEN" => 403,
        "NOT_FOUND" => 404,
        "METHOD_NOT_ALLOWED" => 405,
        "REQUEST_TIMEOUT" => 408,
        "CONFLICT" => 409,
        "PRECONDITION_FAILED" => 412,
        "PAYLOAD_TOO_LARGE" => 413,
        "URI_TOO_LONG" => 414,
        "UNSUPPORTED_MEDIA_TYPE" => 415,
        "RANGE_NOT_SATISFIABLE" => 416,
        "UNPROCESSABLE_ENTITY" => 422,
        "TOO_MANY_REQUESTS" => 429,
        "REQUEST_HEADER_FIELDS_TOO_LARGE" => 431,
        "INTERNAL_SERVER_ERROR" => 500,
        "BAD_GATEWAY" => 502,
        "SERVICE_UNAVAILABLE" => 503,
        "GATEWAY_TIMEOUT" => 504,
        other => panic!("add StatusCode::{other} to status_named in src/error/tests.rs"),
    }
}

/// The code of every source file under `src`, without unit tests.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.to_string_lossy().ends_with("tests.rs")
            {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = match text.find("#[cfg(test)]\nmod tests") {
                    Some(at) => text[..at].to_owned(),
                    None => text,
                };
                out.push((path.display().to_string(), code));
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

/// `(code, status)` pairs the sources send, with where each was found.
fn sent() -> Vec<(String, Option<u16>, String)> {
    let builder = Regex::new(r#"error_response\(\s*StatusCode::(\w+),\s*"(\w+)""#).unwrap();
    let raw = Regex::new(r#"json_answer\(\s*b"(\d{3})[^"]*",\s*"(\w+)""#).unwrap();
    let canned = Regex::new(r#"\(\s*StatusCode::(\w+),\s*b"\d{3}[^"]*",\s*"(\w+)""#).unwrap();
    let body = Regex::new(r#""error":\s*"(\w+)""#).unwrap();
    let any_builder = Regex::new(r"error_response\(\s*").unwrap();
    let mut out = Vec::new();
    for (file, code) in sources() {
        for c in builder
            .captures_iter(&code)
            .chain(canned.captures_iter(&code))
        {
            out.push((c[2].to_owned(), Some(status_named(&c[1])), file.clone()));
        }
        for c in raw.captures_iter(&code) {
            out.push((c[2].to_owned(), c[1].parse().ok(), file.clone()));
        }
        for c in body.captures_iter(&code) {
            out.push((c[1].to_owned(), None, file.clone()));
        }
        // Every call of the builder names its status and code literally, so this test sees it
        // (the builder itself and `ProxyError::to_response` aside).
        let calls = any_builder.find_iter(&code).count();
        let seen = builder.find_iter(&code).count();
        let generic = code
            .matches("error_response(self.status(), self.code()")
            .count()
            + code.matches("pub(crate) fn error_response(").count();
        assert_eq!(
            calls,
            seen + generic,
            "{file}: call error_response with `StatusCode::X, \"code\"` written out"
        );
    }
    out
}

/// `ProxyError`'s `(code, status)` pairs, read from its `code` and `status` functions.
fn proxy_errors() -> Vec<(String, u16)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/error.rs"))
        .unwrap();
    let body = |name: &str| {
        let start = text.find(&format!("pub(crate) fn {name}(&self)")).unwrap();
        let end = text[start..].find("\n    }\n").unwrap();
        text[start..start + end].to_owned()
    };
    let arm = Regex::new(r"((?:ProxyError::\w+[^=]*?)+)=>\s*\{?\s*([\w:]+|\x22\w+\x22)").unwrap();
    let variant = Regex::new(r"ProxyError::(\w+)").unwrap();
    let arms = |text: &str| -> Vec<(String, String)> {
        arm.captures_iter(text)
            .flat_map(|c| {
                let value = c[2].trim_matches('"').to_owned();
                variant
                    .captures_iter(&c[1])
                    .map(|v| (v[1].to_owned(), value.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let statuses = arms(&body("status"));
    let codes = arms(&body("code"));
    let mut out = Vec::new();
    for (variant, code) in &codes {
        if variant == "BudgetSpent" {
            continue; // the inner error's
        }
        let status = statuses
            .iter()
            .find(|(v, _)| v == variant)
            .map(|(_, s)| status_named(s.trim_start_matches("StatusCode::")))
            .unwrap_or_else(|| panic!("ProxyError::{variant} has no status arm"));
        out.push((code.clone(), status));
    }
    assert!(
        out.len() >= 10,
        "the match arms of ProxyError were not found: {out:?}"
    );
    out
}

#[test]
fn every_code_sent_is_listed_with_its_status() {
    let listed = |code: &str| {
        ERROR_CODES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, s)| *s)
    };
    for (code, status, file) in sent() {
        let Some(want) = listed(&code) else {
            panic!(
                "{file} sends `{code}`: add it to ERROR_CODES and to docs/config.md's errors table"
            );
        };
        if let Some(status) = status {
            assert_eq!(status, want, "{file} sends `{code}` with another status");
        }
    }
    for (code, status) in proxy_errors() {
        assert_eq!(
            listed(&code),
            Some(status),
            "ProxyError code `{code}` ({status}) is not in ERROR_CODES as such"
        );
    }
    let mut seen = BTreeSet::new();
    for (code, _) in ERROR_CODES {
        assert!(seen.insert(*code), "`{code}` is listed twice");
    }
}

#[test]
fn the_errors_table_lists_every_code() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md"))
            .unwrap();
    let start = docs
        .find("\n## Errors\n")
        .expect("an Errors section in docs/config.md");
    let section = &docs[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let row = Regex::new(r"(?m)^\|\s*(\d{3})\s*\|([^|]*)\|").unwrap();
    let code = Regex::new(r"`(\w+)`").unwrap();
    let mut documented = BTreeSet::new();
    for r in row.captures_iter(&section[..end]) {
        let status: u16 = r[1].parse().unwrap();
        for c in code.captures_iter(&r[2]) {
            documented.insert((c[1].to_owned(), status));
        }
    }
    let listed: BTreeSet<(String, u16)> = ERROR_CODES
        .iter()
        .map(|(c, s)| ((*c).to_owned(), *s))
        .collect();
    let missing: Vec<_> = listed.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&listed).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/config.md's errors table: missing {missing:?}, not sent by portico {stale:?}"
    );
}
