//! Metrics: one Prometheus registry for the process, every metric name as a `const`, and the
//! HTTP `/metrics` listener.
//!
//! Names follow Prometheus conventions: `portico_` prefix, base units (seconds, bytes),
//! `_total` on counters. Label values come from closed sets (service, pool and backend names
//! from the config, `&'static str` reasons), never from client addresses, so cardinality is
//! bounded by the config. The data plane never formats a label: the controller resolves every
//! child handle when it builds a snapshot, and a connection only increments.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub const BUILD_INFO: &str = "portico_build_info";
pub const CONNECTIONS_ACCEPTED: &str = "portico_connections_accepted_total";
pub const CONNECTIONS_ACTIVE: &str = "portico_connections_active";
pub const CONNECTIONS_FAILED: &str = "portico_connections_failed_total";
pub const ACCEPT_ERRORS: &str = "portico_accept_errors_total";
pub const CONNECT_RETRIES: &str = "portico_connect_retries_total";
pub const BACKEND_CONNECTIONS: &str = "portico_backend_connections_total";
pub const BACKEND_CONNECTIONS_ACTIVE: &str = "portico_backend_connections_active";
pub const BACKEND_CONNECT_FAILURES: &str = "portico_backend_connect_failures_total";
pub const BACKEND_CONNECT_DURATION: &str = "portico_backend_connect_duration_seconds";
pub const BACKEND_BYTES: &str = "portico_backend_bytes_total";
pub const BACKEND_UP: &str = "portico_backend_up";
pub const BACKEND_ADMIN_STATE: &str = "portico_backend_admin_state";
pub const BACKEND_WEIGHT: &str = "portico_backend_weight";
pub const AFFINITY_ENTRIES: &str = "portico_affinity_entries";
pub const AFFINITY_EVICTIONS: &str = "portico_affinity_evictions_total";
pub const AFFINITY_EXPIRATIONS: &str = "portico_affinity_expirations_total";
pub const UDP_FLOWS_ACTIVE: &str = "portico_udp_flows_active";
pub const UDP_FLOWS: &str = "portico_udp_flows_total";
pub const UDP_FLOWS_REJECTED: &str = "portico_udp_flows_rejected_total";
pub const UDP_DATAGRAMS: &str = "portico_udp_datagrams_total";
pub const UDP_DROPS: &str = "portico_udp_datagrams_dropped_total";
pub const SNAPSHOT_GENERATION: &str = "portico_snapshot_generation";
pub const PROBE_DURATION: &str = "portico_probe_duration_seconds";
pub const PROBE_RESULTS: &str = "portico_probe_results_total";
pub const BACKEND_STATE_CHANGES: &str = "portico_backend_state_changes_total";
pub const BACKEND_CERT_NOT_AFTER: &str = "portico_backend_cert_not_after_seconds";
pub const BACKEND_CERT_WARNING: &str = "portico_backend_cert_warning";
pub const BACKEND_CLOCK_SKEW: &str = "portico_backend_clock_skew_seconds";
pub const PROBE_CREDENTIAL_SUSPECT: &str = "portico_probe_credential_suspect";
pub const DNS_QUERIES: &str = "portico_dns_queries_total";
pub const DNS_ANSWER_DURATION: &str = "portico_dns_answer_duration_seconds";
pub const DNS_MALFORMED: &str = "portico_dns_malformed_total";
pub const DNS_ALIAS_ADDRESSES: &str = "portico_dns_alias_addresses";
pub const CONFIG_RELOADS: &str = "portico_config_reloads_total";
pub const CONFIG_RELOAD_FAILURES: &str = "portico_config_reload_failures_total";
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "portico_config_last_reload_success_timestamp_seconds";
// The dsr forwarder's families (registered by `crate::dsr::metrics` when a forwarder starts).
pub const DSR_PACKETS: &str = "portico_dsr_packets_total";
pub const DSR_BYTES: &str = "portico_dsr_bytes_total";
pub const DSR_FLOWS: &str = "portico_dsr_flows";
pub const DSR_FLOW_MISSES: &str = "portico_dsr_flow_misses_total";
pub const DSR_DROPS: &str = "portico_dsr_drops_total";
pub const DSR_PASSED: &str = "portico_dsr_frames_passed_total";
pub const DSR_ARP_REPLIES: &str = "portico_dsr_arp_replies_total";
pub const DSR_ACTIVE: &str = "portico_dsr_active";
pub const DSR_SYNC_SENT: &str = "portico_dsr_sync_sent_total";
pub const DSR_SYNC_APPLIED: &str = "portico_dsr_sync_applied_total";
pub const DSR_SYNC_ERRORS: &str = "portico_dsr_sync_errors_total";
pub const DSR_XDP_FRAMES: &str = "portico_dsr_xdp_frames_total";
pub const DSR_XDP_ATTACHED: &str = "portico_dsr_xdp_attached";
pub const DSR_XDP_ERRORS: &str = "portico_dsr_xdp_errors_total";

