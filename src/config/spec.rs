//! The config file's shape, and nothing else: every type here mirrors what users write.
//!
//! Values that later checks may need to point at are wrapped in [`At`], which keeps their line
//! and column. Defaults live here, next to the field they belong to.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::de::At;
use super::units::{Dur, Size};

/// The whole config file.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(default, deny_unknown_fields)]
pub(crate) struct Spec {
    /// Worker threads: `auto` is one per CPU the process may use. Read at start only.
    pub(crate) workers: Workers,
    /// Pins worker `i` to the `i`-th CPU the process may use (round the list when there are
    /// more workers than CPUs). Read at start only.
    pub(crate) pin_workers: bool,
    /// How long SIGTERM (or a removed listener) waits for in-flight requests.
    pub(crate) drain_timeout: Dur,
    /// The admin API and `/metrics`; off when absent.
    pub(crate) admin: Option<AdminSpec>,
    /// The access log: one JSON line per request. Read at start only.
    pub(crate) access_log: AccessLogSpec,
    /// Zero-downtime binary upgrade: the Unix socket a new portico process takes the
    /// listening sockets from (`portico run --upgrade-from PATH`); off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) upgrade: Option<UpgradeSpec>,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` name the client (off when absent: the
    /// client is the peer and `X-Forwarded-For` is appended to as it came).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) trusted_proxies: Option<TrustedProxiesSpec>,
    /// The debug header: a summary of the decision on answers to requests that carry the
    /// token (off when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) debug: Option<DebugSpec>,
    /// Distributed tracing: W3C trace context and spans exported over OTLP/HTTP (off when
    /// absent). Read at start only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tracing: Option<TracingSpec>,
    /// Scale-out: what several portico nodes share (off when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cluster: Option<ClusterSpec>,
    /// Where portico accepts traffic.
    pub(crate) listeners: Vec<ListenerSpec>,
    /// How requests are matched and what is done with them.
    pub(crate) routes: Vec<RouteSpec>,
    /// Upstreams by name: each a group of targets that routes forward to.
    #[schemars(with = "BTreeMap<String, UpstreamSpec>", extend("default" = {}))]
    pub(crate) upstreams: Vec<(At<String>, UpstreamSpec)>,
    /// Global plugins: they run on every route, before the route's own, and alone on a
    /// request that matches no route.
    pub(crate) plugins: Vec<At<PluginSpec>>,
    /// Who calls the APIs: the identities authentication plugins map requests to.
    pub(crate) consumers: Vec<ConsumerSpec>,
    /// What did not parse (empty for a valid file); never part of the config itself.
    #[serde(skip)]
    pub(crate) unparsed: super::Unparsed,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            workers: Workers::Auto,
            pin_workers: false,
            drain_timeout: Dur(std::time::Duration::from_secs(30)),
            admin: None,
            access_log: AccessLogSpec::default(),
            upgrade: None,
            trusted_proxies: None,
            debug: None,
            tracing: None,
            cluster: None,
            listeners: Vec::new(),
            routes: Vec::new(),
            upstreams: Vec::new(),
            plugins: Vec::new(),
            consumers: Vec::new(),
            unparsed: super::Unparsed::default(),
        }
    }
}

/// `workers: auto` or a number of threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Workers {
    /// One per CPU the process may use.
    #[default]
    Auto,
    /// Exactly this many.
    Count(usize),
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(usize),
            Word(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected `auto` or a number of worker threads")
        })? {
            Raw::Count(0) => Err(serde::de::Error::custom("workers must be at least 1")),
            Raw::Count(n) => Ok(Workers::Count(n)),
            Raw::Word(w) if w == "auto" => Ok(Workers::Auto),
            Raw::Word(_) => Err(serde::de::Error::custom(
                "expected `auto` or a number of worker threads",
            )),
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

/// `admin:` — the admin API and `/metrics`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminSpec {
    /// `IP:PORT` to listen on, like `127.0.0.1:9901`. Read at start only.
    pub(crate) listen: At<String>,
    /// Bearer token every admin request must carry (`Authorization: Bearer TOKEN`), but the
    /// dashboard page's own files, which hold no data; required when `listen` is not a
    /// loopback address. Use `${ENV}`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redact"
    )]
    pub(crate) token: Option<String>,
    /// What the admin API does with writes (`PUT /config`, `PUT` and `DELETE` of routes,
    /// upstreams and consumers): `apply` puts them in force (the running config is then
    /// reported as diverging from the file until the next SIGHUP reads the file again);
    /// `refuse` answers every write with 403.
    #[serde(default)]
    pub(crate) writes: AdminWrites,
}

/// `admin.writes`: whether admin API writes apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AdminWrites {
    /// Writes are validated, compiled and put in force.
    #[default]
    Apply,
    /// Every write is answered 403.
    Refuse,
}

fn redact<S: serde::Serializer>(_: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

/// `upgrade:` — handing the listening sockets to a new portico process.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpgradeSpec {
    /// Path of the Unix socket (mode 0600) a new process connects to with
    /// `portico run --upgrade-from PATH`; relative to the config file's folder. Read at
    /// start only.
    pub(crate) socket: At<String>,
}

/// `debug:` — requests carrying the token get a response header that summarises the route
/// decision, the plugins in force, the target, the tries and the timings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DebugSpec {
    /// The request header that carries the token, and the response header the summary is
    /// written in. Never forwarded upstream.
    #[serde(default = "debug_header")]
    pub(crate) header: String,
    /// The token, 16 characters or more; use `${ENV}`.
    #[serde(serialize_with = "redact_at")]
    #[schemars(with = "String")]
    pub(crate) token: At<String>,
}

fn debug_header() -> String {
    "x-portico-debug".to_owned()
}

fn redact_at<S: serde::Serializer>(_: &At<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

/// `tracing:` — W3C trace context continued or created, and the spans of sampled requests
/// exported over OTLP/HTTP.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TracingSpec {
    /// The OTLP/HTTP traces endpoint (protobuf), like `http://127.0.0.1:4318/v1/traces`.
    pub(crate) endpoint: At<String>,
    /// Share of new traces sampled, from 0 to 1; a request that carries a `traceparent`
    /// follows its sampled flag.
    #[serde(default = "all")]
    pub(crate) sample_ratio: f64,
    /// The `service.name` the spans are exported under.
    #[serde(default = "portico")]
    pub(crate) service_name: String,
    /// Most time one export may take.
    #[serde(default = "two_seconds")]
    pub(crate) timeout: Dur,
}

fn all() -> f64 {
    1.0
}

fn portico() -> String {
    "portico".to_owned()
}

fn two_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}

/// `cluster:` — what several portico nodes share.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterSpec {
    /// The etcd the nodes keep their shared config in (off when absent: the file is the
    /// whole config). Read at start only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) etcd: Option<EtcdSpec>,
    /// The Redis that `rate_limit` with `scope: cluster` counts in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) redis: Option<RedisSpec>,
    /// This node's name in the cluster's node list (default: the host name, then `:` and
    /// the admin port, or the process id without an admin API). Read at start only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) node_id: Option<At<String>>,
}

