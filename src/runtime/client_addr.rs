//! `trusted_proxies`: which address is the request's client. From a trusted peer it is taken
//! from `X-Forwarded-For` (the right-most hop that is not itself trusted) or, without that
//! header, from `Forwarded` (RFC 7239); from any other peer it is the peer, and the
//! forwarding headers it sent are removed so that nothing downstream believes them.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName};

use crate::config::Diagnostics;
use crate::config::spec::TrustedProxiesSpec;
use crate::plugins::ip_restriction::Cidr;

/// `forwarded` (RFC 7239).
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// `x-forwarded-for`.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-real-ip`.
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// A listener's trusted proxies, compiled.
#[derive(Debug, Default)]
pub(crate) struct TrustedProxies {
    blocks: Vec<Cidr>,
}

/// Where the client address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The peer is not trusted: its headers are ignored (and removed).
    UntrustedPeer,
    /// The peer is trusted but sent no usable `X-Forwarded-For` or `Forwarded` entry.
    TrustedPeer,
    /// The right-most untrusted `X-Forwarded-For` hop.
    XForwardedFor,
    /// Every `X-Forwarded-For` hop is trusted: the left-most one.
    XForwardedForLeftmost,
    /// The right-most untrusted `Forwarded: for=` node.
    Forwarded,
    /// Every `Forwarded: for=` node is trusted: the left-most one.
    ForwardedLeftmost,
}

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The client address (port 0 when the header gave none).
    pub(crate) client: SocketAddr,
    /// Where it came from.
    pub(crate) source: Source,
    /// Trusted hops passed over on the way to it.
    pub(crate) skipped: usize,
    /// Entries that were no address (`unknown`, obfuscated or malformed) and were skipped.
    pub(crate) unusable: usize,
}

impl TrustedProxies {
    /// These blocks.
    pub(crate) fn new(blocks: Vec<Cidr>) -> Self {
        TrustedProxies { blocks }
    }

    /// Whether `ip` is one of the trusted proxies.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        self.blocks.iter().any(|c| c.contains(ip))
    }

    /// Decides the client address of a request from `peer` with these headers.
    pub(crate) fn decide(&self, peer: SocketAddr, headers: &HeaderMap) -> Decision {
        let mut decision = Decision {
            client: peer,
            source: Source::UntrustedPeer,
            skipped: 0,
            unusable: 0,
        };
        if !self.trusts(peer.ip()) {
            return decision;
        }
        decision.source = Source::TrustedPeer;
        // X-Forwarded-For, walked from the right without collecting it.
        let xff = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .rev()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.rsplit(','))
            .filter(|entry| !entry.trim().is_empty())
            .map(|entry| parse_node(entry.trim()));
        if self.walk(xff, &mut decision, Source::XForwardedFor) {
            return decision;
        }
        if headers.contains_key(&FORWARDED) {
            let mut nodes = Vec::new();
            for value in headers.get_all(&FORWARDED) {
                match value.to_str() {
                    Ok(text) => forwarded_for(text, &mut nodes),
                    Err(_) => nodes.push(None),
                }
            }
            self.walk(nodes.into_iter().rev(), &mut decision, Source::Forwarded);
        }
        decision
    }

    /// Takes the first untrusted address from the right; returns whether any address was
    /// found at all.
    fn walk(
        &self,
        nodes: impl Iterator<Item = Option<SocketAddr>>,
        decision: &mut Decision,
        source: Source,
    ) -> bool {
        let mut leftmost = None;
        let mut skipped = 0;
        for node in nodes {
            let Some(addr) = node else {
                decision.unusable += 1;
                continue;
            };
            if !self.trusts(addr.ip()) {
                decision.client = addr;
                decision.source = source;
                decision.skipped = skipped;
                return true;
            }
            skipped += 1;
            leftmost = Some(addr);
        }
        match leftmost {
            Some(addr) => {
                decision.client = addr;
                decision.source = match source {
                    Source::Forwarded => Source::ForwardedLeftmost,
                    _ => Source::XForwardedForLeftmost,
                };
                decision.skipped = skipped.saturating_sub(1);
                true
            }
            None => false,
        }
    }

    /// The client address of a request; from an untrusted peer, its `X-Forwarded-For`,
    /// `Forwarded` and `X-Real-IP` are removed first (portico sets `X-Forwarded-For` anew).
    pub(crate) fn apply(&self, peer: SocketAddr, headers: &mut HeaderMap) -> SocketAddr {
        let decision = self.decide(peer, headers);
        if decision.source == Source::UntrustedPeer {
            scrub(headers);
        }
        decision.client
    }
}

