//! Probe verdicts and their classification (pure): PROTOCOLS.md §4.2, first match wins.
//!
//! The classification works on what the MS-TSGU client saw (HTTP status, HRESULTs, the kind
//! of I/O error) and on the [`Stage`] the probe was in, so `reset-after-handshake` and a TLS
//! close before any HTTP answer land in different rows. Stage names follow HAProxy's layered
//! vocabulary (`L4CON`, `L6TOUT`, `L7STS`, ...), see [`Stage::haproxy_code`].

use std::io;

use crate::rdg::hresult as hr;
use crate::sim::client::{ClientError, TunnelStatus};

/// What one probe concluded (PROTOCOLS.md §4.2). Only `Healthy` counts as a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verdict {
    /// Every configured check passed (TUNNEL_AUTH_RESPONSE S_OK or QUARANTINE_ACCESSDENIED).
    Healthy,
    /// The gateway's FedAuth plug-in refused the probe token (or its connection policy).
    TokenRejected,
    /// The gateway answered, but as a broken or stopped RD Gateway (5xx, 401/403/404/410,
    /// closed without an HTTP answer, HANDSHAKE error, internal/no-cert/capacity HRESULTs).
    GatewayError,
    /// Bytes or codes that do not fit MS-TSGU (bad packet, unexpected packet, unknown code,
    /// connection lost in the middle of the tunnel exchange).
    ProtocolError,
    /// TLS handshake failed or the certificate chain/name is invalid.
    TlsError,
    /// A stage exceeded its deadline.
    Timeout,
    /// The TCP connect failed (refused, unreachable).
    ConnectFailed,
}

impl Verdict {
    pub const ALL: [Verdict; 7] = [
        Verdict::Healthy,
        Verdict::TokenRejected,
        Verdict::GatewayError,
        Verdict::ProtocolError,
        Verdict::TlsError,
        Verdict::Timeout,
        Verdict::ConnectFailed,
    ];

    /// The metric label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::TokenRejected => "token-rejected",
            Verdict::GatewayError => "gateway-error",
            Verdict::ProtocolError => "protocol-error",
            Verdict::TlsError => "tls-error",
            Verdict::Timeout => "timeout",
            Verdict::ConnectFailed => "connect-failed",
        }
    }

    pub fn is_healthy(self) -> bool {
        self == Verdict::Healthy
    }
}

/// Where in the probe a verdict was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// TCP connect.
    Tcp,
    /// TLS handshake and certificate checks.
    Tls,
    /// The HTTP phase of MS-TSGU (RDG_OUT_DATA answer, WebSocket upgrade, legacy IN channel).
    Http,
    /// HANDSHAKE_REQUEST / HANDSHAKE_RESPONSE.
    Handshake,
    /// TUNNEL_CREATE / TUNNEL_RESPONSE (the token check).
    TunnelCreate,
    /// TUNNEL_AUTH / TUNNEL_AUTH_RESPONSE.
    TunnelAuth,
    /// CHANNEL_CREATE / CHANNEL_RESPONSE and CLOSE_CHANNEL (only with `channel_target`).
    ChannelCreate,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Tcp => "tcp",
            Stage::Tls => "tls",
            Stage::Http => "http",
            Stage::Handshake => "handshake",
            Stage::TunnelCreate => "tunnel-create",
            Stage::TunnelAuth => "tunnel-auth",
            Stage::ChannelCreate => "channel-create",
        }
    }

    /// HAProxy's check status for `verdict` reached at this stage (`include/haproxy/check-t.h`).
    pub fn haproxy_code(self, verdict: Verdict) -> &'static str {
        match (self, verdict) {
            (_, Verdict::Healthy) => match self {
                Stage::Tcp => "L4OK",
                Stage::Tls => "L6OK",
                _ => "L7OK",
            },
            (Stage::Tcp, Verdict::Timeout) => "L4TOUT",
            (Stage::Tcp, _) => "L4CON",
            (Stage::Tls, Verdict::Timeout) => "L6TOUT",
            (Stage::Tls, _) => "L6RSP",
            (_, Verdict::Timeout) => "L7TOUT",
            (Stage::Http, _) => "L7STS",
            (_, _) => "L7RSP",
        }
    }
}

