//! MS-TSGU HTTP-transport packets ([MS-TSGU] 2.2.10, PROTOCOLS.md §3). Pure: no I/O.
//!
//! Framing ([`Packet::check`]) reads only the 8-byte HTTP_PACKET_HEADER: `packetLength < 8` is
//! [`ParseError::BadLength`], a length above the cap for its type is [`ParseError::TooLarge`]
//! (checked *before* waiting for the body, so a lying header never makes a caller buffer
//! megabytes), and a short buffer is [`ParseError::Incomplete`], a normal outcome.
//! [`Packet::parse`] then reads the body through a bounded cursor, so a lying `cbLen` cannot
//! reach past its packet ([`ParseError::TooShort`]).
//!
//! Choices:
//! - **Unknown packet types** frame normally and come back as [`Packet::Unknown`], so a caller
//!   can ignore them (FreeRDP does).
//! - **Trailing bytes** inside a packet after the known fields are tolerated and dropped;
//!   [`Packet::parse_full`] reports how many there were so a caller can count them (FreeRDP
//!   warns and goes on). Re-encoding never emits them.
//! - **Reserved fields** are ignored on read and written as 0.
//! - **fieldsPresent** is not stored: it is derived from which `Option` fields are `Some`. Bits
//!   this codec does not know are ignored on read (their data, if any, ends up as trailing
//!   bytes).
//! - **Text** is kept as wire bytes ([`Utf16Text`]); decoding is a separate strict step.
//! - Value rules that belong to the protocol, not the framing (protocol must be 3, 1–50
//!   resources, cookie present, versions) are left to the caller.

use std::fmt;

use super::reader::Reader;
use super::text::{decode_utf16z, TextError, Utf16Text};

/// Size of HTTP_PACKET_HEADER ([MS-TSGU] 2.2.10.9): packetType u16, reserved u16,
/// packetLength u32 (the whole packet, header included).
pub const HEADER_LEN: usize = 8;

/// Largest control (non-DATA) packet accepted or produced: 64 KiB + 16 (PROTOCOLS.md §3.1).
/// FreeRDP accepts up to `INT_MAX`; Portico caps the allocation a peer can force. Every
/// well-formed control packet a client or a gateway sends is far smaller.
pub const MAX_CONTROL_PACKET: usize = 64 * 1024 + 16;

/// Largest DATA packet: header + `cbDataLen` u16 + at most 65535 bytes
/// ([MS-TSGU] 2.2.10.6, PROTOCOLS.md §3.9).
pub const MAX_DATA_PACKET: usize = 65535 + 10;

/// HTTP_PACKET_TYPE ([MS-TSGU] 2.2.5.3.3). Unknown values are kept; `Debug` shows the name or hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketType(pub u16);

impl PacketType {
    /// PKT_TYPE_HANDSHAKE_REQUEST (C→S).
    pub const HANDSHAKE_REQUEST: Self = Self(0x0001);
    /// PKT_TYPE_HANDSHAKE_RESPONSE (S→C).
    pub const HANDSHAKE_RESPONSE: Self = Self(0x0002);
    /// PKT_TYPE_EXTENDED_AUTH_MSG (both; SSPI_NTLM only).
    pub const EXTENDED_AUTH_MSG: Self = Self(0x0003);
    /// PKT_TYPE_TUNNEL_CREATE (C→S).
    pub const TUNNEL_CREATE: Self = Self(0x0004);
    /// PKT_TYPE_TUNNEL_RESPONSE (S→C).
    pub const TUNNEL_RESPONSE: Self = Self(0x0005);
    /// PKT_TYPE_TUNNEL_AUTH (C→S).
    pub const TUNNEL_AUTH: Self = Self(0x0006);
    /// PKT_TYPE_TUNNEL_AUTH_RESPONSE (S→C).
    pub const TUNNEL_AUTH_RESPONSE: Self = Self(0x0007);
    /// PKT_TYPE_CHANNEL_CREATE (C→S).
    pub const CHANNEL_CREATE: Self = Self(0x0008);
    /// PKT_TYPE_CHANNEL_RESPONSE (S→C).
    pub const CHANNEL_RESPONSE: Self = Self(0x0009);
    /// PKT_TYPE_DATA (both).
    pub const DATA: Self = Self(0x000A);
    /// PKT_TYPE_SERVICE_MESSAGE (S→C).
    pub const SERVICE_MESSAGE: Self = Self(0x000B);
    /// PKT_TYPE_REAUTH_MESSAGE (S→C).
    pub const REAUTH_MESSAGE: Self = Self(0x000C);
    /// PKT_TYPE_KEEPALIVE (both).
    pub const KEEPALIVE: Self = Self(0x000D);
    /// PKT_TYPE_CLOSE_CHANNEL (both).
    pub const CLOSE_CHANNEL: Self = Self(0x0010);
    /// PKT_TYPE_CLOSE_CHANNEL_RESPONSE (both).
    pub const CLOSE_CHANNEL_RESPONSE: Self = Self(0x0011);

