//! `protocol: udp` listeners: the upstream their flows go to and their session settings,
//! with every key that cannot apply to datagrams reported at its position.

use crate::config::Diagnostics;
use crate::config::spec::{
    ListenerProtocol, ListenerSpec, UdpSpec, UpstreamProtocol, UpstreamSpec,
};
use crate::runtime::UdpListener;

use super::checks::Upstreams;

/// The UDP side of a listener: `Some` for a `protocol: udp` listener that compiled, and an
/// error for `udp:` on any other.
pub(super) fn compile_udp(
    spec: &ListenerSpec,
    upstream_specs: &[(crate::config::At<String>, UpstreamSpec)],
    upstreams: &Upstreams<'_>,
    diags: &mut Diagnostics,
) -> Option<UdpListener> {
    if spec.protocol != ListenerProtocol::Udp {
        if spec.udp.is_some() {
            diags.error(spec.name.pos, "`udp` applies to `protocol: udp` listeners");
        }
        return None;
    }
    if let Some(r) = &spec.redirect_https {
        diags.error(
            r.status.pos,
            "redirect_https applies to `protocol: http` listeners",
        );
    }
    if !spec.sni.is_empty() {
        diags.error(
            spec.name.pos,
            "`sni` applies to `protocol: tls_passthrough` listeners; a udp listener has one `upstream`",
        );
    }
    let Some(name) = &spec.upstream else {
        diags.error(
            spec.name.pos,
            "a udp listener needs an `upstream` to send its datagrams to",
        );
        return None;
    };
    let upstream = upstreams.find(name, diags)?;
    if let Some((_, u)) = upstream_specs
        .iter()
        .find(|(n, _)| n.as_str() == name.as_str())
    {
        let unusable = [
            match u.protocol {
                UpstreamProtocol::Http1 => None,
                UpstreamProtocol::Http2 => Some("`protocol: http2`"),
                UpstreamProtocol::Grpc => Some("`protocol: grpc`"),
            },
            u.tls.is_some().then_some("`tls` (DTLS is not spoken)"),
            u.sticky.is_some().then_some("`sticky` (a cookie)"),
            u.circuit_breaker
                .is_some()
                .then_some("`circuit_breaker` (use `udp.max_sessions`)"),
            u.hash_key
                .as_ref()
                .filter(|k| k.as_str() != "client_ip")
                .map(|_| "a `hash_key` other than `client_ip`"),
        ];
        for what in unusable.into_iter().flatten() {
            diags.error(
                name.pos,
                format!(
                    "upstream `{}` sets {what}, which a udp listener cannot use",
                    **name
                ),
            );
        }
    }
    let udp = spec.udp.clone().unwrap_or_default();
    if *udp.max_sessions == 0 {
        diags.error(udp.max_sessions.pos, "udp.max_sessions must be at least 1");
    }
    if let Some(responses) = udp.responses.as_ref().filter(|r| ***r == 0) {
        diags.error(responses.pos, "udp.responses must be at least 1");
    }
    Some(settings(upstream, &udp))
}

fn settings(upstream: std::sync::Arc<crate::runtime::Upstream>, udp: &UdpSpec) -> UdpListener {
    UdpListener {
        upstream,
        // A zero timeout would end each session before its answer; a millisecond is the
        // shortest that means anything.
        session_timeout: udp
            .session_timeout
            .0
            .max(std::time::Duration::from_millis(1)),
        max_sessions: (*udp.max_sessions).max(1),
        responses: udp.responses.as_ref().map(|r| (**r).max(1)),
    }
}

#[cfg(test)]
mod tests {
    use crate::runtime::compile::compile_str;