/// `cluster.etcd:` — an etcd (3.4 or later, v3 API) that holds the config every node runs.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EtcdSpec {
    /// Client URLs of the etcd members, `http://HOST:PORT`; calls fail over between them.
    pub(crate) endpoints: Vec<At<String>>,
    /// Prefix of every key portico reads and writes: the shared config is at
    /// `PREFIX` + `config`, the node list under `PREFIX` + `nodes/`.
    #[serde(default = "etcd_prefix")]
    pub(crate) prefix: At<String>,
    /// Most time one etcd call may take (a watch's opening included).
    #[serde(default = "two_seconds")]
    pub(crate) timeout: Dur,
    /// Time to live of this node's entry in the node list: it disappears this long after the
    /// node stops renewing it (renewed every third of it).
    #[serde(default = "ten_seconds")]
    pub(crate) lease_ttl: Dur,
    /// A file where the node keeps a copy of the last shared config it applied (relative
    /// to the config file's folder), so that it starts on it when etcd cannot be reached at
    /// start; none: it then starts on its file's own sections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cache: Option<At<String>>,
    /// Key that seals what ACME keeps in etcd (certificates, their keys, the account):
    /// 32 bytes in base64 (`openssl rand -base64 32`), the same on every node; use `${ENV}`.
    /// Required when a listener uses `tls.acme`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redact_opt_at"
    )]
    #[schemars(with = "Option<String>")]
    pub(crate) secret_key: Option<At<String>>,
}

fn redact_opt_at<S: serde::Serializer>(_: &Option<At<String>>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

fn etcd_prefix() -> At<String> {
    At {
        pos: super::node::Pos::default(),
        value: "/portico/".to_owned(),
    }
}

fn ten_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}

/// `cluster.redis:` — a Redis (5 or later) shared by the nodes.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedisSpec {
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]`; use `${ENV}` for a password.
    #[serde(serialize_with = "redact_at")]
    #[schemars(with = "String")]
    pub(crate) url: At<String>,
    /// Most time one decision may take in Redis; past it, `fallback` decides.
    #[serde(default = "redis_timeout")]
    pub(crate) timeout: Dur,
    /// What decides while Redis cannot: `local` (this node's own limiter, with the same
    /// limit), `open` (let requests pass) or `closed` (refuse them with 503).
    #[serde(default)]
    pub(crate) fallback: RedisFallback,
    /// Prefix of every key portico writes.
    #[serde(default = "redis_prefix")]
    pub(crate) prefix: String,
}

/// `cluster.redis.fallback`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RedisFallback {
    /// This node's own limiter, with the same limit.
    #[default]
    Local,
    /// Requests pass.
    Open,
    /// Requests are refused with 503.
    Closed,
}

fn redis_timeout() -> Dur {
    Dur(std::time::Duration::from_millis(100))
}

fn redis_prefix() -> String {
    "portico:".to_owned()
}

/// `access_log:` — one JSON line per request.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessLogSpec {
    /// Whether requests are logged at all.
    #[serde(default = "yes")]
    pub(crate) enabled: bool,
    /// `-` (standard output) or a file path to append to.
    #[serde(default = "dash")]
    pub(crate) path: String,
}

impl Default for AccessLogSpec {
    fn default() -> Self {
        AccessLogSpec {
            enabled: true,
            path: dash(),
        }
    }
}

fn yes() -> bool {
    true
}

fn dash() -> String {
    "-".to_owned()
}

/// One entry of `listeners:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerSpec {
    /// Unique name, used by routes (`listeners:`) and metrics.
    pub(crate) name: At<String>,
    /// `IP:PORT` to bind, like `0.0.0.0:8080`; two listeners may not share an address.
    pub(crate) bind: At<String>,
    /// What is spoken on the socket.
    #[serde(default)]
    pub(crate) protocol: ListenerProtocol,
    /// Per-connection and per-request limits.
    #[serde(default)]
    pub(crate) limits: LimitsSpec,
    /// `http` and `https`: load shedding — a limit on requests in flight, fixed or adaptive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) overload: Option<OverloadSpec>,
    /// Certificates and client authentication (`protocol: https` and `tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls: Option<ListenerTlsSpec>,
    /// Answer every request with a redirect to https (`protocol: http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) redirect_https: Option<RedirectHttpsSpec>,
    /// `Strict-Transport-Security` on every response (`protocol: https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) hsts: Option<HstsSpec>,
    /// `tls_passthrough` only: a mapping of server name (exact or `*.suffix`) to upstream name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) sni: BTreeMap<String, At<String>>,
    /// `tcp`, `tls` and `udp`: the upstream every connection (or flow) goes to (required).
    /// `tls_passthrough`: the upstream for connections no `sni` entry matches; without it
    /// they are closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) upstream: Option<At<String>>,
    /// Read a PROXY protocol v1/v2 header from these trusted sources before anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) proxy_protocol: Option<ProxyProtocolAcceptSpec>,
    /// `http` and `https`: this listener's trusted proxies, replacing the top-level
    /// `trusted_proxies` (`[]` trusts no one here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) trusted_proxies: Option<TrustedProxiesSpec>,
    /// `udp` only: sessions (one per client address and port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) udp: Option<UdpSpec>,
}

/// `tls:` of a listener.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerTlsSpec {
    /// Certificates, chosen by SNI; the first one answers clients without (or with an unknown) SNI.
    #[serde(default = "no_certificates")]
    pub(crate) certificates: At<Vec<CertificateSpec>>,
    /// Certificates obtained and renewed automatically from an ACME CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) acme: Option<AcmeSpec>,
    /// Client certificates (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) client_auth: Option<ClientAuthSpec>,
}

fn no_certificates() -> At<Vec<CertificateSpec>> {
    At {
        pos: Default::default(),
        value: Vec::new(),
    }
}

/// `tls.acme:` of a listener.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcmeSpec {
    /// The CA's directory URL (for Let's Encrypt, `https://acme-v02.api.letsencrypt.org/directory`).
    #[schemars(pattern(r"^https?://"))]
    pub(crate) directory: At<String>,
    /// Contact e-mail for the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) email: Option<String>,
    /// Names on the certificate; at least one.
    #[schemars(length(min = 1))]
    pub(crate) domains: At<Vec<String>>,
    /// How the CA checks that portico holds the names.
    #[serde(default)]
    pub(crate) challenge: AcmeChallengeSpec,
    /// Folder for the account key and certificates (relative to the config file); default
    /// `acme/<first domain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) storage: Option<String>,
    /// A CA to trust for the directory's own HTTPS, for private or test CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) directory_ca_file: Option<At<String>>,
    /// Renew when less than this is left of the certificate's validity.
    #[serde(default = "thirty_days")]
    pub(crate) renew_before: Dur,
    /// How often the certificate's remaining validity is checked.
    #[serde(default = "twelve_hours")]
    pub(crate) check_every: Dur,
}

/// `challenge:` of `tls.acme`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AcmeChallengeSpec {
    /// TLS-ALPN-01 (RFC 8737), answered by this listener.
    #[default]
    #[serde(rename = "tls_alpn_01")]
    TlsAlpn01,
    /// HTTP-01, answered by the http listeners (the CA asks on port 80).
    #[serde(rename = "http_01")]
    Http01,
}

