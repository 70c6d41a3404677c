//! A small MS-TSGU client over tokio-rustls: connects with either transport, runs the
//! handshake, TUNNEL_CREATE with a token, TUNNEL_AUTH and optionally CHANNEL_CREATE, and
//! returns each status. It speaks exactly what FreeRDP 2.11 sends (the request heads come from
//! [`crate::rdg::http::build_request`]), so it doubles as the health probe's transport.
//!
//! `auto`-style fallback is built in: a `200` to a WebSocket upgrade continues as legacy, as
//! FreeRDP does.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::Transport;
use crate::rdg::http::{self, Head, RequestKind, RequestParams};
use crate::rdg::packet::{
    caps, extended_auth, ChannelCreate, HandshakeRequest, Packet, ParseError, TunnelAuth,
    TunnelCreate,
};
use crate::rdg::websocket::{encode_client_frame, FrameDecoder, Opcode};

/// Largest response head read.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Seed length when the OUT response has no `Content-Length` (FreeRDP's rule, §1.4).
const SEED_LEN: usize = 10;

/// Where and how to connect.
#[derive(Clone)]
pub struct ClientConfig {
    /// Gateway address.
    pub addr: SocketAddr,
    /// TLS server name and `Host` header.
    pub server_name: String,
    /// TLS client configuration (roots).
    pub tls: Arc<rustls::ClientConfig>,
    /// Transport to ask for.
    pub transport: Transport,
    /// Budget for each step (connect, TLS, each response).
    pub timeout: Duration,
}

/// What the HTTP phase showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// Status of the RDG_OUT_DATA response (101 or 200).
    pub status: u16,
    /// Its `Date:` header.
    pub date: Option<String>,
    /// The transport in use (legacy after a `200` to an upgrade).
    pub transport: Transport,
}

/// Why the client stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// TCP or TLS failure (certificate errors arrive here).
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// A step exceeded its budget.
    #[error("timeout: {0}")]
    Timeout(&'static str),
    /// An HTTP status other than the expected one.
    #[error("HTTP status {0}")]
    HttpStatus(u16),
    /// Bytes that do not make sense.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The gateway closed the connection.
    #[error("closed by the gateway")]
    Closed,
}

/// Statuses of a tunnel opening, up to the first failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelStatus {
    /// HANDSHAKE_RESPONSE errorCode.
    pub handshake: u32,
    /// TUNNEL_RESPONSE statusCode (None if not reached).
    pub tunnel: Option<u32>,
    /// TUNNEL_AUTH_RESPONSE errorCode (None if not reached).
    pub tunnel_auth: Option<u32>,
}

impl TunnelStatus {
    /// Whether every step succeeded.
    pub fn is_ok(&self) -> bool {
        self.handshake == 0 && self.tunnel == Some(0) && self.tunnel_auth == Some(0)
    }
}

enum Io {
    Legacy {
        out: Box<TlsStream<TcpStream>>,
        inp: Box<TlsStream<TcpStream>>,
    },
    WebSocket(Box<TlsStream<TcpStream>>),
}

/// A connected MS-TSGU client.
pub struct RdgClient {
    io: Io,
    rx: Vec<u8>,
    ws: FrameDecoder,
    step_timeout: Duration,
    rng: SystemRandom,
    /// A close frame arrived: packets already buffered are still returned.
    ws_closed: bool,
}

