//! RFC 6455 frames for MS-TSGU over WebSocket (PROTOCOLS.md §2). Pure: the caller supplies
//! masking keys and owns the socket.
//!
//! Client → server frames are masked, server → client frames are not (RFC 6455 §5.1). The
//! decoder accepts both and reports [`Frame::masked`] so the caller applies its policy (FreeRDP
//! only warns about a masked server frame). It does not reassemble fragmented messages: RD
//! Gateway payload is a byte stream (FreeRDP), so the caller appends Binary/Continuation payloads
//! to its packet buffer and answers Ping/Close.

/// Default cap on one frame's payload: 1 MiB (a client frame holds one packet ≤ 64 KiB + 16; a
/// gateway may coalesce several packets into one frame).
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;
/// Control frames carry at most 125 bytes (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes (RFC 6455 §5.2); reserved values are refused by the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// 0x0: continuation of a fragmented message.
    Continuation,
    /// 0x1: text.
    Text,
    /// 0x2: binary (every RDG packet).
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl Opcode {
    /// The 4-bit wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// The opcode for a wire value, `None` if reserved.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// Close, Ping and Pong.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Frames that violate RFC 6455 or the configured cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// RSV1–3 set without a negotiated extension (§5.2).
    #[error("reserved bits set in frame byte {byte:#04x}")]
    ReservedBits {
        /// The first frame byte.
        byte: u8,
    },
    /// A reserved opcode (§5.2).
    #[error("reserved opcode {opcode:#x}")]
    ReservedOpcode {
        /// The opcode.
        opcode: u8,
    },
    /// A control frame longer than 125 bytes (§5.5), on decode or encode.
    #[error("control frame payload of {len} bytes exceeds 125")]
    ControlTooLong {
        /// The payload length.
        len: u64,
    },
    /// A control frame without FIN (§5.5).
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A 64-bit length with the most significant bit set (§5.2).
    #[error("64-bit payload length has its top bit set")]
    LengthMsbSet,
    /// The payload exceeds the decoder's cap.
    #[error("frame payload of {len} bytes exceeds the cap of {max}")]
    TooLarge {
        /// The declared payload length.
        len: u64,
        /// The cap.
        max: usize,
    },
}

/// One decoded frame, payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: Opcode,
    /// Whether the frame was masked on the wire (client frames must be, server frames not).
    pub masked: bool,
    /// The unmasked payload.
    pub payload: Vec<u8>,
}

/// Appends one final (`FIN=1`) frame. `mask` is `Some(key)` for client frames (masked, key from
/// a CSPRNG per RFC 6455 §5.3) and `None` for server frames. Control frames over 125 bytes are
/// refused. Returns the bytes appended.
pub fn encode_frame(
    opcode: Opcode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
    out: &mut Vec<u8>,
) -> Result<usize, WsError> {
    let len = payload.len();
    if opcode.is_control() && len > MAX_CONTROL_PAYLOAD {
        return Err(WsError::ControlTooLong { len: len as u64 });
    }
    let start = out.len();
    out.push(0x80 | opcode.to_u8());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if let Ok(len16) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        }
        None => out.extend_from_slice(payload),
    }
    Ok(out.len() - start)
}

/// A client frame: masked with `mask_key`.
pub fn encode_client_frame(
    opcode: Opcode,
    payload: &[u8],
    mask_key: [u8; 4],
    out: &mut Vec<u8>,
) -> Result<usize, WsError> {
    encode_frame(opcode, payload, Some(mask_key), out)
}

