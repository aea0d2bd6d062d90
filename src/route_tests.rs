//! `portico test --config FILE CASES.yaml`: golden route cases checked against the compiled
//! config, with no traffic. Each case is a request and what portico should decide for it;
//! the decision is the one `portico explain` prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;

use crate::runtime::Snapshot;
use crate::runtime::explain::{self, Decision};

/// One case of a cases file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// A name shown in the report (default: the method and URL).
    #[serde(default)]
    name: Option<String>,
    request: CaseRequest,
    #[serde(default)]
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
    #[serde(default = "get")]
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// The peer address (default 127.0.0.1).
    #[serde(default)]
    client: Option<std::net::IpAddr>,
}

fn get() -> String {
    "GET".to_owned()
}

/// What the case expects; every key is optional, and only the keys given are compared.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    listener: Option<String>,
    route: Option<String>,
    upstream: Option<String>,
    /// The upstream's target addresses, in any order.
    targets: Option<Vec<String>>,
    status: Option<u16>,
    /// The path sent upstream.
    path: Option<String>,
}

/// Why the cases could not be run at all.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CasesError {
    /// The file does not read.
    #[error("{file}: {source}")]
    Read {
        /// The cases file.
        file: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a list of cases.
    #[error("{file}:{line}:{col}: {message}")]
    Parse {
        /// The cases file.
        file: String,
        /// Where the problem is (1-based; 0 when unknown).
        line: usize,
        /// Its column.
        col: usize,
        /// What is wrong.
        message: String,
    },
}

/// The report of a run: its text, and how many cases failed.
#[derive(Debug)]
pub(crate) struct Report {
    /// One line per passing case, a block per failing one, then a summary line.
    pub(crate) text: String,
    /// Cases that did not get what they expect.
    pub(crate) failed: usize,
}

/// Reads the cases at `path` and checks each against `snap`.
pub(crate) fn run(snap: &Snapshot, path: &std::path::Path) -> Result<Report, CasesError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CasesError::Read {
        file: file.clone(),
        source,
    })?;
    let cases = parse(&file, &text)?;
    Ok(check(snap, &cases))
}

fn parse(file: &str, text: &str) -> Result<Vec<Case>, CasesError> {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    serde_saphyr::from_str_with_options::<Vec<Case>>(text, options).map_err(|err| {
        let (line, col) = err.location().map_or((0, 0), |l| (l.line(), l.column()));
        use serde_saphyr::MessageFormatter;
        let message = serde_saphyr::DefaultMessageFormatter
            .format_message(err.without_snippet())
            .into_owned();
        CasesError::Parse {
            file: file.to_owned(),
            line: usize::try_from(line).unwrap_or(0),
            col: usize::try_from(col).unwrap_or(0),
            message,
        }
    })
}

fn check(snap: &Snapshot, cases: &[Case]) -> Report {
    let mut text = String::new();
    let mut failed = 0;
    for (i, case) in cases.iter().enumerate() {
        let title = case.name.clone().unwrap_or_else(|| {
            format!(
                "{} {}",
                case.request.method.to_ascii_uppercase(),
                case.request.url
            )
        });
        let mismatches = match decide(snap, &case.request) {
            Ok(decision) => compare(&case.expect, &decision),
            Err(problem) => vec![format!("the request cannot be explained: {problem}")],
        };
        if mismatches.is_empty() {
            let _ = writeln!(text, "ok    {title}");
        } else {
            failed += 1;
            let _ = writeln!(text, "FAIL  {title} (case {})", i + 1);
            for line in mismatches {
                let _ = writeln!(text, "      {line}");
            }
        }
    }
    let _ = writeln!(
        text,
        "{} cases: {} passed, {failed} failed",
        cases.len(),
        cases.len() - failed
    );
    Report { text, failed }
}

fn decide(snap: &Snapshot, request: &CaseRequest) -> Result<Decision, String> {
    let headers: Vec<String> = request
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let mut question = explain::Question::parse(&request.method, &request.url, &headers)?;
    if let Some(client) = request.client {
        question.client = client;
    }
    explain::decide(snap, &question)
        .map(|(_, decision)| decision)
        .map_err(|e| e.to_string())
}

