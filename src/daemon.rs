//! Wires the parts together: binds every listener first (so a bad address fails the start,
//! not a later moment), then spawns the data plane, the metrics listener and housekeeping,
//! and on shutdown drains in the order an operator expects: stop accepting, let established
//! connections finish up to the drain timeout, then close what is left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::balancer;
use crate::config::{Config, Protocol};
use crate::controller::Controller;
use crate::metrics::{self, Metrics};

/// How often stick tables are expired and their gauges refreshed.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

pub mod cpus;
mod plane;
mod reload;
pub mod sched;

pub use plane::Live;
pub use reload::{Node, ReloadError, ReloadOutcome};

/// A started daemon. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub controller: Arc<Controller>,
    /// Every service's bound address at start (the real port when the config said port 0);
    /// [`Running::local_addr`] follows reloads.
    pub bound: Vec<BoundService>,
    pub metrics_addr: Option<SocketAddr>,
    /// Stamped by the housekeeping loop; the systemd watchdog pings only while it is fresh.
    pub heartbeat: Arc<crate::systemd::Heartbeat>,
    /// The data plane, the listener set and reload; shared with the admin server.
    node: Arc<Node>,
    /// The data-plane threads (one current-thread runtime each).
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Where the admin server listens, once [`Running::serve_admin`] ran.
    admin_socket: Option<std::path::PathBuf>,
    /// The DNS server's addresses (UDP and TCP share each), one per `[dns] listen` entry.
    pub dns_addrs: Vec<SocketAddr>,
    /// The forwarder of the `forwarding = "dsr"` services, if any (VRRP drives its active flag).
    pub dsr: Option<crate::dsr::forwarder::Forwarder>,
    /// One per VRRP instance (empty unless a VIP group has `mode = "vrrp"`): state, demote,
    /// resume.
    pub vrrp: Vec<crate::vrrp::Handle>,
    /// Stops VRRP (priority-0 advert) and removes VIPs, before the drain.
    vip_stop: CancellationToken,
    vip_tasks: TaskTracker,
}

#[derive(Debug, Clone)]
pub struct BoundService {
    pub name: String,
    pub protocol: Protocol,
    pub addr: SocketAddr,
}

impl Running {
    /// Where service `service` listens now (after any reload).
    pub fn local_addr(&self, service: &str) -> Option<SocketAddr> {
        self.node
            .listeners()
            .into_iter()
            .find(|b| b.name == service)
            .map(|b| b.addr)
    }

    /// The node: controller, listeners, reload.
    pub fn node(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// Re-reads the config file and applies it (what SIGHUP and `ctl reload` do).
    pub async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        self.node.reload().await
    }

    /// Tells systemd (if it is listening) that every listener is bound, and starts the
    /// watchdog/STATUS task, which ends with the daemon.
    pub fn notify_ready(&self, notifier: &crate::systemd::Notifier) {
        let line = crate::systemd::status_line(&self.controller.snapshot().load());
        notifier.ready(&line);
        notifier.spawn(
            self.controller.clone(),
            self.heartbeat.clone(),
            &self.node.plane.tasks,
            self.node.plane.hard_stop.clone(),
        );
    }

    /// Starts the admin server on the config's `[admin] socket` (see [`crate::admin`]).
    pub async fn serve_admin(&mut self) -> anyhow::Result<std::path::PathBuf> {
        let path = self.controller.config().admin.socket.clone();
        let listener = crate::admin::bind(&path)?;
        self.serve_admin_on(listener, path.clone());
        Ok(path)
    }

    /// Starts the admin server on a socket bound earlier (by [`crate::admin::bind`]).
    pub fn serve_admin_on(&mut self, listener: tokio::net::UnixListener, path: std::path::PathBuf) {
        self.node.plane.tasks.spawn(crate::admin::serve(
            listener,
            self.node.clone(),
            self.node.plane.hard_stop.clone(),
        ));
        info!(socket = %path.display(), "admin socket listening");
        self.admin_socket = Some(path);
    }

