//! One task per backend, running each check as a **tier** on its own interval (±10% jitter,
//! so a hundred backends do not probe in lockstep): `tcp` can run every 2 s, `tls` every 10 s
//! and `rdg-token` every 30 s. Each tier feeds its own [`Hysteresis`] (a cheap success must
//! not reset the streak of a failing token check); the backend is up while every tier is up,
//! so its state changes only when a tier crosses its rise or fall threshold. The change goes
//! to the controller with one `info!` line giving the reason. Every probe is a metric and a
//! `debug!` line.
//!
//! **A failing cheap tier stops the dearer ones.** While a cheaper tier's last result is a
//! failure, dearer tiers are not probed (a dead port says all there is to say). When a
//! cheaper tier goes down, the dearer tiers are set down too, so a backend coming back must
//! pass `rise` probes of every tier, token check included, before it takes clients again;
//! when a cheaper tier passes again after failing, the dearer tiers are probed at once.
//! Tiers of one backend share its task (HAProxy and pingora do the same with one deadline
//! per job): no lock around the counters, and never two probes of one backend at once.
//! Tiers due together run in check order in one wake and are rescheduled with the same
//! jitter, so tiers with equal intervals stay in step (the default: all at `interval_ms`).
//!
//! Passive reports (data-plane connect failures) count as failures of the cheapest tier.
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
use crate::config::CheckKind;
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

/// One check of one backend, on its own interval.
struct Tier {
    check: CheckKind,
    interval: Duration,
    hysteresis: Hysteresis,
    /// When it is due next.
    next: Instant,
    /// Its last result was a failure: dearer tiers wait until it passes again.
    failing: bool,
}

