//! The HTTP layer of the MS-TSGU transport, pure (PROTOCOLS.md §1.2, §1.4, §2): request header
//! blocks for RDG_OUT_DATA / RDG_IN_DATA, response/request head parsing (via `httparse`), the
//! chunked transfer coding the IN channel uses, and the WebSocket accept value.

use std::fmt::Write as _;

/// Resource path of the HTTP transport ([MS-TSGU] 2.1.2, 4.2.1).
pub const RESOURCE_PATH: &str = "/remoteDesktopGateway/";
/// Method creating the OUT channel ([MS-TSGU] 2.2.3.1.2).
pub const METHOD_OUT: &str = "RDG_OUT_DATA";
/// Method creating the IN channel ([MS-TSGU] 2.2.3.1.1).
pub const METHOD_IN: &str = "RDG_IN_DATA";
/// `User-Agent` every known client sends (FreeRDP mimics mstsc).
pub const USER_AGENT: &str = "MS-RDGateway/1.0";
/// `RDG-Auth-Scheme` value for access-token (PAA) mode (FreeRDP `rdg_new`; PROTOCOLS.md §1.2).
pub const AUTH_SCHEME_PAA: &str = "PAA";
/// RFC 6455 §1.3 GUID appended to the key for `Sec-WebSocket-Accept`.
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Default cap on one chunk's size in [`ChunkedDecoder`]: 1 MiB. Clients send one packet
/// (≤ 64 KiB + 16) per chunk; a gateway's chunked OUT body may coalesce several, so allow room.
pub const DEFAULT_MAX_CHUNK: usize = 1 << 20;
/// Cap on a chunk-size line including extensions (RFC 9112 §7.1.1 puts none; we do).
pub const MAX_CHUNK_LINE: usize = 1024;
/// Cap on the trailer section after the last chunk.
pub const MAX_TRAILER: usize = 8 * 1024;
/// Header count cap for [`parse_response_head`] / [`parse_request_head`].
pub const MAX_HEADERS: usize = 64;

/// Errors of the HTTP helpers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// A value to be put in a header holds bytes outside visible ASCII (or is empty); refused so
    /// configuration cannot inject headers.
    #[error("header {header} value is empty or not visible ASCII")]
    BadHeaderValue {
        /// The header.
        header: &'static str,
    },
    /// The peer's HTTP head does not parse.
    #[error("malformed HTTP head: {0}")]
    Malformed(String),
    /// A `Content-Length` that is not a decimal number, or several that disagree.
    #[error("bad Content-Length")]
    BadContentLength,
}

/// Formats a GUID as `RDG-Connection-Id` wants it: braced, upper case,
/// `{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}` ([MS-TSGU] 2.2.3.2.1). The 128 bits are printed
/// most significant first.
pub fn format_guid(id: u128) -> String {
    let hex = format!("{id:032X}");
    let part = |a: usize, b: usize| hex.get(a..b).unwrap_or_default();
    format!(
        "{{{}-{}-{}-{}-{}}}",
        part(0, 8),
        part(8, 12),
        part(12, 16),
        part(16, 20),
        part(20, 32)
    )
}

/// Which header block to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind<'a> {
    /// `RDG_OUT_DATA`, `Connection: Keep-Alive`, `Content-Length: 0` (legacy transport).
    OutLegacy,
    /// `RDG_OUT_DATA` with the WebSocket upgrade headers (§2); `key` is sent as is.
    OutWebSocket {
        /// `Sec-Websocket-Key` value (normally base64 of 16 random bytes).
        key: &'a str,
    },
    /// First `RDG_IN_DATA`, `Content-Length: 0`.
    In,
    /// Second `RDG_IN_DATA` on the same connection, `Transfer-Encoding: chunked`; packets follow
    /// as chunks ([`encode_chunk`]).
    InChunked,
}

/// The per-tunnel values of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestParams<'a> {
    /// `Host`: gateway host name, no port.
    pub host: &'a str,
    /// `RDG-Connection-Id`, identical on IN and OUT.
    pub connection_id: u128,
    /// Optional `RDG-Correlation-Id`.
    pub correlation_id: Option<u128>,
    /// `RDG-Auth-Scheme`; [`AUTH_SCHEME_PAA`] for the probe, `None` to omit.
    pub auth_scheme: Option<&'a str>,
}

fn check_value(header: &'static str, value: &str) -> Result<(), HttpError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HttpError::BadHeaderValue { header });
    }
    Ok(())
}