    /// Stops accepting, waits up to `drain` for established connections to finish, then
    /// closes the rest. Returns how many connections were still open when the drain ended.
    pub async fn shutdown(self, drain: Duration) -> usize {
        info!(
            drain_s = drain.as_secs_f64(),
            "shutting down: listeners closed, draining"
        );
        // A dsr forwarder that VRRP steps down goes on forwarding what still reaches it for its
        // grace time (until the peer has announced itself): keep it running that long, beside
        // the connection drain, so a graceful stop loses no tenant's segment either.
        let dsr_grace = self.dsr.as_ref().is_some_and(|d| d.is_active())
            && self.node.vrrp.get().is_some_and(|v| !v.is_empty());
        // Hand the VIP over first: the peer takes over within its skew time while we drain.
        self.vip_stop.cancel();
        self.vip_tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), self.vip_tasks.wait())
            .await
            .is_err()
        {
            warn!("VRRP/VIP tasks did not stop within 5 s");
        }
        let plane = &self.node.plane;
        plane.accept_stop.cancel();
        let dsr_stop = async {
            if let Some(dsr) = self.dsr {
                if dsr_grace {
                    tokio::time::sleep(crate::dsr::forwarder::STEP_DOWN_GRACE.min(drain)).await;
                }
                dsr.stop();
            }
        };
        plane.connections.close();
        let drained = async { tokio::time::timeout(drain, plane.connections.wait()).await };
        let (drained, ()) = tokio::join!(drained, dsr_stop);
        let left = match drained {
            Ok(()) => 0,
            Err(_) => {
                let left = plane.connections.len();
                warn!(
                    open = left,
                    "drain timeout reached: closing remaining connections"
                );
                left
            }
        };
        plane.hard_stop.cancel();
        plane.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            plane.connections.wait().await;
            plane.tasks.wait().await;
        })
        .await;
        if let Some(p) = &self.admin_socket {
            let _ = std::fs::remove_file(p);
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        left
    }
}

/// Binds and starts everything `config` describes, with one data-plane thread per CPU.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with(config, default_workers()).await
}

/// One data-plane thread per CPU the process may use.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// How many data-plane threads, whether each is pinned to a CPU of its own, and their
/// scheduling policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads {
    pub workers: usize,
    /// Thread `i` on the `i`-th CPU the process may use ([`cpus`]).
    pub pin: bool,
    /// [`sched`]; `portico run` defaults to batch.
    pub scheduling: sched::WorkerScheduling,
}

impl Threads {
    /// `workers` threads, left to the scheduler as they start (unpinned, default policy).
    pub fn unpinned(workers: usize) -> Threads {
        Threads {
            workers,
            pin: false,
            scheduling: sched::WorkerScheduling::Normal,
        }
    }
}

/// [`start`] with `workers` data-plane threads.
pub async fn start_with(config: Config, workers: usize) -> anyhow::Result<Running> {
    start_threads(config, Threads::unpinned(workers)).await
}

