//! TLS for listeners (rustls via tokio-rustls, ring provider): certificates from PEM files,
//! optional or required client certificates, ALPN, reload without dropping connections, and
//! the peer identity plugins see in `on-open`.
//!
//! - [`certgen`]: `pier cert generate`, test certificates made with rcgen.
//! - [`client`]: the client side used by `pier send --tls`.
//!
//! The handshake runs inside each connection's task under a timeout, so a client that never
//! starts it occupies only its own task; failures are logged with a reason and counted.

pub mod certgen;
pub mod client;
#[cfg(test)]
mod props;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

/// How a listener does TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    /// Certificate chain (leaf first), PEM.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 RSA or SEC1 EC), PEM.
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to; enables mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: let clients without a certificate in (a presented one is still verified).
    pub client_cert_optional: bool,
    /// Application protocols offered with ALPN, in preference order.
    pub alpn: Vec<String>,
    /// Longest a handshake may take.
    pub handshake_timeout: Duration,
    /// Extra certificates chosen by the SNI name the client asks for; `cert`/`key` serve
    /// everyone else (no SNI, or a name not listed).
    pub sni: Vec<SniCert>,
}

/// A certificate served to clients asking for `name` with SNI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SniCert {
    /// The server name (case-insensitive).
    pub name: String,
    /// Its certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl std::str::FromStr for SniCert {
    type Err = String;

    /// Parses `NAME,CERT.pem,KEY.pem`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(3, ',');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), Some(cert), Some(key)) if !name.is_empty() => Ok(SniCert {
                name: name.to_ascii_lowercase(),
                cert: cert.into(),
                key: key.into(),
            }),
            _ => Err(format!("`{s}` is not NAME,CERT.pem,KEY.pem")),
        }
    }
}

/// Picks the certificate by SNI name, falling back to the listener's default.
#[derive(Debug)]
struct SniResolver {
    by_name: std::collections::HashMap<String, Arc<rustls::sign::CertifiedKey>>,
    default: Arc<rustls::sign::CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for SniResolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|name| self.by_name.get(&name.to_ascii_lowercase()));
        Some(chosen.unwrap_or(&self.default).clone())
    }
}

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<rustls::sign::CertifiedKey>> {
    let certified =
        rustls::sign::CertifiedKey::from_der(load_certs(cert)?, load_key(key)?, &provider())
            .map_err(|err| pair_error(err, cert, key))?;
    Ok(Arc::new(certified))
}

/// Explains why `cert` and `key` cannot be used together.
fn pair_error(err: rustls::Error, cert: &Path, key: &Path) -> anyhow::Error {
    match err {
        // rustls calls it `KeyMismatch`; the usual cause is a key from another
        // `pier cert generate` run, or the key of another certificate.
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => anyhow::anyhow!(
            "the private key in {} does not match the certificate in {} (it belongs to another \
             certificate)",
            key.display(),
            cert.display()
        ),
        other => anyhow::Error::new(other).context(format!(
            "{} and {} do not form a usable pair",
            cert.display(),
            key.display()
        )),
    }
}

/// What the handshake established about a client (mirrors WIT `types.tls-peer`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// SNI server name the client asked for.
    pub server_name: Option<String>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<String>,
    /// Verified client certificate's subject.
    pub client_subject: Option<String>,
    /// Its subject alternative names.
    pub client_sans: Vec<String>,
    /// Lower-case hex SHA-256 of its DER.
    pub client_fingerprint: Option<String>,
}

/// A listener's TLS state: the current acceptor (replaced on reload) and handshake counters.
pub struct TlsListener {
    options: TlsOptions,
    acceptor: RwLock<TlsAcceptor>,
    /// Handshakes that failed or timed out.
    pub failures: AtomicU64,
}

impl TlsListener {
    /// Loads and checks the certificates.
    pub fn load(options: TlsOptions) -> Result<Arc<Self>> {
        let config = server_config(&options)?;
        Ok(Arc::new(TlsListener {
            options,
            acceptor: RwLock::new(TlsAcceptor::from(Arc::new(config))),
            failures: AtomicU64::new(0),
        }))
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        self.options.handshake_timeout
    }

    /// Re-reads the certificate files. On error the old configuration stays in use; open
    /// connections are never affected either way.
    pub fn reload(&self) -> Result<()> {
        let config = server_config(&self.options)?;
        *self.acceptor.write().unwrap_or_else(|e| e.into_inner()) =
            TlsAcceptor::from(Arc::new(config));
        Ok(())
    }

    /// Counts a failed handshake.
    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a valid PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

/// Reads the private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    match PrivateKeyDer::from_pem_file(path) {
        Ok(key) => Ok(key),
        // The easy mistake is swapping the two files: say what the file holds instead.
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            let certificates = CertificateDer::pem_file_iter(path)
                .map(|items| items.filter(Result::is_ok).count())
                .unwrap_or(0);
            if certificates > 0 {
                bail!(
                    "no private key in {} (it holds a certificate)",
                    path.display()
                );
            }
            bail!("no private key in {} (no PEM key block)", path.display())
        }
        Err(err) => {
            Err(err).with_context(|| format!("cannot read a private key from {}", path.display()))
        }
    }
}

/// Roots from a CA bundle.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("{} holds an unusable CA certificate", path.display()))?;
    }
    Ok(roots)
}

fn server_config(options: &TlsOptions) -> Result<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("no TLS protocol version available")?;
    let builder = match &options.client_ca {
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let verifier = if options.client_cert_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().context("bad client CA")?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut by_name = std::collections::HashMap::new();
    for sni in &options.sni {
        by_name.insert(sni.name.clone(), certified_key(&sni.cert, &sni.key)?);
    }
    let resolver = SniResolver {
        by_name,
        default: certified_key(&options.cert, &options.key)?,
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}

/// Reads the peer identity out of an established server connection.
pub fn peer_identity(conn: &rustls::ServerConnection) -> TlsInfo {
    let mut info = TlsInfo {
        server_name: conn.server_name().map(str::to_string),
        alpn: conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        ..TlsInfo::default()
    };
    if let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) {
        info.client_fingerprint = Some(hex::encode(Sha256::digest(cert.as_ref())));
        if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) {
            info.client_subject = Some(parsed.subject().to_string());
            if let Ok(Some(san)) = parsed.subject_alternative_name() {
                info.client_sans = san
                    .value
                    .general_names
                    .iter()
                    .map(|name| match name {
                        x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                        x509_parser::extensions::GeneralName::RFC822Name(e) => e.to_string(),
                        x509_parser::extensions::GeneralName::URI(u) => u.to_string(),
                        x509_parser::extensions::GeneralName::IPAddress(ip) => ip_text(ip),
                        other => other.to_string(),
                    })
                    .collect();
            }
        }
    }
    info
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(bytes);
            std::net::Ipv6Addr::from(octets).to_string()
        }
        _ => hex::encode(bytes),
    }
}

/// A short, stable name for why a server handshake failed, for metrics and logs.
pub fn failure_reason(err: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    use std::io::ErrorKind;
    if let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        return match tls {
            // A client speaking something else: plain text, HTTP, garbage.
            E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::PeerSentOversizedRecord => {
                "not-tls"
            }
            E::NoCertificatesPresented => "no-client-certificate",
            E::InvalidCertificate(_) => "bad-client-certificate",
            // Usually the client refusing pier's certificate.
            E::AlertReceived(_) => "alert-received",
            E::PeerIncompatible(_) | E::NoApplicationProtocol => "incompatible",
            _ => "protocol-error",
        };
    }
    match err.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
            "closed-early"
        }
        _ => "io-error",
    }
}
