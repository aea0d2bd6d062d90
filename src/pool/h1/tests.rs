//! portico's HTTP/1.1 response parser: known cases, and property tests against hyper's client.

use proptest::prelude::*;

use super::differential::{Read, check, hyper, ours};

fn read(data: &str) -> Read {
    ours(data.as_bytes(), false, 3)
}

fn body_of(data: &str) -> Vec<u8> {
    match read(data) {
        Read::Message { body, .. } => body,
        Read::Refused => panic!("refused: {data:?}"),
    }
}

#[test]
fn lengths_chunks_and_close_delimit_the_body() {
    assert_eq!(
        body_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloXX"),
        b"hello"
    );
    assert_eq!(
        body_of(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"
        ),
        b"hello!"
    );
    assert_eq!(
        body_of("HTTP/1.1 200 OK\r\n\r\nuntil close"),
        b"until close"
    );
    let Read::Message { trailers, end, .. } = read(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nx-sum: 1\r\n\r\nNEXT",
    ) else {
        panic!("refused");
    };
    assert_eq!(trailers, vec![("x-sum".to_owned(), b"1".to_vec())]);
    assert_eq!(end, Some(69));
}

#[test]
fn interim_answers_are_skipped_and_some_answers_have_no_body() {
    let data = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n";
    let Read::Message { status, body, .. } = read(data) else {
        panic!("refused");
    };
    assert_eq!((status, body.len()), (204, 0));
    let Read::Message { body, end, .. } =
        ours(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", true, 1)
    else {
        panic!("refused");
    };
    assert_eq!((body.len(), end), (0, Some(38)));
}

#[test]
fn ambiguous_framing_is_refused() {
    for data in [
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nabc",
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        "HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\nabc",
        "HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n11111111111111111\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\ncut",
        "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        assert_eq!(read(data), Read::Refused, "{data:?}");
    }
}

#[test]
fn known_responses_read_as_hyper_reads_them() {
    for data in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
        "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\nx-b: 2\r\n\r\n3\r\nabc\r\n0\r\nx-t: 9\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\netag: \"a\"\r\n\r\n",
        "HTTP/1.0 200 OK\r\n\r\nclose-delimited",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
    ] {
        let mut input = vec![0u8, 2];
        input.extend_from_slice(data.as_bytes());
        check(&input);
        assert_ne!(hyper(data.as_bytes(), false), Read::Refused, "{data:?}");
    }
    // hyper tells where a message it keeps the connection after ends.
    let data = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let Read::Message { end, .. } = hyper(data, false) else {
        panic!("refused");
    };
    assert_eq!(end, Some(data.len()));
}

/// A response built from parts that are mostly well formed, with the framing fields and the
/// chunks drawn from valid and invalid choices.
fn response() -> impl Strategy<Value = Vec<u8>> {
    let status = prop::sample::select(vec![
        "100 Continue",
        "103 Early Hints",
        "101 Switching Protocols",
        "200 OK",
        "204 No Content",
        "304 Not Modified",
        "404 Not Found",
        "500 Oops",
        "999 X",
        "20 Short",
    ]);
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "http/1.1"]);
    let field = prop::sample::select(vec![
        "content-length: 5",
        "content-length: 0",
        "content-length: 5, 5",
        "content-length: 3, 5",
        "content-length: x",
        "transfer-encoding: chunked",
        "transfer-encoding: Chunked",
        "transfer-encoding: gzip",
        "transfer-encoding: gzip, chunked",
        "connection: close",
        "connection: keep-alive",
        "x-a: b",
        "x-a:  spaced  ",
        "X-Up: Case",
        " folded",
        "bad name: v",
        "x-e:",
        "x-u: caf\u{e9}",
    ]);
    let chunk = prop::sample::select(vec![
        "5\r\nhello\r\n",
        "3;ext=1\r\nabc\r\n",
        "0\r\n\r\n",
        "0\r\nx-t: 1\r\n\r\n",
        "z\r\n",
        "5\r\nhel",
        "2\r\nabc\r\n",
        "1 \r\na\r\n",
        "A\r\n0123456789\r\n",
        "\r\n",
        "hello",
        "1\na\r\n",
        "1\r\na\n",
    ]);
    (
        version,
        status,
        prop::collection::vec(field, 0..4),
        prop::collection::vec(chunk, 0..4),
        prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
    )
        .prop_map(|(version, status, fields, chunks, flip)| {
            let mut out = format!("{version} {status}\r\n");
            for f in fields {
                out.push_str(f);
                out.push_str("\r\n");
            }
            out.push_str("\r\n");
            for c in chunks {
                out.push_str(c);
            }
            let mut bytes = out.into_bytes();
            if let Some((at, byte)) = flip {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn built_responses_read_as_hyper_reads_them(
        data in response(),
        head in any::<bool>(),
        step in 1u8..40,
    ) {
        let mut input = vec![u8::from(head), step];
        input.extend_from_slice(&data);
        check(&input);
    }

    #[test]
    fn any_bytes_read_as_hyper_reads_them(data in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut input = vec![0u8, 7];
        input.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        input.extend_from_slice(&data);
        check(&input);
    }
}