    /// The spec name, or `None` for an unknown value.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::HANDSHAKE_REQUEST => "HANDSHAKE_REQUEST",
            Self::HANDSHAKE_RESPONSE => "HANDSHAKE_RESPONSE",
            Self::EXTENDED_AUTH_MSG => "EXTENDED_AUTH_MSG",
            Self::TUNNEL_CREATE => "TUNNEL_CREATE",
            Self::TUNNEL_RESPONSE => "TUNNEL_RESPONSE",
            Self::TUNNEL_AUTH => "TUNNEL_AUTH",
            Self::TUNNEL_AUTH_RESPONSE => "TUNNEL_AUTH_RESPONSE",
            Self::CHANNEL_CREATE => "CHANNEL_CREATE",
            Self::CHANNEL_RESPONSE => "CHANNEL_RESPONSE",
            Self::DATA => "DATA",
            Self::SERVICE_MESSAGE => "SERVICE_MESSAGE",
            Self::REAUTH_MESSAGE => "REAUTH_MESSAGE",
            Self::KEEPALIVE => "KEEPALIVE",
            Self::CLOSE_CHANNEL => "CLOSE_CHANNEL",
            Self::CLOSE_CHANNEL_RESPONSE => "CLOSE_CHANNEL_RESPONSE",
            _ => return None,
        })
    }

    /// The largest packet of this type accepted or produced ([`MAX_DATA_PACKET`] for DATA,
    /// [`MAX_CONTROL_PACKET`] for everything else, unknown types included).
    pub fn max_len(self) -> usize {
        if self == Self::DATA {
            MAX_DATA_PACKET
        } else {
            MAX_CONTROL_PACKET
        }
    }
}

impl fmt::Debug for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Unknown({:#06x})", self.0),
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// HTTP_EXTENDED_AUTH flags ([MS-TSGU] 2.2.5.3.2).
pub mod extended_auth {
    /// HTTP_EXTENDED_AUTH_NONE.
    pub const NONE: u16 = 0x0;
    /// HTTP_EXTENDED_AUTH_SC (smart card).
    pub const SC: u16 = 0x1;
    /// HTTP_EXTENDED_AUTH_PAA (pluggable authentication cookie; what the probe uses).
    pub const PAA: u16 = 0x2;
    /// HTTP_EXTENDED_AUTH_SSPI_NTLM.
    pub const SSPI_NTLM: u16 = 0x4;
}

/// HTTP_CAPABILITY_TYPE flags ([MS-TSGU] 2.2.5.3.9).
pub mod caps {
    /// HTTP_CAPABILITY_TYPE_QUAR_SOH.
    pub const QUAR_SOH: u32 = 0x01;
    /// HTTP_CAPABILITY_IDLE_TIMEOUT.
    pub const IDLE_TIMEOUT: u32 = 0x02;
    /// HTTP_CAPABILITY_MESSAGING_CONSENT_SIGN.
    pub const MESSAGING_CONSENT_SIGN: u32 = 0x04;
    /// HTTP_CAPABILITY_MESSAGING_SERVICE_MSG.
    pub const MESSAGING_SERVICE_MSG: u32 = 0x08;
    /// HTTP_CAPABILITY_REAUTH.
    pub const REAUTH: u32 = 0x10;
    /// HTTP_CAPABILITY_UDP_TRANSPORT.
    pub const UDP_TRANSPORT: u32 = 0x20;
    /// What FreeRDP sends in TUNNEL_CREATE (QUAR_SOH | CONSENT_SIGN | SERVICE_MSG), proven
    /// against Windows gateways (PROTOCOLS.md §3.5).
    pub const FREERDP_CLIENT: u32 = QUAR_SOH | MESSAGING_CONSENT_SIGN | MESSAGING_SERVICE_MSG;
}

/// HTTP_TUNNEL_REDIR_FLAGS ([MS-TSGU] 2.2.5.3.7).
pub mod redir_flags {
    /// HTTP_TUNNEL_REDIR_ENABLE_ALL.
    pub const ENABLE_ALL: u32 = 0x8000_0000;
    /// HTTP_TUNNEL_REDIR_DISABLE_ALL.
    pub const DISABLE_ALL: u32 = 0x4000_0000;
    /// HTTP_TUNNEL_REDIR_DISABLE_DRIVE.
    pub const DISABLE_DRIVE: u32 = 0x1;
    /// HTTP_TUNNEL_REDIR_DISABLE_PRINTER.
    pub const DISABLE_PRINTER: u32 = 0x2;
    /// HTTP_TUNNEL_REDIR_DISABLE_PORT.
    pub const DISABLE_PORT: u32 = 0x4;
    /// HTTP_TUNNEL_REDIR_DISABLE_CLIPBOARD.
    pub const DISABLE_CLIPBOARD: u32 = 0x8;
    /// HTTP_TUNNEL_REDIR_DISABLE_PNP.
    pub const DISABLE_PNP: u32 = 0x10;
}

/// The fieldsPresent bit values of each packet ([MS-TSGU] 2.2.5.3.1, .4, .5, .6, .8).
pub mod fields {
    /// HTTP_TUNNEL_PACKET_FIELD_PAA_COOKIE (TUNNEL_CREATE, 2.2.5.3.6).
    pub const TUNNEL_PAA_COOKIE: u16 = 0x1;
    /// HTTP_TUNNEL_PACKET_FIELD_REAUTH (TUNNEL_CREATE, 2.2.5.3.6).
    pub const TUNNEL_REAUTH: u16 = 0x2;
    /// HTTP_TUNNEL_RESPONSE_FIELD_TUNNEL_ID (2.2.5.3.8).
    pub const TUNNEL_RESPONSE_TUNNEL_ID: u16 = 0x01;
    /// HTTP_TUNNEL_RESPONSE_FIELD_CAPS (2.2.5.3.8).
    pub const TUNNEL_RESPONSE_CAPS: u16 = 0x02;
    /// HTTP_TUNNEL_RESPONSE_FIELD_SOH_REQ (2.2.5.3.8).
    pub const TUNNEL_RESPONSE_SOH_REQ: u16 = 0x04;
    /// HTTP_TUNNEL_RESPONSE_FIELD_CONSENT_MSG (2.2.5.3.8).
    pub const TUNNEL_RESPONSE_CONSENT_MSG: u16 = 0x10;
    /// HTTP_TUNNEL_AUTH_FIELD_SOH (2.2.5.3.4).
    pub const TUNNEL_AUTH_SOH: u16 = 0x1;
    /// HTTP_TUNNEL_AUTH_RESPONSE_FIELD_REDIR_FLAGS (2.2.5.3.5).
    pub const TUNNEL_AUTH_RESPONSE_REDIR_FLAGS: u16 = 0x1;
    /// HTTP_TUNNEL_AUTH_RESPONSE_FIELD_IDLE_TIMEOUT (2.2.5.3.5).
    pub const TUNNEL_AUTH_RESPONSE_IDLE_TIMEOUT: u16 = 0x2;
    /// HTTP_TUNNEL_AUTH_RESPONSE_FIELD_SOH_RESPONSE (2.2.5.3.5).
    pub const TUNNEL_AUTH_RESPONSE_SOH_RESPONSE: u16 = 0x4;
    /// HTTP_CHANNEL_RESPONSE_FIELD_CHANNELID (2.2.5.3.1).
    pub const CHANNEL_RESPONSE_CHANNEL_ID: u16 = 0x1;
    /// HTTP_CHANNEL_RESPONSE_FIELD_AUTHNCOOKIE (2.2.5.3.1; FreeRDP/rdpgw value, IronRDP differs).
    pub const CHANNEL_RESPONSE_AUTHN_COOKIE: u16 = 0x2;
    /// HTTP_CHANNEL_RESPONSE_FIELD_UDPPORT (2.2.5.3.1; FreeRDP/rdpgw value, IronRDP differs).
    pub const CHANNEL_RESPONSE_UDP_PORT: u16 = 0x4;
}

/// Bytes that could not be framed or parsed as a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not enough bytes are buffered yet: a normal outcome, read more and retry. `needed` is the
    /// minimum number of *additional* bytes (exact once the header is complete).
    #[error("incomplete packet: {needed} more bytes needed")]
    Incomplete {
        /// Additional bytes needed at least.
        needed: usize,
    },
    /// `packetLength` is smaller than the 8-byte header ([MS-TSGU] 2.2.10.9).
    #[error("packet length {length} is shorter than the {HEADER_LEN}-byte header")]
    BadLength {
        /// The `packetLength` read.
        length: u32,
    },
    /// `packetLength` exceeds the cap for its type ([`PacketType::max_len`]).
    #[error("{packet} packet length {length} exceeds the cap of {cap} bytes")]
    TooLarge {
        /// The packet type from the header.
        packet: PacketType,
        /// The `packetLength` read.
        length: u64,
        /// The cap that applies.
        cap: usize,
    },
    /// A fixed field or a length-prefixed field (`cbLen`) runs past the end of the packet.
    #[error("{packet} field {field}: needs {needed} bytes, only {available} left in the packet")]
    TooShort {
        /// The packet type.
        packet: PacketType,
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the packet.
        available: usize,
    },
    /// Text that must be UTF-16 is not (only from the strict decoding helpers).
    #[error("field {field} is not valid UTF-16: {error}")]
    BadString {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        #[source]
        error: TextError,
    },
}

/// A value that cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A field or the whole packet (`field == "packet"`) is longer than its length field or cap
    /// allows (u16 `cbLen` fields: 65535; packets: [`PacketType::max_len`]).
    #[error("{field} is {len} bytes, more than the maximum {max}")]
    TooLarge {
        /// The field, or `"packet"`.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A list has more items than its u8 count field allows.
    #[error("{field} has {count} items, more than the maximum {max}")]
    TooMany {
        /// The list.
        field: &'static str,
        /// Its item count.
        count: usize,
        /// The maximum.
        max: usize,
    },
}

// === wire helpers ===

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Writes `cbLen` u16 + bytes (HTTP_BYTE_BLOB / HTTP_UNICODE_STRING).
fn put_blob16(out: &mut Vec<u8>, bytes: &[u8], field: &'static str) -> Result<(), EncodeError> {
    let len = u16::try_from(bytes.len()).map_err(|_| EncodeError::TooLarge {
        field,
        len: bytes.len(),
        max: usize::from(u16::MAX),
    })?;
    put_u16(out, len);
    out.extend_from_slice(bytes);
    Ok(())
}

fn flag(present: bool, bit: u16) -> u16 {
    if present {
        bit
    } else {
        0
    }
}

// === packets ===

/// HANDSHAKE_REQUEST ([MS-TSGU] 2.2.10.10), 14 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeRequest {
    /// verMajor; 1.
    pub ver_major: u8,
    /// verMinor; 0.
    pub ver_minor: u8,
    /// clientVersion; "must be 0".
    pub client_version: u16,
    /// extendedAuth: [`extended_auth`] flags; PAA for the probe.
    pub extended_auth: u16,
}