/// Each expected key that the decision does not match, as `key: expected X, got Y`.
fn compare(expect: &Expect, got: &Decision) -> Vec<String> {
    let shown = |v: Option<&str>| v.map_or_else(|| "(none)".to_owned(), |v| format!("`{v}`"));
    let mut out = Vec::new();
    let mut field = |key: &str, want: Option<&String>, have: Option<&String>| {
        if let Some(want) = want
            && have != Some(want)
        {
            out.push(format!(
                "{key}: expected `{want}`, got {}",
                shown(have.map(String::as_str))
            ));
        }
    };
    field("listener", expect.listener.as_ref(), got.listener.as_ref());
    field("route", expect.route.as_ref(), got.route.as_ref());
    field("upstream", expect.upstream.as_ref(), got.upstream.as_ref());
    field("path", expect.path.as_ref(), got.path.as_ref());
    if let Some(want) = expect.status
        && got.status != Some(want)
    {
        out.push(format!(
            "status: expected {want}, got {}",
            got.status
                .map_or_else(|| "(none: layer 4)".to_owned(), |s| s.to_string())
        ));
    }
    if let Some(want) = &expect.targets {
        let mut want = want.clone();
        let mut have = got.targets.clone();
        want.sort();
        have.sort();
        if want != have {
            out.push(format!(
                "targets: expected [{}], got [{}]",
                want.join(", "),
                have.join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
listeners: [ { name: web, bind: 127.0.0.1:8080 } ]
routes:
  - { name: users, match: { path_prefix: /users/ }, upstream: users, rewrite: { strip_prefix: /users } }
  - name: private
    match: { path_prefix: /private/ }
    plugins: [ { key_auth: {} } ]
    upstream: users
  - { name: moved, match: { path: /old }, redirect: { to: /new, status: 308 } }
upstreams:
  users: { targets: [ { address: 127.0.0.1:9001 }, { address: 127.0.0.1:9002 } ] }
consumers: [ { name: alice, api_keys: [secret-key-0123456789] } ]
";

    fn report(cases: &str) -> Report {
        let snap = crate::runtime::compile::compile_str(CONFIG).expect("compiles");
        let cases = parse("cases.yaml", cases).expect("parses");
        check(&snap, &cases)
    }

    #[test]
    fn passing_cases_pass() {
        let r = report(
            "\
- request: { url: http://localhost:8080/users/42 }
  expect: { listener: web, route: users, upstream: users, status: 200, path: /42,
            targets: [127.0.0.1:9002, 127.0.0.1:9001] }
- request: { url: http://localhost:8080/private/x }
  expect: { route: private, status: 401 }
- request: { url: http://localhost:8080/private/x, headers: { x-api-key: secret-key-0123456789 } }
  expect: { route: private, status: 200, path: /private/x }
- request: { method: post, url: http://localhost:8080/old }
  expect: { route: moved, status: 308 }
- request: { url: http://localhost:8080/nothing }
  expect: { status: 404 }
",
        );
        assert_eq!(r.failed, 0, "{}", r.text);
        assert!(
            r.text.ends_with("5 cases: 5 passed, 0 failed\n"),
            "{}",
            r.text
        );
    }

    #[test]
    fn a_mismatch_says_what_differs() {
        let r = report(
            "\
- name: users go to the old pool
  request: { url: http://localhost:8080/users/42 }
  expect: { route: users, upstream: legacy, path: /users/42, targets: [127.0.0.1:9001] }
",
        );
        assert_eq!(r.failed, 1);
        assert!(
            r.text.contains("FAIL  users go to the old pool (case 1)"),
            "{}",
            r.text
        );
        assert!(
            r.text.contains("upstream: expected `legacy`, got `users`"),
            "{}",
            r.text
        );
        assert!(
            r.text.contains("path: expected `/users/42`, got `/42`"),
            "{}",
            r.text
        );
        assert!(
            r.text.contains(
                "targets: expected [127.0.0.1:9001], got [127.0.0.1:9001, 127.0.0.1:9002]"
            ),
            "{}",
            r.text
        );
        assert!(!r.text.contains("route:"), "{}", r.text);
    }

    #[test]
    fn unknown_keys_are_errors_with_their_place() {
        let err = parse(
            "cases.yaml",
            "- request: { url: http://localhost:8080/ }\n  expect: { rout: users }\n",
        )
        .expect_err("unknown key");
        let text = err.to_string();
        assert!(text.starts_with("cases.yaml:2:"), "{text}");
        assert!(text.contains("rout"), "{text}");
    }
}
