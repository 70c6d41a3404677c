//! A throw-away PKI for simulated gateways: one CA and three server certificates for the same
//! alias, a good one, an expired one and one whose names miss the alias, so the
//! `expired-cert` and `wrong-san` faults fail TLS exactly the way a real farm's renewal
//! mistakes do (the client trusts the CA; only validity or the name is wrong).

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Errors building the PKI or a TLS config from it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// rcgen refused parameters or signing.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("TLS config: {0}")]
    Tls(#[from] rustls::Error),
}

struct ServerCert {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

/// CA + good / expired / wrong-name server certificates.
pub struct SimPki {
    /// The CA certificate clients trust.
    pub ca_der: CertificateDer<'static>,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    good: ServerCert,
    expired: ServerCert,
    wrong_san: ServerCert,
}

fn leaf(
    cn: &str,
    sans: Vec<String>,
    expired: bool,
    ca: &CertifiedIssuer<'static, KeyPair>,
) -> Result<ServerCert, CertError> {
    let mut p = CertificateParams::new(sans)?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, ca)?;
    Ok(ServerCert {
        cert: cert.der().clone(),
        key: key.serialize_der(),
    })
}

fn server_config(c: &ServerCert) -> Result<Arc<rustls::ServerConfig>, CertError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.clone()));
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![c.cert.clone()], key)?;
    Ok(Arc::new(cfg))
}

impl SimPki {
    /// A CA and certificates for `alias` with `nodes` as extra SANs; the wrong-name
    /// certificate names only `wrong.invalid`.
    pub fn generate(alias: &str, nodes: &[&str]) -> Result<SimPki, CertError> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "Portico sim CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let mut sans = vec![alias.to_owned()];
        sans.extend(nodes.iter().map(|n| (*n).to_owned()));
        Ok(SimPki {
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            good: leaf(alias, sans.clone(), false, &ca)?,
            expired: leaf(alias, sans, true, &ca)?,
            wrong_san: leaf(
                "wrong.invalid",
                vec!["wrong.invalid".to_owned()],
                false,
                &ca,
            )?,
        })
    }

    /// Server config with the good certificate.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, CertError> {
        server_config(&self.good)
    }

    /// Server config with the expired certificate (valid 2020-01-01 .. 2021-01-01).
    pub fn expired_config(&self) -> Result<Arc<rustls::ServerConfig>, CertError> {
        server_config(&self.expired)
    }

    /// Server config with a certificate that does not name the alias.
    pub fn wrong_san_config(&self) -> Result<Arc<rustls::ServerConfig>, CertError> {
        server_config(&self.wrong_san)
    }

    /// A client config trusting only this CA.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, CertError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(cfg))
    }
}