impl Default for HandshakeRequest {
    /// Version 1.0, client version 0, extended auth PAA (what the probe sends).
    fn default() -> Self {
        Self {
            ver_major: 1,
            ver_minor: 0,
            client_version: 0,
            extended_auth: extended_auth::PAA,
        }
    }
}

impl HandshakeRequest {
    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        Ok(Self {
            ver_major: r.u8("verMajor")?,
            ver_minor: r.u8("verMinor")?,
            client_version: r.u16("clientVersion")?,
            extended_auth: r.u16("extendedAuth")?,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.ver_major, self.ver_minor]);
        put_u16(out, self.client_version);
        put_u16(out, self.extended_auth);
    }
}

/// HANDSHAKE_RESPONSE ([MS-TSGU] 2.2.10.11), 18 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// errorCode (HRESULT, see [`super::hresult`]).
    pub error_code: u32,
    /// verMajor; the server echoes 1.
    pub ver_major: u8,
    /// verMinor; 0.
    pub ver_minor: u8,
    /// serverVersion; 0 in every known server.
    pub server_version: u16,
    /// extendedAuth: methods the server offers ([`extended_auth`]).
    pub extended_auth: u16,
}

impl Default for HandshakeResponse {
    /// Success, version 1.0, server version 0, extended auth PAA (what the simulator sends).
    fn default() -> Self {
        Self {
            error_code: 0,
            ver_major: 1,
            ver_minor: 0,
            server_version: 0,
            extended_auth: extended_auth::PAA,
        }
    }
}