    #[test]
    fn a_udp_listener_compiles_with_its_defaults() {
        let snap = compile_str(
            "\
listeners:
  - { name: dns, bind: 127.0.0.1:0, protocol: udp, upstream: dns }
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: all, upstream: web }
upstreams:
  dns: { balance: ip_hash, targets: [ { address: 127.0.0.1:53 } ] }
  web: { targets: [ { address: 127.0.0.1:80 } ] }
",
        )
        .unwrap();
        let dns = snap.listener("dns").unwrap();
        let udp = dns.udp.as_ref().unwrap();
        assert_eq!(&*udp.upstream.name, "dns");
        assert_eq!(udp.session_timeout, std::time::Duration::from_secs(60));
        assert_eq!(udp.max_sessions, 10_000);
        assert_eq!(udp.responses, None);
        assert!(dns.routes.is_empty(), "routes without `listeners` skip it");
        assert!(snap.listener("web").unwrap().udp.is_none());
        assert_eq!(snap.listener("web").unwrap().routes.len(), 1);
    }

    #[test]
    fn udp_and_tcp_listeners_may_share_an_address() {
        let snap = compile_str(
            "\
listeners:
  - { name: dns, bind: 127.0.0.1:5353, protocol: udp, upstream: dns }
  - { name: dns-tcp, bind: 127.0.0.1:5353, protocol: tls_passthrough, upstream: dns }
upstreams:
  dns: { targets: [ { address: 127.0.0.1:53 } ] }
",
        );
        assert!(snap.is_ok(), "{snap:?}");
        let errors = compile_str(
            "\
listeners:
  - { name: a, bind: 127.0.0.1:5353, protocol: udp, upstream: dns }
  - { name: b, bind: 0.0.0.0:5353, protocol: udp, upstream: dns }
upstreams:
  dns: { targets: [ { address: 127.0.0.1:53 } ] }
",
        )
        .unwrap_err();
        assert_eq!(
            errors,
            ["c.yaml:3:22: two listeners bind 0.0.0.0:5353 (the other at line 2)"]
        );
    }

    #[test]
    fn what_a_udp_listener_cannot_use_is_reported_where_it_is_written() {
        let errors = compile_str(
            "\
listeners:
  - { name: none, bind: 127.0.0.1:0, protocol: udp }
  - { name: typo, bind: 127.0.0.1:0, protocol: udp, upstream: dsn }
  - name: secure
    bind: 127.0.0.1:0
    protocol: udp
    upstream: grpc
    tls: { certificates: [ { cert_file: a.pem, key_file: a.key } ] }
  - { name: bad, bind: 127.0.0.1:0, protocol: udp, upstream: web, udp: { max_sessions: 0, responses: 0 } }
  - { name: web, bind: 127.0.0.1:0, udp: { session_timeout: 1s } }
routes:
  - { name: r, listeners: [web, bad], upstream: web }
upstreams:
  dns: { targets: [ { address: 127.0.0.1:53 } ] }
  grpc: { protocol: grpc, targets: [ { address: 127.0.0.1:50051 } ] }
  web:
    targets: [ { address: 127.0.0.1:80 } ]
    tls: {}
    sticky: { cookie: s }
    balance: ring_hash
    hash_key: path
",
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "c.yaml:2:13: a udp listener needs an `upstream` to send its datagrams to",
                "c.yaml:3:63: upstream `dsn` is not defined: did you mean `dns`?",
                "c.yaml:4:11: `tls` applies to `protocol: https` and `protocol: tls` listeners",
                "c.yaml:7:15: upstream `grpc` sets `protocol: grpc`, which a udp listener cannot use",
                "c.yaml:9:62: upstream `web` sets `tls` (DTLS is not spoken), which a udp listener cannot use",
                "c.yaml:9:62: upstream `web` sets `sticky` (a cookie), which a udp listener cannot use",
                "c.yaml:9:62: upstream `web` sets a `hash_key` other than `client_ip`, which a udp listener cannot use",
                "c.yaml:9:88: udp.max_sessions must be at least 1",
                "c.yaml:9:102: udp.responses must be at least 1",
                "c.yaml:10:13: `udp` applies to `protocol: udp` listeners",
                "c.yaml:12:33: route `r` names listener `bad`, a udp listener, which relays datagrams and serves no routes",
                "c.yaml:14:3: warning: upstream `dns` is not used by any route or listener",
            ],
            "{errors:#?}"
        );
    }
}
