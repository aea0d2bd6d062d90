//! TLS with rustls (ring provider): certificates and keys from PEM, certificate choice by SNI,
//! client certificates (mTLS), upstream TLS, and ACME ([`acme`]).
//!
//! Everything here is built when the config is compiled, so `validate` reports a missing file,
//! a key that does not match its certificate, or an expired certificate with its position, and
//! a reload swaps whole `ServerConfig`s: new handshakes use the new certificates while
//! established connections keep theirs.

pub(crate) mod acme;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The one crypto provider portico uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain with its key, and the names it serves.
#[derive(Debug, Clone)]
pub(crate) struct LoadedCert {
    /// What rustls serves.
    pub(crate) key: Arc<CertifiedKey>,
    /// DNS names (lower case; `*.x` for wildcards) from the leaf's SANs, or its CN.
    pub(crate) names: Vec<String>,
    /// Leaf expiry, Unix seconds.
    pub(crate) not_after: i64,
}

/// Why a PEM file gives no usable certificate or key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PemError {
    /// The certificate file cannot be opened.
    #[error("cannot read certificate file {}: {source:?}", path.display())]
    ReadCertificate {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        #[source]
        source: PemFileError,
    },
    /// A PEM section that does not decode.
    #[error("bad PEM in {}: {source:?}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        #[source]
        source: PemFileError,
    },
    /// A PEM file without a `CERTIFICATE` section.
    #[error("no certificate in {}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file cannot be opened.
    #[error("cannot read key file {}: {source}", path.display())]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// A key file without a private key section.
    #[error("no usable private key in {}: {source:?}", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        #[source]
        source: PemFileError,
    },
    /// A private key rustls cannot sign with.
    #[error("unusable key in {}: {source}", path.display())]
    UnusableKey {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// A leaf certificate that does not parse as X.509.
    #[error("cannot parse the certificate in {}", path.display())]
    Unparsable {
        /// The file.
        path: PathBuf,
    },
    /// A leaf past its `notAfter`.
    #[error("the certificate in {} expired ({when})", path.display())]
    Expired {
        /// The file.
        path: PathBuf,
        /// `notAfter`, as the certificate says it.
        when: String,
    },
    /// A leaf before its `notBefore`.
    #[error("the certificate in {} is not valid yet ({when})", path.display())]
    NotYetValid {
        /// The file.
        path: PathBuf,
        /// `notBefore`, as the certificate says it.
        when: String,
    },
    /// A CA certificate the root store refuses.
    #[error("unusable CA certificate in {}: {source}", path.display())]
    Ca {
        /// The bundle.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
}

/// What the PEM reader reports.
pub(crate) type PemFileError = rustls_pki_types::pem::Error;

/// Why a certificate chain and its key cannot be used, and so which of the two files a
/// diagnostic points at.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PairError {
    /// The certificate file is unreadable or holds no usable certificate, or the leaf is not
    /// valid now.
    #[error(transparent)]
    Certificate(PemError),
    /// The key file is unreadable or holds no usable key.
    #[error(transparent)]
    Key(PemError),
    /// The key is not the one of the certificate.
    #[error("the key in {} does not match the certificate in {}", .key.display(), .cert.display())]
    Mismatch {
        /// The certificate file.
        cert: std::path::PathBuf,
        /// The key file.
        key: std::path::PathBuf,
    },
}

impl PairError {
    /// Whether the key file, rather than the certificate file, is the one to look at.
    pub(crate) fn in_key_file(&self) -> bool {
        matches!(self, PairError::Key(_) | PairError::Mismatch { .. })
    }
}