impl HandshakeResponse {
    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        Ok(Self {
            error_code: r.u32("errorCode")?,
            ver_major: r.u8("verMajor")?,
            ver_minor: r.u8("verMinor")?,
            server_version: r.u16("serverVersion")?,
            extended_auth: r.u16("extendedAuth")?,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        put_u32(out, self.error_code);
        out.extend_from_slice(&[self.ver_major, self.ver_minor]);
        put_u16(out, self.server_version);
        put_u16(out, self.extended_auth);
    }
}

/// TUNNEL_CREATE: HTTP_TUNNEL_PACKET ([MS-TSGU] 2.2.10.18) + _OPTIONAL (2.2.10.19).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TunnelCreate {
    /// capsFlags: client [`caps`].
    pub caps: u32,
    /// reauthTunnelContext, present iff fieldsPresent has REAUTH (0x2).
    pub reauth_context: Option<u64>,
    /// PAACookie (HTTP_BYTE_BLOB) bytes as sent, present iff fieldsPresent has PAA_COOKIE (0x1).
    /// Every known client sends the token as UTF-16LE + NUL; see [`TunnelCreate::with_paa_token`]
    /// and [`TunnelCreate::paa_token`].
    pub paa_cookie: Option<Vec<u8>>,
}

impl TunnelCreate {
    /// A TUNNEL_CREATE carrying `token` as UTF-16LE + NUL (PROTOCOLS.md §3.5). The cookie length
    /// is only checked by [`Packet::encode`].
    pub fn with_paa_token(caps: u32, token: &str) -> Self {
        Self {
            caps,
            reauth_context: None,
            paa_cookie: Some(super::text::encode_utf16z(token)),
        }
    }

    /// The cookie decoded strictly as UTF-16LE (one trailing NUL stripped); `Ok(None)` if absent.
    pub fn paa_token(&self) -> Result<Option<String>, ParseError> {
        self.paa_cookie
            .as_deref()
            .map(decode_utf16z)
            .transpose()
            .map_err(|error| ParseError::BadString {
                field: "PAACookie",
                error,
            })
    }

    /// fieldsPresent as it goes on the wire.
    pub fn fields_present(&self) -> u16 {
        flag(self.paa_cookie.is_some(), fields::TUNNEL_PAA_COOKIE)
            | flag(self.reauth_context.is_some(), fields::TUNNEL_REAUTH)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let caps = r.u32("capsFlags")?;
        let fp = r.u16("fieldsPresent")?;
        r.u16("reserved")?;
        let reauth_context = if fp & fields::TUNNEL_REAUTH != 0 {
            Some(r.u64("reauthTunnelContext")?)
        } else {
            None
        };
        let paa_cookie = if fp & fields::TUNNEL_PAA_COOKIE != 0 {
            Some(r.blob16("PAACookie")?.to_vec())
        } else {
            None
        };
        Ok(Self {
            caps,
            reauth_context,
            paa_cookie,
        })
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        put_u32(out, self.caps);
        put_u16(out, self.fields_present());
        put_u16(out, 0);
        if let Some(ctx) = self.reauth_context {
            put_u64(out, ctx);
        }
        if let Some(cookie) = &self.paa_cookie {
            put_blob16(out, cookie, "PAACookie")?;
        }
        Ok(())
    }
}

/// The SOH_REQ part of a TUNNEL_RESPONSE: kept as bytes, not interpreted (PROTOCOLS.md §3.6: a
/// modern gateway should not ask; the sources disagree on its layout, the spec's is used).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SohRequest {
    /// The 16-byte nonce (GUID).
    pub nonce: [u8; 16],
    /// serverCert (HTTP_UNICODE_STRING) bytes as sent.
    pub server_cert: Vec<u8>,
}

/// TUNNEL_RESPONSE ([MS-TSGU] 2.2.10.20) + _OPTIONAL (2.2.10.21); `status` is the token verdict.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TunnelResponse {
    /// serverVersion; 0.
    pub server_version: u16,
    /// statusCode (HRESULT).
    pub status: u32,
    /// tunnelId (fieldsPresent 0x01).
    pub tunnel_id: Option<u32>,
    /// Negotiated capsFlags (fieldsPresent 0x02).
    pub caps: Option<u32>,
    /// Nonce + server certificate (fieldsPresent 0x04).
    pub soh: Option<SohRequest>,
    /// consentMsg (fieldsPresent 0x10).
    pub consent_message: Option<Utf16Text>,
}

