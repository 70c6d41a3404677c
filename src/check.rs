//! What `portico check` prints: the effective plan a config describes, with every default
//! filled in and each backend's real Maglev share, so an operator sees what will happen before
//! it happens.

use std::fmt::Write as _;

use crate::config::{CheckKind, Config, DsrXdp, Forwarding, Protocol, VipMode};
use crate::maglev::Maglev;

pub fn render_plan(c: &Config) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "config {}: OK", c.source.display());
    let _ = writeln!(
        o,
        "node {} (interface {})",
        c.node.name,
        c.node.interface.as_deref().unwrap_or("-")
    );
    if c.vip.is_none() {
        let _ = writeln!(o, "vip: none (Portico does not own an address)");
    }
    for v in c.vip_groups() {
        {
            let addrs: Vec<String> = v
                .addresses
                .iter()
                .map(|a| format!("{}/{}", a.addr, a.len))
                .collect();
            match &v.mode {
                VipMode::Standalone => {
                    let _ = writeln!(o, "vip {} standalone", addrs.join(", "));
                }
                VipMode::Vrrp(r) => {
                    let _ = writeln!(
                        o,
                        "vip {} vrrp vrid {} priority {} advert {} ms preempt {} peers {}",
                        addrs.join(", "),
                        r.vrid,
                        r.priority,
                        r.advert_interval.as_millis(),
                        r.preempt,
                        if r.unicast_peers.is_empty() {
                            "multicast".to_string()
                        } else {
                            r.unicast_peers
                                .iter()
                                .map(|p| p.to_string())
                                .collect::<Vec<_>>()
                                .join(",")
                        }
                    );
                }
            }
        }
    }
    for s in &c.services {
        let _ = writeln!(
            o,
            "service {} {} {} -> pool {} port {} | affinity group {} /{} /{} idle {}s | idle {}s{}",
            s.name,
            s.protocol.as_str(),
            s.listen,
            s.pool,
            s.backend_port,
            s.affinity.group,
            s.affinity.ipv4_prefix,
            s.affinity.ipv6_prefix,
            s.affinity.idle_timeout.as_secs(),
            s.idle_timeout.as_secs(),
            match s.protocol {
                // Frames are forwarded, not connections opened: only the flow table matters.
                _ if s.forwarding == crate::config::Forwarding::Dsr => {
                    format!(
                        " | forwarding dsr, flow table {}, ARP answered with {}",
                        s.max_flows,
                        dsr_vip_mac(c, s.listen.ip())
                    )
                }
                Protocol::Tcp => format!(
                    " | connect {} ms x{}",
                    s.connect_timeout.as_millis(),
                    s.connect_attempts
                ),
                Protocol::Udp => format!(" | max flows {}", s.max_flows),
            }
        );
    }
    for p in &c.pools {
        let h = &p.health;
        let checks: Vec<&str> = h
            .checks
            .iter()
            .map(|k| match k {
                CheckKind::Tcp => "tcp",
                CheckKind::Tls => "tls",
                CheckKind::RdgToken => "rdg-token",
            })
            .collect();
        let _ = writeln!(
            o,
            "pool {}: {} backends, table {} | health [{}] every {} ms, timeout {} ms, rise {} fall {}{}",
            p.name,
            p.backends.len(),
            p.table_size,
            checks.join(","),
            h.interval.as_millis(),
            h.timeout.as_millis(),
            h.rise,
            h.fall,
            if h.passive { ", passive" } else { "" }
        );
        // Check tiers with their own interval (only when one differs from `interval_ms`).
        if h.checks.iter().any(|k| h.intervals.of(*k) != h.interval) {
            let tiers: Vec<String> = h
                .checks
                .iter()
                .map(|k| {
                    format!(
                        "{} every {} ms",
                        crate::health::probe::check_label(*k),
                        h.intervals.of(*k).as_millis()
                    )
                })
                .collect();
            let _ = writeln!(o, "  health tiers: {}", tiers.join(", "));
        }
        let shares = Maglev::build(
            p.backends.iter().map(|b| (b.name.as_str(), b.weight.get())),
            p.table_size,
        )
        .map(|m| m.shares())
        .ok();
        for (i, b) in p.backends.iter().enumerate() {
            let share = shares
                .as_ref()
                .and_then(|s| s.get(i))
                .map(|&n| format!("{:.1}%", 100.0 * f64::from(n) / f64::from(p.table_size)))
                .unwrap_or_else(|| "-".into());
            let port = b
                .port
                .map(|p| p.to_string())
                .unwrap_or_else(|| "(service port)".into());
            let _ = writeln!(
                o,
                "  backend {:<12} {}:{} weight {} share {}",
                b.name, b.address, port, b.weight, share
            );
        }
    }
    if let Some(d) = &c.dns {
        let l: Vec<String> = d.listen.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(o, "dns zone {} ttl {} on {}", d.zone, d.ttl, l.join(", "));
        if let Some(spec) = crate::dns::ZoneSpec::from_config(c) {
            let addrs: Vec<String> = spec
                .alias_targets
                .iter()
                .map(|t| format!("{} ({})", t.addr, t.services.join(", ")))
                .collect();
            let _ = writeln!(o, "  alias {} -> {}", spec.alias, addrs.join(", "));
            for (name, addr) in &spec.hosts {
                let _ = writeln!(o, "  name  {name} -> {addr}");
            }
        }
    }
    match c.metrics.listen {
        Some(a) => {
            let _ = writeln!(o, "metrics http://{a}/metrics");
        }
        None => {
            let _ = writeln!(o, "metrics off");
        }
    }
    let _ = writeln!(o, "admin socket {}", c.admin.socket.display());
    if let Some(sync) = &c.dsr_sync {
        let peers: Vec<String> = sync.peers.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(o, "dsr flow sync {} <-> {}", sync.listen, peers.join(", "));
    }
    if c.services.iter().any(|s| s.forwarding == Forwarding::Dsr) {
        let _ = writeln!(
            o,
            "dsr xdp {}",
            match c.dsr_xdp {
                DsrXdp::Auto => "auto: known flows forwarded in the driver (native mode, not on a veth) where the kernel and CAP_BPF allow",
                DsrXdp::On => "on: known flows forwarded in the driver (generic mode and veths too) where the kernel and CAP_BPF allow",
                DsrXdp::Off => "off: every frame through user space",
            }
        );
    }
    o
}

/// The MAC a dsr VIP answers ARP with: its VRRP group's virtual MAC, else the interface's.
fn dsr_vip_mac(c: &Config, vip: std::net::IpAddr) -> String {
    match c.vrrp_vrid_of(vip) {
        Some(v) => format!(
            "virtual MAC {} (vrid {v})",
            crate::dsr::arp::format_mac(&crate::dsr::packet::vrrp_virtual_mac(v))
        ),
        None => "the interface's MAC".to_string(),
    }
}
