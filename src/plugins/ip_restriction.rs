//! `ip_restriction`: allow and deny address blocks, believing `X-Forwarded-For` only from
//! trusted proxies.

use std::net::IpAddr;

use http::{StatusCode, request};

use super::{BuildError, Flow, Phase, Plugin};
use crate::config::At;
use crate::config::spec::IpRestrictionSpec;
use crate::ctx::RequestCtx;
use crate::error::{ProxyError, error_response};

/// An address block, like `10.0.0.0/8` or `::1/128` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub(crate) fn parse(text: &str) -> Result<Self, BuildError> {
        let bad = || BuildError::AddressBlock {
            block: text.to_owned(),
        };
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { net, prefix })
    }

    /// Whether `ip` lies in the block (IPv4-mapped IPv6 counts as IPv4).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn parse_all(list: &[At<String>]) -> Result<Vec<Cidr>, BuildError> {
    list.iter().map(|c| Cidr::parse(c)).collect()
}

/// The client address: the peer, or — when the peer is a trusted proxy — the rightmost
/// `X-Forwarded-For` entry that is not one.
pub(crate) fn client_ip(peer: IpAddr, headers: &http::HeaderMap, trusted: &[Cidr]) -> IpAddr {
    if !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    let mut client = peer;
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|h| h.trim().parse().ok())
        .collect();
    for hop in hops.into_iter().rev() {
        client = hop;
        if !trusted.iter().any(|c| c.contains(hop)) {
            break;
        }
    }
    client
}

/// `ip_restriction`.
#[derive(Debug)]
pub(crate) struct IpRestriction {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    trusted: Vec<Cidr>,
}

impl IpRestriction {
    /// Parses the blocks.
    pub(crate) fn new(spec: &IpRestrictionSpec) -> Result<Self, BuildError> {
        Ok(IpRestriction {
            allow: parse_all(&spec.allow)?,
            deny: parse_all(&spec.deny)?,
            trusted: parse_all(&spec.trusted_proxies)?,
        })
    }
}

impl Plugin for IpRestriction {
    fn name(&self) -> &'static str {
        "ip_restriction"
    }

    fn explain(
        &self,
        ctx: &mut RequestCtx,
        head: &request::Parts,
        _secrets: &crate::config::secret::Credentials,
    ) -> super::Explained {
        let peer = ctx.client.ip();
        let ip = client_ip(peer, &head.headers, &self.trusted);
        let note = if ip == peer {
            format!("client {ip} (the request's client address)")
        } else {
            format!("client {ip} (from X-Forwarded-For: the peer {peer} is a trusted proxy)")
        };
        super::Explained::Run(vec![note])
    }

    fn stops(&self) -> Option<&'static str> {
        Some("403 for refused addresses")
    }

    fn phase(&self) -> Phase {
        Phase::Access
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        let ip = client_ip(ctx.client.ip(), &head.headers, &self.trusted);
        let denied = self.deny.iter().any(|c| c.contains(ip))
            || (!self.allow.is_empty() && !self.allow.iter().any(|c| c.contains(ip)));
        if denied {
            return Ok(Flow::Respond(error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the client address may not use this route",
                &ctx.request_id,
            )));
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn forwarded_client_behind_trusted_proxies() {
        let trusted = vec![
            Cidr::parse("127.0.0.0/8").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
        ];
        let mut headers = http::HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.2".parse().unwrap());
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &headers, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // A client that is not a trusted proxy cannot claim another address.
        let outsider: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(outsider, &headers, &trusted), outsider);
    }
}
