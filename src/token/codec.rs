//! The token text itself: build (PROTOCOLS.md §5.3 steps 1–4), parse (verification steps 1–3
//! as far as they concern format), percent-encoding, and the redacted form for logs.
//!
//! Everything here is pure and works on ASCII only: step 1 rejects any other byte before the
//! fields are split, so byte offsets are always character boundaries.

use std::fmt;

use base64::Engine as _;

use super::error::{MessageFault, SignatureFault, TokenError, VerifyError};
use super::identity::SigningIdentity;
use super::thumbprint::Thumbprint;

/// Longest token lifetime [`mint`] accepts: VMM's `-VMConnectTimeToLiveInMinutes` tops out at
/// 60 minutes (PROTOCOLS.md §5.1), and a gateway refuses anything further out (step 7).
pub const MAX_TTL_SECS: u64 = 3600;

/// Default probe token lifetime (PROTOCOLS.md §5.3 step 1): long enough for a slow handshake,
/// short enough that a leaked probe token is soon useless.
pub const DEFAULT_TTL_SECS: u64 = 120;

/// Largest cookie a verifier reads, in bytes of UTF-16 (step 1). A 2048-bit token is ~480
/// characters (~960 bytes); the cap bounds what an unauthenticated peer makes us decode.
pub const MAX_COOKIE_BYTES: usize = 8 * 1024;

/// The only token version that exists (`Signature=1|…`).
pub const TOKEN_VERSION: u32 = 1;

/// Separator between the signed message and the signature part. A verifier splits at its
/// **last** occurrence, so a `Host` containing this text cannot move the boundary.
const SIGNATURE_MARKER: &str = "&Signature=";

/// The `ExpiresOn` field holds at most 12 digits (step 2), so `now + ttl` must stay below this.
const MAX_EXPIRES_ON: u64 = 999_999_999_999;

/// RSA signature padding. VMM signs through a CAPI provider, which cannot do PSS, so PKCS#1 v1.5
/// is the default; DevTest Labs' second token factory uses PSS (PROTOCOLS.md §5.1: the sources disagree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Padding {
    /// RSASSA-PKCS1-v1_5.
    #[default]
    Pkcs1v15,
    /// RSASSA-PSS with MGF1 over the same hash and a salt as long as the digest (.NET's choice).
    Pss,
}

impl Padding {
    /// Config/CLI spelling: `pkcs1v15` or `pss`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Padding::Pkcs1v15 => "pkcs1v15",
            Padding::Pss => "pss",
        }
    }
}