impl TunnelResponse {
    /// fieldsPresent as it goes on the wire.
    pub fn fields_present(&self) -> u16 {
        flag(self.tunnel_id.is_some(), fields::TUNNEL_RESPONSE_TUNNEL_ID)
            | flag(self.caps.is_some(), fields::TUNNEL_RESPONSE_CAPS)
            | flag(self.soh.is_some(), fields::TUNNEL_RESPONSE_SOH_REQ)
            | flag(
                self.consent_message.is_some(),
                fields::TUNNEL_RESPONSE_CONSENT_MSG,
            )
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let server_version = r.u16("serverVersion")?;
        let status = r.u32("statusCode")?;
        let fp = r.u16("fieldsPresent")?;
        r.u16("reserved")?;
        let tunnel_id = if fp & fields::TUNNEL_RESPONSE_TUNNEL_ID != 0 {
            Some(r.u32("tunnelId")?)
        } else {
            None
        };
        let caps = if fp & fields::TUNNEL_RESPONSE_CAPS != 0 {
            Some(r.u32("capsFlags")?)
        } else {
            None
        };
        let soh = if fp & fields::TUNNEL_RESPONSE_SOH_REQ != 0 {
            Some(SohRequest {
                nonce: r.array("nonce")?,
                server_cert: r.blob16("serverCert")?.to_vec(),
            })
        } else {
            None
        };
        let consent_message = if fp & fields::TUNNEL_RESPONSE_CONSENT_MSG != 0 {
            Some(Utf16Text::from_wire(r.blob16("consentMsg")?.to_vec()))
        } else {
            None
        };
        Ok(Self {
            server_version,
            status,
            tunnel_id,
            caps,
            soh,
            consent_message,
        })
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        put_u16(out, self.server_version);
        put_u32(out, self.status);
        put_u16(out, self.fields_present());
        put_u16(out, 0);
        if let Some(id) = self.tunnel_id {
            put_u32(out, id);
        }
        if let Some(caps) = self.caps {
            put_u32(out, caps);
        }
        if let Some(soh) = &self.soh {
            out.extend_from_slice(&soh.nonce);
            put_blob16(out, &soh.server_cert, "serverCert")?;
        }
        if let Some(msg) = &self.consent_message {
            put_blob16(out, msg.as_wire(), "consentMsg")?;
        }
        Ok(())
    }
}

/// TUNNEL_AUTH: HTTP_TUNNEL_AUTH_PACKET ([MS-TSGU] 2.2.10.14) + _OPTIONAL (2.2.10.15).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TunnelAuth {
    /// clientName, UTF-16 + NUL (the probe uses `PORTICO-<node>`).
    pub client_name: Utf16Text,
    /// statementOfHealth blob (fieldsPresent 0x1); FreeRDP never sends it.
    pub soh: Option<Vec<u8>>,
}

impl TunnelAuth {
    /// A TUNNEL_AUTH with `client_name` as UTF-16 + NUL and no SoH.
    pub fn new(client_name: &str) -> Self {
        Self {
            client_name: Utf16Text::new(client_name),
            soh: None,
        }
    }

    /// fieldsPresent as it goes on the wire.
    pub fn fields_present(&self) -> u16 {
        flag(self.soh.is_some(), fields::TUNNEL_AUTH_SOH)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let fp = r.u16("fieldsPresent")?;
        let client_name = Utf16Text::from_wire(r.blob16("clientName")?.to_vec());
        let soh = if fp & fields::TUNNEL_AUTH_SOH != 0 {
            Some(r.blob16("statementOfHealth")?.to_vec())
        } else {
            None
        };
        Ok(Self { client_name, soh })
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        put_u16(out, self.fields_present());
        put_blob16(out, self.client_name.as_wire(), "clientName")?;
        if let Some(soh) = &self.soh {
            put_blob16(out, soh, "statementOfHealth")?;
        }
        Ok(())
    }
}

/// TUNNEL_AUTH_RESPONSE ([MS-TSGU] 2.2.10.16) + _OPTIONAL (2.2.10.17).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TunnelAuthResponse {
    /// errorCode (HRESULT).
    pub error_code: u32,
    /// redirFlags, [`redir_flags`] (fieldsPresent 0x1).
    pub redir_flags: Option<u32>,
    /// idleTimeout in minutes, 0 = none (fieldsPresent 0x2).
    pub idle_timeout: Option<u32>,
    /// SoHResponse blob (fieldsPresent 0x4).
    pub soh_response: Option<Vec<u8>>,
}

impl TunnelAuthResponse {
    /// fieldsPresent as it goes on the wire.
    pub fn fields_present(&self) -> u16 {
        flag(
            self.redir_flags.is_some(),
            fields::TUNNEL_AUTH_RESPONSE_REDIR_FLAGS,
        ) | flag(
            self.idle_timeout.is_some(),
            fields::TUNNEL_AUTH_RESPONSE_IDLE_TIMEOUT,
        ) | flag(
            self.soh_response.is_some(),
            fields::TUNNEL_AUTH_RESPONSE_SOH_RESPONSE,
        )
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let error_code = r.u32("errorCode")?;
        let fp = r.u16("fieldsPresent")?;
        r.u16("reserved")?;
        let redir_flags = if fp & fields::TUNNEL_AUTH_RESPONSE_REDIR_FLAGS != 0 {
            Some(r.u32("redirFlags")?)
        } else {
            None
        };
        let idle_timeout = if fp & fields::TUNNEL_AUTH_RESPONSE_IDLE_TIMEOUT != 0 {
            Some(r.u32("idleTimeout")?)
        } else {
            None
        };
        let soh_response = if fp & fields::TUNNEL_AUTH_RESPONSE_SOH_RESPONSE != 0 {
            Some(r.blob16("SoHResponse")?.to_vec())
        } else {
            None
        };
        Ok(Self {
            error_code,
            redir_flags,
            idle_timeout,
            soh_response,
        })
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        put_u32(out, self.error_code);
        put_u16(out, self.fields_present());
        put_u16(out, 0);
        if let Some(v) = self.redir_flags {
            put_u32(out, v);
        }
        if let Some(v) = self.idle_timeout {
            put_u32(out, v);
        }
        if let Some(soh) = &self.soh_response {
            put_blob16(out, soh, "SoHResponse")?;
        }
        Ok(())
    }
}

