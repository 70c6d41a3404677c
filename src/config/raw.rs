//! The file's shape, as serde sees it.
//!
//! Deliberately loose: every field is optional and numbers are `i64`, addresses are strings.
//! Serde stops at its first error, so anything it checked (a range, a required key, an address
//! syntax) would hide every later mistake; `validate` checks all of those instead and reports
//! them together. What serde still rejects is the shape itself: unknown keys
//! (`deny_unknown_fields` everywhere) and values of the wrong TOML type.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub node: Option<RawNode>,
    pub vip: Option<RawVips>,
    pub service: Option<Vec<RawService>>,
    /// Sorted by name, which is also the order of [`super::Config::pools`].
    pub pool: Option<BTreeMap<String, RawPool>>,
    pub balancer: Option<RawBalancer>,
    pub dns: Option<RawDns>,
    pub metrics: Option<RawMetrics>,
    pub admin: Option<RawAdmin>,
    pub dsr: Option<RawDsr>,
}

/// `[node]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: Option<String>,
    pub interface: Option<String>,
}

/// `[vip]` (one group) or `[[vip]]` (several groups, e.g. one VRRP instance each).
#[derive(Debug)]
pub enum RawVips {
    One(Box<RawVip>),
    Many(Vec<RawVip>),
}

impl<'de> Deserialize<'de> for RawVips {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawVips;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a [vip] table or [[vip]] tables")
            }
            // Handing the map/seq access on (rather than buffering) keeps serde's field paths
            // and unknown-field errors exactly as for any other table.
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawVips, A::Error> {
                RawVip::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|v| RawVips::One(Box::new(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<RawVips, A::Error> {
                Vec::<RawVip>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(RawVips::Many)
            }
        }
        d.deserialize_any(V)
    }
}

/// One VIP group: `[vip]` or one `[[vip]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVip {
    pub addresses: Option<Vec<String>>,
    pub mode: Option<String>,
    pub vrrp: Option<RawVrrp>,
    pub label: Option<String>,
    pub garp_master_delay_ms: Option<i64>,
    pub garp_master_repeat: Option<i64>,
    pub garp_interval_ms: Option<i64>,
    pub garp_master_refresh_s: Option<i64>,
}

/// `[vip.vrrp]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVrrp {
    pub vrid: Option<i64>,
    pub priority: Option<i64>,
    pub advert_interval_ms: Option<i64>,
    pub preempt: Option<bool>,
    pub preempt_delay_ms: Option<i64>,
    pub accept_mode: Option<bool>,
    pub unicast_peers: Option<Vec<String>>,
    pub track_pool_penalty: Option<i64>,
    pub checksum_as_v2: Option<bool>,
}

/// `[[service]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Option<String>,
    pub listen: Option<String>,
    pub protocol: Option<String>,
    pub pool: Option<String>,
    pub backend_port: Option<i64>,
    pub connect_timeout_ms: Option<i64>,
    pub connect_attempts: Option<i64>,
    pub idle_timeout_s: Option<i64>,
    pub backlog: Option<i64>,
    pub max_flows: Option<i64>,
    pub affinity: Option<RawAffinity>,
    pub forwarding: Option<String>,
}

/// `[[service]] affinity = { ... }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAffinity {
    pub key: Option<String>,
    pub ipv4_prefix: Option<i64>,
    pub ipv6_prefix: Option<i64>,
    pub idle_timeout_s: Option<i64>,
    pub max_entries: Option<i64>,
    pub group: Option<String>,
}

/// `[pool.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub backends: Option<Vec<RawBackend>>,
    pub table_size: Option<i64>,
    pub health: Option<RawHealth>,
}

/// One entry of `backends = [ ... ]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: Option<String>,
    pub address: Option<String>,
    pub weight: Option<i64>,
}

/// `[pool.NAME.health]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub interval_ms: Option<i64>,
    /// Per-check tier intervals; each defaults to `interval_ms`.
    pub tcp_interval_ms: Option<i64>,
    pub tls_interval_ms: Option<i64>,
    pub rdg_token_interval_ms: Option<i64>,
    pub timeout_ms: Option<i64>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    pub checks: Option<Vec<String>>,
    pub passive: Option<bool>,
    pub tls: Option<RawTls>,
    pub rdg_token: Option<RawRdgToken>,
}

/// `[pool.NAME.health] tls = { ... }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub server_name: Option<String>,
    pub ca_file: Option<String>,
    pub min_days_left: Option<i64>,
}

/// `[pool.NAME.health] rdg_token = { ... }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRdgToken {
    pub signing_cert: Option<String>,
    pub signing_key: Option<String>,
    pub host: Option<String>,
    pub port: Option<i64>,
    pub channel_target: Option<String>,
}

/// `[balancer]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBalancer {
    pub drain_timeout_s: Option<i64>,
}

/// `[dns]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub listen: Option<Vec<String>>,
    pub zone: Option<String>,
    pub ttl: Option<i64>,
    pub alias: Option<String>,
    pub alias_services: Option<Vec<String>>,
    pub alias_addresses: Option<Vec<String>>,
    pub nameservers: Option<Vec<String>>,
    pub soa: Option<RawSoa>,
    pub allow_transfer: Option<Vec<String>>,
}

/// `[dns] soa = { ... }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSoa {
    pub rname: Option<String>,
    pub refresh_s: Option<i64>,
    pub retry_s: Option<i64>,
    pub expire_s: Option<i64>,
    pub minimum_s: Option<i64>,
}

/// `[metrics]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

/// `[dsr]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDsr {
    pub sync_listen: Option<String>,
    pub sync_peers: Option<Vec<String>>,
    pub xdp: Option<String>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub socket: Option<String>,
}
