//! The forwarding decision for one frame, apart from the socket (pure apart from reading the
//! snapshot and the shared stick table, which is what makes it testable without a network).
//!
//! Order for a VIP packet: the flow table (a flow stays on its backend while that backend
//! still serves pinned clients: up, and enabled or draining), then the affinity group's stick
//! table, then Maglev(client key) over the eligible backends ([`Choice::decide`] does both).
//! The destination MAC becomes the backend's, the source MAC ours; nothing else in the frame
//! changes, so the backend sees the client's address and port and replies to it directly.
//!
//! A VIP of a VRRP group answers ARP with the group's virtual MAC (RFC 5798 §7.3,
//! `00:00:5e:00:01:VRID`) rather than the interface's: the segment's ARP caches then hold the
//! same MAC whichever node is master, and frames for the VIP arrive addressed to a MAC that is
//! not the interface's own, so the kernel's copy of each one is dropped at the first look
//! (`PACKET_OTHERHOST`) instead of being routed, found unroutable and freed.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use prometheus::IntCounter;

use super::arp::{self, Op};
use super::flow::FlowTable;
use super::metrics::DsrMetrics;
use super::packet::{classify, rewrite_macs, Class, DropReason, FiveTuple, Mac, Target};
use super::sync::{SyncEntry, SyncError};
use crate::affinity::ClientKey;
use crate::snapshot::{BackendId, Choice, Snapshot};

/// ARP requests for one unresolved backend are sent at most this often.
const RESOLVE_EVERY_MS: u64 = 1000;
/// A flow refreshes its client's stick entry this often, so a client whose only traffic is one
/// long-lived flow does not lose its pin (and its next flow's backend) to the idle timeout.
const STICK_REFRESH_MS: u64 = 60_000;
/// Placed flows waiting for the sync sender at most; beyond, new ones are counted and dropped
/// (the sender drains the queue every loop turn, so only a stalled sender fills it).
const SYNC_QUEUE_MAX: usize = 16_384;
/// Known MACs are re-asked this often, so a replaced gateway NIC is noticed.
const REFRESH_EVERY_MS: u64 = 30_000;

/// What the caller does with the frame it passed to [`Engine::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the (rewritten) frame on the interface.
    Forward,
    /// Send the first `n` bytes of `out` (an ARP reply).
    Reply(usize),
    /// Not ours: leave it to the kernel.
    Pass,
    Drop(DropReason),
}

/// The frame [`Engine::handle`] forwarded last: its flow, where it went and with which MACs
/// (what the XDP fast path needs to forward the flow's next frames itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    pub tuple: FiveTuple,
    pub dst_mac: Mac,
    pub src_mac: Mac,
    /// Index into the engine's services.
    pub service: usize,
    /// The backend's index in its pool, valid for this snapshot generation.
    pub backend: usize,
    pub backend_id: BackendId,
}

struct Neighbour {
    ip: Ipv4Addr,
    mac: Option<Mac>,
    /// When we last asked (ms); 0 = never.
    asked_ms: u64,
    /// A frame was dropped for want of this MAC since we last asked.
    wanted: bool,
}

/// Per-service handles, resolved when the snapshot generation changes.
struct ServiceHandles {
    /// The service's index in the snapshot (so a frame does not search by name).
    index: usize,
    /// Indexed like the pool's backends: (packets, bytes).
    backends: Vec<(IntCounter, IntCounter)>,
}

pub struct Engine {
    targets: Vec<Target>,
    /// Service names, indexed by `Target::service`.
    services: Vec<Arc<str>>,
    our_mac: Mac,
    /// VIPs that answer with a MAC other than `our_mac` (a VRRP group's virtual MAC).
    vip_macs: Vec<(Ipv4Addr, Mac)>,
    our_ip: Option<Ipv4Addr>,
    flows: FlowTable,
    neighbours: Vec<Neighbour>,
    metrics: DsrMetrics,
    generation: Option<u64>,
    handles: Vec<Option<ServiceHandles>>,
    /// Flows placed since the sync sender last ran; `None` without sync.
    sync_out: Option<Vec<SyncEntry>>,
    /// Off while a node that stepped down still forwards what reaches it: the new master
    /// answers for the VIP, and a reply from here would pull the VIP's MAC back to this port.
    answer_arp: bool,
    last_forwarded: Option<Forwarded>,
    /// How often a known backend MAC changed to another (a replaced NIC, a moved address).
    mac_changes: u64,
}