fn five_minutes() -> Dur {
    Dur(std::time::Duration::from_secs(300))
}

fn thirty_days() -> Dur {
    Dur(std::time::Duration::from_secs(30 * 86_400))
}

fn twelve_hours() -> Dur {
    Dur(std::time::Duration::from_secs(12 * 3600))
}

/// A certificate chain and its key, PEM files (relative paths are from the config file).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertificateSpec {
    /// The chain, leaf first.
    pub(crate) cert_file: At<String>,
    /// The private key (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519).
    pub(crate) key_file: At<String>,
}

/// `client_auth:` of a listener.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientAuthSpec {
    /// CAs whose certificates are accepted.
    pub(crate) ca_file: At<String>,
    /// Refuse handshakes without a certificate (`true`) or let them through, without the
    /// `x-client-cert-*` headers (`false`).
    #[serde(default = "yes")]
    pub(crate) required: bool,
}

/// `redirect_https:` of an http listener.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedirectHttpsSpec {
    /// The https port written in the `Location` (left out when it is 443).
    #[serde(default = "https_port")]
    pub(crate) port: u16,
    /// Redirect status: 301, 302, 307 or 308 (308 and 307 keep the method).
    #[schemars(extend("enum" = [301, 302, 307, 308]))]
    #[serde(default = "permanent")]
    pub(crate) status: At<u16>,
}

fn https_port() -> u16 {
    443
}

fn permanent() -> At<u16> {
    At {
        pos: Default::default(),
        value: 308,
    }
}

/// `hsts:` of an https listener.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HstsSpec {
    /// `max-age`: how long browsers remember to use https only.
    #[serde(default = "year")]
    pub(crate) max_age: Dur,
    /// Add `includeSubDomains`.
    #[serde(default)]
    pub(crate) include_subdomains: bool,
    /// Add `preload`.
    #[serde(default)]
    pub(crate) preload: bool,
}

fn year() -> Dur {
    Dur(std::time::Duration::from_secs(365 * 86_400))
}

/// `protocol:` of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one port.
    #[default]
    Http,
    /// TLS (1.2 and 1.3) with ALPN h2 and http/1.1.
    Https,
    /// TLS left untouched: routed by the ClientHello's SNI to `sni` upstreams (layer 4).
    TlsPassthrough,
    /// Plain TCP, each connection relayed to a target of `upstream` (layer 4).
    Tcp,
    /// TLS terminated with `tls:` as for https, then the bytes relayed to a target of
    /// `upstream` over TCP (or TLS again when the upstream has `tls:`).
    Tls,
    /// UDP datagrams balanced by flow (client address and port) to `upstream` (layer 4).
    Udp,
}

impl ListenerProtocol {
    /// Whether the listener relays connections or datagrams (layer 4) rather than serving HTTP
    /// routes.
    pub(crate) fn is_l4(self) -> bool {
        matches!(
            self,
            ListenerProtocol::TlsPassthrough
                | ListenerProtocol::Tcp
                | ListenerProtocol::Tls
                | ListenerProtocol::Udp
        )
    }
}

/// `limits:` of a listener; the defaults are safe for a public port.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LimitsSpec {
    /// Most bytes of request head (request line and headers), at least `1KiB`; beyond it: 431.
    pub(crate) max_header_size: Size,
    /// Most bytes of request target (path and query); beyond it: 414.
    pub(crate) max_uri_length: Size,
    /// Time allowed to receive a whole request head (slowloris guard).
    pub(crate) header_timeout: Dur,
    /// A connection with no request in progress and no bytes moving for this long is closed
    /// (HTTP/2: after a GOAWAY).
    pub(crate) idle_timeout: Dur,
    /// Most open client connections on this listener; more wait in the backlog, accepted but
    /// unserved.
    pub(crate) max_connections: usize,
    /// Most concurrent HTTP/2 streams per client connection.
    pub(crate) max_concurrent_streams: u32,
    /// A client that accepts none of a response's bytes for this long is closed (a reader
    /// that stopped).
    pub(crate) send_timeout: Dur,
    /// Most bytes of a response held for a client that reads slowly: per HTTP/1.1
    /// connection, and per HTTP/2 stream; at least `16KiB`.
    pub(crate) send_buffer: Size,
    /// Most open connections from one client address (IPv6: one `ipv6_prefix`); more are
    /// closed at accept, before any TLS handshake.
    #[schemars(range(min = 1))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) connections_per_ip: Option<usize>,
    /// A request rate per client address (IPv6: per `ipv6_prefix`); beyond it: 429
    /// `rate_limited` with `Retry-After`, before routing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) requests_per_ip: Option<RequestsPerIpSpec>,
    /// IPv6 clients are counted by this prefix length (1–128), so that one host cannot dodge
    /// the per-address limits by rotating addresses; IPv4-mapped addresses count as IPv4.
    #[schemars(range(min = 1, max = 128))]
    pub(crate) ipv6_prefix: u8,
    /// Most client addresses tracked at once by each per-address limit (a memory bound);
    /// past it, new addresses are refused until some are forgotten.
    #[schemars(range(min = 1))]
    pub(crate) max_clients: usize,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        LimitsSpec {
            max_header_size: Size(64 << 10),
            max_uri_length: Size(8 << 10),
            header_timeout: Dur(std::time::Duration::from_secs(10)),
            idle_timeout: Dur(std::time::Duration::from_secs(60)),
            max_connections: 10_000,
            max_concurrent_streams: 256,
            send_timeout: Dur(std::time::Duration::from_secs(60)),
            send_buffer: Size(64 << 10),
            connections_per_ip: None,
            requests_per_ip: None,
            ipv6_prefix: 64,
            max_clients: 100_000,
        }
    }
}

