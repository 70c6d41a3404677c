//! The zone (pure): what the config says it holds ([`ZoneSpec`], fixed at start), which alias
//! addresses are answered for the current health ([`answered`]), the zone built from both with
//! every answer precomputed in wire form ([`Zone`]), and the answer to one query
//! ([`Zone::answer`]).
//!
//! A query costs one hash lookup of its lower-cased name and a few copies: every RRset is kept
//! as ready record bytes whose owner is a compression pointer to the question (offset 12),
//! and the SOA of negative answers points at the apex's suffix of the question.

use std::collections::HashMap;
use std::net::IpAddr;

use super::wire::{self, rdata, rtype, Query, Rcode, Writer, HEADER_LEN, MAX_NAME};
use crate::config::{Config, IpPrefix, Soa};
use crate::snapshot::Snapshot;

/// An address the alias may answer with, and the services that must be able to serve for it
/// to be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasTarget {
    pub addr: IpAddr,
    pub services: Vec<String>,
}

/// The zone's content as configured; health decides only which alias targets are answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneSpec {
    /// Text names: fully qualified, lower case, trailing dot.
    pub apex: String,
    pub ttl: u32,
    pub alias: String,
    pub alias_targets: Vec<AliasTarget>,
    /// Other address records (one per gateway, and in-zone name servers), in config order.
    pub hosts: Vec<(String, IpAddr)>,
    pub nameservers: Vec<String>,
    pub soa: Soa,
    pub allow_transfer: Vec<IpPrefix>,
}

impl ZoneSpec {
    /// The zone `config.dns` describes; `None` without `[dns]`.
    ///
    /// Alias targets: `alias_addresses` when set (each needs every alias service); else each
    /// alias service's listen address, or for a wildcard listener the `[vip]` addresses of its
    /// family (all of them for `::`). Gateways get `<backend name>.<zone>` unless the backend
    /// name already is a name in the zone. In-zone name servers get the DNS listen addresses
    /// (the VIPs when those are wildcards). A host name equal to the alias is left out: the
    /// alias's health-aware answer wins.
    pub fn from_config(config: &Config) -> Option<ZoneSpec> {
        let dns = config.dns.as_ref()?;
        let in_zone = |n: &str| n == dns.zone || n.ends_with(&format!(".{}", dns.zone));
        let vip_addrs: Vec<IpAddr> = config
            .vip
            .iter()
            .flat_map(|v| v.addresses.iter().map(|p| p.addr))
            .collect();
        let mut alias_targets: Vec<AliasTarget> = Vec::new();
        let mut add_target = |addr: IpAddr, services: &[String]| match alias_targets
            .iter_mut()
            .find(|t| t.addr == addr)
        {
            Some(t) => {
                for s in services {
                    if !t.services.contains(s) {
                        t.services.push(s.clone());
                    }
                }
            }
            None => alias_targets.push(AliasTarget {
                addr,
                services: services.to_vec(),
            }),
        };
        if dns.alias_addresses.is_empty() {
            for svc in config
                .services
                .iter()
                .filter(|s| dns.alias_services.contains(&s.name))
            {
                let ip = svc.listen.ip();
                let one = [svc.name.clone()];
                if ip.is_unspecified() {
                    for a in vip_addrs
                        .iter()
                        .filter(|a| ip.is_ipv6() || a.is_ipv4() == ip.is_ipv4())
                    {
                        add_target(*a, &one);
                    }
                } else {
                    add_target(ip, &one);
                }
            }
        } else {
            for a in &dns.alias_addresses {
                add_target(*a, &dns.alias_services);
            }
        }

        let mut hosts: Vec<(String, IpAddr)> = Vec::new();
        let mut add_host = |name: String, addr: IpAddr| {
            if name != dns.alias && !hosts.contains(&(name.clone(), addr)) {
                hosts.push((name, addr));
            }
        };
        for pool in &config.pools {
            for b in &pool.backends {
                let lower = b.name.to_ascii_lowercase();
                let name = if lower.contains('.') {
                    let n = format!("{}.", lower.trim_end_matches('.'));
                    if !in_zone(&n) {
                        continue;
                    }
                    n
                } else {
                    format!("{lower}.{}", dns.zone)
                };
                if wire::name_to_wire(&name).is_some() {
                    add_host(name, b.address);
                }
            }
        }
        let listen: Vec<IpAddr> = dns
            .listen
            .iter()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
            .collect();
        let ns_addrs = if listen.is_empty() {
            &vip_addrs
        } else {
            &listen
        };
        for ns in dns.nameservers.iter().filter(|n| in_zone(n)) {
            for a in ns_addrs {
                add_host(ns.clone(), *a);
            }
        }
        Some(ZoneSpec {
            apex: dns.zone.clone(),
            ttl: dns.ttl,
            alias: dns.alias.clone(),
            alias_targets,
            hosts,
            nameservers: dns.nameservers.clone(),
            soa: dns.soa.clone(),
            allow_transfer: dns.allow_transfer.clone(),
        })
    }
}

