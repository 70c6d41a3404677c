//! Frame parsing and classification (pure, allocation-free, never panics on any input).
//!
//! A frame read from the interface is one of: a packet for one of our VIP:port targets
//! ([`Class::Forward`]), an ARP packet (the forwarder answers requests for the VIP and learns
//! backend MACs from replies), something that is not ours ([`Class::NotForUs`], left to the
//! kernel), or a VIP packet we refuse to forward ([`Class::Drop`], counted by reason).
//!
//! The checks run in the order that makes foreign traffic cheap: Ethernet type, then the IP
//! destination, and only for VIP packets the header validation. IP fragments to the VIP are
//! dropped (reason `fragment`): only the first fragment carries the ports, so forwarding the
//! others would need per-datagram state; RD Gateway's UDP transport keeps datagrams under the
//! path MTU, and TCP sets DF.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::Protocol;

pub const ETH_HEADER: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 extension headers walked to reach TCP/UDP; anything else ends the walk.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;
/// Most extension headers walked: a chain longer than this is not a real client's packet.
const IPV6_MAX_EXTENSIONS: usize = 4;

/// A MAC address.
pub type Mac = [u8; 6];

/// One VIP:port:protocol the forwarder serves; `service` is the caller's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub service: usize,
}

/// The 5-tuple of a forwarded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: Protocol,
}

/// Why a VIP frame is not forwarded. Closed set: these are the `reason` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than its headers say.
    Truncated,
    /// An IPv4 or IPv6 fragment.
    Fragment,
    /// A header field no valid packet has (version, IHL, lengths).
    BadHeader,
    /// An IPv6 extension header chain we do not walk.
    Unsupported,
    /// The pool has no backend for this client.
    NoBackend,
    /// The chosen backend's MAC is not known yet (resolution was triggered).
    NoNeighbour,
    /// The service of a target is gone from the snapshot (a reload in progress).
    NoService,
    /// The send to the interface failed.
    SendFailed,
    /// The kernel dropped it before we read it: the socket's receive buffer was full (the
    /// forwarder thread did not keep up).
    RxOverflow,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::Truncated,
        DropReason::Fragment,
        DropReason::BadHeader,
        DropReason::Unsupported,
        DropReason::NoBackend,
        DropReason::NoNeighbour,
        DropReason::NoService,
        DropReason::SendFailed,
        DropReason::RxOverflow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Fragment => "fragment",
            DropReason::BadHeader => "bad-header",
            DropReason::Unsupported => "unsupported",
            DropReason::NoBackend => "no-backend",
            DropReason::NoNeighbour => "no-neighbour",
            DropReason::NoService => "no-service",
            DropReason::SendFailed => "send-failed",
            DropReason::RxOverflow => "rx-overflow",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What to do with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// For `targets[target]`: choose a backend and forward.
    Forward {
        target: usize,
        tuple: FiveTuple,
    },
    /// An ARP packet (parse it with [`crate::dsr::arp::parse`]).
    Arp,
    /// Not addressed to a target: the kernel handles it (or nobody does).
    NotForUs,
    Drop(DropReason),
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// The Ethernet payload type and where the payload starts, after at most one 802.1Q tag.
pub fn ether_type(frame: &[u8]) -> Option<(u16, usize)> {
    let t = be16(frame, 12)?;
    if t == ETHERTYPE_VLAN {
        return Some((be16(frame, 16)?, ETH_HEADER + 4));
    }
    Some((t, ETH_HEADER))
}

/// Classifies `frame` against `targets` (a handful of entries: a linear scan).
pub fn classify(frame: &[u8], targets: &[Target]) -> Class {
    let Some((ethertype, l3)) = ether_type(frame) else {
        // Too short to carry an Ethernet header: nothing the kernel would take either.
        return Class::NotForUs;
    };
    let Some(ip) = frame.get(l3..) else {
        return Class::NotForUs;
    };
    match ethertype {
        ETHERTYPE_ARP => Class::Arp,
        ETHERTYPE_IPV4 => classify_v4(ip, targets),
        ETHERTYPE_IPV6 => classify_v6(ip, targets),
        _ => Class::NotForUs,
    }
}