/// Why a client connection got no backend at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The pool had no eligible backend.
    NoBackend,
    /// Every attempt (first choice and retries) failed to connect.
    ConnectFailed,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::NoBackend => "no_backend",
            FailReason::ConnectFailed => "connect_failed",
        }
    }
}

/// Why one connect attempt to a backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused,
    Timeout,
    Unreachable,
    Other,
}

impl ConnectFailure {
    pub const ALL: [ConnectFailure; 4] = [
        ConnectFailure::Refused,
        ConnectFailure::Timeout,
        ConnectFailure::Unreachable,
        ConnectFailure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Unreachable => "unreachable",
            ConnectFailure::Other => "other",
        }
    }

    pub fn from_io(e: &std::io::Error) -> ConnectFailure {
        use std::io::ErrorKind::*;
        match e.kind() {
            ConnectionRefused | ConnectionReset => ConnectFailure::Refused,
            TimedOut => ConnectFailure::Timeout,
            HostUnreachable | NetworkUnreachable | AddrNotAvailable => ConnectFailure::Unreachable,
            _ => ConnectFailure::Other,
        }
    }
}

/// Every metric family of the process, registered once.
pub struct Metrics {
    pub registry: Registry,
    pub connections_accepted: IntCounterVec,
    pub connections_active: IntGaugeVec,
    pub connections_failed: IntCounterVec,
    pub accept_errors: IntCounterVec,
    pub connect_retries: IntCounterVec,
    pub backend_connections: IntCounterVec,
    pub backend_connections_active: IntGaugeVec,
    pub backend_connect_failures: IntCounterVec,
    pub backend_connect_duration: HistogramVec,
    pub backend_bytes: IntCounterVec,
    pub backend_up: IntGaugeVec,
    pub backend_admin_state: IntGaugeVec,
    pub backend_weight: IntGaugeVec,
    pub affinity_entries: IntGaugeVec,
    pub affinity_evictions: IntCounterVec,
    pub affinity_expirations: IntCounterVec,
    pub udp_flows_active: IntGaugeVec,
    pub udp_flows: IntCounterVec,
    pub udp_flows_rejected: IntCounterVec,
    pub udp_datagrams: IntCounterVec,
    pub udp_drops: IntCounterVec,
    pub snapshot_generation: IntGauge,
    /// Per check of one probe, `check` = tcp / tls / rdg-token.
    pub probe_duration: HistogramVec,
    /// `result` is a [`crate::health::Verdict`] label (`passive` check: data-plane failures).
    pub probe_results: IntCounterVec,
    pub backend_state_changes: IntCounterVec,
    pub backend_cert_not_after: IntGaugeVec,
    /// 1 while the last `tls` check passed with a warning (expiry within `min_days_left`,
    /// node name missing): still eligible.
    pub backend_cert_warning: IntGaugeVec,
    pub backend_clock_skew: IntGaugeVec,
    pub probe_credential_suspect: IntGaugeVec,
    /// `qtype` from a closed set (a, aaaa, ns, soa, any, axfr, ixfr, other), `rcode` likewise.
    pub dns_queries: IntCounterVec,
    /// From the packet read to the answer ready, per transport.
    pub dns_answer_duration: HistogramVec,
    pub dns_malformed: IntCounterVec,
    pub dns_alias_addresses: IntGauge,
    /// `result` = success / failure (SIGHUP and `ctl reload` alike).
    pub config_reloads: IntCounterVec,
    pub config_reload_failures: IntCounter,
    /// Unix seconds of the last successful load (the start counts as one).
    pub config_last_reload_success: IntGauge,
    pub vrrp: VrrpFamilies,
}

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    reg.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    reg.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    /// Builds and registers every family. The `expect`s can only fire on a programming error
    /// in the static definitions above (a bad name or a double registration), never on input.
    pub fn new() -> Arc<Metrics> {
        let reg = Registry::new();
        let build = gauge(
            &reg,
            BUILD_INFO,
            "Build information; always 1.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let snapshot_generation = IntGauge::new(
            SNAPSHOT_GENERATION,
            "Generation of the snapshot the data plane reads; it changes on every config, health or admin change.",
        )
        .expect("static metric definition");
        reg.register(Box::new(snapshot_generation.clone()))
            .expect("metric registered once");
        let buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0,
        ];
        let backend_connect_duration = HistogramVec::new(
            HistogramOpts::new(
                BACKEND_CONNECT_DURATION,
                "Time to establish the TCP connection to a backend (successful attempts).",
            )
            .buckets(buckets),
            &["service", "backend"],
        )
        .expect("static metric definition");
        reg.register(Box::new(backend_connect_duration.clone()))
            .expect("metric registered once");
        let sb = &["service", "backend"];
        let probe_duration = HistogramVec::new(
            HistogramOpts::new(
                PROBE_DURATION,
                "Time one health check took (each check of a probe: tcp, tls, rdg-token).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["backend", "check"],
        )
        .expect("static metric definition");
        reg.register(Box::new(probe_duration.clone()))
            .expect("metric registered once");
        let dns_answer_duration = HistogramVec::new(
            HistogramOpts::new(
                DNS_ANSWER_DURATION,
                "Time from reading a DNS query to its answer being ready (not counting the send).",
            )
            .buckets(vec![
                0.000_001,
                0.000_002_5,
                0.000_005,
                0.000_01,
                0.000_025,
                0.000_05,
                0.000_1,
                0.000_25,
                0.001,
                0.01,
            ]),
            &["transport"],
        )
        .expect("static metric definition");
        reg.register(Box::new(dns_answer_duration.clone()))
            .expect("metric registered once");
        let dns_alias_addresses = IntGauge::new(
            DNS_ALIAS_ADDRESSES,
            "Addresses the DNS alias answers with now (VIPs whose pools can serve, or all when none can).",
        )
        .expect("static metric definition");
        reg.register(Box::new(dns_alias_addresses.clone()))
            .expect("metric registered once");
        Arc::new(Metrics {
            dns_queries: counter(
                &reg,
                DNS_QUERIES,
                "DNS queries answered, by query type (a, aaaa, ns, soa, any, axfr, ixfr, other) and response code.",
                &["qtype", "rcode"],
            ),
            dns_answer_duration,
            dns_malformed: counter(
                &reg,
                DNS_MALFORMED,
                "DNS packets that were not a readable query, by reason; answered FORMERR when the header could be read, else dropped.",
                &["reason"],
            ),
            dns_alias_addresses,
            probe_duration,
            probe_results: counter(
                &reg,
                PROBE_RESULTS,
                "Health check results by verdict (healthy, token-rejected, gateway-error, protocol-error, tls-error, timeout, connect-failed).",
                &["backend", "check", "result"],
            ),
            backend_state_changes: counter(
                &reg,
                BACKEND_STATE_CHANGES,
                "Health state changes (up to down or down to up) decided by rise/fall.",
                &["pool", "backend"],
            ),
            backend_cert_not_after: gauge(
                &reg,
                BACKEND_CERT_NOT_AFTER,
                "Expiry of the certificate the backend presents, unix seconds.",
                &["pool", "backend"],
            ),
            backend_cert_warning: gauge(
                &reg,
                BACKEND_CERT_WARNING,
                "1 while the backend's certificate passes with a warning (expires within min_days_left, or does not name the node); the backend stays eligible.",
                &["pool", "backend"],
            ),
            backend_clock_skew: gauge(
                &reg,
                BACKEND_CLOCK_SKEW,
                "Backend clock minus ours from its HTTP Date header on RDG_OUT_DATA, seconds; one-minute tokens fail past about 30 s.",
                &["pool", "backend"],
            ),
            probe_credential_suspect: gauge(
                &reg,
                PROBE_CREDENTIAL_SUSPECT,
                "1 while every backend of the pool rejects the probe token: the signing side (certificate, trust list, clock) is suspect and states are kept (fail-static).",
                &["pool"],
            ),
            config_reloads: counter(
                &reg,
                CONFIG_RELOADS,
                "Configuration reloads (SIGHUP or ctl reload) by result.",
                &["result"],
            ),
            config_reload_failures: {
                let c = IntCounter::new(
                    CONFIG_RELOAD_FAILURES,
                    "Configuration reloads that failed; the previous configuration stays in force.",
                )
                .expect("static metric definition");
                reg.register(Box::new(c.clone()))
                    .expect("metric registered once");
                c
            },
            config_last_reload_success: {
                let g = IntGauge::new(
                    CONFIG_LAST_RELOAD_SUCCESS,
                    "When the configuration in force was loaded (start or last successful reload), unix seconds.",
                )
                .expect("static metric definition");
                reg.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            connections_accepted: counter(&reg, CONNECTIONS_ACCEPTED, "Client connections accepted.", &["service"]),
            connections_active: gauge(&reg, CONNECTIONS_ACTIVE, "Client connections open now.", &["service"]),
            connections_failed: counter(
                &reg,
                CONNECTIONS_FAILED,
                "Client connections closed without reaching any backend, by reason.",
                &["service", "reason"],
            ),
            accept_errors: counter(
                &reg,
                ACCEPT_ERRORS,
                "accept() failures; emfile means the descriptor limit was hit and accepting backed off.",
                &["service", "reason"],
            ),
            connect_retries: counter(
                &reg,
                CONNECT_RETRIES,
                "Connects retried on the next backend of the client's preference order.",
                &["service"],
            ),
            backend_connections: counter(&reg, BACKEND_CONNECTIONS, "Connections established to a backend.", sb),
            backend_connections_active: gauge(&reg, BACKEND_CONNECTIONS_ACTIVE, "Proxied connections open to a backend now.", sb),
            backend_connect_failures: counter(
                &reg,
                BACKEND_CONNECT_FAILURES,
                "Failed connect attempts to a backend, by reason.",
                &["service", "backend", "reason"],
            ),
            backend_connect_duration,
            backend_bytes: counter(
                &reg,
                BACKEND_BYTES,
                "Payload bytes relayed; direction=to_backend is client to backend, to_client the reverse.",
                &["service", "backend", "direction"],
            ),
            backend_up: gauge(
                &reg,
                BACKEND_UP,
                "1 while the backend takes new clients (healthy and enabled), else 0.",
                &["pool", "backend"],
            ),
            backend_admin_state: gauge(
                &reg,
                BACKEND_ADMIN_STATE,
                "1 for the backend's current admin state (enabled, drain, disabled), 0 for the others.",
                &["pool", "backend", "state"],
            ),
            backend_weight: gauge(&reg, BACKEND_WEIGHT, "Configured weight of the backend.", &["pool", "backend"]),
            affinity_entries: gauge(&reg, AFFINITY_ENTRIES, "Clients pinned in the affinity (stick) table.", &["group"]),
            affinity_evictions: counter(
                &reg,
                AFFINITY_EVICTIONS,
                "Affinity entries evicted because the table was full.",
                &["group"],
            ),
            affinity_expirations: counter(
                &reg,
                AFFINITY_EXPIRATIONS,
                "Affinity entries that expired after their idle timeout.",
                &["group"],
            ),
            udp_flows_active: gauge(&reg, UDP_FLOWS_ACTIVE, "UDP client flows tracked now.", &["service"]),
            udp_flows: counter(&reg, UDP_FLOWS, "UDP client flows created.", sb),
            udp_flows_rejected: counter(
                &reg,
                UDP_FLOWS_REJECTED,
                "New UDP flows refused, by reason (table_full, no_backend, socket).",
                &["service", "reason"],
            ),
            udp_datagrams: counter(
                &reg,
                UDP_DATAGRAMS,
                "UDP datagrams relayed, by direction.",
                &["service", "backend", "direction"],
            ),
            udp_drops: counter(
                &reg,
                UDP_DROPS,
                "UDP datagrams dropped (socket buffer full or send error), by direction.",
                &["service", "direction"],
            ),
            snapshot_generation,
            vrrp: VrrpFamilies::register(&reg),
            registry: reg,
        })
    }

    /// The text exposition of every family.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a failure here would mean an inconsistent
        // family, which we report in the body rather than panic.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            out.clear();
            out.extend_from_slice(format!("# encode error: {e}\n").as_bytes());
        }
        out
    }
}

