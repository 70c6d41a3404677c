//! `portico ctl`: the operator's side of the admin socket.
//!
//! Exit codes: 0 done; 1 the daemon answered with an error (unknown name, refused reload,
//! no VRRP); 2 the daemon could not be reached (no socket, nothing listening, permission).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Outcome;
use crate::admin::proto::{AdminResult, ReloadResult, Reply, Request, Status, VrrpAction};
use crate::admin::{AdminClient, ClientError};

/// Exit status when the daemon cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 2;

/// Where the admin socket is: `--socket`, else `[admin] socket` of `--config`, else the
/// default path.
pub fn socket_path(socket: Option<&Path>, config: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(s) = socket {
        return Ok(s.to_owned());
    }
    if let Some(c) = config {
        return crate::config::load(c)
            .map(|cfg| cfg.admin.socket)
            .map_err(|e| format!("reading the admin socket path from {}:\n{e}", c.display()));
    }
    Ok(PathBuf::from(crate::config::defaults::ADMIN_SOCKET))
}

/// What `ctl` was asked to do.
#[derive(Debug, Clone)]
pub enum CtlCommand {
    Status { json: bool },
    Drain { backend: String },
    Disable { backend: String, kill: bool },
    Enable { backend: String },
    Reload,
    Vrrp { action: VrrpAction },
}

/// Runs one command against the socket at `path`.
pub async fn run(path: &Path, cmd: CtlCommand) -> Outcome {
    let (req, json) = match &cmd {
        CtlCommand::Status { json } => (Request::Status, *json),
        CtlCommand::Drain { backend } => (
            Request::Drain {
                backend: backend.clone(),
            },
            false,
        ),
        CtlCommand::Disable { backend, kill } => (
            Request::Disable {
                backend: backend.clone(),
                kill: *kill,
            },
            false,
        ),
        CtlCommand::Enable { backend } => (
            Request::Enable {
                backend: backend.clone(),
            },
            false,
        ),
        CtlCommand::Reload => (Request::Reload, false),
        CtlCommand::Vrrp { action } => (Request::Vrrp { action: *action }, false),
    };
    let reply = match crate::admin::client::request(path, &req).await {
        Ok(r) => r,
        Err(e) => return unreachable(&e),
    };
    if json {
        let mut o = Outcome::ok(
            serde_json::to_string_pretty(&reply).unwrap_or_else(|e| format!("{e}")) + "\n",
        );
        if matches!(reply, Reply::Error(_)) {
            o.code = 1;
        }
        return o;
    }
    render_reply(&reply)
}

fn unreachable(e: &ClientError) -> Outcome {
    Outcome {
        stderr: format!("portico ctl: {e}\n"),
        code: EXIT_UNREACHABLE,
        ..Outcome::default()
    }
}

/// The text an operator reads for a reply, and the exit status it implies.
pub fn render_reply(reply: &Reply) -> Outcome {
    match reply {
        Reply::Status(s) => Outcome::ok(render_status(s)),
        Reply::Admin(a) => Outcome::ok(render_admin(a)),
        Reply::Reload(r) => Outcome::ok(render_reload(r)),
        Reply::Vrrp(v) => Outcome::ok(format!(
            "vrrp: {} (VIP owner {})\n",
            v.state,
            v.vip_owner.as_deref().unwrap_or("unknown")
        )),
        Reply::Dsr(d) => Outcome::ok(format!(
            "dsr: {}\n",
            if d.active {
                "forwarding"
            } else {
                "not forwarding"
            }
        )),
        Reply::Error(e) => {
            let mut s = format!("portico ctl: {}\n", e.error);
            if !e.known.is_empty() {
                let _ = writeln!(s, "  known: {}", e.known.join(", "));
            }
            for d in &e.details {
                let _ = writeln!(s, "  {d}");
            }
            Outcome::fail(s)
        }
    }
}

fn render_admin(a: &AdminResult) -> String {
    let mut s = format!("{}: {} (was {})", a.backend, a.admin, a.previous);
    match a.admin.as_str() {
        "drain" => {
            let _ = write!(
                s,
                "; {} connections remain, {} pinned clients still reach it",
                a.connections_remaining, a.pinned_clients
            );
        }
        "disabled" if a.killed => {
            let _ = write!(
                s,
                "; established connections closed ({} remain)",
                a.connections_remaining
            );
        }
        "disabled" => {
            let _ = write!(
                s,
                "; no new connections; {} established remain",
                a.connections_remaining
            );
        }
        _ => {}
    }
    s.push('\n');
    s
}

