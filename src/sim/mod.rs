//! A simulated RD Gateway: what a Windows RD Gateway with the VMM Console Connect (FedAuth)
//! plug-in looks like on the wire, for tests, `portico lab` and failover drills.
//!
//! It serves TLS, both MS-TSGU HTTP transports (legacy RDG_OUT_DATA/RDG_IN_DATA pairs and
//! WebSocket, PROTOCOLS.md §1.4 and §2), checks the PAA cookie with [`crate::token::Verifier`]
//! exactly as the plug-in would (steps 1–7 at TUNNEL_CREATE, step 8 at CHANNEL_CREATE), opens
//! the channel to the target host and relays bytes. Everything it decided is kept as one
//! [`TunnelRecord`] per tunnel and logged as one `sim.tunnel` line with the token redacted.
//!
//! - [`session`]: the protocol state machine, pure (packets in, packets and actions out).
//! - `server`: the only file with sockets: TLS accept, HTTP heads, IN/OUT pairing,
//!   WebSocket framing, the relay loop, faults, counters and records.
//! - [`client`]: a small MS-TSGU client over tokio-rustls (legacy or WebSocket), used by the
//!   tests and meant to be shared with the health probe.
//! - [`certs`]: a throw-away CA with a good, an expired and a wrong-name server certificate,
//!   for the `expired-cert` / `wrong-san` faults.
//! - `fault`: [`Fault`] (parsed from `token-reject`, `slow:250`, …) and [`Faults`].
//! - [`control`]: the line-based control socket (`fault slow:250`, `stats`, `records`).
//!
//! Control: [`SimGateway::control`] returns a cloneable [`SimControl`] handle (and
//! [`SimGateway::serve_control`] exposes the same over a line-based socket); faults set
//! through it apply to the next connection / request / TUNNEL_CREATE, established tunnels are
//! left alone (as on a real gateway whose configuration changes).
//!
//! Counters are plain atomics read through [`SimControl::stats`] (a [`StatsSnapshot`]): the
//! simulator is a test peer, not a monitored service, and keeping it out of the Prometheus
//! registry keeps a lab's `/metrics` about Portico only.
//!
//! Memory per connection is bounded: one 16 KiB socket read buffer per direction, a packet
//! buffer of at most one maximal packet (64 KiB + 16, [`crate::rdg::packet::MAX_CONTROL_PACKET`])
//! plus one read or one WebSocket frame (≤ [`MAX_WS_PAYLOAD`]), a request head of at most
//! [`MAX_HEAD`] bytes, and the record. The pairing registry holds at most [`MAX_PENDING`]
//! waiting OUT channels, each for at most `SimConfig::pair_timeout`; [`MAX_RECORDS`] records
//! are kept (oldest dropped).

pub mod certs;
pub mod client;
pub mod control;
mod fault;
mod server;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use fault::{Fault, FaultParseError, Faults, MAX_SLOW_MS};
pub use server::{SimControl, SimGateway, StatsSnapshot};
pub use session::{CloseReason, TokenVerdict};

use crate::token::Verifier;

/// Largest HTTP request head read (bytes); larger gets `400`.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest WebSocket frame payload accepted (a DATA packet is at most 65545 bytes).
pub const MAX_WS_PAYLOAD: usize = 128 * 1024;
/// Largest accepted HTTP chunk on the IN channel.
pub const MAX_CHUNK: usize = 128 * 1024;
/// OUT channels waiting for their IN channel, at most.
pub const MAX_PENDING: usize = 256;
/// Tunnel records kept.
pub const MAX_RECORDS: usize = 4096;
/// How long an OUT channel waits for its IN channel by default.
pub const DEFAULT_PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// The OUT channel's seed body: `AB CD` × 5, as Windows Server 2019 sends (PROTOCOLS.md §1.4).
pub const SEED: [u8; 10] = [0xAB, 0xCD, 0xAB, 0xCD, 0xAB, 0xCD, 0xAB, 0xCD, 0xAB, 0xCD];

/// How a simulated gateway is set up.
#[derive(Clone)]
pub struct SimConfig {
    /// Node name, for logs and records (`web01`).
    pub name: String,
    /// The normal TLS server configuration (farm certificate).
    pub tls: Arc<rustls::ServerConfig>,
    /// The FedAuth plug-in's trust list and policy.
    pub verifier: Verifier,
    /// Faults active from the start.
    pub faults: Faults,
    /// Presented under [`Fault::ExpiredCert`] (without it the fault has no effect; a warning
    /// is logged).
    pub alt_tls_expired: Option<Arc<rustls::ServerConfig>>,
    /// Presented under [`Fault::WrongSan`].
    pub alt_tls_wrong_san: Option<Arc<rustls::ServerConfig>>,
    /// Connect every channel here instead of resolving its resource name (tests map the
    /// token's host to a local listener standing in for Hyper-V).
    pub target_override: Option<SocketAddr>,
    /// How long a legacy OUT channel waits for its IN channel.
    pub pair_timeout: Duration,
}

impl SimConfig {
    /// A healthy gateway named `name` with no alternate certificates and no target override.
    pub fn new(name: &str, tls: Arc<rustls::ServerConfig>, verifier: Verifier) -> Self {
        SimConfig {
            name: name.to_owned(),
            tls,
            verifier,
            faults: Faults::none(),
            alt_tls_expired: None,
            alt_tls_wrong_san: None,
            target_override: None,
            pair_timeout: DEFAULT_PAIR_TIMEOUT,
        }
    }
}

/// The MS-TSGU HTTP transport a tunnel used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Two connections, RDG_OUT_DATA + RDG_IN_DATA (PROTOCOLS.md §1).
    Legacy,
    /// One upgraded connection (PROTOCOLS.md §2).
    WebSocket,
}

impl Transport {
    /// `legacy` / `websocket`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Legacy => "legacy",
            Transport::WebSocket => "websocket",
        }
    }
}

/// What the gateway decided about one tunnel: the verdict log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRecord {
    /// Order of creation on this gateway (also the tunnelId sent).
    pub seq: u64,
    /// `RDG-Connection-Id` as the client sent it.
    pub connection_id: String,
    /// Client address of the connection carrying packets (OUT for legacy).
    pub peer: SocketAddr,
    /// Transport.
    pub transport: Transport,
    /// Token verdict.
    pub verdict: TokenVerdict,
    /// The token, redacted ([`crate::token::redact`]).
    pub token: Option<String>,
    /// Client name from TUNNEL_AUTH.
    pub client_name: Option<String>,
    /// `resource:port` asked for in CHANNEL_CREATE.
    pub target: Option<String>,
    /// HRESULT of CHANNEL_RESPONSE (0 = channel open).
    pub channel_status: Option<u32>,
    /// DATA payload bytes written to the target.
    pub bytes_to_target: u64,
    /// Bytes read from the target and sent to the client.
    pub bytes_from_target: u64,
    /// Why it ended ([`CloseReason::Open`] while running).
    pub close_reason: CloseReason,
}
