//! The forwarder's I/O: one AF_PACKET socket on `node.interface`, read and written by one
//! dedicated thread (not a tokio runtime: the loop never waits on anything but the socket).
//!
//! Frames are read from a TPACKET_V3 receive ring shared with the kernel (no copy into user
//! space, no syscall per batch while frames keep coming), rewritten where they lie and sent
//! with `sendmmsg` ([`BATCH`] at a time) straight out of the ring; `recvmmsg` into our own
//! buffers is the fallback when the kernel refuses the ring. A classic BPF filter attached before the socket is bound passes only ARP, VLAN-tagged frames
//! and IPv4 packets to a VIP, so the rest of the segment's traffic never reaches user space.
//! `PACKET_IGNORE_OUTGOING` keeps our own sent frames (and the host's) out of the socket.
//!
//! `PACKET_VNET_HDR` makes the kernel describe each frame's offload state in a virtio-net
//! header, which the forwarder hands back unchanged when it sends the frame on. Without it,
//! frames from a local sender or a virtual NIC (veth, virtio) arrive with the TCP/UDP checksum
//! not yet computed (checksum offload) and would reach the backend with a bad checksum, and a
//! GRO-merged frame would be too long to send; with it the kernel or the NIC completes the
//! checksum and re-segments on the way out, as for its own packets.
//!
//! The forwarder runs whether or not this node is master, and forwards only while its
//! *active* flag is set ([`Forwarder::set_active`], for VRRP to drive): inactive, it reads and
//! discards (so its socket buffer never holds stale frames for a later term) and answers no
//! ARP. Becoming active announces every VIP with gratuitous ARP; becoming inactive clears the
//! flow table (what a `[dsr]` sync peer sends afterwards is kept for the next term).

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use tracing::{info, warn};

use super::arp;
use super::engine::{Action, Engine};
use super::fastpath::FastPath;
use super::flow::FlowTable;
use super::metrics::DsrMetrics;
use super::packet::{vrrp_virtual_mac, DropReason, Mac, Target};
use super::sync::{self, SyncEntry, SyncError};
use super::xdp::AttachMode;
use crate::config::{Config, DsrSync, DsrXdp, Forwarding, VipMode};
use crate::snapshot::Snapshot;
use crate::sockopt::set as setsockopt;

/// Frames per batch (`sendmmsg`, and `recvmmsg` on the fallback path).
pub const BATCH: usize = 64;
/// Room per frame: the virtio-net header, then up to 64 KiB (a GRO-merged frame, which the
/// kernel segments again on send). A longer frame arrives cut (`MSG_TRUNC`) and is dropped as
/// truncated rather than forwarded short.
const FRAME_ROOM: usize = VNET_HDR + 65_536;
/// `struct virtio_net_hdr` (PACKET_VNET_HDR): every frame read and written is prefixed by it.
const VNET_HDR: usize = 10;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
/// How long a read waits before the loop looks at its flags and timers.
const POLL: Duration = Duration::from_millis(50);
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// Gratuitous ARP after becoming active: at once, then again after these delays (a lost
/// announcement leaves clients on the old master until their cache entries time out).
const ANNOUNCE_AGAIN: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];
/// While active, every VIP is announced again this often: it keeps the switches' forwarding
/// entry for a virtual MAC (which no other frame is sent from) well inside their usual 300 s
/// ageing, and re-teaches hosts that flushed their ARP caches.
const ANNOUNCE_REFRESH: Duration = Duration::from_secs(60);
/// After stepping down (VRRP backup, demoted), a node goes on forwarding whatever still
/// reaches it for this long, answering no ARP: frames the switch sends it until the new master
/// has taken over (its skew time, then its announcement moving the VIP's MAC) are forwarded
/// instead of lost, so a graceful hand-over costs a session no retransmission. Both nodes place
/// a flow alike (flow table, synced flows, Maglev), so the overlap sends nothing astray.
pub const STEP_DOWN_GRACE: Duration = Duration::from_secs(3);
const ETH_P_ALL: u16 = 0x0003;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// What one forwarder serves.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    pub interface: String,
    pub targets: Vec<Target>,
    /// Service names, indexed by `Target::service`.
    pub services: Vec<Arc<str>>,
    pub max_flows: usize,
    pub flow_idle: Duration,
    /// VIPs of VRRP groups and their group's virtual MAC, which they answer ARP with.
    pub vip_macs: Vec<(Ipv4Addr, Mac)>,
    /// `[dsr] sync_*`: flow-table sync with the other balancer nodes.
    pub sync: Option<DsrSync>,
    /// `[dsr] xdp`.
    pub xdp: DsrXdp,
}

impl ForwarderConfig {
    /// The dsr services of `config`, or `None` when it has none.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<ForwarderConfig>> {
        let mut targets = Vec::new();
        let mut services: Vec<Arc<str>> = Vec::new();
        let mut max_flows = 0usize;
        let mut flow_idle = Duration::ZERO;
        for s in config
            .services
            .iter()
            .filter(|s| s.forwarding == Forwarding::Dsr)
        {
            targets.push(Target {
                vip: s.listen.ip(),
                port: s.listen.port(),
                protocol: s.protocol,
                service: services.len(),
            });
            services.push(Arc::from(s.name.as_str()));
            max_flows = max_flows.saturating_add(s.max_flows);
            flow_idle = flow_idle.max(s.idle_timeout);
        }
        if targets.is_empty() {
            return Ok(None);
        }
        let interface = config
            .node
            .interface
            .clone()
            .context("dsr services need [node] interface")?;
        let mut vip_macs: Vec<(Ipv4Addr, Mac)> = Vec::new();
        for t in &targets {
            if let (IpAddr::V4(v), Some(vrid)) = (t.vip, config.vrrp_vrid_of(t.vip)) {
                if !vip_macs.iter().any(|(x, _)| *x == v) {
                    vip_macs.push((v, vrrp_virtual_mac(vrid)));
                }
            }
        }
        Ok(Some(ForwarderConfig {
            interface,
            targets,
            services,
            max_flows,
            flow_idle,
            vip_macs,
            sync: config.dsr_sync.clone(),
            xdp: config.dsr_xdp,
        }))
    }
}

