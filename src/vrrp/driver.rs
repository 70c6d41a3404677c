//! The only part of `vrrp` that touches sockets, timers and tokio.
//!
//! Per interface: one raw IP-protocol-112 socket receives every advert (joined to 224.0.0.18,
//! bound to the device), validates it (IP header, TTL, the codec's checks) and hands it by VRID
//! to its instance; one send socket (bound to the interface's primary address, TTL 255,
//! TOS 0xc0 like keepalived, no multicast loop) carries every instance's adverts. Each
//! instance is one task owning its [`Machine`], its VIPs and its single timer; it also polls
//! the controller's snapshot for tracked pools and waits for the first health round before it
//! lets itself preempt. The daemon runs all of it on a thread of its own
//! ([`start_on_own_thread`]: a current-thread runtime with real-time scheduling when allowed),
//! apart from the data-plane threads and the control runtime, so neither a busy data plane nor
//! a busy machine delays an advert or a backup's timer.
//!
//! Adverts are accepted whichever MAC they came from (the interface's, like keepalived, or the
//! virtual MAC, like FRR): nothing below the IP layer is looked at.

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use super::machine::{Action, Event, Machine, Params, State};
use super::packet::{self, Advert, ChecksumCompat, RxError, MULTICAST_V4};
use crate::config::{Announce, Config, IpPrefix, VipMode};
use crate::controller::Controller;
use crate::metrics::Metrics;
use crate::vip::Vips;

/// keepalived's TOS for adverts (DSCP CS6, network control).
const TOS: u32 = 0xc0;
/// How often tracked pools are looked at.
const TRACK_EVERY: Duration = Duration::from_millis(100);
/// Adverts queued for one instance before the receiver drops more (one per interval is normal).
const INBOX: usize = 64;

/// One VRRP instance as configured.
#[derive(Debug, Clone)]
pub struct Spec {
    pub interface: String,
    pub vrid: u8,
    pub priority: u8,
    pub interval_cs: u16,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub unicast_peers: Vec<IpAddr>,
    pub compat: ChecksumCompat,
    pub addresses: Vec<IpPrefix>,
    pub label: String,
    pub announce: Announce,
    pub track_penalty: u8,
    /// Pools whose emptiness (no eligible backend) lowers the priority.
    pub tracked_pools: Vec<String>,
}

impl Spec {
    /// The instances `config` asks for: one per VIP group with `mode = "vrrp"`.
    pub fn from_config(config: &Config) -> Vec<Spec> {
        let Some(interface) = &config.node.interface else {
            return Vec::new();
        };
        config
            .vip_groups()
            .filter_map(|vip| match &vip.mode {
                VipMode::Vrrp(v) => Some(Spec::one(config, interface, vip, v)),
                VipMode::Standalone => None,
            })
            .collect()
    }

    fn one(
        config: &Config,
        interface: &str,
        vip: &crate::config::Vip,
        v: &crate::config::Vrrp,
    ) -> Spec {
        let mut tracked_pools: Vec<String> = config
            .services
            .iter()
            .filter(|s| {
                s.listen.ip().is_unspecified()
                    || vip.addresses.iter().any(|p| p.addr == s.listen.ip())
            })
            .map(|s| s.pool.clone())
            .collect();
        tracked_pools.sort();
        tracked_pools.dedup();
        Spec {
            interface: interface.to_owned(),
            vrid: v.vrid,
            priority: v.priority,
            interval_cs: u16::try_from(v.advert_interval.as_millis() / 10)
                .unwrap_or(packet::MAX_INTERVAL_CS)
                .clamp(1, packet::MAX_INTERVAL_CS),
            preempt: v.preempt,
            preempt_delay: v.preempt_delay,
            unicast_peers: v.unicast_peers.clone(),
            compat: ChecksumCompat {
                multicast_dst_for_unicast: true,
                as_v2: v.checksum_as_v2,
            },
            addresses: vip.addresses.clone(),
            label: vip.label.clone(),
            announce: vip.announce.clone(),
            track_penalty: v.track_pool_penalty,
            tracked_pools,
        }
    }
}

