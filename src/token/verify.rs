//! Token verification as an RD Gateway with the VMM Console Connect (FedAuth) plug-in does it,
//! for the simulated gateway and `portico token verify`: the 8 steps of PROTOCOLS.md §5.3.

use ring::signature::{self, UnparsedPublicKey};

use super::codec::{
    self, AlgName, HashAlg, Padding, ParsedToken, MAX_COOKIE_BYTES, MAX_TTL_SECS, TOKEN_VERSION,
};
use super::error::VerifyError;
use super::identity::TrustedCert;
use super::thumbprint::Thumbprint;

/// Default clock skew tolerated on `ExpiresOn` and certificate validity, seconds.
pub const DEFAULT_SKEW_SECS: u64 = 300;

/// Which signature paddings a verifier accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PaddingPolicy {
    /// PKCS#1 v1.5 only.
    Pkcs1v15,
    /// PSS only.
    Pss,
    /// Either (tries PKCS#1 v1.5 first): the simulator's default, since which one the real
    /// plug-in accepts is not public (PROTOCOLS.md §5.1: the sources disagree).
    #[default]
    Either,
}

impl PaddingPolicy {
    fn paddings(self) -> &'static [Padding] {
        match self {
            PaddingPolicy::Pkcs1v15 => &[Padding::Pkcs1v15],
            PaddingPolicy::Pss => &[Padding::Pss],
            PaddingPolicy::Either => &[Padding::Pkcs1v15, Padding::Pss],
        }
    }
}

/// A trusted-issuer entry: the thumbprint the operator listed, and its certificate if loaded.
#[derive(Debug, Clone)]
struct Issuer {
    thumbprint: Thumbprint,
    cert: Option<TrustedCert>,
}

/// Checks tokens against a trusted-issuer list, an algorithm list, a padding policy and a skew.
#[derive(Debug, Clone)]
pub struct Verifier {
    trusted: Vec<Issuer>,
    allowed_algs: Vec<HashAlg>,
    padding: PaddingPolicy,
    skew_secs: u64,
}

impl Verifier {
    /// Trusts exactly these certificates, with the defaults: SHA256 only, either padding,
    /// [`DEFAULT_SKEW_SECS`].
    pub fn new(certs: impl IntoIterator<Item = TrustedCert>) -> Self {
        Verifier {
            trusted: certs
                .into_iter()
                .map(|cert| Issuer {
                    thumbprint: *cert.thumbprint(),
                    cert: Some(cert),
                })
                .collect(),
            allowed_algs: vec![HashAlg::Sha256],
            padding: PaddingPolicy::Either,
            skew_secs: DEFAULT_SKEW_SECS,
        }
    }

    /// Mirrors a FedAuth gateway's configuration: `thumbprints` is `TrustedIssuerCertificates`,
    /// `certs` the certificates installed. A listed thumbprint without a certificate fails at
    /// step 4 as [`VerifyError::IssuerCertMissing`]; an installed certificate that is not
    /// listed is not trusted.
    pub fn from_trust_list(thumbprints: &[Thumbprint], certs: &[TrustedCert]) -> Self {
        let trusted = thumbprints
            .iter()
            .map(|t| Issuer {
                thumbprint: *t,
                cert: certs.iter().find(|c| c.thumbprint() == t).cloned(),
            })
            .collect();
        Verifier {
            trusted,
            ..Self::new([])
        }
    }

    /// Sets the allowed hash algorithms (FedAuth's `AllowedHashAlgorithms`; default SHA256).
    pub fn with_allowed_algs(mut self, algs: &[HashAlg]) -> Self {
        self.allowed_algs = algs.to_vec();
        self
    }

    /// Sets the padding policy (default [`PaddingPolicy::Either`]).
    pub fn with_padding(mut self, padding: PaddingPolicy) -> Self {
        self.padding = padding;
        self
    }

    /// Sets the tolerated clock skew in seconds (default [`DEFAULT_SKEW_SECS`]).
    pub fn with_skew_secs(mut self, skew_secs: u64) -> Self {
        self.skew_secs = skew_secs;
        self
    }

    /// Thumbprints this verifier lists as trusted.
    pub fn trusted_thumbprints(&self) -> impl Iterator<Item = &Thumbprint> {
        self.trusted.iter().map(|i| &i.thumbprint)
    }

    /// Step 1 on the raw TUNNEL_CREATE PAA cookie (UTF-16LE, one optional trailing NUL), then
    /// steps 2–7 as [`Verifier::verify`].
    pub fn verify_cookie_utf16(
        &self,
        cookie: &[u8],
        now_unix: u64,
    ) -> Result<ParsedToken, VerifyError> {
        let token = decode_cookie(cookie)?;
        self.verify(&token, now_unix)
    }

