//! Certificates and keys: the signing identity (our key + certificate) and the trusted issuer
//! certificates a verifier checks against.
//!
//! Parsing is pure ([`SigningIdentity::from_pem`], [`TrustedCert::from_der`]). File access is
//! confined to the small helpers at the end of this file ([`SigningIdentity::load`],
//! [`TrustedCert::load`], [`GeneratedPem::write`]), which also enforce key file permissions.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{self, RsaKeyPair};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::codec::{HashAlg, Padding};
use super::error::TokenError;
use super::thumbprint::Thumbprint;

/// The parts of an X.509 certificate the token module uses, parsed once.
#[derive(Clone, PartialEq, Eq)]
struct CertFacts {
    thumbprint: Thumbprint,
    subject: String,
    not_before: i64,
    not_after: i64,
    /// PKCS#1 `RSAPublicKey` DER (the SPKI bit string), the form ring verifies with.
    rsa_public_key: Vec<u8>,
    digital_signature: bool,
    client_auth: bool,
}

impl CertFacts {
    fn from_der(der: &[u8]) -> Result<Self, TokenError> {
        let thumbprint = Thumbprint::of_der(der);
        let (rest, cert) = X509Certificate::from_der(der)
            .map_err(|e| TokenError::Certificate(format!("not a DER X.509 certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(TokenError::Certificate(format!(
                "{} bytes after the certificate",
                rest.len()
            )));
        }
        let spki = cert.public_key();
        if spki.algorithm.algorithm != OID_PKCS1_RSAENCRYPTION {
            return Err(TokenError::CertUnsuitable {
                thumbprint,
                reason: format!(
                    "its key is {}, not RSA (VMM signs tokens with RSA)",
                    spki.algorithm.algorithm
                ),
            });
        }
        let key_usage = cert
            .key_usage()
            .map_err(|e| TokenError::Certificate(format!("Key Usage extension: {e}")))?;
        let eku = cert
            .extended_key_usage()
            .map_err(|e| TokenError::Certificate(format!("Extended Key Usage extension: {e}")))?;
        let validity = cert.validity();
        Ok(CertFacts {
            thumbprint,
            subject: cert.subject().to_string(),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            rsa_public_key: spki.subject_public_key.data.to_vec(),
            // A certificate without the extension does not restrict usage (RFC 5280 4.2.1.3).
            digital_signature: key_usage.is_none_or(|ku| ku.value.digital_signature()),
            client_auth: eku.is_none_or(|eku| eku.value.client_auth || eku.value.any),
        })
    }

    /// `not_before - skew <= now <= not_after + skew`, without overflow.
    fn valid_at(&self, now: u64, skew: u64) -> bool {
        let now = i128::from(now);
        let skew = i128::from(skew);
        i128::from(self.not_before) - skew <= now && now <= i128::from(self.not_after) + skew
    }
}

/// The probe's token-signing key and certificate (never VMM's: see DESIGN.md "Security notes").
pub struct SigningIdentity {
    key: RsaKeyPair,
    cert_der: CertificateDer<'static>,
    facts: CertFacts,
    rng: SystemRandom,
}

/// Debug shows which certificate, never the key.
impl fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("thumbprint", &self.facts.thumbprint)
            .field("subject", &self.facts.subject)
            .field("not_after", &self.facts.not_after)
            .finish_non_exhaustive()
    }
}

/// PEM text of a generated identity, for the lab to write to disk (key with mode 0600, via
/// [`GeneratedPem::write`]) and for operators to import the certificate on the gateways.
pub struct GeneratedPem {
    /// The self-signed certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM. Secret.
    pub key_pem: String,
}

impl fmt::Debug for GeneratedPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedPem")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Size of generated keys: the size of the VMM doc's examples and ring's minimum.
const GENERATED_KEY_BITS: usize = 2048;