/// Why an upstream's TLS client config cannot be built, and so which setting to point at.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientTlsError {
    /// The `ca_file` is unusable.
    #[error(transparent)]
    Ca(PemError),
    /// The client certificate (`cert_file`) or its key (`key_file`) is unusable.
    #[error(transparent)]
    Identity(#[from] PairError),
    /// rustls refused the settings.
    #[error("cannot set up upstream TLS: {0}")]
    Setup(#[source] rustls::Error),
}

/// Loads a PEM chain and key.
pub(crate) fn load_pair(cert_file: &Path, key_file: &Path) -> Result<LoadedCert, PairError> {
    let certs = load_certs(cert_file).map_err(PairError::Certificate)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        let path = key_file.to_owned();
        PairError::Key(match e {
            PemFileError::Io(source) => PemError::ReadKey { path, source },
            source => PemError::NoKey { path, source },
        })
    })?;
    let certified =
        CertifiedKey::from_der(certs.clone(), key, &provider()).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => PairError::Mismatch {
                cert: cert_file.to_owned(),
                key: key_file.to_owned(),
            },
            source => PairError::Key(PemError::UnusableKey {
                path: key_file.to_owned(),
                source,
            }),
        })?;
    let leaf = identity(&certs[0]).ok_or_else(|| {
        PairError::Certificate(PemError::Unparsable {
            path: cert_file.to_owned(),
        })
    })?;
    let now = now_unix();
    if leaf.not_after < now {
        return Err(PairError::Certificate(PemError::Expired {
            path: cert_file.to_owned(),
            when: leaf.not_after_text,
        }));
    }
    if leaf.not_before > now {
        return Err(PairError::Certificate(PemError::NotYetValid {
            path: cert_file.to_owned(),
            when: leaf.not_before_text,
        }));
    }
    let mut names: Vec<String> = leaf
        .dns_names
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    if names.is_empty()
        && let Some(cn) = &leaf.common_name
    {
        names.push(cn.to_ascii_lowercase());
    }
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_after: leaf.not_after,
    })
}

/// A negotiated TLS version as logs write it.
pub(crate) fn version_name(version: Option<rustls::ProtocolVersion>) -> &'static str {
    match version {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        Some(_) => "other",
        None => "none",
    }
}

/// Every certificate in a PEM file.
pub(crate) fn load_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .map_err(|source| PemError::ReadCertificate {
            path: file.to_owned(),
            source,
        })?
        .collect::<Result<_, _>>()
        .map_err(|source| PemError::BadPem {
            path: file.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: file.to_owned(),
        });
    }
    Ok(certs)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What a certificate says about its subject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The subject distinguished name, RFC 4514 style (`CN=alice,O=Example`).
    pub(crate) subject: String,
    /// The subject's common name.
    pub(crate) common_name: Option<String>,
    /// DNS names from the SAN extension.
    pub(crate) dns_names: Vec<String>,
    /// Every SAN as `DNS:x`, `URI:x`, `email:x` or `IP:x`.
    pub(crate) sans: Vec<String>,
    /// Validity, Unix seconds, and as text.
    pub(crate) not_before: i64,
    /// See `not_before`.
    pub(crate) not_after: i64,
    /// Validity start as text.
    pub(crate) not_before_text: String,
    /// Validity end as text.
    pub(crate) not_after_text: String,
}

/// Parses the subject, SANs and validity of a DER certificate.
pub(crate) fn identity(der: &[u8]) -> Option<Identity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let mut dns_names = Vec::new();
    let mut sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => {
                    dns_names.push((*n).to_owned());
                    sans.push(format!("DNS:{n}"));
                }
                GeneralName::URI(u) => sans.push(format!("URI:{u}")),
                GeneralName::RFC822Name(e) => sans.push(format!("email:{e}")),
                GeneralName::IPAddress(ip) => {
                    let text = match ip.len() {
                        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string(),
                        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string(),
                        _ => continue,
                    };
                    sans.push(format!("IP:{text}"));
                }
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    Some(Identity {
        subject: subject.to_string(),
        common_name,
        dns_names,
        sans,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        not_before_text: validity.not_before.to_string(),
        not_after_text: validity.not_after.to_string(),
    })
}

/// Picks the certificate for a handshake by SNI: exact name, then wildcard, then the default
/// (the listener's first certificate).
#[derive(Debug)]
pub(crate) struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    acme: Option<Arc<acme::AcmeState>>,
}

