//! Certificate thumbprints: the SHA-1 of a certificate's DER, as .NET's
//! `X509Certificate2.Thumbprint` prints it (40 upper-case hex digits, no separators).
//!
//! Parsing is where operators get hurt: the Windows certificate dialog shows the thumbprint as
//! space-separated pairs and, when copied, often puts an invisible U+200E LEFT-TO-RIGHT MARK in
//! front. A gateway then silently rejects every token. So [`Thumbprint::from_str`] accepts the
//! visible separators a person sees (ASCII space and `:`) and refuses every other non-hex
//! character with an error that names it as `U+XXXX` and gives its 1-based position.

use std::fmt;
use std::str::FromStr;

/// Number of bytes in a SHA-1 digest.
const LEN: usize = 20;

/// SHA-1 thumbprint of a DER certificate.
///
/// `Display` prints 40 upper-case hex digits, the form the token and FedAuth's
/// `TrustedIssuerCertificates` use.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Thumbprint([u8; LEN]);

impl Thumbprint {
    /// Thumbprint of a DER-encoded certificate (SHA-1 over the whole DER, as Windows computes it).
    pub fn of_der(cert_der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der);
        let mut out = [0u8; LEN];
        // SHA-1 always yields 20 bytes; copying through an iterator avoids a panicking slice copy.
        for (o, b) in out.iter_mut().zip(digest.as_ref()) {
            *o = *b;
        }
        Thumbprint(out)
    }

    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; LEN]) -> Self {
        Thumbprint(bytes)
    }

    /// The raw 20 digest bytes.
    pub const fn as_bytes(&self) -> &[u8; LEN] {
        &self.0
    }

    /// Parses the exact token form: 40 hex digits, nothing else (case-insensitive, as FedAuth
    /// compares). Separators are not allowed inside a token.
    pub(crate) fn parse_strict(s: &str) -> Result<Self, ThumbprintError> {
        parse(s, false)
    }
}

impl fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thumbprint({self})")
    }
}

/// Accepts 40 hex digits in either case. ASCII spaces and colons are ignored so that the
/// Windows dialog's "a1 b2 c3 …" and OpenSSL's "A1:B2:C3:…" paste cleanly; they carry no
/// meaning, so accepting them cannot change which certificate is named. Any other character,
/// above all the invisible U+200E, U+200F, U+FEFF and U+200B, is an error naming it.
impl FromStr for Thumbprint {
    type Err = ThumbprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s, true)
    }
}

fn parse(s: &str, allow_separators: bool) -> Result<Thumbprint, ThumbprintError> {
    let mut out = [0u8; LEN];
    let mut digits = 0usize;
    for (index, ch) in s.chars().enumerate() {
        if allow_separators && (ch == ' ' || ch == ':') {
            continue;
        }
        let Some(value) = ch.to_digit(16) else {
            return Err(ThumbprintError::BadCharacter {
                ch,
                position: index + 1,
            });
        };
        if let Some(byte) = out.get_mut(digits / 2) {
            // to_digit(16) is < 16, so the cast cannot truncate.
            *byte = (*byte << 4) | value as u8;
        }
        digits += 1;
    }
    if digits != 2 * LEN {
        return Err(ThumbprintError::WrongLength { digits });
    }
    Ok(Thumbprint(out))
}

/// Why a thumbprint string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ThumbprintError {
    /// A character that is neither a hex digit nor an accepted separator. `position` counts
    /// characters (not bytes) from 1, so it matches what an editor shows.
    #[error("{} at position {position} is not a hex digit{}", describe_char(*ch), hint(*ch))]
    BadCharacter {
        /// The offending character.
        ch: char,
        /// 1-based character position in the input.
        position: usize,
    },
    /// The input did not hold exactly 40 hex digits.
    #[error("a thumbprint has 40 hex digits (SHA-1), found {digits}")]
    WrongLength {
        /// Number of hex digits found.
        digits: usize,
    },
}

/// `U+200E (LEFT-TO-RIGHT MARK, invisible)` or `'g' (U+0067)`: invisible characters get a name
/// because printing them shows nothing.
pub(crate) fn describe_char(ch: char) -> String {
    let code = format!("U+{:04X}", u32::from(ch));
    match invisible_name(ch) {
        Some(name) => format!("character {code} ({name}, invisible)"),
        None if ch.is_control() || ch.is_whitespace() => format!("character {code}"),
        None => format!("character {ch:?} ({code})"),
    }
}