fn is_vip(targets: &[Target], ip: IpAddr) -> bool {
    targets.iter().any(|t| t.vip == ip)
}

fn find_target(targets: &[Target], dst: IpAddr, port: u16, protocol: Protocol) -> Option<usize> {
    targets
        .iter()
        .position(|t| t.vip == dst && t.port == port && t.protocol == protocol)
}

fn classify_v4(ip: &[u8], targets: &[Target]) -> Class {
    // The destination first: traffic for other addresses costs a 4-byte compare.
    let Some(dst) = ip.get(16..20) else {
        return Class::NotForUs;
    };
    let dst = IpAddr::V4(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]));
    if !is_vip(targets, dst) {
        return Class::NotForUs;
    }
    let (Some(&vihl), Some(total), Some(frag), Some(&proto), Some(src)) = (
        ip.first(),
        be16(ip, 2),
        be16(ip, 6),
        ip.get(9),
        ip.get(12..16),
    ) else {
        return Class::Drop(DropReason::Truncated);
    };
    if vihl >> 4 != 4 {
        return Class::Drop(DropReason::BadHeader);
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    let total = usize::from(total);
    if ihl < 20 || total < ihl {
        return Class::Drop(DropReason::BadHeader);
    }
    // Frames may carry Ethernet padding past the IP packet, never less than it.
    if total > ip.len() {
        return Class::Drop(DropReason::Truncated);
    }
    // MF set or a non-zero offset.
    if frag & 0x3fff != 0 {
        return Class::Drop(DropReason::Fragment);
    }
    let src = IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3]));
    let l4 = ip.get(ihl..total).unwrap_or(&[]);
    transport(proto, src, dst, l4, targets)
}

fn classify_v6(ip: &[u8], targets: &[Target]) -> Class {
    let Some(dst) = ip.get(24..40).and_then(|d| <[u8; 16]>::try_from(d).ok()) else {
        return Class::NotForUs;
    };
    let dst = IpAddr::V6(Ipv6Addr::from(dst));
    if !is_vip(targets, dst) {
        return Class::NotForUs;
    }
    let (Some(&v), Some(payload), Some(&next), Some(src)) =
        (ip.first(), be16(ip, 4), ip.get(6), ip.get(8..24))
    else {
        return Class::Drop(DropReason::Truncated);
    };
    if v >> 4 != 6 {
        return Class::Drop(DropReason::BadHeader);
    }
    let end = 40 + usize::from(payload);
    if end > ip.len() {
        return Class::Drop(DropReason::Truncated);
    }
    let src = match <[u8; 16]>::try_from(src) {
        Ok(s) => IpAddr::V6(Ipv6Addr::from(s)),
        Err(_) => return Class::Drop(DropReason::Truncated),
    };
    let mut next = next;
    let mut at = 40;
    for _ in 0..=IPV6_MAX_EXTENSIONS {
        match next {
            IPPROTO_TCP | IPPROTO_UDP => {
                let l4 = ip.get(at..end).unwrap_or(&[]);
                return transport(next, src, dst, l4, targets);
            }
            IPV6_FRAGMENT => return Class::Drop(DropReason::Fragment),
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let (Some(&n), Some(&len)) = (ip.get(at), ip.get(at + 1)) else {
                    return Class::Drop(DropReason::Truncated);
                };
                next = n;
                at += (usize::from(len) + 1) * 8;
                if at > end {
                    return Class::Drop(DropReason::Truncated);
                }
            }
            // ICMPv6, ESP, ...: nothing we serve.
            _ => return Class::NotForUs,
        }
    }
    Class::Drop(DropReason::Unsupported)
}