/// One entry of `routes:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    { "required": ["upstream"] },
    { "required": ["split"] },
    { "required": ["respond"] },
    { "required": ["redirect"] },
    { "required": ["aggregate"] },
    { "required": ["static"] },
]))]
pub(crate) struct RouteSpec {
    /// Unique name, used by metrics, logs and `explain`.
    pub(crate) name: At<String>,
    /// Names of the listeners this route attaches to; every http and https listener when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) listeners: Option<Vec<At<String>>>,
    /// Conditions; a route without `match` matches every request.
    #[serde(default, rename = "match")]
    pub(crate) matches: MatchSpec,
    /// The route's plugins, run after the global ones within a phase; each replaces the
    /// global plugins of its name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) plugins: Vec<At<PluginSpec>>,
    /// Plugins for one consumer on this route only, by consumer name (a mapping: consumer
    /// name → plugin list); they take precedence over the consumer's own plugins, which take
    /// precedence over the route's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) consumer_plugins: BTreeMap<At<String>, Vec<At<PluginSpec>>>,
    /// Action: forward to the upstream of this name. A route has exactly one action:
    /// `upstream`, `split`, `respond`, `redirect`, `aggregate` or `static`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) upstream: Option<At<String>>,
    /// Action: forward to one of several upstreams, in smooth weighted order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) split: Option<At<Vec<SplitSpec>>>,
    /// Action: answer directly with a fixed response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) respond: Option<RespondSpec>,
    /// Action: answer with a redirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) redirect: Option<RedirectSpec>,
    /// Action: call several upstreams and answer their merged JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) aggregate: Option<super::aggregate::AggregateSpec>,
    /// Action: answer with files under a folder.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub(crate) static_files: Option<super::spec_static::StaticSpec>,
    /// How the path is rewritten before forwarding: exactly one of `strip_prefix`,
    /// `replace_prefix` and `regex` (with `replace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rewrite: Option<RewriteSpec>,
    /// What the upstream is told about `%2F`, a raw backslash and `;params`; by default they
    /// are decoded and stripped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) path_policy: Option<At<PathPolicySpec>>,
    /// Time allowed to the upstream's response head, across every try; then 504. None by
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<Dur>,
    /// How long a WebSocket (or other upgraded) tunnel or a streaming response body may go
    /// without a byte moving either way before it is closed. The listener's `idle_timeout`
    /// never cuts a response in progress or a tunnel; this does.
    #[serde(default = "five_minutes")]
    pub(crate) stream_idle_timeout: Dur,
    /// The longest a tunnel or a response body may last, however busy; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_stream_duration: Option<Dur>,
    /// Retries. Without it a route retries once on connection failures only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry: Option<RetrySpec>,
    /// Copies of a share of the requests, sent to another upstream and discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mirror: Option<MirrorSpec>,
    /// JSON clients to a gRPC upstream: requests are turned into gRPC calls by the
    /// `google.api.http` rules of a descriptor set, answers back into JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) grpc_transcode: Option<At<GrpcTranscodeSpec>>,
}

pub(crate) use super::spec_admission::{OverloadSpec, RequestsPerIpSpec};
pub(crate) use super::spec_proxy_protocol::{ProxyProtocolAcceptSpec, ProxyProtocolVersion};
pub(crate) use super::spec_transcode::{GrpcTranscodeSpec, StreamFormatSpec};
pub(crate) use super::spec_trusted::TrustedProxiesSpec;
pub(crate) use super::spec_udp::UdpSpec;

/// `path_policy:` of a route (docs/config.md, "Path normalisation").
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PathPolicySpec {
    /// What `%2F` and `%5C` are.
    #[serde(default)]
    pub(crate) encoded_slash: EncodedSlashSpec,
    /// What a raw backslash is.
    #[serde(default)]
    pub(crate) backslash: BackslashSpec,
    /// What becomes of `;params` in path segments.
    #[serde(default)]
    pub(crate) matrix_params: MatrixParamsSpec,
}

/// `path_policy.encoded_slash`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EncodedSlashSpec {
    /// a separator, matched and forwarded as `/`.
    #[default]
    Decode,
    /// data: forwarded escaped.
    Keep,
    /// the request gets 400.
    Reject,
}

/// `path_policy.backslash`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BackslashSpec {
    /// a separator, matched and forwarded as `/`.
    #[default]
    Decode,
    /// the request gets 400.
    Reject,
}

/// `path_policy.matrix_params`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MatrixParamsSpec {
    /// never matched, not forwarded.
    #[default]
    Strip,
    /// never matched, forwarded on their segment (not with `rewrite`).
    Keep,
    /// the request gets 400.
    Reject,
}

/// `mirror:` of a route.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MirrorSpec {
    /// The upstream the copies go to.
    pub(crate) upstream: At<String>,
    /// Share of requests copied, in percent (0 to 100).
    #[schemars(range(min = 0, max = 100))]
    #[serde(default = "hundred")]
    pub(crate) percent: At<f64>,
}

fn hundred() -> At<f64> {
    At {
        pos: Default::default(),
        value: 100.0,
    }
}

/// `retry:` of a route.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetrySpec {
    /// Most tries in all, the first included: at least 1; more than 10 count as 10.
    #[schemars(range(min = 1))]
    pub(crate) attempts: At<u32>,
    /// What is retried: `connect_failure`, `reset`, `timeout`, or response statuses.
    #[serde(default = "retry_on_default")]
    pub(crate) on: Vec<At<RetryOnSpec>>,
    /// Time allowed for each try (to the response head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) per_try_timeout: Option<Dur>,
    /// Base of the wait before retry n: a random time up to `min(max_backoff, backoff × 2^n)`.
    #[serde(default = "backoff_base")]
    pub(crate) backoff: Dur,
    /// Longest wait between tries.
    #[serde(default = "backoff_max")]
    pub(crate) max_backoff: Dur,
    /// Retries after a reset, a timeout or a listed status may add at most this percentage
    /// of the upstream's requests per second (but see `budget_min`).
    #[serde(default = "twenty")]
    pub(crate) budget_percent: u32,
    /// Retries per second always allowed, whatever `budget_percent` says.
    #[serde(default = "three")]
    pub(crate) budget_min: u32,
    /// Retry non-idempotent methods (POST, PATCH) too; a request body is never sent again.
    #[serde(default)]
    pub(crate) non_idempotent: bool,
}

/// One `on:` entry: a condition word or a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum RetryOnSpec {
    /// A named condition.
    Condition(RetryCondition),
    /// A response status.
    Status(u16),
}

impl<'de> Deserialize<'de> for RetryOnSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if let Ok(code) = text.parse::<u16>() {
            return if (100..=599).contains(&code) {
                Ok(RetryOnSpec::Status(code))
            } else {
                Err(serde::de::Error::custom(
                    "a retry status must be between 100 and 599",
                ))
            };
        }
        match text.as_str() {
            "connect_failure" => Ok(RetryOnSpec::Condition(RetryCondition::ConnectFailure)),
            "reset" => Ok(RetryOnSpec::Condition(RetryCondition::Reset)),
            "timeout" => Ok(RetryOnSpec::Condition(RetryCondition::Timeout)),
            other => Err(serde::de::Error::custom(format!(
                "unknown retry condition `{other}`, expected connect_failure, reset, timeout or a status code"
            ))),
        }
    }
}

/// Named retry conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RetryCondition {
    /// The connection could not be made.
    ConnectFailure,
    /// The connection broke before a response head arrived.
    Reset,
    /// The try timed out.
    Timeout,
}

fn retry_on_default() -> Vec<At<RetryOnSpec>> {
    vec![At {
        pos: Default::default(),
        value: RetryOnSpec::Condition(RetryCondition::ConnectFailure),
    }]
}

fn backoff_base() -> Dur {
    Dur(std::time::Duration::from_millis(25))
}

fn backoff_max() -> Dur {
    Dur(std::time::Duration::from_millis(250))
}

fn twenty() -> u32 {
    20
}

