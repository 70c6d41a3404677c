//! A bounded little-endian cursor over one packet body (rustls `Reader` style).
//!
//! Every read goes through [`slice::get`], so a lying length can never index past the packet it
//! belongs to: it surfaces as [`ParseError::TooShort`] naming the field.

use super::packet::{PacketType, ParseError};

/// Cursor over the body of one packet; `ptype` only labels errors.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    ptype: PacketType,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, the body (after the 8-byte header) of a packet of type `ptype`.
    pub(crate) fn new(buf: &'a [u8], ptype: PacketType) -> Self {
        Self { buf, pos: 0, ptype }
    }

    /// Bytes not read yet.
    pub(crate) fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Takes exactly `n` bytes or fails with `TooShort` naming `field`.
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ParseError> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(ParseError::TooShort {
                packet: self.ptype,
                field,
                needed: n,
                available: self.left(),
            }),
        }
    }

    /// Takes `N` bytes as an array.
    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], ParseError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ParseError> {
        Ok(u8::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, ParseError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ParseError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, ParseError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// An HTTP_BYTE_BLOB / HTTP_UNICODE_STRING ([MS-TSGU] 2.2.10.1, 2.2.10.22): `cbLen` u16, then
    /// `cbLen` bytes, which must lie inside this packet.
    pub(crate) fn blob16(&mut self, field: &'static str) -> Result<&'a [u8], ParseError> {
        let len = self.u16(field)?;
        self.take(usize::from(len), field)
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        rest
    }
}
