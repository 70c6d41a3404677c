//! UTF-16LE text as MS-TSGU carries it (HTTP_UNICODE_STRING, [MS-TSGU] 2.2.10.22).
//!
//! The framing layer keeps the bytes exactly as sent ([`Utf16Text`]) and never judges them, so a
//! packet with odd text still frames and can be ignored or answered. Decoding into a Rust
//! [`String`] is a separate, strict step: odd byte counts and lone surrogates are errors, and
//! exactly one trailing U+0000 is stripped (FreeRDP, IronRDP and mstsc-compatible peers include
//! the terminator in `cbLen`, PROTOCOLS.md §3.1).

use std::fmt;

/// Why UTF-16LE bytes could not be decoded strictly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    /// The byte count is odd, so the last code unit is cut in half.
    #[error("odd UTF-16 byte length {len}")]
    OddLength {
        /// The byte count.
        len: usize,
    },
    /// A high surrogate without a following low surrogate, or a low surrogate on its own.
    #[error("lone UTF-16 surrogate at byte offset {offset}")]
    LoneSurrogate {
        /// Byte offset of the offending code unit.
        offset: usize,
    },
}

/// Encodes `s` as UTF-16LE followed by a U+0000 terminator (the form every known client sends).
pub fn encode_utf16z(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 * (s.len() + 1));
    for unit in s.encode_utf16().chain(std::iter::once(0)) {
        out.extend_from_slice(&unit.to_le_bytes());
    }
    out
}

/// Decodes UTF-16LE strictly, stripping exactly one trailing U+0000 if present.
pub fn decode_utf16z(bytes: &[u8]) -> Result<String, TextError> {
    if bytes.len() % 2 != 0 {
        return Err(TextError::OddLength { len: bytes.len() });
    }
    let units = bytes.chunks_exact(2).map(|pair| {
        u16::from_le_bytes([
            pair.first().copied().unwrap_or(0),
            pair.last().copied().unwrap_or(0),
        ])
    });
    let mut out = String::with_capacity(bytes.len() / 2);
    let mut offset = 0usize;
    for ch in char::decode_utf16(units) {
        match ch {
            Ok(c) => {
                out.push(c);
                offset += 2 * c.len_utf16();
            }
            Err(_) => return Err(TextError::LoneSurrogate { offset }),
        }
    }
    if out.ends_with('\0') {
        out.pop();
    }
    Ok(out)
}

/// UTF-16LE text exactly as it appears on the wire (normally including the NUL terminator).
#[derive(Clone, PartialEq, Eq, Default, Hash)]
pub struct Utf16Text(Vec<u8>);

impl Utf16Text {
    /// `s` as UTF-16LE + NUL.
    pub fn new(s: &str) -> Self {
        Self(encode_utf16z(s))
    }

    /// Wraps bytes received or to be sent verbatim (no terminator is added).
    pub fn from_wire(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes as sent on the wire.
    pub fn as_wire(&self) -> &[u8] {
        &self.0
    }

    /// The wire bytes, by value.
    pub fn into_wire(self) -> Vec<u8> {
        self.0
    }

    /// Strict decode; see [`decode_utf16z`].
    pub fn decode(&self) -> Result<String, TextError> {
        decode_utf16z(&self.0)
    }

    /// Lossy decode for logs: invalid code units become U+FFFD, one trailing NUL is stripped, an
    /// odd final byte is dropped.
    pub fn to_string_lossy(&self) -> String {
        let units = self.0.chunks_exact(2).map(|pair| {
            u16::from_le_bytes([
                pair.first().copied().unwrap_or(0),
                pair.last().copied().unwrap_or(0),
            ])
        });
        let mut s: String = char::decode_utf16(units)
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect();
        if s.ends_with('\0') {
            s.pop();
        }
        s
    }
}

impl From<&str> for Utf16Text {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl fmt::Debug for Utf16Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.decode() {
            Ok(s) => write!(f, "{s:?}"),
            Err(_) => write!(f, "Utf16Text(raw {:02x?})", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        assert_eq!(
            encode_utf16z("Tk=1"),
            [b'T', 0, b'k', 0, b'=', 0, b'1', 0, 0, 0]
        );
        assert_eq!(
            decode_utf16z(&encode_utf16z("h\u{1F600}é")).unwrap(),
            "h\u{1F600}é"
        );
        assert_eq!(decode_utf16z(b"a\0b\0").unwrap(), "ab"); // terminator optional
        assert_eq!(decode_utf16z(b"").unwrap(), "");
        assert_eq!(
            decode_utf16z(b"a\0\0"),
            Err(TextError::OddLength { len: 3 })
        );
        // lone high surrogate D800 followed by 'a'
        assert_eq!(
            decode_utf16z(&[b'x', 0, 0x00, 0xD8, b'a', 0]),
            Err(TextError::LoneSurrogate { offset: 2 })
        );
        // lone low surrogate
        assert_eq!(
            decode_utf16z(&[0x00, 0xDC]),
            Err(TextError::LoneSurrogate { offset: 0 })
        );
        let t = Utf16Text::from_wire(vec![0x00, 0xDC, b'a', 0]);
        assert_eq!(t.to_string_lossy(), "\u{FFFD}a");
    }
}
