//! The TLS client side (`pier send --tls`, later `pier bench --tls`): trust roots from a CA file,
//! an optional client certificate for mutual TLS, an explicit server name, or `--insecure`,
//! which skips verification (for poking at test servers only).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::TlsConnector;

use super::{load_certs, load_key, load_roots, pair_error, provider};

/// How a client does TLS.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// Connect with TLS.
    #[arg(long)]
    pub tls: bool,
    /// CA certificate(s) to verify the server with (PEM).
    #[arg(long, requires = "tls")]
    pub ca: Option<PathBuf>,
    /// Client certificate for mutual TLS (PEM).
    #[arg(long, requires_all = ["tls", "key"])]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires_all = ["tls", "cert"])]
    pub key: Option<PathBuf>,
    /// Name to verify the server certificate against and send with SNI (default: the host of ADDR).
    #[arg(long, requires = "tls")]
    pub server_name: Option<String>,
    /// Do not verify the server certificate at all.
    #[arg(long, requires = "tls")]
    pub insecure: bool,
}

impl ClientTlsArgs {
    /// A connector and the server name to use for `addr`, or `None` without `--tls`.
    pub fn connector(&self, addr: &str) -> Result<Option<(TlsConnector, ServerName<'static>)>> {
        if !self.tls {
            return Ok(None);
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("no TLS protocol version available")?;
        let builder = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        } else {
            let Some(ca) = &self.ca else {
                bail!("--tls needs --ca CA.pem to verify the server (or --insecure)");
            };
            builder.with_root_certificates(load_roots(ca)?)
        };
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|err| pair_error(err, cert, key))?,
            _ => builder.with_no_client_auth(),
        };
        let host = self.server_name.clone().unwrap_or_else(|| host_of(addr));
        let name = ServerName::try_from(host.clone())
            .with_context(|| format!("`{host}` is not a valid TLS server name"))?;
        Ok(Some((TlsConnector::from(Arc::new(config)), name)))
    }
}

/// The host part of `host:port` / `[v6]:port`.
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// Accepts any server certificate (`--insecure`).
#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
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
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