/// Removes the forwarding headers a client may have forged.
pub(crate) fn scrub(headers: &mut HeaderMap) {
    headers.remove(&X_FORWARDED_FOR);
    headers.remove(&FORWARDED);
    headers.remove(&X_REAL_IP);
}

impl Decision {
    /// The decision as `explain` prints it.
    pub(crate) fn describe(&self, peer: IpAddr) -> String {
        let client = shown(self.client);
        let mut text = match self.source {
            Source::UntrustedPeer => format!(
                "{client} (the peer: it is not in trusted_proxies, so its X-Forwarded-For, \
                 Forwarded and X-Real-IP are ignored and removed)"
            ),
            Source::TrustedPeer => format!(
                "{client} (the peer: it is a trusted proxy but sent no usable X-Forwarded-For \
                 or Forwarded address)"
            ),
            Source::XForwardedFor => format!(
                "{client} (from X-Forwarded-For: the right-most hop not in trusted_proxies; the \
                 peer {peer} is a trusted proxy)"
            ),
            Source::XForwardedForLeftmost => format!(
                "{client} (from X-Forwarded-For: every hop is a trusted proxy, so the left-most; \
                 the peer {peer} is a trusted proxy)"
            ),
            Source::Forwarded => format!(
                "{client} (from Forwarded: the right-most for= not in trusted_proxies; the peer \
                 {peer} is a trusted proxy)"
            ),
            Source::ForwardedLeftmost => format!(
                "{client} (from Forwarded: every for= is a trusted proxy, so the left-most; the \
                 peer {peer} is a trusted proxy)"
            ),
        };
        if self.skipped > 0 {
            text.push_str(&format!("; {} trusted hop(s) passed over", self.skipped));
        }
        if self.unusable > 0 {
            text.push_str(&format!(
                "; {} entr{} that are no address skipped",
                self.unusable,
                if self.unusable == 1 { "y" } else { "ies" }
            ));
        }
        text
    }
}

/// An address as the access log shows a client: without a port when none is known.
pub(crate) fn shown(addr: SocketAddr) -> String {
    if addr.port() == 0 {
        addr.ip().to_canonical().to_string()
    } else {
        addr.to_string()
    }
}

/// One node: `IP`, `IP:PORT`, `[IPv6]` or `[IPv6]:PORT`; a port that is no number (an
/// obfuscated one, RFC 7239 §6.3) is dropped. `None` for anything else.
fn parse_node(text: &str) -> Option<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 0));
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: IpAddr = ip.parse().ok()?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().unwrap_or(0),
            None if after.is_empty() => 0,
            None => return None,
        };
        return Some(SocketAddr::new(ip, port));
    }
    let (ip, port) = text.rsplit_once(':')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    Some(SocketAddr::new(IpAddr::V4(ip), port.parse().unwrap_or(0)))
}

/// The `for=` nodes of one `Forwarded` value, left to right (RFC 7239 §4): `None` for an
/// element whose `for` is `unknown`, obfuscated (`_hidden`) or malformed; elements without
/// `for` add nothing.
fn forwarded_for(text: &str, out: &mut Vec<Option<SocketAddr>>) {
    for element in split_outside_quotes(text, ',') {
        for pair in split_outside_quotes(element, ';') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            if !key.trim().eq_ignore_ascii_case("for") {
                continue;
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            out.push(parse_node(value));
            break;
        }
    }
}

/// Splits on `sep` where it is not inside a quoted string.
fn split_outside_quotes(text: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    let mut cuts = Vec::new();
    for (at, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                cuts.push(&text[start..at]);
                start = at + c.len_utf8();
            }
            _ => {}
        }
    }
    cuts.push(&text[start..]);
    cuts.into_iter().filter(|part| !part.trim().is_empty())
}

