use http::{HeaderMap, HeaderValue, header};

use super::*;
use crate::config::spec_compression::Encoding::{Br, Gzip, Zstd};

fn accept(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_str(value).unwrap(),
    );
    headers
}

const ALL: &[Encoding] = &[Zstd, Br, Gzip];

#[test]
fn highest_q_wins_then_the_configured_order() {
    assert_eq!(choose(&accept("gzip, br, zstd"), ALL), Some(Zstd));
    assert_eq!(choose(&accept("gzip, br"), ALL), Some(Br));
    assert_eq!(choose(&accept("gzip;q=0.5, br;q=1"), ALL), Some(Br));
    assert_eq!(choose(&accept("gzip;q=1, br;q=0.5"), ALL), Some(Gzip));
    assert_eq!(choose(&accept("gzip, br"), &[Gzip, Br]), Some(Gzip));
    assert_eq!(choose(&accept("GZIP;Q=0.8"), ALL), Some(Gzip));
    assert_eq!(choose(&accept("x-gzip"), ALL), Some(Gzip));
}

#[test]
fn refusals_identity_and_star() {
    assert_eq!(choose(&HeaderMap::new(), ALL), None);
    assert_eq!(choose(&accept(""), ALL), None);
    assert_eq!(choose(&accept("identity"), ALL), None);
    assert_eq!(choose(&accept("*;q=0"), ALL), None);
    assert_eq!(choose(&accept("gzip;q=0"), ALL), None);
    assert_eq!(choose(&accept("*"), ALL), Some(Zstd));
    assert_eq!(choose(&accept("*, zstd;q=0"), ALL), Some(Br));
    assert_eq!(choose(&accept("br;q=0.2, identity;q=0.9"), ALL), None);
    assert_eq!(choose(&accept("br;q=0.9, identity;q=0.9"), ALL), Some(Br));
    assert_eq!(choose(&accept("deflate, compress"), ALL), None);
    // A q-value that does not parse leaves the item out.
    assert_eq!(choose(&accept("br;q=2, gzip;q=0.1"), ALL), Some(Gzip));
    assert_eq!(choose(&accept("br;q=0.1234"), ALL), None);
}

#[test]
fn media_ranges() {
    let text = MediaRange::parse("text/*").unwrap();
    assert!(text.matches("text/html"));
    assert!(text.matches("Text/CSS"));
    assert!(!text.matches("application/json"));
    let json = MediaRange::parse("*/*+json").unwrap();
    assert!(json.matches("application/problem+json"));
    assert!(!json.matches("application/json"));
    assert!(
        MediaRange::parse("application/JSON")
            .unwrap()
            .matches("application/json")
    );
    assert!(MediaRange::parse("*/*").unwrap().matches("image/png"));
    for bad in ["json", "text/", "*/json", "te xt/html", "/x"] {
        assert_eq!(MediaRange::parse(bad), None, "{bad}");
    }
}

#[test]
fn vary_is_merged_once() {
    let mut headers = HeaderMap::new();
    vary_accept_encoding(&mut headers);
    assert_eq!(headers[header::VARY], "Accept-Encoding");
    vary_accept_encoding(&mut headers);
    assert_eq!(headers.get_all(header::VARY).iter().count(), 1);

    let mut headers = HeaderMap::new();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    headers.append(header::VARY, HeaderValue::from_static("Cookie"));
    vary_accept_encoding(&mut headers);
    assert_eq!(headers[header::VARY], "Origin, Cookie, Accept-Encoding");

    let mut headers = HeaderMap::new();
    headers.insert(header::VARY, HeaderValue::from_static("*"));
    vary_accept_encoding(&mut headers);
    assert_eq!(headers[header::VARY], "*");
}

#[test]
fn strong_etags_become_weak() {
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, HeaderValue::from_static("\"abc\""));
    weaken_etag(&mut headers);
    assert_eq!(headers[header::ETAG], "W/\"abc\"");
    weaken_etag(&mut headers);
    assert_eq!(headers[header::ETAG], "W/\"abc\"");
}