impl fmt::Display for Padding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Hash algorithm of the signature, named in the token (`1|SHA256|…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HashAlg {
    /// SHA-256: what VMM generates.
    #[default]
    Sha256,
    /// SHA-512: accepted by Hyper-V when `AllowedHashAlgorithms` is empty.
    Sha512,
}

impl HashAlg {
    /// Name on the wire: `SHA256` or `SHA512`.
    pub const fn wire_name(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "SHA256",
            HashAlg::Sha512 => "SHA512",
        }
    }

    /// Inverse of [`HashAlg::wire_name`]. Exact match: the token format is upper case.
    pub fn from_wire_name(name: &str) -> Option<Self> {
        match name {
            "SHA256" => Some(HashAlg::Sha256),
            "SHA512" => Some(HashAlg::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire_name())
    }
}

/// The `ALG` field of a parsed token. Unknown names are kept, so a verifier can say which
/// algorithm it refused (`MD5`) rather than only that the token is bad.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AlgName {
    /// `SHA256` or `SHA512`.
    Known(HashAlg),
    /// Any other name, as it appeared.
    Unknown(String),
}

impl fmt::Display for AlgName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlgName::Known(alg) => f.write_str(alg.wire_name()),
            AlgName::Unknown(name) => f.write_str(name),
        }
    }
}

/// What to put in a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MintRequest<'a> {
    /// Hyper-V host identity as VMM would write it (FQDN by default; an IPv6 literal without
    /// brackets). Printable ASCII without `&` or `=`.
    pub host: &'a str,
    /// VMConnect port, normally 2179.
    pub port: u16,
    /// Lifetime in seconds, 1..=[`MAX_TTL_SECS`].
    pub ttl_secs: u64,
    /// Signature padding.
    pub padding: Padding,
    /// Signature hash.
    pub hash: HashAlg,
}

impl<'a> MintRequest<'a> {
    /// A request with the probe defaults: port 2179, [`DEFAULT_TTL_SECS`], PKCS#1 v1.5, SHA-256.
    pub fn new(host: &'a str) -> Self {
        MintRequest {
            host,
            port: 2179,
            ttl_secs: DEFAULT_TTL_SECS,
            padding: Padding::Pkcs1v15,
            hash: HashAlg::Sha256,
        }
    }
}

/// Signs a token exactly as VMM / DevTest Labs do (PROTOCOLS.md §5.3):
/// `Host=<host>&Port=<port>&ExpiresOn=<now+ttl>&Signature=1|<ALG>|<THUMB>|<percent(base64(sig))>`.
///
/// Refuses (before signing) a host that a verifier would split differently (`&`, `=`), anything
/// but printable ASCII, a TTL of 0 or above [`MAX_TTL_SECS`], and a signing certificate that is
/// not valid at `now_unix`: every gateway would reject such a token, and saying so here is
/// clearer than a farm-wide `token-rejected`.
pub fn mint(
    id: &SigningIdentity,
    req: &MintRequest<'_>,
    now_unix: u64,
) -> Result<String, TokenError> {
    check_host(req.host)?;
    if req.ttl_secs == 0 || req.ttl_secs > MAX_TTL_SECS {
        return Err(TokenError::Ttl {
            ttl_secs: req.ttl_secs,
            max: MAX_TTL_SECS,
        });
    }
    let expires_on = now_unix
        .checked_add(req.ttl_secs)
        .filter(|e| *e <= MAX_EXPIRES_ON)
        .ok_or(TokenError::ClockOutOfRange { now_unix })?;
    id.check_valid_at(now_unix)?;

    let message = format!(
        "Host={}&Port={}&ExpiresOn={}",
        req.host, req.port, expires_on
    );
    let signature = id.sign(message.as_bytes(), req.padding, req.hash)?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(signature);
    Ok(format!(
        "{message}{SIGNATURE_MARKER}{TOKEN_VERSION}|{}|{}|{}",
        req.hash.wire_name(),
        id.thumbprint(),
        percent_encode(&b64)
    ))
}

fn check_host(host: &str) -> Result<(), TokenError> {
    if host.is_empty() {
        return Err(TokenError::InvalidHost {
            reason: "it is empty".into(),
        });
    }
    for (index, ch) in host.chars().enumerate() {
        let reason = match ch {
            '&' | '=' => format!(
                "'{ch}' at position {} would split the token's fields differently",
                index + 1
            ),
            c if !is_token_char(c) => format!(
                "{} at position {} is not printable ASCII",
                super::thumbprint::describe_char(c),
                index + 1
            ),
            _ => continue,
        };
        return Err(TokenError::InvalidHost { reason });
    }
    Ok(())
}

/// Characters a token may contain at all (step 1): printable ASCII without space. Tokens never
/// contain spaces or control characters, and refusing them keeps logs and .rdp lines clean.
fn is_token_char(ch: char) -> bool {
    ch.is_ascii_graphic()
}

/// RFC 3986 unreserved characters, the ones .NET's `Uri.EscapeDataString` leaves alone.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-encodes like `Uri.EscapeDataString`: unreserved bytes kept, all others `%XX` with
/// upper-case hex (so base64's `+ / =` become `%2B %2F %3D`).
pub fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() + s.len() / 2);
    for &b in s.as_bytes() {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0F)]));
        }
    }
    out
}

/// Inverse of [`percent_encode`]. Strict: only unreserved characters and `%XX` (either case),
/// because a well-formed token has nothing else there.
fn percent_decode(s: &str) -> Result<Vec<u8>, SignatureFault> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| char::from(*c).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|c| char::from(*c).to_digit(16));
            match (hi, lo) {
                // Both digits are < 16, so the byte cannot overflow.
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(SignatureFault::PercentEncoding),
            }
            i += 3;
        } else if is_unreserved(b) {
            out.push(b);
            i += 1;
        } else {
            return Err(SignatureFault::PercentEncoding);
        }
    }
    Ok(out)
}

/// Decodes the signature part's last field: percent-decoding, then standard base64 with padding.
pub(crate) fn decode_signature(esc: &str) -> Result<Vec<u8>, SignatureFault> {
    let b64 = percent_decode(esc)?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| SignatureFault::Base64)
}

/// A token taken apart but not verified: what logs, `portico token verify` and a verifier need.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedToken {
    /// `Host` field (the Hyper-V host identity).
    pub host: String,
    /// `Port` field.
    pub port: u16,
    /// `ExpiresOn` field, unix seconds UTC.
    pub expires_on: u64,
    /// Signature format version (only 1 exists; a verifier refuses others at step 3).
    pub version: u32,
    /// Hash algorithm named in the token.
    pub alg: AlgName,
    /// Thumbprint of the certificate the token claims was used to sign it.
    pub thumbprint: Thumbprint,
    /// Decoded signature bytes.
    pub signature: Vec<u8>,
    /// Padding that verified the signature; `None` from [`parse`], set by a verifier.
    pub padding: Option<Padding>,
    /// The signed text `Host=…&Port=…&ExpiresOn=…`.
    pub(crate) message: String,
}

impl ParsedToken {
    /// The signed message `Host=…&Port=…&ExpiresOn=…` (not secret: it carries no signature).
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Debug leaves out the signature: together with the message it would be the whole credential.
impl fmt::Debug for ParsedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedToken")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("expires_on", &self.expires_on)
            .field("version", &self.version)
            .field("alg", &self.alg)
            .field("thumbprint", &self.thumbprint)
            .field("signature_len", &self.signature.len())
            .field("padding", &self.padding)
            .finish()
    }
}

/// The fields of a token with the signature still encoded, borrowed from the input. Verifying
/// works on this so that steps 3 (policy) and 4 run before step 5 decodes the signature.
pub(crate) struct RawToken<'a> {
    pub(crate) message: &'a str,
    pub(crate) host: &'a str,
    pub(crate) port: u16,
    pub(crate) expires_on: u64,
    pub(crate) version: u32,
    pub(crate) alg: AlgName,
    pub(crate) thumbprint: Thumbprint,
    pub(crate) esc: &'a str,
}

impl RawToken<'_> {
    pub(crate) fn into_parsed(self, signature: Vec<u8>) -> ParsedToken {
        ParsedToken {
            host: self.host.to_owned(),
            port: self.port,
            expires_on: self.expires_on,
            version: self.version,
            alg: self.alg,
            thumbprint: self.thumbprint,
            signature,
            padding: None,
            message: self.message.to_owned(),
        }
    }
}

/// Parses a token (steps 1–3 format checks and the step 5 signature decoding) without
/// checking any policy or signature. Never panics, whatever the input.
pub fn parse(token: &str) -> Result<ParsedToken, VerifyError> {
    let raw = parse_raw(token)?;
    let signature = decode_signature(raw.esc).map_err(VerifyError::SignatureEncoding)?;
    Ok(raw.into_parsed(signature))
}

/// Step 1 on text (length, printable ASCII), then the format of steps 2 and 3.
pub(crate) fn parse_raw(token: &str) -> Result<RawToken<'_>, VerifyError> {
    check_text(token)?;
    let (message, sig_part) = token
        .rsplit_once(SIGNATURE_MARKER)
        .ok_or(VerifyError::BadMessage(MessageFault::NoSignature))?;
    let (host, port, expires_on) = parse_message(message)?;

    let mut fields = sig_part.split('|');
    let (Some(version), Some(alg), Some(thumb), Some(esc), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(VerifyError::BadSignatureField(SignatureFault::FieldCount));
    };
    let version = parse_decimal(version, 9)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(VerifyError::BadSignatureField(SignatureFault::Version))?;
    if alg.is_empty() || !alg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(VerifyError::BadSignatureField(SignatureFault::AlgName));
    }
    let alg = match HashAlg::from_wire_name(alg) {
        Some(known) => AlgName::Known(known),
        None => AlgName::Unknown(alg.to_owned()),
    };
    let thumbprint = Thumbprint::parse_strict(thumb)
        .map_err(|_| VerifyError::BadSignatureField(SignatureFault::Thumbprint))?;
    if esc.is_empty() {
        return Err(VerifyError::BadSignatureField(SignatureFault::Empty));
    }
    Ok(RawToken {
        message,
        host,
        port,
        expires_on,
        version,
        alg,
        thumbprint,
        esc,
    })
}

/// Step 1 checks that apply to text however it arrived.
pub(crate) fn check_text(token: &str) -> Result<(), VerifyError> {
    if token.is_empty() {
        return Err(VerifyError::EmptyCookie);
    }
    // Measured as UTF-16 bytes, the unit the cookie travels in; for ASCII that is 2 × len.
    let utf16_bytes = token.len().saturating_mul(2);
    if utf16_bytes > MAX_COOKIE_BYTES {
        return Err(VerifyError::TooLong {
            bytes: utf16_bytes,
            max: MAX_COOKIE_BYTES,
        });
    }
    if let Some((index, ch)) = token.chars().enumerate().find(|(_, c)| !is_token_char(*c)) {
        return Err(VerifyError::NotPrintableAscii {
            ch,
            position: index + 1,
        });
    }
    Ok(())
}

/// Step 2: `^Host=[^&]+&Port=\d{1,5}&ExpiresOn=\d{1,12}$`, in this order and nothing else.
fn parse_message(message: &str) -> Result<(&str, u16, u64), VerifyError> {
    let bad = |fault| VerifyError::BadMessage(fault);
    let rest = message
        .strip_prefix("Host=")
        .ok_or(bad(MessageFault::FieldOrder))?;
    let (host, rest) = rest
        .split_once("&Port=")
        .ok_or(bad(MessageFault::FieldOrder))?;
    if host.is_empty() || host.contains('&') {
        return Err(bad(MessageFault::FieldOrder));
    }
    let (port, expires) = rest
        .split_once("&ExpiresOn=")
        .ok_or(bad(MessageFault::FieldOrder))?;
    let port = parse_decimal(port, 5)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or(bad(MessageFault::Port))?;
    let expires_on = parse_decimal(expires, 12).ok_or(bad(MessageFault::ExpiresOn))?;
    Ok((host, port, expires_on))
}

/// `\d{1,max_digits}` as a number; `None` for anything else (sign, space, empty, too long).
fn parse_decimal(s: &str, max_digits: usize) -> Option<u64> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // At most 12 ASCII digits: always fits in u64.
    s.parse().ok()
}

/// How many characters of a token [`redact`] shows at most: enough to recognise host and port
/// in a log line, never the signature.
const REDACT_PREFIX_CHARS: usize = 24;

/// The loggable form of a token: a short prefix (cut before the signature), its length and its
/// `ExpiresOn` if one can be read. Tokens are bearer credentials (DESIGN.md "Security notes"),
/// so nothing that would let a reader replay one is shown. Non-printable characters in the
/// prefix are escaped, since the input may come from a peer.
pub fn redact(token: &str) -> String {
    let head_end = token.find(SIGNATURE_MARKER).unwrap_or(token.len());
    let mut prefix = String::new();
    let head = token.get(..head_end).unwrap_or("");
    for ch in head.chars().take(REDACT_PREFIX_CHARS) {
        if is_token_char(ch) {
            prefix.push(ch);
        } else {
            prefix.push_str(&format!("\\u{{{:04X}}}", u32::from(ch)));
        }
    }
    let total = token.chars().count();
    let expiry = token
        .get(..head_end)
        .and_then(|head| head.rsplit_once("&ExpiresOn="))
        .and_then(|(_, digits)| parse_decimal(digits, 12));
    let expiry = match expiry {
        Some(e) => format!("ExpiresOn={e}"),
        None => "no ExpiresOn".to_owned(),
    };
    format!("{prefix}… ({total} chars, {expiry})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_matches_escape_data_string() {
        assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(percent_encode("a+b/c=="), "a%2Bb%2Fc%3D%3D");
        assert_eq!(percent_encode("|&% "), "%7C%26%25%20");
        assert_eq!(
            percent_decode("a%2Bb%2fc%3D").ok(),
            Some(b"a+b/c=".to_vec())
        );
        assert_eq!(percent_decode("a+b"), Err(SignatureFault::PercentEncoding));
        assert_eq!(percent_decode("%2"), Err(SignatureFault::PercentEncoding));
        assert_eq!(percent_decode("%G0"), Err(SignatureFault::PercentEncoding));
    }

    #[test]
    fn message_grammar() {
        assert_eq!(
            parse_message("Host=h&Port=2179&ExpiresOn=1700000000").ok(),
            Some(("h", 2179, 1_700_000_000))
        );
        for bad in [
            "Host=&Port=1&ExpiresOn=1",
            "Port=1&Host=h&ExpiresOn=1",
            "Host=h&ExpiresOn=1&Port=1",
            "Host=h&Port=1&ExpiresOn=1&X=1",
            "Host=h&Port=123456&ExpiresOn=1",
            "Host=h&Port=65536&ExpiresOn=1",
            "Host=h&Port=+1&ExpiresOn=1",
            "Host=h&Port=1&ExpiresOn=1234567890123",
            "Host=h&Port=1&ExpiresOn=",
            "host=h&Port=1&ExpiresOn=1",
        ] {
            assert!(parse_message(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redact_never_shows_the_signature() {
        let token =
            "Host=hv01.lab.test&Port=2179&ExpiresOn=1700000060&Signature=1|SHA256|AB|sig%2B";
        let r = redact(token);
        assert!(r.starts_with("Host=hv01.lab.test&Port="), "{r}");
        assert!(r.contains("ExpiresOn=1700000060"), "{r}");
        assert!(!r.contains("Signature"), "{r}");
        assert!(!r.contains("sig"), "{r}");
        let short = redact("Host=h&Signature=secret");
        assert!(!short.contains("secret"), "{short}");
        assert!(redact("\u{200E}x\n").contains("\\u{200E}"));
        assert!(redact("").contains("0 chars"));
    }
}