/// Verdict for an HTTP status other than 101/200 on RDG_OUT_DATA / RDG_IN_DATA.
pub fn classify_http_status(status: u16) -> Verdict {
    match status {
        101 | 200 => Verdict::Healthy,
        500..=599 | 401 | 403 | 404 | 410 => Verdict::GatewayError,
        _ => Verdict::ProtocolError,
    }
}

/// The HRESULTs that mean "this gateway is broken" (the `gateway-error` row).
fn is_gateway_code(code: u32) -> bool {
    matches!(
        code,
        hr::E_PROXY_INTERNALERROR
            | hr::E_PROXY_NOCERTAVAILABLE
            | hr::E_PROXY_CAPABILITYMISMATCH
            | hr::E_PROXY_UNSUPPORTED_AUTHENTICATION_METHOD
            | hr::E_PROXY_MAXCONNECTIONSREACHED
            | hr::E_PROXY_TS_CONNECTFAILED
            | hr::E_PROXY_TS_CONNECTFAILED_CODE
    )
}

/// The HRESULTs that mean "the token (or the connection policy for it) was refused".
fn is_token_code(code: u32) -> bool {
    matches!(
        code,
        hr::E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED
            | hr::E_PROXY_COOKIE_BADPACKET
            | hr::E_PROXY_NAP_ACCESSDENIED
            | hr::ERROR_ACCESS_DENIED
            | hr::E_PROXY_RAP_ACCESSDENIED
    )
}

/// Verdict for the statuses of a tunnel opening, with the stage it stopped at and the HRESULT
/// that decided it (`None` when every step succeeded).
pub fn classify_tunnel(t: &TunnelStatus) -> (Verdict, Stage, Option<u32>) {
    if t.handshake != hr::S_OK {
        // Any HANDSHAKE error is the gateway's (capability mismatch, internal error, ...).
        return (Verdict::GatewayError, Stage::Handshake, Some(t.handshake));
    }
    let Some(tunnel) = t.tunnel else {
        return (Verdict::ProtocolError, Stage::TunnelCreate, None);
    };
    if tunnel != hr::S_OK {
        return (classify_code(tunnel), Stage::TunnelCreate, Some(tunnel));
    }
    match t.tunnel_auth {
        None => (Verdict::ProtocolError, Stage::TunnelAuth, None),
        Some(hr::S_OK) | Some(hr::E_PROXY_QUARANTINE_ACCESSDENIED) => {
            (Verdict::Healthy, Stage::TunnelAuth, None)
        }
        Some(code) => (classify_code(code), Stage::TunnelAuth, Some(code)),
    }
}

/// Verdict for a CHANNEL_RESPONSE code: the token's resource refused (step 8) is the
/// token's row, a target the gateway cannot reach is the gateway's.
pub fn classify_channel(code: u32) -> Verdict {
    if code == hr::S_OK {
        Verdict::Healthy
    } else {
        classify_code(code)
    }
}

/// A non-zero TUNNEL_RESPONSE / TUNNEL_AUTH_RESPONSE code.
fn classify_code(code: u32) -> Verdict {
    if is_token_code(code) {
        Verdict::TokenRejected
    } else if is_gateway_code(code) {
        Verdict::GatewayError
    } else {
        // Unknown non-zero code (or a known one that makes no sense here).
        Verdict::ProtocolError
    }
}

/// Whether an I/O error is the peer going away (reset, EOF, broken pipe).
fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
    )
}