fn hint(ch: char) -> &'static str {
    if invisible_name(ch).is_some() {
        "; the Windows certificate dialog adds such a mark when the thumbprint is copied: retype it or delete the character"
    } else {
        ""
    }
}

/// The invisible format characters that copy/paste from Windows dialogs and web pages brings.
fn invisible_name(ch: char) -> Option<&'static str> {
    Some(match ch {
        '\u{200B}' => "ZERO WIDTH SPACE",
        '\u{200C}' => "ZERO WIDTH NON-JOINER",
        '\u{200D}' => "ZERO WIDTH JOINER",
        '\u{200E}' => "LEFT-TO-RIGHT MARK",
        '\u{200F}' => "RIGHT-TO-LEFT MARK",
        '\u{202A}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202B}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202C}' => "POP DIRECTIONAL FORMATTING",
        '\u{202D}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{2060}' => "WORD JOINER",
        '\u{FEFF}' => "ZERO WIDTH NO-BREAK SPACE / BYTE ORDER MARK",
        '\u{00A0}' => "NO-BREAK SPACE",
        '\u{00AD}' => "SOFT HYPHEN",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "A1B2C3D4E5F60718293A4B5C6D7E8F9011223344";

    #[test]
    fn round_trips_upper_case() {
        let t: Thumbprint = HEX.parse().expect("valid");
        assert_eq!(t.to_string(), HEX);
        let lower: Thumbprint = HEX.to_ascii_lowercase().parse().expect("valid");
        assert_eq!(lower, t);
    }

    #[test]
    fn left_to_right_mark_in_front_is_named_with_position() {
        let err = format!("\u{200E}{HEX}").parse::<Thumbprint>().unwrap_err();
        assert_eq!(
            err,
            ThumbprintError::BadCharacter {
                ch: '\u{200E}',
                position: 1
            }
        );
        let text = err.to_string();
        assert!(text.contains("U+200E"), "{text}");
        assert!(text.contains("position 1"), "{text}");
        assert!(text.contains("LEFT-TO-RIGHT MARK"), "{text}");
    }

    #[test]
    fn windows_dialog_and_openssl_separators_are_accepted() {
        let spaced = "a1 b2 c3 d4 e5 f6 07 18 29 3a 4b 5c 6d 7e 8f 90 11 22 33 44";
        let colons = "A1:B2:C3:D4:E5:F6:07:18:29:3A:4B:5C:6D:7E:8F:90:11:22:33:44";
        assert_eq!(
            spaced.parse::<Thumbprint>().expect("spaced").to_string(),
            HEX
        );
        assert_eq!(
            colons.parse::<Thumbprint>().expect("colons").to_string(),
            HEX
        );
    }

    #[test]
    fn strict_form_refuses_separators() {
        let spaced = "a1 b2 c3 d4 e5 f6 07 18 29 3a 4b 5c 6d 7e 8f 90 11 22 33 44";
        assert!(matches!(
            Thumbprint::parse_strict(spaced),
            Err(ThumbprintError::BadCharacter {
                ch: ' ',
                position: 3
            })
        ));
    }

    #[test]
    fn other_characters_and_lengths_are_refused() {
        let err = format!("{}g", &HEX[..39])
            .parse::<Thumbprint>()
            .unwrap_err();
        assert!(err.to_string().contains("U+0067"), "{err}");
        assert!(err.to_string().contains("position 40"), "{err}");
        // Tabs and no-break spaces are not separators: only what the dialog visibly shows is.
        assert!(matches!(
            format!("\t{HEX}").parse::<Thumbprint>(),
            Err(ThumbprintError::BadCharacter {
                ch: '\t',
                position: 1
            })
        ));
        assert_eq!(
            HEX[..38].parse::<Thumbprint>(),
            Err(ThumbprintError::WrongLength { digits: 38 })
        );
        assert_eq!(
            format!("{HEX}00").parse::<Thumbprint>(),
            Err(ThumbprintError::WrongLength { digits: 42 })
        );
        // Position counts characters, not bytes: a multi-byte character before still counts 1.
        assert!(matches!(
            "\u{200E}\u{200E}".parse::<Thumbprint>(),
            Err(ThumbprintError::BadCharacter { position: 1, .. })
        ));
    }

    #[test]
    fn of_der_is_sha1() {
        // SHA-1("abc") = A9993E36 4706816A BA3E2571 7850C26C 9CD0D89D (FIPS 180-1 example).
        assert_eq!(
            Thumbprint::of_der(b"abc").to_string(),
            "A9993E364706816ABA3E25717850C26C9CD0D89D"
        );
    }
}