/// Pre-resolved handles for one (service, backend) pair: the data plane only increments.
#[derive(Clone)]
pub struct BackendCounters {
    pub connections: IntCounter,
    pub active: IntGauge,
    pub connect_duration: Histogram,
    pub bytes_to_backend: IntCounter,
    pub bytes_to_client: IntCounter,
    /// Indexed like [`ConnectFailure::ALL`].
    pub connect_failures: [IntCounter; 4],
    pub udp_flows: IntCounter,
    pub datagrams_to_backend: IntCounter,
    pub datagrams_to_client: IntCounter,
}

impl BackendCounters {
    pub fn new(m: &Metrics, service: &str, backend: &str) -> BackendCounters {
        let l = &[service, backend];
        BackendCounters {
            connections: m.backend_connections.with_label_values(l),
            active: m.backend_connections_active.with_label_values(l),
            connect_duration: m.backend_connect_duration.with_label_values(l),
            bytes_to_backend: m
                .backend_bytes
                .with_label_values(&[service, backend, "to_backend"]),
            bytes_to_client: m
                .backend_bytes
                .with_label_values(&[service, backend, "to_client"]),
            connect_failures: ConnectFailure::ALL.map(|r| {
                m.backend_connect_failures
                    .with_label_values(&[service, backend, r.as_str()])
            }),
            udp_flows: m.udp_flows.with_label_values(l),
            datagrams_to_backend: m.udp_datagrams.with_label_values(&[
                service,
                backend,
                "to_backend",
            ]),
            datagrams_to_client: m.udp_datagrams.with_label_values(&[
                service,
                backend,
                "to_client",
            ]),
        }
    }

