use super::*;
use proptest::prelude::*;

fn n(path: &str) -> String {
    normalize(path).unwrap().into_owned()
}

fn policy(encoded_slash: EncodedSlash, matrix_params: MatrixParams) -> PathPolicy {
    PathPolicy {
        encoded_slash,
        backslash: Backslash::Decode,
        matrix_params,
    }
}

#[test]
fn examples() {
    assert_eq!(n("/"), "/");
    assert_eq!(n("/a/b"), "/a/b");
    assert_eq!(n("/a/b/"), "/a/b/");
    assert_eq!(n("/a/%2e%2e/admin"), "/admin");
    assert_eq!(n("/a/%2E%2e/admin"), "/admin");
    assert_eq!(n("/a/./b/../c"), "/a/c");
    assert_eq!(n("//a///b"), "/a/b");
    assert_eq!(n("/a/.."), "/");
    assert_eq!(n("/a/b/.."), "/a/");
    assert_eq!(n("/%7Euser"), "/~user");
    assert_eq!(n("/caf%c3%a9"), "/caf%C3%A9");
    assert_eq!(n("/café"), "/café");
    assert_eq!(n("/a%20b"), "/a%20b");
    assert_eq!(n("/.hidden"), "/.hidden");
    assert_eq!(n("/a..b/c"), "/a..b/c");
    assert_eq!(n("/a%252Fb"), "/a%252Fb");
    assert_eq!(n("/a%3Bb"), "/a%3Bb");
    assert!(matches!(normalize("/a/b").unwrap(), Cow::Borrowed(_)));
    assert_eq!(normalize("a"), Err(PathError::NotAbsolute));
    assert_eq!(normalize("/%zz"), Err(PathError::BadEscape));
    assert_eq!(normalize("/%4"), Err(PathError::BadEscape));
    assert_eq!(normalize("/a%00"), Err(PathError::Control));
    assert_eq!(normalize("/a\u{7f}"), Err(PathError::Control));
}

#[test]
fn separators_and_params_resolve_as_a_backend_would() {
    // Encoded separators, either case, and a raw backslash are separators.
    assert_eq!(n("/a/..%2fadmin"), "/admin");
    assert_eq!(n("/a/..%2Fadmin"), "/admin");
    assert_eq!(n("/a/..%5cadmin"), "/admin");
    assert_eq!(n("/a/..%5Cadmin"), "/admin");
    assert_eq!(n("/a/..\\admin"), "/admin");
    assert_eq!(n("/a\\b"), "/a/b");
    assert_eq!(n("/private%2Fdata"), "/private/data");
    assert_eq!(n("/private%2fdata"), "/private/data");
    assert_eq!(n("/private%2f.."), "/");
    assert_eq!(n("/private%2F%2E%2E"), "/");
    assert_eq!(n("/%2F%2Fevil.example"), "/evil.example");
    // `;params` are set aside per segment, dot-segments included.
    assert_eq!(n("/a/..;/admin"), "/admin");
    assert_eq!(n("/a/..;x=1/admin"), "/admin");
    assert_eq!(n("/a/.;x/b"), "/a/b");
    assert_eq!(n("/private;x"), "/private");
    assert_eq!(n("/private;x/data"), "/private/data");
    assert_eq!(n("/private;jsessionid=1;x=2/data;y"), "/private/data");
    assert_eq!(n("/a/;x"), "/a/");
    assert_eq!(n("/;x/private"), "/private");
    // Parameters end at any separator.
    assert_eq!(n("/a;x%2F../b"), "/b");
}

#[test]
fn climbing_above_the_root_is_refused() {
    for path in [
        "/..",
        "/../etc/passwd",
        "/a/../../etc",
        "/%2e%2e/etc",
        "/a/..%2f..%2fetc",
        "/..;/etc",
        "/a%5C..%5C..",
        "/.\\..",
    ] {
        assert_eq!(normalize(path), Err(PathError::AboveRoot), "{path}");
    }
}

#[test]
fn default_policy_forwards_the_canonical_form() {
    let called = std::cell::Cell::new(false);
    let out = PathPolicy::default().apply("/a/..%2Fb;x", |_| {
        called.set(true);
        true
    });
    assert_eq!(out, Ok(None));
    assert!(!called.get());
}