/// The running forwarder as the admin side sees it.
#[derive(Clone)]
pub struct DsrHandle {
    /// Forwarding (set by VRRP, or the admin `dsr` request).
    pub active: Arc<AtomicBool>,
    /// `portico_dsr_flows`.
    pub flows: prometheus::IntGauge,
    /// The XDP fast path's attach mode; `None` without one.
    pub xdp: Option<AttachMode>,
}

/// A running forwarder thread. Dropping it stops the thread.
pub struct Forwarder {
    active: Arc<AtomicBool>,
    flows: prometheus::IntGauge,
    xdp: Option<AttachMode>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub interface: String,
    pub mac: Mac,
}

impl Forwarder {
    /// Opens the socket on the interface and starts the thread; `active` is the initial
    /// state of the flag.
    pub fn start(
        cfg: ForwarderConfig,
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: DsrMetrics,
        active: bool,
    ) -> anyhow::Result<Forwarder> {
        let iface = &cfg.interface;
        let mac = interface_mac(iface).with_context(|| format!("dsr: MAC of {iface}"))?;
        let our_ip = interface_ipv4(iface);
        if our_ip.is_none() {
            warn!(interface = %iface, "dsr: no IPv4 address on the interface: backend MACs come only from the kernel's neighbour table");
        }
        if std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"))
            .is_ok_and(|v| v.trim() == "1")
        {
            warn!(interface = %iface, "dsr: IP forwarding is on for this interface: the kernel may route its own copy of VIP packets too; turn it off (docs/dsr.md)");
        }
        let vips: Vec<Ipv4Addr> = cfg
            .targets
            .iter()
            .filter_map(|t| match t.vip {
                IpAddr::V4(v) => Some(v),
                IpAddr::V6(_) => None,
            })
            .collect();
        let sock = PacketSocket::open(iface, &vips)
            .with_context(|| format!("dsr: opening an AF_PACKET socket on {iface}"))?;
        for (vip, vmac) in &cfg.vip_macs {
            // A NIC filters unicast frames by destination: the virtual MAC joins its list (the
            // socket's membership ends with the socket). veth and bridges need none of this.
            if let Err(e) = sock.accept_unicast(vmac) {
                warn!(interface = %iface, %vip, mac = %arp::format_mac(vmac), error = %e, "dsr: cannot add the virtual MAC to the interface's filter: frames for it may not arrive");
            }
        }
        let flows = FlowTable::new(
            cfg.max_flows,
            u64::try_from(cfg.flow_idle.as_millis()).unwrap_or(u64::MAX),
        );
        let mut engine = Engine::new(
            cfg.targets.clone(),
            cfg.services.clone(),
            mac,
            our_ip,
            flows,
            metrics.clone(),
        );
        for (vip, vmac) in &cfg.vip_macs {
            engine.set_vip_mac(*vip, *vmac);
        }
        let sync_link = match &cfg.sync {
            Some(sc) => {
                let link = SyncLink::bind(sc)
                    .with_context(|| format!("dsr: binding the sync socket {}", sc.listen))?;
                engine.enable_sync();
                info!(listen = %sc.listen, peers = ?sc.peers, "dsr: flow-table sync on");
                Some(link)
            }
            None => None,
        };
        let veth = interface_driver(iface).is_ok_and(|d| d == "veth");
        let fast = match cfg.xdp {
            DsrXdp::Off => None,
            DsrXdp::Auto if veth => {
                info!(interface = %iface, "dsr: no XDP fast path on a veth unless [dsr] xdp = \"on\" (the peer must run NAPI: GRO on, or an XDP program): every frame goes through user space");
                None
            }
            DsrXdp::Auto | DsrXdp::On => {
                let generic = cfg.xdp == DsrXdp::On;
                let macs: Vec<Mac> = std::iter::once(mac)
                    .chain(cfg.vip_macs.iter().map(|(_, m)| *m))
                    .collect();
                match FastPath::open(
                    iface,
                    generic,
                    &macs,
                    cfg.max_flows,
                    cfg.flow_idle,
                    metrics.clone(),
                ) {
                    Ok(f) => {
                        info!(interface = %iface, mode = f.mode().as_str(), "dsr: XDP fast path attached: known flows are forwarded in the driver");
                        Some(f)
                    }
                    Err(e) => {
                        warn!(interface = %iface, error = %e, "dsr: no XDP fast path ([dsr] xdp = \"off\" silences this): every frame goes through user space");
                        None
                    }
                }
            }
        };
        let xdp_mode = fast.as_ref().map(FastPath::mode);
        let metrics_flows = metrics.flows.clone();
        let active_flag = Arc::new(AtomicBool::new(active));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (active, stop, iface) = (active_flag.clone(), stop.clone(), iface.clone());
            std::thread::Builder::new()
                .name("portico-dsr".into())
                .spawn(move || {
                    run(
                        sock, sync_link, engine, fast, snapshot, metrics, active, stop, iface,
                    )
                })
                .context("starting the dsr thread")?
        };
        let virtual_macs: Vec<String> = cfg
            .vip_macs
            .iter()
            .map(|(v, m)| format!("{v}={}", arp::format_mac(m)))
            .collect();
        info!(interface = %iface, mac = %arp::format_mac(&mac), vips = ?vips, ?virtual_macs, active, "dsr forwarder started");
        Ok(Forwarder {
            active: active_flag,
            flows: metrics_flows,
            xdp: xdp_mode,
            stop,
            thread: Some(thread),
            interface: cfg.interface,
            mac,
        })
    }

    /// Starts or stops forwarding (VRRP master / backup).
    pub fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Release);
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// What the rest of the daemon reads and drives: the active flag and the flow count.
    pub fn handle(&self) -> DsrHandle {
        DsrHandle {
            active: self.active.clone(),
            flows: self.flows.clone(),
            xdp: self.xdp,
        }
    }

    /// The flag itself, for a driver that lives elsewhere (the VRRP task).
    pub fn active_flag(&self) -> Arc<AtomicBool> {
        self.active.clone()
    }

    /// Stops the thread and waits for it (at most one poll interval).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the forwarder for `config`'s dsr services, if it has any: the one call the daemon
