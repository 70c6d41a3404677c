//! Reload: re-read the config file the daemon started from (SIGHUP, `ctl reload`) and apply
//! it without cutting a connection.
//!
//! All-or-nothing where it can be: the new file is validated, its probes set up and every new
//! listener bound *before* anything changes, so any fault leaves the old config in force and
//! is named in the reply and the log. Then the snapshot is swapped (backends keep their admin
//! and health states, by pool and name), removed services stop accepting (their established
//! connections carry on: a relay never looks at its listener again), added services start,
//! and the health tasks restart when pools changed. A service whose address or protocol
//! changed is removed and added; when the new address is one a removed service held, the old
//! listener closes first and the bind is retried briefly.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::plane::{Bound, Plane};
use crate::config::{Config, ConfigError};
use crate::controller::{ControlError, Controller};

/// The running node: its data plane, its controller and what reload needs.
pub struct Node {
    pub(crate) plane: Plane,
    pub controller: Arc<Controller>,
    /// Parent of the running health tasks; replaced when they restart.
    health_stop: Mutex<CancellationToken>,
    /// One reload at a time (SIGHUP and `ctl reload` may race).
    reload_lock: tokio::sync::Mutex<()>,
    pub started: Instant,
    /// The VRRP instances, set once at start (empty without `mode = "vrrp"`); the admin side
    /// reads and demotes them through `crate::admin::vrrp` only.
    pub(crate) vrrp: std::sync::OnceLock<Vec<crate::vrrp::Handle>>,
    /// The dsr forwarder, once started: its active flag (the admin `dsr` command flips it)
    /// and flow count (`ctl status`).
    pub dsr: std::sync::OnceLock<crate::dsr::forwarder::DsrHandle>,
}

/// What a successful reload changed.
#[derive(Debug, Clone, Default)]
pub struct ReloadOutcome {
    pub source: PathBuf,
    pub generation: u64,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub health_restarted: bool,
    /// Applied, but something deserves a look (a moved listener that could not rebind).
    pub warnings: Vec<String>,
}

/// Why a reload was refused; the old config stays in force.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The file does not parse or validate; every diagnostic names file:line:col: field.
    #[error("{0}")]
    Config(ConfigError),
    /// A new listener could not be bound.
    #[error("{0}")]
    Listen(String),
    /// A pool's probes cannot be set up (CA file, signing key).
    #[error("pool {pool}: health checks: {error}")]
    Health {
        pool: String,
        error: crate::health::SetupError,
    },
    #[error("{0}")]
    Apply(ControlError),
}

impl ReloadError {
    /// One line per fault.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReloadError::Config(e) => e.diagnostics.iter().map(|d| d.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }
}

impl Node {
    pub(crate) fn new(plane: Plane, controller: Arc<Controller>) -> Node {
        Node {
            plane,
            controller,
            health_stop: Mutex::new(CancellationToken::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            started: Instant::now(),
            vrrp: std::sync::OnceLock::new(),
            dsr: std::sync::OnceLock::new(),
        }
    }

    /// The serving listeners.
    pub fn listeners(&self) -> Vec<super::plane::Live> {
        self.plane.listeners()
    }

    /// (Re)starts the health tasks of the current config, stopping any running ones.
    /// The returned receiver counts down to the first round of verdicts (VRRP waits for it
    /// before it preempts).
    pub(crate) fn start_health(
        &self,
    ) -> Result<tokio::sync::watch::Receiver<usize>, crate::health::SetupError> {
        let token = self.plane.hard_stop.child_token();
        let old = {
            let mut g = self.health_stop.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *g, token.clone())
        };
        old.cancel();
        crate::health::spawn(&self.controller, &self.plane.tasks, token)
    }

