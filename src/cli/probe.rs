//! `portico probe --config FILE [BACKEND] [--json]`: one probe of every backend (or of the
//! one named), running the pool's checks in order exactly as the daemon does, and printing
//! each check's verdict and timing, the gateway's certificate facts and its status codes.
//!
//! Exit status: 0 only when every probed backend is healthy, 1 when one is not, 2 when the
//! config cannot be used (unreadable, invalid, a probe that cannot be set up, no such
//! backend). `--json` prints one stable document (see [`JSON_VERSION`]) for scripts and
//! monitoring; without it, a table for humans.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use super::Outcome;
use crate::config::Config;
use crate::health::probe::{check_label, ProbeReport, Prober};
use crate::health::scheduler::probe_port;
use crate::rdg::hresult;

/// Bumped when a field of the JSON document changes meaning or goes away (adding is not).
pub const JSON_VERSION: u32 = 1;

/// Exit status for a config or usage mistake.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Clone)]
pub struct ProbeArgs {
    pub config: PathBuf,
    /// Only the backend(s) of this name (in every pool that has one).
    pub backend: Option<String>,
    pub json: bool,
}

struct Target {
    pool: String,
    backend: String,
    addr: SocketAddr,
    prober: Arc<Prober>,
}

/// One backend's outcome.
pub struct Probed {
    pub pool: String,
    pub backend: String,
    pub addr: SocketAddr,
    pub report: ProbeReport,
}

fn usage(msg: String) -> Outcome {
    Outcome {
        stderr: msg,
        code: EXIT_USAGE,
        ..Outcome::default()
    }
}

fn targets(config: &Config, only: Option<&str>) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for pool in &config.pools {
        let wanted: Vec<_> = pool
            .backends
            .iter()
            .filter(|b| only.is_none_or(|n| n == b.name))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let prober = Arc::new(
            Prober::from_health(&pool.health)
                .map_err(|e| format!("pool {}: the probe cannot be set up: {e}\n", pool.name))?,
        );
        let port = probe_port(config, &pool.name);
        for b in wanted {
            out.push(Target {
                pool: pool.name.clone(),
                backend: b.name.clone(),
                addr: b.socket_addr(port),
                prober: prober.clone(),
            });
        }
    }
    if out.is_empty() {
        return Err(match only {
            Some(n) => {
                let names: Vec<&str> = config
                    .pools
                    .iter()
                    .flat_map(|p| p.backends.iter().map(|b| b.name.as_str()))
                    .collect();
                format!(
                    "portico probe: no backend named {n:?} (backends: {})\n",
                    names.join(", ")
                )
            }
            None => "portico probe: the config has no backend\n".to_owned(),
        });
    }
    Ok(out)
}

/// Probes every target at once (each within its pool's timeout).
pub async fn probe_all(config: &Config, only: Option<&str>) -> Result<Vec<Probed>, String> {
    let targets = targets(config, only)?;
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in targets.into_iter().enumerate() {
        set.spawn(async move {
            let node = t.backend.clone();
            let report = t.prober.probe(t.addr, Some(&node)).await;
            (
                i,
                Probed {
                    pool: t.pool,
                    backend: t.backend,
                    addr: t.addr,
                    report,
                },
            )
        });
    }
    let mut done = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(x) => done.push(x),
            Err(e) => return Err(format!("portico probe: a probe task failed: {e}\n")),
        }
    }
    done.sort_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, p)| p).collect())
}

/// Runs `portico probe`.
pub fn run(args: &ProbeArgs) -> Outcome {
    let config = match crate::config::load(&args.config) {
        Ok(c) => c,
        Err(e) => return usage(e.to_string()),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return usage(format!("portico probe: cannot start the runtime: {e}\n")),
    };
    let probed = match rt.block_on(probe_all(&config, args.backend.as_deref())) {
        Ok(p) => p,
        Err(msg) => return usage(msg),
    };
    let healthy = probed.iter().all(|p| p.report.verdict.is_healthy());
    let stdout = if args.json {
        let mut s = serde_json::to_string_pretty(&to_json(&probed)).unwrap_or_default();
        s.push('\n');
        s
    } else {
        table(&probed)
    };
    Outcome {
        stdout,
        stderr: String::new(),
        code: if healthy { 0 } else { 1 },
    }
}

