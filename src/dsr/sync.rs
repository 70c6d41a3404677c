//! The flow-table sync datagram (pure; the forwarder thread owns the socket).
//!
//! conntrackd's idea, cut down to what dsr needs: the forwarding node tells its peers, for
//! each flow it places, which gateway it chose. A peer keeps the entries in its own flow table
//! while it is backup, so after a hand-over the flow stays on its gateway even where the new
//! master would have placed it elsewhere (the old master's stick-table pin, a gateway whose
//! state changed around the hand-over). Without sync the new master relies on Maglev agreeing,
//! which it does only for clients placed by Maglev over the same backend set.
//!
//! Wire format, big-endian, one UDP datagram:
//!
//! ```text
//! magic "PFS1" (4) | count (2) | count × entry (17)
//! entry: protocol (1: 6 TCP, 17 UDP) | client IPv4 (4) | client port (2)
//!        | VIP (4) | VIP port (2) | gateway IPv4 (4)
//! ```
//!
//! The gateway is named by its address, not by an index or a name, so two nodes whose configs
//! list the pool in a different order (or are mid-reload) still agree. No authentication:
//! datagrams are accepted only from the configured peers' addresses, and the sync belongs on
//! the balancers' own link or VLAN (docs/dsr.md).

use std::net::{IpAddr, Ipv4Addr};

use super::packet::FiveTuple;
use crate::config::Protocol;

pub const MAGIC: [u8; 4] = *b"PFS1";
const HEADER: usize = 6;
const ENTRY: usize = 17;
/// Entries per datagram: 1,366 bytes, inside any Ethernet MTU after IP and UDP headers.
pub const MAX_ENTRIES: usize = 80;
/// The largest datagram [`encode`] writes.
pub const MAX_DATAGRAM: usize = HEADER + MAX_ENTRIES * ENTRY;

/// One placed flow: its five-tuple (IPv4) and the gateway it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncEntry {
    pub protocol: Protocol,
    pub client: Ipv4Addr,
    pub client_port: u16,
    pub vip: Ipv4Addr,
    pub vip_port: u16,
    pub gateway: Ipv4Addr,
}

impl SyncEntry {
    /// The entry for `tuple` placed on `gateway`; `None` for IPv6 (dsr forwards IPv4 only).
    pub fn new(tuple: &FiveTuple, gateway: IpAddr) -> Option<SyncEntry> {
        match (tuple.src, tuple.dst, gateway) {
            (IpAddr::V4(client), IpAddr::V4(vip), IpAddr::V4(gateway)) => Some(SyncEntry {
                protocol: tuple.protocol,
                client,
                client_port: tuple.src_port,
                vip,
                vip_port: tuple.dst_port,
                gateway,
            }),
            _ => None,
        }
    }

    pub fn tuple(&self) -> FiveTuple {
        FiveTuple {
            src: IpAddr::V4(self.client),
            dst: IpAddr::V4(self.vip),
            src_port: self.client_port,
            dst_port: self.vip_port,
            protocol: self.protocol,
        }
    }
}

/// Why a sync datagram or entry was not used. Closed set: the `reason` label values of
/// `portico_dsr_sync_errors_total`. [`decode`] gives the first three; the forwarder the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncError {
    /// Not our magic (another protocol, or another version).
    Magic,
    /// Shorter than its count says, or longer.
    Length,
    /// An entry's protocol is neither TCP nor UDP.
    Protocol,
    /// From an address that is not one of `sync_peers`.
    NotPeer,
    /// An entry for a service or gateway this node does not have.
    UnknownFlow,
    /// A placed flow not queued: the queue for the sender was full.
    Overflow,
    /// Entries a peer did not get: the send failed.
    SendFailed,
}

impl SyncError {
    pub const ALL: [SyncError; 7] = [
        SyncError::Magic,
        SyncError::Length,
        SyncError::Protocol,
        SyncError::NotPeer,
        SyncError::UnknownFlow,
        SyncError::Overflow,
        SyncError::SendFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncError::Magic => "magic",
            SyncError::Length => "length",
            SyncError::Protocol => "protocol",
            SyncError::NotPeer => "not_peer",
            SyncError::UnknownFlow => "unknown_flow",
            SyncError::Overflow => "overflow",
            SyncError::SendFailed => "send_failed",
        }
    }

    /// Its position in [`SyncError::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Writes up to [`MAX_ENTRIES`] of `entries` into `out` (at least [`MAX_DATAGRAM`] bytes);
/// returns the datagram's length and how many entries it holds.
pub fn encode(entries: &[SyncEntry], out: &mut [u8]) -> (usize, usize) {
    let n = entries
        .len()
        .min(MAX_ENTRIES)
        .min(out.len().saturating_sub(HEADER) / ENTRY);
    let Some(head) = out.get_mut(..HEADER) else {
        return (0, 0);
    };
    head[..4].copy_from_slice(&MAGIC);
    head[4..6].copy_from_slice(&(n as u16).to_be_bytes());
    for (e, chunk) in entries
        .iter()
        .take(n)
        .zip(out[HEADER..].chunks_exact_mut(ENTRY))
    {
        chunk[0] = match e.protocol {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        };
        chunk[1..5].copy_from_slice(&e.client.octets());
        chunk[5..7].copy_from_slice(&e.client_port.to_be_bytes());
        chunk[7..11].copy_from_slice(&e.vip.octets());
        chunk[11..13].copy_from_slice(&e.vip_port.to_be_bytes());
        chunk[13..17].copy_from_slice(&e.gateway.octets());
    }
    (HEADER + n * ENTRY, n)
}