fn transport(proto: u8, src: IpAddr, dst: IpAddr, l4: &[u8], targets: &[Target]) -> Class {
    let (protocol, min) = match proto {
        IPPROTO_TCP => (Protocol::Tcp, 20),
        IPPROTO_UDP => (Protocol::Udp, 8),
        // ICMP to the VIP and the like: not a service of ours.
        _ => return Class::NotForUs,
    };
    let (Some(src_port), Some(dst_port)) = (be16(l4, 0), be16(l4, 2)) else {
        return Class::Drop(DropReason::Truncated);
    };
    let Some(target) = find_target(targets, dst, dst_port, protocol) else {
        return Class::NotForUs;
    };
    if l4.len() < min {
        return Class::Drop(DropReason::Truncated);
    }
    if protocol == Protocol::Tcp {
        let data_offset = l4.get(12).map_or(0, |b| usize::from(b >> 4) * 4);
        if data_offset < 20 {
            return Class::Drop(DropReason::BadHeader);
        }
        if data_offset > l4.len() {
            return Class::Drop(DropReason::Truncated);
        }
    }
    Class::Forward {
        target,
        tuple: FiveTuple {
            src,
            dst,
            src_port,
            dst_port,
            protocol,
        },
    }
}

/// The IPv4 virtual router MAC of VRRP group `vrid` (RFC 5798 §7.3).
pub fn vrrp_virtual_mac(vrid: u8) -> Mac {
    [0x00, 0x00, 0x5e, 0x00, 0x01, vrid]
}

/// Rewrites the frame's Ethernet addresses in place: to the backend, from us.
pub fn rewrite_macs(frame: &mut [u8], dst: Mac, src: Mac) -> bool {
    match frame.get_mut(..12) {
        Some(h) => {
            h[..6].copy_from_slice(&dst);
            h[6..12].copy_from_slice(&src);
            true
        }
        None => false,
    }
}

/// The fuzz entry (fuzz/fuzz_targets/dsr_frame.rs): classification and ARP parsing of any
/// bytes must not panic, and a forwarded frame's tuple must match its target.
pub fn fuzz_frame(data: &[u8]) {
    let targets = [
        Target {
            vip: IpAddr::V4(Ipv4Addr::new(10, 200, 0, 100)),
            port: 443,
            protocol: Protocol::Tcp,
            service: 0,
        },
        Target {
            vip: IpAddr::V4(Ipv4Addr::new(10, 200, 0, 100)),
            port: 3391,
            protocol: Protocol::Udp,
            service: 1,
        },
        Target {
            vip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100)),
            port: 3391,
            protocol: Protocol::Udp,
            service: 2,
        },
    ];
    if let Class::Forward { target, tuple } = classify(data, &targets) {
        let t = targets.get(target).copied();
        assert_eq!(
            t.map(|t| (t.vip, t.port, t.protocol)),
            Some((tuple.dst, tuple.dst_port, tuple.protocol))
        );
    }
    let _ = super::arp::parse(data);
}

/// Frame builders for tests, benchmarks and the namespace tests' injector.
pub mod build {
    use super::*;

