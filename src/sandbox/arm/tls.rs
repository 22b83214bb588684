//! A throw-away certificate authority and a server certificate for `localhost`/`127.0.0.1`,
//! generated at start, so the emulator speaks HTTPS like Azure and clients trust it through
//! the same `--azure-ca-file` mechanism production uses for private CAs.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

/// PEM-encoded CA certificate plus the server's certificate chain and key.
pub struct TlsMaterial {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

/// Errors generating certificates.
#[derive(Debug, thiserror::Error)]
#[error("cannot generate the emulator's TLS certificates: {0}")]
pub struct TlsError(#[from] rcgen::Error);

pub fn generate() -> Result<TlsMaterial, TlsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "dbx-identity-operator sandbox CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(vec!["localhost".to_owned()])?;
    server_params.subject_alt_names.push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    server_params.distinguished_name.push(DnType::CommonName, "localhost");
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        server_cert_pem: format!("{}{}", server_cert.pem(), ca_cert.pem()),
        server_key_pem: server_key.serialize_pem(),
    })
}
