//! Ethernet frames that announce or probe an address: gratuitous ARP (RFC 5227 §2.4),
//! ARP probe (RFC 5227 §2.1.1), unsolicited Neighbor Advertisement (RFC 4861 §4.4, §7.2.6),
//! and the little ARP parsing conflict detection needs. Pure; PROTOCOLS.md §7.5–7.6.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::vrrp::packet::{finish, sum_bytes};

pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Minimum Ethernet payload is 46 bytes: ARP frames are padded to 60 (without FCS).
pub const ARP_FRAME_LEN: usize = 60;
/// 14 Ethernet + 40 IPv6 + 24 NA + 8 target link-layer option.
pub const NA_FRAME_LEN: usize = 86;
/// ff02::1, all nodes (RFC 4861 §7.2.6).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ICMPV6: u8 = 58;
const NEIGHBOR_ADVERT: u8 = 136;
/// Override flag (RFC 4861 §4.4): replace cached link-layer addresses.
const NA_OVERRIDE: u32 = 0x2000_0000;

fn arp(sha: Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&sha);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, oper 1 (request).
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa.octets());
    // tha stays zero (RFC 5227: SHOULD be zero, ignored by receivers).
    f[38..42].copy_from_slice(&tpa.octets());
    f
}

/// Gratuitous ARP announcing that `ip` is at `mac`: an ARP request with spa = tpa = ip.
pub fn gratuitous_arp(mac: Mac, ip: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    arp(mac, ip, ip)
}

/// ARP probe for `ip`: sender address 0.0.0.0 so nobody's cache changes.
pub fn arp_probe(mac: Mac, ip: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    arp(mac, Ipv4Addr::UNSPECIFIED, ip)
}

/// The fields of a received ARP packet conflict detection looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpInfo {
    pub oper: u16,
    pub sha: Mac,
    pub spa: Ipv4Addr,
    pub tpa: Ipv4Addr,
}

/// Parses an Ethernet/IPv4 ARP frame; `None` for anything else.
pub fn parse_arp(frame: &[u8]) -> Option<ArpInfo> {
    let f: &[u8; 42] = frame.get(..42)?.try_into().ok()?;
    if u16::from_be_bytes([f[12], f[13]]) != ETH_P_ARP || f[14..20] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    Some(ArpInfo {
        oper: u16::from_be_bytes([f[20], f[21]]),
        sha: f[22..28].try_into().ok()?,
        spa: Ipv4Addr::new(f[28], f[29], f[30], f[31]),
        tpa: Ipv4Addr::new(f[38], f[39], f[40], f[41]),
    })
}

/// Whether `arp` shows another host (not `ours`) using `ip`: as sender of anything, or, during
/// a probe, as the target of someone else's probe (RFC 5227 §2.1.1 simultaneous probe).
pub fn claims(arp: &ArpInfo, ip: Ipv4Addr, ours: Mac) -> bool {
    arp.sha != ours
        && (arp.spa == ip || (arp.spa.is_unspecified() && arp.tpa == ip && arp.oper == 1))
}

/// Unsolicited Neighbor Advertisement: `target` is at `mac`, from `src` (the interface's
/// link-local address) to all nodes, hop limit 255, Override set, Solicited clear. Router is
/// clear: a balancer is a host, and R=1 would make neighbours treat it as a default router.
pub fn unsolicited_na(mac: Mac, src: Ipv6Addr, target: Ipv6Addr) -> [u8; NA_FRAME_LEN] {
    let mut f = [0u8; NA_FRAME_LEN];
    f[0..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let ip = &mut f[14..54];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&32u16.to_be_bytes());
    ip[6] = ICMPV6;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&ALL_NODES.octets());
    let icmp = &mut f[54..86];
    icmp[0] = NEIGHBOR_ADVERT;
    icmp[4..8].copy_from_slice(&NA_OVERRIDE.to_be_bytes());
    icmp[8..24].copy_from_slice(&target.octets());
    // Option: target link-layer address, length 1 (8 bytes).
    icmp[24] = 2;
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&mac);
    let mut sum = sum_bytes(0, &src.octets());
    sum = sum_bytes(sum, &ALL_NODES.octets());
    sum += 32 + u32::from(ICMPV6);
    let sum = finish(sum_bytes(sum, icmp));
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    #[test]
    fn garp_matches_protocols_example() {
        // PROTOCOLS.md §7.5: VMAC for VRID 51, VIP 192.0.2.10.
        let f = gratuitous_arp([0, 0, 0x5e, 0, 1, 0x33], Ipv4Addr::new(192, 0, 2, 10));
        let want = hex("FF FF FF FF FF FF 00 00 5E 00 01 33 08 06 00 01 08 00 06 04 00 01 00 00 5E 00 01 33 C0 00 02 0A 00 00 00 00 00 00 C0 00 02 0A");
        assert_eq!(&f[..42], &want[..]);
        assert!(f[42..].iter().all(|b| *b == 0));
        let a = parse_arp(&f).unwrap();
        assert_eq!(a.spa, Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(a.oper, 1);
    }

    #[test]
    fn probe_and_conflict_rules() {
        let ours = [2, 0, 0, 0, 0, 1];
        let theirs = [2, 0, 0, 0, 0, 2];
        let vip = Ipv4Addr::new(10, 200, 0, 100);
        let p = parse_arp(&arp_probe(ours, vip)).unwrap();
        assert!(p.spa.is_unspecified());
        // Our own probe echoed back is no conflict; another host's answer or probe is.
        assert!(!claims(&p, vip, ours));
        assert!(claims(
            &parse_arp(&gratuitous_arp(theirs, vip)).unwrap(),
            vip,
            ours
        ));
        assert!(claims(
            &parse_arp(&arp_probe(theirs, vip)).unwrap(),
            vip,
            ours
        ));
        let other = Ipv4Addr::new(10, 200, 0, 7);
        assert!(!claims(
            &parse_arp(&gratuitous_arp(theirs, other)).unwrap(),
            vip,
            ours
        ));
        assert_eq!(parse_arp(&[0u8; 30]), None);
    }

    #[test]
    fn na_has_a_valid_icmpv6_checksum_and_flags() {
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let target: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let f = unsolicited_na([2, 0, 0, 0, 0, 1], src, target);
        let icmp = &f[54..86];
        let mut sum = sum_bytes(0, &src.octets());
        sum = sum_bytes(sum, &ALL_NODES.octets());
        sum += 32 + 58;
        assert_eq!(finish(sum_bytes(sum, icmp)), 0);
        assert_eq!(icmp[4], 0x20); // O only
        assert_eq!(&icmp[8..24], &target.octets());
        assert_eq!(f[14 + 7], 255);
    }
}