/// `match:` of a route.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("not" = { "anyOf": [
    { "required": ["path", "path_prefix"] },
    { "required": ["path", "path_template"] },
    { "required": ["path", "path_regex"] },
    { "required": ["path_prefix", "path_template"] },
    { "required": ["path_prefix", "path_regex"] },
    { "required": ["path_template", "path_regex"] },
] }))]
pub(crate) struct MatchSpec {
    /// Host names, exact or `*.suffix`; case, port and a trailing dot are ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) hosts: Vec<At<String>>,
    /// Exact path. A route matches the path one way: at most one of `path`, `path_prefix`,
    /// `path_template`, `path_regex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) path: Option<At<String>>,
    /// Path prefix, matched on segment boundaries: `/users` and `/users/` match `/users` and
    /// `/users/42`, never `/users2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) path_prefix: Option<At<String>>,
    /// Path template: `{name}` is one segment, `{*rest}` the remainder, like `/users/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) path_template: Option<At<String>>,
    /// Path regular expression, anchored at both ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) path_regex: Option<At<String>>,
    /// Methods, like `GET`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) methods: Vec<At<String>>,
    /// A mapping of header name to the exact value it must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) headers: BTreeMap<String, At<String>>,
    /// A mapping of query parameter to the exact (decoded) value it must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) query: BTreeMap<String, String>,
    /// A mapping of cookie name to the exact value it must have (cookie-based canaries).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) cookies: BTreeMap<String, String>,
}

/// One arm of `split:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SplitSpec {
    /// Upstream name.
    pub(crate) upstream: At<String>,
    /// Relative weight, at least 1.
    #[schemars(range(min = 1))]
    pub(crate) weight: u32,
}

/// `respond:` — a fixed answer.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RespondSpec {
    /// Status, 200 to 599.
    #[schemars(range(min = 200, max = 599))]
    #[serde(default = "ok")]
    pub(crate) status: At<u16>,
    /// Body text; sent as `application/json` when it parses as JSON and `headers` has no
    /// `content-type`, else as `text/plain; charset=utf-8`.
    #[serde(default)]
    pub(crate) body: String,
    /// A mapping of response header name to value.
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, At<String>>,
}

fn ok() -> At<u16> {
    At {
        pos: Default::default(),
        value: 200,
    }
}

/// `redirect:` — an answer with `Location`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedirectSpec {
    /// Target; `{path}`, `{query}`, `{uri}` (path and query) and `{host}` are replaced.
    pub(crate) to: At<String>,
    /// Redirect status: 301, 302, 303, 307 or 308.
    #[schemars(extend("enum" = [301, 302, 303, 307, 308]))]
    #[serde(default = "found")]
    pub(crate) status: At<u16>,
}

fn found() -> At<u16> {
    At {
        pos: Default::default(),
        value: 302,
    }
}

/// `rewrite:` — the path the upstream receives; exactly one of `strip_prefix`,
/// `replace_prefix`, `regex`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend(
    "oneOf" = [
        { "required": ["strip_prefix"] },
        { "required": ["replace_prefix"] },
        { "required": ["regex"] },
    ],
    "dependentRequired" = { "regex": ["replace"] },
))]
pub(crate) struct RewriteSpec {
    /// Removes this prefix from the path: `/users` turns `/users/42` into `/42`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) strip_prefix: Option<At<String>>,
    /// Replaces the route's `match.path_prefix` with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) replace_prefix: Option<At<String>>,
    /// Regular expression over the path; with `replace`, `$1`-style groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) regex: Option<At<String>>,
    /// Replacement for `regex`, with `$1`-style groups; required with `regex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) replace: Option<String>,
}

/// One entry of `upstreams:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamSpec {
    /// How a target is picked.
    #[serde(default)]
    pub(crate) balance: BalanceSpec,
    /// Where requests go; at least one.
    pub(crate) targets: At<Vec<TargetSpec>>,
    /// Protocol spoken to targets.
    #[serde(default)]
    pub(crate) protocol: UpstreamProtocol,
    /// Time allowed to establish a TCP connection; then 504.
    #[serde(default = "connect_timeout")]
    pub(crate) connect_timeout: Dur,
    /// How often DNS names in target addresses are resolved again.
    #[serde(default = "resolve_every")]
    pub(crate) resolve_every: Dur,
    /// Keep-alive pool.
    #[serde(default)]
    pub(crate) pool: PoolSpec,
    /// What `ring_hash` and `maglev` hash: `client_ip` (when absent), `path`, `header:NAME`,
    /// `cookie:NAME`, `query:NAME`.
    #[schemars(pattern(r"^(?:client_ip|path|(?:header|cookie|query):.+)$"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) hash_key: Option<At<String>>,
    /// A target that joins (or recovers) ramps from 10% to 100% of its weight over this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) slow_start: Option<Dur>,
    /// Sticky sessions by cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sticky: Option<StickySpec>,
    /// Active and passive health checking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) health_check: Option<HealthCheckSpec>,
    /// Limits that answer 503 instead of piling load on the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) circuit_breaker: Option<CircuitBreakerSpec>,
    /// TLS towards the targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls: Option<UpstreamTlsSpec>,
    /// Send a PROXY protocol header (`v1` or `v2`) first on every new connection to a
    /// target, carrying the client's address; such connections are never shared between
    /// clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) proxy_protocol: Option<ProxyProtocolVersion>,
}

/// `tls:` of an upstream.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("dependentRequired" = { "cert_file": ["key_file"], "key_file": ["cert_file"] }))]
pub(crate) struct UpstreamTlsSpec {
    /// Server name sent and verified; the target's host name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sni: Option<At<String>>,
    /// CAs to trust; the system's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<At<String>>,
    /// Client certificate (PEM) for mTLS to the upstream; needs `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cert_file: Option<At<String>>,
    /// The client certificate's key (PEM); needs `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) key_file: Option<At<String>>,
    /// Verify the server certificate (default `true`; `false` is for tests and trusted networks).
    #[serde(default = "yes")]
    pub(crate) verify: bool,
}

/// `sticky:` of an upstream.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StickySpec {
    /// Cookie name: letters, digits, `_` and `-`.
    pub(crate) cookie: At<String>,
    /// Cookie lifetime.
    #[serde(default = "hour")]
    pub(crate) ttl: Dur,
}

fn hour() -> Dur {
    Dur(std::time::Duration::from_secs(3600))
}

/// `health_check:` of an upstream.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthCheckSpec {
    /// Probes on a timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) active: Option<ActiveCheckSpec>,
    /// Outlier detection from live traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) passive: Option<PassiveCheckSpec>,
    /// When every target is out: spread over all of them (`true`) or answer 503 (`false`).
    #[serde(default)]
    pub(crate) panic: bool,
}

/// `health_check.active:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActiveCheckSpec {
    /// What a check is: `http` (default), `tcp` or `grpc`.
    #[serde(default, rename = "type")]
    pub(crate) kind: CheckType,
    /// Path for HTTP checks; starts with `/`.
    #[serde(default = "slash")]
    pub(crate) path: String,
    /// Method for HTTP checks.
    #[serde(default = "get")]
    pub(crate) method: At<String>,
    /// Accepted statuses: a status like `200` or a range like `200-399`.
    #[serde(default = "ok_range")]
    pub(crate) expect_status: At<String>,
    /// A string the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) body_contains: Option<String>,
    /// For `type: grpc`: the service asked about (`""`, the server as a whole, by default).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) service: String,
    /// Time between checks.
    #[serde(default = "five_seconds")]
    pub(crate) interval: Dur,
    /// Time allowed for a check.
    #[serde(default = "one_second")]
    pub(crate) timeout: Dur,
    /// Consecutive successes to come back.
    #[serde(default = "two")]
    pub(crate) healthy: u32,
    /// Consecutive failures to go out.
    #[serde(default = "three")]
    pub(crate) unhealthy: u32,
    /// Up to this much random delay is added to each interval.
    #[serde(default)]
    pub(crate) jitter: Dur,
    /// Probe this port of the target's address instead of the target's own port (a health
    /// endpoint beside the service, as for UDP targets).
    #[schemars(range(min = 1))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) port: Option<At<u16>>,
}