/// CHANNEL_CREATE: HTTP_CHANNEL_PACKET ([MS-TSGU] 2.2.10.2) + _VARIABLE (2.2.10.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelCreate {
    /// Target server names tried in turn ([MS-TSGU] 3.1.1); the spec allows 1–50.
    pub resources: Vec<Utf16Text>,
    /// Alternative names; the spec allows 0–3.
    pub alt_resources: Vec<Utf16Text>,
    /// Target port (2179 for console connect).
    pub port: u16,
    /// Protocol; must be 3 (TCP) per the spec.
    pub protocol: u16,
}

impl ChannelCreate {
    /// Protocol value for TCP, the only one the spec allows ([MS-TSGU] 2.2.10.2).
    pub const PROTOCOL_TCP: u16 = 3;

    /// One resource `host` (UTF-16 + NUL), `port`, TCP.
    pub fn new(host: &str, port: u16) -> Self {
        Self {
            resources: vec![Utf16Text::new(host)],
            alt_resources: Vec::new(),
            port,
            protocol: Self::PROTOCOL_TCP,
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let n = r.u8("numResources")?;
        let n_alt = r.u8("numAltResources")?;
        let port = r.u16("port")?;
        let protocol = r.u16("protocol")?;
        // Each name needs at least its 2-byte length, so the counts are bounded by the packet.
        let mut resources = Vec::with_capacity(usize::from(n).min(r.left() / 2));
        for _ in 0..n {
            resources.push(Utf16Text::from_wire(r.blob16("resourceName")?.to_vec()));
        }
        let mut alt_resources = Vec::with_capacity(usize::from(n_alt).min(r.left() / 2));
        for _ in 0..n_alt {
            alt_resources.push(Utf16Text::from_wire(r.blob16("altResourceName")?.to_vec()));
        }
        Ok(Self {
            resources,
            alt_resources,
            port,
            protocol,
        })
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let count = |field, list: &[Utf16Text]| {
            u8::try_from(list.len()).map_err(|_| EncodeError::TooMany {
                field,
                count: list.len(),
                max: usize::from(u8::MAX),
            })
        };
        out.push(count("resources", &self.resources)?);
        out.push(count("alt_resources", &self.alt_resources)?);
        put_u16(out, self.port);
        put_u16(out, self.protocol);
        for name in &self.resources {
            put_blob16(out, name.as_wire(), "resourceName")?;
        }
        for name in &self.alt_resources {
            put_blob16(out, name.as_wire(), "altResourceName")?;
        }
        Ok(())
    }
}

/// CHANNEL_RESPONSE ([MS-TSGU] 2.2.10.4) + _OPTIONAL (2.2.10.5). Optional fields are in
/// structure order: channelId, udpPort, authnCookie.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelResponse {
    /// errorCode (HRESULT).
    pub error_code: u32,
    /// channelId (fieldsPresent 0x1; Windows clients need it).
    pub channel_id: Option<u32>,
    /// udpPort (fieldsPresent 0x4).
    pub udp_port: Option<u16>,
    /// authnCookie blob for RDG-UDP (fieldsPresent 0x2).
    pub authn_cookie: Option<Vec<u8>>,
}

impl ChannelResponse {
    /// fieldsPresent as it goes on the wire.
    pub fn fields_present(&self) -> u16 {
        flag(
            self.channel_id.is_some(),
            fields::CHANNEL_RESPONSE_CHANNEL_ID,
        ) | flag(self.udp_port.is_some(), fields::CHANNEL_RESPONSE_UDP_PORT)
            | flag(
                self.authn_cookie.is_some(),
                fields::CHANNEL_RESPONSE_AUTHN_COOKIE,
            )
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let error_code = r.u32("errorCode")?;
        let fp = r.u16("fieldsPresent")?;
        r.u16("reserved")?;
        let channel_id = if fp & fields::CHANNEL_RESPONSE_CHANNEL_ID != 0 {
            Some(r.u32("channelId")?)
        } else {
            None
        };
        let udp_port = if fp & fields::CHANNEL_RESPONSE_UDP_PORT != 0 {
            Some(r.u16("udpPort")?)
        } else {
            None
        };
        let authn_cookie = if fp & fields::CHANNEL_RESPONSE_AUTHN_COOKIE != 0 {
            Some(r.blob16("authnCookie")?.to_vec())
        } else {
            None
        };
        Ok(Self {
            error_code,
            channel_id,
            udp_port,
            authn_cookie,
        })
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        put_u32(out, self.error_code);
        put_u16(out, self.fields_present());
        put_u16(out, 0);
        if let Some(v) = self.channel_id {
            put_u32(out, v);
        }
        if let Some(v) = self.udp_port {
            put_u16(out, v);
        }
        if let Some(c) = &self.authn_cookie {
            put_blob16(out, c, "authnCookie")?;
        }
        Ok(())
    }
}

/// DATA ([MS-TSGU] 2.2.10.6): `cbDataLen` u16 + data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Data {
    /// The payload, at most 65535 bytes.
    pub data: Vec<u8>,
}

/// CLOSE_CHANNEL / CLOSE_CHANNEL_RESPONSE body: HTTP_CLOSE_PACKET ([MS-TSGU] 2.2.10.23).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CloseChannel {
    /// statusCode (HRESULT).
    pub status: u32,
}

/// CLOSE_CHANNEL_RESPONSE ([MS-TSGU] 2.2.10.23); the receiver of a close answers status 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CloseChannelResponse {
    /// statusCode (HRESULT).
    pub status: u32,
}

/// SERVICE_MESSAGE ([MS-TSGU] 2.2.10.13): an administrator message, informational.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceMessage {
    /// The message (`cbMessageLen` u16 + UTF-16 bytes as sent).
    pub message: Utf16Text,
}

