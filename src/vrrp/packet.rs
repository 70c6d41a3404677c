//! The VRRPv3 advertisement (RFC 5798 §5) and the IPv4 header around it: parse, validate,
//! encode, checksum. Pure: no socket, no clock. Parsing borrows the received buffer and never
//! allocates, so a flood of garbage costs one pass over each packet and a counter.
//!
//! Layout (PROTOCOLS.md §7.1):
//!
//! ```text
//!  0        1        2        3
//!  ver|type  VRID     priority count
//!  rsvd|max advert int (cs)   checksum
//!  IPvX address 1 .. count
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol / IPv6 next header of VRRP (RFC 5798 §5.1.1.4).
pub const IP_PROTO: u8 = 112;
/// The only version this codec speaks (RFC 5798 §5.2.1).
pub const VERSION: u8 = 3;
/// ADVERTISEMENT, the only type (RFC 5798 §5.2.2).
pub const TYPE_ADVERT: u8 = 1;
/// TTL / hop limit every advert is sent with and must arrive with (RFC 5798 §5.1.1.3).
pub const TTL: u8 = 255;
/// 224.0.0.18 (RFC 5798 §5.1.1.2).
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// ff02::12 (RFC 5798 §5.1.2.2).
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// The address owner's priority (RFC 5798 §5.2.4).
pub const PRIORITY_OWNER: u8 = 255;
/// Priority of a master that resigns (RFC 5798 §5.2.4).
pub const PRIORITY_RESIGN: u8 = 0;
/// Fixed header before the addresses.
pub const HEADER_LEN: usize = 8;
/// Max Adver Int is 12 bits of centiseconds (RFC 5798 §5.2.7).
pub const MAX_INTERVAL_CS: u16 = 0x0fff;
/// Count is one byte; with IPv6 that is 8 + 255 × 16 bytes, still under any MTU we meet.
pub const MAX_ADDRESSES: usize = 255;

/// Why a received packet was dropped. Each is a `reason` label of
/// `portico_vrrp_rx_errors_total`, named like keepalived's / RFC 6527's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum RxError {
    /// TTL / hop limit was not 255: the packet crossed a router (RFC 5798 §7.1).
    #[error("TTL / hop limit is not 255")]
    Ttl,
    /// Version field is not 3.
    #[error("version is not 3")]
    Version,
    /// Type field is not 1 (ADVERTISEMENT).
    #[error("type is not ADVERTISEMENT")]
    Type,
    /// The checksum does not match (with the pseudo-header forms we accept).
    #[error("bad checksum")]
    Checksum,
    /// No instance here has this VRID.
    #[error("no instance for this VRID")]
    UnknownVrid,
    /// Shorter than its header, or than its IP header says, or cut inside an address.
    #[error("truncated packet")]
    Truncated,
    /// The count field disagrees with the number of addresses carried (or is zero).
    #[error("address count does not match the packet length")]
    AddressCount,
    /// Max Adver Int is zero.
    #[error("advertisement interval is zero")]
    Interval,
    /// Unicast mode: the sender is not a configured peer.
    #[error("sender is not a configured unicast peer")]
    NotPeer,
    /// The IP header is not one we can read (not IPv4, options overrun, not protocol 112).
    #[error("malformed IP header")]
    IpHeader,
    /// The advert's address list differs from ours (RFC 5798 §7.1 MAY; counted, still used).
    #[error("address list differs from the configured VIPs")]
    AddressList,
}

impl RxError {
    pub const ALL: [RxError; 11] = [
        RxError::Ttl,
        RxError::Version,
        RxError::Type,
        RxError::Checksum,
        RxError::UnknownVrid,
        RxError::Truncated,
        RxError::AddressCount,
        RxError::Interval,
        RxError::NotPeer,
        RxError::IpHeader,
        RxError::AddressList,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RxError::Ttl => "ttl",
            RxError::Version => "version",
            RxError::Type => "type",
            RxError::Checksum => "checksum",
            RxError::UnknownVrid => "vrid_unknown",
            RxError::Truncated => "truncated",
            RxError::AddressCount => "address_count",
            RxError::Interval => "interval",
            RxError::NotPeer => "not_peer",
            RxError::IpHeader => "ip_header",
            RxError::AddressList => "address_list",
        }
    }
}

/// Address family of an advert: decides the address width and the pseudo-header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn addr_len(self) -> usize {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// Which checksum forms a receiver accepts besides the correct one (PROTOCOLS.md §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChecksumCompat {
    /// Also accept an IPv4 checksum computed with 224.0.0.18 as destination although the packet
    /// was unicast (keepalived < 2 did this; current keepalived accepts it too).
    pub multicast_dst_for_unicast: bool,
    /// Also accept an IPv4 checksum without any pseudo-header (keepalived `v3_checksum_as_v2`).
    pub as_v2: bool,
}