/// `type:` of an active check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CheckType {
    /// An HTTP request.
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
    /// The gRPC health protocol (`grpc.health.v1.Health/Check`) over HTTP/2.
    Grpc,
}

/// `health_check.passive:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PassiveCheckSpec {
    /// Eject after this many failures in a row (0 turns it off).
    pub(crate) consecutive_failures: u32,
    /// Eject when this percentage of the requests in `window` failed (0 turns it off).
    pub(crate) error_rate: u32,
    /// Fewest requests in `window` for `error_rate` to apply.
    pub(crate) min_requests: u32,
    /// Error-rate window.
    pub(crate) window: Dur,
    /// Length of the first ejection; it doubles with each ejection in a row.
    pub(crate) eject_for: Dur,
    /// Longest ejection.
    pub(crate) max_eject: Dur,
    /// Most targets ejected at once, in percent of the upstream's targets.
    pub(crate) max_ejected_percent: u32,
}

impl Default for PassiveCheckSpec {
    fn default() -> Self {
        PassiveCheckSpec {
            consecutive_failures: 5,
            error_rate: 0,
            min_requests: 20,
            window: Dur(std::time::Duration::from_secs(10)),
            eject_for: Dur(std::time::Duration::from_secs(30)),
            max_eject: Dur(std::time::Duration::from_secs(300)),
            max_ejected_percent: 50,
        }
    }
}

/// `circuit_breaker:` of an upstream.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CircuitBreakerSpec {
    /// Most requests in flight to the upstream at once; more get 503 (no limit when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_requests: Option<usize>,
    /// Most open connections to the upstream, all targets and workers (no limit when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_connections: Option<usize>,
    /// With `max_connections` reached, most requests that wait for a connection to free up
    /// (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_pending: Option<usize>,
    /// Most relayed connections (`tcp`, `tls` and `tls_passthrough` listeners) open to one
    /// target at once; a target at it is skipped (no limit when absent).
    #[schemars(range(min = 1))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_connections_per_target: Option<At<usize>>,
}

fn slash() -> String {
    "/".to_owned()
}

fn get() -> At<String> {
    At {
        pos: Default::default(),
        value: "GET".to_owned(),
    }
}

fn ok_range() -> At<String> {
    At {
        pos: Default::default(),
        value: "200-399".to_owned(),
    }
}

fn five_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}

fn one_second() -> Dur {
    Dur(std::time::Duration::from_secs(1))
}

fn two() -> u32 {
    2
}

fn three() -> u32 {
    3
}

fn connect_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}

fn resolve_every() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

/// `balance:` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BalanceSpec {
    /// Smooth weighted round robin, as nginx does it.
    #[default]
    RoundRobin,
    /// Fewest requests in flight, relative to weight.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Power of two random choices by latency EWMA × load.
    P2cEwma,
    /// Consistent hashing on a ring, by `hash_key`.
    RingHash,
    /// Maglev consistent hashing, by `hash_key`.
    Maglev,
    /// Consistent hashing by client IP.
    IpHash,
}

/// `protocol:` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 over cleartext, prior knowledge.
    Http2,
    /// gRPC: HTTP/2, over cleartext (h2c) or, with `tls`, over TLS with ALPN `h2` — the same
    /// wire as `http2`, named for what it carries.
    Grpc,
}

impl UpstreamProtocol {
    /// Whether targets are spoken to in HTTP/2.
    pub(crate) fn http2(self) -> bool {
        matches!(self, UpstreamProtocol::Http2 | UpstreamProtocol::Grpc)
    }
}

/// `pool:` of an upstream.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PoolSpec {
    /// Most idle connections kept per target and worker.
    pub(crate) max_idle: usize,
    /// An idle connection unused for this long is closed.
    pub(crate) idle_timeout: Dur,
    /// HTTP/1.1: a worker keeps no more connections to a target, in use and idle together,
    /// than its requests held at once over this window; the oldest idle ones beyond are
    /// closed. `0s` keeps up to `max_idle` until `idle_timeout`.
    pub(crate) demand_window: Dur,
}

impl Default for PoolSpec {
    fn default() -> Self {
        PoolSpec {
            max_idle: 128,
            idle_timeout: Dur(std::time::Duration::from_secs(60)),
            demand_window: Dur(std::time::Duration::from_secs(10)),
        }
    }
}

/// One entry of `targets:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetSpec {
    /// `IP:PORT` or `NAME:PORT`; names are resolved every `resolve_every`.
    pub(crate) address: At<String>,
    /// Relative weight, at least 1.
    #[schemars(range(min = 1))]
    #[serde(default = "one")]
    pub(crate) weight: At<u32>,
}

fn one() -> At<u32> {
    At {
        pos: Default::default(),
        value: 1,
    }
}

/// One entry of a `plugins:` list: a mapping with one key naming the plugin.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum PluginSpec {
    /// Edits request headers before forwarding.
    RequestHeaders(HeaderOpsSpec),
    /// Edits response headers before answering.
    ResponseHeaders(HeaderOpsSpec),
    /// Authenticates a consumer by API key.
    KeyAuth(KeyAuthSpec),
    /// Allows or denies consumers by group.
    Acl(AclSpec),
    /// Limits request rates.
    RateLimit(RateLimitSpec),
    /// Caps requests per fixed window of wall-clock time (hours, days).
    Quota(QuotaSpec),
    /// Cross-origin resource sharing: answers preflights, marks responses.
    Cors(CorsSpec),
    /// Allows or denies client addresses.
    IpRestriction(IpRestrictionSpec),
    /// Refuses request bodies over a size (413).
    RequestSizeLimit(RequestSizeLimitSpec),
    /// Authenticates a bearer JSON Web Token.
    Jwt(JwtSpec),
    /// Checks an opaque bearer token at an OAuth 2.0 introspection endpoint (RFC 7662).
    Oauth2Introspection(super::spec_introspection::IntrospectionSpec),
    /// Authenticates `Authorization: Basic` against consumers' password hashes.
    BasicAuth(BasicAuthSpec),
    /// Maps a verified client certificate to a consumer (needs `client_auth` on the listener).
    MtlsAuth(MtlsAuthSpec),
    /// Answers with a fixed response (a mock), after the checks before it.
    Respond(MockSpec),
    /// Edits the request: headers, query, JSON body fields.
    RequestTransformer(TransformSpec),
    /// Edits the response: headers, JSON body fields.
    ResponseTransformer(TransformSpec),
    /// Reads the answer as JSON, XML, a form or text and shapes it into JSON (target, allow,
    /// deny, rename, group).
    ResponseShape(super::aggregate::ResponseShapeSpec),
    /// Checks requests against a JSON Schema (bodies) or an OpenAPI 3 document.
    RequestValidator(ValidatorSpec),
    /// Lets gRPC-Web clients (browsers) call gRPC upstreams.
    GrpcWeb(GrpcWebSpec),
    /// Asks an auth service (an upstream) about each request: a 2xx lets it on, anything
    /// else is the answer.
    ForwardAuth(super::spec_forward_auth::ForwardAuthSpec),
    /// Logs browser users in at an OpenID Provider; keeps them in a sealed session cookie.
    Oidc(Box<super::spec_oidc::OidcSpec>),
    /// Stores answers and serves them while fresh (an RFC 9111 shared cache).
    Cache(super::spec_cache::CacheSpec),
    /// Compresses answers (zstd, brotli, gzip) as the client accepts; optionally decodes
    /// compressed request bodies.
    Compression(super::spec_compression::CompressionSpec),
}

