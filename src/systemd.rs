//! systemd integration for `Type=notify` units: READY=1 once every listener is bound, STATUS=
//! lines an operator sees in `systemctl status`, WATCHDOG=1 pings, RELOADING=1 and STOPPING=1.
//!
//! Everything is a no-op when `NOTIFY_SOCKET` is unset (a shell, a test, another supervisor),
//! and a failed send is logged once and otherwise ignored: systemd is a spectator of the data
//! plane, never a reason to stop serving.
//!
//! The watchdog is not a blind timer. A blind timer proves only that one tokio task still
//! runs; the failure worth restarting for is a wedged control plane (a deadlocked controller
//! lock, a starved runtime) while the process looks alive. So the housekeeping loop stamps a
//! [`Heartbeat`] after each pass through the controller, and the watchdog task pings only
//! while that stamp is fresh. If housekeeping stops, the pings stop and systemd restarts us
//! after `WatchdogSec`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::controller::Controller;
use crate::snapshot::Snapshot;

/// How often the STATUS= line is recomputed (it is only sent when its text changes).
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Proof of life from the housekeeping loop: the time of its last completed pass.
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// Milliseconds since `origin` of the last pass.
    last_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat::new()
    }
}

impl Heartbeat {
    pub fn new() -> Heartbeat {
        Heartbeat {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Called by the housekeeping loop after each pass.
    pub fn beat(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the last pass completed.
    pub fn age(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Whether to ping now: the housekeeping loop completed a pass within `max_age`.
pub fn should_ping(heartbeat_age: Duration, max_age: Duration) -> bool {
    heartbeat_age <= max_age
}

/// The interval between pings for a `WATCHDOG_USEC` of `timeout`: half of it, as
/// sd_watchdog_enabled(3) recommends, and never zero.
pub fn ping_interval(timeout: Duration) -> Duration {
    (timeout / 2).max(Duration::from_millis(1))
}

/// The STATUS= text for a snapshot: "serving N services, M/K backends up".
pub fn status_line(snap: &Snapshot) -> String {
    let services = snap.services.len();
    let (up, total) = snap.pools.iter().fold((0, 0), |(u, t), p| {
        (u + p.eligible_count(), t + p.backends.len())
    });
    let s = if services == 1 { "" } else { "s" };
    let mut line = format!("serving {services} service{s}, {up}/{total} backends up");
    let empty: Vec<&str> = snap
        .pools
        .iter()
        .filter(|p| p.eligible_count() == 0 && !p.backends.is_empty())
        .map(|p| &*p.name)
        .collect();
    if !empty.is_empty() {
        line.push_str("; NO eligible backend in pool ");
        line.push_str(&empty.join(", "));
    }
    line
}

/// Talks to the service manager. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Notifier {
    enabled: bool,
    /// `NOTIFY_SOCKET` names a Linux abstract socket (`@name`), which the sd-notify crate
    /// does not resolve (it treats the value as a path); systemd in containers uses them.
    abstract_name: Option<Arc<[u8]>>,
    warned: Arc<AtomicBool>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` once; without it every method does nothing.
    pub fn from_env() -> Notifier {
        let var = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty());
        let abstract_name = var.as_ref().and_then(|v| {
            use std::os::unix::ffi::OsStrExt;
            v.as_bytes().strip_prefix(b"@").map(Arc::from)
        });
        Notifier {
            enabled: var.is_some(),
            abstract_name,
            warned: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        let sent = match &self.abstract_name {
            Some(name) => send_abstract(name, states),
            None => sd_notify::notify(states),
        };
        if let Err(error) = sent {
            // One warning: a broken notify socket would otherwise log on every ping.
            if !self.warned.swap(true, Ordering::Relaxed) {
                warn!(%error, "systemd: cannot send to NOTIFY_SOCKET");
            }
        }
    }

    /// Every listener is bound and the data plane runs.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// A reload starts; call [`Notifier::ready`] when it is done (success or not: the old
    /// config keeps serving after a failed one). MONOTONIC_USEC lets systemd match the
    /// notification to the SIGHUP it sent (required by `Type=notify-reload`).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: listeners closed, draining"),
        ]);
    }

    fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Spawns the task that pings the watchdog (when `WATCHDOG_USEC` asks for it) and keeps the
    /// STATUS= line current, until `stop`. Call it after [`Notifier::ready`].
    pub fn spawn(
        &self,
        controller: Arc<Controller>,
        heartbeat: Arc<Heartbeat>,
        tasks: &tokio_util::task::TaskTracker,
        stop: CancellationToken,
    ) {
        if !self.enabled {
            return;
        }
        let watchdog = sd_notify::watchdog_enabled();
        if let Some(t) = watchdog {
            info!(
                timeout_s = t.as_secs_f64(),
                "systemd watchdog on: pinging while housekeeping runs"
            );
        }
        let this = self.clone();
        let snapshot = controller.snapshot();
        tasks.spawn(supervise(
            snapshot,
            heartbeat,
            watchdog,
            stop,
            move |n| match n {
                Note::Status(line) => this.status(&line),
                Note::Watchdog => this.watchdog(),
            },
        ));
    }
}

/// sd_notify(3) to an abstract socket: the same newline-separated datagram.
fn send_abstract(name: &[u8], states: &[NotifyState]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
    sock.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(())
}

/// What [`supervise`] asks to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Status(String),
    Watchdog,
}

/// The loop behind [`Notifier::spawn`], apart from the socket so it can be tested: a new
/// STATUS= line whenever the snapshot's summary changes, and with a `watchdog` timeout a
/// WATCHDOG=1 every half of it while `heartbeat` is fresh.
pub async fn supervise(
    snapshot: Arc<ArcSwap<Snapshot>>,
    heartbeat: Arc<Heartbeat>,
    watchdog: Option<Duration>,
    stop: CancellationToken,
    mut send: impl FnMut(Note),
) {
    let mut last_status = status_line(&snapshot.load());
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    // Without a watchdog this arm is disabled; the period only has to be valid.
    let period = watchdog
        .map(ping_interval)
        .unwrap_or(Duration::from_secs(3600));
    let mut ping_tick = tokio::time::interval(period);
    // Fresh means: a pass within the ping period plus one housekeeping interval of slack, so
    // a single slow pass does not cost a ping.
    let max_age = period + crate::daemon::HOUSEKEEPING_EVERY;
    let mut silent = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = status_tick.tick() => {
                let line = status_line(&snapshot.load());
                if line != last_status {
                    send(Note::Status(line.clone()));
                    last_status = line;
                }
            }
            _ = ping_tick.tick(), if watchdog.is_some() => {
                let age = heartbeat.age();
                if should_ping(age, max_age) {
                    send(Note::Watchdog);
                    if silent {
                        info!("systemd watchdog: housekeeping runs again, pinging");
                    }
                    silent = false;
                } else if !silent {
                    warn!(
                        age_s = age.as_secs_f64(),
                        "systemd watchdog: housekeeping stalled, withholding pings (systemd restarts us after WatchdogSec)"
                    );
                    silent = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_interval_is_half_the_timeout() {
        assert_eq!(
            ping_interval(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
        assert_eq!(ping_interval(Duration::ZERO), Duration::from_millis(1));
    }

    #[test]
    fn stale_heartbeat_withholds_the_ping() {
        assert!(should_ping(Duration::from_secs(1), Duration::from_secs(2)));
        assert!(!should_ping(Duration::from_secs(3), Duration::from_secs(2)));
    }

    #[test]
    fn heartbeat_ages_until_the_next_beat() {
        let h = Heartbeat::new();
        h.beat();
        assert!(h.age() < Duration::from_secs(1));
    }

    /// Pings flow while housekeeping beats, stop when it stalls, and resume when it beats again.
    #[tokio::test]
    async fn watchdog_pings_follow_the_heartbeat() {
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
        let heartbeat = Arc::new(Heartbeat::new());
        let stop = CancellationToken::new();
        let pings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = pings.clone();
        // 100 ms timeout: a ping every 50 ms; stale after 50 ms + 1 s of housekeeping slack.
        let task = tokio::spawn(supervise(
            snapshot,
            heartbeat.clone(),
            Some(Duration::from_millis(100)),
            stop.clone(),
            move |n| {
                if n == Note::Watchdog {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            },
        ));
        let count = || pings.load(Ordering::Relaxed);
        // Beating: pings.
        for _ in 0..6 {
            heartbeat.beat();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(count() >= 3, "pings while beating: {}", count());
        // Stalled for longer than the slack: pings stop.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let stalled = count();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(count(), stalled, "no ping while housekeeping is stalled");
        // Beating again: pings resume.
        for _ in 0..6 {
            heartbeat.beat();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            count() >= stalled + 3,
            "pings resume: {} after {stalled}",
            count()
        );
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn empty_snapshot_status() {
        assert_eq!(
            status_line(&Snapshot::empty()),
            "serving 0 services, 0/0 backends up"
        );
    }
}