/// Which alias targets to answer for `snap`: those whose every service has an eligible
/// backend; when none has, all of them (Route 53's rule: an answer that may work beats none).
pub fn answered(spec: &ZoneSpec, snap: &Snapshot) -> Vec<bool> {
    let can_serve = |name: &str| {
        snap.services
            .iter()
            .find(|s| &*s.name == name)
            .and_then(|s| snap.pools.get(s.pool))
            .is_some_and(|p| p.eligible_count() > 0)
    };
    let mask: Vec<bool> = spec
        .alias_targets
        .iter()
        .map(|t| t.services.iter().all(|s| can_serve(s)))
        .collect();
    if mask.iter().any(|m| *m) {
        mask
    } else {
        vec![true; mask.len()]
    }
}

/// One RRset as ready answer-section bytes, each record owned by a pointer to the question.
#[derive(Debug, Default, Clone)]
struct RrSet {
    count: u16,
    bytes: Vec<u8>,
}

impl RrSet {
    fn push(&mut self, body: &[u8]) {
        self.bytes.extend_from_slice(&0xc00cu16.to_be_bytes());
        self.bytes.extend_from_slice(body);
        self.count += 1;
    }
}

#[derive(Debug, Default, Clone)]
struct Node {
    a: RrSet,
    aaaa: RrSet,
    ns: RrSet,
    soa: RrSet,
    /// RFC 8482 §4.2's synthesized HINFO, the whole answer to ANY; empty for an empty
    /// non-terminal.
    any: RrSet,
}

/// How a query is to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `out` holds one message with this rcode.
    Reply(Rcode),
    /// An allowed zone transfer: call [`Zone::transfer`].
    Transfer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A zone with every answer precomputed.
#[derive(Debug)]
pub struct Zone {
    apex: Vec<u8>,
    /// Lower-case wire name → node.
    nodes: HashMap<Box<[u8]>, Node>,
    /// The SOA's type..rdata with the negative-caching TTL (RFC 2308 §3: the lesser of the
    /// SOA's TTL and its MINIMUM), for the authority section of negative answers.
    soa_negative: Vec<u8>,
    /// Every record for AXFR, SOA first: (owner labels above the apex, type..rdata).
    records: Vec<(Vec<u8>, Vec<u8>)>,
    soa_record: Vec<u8>,
    allow_transfer: Vec<IpPrefix>,
    pub serial: u32,
    /// How many alias addresses are answered.
    pub alias_answered: usize,
}

/// Largest message we put one transfer's records in before starting the next (RFC 5936 §2.2
/// lets a transfer span messages; 16 KiB keeps each write small).
const TRANSFER_MESSAGE: usize = 16 * 1024;