/// A parsed advertisement, borrowing the packet's address bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdvertView<'a> {
    pub family: Family,
    pub vrid: u8,
    pub priority: u8,
    /// Centiseconds, 1..=4095.
    pub interval_cs: u16,
    /// `count` addresses of `family.addr_len()` bytes each.
    addresses: &'a [u8],
}

impl<'a> AdvertView<'a> {
    pub fn count(&self) -> usize {
        self.addresses.len() / self.family.addr_len()
    }

    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + 'a {
        let family = self.family;
        self.addresses
            .chunks_exact(family.addr_len())
            .filter_map(move |c| match family {
                Family::V4 => <[u8; 4]>::try_from(c).ok().map(IpAddr::from),
                Family::V6 => <[u8; 16]>::try_from(c).ok().map(IpAddr::from),
            })
    }

    /// Whether the advert carries exactly `ours` (in any order).
    pub fn same_addresses(&self, ours: &[IpAddr]) -> bool {
        self.count() == ours.len() && self.addresses().all(|a| ours.contains(&a))
    }

    pub fn to_owned(&self) -> Advert {
        Advert {
            vrid: self.vrid,
            priority: self.priority,
            interval_cs: self.interval_cs,
            addresses: self.addresses().collect(),
        }
    }
}

/// An advertisement to send (or an owned copy of a received one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub vrid: u8,
    pub priority: u8,
    /// Centiseconds, 1..=4095 (only the low 12 bits are sent).
    pub interval_cs: u16,
    /// All of one family, 1..=255 of them.
    pub addresses: Vec<IpAddr>,
}

impl Advert {
    /// Writes the advert for an IP packet from `src` to `dst` into `out` (cleared first; a
    /// reused buffer means no allocation per advert). The address family is `src`'s;
    /// addresses of the other family are skipped, since a VRRP advert carries one family.
    pub fn encode(&self, src: IpAddr, dst: IpAddr, out: &mut Vec<u8>) {
        out.clear();
        let family = Family::of(src);
        let addrs = self
            .addresses
            .iter()
            .filter(|a| Family::of(**a) == family)
            .take(MAX_ADDRESSES);
        let count = addrs.clone().count() as u8;
        let interval = self.interval_cs & MAX_INTERVAL_CS;
        out.extend_from_slice(&[
            (VERSION << 4) | TYPE_ADVERT,
            self.vrid,
            self.priority,
            count,
        ]);
        out.extend_from_slice(&interval.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        for a in addrs {
            match a {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            }
        }
        let sum = checksum(src, dst, out);
        if let Some(c) = out.get_mut(6..8) {
            c.copy_from_slice(&sum.to_be_bytes());
        }
    }
}

/// Parses and validates a VRRP payload (the bytes after the IP header) received from `src` to
/// `dst`. Checks, in the order a reader would: length, version, type, count, interval,
/// checksum. TTL, VRID and peer checks belong to the caller, who knows the socket and config.
pub fn parse(
    bytes: &[u8],
    src: IpAddr,
    dst: IpAddr,
    compat: ChecksumCompat,
) -> Result<AdvertView<'_>, RxError> {
    let family = Family::of(src);
    let header: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(RxError::Truncated)?;
    let [ver_type, vrid, priority, count, int_hi, int_lo, _, _] = *header;
    if ver_type >> 4 != VERSION {
        return Err(RxError::Version);
    }
    if ver_type & 0x0f != TYPE_ADVERT {
        return Err(RxError::Type);
    }
    let body = bytes.get(HEADER_LEN..).unwrap_or_default();
    let alen = family.addr_len();
    if body.len() % alen != 0 {
        return Err(RxError::Truncated);
    }
    if count == 0 || body.len() / alen != usize::from(count) {
        return Err(RxError::AddressCount);
    }
    let interval_cs = u16::from_be_bytes([int_hi, int_lo]) & MAX_INTERVAL_CS;
    if interval_cs == 0 {
        return Err(RxError::Interval);
    }
    if !checksum_ok(bytes, src, dst, compat) {
        return Err(RxError::Checksum);
    }
    Ok(AdvertView {
        family,
        vrid,
        priority,
        interval_cs,
        addresses: body,
    })
}

