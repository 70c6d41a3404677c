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
use std::net::{IpAddr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
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
use super::packet::{self, Advert, ChecksumCompat, Family, RxError, MULTICAST_V4, MULTICAST_V6};
use crate::config::{Announce, Config, IpPrefix, VipMode};
use crate::controller::Controller;
use crate::metrics::Metrics;
use crate::sockopt;
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
    /// Addresses the adverts carry but the master does not add to the interface: the VIPs
    /// of `forwarding = "dsr"` services, which the dsr forwarder answers ARP for itself (a
    /// local VIP would make the kernel take the traffic meant for the gateways).
    pub not_local: Vec<std::net::IpAddr>,
    pub label: String,
    pub announce: Announce,
    pub track_penalty: u8,
    /// Pools whose emptiness (no eligible backend) lowers the priority.
    pub tracked_pools: Vec<String>,
}

impl Spec {
    /// IPv4 if the group has an IPv4 VIP (IPv6 VIPs then move with it), else IPv6: one VRRP
    /// instance per family, as RFC 5798 has it.
    pub fn family(&self) -> Family {
        if self.addresses.iter().any(|p| p.addr.is_ipv4()) {
            Family::V4
        } else {
            Family::V6
        }
    }

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
            not_local: config
                .services
                .iter()
                .filter(|s| s.forwarding == crate::config::Forwarding::Dsr)
                .map(|s| s.listen.ip())
                .collect(),
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