/// Builds the request header block (request line to the empty line) exactly as PROTOCOLS.md
/// §1.2 / §2 lists it, in FreeRDP 2.11's order. No `Authorization` header (PAA mode).
pub fn build_request(
    params: &RequestParams<'_>,
    kind: RequestKind<'_>,
) -> Result<String, HttpError> {
    check_value("Host", params.host)?;
    if let Some(scheme) = params.auth_scheme {
        check_value("RDG-Auth-Scheme", scheme)?;
    }
    let method = match kind {
        RequestKind::OutLegacy | RequestKind::OutWebSocket { .. } => METHOD_OUT,
        RequestKind::In | RequestKind::InChunked => METHOD_IN,
    };
    let mut s = String::with_capacity(512);
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "{method} {RESOURCE_PATH} HTTP/1.1\r\n\
         Cache-Control: no-cache\r\n\
         Pragma: no-cache\r\n\
         Accept: */*\r\n\
         User-Agent: {USER_AGENT}\r\n\
         Host: {}\r\n",
        params.host
    );
    match kind {
        RequestKind::OutWebSocket { key } => {
            check_value("Sec-Websocket-Key", key)?;
            let _ = write!(
                s,
                "Connection: Upgrade\r\n\
                 Upgrade: websocket\r\n\
                 Sec-Websocket-Version: 13\r\n\
                 Sec-Websocket-Key: {key}\r\n"
            );
        }
        _ => s.push_str("Connection: Keep-Alive\r\n"),
    }
    let _ = write!(
        s,
        "RDG-Connection-Id: {}\r\n",
        format_guid(params.connection_id)
    );
    if let Some(id) = params.correlation_id {
        let _ = write!(s, "RDG-Correlation-Id: {}\r\n", format_guid(id));
    }
    if let Some(scheme) = params.auth_scheme {
        let _ = write!(s, "RDG-Auth-Scheme: {scheme}\r\n");
    }
    match kind {
        RequestKind::InChunked => s.push_str("Transfer-Encoding: chunked\r\n"),
        _ => s.push_str("Content-Length: 0\r\n"),
    }
    s.push_str("\r\n");
    Ok(s)
}

/// A parsed HTTP head (request or response): what the probe and the simulator need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Head {
    /// Response status code (0 for a request).
    pub status: u16,
    /// Request method (empty for a response).
    pub method: String,
    /// Request path (empty for a response).
    pub path: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Whether some `name` header holds `token` in its comma-separated list (case-insensitive),
    /// as rdpgw checks `Connection: upgrade` / `Upgrade: websocket`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }

    /// `Content-Length`, if present; several values must agree.
    pub fn content_length(&self) -> Result<Option<u64>, HttpError> {
        let mut found = None;
        for (_, v) in self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        {
            let text =
                std::str::from_utf8(v.trim_ascii()).map_err(|_| HttpError::BadContentLength)?;
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::BadContentLength);
            }
            let n: u64 = text.parse().map_err(|_| HttpError::BadContentLength)?;
            if found.is_some_and(|f| f != n) {
                return Err(HttpError::BadContentLength);
            }
            found = Some(n);
        }
        Ok(found)
    }

    /// Whether `Transfer-Encoding` ends in `chunked`.
    pub fn is_chunked(&self) -> bool {
        self.has_token("transfer-encoding", "chunked")
    }
}

fn collect_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect()
}

/// Parses a response head at the start of `buf`: `Ok(None)` if incomplete, else the head and its
/// length in bytes (the body starts there).
pub fn parse_response_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(n)) => Ok(Some((
            Head {
                status: resp.code.unwrap_or(0),
                headers: collect_headers(resp.headers),
                ..Head::default()
            },
            n,
        ))),
        Err(e) => Err(HttpError::Malformed(e.to_string())),
    }
}

/// Parses a request head (accepts the custom RDG methods): `Ok(None)` if incomplete.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(n)) => Ok(Some((
            Head {
                method: req.method.unwrap_or_default().to_string(),
                path: req.path.unwrap_or_default().to_string(),
                headers: collect_headers(req.headers),
                ..Head::default()
            },
            n,
        ))),
        Err(e) => Err(HttpError::Malformed(e.to_string())),
    }
}