fn render_reload(r: &ReloadResult) -> String {
    let mut s = format!("reloaded {} (generation {})", r.config, r.generation);
    if !r.added.is_empty() {
        let _ = write!(s, "; services added: {}", r.added.join(", "));
    }
    if !r.removed.is_empty() {
        let _ = write!(s, "; services removed: {}", r.removed.join(", "));
    }
    if r.health_restarted {
        s.push_str("; health checks restarted");
    }
    s.push('\n');
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}

fn age(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (secs / 3600.0) as u64,
            ((secs % 3600.0) / 60.0) as u64
        )
    }
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut width = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = width[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The readable `status` table.
pub fn render_status(s: &Status) -> String {
    let mut out = format!(
        "node {} · config {} · generation {} · up {}\n",
        s.node,
        s.config,
        s.generation,
        age(s.uptime_s)
    );
    match &s.vrrp {
        Some(v) => {
            let _ = writeln!(
                out,
                "vrrp {} · VIP owner {} · VIPs {}",
                v.state,
                v.vip_owner.as_deref().unwrap_or("unknown"),
                v.vips.join(", ")
            );
        }
        None => out.push_str("vrrp not configured on this node\n"),
    }
    if let Some(d) = &s.dsr {
        let _ = writeln!(
            out,
            "dsr {} · {} flows{} · {}",
            if d.active { "forwarding" } else { "standby" },
            d.flows,
            if d.active {
                ""
            } else {
                " kept for a hand-over"
            },
            match &d.xdp {
                Some(mode) => format!("xdp {mode}"),
                None => "no xdp".to_owned(),
            }
        );
    }
    out.push('\n');
    let mut rows = vec![[
        "SERVICE", "PROTO", "LISTEN", "BOUND", "POOL", "CONNS", "FLOWS",
    ]
    .map(String::from)
    .to_vec()];
    for v in &s.services {
        rows.push(vec![
            v.name.clone(),
            v.protocol.clone(),
            v.listen.clone(),
            match (&v.bound, v.forwarding.as_str()) {
                (Some(b), _) => b.clone(),
                // No socket by design: the forwarder reads the VIP's frames off the interface.
                (None, "dsr") => "dsr (frames)".into(),
                (None, _) => "NOT LISTENING".into(),
            },
            v.pool.clone(),
            v.active_connections.to_string(),
            if v.protocol == "udp" {
                v.udp_flows.to_string()
            } else {
                "-".into()
            },
        ]);
    }
    out.push_str(&table(&rows));
    out.push('\n');
    let mut rows = vec![[
        "BACKEND",
        "POOL",
        "ADDRESS",
        "ADMIN",
        "HEALTH",
        "CONNS",
        "TOTAL",
        "PINNED",
        "LAST PROBE",
        "REASON",
    ]
    .map(String::from)
    .to_vec()];
    for b in &s.backends {
        let probe = match &b.last_probe {
            Some(p) => format!("{} {} {} ago", p.check, p.verdict, age(p.age_s)),
            None => "-".into(),
        };
        rows.push(vec![
            b.name.clone(),
            b.pool.clone(),
            b.address.clone(),
            b.admin.clone(),
            b.health.clone(),
            b.active_connections.to_string(),
            b.connections_total.to_string(),
            b.affinity_entries.to_string(),
            probe,
            b.reason.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

/// `ctl watch`: redraws the status table every `every` until Ctrl-C (or `count` frames,
/// when given). Plain ANSI: clear screen, cursor home.
pub async fn watch(path: &Path, every: Duration, count: Option<u64>) -> Outcome {
    use std::io::Write as _;
    let mut client = match AdminClient::connect(path).await {
        Ok(c) => c,
        Err(e) => return unreachable(&e),
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut tick = tokio::time::interval(every);
    let mut frames = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Outcome::default(),
            _ = tick.tick() => {}
        }
        let reply = match client.call(&Request::Status).await {
            Ok(r) => r,
            Err(e) => return unreachable(&e),
        };
        let Reply::Status(s) = reply else {
            return render_reply(&reply);
        };
        let mut frame = String::new();
        if tty {
            frame.push_str("\x1b[H\x1b[2J");
        }
        frame.push_str(&render_status(&s));
        let _ = writeln!(
            frame,
            "\nrefreshing every {:.1}s · Ctrl-C to quit",
            every.as_secs_f64()
        );
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(frame.as_bytes());
        let _ = stdout.flush();
        frames += 1;
        if count.is_some_and(|c| frames >= c) {
            return Outcome::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::proto::{BackendStatus, DsrForwarderStatus, ProbeStatus, ServiceStatus};

    #[test]
    fn status_table_lines_up_and_shows_every_field() {
        let s = Status {
            node: "lb1".into(),
            config: "/etc/portico/portico.toml".into(),
            generation: 7,
            uptime_s: 125.0,
            vrrp: None,
            services: vec![
                ServiceStatus {
                    name: "rdgw-https".into(),
                    protocol: "tcp".into(),
                    listen: "192.0.2.10:443".into(),
                    bound: Some("192.0.2.10:443".into()),
                    forwarding: "proxy".into(),
                    pool: "gateways".into(),
                    active_connections: 12,
                    udp_flows: 0,
                },
                ServiceStatus {
                    name: "rdgw-dsr".into(),
                    protocol: "udp".into(),
                    listen: "192.0.2.11:3391".into(),
                    bound: None,
                    forwarding: "dsr".into(),
                    pool: "gateways".into(),
                    active_connections: 0,
                    udp_flows: 0,
                },
            ],
            backends: vec![
                BackendStatus {
                    pool: "gateways".into(),
                    name: "web01".into(),
                    address: "10.0.0.11".into(),
                    admin: "drain".into(),
                    health: "up".into(),
                    reason: None,
                    active_connections: 5,
                    connections_total: 99,
                    udp_flows_total: 3,
                    affinity_entries: 4,
                    last_probe: Some(ProbeStatus {
                        check: "rdg-token".into(),
                        verdict: "healthy".into(),
                        detail: None,
                        age_s: 1.25,
                    }),
                },
                BackendStatus {
                    pool: "gateways".into(),
                    name: "web02-long-name".into(),
                    address: "10.0.0.12".into(),
                    admin: "enabled".into(),
                    health: "down".into(),
                    reason: Some(
                        "token-rejected (rdg-token): E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED"
                            .into(),
                    ),
                    active_connections: 0,
                    connections_total: 0,
                    udp_flows_total: 0,
                    affinity_entries: 0,
                    last_probe: None,
                },
            ],
            dsr: Some(DsrForwarderStatus {
                active: false,
                flows: 12,
                xdp: Some("native".into()),
            }),
        };
        let t = render_status(&s);
        assert!(
            t.contains("dsr standby · 12 flows kept for a hand-over · xdp native"),
            "{t}"
        );
        assert!(t.contains("node lb1"), "{t}");
        assert!(t.contains("up 2m05s"), "{t}");
        assert!(t.contains("vrrp not configured"), "{t}");
        assert!(t.contains("rdg-token healthy 1.2s ago"), "{t}");
        assert!(t.contains("token-rejected (rdg-token)"), "{t}");
        // A dsr service has no socket by design: not reported as a listener that failed.
        assert!(
            t.contains("dsr (frames)") && !t.contains("NOT LISTENING"),
            "{t}"
        );
        // Columns line up: ADMIN starts at the same offset on the header and both rows.
        let col = |needle: &str| {
            t.lines()
                .find(|l| l.contains(needle) && (l.starts_with("web") || l.starts_with("BACKEND")))
                .and_then(|l| l.find(needle))
        };
        assert_eq!(col("ADMIN"), col("drain"));
        assert_eq!(col("ADMIN"), col("enabled"));
    }

    #[test]
    fn error_replies_exit_one_and_list_known_names() {
        let r = Reply::Error(crate::admin::proto::ErrorReply {
            error: "no backend named \"web09\"".into(),
            known: vec!["web01".into(), "web02".into()],
            details: vec![],
        });
        let o = render_reply(&r);
        assert_eq!(o.code, 1);
        assert!(o.stderr.contains("web09") && o.stderr.contains("known: web01, web02"));
    }

    #[test]
    fn socket_path_prefers_the_flag_then_the_config_then_the_default() {
        assert_eq!(
            socket_path(Some(Path::new("/x.sock")), None).unwrap(),
            PathBuf::from("/x.sock")
        );
        assert_eq!(
            socket_path(None, None).unwrap(),
            PathBuf::from(crate::config::defaults::ADMIN_SOCKET)
        );
        let e = socket_path(None, Some(Path::new("/nonexistent/portico.toml"))).unwrap_err();
        assert!(e.contains("/nonexistent/portico.toml"), "{e}");
    }
}