impl Engine {
    pub fn new(
        targets: Vec<Target>,
        services: Vec<Arc<str>>,
        our_mac: Mac,
        our_ip: Option<Ipv4Addr>,
        flows: FlowTable,
        metrics: DsrMetrics,
    ) -> Engine {
        let handles = services.iter().map(|_| None).collect();
        Engine {
            targets,
            services,
            our_mac,
            vip_macs: Vec::new(),
            our_ip,
            flows,
            neighbours: Vec::new(),
            metrics,
            generation: None,
            handles,
            sync_out: None,
            answer_arp: true,
            last_forwarded: None,
            mac_changes: 0,
        }
    }

    /// Makes `vip` answer ARP and announce itself with `mac` (its VRRP group's virtual MAC)
    /// and accept frames sent to it; other VIPs keep the interface's MAC.
    pub fn set_vip_mac(&mut self, vip: Ipv4Addr, mac: Mac) {
        self.vip_macs.retain(|(v, _)| *v != vip);
        if mac != self.our_mac {
            self.vip_macs.push((vip, mac));
        }
    }

    /// The MAC `vip` answers with.
    pub fn vip_mac(&self, vip: Ipv4Addr) -> Mac {
        self.vip_macs
            .iter()
            .find(|(v, _)| *v == vip)
            .map_or(self.our_mac, |(_, m)| *m)
    }

