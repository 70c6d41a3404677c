//! The forwarder's side of the XDP fast path ([`super::xdp`]): which flows the program
//! forwards, and what it forwarded folded back into the engine and the metrics.
//!
//! User space stays the one place that decides. A frame the engine forwards (a new flow, or
//! one the program passed up) hands its flow to the program ([`FastPath::offer`]), whose next
//! frames then never leave the driver. The program's map is a cache of those decisions:
//!
//! - it is emptied whenever a decision may have changed: a new snapshot (a backend drained,
//!   disabled, removed or re-weighted; health), a backend MAC that moved, or this node
//!   stopping to forward, and refills from the next frame of each flow, which the engine
//!   places exactly as before (its flow table is untouched);
//! - every [`WALK_EVERY`] (or half the flow timeout) the flows the program forwarded are refreshed in the engine's table
//!   (and their clients' stick entries), so expiry, `portico_dsr_flows` and the periodic sync
//!   see them as if their frames had come up; flows idle past the flow timeout leave the map;
//! - every [`HARVEST_EVERY`] the program's per-gateway counters are added to
//!   `portico_dsr_packets_total` / `portico_dsr_bytes_total`.
//!
//! The program forwards only while the forwarder does (master, or the step-down grace).

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::engine::{Engine, Forwarded};
use super::metrics::DsrMetrics;
use super::packet::Mac;
use super::xdp::{self, AttachMode, FlowKey, FlowValue, GatewayStats, Xdp, XdpError};
use crate::snapshot::{BackendId, Snapshot};

/// Gateways the program counts for (service × backend pairs of one snapshot generation).
const MAX_GATEWAYS: u32 = 1024;
/// The program's counters are read this often.
const HARVEST_EVERY: Duration = Duration::from_millis(200);
/// The program's flows are walked this often (two syscalls per flow: kept rare), or twice per
/// flow timeout if that is shorter, so the engine never expires a flow the program still
/// forwards.
pub const WALK_EVERY: Duration = Duration::from_secs(10);

/// A gateway the program counts for: its `stats` index is its place in [`FastPath::slots`].
struct Slot {
    service: usize,
    backend: usize,
    id: BackendId,
    frames: prometheus::IntCounter,
    bytes: prometheus::IntCounter,
    /// The program's totals when last read.
    seen: GatewayStats,
}

pub struct FastPath {
    xdp: Xdp,
    mode: AttachMode,
    active: bool,
    /// What the map's entries were decided under.
    generation: Option<u64>,
    mac_changes: u64,
    slots: Vec<Slot>,
    idle: Duration,
    walk_every: Duration,
    next_harvest: Instant,
    next_walk: Instant,
    /// `xdp::monotonic_ns()` at the last walk: flows seen since are refreshed.
    walked_ns: u64,
    metrics: DsrMetrics,
    /// An error is logged once, then counted.
    logged: bool,
}