impl Zone {
    /// Builds the zone for the alias targets `answered` selects (indexed like
    /// `spec.alias_targets`).
    pub fn build(spec: &ZoneSpec, answered: &[bool], serial: u32) -> Zone {
        let apex = wire::name_to_wire(&spec.apex).unwrap_or_else(|| vec![0]);
        let ttl = spec.ttl;
        let mut nodes: HashMap<Box<[u8]>, Node> = HashMap::new();
        let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let rel = |name: &[u8]| name[..name.len().saturating_sub(apex.len())].to_vec();
        let mut add = |name: &str, rt: u16, data: &[u8], nodes: &mut HashMap<Box<[u8]>, Node>| {
            let Some(w) = wire::name_to_wire(name) else {
                return;
            };
            if wire::apex_offset(&w, &apex).is_none() {
                return;
            }
            let mut body = Vec::with_capacity(10 + data.len());
            rdata::record(&mut body, rt, ttl, data);
            let node = nodes.entry(w.clone().into_boxed_slice()).or_default();
            let set = match rt {
                rtype::A => &mut node.a,
                rtype::AAAA => &mut node.aaaa,
                rtype::NS => &mut node.ns,
                rtype::SOA => &mut node.soa,
                _ => return,
            };
            set.push(&body);
            records.push((rel(&w), body));
        };

        let mname = spec
            .nameservers
            .first()
            .and_then(|n| wire::name_to_wire(n))
            .unwrap_or_else(|| apex.clone());
        let rname = wire::name_to_wire(&spec.soa.rname).unwrap_or_else(|| apex.clone());
        let soa_data = rdata::soa(
            &mname,
            &rname,
            serial,
            spec.soa.refresh,
            spec.soa.retry,
            spec.soa.expire,
            spec.soa.minimum,
        );
        add(&spec.apex, rtype::SOA, &soa_data, &mut nodes);
        for ns in &spec.nameservers {
            if let Some(w) = wire::name_to_wire(ns) {
                add(&spec.apex, rtype::NS, &w, &mut nodes);
            }
        }
        let mut alias_answered = 0;
        for (t, on) in spec.alias_targets.iter().zip(answered) {
            if *on {
                alias_answered += 1;
                add(
                    &spec.alias,
                    addr_type(t.addr),
                    &addr_bytes(t.addr),
                    &mut nodes,
                );
            }
        }
        for (name, addr) in &spec.hosts {
            add(name, addr_type(*addr), &addr_bytes(*addr), &mut nodes);
        }
        // The alias exists even if no address is configured for one family.
        nodes
            .entry(
                wire::name_to_wire(&spec.alias)
                    .unwrap_or_else(|| apex.clone())
                    .into_boxed_slice(),
            )
            .or_default();

        // Empty non-terminals (RFC 8020): every name between an owner and the apex exists.
        let owners: Vec<Box<[u8]>> = nodes.keys().cloned().collect();
        for owner in owners {
            let mut pos = 0usize;
            while let Some(&l) = owner.get(pos) {
                if l == 0 || owner.len() - pos <= apex.len() {
                    break;
                }
                pos += usize::from(l) + 1;
                if let Some(parent) = owner.get(pos..) {
                    if parent.len() >= apex.len() {
                        nodes.entry(parent.into()).or_default();
                    }
                }
            }
        }
        let hinfo = {
            let mut body = Vec::new();
            rdata::record(&mut body, rtype::HINFO, ttl, &rdata::hinfo("RFC8482", ""));
            body
        };
        for node in nodes.values_mut() {
            let has_data = node.a.count + node.aaaa.count + node.ns.count + node.soa.count > 0;
            if has_data {
                node.any.push(&hinfo);
            }
        }
        let mut soa_negative = Vec::new();
        rdata::record(
            &mut soa_negative,
            rtype::SOA,
            ttl.min(spec.soa.minimum),
            &soa_data,
        );
        let mut soa_record = Vec::new();
        rdata::record(&mut soa_record, rtype::SOA, ttl, &soa_data);
        Zone {
            apex,
            nodes,
            soa_negative,
            records,
            soa_record,
            allow_transfer: spec.allow_transfer.clone(),
            serial,
            alias_answered,
        }
    }