/// `grpc_web:` — no settings (`grpc_web: {}`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrpcWebSpec {}

/// `request_validator:` — needs `body_schema` or `openapi_file`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("anyOf" = [{ "required": ["body_schema"] }, { "required": ["openapi_file"] }]))]
pub(crate) struct ValidatorSpec {
    /// A JSON Schema that JSON request bodies must match, written inline. A
    /// `request_validator` needs `body_schema`, `openapi_file` or both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) body_schema: Option<serde_json::Value>,
    /// An OpenAPI 3 document (YAML or JSON, relative to the config file): paths, methods,
    /// path/query/header parameters and JSON request bodies are checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) openapi_file: Option<At<String>>,
    /// Largest body checked; larger ones are refused (413).
    #[serde(default = "one_mebibyte")]
    pub(crate) max_body: Size,
}

/// `request_transformer:` / `response_transformer:`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransformSpec {
    /// Header edits (remove, rename, set, add).
    #[serde(default)]
    pub(crate) headers: FieldOpsSpec,
    /// Query parameter edits (requests only).
    #[serde(default)]
    pub(crate) query: FieldOpsSpec,
    /// JSON body edits; field names are dotted paths (`user.email`).
    #[serde(default)]
    pub(crate) json: JsonOpsSpec,
    /// Largest JSON body edited; larger bodies pass unchanged.
    #[serde(default = "one_mebibyte")]
    pub(crate) max_body: Size,
}

fn one_mebibyte() -> Size {
    Size(1 << 20)
}

/// Edits of named string fields.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FieldOpsSpec {
    /// Fields to delete.
    #[serde(default)]
    pub(crate) remove: Vec<String>,
    /// A mapping of old field name to new name.
    #[serde(default)]
    pub(crate) rename: BTreeMap<String, String>,
    /// A mapping of field name to the value that replaces it (set when absent).
    #[serde(default)]
    pub(crate) set: BTreeMap<String, String>,
    /// A mapping of field name to a value appended to it.
    #[serde(default)]
    pub(crate) add: BTreeMap<String, String>,
}

/// Edits of JSON body fields.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct JsonOpsSpec {
    /// Paths to delete.
    #[serde(default)]
    pub(crate) remove: Vec<String>,
    /// A mapping of old dotted path to new path.
    #[serde(default)]
    pub(crate) rename: BTreeMap<String, String>,
    /// A mapping of dotted path to the string value it is set to.
    #[serde(default)]
    pub(crate) set: BTreeMap<String, String>,
}

/// `basic_auth:`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BasicAuthSpec {
    /// Realm in `WWW-Authenticate`.
    #[serde(default = "portico_realm")]
    pub(crate) realm: String,
    /// Remove `Authorization` before forwarding.
    #[serde(default = "yes")]
    pub(crate) hide_credentials: bool,
}

fn portico_realm() -> String {
    "portico".to_owned()
}

/// `mtls_auth:`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MtlsAuthSpec {
    /// Let certificates that match no consumer through, without a consumer (`false`: 401).
    #[serde(default)]
    pub(crate) allow_unknown: bool,
}

/// `respond:` plugin — a mock answer.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MockSpec {
    /// Status, 200 to 599.
    #[schemars(range(min = 200, max = 599))]
    #[serde(default = "ok")]
    pub(crate) status: At<u16>,
    /// Body text; sent as `application/json` when it parses as JSON and `headers` has no
    /// `content-type`.
    #[serde(default)]
    pub(crate) body: String,
    /// A mapping of response header name to value.
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, At<String>>,
}

/// `jwt:` — needs `keys`, keys in an inline `jwks`, or a `jwks_url`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("anyOf" = [
    { "required": ["keys"], "properties": { "keys": { "minItems": 1 } } },
    { "required": ["jwks"], "properties": { "jwks": { "required": ["keys"], "properties": { "keys": { "minItems": 1 } } } } },
    { "required": ["jwks_url"] },
]))]
pub(crate) struct JwtSpec {
    /// Verification keys; each pins its algorithm. A `jwt` needs a key here or in `jwks`, or a
    /// `jwks_url`.
    #[serde(default)]
    pub(crate) keys: Vec<JwtKeySpec>,
    /// A JWKS document written inline (`{ keys: [...] }`); each key needs `alg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) jwks: Option<serde_json::Value>,
    /// A JWKS document fetched at start and every `jwks_refresh` (and, at most once a
    /// minute, when a token names an unknown `kid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) jwks_url: Option<At<String>>,
    /// How often `jwks_url` is fetched again.
    #[serde(default = "ten_minutes")]
    pub(crate) jwks_refresh: Dur,
    /// Accepted `iss` values (any when empty).
    #[serde(default)]
    pub(crate) issuers: Vec<String>,
    /// Accepted `aud` values (any when empty).
    #[serde(default)]
    pub(crate) audiences: Vec<String>,
    /// Clock skew allowed when checking `exp` and `nbf`.
    #[serde(default = "thirty_seconds")]
    pub(crate) leeway: Dur,
    /// The claim whose value is the consumer's name.
    #[serde(default = "sub")]
    pub(crate) consumer_claim: String,
    /// A mapping of claim name to the header name its value is sent upstream in; a client's
    /// own headers of these names are removed.
    #[serde(default)]
    pub(crate) claims_to_headers: BTreeMap<String, String>,
    /// Claims a token must carry besides `exp` (always required), such as `sub`; none by
    /// default.
    #[serde(default)]
    pub(crate) required_claims: Vec<String>,
    /// Also read the token from this cookie when there is no `Authorization: Bearer` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cookie: Option<String>,
    /// Also read the token from this query parameter when neither the header nor the cookie
    /// carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) query: Option<String>,
    /// Remove the token before forwarding: the `Authorization: Bearer` header, the `cookie`
    /// from `Cookie` and the `query` parameter. Off by default (the upstream can check the
    /// token again).
    #[serde(default)]
    pub(crate) hide_credentials: bool,
}

/// One `jwt.keys` entry.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtKeySpec {
    /// Matches the token's `kid`; without it, the key serves tokens without `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) kid: Option<String>,
    /// The algorithm tokens must use with this key: HS256/384/512, RS256/384/512,
    /// PS256/384/512, ES256/384 or EdDSA.
    #[schemars(extend("enum" = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]))]
    pub(crate) alg: At<String>,
    /// HMAC secret for the HS algorithms, at least 16 bytes (use `${ENV}`).
    #[schemars(pattern(r"^(?:.{16,}|.*\$\{.+\}.*)$"))]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redact"
    )]
    pub(crate) secret: Option<String>,
    /// PEM public key file for the RS, PS, ES and EdDSA algorithms (relative to the config
    /// file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) public_key_file: Option<At<String>>,
}

