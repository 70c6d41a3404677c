//! The gateway side of one MS-TSGU tunnel as a pure state machine: packets in, packets and
//! actions out. No sockets, no clock (the caller passes `now_unix`), so every transition is a
//! plain unit test.
//!
//! ```text
//! AwaitHandshake ─HANDSHAKE_REQUEST(PAA)─► AwaitTunnelCreate ─TUNNEL_CREATE(token ok)─►
//! AwaitTunnelAuth ─TUNNEL_AUTH─► AwaitChannelCreate ─CHANNEL_CREATE(authorized)─► Connecting
//! ─connect ok─► ChannelOpen ─CLOSE_CHANNEL / target EOF─► Closed
//! ```
//!
//! Any refusal answers with the HRESULT the FedAuth gateway would use and ends in `Closed`;
//! a request packet in the wrong state is answered with E_PROXY_INTERNALERROR, any other
//! unexpected packet just closes.

use std::fmt;

use crate::rdg::hresult;
use crate::rdg::packet::{
    caps, extended_auth, redir_flags, ChannelCreate, ChannelResponse, CloseChannelResponse, Data,
    HandshakeRequest, HandshakeResponse, Packet, TunnelAuth, TunnelAuthResponse, TunnelCreate,
    TunnelResponse,
};
use crate::token::{self, ParsedToken, Verifier};

/// Largest DATA payload ([MS-TSGU] 2.2.10.6: `cbDataLen` is a u16).
pub const MAX_DATA_PAYLOAD: usize = 65535;
/// channelId the simulator assigns (rdpgw: "channel id is required for Windows clients").
pub const CHANNEL_ID: u32 = 1;

/// Where the tunnel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for HANDSHAKE_REQUEST.
    AwaitHandshake,
    /// Waiting for TUNNEL_CREATE.
    AwaitTunnelCreate,
    /// Waiting for TUNNEL_AUTH.
    AwaitTunnelAuth,
    /// Waiting for CHANNEL_CREATE (a probe stops here).
    AwaitChannelCreate,
    /// The driver is connecting to the target ([`Action::Connect`]).
    Connecting,
    /// DATA flows both ways.
    ChannelOpen,
    /// Finished; the driver closes the connection(s).
    Closed,
}

/// The token verdict of one tunnel, as a FedAuth gateway's event log would state it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenVerdict {
    /// No TUNNEL_CREATE seen (yet).
    Pending,
    /// The token verified.
    Ok {
        /// Its `Host`.
        host: String,
        /// Its `Port`.
        port: u16,
        /// Its `ExpiresOn`.
        expires_on: u64,
    },
    /// The token was refused at verification step `step` (PROTOCOLS.md §5.3; `None` when the
    /// `token-reject` fault refused it without looking) with `hresult`.
    Rejected {
        /// Failed step, 1..=8.
        step: Option<u8>,
        /// HRESULT sent in TUNNEL_RESPONSE (or CHANNEL_RESPONSE for step 8).
        hresult: u32,
        /// What was wrong, never containing the token.
        reason: String,
    },
}

impl TokenVerdict {
    /// Whether the token was accepted at TUNNEL_CREATE.
    pub fn is_ok(&self) -> bool {
        matches!(self, TokenVerdict::Ok { .. })
    }
}

impl fmt::Display for TokenVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenVerdict::Pending => f.write_str("pending"),
            TokenVerdict::Ok { host, port, .. } => write!(f, "ok host={host} port={port}"),
            TokenVerdict::Rejected {
                step,
                hresult: code,
                ..
            } => {
                let step = step.map_or_else(|| "fault".to_owned(), |s| s.to_string());
                write!(f, "rejected step={step} {}", hresult::display(*code))
            }
        }
    }
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Still open.
    Open,
    /// The client sent CLOSE_CHANNEL.
    ClientCloseChannel,
    /// The client closed its connection.
    ClientEof,
    /// The target closed the channel.
    TargetEof,
    /// HANDSHAKE_REQUEST without PAA.
    CapabilityMismatch,
    /// The token was refused at TUNNEL_CREATE.
    TokenRejected,
    /// CHANNEL_CREATE named a resource or port the token does not allow.
    ResourceDenied,
    /// The target could not be reached.
    ConnectFailed,
    /// A packet in the wrong state.
    WrongState,
    /// Bytes that do not frame as packets (or HTTP chunks / WebSocket frames).
    BadPacket,
    /// The `reset-after-handshake` fault.
    FaultReset,
    /// The gateway was killed.
    Killed,
    /// A read or write failed or timed out.
    IoError,
}