    /// An Ethernet + IPv4 + TCP/UDP frame with `payload` bytes of payload.
    #[allow(clippy::too_many_arguments)]
    pub fn ipv4(
        dst_mac: Mac,
        src_mac: Mac,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: Protocol,
        src_port: u16,
        dst_port: u16,
        payload: usize,
    ) -> Vec<u8> {
        let l4 = match protocol {
            Protocol::Tcp => 20,
            Protocol::Udp => 8,
        };
        let total = 20 + l4 + payload;
        let mut f = Vec::with_capacity(ETH_HEADER + total);
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total16 = u16::try_from(total).unwrap_or(u16::MAX);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total16.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = match protocol {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        };
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&src_port.to_be_bytes());
        f.extend_from_slice(&dst_port.to_be_bytes());
        match protocol {
            Protocol::Tcp => {
                let mut t = [0u8; 16];
                t[8] = 0x50; // data offset 5
                t[9] = 0x02; // SYN
                t[10..12].copy_from_slice(&1024u16.to_be_bytes());
                f.extend_from_slice(&t);
            }
            Protocol::Udp => {
                let len = u16::try_from(8 + payload).unwrap_or(u16::MAX);
                f.extend_from_slice(&len.to_be_bytes());
                f.extend_from_slice(&[0, 0]); // no checksum (legal for IPv4)
            }
        }
        f.resize(ETH_HEADER + total, 0x5a);
        f
    }

    /// The Internet checksum of `data`.
    pub fn checksum(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for c in data.chunks(2) {
            let hi = c.first().copied().unwrap_or(0);
            let lo = c.get(1).copied().unwrap_or(0);
            sum += u32::from(u16::from_be_bytes([hi, lo]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::build::ipv4;
    use super::*;
    use proptest::prelude::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 100);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 5);
    const US: Mac = [2, 0, 0, 0, 0, 1];
    const THEM: Mac = [2, 0, 0, 0, 0, 2];

    fn targets() -> Vec<Target> {
        vec![
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
        ]
    }

    fn frame(proto: Protocol, port: u16) -> Vec<u8> {
        ipv4(US, THEM, CLIENT, VIP, proto, 50000, port, 10)
    }

    #[test]
    fn tcp_and_udp_to_targets_are_forwarded() {
        let t = targets();
        match classify(&frame(Protocol::Tcp, 443), &t) {
            Class::Forward { target: 0, tuple } => {
                assert_eq!(tuple.src, IpAddr::V4(CLIENT));
                assert_eq!(tuple.src_port, 50000);
                assert_eq!(tuple.dst_port, 443);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(&frame(Protocol::Udp, 3391), &t),
            Class::Forward { target: 1, .. }
        ));
    }

    #[test]
    fn other_ports_protocols_and_addresses_are_not_ours() {
        let t = targets();
        assert_eq!(classify(&frame(Protocol::Udp, 443), &t), Class::NotForUs);
        assert_eq!(classify(&frame(Protocol::Tcp, 80), &t), Class::NotForUs);
        let other = ipv4(US, THEM, CLIENT, CLIENT, Protocol::Tcp, 1, 443, 0);
        assert_eq!(classify(&other, &t), Class::NotForUs);
        let mut icmp = frame(Protocol::Tcp, 443);
        icmp[ETH_HEADER + 9] = 1;
        assert_eq!(classify(&icmp, &t), Class::NotForUs);
        let mut arp = frame(Protocol::Tcp, 443);
        arp[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        assert_eq!(classify(&arp, &t), Class::Arp);
    }

    #[test]
    fn fragments_are_dropped() {
        let t = targets();
        let mut f = frame(Protocol::Udp, 3391);
        f[ETH_HEADER + 6] = 0x20; // MF
        assert_eq!(classify(&f, &t), Class::Drop(DropReason::Fragment));
        f[ETH_HEADER + 6] = 0x00;
        f[ETH_HEADER + 7] = 0x10; // offset
        assert_eq!(classify(&f, &t), Class::Drop(DropReason::Fragment));
    }

    #[test]
    fn truncation_and_bad_headers() {
        let t = targets();
        let f = frame(Protocol::Tcp, 443);
        // Cut inside the TCP header.
        assert_eq!(
            classify(&f[..ETH_HEADER + 30], &t),
            Class::Drop(DropReason::Truncated)
        );
        // Cut inside the IP header, past the destination.
        let mut g = f.clone();
        g[ETH_HEADER] = 0x46; // IHL 6 but total length unchanged: header exceeds packet?
        g[ETH_HEADER + 2..ETH_HEADER + 4].copy_from_slice(&22u16.to_be_bytes());
        assert!(matches!(classify(&g, &t), Class::Drop(_) | Class::NotForUs));
        let mut v = f.clone();
        v[ETH_HEADER] = 0x55;
        assert_eq!(classify(&v, &t), Class::Drop(DropReason::BadHeader));
        let mut ihl = f.clone();
        ihl[ETH_HEADER] = 0x44;
        assert_eq!(classify(&ihl, &t), Class::Drop(DropReason::BadHeader));
        let mut total = f.clone();
        total[ETH_HEADER + 2..ETH_HEADER + 4].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(classify(&total, &t), Class::Drop(DropReason::Truncated));
        assert_eq!(classify(&f[..10], &t), Class::NotForUs);
    }

    #[test]
    fn ipv4_options_are_skipped() {
        let t = targets();
        let f = frame(Protocol::Tcp, 443);
        let mut g = f[..ETH_HEADER + 20].to_vec();
        g[ETH_HEADER] = 0x46;
        g.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
        g.extend_from_slice(&f[ETH_HEADER + 20..]);
        let total = u16::try_from(g.len() - ETH_HEADER).unwrap();
        g[ETH_HEADER + 2..ETH_HEADER + 4].copy_from_slice(&total.to_be_bytes());
        assert!(matches!(
            classify(&g, &t),
            Class::Forward { target: 0, tuple } if tuple.src_port == 50000
        ));
    }

    #[test]
    fn one_vlan_tag_is_understood() {
        let t = targets();
        let f = frame(Protocol::Tcp, 443);
        let mut g = f[..12].to_vec();
        g.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        g.extend_from_slice(&f[12..]);
        assert!(matches!(classify(&g, &t), Class::Forward { target: 0, .. }));
    }

    fn v6_frame(next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
        let vip: Ipv6Addr = "fd00::100".parse().unwrap();
        let mut f = Vec::new();
        f.extend_from_slice(&US);
        f.extend_from_slice(&THEM);
        f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&u16::try_from(ext.len() + l4.len()).unwrap().to_be_bytes());
        f.push(next);
        f.push(64);
        f.extend_from_slice(&"fd00::5".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&vip.octets());
        f.extend_from_slice(ext);
        f.extend_from_slice(l4);
        f
    }

    #[test]
    fn ipv6_direct_extension_and_fragment() {
        let t = vec![Target {
            vip: "fd00::100".parse().unwrap(),
            port: 3391,
            protocol: Protocol::Udp,
            service: 0,
        }];
        let udp = [0xc3, 0x50, 0x0d, 0x3f, 0, 8, 0, 0];
        assert!(matches!(
            classify(&v6_frame(17, &[], &udp), &t),
            Class::Forward { target: 0, tuple } if tuple.src_port == 50000
        ));
        let dest_opts = [17, 0, 1, 4, 0, 0, 0, 0];
        assert!(matches!(
            classify(&v6_frame(60, &dest_opts, &udp), &t),
            Class::Forward { .. }
        ));
        let frag = [17, 0, 0, 1, 0, 0, 0, 1];
        assert_eq!(
            classify(&v6_frame(44, &frag, &udp), &t),
            Class::Drop(DropReason::Fragment)
        );
        let f = v6_frame(17, &[], &udp);
        assert_eq!(
            classify(&f[..f.len() - 1], &t),
            Class::Drop(DropReason::Truncated)
        );
    }

    #[test]
    fn mac_rewrite() {
        let mut f = frame(Protocol::Tcp, 443);
        assert!(rewrite_macs(&mut f, [9; 6], [8; 6]));
        assert_eq!(&f[..6], &[9; 6]);
        assert_eq!(&f[6..12], &[8; 6]);
        assert!(!rewrite_macs(&mut [0u8; 5], [9; 6], [8; 6]));
    }

    #[test]
    fn fuzz_corpus_runs() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/dsr_frame");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            fuzz_frame(&data);
            n += 1;
        }
        assert!(n >= 3);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = classify(&bytes, &targets());
            fuzz_frame(&bytes);
        }

        /// Any mutation of a valid frame either still forwards the same tuple, or is dropped
        /// or passed: never forwarded as something else.
        #[test]
        fn mutations_never_forward_wrong(at in 0usize..60, val in any::<u8>(), cut in 0usize..60) {
            let t = targets();
            let mut f = frame(Protocol::Tcp, 443);
            let orig = classify(&f, &t);
            if let Some(b) = f.get_mut(at) { *b = val; }
            let len = f.len().saturating_sub(cut);
            if let Class::Forward { target, tuple } = classify(&f[..len], &t) {
                {
                    let Class::Forward { tuple: o, .. } = orig else { unreachable!() };
                    prop_assert_eq!(t[target].vip, tuple.dst);
                    prop_assert_eq!(t[target].port, tuple.dst_port);
                    prop_assert_eq!(t[target].protocol, tuple.protocol);
                    // Only bytes that are part of the tuple can change it.
                    if !(ETH_HEADER + 12..ETH_HEADER + 24).contains(&at) {
                        prop_assert_eq!(tuple, o);
                    }
                }
            }
        }
    }
}