/// REAUTH_MESSAGE ([MS-TSGU] 2.2.10.12); FreeRDP and the probe ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReauthMessage {
    /// reauthTunnelContext.
    pub reauth_context: u64,
}

/// EXTENDED_AUTH_MSG ([MS-TSGU] 2.2.10.7); SSPI_NTLM only, never in PAA mode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExtendedAuthMsg {
    /// errorCode (HRESULT).
    pub error_code: u32,
    /// The SSPI blob (`cbBlobLen` u16 + bytes).
    pub blob: Vec<u8>,
}

/// One MS-TSGU HTTP-transport packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// PKT_TYPE_HANDSHAKE_REQUEST.
    HandshakeRequest(HandshakeRequest),
    /// PKT_TYPE_HANDSHAKE_RESPONSE.
    HandshakeResponse(HandshakeResponse),
    /// PKT_TYPE_EXTENDED_AUTH_MSG.
    ExtendedAuthMsg(ExtendedAuthMsg),
    /// PKT_TYPE_TUNNEL_CREATE.
    TunnelCreate(TunnelCreate),
    /// PKT_TYPE_TUNNEL_RESPONSE.
    TunnelResponse(TunnelResponse),
    /// PKT_TYPE_TUNNEL_AUTH.
    TunnelAuth(TunnelAuth),
    /// PKT_TYPE_TUNNEL_AUTH_RESPONSE.
    TunnelAuthResponse(TunnelAuthResponse),
    /// PKT_TYPE_CHANNEL_CREATE.
    ChannelCreate(ChannelCreate),
    /// PKT_TYPE_CHANNEL_RESPONSE.
    ChannelResponse(ChannelResponse),
    /// PKT_TYPE_DATA.
    Data(Data),
    /// PKT_TYPE_SERVICE_MESSAGE.
    ServiceMessage(ServiceMessage),
    /// PKT_TYPE_REAUTH_MESSAGE.
    ReauthMessage(ReauthMessage),
    /// PKT_TYPE_KEEPALIVE (no body).
    Keepalive,
    /// PKT_TYPE_CLOSE_CHANNEL.
    CloseChannel(CloseChannel),
    /// PKT_TYPE_CLOSE_CHANNEL_RESPONSE.
    CloseChannelResponse(CloseChannelResponse),
    /// A well-framed packet of a type this codec does not know; callers normally ignore it.
    /// [`Packet::encode`] writes `ptype` and `body` verbatim.
    Unknown {
        /// packetType.
        ptype: u16,
        /// Everything after the 8-byte header.
        body: Vec<u8>,
    },
}

/// A parsed packet with framing details ([`Packet::parse_full`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The packet.
    pub packet: Packet,
    /// Bytes consumed from the buffer: the whole packet (`packetLength`).
    pub len: usize,
    /// Bytes inside the packet after the known fields, tolerated and dropped.
    pub trailing: usize,
}

