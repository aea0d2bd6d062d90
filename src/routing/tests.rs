use super::*;
use http::HeaderMap;
use proptest::prelude::*;

fn cond(hosts: &[&str], path: PathMatch) -> Conditions {
    Conditions {
        hosts: hosts
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect(),
        path,
        methods: Vec::new(),
        headers: Vec::new(),
        query: Vec::new(),
        cookies: Vec::new(),
    }
}

fn prefix(p: &str) -> PathMatch {
    PathMatch::Prefix(p.trim_end_matches('/').to_owned())
}

fn find(table: &RouteTable, host: &str, path: &str) -> Option<usize> {
    find_with(table, host, path, &Method::GET, &HeaderMap::new(), None)
}

fn find_with(
    table: &RouteTable,
    host: &str,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Option<usize> {
    table.find(&RequestView {
        client: std::net::IpAddr::from([127, 0, 0, 1]),
        host,
        path,
        query,
        method,
        headers,
    })
}

#[test]
fn precedence_exact_template_prefix_regex() {
    let table = RouteTable::build(vec![
        cond(&[], PathMatch::Regex(Regex::new("^/users/.*$").unwrap())),
        cond(&[], prefix("/users/")),
        cond(&[], prefix("/users/admin/")),
        cond(&[], PathMatch::Template("/users/{id}".into())),
        cond(&[], PathMatch::Exact("/users/me".into())),
        cond(&[], PathMatch::Any),
    ])
    .unwrap();
    assert_eq!(find(&table, "", "/users/me"), Some(4));
    assert_eq!(find(&table, "", "/users/42"), Some(3));
    assert_eq!(find(&table, "", "/users/42/posts"), Some(1));
    assert_eq!(find(&table, "", "/users/admin/x"), Some(2));
    assert_eq!(find(&table, "", "/users"), Some(1));
    assert_eq!(find(&table, "", "/usersx"), Some(5));
    assert_eq!(find(&table, "", "/"), Some(5));
}

#[test]
fn hosts_exact_wildcard_and_fallback() {
    let table = RouteTable::build(vec![
        cond(&["api.example.com"], prefix("/")),
        cond(&["*.example.com"], prefix("/")),
        cond(&["*.b.example.com"], prefix("/")),
        cond(&[], prefix("/")),
    ])
    .unwrap();
    assert_eq!(find(&table, "api.example.com", "/x"), Some(0));
    assert_eq!(find(&table, "www.example.com", "/x"), Some(1));
    assert_eq!(find(&table, "a.b.example.com", "/x"), Some(2));
    assert_eq!(find(&table, "example.com", "/x"), Some(3));
    assert_eq!(find(&table, "other.org", "/x"), Some(3));
}

#[test]
fn more_specific_path_beats_host_route_of_less_specific_path() {
    let table = RouteTable::build(vec![
        cond(&["a.com"], prefix("/")),
        cond(&[], PathMatch::Exact("/health".into())),
    ])
    .unwrap();
    assert_eq!(find(&table, "a.com", "/health"), Some(1));
    assert_eq!(find(&table, "a.com", "/other"), Some(0));
}

#[test]
fn methods_headers_query() {
    let mut get = cond(&[], prefix("/api"));
    get.methods = vec![Method::GET];
    let mut beta = cond(&[], prefix("/api"));
    beta.headers = vec![(
        HeaderName::from_static("x-beta"),
        HeaderValue::from_static("1"),
    )];
    let mut v2 = cond(&[], prefix("/api"));
    v2.query = vec![("version".into(), "2 x".into())];
    let table = RouteTable::build(vec![get, beta, v2, cond(&[], PathMatch::Any)]).unwrap();
    let mut headers = HeaderMap::new();
    assert_eq!(
        find_with(&table, "", "/api", &Method::GET, &headers, None),
        Some(0)
    );
    assert_eq!(
        find_with(&table, "", "/api", &Method::POST, &headers, None),
        Some(3)
    );
    headers.insert("x-beta", HeaderValue::from_static("1"));
    assert_eq!(
        find_with(&table, "", "/api", &Method::POST, &headers, None),
        Some(1)
    );
    let q = Some("a=1&version=2+x");
    assert_eq!(
        find_with(&table, "", "/api", &Method::POST, &HeaderMap::new(), q),
        Some(2)
    );
}

#[test]
fn conflicting_templates_are_reported() {
    let errors = RouteTable::build(vec![
        cond(&[], PathMatch::Template("/{a}".into())),
        cond(&[], PathMatch::Template("/{b}".into())),
    ])
    .unwrap_err();
    assert_eq!(errors[0].route, 1);
}

#[test]
fn query_decoding() {
    let pairs: Vec<_> = query_pairs("a=%41%zz&b&c=%e2%82%ac&d=%4").collect();
    assert_eq!(pairs[0], ("a".into(), "A%zz".into()));
    assert_eq!(pairs[1], ("b".into(), "".into()));
    assert_eq!(pairs[2], ("c".into(), "€".into()));
    assert_eq!(pairs[3], ("d".into(), "%4".into()));
}

/// A route spec drawn for property tests.
fn arb_route() -> impl Strategy<Value = (Option<usize>, usize, usize, bool)> {
    // (host: none / exact / wildcard, path kind, path depth, has method)
    (
        prop::option::of(0usize..2),
        0usize..5,
        0usize..3,
        any::<bool>(),
    )
}

fn build_route(spec: &(Option<usize>, usize, usize, bool)) -> Conditions {
    let (host, kind, depth, method) = *spec;
    let hosts: &[&str] = match host {
        None => &[],
        Some(0) => &["a.example.com"],
        Some(_) => &["*.example.com"],
    };
    let path: String = ["/p", "/p/q", "/p/q/r"][depth].to_owned();
    let pm = match kind {
        0 => PathMatch::Any,
        1 => PathMatch::Exact(path),
        2 => PathMatch::Template(["/p/{id}", "/p/x/{id}", "/p/q/x/{id}"][depth].to_owned()),
        3 => PathMatch::Prefix(path),
        _ => PathMatch::Regex(Regex::new(&format!("^{path}.*$")).unwrap()),
    };
    let mut c = cond(hosts, pm);
    if method {
        c.methods = vec![Method::GET];
    }
    c
}

proptest! {
    /// The route found matches, and no other matching route is more specific.
    #[test]
    fn most_specific_route_wins(
        specs in prop::collection::vec(arb_route(), 1..8),
        host in prop::sample::select(vec!["a.example.com", "b.example.com", "other.org"]),
        path in prop::sample::select(vec!["/p", "/p/q", "/p/q/r", "/p/x/7", "/p/q/x/7", "/z"]),
        post in any::<bool>(),
    ) {
        let routes: Vec<Conditions> = specs.iter().map(build_route).collect();
        let Ok(table) = RouteTable::build(routes.clone()) else { return Ok(()); };
        let method = if post { Method::POST } else { Method::GET };
        let headers = HeaderMap::new();
        let req = RequestView { client: std::net::IpAddr::from([127, 0, 0, 1]), host, path, query: None, method: &method, headers: &headers };
        let key = |c: &Conditions| {
            let prefix_len = match &c.path { PathMatch::Prefix(p) => p.len(), _ => 0 };
            (c.path.rank(), prefix_len, c.count(), c.host_rank())
        };
        let matching: Vec<usize> = (0..routes.len()).filter(|&i| routes[i].matches(&req)).collect();
        match table.find(&req) {
            None => prop_assert!(matching.is_empty(), "missed {:?}", matching),
            Some(found) => {
                prop_assert!(routes[found].matches(&req));
                for &other in &matching {
                    prop_assert!(key(&routes[other]) <= key(&routes[found]),
                        "route {} beats found {}", other, found);
                }
            }
        }
    }
}

#[test]
fn table_errors_name_their_route() {
    let errors = RouteTable::build(vec![
        cond(&[], PathMatch::Template("/a/{x}".into())),
        cond(&["h.example"], PathMatch::Any),
        cond(&[], PathMatch::Template("/a/{y}".into())),
    ])
    .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].route, 2);
    assert!(matches!(errors[0].problem, TableProblem::Template { .. }));
    assert!(
        errors[0]
            .to_string()
            .starts_with("path template `/a/{y}` cannot be routed: "),
        "{}",
        errors[0]
    );
}