#[test]
fn keep_and_reject() {
    let keep = policy(EncodedSlash::Keep, MatrixParams::Strip);
    assert_eq!(
        keep.apply("/files/a%2fb;x", |view| view == "/files/a%2Fb"),
        Ok(Some("/files/a%2Fb".to_owned()))
    );
    assert_eq!(keep.apply("/files/a/b", |_| false), Ok(None));
    // The upstream would read the kept form as another route's path.
    assert_eq!(
        keep.apply("/x%2F..%2Ffiles/a", |view| view.starts_with("/files/")),
        Err(PathError::Ambiguous)
    );
    let reject = policy(EncodedSlash::Reject, MatrixParams::Reject);
    assert_eq!(
        reject.apply("/a%5cb", |_| true),
        Err(PathError::EncodedSlash)
    );
    assert_eq!(reject.apply("/a;b", |_| true), Err(PathError::MatrixParams));
    assert_eq!(reject.apply("/a%3Bb/c", |_| true), Ok(None));
    let no_backslash = PathPolicy {
        backslash: Backslash::Reject,
        ..PathPolicy::default()
    };
    assert_eq!(
        no_backslash.apply("/a\\b", |_| true),
        Err(PathError::Backslash)
    );
    assert_eq!(no_backslash.apply("/a%5Cb", |_| true), Ok(None));
    let params = policy(EncodedSlash::Decode, MatrixParams::Keep);
    assert_eq!(
        params.apply("/shop;jsessionid=AB/./cart;v=%7e1;x", |_| false),
        Ok(Some("/shop;jsessionid=AB/cart;v=~1;x".to_owned()))
    );
    // Parameters of a removed segment go with it.
    assert_eq!(
        params.apply("/a/b;x/..;y/c", |_| false),
        Ok(Some("/a/c".to_owned()))
    );
}

/// Paths built from the characters that matter here, in both cases.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "/", "//", "\\", ".", "..", ";", "=", "a", "B", "%2F", "%2f", "%5C", "%5c", "%2E", "%2e",
        "%3B", "%25", "%7E", "%41", "%C3%A9", "é", "~", "-",
    ]);
    prop::collection::vec(piece, 0..16).prop_map(|pieces| format!("/{}", pieces.concat()))
}

fn assert_canonical(path: &str) -> Result<(), TestCaseError> {
    prop_assert!(path.starts_with('/'));
    prop_assert!(!path.contains("//"), "{}", path);
    prop_assert!(!path.contains('\\') && !path.contains(';'), "{}", path);
    let upper = path.to_ascii_uppercase();
    prop_assert!(!upper.contains("%2F") && !upper.contains("%5C"), "{}", path);
    for segment in path.split('/') {
        prop_assert!(segment != "." && segment != "..", "{}", path);
    }
    Ok(())
}

proptest! {
    #[test]
    fn canonical_form_is_stable(path in tricky_path()) {
        if let Ok(once) = normalize(&path) {
            let once = once.into_owned();
            assert_canonical(&once)?;
            let twice = normalize(&once).unwrap();
            prop_assert_eq!(&twice, &once);
            prop_assert!(matches!(twice, Cow::Borrowed(_)));
        }
    }

    #[test]
    fn random_paths_are_stable(path in "/[a-z./%0-9A-F~_;\\\\-]{0,40}") {
        if let Ok(once) = normalize(&path) {
            let once = once.into_owned();
            assert_canonical(&once)?;
            prop_assert_eq!(normalize(&once).unwrap(), once.as_str());
        }
    }

    #[test]
    fn kept_forms_agree_with_the_canonical_form(path in tricky_path()) {
        // A policy applies to paths the router matched, so their canonical form exists.
        let Ok(canonical_form) = normalize(&path) else {
            return Ok(());
        };
        let keep_all = policy(EncodedSlash::Keep, MatrixParams::Keep);
        match keep_all.apply(&path, |_| true) {
            Ok(Some(kept)) => {
                // What is kept holds no dot-segment, and it is stable under the same policy.
                for segment in kept.split('/') {
                    let name = segment.split(';').next().unwrap_or("");
                    prop_assert!(name != "." && name != "..", "{}", kept);
                }
                let again = match keep_all.apply(&kept, |_| true) {
                    Ok(Some(again)) => again,
                    // Nothing left to keep: the canonical form is what is forwarded.
                    Ok(None) => normalize(&kept).map(Cow::into_owned).unwrap_or_default(),
                    Err(err) => err.to_string(),
                };
                prop_assert_eq!(again, kept);
            }
            Ok(None) => {}
            // `/a%2Fb/../..` climbs above the root once `a%2Fb` is one segment.
            Err(err) => prop_assert_eq!(err, PathError::AboveRoot),
        }
        // Keeping only parameters changes nothing else: stripped, they give the canonical form.
        let keep_params = policy(EncodedSlash::Decode, MatrixParams::Keep);
        match keep_params.apply(&path, |_| true) {
            Ok(Some(kept)) => {
                let stripped: Vec<&str> = kept
                    .split('/')
                    .map(|s| s.split(';').next().unwrap_or(""))
                    .collect();
                prop_assert_eq!(stripped.join("/"), canonical_form.into_owned());
            }
            Ok(None) => {}
            Err(err) => prop_assert!(false, "{} refused: {}", path, err),
        }
    }
}
