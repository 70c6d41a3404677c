//! VIP ownership on `node.interface`: add and remove the addresses over netlink, announce them
//! (gratuitous ARP / unsolicited NA) on taking them and periodically while held, probe for a
//! conflict before a standalone node takes an IPv4 address, and clean up what a crashed run
//! left behind.
//!
//! - [`frames`]: the Ethernet frames (pure).
//! - [`link`]: the AF_PACKET socket that sends and reads them.
//! - [`netlink`]: interface lookup and address add/remove over rtnetlink.

pub mod frames;
pub mod link;
pub mod netlink;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use prometheus::IntCounter;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Announce, IpPrefix};
use crate::metrics::Metrics;

use self::frames::Mac;
use self::link::PacketSocket;
use self::netlink::{LinkInfo, Netlink};

/// RFC 5227 §2.1.1: PROBE_NUM probes, PROBE_MIN..PROBE_MAX apart; we use a fixed spacing and
/// then wait ANNOUNCE_WAIT-ish for late answers.
const PROBE_NUM: u32 = 3;
const PROBE_SPACING: Duration = Duration::from_millis(300);
const PROBE_LAST_WAIT: Duration = Duration::from_millis(700);

/// One set of VIPs on one interface.
pub struct Vips {
    nl: Netlink,
    link: LinkInfo,
    addresses: Vec<IpPrefix>,
    /// The full IPv4 label, `IFACE:label`.
    label: String,
    announce: Announce,
    sender: Arc<Announcer>,
    /// Cancels the refresh task of the current holding.
    holding: Option<CancellationToken>,
}

/// Sends the announcement frames (shared with the refresh task).
struct Announcer {
    arp: Option<PacketSocket>,
    ip6: Option<PacketSocket>,
    mac: Mac,
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
    /// The interface's link-local address, source of the NAs.
    link_local: Option<Ipv6Addr>,
    garp: IntCounter,
    na: IntCounter,
}

impl Announcer {
    fn once(&self) {
        if let Some(s) = &self.arp {
            for ip in &self.v4 {
                match s.send(&frames::gratuitous_arp(self.mac, *ip)) {
                    Ok(()) => self.garp.inc(),
                    Err(error) => warn!(vip = %ip, %error, "gratuitous ARP not sent"),
                }
            }
        }
        if let (Some(s), Some(src)) = (&self.ip6, self.link_local) {
            for ip in &self.v6 {
                match s.send(&frames::unsolicited_na(self.mac, src, *ip)) {
                    Ok(()) => self.na.inc(),
                    Err(error) => warn!(vip = %ip, %error, "unsolicited NA not sent"),
                }
            }
        }
    }

    async fn burst(&self, repeat: u32, interval: Duration) {
        for i in 0..repeat {
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            self.once();
        }
    }
}

impl Vips {
    /// Looks up `interface` and opens the announcement sockets. Must run on a tokio runtime
    /// (the netlink connection's task is spawned on it).
    pub async fn open(
        interface: &str,
        addresses: Vec<IpPrefix>,
        label: &str,
        announce: Announce,
        metrics: &Metrics,
    ) -> anyhow::Result<Vips> {
        let nl = Netlink::connect()?;
        let link = nl.link(interface).await?;
        let found = nl.addresses(link.index).await?;
        let ours: Vec<IpAddr> = addresses.iter().map(|p| p.addr).collect();
        let (_, link_local) = netlink::primaries(&found, &ours);
        let v4: Vec<Ipv4Addr> = ours
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .collect();
        let v6: Vec<Ipv6Addr> = ours
            .iter()
            .filter_map(|a| match a {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            })
            .collect();
        let arp = if v4.is_empty() {
            None
        } else {
            Some(
                PacketSocket::open(link.index, frames::ETH_P_ARP)
                    .with_context(|| format!("ARP socket on {interface} (needs CAP_NET_RAW)"))?,
            )
        };
        let ip6 = if v6.is_empty() {
            None
        } else {
            if link_local.is_none() {
                warn!(
                    interface,
                    "no IPv6 link-local address: unsolicited NAs for IPv6 VIPs cannot be sent"
                );
            }
            Some(
                PacketSocket::open(link.index, frames::ETH_P_IPV6)
                    .with_context(|| format!("packet socket on {interface}"))?,
            )
        };
        let fam = &metrics.vrrp.vip_announcements;
        let sender = Arc::new(Announcer {
            arp,
            ip6,
            mac: link.mac,
            v4,
            v6,
            link_local,
            garp: fam.with_label_values(&["garp"]),
            na: fam.with_label_values(&["na"]),
        });
        Ok(Vips {
            nl,
            label: format!("{interface}:{label}"),
            link,
            addresses,
            announce,
            sender,
            holding: None,
        })
    }

