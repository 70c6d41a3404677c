//! Wires the parts together: binds every listener first (so a bad address fails the start,
//! not a later moment), then spawns the data plane, the metrics listener and housekeeping,
//! and on shutdown drains in the order an operator expects: stop accepting, let established
//! connections finish up to the drain timeout, then close what is left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::balancer;
use crate::config::{Config, Protocol};
use crate::controller::Controller;
use crate::metrics::{self, Metrics};

/// How often stick tables are expired and their gauges refreshed.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

/// A started daemon. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub controller: Arc<Controller>,
    /// Every service's bound address (the real port when the config said port 0).
    pub bound: Vec<BoundService>,
    pub metrics_addr: Option<SocketAddr>,
    accept_stop: CancellationToken,
    hard_stop: CancellationToken,
    /// Listener and housekeeping tasks.
    tasks: TaskTracker,
    /// One task per proxied connection or UDP flow.
    connections: TaskTracker,
    /// The data-plane threads (one current-thread runtime each).
    threads: Vec<std::thread::JoinHandle<()>>,
    /// One per VRRP instance (empty unless `[vip] mode = "vrrp"`): state, demote, resume.
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
    pub fn local_addr(&self, service: &str) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|b| b.name == service)
            .map(|b| b.addr)
    }

    /// Stops accepting, waits up to `drain` for established connections to finish, then
    /// closes the rest. Returns how many connections were still open when the drain ended.
    pub async fn shutdown(self, drain: Duration) -> usize {
        info!(
            drain_s = drain.as_secs_f64(),
            "shutting down: listeners closed, draining"
        );
        // Hand the VIP over first: the peer takes over within its skew time while we drain.
        self.vip_stop.cancel();
        self.vip_tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), self.vip_tasks.wait())
            .await
            .is_err()
        {
            warn!("VRRP/VIP tasks did not stop within 5 s");
        }
        self.accept_stop.cancel();
        self.connections.close();
        let left = match tokio::time::timeout(drain, self.connections.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let left = self.connections.len();
                warn!(
                    open = left,
                    "drain timeout reached: closing remaining connections"
                );
                left
            }
        };
        self.hard_stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            self.connections.wait().await;
            self.tasks.wait().await;
        })
        .await;
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

/// [`start`] with `workers` data-plane threads.
pub async fn start_with(config: Config, workers: usize) -> anyhow::Result<Running> {
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
    let workers = workers.max(1);
    // tcp[w] holds worker w's listeners: (service index, name, listener).
    let mut tcp: Vec<Vec<(usize, String, std::net::TcpListener)>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut udp = Vec::new();
    let mut bound = Vec::new();
    for (i, svc) in config.services.iter().enumerate() {
        let addr = match svc.protocol {
            Protocol::Tcp => {
                let bind = |addr| {
                    balancer::bind_tcp(addr, svc.backlog, workers > 1).with_context(|| {
                        format!("service {}: cannot listen on tcp {}", svc.name, svc.listen)
                    })
                };
                // The first bind settles the port (when the config says 0, in tests); the
                // other workers' listeners join it.
                let first = bind(svc.listen)?;
                let a = first.local_addr()?;
                tcp[0].push((i, svc.name.clone(), first));
                for w in tcp.iter_mut().skip(1) {
                    w.push((i, svc.name.clone(), bind(a)?));
                }
                a
            }
            Protocol::Udp => {
                let s = balancer::bind_udp(svc.listen).with_context(|| {
                    format!("service {}: cannot listen on udp {}", svc.name, svc.listen)
                })?;
                let s = UdpSocket::from_std(s)?;
                let a = s.local_addr()?;
                udp.push((i, svc.name.clone(), s));
                a
            }
        };
        bound.push(BoundService {
            name: svc.name.clone(),
            protocol: svc.protocol,
            addr,
        });
    }
    let controller = Arc::new(Controller::new(config, metrics.clone())?);
    let snapshot = controller.snapshot();
    let accept_stop = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let connections = TaskTracker::new();
    let mut threads = Vec::with_capacity(workers);
    for (w, listeners) in tcp.into_iter().enumerate() {
        let (snapshot, accept_stop, hard_stop, connections) = (
            snapshot.clone(),
            accept_stop.clone(),
            hard_stop.clone(),
            connections.clone(),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a data-plane runtime")?;
        let t = std::thread::Builder::new()
            .name(format!("portico-dp{w}"))
            .spawn(move || {
                rt.block_on(async move {
                    for (i, name, l) in listeners {
                        match TcpListener::from_std(l) {
                            Ok(l) => {
                                tokio::spawn(balancer::serve_tcp(
                                    l,
                                    Arc::from(name.as_str()),
                                    i,
                                    snapshot.clone(),
                                    accept_stop.clone(),
                                    hard_stop.clone(),
                                    connections.clone(),
                                ));
                            }
                            Err(error) => {
                                warn!(service = %name, %error, "cannot register listener")
                            }
                        }
                    }
                    // Connections live on this thread's runtime: keep it running until the
                    // drain is over and every relay has ended.
                    hard_stop.cancelled().await;
                    connections.wait().await;
                });
            })
            .context("starting a data-plane thread")?;
        threads.push(t);
    }
    for (i, name, s) in udp {
        tasks.spawn(balancer::serve_udp(
            s,
            Arc::from(name.as_str()),
            i,
            snapshot.clone(),
            accept_stop.clone(),
            connections.clone(),
        ));
    }
    let first_round = crate::health::spawn(&controller, &tasks, hard_stop.child_token())
        .context("health checks")?;
    // After the listeners are bound (IP_FREEBIND lets them bind the VIP before we hold it).
    let vip_stop = CancellationToken::new();
    let vip_tasks = TaskTracker::new();
    let vrrp = start_vip(&controller, first_round, &vip_tasks, &vip_stop).await?;
    let metrics_addr = match metrics_listener {
        Some(l) => {
            let a = l.local_addr()?;
            tasks.spawn(metrics::serve(l, metrics.clone(), hard_stop.clone()));
            Some(a)
        }
        None => None,
    };
    {
        let controller = controller.clone();
        let stop = hard_stop.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => controller.housekeeping(std::time::Instant::now()),
                }
            }
        });
    }
    for b in &bound {
        info!(service = %b.name, protocol = b.protocol.as_str(), addr = %b.addr, "listening");
    }
    if let Some(a) = metrics_addr {
        info!(addr = %a, "metrics at http://{a}/metrics");
    }
    Ok(Running {
        controller,
        bound,
        metrics_addr,
        accept_stop,
        hard_stop,
        tasks,
        connections,
        threads,
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

/// Runs until SIGTERM or SIGINT, then drains for the configured time.
pub async fn run(config: Config, workers: usize) -> anyhow::Result<()> {
    let drain = config.balancer.drain_timeout;
    let running = start_with(config, workers).await?;
    wait_for_signal().await?;
    let left = running.shutdown(drain).await;
    info!(closed_by_timeout = left, "stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    Ok(())
}