impl SigningIdentity {
    /// Builds an identity from PEM: the first certificate in `cert_pem` and an RSA private key
    /// (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`; encrypted keys are not supported).
    ///
    /// Refuses a key that does not belong to the certificate, and a certificate a FedAuth
    /// gateway would not accept as a token issuer (non-RSA, no digitalSignature, no clientAuth
    /// EKU), because either mistake makes every gateway reject every probe.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TokenError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem)
            .map_err(|e| TokenError::Certificate(format!("no PEM certificate: {e}")))?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            TokenError::PrivateKey(format!(
                "no unencrypted PEM private key ({})",
                describe_pem_error(&e)
            ))
        })?;
        Self::from_der(cert_der, &key_der)
    }

    /// Builds an identity from DER. See [`SigningIdentity::from_pem`] for the checks.
    pub fn from_der(
        cert_der: CertificateDer<'static>,
        key_der: &PrivateKeyDer<'_>,
    ) -> Result<Self, TokenError> {
        let key = match key_der {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => {
                return Err(TokenError::PrivateKey(
                    "not an RSA key (PKCS#8 or PKCS#1 expected)".into(),
                ))
            }
        }
        .map_err(|e| {
            TokenError::PrivateKey(format!("not a usable RSA key (2048–4096 bits): {e}"))
        })?;
        let facts = CertFacts::from_der(cert_der.as_ref())?;
        if ring::signature::KeyPair::public_key(&key).as_ref() != facts.rsa_public_key.as_slice() {
            return Err(TokenError::KeyCertMismatch {
                thumbprint: facts.thumbprint,
            });
        }
        let missing = match (facts.digital_signature, facts.client_auth) {
            (true, true) => None,
            (false, _) => Some("Key Usage lacks digitalSignature"),
            (true, false) => {
                Some("Extended Key Usage lacks Client Authentication (1.3.6.1.5.5.7.3.2)")
            }
        };
        if let Some(reason) = missing {
            return Err(TokenError::CertUnsuitable {
                thumbprint: facts.thumbprint,
                reason: reason.into(),
            });
        }
        Ok(SigningIdentity {
            key,
            cert_der,
            facts,
            rng: SystemRandom::new(),
        })
    }

    /// Generates a fresh 2048-bit RSA key and a self-signed certificate for it (Key Usage
    /// digitalSignature, EKU clientAuth, subject CN=`common_name`), valid from `now_unix` for
    /// `valid_days`. For `portico lab` and tests; production uses an operator-issued cert.
    ///
    /// Takes a second or so: RSA key generation searches for primes.
    pub fn generate(
        common_name: &str,
        valid_days: u32,
        now_unix: u64,
    ) -> Result<(Self, GeneratedPem), TokenError> {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};

        let gen_err =
            |what: &str, e: &dyn fmt::Display| TokenError::Generate(format!("{what}: {e}"));
        // ring cannot generate RSA keys, so the RustCrypto crate does; ring does all signing.
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, GENERATED_KEY_BITS)
            .map_err(|e| gen_err("RSA key", &e))?;
        let key_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| gen_err("PKCS#8 encoding", &e))?;
        let key_pair =
            rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256)
                .map_err(|e| gen_err("rcgen key", &e))?;

        let not_before = i64::try_from(now_unix)
            .ok()
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
            .ok_or_else(|| TokenError::Generate(format!("time {now_unix} out of range")))?;
        let not_after = not_before
            .checked_add(time::Duration::days(i64::from(valid_days)))
            .ok_or_else(|| TokenError::Generate(format!("{valid_days} days out of range")))?;

        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| gen_err("certificate parameters", &e))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .self_signed(&key_pair)
            .map_err(|e| gen_err("self-signing", &e))?;

        let pem = GeneratedPem {
            cert_pem: cert.pem(),
            key_pem: key_pem.to_string(),
        };
        let id = Self::from_pem(pem.cert_pem.as_bytes(), pem.key_pem.as_bytes())?;
        Ok((id, pem))
    }

    /// Thumbprint of the signing certificate: what goes into tokens and what operators add to
    /// the gateways' `TrustedIssuerCertificates`.
    pub fn thumbprint(&self) -> &Thumbprint {
        &self.facts.thumbprint
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The certificate's subject, RFC 4514 style (for logs and `portico check`).
    pub fn subject(&self) -> &str {
        &self.facts.subject
    }

    /// notBefore of the certificate, unix seconds.
    pub fn not_before(&self) -> i64 {
        self.facts.not_before
    }

    /// notAfter of the certificate, unix seconds (export it; alert before it passes).
    pub fn not_after(&self) -> i64 {
        self.facts.not_after
    }

    /// The certificate as a verifier trusts it, e.g. for the lab's simulated gateways.
    pub fn trusted_cert(&self) -> TrustedCert {
        TrustedCert {
            facts: self.facts.clone(),
        }
    }

    /// Strictly within notBefore..=notAfter (no skew: we control our own clock's view).
    pub(crate) fn check_valid_at(&self, now_unix: u64) -> Result<(), TokenError> {
        if self.facts.valid_at(now_unix, 0) {
            Ok(())
        } else {
            Err(TokenError::CertNotValidAt {
                thumbprint: self.facts.thumbprint,
                now_unix,
                not_before: self.facts.not_before,
                not_after: self.facts.not_after,
            })
        }
    }

    pub(crate) fn sign(
        &self,
        message: &[u8],
        padding: Padding,
        hash: HashAlg,
    ) -> Result<Vec<u8>, TokenError> {
        let alg: &'static dyn signature::RsaEncoding = match (padding, hash) {
            (Padding::Pkcs1v15, HashAlg::Sha256) => &signature::RSA_PKCS1_SHA256,
            (Padding::Pkcs1v15, HashAlg::Sha512) => &signature::RSA_PKCS1_SHA512,
            (Padding::Pss, HashAlg::Sha256) => &signature::RSA_PSS_SHA256,
            (Padding::Pss, HashAlg::Sha512) => &signature::RSA_PSS_SHA512,
        };
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(alg, &self.rng, message, &mut sig)
            .map_err(|_| TokenError::Signing)?;
        Ok(sig)
    }
}