    /// Steps 2–7 (and the text part of step 1) on a token string. On success the returned token
    /// has `padding` set to the padding that verified.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<ParsedToken, VerifyError> {
        // Steps 1 (text), 2, 3 (format).
        let raw = codec::parse_raw(token)?;
        // Step 3 (policy).
        if raw.version != TOKEN_VERSION {
            return Err(VerifyError::UnsupportedVersion {
                version: raw.version,
            });
        }
        let hash = match &raw.alg {
            AlgName::Known(h) if self.allowed_algs.contains(h) => *h,
            other => {
                return Err(VerifyError::AlgNotAllowed {
                    alg: other.to_string(),
                })
            }
        };
        // Step 4. Thumbprints compare as bytes, so hex case in the token does not matter.
        let issuer = self
            .trusted
            .iter()
            .find(|i| i.thumbprint == raw.thumbprint)
            .ok_or(VerifyError::UntrustedIssuer {
                thumbprint: raw.thumbprint,
            })?;
        let cert = issuer.cert.as_ref().ok_or(VerifyError::IssuerCertMissing {
            thumbprint: raw.thumbprint,
        })?;
        // Step 5.
        let sig = codec::decode_signature(raw.esc).map_err(VerifyError::SignatureEncoding)?;
        let padding = self
            .padding
            .paddings()
            .iter()
            .copied()
            .find(|p| {
                UnparsedPublicKey::new(verify_alg(*p, hash), cert.rsa_public_key())
                    .verify(raw.message.as_bytes(), &sig)
                    .is_ok()
            })
            .ok_or(VerifyError::BadSignature)?;
        // Step 6.
        if !cert.valid_at(now_unix, self.skew_secs) {
            return Err(VerifyError::CertNotValid {
                not_before: cert.not_before(),
                not_after: cert.not_after(),
                now: now_unix,
            });
        }
        // Step 7.
        if now_unix > raw.expires_on.saturating_add(self.skew_secs) {
            return Err(VerifyError::Expired {
                expires_on: raw.expires_on,
                now: now_unix,
            });
        }
        let latest = now_unix
            .saturating_add(MAX_TTL_SECS)
            .saturating_add(self.skew_secs);
        if raw.expires_on > latest {
            return Err(VerifyError::TooFarInFuture {
                expires_on: raw.expires_on,
                now: now_unix,
            });
        }
        let mut parsed = raw.into_parsed(sig);
        parsed.padding = Some(padding);
        Ok(parsed)
    }

    /// Step 8, at CHANNEL_CREATE: some requested resource name equals the token's `Host`
    /// (ASCII case-insensitive, as Windows compares host names) and the port equals `Port`.
    pub fn authorize_resource(
        &self,
        token: &ParsedToken,
        resources: &[&str],
        port: u16,
    ) -> Result<(), VerifyError> {
        if !resources
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&token.host))
        {
            return Err(VerifyError::ResourceMismatch {
                host: token.host.clone(),
                resources: resources.iter().map(|r| (*r).to_owned()).collect(),
            });
        }
        if port != token.port {
            return Err(VerifyError::PortMismatch {
                token_port: token.port,
                requested: port,
            });
        }
        Ok(())
    }
}

fn verify_alg(padding: Padding, hash: HashAlg) -> &'static signature::RsaParameters {
    match (padding, hash) {
        (Padding::Pkcs1v15, HashAlg::Sha256) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (Padding::Pkcs1v15, HashAlg::Sha512) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (Padding::Pss, HashAlg::Sha256) => &signature::RSA_PSS_2048_8192_SHA256,
        (Padding::Pss, HashAlg::Sha512) => &signature::RSA_PSS_2048_8192_SHA512,
    }
}

/// Step 1 on bytes: size cap first (before any allocation proportional to input), then
/// UTF-16LE with one optional trailing NUL (what MS-TSGU clients send, §3.5). The cap leaves
/// room for that NUL; the exact limit on the text is applied by `codec::check_text`.
fn decode_cookie(cookie: &[u8]) -> Result<String, VerifyError> {
    if cookie.len() > MAX_COOKIE_BYTES + 2 {
        return Err(VerifyError::TooLong {
            bytes: cookie.len(),
            max: MAX_COOKIE_BYTES,
        });
    }
    if cookie.len() % 2 != 0 {
        return Err(VerifyError::OddLengthUtf16 {
            bytes: cookie.len(),
        });
    }
    let mut units: Vec<u16> = cookie
        .chunks_exact(2)
        .map(|pair| match pair {
            [lo, hi] => u16::from_le_bytes([*lo, *hi]),
            _ => 0, // chunks_exact(2) yields only pairs
        })
        .collect();
    if units.last() == Some(&0) {
        units.pop();
    }
    if units.is_empty() {
        return Err(VerifyError::EmptyCookie);
    }
    let mut text = String::with_capacity(units.len());
    let mut unit = 1usize;
    for ch in char::decode_utf16(units.iter().copied()) {
        match ch {
            Ok(ch) => {
                text.push(ch);
                unit += ch.len_utf16();
            }
            Err(_) => return Err(VerifyError::InvalidUtf16 { unit }),
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn cookie_decoding() {
        assert_eq!(
            decode_cookie(&utf16("Host=a")).ok().as_deref(),
            Some("Host=a")
        );
        let mut with_nul = utf16("Host=a");
        with_nul.extend([0, 0]);
        assert_eq!(decode_cookie(&with_nul).ok().as_deref(), Some("Host=a"));
        assert_eq!(decode_cookie(&[]), Err(VerifyError::EmptyCookie));
        assert_eq!(decode_cookie(&[0, 0]), Err(VerifyError::EmptyCookie));
        assert_eq!(
            decode_cookie(&[b'H', 0, b'o']),
            Err(VerifyError::OddLengthUtf16 { bytes: 3 })
        );
        // 'a' then a lone high surrogate D800 followed by 'b'.
        assert_eq!(
            decode_cookie(&[b'a', 0, 0x00, 0xD8, b'b', 0]),
            Err(VerifyError::InvalidUtf16 { unit: 2 })
        );
        assert!(matches!(
            decode_cookie(&vec![b'a'; MAX_COOKIE_BYTES + 4]),
            Err(VerifyError::TooLong { .. })
        ));
    }
}