/// What an instance reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    /// Effective priority.
    pub priority: u8,
    pub demoted: bool,
}

enum Command {
    Demote,
    Resume,
}

/// A running instance, for the admin side: read its state, demote or resume it.
#[derive(Clone)]
pub struct Handle {
    vrid: u8,
    status: watch::Receiver<Status>,
    commands: mpsc::Sender<Command>,
}

impl Handle {
    pub fn vrid(&self) -> u8 {
        self.vrid
    }

    pub fn state(&self) -> State {
        self.status.borrow().state
    }

    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// Steps down if master (priority-0 advert, VIPs released) and stays at priority 1 until
    /// [`Handle::resume`]. Returns false if the instance has stopped.
    pub fn demote(&self) -> bool {
        self.commands.try_send(Command::Demote).is_ok()
    }

    /// Restores the configured priority (preemption then works as usual).
    pub fn resume(&self) -> bool {
        self.commands.try_send(Command::Resume).is_ok()
    }

    /// Waits until the instance is in `state` or `timeout` passes.
    pub async fn wait_for(&mut self, state: State, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.status.wait_for(|s| s.state == state))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Resolves once the first health round has a verdict; cloned into each instance.
pub type FirstRound = watch::Receiver<usize>;

/// Starts every instance: looks up the interface, removes stale VIPs, opens the sockets and
/// spawns the tasks into `tasks`. On `stop` each instance resigns (priority 0 if master) and
/// removes its VIPs before its task ends.
pub async fn start(
    specs: Vec<Spec>,
    controller: Arc<Controller>,
    first_round: Option<FirstRound>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> anyhow::Result<Vec<Handle>> {
    let Some(first) = specs.first() else {
        return Ok(Vec::new());
    };
    let interface = first.interface.clone();
    if specs.iter().any(|s| s.interface != interface) {
        bail!("every VRRP instance must be on node.interface");
    }
    let metrics = controller.metrics().clone();
    let mut vips = Vec::new();
    for s in &specs {
        let v = Vips::open(
            &s.interface,
            s.addresses.clone(),
            &s.label,
            s.announce.clone(),
            &metrics,
        )
        .await
        .with_context(|| format!("VRRP instance {}", s.vrid))?;
        v.clean_stale().await?;
        vips.push(v);
    }
    let (link, found) = match vips.first() {
        Some(v) => (
            v.link().clone(),
            v.netlink().addresses(v.link().index).await?,
        ),
        None => return Ok(Vec::new()),
    };
    let all_vips: Vec<IpAddr> = specs
        .iter()
        .flat_map(|s| s.addresses.iter().map(|p| p.addr))
        .collect();
    let (primary, _) = crate::vip::netlink::primaries(&found, &all_vips);
    let Some(primary) = primary else {
        bail!(
            "{interface} has no IPv4 address of its own: VRRP adverts need one as their source \
             (IPv6-only VRRP is not supported yet)"
        );
    };
    let sender = Arc::new(
        open_sender(&interface, primary)
            .with_context(|| format!("VRRP send socket on {interface}"))?,
    );
    let receiver = open_receiver(&interface, link.index)
        .with_context(|| format!("VRRP receive socket on {interface} (needs CAP_NET_RAW)"))?;

    let mut inboxes = HashMap::new();
    let mut handles = Vec::new();
    for (spec, vips) in specs.into_iter().zip(vips) {
        let (tx, rx) = mpsc::channel(INBOX);
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        let (status_tx, status_rx) = watch::channel(Status {
            state: State::Initialize,
            priority: spec.priority,
            demoted: false,
        });
        inboxes.insert(
            spec.vrid,
            Inbox {
                tx,
                peers: spec.unicast_peers.clone(),
                compat: spec.compat,
                addresses: spec
                    .addresses
                    .iter()
                    .map(|p| p.addr)
                    .filter(IpAddr::is_ipv4)
                    .collect(),
            },
        );
        handles.push(Handle {
            vrid: spec.vrid,
            status: status_rx,
            commands: cmd_tx,
        });
        let span = tracing::info_span!("vrrp.instance", vrid = spec.vrid);
        let inst = Instance::new(
            spec,
            primary,
            vips,
            sender.clone(),
            controller.clone(),
            metrics.clone(),
            status_tx,
        );
        tasks.spawn(
            inst.run(rx, cmd_rx, first_round.clone(), stop.clone())
                .instrument(span),
        );
    }
    tasks.spawn(
        receive(receiver, primary, inboxes, metrics, stop.clone())
            .instrument(tracing::info_span!("vrrp.receive", interface = %interface)),
    );
    info!(interface = %interface, source = %primary, "VRRP started");
    Ok(handles)
}

fn open_sender(interface: &str, primary: Ipv4Addr) -> std::io::Result<Socket> {
    let s = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(packet::IP_PROTO))),
    )?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.bind(&SockAddr::from(SocketAddrV4::new(primary, 0)))?;
    s.set_multicast_if_v4(&primary)?;
    s.set_multicast_ttl_v4(u32::from(packet::TTL))?;
    s.set_ttl_v4(u32::from(packet::TTL))?;
    s.set_multicast_loop_v4(false)?;
    s.set_tos_v4(TOS)?;
    // Bound to our own address, this socket only queues unicast adverts sent to us, which the
    // receive socket sees as well: keep its buffer minimal.
    s.set_recv_buffer_size(1)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn open_receiver(interface: &str, index: u32) -> std::io::Result<Socket> {
    let s = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(packet::IP_PROTO))),
    )?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.join_multicast_v4_n(&MULTICAST_V4, &InterfaceIndexOrAddress::Index(index))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