async fn step<T, F>(budget: Duration, what: &'static str, f: F) -> Result<T, ClientError>
where
    F: std::future::Future<Output = Result<T, ClientError>>,
{
    timeout(budget, f)
        .await
        .map_err(|_| ClientError::Timeout(what))?
}

async fn tls_connect(cfg: &ClientConfig) -> Result<TlsStream<TcpStream>, ClientError> {
    let tcp = step(cfg.timeout, "tcp connect", async {
        Ok(TcpStream::connect(cfg.addr).await?)
    })
    .await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(cfg.server_name.clone())
        .map_err(|e| ClientError::Protocol(format!("server name: {e}")))?;
    step(cfg.timeout, "tls handshake", async {
        Ok(TlsConnector::from(cfg.tls.clone())
            .connect(name, tcp)
            .await?)
    })
    .await
}

/// Reads a response head; returns it and the bytes after it.
async fn read_response(
    s: &mut TlsStream<TcpStream>,
    budget: Duration,
) -> Result<(Head, Vec<u8>), ClientError> {
    step(budget, "http response", async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match http::parse_response_head(&buf) {
                Ok(Some((head, n))) => {
                    return Ok((head, buf.get(n..).unwrap_or_default().to_vec()))
                }
                Ok(None) if buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(ClientError::Protocol("response head too long".into()))
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    })
    .await
}

fn random<const N: usize>(rng: &SystemRandom) -> [u8; N] {
    let mut b = [0u8; N];
    // SystemRandom only fails if the OS has no randomness source at all.
    let _ = rng.fill(&mut b);
    b
}

impl RdgClient {
    /// Connects and finishes the HTTP phase of `cfg.transport`.
    pub async fn connect(cfg: &ClientConfig) -> Result<(RdgClient, Connected), ClientError> {
        let out = tls_connect(cfg).await?;
        Self::connect_over(cfg, out).await
    }

    /// [`RdgClient::connect`] over a TLS session the caller already opened to `cfg.addr` (the
    /// health probe hands its `tls` check's session on, so one probe costs one handshake).
    /// The legacy transport still opens its IN channel itself.
    pub async fn connect_over(
        cfg: &ClientConfig,
        out: TlsStream<TcpStream>,
    ) -> Result<(RdgClient, Connected), ClientError> {
        let mut out = out;
        let rng = SystemRandom::new();
        let params = RequestParams {
            host: &cfg.server_name,
            connection_id: u128::from_le_bytes(random(&rng)),
            correlation_id: None,
            auth_scheme: Some(http::AUTH_SCHEME_PAA),
        };
        let build = |kind| {
            http::build_request(&params, kind).map_err(|e| ClientError::Protocol(e.to_string()))
        };
        let key = http::base64_encode(&random::<16>(&rng));
        let kind = match cfg.transport {
            Transport::Legacy => RequestKind::OutLegacy,
            Transport::WebSocket => RequestKind::OutWebSocket { key: &key },
        };
        out.write_all(build(kind)?.as_bytes()).await?;
        let (head, mut rest) = read_response(&mut out, cfg.timeout).await?;
        let date = head
            .header("date")
            .map(|d| String::from_utf8_lossy(d).into_owned());
        let mut client = RdgClient {
            io: Io::WebSocket(Box::new(out)),
            rx: Vec::new(),
            ws: FrameDecoder::default(),
            step_timeout: cfg.timeout,
            rng,
            ws_closed: false,
        };
        match (cfg.transport, head.status) {
            (Transport::WebSocket, 101) => {
                let want = http::websocket_accept(key.as_bytes());
                if head.header("sec-websocket-accept") != Some(want.as_bytes()) {
                    return Err(ClientError::Protocol("bad Sec-WebSocket-Accept".into()));
                }
                client.feed_ws(&rest).await?;
                return Ok((
                    client,
                    Connected {
                        status: 101,
                        date,
                        transport: Transport::WebSocket,
                    },
                ));
            }
            (_, 200) => {}
            (_, status) => return Err(ClientError::HttpStatus(status)),
        }
        // Legacy: skip the seed, then open the IN channel.
        let Io::WebSocket(mut out) = client.io else {
            return Err(ClientError::Protocol("unreachable transport state".into()));
        };
        let seed_len = match head.content_length() {
            Ok(Some(n)) => usize::try_from(n).unwrap_or(SEED_LEN).max(SEED_LEN),
            _ => SEED_LEN,
        };
        while rest.len() < seed_len {
            let mut chunk = [0u8; 64];
            let n = step(cfg.timeout, "seed", async {
                Ok(out.read(&mut chunk).await?)
            })
            .await?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            rest.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
        client.rx = rest.get(seed_len..).unwrap_or_default().to_vec();
        let mut inp = tls_connect(cfg).await?;
        inp.write_all(build(RequestKind::In)?.as_bytes()).await?;
        let (in_head, _) = read_response(&mut inp, cfg.timeout).await?;
        if in_head.status != 200 {
            return Err(ClientError::HttpStatus(in_head.status));
        }
        inp.write_all(build(RequestKind::InChunked)?.as_bytes())
            .await?;
        client.io = Io::Legacy {
            out,
            inp: Box::new(inp),
        };
        Ok((
            client,
            Connected {
                status: 200,
                date,
                transport: Transport::Legacy,
            },
        ))
    }

    /// The transport in use.
    pub fn transport(&self) -> Transport {
        match self.io {
            Io::Legacy { .. } => Transport::Legacy,
            Io::WebSocket(_) => Transport::WebSocket,
        }
    }

    /// Writes bytes as they are to the client→gateway stream (IN channel after its heads, or
    /// the WebSocket connection): for tests that frame by hand.
    pub async fn write_wire(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let s = match &mut self.io {
            Io::Legacy { inp, .. } => inp,
            Io::WebSocket(s) => s,
        };
        s.write_all(bytes).await?;
        s.flush().await?;
        Ok(())
    }

    /// Packet bytes framed for the transport: one chunk (legacy, upper-case hex as FreeRDP
    /// sends control packets) or one masked binary frame.
    pub fn frame(&self, packet_bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(packet_bytes.len() + 16);
        match self.io {
            Io::Legacy { .. } => http::encode_chunk(packet_bytes, true, &mut out),
            Io::WebSocket(_) => {
                let _ =
                    encode_client_frame(Opcode::Binary, packet_bytes, random(&self.rng), &mut out);
            }
        }
        out
    }

    /// Sends one packet.
    pub async fn send(&mut self, pkt: &Packet) -> Result<(), ClientError> {
        let bytes = pkt
            .to_vec()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let framed = self.frame(&bytes);
        self.write_wire(&framed).await
    }

    async fn feed_ws(&mut self, mut input: &[u8]) -> Result<(), ClientError> {
        while !input.is_empty() {
            let (used, frame) = self
                .ws
                .decode(input)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            input = input.get(used..).unwrap_or_default();
            match frame {
                None => break,
                Some(f) => match f.opcode {
                    Opcode::Binary | Opcode::Continuation | Opcode::Text => {
                        self.rx.extend_from_slice(&f.payload)
                    }
                    Opcode::Close => {
                        self.ws_closed = true;
                        break;
                    }
                    Opcode::Ping => {
                        let mut pong = Vec::new();
                        let _ = encode_client_frame(
                            Opcode::Pong,
                            &f.payload,
                            random(&self.rng),
                            &mut pong,
                        );
                        self.write_wire(&pong).await?;
                    }
                    Opcode::Pong => {}
                },
            }
        }
        Ok(())
    }

    /// Receives the next packet from the gateway.
    pub async fn recv(&mut self) -> Result<Packet, ClientError> {
        let budget = self.step_timeout;
        step(budget, "packet", async {
            loop {
                match Packet::parse(&self.rx) {
                    Ok((pkt, n)) => {
                        self.rx.drain(..n.min(self.rx.len()));
                        return Ok(pkt);
                    }
                    Err(ParseError::Incomplete { .. }) if self.ws_closed => {
                        return Err(ClientError::Closed)
                    }
                    Err(ParseError::Incomplete { .. }) => {}
                    Err(e) => return Err(ClientError::Protocol(e.to_string())),
                }
                let mut chunk = [0u8; 16 * 1024];
                let (n, ws) = match &mut self.io {
                    Io::Legacy { out, .. } => (out.read(&mut chunk).await?, false),
                    Io::WebSocket(s) => (s.read(&mut chunk).await?, true),
                };
                if n == 0 {
                    return Err(ClientError::Closed);
                }
                let got = chunk.get(..n).unwrap_or_default();
                if ws {
                    self.feed_ws(got).await?;
                } else {
                    self.rx.extend_from_slice(got);
                }
            }
        })
        .await
    }

    /// HANDSHAKE_REQUEST (PAA), TUNNEL_CREATE with `token`, TUNNEL_AUTH with `client_name`;
    /// stops at the first failing status.
    pub async fn open_tunnel(
        &mut self,
        token: &str,
        client_name: &str,
    ) -> Result<TunnelStatus, ClientError> {
        self.open_tunnel_observed(token, client_name, |_| {}).await
    }

    /// [`RdgClient::open_tunnel`], telling `step` which exchange starts before each request
    /// (the health probe names the stage a failure happened in).
    pub async fn open_tunnel_observed(
        &mut self,
        token: &str,
        client_name: &str,
        mut step: impl FnMut(TunnelStep),
    ) -> Result<TunnelStatus, ClientError> {
        step(TunnelStep::Handshake);
        self.send(&Packet::HandshakeRequest(HandshakeRequest {
            ver_major: 1,
            ver_minor: 0,
            client_version: 0,
            extended_auth: extended_auth::PAA,
        }))
        .await?;
        let handshake = match self.recv().await? {
            Packet::HandshakeResponse(r) => r.error_code,
            other => return Err(unexpected("HANDSHAKE_RESPONSE", &other)),
        };
        let mut status = TunnelStatus {
            handshake,
            tunnel: None,
            tunnel_auth: None,
        };
        if handshake != 0 {
            return Ok(status);
        }
        step(TunnelStep::TunnelCreate);
        self.send(&Packet::TunnelCreate(TunnelCreate::with_paa_token(
            caps::FREERDP_CLIENT,
            token,
        )))
        .await?;
        let tunnel = match self.recv().await? {
            Packet::TunnelResponse(r) => r.status,
            other => return Err(unexpected("TUNNEL_RESPONSE", &other)),
        };
        status.tunnel = Some(tunnel);
        if tunnel != 0 {
            return Ok(status);
        }
        step(TunnelStep::TunnelAuth);
        self.send(&Packet::TunnelAuth(TunnelAuth::new(client_name)))
            .await?;
        status.tunnel_auth = match self.recv().await? {
            Packet::TunnelAuthResponse(r) => Some(r.error_code),
            other => return Err(unexpected("TUNNEL_AUTH_RESPONSE", &other)),
        };
        Ok(status)
    }

    /// CHANNEL_CREATE for `host:port`; the CHANNEL_RESPONSE errorCode.
    pub async fn create_channel(&mut self, host: &str, port: u16) -> Result<u32, ClientError> {
        self.send(&Packet::ChannelCreate(ChannelCreate::new(host, port)))
            .await?;
        match self.recv().await? {
            Packet::ChannelResponse(r) => Ok(r.error_code),
            other => Err(unexpected("CHANNEL_RESPONSE", &other)),
        }
    }
}

/// The exchanges of [`RdgClient::open_tunnel_observed`], in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelStep {
    Handshake,
    TunnelCreate,
    TunnelAuth,
}

/// The error for a packet of the wrong type where `want` was due.
pub(crate) fn unexpected(want: &str, got: &Packet) -> ClientError {
    ClientError::Protocol(format!("expected {want}, got {:?}", got.packet_type()))
}