    pub fn link(&self) -> &LinkInfo {
        &self.link
    }

    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    pub fn addresses(&self) -> &[IpPrefix] {
        &self.addresses
    }

    /// Removes what a previous run may have left: every configured VIP, and any IPv4 address
    /// with our label. Returns how many were found.
    pub async fn clean_stale(&self) -> anyhow::Result<usize> {
        let found = self.nl.addresses(self.link.index).await?;
        let mut n = 0;
        for f in found {
            let ours = self.addresses.iter().any(|p| p.addr == f.prefix.addr);
            let labelled = f.label.as_deref() == Some(self.label.as_str());
            if ours || labelled {
                warn!(
                    address = %f.prefix.addr,
                    interface = %self.link.name,
                    "removing a VIP left by an earlier run"
                );
                self.nl.remove(self.link.index, f.prefix).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Adds every VIP and starts announcing: a burst now, another after `delay`, then one
    /// every `refresh` until [`Vips::release`]. Idempotent.
    pub async fn take(&mut self) -> anyhow::Result<()> {
        for p in &self.addresses {
            self.nl.add(self.link.index, *p, &self.label).await?;
        }
        if self.holding.is_none() {
            let stop = CancellationToken::new();
            self.holding = Some(stop.clone());
            let sender = self.sender.clone();
            let a = self.announce.clone();
            tokio::spawn(async move {
                let schedule = async {
                    sender.burst(a.repeat, a.interval).await;
                    if !a.delay.is_zero() {
                        tokio::time::sleep(a.delay).await;
                        sender.burst(a.repeat, a.interval).await;
                    }
                    if let Some(every) = a.refresh {
                        loop {
                            tokio::time::sleep(every).await;
                            sender.once();
                        }
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = schedule => {}
                }
            });
        }
        info!(interface = %self.link.name, vips = %self.describe(), "VIPs added and announced");
        Ok(())
    }

    /// Stops announcing and removes every VIP. Idempotent.
    pub async fn release(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.holding.take() {
            stop.cancel();
        }
        let mut first_error = None;
        for p in &self.addresses {
            if let Err(e) = self.nl.remove(self.link.index, *p).await {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => {
                info!(interface = %self.link.name, vips = %self.describe(), "VIPs removed");
                Ok(())
            }
        }
    }

    pub fn held(&self) -> bool {
        self.holding.is_some()
    }

    fn describe(&self) -> String {
        self.addresses
            .iter()
            .map(|p| format!("{}/{}", p.addr, p.len))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Standalone mode: ARP-probes every IPv4 VIP (RFC 5227 §2.1.1) and fails, naming the MAC,
    /// if another host answers for one. Blocks for about a second; IPv6 VIPs are not probed.
    pub async fn probe_conflicts(&self) -> anyhow::Result<()> {
        let v4 = self.sender.v4.clone();
        if v4.is_empty() {
            return Ok(());
        }
        let (index, mac, iface) = (self.link.index, self.link.mac, self.link.name.clone());
        tokio::task::spawn_blocking(move || probe_blocking(index, mac, &iface, &v4))
            .await
            .context("ARP probe task")?
    }
}

fn probe_blocking(index: u32, mac: Mac, iface: &str, vips: &[Ipv4Addr]) -> anyhow::Result<()> {
    let s = PacketSocket::open(index, frames::ETH_P_ARP)
        .with_context(|| format!("ARP socket on {iface} (needs CAP_NET_RAW)"))?;
    let mut buf = [0u8; 1500];
    for round in 0..PROBE_NUM {
        for ip in vips {
            s.send(&frames::arp_probe(mac, *ip))
                .with_context(|| format!("sending an ARP probe for {ip}"))?;
        }
        let wait = if round + 1 == PROBE_NUM {
            PROBE_LAST_WAIT
        } else {
            PROBE_SPACING
        };
        let until = std::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(n) = s.recv_timeout(&mut buf, left)? else {
                break;
            };
            let Some(arp) = buf.get(..n).and_then(frames::parse_arp) else {
                continue;
            };
            if let Some(ip) = vips.iter().find(|ip| frames::claims(&arp, **ip, mac)) {
                let m = arp.sha;
                bail!(
                    "address conflict: {ip} is in use on {iface} by {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}; refusing to take it",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                );
            }
        }
    }
    Ok(())
}

/// Standalone mode: removes stale VIPs, probes for a conflict (refusing, with the other host's
/// MAC, if one answers), takes the VIPs and holds them until `stop`, then removes them.
pub async fn start_standalone(
    interface: &str,
    vip: &crate::config::Vip,
    metrics: &Metrics,
    tasks: &tokio_util::task::TaskTracker,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut vips = Vips::open(
        interface,
        vip.addresses.clone(),
        &vip.label,
        vip.announce.clone(),
        metrics,
    )
    .await?;
    vips.clean_stale().await?;
    vips.probe_conflicts().await?;
    vips.take().await?;
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    if !vips.sender.v4.is_empty() {
        let (index, mac, name) = (vips.link.index, vips.link.mac, vips.link.name.clone());
        let addrs = vips.sender.v4.clone();
        let conflicts = metrics.vrrp.vip_conflicts.clone();
        let garp = vips.sender.garp.clone();
        let flag = watching.clone();
        std::thread::Builder::new()
            .name("portico-vip-arp".into())
            .spawn(move || defend(index, mac, &name, &addrs, &flag, &conflicts, &garp))
            .context("starting the ARP conflict watcher")?;
    }
    tasks.spawn(async move {
        stop.cancelled().await;
        watching.store(false, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = vips.release().await {
            tracing::error!(error = %format!("{e:#}"), "removing the VIPs at shutdown failed");
        }
    });
    Ok(())
}

/// RFC 5227 §2.4: at most one defending announcement per this interval.
const DEFEND_INTERVAL: Duration = Duration::from_secs(10);

/// Standalone mode, while the VIPs are held: watches ARP for another host claiming one of them
/// (RFC 5227 §2.4 conflict), counts and logs it (at most once per `DEFEND_INTERVAL`) and
/// defends with one gratuitous ARP per interval. VRRP mode has no watcher: there the election
/// arbitrates and a takeover's announcements from the new master are expected.
fn defend(
    index: u32,
    mac: Mac,
    iface: &str,
    vips: &[Ipv4Addr],
    running: &std::sync::atomic::AtomicBool,
    conflicts: &IntCounter,
    garp: &IntCounter,
) {
    let s = match PacketSocket::open(index, frames::ETH_P_ARP) {
        Ok(s) => s,
        Err(error) => {
            warn!(%error, interface = iface, "ARP conflict watcher not started");
            return;
        }
    };
    let mut buf = [0u8; 1500];
    let mut last_defence: Option<std::time::Instant> = None;
    while running.load(std::sync::atomic::Ordering::Relaxed) {
        let n = match s.recv_timeout(&mut buf, Duration::from_millis(200)) {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(error) => {
                warn!(%error, interface = iface, "ARP conflict watcher stopped");
                return;
            }
        };
        let Some(arp) = buf.get(..n).and_then(frames::parse_arp) else {
            continue;
        };
        let Some(ip) = vips.iter().find(|ip| arp.spa == **ip && arp.sha != mac) else {
            continue;
        };
        conflicts.inc();
        let due = last_defence.is_none_or(|t| t.elapsed() >= DEFEND_INTERVAL);
        if due {
            let m = arp.sha;
            warn!(
                vip = %ip,
                interface = iface,
                other = %format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]),
                "address conflict: another host claims a VIP we hold; defending with a gratuitous ARP"
            );
            if s.send(&frames::gratuitous_arp(mac, *ip)).is_ok() {
                garp.inc();
            }
            last_defence = Some(std::time::Instant::now());
        }
    }
}