/// Verdict for a client error during `stage`.
///
/// - Before the HTTP answer (`Tcp`, `Tls`, `Http`): refused/unreachable → `connect-failed`,
///   certificate or TLS alert (`InvalidData`) → `tls-error`, closed → `gateway-error` ("TLS
///   closed without an HTTP answer").
/// - After it (`Handshake`, `TunnelCreate`, `TunnelAuth`): the gateway dropping the
///   connection in the middle of the exchange → `protocol-error` (a packet was due in that
///   state; this is how `reset-after-handshake` is classified).
pub fn classify_error(stage: Stage, e: &ClientError) -> Verdict {
    let before_http = matches!(stage, Stage::Tcp | Stage::Tls | Stage::Http);
    match e {
        ClientError::Timeout(_) => Verdict::Timeout,
        ClientError::HttpStatus(s) => classify_http_status(*s),
        ClientError::Protocol(_) => Verdict::ProtocolError,
        ClientError::Closed if before_http => Verdict::GatewayError,
        ClientError::Closed => Verdict::ProtocolError,
        ClientError::Io(io) => classify_io(stage, io),
    }
}

/// Verdict for an I/O error during `stage`.
pub fn classify_io(stage: Stage, e: &io::Error) -> Verdict {
    let before_http = matches!(stage, Stage::Tcp | Stage::Tls | Stage::Http);
    match e.kind() {
        io::ErrorKind::TimedOut => Verdict::Timeout,
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::AddrNotAvailable
            if stage == Stage::Tcp || stage == Stage::Http =>
        {
            Verdict::ConnectFailed
        }
        io::ErrorKind::InvalidData if before_http => Verdict::TlsError,
        _ if is_closed(e) && before_http => Verdict::GatewayError,
        _ if stage == Stage::Tcp => Verdict::ConnectFailed,
        _ if stage == Stage::Tls => Verdict::TlsError,
        _ => Verdict::ProtocolError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(handshake: u32, tunnel: Option<u32>, auth: Option<u32>) -> (Verdict, Stage, Option<u32>) {
        classify_tunnel(&TunnelStatus {
            handshake,
            tunnel,
            tunnel_auth: auth,
        })
    }

    #[test]
    fn labels_are_stable() {
        let labels: Vec<_> = Verdict::ALL.iter().map(|v| v.as_str()).collect();
        assert_eq!(
            labels,
            [
                "healthy",
                "token-rejected",
                "gateway-error",
                "protocol-error",
                "tls-error",
                "timeout",
                "connect-failed"
            ]
        );
    }

    #[test]
    fn row_timeout_any_stage() {
        for s in [Stage::Tcp, Stage::Tls, Stage::Http, Stage::TunnelCreate] {
            assert_eq!(
                classify_error(s, &ClientError::Timeout("x")),
                Verdict::Timeout
            );
        }
    }

    #[test]
    fn row_tls_error() {
        let bad_cert = ClientError::Io(io::Error::new(io::ErrorKind::InvalidData, "cert expired"));
        assert_eq!(classify_error(Stage::Tls, &bad_cert), Verdict::TlsError);
        assert_eq!(classify_error(Stage::Http, &bad_cert), Verdict::TlsError);
    }

    #[test]
    fn row_gateway_error_http() {
        for s in [503, 500, 502, 401, 403, 404, 410] {
            assert_eq!(classify_http_status(s), Verdict::GatewayError, "{s}");
            assert_eq!(
                classify_error(Stage::Http, &ClientError::HttpStatus(s)),
                Verdict::GatewayError
            );
        }
        assert_eq!(classify_http_status(400), Verdict::ProtocolError);
        assert_eq!(classify_http_status(302), Verdict::ProtocolError);
        assert_eq!(classify_http_status(101), Verdict::Healthy);
    }

    #[test]
    fn row_gateway_error_closed_before_http_answer() {
        assert_eq!(
            classify_error(Stage::Http, &ClientError::Closed),
            Verdict::GatewayError
        );
        let eof = ClientError::Io(io::Error::from(io::ErrorKind::UnexpectedEof));
        assert_eq!(classify_error(Stage::Http, &eof), Verdict::GatewayError);
    }

    #[test]
    fn row_gateway_error_hresults() {
        assert_eq!(
            t(hr::E_PROXY_CAPABILITYMISMATCH, None, None).0,
            Verdict::GatewayError
        );
        assert_eq!(t(hr::E_PROXY_INTERNALERROR, None, None).1, Stage::Handshake);
        for code in [
            hr::E_PROXY_INTERNALERROR,
            hr::E_PROXY_NOCERTAVAILABLE,
            hr::E_PROXY_UNSUPPORTED_AUTHENTICATION_METHOD,
            hr::E_PROXY_MAXCONNECTIONSREACHED,
        ] {
            assert_eq!(
                t(0, Some(code), None),
                (Verdict::GatewayError, Stage::TunnelCreate, Some(code))
            );
        }
        assert_eq!(
            t(0, Some(0), Some(hr::E_PROXY_INTERNALERROR)).0,
            Verdict::GatewayError
        );
    }

    #[test]
    fn row_token_rejected() {
        for code in [
            hr::E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED,
            hr::E_PROXY_COOKIE_BADPACKET,
        ] {
            assert_eq!(
                t(0, Some(code), None),
                (Verdict::TokenRejected, Stage::TunnelCreate, Some(code))
            );
        }
        for code in [hr::E_PROXY_NAP_ACCESSDENIED, hr::ERROR_ACCESS_DENIED] {
            assert_eq!(
                t(0, Some(0), Some(code)),
                (Verdict::TokenRejected, Stage::TunnelAuth, Some(code))
            );
        }
    }

    #[test]
    fn row_protocol_error() {
        assert_eq!(t(0, Some(0x8000_1234), None).0, Verdict::ProtocolError);
        assert_eq!(t(0, Some(0x0000_1234), None).0, Verdict::ProtocolError);
        assert_eq!(t(0, Some(0), None).0, Verdict::ProtocolError);
        assert_eq!(
            classify_error(Stage::Http, &ClientError::Protocol("bad accept".into())),
            Verdict::ProtocolError
        );
        // reset-after-handshake: the connection drops where TUNNEL_RESPONSE was due.
        let reset = ClientError::Io(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(
            classify_error(Stage::TunnelCreate, &reset),
            Verdict::ProtocolError
        );
        assert_eq!(
            classify_error(Stage::TunnelCreate, &ClientError::Closed),
            Verdict::ProtocolError
        );
    }

    #[test]
    fn row_healthy() {
        assert_eq!(
            t(0, Some(0), Some(0)),
            (Verdict::Healthy, Stage::TunnelAuth, None)
        );
        assert_eq!(
            t(0, Some(0), Some(hr::E_PROXY_QUARANTINE_ACCESSDENIED)).0,
            Verdict::Healthy
        );
    }

    #[test]
    fn connect_failures() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(classify_io(Stage::Tcp, &refused), Verdict::ConnectFailed);
        assert_eq!(
            classify_io(Stage::Tcp, &io::Error::from(io::ErrorKind::TimedOut)),
            Verdict::Timeout
        );
    }

    #[test]
    fn haproxy_codes() {
        assert_eq!(Stage::Tcp.haproxy_code(Verdict::ConnectFailed), "L4CON");
        assert_eq!(Stage::Tcp.haproxy_code(Verdict::Timeout), "L4TOUT");
        assert_eq!(Stage::Tls.haproxy_code(Verdict::Healthy), "L6OK");
        assert_eq!(Stage::Tls.haproxy_code(Verdict::Timeout), "L6TOUT");
        assert_eq!(Stage::Http.haproxy_code(Verdict::GatewayError), "L7STS");
        assert_eq!(Stage::TunnelAuth.haproxy_code(Verdict::Healthy), "L7OK");
    }
}