/// Reads a whole datagram, checked before any entry is handed out. All or nothing: a datagram
/// with one bad entry is refused whole (it was not written by a Portico).
pub fn decode(datagram: &[u8]) -> Result<impl ExactSizeIterator<Item = SyncEntry> + '_, SyncError> {
    if datagram.get(..4) != Some(&MAGIC[..]) {
        return Err(SyncError::Magic);
    }
    let count = datagram
        .get(4..6)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as usize)
        .ok_or(SyncError::Length)?;
    if datagram.len() != HEADER + count * ENTRY {
        return Err(SyncError::Length);
    }
    let body = &datagram[HEADER..];
    if body.chunks_exact(ENTRY).any(|c| c[0] != 6 && c[0] != 17) {
        return Err(SyncError::Protocol);
    }
    Ok(body.chunks_exact(ENTRY).map(|c| {
        let ip = |at: usize| Ipv4Addr::new(c[at], c[at + 1], c[at + 2], c[at + 3]);
        let port = |at: usize| u16::from_be_bytes([c[at], c[at + 1]]);
        SyncEntry {
            protocol: if c[0] == 6 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
            client: ip(1),
            client_port: port(5),
            vip: ip(7),
            vip_port: port(11),
            gateway: ip(13),
        }
    }))
}

/// The fuzz target's body (`fuzz/fuzz_targets/dsr_sync.rs`): any bytes are read without
/// panicking, and a datagram that is accepted re-encodes to exactly itself.
pub fn fuzz_datagram(data: &[u8]) {
    let Ok(entries) = decode(data) else {
        return;
    };
    let list: Vec<SyncEntry> = entries.collect();
    if list.len() <= MAX_ENTRIES {
        let mut buf = [0u8; MAX_DATAGRAM];
        let (len, written) = encode(&list, &mut buf);
        assert_eq!(written, list.len());
        assert_eq!(&buf[..len], data, "a valid datagram re-encodes to itself");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(n: u8) -> SyncEntry {
        SyncEntry {
            protocol: if n % 2 == 0 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
            client: Ipv4Addr::new(10, 200, 1, n),
            client_port: 40_000 + u16::from(n),
            vip: Ipv4Addr::new(10, 200, 0, 100),
            vip_port: if n % 2 == 0 { 443 } else { 3391 },
            gateway: Ipv4Addr::new(10, 200, 0, 11 + n % 3),
        }
    }

    #[test]
    fn a_datagram_round_trips_and_is_capped() {
        let all: Vec<SyncEntry> = (0..100).map(entry).collect();
        let mut buf = [0u8; MAX_DATAGRAM];
        let (len, n) = encode(&all, &mut buf);
        assert_eq!((len, n), (MAX_DATAGRAM, MAX_ENTRIES));
        assert_eq!(&buf[..4], b"PFS1");
        let back: Vec<SyncEntry> = decode(&buf[..len]).unwrap().collect();
        assert_eq!(back, all[..MAX_ENTRIES]);
        let (len, n) = encode(&all[..3], &mut buf);
        assert_eq!((len, n), (6 + 3 * 17, 3));
        assert_eq!(decode(&buf[..len]).map(|e| e.len()), Ok(3));
    }

    #[test]
    fn bad_datagrams_are_refused_whole() {
        let mut buf = [0u8; MAX_DATAGRAM];
        let (len, _) = encode(&[entry(1), entry(2)], &mut buf);
        let err = |d: &[u8]| decode(d).err();
        assert_eq!(err(b"PFS2\0\0"), Some(SyncError::Magic));
        assert_eq!(err(b""), Some(SyncError::Magic));
        assert_eq!(err(b"PFS1\0"), Some(SyncError::Length));
        assert_eq!(err(&buf[..len - 1]), Some(SyncError::Length));
        assert_eq!(err(&buf[..len + 1]), Some(SyncError::Length));
        let mut bad = buf;
        bad[6 + 17] = 1; // the second entry's protocol: ICMP
        assert_eq!(err(&bad[..len]), Some(SyncError::Protocol), "refused whole");
    }

    proptest! {
        #[test]
        fn any_bytes_are_checked_without_panicking(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            fuzz_datagram(&data);
        }

        #[test]
        fn entries_round_trip(raw in proptest::collection::vec((any::<bool>(), any::<[u8; 4]>(), any::<u16>(), any::<[u8; 4]>(), any::<u16>(), any::<[u8; 4]>()), 0..80)) {
            let list: Vec<SyncEntry> = raw.iter().map(|(tcp, c, cp, v, vp, g)| SyncEntry {
                protocol: if *tcp { Protocol::Tcp } else { Protocol::Udp },
                client: Ipv4Addr::from(*c),
                client_port: *cp,
                vip: Ipv4Addr::from(*v),
                vip_port: *vp,
                gateway: Ipv4Addr::from(*g),
            }).collect();
            let mut buf = [0u8; MAX_DATAGRAM];
            let (len, n) = encode(&list, &mut buf);
            prop_assert_eq!(n, list.len());
            let back: Vec<SyncEntry> = decode(&buf[..len]).unwrap().collect();
            prop_assert_eq!(back, list);
        }
    }
}