/// makes. It starts active unless the VIP is VRRP-managed, in which case VRRP must call
/// [`Forwarder::set_active`] on becoming master.
pub fn start_for(
    config: &Config,
    snapshot: Arc<ArcSwap<Snapshot>>,
    registry: &prometheus::Registry,
) -> anyhow::Result<Option<Forwarder>> {
    let Some(cfg) = ForwarderConfig::from_config(config)? else {
        return Ok(None);
    };
    let metrics = DsrMetrics::register(registry).context("registering the dsr metrics")?;
    let active = !matches!(config.vip.as_ref().map(|v| &v.mode), Some(VipMode::Vrrp(_)));
    if !active {
        info!("dsr: VIP is VRRP-managed: forwarding starts when this node becomes master");
    }
    Forwarder::start(cfg, snapshot, metrics, active).map(Some)
}

/// The thread's loop.
#[allow(clippy::too_many_arguments)]
fn run(
    mut sock: PacketSocket,
    mut sync_link: Option<SyncLink>,
    mut engine: Engine,
    mut fast: Option<FastPath>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: DsrMetrics,
    active: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    iface: String,
) {
    let epoch = Instant::now();
    let mut was_active = false;
    let mut stepped_down_until: Option<Instant> = None;
    let mut announce_at: Vec<Instant> = Vec::new();
    let mut next_housekeeping = epoch;
    let mut out = [0u8; 128];
    let mut forward = [0usize; BATCH];
    let mut logged_error = false;
    while !stop.load(Ordering::Acquire) {
        let n = match sock.recv_batch() {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            Err(e) => {
                if !logged_error {
                    warn!(interface = %iface, error = %e, "dsr: read failed");
                    logged_error = true;
                }
                std::thread::sleep(POLL);
                0
            }
        };
        let now = Instant::now();
        let now_ms = u64::try_from(now.duration_since(epoch).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let is_active = active.load(Ordering::Acquire);
        if is_active != was_active {
            was_active = is_active;
            metrics.active.set(i64::from(is_active));
            if is_active {
                // The table holds what a sync peer sent during the backup term (nothing
                // without sync): kept, it carries those flows across the hand-over.
                info!(interface = %iface, flows = engine.flows().len(), "dsr: forwarding (master)");
                stepped_down_until = None;
                engine.set_answer_arp(true);
                announce_at = std::iter::once(now)
                    .chain(ANNOUNCE_AGAIN.iter().map(|d| now + *d))
                    .collect();
            } else {
                info!(interface = %iface, grace_s = STEP_DOWN_GRACE.as_secs(), "dsr: stepped down (backup): no ARP answered, forwarding what still arrives for the grace time");
                stepped_down_until = Some(now + STEP_DOWN_GRACE);
                engine.set_answer_arp(false);
                announce_at.clear();
            }
        }
        if stepped_down_until.is_some_and(|t| now >= t) {
            info!(interface = %iface, "dsr: not forwarding (backup)");
            stepped_down_until = None;
            engine.reset_flows();
        }
        let forwarding = is_active || stepped_down_until.is_some();
        if let Some(f) = fast.as_mut() {
            f.set_active(forwarding);
            // Before this batch's offers: a new generation's decisions go into an emptied map.
            let snap = snapshot.load();
            engine.sync(&snap);
            f.tick(&mut engine, &snap, now, now_ms);
        }
        if !forwarding {
            for i in 0..n {
                let (frame, _) = sock.frame_mut(i);
                engine.learn_from_arp(frame);
            }
        }
        if forwarding && n > 0 {
            let snap = snapshot.load();
            engine.sync(&snap);
            let mut fwd = 0;
            for i in 0..n {
                let (frame, truncated) = sock.frame_mut(i);
                if truncated {
                    metrics.drop(DropReason::Truncated);
                    continue;
                }
                match engine.handle(&snap, frame, &mut out, now, now_ms) {
                    Action::Forward => {
                        if let Some(slot) = forward.get_mut(fwd) {
                            *slot = i;
                            fwd += 1;
                        }
                        if let (Some(f), Some(placed)) =
                            (fast.as_mut(), engine.last_forwarded().copied())
                        {
                            f.offer(&engine, &placed, frame);
                        }
                    }
                    Action::Reply(len) => {
                        if sock.send_one(out.get(..len).unwrap_or(&[])).is_err() {
                            metrics.drop(DropReason::SendFailed);
                        }
                    }
                    Action::Pass | Action::Drop(_) => {}
                }
            }
            let sent = sock.send_batch(forward.get(..fwd).unwrap_or(&[]));
            for _ in sent..fwd {
                metrics.drop(DropReason::SendFailed);
            }
        }
        if is_active {
            while announce_at.first().is_some_and(|t| *t <= now) {
                announce_at.remove(0);
                let mut i = 0;
                while let Some(len) = engine.announcement(i, &mut out) {
                    match sock.send_one(out.get(..len).unwrap_or(&[])) {
                        Ok(()) => metrics.arp_replies.inc(),
                        Err(e) => {
                            warn!(interface = %iface, error = %e, "dsr: cannot announce the VIP")
                        }
                    }
                    i += 1;
                }
            }
            if announce_at.is_empty() {
                announce_at.push(now + ANNOUNCE_REFRESH);
            }
        }
        if let Some(link) = sync_link.as_mut() {
            if is_active {
                link.send_due(&mut engine, &snapshot, now, now_ms, &metrics);
            } else if let Some(q) = engine.sync_queue() {
                q.clear();
            }
            link.receive(&mut engine, &snapshot, is_active, now_ms, &metrics);
        }
        if now >= next_housekeeping {
            next_housekeeping = now + HOUSEKEEPING_EVERY;
            engine.sync(&snapshot.load());
            engine.housekeeping(now_ms);
            if let Some(c) = metrics.drops.get(DropReason::RxOverflow.index()) {
                c.inc_by(sock.rx_dropped());
            }
            if let Ok(text) = std::fs::read_to_string("/proc/net/arp") {
                for (ip, mac) in arp::proc_net_arp(&text, &iface) {
                    engine.learn(ip, mac);
                }
            }
        }
        // Resolution requests go out whether or not we forward: a backup with warm MACs
        // forwards from its first frame as master.
        while let Some(len) = engine.next_request(&mut out, now_ms) {
            let _ = sock.send_one(out.get(..len).unwrap_or(&[]));
        }
    }
    metrics.active.set(0);
}

/// Placed flows are sent to the peers at least this often (sooner when a datagram is full):
/// a flow is covered from a tenth of a second after its first packet.
const SYNC_EVERY: Duration = Duration::from_millis(100);
/// The forwarding node re-sends every flow seen within this period this often, so a peer that
/// restarted (or lost a datagram) learns the flows that are still going.
const SYNC_FULL_EVERY: Duration = Duration::from_secs(30);
/// Datagrams read per loop turn at most, so a flood on the sync port cannot stall forwarding.
const SYNC_READ_MAX: usize = 64;

/// The sync socket and its peers.
struct SyncLink {
    sock: std::net::UdpSocket,
    peers: Vec<std::net::SocketAddr>,
    buf: Vec<u8>,
    last_sent: Instant,
    next_full: Instant,
}

impl SyncLink {
    fn bind(cfg: &DsrSync) -> io::Result<SyncLink> {
        let sock = std::net::UdpSocket::bind(cfg.listen)?;
        sock.set_nonblocking(true)?;
        Ok(SyncLink {
            sock,
            peers: cfg.peers.clone(),
            // Room for a whole datagram of any size, so an oversized one is read (and
            // refused) whole rather than cut to look valid.
            buf: vec![0u8; 65_536],
            last_sent: Instant::now(),
            next_full: Instant::now() + SYNC_FULL_EVERY,
        })
    }

    /// Sends the placed flows to every peer once a datagram is full or [`SYNC_EVERY`] passed,
    /// and every flow still going each [`SYNC_FULL_EVERY`].
    fn send_due(
        &mut self,
        engine: &mut Engine,
        snapshot: &ArcSwap<Snapshot>,
        now: Instant,
        now_ms: u64,
        metrics: &DsrMetrics,
    ) {
        if now >= self.next_full {
            self.next_full = now + SYNC_FULL_EVERY;
            let since = now_ms.saturating_sub(SYNC_FULL_EVERY.as_millis() as u64);
            let all = engine.recent_flows(&snapshot.load(), since);
            self.send(&all, metrics);
        }
        let Some(queue) = engine.sync_queue() else {
            return;
        };
        if queue.is_empty()
            || (queue.len() < sync::MAX_ENTRIES && now < self.last_sent + SYNC_EVERY)
        {
            return;
        }
        self.last_sent = now;
        self.send(queue, metrics);
        queue.clear();
    }

    fn send(&mut self, entries: &[SyncEntry], metrics: &DsrMetrics) {
        for chunk in entries.chunks(sync::MAX_ENTRIES) {
            let (len, n) = sync::encode(chunk, &mut self.buf);
            for peer in &self.peers {
                match self.sock.send_to(self.buf.get(..len).unwrap_or(&[]), peer) {
                    Ok(_) => metrics.sync_sent.inc_by(n as u64),
                    Err(_) => metrics.sync_error(SyncError::SendFailed, n as u64),
                }
            }
        }
    }

    /// Reads what the peers sent; a backup places the flows, a master (whose own placements
    /// rule) drops them.
    fn receive(
        &mut self,
        engine: &mut Engine,
        snapshot: &ArcSwap<Snapshot>,
        is_active: bool,
        now_ms: u64,
        metrics: &DsrMetrics,
    ) {
        for _ in 0..SYNC_READ_MAX {
            let (n, from) = match self.sock.recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(_) => return,
            };
            if !self.peers.iter().any(|p| p.ip() == from.ip()) {
                metrics.sync_error(SyncError::NotPeer, 1);
                continue;
            }
            let entries = match sync::decode(self.buf.get(..n).unwrap_or(&[])) {
                Ok(entries) => entries,
                Err(e) => {
                    metrics.sync_error(e, 1);
                    continue;
                }
            };
            if is_active {
                continue;
            }
            let snap = snapshot.load();
            for e in entries {
                if engine.apply_synced(&snap, &e, now_ms) {
                    metrics.sync_applied.inc();
                } else {
                    metrics.sync_error(SyncError::UnknownFlow, 1);
                }
            }
        }
    }
}

