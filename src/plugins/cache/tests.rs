use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};

use super::rules::{self, Directives};
use super::store::{Begin, Store, Stored};
use super::*;

fn headers(fields: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in fields {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

fn cc(value: &str) -> Directives {
    Directives::parse(&headers(&[("cache-control", value)]))
}

#[test]
fn directives_parse_case_insensitively_with_quoted_commas_and_bad_ages() {
    let d = cc("Public, MAX-AGE=60, s-maxage=\"30\", must-revalidate");
    assert!(d.public && d.must_revalidate && !d.no_store);
    assert_eq!((d.max_age, d.s_maxage), (Some(60), Some(30)));
    let d = cc("private=\"set-cookie, x-a\", no-cache=\"x\"");
    assert!(d.private && d.no_cache);
    assert_eq!(
        d.max_age, None,
        "the comma inside quotes is not a separator"
    );
    // A malformed age is stale, never absent; huge ones are capped at 2^31.
    assert_eq!(cc("max-age=abc").max_age, Some(0));
    assert_eq!(cc("max-age=-1").max_age, Some(0));
    assert_eq!(cc("max-age=99999999999999999999").max_age, Some(1 << 31));
    assert_eq!(cc("stale-if-error=30").stale_if_error, Some(30));
    assert_eq!(
        cc("max-age=1, stale-while-revalidate=9").stale_while_revalidate,
        Some(9)
    );
    // Several fields add up.
    let d = Directives::parse(&headers(&[
        ("cache-control", "no-store"),
        ("cache-control", "max-age=5"),
    ]));
    assert!(d.no_store);
    assert_eq!(d.max_age, Some(5));
    assert_eq!(cc(""), Directives::default());
}

#[test]
fn freshness_lifetime_follows_rfc_9111_order() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let date = httpdate::fmt_http_date(now);
    let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
    let ok = StatusCode::OK;
    let life = |fields: &[(&str, &str)], heuristic: Option<u64>, status: StatusCode| {
        let h = headers(fields);
        rules::lifetime(
            status,
            &h,
            &Directives::parse(&h),
            heuristic.map(Duration::from_secs),
            now,
        )
        .map(|d| d.as_secs())
    };
    // s-maxage wins over max-age, which wins over Expires.
    let all = [
        ("cache-control", "max-age=10, s-maxage=20"),
        ("expires", later.as_str()),
        ("date", date.as_str()),
    ];
    assert_eq!(life(&all, None, ok), Some(20));
    assert_eq!(life(&all[1..], None, ok), Some(120), "Expires - Date");
    assert_eq!(
        life(&[("expires", "0")], None, ok),
        Some(0),
        "invalid: expired"
    );
    // Heuristic only when configured, and for statuses that allow it.
    assert_eq!(life(&[], None, ok), None);
    assert_eq!(life(&[], Some(60), ok), Some(60));
    assert_eq!(life(&[], Some(60), StatusCode::NOT_FOUND), Some(60));
    assert_eq!(life(&[], Some(60), StatusCode::FORBIDDEN), None);
    assert_eq!(life(&[], Some(60), StatusCode::BAD_GATEWAY), None);
    assert_eq!(
        life(
            &[("cache-control", "max-age=5")],
            None,
            StatusCode::FORBIDDEN
        ),
        Some(5),
        "explicit freshness stores any status"
    );
    // Age: the larger of the field and the time since Date.
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
    let h = headers(&[("age", "10"), ("date", earlier.as_str())]);
    assert_eq!(rules::initial_age(&h, now), Duration::from_secs(30));
    let h = headers(&[("age", "100"), ("date", earlier.as_str())]);
    assert_eq!(rules::initial_age(&h, now), Duration::from_secs(100));
}

#[test]
fn conditionals_compare_weakly_and_by_date() {
    assert!(rules::none_match("\"a\", W/\"b\"", Some("\"b\"")));
    assert!(rules::none_match("*", Some("\"x\"")));
    assert!(!rules::none_match("\"a\"", Some("\"b\"")));
    assert!(!rules::none_match("*", None));
    let stored = headers(&[
        ("etag", "\"v1\""),
        ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ]);
    let ask = |fields: &[(&str, &str)]| rules::not_modified(&headers(fields), &stored);
    assert!(ask(&[("if-none-match", "\"v1\"")]));
    assert!(!ask(&[("if-none-match", "\"v2\"")]));
    assert!(ask(&[(
        "if-modified-since",
        "Sun, 06 Nov 1994 08:49:37 GMT"
    )]));
    assert!(!ask(&[(
        "if-modified-since",
        "Sat, 05 Nov 1994 08:49:37 GMT"
    )]));
    // If-None-Match takes precedence over If-Modified-Since.
    assert!(!ask(&[
        ("if-none-match", "\"v2\""),
        ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
    ]));
}

fn stored(url: &str, body: usize, vary: Vec<(HeaderName, Option<HeaderValue>)>) -> Arc<Stored> {
    Arc::new(Stored {
        url: Arc::from(url),
        status: StatusCode::OK,
        headers: headers(&[("content-length", &body.to_string())]),
        body: Bytes::from(vec![b'x'; body]),
        vary,
        received: Instant::now(),
        initial_age: Duration::ZERO,
        lifetime: Duration::from_secs(60),
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
        must_revalidate: false,
        validators: false,
    })
}

#[test]
fn the_store_is_bounded_in_bytes_and_drops_the_least_recently_used() {
    let gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    let store = Store::new(10_000, gauge.clone(), None);
    let none = HeaderMap::new();
    for i in 0..3 {
        store.put(
            Arc::from(format!("k{i}")),
            stored(&format!("h/{i}"), 2_000, vec![]),
        );
    }
    assert!(
        store.find("k0", &none).is_some(),
        "k0 is now the most recent"
    );
    store.put(Arc::from("k3"), stored("h/3", 3_000, vec![]));
    assert!(store.bytes() <= 10_000, "{}", store.bytes());
    assert_eq!(gauge.get(), store.bytes() as i64);
    assert!(
        store.find("k1", &none).is_none(),
        "the least recently used went first"
    );
    assert!(store.find("k0", &none).is_some());
    assert!(store.find("k3", &none).is_some());
    // Larger than the store: never stored.
    store.put(Arc::from("big"), stored("h/big", 20_000, vec![]));
    assert!(store.find("big", &none).is_none());
    // Purge by URL.
    let (n, bytes) = store.purge(|u| u.starts_with("h/"));
    assert!(n >= 2 && bytes > 0);
    assert_eq!((store.bytes(), gauge.get()), (0, 0));
    drop(store);
    assert_eq!(gauge.get(), 0);
}

#[test]
fn variants_are_selected_by_the_request_fields_vary_names() {
    let store = Store::new(1 << 20, Default::default(), None);
    let lang = HeaderName::from_static("accept-language");
    let variant = |v: Option<&str>| {
        stored(
            "h/v",
            10,
            vec![(lang.clone(), v.map(|v| HeaderValue::from_str(v).unwrap()))],
        )
    };
    store.put(Arc::from("k"), variant(Some("fr")));
    store.put(Arc::from("k"), variant(None));
    let fr = headers(&[("accept-language", "fr")]);
    let de = headers(&[("accept-language", "de")]);
    let found = store.find("k", &fr).unwrap();
    assert_eq!(found.vary[0].1.as_ref().unwrap(), "fr");
    assert!(store.find("k", &de).is_none());
    assert!(
        store.find("k", &HeaderMap::new()).unwrap().vary[0]
            .1
            .is_none()
    );
    // The same variant again replaces it.
    store.put(Arc::from("k"), variant(Some("fr")));
    let (n, _) = store.purge(|_| true);
    assert_eq!(n, 1, "one key, its variants with it");
}

#[tokio::test]
async fn one_fill_per_key_and_waiters_wake_when_it_ends() {
    let store = Arc::new(Store::new(1 << 20, Default::default(), None));
    let key: Arc<str> = Arc::from("k");
    let Begin::Fill(fill) = store.begin(&key) else {
        panic!("the first miss fills")
    };
    let Begin::Wait(mut rx) = store.begin(&key) else {
        panic!("the second waits")
    };
    let waiter = tokio::spawn(async move { rx.changed().await.is_err() });
    drop(fill);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
    );
    assert!(matches!(store.begin(&key), Begin::Fill(_)));
}

#[test]
fn purge_urls_drop_the_scheme_and_port() {
    assert_eq!(
        purge_url("https://Example.COM:8443/a?b=1").as_deref(),
        Some("example.com/a?b=1")
    );
    assert_eq!(
        purge_url("http://example.com").as_deref(),
        Some("example.com/")
    );
    assert_eq!(purge_url("example.com/a"), None);
}
