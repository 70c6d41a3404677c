//! The admin protocol (pure): one JSON object per line each way.
//!
//! ```text
//! → {"cmd":"status"}
//! ← {"reply":"status","node":"lb1",...}
//! → {"cmd":"drain","backend":"web01"}
//! ← {"reply":"admin","backend":"web01","admin":"drain","connections_remaining":3,...}
//! → {"cmd":"disable","backend":"web01","kill":true}
//! → {"cmd":"enable","backend":"web01"}
//! → {"cmd":"reload"}
//! → {"cmd":"vrrp","action":"demote"}            (or "resume")
//! → {"cmd":"dsr","active":false}                (internal: dsr forwarding off / on)
//! ← {"reply":"dsr","active":false}
//! ← {"reply":"error","error":"no backend named \"web09\"","known":["web01","web02"]}
//! ```
//!
//! A request line is at most [`MAX_LINE`] bytes. Anything that is not a known request gets an
//! `error` reply; the connection stays open for the next line.

use serde::{Deserialize, Serialize};

/// Longest request line accepted (bytes, newline excluded). Requests are tiny; the cap keeps a
/// client that never sends a newline from growing our buffer.
pub const MAX_LINE: usize = 4096;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    /// NLB drainstop: no new clients; clients pinned by affinity keep reaching it.
    Drain {
        backend: String,
    },
    /// No new connections at all; `kill` also ends the established ones.
    Disable {
        backend: String,
        #[serde(default)]
        kill: bool,
    },
    Enable {
        backend: String,
    },
    Reload,
    Vrrp {
        action: VrrpAction,
    },
    /// Internal (tests, and VRRP's hand-over without VRRP): start or stop dsr forwarding on
    /// this node, as `Forwarder::set_active` does. No `ctl` subcommand on purpose.
    Dsr {
        active: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VrrpAction {
    /// Hand the VIP to the peer gracefully (priority 0 advert, then backup).
    Demote,
    /// Take part in elections again.
    Resume,
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Status(Status),
    Admin(AdminResult),
    Reload(ReloadResult),
    Vrrp(VrrpStatus),
    Dsr(DsrStatus),
    Error(ErrorReply),
}

/// The dsr forwarder's state after a `dsr` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DsrStatus {
    pub active: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
    /// For an unknown name: the names that exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known: Vec<String>,
    /// For a refused reload: one line per fault, `file:line:col: field: message`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

impl Reply {
    pub fn error(msg: impl Into<String>) -> Reply {
        Reply::Error(ErrorReply {
            error: msg.into(),
            known: Vec::new(),
            details: Vec::new(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    /// The config file in force.
    pub config: String,
    pub generation: u64,
    pub uptime_s: f64,
    /// `None`: this node runs no VRRP.
    pub vrrp: Option<VrrpStatus>,
    pub services: Vec<ServiceStatus>,
    pub backends: Vec<BackendStatus>,
    /// `None`: this node has no dsr service (or its daemon predates the field).
    #[serde(default)]
    pub dsr: Option<DsrForwarderStatus>,
}

/// The dsr forwarder, as `ctl status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DsrForwarderStatus {
    /// Forwarding (VRRP master of the dsr VIPs) or standing by.
    pub active: bool,
    /// Flows in the flow table: the node's own while active; on a standby, what a `[dsr]` sync
    /// peer sent (kept for a hand-over).
    pub flows: i64,
    /// The XDP fast path's attach mode (`native`, `generic`); `None` without one.
    #[serde(default)]
    pub xdp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VrrpStatus {
    /// `master`, `backup`, `initialize`, or what the VRRP engine reports.
    pub state: String,
    /// Which node holds the VIP, as far as this node knows.
    pub vip_owner: Option<String>,
    pub vips: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub protocol: String,
    /// As configured.
    pub listen: String,
    /// As bound (`None`: configured but not listening, or a dsr service, which has no socket).
    pub bound: Option<String>,
    /// `proxy` or `dsr` (empty from a daemon that predates the field).
    #[serde(default)]
    pub forwarding: String,
    pub pool: String,
    pub active_connections: i64,
    pub udp_flows: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub pool: String,
    pub name: String,
    pub address: String,
    /// `enabled`, `drain`, `disabled`.
    pub admin: String,
    /// `up`, `down`.
    pub health: String,
    /// Why the health state is what it is (the last state change), if known.
    pub reason: Option<String>,
    /// Open proxied connections (every service of the pool).
    pub active_connections: i64,
    /// Connections relayed since start.
    pub connections_total: u64,
    /// UDP flows placed on it since start.
    pub udp_flows_total: u64,
    /// Clients pinned to it in the affinity tables.
    pub affinity_entries: usize,
    pub last_probe: Option<ProbeStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub check: String,
    pub verdict: String,
    pub detail: Option<String>,
    pub age_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminResult {
    pub backend: String,
    /// The state now in force.
    pub admin: String,
    /// Its state before.
    pub previous: String,
    /// Open connections to it right after the change (drain: they go on).
    pub connections_remaining: i64,
    /// Clients still pinned to it (drain: they keep reaching it).
    pub pinned_clients: usize,
    /// `disable --kill`: established connections were told to close.
    pub killed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadResult {
    pub config: String,
    pub generation: u64,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub health_restarted: bool,
    pub warnings: Vec<String>,
}

/// Parses one request line. The error is what the reply says.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
    let text = text.trim();
    if text.is_empty() {
        return Err("empty request".into());
    }
    serde_json::from_str(text).map_err(|e| {
        format!(
            "bad request: {e} (expected e.g. {{\"cmd\":\"status\"}} or {{\"cmd\":\"drain\",\"backend\":\"web01\"}})"
        )
    })
}

/// One line of JSON with its newline.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_else(|e| {
        // Our own types always serialize; keep the line well-formed regardless.
        format!("{{\"reply\":\"error\",\"error\":\"encoding the reply: {e}\"}}").into_bytes()
    });
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_round_trip_and_read_as_documented() {
        let cases = [
            (r#"{"cmd":"status"}"#, Request::Status),
            (
                r#"{"cmd":"drain","backend":"web01"}"#,
                Request::Drain {
                    backend: "web01".into(),
                },
            ),
            (
                r#"{"cmd":"disable","backend":"web01"}"#,
                Request::Disable {
                    backend: "web01".into(),
                    kill: false,
                },
            ),
            (
                r#"{"cmd":"disable","backend":"web01","kill":true}"#,
                Request::Disable {
                    backend: "web01".into(),
                    kill: true,
                },
            ),
            (
                r#"{"cmd":"vrrp","action":"demote"}"#,
                Request::Vrrp {
                    action: VrrpAction::Demote,
                },
            ),
            (r#" {"cmd":"reload"}  "#, Request::Reload),
        ];
        for (text, want) in cases {
            let got = parse_request(text.as_bytes()).expect(text);
            assert_eq!(got, want);
            let again = encode(&got);
            assert_eq!(parse_request(&again).expect("re-parse"), want);
        }
    }

    #[test]
    fn malformed_requests_are_errors_naming_the_problem() {
        for (text, needle) in [
            ("", "empty"),
            ("status", "bad request"),
            (r#"{"cmd":"explode"}"#, "unknown variant"),
            (r#"{"cmd":"drain"}"#, "missing field `backend`"),
            (r#"{"cmd":"drain","backend":"a","x":1}"#, "unknown field"),
            (r#"{"cmd":"vrrp","action":"sideways"}"#, "unknown variant"),
        ] {
            let e = parse_request(text.as_bytes()).expect_err(text);
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        assert!(parse_request(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn replies_round_trip() {
        let r = Reply::Error(ErrorReply {
            error: "no backend named \"web09\"".into(),
            known: vec!["web01".into()],
            details: vec![],
        });
        let line = encode(&r);
        assert!(line.ends_with(b"\n"));
        let back: Reply = serde_json::from_slice(&line).expect("reply parses");
        assert_eq!(back, r);
    }

    proptest! {
        #[test]
        fn any_bytes_give_a_request_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_request(&bytes);
        }

        #[test]
        fn any_backend_name_round_trips(name in ".{0,64}") {
            let r = Request::Drain { backend: name };
            prop_assert_eq!(parse_request(&encode(&r)).expect("round trip"), r);
        }
    }
}