    /// Whether a frame with destination `dst` was sent to this node (its own MAC, or a VIP's).
    fn sent_to_us(&self, dst: &[u8]) -> bool {
        dst == self.our_mac || self.vip_macs.iter().any(|(_, m)| dst == m)
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    /// Called once per batch: re-resolves counters and the neighbour list after a snapshot
    /// change (allocates, but only then).
    pub fn sync(&mut self, snap: &Snapshot) {
        if self.generation == Some(snap.generation) {
            return;
        }
        self.generation = Some(snap.generation);
        for (i, name) in self.services.iter().enumerate() {
            let index = snap.services.iter().position(|s| *s.name == **name);
            let h = index.and_then(|index| {
                let svc = snap.services.get(index)?;
                let pool = snap.pools.get(svc.pool)?;
                Some(ServiceHandles {
                    index,
                    backends: pool
                        .backends
                        .iter()
                        .map(|b| {
                            let l = [&**name, &*b.name];
                            (
                                self.metrics.packets.with_label_values(&l),
                                self.metrics.bytes.with_label_values(&l),
                            )
                        })
                        .collect(),
                })
            });
            if let Some(slot) = self.handles.get_mut(i) {
                *slot = h;
            }
        }
        let mut wanted: Vec<Ipv4Addr> = Vec::new();
        for (i, name) in self.services.iter().enumerate() {
            if let Some(pool) = snap
                .service(i, name)
                .and_then(|svc| snap.pools.get(svc.pool))
            {
                for b in &pool.backends {
                    if let IpAddr::V4(ip) = b.address {
                        if !wanted.contains(&ip) {
                            wanted.push(ip);
                        }
                    }
                }
            }
        }
        self.neighbours.retain(|n| wanted.contains(&n.ip));
        for ip in wanted {
            if !self.neighbours.iter().any(|n| n.ip == ip) {
                self.neighbours.push(Neighbour {
                    ip,
                    mac: None,
                    asked_ms: 0,
                    wanted: true,
                });
            }
        }
    }

    /// Learns from an ARP frame without answering it (a backup keeps its MACs warm).
    pub fn learn_from_arp(&mut self, frame: &[u8]) {
        if let Some(a) = arp::parse(frame) {
            if a.sender_ip != Ipv4Addr::UNSPECIFIED && a.sender_mac != [0; 6] {
                self.learn(a.sender_ip, a.sender_mac);
            }
        }
    }

    /// Records a backend's MAC (from an ARP packet or the kernel's table).
    pub fn learn(&mut self, ip: Ipv4Addr, mac: Mac) {
        if let Some(n) = self.neighbours.iter_mut().find(|n| n.ip == ip) {
            if n.mac.is_some_and(|old| old != mac) {
                self.mac_changes += 1;
            }
            n.mac = Some(mac);
            n.wanted = false;
        }
    }

    /// Changes of a known backend MAC so far: whoever copied MACs elsewhere (the XDP flow map)
    /// refreshes them when this moves.
    pub fn mac_changes(&self) -> u64 {
        self.mac_changes
    }

    /// The snapshot generation the engine last synced to.
    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// What the last frame [`Engine::handle`] forwarded was.
    pub fn last_forwarded(&self) -> Option<&Forwarded> {
        self.last_forwarded.as_ref()
    }

    /// The (frames, bytes) counters of a service's backend (pool index, this generation).
    pub fn counters(&self, service: usize, backend: usize) -> Option<(IntCounter, IntCounter)> {
        self.handles
            .get(service)
            .and_then(Option::as_ref)
            .and_then(|h| h.backends.get(backend))
            .cloned()
    }

    /// A flow the fast path forwarded to `backend` since it last looked: refreshed (or put
    /// back, if it expired here meanwhile) as if its frames had come through [`Engine::handle`],
    /// its client's stick entry included.
    pub fn refresh(
        &mut self,
        snap: &Snapshot,
        service: usize,
        tuple: &FiveTuple,
        backend: BackendId,
        now: Instant,
        now_ms: u64,
    ) {
        self.sync(snap);
        match self.flows.get(tuple, now_ms) {
            Some(id) if id == backend => {
                let svc = self
                    .handles
                    .get(service)
                    .and_then(Option::as_ref)
                    .and_then(|h| snap.services.get(h.index));
                if let Some(svc) = svc {
                    refresh_stick(&mut self.flows, svc, tuple, id, now, now_ms);
                }
            }
            // Placed elsewhere meanwhile (a synced entry): that placement stands.
            Some(_) => {}
            None => {
                self.flows.insert(*tuple, backend, now_ms);
            }
        }
    }

    pub fn neighbour(&self, ip: Ipv4Addr) -> Option<Mac> {
        self.neighbours
            .iter()
            .find(|n| n.ip == ip)
            .and_then(|n| n.mac)
    }

    /// Writes the ARP requests due now into `out` (one frame per call, `None` when none is
    /// due): unresolved backends someone wanted, at most once a second each, and known ones
    /// every [`REFRESH_EVERY_MS`].
    pub fn next_request(&mut self, out: &mut [u8], now_ms: u64) -> Option<usize> {
        let our_ip = self.our_ip?;
        let our_mac = self.our_mac;
        let n = self.neighbours.iter_mut().find(|n| {
            let since = now_ms.saturating_sub(n.asked_ms);
            match n.mac {
                None => (n.wanted || n.asked_ms == 0) && since >= RESOLVE_EVERY_MS,
                Some(_) => since >= REFRESH_EVERY_MS,
            }
        })?;
        n.asked_ms = now_ms.max(1);
        n.wanted = false;
        Some(arp::request(out, our_ip, our_mac, n.ip))
    }

    /// Writes a gratuitous ARP for the `i`th VIP into `out`; `None` past the last.
    pub fn announcement(&self, i: usize, out: &mut [u8]) -> Option<usize> {
        let mut vips: Vec<Ipv4Addr> = Vec::new();
        for t in &self.targets {
            if let IpAddr::V4(v) = t.vip {
                if !vips.contains(&v) {
                    vips.push(v);
                }
            }
        }
        let vip = vips.get(i)?;
        Some(arp::gratuitous(out, *vip, self.vip_mac(*vip)))
    }

    /// Whether ARP requests for a VIP are answered (they are unless this node stepped down).
    pub fn set_answer_arp(&mut self, on: bool) {
        self.answer_arp = on;
    }

    /// Queues every flow placed from now on for the sync peers ([`Engine::sync_queue`]).
    pub fn enable_sync(&mut self) {
        self.sync_out.get_or_insert_with(Vec::new);
    }

    /// The flows placed since the queue was last emptied (the caller sends and clears it).
    pub fn sync_queue(&mut self) -> Option<&mut Vec<SyncEntry>> {
        self.sync_out.as_mut()
    }

    /// Every flow seen at or after `since_ms`, as sync entries (the periodic full sync, so a
    /// peer that restarted or missed a datagram learns the flows that are still going).
    pub fn recent_flows(&mut self, snap: &Snapshot, since_ms: u64) -> Vec<SyncEntry> {
        self.sync(snap);
        let mut out = Vec::new();
        let (targets, handles) = (&self.targets, &self.handles);
        self.flows.for_each_recent(since_ms, |tuple, id| {
            let pool = pool_for(
                targets,
                handles,
                snap,
                tuple.dst,
                tuple.dst_port,
                tuple.protocol,
            );
            if let Some(b) = pool.and_then(|p| p.backends.get(p.index_of(id)?)) {
                out.extend(SyncEntry::new(tuple, b.address));
            }
        });
        out
    }

    /// Places a flow a peer reported: its gateway, found by address in the pool of the
    /// service it is for. False when this node has no such service or gateway (a config
    /// mismatch between the nodes, or a reload in between).
    pub fn apply_synced(&mut self, snap: &Snapshot, e: &SyncEntry, now_ms: u64) -> bool {
        self.sync(snap);
        let pool = pool_for(
            &self.targets,
            &self.handles,
            snap,
            IpAddr::V4(e.vip),
            e.vip_port,
            e.protocol,
        );
        let Some(b) = pool.and_then(|p| {
            p.backends
                .iter()
                .find(|b| b.address == IpAddr::V4(e.gateway))
        }) else {
            return false;
        };
        self.flows.insert(e.tuple(), b.id, now_ms);
        self.metrics.flows.set(self.flows.len() as i64);
        true
    }

    /// Empties the flow table: when this node stops forwarding, its flows go stale (the next
    /// master places new ones); what a peer syncs to it from then on is kept for its next term.
    pub fn reset_flows(&mut self) {
        self.flows.clear();
        self.metrics.flows.set(0);
    }

    /// Periodic work: expires flows and refreshes the flow gauge.
    pub fn housekeeping(&mut self, now_ms: u64) {
        self.flows.expire(now_ms);
        self.metrics.flows.set(self.flows.len() as i64);
    }

    /// Decides what to do with `frame` (rewriting it in place when it is forwarded).
    pub fn handle(
        &mut self,
        snap: &Snapshot,
        frame: &mut [u8],
        out: &mut [u8],
        now: Instant,
        now_ms: u64,
    ) -> Action {
        match classify(frame, &self.targets) {
            Class::NotForUs => {
                self.metrics.passed.inc();
                Action::Pass
            }
            Class::Arp => self.arp(frame, out),
            Class::Drop(reason) => self.drop(reason),
            Class::Forward { target, tuple } => {
                // Only frames sent to us: a broadcast or flooded frame for the VIP must not be
                // sent on again (that is how forwarding loops start).
                if !frame.get(..6).is_some_and(|dst| self.sent_to_us(dst)) {
                    self.metrics.passed.inc();
                    return Action::Pass;
                }
                let len = frame.len() as u64;
                match self.forward(snap, target, &tuple, now, now_ms) {
                    Ok((mac, service, backend, backend_id)) => {
                        rewrite_macs(frame, mac, self.our_mac);
                        self.last_forwarded = Some(Forwarded {
                            tuple,
                            dst_mac: mac,
                            src_mac: self.our_mac,
                            service,
                            backend,
                            backend_id,
                        });
                        if let Some((p, b)) = self
                            .handles
                            .get(service)
                            .and_then(Option::as_ref)
                            .and_then(|h| h.backends.get(backend))
                        {
                            p.inc();
                            b.inc_by(len);
                        }
                        Action::Forward
                    }
                    Err(reason) => self.drop(reason),
                }
            }
        }
    }

    fn drop(&self, reason: DropReason) -> Action {
        self.metrics.drop(reason);
        Action::Drop(reason)
    }

    fn arp(&mut self, frame: &[u8], out: &mut [u8]) -> Action {
        let Some(a) = arp::parse(frame) else {
            self.metrics.passed.inc();
            return Action::Pass;
        };
        // Any ARP packet from a backend tells us its MAC (replies to our requests, its own
        // requests, its announcements).
        if a.sender_ip != Ipv4Addr::UNSPECIFIED && a.sender_mac != [0; 6] {
            self.learn(a.sender_ip, a.sender_mac);
        }
        let for_vip = self
            .targets
            .iter()
            .any(|t| t.vip == IpAddr::V4(a.target_ip));
        // A gratuitous request (sender = target) is an announcement, not a question.
        if self.answer_arp && a.op == Op::Request && for_vip && a.sender_ip != a.target_ip {
            self.metrics.arp_replies.inc();
            return Action::Reply(arp::reply(out, &a, self.vip_mac(a.target_ip)));
        }
        Action::Pass
    }

    /// The backend's MAC, the service index, the backend's index in its pool and its id.
    fn forward(
        &mut self,
        snap: &Snapshot,
        target: usize,
        tuple: &FiveTuple,
        now: Instant,
        now_ms: u64,
    ) -> Result<(Mac, usize, usize, BackendId), DropReason> {
        let service = self
            .targets
            .get(target)
            .map(|t| t.service)
            .ok_or(DropReason::NoService)?;
        // `sync` ran for this snapshot: the index is the service's in `snap`.
        let svc = self
            .handles
            .get(service)
            .and_then(Option::as_ref)
            .and_then(|h| snap.services.get(h.index))
            .ok_or(DropReason::NoService)?;
        let pool = snap.pools.get(svc.pool).ok_or(DropReason::NoService)?;
        let mut chosen: Option<usize> = None;
        if let Some(id) = self.flows.get(tuple, now_ms) {
            match pool.index_of(id) {
                Some(i) if pool.backends.get(i).is_some_and(|b| b.serves_pinned()) => {
                    chosen = Some(i);
                    refresh_stick(&mut self.flows, svc, tuple, id, now, now_ms);
                }
                _ => self.flows.remove(tuple),
            }
        }
        let i = match chosen {
            Some(i) => i,
            None => {
                self.metrics.flow_misses.inc();
                let choice = Choice::decide(snap, svc, tuple.src, now);
                let i = choice.first.ok_or(DropReason::NoBackend)?;
                let id: BackendId = pool.backends.get(i).ok_or(DropReason::NoBackend)?.id;
                if !choice.pinned {
                    svc.group.table.insert(choice.key, id, now);
                }
                self.flows.insert(*tuple, id, now_ms);
                if let (Some(q), Some(b)) = (self.sync_out.as_mut(), pool.backends.get(i)) {
                    if q.len() < SYNC_QUEUE_MAX {
                        q.extend(SyncEntry::new(tuple, b.address));
                    } else {
                        self.metrics.sync_error(SyncError::Overflow, 1);
                    }
                }
                i
            }
        };
        let b = pool.backends.get(i).ok_or(DropReason::NoBackend)?;
        let IpAddr::V4(ip) = b.address else {
            return Err(DropReason::NoNeighbour);
        };
        match self.neighbours.iter_mut().find(|n| n.ip == ip) {
            Some(Neighbour { mac: Some(m), .. }) => Ok((*m, service, i, b.id)),
            Some(n) => {
                n.wanted = true;
                Err(DropReason::NoNeighbour)
            }
            None => Err(DropReason::NoNeighbour),
        }
    }
}

/// Refreshes the stick entry of a flow's client at most every [`STICK_REFRESH_MS`] per flow,
/// so a client whose only traffic is one long flow keeps its pin.
fn refresh_stick(
    flows: &mut FlowTable,
    svc: &crate::snapshot::ServiceView,
    tuple: &FiveTuple,
    id: BackendId,
    now: Instant,
    now_ms: u64,
) {
    if flows.stick_due(tuple, now_ms, STICK_REFRESH_MS) {
        let key = ClientKey::new(tuple.src, svc.group.spec);
        svc.group.table.insert(key, id, now);
    }
}

/// The pool of the service that serves `vip:port` over `protocol` in `snap` (the engine's
/// `handles` must have been synced to `snap`).
fn pool_for<'s>(
    targets: &[Target],
    handles: &[Option<ServiceHandles>],
    snap: &'s Snapshot,
    vip: IpAddr,
    port: u16,
    protocol: crate::config::Protocol,
) -> Option<&'s crate::snapshot::PoolView> {
    let t = targets
        .iter()
        .find(|t| t.vip == vip && t.port == port && t.protocol == protocol)?;
    let h = handles.get(t.service)?.as_ref()?;
    snap.pools.get(snap.services.get(h.index)?.pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;
    use crate::controller::Controller;
    use crate::dsr::packet::build::ipv4;
    use crate::metrics::Metrics;
    use crate::snapshot::AdminState;

    const US: Mac = [2, 0, 0, 0, 0, 1];
    const CLIENT_MAC: Mac = [2, 0, 0, 0, 0, 2];
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 100);

    const CONFIG: &str = r#"
