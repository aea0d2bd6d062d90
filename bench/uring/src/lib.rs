//! What both proxies share: where an HTTP/1.1 message ends in a buffer.

/// The length of the first whole message in `buf` (its head and its `Content-Length` body),
/// or `None` while more bytes are needed. Messages without a length end at their head (a GET),
/// or, for a response, are refused (`Err`), as the bench's upstream always sends one.
pub fn message_end(buf: &[u8], response: bool) -> Result<Option<usize>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let (head, found) = if response {
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => (n, r.headers.iter().find_map(length)),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err("a response that does not parse"),
        }
    } else {
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => (n, r.headers.iter().find_map(length)),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err("a request that does not parse"),
        }
    };
    let body = match found {
        Some(Ok(n)) => n,
        Some(Err(())) => return Err("a bad Content-Length"),
        None if response => return Err("a response without Content-Length"),
        None => 0,
    };
    let end = head.checked_add(body).ok_or("a message too long")?;
    Ok((buf.len() >= end).then_some(end))
}

fn length(h: &httparse::Header<'_>) -> Option<Result<usize, ()>> {
    h.name.eq_ignore_ascii_case("content-length").then(|| {
        std::str::from_utf8(h.value)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or(())
    })
}

/// `--listen ADDR --upstream ADDR` from the command line.
pub fn args() -> (String, String) {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| {
                eprintln!("usage: {} --listen ADDR --upstream ADDR", args[0]);
                std::process::exit(2)
            })
    };
    (value("--listen"), value("--upstream"))
}

#[cfg(test)]
mod tests {
    use super::message_end;

    #[test]
    fn messages_end_after_their_length() {
        let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET";
        assert_eq!(message_end(get, false), Ok(Some(27)));
        assert_eq!(message_end(&get[..20], false), Ok(None));
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        assert_eq!(message_end(ok, true), Ok(Some(ok.len())));
        assert_eq!(message_end(&ok[..ok.len() - 1], true), Ok(None));
        assert!(message_end(b"HTTP/1.1 200 OK\r\n\r\n", true).is_err());
    }
}
