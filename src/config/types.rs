//! The validated, typed configuration the rest of Portico reads. Nothing here is parsed from
//! text: `validate` builds these from the serde `Raw*` types after every check has passed, so a
//! value of [`Config`] is always internally consistent (every service names an existing pool,
//! names are unique, weights are non-zero, prefixes are in range, ports do not clash).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

/// A whole, validated configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from (for messages); `<embedded>` for generated configs.
    pub source: PathBuf,
    pub node: Node,
    /// The `[vip]` table, or the first `[[vip]]` group.
    pub vip: Option<Vip>,
    /// The second and later `[[vip]]` groups (each its own VRRP instance with its own VRID, so
    /// two nodes can each be master of one: active/active).
    pub vip_more: Vec<Vip>,
    /// In file order.
    pub services: Vec<Service>,
    /// Sorted by name.
    pub pools: Vec<Pool>,
    pub balancer: Balancer,
    pub dns: Option<Dns>,
    pub metrics: Metrics,
    pub admin: Admin,
    /// `[dsr]`: the flow-table sync between balancer nodes; `None` when not configured.
    pub dsr_sync: Option<DsrSync>,
    /// `[dsr] xdp`: whether the dsr forwarder may forward known flows in an XDP program.
    pub dsr_xdp: DsrXdp,
}

impl Config {
    /// Every VIP group in file order.
    pub fn vip_groups(&self) -> impl Iterator<Item = &Vip> {
        self.vip.iter().chain(self.vip_more.iter())
    }

    /// The VRID of the VRRP group that holds `addr`; `None` for an address in no group or in
    /// a standalone one.
    pub fn vrrp_vrid_of(&self, addr: IpAddr) -> Option<u8> {
        self.vip_groups().find_map(|g| match &g.mode {
            VipMode::Vrrp(r) if g.addresses.iter().any(|a| a.addr == addr) => Some(r.vrid),
            _ => None,
        })
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// `[dsr] xdp`: the forwarder's fast path for frames of known flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DsrXdp {
    /// Attach the XDP program in native (driver) mode when the kernel, the driver and the
    /// daemon's privileges allow (CAP_BPF, kernel 5.18+), but not on a veth, whose sent-back
    /// frames reach its peer only if the peer runs NAPI, which cannot be seen from here;
    /// otherwise log why and forward every frame from user space.
    #[default]
    Auto,
    /// Attach wherever possible: generic mode on a driver without native XDP, and on a veth
    /// (whose peer must then have GRO on or an XDP program of its own).
    On,
    /// Never: every frame goes through the AF_PACKET forwarder.
    Off,
}

/// Flow-table sync for dsr services (conntrackd's idea): the forwarding node sends each new
/// flow's gateway to its peers, which keep it for when they take over.
#[derive(Debug, Clone, PartialEq)]
pub struct DsrSync {
    /// This node's UDP address for sync datagrams (sent from it, received on it).
    pub listen: SocketAddr,
    /// The other balancer nodes; datagrams from any other source are dropped.
    pub peers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    /// The interface that carries the VIP; `None` when Portico does not own an address.
    pub interface: Option<String>,
}

/// An address with its prefix length, as written `192.0.2.10/24` or `2001:db8::10/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Vip {
    pub addresses: Vec<IpPrefix>,
    pub mode: VipMode,
    /// IPv4 address label suffix: VIPs carry `IFACE:label`, which is how a restarted node
    /// recognises (and removes) addresses a crashed one left behind.
    pub label: String,
    pub announce: Announce,
}

/// Gratuitous ARP / unsolicited NA schedule, keepalived's `garp_master_*` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Announce {
    /// Announcements per burst (`garp_master_repeat`), >= 1.
    pub repeat: u32,
    /// Spacing within a burst (`garp_interval`).
    pub interval: Duration,
    /// A second burst this long after taking the VIP (`garp_master_delay`); zero: none.
    pub delay: Duration,
    /// While holding the VIP, one announcement this often (`garp_master_refresh`); `None`: off.
    pub refresh: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum VipMode {
    /// Take the addresses at start (after a conflict probe) and keep them.
    Standalone,
    /// Hold the addresses only while VRRP master.
    Vrrp(Vrrp),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Vrrp {
    /// 1..=255
    pub vrid: u8,
    /// 1..=255 (255 = address owner)
    pub priority: u8,
    /// Whole centiseconds on the wire, 10 ms ..= 40.95 s.
    pub advert_interval: Duration,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub accept_mode: bool,
    /// Empty: multicast to 224.0.0.18 / ff02::12.
    pub unicast_peers: Vec<IpAddr>,
    /// Priority is lowered by this much while a pool has no eligible backend.
    pub track_pool_penalty: u8,
    /// Also accept IPv4 adverts whose checksum has no pseudo-header (keepalived
    /// `v3_checksum_as_v2` peers).
    pub checksum_as_v2: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub listen: SocketAddr,
    pub protocol: Protocol,
    /// Always the name of a pool in [`Config::pools`].
    pub pool: String,
    /// Port used on backends that do not name their own; defaults to `listen`'s port.
    pub backend_port: u16,
    pub affinity: Affinity,
    /// TCP: a connect that takes longer counts as failed and the next choice is tried.
    pub connect_timeout: Duration,
    /// TCP: total connect attempts per client connection (first choice + retries), >= 1.
    pub connect_attempts: NonZeroU32,
    /// TCP: a connection with no byte in either direction for this long is closed.
    /// UDP: a flow with no datagram in either direction for this long is forgotten.
    pub idle_timeout: Duration,
    /// TCP: listen backlog.
    pub backlog: u32,
    /// UDP: most concurrent client flows; a new flow beyond it is refused and counted.
    /// `dsr`: the size of the forwarder's flow table (both protocols).
    pub max_flows: usize,
    /// How client traffic reaches the backends.
    pub forwarding: Forwarding,
}

/// How a service moves client traffic to its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Forwarding {
    /// Terminate each client connection and open one to the backend (the default).
    #[default]
    Proxy,
    /// Direct server return: rewrite the destination MAC of the client's frames and send them to
    /// the backend on the same L2 segment; replies go straight to the client (see docs/dsr.md).
    Dsr,
}