/// [`start`] with the data-plane threads `threads` describes.
pub async fn start_threads(config: Config, threads: Threads) -> anyhow::Result<Running> {
    match balancer::raise_nofile_limit() {
        Ok(n) => info!(nofile = n, "open-file limit"),
        Err(e) => warn!(error = %e, "could not raise the open-file limit"),
    }
    let metrics = Metrics::new();
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .with_context(|| format!("metrics: cannot listen on {addr}"))?,
        ),
        None => None,
    };
    // Bound here so a bad DNS address fails the start; the zone's content is read from the
    // config before the controller takes it.
    let dns = match &config.dns {
        Some(d) => Some(crate::dns::bind(&d.listen, default_workers())?),
        None => None,
    };
    let dns_spec = crate::dns::ZoneSpec::from_config(&config);
    let workers = threads.workers.max(1);
    let controller = Arc::new(Controller::new(config.clone(), metrics.clone())?);
    metrics.config_last_reload_success.set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    );
    let snapshot = controller.snapshot();
    let accept_stop = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let connections = TaskTracker::new();
    let mut orders = Vec::with_capacity(workers);
    let mut inboxes = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        orders.push(tx);
        inboxes.push(rx);
    }
    let plane = plane::Plane::new(
        orders,
        snapshot.clone(),
        accept_stop.clone(),
        hard_stop.clone(),
        tasks.clone(),
        connections.clone(),
    );
    // Every listener is bound before anything serves, so a bad address fails the start.
    let mut bound_now = Vec::with_capacity(config.services.len());
    for (i, svc) in config.services.iter().enumerate() {
        if svc.forwarding == crate::config::Forwarding::Dsr {
            // No socket: the dsr forwarder reads its frames (started below).
            continue;
        }
        bound_now.push(plane.bind(svc, i)?);
    }
    // Pinning is a tuning, not a condition of serving: a CPU set that cannot be read or a
    // thread that cannot be pinned (a seccomp filter, a cpuset that changed under us) is
    // logged and the thread runs where the scheduler puts it.
    let allowed = if threads.pin {
        match cpus::allowed() {
            Ok(a) => {
                if a.len() < workers {
                    warn!(
                        workers,
                        cpus = a.len(),
                        "more data-plane threads than CPUs: pinned threads share CPUs"
                    );
                }
                a
            }
            Err(e) => {
                warn!(error = %e, "cannot read the process's CPUs: data-plane threads not pinned");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let mut dp_threads = Vec::with_capacity(workers);
    for (w, inbox) in inboxes.into_iter().enumerate() {
        let (snapshot, hard_stop, connections) =
            (snapshot.clone(), hard_stop.clone(), connections.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a data-plane runtime")?;
        let cpu = cpus::for_worker(w, &allowed);
        let scheduling = threads.scheduling;
        let t = std::thread::Builder::new()
            .name(format!("portico-dp{w}"))
            .spawn(move || {
                // Like pinning, a tuning: a thread whose policy cannot be set serves anyway.
                match sched::apply_to_current_thread(scheduling) {
                    Ok(true) => info!(thread = w, policy = %scheduling, "data-plane thread scheduling policy set"),
                    Ok(false) => {}
                    Err(e) => warn!(thread = w, policy = %scheduling, error = %e, "data-plane thread keeps the default scheduling policy"),
                }
                if let Some(cpu) = cpu {
                    match cpus::pin_current_thread(cpu) {
                        Ok(()) => info!(thread = w, cpu, "data-plane thread pinned"),
                        Err(e) => {
                            warn!(thread = w, cpu, error = %e, "data-plane thread not pinned")
                        }
                    }
                }
                rt.block_on(plane::worker(inbox, snapshot, hard_stop, connections));
            })
            .context("starting a data-plane thread")?;
        dp_threads.push(t);
    }
    let mut bound = Vec::with_capacity(bound_now.len());
    for b in bound_now {
        bound.push(BoundService {
            name: b.name.clone(),
            protocol: b.protocol,
            addr: b.addr,
        });
        plane.serve(b)?;
    }
    let dsr = crate::dsr::forwarder::start_for(
        &controller.config(),
        snapshot.clone(),
        &metrics.registry,
    )?;
    let node = Arc::new(Node::new(plane, controller.clone()));
    if let Some(f) = &dsr {
        let _ = node.dsr.set(f.handle());
    }
    let first_round = node.start_health().context("health checks")?;
    // After the listeners are bound (IP_FREEBIND lets them bind the VIP before we hold it).
    let vip_stop = CancellationToken::new();
    let vip_tasks = TaskTracker::new();
    let vrrp = start_vip(&controller, first_round, &vip_tasks, &vip_stop).await?;
    let _ = node.vrrp.set(vrrp.clone());
    if let (Some(fwd), Some(h)) = (&dsr, vrrp.first()) {
        follow_mastership(fwd.active_flag(), h.clone(), &tasks, hard_stop.clone());
    }
    let dns_addrs = match (dns, dns_spec) {
        (Some(bound), Some(spec)) => {
            let addrs = bound.addrs.clone();
            bound.spawn(
                spec,
                controller.snapshot(),
                &metrics,
                &tasks,
                accept_stop.clone(),
            )?;
            addrs
        }
        _ => Vec::new(),
    };
    let metrics_addr = match metrics_listener {
        Some(l) => {
            let a = l.local_addr()?;
            tasks.spawn(metrics::serve(l, metrics.clone(), hard_stop.clone()));
            Some(a)
        }
        None => None,
    };
    let heartbeat = Arc::new(crate::systemd::Heartbeat::new());
    {
        let controller = controller.clone();
        let stop = hard_stop.clone();
        let heartbeat = heartbeat.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        controller.housekeeping(std::time::Instant::now());
                        heartbeat.beat();
                    }
                }
            }
        });
    }
    if let Some(a) = metrics_addr {
        info!(addr = %a, "metrics at http://{a}/metrics");
    }
    Ok(Running {
        controller,
        bound,
        metrics_addr,
        heartbeat,
        node,
        threads: dp_threads,
        admin_socket: None,
        dns_addrs,
        dsr,
        vrrp,
        vip_stop,
        vip_tasks,
    })
}

