//! One task per backend: probe every `interval` (±10% jitter, so a hundred backends do not
//! probe in lockstep), feed the verdicts and the data plane's passive reports into the
//! backend's [`Hysteresis`], and publish a state change through the controller, with one
//! `info!` line giving the reason. Every probe is a metric and a `debug!` line.
//!
//! **Fail-static.** When every backend of a pool answers `token-rejected`, the probe's signing
//! side (certificate, gateways' trust list, clock) is the likely culprit, not the farm: the
//! tasks keep the last good states (a backend taken down by `token-rejected` meanwhile is
//! restored), warn loudly and set `portico_probe_credential_suspect{pool}` to 1 until one
//! backend answers otherwise.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use super::probe::{check_label, ProbeReport, Prober, SetupError};
use super::{Hysteresis, PassiveSink, Verdict};
use crate::controller::Controller;
use crate::metrics::Metrics;
use crate::rdg::hresult;
use crate::snapshot::HealthState;

/// What the tasks of one pool share, for fail-static.
#[derive(Default)]
struct PoolShared {
    backends: usize,
    /// Last probe verdict of each backend.
    last: HashMap<Arc<str>, Verdict>,
    /// The state each backend has in the published snapshot.
    published: HashMap<Arc<str>, HealthState>,
    /// Backends taken down by `token-rejected` (restored when fail-static starts).
    down_by_token: HashSet<Arc<str>>,
    suspect: bool,
}

struct Backend {
    pool: Arc<str>,
    name: Arc<str>,
    addr: SocketAddr,
    prober: Arc<Prober>,
    controller: Arc<Controller>,
    metrics: Arc<Metrics>,
    shared: Arc<Mutex<PoolShared>>,
    hysteresis: Hysteresis,
    interval: Duration,
    passive: Option<mpsc::Receiver<()>>,
    /// Counts down backends still waiting for their first probe (VRRP holds preemption until
    /// it reaches zero); taken after this backend's first probe.
    first_round: Option<Arc<tokio::sync::watch::Sender<usize>>>,
}

/// Starts one health task per backend of every pool with checks (or passive checking).
/// Fails, before spawning anything, when a pool's probe cannot be set up (CA file, signing key).
/// The returned receiver reaches zero once every probed backend has had its first probe.
pub fn spawn(
    controller: &Arc<Controller>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<tokio::sync::watch::Receiver<usize>, SetupError> {
    let config = controller.config();
    let snap = controller.snapshot().load_full();
    let metrics = controller.metrics().clone();
    let mut sink = PassiveSink::new();
    let mut backends = Vec::new();
    for pool in &config.pools {
        let h = &pool.health;
        if h.checks.is_empty() && !h.passive {
            continue;
        }
        let prober = Arc::new(Prober::from_health(h)?);
        let Some(view) = snap.pools.iter().find(|p| &*p.name == pool.name.as_str()) else {
            continue;
        };
        // The port a probe connects to: the backend's own, else the first service's of this pool.
        let service_port = config
            .services
            .iter()
            .find(|s| s.pool == pool.name && s.protocol == crate::config::Protocol::Tcp)
            .map(|s| s.backend_port)
            .unwrap_or(443);
        let shared = Arc::new(Mutex::new(PoolShared {
            backends: pool.backends.len(),
            ..PoolShared::default()
        }));
        for b in &view.backends {
            let passive = h.passive.then(|| sink.register(b.id));
            backends.push(Backend {
                pool: view.name.clone(),
                name: b.name.clone(),
                addr: b.socket_addr(service_port),
                prober: prober.clone(),
                controller: controller.clone(),
                metrics: metrics.clone(),
                shared: shared.clone(),
                hysteresis: Hysteresis::new(b.health, h.rise, h.fall),
                interval: h.interval,
                passive,
                first_round: None,
            });
        }
    }
    if let Err(error) = controller.set_passive_sink(Some(Arc::new(sink))) {
        warn!(%error, "passive health checks not installed");
    }
    let (first_tx, first_rx) = tokio::sync::watch::channel(backends.len());
    let first_tx = Arc::new(first_tx);
    for mut b in backends {
        b.first_round = Some(first_tx.clone());
        let span = tracing::info_span!("health.backend", pool = %b.pool, backend = %b.name);
        tasks.spawn(b.run(stop.clone()).instrument(span));
    }
    Ok(first_rx)
}

/// `d` ± 10%, from `seed` (xorshift state, advanced).
pub fn jittered(d: Duration, seed: &mut u64) -> Duration {
    let mut x = *seed;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *seed = x;
    // A factor in [0.9, 1.1).
    let f = 0.9 + (x % 10_000) as f64 / 50_000.0;
    d.mul_f64(f)
}

fn seed() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b) | 1
}

