//! Every default of the configuration file, written down once. `config/portico.toml` documents
//! the same values; `tests/config_check.rs` checks that a minimal config gets these and that
//! the reference config's spelt-out defaults equal them.

/// `[vip] mode`.
pub const VIP_MODE: &str = "standalone";

/// `[vip] label`: short, so `IFACE:label` fits the kernel's 15 bytes for most names.
pub const VIP_LABEL: &str = "vip";
/// `[vip] garp_master_repeat`: keepalived's default.
pub const GARP_MASTER_REPEAT: u32 = 5;
/// `[vip] garp_interval_ms`: keepalived's default (no spacing).
pub const GARP_INTERVAL_MS: u64 = 0;
/// `[vip] garp_master_delay_ms`: keepalived's default second burst after 5 s.
pub const GARP_MASTER_DELAY_MS: u64 = 5000;
/// `[vip] garp_master_refresh_s`: on (keepalived: off): one stale ARP entry in a router can
/// black-hole the VIP for hours.
pub const GARP_MASTER_REFRESH_S: u64 = 60;
/// `[vip.vrrp] checksum_as_v2`.
pub const VRRP_CHECKSUM_AS_V2: bool = false;

/// `[vip.vrrp] priority`: the RFC 5798 §5.2.4 default for a backup router.
pub const VRRP_PRIORITY: u8 = 100;
/// `[vip.vrrp] advert_interval_ms`: the RFC 5798 §5.2.7 default (100 centiseconds).
pub const VRRP_ADVERT_INTERVAL_MS: u64 = 1000;
/// `[vip.vrrp] preempt`.
pub const VRRP_PREEMPT: bool = true;
/// `[vip.vrrp] preempt_delay_ms`.
pub const VRRP_PREEMPT_DELAY_MS: u64 = 0;
/// `[vip.vrrp] accept_mode`: RFC 5798 §6.1 default.
pub const VRRP_ACCEPT_MODE: bool = false;
/// `[vip.vrrp] track_pool_penalty`: large enough to drop a priority-150 master below a
/// priority-100 backup.
pub const VRRP_TRACK_POOL_PENALTY: u8 = 50;

/// `[[service]] protocol`.
pub const SERVICE_PROTOCOL: &str = "tcp";
/// `[[service]] connect_timeout_ms` (TCP).
pub const CONNECT_TIMEOUT_MS: u64 = 2000;
/// `[[service]] connect_attempts`.
pub const CONNECT_ATTEMPTS: u32 = 3;
/// `[[service]] idle_timeout_s` for TCP: an RD Gateway channel idles for long stretches.
pub const TCP_IDLE_TIMEOUT_S: u64 = 4 * 3600;
/// `[[service]] idle_timeout_s` for UDP flows.
pub const UDP_IDLE_TIMEOUT_S: u64 = 120;
/// `[[service]] backlog` (TCP).
pub const BACKLOG: u32 = 1024;
/// `[[service]] max_flows` (UDP).
pub const MAX_FLOWS: usize = 65536;

/// `affinity.key`: the only key for now.
pub const AFFINITY_KEY: &str = "client-ip";
/// `affinity.ipv4_prefix`: one client per address.
pub const AFFINITY_IPV4_PREFIX: u8 = 32;
/// `affinity.ipv6_prefix`: one client per /64, the usual size of one site's subnet.
pub const AFFINITY_IPV6_PREFIX: u8 = 64;
/// `affinity.idle_timeout_s`: console sessions are long; HAProxy's RDS guide sticks 8 h.
pub const AFFINITY_IDLE_TIMEOUT_S: u64 = 8 * 3600;
/// `affinity.max_entries`.
pub const AFFINITY_MAX_ENTRIES: usize = 1_000_000;

/// `[pool.NAME] backends[].weight`.
pub const BACKEND_WEIGHT: u32 = 1;
/// `[pool.NAME] table_size`: the Maglev paper's smallest recommended prime.
pub const TABLE_SIZE: u32 = 65537;

/// `[pool.NAME.health] interval_ms`.
pub const HEALTH_INTERVAL_MS: u64 = 2000;
// `[pool.NAME.health] tcp_interval_ms`, `tls_interval_ms`, `rdg_token_interval_ms` have no
// constant of their own: each defaults to the pool's `interval_ms`.
/// `[pool.NAME.health] timeout_ms`.
pub const HEALTH_TIMEOUT_MS: u64 = 1000;
/// `[pool.NAME.health] rise`.
pub const HEALTH_RISE: u32 = 2;
/// `[pool.NAME.health] fall`.
pub const HEALTH_FALL: u32 = 3;
/// `[pool.NAME.health] checks`.
pub const HEALTH_CHECKS: &[&str] = &["tcp"];
/// `[pool.NAME.health] passive`.
pub const HEALTH_PASSIVE: bool = true;
/// `tls.min_days_left`.
pub const TLS_MIN_DAYS_LEFT: u32 = 14;
/// `rdg_token.port`: the Hyper-V VMConnect port a console token names.
pub const RDG_TOKEN_PORT: u16 = 2179;

/// `[balancer] drain_timeout_s`.
pub const DRAIN_TIMEOUT_S: u64 = 30;

/// `[dns] ttl`: short, so clients follow a VIP hand-over or a health change quickly.
pub const DNS_TTL: u32 = 30;
/// `[dns] nameservers`: one name below the zone (its address comes from `[dns] listen`).
pub const DNS_NAMESERVER_LABEL: &str = "ns";
/// `[dns] soa.rname`: RFC 2142's mailbox for DNS, below the zone.
pub const DNS_SOA_RNAME_LABEL: &str = "hostmaster";
/// `[dns] soa.refresh_s`: RFC 1912 §2.2's range is 20 min .. 12 h.
pub const DNS_SOA_REFRESH_S: u32 = 3600;
/// `[dns] soa.retry_s`.
pub const DNS_SOA_RETRY_S: u32 = 600;
/// `[dns] soa.expire_s`: two weeks (RFC 1912 §2.2 suggests 2-4 weeks).
pub const DNS_SOA_EXPIRE_S: u32 = 1_209_600;
// `[dns] soa.minimum_s` defaults to `[dns] ttl`: a name that is missing now may appear with
// the next health change, so it is cached no longer than a positive answer.

/// `[metrics] listen`: loopback, see the security notes in DESIGN.md.
pub const METRICS_LISTEN: &str = "127.0.0.1:9469";

/// `[admin] socket`.
pub const ADMIN_SOCKET: &str = "/run/portico/admin.sock";