/// VRRP instances, or the standalone VIPs, as the config says.
async fn start_vip(
    controller: &Arc<Controller>,
    first_round: tokio::sync::watch::Receiver<usize>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<crate::vrrp::Handle>> {
    let config = controller.config();
    let Some(interface) = &config.node.interface else {
        return Ok(Vec::new());
    };
    for vip in config.vip_groups() {
        if vip.mode == crate::config::VipMode::Standalone {
            crate::vip::start_standalone(interface, vip, controller.metrics(), tasks, stop.clone())
                .await
                .context("VIP (standalone)")?;
        }
    }
    crate::vrrp::driver::start_on_own_thread(
        crate::vrrp::Spec::from_config(&config),
        controller.clone(),
        Some(first_round),
        tasks,
        stop.clone(),
    )
    .await
    .context("VRRP")
}

/// The dsr forwarder forwards while this node is VRRP master (the first instance's state:
/// dsr VIPs live in one group), and only then: a backup that forwarded too would answer ARP
/// for the VIP beside the master.
fn follow_mastership(
    active: Arc<std::sync::atomic::AtomicBool>,
    mut vrrp: crate::vrrp::Handle,
    tasks: &TaskTracker,
    stop: CancellationToken,
) {
    tasks.spawn(async move {
        loop {
            let master = vrrp.state() == crate::vrrp::State::Master;
            active.store(master, std::sync::atomic::Ordering::Release);
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = vrrp.changed() => if !changed { return },
            }
        }
    });
}

/// Runs until SIGTERM or SIGINT (SIGHUP reloads), then drains for the configured time.
pub async fn run(config: Config, threads: Threads) -> anyhow::Result<()> {
    let drain = config.balancer.drain_timeout;
    // What can fail for want of descriptors or rights is set up before the listeners take
    // clients: the admin socket and the signal handlers. Handlers also come before READY=1:
    // systemd may send SIGTERM the moment it hears READY, and without a handler that signal
    // kills the process instead of draining it.
    let admin_path = config.admin.socket.clone();
    let admin = crate::admin::bind(&admin_path)?;
    let signals = Signals::install()?;
    let mut running = match start_threads(config, threads).await {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&admin_path);
            return Err(e);
        }
    };
    running.serve_admin_on(admin, admin_path);
    let notifier = crate::systemd::Notifier::from_env();
    running.notify_ready(&notifier);
    signals.serve_notifying(&running, &notifier).await?;
    notifier.stopping();
    let left = running.shutdown(drain).await;
    info!(closed_by_timeout = left, "stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() -> anyhow::Result<()> {
    Signals::install()?.wait().await;
    Ok(())
}

/// Serves until SIGTERM or SIGINT; every SIGHUP reloads the config file (a bad file keeps the
/// old config; the fault is logged and counted).
pub async fn run_until_stopped(running: &Running) -> anyhow::Result<()> {
    Signals::install()?.serve(running).await
}

/// The signal handlers of a running node, installed before it serves.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT (SIGHUP ignored: nothing to reload).
    pub async fn wait(mut self) {
        loop {
            tokio::select! {
                _ = self.term.recv() => { info!("SIGTERM received"); return; }
                _ = self.int.recv() => { info!("SIGINT received"); return; }
                _ = self.hup.recv() => info!("SIGHUP received: no config to reload here"),
            }
        }
    }

    /// Reloads on SIGHUP; returns on SIGTERM or SIGINT.
    pub async fn serve(self, running: &Running) -> anyhow::Result<()> {
        self.serve_notifying(running, &crate::systemd::Notifier::from_env())
            .await
    }

    /// [`Signals::serve`], telling systemd RELOADING=1 before a reload and READY=1 (with the
    /// new STATUS) after it, as `Type=notify` reloads expect.
    pub async fn serve_notifying(
        mut self,
        running: &Running,
        notifier: &crate::systemd::Notifier,
    ) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = self.term.recv() => { info!("SIGTERM received"); return Ok(()); }
                _ = self.int.recv() => { info!("SIGINT received"); return Ok(()); }
                _ = self.hup.recv() => {
                    info!("SIGHUP received: reloading the config");
                    notifier.reloading();
                    // The outcome is logged and counted by reload itself.
                    let _ = running.reload().await;
                    notifier.ready(&crate::systemd::status_line(
                        &running.controller.snapshot().load(),
                    ));
                }
            }
        }
    }
}