[node]
name = "lb1"
interface = "eth0"

[[service]]
name = "tls"
listen = "10.200.0.100:443"
pool = "gw"
forwarding = "dsr"

[[service]]
name = "udp"
listen = "10.200.0.100:3391"
protocol = "udp"
pool = "gw"
forwarding = "dsr"

[pool.gw]
table_size = 251
backends = [
  { name = "gw1", address = "10.200.0.11" },
  { name = "gw2", address = "10.200.0.12" },
  { name = "gw3", address = "10.200.0.13" },
]
"#;

    fn mac_of(i: u8) -> Mac {
        [2, 0, 0, 0, 1, i]
    }

    fn setup() -> (Controller, Engine, Arc<Metrics>) {
        let config = crate::config::parse(CONFIG, std::path::Path::new("<test>")).unwrap();
        let metrics = Metrics::new();
        let dsr = DsrMetrics::register(&metrics.registry).unwrap();
        let controller = Controller::new(config, metrics.clone()).unwrap();
        let targets = vec![
            Target {
                vip: VIP.into(),
                port: 443,
                protocol: Protocol::Tcp,
                service: 0,
            },
            Target {
                vip: VIP.into(),
                port: 3391,
                protocol: Protocol::Udp,
                service: 1,
            },
        ];
        let mut e = Engine::new(
            targets,
            vec![Arc::from("tls"), Arc::from("udp")],
            US,
            Some(Ipv4Addr::new(10, 200, 0, 2)),
            FlowTable::new(1024, 60_000),
            dsr,
        );
        e.sync(&controller.snapshot().load());
        for i in 1..=3 {
            e.learn(Ipv4Addr::new(10, 200, 0, 10 + i), mac_of(i));
        }
        (controller, e, metrics)
    }

    fn client(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, 1, n)
    }

    /// Forwards one frame and returns the backend MAC it went to.
    fn send(
        c: &Controller,
        e: &mut Engine,
        src: Ipv4Addr,
        port: u16,
        proto: Protocol,
        dport: u16,
    ) -> Result<Mac, Action> {
        let mut f = ipv4(US, CLIENT_MAC, src, VIP, proto, port, dport, 20);
        let orig = f.clone();
        let mut out = [0u8; 128];
        let snap = c.snapshot().load_full();
        e.sync(&snap);
        match e.handle(&snap, &mut f, &mut out, Instant::now(), 1000) {
            Action::Forward => {
                assert_eq!(&f[6..12], &US);
                assert_eq!(&f[12..], &orig[12..], "only the MACs change");
                Ok(<[u8; 6]>::try_from(&f[..6]).unwrap())
            }
            other => Err(other),
        }
    }

    #[test]
    fn a_clients_tcp_and_udp_land_together_and_spread() {
        let (c, mut e, _) = setup();
        let mut seen = std::collections::HashSet::new();
        for n in 1..60 {
            let tcp = send(&c, &mut e, client(n), 40000, Protocol::Tcp, 443).unwrap();
            let tcp2 = send(&c, &mut e, client(n), 40001, Protocol::Tcp, 443).unwrap();
            let udp = send(&c, &mut e, client(n), 40002, Protocol::Udp, 3391).unwrap();
            assert_eq!(tcp, tcp2);
            assert_eq!(tcp, udp);
            seen.insert(tcp);
        }
        assert_eq!(seen.len(), 3, "Maglev spreads clients over every backend");
    }

    #[test]
    fn flows_are_counted_and_expire_after_their_idle_time() {
        let (c, mut e, _) = setup();
        for n in 1..5 {
            send(&c, &mut e, client(n), 40000, Protocol::Tcp, 443).unwrap();
        }
        e.housekeeping(2000);
        assert_eq!(e.flows().len(), 4);
        assert_eq!(e.metrics.flows.get(), 4);
        e.housekeeping(1000 + 60_001);
        assert_eq!(e.metrics.flows.get(), 0);
    }

    #[test]
    fn a_long_flow_keeps_its_client_pinned() {
        let (c, mut e, _) = setup();
        let snap = c.snapshot().load_full();
        let group = &snap.services[0].group;
        let key = ClientKey::new(IpAddr::V4(client(9)), group.spec);
        let mut f = ipv4(US, CLIENT_MAC, client(9), VIP, Protocol::Tcp, 7, 443, 0);
        let mut out = [0u8; 64];
        let t0 = Instant::now();
        assert_eq!(
            e.handle(&snap, &mut f.clone(), &mut out, t0, 1000),
            Action::Forward
        );
        assert!(
            group.table.get(&key, t0).is_some(),
            "a new flow pins its client"
        );
        group.table.remove(&key);
        assert_eq!(
            e.handle(&snap, &mut f.clone(), &mut out, t0, 2000),
            Action::Forward
        );
        assert!(
            group.table.get(&key, t0).is_none(),
            "not refreshed on every frame"
        );
        let later = t0 + std::time::Duration::from_secs(61);
        assert_eq!(
            e.handle(&snap, &mut f, &mut out, later, 62_000),
            Action::Forward
        );
        assert!(
            group.table.get(&key, later).is_some(),
            "refreshed by the long flow"
        );
    }

    #[test]
    fn same_choice_on_another_node_without_shared_state() {
        let (c1, mut e1, _) = setup();
        let (c2, mut e2, _) = setup();
        for n in 1..50 {
            let a = send(&c1, &mut e1, client(n), 40000, Protocol::Tcp, 443).unwrap();
            let b = send(&c2, &mut e2, client(n), 40000, Protocol::Tcp, 443).unwrap();
            assert_eq!(a, b, "node B places a mid-flow packet where node A did");
        }
    }

    #[test]
    fn drain_keeps_flows_disable_moves_them() {
        let (c, mut e, _) = setup();
        let first = send(&c, &mut e, client(7), 40000, Protocol::Tcp, 443).unwrap();
        let name = format!("gw{}", first[5]);
        c.set_admin(&name, AdminState::Drain).unwrap();
        assert_eq!(
            send(&c, &mut e, client(7), 40000, Protocol::Tcp, 443).unwrap(),
            first,
            "an existing flow stays on a draining backend"
        );
        assert_eq!(
            send(&c, &mut e, client(7), 40009, Protocol::Tcp, 443).unwrap(),
            first,
            "a pinned client's new flow stays on a draining backend"
        );
        // A client never seen goes elsewhere.
        for n in 100..140 {
            assert_ne!(
                send(&c, &mut e, client(n), 1, Protocol::Tcp, 443).unwrap(),
                first
            );
        }
        c.set_admin(&name, AdminState::Disabled).unwrap();
        let moved = send(&c, &mut e, client(7), 40000, Protocol::Tcp, 443).unwrap();
        assert_ne!(moved, first, "a disabled backend gets nothing");
    }

    #[test]
    fn unknown_mac_drops_and_asks() {
        let (c, _, metrics) = setup();
        let targets = vec![Target {
            vip: VIP.into(),
            port: 443,
            protocol: Protocol::Tcp,
            service: 0,
        }];
        let dsr = DsrMetrics::register(&prometheus::Registry::new()).unwrap();
        let mut e = Engine::new(
            targets,
            vec![Arc::from("tls")],
            US,
            Some(Ipv4Addr::new(10, 200, 0, 2)),
            FlowTable::new(64, 1000),
            dsr.clone(),
        );
        let r = send(&c, &mut e, client(1), 1, Protocol::Tcp, 443);
        assert_eq!(r, Err(Action::Drop(DropReason::NoNeighbour)));
        assert_eq!(dsr.drops[DropReason::NoNeighbour.index()].get(), 1);
        let mut out = [0u8; 64];
        let mut asked = Vec::new();
        while let Some(n) = e.next_request(&mut out, 5000) {
            asked.push(arp::parse(&out[..n]).unwrap().target_ip);
        }
        assert_eq!(asked.len(), 3);
        assert_eq!(e.next_request(&mut out, 5500), None, "rate limited");
        drop(metrics);
    }

    #[test]
    fn arp_for_the_vip_is_answered_others_not() {
        let (c, mut e, _) = setup();
        let snap = c.snapshot().load_full();
        let mut buf = [0u8; 64];
        let n = arp::request(&mut buf, client(1), CLIENT_MAC, VIP);
        let mut out = [0u8; 64];
        let a = e.handle(&snap, &mut buf[..n], &mut out, Instant::now(), 1);
        let Action::Reply(m) = a else { panic!("{a:?}") };
        let r = arp::parse(&out[..m]).unwrap();
        assert_eq!((r.sender_ip, r.sender_mac), (VIP, US));
        let n = arp::request(&mut buf, client(1), CLIENT_MAC, client(2));
        assert_eq!(
            e.handle(&snap, &mut buf[..n], &mut out, Instant::now(), 1),
            Action::Pass
        );
        // A gratuitous announcement from a gateway teaches its MAC.
        let n = arp::gratuitous(&mut buf, Ipv4Addr::new(10, 200, 0, 12), [7; 6]);
        e.handle(&snap, &mut buf[..n], &mut out, Instant::now(), 1);
        assert_eq!(e.neighbour(Ipv4Addr::new(10, 200, 0, 12)), Some([7; 6]));
    }

    #[test]
    fn a_vrrp_vip_answers_and_announces_with_its_virtual_mac_and_takes_frames_sent_to_it() {
        let (c, mut e, _) = setup();
        let vmac = crate::dsr::packet::vrrp_virtual_mac(51);
        assert_eq!(vmac, [0x00, 0x00, 0x5e, 0x00, 0x01, 51]);
        e.set_vip_mac(VIP, vmac);
        let snap = c.snapshot().load_full();
        let mut buf = [0u8; 64];
        let mut out = [0u8; 64];
        let n = arp::request(&mut buf, client(1), CLIENT_MAC, VIP);
        let Action::Reply(m) = e.handle(&snap, &mut buf[..n], &mut out, Instant::now(), 1) else {
            panic!("no ARP reply for the VIP");
        };
        let r = arp::parse(&out[..m]).unwrap();
        assert_eq!((r.sender_ip, r.sender_mac), (VIP, vmac));
        assert_eq!(
            &out[6..12],
            &vmac,
            "sent from the virtual MAC, so switches learn its port"
        );
        let m = e.announcement(0, &mut out).unwrap();
        let g = arp::parse(&out[..m]).unwrap();
        assert_eq!((g.sender_ip, g.target_ip, g.sender_mac), (VIP, VIP, vmac));

        // Frames to the virtual MAC and (stale caches) to the interface's own are forwarded,
        // with the interface's MAC as source; frames to any other MAC are not.
        for dst in [vmac, US] {
            let mut f = ipv4(dst, CLIENT_MAC, client(1), VIP, Protocol::Tcp, 1, 443, 0);
            assert_eq!(
                e.handle(&snap, &mut f, &mut out, Instant::now(), 1),
                Action::Forward
            );
            assert_eq!(&f[6..12], &US);
        }
        let mut f = ipv4(
            crate::dsr::packet::vrrp_virtual_mac(52),
            CLIENT_MAC,
            client(1),
            VIP,
            Protocol::Tcp,
            1,
            443,
            0,
        );
        assert_eq!(
            e.handle(&snap, &mut f, &mut out, Instant::now(), 1),
            Action::Pass
        );
    }

    #[test]
    fn placed_flows_are_queued_for_sync_and_applied_by_a_peer() {
        let (c, mut a, _) = setup();
        a.enable_sync();
        let gw = send(&c, &mut a, client(7), 40000, Protocol::Tcp, 443).unwrap();
        send(&c, &mut a, client(7), 40000, Protocol::Tcp, 443).unwrap();
        let queued: Vec<SyncEntry> = a.sync_queue().unwrap().drain(..).collect();
        assert_eq!(queued.len(), 1, "a flow is queued once, when it is placed");
        let e = queued[0];
        assert_eq!(
            (e.client, e.client_port, e.vip, e.vip_port),
            (client(7), 40000, VIP, 443)
        );
        let snap = c.snapshot().load_full();
        assert_eq!(
            a.recent_flows(&snap, 0),
            queued,
            "the full sync names the same flow"
        );
        assert!(a.recent_flows(&snap, 5000).is_empty(), "not seen since 5 s");

        // The peer, told the flow is on another gateway than its own choice, follows the sync.
        let (_, mut b, _) = setup();
        let other = (1..=3u8)
            .map(|i| Ipv4Addr::new(10, 200, 0, 10 + i))
            .find(|ip| b.neighbour(*ip) != Some(gw))
            .unwrap();
        let moved = SyncEntry {
            gateway: other,
            ..e
        };
        assert!(b.apply_synced(&snap, &moved, 1000));
        let landed = send(&c, &mut b, client(7), 40000, Protocol::Tcp, 443).unwrap();
        assert_eq!(
            Some(landed),
            b.neighbour(other),
            "the synced flow wins over Maglev"
        );
        let unknown = SyncEntry {
            vip_port: 8443,
            ..e
        };
        assert!(
            !b.apply_synced(&snap, &unknown, 1000),
            "no such service here"
        );
    }

    #[test]
    fn broadcast_vip_frames_are_not_forwarded() {
        let (c, mut e, _) = setup();
        let snap = c.snapshot().load_full();
        let mut f = ipv4(
            [0xff; 6],
            CLIENT_MAC,
            client(1),
            VIP,
            Protocol::Tcp,
            1,
            443,
            0,
        );
        let mut out = [0u8; 64];
        assert_eq!(
            e.handle(&snap, &mut f, &mut out, Instant::now(), 1),
            Action::Pass
        );
    }
}