struct Backend {
    pool: Arc<str>,
    name: Arc<str>,
    addr: SocketAddr,
    prober: Arc<Prober>,
    controller: Arc<Controller>,
    metrics: Arc<Metrics>,
    shared: Arc<Mutex<PoolShared>>,
    /// In check order, cheapest first.
    tiers: Vec<Tier>,
    /// The state this task last published (or was given by fail-static).
    state: HealthState,
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
        let service_port = probe_port(&config, &pool.name);
        // Exported as 0 from the start: an alert on this gauge must see a series, not an
        // absence that could also mean "not scraped".
        metrics
            .probe_credential_suspect
            .with_label_values(&[pool.name.as_str()])
            .set(0);
        let shared = Arc::new(Mutex::new(PoolShared {
            backends: pool.backends.len(),
            ..PoolShared::default()
        }));
        for b in &view.backends {
            let passive = h.passive.then(|| sink.register(b.id));
            let now = Instant::now();
            let tiers = h
                .checks
                .iter()
                .map(|&check| Tier {
                    check,
                    interval: h.intervals.of(check),
                    hysteresis: Hysteresis::new(b.health, h.rise, h.fall),
                    next: now,
                    failing: false,
                })
                .collect();
            backends.push(Backend {
                pool: view.name.clone(),
                name: b.name.clone(),
                addr: b.socket_addr(service_port),
                prober: prober.clone(),
                controller: controller.clone(),
                metrics: metrics.clone(),
                shared: shared.clone(),
                tiers,
                state: b.health,
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

/// The port a probe of `pool` connects to on a backend without its own: the first TCP
/// service's `backend_port` (443 when no TCP service uses the pool).
pub fn probe_port(config: &crate::config::Config, pool: &str) -> u16 {
    config
        .services
        .iter()
        .find(|s| s.pool == pool && s.protocol == crate::config::Protocol::Tcp)
        .map(|s| s.backend_port)
        .unwrap_or(443)
}

/// `d` ± 10%, from `seed` (xorshift state, advanced).
pub fn jittered(d: Duration, seed: &mut u64) -> Duration {
    d.mul_f64(jitter_factor(seed))
}

/// A factor in [0.9, 1.1) from `seed` (xorshift state, advanced).
fn jitter_factor(seed: &mut u64) -> f64 {
    let mut x = *seed;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *seed = x;
    0.9 + (x % 10_000) as f64 / 50_000.0
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
        // Each tier's first probe within the first tenth of its interval, spread over backends
        // (one factor for all tiers, so tiers with equal intervals start in step).
        let f = (jitter_factor(&mut seed) - 0.9) / 2.0;
        let start = Instant::now();
        for t in &mut self.tiers {
            t.next = start + t.interval.mul_f64(f);
        }
        let mut passive = self.passive.take();
        loop {
            let next = self.tiers.iter().map(|t| t.next).min();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep_until(next) => {
                    if !self.wake(&stop, &mut seed).await {
                        return;
                    }
                    // The first verdict of this backend: VRRP holds back preemption until
                    // every backend has one.
                    if let Some(f) = self.first_round.take() {
                        f.send_modify(|n| *n = n.saturating_sub(1));
                    }
                }
                Some(()) = recv(&mut passive) => self.on_passive(),
            }
        }
    }

    /// Probes the due tiers in check order; false when stopped meanwhile.
    ///
    /// The run list: every due tier, plus the not-yet-due tiers after a due one that was
    /// failing (if it passes now they are probed at once, on the same connection), minus
    /// everything after a not-due tier whose last result failed. The probe stops at the
    /// first failing tier; the due ones it did not reach count as skipped.
    async fn wake(&mut self, stop: &CancellationToken, seed: &mut u64) -> bool {
        let now = Instant::now();
        let (run, skipped) = plan(self.tiers.iter().map(|t| (t.next <= now, t.failing)));
        if !skipped.is_empty() {
            debug!(
                skipped = skipped.len(),
                "health.probe skipped: a cheaper check is failing"
            );
        }
        let checks: Vec<CheckKind> = run.iter().map(|&i| self.tiers[i].check).collect();
        let reports = tokio::select! {
            _ = stop.cancelled() => return false,
            r = self.prober.probe_tiers(&checks, self.addr, Some(&self.name)) => r,
        };
        for (k, report) in reports.iter().enumerate() {
            if let Some(&i) = run.get(k) {
                self.on_probe(i, report);
            }
        }
        // Rescheduled after the probes (a slow probe delays its tier, never stacks probes),
        // with one jitter factor for all, so tiers with equal intervals stay in step. A tier
        // brought forward but not reached keeps its own time.
        let f = jitter_factor(seed);
        let after = Instant::now();
        let ran = reports.len();
        let reached = run.iter().enumerate().filter(|(k, _)| *k < ran);
        let due = run.iter().enumerate().filter(|(k, _)| *k >= ran);
        let due = due
            .filter(|(_, &i)| self.tiers[i].next <= now)
            .map(|(_, &i)| i);
        let again: Vec<usize> = reached.map(|(_, &i)| i).chain(due).chain(skipped).collect();
        for i in again {
            let t = &mut self.tiers[i];
            t.next = after + t.interval.mul_f64(f);
        }
        true
    }

    fn on_passive(&mut self) {
        self.metrics
            .probe_results
            .with_label_values(&[&*self.name, "passive", Verdict::ConnectFailed.as_str()])
            .inc();
        self.sync_published();
        self.controller.note_probe(
            &self.pool,
            &self.name,
            "passive",
            Verdict::ConnectFailed.as_str(),
            Some("data-plane connect failed"),
        );
        debug!("passive: data-plane connect failed");
        if self.tiers.is_empty() {
            return;
        }
        self.record(0, false);
        if let Some(to) = self.settle() {
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

    /// Feeds one result into tier `i`. A cheaper tier going down takes the dearer ones down
    /// with it: they must prove themselves again.
    fn record(&mut self, i: usize, success: bool) -> Option<HealthState> {
        let t = self.tiers.get_mut(i)?;
        t.failing = !success;
        let changed = t.hysteresis.record(success);
        if changed == Some(HealthState::Down) {
            for d in self.tiers.iter_mut().skip(i + 1) {
                d.hysteresis.reset(HealthState::Down);
            }
        }
        changed
    }

    /// The backend's state from its tiers (up while every tier is up); `Some` when it differs
    /// from the published one.
    fn settle(&self) -> Option<HealthState> {
        let all_up = self
            .tiers
            .iter()
            .all(|t| t.hysteresis.state() == HealthState::Up);
        let want = if all_up {
            HealthState::Up
        } else {
            HealthState::Down
        };
        (want != self.state).then_some(want)
    }

    /// Takes the state another task restored (fail-static) as this backend's own.
    fn sync_published(&mut self) {
        let published = self.shared().published.get(&self.name).copied();
        if let Some(p) = published {
            if p != self.state {
                self.state = p;
                for t in &mut self.tiers {
                    t.hysteresis.reset(p);
                }
            }
        }
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, PoolShared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_probe(&mut self, tier: usize, r: &ProbeReport) {
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
            m.backend_cert_warning
                .with_label_values(&labels)
                .set(i64::from(!r.warnings.is_empty()));
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
            warn!(warning = %w, "health.probe certificate warning: still eligible");
        }
        self.controller.note_probe(
            &self.pool,
            &self.name,
            check,
            r.verdict.as_str(),
            r.detail.as_deref(),
        );
        self.sync_published();
        // Fail-static bookkeeping: the token tier's verdicts, and any other tier's failures
        // (a backend failing a cheaper check is down for its own reasons, not the token's).
        let is_token_tier = r.check == Some(CheckKind::RdgToken);
        let (all_rejected, was_suspect) = {
            let mut sh = self.shared();
            if is_token_tier || !r.verdict.is_healthy() {
                sh.last.insert(self.name.clone(), r.verdict);
            }
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
        let changed = self.record(tier, r.verdict.is_healthy());
        if all_rejected && changed == Some(HealthState::Down) {
            // Keep the last good state: the farm is not what is broken.
            if let Some(t) = self.tiers.get_mut(tier) {
                t.hysteresis.reset(HealthState::Up);
            }
            for d in self.tiers.iter_mut().skip(tier + 1) {
                d.hysteresis.reset(HealthState::Up);
            }
            return;
        }
        let Some(to) = self.settle() else {
            return;
        };
        let http = r.http_status;
        let code = r.hresult;
        let reason = match (&r.detail, to) {
            (Some(d), _) => d.clone(),
            (None, HealthState::Up) => format!("every check passed {} times in a row", self.rise()),
            (None, HealthState::Down) => format!("{} failed {} times in a row", check, self.fall()),
        };
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

    fn rise(&self) -> u32 {
        self.tiers.first().map_or(0, |t| t.hysteresis.rise())
    }

    fn fall(&self) -> u32 {
        self.tiers.first().map_or(0, |t| t.hysteresis.fall())
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
        let why = if reason.is_empty() {
            format!("{verdict} ({check})")
        } else {
            format!("{verdict} ({check}): {reason}")
        };
        self.controller.note_reason(&self.pool, &self.name, why);
        self.state = to;
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

/// Which tiers one wake probes (pure): `tiers` gives, cheapest first, whether each is due and
/// whether its last result failed. Returns the tiers to probe in order and the due tiers
/// skipped. Every due tier runs, plus the not-yet-due tiers after a running one that was
/// failing (if it passes now they run at once, on the same connection); nothing after a
/// not-due failing tier runs, and the due ones there are skipped.
pub fn plan(tiers: impl IntoIterator<Item = (bool, bool)>) -> (Vec<usize>, Vec<usize>) {
    let (mut run, mut skipped) = (Vec::new(), Vec::new());
    let (mut recovering, mut blocked) = (false, false);
    for (i, (due, failing)) in tiers.into_iter().enumerate() {
        if blocked {
            if due {
                skipped.push(i);
            }
        } else if due || recovering {
            recovering |= failing;
            run.push(i);
        } else if failing {
            blocked = true;
        }
    }
    (run, skipped)
}

/// Sleeps until `at`; forever without a deadline (a backend with passive checks only).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
    fn plan_examples() {
        // (due, failing) per tier: tcp, tls, rdg-token.
        let p = |t: [(bool, bool); 3]| plan(t);
        // All due and passing: all run, in order.
        assert_eq!(p([(true, false); 3]), (vec![0, 1, 2], vec![]));
        // Only the token check due.
        assert_eq!(
            p([(false, false), (false, false), (true, false)]),
            (vec![2], vec![])
        );
        // tcp failing (not due): the dearer due ones are skipped.
        assert_eq!(
            p([(false, true), (true, false), (true, false)]),
            (vec![], vec![1, 2])
        );
        // tcp failing and due: it runs with everything after it, due or not.
        assert_eq!(
            p([(true, true), (false, false), (false, false)]),
            (vec![0, 1, 2], vec![])
        );
        // tls failing, not due; tcp due: tcp runs, the token check waits.
        assert_eq!(
            p([(true, false), (false, true), (true, false)]),
            (vec![0], vec![2])
        );
    }

    proptest::proptest! {
        /// Every due tier is either run or skipped; a tier runs only if no cheaper tier is
        /// failing without running; run and skipped are in check order.
        #[test]
        fn plan_invariants(tiers in proptest::collection::vec((proptest::bool::ANY, proptest::bool::ANY), 0..6)) {
            let (run, skipped) = plan(tiers.iter().copied());
            for (i, (due, _)) in tiers.iter().enumerate() {
                if *due {
                    proptest::prop_assert!(run.contains(&i) != skipped.contains(&i));
                }
            }
            for &i in &run {
                let blocked = tiers[..i]
                    .iter()
                    .enumerate()
                    .any(|(j, (_, failing))| *failing && !run.contains(&j));
                proptest::prop_assert!(!blocked, "tier {} runs behind a failing one", i);
            }
            proptest::prop_assert!(run.windows(2).all(|w| w[0] < w[1]));
            proptest::prop_assert!(skipped.windows(2).all(|w| w[0] < w[1]));
        }
    }

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