/// Compiles the top-level list (`top`) or a listener's own (`own`, which replaces it); every
/// block that does not parse is reported at its position.
pub(crate) fn compile(
    spec: Option<&TrustedProxiesSpec>,
    diags: &mut Diagnostics,
) -> Option<std::sync::Arc<TrustedProxies>> {
    let spec = spec?;
    let mut blocks = Vec::with_capacity(spec.0.len());
    for block in &spec.0 {
        match Cidr::parse(block) {
            Ok(cidr) => blocks.push(cidr),
            Err(err) => diags.error(block.pos, format!("trusted_proxies: {err}")),
        }
    }
    Some(std::sync::Arc::new(TrustedProxies { blocks }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(blocks: &[&str]) -> TrustedProxies {
        TrustedProxies {
            blocks: blocks.iter().map(|b| Cidr::parse(b).unwrap()).collect(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn peer(text: &str) -> SocketAddr {
        SocketAddr::new(text.parse().unwrap(), 40000)
    }

    #[test]
    fn right_most_untrusted_hop() {
        let t = trusted(&["127.0.0.1/32", "10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.9, 203.0.113.7"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
        ]);
        let d = t.decide(peer("127.0.0.1"), &h);
        assert_eq!(shown(d.client), "203.0.113.7");
        assert_eq!(d.source, Source::XForwardedFor);
        assert_eq!(d.skipped, 2);
        // From an untrusted peer the header means nothing.
        let d = t.decide(peer("198.51.100.1"), &h);
        assert_eq!(d.client, peer("198.51.100.1"));
        assert_eq!(d.source, Source::UntrustedPeer);
    }

    #[test]
    fn all_trusted_takes_the_left_most() {
        let t = trusted(&["10.0.0.0/8", "127.0.0.1"]);
        let h = headers(&[("x-forwarded-for", "10.1.1.1, garbage, 10.0.0.3")]);
        let d = t.decide(peer("127.0.0.1"), &h);
        assert_eq!(shown(d.client), "10.1.1.1");
        assert_eq!(d.source, Source::XForwardedForLeftmost);
        assert_eq!(d.unusable, 1);
    }

    #[test]
    fn garbage_only_falls_back() {
        let t = trusted(&["127.0.0.1"]);
        let h = headers(&[("x-forwarded-for", "nonsense, , 999.1.1.1, [::1")]);
        let d = t.decide(peer("127.0.0.1"), &h);
        assert_eq!(d.client, peer("127.0.0.1"));
        assert_eq!(d.source, Source::TrustedPeer);
        let h = headers(&[
            ("x-forwarded-for", "junk"),
            ("forwarded", "for=192.0.2.60;proto=http"),
        ]);
        assert_eq!(shown(t.decide(peer("127.0.0.1"), &h).client), "192.0.2.60");
    }

    #[test]
    fn ports_and_brackets_in_x_forwarded_for() {
        let t = trusted(&["127.0.0.1"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.7:5555")]);
        assert_eq!(
            shown(t.decide(peer("127.0.0.1"), &h).client),
            "203.0.113.7:5555"
        );
        let h = headers(&[("x-forwarded-for", "[2001:db8::5]")]);
        assert_eq!(shown(t.decide(peer("127.0.0.1"), &h).client), "2001:db8::5");
    }

    #[test]
    fn forwarded_rfc7239() {
        let t = trusted(&["127.0.0.1", "10.0.0.0/8"]);
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.43, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=unknown, \
             For=_hidden, for=10.0.0.7;by=\"a,b\"",
        )]);
        let d = t.decide(peer("127.0.0.1"), &h);
        assert_eq!(shown(d.client), "[2001:db8:cafe::17]:4711");
        assert_eq!(d.source, Source::Forwarded);
        assert_eq!(d.unusable, 2);
        assert_eq!(d.skipped, 1);
        // X-Forwarded-For wins when both are sent.
        let mut h = h;
        h.insert("x-forwarded-for", "198.51.100.3".parse().unwrap());
        assert_eq!(
            shown(t.decide(peer("127.0.0.1"), &h).client),
            "198.51.100.3"
        );
    }

    #[test]
    fn untrusted_peers_lose_their_headers() {
        let t = trusted(&["10.0.0.0/8"]);
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-other", "kept"),
        ]);
        assert_eq!(t.apply(peer("192.0.2.1"), &mut h), peer("192.0.2.1"));
        assert_eq!(h.len(), 1);
        let mut h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "5.6.7.8")]);
        assert_eq!(shown(t.apply(peer("10.0.0.1"), &mut h)), "1.2.3.4");
        assert_eq!(h.len(), 2);
    }

    proptest::proptest! {
        /// Any bytes in the headers: a decision, never a panic, and from an untrusted peer
        /// always the peer.
        #[test]
        fn never_panics(xff in ".{0,80}", fwd in ".{0,80}") {
            let t = trusted(&["127.0.0.1", "10.0.0.0/8"]);
            let mut h = HeaderMap::new();
            if let Ok(v) = xff.parse() { h.insert("x-forwarded-for", v); }
            if let Ok(v) = fwd.parse() { h.insert("forwarded", v); }
            let _ = t.decide(peer("127.0.0.1"), &h);
            proptest::prop_assert_eq!(t.decide(peer("192.0.2.1"), &h).client, peer("192.0.2.1"));
        }
    }
}