/// How the forwarder reads frames: a TPACKET_V3 ring (default) or `recvmmsg` into its own
/// buffers (the fallback when the kernel refuses the ring; `PORTICO_DSR_IO=mmsg` forces it,
/// for benches/dsr_pps.sh's side-by-side comparison).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxMode {
    Ring,
    Mmsg,
}

impl RxMode {
    fn from_env() -> RxMode {
        match std::env::var("PORTICO_DSR_IO").as_deref() {
            Ok("mmsg") => RxMode::Mmsg,
            _ => RxMode::Ring,
        }
    }
}

/// One frame of the current batch: where its virtio-net header starts (the frame follows it)
/// and the length of both; `truncated` when the kernel cut it short.
#[derive(Clone, Copy)]
struct FrameRef {
    ptr: *mut u8,
    len: usize,
    truncated: bool,
}

const NO_FRAME: FrameRef = FrameRef {
    ptr: std::ptr::null_mut(),
    len: 0,
    truncated: true,
};

/// `recvmmsg` into our own buffers: a copy per frame, a syscall per batch.
struct CopyRx {
    bufs: Vec<Box<[u8]>>,
    /// Never read again: `rx_msgs` points into it.
    _rx_iov: Vec<libc::iovec>,
    rx_msgs: Vec<libc::mmsghdr>,
}

/// The TPACKET_V3 receive ring: the kernel writes frames into blocks of memory shared with
/// us, and hands a block over whole (full, or after [`RING_BLOCK_TIMEOUT_MS`]). Frames are
/// rewritten and sent from where they lie; the block goes back to the kernel once every frame
/// of it has been sent.
struct Ring {
    map: *mut u8,
    map_len: usize,
    block_size: usize,
    blocks: usize,
    /// The block being read, if one is held.
    block: usize,
    held: bool,
    /// Frames of the held block not yet read, and the offset of the next one.
    left: u32,
    next: usize,
}