struct Inbox {
    tx: mpsc::Sender<Event>,
    peers: Vec<IpAddr>,
    compat: ChecksumCompat,
    addresses: Vec<IpAddr>,
}

/// Reads, validates and dispatches adverts until `stop`.
async fn receive(
    socket: Socket,
    primary: Ipv4Addr,
    inboxes: HashMap<u8, Inbox>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    // SAFETY: a socket2::Socket owns its descriptor and always returns that same one; the
    // AsyncFd owns the socket for its whole life.
    let fd = match unsafe { AsyncFd::register(socket) } {
        Ok(fd) => fd,
        Err(e) => {
            error!(error = %e, "VRRP receive socket cannot be registered");
            return;
        }
    };
    let fam = &metrics.vrrp;
    let errors: HashMap<RxError, prometheus::IntCounter> = RxError::ALL
        .iter()
        .map(|r| (*r, fam.rx_errors.with_label_values(&[r.as_str()])))
        .collect();
    let received: HashMap<u8, prometheus::IntCounter> = inboxes
        .keys()
        .map(|v| {
            (
                *v,
                fam.adverts_received.with_label_values(&[&v.to_string()]),
            )
        })
        .collect();
    let count = |r: RxError| {
        if let Some(c) = errors.get(&r) {
            c.inc();
        }
    };
    let mut buf = vec![0u8; 65536];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            r = fd.readable() => {
                let mut guard = match r {
                    Ok(g) => g,
                    Err(error) => {
                        error!(%error, "VRRP receive socket failed");
                        return;
                    }
                };
                match guard.try_io(|s| s.get_ref().read(&mut buf)) {
                    Ok(Ok(n)) => n,
                    Ok(Err(error)) => {
                        warn!(%error, "VRRP receive error");
                        continue;
                    }
                    Err(_would_block) => continue,
                }
            }
        };
        let Some(pkt) = buf.get(..n) else { continue };
        match check(pkt, primary, &inboxes) {
            Ok(None) => {}
            Ok(Some((vrid, ev, list_differs))) => {
                if list_differs {
                    count(RxError::AddressList);
                }
                if let (Some(inbox), Some(c)) = (inboxes.get(&vrid), received.get(&vrid)) {
                    c.inc();
                    if inbox.tx.try_send(ev).is_err() {
                        debug!(vrid, "instance inbox full: advert dropped");
                    }
                }
            }
            Err(r) => {
                count(r);
                debug!(reason = r.as_str(), "VRRP packet dropped");
            }
        }
    }
}