impl CloseReason {
    /// Stable name for logs and records.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Open => "open",
            CloseReason::ClientCloseChannel => "client-close-channel",
            CloseReason::ClientEof => "client-eof",
            CloseReason::TargetEof => "target-eof",
            CloseReason::CapabilityMismatch => "capability-mismatch",
            CloseReason::TokenRejected => "token-rejected",
            CloseReason::ResourceDenied => "resource-denied",
            CloseReason::ConnectFailed => "connect-failed",
            CloseReason::WrongState => "wrong-state",
            CloseReason::BadPacket => "bad-packet",
            CloseReason::FaultReset => "fault-reset",
            CloseReason::Killed => "killed",
            CloseReason::IoError => "io-error",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this packet to the client.
    Send(Packet),
    /// Open TCP to one of `resources` (in order) on `port`, then call
    /// [`Session::connect_result`].
    Connect {
        /// Resource names from CHANNEL_CREATE (main then alternates).
        resources: Vec<String>,
        /// Target port.
        port: u16,
    },
    /// Write these bytes to the target.
    Relay(Vec<u8>),
    /// Close the connection(s) after sending what precedes; the session is `Closed`.
    Close(CloseReason),
}

/// Per-tunnel knobs that faults turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// Refuse every token ([`super::Fault::TokenReject`]).
    pub reject_all_tokens: bool,
    /// Close right after HANDSHAKE_RESPONSE ([`super::Fault::ResetAfterHandshake`]).
    pub reset_after_handshake: bool,
}

/// One tunnel's state and what it has learned (for the verdict record).
#[derive(Debug, Clone)]
pub struct Session {
    state: State,
    opts: SessionOptions,
    tunnel_id: u32,
    token: Option<ParsedToken>,
    /// The verdict so far.
    pub verdict: TokenVerdict,
    /// Redacted token ([`token::redact`]) once TUNNEL_CREATE was seen.
    pub token_redacted: Option<String>,
    /// Client name from TUNNEL_AUTH.
    pub client_name: Option<String>,
    /// `resource:port` of CHANNEL_CREATE (first resource name).
    pub target: Option<String>,
    /// HRESULT sent in CHANNEL_RESPONSE.
    pub channel_status: Option<u32>,
    /// Packets refused because of the state they arrived in.
    pub wrong_state_packets: u64,
}