    pub fn connect_failure(&self, why: ConnectFailure) -> &IntCounter {
        &self.connect_failures[why as usize]
    }
}

/// Pre-resolved handles for one service.
#[derive(Clone)]
pub struct ServiceCounters {
    pub accepted: IntCounter,
    pub active: IntGauge,
    pub no_backend: IntCounter,
    pub connect_failed: IntCounter,
    pub retries: IntCounter,
    pub accept_emfile: IntCounter,
    pub accept_other: IntCounter,
    pub udp_flows_active: IntGauge,
    pub udp_rejected_table_full: IntCounter,
    pub udp_rejected_no_backend: IntCounter,
    pub udp_rejected_socket: IntCounter,
    pub udp_drops_to_backend: IntCounter,
    pub udp_drops_to_client: IntCounter,
}

impl ServiceCounters {
    pub fn new(m: &Metrics, service: &str) -> ServiceCounters {
        let s = &[service];
        ServiceCounters {
            accepted: m.connections_accepted.with_label_values(s),
            active: m.connections_active.with_label_values(s),
            no_backend: m
                .connections_failed
                .with_label_values(&[service, FailReason::NoBackend.as_str()]),
            connect_failed: m
                .connections_failed
                .with_label_values(&[service, FailReason::ConnectFailed.as_str()]),
            retries: m.connect_retries.with_label_values(s),
            accept_emfile: m.accept_errors.with_label_values(&[service, "emfile"]),
            accept_other: m.accept_errors.with_label_values(&[service, "other"]),
            udp_flows_active: m.udp_flows_active.with_label_values(s),
            udp_rejected_table_full: m
                .udp_flows_rejected
                .with_label_values(&[service, "table_full"]),
            udp_rejected_no_backend: m
                .udp_flows_rejected
                .with_label_values(&[service, "no_backend"]),
            udp_rejected_socket: m.udp_flows_rejected.with_label_values(&[service, "socket"]),
            udp_drops_to_backend: m.udp_drops.with_label_values(&[service, "to_backend"]),
            udp_drops_to_client: m.udp_drops.with_label_values(&[service, "to_client"]),
        }
    }
}

