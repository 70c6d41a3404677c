//! The lab's throw-away PKI: a CA and the farm certificate (CN = the alias, SANs = the alias
//! and every node name), the shape a real RD Gateway farm's certificate has.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Everything the lab's TLS parts need, in DER and PEM.
pub struct LabPki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub farm_cert_pem: String,
    pub farm_key_pem: String,
    farm_cert_der: CertificateDer<'static>,
    farm_key_der: Vec<u8>,
}

impl LabPki {
    /// A fresh CA and a farm certificate for `alias` with `nodes` as extra SANs.
    pub fn generate(alias: &str, nodes: &[String]) -> Result<LabPki, rcgen::Error> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "Portico lab CA");
        ca.distinguished_name
            .push(DnType::OrganizationName, "Portico lab");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

        let mut sans = vec![alias.to_string()];
        sans.extend(nodes.iter().cloned());
        let mut farm = CertificateParams::new(sans)?;
        farm.distinguished_name.push(DnType::CommonName, alias);
        farm.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        farm.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let farm_key = KeyPair::generate()?;
        let farm_cert = farm.signed_by(&farm_key, &ca)?;
        Ok(LabPki {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            farm_cert_pem: farm_cert.pem(),
            farm_key_pem: farm_key.serialize_pem(),
            farm_cert_der: farm_cert.der().clone(),
            farm_key_der: farm_key.serialize_der(),
        })
    }

    /// A rustls server config presenting the farm certificate.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.farm_key_der.clone()));
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![self.farm_cert_der.clone()], key)?;
        Ok(Arc::new(cfg))
    }

    /// A rustls client config trusting only the lab CA.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
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