impl SniResolver {
    /// Indexes `certs` by their names; the first is the default. With `acme`, the issued
    /// certificate serves every name the configured ones do not.
    pub(crate) fn new(certs: &[LoadedCert], acme: Option<Arc<acme::AcmeState>>) -> Option<Self> {
        if certs.is_empty() && acme.is_none() {
            return None;
        }
        let default = certs.first().map(|c| Arc::clone(&c.key));
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in certs {
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard
                        .entry(suffix.to_owned())
                        .or_insert_with(|| Arc::clone(&cert.key)),
                    None => exact
                        .entry(name.clone())
                        .or_insert_with(|| Arc::clone(&cert.key)),
                };
            }
        }
        Some(SniResolver {
            exact,
            wildcard,
            default,
            acme,
        })
    }

    /// The certificate for a server name (or none given).
    pub(crate) fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let fallback = || {
            self.acme
                .as_ref()
                .and_then(|a| a.pick(server_name, false))
                .or_else(|| self.default.clone())
        };
        let Some(name) = server_name else {
            return fallback();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(Arc::clone(key));
        }
        // `*.example.com` covers exactly one label (RFC 6125 §6.4.3).
        if let Some((_, parent)) = name.split_once('.')
            && let Some(key) = self.wildcard.get(parent)
        {
            return Some(Arc::clone(key));
        }
        fallback()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let challenge = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == acme::ACME_TLS_ALPN));
        if challenge {
            // Only the ACME validation asks for `acme-tls/1` (RFC 8737 §3).
            return self.acme.as_ref()?.pick(hello.server_name(), true);
        }
        self.pick(hello.server_name())
    }
}

/// Client-certificate settings of a listener.
#[derive(Debug, Clone)]
pub(crate) struct ClientAuth {
    /// Trusted CAs.
    pub(crate) roots: Arc<RootCertStore>,
    /// Handshakes without a certificate fail (`true`) or proceed anonymously (`false`).
    pub(crate) required: bool,
}

/// A root store from a PEM bundle.
pub(crate) fn roots(file: &Path) -> Result<Arc<RootCertStore>, PemError> {
    let mut store = RootCertStore::empty();
    for cert in load_certs(file)? {
        store.add(cert).map_err(|source| PemError::Ca {
            path: file.to_owned(),
            source,
        })?;
    }
    Ok(Arc::new(store))
}