/// Largest request head we read; `/metrics` needs a request line and a few headers only.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A scraper that does not finish its request in this time is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` until `cancel` fires. The listener is bound by the caller so that a
/// bind error surfaces at start-up, before the daemon reports ready.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, cancel: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(error) => {
                    warn!(%error, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => debug!(%peer, %error, "metrics: request failed"),
                Err(_) => debug!(%peer, "metrics: request timed out"),
            }
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST_HEAD];
    let mut filled = 0;
    let (status, body, ctype) = loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(_)) => {
                let path = req.path.unwrap_or("/");
                let path = path.split('?').next().unwrap_or(path);
                break match (req.method, path) {
                    (Some("GET"), "/metrics") => (
                        "200 OK",
                        metrics.encode(),
                        "text/plain; version=0.0.4; charset=utf-8",
                    ),
                    (Some("GET"), "/") => (
                        "200 OK",
                        b"<html><body><a href=\"/metrics\">/metrics</a></body></html>\n".to_vec(),
                        "text/html",
                    ),
                    (Some("GET"), _) => ("404 Not Found", b"not found\n".to_vec(), "text/plain"),
                    _ => (
                        "405 Method Not Allowed",
                        b"GET only\n".to_vec(),
                        "text/plain",
                    ),
                };
            }
            Ok(httparse::Status::Partial) if filled < buf.len() => continue,
            Ok(httparse::Status::Partial) => {
                break (
                    "431 Request Header Fields Too Large",
                    b"too large\n".to_vec(),
                    "text/plain",
                )
            }
            Err(_) => break ("400 Bad Request", b"bad request\n".to_vec(), "text/plain"),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}