/// Validates one received IPv4 packet. `Ok(None)`: ours or not for us (silently ignored).
fn check(
    pkt: &[u8],
    primary: Ipv4Addr,
    inboxes: &HashMap<u8, Inbox>,
) -> Result<Option<(u8, Event, bool)>, RxError> {
    let (h, payload) = packet::split_ipv4(pkt)?;
    if h.src == primary {
        return Ok(None);
    }
    let multicast = h.dst == MULTICAST_V4;
    if !multicast && h.dst != primary {
        return Ok(None);
    }
    if multicast && h.ttl != packet::TTL {
        return Err(RxError::Ttl);
    }
    let src = IpAddr::V4(h.src);
    // The codec checks need the instance's checksum compat; VRID is byte 1 of the payload.
    let vrid = *payload.get(1).ok_or(RxError::Truncated)?;
    let compat = inboxes.get(&vrid).map(|i| i.compat).unwrap_or_default();
    let advert = packet::parse(payload, src, IpAddr::V4(h.dst), compat)?;
    let inbox = inboxes.get(&advert.vrid).ok_or(RxError::UnknownVrid)?;
    if !inbox.peers.is_empty() {
        if !inbox.peers.contains(&src) {
            return Err(RxError::NotPeer);
        }
    } else if h.ttl != packet::TTL {
        return Err(RxError::Ttl);
    }
    let differs = !advert.same_addresses(&inbox.addresses);
    Ok(Some((
        advert.vrid,
        Event::Advert {
            priority: advert.priority,
            interval_cs: advert.interval_cs,
            src,
        },
        differs,
    )))
}

struct Instance {
    spec: Spec,
    primary: Ipv4Addr,
    machine: Machine,
    vips: Vips,
    sender: Arc<Socket>,
    controller: Arc<Controller>,
    metrics: Arc<Metrics>,
    status: watch::Sender<Status>,
    advert: Advert,
    buf: Vec<u8>,
    demoted: bool,
    tracking_low: bool,
    vrid_label: String,
    sent: prometheus::IntCounter,
}