/// Why an https listener's server config cannot be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerTlsError {
    /// Neither certificates nor ACME.
    #[error("an https listener needs at least one certificate")]
    NoCertificate,
    /// The client-certificate verifier refused its roots.
    #[error(transparent)]
    ClientAuth(#[from] rustls::server::VerifierBuilderError),
    /// rustls refused the settings.
    #[error(transparent)]
    Setup(#[from] rustls::Error),
}

/// The server side of an https listener.
pub(crate) fn server_config(
    certs: &[LoadedCert],
    client_auth: Option<&ClientAuth>,
    acme: Option<Arc<acme::AcmeState>>,
) -> Result<Arc<ServerConfig>, ServerTlsError> {
    let with_acme = acme.is_some();
    let resolver = SniResolver::new(certs, acme).ok_or(ServerTlsError::NoCertificate)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_auth {
        Some(auth) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::clone(&auth.roots), provider());
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build()?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if with_acme {
        config.alpn_protocols.push(acme::ACME_TLS_ALPN.to_vec());
    }
    // Resumption: stateless tickets (TLS 1.2 and 1.3) and the default session cache.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// Upstream TLS settings, compiled.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamTls {
    /// The client config (roots, client certificate, ALPN).
    pub(crate) config: Arc<ClientConfig>,
    /// SNI and verified name; the target's host when absent.
    pub(crate) sni: Option<ServerName<'static>>,
}

/// The client side towards an upstream.
pub(crate) fn client_config(
    ca_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
    verify: bool,
    http2: bool,
) -> Result<Arc<ClientConfig>, ClientTlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(ClientTlsError::Setup)?;
    let builder = if !verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let roots = match ca_file {
            Some(file) => roots(file).map_err(ClientTlsError::Ca)?,
            None => {
                let mut store = RootCertStore::empty();
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = store.add(cert);
                }
                Arc::new(store)
            }
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match identity {
        Some((cert, key)) => {
            let loaded = load_pair(cert, key)?;
            let key = load_key(key).map_err(|e| ClientTlsError::Identity(PairError::Key(e)))?;
            builder
                .with_client_auth_cert(loaded.key.cert.clone(), key)
                .map_err(ClientTlsError::Setup)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

fn load_key(file: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(file).map_err(|source| PemError::NoKey {
        path: file.to_owned(),
        source,
    })
}

/// `verify: false`: accepts any server certificate. For tests and trusted networks only.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a small document could not be fetched.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// The URL does not parse.
    #[error("invalid URL: {0}")]
    Url(#[source] http::uri::InvalidUri),
    /// The URL has no host to connect to.
    #[error("the URL has no host")]
    NoHost,
    /// The host is not a name TLS can verify.
    #[error(transparent)]
    Name(#[from] rustls_pki_types::InvalidDnsNameError),
    /// Connecting, or the TLS handshake, failed.
    #[error(transparent)]
    Connect(#[from] std::io::Error),
    /// The request could not be built.
    #[error(transparent)]
    Request(#[from] http::Error),
    /// The client TLS config could not be built.
    #[error(transparent)]
    Tls(#[from] ClientTlsError),
    /// The HTTP exchange failed.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The server answered, but not with success.
    #[error("status {0}")]
    Status(http::StatusCode),
    /// The body broke off or is larger than allowed.
    #[error(transparent)]
    Body(Box<dyn std::error::Error + Send + Sync>),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

/// GETs `url` (http or https, system trust store), for small documents such as a JWKS.
pub(crate) async fn fetch(
    url: &str,
    timeout: std::time::Duration,
    max: usize,
) -> Result<bytes::Bytes, FetchError> {
    let uri: http::Uri = url.parse().map_err(FetchError::Url)?;
    let tls = match uri.scheme_str() == Some("https") {
        true => Some(client_config(None, None, true, false)?),
        false => None,
    };
    let request = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .body(http_body_util::Full::new(bytes::Bytes::new()))?;
    exchange(&uri, tls, request, timeout, max).await
}

/// GETs `url` with the client TLS config `tls` for an `https` URL (system roots when
/// `None`), for small documents such as a provider's discovery document.
pub(crate) async fn get(
    url: &http::Uri,
    tls: Option<Arc<ClientConfig>>,
    timeout: std::time::Duration,
    max: usize,
) -> Result<bytes::Bytes, FetchError> {
    let request = http::Request::get(url.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::ACCEPT, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::new()))?;
    exchange(url, tls, request, timeout, max).await
}

/// POSTs `form` (already `application/x-www-form-urlencoded`) to `url` with the extra
/// `headers`, for small exchanges such as token introspection. An `https` URL is verified with
/// `tls` (from [`client_config`]); a non-2xx answer is an error.
pub(crate) async fn post_form(
    url: &http::Uri,
    tls: Option<Arc<ClientConfig>>,
    headers: &[(http::HeaderName, http::HeaderValue)],
    form: bytes::Bytes,
    timeout: std::time::Duration,
    max: usize,
) -> Result<bytes::Bytes, FetchError> {
    let mut request = http::Request::post(url.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request.body(http_body_util::Full::new(form))?;
    exchange(url, tls, request, timeout, max).await
}

/// Sends one request over a fresh HTTP/1.1 connection to `uri`'s host (TLS when `tls` is
/// given) and reads a successful answer's body, at most `max` bytes, all within `timeout`.
async fn exchange(
    uri: &http::Uri,
    tls: Option<Arc<ClientConfig>>,
    mut request: http::Request<http_body_util::Full<bytes::Bytes>>,
    timeout: std::time::Duration,
    max: usize,
) -> Result<bytes::Bytes, FetchError> {
    use http_body_util::BodyExt;
    let host = uri.host().ok_or(FetchError::NoHost)?.to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri.authority().map_or(host.as_str(), |a| a.as_str());
    let host_value =
        http::HeaderValue::from_str(authority).map_err(|e| FetchError::Request(e.into()))?;
    request.headers_mut().insert(http::header::HOST, host_value);
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let response = match (https, tls) {
            (true, tls) => {
                let config = match tls {
                    Some(config) => config,
                    None => client_config(None, None, true, false)?,
                };
                let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                        .await?;
                tokio::spawn(conn);
                sender.send_request(request).await?
            }
            (false, _) => {
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                        .await?;
                tokio::spawn(conn);
                sender.send_request(request).await?
            }
        };
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        http_body_util::Limited::new(response.into_body(), max)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(FetchError::Body)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| FetchError::Timeout)?
}