/// 32 blocks of 256 KiB (8 MiB, the size of the old socket buffer): a block holds a 64 KiB
/// GRO-merged frame whole, or ~3,000 minimum frames.
const RING_BLOCK_SIZE: usize = 256 << 10;
const RING_BLOCKS: usize = 32;
/// A block is handed over when full or after this long: the latency a lone frame can see.
const RING_BLOCK_TIMEOUT_MS: u32 = 1;
const TPACKET_V3: libc::c_int = 2;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_KERNEL: u32 = 0;
/// Offsets in `struct tpacket_block_desc` / `struct tpacket3_hdr` (linux/if_packet.h).
const BLOCK_STATUS_AT: usize = 8;
const BLOCK_NUM_PKTS_AT: usize = 12;
const BLOCK_FIRST_AT: usize = 16;
const FRAME_NEXT_AT: usize = 0;
const FRAME_SNAPLEN_AT: usize = 12;
const FRAME_LEN_AT: usize = 16;
const FRAME_MAC_AT: usize = 24;

impl Ring {
    fn u32_at(&self, off: usize) -> Option<u32> {
        if off % 4 != 0 || off.checked_add(4)? > self.map_len {
            return None;
        }
        // SAFETY: inside the mapping, aligned; volatile because the kernel writes it.
        Some(unsafe { std::ptr::read_volatile(self.map.add(off).cast::<u32>()) })
    }

    fn u16_at(&self, off: usize) -> Option<u16> {
        if off % 2 != 0 || off.checked_add(2)? > self.map_len {
            return None;
        }
        // SAFETY: inside the mapping, aligned.
        Some(unsafe { std::ptr::read_volatile(self.map.add(off).cast::<u16>()) })
    }

    fn block_base(&self) -> usize {
        self.block * self.block_size
    }

    /// Whether the current block is ours to read.
    fn ready(&self) -> bool {
        let st = self
            .u32_at(self.block_base() + BLOCK_STATUS_AT)
            .unwrap_or(0);
        std::sync::atomic::fence(Ordering::Acquire);
        st & TP_STATUS_USER != 0
    }

    /// Hands the held block back to the kernel and moves on to the next one.
    fn release(&mut self) {
        if !self.held {
            return;
        }
        std::sync::atomic::fence(Ordering::Release);
        let off = self.block_base() + BLOCK_STATUS_AT;
        if off + 4 <= self.map_len {
            // SAFETY: inside the mapping, aligned (the block base is page-aligned).
            unsafe { std::ptr::write_volatile(self.map.add(off).cast::<u32>(), TP_STATUS_KERNEL) };
        }
        self.held = false;
        self.block = (self.block + 1) % self.blocks;
    }

    /// Takes the current block if the kernel has handed it over.
    fn take(&mut self) -> bool {
        if self.held {
            return true;
        }
        if !self.ready() {
            return false;
        }
        let base = self.block_base();
        self.left = self.u32_at(base + BLOCK_NUM_PKTS_AT).unwrap_or(0);
        self.next = base + self.u32_at(base + BLOCK_FIRST_AT).unwrap_or(0) as usize;
        self.held = true;
        true
    }

