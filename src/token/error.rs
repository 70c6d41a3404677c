//! Errors of the token module, split by who is at fault: [`TokenError`] for the signing side
//! (our key, certificate, request), [`VerifyError`] for a token presented to a verifier, mapped
//! to the verification step and the HRESULT a FedAuth gateway answers with.

use std::fmt;
use std::path::PathBuf;

use super::thumbprint::{describe_char, Thumbprint};

/// Why a signing identity could not be loaded or a token could not be minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// A key or certificate file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A private key file that other users may read; refused like sshd refuses host keys.
    #[error(
        "private key file {} has mode {mode:04o}: group/other must have no access (chmod 600, owned by the service user)",
        path.display()
    )]
    KeyFilePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The certificate PEM/DER could not be decoded.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The private key PEM could not be decoded or is not an RSA key ring can use.
    /// The detail never contains key material.
    #[error("private key: {0}")]
    PrivateKey(String),
    /// The private key does not belong to the certificate.
    #[error("private key does not match the certificate {thumbprint} (its public key differs)")]
    KeyCertMismatch {
        /// Thumbprint of the certificate.
        thumbprint: Thumbprint,
    },
    /// The certificate lacks something a FedAuth gateway requires of a token-signing
    /// certificate (PROTOCOLS.md §5.1): an RSA key, Key Usage digitalSignature, EKU clientAuth.
    #[error("certificate {thumbprint} cannot sign console tokens: {reason}")]
    CertUnsuitable {
        /// Thumbprint of the certificate.
        thumbprint: Thumbprint,
        /// What is missing.
        reason: String,
    },
    /// The signing certificate is not valid at the minting time; every gateway would refuse it.
    #[error("signing certificate {thumbprint} is not valid at {now_unix} (valid from {not_before} to {not_after}, unix seconds)")]
    CertNotValidAt {
        /// Thumbprint of the certificate.
        thumbprint: Thumbprint,
        /// The minting time.
        now_unix: u64,
        /// notBefore, unix seconds.
        not_before: i64,
        /// notAfter, unix seconds.
        not_after: i64,
    },
    /// The host cannot be put into a token.
    #[error("host cannot go into a token: {reason}")]
    InvalidHost {
        /// Why, naming the offending character and its 1-based position.
        reason: String,
    },
    /// TTL outside 1..=max.
    #[error("token lifetime {ttl_secs} s is outside 1..={max} s (VMM allows at most 60 minutes)")]
    Ttl {
        /// The requested lifetime.
        ttl_secs: u64,
        /// The largest accepted lifetime.
        max: u64,
    },
    /// `now + ttl` does not fit the 12-digit `ExpiresOn` field: the clock is broken.
    #[error("clock value {now_unix} puts ExpiresOn beyond 12 digits")]
    ClockOutOfRange {
        /// The `now` that was passed in.
        now_unix: u64,
    },
    /// The RSA signing operation failed.
    #[error("RSA signing failed")]
    Signing,
    /// RSA key or certificate generation failed.
    #[error("generating a signing certificate failed: {0}")]
    Generate(String),
    /// A value cannot go into an .rdp file line.
    #[error(".rdp field {field}: {reason}")]
    RdpField {
        /// The .rdp key, e.g. `pcb`.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// What is wrong in the message part `Host=…&Port=…&ExpiresOn=…` (step 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageFault {
    /// No `&Signature=` separates message and signature.
    NoSignature,
    /// Not exactly `Host=…&Port=…&ExpiresOn=…` in this order (missing, reordered, extra field,
    /// empty host).
    FieldOrder,
    /// `Port` is not 1–5 digits or above 65535.
    Port,
    /// `ExpiresOn` is not 1–12 digits.
    ExpiresOn,
}

impl MessageFault {
    fn describe(self) -> &'static str {
        match self {
            MessageFault::NoSignature => "no \"&Signature=\" field",
            MessageFault::FieldOrder => {
                "fields are not exactly Host=…&Port=…&ExpiresOn=… in this order"
            }
            MessageFault::Port => "Port is not a decimal number up to 65535",
            MessageFault::ExpiresOn => "ExpiresOn is not 1–12 decimal digits",
        }
    }
}

/// What is wrong in the signature part `1|ALG|THUMB|esc` (steps 3 and 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureFault {
    /// Not exactly four `|`-separated fields.
    FieldCount,
    /// The version is not a decimal number.
    Version,
    /// The algorithm name is empty or has characters no algorithm name has.
    AlgName,
    /// The thumbprint is not 40 hex digits.
    Thumbprint,
    /// The signature field is empty.
    Empty,
    /// The signature is not valid percent-encoding (only unreserved characters and `%XX`).
    PercentEncoding,
    /// The percent-decoded signature is not standard padded base64.
    Base64,
}