/// Binds the metrics listener (so the caller sees bind errors at start) and returns it.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

// === VRRP and VIP ===

pub const VRRP_STATE: &str = "portico_vrrp_state";
pub const VRRP_PRIORITY: &str = "portico_vrrp_priority";
pub const VRRP_TRANSITIONS: &str = "portico_vrrp_transitions_total";
pub const VRRP_ADVERTS_SENT: &str = "portico_vrrp_adverts_sent_total";
pub const VRRP_ADVERTS_RECEIVED: &str = "portico_vrrp_adverts_received_total";
pub const VRRP_RX_ERRORS: &str = "portico_vrrp_rx_errors_total";
pub const VRRP_DUAL_MASTER: &str = "portico_vrrp_dual_master_total";
pub const VIP_ANNOUNCEMENTS: &str = "portico_vip_announcements_total";
pub const VIP_CONFLICTS: &str = "portico_vip_conflicts_total";

/// The VRRP and VIP families (names mirror RFC 6527 / keepalived's counters where they can).
pub struct VrrpFamilies {
    /// 1 for the instance's current state (initialize, backup, master), 0 for the others.
    pub state: IntGaugeVec,
    pub priority: IntGaugeVec,
    pub transitions: IntCounterVec,
    pub adverts_sent: IntCounterVec,
    pub adverts_received: IntCounterVec,
    /// By [`crate::vrrp::RxError`] reason; not per VRID (an unknown VRID has none of ours).
    pub rx_errors: IntCounterVec,
    pub dual_master: IntCounterVec,
    /// `kind` = garp or na.
    pub vip_announcements: IntCounterVec,
    /// ARP packets from another host claiming a VIP we hold (standalone mode).
    pub vip_conflicts: IntCounter,
}

impl VrrpFamilies {
    fn register(reg: &Registry) -> VrrpFamilies {
        let f = VrrpFamilies {
            state: gauge(
                reg,
                VRRP_STATE,
                "1 for the VRRP instance's current state (initialize, backup, master), 0 for the others.",
                &["vrid", "state"],
            ),
            priority: gauge(
                reg,
                VRRP_PRIORITY,
                "Effective VRRP priority (configured, less tracking penalties).",
                &["vrid"],
            ),
            transitions: counter(
                reg,
                VRRP_TRANSITIONS,
                "VRRP state transitions.",
                &["vrid", "from", "to"],
            ),
            adverts_sent: counter(reg, VRRP_ADVERTS_SENT, "VRRP advertisements sent.", &["vrid"]),
            adverts_received: counter(
                reg,
                VRRP_ADVERTS_RECEIVED,
                "Valid VRRP advertisements received for the instance.",
                &["vrid"],
            ),
            rx_errors: counter(
                reg,
                VRRP_RX_ERRORS,
                "VRRP packets dropped, by reason (ttl, version, type, checksum, vrid_unknown, truncated, address_count, interval, not_peer, ip_header); address_list is counted but the advert is used.",
                &["reason"],
            ),
            dual_master: counter(
                reg,
                VRRP_DUAL_MASTER,
                "Adverts a master heard from another master of its VRID with lower precedence (split brain).",
                &["vrid"],
            ),
            vip_announcements: counter(
                reg,
                VIP_ANNOUNCEMENTS,
                "Gratuitous ARPs (kind=garp) and unsolicited neighbour advertisements (kind=na) sent for VIPs.",
                &["kind"],
            ),
            vip_conflicts: {
                let c = IntCounter::new(
                    VIP_CONFLICTS,
                    "ARP packets from another host claiming a VIP this node holds (standalone mode; RFC 5227 conflict).",
                )
                .expect("static metric definition");
                reg.register(Box::new(c.clone()))
                    .expect("metric registered once");
                c
            },
        };
        for r in crate::vrrp::RxError::ALL {
            f.rx_errors.with_label_values(&[r.as_str()]);
        }
        for k in ["garp", "na"] {
            f.vip_announcements.with_label_values(&[k]);
        }
        f
    }
}