impl FastPath {
    /// Loads the program and attaches it to `iface` (inactive: it forwards nothing until
    /// [`FastPath::set_active`]), in native mode, or generic mode too if `generic`. It takes
    /// only frames sent to one of `macs` (the interface's, the VIPs' virtual MACs), as the
    /// user-space path does.
    pub fn open(
        iface: &str,
        generic: bool,
        macs: &[Mac],
        max_flows: usize,
        idle: Duration,
        metrics: DsrMetrics,
    ) -> Result<FastPath, XdpError> {
        let ifindex = super::forwarder::ifindex(iface)
            .map_err(|source| XdpError::Attach { ifindex: 0, source })?;
        let max_flows = u32::try_from(max_flows).unwrap_or(u32::MAX).max(1);
        let mut x = Xdp::load(max_flows, MAX_GATEWAYS)?;
        for mac in macs {
            x.accept_mac(*mac)?;
        }
        let mode = if generic {
            x.attach(ifindex)?
        } else {
            x.attach_native(ifindex)?
        };
        metrics
            .xdp_attached
            .with_label_values(&[mode.as_str()])
            .set(1);
        let now = Instant::now();
        let walk_every = WALK_EVERY.min(idle / 2).max(Duration::from_millis(100));
        Ok(FastPath {
            xdp: x,
            mode,
            active: false,
            generation: None,
            mac_changes: 0,
            slots: Vec::new(),
            idle,
            walk_every,
            next_harvest: now,
            next_walk: now + walk_every,
            walked_ns: xdp::monotonic_ns(),
            metrics,
            logged: false,
        })
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The program itself (tests run frames through it with [`Xdp::test_run`]).
    pub fn program(&self) -> &Xdp {
        &self.xdp
    }

    /// Forwards in the driver (`true`) or passes every frame up; stopping empties the map
    /// (the engine's own table is the forwarder's business).
    pub fn set_active(&mut self, active: bool) {
        if active == self.active {
            return;
        }
        if let Err(e) = self.xdp.set_active(active) {
            self.error("switching the program", &e);
            return;
        }
        self.active = active;
        if !active {
            self.harvest();
            self.clear();
        }
    }

    /// The engine just forwarded `frame`, of flow `f`: the program takes the flow's next
    /// frames. Only frames the program itself would forward are offered: a VLAN-tagged flow
    /// stays in user space, and re-inserting it with every frame would cost a syscall each.
    pub fn offer(&mut self, engine: &Engine, f: &Forwarded, frame: &[u8]) {
        if !self.active || frame.get(12..14) != Some(&[0x08, 0x00][..]) {
            return;
        }
        let Some(key) = FlowKey::from_tuple(&f.tuple) else {
            return;
        };
        let Some(gateway) = self.slot(engine, f) else {
            return;
        };
        let value = FlowValue {
            dst_mac: f.dst_mac,
            src_mac: f.src_mac,
            gateway,
            last_seen_ns: xdp::monotonic_ns(),
        };
        if let Err(e) = self.xdp.insert_flow(&key, &value) {
            self.error("inserting a flow", &e);
        }
    }

    /// Once per loop turn: empties the map when decisions may have changed, harvests the
    /// counters and walks the flows when due.
    pub fn tick(&mut self, engine: &mut Engine, snap: &Snapshot, now: Instant, now_ms: u64) {
        if engine.generation() != self.generation || engine.mac_changes() != self.mac_changes {
            self.harvest();
            self.clear();
            self.slots.clear();
            self.generation = engine.generation();
            self.mac_changes = engine.mac_changes();
        }
        if now >= self.next_harvest {
            self.next_harvest = now + HARVEST_EVERY;
            self.harvest();
        }
        if now >= self.next_walk {
            self.next_walk = now + self.walk_every;
            self.walk(engine, snap, now, now_ms);
        }
    }

    /// The `stats` index of `f`'s gateway, adding it if new.
    fn slot(&mut self, engine: &Engine, f: &Forwarded) -> Option<u32> {
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.service == f.service && s.backend == f.backend)
        {
            return u32::try_from(i).ok();
        }
        let i = u32::try_from(self.slots.len()).ok()?;
        if i >= MAX_GATEWAYS {
            return None;
        }
        let (frames, bytes) = engine.counters(f.service, f.backend)?;
        // A slot used before (an earlier generation) still holds its totals: start from them.
        let seen = match self.xdp.gateway_stats(i) {
            Ok(s) => s,
            Err(e) => {
                self.error("reading counters", &e);
                return None;
            }
        };
        self.slots.push(Slot {
            service: f.service,
            backend: f.backend,
            id: f.backend_id,
            frames,
            bytes,
            seen,
        });
        Some(i)
    }

    /// Adds what the program forwarded since the last read to the metrics.
    fn harvest(&mut self) {
        let mut failed = None;
        let mut total = 0u64;
        for (i, s) in self.slots.iter_mut().enumerate() {
            let Ok(i) = u32::try_from(i) else { break };
            match self.xdp.gateway_stats(i) {
                Ok(now) => {
                    let frames = now.packets.saturating_sub(s.seen.packets);
                    let bytes = now.bytes.saturating_sub(s.seen.bytes);
                    s.frames.inc_by(frames);
                    s.bytes.inc_by(bytes);
                    total += frames;
                    s.seen = now;
                }
                Err(e) => failed = Some(e),
            }
        }
        self.metrics.xdp_frames.inc_by(total);
        if let Some(e) = failed {
            self.error("reading counters", &e);
        }
    }

    /// Flows the program forwarded since the last walk are refreshed in the engine; flows
    /// idle past the flow timeout (or of a gateway no longer counted) leave the map.
    fn walk(&mut self, engine: &mut Engine, snap: &Snapshot, now: Instant, now_ms: u64) {
        let flows = match self.xdp.flows() {
            Ok(f) => f,
            Err(e) => {
                self.error("listing flows", &e);
                return;
            }
        };
        let now_ns = xdp::monotonic_ns();
        let idle_ns = u64::try_from(self.idle.as_nanos()).unwrap_or(u64::MAX);
        for (key, value) in flows {
            let slot = usize::try_from(value.gateway)
                .ok()
                .and_then(|g| self.slots.get(g));
            let stale = now_ns.saturating_sub(value.last_seen_ns) > idle_ns;
            match slot {
                Some(s) if !stale => {
                    if value.last_seen_ns > self.walked_ns {
                        engine.refresh(snap, s.service, &key.tuple(), s.id, now, now_ms);
                    }
                }
                _ => {
                    if let Err(e) = self.xdp.remove_flow(&key) {
                        self.error("removing a flow", &e);
                    }
                }
            }
        }
        self.walked_ns = now_ns;
    }

    /// Removes every flow from the program's map.
    fn clear(&mut self) {
        if let Err(e) = self.xdp.clear_flows() {
            self.error("emptying the flow map", &e);
        }
    }

    fn error(&mut self, what: &str, e: &XdpError) {
        self.metrics.xdp_errors.inc();
        if !self.logged {
            self.logged = true;
            warn!(error = %e, "dsr xdp: {what} failed (counted in portico_dsr_xdp_errors_total from now on)");
        }
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        // The link closes with `xdp`: the program leaves the interface.
        self.harvest();
        self.metrics
            .xdp_attached
            .with_label_values(&[self.mode.as_str()])
            .set(0);
        info!(mode = self.mode.as_str(), "dsr xdp: program detached");
    }
}