fn utc(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn hex(code: u32) -> String {
    format!("{code:#010x}")
}

/// The stable JSON document.
pub fn to_json(probed: &[Probed]) -> Value {
    let backends: Vec<Value> = probed
        .iter()
        .map(|p| {
            let r = &p.report;
            let checks: Vec<Value> = r
                .checks
                .iter()
                .map(|c| {
                    json!({
                        "check": check_label(c.check),
                        "verdict": c.verdict.as_str(),
                        "stage": c.stage.as_str(),
                        "code": c.stage.haproxy_code(c.verdict),
                        "seconds": c.elapsed.as_secs_f64(),
                    })
                })
                .collect();
            let cert = r.cert.as_ref().map(|c| {
                json!({
                    "subject": c.subject,
                    "sans": c.sans,
                    "not_after": c.not_after,
                    "not_after_utc": utc(c.not_after),
                    "issuer": c.issuer,
                    "issuer_thumbprint": c.issuer_thumbprint,
                })
            });
            json!({
                "pool": p.pool,
                "backend": p.backend,
                "address": p.addr.to_string(),
                "healthy": r.verdict.is_healthy(),
                "verdict": r.verdict.as_str(),
                "check": r.check.map(check_label),
                "stage": r.stage.as_str(),
                "code": r.stage.haproxy_code(r.verdict),
                "http_status": r.http_status,
                "hresult": r.hresult.map(hex),
                "hresult_name": r.hresult.and_then(hresult::name),
                "transport": r.transport.map(|t| t.as_str()),
                "clock_skew_seconds": r.clock_skew,
                "inconclusive": r.inconclusive,
                "detail": r.detail,
                "warnings": r.warnings,
                "checks": checks,
                "certificate": cert,
            })
        })
        .collect();
    json!({
        "version": JSON_VERSION,
        "healthy": probed.iter().all(|p| p.report.verdict.is_healthy()),
        "backends": backends,
    })
}

/// The human table: one row per check, then the backend's certificate, codes and detail.
pub fn table(probed: &[Probed]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<10} {:<22} {:<10} {:<15} {:<14} {:<6} {:>9}",
        "POOL", "BACKEND", "ADDRESS", "CHECK", "VERDICT", "STAGE", "CODE", "TIME"
    );
    for p in probed {
        let r = &p.report;
        for (i, c) in r.checks.iter().enumerate() {
            let (pool, backend, addr) = if i == 0 {
                (p.pool.clone(), p.backend.clone(), p.addr.to_string())
            } else {
                (String::new(), String::new(), String::new())
            };
            let _ = writeln!(
                out,
                "{:<10} {:<10} {:<22} {:<10} {:<15} {:<14} {:<6} {:>6.1} ms",
                pool,
                backend,
                addr,
                check_label(c.check),
                c.verdict.as_str(),
                c.stage.as_str(),
                c.stage.haproxy_code(c.verdict),
                c.elapsed.as_secs_f64() * 1000.0,
            );
        }
        let pad = " ".repeat(4);
        if let Some(c) = &r.cert {
            let _ = writeln!(out, "{pad}certificate  subject {}", c.subject);
            let _ = writeln!(out, "{pad}             SANs    {}", c.sans.join(", "));
            let _ = writeln!(out, "{pad}             expires {}", utc(c.not_after));
            let _ = writeln!(
                out,
                "{pad}             issuer  {} (thumbprint {})",
                c.issuer,
                c.issuer_thumbprint.as_deref().unwrap_or("unknown")
            );
        }
        if r.http_status.is_some() || r.hresult.is_some() {
            let _ = writeln!(
                out,
                "{pad}gateway      HTTP {}{}",
                r.http_status
                    .map_or_else(|| "-".to_owned(), |s| s.to_string()),
                r.hresult
                    .map(|c| format!(", status {}", hresult::display(c)))
                    .unwrap_or_default()
            );
        }
        if let Some(s) = r.clock_skew {
            let _ = writeln!(out, "{pad}clock skew   {s} s");
        }
        for w in &r.warnings {
            let _ = writeln!(out, "{pad}WARNING      {w}");
        }
        if let Some(d) = &r.detail {
            let _ = writeln!(out, "{pad}detail       {d}");
        }
        let _ = writeln!(
            out,
            "{pad}=> {} {}",
            p.backend,
            if r.verdict.is_healthy() {
                "HEALTHY".to_owned()
            } else {
                format!("NOT HEALTHY ({})", r.verdict.as_str())
            }
        );
    }
    out
}
