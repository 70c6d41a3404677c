//! MS-TSGU (RD Gateway HTTP transport) codec: pure, no I/O. The health probe's handshake client
//! and the simulated gateway drive it; they own the sockets.
//!
//! - [`packet`]: the HTTP-transport packets ([MS-TSGU] 2.2.10): framing check, parse, encode.
//! - [`hresult`]: status codes, their names and the failure rule (PROTOCOLS.md §4.1).
//! - [`text`]: UTF-16LE text as the packets carry it; strict decoding is a separate step.
//! - [`http`]: RDG_OUT_DATA / RDG_IN_DATA request header blocks, response-head parsing, chunked
//!   transfer coding (encode one packet per chunk, incremental bounded decoder), and the
//!   WebSocket accept value.
//! - [`websocket`]: RFC 6455 frame encoder and incremental decoder (MS-TSGU over WebSocket).
//! - `fuzzing`: the logic behind the `fuzz/` targets, kept here so plain tests run it too.
//!
//! Errors follow the crate's split: [`packet::ParseError::Incomplete`] (and its counterparts in
//! [`http`] / [`websocket`]) means "read more", everything else means the peer sent bytes that
//! cannot be framed and the connection should end.

pub mod hresult;
pub mod http;
pub mod packet;
pub mod text;
pub mod websocket;

#[doc(hidden)]
pub mod fuzzing;

mod reader;

pub use packet::{Packet, PacketType, ParseError};