    /// Waits for the next status change; false once the instance has ended.
    pub async fn changed(&mut self) -> bool {
        self.status.changed().await.is_ok()
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
            s.addresses
                .iter()
                .filter(|p| !s.not_local.contains(&p.addr))
                .copied()
                .collect(),
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
    let (v4, v6) = crate::vip::netlink::primaries(&found, &all_vips);
    let mut handles = Vec::new();
    let mut pending: Vec<(Spec, Vips)> = specs.into_iter().zip(vips).collect();
    for family in [Family::V4, Family::V6] {
        let (mine, rest): (Vec<_>, Vec<_>) =
            pending.into_iter().partition(|(s, _)| s.family() == family);
        pending = rest;
        if mine.is_empty() {
            continue;
        }
        let primary: IpAddr = match family {
            Family::V4 => IpAddr::V4(v4.ok_or_else(|| {
                anyhow::anyhow!(
                    "{interface} has no IPv4 address of its own: IPv4 VRRP adverts need one as their source"
                )
            })?),
            Family::V6 => IpAddr::V6(v6.ok_or_else(|| {
                anyhow::anyhow!(
                    "{interface} has no IPv6 link-local address: IPv6 VRRP adverts are sent from it"
                )
            })?),
        };
        let sender = Arc::new(
            open_sender(&interface, primary, link.index)
                .with_context(|| format!("VRRP send socket on {interface}"))?,
        );
        let receiver = open_receiver(&interface, family, link.index)
            .with_context(|| format!("VRRP receive socket on {interface} (needs CAP_NET_RAW)"))?;
        let mut inboxes = HashMap::new();
        for (spec, vips) in mine {
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
                        .filter(|a| Family::of(*a) == family)
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
                link.index,
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
            receive(
                receiver,
                family,
                primary,
                inboxes,
                metrics.clone(),
                stop.clone(),
            )
            .instrument(tracing::info_span!("vrrp.receive", interface = %interface)),
        );
        info!(interface = %interface, source = %primary, "VRRP started");
    }
    Ok(handles)
}

fn raw(domain: Domain) -> std::io::Result<Socket> {
    Socket::new(
        domain,
        Type::RAW,
        Some(Protocol::from(i32::from(packet::IP_PROTO))),
    )
}

fn open_sender(interface: &str, primary: IpAddr, index: u32) -> std::io::Result<Socket> {
    let s = match primary {
        IpAddr::V4(primary) => {
            let s = raw(Domain::IPV4)?;
            s.bind_device(Some(interface.as_bytes()))?;
            s.bind(&SockAddr::from(SocketAddrV4::new(primary, 0)))?;
            s.set_multicast_if_v4(&primary)?;
            s.set_multicast_ttl_v4(u32::from(packet::TTL))?;
            s.set_ttl_v4(u32::from(packet::TTL))?;
            s.set_multicast_loop_v4(false)?;
            s.set_tos_v4(TOS)?;
            s
        }
        IpAddr::V6(_) => {
            let s = raw(Domain::IPV6)?;
            s.bind_device(Some(interface.as_bytes()))?;
            s.set_multicast_if_v6(index)?;
            s.set_multicast_hops_v6(u32::from(packet::TTL))?;
            s.set_unicast_hops_v6(u32::from(packet::TTL))?;
            s.set_multicast_loop_v6(false)?;
            // The kernel fills the checksum at offset 6 with the pseudo-header of the source it
            // really uses (keepalived does the same), so a source chosen by the kernel can never
            // disagree with the one we summed.
            sockopt::set(
                &s,
                libc::IPPROTO_IPV6,
                libc::IPV6_CHECKSUM,
                &6 as &libc::c_int,
            )?;
            s
        }
    };
    // This socket only sees what the receive socket sees as well: keep its buffer minimal.
    s.set_recv_buffer_size(1)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn open_receiver(interface: &str, family: Family, index: u32) -> std::io::Result<Socket> {
    let s = match family {
        Family::V4 => {
            let s = raw(Domain::IPV4)?;
            s.bind_device(Some(interface.as_bytes()))?;
            s.join_multicast_v4_n(&MULTICAST_V4, &InterfaceIndexOrAddress::Index(index))?;
            s
        }
        Family::V6 => {
            let s = raw(Domain::IPV6)?;
            s.bind_device(Some(interface.as_bytes()))?;
            s.join_multicast_v6(&MULTICAST_V6, index)?;
            // IPv6 raw sockets hand over no header: ask for hop limit and destination.
            sockopt::set(
                &s,
                libc::IPPROTO_IPV6,
                libc::IPV6_RECVHOPLIMIT,
                &1 as &libc::c_int,
            )?;
            sockopt::set(
                &s,
                libc::IPPROTO_IPV6,
                libc::IPV6_RECVPKTINFO,
                &1 as &libc::c_int,
            )?;
            s
        }
    };
    s.set_nonblocking(true)?;
    Ok(s)
}

struct Inbox {
    tx: mpsc::Sender<Event>,
    peers: Vec<IpAddr>,
    compat: ChecksumCompat,
    addresses: Vec<IpAddr>,
}

/// What the IP layer says about one received advert.
#[derive(Debug, Clone, Copy)]
struct Received {
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
}

/// One datagram from the IPv6 receive socket: payload length, and the header facts from
/// `msg_name` and the IPV6_HOPLIMIT / IPV6_PKTINFO control messages.
fn recv_v6(fd: i32, buf: &mut [u8]) -> std::io::Result<(usize, Option<Received>)> {
    // SAFETY: all-zero is valid for these plain C structs.
    let mut name: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 32];
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = std::ptr::addr_of_mut!(name).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` refers to a live local buffer of the stated size.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut ttl = None;
    let mut dst = None;
    // SAFETY: the CMSG_* walk stays within `control` as filled in by the kernel
    // (msg_controllen); reads are unaligned-safe copies of the kernel's structs.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_HOPLIMIT {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                ttl = u8::try_from(v).ok();
            } else if h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_PKTINFO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in6_pktinfo);
                dst = Some(Ipv6Addr::from(v.ipi6_addr.s6_addr));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let src = Ipv6Addr::from(name.sin6_addr.s6_addr);
    let rx = match (ttl, dst) {
        (Some(ttl), Some(dst)) => Some(Received {
            src: IpAddr::V6(src),
            dst: IpAddr::V6(dst),
            ttl,
        }),
        _ => None,
    };
    Ok((n as usize, rx))
}

/// Reads, validates and dispatches adverts until `stop`.
async fn receive(
    socket: Socket,
    family: Family,
    primary: IpAddr,
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
        let (n, v6) = tokio::select! {
            _ = stop.cancelled() => return,
            r = fd.readable() => {
                let mut guard = match r {
                    Ok(g) => g,
                    Err(error) => {
                        error!(%error, "VRRP receive socket failed");
                        return;
                    }
                };
                let read = guard.try_io(|s| match family {
                    Family::V4 => s.get_ref().read(&mut buf).map(|n| (n, None)),
                    Family::V6 => recv_v6(s.get_ref().as_raw_fd(), &mut buf),
                });
                match read {
                    Ok(Ok(r)) => r,
                    Ok(Err(error)) => {
                        warn!(%error, "VRRP receive error");
                        continue;
                    }
                    Err(_would_block) => continue,
                }
            }
        };
        let Some(pkt) = buf.get(..n) else { continue };
        let verdict = match family {
            Family::V4 => packet::split_ipv4(pkt).and_then(|(h, payload)| {
                let rx = Received {
                    src: IpAddr::V4(h.src),
                    dst: IpAddr::V4(h.dst),
                    ttl: h.ttl,
                };
                check(payload, rx, primary, &inboxes)
            }),
            Family::V6 => match v6 {
                Some(rx) => check(pkt, rx, primary, &inboxes),
                None => Err(RxError::IpHeader),
            },
        };
        match verdict {
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

/// Validates one received advert. `Ok(None)`: ours or not for us (silently ignored).
fn check(
    payload: &[u8],
    rx: Received,
    primary: IpAddr,
    inboxes: &HashMap<u8, Inbox>,
) -> Result<Option<(u8, Event, bool)>, RxError> {
    if rx.src == primary {
        return Ok(None);
    }
    let multicast = rx.dst == IpAddr::V4(MULTICAST_V4) || rx.dst == IpAddr::V6(MULTICAST_V6);
    if !multicast && rx.dst != primary {
        return Ok(None);
    }
    if multicast && rx.ttl != packet::TTL {
        return Err(RxError::Ttl);
    }
    // The codec checks need the instance's checksum compat; VRID is byte 1 of the payload.
    let vrid = *payload.get(1).ok_or(RxError::Truncated)?;
    let compat = inboxes.get(&vrid).map(|i| i.compat).unwrap_or_default();
    let advert = packet::parse(payload, rx.src, rx.dst, compat)?;
    let inbox = inboxes.get(&advert.vrid).ok_or(RxError::UnknownVrid)?;
    if !inbox.peers.is_empty() {
        if !inbox.peers.contains(&rx.src) {
            return Err(RxError::NotPeer);
        }
    } else if rx.ttl != packet::TTL {
        return Err(RxError::Ttl);
    }
    let differs = !advert.same_addresses(&inbox.addresses);
    Ok(Some((
        advert.vrid,
        Event::Advert {
            priority: advert.priority,
            interval_cs: advert.interval_cs,
            src: rx.src,
        },
        differs,
    )))
}

struct Instance {
    spec: Spec,
    primary: IpAddr,
    /// Scope of IPv6 link-local destinations.
    ifindex: u32,
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
    #[allow(clippy::too_many_arguments)]
    fn new(
        spec: Spec,
        primary: IpAddr,
        ifindex: u32,
        vips: Vips,
        sender: Arc<Socket>,
        controller: Arc<Controller>,
        metrics: Arc<Metrics>,
        status: watch::Sender<Status>,
    ) -> Instance {
        let machine = Machine::new(Params {
            primary,
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
                .filter(|a| Family::of(*a) == Family::of(primary))
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
            ifindex,
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
        let src = self.primary;
        for i in 0..self.spec.unicast_peers.len().max(1) {
            let dst = match (self.spec.unicast_peers.get(i), src) {
                (Some(peer), _) => *peer,
                (None, IpAddr::V4(_)) => IpAddr::V4(MULTICAST_V4),
                (None, IpAddr::V6(_)) => IpAddr::V6(MULTICAST_V6),
            };
            self.advert.encode(src, dst, &mut self.buf);
            let to = match dst {
                IpAddr::V4(d) => SockAddr::from(SocketAddrV4::new(d, 0)),
                IpAddr::V6(d) => SockAddr::from(SocketAddrV6::new(d, 0, 0, self.ifindex)),
            };
            match self.sender.send_to(&self.buf, &to) {
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
