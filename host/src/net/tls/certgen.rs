//! `pier cert generate`: a test CA, a server certificate for chosen hosts (DNS and IP SANs, so
//! clients that check `127.0.0.1` or `localhost` accept it) and a client certificate for mutual
//! TLS, all signed by that CA, written as PEM files with self-explanatory names. Replaces the
//! six openssl commands kn-sock's guide asks for.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// The files written, for printing.
pub struct Generated {
    /// CA certificate.
    pub ca_cert: PathBuf,
    /// CA key (keep private; only needed to issue more certificates).
    pub ca_key: PathBuf,
    /// Server certificate.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate.
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Writes the certificates for `hosts` valid for `days` into `out`.
pub fn generate(out: &Path, hosts: &[String], days: u32) -> Result<Generated> {
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pier test CA");
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "pier");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca_params, days);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut server_params = CertificateParams::new(Vec::<String>::new())?;
    server_params.distinguished_name.push(
        DnType::CommonName,
        hosts.first().map_or("localhost", String::as_str),
    );
    server_params.subject_alt_names = hosts
        .iter()
        .map(|h| match h.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(h.as_str().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut server_params, days);
    let server_key = KeyPair::generate()?;
    let server_cert = server_params.signed_by(&server_key, &ca)?;

    let mut client_params = CertificateParams::new(vec!["client.pier.test".to_string()])?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "pier test client");
    client_params
        .distinguished_name
        .push(DnType::OrganizationName, "pier");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut client_params, days);
    let client_key = KeyPair::generate()?;
    let client_cert = client_params.signed_by(&client_key, &ca)?;

    let files = Generated {
        ca_cert: out.join("ca.pem"),
        ca_key: out.join("ca-key.pem"),
        server_cert: out.join("server.pem"),
        server_key: out.join("server-key.pem"),
        client_cert: out.join("client.pem"),
        client_key: out.join("client-key.pem"),
    };
    write(&files.ca_cert, &ca.pem(), false)?;
    write(&files.ca_key, &ca_key_pem(&ca), true)?;
    write(&files.server_cert, &server_cert.pem(), false)?;
    write(&files.server_key, &server_key.serialize_pem(), true)?;
    write(&files.client_cert, &client_cert.pem(), false)?;
    write(&files.client_key, &client_key.serialize_pem(), true)?;
    Ok(files)
}

fn ca_key_pem(ca: &CertifiedIssuer<'_, KeyPair>) -> String {
    ca.key().serialize_pem()
}

fn write(path: &Path, contents: &str, private: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