/// A server frame: unmasked.
pub fn encode_server_frame(
    opcode: Opcode,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, WsError> {
    encode_frame(opcode, payload, None, out)
}

#[derive(Debug, Clone)]
enum DecodeState {
    /// Collecting the header into `header[..have]`; `need` is its full length once known.
    Header { have: usize, need: usize },
    /// Collecting `left` more payload bytes.
    Payload { left: usize },
}

/// Incremental frame decoder: feed any split of the stream, get whole frames.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_payload: usize,
    state: DecodeState,
    header: [u8; 14],
    fin: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    payload: Vec<u8>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl FrameDecoder {
    /// A decoder refusing payloads larger than `max_payload`.
    pub fn new(max_payload: usize) -> Self {
        Self {
            max_payload,
            state: DecodeState::Header { have: 0, need: 2 },
            header: [0; 14],
            fin: false,
            opcode: Opcode::Binary,
            mask: None,
            payload: Vec::new(),
        }
    }

    /// Whether the decoder is between frames (no partial frame buffered).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, DecodeState::Header { have: 0, .. })
    }

    /// Consumes bytes from `input` until one frame completes or the input ends. Returns the bytes
    /// consumed and the frame, if one completed; call again with the rest. After an error the
    /// decoder is unusable.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Frame>), WsError> {
        let mut pos = 0;
        loop {
            match self.state {
                DecodeState::Header { have, need } => {
                    if have == need {
                        // A complete header: validated below, may move to Payload or finish.
                        if let Some(frame) = self.header_done(need)? {
                            return Ok((pos, Some(frame)));
                        }
                        continue;
                    }
                    let Some(&b) = input.get(pos) else {
                        return Ok((pos, None));
                    };
                    if let Some(slot) = self.header.get_mut(have) {
                        *slot = b;
                    }
                    pos += 1;
                    let have = have + 1;
                    let need = if have == 2 { self.first_two()? } else { need };
                    self.state = DecodeState::Header { have, need };
                }
                DecodeState::Payload { left } => {
                    let avail = input.get(pos..).unwrap_or_default();
                    if avail.is_empty() {
                        return Ok((pos, None));
                    }
                    let n = left.min(avail.len());
                    let offset = self.payload.len();
                    let bytes = avail.get(..n).unwrap_or_default();
                    match self.mask {
                        Some(key) => self.payload.extend(
                            bytes
                                .iter()
                                .enumerate()
                                .map(|(i, b)| b ^ key.get((offset + i) % 4).copied().unwrap_or(0)),
                        ),
                        None => self.payload.extend_from_slice(bytes),
                    }
                    pos += n;
                    if n == left {
                        return Ok((pos, Some(self.finish())));
                    }
                    self.state = DecodeState::Payload { left: left - n };
                }
            }
        }
    }

    /// Validates the first two bytes and returns the full header length.
    fn first_two(&mut self) -> Result<usize, WsError> {
        let [b0, b1] = [self.header[0], self.header[1]];
        if b0 & 0x70 != 0 {
            return Err(WsError::ReservedBits { byte: b0 });
        }
        let opcode =
            Opcode::from_u8(b0 & 0x0F).ok_or(WsError::ReservedOpcode { opcode: b0 & 0x0F })?;
        let fin = b0 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        if opcode.is_control() {
            if !fin {
                return Err(WsError::FragmentedControl);
            }
            if usize::from(len7) > MAX_CONTROL_PAYLOAD {
                return Err(WsError::ControlTooLong {
                    len: u64::from(len7),
                });
            }
        }
        self.fin = fin;
        self.opcode = opcode;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        Ok(2 + ext + mask)
    }

    /// Interprets a complete header of `len` bytes.
    fn header_done(&mut self, len: usize) -> Result<Option<Frame>, WsError> {
        let h = &self.header;
        let len7 = h[1] & 0x7F;
        let (payload_len, mask_at) = match len7 {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(h.get(2..10).unwrap_or(&[0; 8]));
                let n = u64::from_be_bytes(b);
                if n & (1 << 63) != 0 {
                    return Err(WsError::LengthMsbSet);
                }
                (n, 10)
            }
            n => (u64::from(n), 2),
        };
        self.mask = if h[1] & 0x80 != 0 {
            let mut key = [0u8; 4];
            key.copy_from_slice(h.get(mask_at..mask_at + 4).unwrap_or(&[0; 4]));
            Some(key)
        } else {
            None
        };
        debug_assert_eq!(len, mask_at + if self.mask.is_some() { 4 } else { 0 });
        let left = match usize::try_from(payload_len) {
            Ok(n) if n <= self.max_payload => n,
            _ => {
                return Err(WsError::TooLarge {
                    len: payload_len,
                    max: self.max_payload,
                })
            }
        };
        self.payload = Vec::with_capacity(left.min(64 * 1024));
        if left == 0 {
            return Ok(Some(self.finish()));
        }
        self.state = DecodeState::Payload { left };
        Ok(None)
    }

    fn finish(&mut self) -> Frame {
        self.state = DecodeState::Header { have: 0, need: 2 };
        Frame {
            fin: self.fin,
            opcode: self.opcode,
            masked: self.mask.is_some(),
            payload: std::mem::take(&mut self.payload),
        }
    }
}

#[cfg(test)]
#[path = "websocket_tests.rs"]
mod tests;