fn checksum_ok(bytes: &[u8], src: IpAddr, dst: IpAddr, compat: ChecksumCompat) -> bool {
    // Summing the packet *with* its checksum field gives 0 when it is right.
    if checksum(src, dst, bytes) == 0 {
        return true;
    }
    if let (IpAddr::V4(_), IpAddr::V4(d)) = (src, dst) {
        if compat.multicast_dst_for_unicast
            && d != MULTICAST_V4
            && checksum(src, IpAddr::V4(MULTICAST_V4), bytes) == 0
        {
            return true;
        }
        if compat.as_v2 && finish(sum_bytes(0, bytes)) == 0 {
            return true;
        }
    }
    false
}

/// The RFC 5798 §5.2.8 checksum of `vrrp` (as it is: pass it with the checksum field zeroed to
/// compute one, or as received to verify, which yields 0 when correct), over the IPv4 pseudo-
/// header `src dst 0 112 len` or the IPv6 one of RFC 8200 §8.1.
pub fn checksum(src: IpAddr, dst: IpAddr, vrrp: &[u8]) -> u16 {
    let len = vrrp.len() as u32;
    let mut sum = 0u32;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = sum_bytes(sum, &s.octets());
            sum = sum_bytes(sum, &d.octets());
            sum += u32::from(IP_PROTO);
            sum += len & 0xffff;
        }
        _ => {
            sum = sum_bytes(sum, &ip6_octets(src));
            sum = sum_bytes(sum, &ip6_octets(dst));
            sum += len >> 16;
            sum += len & 0xffff;
            sum += u32::from(IP_PROTO);
        }
    }
    finish(sum_bytes(sum, vrrp))
}

