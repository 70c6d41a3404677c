//! ARP (RFC 826) for the forwarder (pure): parse requests and replies, build the VIP's replies
//! and announcements, build requests for backend MACs, and read the kernel's neighbour table
//! (`/proc/net/arp` text).
//!
//! The master answers ARP for the VIP itself instead of holding the VIP as a local address, so
//! the kernel never treats VIP packets as its own (docs/dsr.md, "Why the VIP is not local").

use std::net::Ipv4Addr;

use super::packet::{ether_type, Mac, ETHERTYPE_ARP, ETH_HEADER};

pub const BROADCAST: Mac = [0xff; 6];
const OP_REQUEST: u16 = 1;
const OP_REPLY: u16 = 2;
/// An ARP packet for Ethernet + IPv4, after the Ethernet header.
pub const ARP_LEN: usize = 28;
/// Ethernet minimum frame (without FCS): ARP frames are padded to it.
pub const MIN_FRAME: usize = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Request,
    Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub op: Op,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

fn mac(b: &[u8]) -> Option<Mac> {
    <[u8; 6]>::try_from(b).ok()
}

fn ip(b: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from)
}

/// An Ethernet/IPv4 ARP request or reply; `None` for anything else.
pub fn parse(frame: &[u8]) -> Option<Arp> {
    let (t, at) = ether_type(frame)?;
    if t != ETHERTYPE_ARP {
        return None;
    }
    let a = frame.get(at..at + ARP_LEN)?;
    // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4.
    if a.get(..6)? != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let op = match u16::from_be_bytes([a[6], a[7]]) {
        OP_REQUEST => Op::Request,
        OP_REPLY => Op::Reply,
        _ => return None,
    };
    Some(Arp {
        op,
        sender_mac: mac(&a[8..14])?,
        sender_ip: ip(&a[14..18])?,
        target_mac: mac(&a[18..24])?,
        target_ip: ip(&a[24..28])?,
    })
}

/// Writes an ARP frame into `out` (at least [`MIN_FRAME`] bytes) and returns its length.
fn write(out: &mut [u8], eth_dst: Mac, our_mac: Mac, op: u16, arp: &Arp) -> usize {
    let Some(f) = out.get_mut(..MIN_FRAME) else {
        return 0;
    };
    f.fill(0);
    f[..6].copy_from_slice(&eth_dst);
    f[6..12].copy_from_slice(&our_mac);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    let a = &mut f[ETH_HEADER..ETH_HEADER + ARP_LEN];
    a[..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    a[6..8].copy_from_slice(&op.to_be_bytes());
    a[8..14].copy_from_slice(&arp.sender_mac);
    a[14..18].copy_from_slice(&arp.sender_ip.octets());
    a[18..24].copy_from_slice(&arp.target_mac);
    a[24..28].copy_from_slice(&arp.target_ip.octets());
    MIN_FRAME
}

/// The reply to `request` saying `vip` is at `our_mac`, unicast to the asker.
pub fn reply(out: &mut [u8], request: &Arp, our_mac: Mac) -> usize {
    let arp = Arp {
        op: Op::Reply,
        sender_mac: our_mac,
        sender_ip: request.target_ip,
        target_mac: request.sender_mac,
        target_ip: request.sender_ip,
    };
    write(out, request.sender_mac, our_mac, OP_REPLY, &arp)
}

/// A gratuitous ARP request (sender = target = `vip`), broadcast: every host on the segment
/// that has `vip` in its cache updates it to `our_mac` (the hand-over announcement).
pub fn gratuitous(out: &mut [u8], vip: Ipv4Addr, our_mac: Mac) -> usize {
    let arp = Arp {
        op: Op::Request,
        sender_mac: our_mac,
        sender_ip: vip,
        target_mac: [0; 6],
        target_ip: vip,
    };
    write(out, BROADCAST, our_mac, OP_REQUEST, &arp)
}

/// A broadcast request for `target`'s MAC from our own address.
pub fn request(out: &mut [u8], our_ip: Ipv4Addr, our_mac: Mac, target: Ipv4Addr) -> usize {
    let arp = Arp {
        op: Op::Request,
        sender_mac: our_mac,
        sender_ip: our_ip,
        target_mac: [0; 6],
        target_ip: target,
    };
    write(out, BROADCAST, our_mac, OP_REQUEST, &arp)
}

/// Complete entries of `/proc/net/arp` on `interface`: (address, MAC).
///
/// Format: a header line, then `IP  HW-type  Flags  HW-address  Mask  Device`; flag 0x2 is
/// ATF_COM (complete). Incomplete entries show the MAC 00:00:00:00:00:00 and are skipped.
pub fn proc_net_arp(text: &str, interface: &str) -> Vec<(Ipv4Addr, Mac)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (ip, flags, hw, dev) = (f.first()?, f.get(2)?, f.get(3)?, f.get(5)?);
            if *dev != interface {
                return None;
            }
            let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
            if flags & 0x2 == 0 {
                return None;
            }
            let mac = parse_mac(hw)?;
            if mac == [0; 6] {
                return None;
            }
            Some((ip.parse().ok()?, mac))
        })
        .collect()
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

pub fn format_mac(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const US: Mac = [2, 0, 0, 0, 0, 1];
    const THEM: Mac = [2, 0, 0, 0, 0, 2];

    #[test]
    fn request_reply_round_trip() {
        let mut buf = [0u8; 64];
        let vip = Ipv4Addr::new(10, 200, 0, 100);
        let client = Ipv4Addr::new(10, 200, 1, 5);
        let n = request(&mut buf, client, THEM, vip);
        let req = parse(&buf[..n]).unwrap();
        assert_eq!(req.op, Op::Request);
        assert_eq!(req.target_ip, vip);
        assert_eq!(req.sender_mac, THEM);
        let mut out = [0u8; 64];
        let n = reply(&mut out, &req, US);
        assert_eq!(&out[..6], &THEM);
        let rep = parse(&out[..n]).unwrap();
        assert_eq!(rep.op, Op::Reply);
        assert_eq!(rep.sender_ip, vip);
        assert_eq!(rep.sender_mac, US);
        assert_eq!(rep.target_ip, client);
        let n = gratuitous(&mut out, vip, US);
        let g = parse(&out[..n]).unwrap();
        assert_eq!(
            (g.sender_ip, g.target_ip, &out[..6]),
            (vip, vip, &BROADCAST[..])
        );
        assert_eq!(write(&mut [0u8; 10], US, US, 1, &g), 0);
    }

    #[test]
    fn kernel_table() {
        let text =
            "IP address       HW type     Flags       HW address            Mask     Device\n\
                    10.200.0.11      0x1         0x2         0a:1b:2c:3d:4e:5f     *        eth0\n\
                    10.200.0.12      0x1         0x0         00:00:00:00:00:00     *        eth0\n\
                    10.200.0.13      0x1         0x2         0a:1b:2c:3d:4e:60     *        eth1\n\
                    garbage\n";
        assert_eq!(
            proc_net_arp(text, "eth0"),
            vec![(
                Ipv4Addr::new(10, 200, 0, 11),
                [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]
            )]
        );
        assert_eq!(parse_mac("1:2:3:4:5"), None);
        assert_eq!(parse_mac("1:2:3:4:5:6:7"), None);
        assert_eq!(format_mac(&[0xa, 0, 0, 0, 0, 0xff]), "0a:00:00:00:00:ff");
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse(&bytes);
            let _ = proc_net_arp(&String::from_utf8_lossy(&bytes), "eth0");
        }
    }
}