/// Appends `bytes` as one chunk, `<hex size>\r\n<bytes>\r\n` (PROTOCOLS.md §1.4). FreeRDP writes
/// the size in upper-case hex for control packets and lower-case for DATA; peers accept both.
/// An empty `bytes` would be the last-chunk marker: use [`LAST_CHUNK`] for that deliberately.
pub fn encode_chunk(bytes: &[u8], upper_hex: bool, out: &mut Vec<u8>) {
    let size = if upper_hex {
        format!("{:X}\r\n", bytes.len())
    } else {
        format!("{:x}\r\n", bytes.len())
    };
    out.extend_from_slice(size.as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk with an empty trailer, ending a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Malformed chunked coding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkedError {
    /// A chunk-size line does not start with a hex digit or holds an unexpected byte.
    #[error("bad chunk-size byte {byte:#04x}")]
    BadSize {
        /// The byte.
        byte: u8,
    },
    /// A chunk is larger than the decoder's cap.
    #[error("chunk larger than the cap of {max} bytes")]
    ChunkTooLarge {
        /// The cap.
        max: usize,
    },
    /// A chunk-size line is longer than [`MAX_CHUNK_LINE`].
    #[error("chunk-size line longer than {MAX_CHUNK_LINE} bytes")]
    LineTooLong,
    /// CR LF expected after a size line or chunk data.
    #[error("expected CRLF, found {found:#04x}")]
    ExpectedCrlf {
        /// The byte found instead.
        found: u8,
    },
    /// The trailer section is longer than [`MAX_TRAILER`].
    #[error("trailer longer than {MAX_TRAILER} bytes")]
    TrailerTooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits; `digits` seen so far.
    Size { digits: usize },
    /// Skipping chunk extensions up to CR.
    Ext,
    /// CR seen after the size line, LF expected.
    SizeLf,
    /// `left` data bytes to copy.
    Data { left: usize },
    /// CR expected after data.
    DataCr,
    /// LF expected after data.
    DataLf,
    /// At the start of a trailer line.
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// CR seen at the end of a trailer line; `empty` if the line was empty (end of body).
    TrailerLf { empty: bool },
    /// The body is complete.
    Done,
}

/// Incremental decoder of a chunked body (RFC 9112 §7.1) with bounded chunk size, line length
/// and trailer. Feed it any split of the input; decoded bytes are appended to the caller's
/// buffer, which then frames packets with [`super::packet::Packet::parse`].
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    max_chunk: usize,
    size: usize,
    line: usize,
    trailer: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CHUNK)
    }
}

impl ChunkedDecoder {
    /// A decoder refusing chunks larger than `max_chunk` bytes.
    pub fn new(max_chunk: usize) -> Self {
        Self {
            state: ChunkState::Size { digits: 0 },
            max_chunk,
            size: 0,
            line: 0,
            trailer: 0,
        }
    }

    /// Whether the last chunk and trailer have been read; later bytes belong to the next message.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input`, appending chunk data to `out`; returns the bytes consumed, which is
    /// all of `input` unless the body ended inside it. After an error the decoder is unusable.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkedError> {
        let mut pos = 0;
        while let Some(&b) = input.get(pos) {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data { left } => {
                    let avail = input.get(pos..).unwrap_or_default();
                    let n = left.min(avail.len());
                    out.extend_from_slice(avail.get(..n).unwrap_or_default());
                    pos += n;
                    self.state = if left == n {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data { left: left - n }
                    };
                    continue;
                }
                ChunkState::Size { digits } => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(ChunkedError::LineTooLong);
                    }
                    if let Some(d) = (b as char).to_digit(16) {
                        // size <= max_chunk before the shift, so no overflow for sane caps.
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(d as usize))
                            .filter(|&s| s <= self.max_chunk)
                            .ok_or(ChunkedError::ChunkTooLarge {
                                max: self.max_chunk,
                            })?;
                        self.state = ChunkState::Size { digits: digits + 1 };
                    } else if digits == 0 {
                        return Err(ChunkedError::BadSize { byte: b });
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        self.state = ChunkState::Ext;
                    } else if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else {
                        return Err(ChunkedError::BadSize { byte: b });
                    }
                }
                ChunkState::Ext => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(ChunkedError::LineTooLong);
                    }
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::ExpectedCrlf { found: b });
                    }
                    self.line = 0;
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data { left: self.size }
                    };
                    self.size = 0;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError::ExpectedCrlf { found: b });
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::ExpectedCrlf { found: b });
                    }
                    self.state = ChunkState::Size { digits: 0 };
                }
                ChunkState::TrailerStart | ChunkState::TrailerLine => {
                    self.trailer += 1;
                    if self.trailer > MAX_TRAILER {
                        return Err(ChunkedError::TrailerTooLarge);
                    }
                    self.state = if b == b'\r' {
                        ChunkState::TrailerLf {
                            empty: self.state == ChunkState::TrailerStart,
                        }
                    } else {
                        ChunkState::TrailerLine
                    };
                }
                ChunkState::TrailerLf { empty } => {
                    if b != b'\n' {
                        return Err(ChunkedError::ExpectedCrlf { found: b });
                    }
                    self.state = if empty {
                        ChunkState::Done
                    } else {
                        ChunkState::TrailerStart
                    };
                }
            }
            pos += 1;
        }
        Ok(pos)
    }
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |i: u32| char::from(ALPHABET[(i & 63) as usize]);
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = |i: usize| u32::from(group.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        out.push(if group.len() > 1 { sym(n >> 6) } else { '=' });
        out.push(if group.len() > 2 { sym(n) } else { '=' });
    }
    out
}

/// `Sec-WebSocket-Accept` for a key, computed over the key bytes **as sent** (RFC 6455 §4.2.2):
/// FreeRDP 2.11 sends a 15-character key that is not base64, which must still work.
pub fn websocket_accept(key_bytes: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key_bytes);
    ctx.update(WEBSOCKET_GUID.as_bytes());
    base64_encode(ctx.finish().as_ref())
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