impl Packet {
    /// The packetType this packet is sent with.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::HandshakeRequest(_) => PacketType::HANDSHAKE_REQUEST,
            Self::HandshakeResponse(_) => PacketType::HANDSHAKE_RESPONSE,
            Self::ExtendedAuthMsg(_) => PacketType::EXTENDED_AUTH_MSG,
            Self::TunnelCreate(_) => PacketType::TUNNEL_CREATE,
            Self::TunnelResponse(_) => PacketType::TUNNEL_RESPONSE,
            Self::TunnelAuth(_) => PacketType::TUNNEL_AUTH,
            Self::TunnelAuthResponse(_) => PacketType::TUNNEL_AUTH_RESPONSE,
            Self::ChannelCreate(_) => PacketType::CHANNEL_CREATE,
            Self::ChannelResponse(_) => PacketType::CHANNEL_RESPONSE,
            Self::Data(_) => PacketType::DATA,
            Self::ServiceMessage(_) => PacketType::SERVICE_MESSAGE,
            Self::ReauthMessage(_) => PacketType::REAUTH_MESSAGE,
            Self::Keepalive => PacketType::KEEPALIVE,
            Self::CloseChannel(_) => PacketType::CLOSE_CHANNEL,
            Self::CloseChannelResponse(_) => PacketType::CLOSE_CHANNEL_RESPONSE,
            Self::Unknown { ptype, .. } => PacketType(*ptype),
        }
    }

    /// Header-only framing check: the whole packet length if `buf` starts with a complete packet.
    /// Errors: `Incomplete`, `BadLength`, `TooLarge`. The cap is checked before completeness.
    pub fn check(buf: &[u8]) -> Result<usize, ParseError> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Err(ParseError::Incomplete {
                needed: HEADER_LEN - buf.len(),
            });
        };
        let mut r = Reader::new(header, PacketType(0));
        let ptype = PacketType(r.u16("packetType")?);
        r.u16("reserved")?;
        let length = r.u32("packetLength")?;
        if length < HEADER_LEN as u32 {
            return Err(ParseError::BadLength { length });
        }
        let cap = ptype.max_len();
        let len = match usize::try_from(length) {
            Ok(len) if len <= cap => len,
            _ => {
                return Err(ParseError::TooLarge {
                    packet: ptype,
                    length: u64::from(length),
                    cap,
                })
            }
        };
        if buf.len() < len {
            return Err(ParseError::Incomplete {
                needed: len - buf.len(),
            });
        }
        Ok(len)
    }

    /// Parses the packet at the start of `buf`: the packet and the bytes it used.
    pub fn parse(buf: &[u8]) -> Result<(Packet, usize), ParseError> {
        Self::parse_full(buf).map(|p| (p.packet, p.len))
    }

    /// [`Packet::parse`], also reporting tolerated trailing bytes.
    pub fn parse_full(buf: &[u8]) -> Result<Parsed, ParseError> {
        let len = Self::check(buf)?;
        let packet_bytes = buf.get(..len).unwrap_or_default();
        let ptype = PacketType(u16::from_le_bytes([
            packet_bytes.first().copied().unwrap_or(0),
            packet_bytes.get(1).copied().unwrap_or(0),
        ]));
        let body = packet_bytes.get(HEADER_LEN..).unwrap_or_default();
        let mut r = Reader::new(body, ptype);
        let packet = match ptype {
            PacketType::HANDSHAKE_REQUEST => {
                Self::HandshakeRequest(HandshakeRequest::read(&mut r)?)
            }
            PacketType::HANDSHAKE_RESPONSE => {
                Self::HandshakeResponse(HandshakeResponse::read(&mut r)?)
            }
            PacketType::EXTENDED_AUTH_MSG => Self::ExtendedAuthMsg(ExtendedAuthMsg {
                error_code: r.u32("errorCode")?,
                blob: r.blob16("blob")?.to_vec(),
            }),
            PacketType::TUNNEL_CREATE => Self::TunnelCreate(TunnelCreate::read(&mut r)?),
            PacketType::TUNNEL_RESPONSE => Self::TunnelResponse(TunnelResponse::read(&mut r)?),
            PacketType::TUNNEL_AUTH => Self::TunnelAuth(TunnelAuth::read(&mut r)?),
            PacketType::TUNNEL_AUTH_RESPONSE => {
                Self::TunnelAuthResponse(TunnelAuthResponse::read(&mut r)?)
            }
            PacketType::CHANNEL_CREATE => Self::ChannelCreate(ChannelCreate::read(&mut r)?),
            PacketType::CHANNEL_RESPONSE => Self::ChannelResponse(ChannelResponse::read(&mut r)?),
            PacketType::DATA => Self::Data(Data {
                data: r.blob16("data")?.to_vec(),
            }),
            PacketType::SERVICE_MESSAGE => Self::ServiceMessage(ServiceMessage {
                message: Utf16Text::from_wire(r.blob16("message")?.to_vec()),
            }),
            PacketType::REAUTH_MESSAGE => Self::ReauthMessage(ReauthMessage {
                reauth_context: r.u64("reauthTunnelContext")?,
            }),
            PacketType::KEEPALIVE => Self::Keepalive,
            PacketType::CLOSE_CHANNEL => Self::CloseChannel(CloseChannel {
                status: r.u32("statusCode")?,
            }),
            PacketType::CLOSE_CHANNEL_RESPONSE => {
                Self::CloseChannelResponse(CloseChannelResponse {
                    status: r.u32("statusCode")?,
                })
            }
            PacketType(ptype) => Self::Unknown {
                ptype,
                body: r.rest().to_vec(),
            },
        };
        Ok(Parsed {
            packet,
            len,
            trailing: r.left(),
        })
    }

    /// Appends the packet to `out` and returns its length. On error `out` is left as it was.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
        let start = out.len();
        let result = self.encode_inner(out, start);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// The packet as a new buffer.
    pub fn to_vec(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    fn encode_inner(&self, out: &mut Vec<u8>, start: usize) -> Result<usize, EncodeError> {
        let ptype = self.packet_type();
        put_u16(out, ptype.0);
        put_u16(out, 0);
        put_u32(out, 0); // patched below
        match self {
            Self::HandshakeRequest(p) => p.write(out),
            Self::HandshakeResponse(p) => p.write(out),
            Self::ExtendedAuthMsg(p) => {
                put_u32(out, p.error_code);
                put_blob16(out, &p.blob, "blob")?;
            }
            Self::TunnelCreate(p) => p.write(out)?,
            Self::TunnelResponse(p) => p.write(out)?,
            Self::TunnelAuth(p) => p.write(out)?,
            Self::TunnelAuthResponse(p) => p.write(out)?,
            Self::ChannelCreate(p) => p.write(out)?,
            Self::ChannelResponse(p) => p.write(out)?,
            Self::Data(p) => put_blob16(out, &p.data, "data")?,
            Self::ServiceMessage(p) => put_blob16(out, p.message.as_wire(), "message")?,
            Self::ReauthMessage(p) => put_u64(out, p.reauth_context),
            Self::Keepalive => {}
            Self::CloseChannel(p) => put_u32(out, p.status),
            Self::CloseChannelResponse(p) => put_u32(out, p.status),
            Self::Unknown { body, .. } => out.extend_from_slice(body),
        }
        let len = out.len() - start;
        let cap = ptype.max_len();
        if len > cap {
            return Err(EncodeError::TooLarge {
                field: "packet",
                len,
                max: cap,
            });
        }
        // len <= cap < u32::MAX
        let len32 = u32::try_from(len).map_err(|_| EncodeError::TooLarge {
            field: "packet",
            len,
            max: cap,
        })?;
        if let Some(slot) = out.get_mut(start + 4..start + HEADER_LEN) {
            slot.copy_from_slice(&len32.to_le_bytes());
        }
        Ok(len)
    }
}

macro_rules! impl_from {
    ($($ty:ident),*) => {$(
        impl From<$ty> for Packet {
            fn from(p: $ty) -> Self {
                Packet::$ty(p)
            }
        }
    )*};
}

impl_from!(
    HandshakeRequest,
    HandshakeResponse,
    ExtendedAuthMsg,
    TunnelCreate,
    TunnelResponse,
    TunnelAuth,
    TunnelAuthResponse,
    ChannelCreate,
    ChannelResponse,
    Data,
    ServiceMessage,
    ReauthMessage,
    CloseChannel,
    CloseChannelResponse
);

#[cfg(test)]
#[path = "packet_tests.rs"]
mod tests;