impl Instance {
    fn new(
        spec: Spec,
        primary: Ipv4Addr,
        vips: Vips,
        sender: Arc<Socket>,
        controller: Arc<Controller>,
        metrics: Arc<Metrics>,
        status: watch::Sender<Status>,
    ) -> Instance {
        let machine = Machine::new(Params {
            primary: IpAddr::V4(primary),
            priority: spec.priority,
            interval_cs: spec.interval_cs,
            preempt: spec.preempt,
            preempt_delay: spec.preempt_delay,
        });
        let advert = Advert {
            vrid: spec.vrid,
            priority: spec.priority,
            interval_cs: spec.interval_cs,
            addresses: spec
                .addresses
                .iter()
                .map(|p| p.addr)
                .filter(IpAddr::is_ipv4)
                .collect(),
        };
        let vrid_label = spec.vrid.to_string();
        let sent = metrics.vrrp.adverts_sent.with_label_values(&[&vrid_label]);
        for s in State::ALL {
            metrics
                .vrrp
                .state
                .with_label_values(&[&vrid_label, s.as_str()])
                .set(i64::from(s == State::Initialize));
        }
        metrics
            .vrrp
            .priority
            .with_label_values(&[&vrid_label])
            .set(i64::from(spec.priority));
        metrics.vrrp.dual_master.with_label_values(&[&vrid_label]);
        Instance {
            spec,
            primary,
            machine,
            vips,
            sender,
            controller,
            metrics,
            status,
            advert,
            buf: Vec::with_capacity(64),
            demoted: false,
            tracking_low: false,
            vrid_label,
            sent,
        }
    }

    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Event>,
        mut commands: mpsc::Receiver<Command>,
        first_round: Option<FirstRound>,
        stop: CancellationToken,
    ) {
        let now = std::time::Instant::now();
        let mut first_round = first_round.filter(|r| *r.borrow() > 0);
        if first_round.is_some() {
            info!("no preemption until the first health round has a verdict");
            self.feed(now, Event::PreemptHold(true)).await;
        }
        self.track(now).await;
        self.feed(now, Event::Startup).await;
        let mut track = tokio::time::interval(TRACK_EVERY);
        track.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.machine.deadline();
            let sleep = async {
                match deadline {
                    Some((_, at)) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let first = async {
                match first_round.as_mut() {
                    Some(r) => {
                        let _ = r.wait_for(|n| *n == 0).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = sleep => {
                    if let Some((t, _)) = deadline {
                        self.feed(std::time::Instant::now(), Event::TimerFired(t)).await;
                    }
                }
                Some(ev) = inbox.recv() => self.feed(std::time::Instant::now(), ev).await,
                Some(cmd) = commands.recv() => self.command(cmd).await,
                _ = first => {
                    first_round = None;
                    info!("first health round done: preemption allowed");
                    self.feed(std::time::Instant::now(), Event::PreemptHold(false)).await;
                }
                _ = track.tick() => self.track(std::time::Instant::now()).await,
            }
        }
        self.feed(std::time::Instant::now(), Event::Shutdown).await;
        // A backup holds nothing, but a failed removal earlier must not outlive us.
        if self.vips.held() {
            if let Err(error) = self.vips.release().await {
                error!(error = %format!("{error:#}"), "removing VIPs at shutdown failed");
            }
        }
    }

    fn effective_priority(&self) -> u8 {
        if self.demoted {
            1
        } else if self.tracking_low {
            self.spec
                .priority
                .saturating_sub(self.spec.track_penalty)
                .max(1)
        } else {
            self.spec.priority
        }
    }

    async fn command(&mut self, cmd: Command) {
        let now = std::time::Instant::now();
        match cmd {
            Command::Demote => {
                info!("demoted by operator");
                self.demoted = true;
                self.feed(now, Event::Demote).await;
            }
            Command::Resume => {
                info!("resumed by operator");
                self.demoted = false;
                self.feed(now, Event::Priority(self.effective_priority()))
                    .await;
            }
        }
        self.publish();
    }

    /// Lowers (or restores) the priority when a tracked pool has no eligible backend.
    async fn track(&mut self, now: std::time::Instant) {
        if self.spec.tracked_pools.is_empty() || self.spec.track_penalty == 0 {
            return;
        }
        let snap = self.controller.snapshot().load();
        let empty: Vec<&str> = snap
            .pools
            .iter()
            .filter(|p| {
                self.spec
                    .tracked_pools
                    .iter()
                    .any(|t| t.as_str() == &*p.name)
            })
            .filter(|p| p.eligible_count() == 0)
            .map(|p| &*p.name)
            .collect();
        let low = !empty.is_empty();
        if low != self.tracking_low {
            self.tracking_low = low;
            let p = self.effective_priority();
            if low {
                warn!(pools = ?empty, priority = p, "tracked pool has no eligible backend: priority lowered");
            } else {
                info!(priority = p, "tracked pools serve again: priority restored");
            }
            self.feed(now, Event::Priority(p)).await;
            self.publish();
        }
    }

    fn publish(&self) {
        let p = self.machine.priority();
        self.metrics
            .vrrp
            .priority
            .with_label_values(&[&self.vrid_label])
            .set(i64::from(p));
        self.status.send_replace(Status {
            state: self.machine.state(),
            priority: p,
            demoted: self.demoted,
        });
    }

    async fn feed(&mut self, now: std::time::Instant, ev: Event) {
        let actions = self.machine.handle(now, ev);
        for a in actions.iter() {
            match a {
                Action::SendAdvert { priority } => self.send(priority),
                Action::TakeVips => {
                    if let Err(error) = self.vips.take().await {
                        error!(error = %format!("{error:#}"), "taking the VIPs failed");
                    }
                }
                Action::ReleaseVips => {
                    if let Err(error) = self.vips.release().await {
                        error!(error = %format!("{error:#}"), "removing the VIPs failed");
                    }
                }
                Action::ArmTimer { .. } | Action::StopTimer => {}
                Action::Transition { from, to, reason } => {
                    info!(
                        from = from.as_str(),
                        to = to.as_str(),
                        reason = reason.as_str(),
                        priority = self.machine.priority(),
                        "VRRP transition"
                    );
                    let f = &self.metrics.vrrp;
                    f.transitions
                        .with_label_values(&[&self.vrid_label, from.as_str(), to.as_str()])
                        .inc();
                    for s in State::ALL {
                        f.state
                            .with_label_values(&[&self.vrid_label, s.as_str()])
                            .set(i64::from(s == to));
                    }
                    self.publish();
                }
                Action::DualMaster {
                    peer,
                    peer_priority,
                } => {
                    warn!(
                        %peer,
                        peer_priority,
                        priority = self.machine.priority(),
                        "dual master: another master advertises this VRID"
                    );
                    self.metrics
                        .vrrp
                        .dual_master
                        .with_label_values(&[&self.vrid_label])
                        .inc();
                }
            }
        }
    }

    fn send(&mut self, priority: u8) {
        self.advert.priority = priority;
        let src = IpAddr::V4(self.primary);
        for i in 0..self.spec.unicast_peers.len().max(1) {
            let dst = match self.spec.unicast_peers.get(i) {
                Some(peer) => *peer,
                None => IpAddr::V4(MULTICAST_V4),
            };
            self.advert.encode(src, dst, &mut self.buf);
            match self
                .sender
                .send_to(&self.buf, &SockAddr::from(SocketAddr::new(dst, 0)))
            {
                Ok(_) => self.sent.inc(),
                Err(error) => warn!(%dst, %error, "VRRP advert not sent"),
            }
        }
    }
}

/// Real-time priority of the VRRP thread (SCHED_RR, low among real-time ones): above every
/// normal process, so a busy machine cannot delay an advert or a backup's timer by the tens of
/// milliseconds that make a 20 ms interval flap. The thread sleeps between adverts.
const RT_PRIORITY: i32 = 10;

/// [`start`] on a thread of its own ("portico-vrrp", a current-thread runtime) with
/// real-time scheduling when the process may have it (CAP_SYS_NICE; otherwise a log line and
/// normal scheduling). A task in `tasks` ends when every instance has resigned and released
/// its VIPs, so the daemon's shutdown waits for that.
pub async fn start_on_own_thread(
    specs: Vec<Spec>,
    controller: Arc<Controller>,
    first_round: Option<FirstRound>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> anyhow::Result<Vec<Handle>> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("portico-vrrp".into())
        .spawn(move || {
            raise_priority();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::Error::from(e).context("VRRP runtime")));
                    return;
                }
            };
            rt.block_on(async move {
                let local = TaskTracker::new();
                match start(specs, controller, first_round, &local, stop).await {
                    Ok(handles) => {
                        let _ = ready_tx.send(Ok(handles));
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
                local.close();
                local.wait().await;
            });
            let _ = done_tx.send(());
        })
        .context("starting the VRRP thread")?;
    let handles = ready_rx.await.context("the VRRP thread ended early")??;
    tasks.spawn(async move {
        let _ = done_rx.await;
    });
    Ok(handles)
}

fn raise_priority() {
    let param = libc::sched_param {
        sched_priority: RT_PRIORITY,
    };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid parameter struct.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) };
    if rc == 0 {
        info!(
            priority = RT_PRIORITY,
            "VRRP thread runs with real-time scheduling (SCHED_RR)"
        );
    } else {
        let error = std::io::Error::last_os_error();
        warn!(%error, "VRRP thread keeps normal scheduling (grant CAP_SYS_NICE for SCHED_RR): short advert intervals may flap on a busy machine");
    }
}