impl Session {
    /// A fresh tunnel with id `tunnel_id` (sent in TUNNEL_RESPONSE).
    pub fn new(tunnel_id: u32, opts: SessionOptions) -> Self {
        Session {
            state: State::AwaitHandshake,
            opts,
            tunnel_id,
            token: None,
            verdict: TokenVerdict::Pending,
            token_redacted: None,
            client_name: None,
            target: None,
            channel_status: None,
            wrong_state_packets: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Feeds one client packet. `verifier` checks the token at TUNNEL_CREATE and the resource
    /// at CHANNEL_CREATE; `now_unix` is the gateway's clock.
    pub fn handle(&mut self, packet: Packet, verifier: &Verifier, now_unix: u64) -> Vec<Action> {
        match (self.state, packet) {
            (State::Closed, _) => Vec::new(),
            (State::AwaitHandshake, Packet::HandshakeRequest(req)) => self.on_handshake(req),
            (State::AwaitTunnelCreate, Packet::TunnelCreate(tc)) => {
                self.on_tunnel_create(&tc, verifier, now_unix)
            }
            (State::AwaitTunnelAuth, Packet::TunnelAuth(ta)) => self.on_tunnel_auth(&ta),
            (State::AwaitChannelCreate, Packet::ChannelCreate(cc)) => {
                self.on_channel_create(&cc, verifier)
            }
            (State::ChannelOpen, Packet::Data(d)) => vec![Action::Relay(d.data)],
            (s, Packet::Keepalive) if s != State::AwaitHandshake => {
                vec![Action::Send(Packet::Keepalive)]
            }
            (
                State::AwaitChannelCreate | State::Connecting | State::ChannelOpen,
                Packet::CloseChannel(_),
            ) => {
                self.state = State::Closed;
                vec![
                    Action::Send(Packet::CloseChannelResponse(CloseChannelResponse {
                        status: hresult::S_OK,
                    })),
                    Action::Close(CloseReason::ClientCloseChannel),
                ]
            }
            // A client answering our CLOSE_CHANNEL, or a packet type we do not know: ignored,
            // as FreeRDP and Windows ignore unknown types once the tunnel is open.
            (s, Packet::CloseChannelResponse(_) | Packet::Unknown { .. })
                if s != State::AwaitHandshake =>
            {
                Vec::new()
            }
            (_, other) => self.wrong_state(&other),
        }
    }

    /// The outcome of [`Action::Connect`]: `Ok` once the target accepted.
    pub fn connect_result(&mut self, ok: bool) -> Vec<Action> {
        if self.state != State::Connecting {
            return Vec::new();
        }
        if ok {
            self.state = State::ChannelOpen;
            self.channel_status = Some(hresult::S_OK);
            vec![Action::Send(Packet::ChannelResponse(ChannelResponse {
                error_code: hresult::S_OK,
                channel_id: Some(CHANNEL_ID),
                ..ChannelResponse::default()
            }))]
        } else {
            self.refuse_channel(
                hresult::E_PROXY_TS_CONNECTFAILED,
                CloseReason::ConnectFailed,
            )
        }
    }

    /// Bytes read from the target: DATA packets to the client (split at 65535 bytes).
    pub fn target_data(&mut self, bytes: &[u8]) -> Vec<Action> {
        if self.state != State::ChannelOpen {
            return Vec::new();
        }
        bytes
            .chunks(MAX_DATA_PAYLOAD)
            .map(|c| Action::Send(Packet::Data(Data { data: c.to_vec() })))
            .collect()
    }

    /// The target closed: tell the client with CLOSE_CHANNEL and end.
    pub fn target_closed(&mut self) -> Vec<Action> {
        if self.state != State::ChannelOpen {
            return Vec::new();
        }
        self.state = State::Closed;
        vec![
            Action::Send(Packet::CloseChannel(crate::rdg::packet::CloseChannel {
                status: hresult::S_OK,
            })),
            Action::Close(CloseReason::TargetEof),
        ]
    }

    fn on_handshake(&mut self, req: HandshakeRequest) -> Vec<Action> {
        let ok = req.ver_major == 1 && req.extended_auth & extended_auth::PAA != 0;
        let resp = Packet::HandshakeResponse(HandshakeResponse {
            error_code: if ok {
                hresult::S_OK
            } else {
                hresult::E_PROXY_CAPABILITYMISMATCH
            },
            ver_major: 1,
            ver_minor: 0,
            server_version: 0,
            extended_auth: extended_auth::PAA,
        });
        if !ok {
            self.state = State::Closed;
            return vec![
                Action::Send(resp),
                Action::Close(CloseReason::CapabilityMismatch),
            ];
        }
        if self.opts.reset_after_handshake {
            self.state = State::Closed;
            return vec![Action::Send(resp), Action::Close(CloseReason::FaultReset)];
        }
        self.state = State::AwaitTunnelCreate;
        vec![Action::Send(resp)]
    }

    fn on_tunnel_create(
        &mut self,
        tc: &TunnelCreate,
        verifier: &Verifier,
        now_unix: u64,
    ) -> Vec<Action> {
        let result = match &tc.paa_cookie {
            None => Err((
                Some(1),
                hresult::E_PROXY_COOKIE_BADPACKET,
                "no PAA cookie".to_owned(),
            )),
            Some(cookie) => {
                self.token_redacted = Some(token::redact(&lossy_utf16(cookie)));
                if self.opts.reject_all_tokens {
                    Err((
                        None,
                        hresult::E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED,
                        "token-reject fault".to_owned(),
                    ))
                } else {
                    verifier
                        .verify_cookie_utf16(cookie, now_unix)
                        .map_err(|e| (Some(e.step()), e.hresult(), e.to_string()))
                }
            }
        };
        match result {
            Ok(parsed) => {
                self.verdict = TokenVerdict::Ok {
                    host: parsed.host.clone(),
                    port: parsed.port,
                    expires_on: parsed.expires_on,
                };
                self.token = Some(parsed);
                self.state = State::AwaitTunnelAuth;
                vec![Action::Send(Packet::TunnelResponse(TunnelResponse {
                    server_version: 0,
                    status: hresult::S_OK,
                    tunnel_id: Some(self.tunnel_id),
                    caps: Some(caps::IDLE_TIMEOUT),
                    ..TunnelResponse::default()
                }))]
            }
            Err((step, code, reason)) => {
                self.verdict = TokenVerdict::Rejected {
                    step,
                    hresult: code,
                    reason,
                };
                self.state = State::Closed;
                vec![
                    Action::Send(Packet::TunnelResponse(TunnelResponse {
                        status: code,
                        ..TunnelResponse::default()
                    })),
                    Action::Close(CloseReason::TokenRejected),
                ]
            }
        }
    }

    fn on_tunnel_auth(&mut self, ta: &TunnelAuth) -> Vec<Action> {
        self.client_name = Some(ta.client_name.to_string_lossy());
        self.state = State::AwaitChannelCreate;
        vec![Action::Send(Packet::TunnelAuthResponse(
            TunnelAuthResponse {
                error_code: hresult::S_OK,
                redir_flags: Some(redir_flags::ENABLE_ALL),
                idle_timeout: Some(0),
                soh_response: None,
            },
        ))]
    }

    fn on_channel_create(&mut self, cc: &ChannelCreate, verifier: &Verifier) -> Vec<Action> {
        let resources: Vec<String> = cc
            .resources
            .iter()
            .chain(cc.alt_resources.iter())
            .map(|r| r.to_string_lossy())
            .collect();
        self.target = Some(format!(
            "{}:{}",
            resources.first().map_or("", String::as_str),
            cc.port
        ));
        let Some(token) = &self.token else {
            // Unreachable through `handle` (state order), kept total.
            return self.refuse_channel(hresult::E_PROXY_INTERNALERROR, CloseReason::WrongState);
        };
        let names: Vec<&str> = resources.iter().map(String::as_str).collect();
        if let Err(e) = verifier.authorize_resource(token, &names, cc.port) {
            self.verdict = TokenVerdict::Rejected {
                step: Some(e.step()),
                hresult: e.hresult(),
                reason: e.to_string(),
            };
            return self.refuse_channel(e.hresult(), CloseReason::ResourceDenied);
        }
        self.state = State::Connecting;
        vec![Action::Connect {
            resources,
            port: cc.port,
        }]
    }

    fn refuse_channel(&mut self, code: u32, reason: CloseReason) -> Vec<Action> {
        self.state = State::Closed;
        self.channel_status = Some(code);
        vec![
            Action::Send(Packet::ChannelResponse(ChannelResponse {
                error_code: code,
                ..ChannelResponse::default()
            })),
            Action::Close(reason),
        ]
    }

    fn wrong_state(&mut self, packet: &Packet) -> Vec<Action> {
        self.wrong_state_packets += 1;
        self.state = State::Closed;
        let code = hresult::E_PROXY_INTERNALERROR;
        let answer = match packet {
            Packet::HandshakeRequest(_) => Some(Packet::HandshakeResponse(HandshakeResponse {
                error_code: code,
                ver_major: 1,
                ver_minor: 0,
                server_version: 0,
                extended_auth: extended_auth::PAA,
            })),
            Packet::TunnelCreate(_) => Some(Packet::TunnelResponse(TunnelResponse {
                status: code,
                ..TunnelResponse::default()
            })),
            Packet::TunnelAuth(_) => Some(Packet::TunnelAuthResponse(TunnelAuthResponse {
                error_code: code,
                ..TunnelAuthResponse::default()
            })),
            Packet::ChannelCreate(_) => Some(Packet::ChannelResponse(ChannelResponse {
                error_code: code,
                ..ChannelResponse::default()
            })),
            _ => None,
        };
        let mut actions: Vec<Action> = answer.into_iter().map(Action::Send).collect();
        actions.push(Action::Close(CloseReason::WrongState));
        actions
    }
}

/// UTF-16LE bytes as text for redaction only (invalid units become U+FFFD).
fn lossy_utf16(bytes: &[u8]) -> String {
    crate::rdg::text::Utf16Text::from_wire(bytes.to_vec()).to_string_lossy()
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