impl SignatureFault {
    fn describe(self) -> &'static str {
        match self {
            SignatureFault::FieldCount => "signature part is not version|ALG|THUMBPRINT|signature",
            SignatureFault::Version => "signature version is not a number",
            SignatureFault::AlgName => "signature algorithm name is malformed",
            SignatureFault::Thumbprint => "thumbprint is not 40 hex digits",
            SignatureFault::Empty => "signature is empty",
            SignatureFault::PercentEncoding => "signature is not valid percent-encoding",
            SignatureFault::Base64 => "signature is not standard base64",
        }
    }
}

/// `E_PROXY_COOKIE_BADPACKET`: the cookie is missing or malformed ([MS-TSGU] 2.2.6).
pub const E_PROXY_COOKIE_BADPACKET: u32 = 0x8007_59F7;
/// `E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED`: the plug-in rejected the cookie.
pub const E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED: u32 = 0x8007_59F8;
/// `E_PROXY_RAP_ACCESSDENIED`: resource authorization denied at CHANNEL_CREATE.
pub const E_PROXY_RAP_ACCESSDENIED: u32 = 0x8007_59DA;

/// Which verification step (PROTOCOLS.md §5.3) refused a token, and why.
///
/// [`VerifyError::step`] and [`VerifyError::hresult`] give what a simulated FedAuth gateway
/// answers with. `Display` reads "step N (what): detail [HRESULT_NAME 0x…]" and never contains
/// the token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// Step 1: no cookie, or only a NUL.
    EmptyCookie,
    /// Step 1: the cookie has an odd number of bytes, so it is not UTF-16.
    OddLengthUtf16 {
        /// Byte length received.
        bytes: usize,
    },
    /// Step 1: an unpaired UTF-16 surrogate.
    InvalidUtf16 {
        /// 1-based index of the offending 16-bit unit.
        unit: usize,
    },
    /// Step 1: a character outside printable ASCII (tokens contain no spaces either).
    NotPrintableAscii {
        /// The character.
        ch: char,
        /// 1-based character position.
        position: usize,
    },
    /// Step 1: longer than the cookie size cap.
    TooLong {
        /// Size in UTF-16 bytes.
        bytes: usize,
        /// The cap.
        max: usize,
    },
    /// Step 2: the signed message is malformed.
    BadMessage(MessageFault),
    /// Step 3: the signature part is malformed.
    BadSignatureField(SignatureFault),
    /// Step 3: a signature format version other than 1.
    UnsupportedVersion {
        /// The version in the token.
        version: u32,
    },
    /// Step 3: the hash algorithm is not in the verifier's allowed list.
    AlgNotAllowed {
        /// The algorithm name as it appeared.
        alg: String,
    },
    /// Step 4: the thumbprint is not among the trusted issuers.
    UntrustedIssuer {
        /// The token's thumbprint.
        thumbprint: Thumbprint,
    },
    /// Step 4: the thumbprint is trusted but no certificate with it is loaded, so the signature
    /// cannot be checked (FedAuth needs the cert in LocalMachine\My).
    IssuerCertMissing {
        /// The token's thumbprint.
        thumbprint: Thumbprint,
    },
    /// Step 5: the signature cannot be decoded.
    SignatureEncoding(SignatureFault),
    /// Step 5: the RSA signature does not verify over the message with the trusted key.
    BadSignature,
    /// Step 6: the issuer certificate is not valid now (with skew).
    CertNotValid {
        /// notBefore, unix seconds.
        not_before: i64,
        /// notAfter, unix seconds.
        not_after: i64,
        /// The verifier's clock.
        now: u64,
    },
    /// Step 7: `now > ExpiresOn + skew`.
    Expired {
        /// The token's `ExpiresOn`.
        expires_on: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// Step 7: `ExpiresOn > now + 3600 + skew`: longer-lived than VMM can mint.
    TooFarInFuture {
        /// The token's `ExpiresOn`.
        expires_on: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// Step 8: no requested resource name equals the token's `Host`.
    ResourceMismatch {
        /// The token's `Host`.
        host: String,
        /// The resource names the client asked for.
        resources: Vec<String>,
    },
    /// Step 8: the requested port differs from the token's `Port`.
    PortMismatch {
        /// The token's `Port`.
        token_port: u16,
        /// The port the client asked for.
        requested: u16,
    },
}

impl VerifyError {
    /// Verification step (1..=8) that failed, numbered as in PROTOCOLS.md §5.3.
    pub fn step(&self) -> u8 {
        match self {
            VerifyError::EmptyCookie
            | VerifyError::OddLengthUtf16 { .. }
            | VerifyError::InvalidUtf16 { .. }
            | VerifyError::NotPrintableAscii { .. }
            | VerifyError::TooLong { .. } => 1,
            VerifyError::BadMessage(_) => 2,
            VerifyError::BadSignatureField(_)
            | VerifyError::UnsupportedVersion { .. }
            | VerifyError::AlgNotAllowed { .. } => 3,
            VerifyError::UntrustedIssuer { .. } | VerifyError::IssuerCertMissing { .. } => 4,
            VerifyError::SignatureEncoding(_) | VerifyError::BadSignature => 5,
            VerifyError::CertNotValid { .. } => 6,
            VerifyError::Expired { .. } | VerifyError::TooFarInFuture { .. } => 7,
            VerifyError::ResourceMismatch { .. } | VerifyError::PortMismatch { .. } => 8,
        }
    }

    /// Short name of the step, for logs and the CLI.
    pub fn step_name(&self) -> &'static str {
        match self.step() {
            1 => "cookie",
            2 => "message",
            3 => "signature field",
            4 => "trusted issuer",
            5 => "signature",
            6 => "issuer certificate validity",
            7 => "expiry",
            _ => "resource authorization",
        }
    }

    /// HRESULT a FedAuth gateway answers with for this failure.
    pub fn hresult(&self) -> u32 {
        match self {
            // An algorithm outside the allowed list is well-formed but refused by policy.
            VerifyError::AlgNotAllowed { .. } => E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED,
            _ => match self.step() {
                1..=3 => E_PROXY_COOKIE_BADPACKET,
                4..=7 => E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED,
                _ => E_PROXY_RAP_ACCESSDENIED,
            },
        }
    }

    /// Spec name of [`VerifyError::hresult`].
    pub fn hresult_name(&self) -> &'static str {
        match self.hresult() {
            E_PROXY_COOKIE_BADPACKET => "E_PROXY_COOKIE_BADPACKET",
            E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED => {
                "E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED"
            }
            _ => "E_PROXY_RAP_ACCESSDENIED",
        }
    }

    fn detail(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::EmptyCookie => f.write_str("the cookie is empty"),
            VerifyError::OddLengthUtf16 { bytes } => {
                write!(f, "the cookie has {bytes} bytes, an odd number, so it is not UTF-16")
            }
            VerifyError::InvalidUtf16 { unit } => {
                write!(f, "UTF-16 unit {unit} is an unpaired surrogate")
            }
            VerifyError::NotPrintableAscii { ch, position } => write!(
                f,
                "{} at position {position} is not printable ASCII",
                describe_char(*ch)
            ),
            VerifyError::TooLong { bytes, max } => {
                write!(f, "the cookie has {bytes} bytes, more than {max}")
            }
            VerifyError::BadMessage(fault) => f.write_str(fault.describe()),
            VerifyError::BadSignatureField(fault) | VerifyError::SignatureEncoding(fault) => {
                f.write_str(fault.describe())
            }
            VerifyError::UnsupportedVersion { version } => {
                write!(f, "signature version {version} is not 1")
            }
            VerifyError::AlgNotAllowed { alg } => {
                write!(f, "hash algorithm {alg:?} is not allowed")
            }
            VerifyError::UntrustedIssuer { thumbprint } => {
                write!(f, "thumbprint {thumbprint} is not a trusted issuer")
            }
            VerifyError::IssuerCertMissing { thumbprint } => write!(
                f,
                "thumbprint {thumbprint} is trusted but its certificate is not loaded"
            ),
            VerifyError::BadSignature => f.write_str(
                "the RSA signature does not verify with the trusted certificate's key",
            ),
            VerifyError::CertNotValid {
                not_before,
                not_after,
                now,
            } => write!(
                f,
                "issuer certificate is valid from {not_before} to {not_after}, not at {now} (unix seconds)"
            ),
            VerifyError::Expired { expires_on, now } => write!(
                f,
                "token expired at {expires_on}, now is {now} ({} s ago; check the clocks)",
                now.saturating_sub(*expires_on)
            ),
            VerifyError::TooFarInFuture { expires_on, now } => write!(
                f,
                "token expires at {expires_on}, {} s from now {now}: longer than any VMM token lives (check the clocks)",
                expires_on.saturating_sub(*now)
            ),
            VerifyError::ResourceMismatch { host, resources } => write!(
                f,
                "token names host {host:?}, the client asked for {resources:?}"
            ),
            VerifyError::PortMismatch {
                token_port,
                requested,
            } => write!(
                f,
                "token names port {token_port}, the client asked for {requested}"
            ),
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} ({}): ", self.step(), self.step_name())?;
        self.detail(f)?;
        write!(f, " [{} 0x{:08X}]", self.hresult_name(), self.hresult())
    }
}

impl std::error::Error for VerifyError {}