fn ip6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// One's-complement running sum of 16-bit big-endian words (odd tail padded with zero).
pub fn sum_bytes(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        // Fold early so a long buffer can never overflow the accumulator.
        if sum > 0xffff_0000 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds a running sum and complements it.
pub fn finish(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What the IPv4 header of a packet read from a raw socket tells us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub protocol: u8,
}

/// Splits a datagram from a raw IPv4 socket (which hands us the IP header) into its header and
/// payload. The payload ends where the header's total length says, so link padding is ignored.
pub fn split_ipv4(packet: &[u8]) -> Result<(Ipv4Header, &[u8]), RxError> {
    let first = *packet.first().ok_or(RxError::Truncated)?;
    if first >> 4 != 4 {
        return Err(RxError::IpHeader);
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 {
        return Err(RxError::IpHeader);
    }
    let header = packet.get(..ihl).ok_or(RxError::Truncated)?;
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    // Linux raw sockets report the real length; a header claiming more is a cut packet.
    let payload = packet.get(ihl..total.max(ihl)).ok_or(RxError::Truncated)?;
    let h = Ipv4Header {
        ttl: header[8],
        protocol: header[9],
        src: Ipv4Addr::new(header[12], header[13], header[14], header[15]),
        dst: Ipv4Addr::new(header[16], header[17], header[18], header[19]),
    };
    if h.protocol != IP_PROTO {
        return Err(RxError::IpHeader);
    }
    Ok((h, payload))
}

/// The fuzz target's body (`fuzz/fuzz_targets/vrrp.rs`), also run by the tests: a raw IPv4
/// datagram as the receive socket hands it over. Whatever parses must survive encode → parse
/// unchanged; nothing may panic.
pub fn fuzz_one(data: &[u8]) {
    let Ok((h, payload)) = split_ipv4(data) else {
        return;
    };
    let (src, dst) = (IpAddr::V4(h.src), IpAddr::V4(h.dst));
    let compat = ChecksumCompat {
        multicast_dst_for_unicast: true,
        as_v2: true,
    };
    if let Ok(view) = parse(payload, src, dst, compat) {
        let owned = view.to_owned();
        let mut out = Vec::new();
        owned.encode(src, dst, &mut out);
        let back = parse(&out, src, dst, ChecksumCompat::default()).map(|v| v.to_owned());
        assert_eq!(back, Ok(owned), "encode -> parse changed the advert");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::from(a)
    }

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    fn advert(vrid: u8, priority: u8, interval_cs: u16, addrs: &[IpAddr]) -> Advert {
        Advert {
            vrid,
            priority,
            interval_cs,
            addresses: addrs.to_vec(),
        }
    }

    const MCAST: IpAddr = IpAddr::V4(MULTICAST_V4);

    #[test]
    fn captured_keepalived_advert_parses_and_reencodes() {
        // PROTOCOLS.md §7.4.1: keepalived 2.2.7, 10.200.0.1 -> 224.0.0.18.
        let wire = hex("31 33 96 01 00 64 41 e3 0a c8 00 64");
        let src = v4([10, 200, 0, 1]);
        let a = parse(&wire, src, MCAST, ChecksumCompat::default()).unwrap();
        assert_eq!(
            (a.vrid, a.priority, a.interval_cs, a.count()),
            (51, 150, 100, 1)
        );
        assert_eq!(a.addresses().collect::<Vec<_>>(), [v4([10, 200, 0, 100])]);
        let mut out = Vec::new();
        a.to_owned().encode(src, MCAST, &mut out);
        assert_eq!(out, wire);
    }

    #[test]
    fn recomputed_vectors_from_protocols() {
        let vip = [v4([10, 200, 0, 100])];
        let mut out = Vec::new();
        advert(51, 150, 10, &vip).encode(v4([10, 200, 0, 1]), MCAST, &mut out);
        assert_eq!(&out[6..8], &[0x42, 0x3d]);
        advert(51, 150, 100, &vip).encode(v4([10, 200, 0, 2]), MCAST, &mut out);
        assert_eq!(&out[6..8], &[0x41, 0xe2]);
    }

    #[test]
    fn worked_example_multicast_unicast_and_resign() {
        let vip = [v4([192, 0, 2, 10])];
        let src = v4([192, 0, 2, 2]);
        let mut out = Vec::new();
        advert(51, 150, 100, &vip).encode(src, MCAST, &mut out);
        assert_eq!(out, hex("31 33 96 01 00 64 D3 CA C0 00 02 0A"));
        advert(51, 150, 100, &vip).encode(src, v4([192, 0, 2, 3]), &mut out);
        assert_eq!(&out[6..8], &[0xF1, 0xD9]);
        advert(51, 0, 100, &vip).encode(src, MCAST, &mut out);
        assert_eq!(out, hex("31 33 00 01 00 64 69 CB C0 00 02 0A"));
    }

    #[test]
    fn rejections_by_reason() {
        let src = v4([10, 200, 0, 1]);
        let good = hex("31 33 96 01 00 64 41 e3 0a c8 00 64");
        let c = ChecksumCompat::default();
        let check = |bytes: &[u8]| parse(bytes, src, MCAST, c).map(|_| ());
        assert_eq!(check(&good[..6]), Err(RxError::Truncated));
        assert_eq!(check(&good[..10]), Err(RxError::Truncated));
        let mut b = good.clone();
        b[0] = 0x21;
        assert_eq!(check(&b), Err(RxError::Version));
        let mut b = good.clone();
        b[0] = 0x32;
        assert_eq!(check(&b), Err(RxError::Type));
        let mut b = good.clone();
        b[3] = 2;
        assert_eq!(check(&b), Err(RxError::AddressCount));
        let mut b = good.clone();
        b[3] = 0;
        assert_eq!(check(&b[..8]), Err(RxError::AddressCount));
        let mut b = good.clone();
        b[6] ^= 1;
        assert_eq!(check(&b), Err(RxError::Checksum));
        let mut b = good.clone();
        b[4] = 0;
        b[5] = 0;
        assert_eq!(check(&b), Err(RxError::Interval));
        // The source is in the sum: the same bytes from another host do not verify.
        assert_eq!(
            parse(&good, v4([10, 200, 0, 2]), MCAST, c).map(|_| ()),
            Err(RxError::Checksum)
        );
    }

    #[test]
    fn unicast_compat_forms() {
        let vip = [v4([192, 0, 2, 10])];
        let (src, peer) = (v4([192, 0, 2, 2]), v4([192, 0, 2, 3]));
        let mut old = Vec::new();
        advert(51, 150, 100, &vip).encode(src, MCAST, &mut old);
        let strict = ChecksumCompat::default();
        assert_eq!(
            parse(&old, src, peer, strict).map(|_| ()),
            Err(RxError::Checksum)
        );
        let compat = ChecksumCompat {
            multicast_dst_for_unicast: true,
            as_v2: false,
        };
        assert!(parse(&old, src, peer, compat).is_ok());
        // v2-style: no pseudo-header at all.
        let mut v2 = old.clone();
        v2[6..8].copy_from_slice(&[0, 0]);
        let sum = finish(sum_bytes(0, &v2));
        v2[6..8].copy_from_slice(&sum.to_be_bytes());
        assert!(parse(&v2, src, MCAST, strict).is_err());
        let as_v2 = ChecksumCompat {
            multicast_dst_for_unicast: false,
            as_v2: true,
        };
        assert!(parse(&v2, src, MCAST, as_v2).is_ok());
    }

    #[test]
    fn ipv6_advert_round_trips() {
        let src: IpAddr = "fe80::1".parse().unwrap();
        let dst = IpAddr::V6(MULTICAST_V6);
        let vips: Vec<IpAddr> = vec!["2001:db8::10".parse().unwrap()];
        let mut out = Vec::new();
        advert(7, 200, 100, &vips).encode(src, dst, &mut out);
        assert_eq!(out.len(), 8 + 16);
        let a = parse(&out, src, dst, ChecksumCompat::default()).unwrap();
        assert_eq!(a.to_owned(), advert(7, 200, 100, &vips));
        // An IPv6 payload is not a whole number of IPv4 addresses the other way around.
        assert_eq!(
            parse(&out[..20], src, dst, ChecksumCompat::default()).map(|_| ()),
            Err(RxError::Truncated)
        );
    }

    #[test]
    fn ipv4_header_split() {
        let payload = hex("31 33 96 01 00 64 41 e3 0a c8 00 64");
        let mut pkt = hex("45 c0 00 20 00 00 40 00 ff 70 00 00 0a c8 00 01 e0 00 00 12");
        pkt.extend_from_slice(&payload);
        pkt.extend_from_slice(&[0; 14]); // link padding
        let (h, p) = split_ipv4(&pkt).unwrap();
        assert_eq!(h.ttl, 255);
        assert_eq!(h.src, Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(h.dst, MULTICAST_V4);
        assert_eq!(p, &payload[..]);
        assert_eq!(split_ipv4(&pkt[..10]), Err(RxError::Truncated));
        let mut bad = pkt.clone();
        bad[9] = 6;
        assert_eq!(split_ipv4(&bad), Err(RxError::IpHeader));
        let mut long = pkt.clone();
        long[2] = 0x10;
        assert_eq!(split_ipv4(&long[..40]), Err(RxError::Truncated));
    }

    fn arb_family_addrs() -> impl Strategy<Value = (IpAddr, Vec<IpAddr>)> {
        prop_oneof![
            (
                any::<[u8; 4]>(),
                prop::collection::vec(any::<[u8; 4]>(), 1..20)
            )
                .prop_map(|(s, v)| (IpAddr::from(s), v.into_iter().map(IpAddr::from).collect())),
            (
                any::<[u8; 16]>(),
                prop::collection::vec(any::<[u8; 16]>(), 1..8)
            )
                .prop_map(|(s, v)| (IpAddr::from(s), v.into_iter().map(IpAddr::from).collect())),
        ]
    }

    proptest! {
        #[test]
        fn encode_parse_round_trip(
            (src, addrs) in arb_family_addrs(),
            vrid in 1u8..,
            priority in any::<u8>(),
            interval_cs in 1u16..=MAX_INTERVAL_CS,
            unicast in any::<bool>(),
        ) {
            let dst = match (src, unicast) {
                (_, true) => src,
                (IpAddr::V4(_), false) => MCAST,
                (IpAddr::V6(_), false) => IpAddr::V6(MULTICAST_V6),
            };
            let a = advert(vrid, priority, interval_cs, &addrs);
            let mut out = Vec::new();
            a.encode(src, dst, &mut out);
            let back = parse(&out, src, dst, ChecksumCompat::default()).unwrap();
            prop_assert_eq!(back.to_owned(), a);
        }

        #[test]
        fn any_single_bit_flip_is_rejected(
            (src, addrs) in arb_family_addrs(),
            bit in any::<prop::sample::Index>(),
        ) {
            let dst = match src {
                IpAddr::V4(_) => MCAST,
                IpAddr::V6(_) => IpAddr::V6(MULTICAST_V6),
            };
            let mut out = Vec::new();
            advert(9, 100, 100, &addrs).encode(src, dst, &mut out);
            let i = bit.index(out.len() * 8);
            out[i / 8] ^= 1 << (i % 8);
            prop_assert!(parse(&out, src, dst, ChecksumCompat::default()).is_err());
        }

        #[test]
        fn fuzz_body_on_mutated_captures(
            flips in prop::collection::vec((0usize..32, any::<u8>()), 0..4),
        ) {
            let mut pkt = hex("45 c0 00 20 00 00 40 00 ff 70 00 00 0a c8 00 01 e0 00 00 12 31 33 96 01 00 64 41 e3 0a c8 00 64");
            for (i, b) in flips {
                pkt[i] ^= b;
            }
            fuzz_one(&pkt);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            src in any::<[u8; 4]>(),
        ) {
            let _ = parse(&bytes, IpAddr::from(src), MCAST, ChecksumCompat { multicast_dst_for_unicast: true, as_v2: true });
            let _ = split_ipv4(&bytes);
        }
    }
}