impl Backend {
    async fn run(mut self, stop: CancellationToken) {
        let mut seed = seed();
        // The first probe within the first tenth of an interval, spread over backends.
        let first = jittered(self.interval, &mut seed).saturating_sub(self.interval.mul_f64(0.9));
        let mut next = Instant::now() + first;
        let mut passive = self.passive.take();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {
                    let report = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = self.prober.probe(self.addr, Some(&self.name)) => r,
                    };
                    self.on_probe(&report);
                    if let Some(f) = self.first_round.take() {
                        f.send_modify(|n| *n = n.saturating_sub(1));
                    }
                    next = Instant::now() + jittered(self.interval, &mut seed);
                }
                Some(()) = recv(&mut passive) => self.on_passive(),
            }
        }
    }

    fn on_passive(&mut self) {
        self.metrics
            .probe_results
            .with_label_values(&[&*self.name, "passive", Verdict::ConnectFailed.as_str()])
            .inc();
        self.sync_published();
        debug!("passive: data-plane connect failed");
        if let Some(to) = self.hysteresis.record(false) {
            self.publish(
                to,
                "passive",
                "connect-failed",
                "tcp",
                None,
                None,
                "data-plane connect failures",
            );
        }
    }

    /// Takes the state another task restored (fail-static) as this backend's own.
    fn sync_published(&mut self) {
        let published = self.shared().published.get(&self.name).copied();
        if let Some(p) = published {
            if p != self.hysteresis.state() {
                self.hysteresis.reset(p);
            }
        }
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, PoolShared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_probe(&mut self, r: &ProbeReport) {
        let m = self.metrics.clone();
        for c in &r.checks {
            let check = check_label(c.check);
            m.probe_duration
                .with_label_values(&[&*self.name, check])
                .observe(c.elapsed.as_secs_f64());
            m.probe_results
                .with_label_values(&[&*self.name, check, c.verdict.as_str()])
                .inc();
        }
        let labels = [&*self.pool, &*self.name];
        if let Some(c) = &r.cert {
            m.backend_cert_not_after
                .with_label_values(&labels)
                .set(c.not_after);
        }
        if let Some(s) = r.clock_skew {
            m.backend_clock_skew.with_label_values(&labels).set(s);
        }
        let check = r.check.map(check_label).unwrap_or("none");
        if r.inconclusive {
            warn!(
                check,
                detail = r.detail.as_deref(),
                "health.probe failed for a local reason (descriptors, buffers): not counted"
            );
            return;
        }
        debug!(
            check,
            stage = r.stage.as_str(),
            verdict = r.verdict.as_str(),
            code = r.stage.haproxy_code(r.verdict),
            http_status = r.http_status,
            hresult = r.hresult.map(hresult::display),
            detail = r.detail.as_deref(),
            "health.probe"
        );
        for w in &r.warnings {
            warn!(warning = %w, "health.probe certificate warning");
        }
        self.sync_published();
        // Fail-static bookkeeping.
        let (all_rejected, was_suspect) = {
            let mut sh = self.shared();
            sh.last.insert(self.name.clone(), r.verdict);
            let all = sh.last.len() == sh.backends
                && sh.last.values().all(|v| *v == Verdict::TokenRejected);
            let was = sh.suspect;
            sh.suspect = all;
            (all, was)
        };
        if all_rejected && !was_suspect {
            self.enter_fail_static();
        } else if !all_rejected && was_suspect {
            m.probe_credential_suspect
                .with_label_values(&[&*self.pool])
                .set(0);
            info!(pool = %self.pool, "health.fail_static ended: a backend no longer rejects the probe token");
        }
        let Some(to) = self.hysteresis.record(r.verdict.is_healthy()) else {
            return;
        };
        if all_rejected && to == HealthState::Down {
            // Keep the last good state: the farm is not what is broken.
            self.hysteresis.reset(HealthState::Up);
            return;
        }
        let http = r.http_status;
        let code = r.hresult;
        let reason = r.detail.clone().unwrap_or_default();
        self.publish(
            to,
            check,
            r.verdict.as_str(),
            r.stage.as_str(),
            http,
            code,
            &reason,
        );
        if to == HealthState::Down && r.verdict == Verdict::TokenRejected {
            self.shared().down_by_token.insert(self.name.clone());
        }
    }

    fn enter_fail_static(&mut self) {
        self.metrics
            .probe_credential_suspect
            .with_label_values(&[&*self.pool])
            .set(1);
        warn!(
            pool = %self.pool,
            "health.fail_static: EVERY backend rejects the probe token; the signing side (probe certificate, gateways' trusted issuers, clock) is suspect, not the farm: keeping the last good states"
        );
        let restore: Vec<Arc<str>> = {
            let mut sh = self.shared();
            let names: Vec<_> = sh.down_by_token.drain().collect();
            for n in &names {
                sh.published.insert(n.clone(), HealthState::Up);
            }
            names
        };
        for n in restore {
            warn!(pool = %self.pool, backend = %n, "health.fail_static: restoring a backend taken down by token-rejected");
            if let Err(error) = self.controller.set_health(&self.pool, &n, HealthState::Up) {
                warn!(%error, "cannot publish the health state");
            }
        }
        self.sync_published();
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        to: HealthState,
        check: &str,
        verdict: &str,
        stage: &str,
        http_status: Option<u16>,
        code: Option<u32>,
        reason: &str,
    ) {
        let from = match to {
            HealthState::Up => "down",
            HealthState::Down => "up",
        };
        let to_s = match to {
            HealthState::Up => "up",
            HealthState::Down => "down",
        };
        info!(
            pool = %self.pool,
            backend = %self.name,
            from,
            to = to_s,
            check,
            stage,
            verdict,
            http_status,
            hresult = code.map(hresult::display),
            reason,
            "health.state changed"
        );
        self.metrics
            .backend_state_changes
            .with_label_values(&[&*self.pool, &*self.name])
            .inc();
        {
            let mut sh = self.shared();
            sh.published.insert(self.name.clone(), to);
            if to == HealthState::Up {
                sh.down_by_token.remove(&self.name);
            }
        }
        if let Err(error) = self.controller.set_health(&self.pool, &self.name, to) {
            warn!(%error, "cannot publish the health state");
        }
    }
}

/// Receives from an optional channel; pending forever without one (or once it closed).
async fn recv(rx: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(r) => match r.recv().await {
            Some(()) => Some(()),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let mut s = 0x1234_5678_9abc_def1;
        let d = Duration::from_millis(2000);
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let j = jittered(d, &mut s);
            assert!(
                j >= Duration::from_millis(1800) && j <= Duration::from_millis(2200),
                "{j:?}"
            );
            seen.insert(j.as_millis());
        }
        assert!(seen.len() > 50, "jitter spreads: {}", seen.len());
    }
}