    /// Re-reads the config file and applies it; counts the result in the reload metrics.
    pub async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        let _one = self.reload_lock.lock().await;
        let r = self.reload_inner().await;
        let m = self.controller.metrics();
        match &r {
            Ok(o) => {
                m.config_reloads.with_label_values(&["success"]).inc();
                m.config_last_reload_success.set(unix_now());
                info!(
                    source = %o.source.display(),
                    generation = o.generation,
                    added = ?o.added,
                    removed = ?o.removed,
                    health_restarted = o.health_restarted,
                    "config.reload applied"
                );
                for w in &o.warnings {
                    warn!(warning = %w, "config.reload");
                }
            }
            Err(e) => {
                m.config_reloads.with_label_values(&["failure"]).inc();
                m.config_reload_failures.inc();
                for line in e.lines() {
                    warn!(fault = %line, "config.reload refused: the previous config stays in force");
                }
            }
        }
        r
    }

    async fn reload_inner(&self) -> Result<ReloadOutcome, ReloadError> {
        let old = self.controller.config();
        let source = old.source.clone();
        let path = source.clone();
        let new = tokio::task::spawn_blocking(move || crate::config::load(&path))
            .await
            .map_err(|e| ReloadError::Listen(format!("reading the config: {e}")))?
            .map_err(ReloadError::Config)?;
        let pools_changed = old.pools != new.pools;
        if pools_changed {
            for p in &new.pools {
                if p.health.checks.is_empty() {
                    continue;
                }
                crate::health::Prober::from_health(&p.health).map_err(|error| {
                    ReloadError::Health {
                        pool: p.name.clone(),
                        error,
                    }
                })?;
            }
        }
        let plan = Plan::new(&old, &new);
        // Bind what does not collide with a listener that is about to close; a failure here
        // leaves everything as it was (the bound sockets are dropped).
        let mut bound: Vec<Bound> = Vec::new();
        for &i in &plan.add_now {
            let svc = &new.services[i];
            bound.push(
                self.plane
                    .bind(svc, i)
                    .map_err(|e| ReloadError::Listen(format!("{}: {e:#}", source.display())))?,
            );
        }
        // The admin socket this reply travels on stays where it is; moving it needs a restart.
        let socket_moved = old.admin.socket != new.admin.socket;
        // The dsr forwarder is set up once, at start (its socket, filter and flow table).
        let dsr_of = |c: &Config| -> Vec<crate::config::Service> {
            c.services
                .iter()
                .filter(|s| s.forwarding == crate::config::Forwarding::Dsr)
                .cloned()
                .collect()
        };
        let dsr_changed = dsr_of(&old) != dsr_of(&new);
        self.controller
            .apply_config(new.clone())
            .map_err(ReloadError::Apply)?;
        let mut out = ReloadOutcome {
            source: source.clone(),
            ..ReloadOutcome::default()
        };
        if dsr_changed {
            out.warnings.push(
                "dsr services changed: the forwarder keeps its start-up services until the next \
                 start"
                    .to_string(),
            );
        }
        if socket_moved {
            out.warnings.push(format!(
                "admin socket moved to {}: takes effect at the next start",
                new.admin.socket.display()
            ));
        }
        for name in &plan.remove {
            self.plane.close(name).await;
            out.removed.push(name.clone());
        }
        for b in bound {
            out.added.push(b.name.clone());
            if let Err(e) = self.plane.serve(b) {
                out.warnings.push(format!("{e:#}"));
            }
        }
        for &i in &plan.add_later {
            let svc = &new.services[i];
            match self.bind_retrying(svc, i).await {
                Ok(b) => {
                    out.added.push(b.name.clone());
                    if let Err(e) = self.plane.serve(b) {
                        out.warnings.push(format!("{e:#}"));
                    }
                }
                Err(e) => out.warnings.push(format!(
                    "service {} is configured but NOT listening: {e:#}",
                    svc.name
                )),
            }
        }
        if pools_changed {
            if let Err(e) = self.start_health() {
                out.warnings
                    .push(format!("health checks not restarted: {e}"));
            }
            out.health_restarted = true;
        }
        out.generation = self.controller.snapshot().load().generation;
        Ok(out)
    }

    /// Binds a service whose address a just-closed listener held: the old socket closes on its
    /// data-plane thread a moment later.
    async fn bind_retrying(
        &self,
        svc: &crate::config::Service,
        hint: usize,
    ) -> anyhow::Result<Bound> {
        let mut last = None;
        for _ in 0..40 {
            match self.plane.bind(svc, hint) {
                Ok(b) => return Ok(b),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("bind failed")))
    }
}

/// Which services to close and open; by name, a changed address or protocol counting as both.
struct Plan {
    remove: Vec<String>,
    /// Indexes into the new config's services: bind before anything changes.
    add_now: Vec<usize>,
    /// Bind after the removals (their address was held by a removed service).
    add_later: Vec<usize>,
}

impl Plan {
    fn new(old: &Config, new: &Config) -> Plan {
        let same = |a: &crate::config::Service, b: &crate::config::Service| {
            a.name == b.name && a.listen == b.listen && a.protocol == b.protocol
        };
        // dsr services have no listener: the forwarder reads their frames.
        let proxied = |s: &&crate::config::Service| s.forwarding != crate::config::Forwarding::Dsr;
        let remove: Vec<&crate::config::Service> = old
            .services
            .iter()
            .filter(proxied)
            .filter(|o| !new.services.iter().filter(proxied).any(|n| same(o, n)))
            .collect();
        let mut add_now = Vec::new();
        let mut add_later = Vec::new();
        for (i, n) in new.services.iter().enumerate() {
            if !proxied(&n) || old.services.iter().filter(proxied).any(|o| same(o, n)) {
                continue;
            }
            let collides = n.listen.port() != 0
                && remove
                    .iter()
                    .any(|r| r.listen == n.listen && r.protocol == n.protocol);
            if collides {
                add_later.push(i);
            } else {
                add_now.push(i);
            }
        }
        Plan {
            remove: remove.iter().map(|s| s.name.clone()).collect(),
            add_now,
            add_later,
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(services: &[(&str, &str, crate::config::Protocol)]) -> Config {
        let text = {
            let mut t = String::from("[node]\nname = \"n\"\n");
            for (n, l, p) in services {
                t.push_str(&format!(
                    "[[service]]\nname = \"{n}\"\nlisten = \"{l}\"\nprotocol = \"{}\"\npool = \"p\"\n",
                    p.as_str()
                ));
            }
            t.push_str("[pool.p]\nbackends = [{ name = \"a\", address = \"127.0.0.1:1\" }]\n");
            t
        };
        crate::config::parse(&text, std::path::Path::new("t.toml")).expect("test config")
    }

    #[test]
    fn plan_keeps_unchanged_and_moves_changed_addresses_after_removal() {
        use crate::config::Protocol::*;
        let old = cfg(&[
            ("keep", "127.0.0.1:1000", Tcp),
            ("gone", "127.0.0.1:1001", Tcp),
            ("moved", "127.0.0.1:1002", Tcp),
        ]);
        let new = cfg(&[
            ("keep", "127.0.0.1:1000", Tcp),
            ("moved", "127.0.0.1:1003", Tcp),
            ("takes-over", "127.0.0.1:1001", Tcp),
            ("fresh", "127.0.0.1:1004", Udp),
        ]);
        let p = Plan::new(&old, &new);
        assert_eq!(p.remove, vec!["gone".to_string(), "moved".to_string()]);
        let names = |v: &[usize]| -> Vec<String> {
            v.iter().map(|&i| new.services[i].name.clone()).collect()
        };
        assert_eq!(names(&p.add_now), vec!["moved", "fresh"]);
        assert_eq!(names(&p.add_later), vec!["takes-over"]);
    }
}