/// A trusted issuer certificate on the verifying side (the simulator's equivalent of a cert in
/// LocalMachine\My whose thumbprint is in `TrustedIssuerCertificates`).
#[derive(Clone, PartialEq, Eq)]
pub struct TrustedCert {
    facts: CertFacts,
}

impl fmt::Debug for TrustedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedCert")
            .field("thumbprint", &self.facts.thumbprint)
            .field("subject", &self.facts.subject)
            .finish_non_exhaustive()
    }
}

impl TrustedCert {
    /// Parses a DER certificate with an RSA key. Key Usage and EKU are not required here: the
    /// verifier checks what step 6 says (validity), no more.
    pub fn from_der(der: &[u8]) -> Result<Self, TokenError> {
        Ok(TrustedCert {
            facts: CertFacts::from_der(der)?,
        })
    }

    /// Parses the first certificate of a PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TokenError> {
        let der = CertificateDer::from_pem_slice(pem)
            .map_err(|e| TokenError::Certificate(format!("no PEM certificate: {e}")))?;
        Self::from_der(der.as_ref())
    }

    /// Parses every certificate of a PEM bundle (at least one).
    pub fn all_from_pem(pem: &[u8]) -> Result<Vec<Self>, TokenError> {
        let mut out = Vec::new();
        for der in CertificateDer::pem_slice_iter(pem) {
            let der = der.map_err(|e| TokenError::Certificate(format!("bad PEM: {e}")))?;
            out.push(Self::from_der(der.as_ref())?);
        }
        if out.is_empty() {
            return Err(TokenError::Certificate("no PEM certificate found".into()));
        }
        Ok(out)
    }

    /// The certificate's thumbprint.
    pub fn thumbprint(&self) -> &Thumbprint {
        &self.facts.thumbprint
    }

    /// The certificate's subject, RFC 4514 style.
    pub fn subject(&self) -> &str {
        &self.facts.subject
    }

    /// notBefore, unix seconds.
    pub fn not_before(&self) -> i64 {
        self.facts.not_before
    }

    /// notAfter, unix seconds.
    pub fn not_after(&self) -> i64 {
        self.facts.not_after
    }

    pub(crate) fn valid_at(&self, now: u64, skew: u64) -> bool {
        self.facts.valid_at(now, skew)
    }

    pub(crate) fn rsa_public_key(&self) -> &[u8] {
        &self.facts.rsa_public_key
    }
}

/// Names the kind of PEM failure without echoing file content: the content is a private key.
fn describe_pem_error(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line",
        pem::Error::Base64Decode(_) => "bad base64",
        pem::Error::NoItemsFound => "no PRIVATE KEY or RSA PRIVATE KEY section",
        pem::Error::SectionTooLarge => "section too large",
        _ => "unreadable",
    }
}

// ---- File access: the only I/O in the token module. ----

impl SigningIdentity {
    /// Reads a PEM certificate and a PEM private key from disk. The key file must not be
    /// readable or writable by group or others (`mode & 0o077 == 0`), as sshd requires of
    /// host keys; the error names the file and its mode.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TokenError> {
        let key_pem = read_private_key_file(key)?;
        let cert_pem = read_file(cert)?;
        Self::from_pem(&cert_pem, &key_pem)
    }
}

impl TrustedCert {
    /// Reads every certificate of a PEM file (a trust bundle may hold several).
    pub fn load(path: &Path) -> Result<Vec<Self>, TokenError> {
        Self::all_from_pem(&read_file(path)?)
    }
}

impl GeneratedPem {
    /// Writes the certificate (mode 0644) and the key (mode 0600, set at creation so it is
    /// never briefly readable by others). Existing files are replaced.
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), TokenError> {
        write_file(cert, self.cert_pem.as_bytes(), 0o644)?;
        write_file(key, self.key_pem.as_bytes(), 0o600)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TokenError + '_ {
    move |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TokenError> {
    std::fs::read(path).map_err(io_err(path))
}

/// Opens first and checks the mode of the open file, so the file checked is the file read.
fn read_private_key_file(path: &Path) -> Result<Vec<u8>, TokenError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mode = file.metadata().map_err(io_err(path))?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TokenError::KeyFilePermissions {
            path: PathBuf::from(path),
            mode,
        });
    }
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(io_err(path))?;
    Ok(buf)
}

/// Writes a file that holds a secret (a key, a token, an .rdp file carrying a token) with mode
/// 0600, also tightening an existing file's mode.
pub fn write_secret_file(path: &Path, content: &[u8]) -> Result<(), TokenError> {
    write_file(path, content, 0o600)
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), TokenError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    // `mode` only applies to new files; an existing key file may have had looser bits.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_err(path))?;
    file.write_all(content).map_err(io_err(path))
}