    /// Up to `out.len()` frames of the held block; every offset the kernel wrote is checked
    /// against the block's bounds, and a frame that falls outside ends the block.
    fn read(&mut self, out: &mut [FrameRef]) -> usize {
        let end = self.block_base() + self.block_size;
        let mut n = 0;
        while self.left > 0 && n < out.len() {
            let at = self.next;
            let (Some(next), Some(snap), Some(len), Some(mac)) = (
                self.u32_at(at + FRAME_NEXT_AT),
                self.u32_at(at + FRAME_SNAPLEN_AT),
                self.u32_at(at + FRAME_LEN_AT),
                self.u16_at(at + FRAME_MAC_AT),
            ) else {
                self.left = 0;
                break;
            };
            let mac_at = at + usize::from(mac);
            let start = mac_at.wrapping_sub(VNET_HDR);
            let stop = mac_at + snap as usize;
            if usize::from(mac) < VNET_HDR + 32 || stop > end {
                self.left = 0;
                break;
            }
            if let Some(slot) = out.get_mut(n) {
                *slot = FrameRef {
                    // SAFETY: `start..stop` lies inside this block of the mapping.
                    ptr: unsafe { self.map.add(start) },
                    len: stop - start,
                    truncated: snap < len,
                };
                n += 1;
            }
            self.left -= 1;
            self.next = at + next as usize;
            if next == 0 {
                self.left = 0;
            }
        }
        n
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Ring::map`, unmapped once.
        unsafe { libc::munmap(self.map.cast(), self.map_len) };
    }
}

enum Rx {
    Copy(CopyRx),
    Ring(Ring),
}

/// An AF_PACKET socket bound to one interface, with its receive and send batches.
struct PacketSocket {
    fd: OwnedFd,
    ifindex: libc::c_int,
    rx: Rx,
    /// The frames of the last batch.
    frames: [FrameRef; BATCH],
    count: usize,
    tx_iov: Vec<libc::iovec>,
    tx_msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers (iovec/mmsghdr arrays, frame references, the ring mapping) point
// into buffers and a mapping this struct owns, which move with it as one owner; only the
// owning thread uses them.
unsafe impl Send for PacketSocket {}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Classic BPF: accept ARP, VLAN-tagged frames and IPv4 to one of `vips`; drop the rest.
pub fn bpf_program(vips: &[Ipv4Addr]) -> Vec<libc::sock_filter> {
    const LD_H_ABS: u16 = 0x28;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let vips = &vips[..vips.len().min(200)];
    let n = vips.len();
    // Layout: 0 ldh; 1 arp?; 2 vlan?; 3 ipv4?; 4 ld dst; 5..5+n jeq vip; 5+n drop; 6+n accept.
    let drop_at = 5 + n;
    let accept_at = 6 + n;
    let rel = |from: usize, to: usize| u8::try_from(to - from - 1).unwrap_or(u8::MAX);
    let mut p = vec![
        op(LD_H_ABS, 0, 0, 12),
        op(JEQ_K, rel(1, accept_at), 0, 0x0806),
        op(JEQ_K, rel(2, accept_at), 0, 0x8100),
        op(JEQ_K, 0, rel(3, drop_at), 0x0800),
        op(LD_W_ABS, 0, 0, 14 + 16),
    ];
    for (i, v) in vips.iter().enumerate() {
        p.push(op(JEQ_K, rel(5 + i, accept_at), 0, u32::from(*v)));
    }
    p.push(op(RET_K, 0, 0, 0));
    p.push(op(RET_K, 0, 0, 0x0004_0000));
    p
}

/// Sets up the TPACKET_V3 receive ring on `fd` (before bind) and maps it.
fn map_ring(fd: &OwnedFd) -> io::Result<Ring> {
    setsockopt(fd, libc::SOL_PACKET, libc::PACKET_VERSION, &TPACKET_V3)?;
    let frame_size = 2048usize;
    let req = libc::tpacket_req3 {
        tp_block_size: RING_BLOCK_SIZE as libc::c_uint,
        tp_block_nr: RING_BLOCKS as libc::c_uint,
        tp_frame_size: frame_size as libc::c_uint,
        tp_frame_nr: (RING_BLOCK_SIZE / frame_size * RING_BLOCKS) as libc::c_uint,
        tp_retire_blk_tov: RING_BLOCK_TIMEOUT_MS,
        tp_sizeof_priv: 0,
        tp_feature_req_word: 0,
    };
    setsockopt(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
    let map_len = RING_BLOCK_SIZE * RING_BLOCKS;
    // SAFETY: maps the ring the kernel just allocated for this socket.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(Ring {
        map: map.cast(),
        map_len,
        block_size: RING_BLOCK_SIZE,
        blocks: RING_BLOCKS,
        block: 0,
        held: false,
        left: 0,
        next: 0,
    })
}

impl PacketSocket {
    fn open(iface: &str, vips: &[Ipv4Addr]) -> io::Result<PacketSocket> {
        match RxMode::from_env() {
            RxMode::Ring => match Self::open_mode(iface, vips, RxMode::Ring) {
                Ok(s) => Ok(s),
                Err(e) => {
                    warn!(interface = %iface, error = %e, "dsr: no TPACKET_V3 ring: reading with recvmmsg instead");
                    Self::open_mode(iface, vips, RxMode::Mmsg)
                }
            },
            RxMode::Mmsg => Self::open_mode(iface, vips, RxMode::Mmsg),
        }
    }

    fn open_mode(iface: &str, vips: &[Ipv4Addr], mode: RxMode) -> io::Result<PacketSocket> {
        let ifindex = ifindex(iface)?;
        // Protocol 0: the socket receives nothing until bound, so no frame slips in before
        // the filter is attached.
        // SAFETY: plain syscall.
        let raw =
            cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut prog = bpf_program(vips);
        let fprog = libc::sock_fprog {
            len: u16::try_from(prog.len()).unwrap_or(u16::MAX),
            filter: prog.as_mut_ptr(),
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)?;
        // Old kernels lack it: then our own frames come back, and the engine passes them
        // (their destination MAC is not ours).
        let _ = setsockopt(
            &fd,
            libc::SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            &1 as &libc::c_int,
        );
        let _ = setsockopt(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &(4 << 20) as &libc::c_int,
        );
        // Before the ring: the kernel refuses to change it once a ring exists.
        setsockopt(&fd, libc::SOL_PACKET, PACKET_VNET_HDR, &1 as &libc::c_int)?;
        // Frames we send are already final: skip the qdisc layer (the NIC's own queue
        // still applies).
        let _ = setsockopt(
            &fd,
            libc::SOL_PACKET,
            PACKET_QDISC_BYPASS,
            &1 as &libc::c_int,
        );
        let rx = match mode {
            RxMode::Ring => Rx::Ring(map_ring(&fd)?),
            RxMode::Mmsg => {
                let _ = setsockopt(
                    &fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    &(8 << 20) as &libc::c_int,
                );
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: libc::suseconds_t::try_from(POLL.as_micros()).unwrap_or(50_000),
                };
                setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
                let mut bufs: Vec<Box<[u8]>> = (0..BATCH)
                    .map(|_| vec![0u8; FRAME_ROOM].into_boxed_slice())
                    .collect();
                let mut rx_iov: Vec<libc::iovec> = bufs
                    .iter_mut()
                    .map(|b| libc::iovec {
                        iov_base: b.as_mut_ptr().cast(),
                        iov_len: b.len(),
                    })
                    .collect();
                // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
                let zero: libc::mmsghdr = unsafe { std::mem::zeroed() };
                let mut rx_msgs = vec![zero; BATCH];
                // The boxes and vectors never grow again, so these pointers stay valid.
                for (m, iov) in rx_msgs.iter_mut().zip(rx_iov.iter_mut()) {
                    m.msg_hdr.msg_iov = iov;
                    m.msg_hdr.msg_iovlen = 1;
                }
                Rx::Copy(CopyRx {
                    bufs,
                    _rx_iov: rx_iov,
                    rx_msgs,
                })
            }
        };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
        // SAFETY: `sll` is a live sockaddr_ll of the size passed.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        // SAFETY: all-zero is a valid mmsghdr / iovec (null pointers, zero lengths).
        let (zero_msg, zero_iov): (libc::mmsghdr, libc::iovec) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        let mut s = PacketSocket {
            fd,
            ifindex: sll.sll_ifindex,
            rx,
            frames: [NO_FRAME; BATCH],
            count: 0,
            tx_iov: vec![zero_iov; BATCH],
            tx_msgs: vec![zero_msg; BATCH],
        };
        for (m, iov) in s.tx_msgs.iter_mut().zip(s.tx_iov.iter_mut()) {
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        info!(interface = %iface, mode = ?mode, "dsr: packet socket open");
        Ok(s)
    }

    /// Reads up to [`BATCH`] frames, waiting at most [`POLL`] for the first. With the ring,
    /// this also hands the previous batch's block back once all its frames were read (the
    /// previous batch has been sent by then).
    fn recv_batch(&mut self) -> io::Result<usize> {
        self.count = 0;
        let n = match &mut self.rx {
            Rx::Copy(c) => {
                for m in &mut c.rx_msgs {
                    m.msg_len = 0;
                    m.msg_hdr.msg_flags = 0;
                }
                // SAFETY: the arrays are valid for BATCH entries and their iovecs point into
                // `bufs`.
                let n = cvt(unsafe {
                    libc::recvmmsg(
                        self.fd.as_raw_fd(),
                        c.rx_msgs.as_mut_ptr(),
                        BATCH as libc::c_uint,
                        libc::MSG_WAITFORONE,
                        std::ptr::null_mut(),
                    )
                })?;
                let n = usize::try_from(n).unwrap_or(0).min(BATCH);
                for i in 0..n {
                    let (Some(m), Some(b), Some(slot)) =
                        (c.rx_msgs.get(i), c.bufs.get_mut(i), self.frames.get_mut(i))
                    else {
                        continue;
                    };
                    *slot = FrameRef {
                        ptr: b.as_mut_ptr(),
                        len: (m.msg_len as usize).min(b.len()),
                        truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                    };
                }
                n
            }
            Rx::Ring(r) => {
                if r.held && r.left == 0 {
                    r.release();
                }
                if !r.take() {
                    let mut pfd = libc::pollfd {
                        fd: self.fd.as_raw_fd(),
                        events: libc::POLLIN | libc::POLLERR,
                        revents: 0,
                    };
                    let ms = libc::c_int::try_from(POLL.as_millis()).unwrap_or(50);
                    // SAFETY: one live pollfd.
                    cvt(unsafe { libc::poll(&mut pfd, 1, ms) })?;
                    if !r.take() {
                        return Ok(0);
                    }
                }
                r.read(&mut self.frames)
            }
        };
        self.count = n;
        Ok(n)
    }

    /// The `i`th frame of the last batch (after its virtio-net header) and whether it was cut
    /// short.
    fn frame_mut(&mut self, i: usize) -> (&mut [u8], bool) {
        match self.frames.get(i) {
            // The frame follows its virtio-net header; the header stays for the send.
            Some(f) if i < self.count && f.len >= VNET_HDR && !f.ptr.is_null() => {
                // SAFETY: `ptr..ptr+len` lies in a receive buffer or in a ring block we hold
                // until the next `recv_batch`; the returned borrow of `self` keeps both alive
                // and unshared.
                let all = unsafe { std::slice::from_raw_parts_mut(f.ptr, f.len) };
                (all.get_mut(VNET_HDR..).unwrap_or(&mut []), f.truncated)
            }
            _ => (&mut [], true),
        }
    }

    /// Sends the frames at `indexes` of the last batch (as rewritten); returns how many went.
    fn send_batch(&mut self, indexes: &[usize]) -> usize {
        let mut count = 0;
        for &i in indexes {
            let (Some(f), Some(iov)) = (self.frames.get(i), self.tx_iov.get_mut(count)) else {
                continue;
            };
            if i >= self.count || f.ptr.is_null() {
                continue;
            }
            iov.iov_base = f.ptr.cast();
            iov.iov_len = f.len;
            count += 1;
        }
        let mut sent = 0;
        while sent < count {
            let rest = self.tx_msgs.get_mut(sent..count).unwrap_or(&mut []);
            // SAFETY: the entries point at iovecs describing live buffers.
            let r = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    0,
                )
            };
            if r <= 0 {
                break;
            }
            sent += usize::try_from(r).unwrap_or(0);
        }
        sent
    }

    /// Frames the kernel dropped for want of receive-buffer room since the last call
    /// (PACKET_STATISTICS resets on read).
    fn rx_dropped(&self) -> u64 {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `st` is a live tpacket_stats and `len` its size.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if r == 0 {
            u64::from(st.tp_drops)
        } else {
            0
        }
    }

    /// Adds `mac` to the interface's unicast filter for as long as the socket lives
    /// (`PACKET_MR_UNICAST`), so a NIC passes frames sent to it up.
    fn accept_unicast(&self, mac: &Mac) -> io::Result<()> {
        let mut address = [0u8; 8];
        address[..6].copy_from_slice(mac);
        let req = libc::packet_mreq {
            mr_ifindex: self.ifindex,
            mr_type: libc::PACKET_MR_UNICAST as libc::c_ushort,
            mr_alen: 6,
            mr_address: address,
        };
        setsockopt(
            &self.fd,
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &req,
        )
    }

    /// Sends a frame we built (ARP), behind an all-zero virtio-net header (no offload).
    fn send_one(&self, frame: &[u8]) -> io::Result<()> {
        let mut buf = [0u8; VNET_HDR + 128];
        let len = VNET_HDR + frame.len();
        let Some(dst) = buf.get_mut(VNET_HDR..len) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        dst.copy_from_slice(frame);
        // SAFETY: `buf` is a live buffer of at least `len` bytes.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), len, 0) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// The interface's MAC, from sysfs.
/// The interface's driver as `ethtool -i` names it (`veth`, `mlx5_core`, `virtio_net`, ...).
pub fn interface_driver(iface: &str) -> io::Result<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x03;
    /// `struct ethtool_drvinfo`: the command, then the driver's name; the rest unread.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    if iface.len() >= libc::IFNAMSIZ {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    for (d, s) in req.name.iter_mut().zip(iface.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: plain syscall; the descriptor is owned below.
    let raw =
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `req` points at `info`; both outlive the call, and the kernel writes at most
    // `struct ethtool_drvinfo` (196 bytes) into it.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &mut req) })?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// The interface's index in this network namespace.
pub fn ifindex(iface: &str) -> io::Result<u32> {
    let name = CString::new(iface).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: a plain C string, alive for the call.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i)
}

pub fn interface_mac(iface: &str) -> io::Result<Mac> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
    arp::parse_mac(text.trim()).ok_or_else(|| io::Error::other(format!("bad MAC {text:?}")))
}

/// The interface's first IPv4 address (the sender address of our ARP requests).
pub fn interface_ipv4(iface: &str) -> Option<Ipv4Addr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned; it stays valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name from the kernel.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null; the family field is common to every sockaddr.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if name.to_bytes() == iface.as_bytes() && family == libc::AF_INET {
            // SAFETY: family AF_INET means the address is a sockaddr_in.
            let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
            found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            break;
        }
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_jumps_land_inside_the_program() {
        for n in 0..5 {
            let vips: Vec<Ipv4Addr> = (0..n).map(|i| Ipv4Addr::new(10, 200, 0, i)).collect();
            let p = bpf_program(&vips);
            assert_eq!(p.len(), 7 + n as usize);
            for (i, ins) in p.iter().enumerate().filter(|(_, ins)| ins.code == 0x15) {
                assert!(i + 1 + usize::from(ins.jt) < p.len());
                assert!(i + 1 + usize::from(ins.jf) < p.len());
            }
            // The last two are the returns: drop, then accept.
            assert_eq!(p[p.len() - 2].k, 0);
            assert!(p[p.len() - 1].k > 0);
        }
    }

    /// A ring over anonymous memory, filled by the test the way the kernel fills it.
    fn test_ring(blocks: usize) -> Ring {
        let block_size = 4096;
        let map_len = block_size * blocks;
        // SAFETY: an anonymous private mapping, unmapped by Ring's Drop.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        Ring {
            map: map.cast(),
            map_len,
            block_size,
            blocks,
            block: 0,
            held: false,
            left: 0,
            next: 0,
        }
    }

    fn put32(r: &Ring, off: usize, v: u32) {
        assert!(off + 4 <= r.map_len);
        // SAFETY: inside the mapping.
        unsafe { std::ptr::write_unaligned(r.map.add(off).cast::<u32>(), v) };
    }

    /// Writes a frame header at `at`: next offset, snaplen, len, mac offset; and the frame's
    /// first byte.
    fn put_frame(r: &Ring, at: usize, next: u32, snap: u32, len: u32, mac: u16, first: u8) {
        put32(r, at + FRAME_NEXT_AT, next);
        put32(r, at + FRAME_SNAPLEN_AT, snap);
        put32(r, at + FRAME_LEN_AT, len);
        // SAFETY: inside the mapping.
        unsafe {
            std::ptr::write_unaligned(r.map.add(at + FRAME_MAC_AT).cast::<u16>(), mac);
            *r.map.add(at + usize::from(mac)) = first;
        }
    }

    #[test]
    fn ring_reads_a_handed_over_block_and_gives_it_back() {
        let mut r = test_ring(2);
        assert!(!r.take(), "a kernel-owned block is not read");
        // Block 0: three frames, the second cut short by the kernel.
        put32(&r, BLOCK_NUM_PKTS_AT, 3);
        put32(&r, BLOCK_FIRST_AT, 64);
        put_frame(&r, 64, 256, 60, 60, 80, 1);
        put_frame(&r, 320, 256, 100, 1514, 80, 2);
        put_frame(&r, 576, 0, 60, 60, 80, 3);
        put32(&r, BLOCK_STATUS_AT, TP_STATUS_USER);
        assert!(r.take());
        let mut out = [NO_FRAME; 2];
        assert_eq!(r.read(&mut out), 2, "at most out.len() per read");
        // SAFETY: the frames point into the live mapping.
        let first = |f: &FrameRef| unsafe { *f.ptr.add(VNET_HDR) };
        assert_eq!(
            (first(&out[0]), out[0].len, out[0].truncated),
            (1, VNET_HDR + 60, false)
        );
        assert_eq!((first(&out[1]), out[1].truncated), (2, true));
        assert_eq!(r.read(&mut out), 1);
        assert_eq!(first(&out[0]), 3);
        assert_eq!(r.read(&mut out), 0);
        r.release();
        assert_eq!(r.u32_at(BLOCK_STATUS_AT), Some(TP_STATUS_KERNEL));
        assert_eq!(r.block, 1, "on to the next block");
        assert!(!r.take());
    }

    #[test]
    fn ring_offsets_outside_the_block_end_it_without_reading_there() {
        let mut r = test_ring(2);
        let mut out = [NO_FRAME; 8];
        // A frame running past the block's end, then a count that lies.
        put32(&r, BLOCK_NUM_PKTS_AT, 5);
        put32(&r, BLOCK_FIRST_AT, 64);
        put_frame(&r, 64, 128, 60, 60, 80, 1);
        put_frame(&r, 192, 4000, 4000, 4000, 80, 2);
        put32(&r, BLOCK_STATUS_AT, TP_STATUS_USER);
        assert!(r.take());
        assert_eq!(r.read(&mut out), 1, "the frame past the end is not read");
        assert_eq!(r.read(&mut out), 0);
        r.release();
        // Block 1: the first offset points outside the mapping; a mac offset too small to
        // leave room for the virtio-net header.
        let b1 = 4096;
        put32(&r, b1 + BLOCK_NUM_PKTS_AT, 2);
        put32(&r, b1 + BLOCK_FIRST_AT, 1 << 30);
        put32(&r, b1 + BLOCK_STATUS_AT, TP_STATUS_USER);
        assert!(r.take());
        assert_eq!(r.read(&mut out), 0);
        r.release();
        assert_eq!(r.block, 0, "the ring wraps");
        put32(&r, BLOCK_NUM_PKTS_AT, 1);
        put32(&r, BLOCK_FIRST_AT, 64);
        put_frame(&r, 64, 0, 60, 60, 4, 1);
        put32(&r, BLOCK_STATUS_AT, TP_STATUS_USER);
        assert!(r.take());
        assert_eq!(r.read(&mut out), 0);
    }

    #[test]
    fn loopback_has_an_address_and_a_mac() {
        assert_eq!(interface_ipv4("lo"), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(interface_mac("lo").ok(), Some([0; 6]));
        assert_eq!(interface_ipv4("no-such-if0"), None);
    }
}