    /// Writes the answer to `q` into `out` (cleared first), or says to transfer the zone.
    pub fn answer(
        &self,
        q: &Query<'_>,
        transport: Transport,
        peer: IpAddr,
        out: &mut Vec<u8>,
    ) -> Action {
        let mut w = Writer { buf: out };
        let reply = |w: &mut Writer<'_>, aa: bool, rcode: Rcode| {
            w.header(q.id, wire::answer_flags(q.flags, aa, false, rcode), 1);
            w.question(q.qname, q.qtype, q.qclass);
        };
        let finish = |w: &mut Writer<'_>, rcode: Rcode| {
            if let Some(e) = q.edns {
                w.opt(rcode, e.dnssec_ok);
            }
            Action::Reply(rcode)
        };
        if q.opcode() != 0 {
            reply(&mut w, false, Rcode::NotImp);
            return finish(&mut w, Rcode::NotImp);
        }
        if q.edns.is_some_and(|e| e.version > 0) {
            // RFC 6891 §6.1.3: we speak version 0 only.
            reply(&mut w, false, Rcode::BadVers);
            return finish(&mut w, Rcode::BadVers);
        }
        if q.qtype == rtype::OPT {
            reply(&mut w, false, Rcode::FormErr);
            return finish(&mut w, Rcode::FormErr);
        }
        let mut lower = [0u8; MAX_NAME];
        let n = wire::lower_name(q.qname, &mut lower);
        let name = &lower[..n];
        let apex_at = match wire::apex_offset(name, &self.apex) {
            Some(at) if q.qclass == wire::class::IN || q.qclass == wire::class::ANY => at,
            _ => {
                reply(&mut w, false, Rcode::Refused);
                return finish(&mut w, Rcode::Refused);
            }
        };
        if q.qtype == rtype::AXFR || q.qtype == rtype::IXFR {
            let allowed = transport == Transport::Tcp
                && apex_at == 0
                && self.allow_transfer.iter().any(|p| prefix_contains(p, peer));
            if allowed {
                return Action::Transfer;
            }
            reply(&mut w, false, Rcode::Refused);
            return finish(&mut w, Rcode::Refused);
        }
        let Some(node) = self.nodes.get(name) else {
            reply(&mut w, true, Rcode::NxDomain);
            w.pointer(HEADER_LEN + apex_at);
            w.buf.extend_from_slice(&self.soa_negative);
            w.add_count(8, 1);
            return self.fit(q, transport, w, Rcode::NxDomain);
        };
        let set = match q.qtype {
            rtype::A => &node.a,
            rtype::AAAA => &node.aaaa,
            rtype::NS => &node.ns,
            rtype::SOA => &node.soa,
            rtype::ANY => &node.any,
            _ => &EMPTY,
        };
        reply(&mut w, true, Rcode::NoError);
        if set.count > 0 {
            w.buf.extend_from_slice(&set.bytes);
            w.add_count(6, set.count);
        } else {
            w.pointer(HEADER_LEN + apex_at);
            w.buf.extend_from_slice(&self.soa_negative);
            w.add_count(8, 1);
        }
        self.fit(q, transport, w, Rcode::NoError)
    }

    /// Cuts an answer that does not fit the client's UDP size to its question with TC set
    /// (RFC 2181 §9), then adds the OPT record.
    fn fit(&self, q: &Query<'_>, transport: Transport, mut w: Writer<'_>, rcode: Rcode) -> Action {
        let opt = if q.edns.is_some() { wire::OPT_LEN } else { 0 };
        let limit = match transport {
            Transport::Udp => q.udp_limit(),
            Transport::Tcp => usize::from(u16::MAX),
        };
        if w.buf.len() + opt > limit {
            w.buf.truncate(HEADER_LEN + q.qname.len() + 4);
            w.buf[6..12].fill(0);
            w.set_flags(wire::answer_flags(q.flags, true, true, rcode));
        }
        if let Some(e) = q.edns {
            w.opt(rcode, e.dnssec_ok);
        }
        Action::Reply(rcode)
    }

    /// The messages of a zone transfer (RFC 5936 §2.2): SOA, every record, SOA again, split
    /// over messages of at most about 16 KiB, each repeating the question so that owner
    /// pointers to it stay valid.
    pub fn transfer(&self, q: &Query<'_>, mut emit: impl FnMut(&[u8])) {
        let mut buf = Vec::with_capacity(TRANSFER_MESSAGE + 512);
        let start = |buf: &mut Vec<u8>| {
            let mut w = Writer { buf };
            w.header(
                q.id,
                wire::answer_flags(q.flags, true, false, Rcode::NoError),
                1,
            );
            w.question(q.qname, q.qtype, q.qclass);
        };
        start(&mut buf);
        let soa: (Vec<u8>, Vec<u8>) = (Vec::new(), self.soa_record.clone());
        let body = self
            .records
            .iter()
            .filter(|(rel, b)| !(rel.is_empty() && b.get(..2) == Some(&rtype::SOA.to_be_bytes())));
        let all = std::iter::once(&soa)
            .chain(body)
            .chain(std::iter::once(&soa));
        let mut in_message = 0u16;
        for (rel, b) in all {
            if in_message > 0 && buf.len() + rel.len() + 2 + b.len() > TRANSFER_MESSAGE {
                emit(&buf);
                start(&mut buf);
                in_message = 0;
            }
            buf.extend_from_slice(rel);
            Writer { buf: &mut buf }.pointer(HEADER_LEN);
            buf.extend_from_slice(b);
            in_message += 1;
            Writer { buf: &mut buf }.add_count(6, 1);
        }
        emit(&buf);
    }
}

/// The answer section of NODATA.
static EMPTY: RrSet = RrSet {
    count: 0,
    bytes: Vec::new(),
};

fn addr_type(a: IpAddr) -> u16 {
    if a.is_ipv4() {
        rtype::A
    } else {
        rtype::AAAA
    }
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// IPv4-mapped IPv6 peers (a `::` listener) count as their IPv4 address.
pub fn prefix_contains(p: &IpPrefix, peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    match (p.addr, peer) {
        (IpAddr::V4(net), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(p.len)).unwrap_or(0);
            u32::from(net) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(p.len)).unwrap_or(0);
            u128::from(net) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
#[path = "zone_tests.rs"]
mod tests;
