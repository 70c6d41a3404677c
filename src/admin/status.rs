//! `status`: what the node does right now, read from the snapshot, the metric handles the
//! data plane increments, the stick tables and the health tasks' notes.

use std::collections::HashMap;

use super::proto::{BackendStatus, DsrForwarderStatus, ProbeStatus, ServiceStatus, Status};
use crate::daemon::Node;
use crate::snapshot::{BackendId, HealthState, Snapshot};

pub fn build(node: &Node) -> Status {
    let ctl = &node.controller;
    let config = ctl.config();
    let snap = ctl.snapshot().load_full();
    let listeners = node.listeners();
    let services = snap
        .services
        .iter()
        .map(|s| ServiceStatus {
            name: s.name.to_string(),
            protocol: s.protocol.as_str().to_string(),
            listen: s.listen.to_string(),
            bound: listeners
                .iter()
                .find(|l| l.name == *s.name)
                .map(|l| l.addr.to_string()),
            forwarding: config
                .services
                .iter()
                .find(|c| c.name == *s.name)
                .map(|c| c.forwarding.as_str().to_string())
                .unwrap_or_default(),
            pool: snap
                .pools
                .get(s.pool)
                .map(|p| p.name.to_string())
                .unwrap_or_default(),
            active_connections: s.counters.active.get(),
            udp_flows: s.counters.udp_flows_active.get(),
        })
        .collect();
    let pinned = pinned_counts(&snap);
    let mut backends = Vec::new();
    for (pi, pool) in snap.pools.iter().enumerate() {
        for (bi, b) in pool.backends.iter().enumerate() {
            let (active, total, flows) = counters(&snap, pi, bi);
            let note = ctl.probe_note(&pool.name, &b.name);
            backends.push(BackendStatus {
                pool: pool.name.to_string(),
                name: b.name.to_string(),
                address: match b.port {
                    Some(p) => std::net::SocketAddr::new(b.address, p).to_string(),
                    None => b.address.to_string(),
                },
                admin: b.admin.as_str().to_string(),
                health: match b.health {
                    HealthState::Up => "up",
                    HealthState::Down => "down",
                }
                .to_string(),
                reason: note.as_ref().and_then(|n| n.reason.clone()),
                active_connections: active,
                connections_total: total,
                udp_flows_total: flows,
                affinity_entries: pinned.get(&b.id).copied().unwrap_or(0),
                last_probe: note.as_ref().and_then(|n| {
                    n.last.map(|(check, verdict, at)| ProbeStatus {
                        check: check.to_string(),
                        verdict: verdict.to_string(),
                        detail: n.detail.clone(),
                        age_s: at.elapsed().as_secs_f64(),
                    })
                }),
            });
        }
    }
    Status {
        node: config.node.name.clone(),
        config: config.source.display().to_string(),
        generation: snap.generation,
        uptime_s: node.started.elapsed().as_secs_f64(),
        vrrp: super::vrrp::call(node, None).ok(),
        services,
        backends,
        dsr: node.dsr.get().map(|d| DsrForwarderStatus {
            active: d.active.load(std::sync::atomic::Ordering::Acquire),
            flows: d.flows.get(),
            xdp: d.xdp.map(|m| m.as_str().to_owned()),
        }),
    }
}

/// (open connections, connections since start, UDP flows since start) of backend `bi` of
/// pool `pi`, summed over the services of that pool.
fn counters(snap: &Snapshot, pi: usize, bi: usize) -> (i64, u64, u64) {
    let mut out = (0, 0, 0);
    for s in snap.services.iter().filter(|s| s.pool == pi) {
        if let Some(c) = s.backend_counters.get(bi) {
            out.0 += c.active.get();
            out.1 += c.connections.get();
            out.2 += c.udp_flows.get();
        }
    }
    out
}

/// Stick entries per backend, over every distinct affinity group.
fn pinned_counts(snap: &Snapshot) -> HashMap<BackendId, usize> {
    let mut seen: Vec<&str> = Vec::new();
    let mut out = HashMap::new();
    for s in &snap.services {
        if seen.contains(&&*s.group.name) {
            continue;
        }
        seen.push(&s.group.name);
        s.group
            .table
            .for_each_value(|id| *out.entry(*id).or_insert(0) += 1);
    }
    out
}

/// (open connections, pinned clients) of every backend named `name`, over all pools.
pub fn backend_counts(node: &Node, name: &str) -> (i64, usize) {
    let snap = node.controller.snapshot().load_full();
    let pinned = pinned_counts(&snap);
    let mut out = (0, 0);
    for (pi, pool) in snap.pools.iter().enumerate() {
        for (bi, b) in pool.backends.iter().enumerate() {
            if &*b.name == name {
                out.0 += counters(&snap, pi, bi).0;
                out.1 += pinned.get(&b.id).copied().unwrap_or(0);
            }
        }
    }
    out
}

/// The admin state of the first backend named `name`.
pub fn admin_of(node: &Node, name: &str) -> Option<&'static str> {
    let snap = node.controller.snapshot().load_full();
    snap.pools
        .iter()
        .flat_map(|p| p.backends.iter())
        .find(|b| &*b.name == name)
        .map(|b| b.admin.as_str())
}
