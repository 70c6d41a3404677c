//! Portico: owns a virtual IP for a farm of Microsoft RD Gateways, spreads their TLS and UDP
//! traffic at layer 4 with per-client affinity, and only sends clients to gateways that prove,
//! by a real MS-TSGU handshake with a freshly signed token, that they validate console tokens.
//!
//! # Layout
//!
//! Data flows one way: `config` → `snapshot` (behind `ArcSwap`) → data plane. Only the
//! `controller` builds and swaps snapshots; everything else reads them without locking.
//!
//! - [`config`]: the TOML schema, its validation into typed runtime values, and error reports
//!   that name file, line, column and field.
//! - [`maglev`]: the Maglev consistent-hash table (pure): weighted build, O(1) lookup, and the
//!   per-key preference order used for connect retries.
//! - [`affinity`]: the stick table (pure): client key → backend with idle expiry and a size cap,
//!   shared by every service of one affinity group.
//! - [`snapshot`]: the immutable view the data plane decides from (services, pools, backend
//!   states, Maglev tables) and the backend choice itself.
//! - [`controller`]: owns the current snapshot, applies config, health and admin changes.
//! - [`balancer`]: TCP and UDP listeners, connect with retry, byte copying, drain on shutdown.
//! - [`health`]: probe scheduling (one task per backend, each check a tier on its own
//!   jittered interval), the checks (tcp, tls, rdg-token through a real MS-TSGU tunnel
//!   opening), verdicts, rise/fall hysteresis, passive failure reports from the data plane,
//!   fail-static on farm-wide token rejection.
//! - [`dns`]: the authoritative zone for the gateway alias (UDP, TCP, EDNS, AXFR), answering
//!   with the VIPs whose pools can serve, from the current snapshot.
//! - [`metrics`]: the Prometheus registry, every metric name, and the `/metrics` listener.
//! - [`token`]: the VMM console-connect token (pure): mint and sign it as VMM does, verify it
//!   step by step as the FedAuth gateway plug-in does, redact it for logs, write the .rdp file.
//! - [`rdg`]: the MS-TSGU (RD Gateway HTTP transport) codec (pure): packets, HRESULTs, the
//!   RDG_OUT_DATA/RDG_IN_DATA header blocks, chunked coding and WebSocket frames.
//! - [`sim`]: the simulated RD Gateway (TLS, both MS-TSGU transports, FedAuth token check,
//!   channel relay, fault injection, verdict records) for tests, the lab and drills.
//! - [`lab`]: the embedded loopback lab behind `portico lab`.
//! - [`check`]: the effective plan `portico check` prints.
//! - [`cli`]: subcommands beyond wiring (`portico token ...`, `portico probe`, `portico ctl`,
//!   `portico drill`), returning text and status.
//! - [`systemd`]: `Type=notify` support: READY/STATUS/RELOADING/STOPPING and watchdog pings
//!   that stop when the housekeeping loop stalls; no-ops without `NOTIFY_SOCKET`.
//! - [`daemon`]: wires the parts together for `portico run` and `portico lab`; the live
//!   listener set (services added and removed by reload) and reload itself.
//! - [`admin`]: the admin socket (newline-delimited JSON): status, drain, disable, enable,
//!   reload, vrrp; its client for `portico ctl` and the drills.
//! - [`dsr`]: direct server return: the AF_PACKET forwarder for `forwarding = "dsr"`
//!   services (frame parsing, flow table, ARP for the VIP, MAC rewrite).
//! - [`vip`]: VIP addresses on the interface (rtnetlink), gratuitous ARP / unsolicited NA,
//!   ARP conflict probe, cleanup of VIPs left by a crashed run.
//! - [`vrrp`]: VRRPv3 (RFC 5798): packet codec and state machine (pure), and the driver
//!   (raw IP protocol 112 socket, timers) that holds the VIP while master.

pub mod admin;
pub mod affinity;
pub mod balancer;
pub mod check;
pub mod cli;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod dns;
pub mod dsr;
pub mod health;
pub mod lab;
pub mod maglev;
pub mod metrics;
pub mod rdg;
pub mod sim;
pub mod snapshot;
pub mod sockopt;
pub mod systemd;
pub mod token;
pub mod vip;
pub mod vrrp;