fn thirty_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

fn sub() -> String {
    "sub".to_owned()
}

/// `key_auth:` — API keys of `consumers`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyAuthSpec {
    /// Header carrying the key.
    #[serde(default = "api_key_header")]
    pub(crate) header: String,
    /// Query parameter carrying the key (off unless given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) query: Option<String>,
    /// Remove the key header (and the key's query parameter) before forwarding.
    #[serde(default = "yes")]
    pub(crate) hide_credentials: bool,
}

fn api_key_header() -> String {
    "x-api-key".to_owned()
}

/// `acl:` — by consumer group.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AclSpec {
    /// Consumer groups let through (all when empty).
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    /// Consumer groups refused.
    #[serde(default)]
    pub(crate) deny: Vec<String>,
}

/// `rate_limit:` — GCRA per key.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitSpec {
    /// Requests per `window`, at least 1: the bucket refills at `limit` per `window`.
    #[schemars(range(min = 1))]
    pub(crate) limit: At<u32>,
    /// The window `limit` refers to; longer than 0.
    pub(crate) window: Dur,
    /// The bucket's capacity: requests allowed at once, at least 1 (`limit` when absent).
    #[schemars(range(min = 1))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) burst: Option<u32>,
    /// What is counted apart: `ip` (the client address), `consumer`, `route` or `header:NAME`.
    /// In a consumer's `plugins` the default is `consumer`.
    #[schemars(pattern(r"^(?:ip|consumer|route|header:.+)$"))]
    #[serde(default = "by_ip")]
    pub(crate) by: At<String>,
    /// Most keys tracked at once (a memory bound).
    #[serde(default = "max_keys")]
    pub(crate) max_keys: usize,
    /// `local` (each node counts alone) or `cluster` (the nodes count together in
    /// `cluster.redis`, with the same limit and headers).
    #[serde(default)]
    pub(crate) scope: LimitScope,
}

/// `rate_limit.scope`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LimitScope {
    /// This node counts alone.
    #[default]
    Local,
    /// The nodes count together in `cluster.redis`.
    Cluster,
}

/// `quota:` — a count per key over fixed windows of wall-clock time.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuotaSpec {
    /// Requests allowed per `period`, at least 1; nothing refills before the period ends.
    #[schemars(range(min = 1))]
    pub(crate) limit: At<u32>,
    /// The period, a whole number of seconds (at least `1s`): counts start again at each
    /// multiple of it since 1970-01-01 00:00 UTC (`1d` at midnight UTC, `1h` on the hour).
    pub(crate) period: Dur,
    /// What is counted apart: `consumer` (default), `ip`, `route` or `header:NAME`.
    #[schemars(pattern(r"^(?:ip|consumer|route|header:.+)$"))]
    #[serde(default = "by_consumer")]
    pub(crate) by: At<String>,
    /// Most keys counted at once (a memory bound); past it, new keys share one count.
    #[serde(default = "max_keys")]
    pub(crate) max_keys: usize,
}

fn by_consumer() -> At<String> {
    At {
        pos: Default::default(),
        value: "consumer".to_owned(),
    }
}

fn by_ip() -> At<String> {
    At {
        pos: Default::default(),
        value: "ip".to_owned(),
    }
}

fn max_keys() -> usize {
    100_000
}

/// `cors:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CorsSpec {
    /// Allowed origins: exact (`https://app.example.com`), wildcard (`https://*.example.com`)
    /// or `*`; at least one.
    #[schemars(length(min = 1))]
    pub(crate) origins: At<Vec<String>>,
    /// Allowed methods.
    #[serde(default = "cors_methods")]
    pub(crate) methods: Vec<String>,
    /// Allowed request headers; when empty, those the preflight asks for.
    #[serde(default)]
    pub(crate) headers: Vec<String>,
    /// Response headers exposed to scripts.
    #[serde(default)]
    pub(crate) expose_headers: Vec<String>,
    /// Allow credentials (cookies, authorization); the request's origin is echoed, never `*`.
    #[serde(default)]
    pub(crate) credentials: bool,
    /// How long browsers may cache a preflight.
    #[serde(default = "ten_minutes")]
    pub(crate) max_age: Dur,
}

fn cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(str::to_owned)
        .to_vec()
}

fn ten_minutes() -> Dur {
    Dur(std::time::Duration::from_secs(600))
}

/// `ip_restriction:`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IpRestrictionSpec {
    /// Address blocks (CIDR, like `10.0.0.0/8`) let through (all when empty).
    #[serde(default)]
    pub(crate) allow: Vec<At<String>>,
    /// Address blocks refused (checked first).
    #[serde(default)]
    pub(crate) deny: Vec<At<String>>,
    /// Proxies whose `X-Forwarded-For` is believed: the client is the rightmost address not
    /// among them.
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<At<String>>,
}

/// `request_size_limit:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestSizeLimitSpec {
    /// Largest request body; larger ones get 413.
    pub(crate) max: Size,
}

/// One entry of `consumers:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumerSpec {
    /// Unique name, sent upstream as `x-consumer-name`.
    pub(crate) name: At<String>,
    /// API keys for `key_auth`, at least 8 characters each (use `${ENV}`); stored hashed.
    #[schemars(inner(pattern(r"^(?:.{8,}|.*\$\{.+\}.*)$")))]
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "redact_all"
    )]
    pub(crate) api_keys: Vec<At<String>>,
    /// Groups, for `acl`; sent upstream as `x-consumer-groups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) groups: Vec<String>,
    /// Username and password hash (argon2 PHC string or bcrypt) for `basic_auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) basic_auth: Option<BasicCredentialSpec>,
    /// Client-certificate subject (as in `x-client-cert-subject`) for `mtls_auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cert_subject: Option<String>,
    /// Plugins run for this consumer once a request is authenticated as it; each replaces a
    /// route's or global plugin of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) plugins: Vec<At<PluginSpec>>,
}

/// `basic_auth:` of a consumer.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BasicCredentialSpec {
    /// User name.
    pub(crate) username: At<String>,
    /// An argon2 (`$argon2id$...`) or bcrypt (`$2b$...`) hash; never the password itself.
    #[serde(serialize_with = "redact_str")]
    pub(crate) password_hash: At<String>,
}

fn redact_str<S: serde::Serializer>(_: &At<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

fn redact_all<S: serde::Serializer>(keys: &[At<String>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(keys.iter().map(|_| "<redacted>"))
}

/// Header edits: `set` replaces, `add` appends, `remove` deletes; applied remove, set, add.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderOpsSpec {
    /// A mapping of header name to the value that replaces it.
    #[serde(default)]
    pub(crate) set: BTreeMap<String, String>,
    /// A mapping of header name to a value added to it.
    #[serde(default)]
    pub(crate) add: BTreeMap<String, String>,
    /// Header names to delete.
    #[serde(default)]
    pub(crate) remove: Vec<String>,
}