impl Forwarding {
    pub fn as_str(self) -> &'static str {
        match self {
            Forwarding::Proxy => "proxy",
            Forwarding::Dsr => "dsr",
        }
    }
}

/// How clients are keyed and pinned. Services sharing a `group` share one stick table, so a
/// client's TCP channels and UDP flow meet on one backend; validation guarantees that every
/// service of a group uses the same pool and the same key settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    pub group: String,
    /// 0..=32
    pub ipv4_prefix: u8,
    /// 0..=128
    pub ipv6_prefix: u8,
    /// An entry unused for this long expires.
    pub idle_timeout: Duration,
    /// Most entries in the group's table; beyond it the least recently used are evicted.
    pub max_entries: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    /// In file order; names and addresses (address + explicit port) are unique.
    pub backends: Vec<Backend>,
    pub health: Health,
    /// Maglev table size, a prime >= 65537 unless set explicitly lower for tests.
    pub table_size: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub name: String,
    pub address: IpAddr,
    /// `None`: use the service's `backend_port`.
    pub port: Option<u16>,
    pub weight: NonZeroU32,
}

impl Backend {
    /// Where a service with `backend_port` reaches this backend.
    pub fn socket_addr(&self, backend_port: u16) -> SocketAddr {
        SocketAddr::new(self.address, self.port.unwrap_or(backend_port))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckKind {
    Tcp,
    Tls,
    RdgToken,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// Between probes of a check without its own interval.
    pub interval: Duration,
    /// Each check tier's own interval (from `tcp_interval_ms`, ...; default `interval`).
    pub intervals: CheckIntervals,
    pub timeout: Duration,
    pub rise: NonZeroU32,
    pub fall: NonZeroU32,
    /// In the order they run; a failing cheaper check stops the dearer ones.
    pub checks: Vec<CheckKind>,
    /// Connect failures seen by the data plane count toward `fall`.
    pub passive: bool,
    pub tls: Option<TlsCheck>,
    pub rdg_token: Option<RdgTokenCheck>,
}

/// How often each check tier runs, so a cheap connect can run often and the token check
/// (an RSA signature and a full MS-TSGU exchange) rarely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckIntervals {
    pub tcp: Duration,
    pub tls: Duration,
    pub rdg_token: Duration,
}

impl CheckIntervals {
    /// Every tier at `interval`.
    pub fn all(interval: Duration) -> CheckIntervals {
        CheckIntervals {
            tcp: interval,
            tls: interval,
            rdg_token: interval,
        }
    }

    pub fn of(&self, check: CheckKind) -> Duration {
        match check {
            CheckKind::Tcp => self.tcp,
            CheckKind::Tls => self.tls,
            CheckKind::RdgToken => self.rdg_token,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsCheck {
    pub server_name: String,
    pub ca_file: Option<PathBuf>,
    pub min_days_left: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RdgTokenCheck {
    pub signing_cert: PathBuf,
    pub signing_key: PathBuf,
    /// Host named in the probe token (the canary host identity).
    pub host: String,
    pub port: u16,
    /// When set, the probe goes on to CHANNEL_CREATE for this `(host, port)` (the token then
    /// names it) and closes the channel cleanly.
    pub channel_target: Option<(String, u16)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Balancer {
    /// On SIGTERM, established connections get this long to finish.
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dns {
    pub listen: Vec<SocketAddr>,
    /// Fully qualified, lower case, with the trailing dot.
    pub zone: String,
    pub ttl: u32,
    /// The gateway alias (the certificate's CN): fully qualified, lower case, with the trailing
    /// dot, always inside `zone` (by default the zone's apex).
    pub alias: String,
    /// The services whose listen addresses (VIPs) the alias carries and whose pools decide
    /// whether an address is answered; every service by default. Always existing names.
    pub alias_services: Vec<String>,
    /// Addresses answered for the alias instead of the services' listen addresses (NAT, or
    /// services listening on a wildcard without `[vip]`); empty: derived from the services.
    pub alias_addresses: Vec<IpAddr>,
    /// NS names, fully qualified, lower case, with the trailing dot; the first is the SOA MNAME.
    pub nameservers: Vec<String>,
    pub soa: Soa,
    /// Clients allowed to AXFR the zone (over TCP); empty: nobody.
    pub allow_transfer: Vec<IpPrefix>,
}

/// The SOA record's fields other than the serial (which follows the zone's content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Soa {
    /// The responsible mailbox as a domain name (`hostmaster.rdgw.example.com.`).
    pub rname: String,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    /// RFC 2308: the TTL of negative answers (capped by the SOA's own TTL).
    pub minimum: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// `None`: no metrics listener.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub socket: PathBuf,
}
