//! The XDP fast path against the real kernel: the program is loaded (so the verifier accepts
//! it, also without CAP_SYS_ADMIN and CAP_PERFMON) and run on crafted frames with
//! BPF_PROG_TEST_RUN, against a reference decoder on random frames, and once on a real veth
//! pair in network namespaces, where `XDP_TX` must send a datagram back to the namespace it
//! came from.
//!
//! Needs root and a kernel with eBPF; says `SKIPPED` loudly when `Xdp::load` reports the
//! kernel or the privileges cannot do it (and the namespace test when `ip netns` fails).

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use netns::{in_ns, run, sh};
use portico::config::Protocol;
use portico::dsr::packet::build;
use portico::dsr::xdp::{
    monotonic_ns, AttachMode, FlowKey, FlowValue, GatewayStats, PassProgram, Xdp, XdpError,
    XDP_PASS, XDP_TX,
};
use proptest::prelude::*;

#[path = "common/netns.rs"]
mod netns;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xc1];
const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xb1];
const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x91];
const VIP_MAC: [u8; 6] = [0, 0, 0x5e, 0, 1, 7];
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 5);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 100);
const ETH: usize = 14;
const MAX_GATEWAYS: u32 = 8;

/// The program, loaded and active; `None` (after a loud SKIPPED) where eBPF is unavailable.
fn load() -> Option<Xdp> {
    match Xdp::load(1024, MAX_GATEWAYS) {
        Ok(x) => {
            x.set_active(true).expect("activate");
            x.accept_mac(VIP_MAC).expect("accept the VIP's MAC");
            Some(x)
        }
        Err(e @ XdpError::Unsupported { .. }) => {
            eprintln!("SKIPPED: eBPF/XDP is not available here (needs root or CAP_BPF and a kernel with bpf): {e}");
            None
        }
        Err(e) => panic!("loading the XDP program: {e}"),
    }
}

fn tcp_frame(sport: u16, dport: u16) -> Vec<u8> {
    build::ipv4(
        VIP_MAC,
        CLIENT_MAC,
        CLIENT,
        VIP,
        Protocol::Tcp,
        sport,
        dport,
        100,
    )
}

fn udp_frame(sport: u16, dport: u16) -> Vec<u8> {
    build::ipv4(
        VIP_MAC,
        CLIENT_MAC,
        CLIENT,
        VIP,
        Protocol::Udp,
        sport,
        dport,
        60,
    )
}

fn key(protocol: Protocol, sport: u16, dport: u16) -> FlowKey {
    FlowKey {
        saddr: CLIENT,
        daddr: VIP,
        sport,
        dport,
        protocol,
    }
}

fn value(gateway: u32) -> FlowValue {
    FlowValue {
        dst_mac: GATEWAY_MAC,
        src_mac: OUR_MAC,
        gateway,
        last_seen_ns: 0,
    }
}

/// `frame` with its MACs replaced, the rest untouched: what a forwarded frame must be.
fn rewritten(frame: &[u8], v: &FlowValue) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[..6].copy_from_slice(&v.dst_mac);
    f[6..12].copy_from_slice(&v.src_mac);
    f
}

/// Sets the IPv4 total length and recomputes the header checksum (IHL from the header).
fn set_total_len(frame: &mut [u8], total: u16) {
    frame[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
    fix_ip_checksum(frame);
}

fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[ETH] & 0x0f) * 4;
    if frame.len() < ETH + ihl {
        return;
    }
    frame[ETH + 10..ETH + 12].copy_from_slice(&[0, 0]);
    let sum = build::checksum(&frame[ETH..ETH + ihl]);
    frame[ETH + 10..ETH + 12].copy_from_slice(&sum.to_be_bytes());
}

/// Asserts `frame` passes unchanged.
#[track_caller]
fn assert_pass(xdp: &Xdp, frame: &[u8], what: &str) {
    let (action, out) = xdp.test_run(frame).expect("test run");
    assert_eq!(action, XDP_PASS, "{what}: expected XDP_PASS");
    assert_eq!(out, frame, "{what}: a passed frame is unchanged");
}

/// Asserts `frame` is transmitted with the MACs of `v` and nothing else changed.
#[track_caller]
fn assert_tx(xdp: &Xdp, frame: &[u8], v: &FlowValue, what: &str) {
    let (action, out) = xdp.test_run(frame).expect("test run");
    assert_eq!(action, XDP_TX, "{what}: expected XDP_TX");
    assert_eq!(out, rewritten(frame, v), "{what}: only the MACs change");
}

#[test]
fn a_tcp_flow_hit_is_sent_back_out_with_the_gateway_macs() {
    let Some(xdp) = load() else { return };
    let k = key(Protocol::Tcp, 50000, 443);
    let v = value(3);
    xdp.insert_flow(&k, &v).unwrap();
    let frame = tcp_frame(50000, 443);
    let before = monotonic_ns();
    assert_tx(&xdp, &frame, &v, "TCP hit");
    assert_eq!(
        xdp.gateway_stats(3).unwrap(),
        GatewayStats {
            packets: 1,
            bytes: frame.len() as u64
        }
    );
    // The other gateways saw nothing.
    for g in (0..MAX_GATEWAYS).filter(|&g| g != 3) {
        assert_eq!(xdp.gateway_stats(g).unwrap(), GatewayStats::default());
    }
    let seen = xdp.flow(&k).unwrap().expect("the flow is still there");
    assert!(
        seen.last_seen_ns >= before && seen.last_seen_ns <= monotonic_ns(),
        "last_seen_ns {} is the monotonic clock of the hit (test ran from {before})",
        seen.last_seen_ns
    );
    assert_eq!(
        FlowValue {
            last_seen_ns: 0,
            ..seen
        },
        v,
        "only last_seen_ns changed"
    );
    // A second frame counts again.
    assert_tx(&xdp, &frame, &v, "second TCP hit");
    assert_eq!(xdp.gateway_stats(3).unwrap().packets, 2);
    assert_eq!(xdp.flows().unwrap(), vec![(k, seen_after(&xdp, &k))]);
}

fn seen_after(xdp: &Xdp, k: &FlowKey) -> FlowValue {
    xdp.flow(k).unwrap().unwrap()
}

#[test]
fn misses_and_an_inactive_program_pass_frames_unchanged() {
    let Some(xdp) = load() else { return };
    let frame = tcp_frame(50000, 443);
    assert_pass(&xdp, &frame, "no flow");
    // A flow for another port, another client, the other protocol: still misses.
    xdp.insert_flow(&key(Protocol::Tcp, 50000, 444), &value(0))
        .unwrap();
    xdp.insert_flow(&key(Protocol::Udp, 50000, 443), &value(0))
        .unwrap();
    let mut other_client = key(Protocol::Tcp, 50000, 443);
    other_client.saddr = Ipv4Addr::new(10, 200, 1, 6);
    xdp.insert_flow(&other_client, &value(0)).unwrap();
    assert_pass(&xdp, &frame, "near misses");

    let k = key(Protocol::Tcp, 50000, 443);
    xdp.insert_flow(&k, &value(1)).unwrap();
    xdp.set_active(false).unwrap();
    assert!(!xdp.is_active().unwrap());
    assert_pass(&xdp, &frame, "inactive");
    assert_eq!(xdp.gateway_stats(1).unwrap(), GatewayStats::default());
    assert_eq!(
        xdp.flow(&k).unwrap().map(|v| v.last_seen_ns),
        Some(0),
        "an inactive program does not touch the flow"
    );
    xdp.set_active(true).unwrap();
    assert_tx(&xdp, &frame, &value(1), "active again");
    assert!(xdp.remove_flow(&k).unwrap());
    assert!(!xdp.remove_flow(&k).unwrap(), "removed already");
    assert_pass(&xdp, &frame, "flow removed");
    assert_eq!(xdp.gateway_stats(0).unwrap(), GatewayStats::default());
}

#[test]
fn a_udp_flow_hit_is_sent() {
    let Some(xdp) = load() else { return };
    let k = key(Protocol::Udp, 40000, 3391);
    let v = value(0);
    xdp.insert_flow(&k, &v).unwrap();
    let frame = udp_frame(40000, 3391);
    assert_tx(&xdp, &frame, &v, "UDP hit");
    assert_eq!(
        xdp.gateway_stats(0).unwrap(),
        GatewayStats {
            packets: 1,
            bytes: frame.len() as u64
        }
    );
    // The TCP frame of the same ports is another flow.
    assert_pass(&xdp, &tcp_frame(40000, 3391), "TCP with a UDP flow's ports");
}

#[test]
fn tcp_fin_and_rst_go_to_user_space() {
    let Some(xdp) = load() else { return };
    let v = value(2);
    xdp.insert_flow(&key(Protocol::Tcp, 50000, 443), &v)
        .unwrap();
    let flags_at = ETH + 20 + 13;
    for (flags, name) in [
        (0x01, "FIN"),
        (0x11, "FIN|ACK"),
        (0x04, "RST"),
        (0x14, "RST|ACK"),
        (0x05, "FIN|RST"),
    ] {
        let mut f = tcp_frame(50000, 443);
        f[flags_at] = flags;
        assert_pass(&xdp, &f, name);
    }
    for (flags, name) in [(0x10, "ACK"), (0x18, "PSH|ACK"), (0x02, "SYN")] {
        let mut f = tcp_frame(50000, 443);
        f[flags_at] = flags;
        assert_tx(&xdp, &f, &v, name);
    }
    assert_eq!(xdp.gateway_stats(2).unwrap().packets, 3);
}

#[test]
fn fragments_pass() {
    let Some(xdp) = load() else { return };
    let v = value(0);
    xdp.insert_flow(&key(Protocol::Udp, 40000, 3391), &v)
        .unwrap();
    let frag_at = ETH + 6;
    for (bytes, name) in [
        ([0x20, 0x00], "MF (first fragment)"),
        ([0x00, 0xb9], "offset 185 (last fragment)"),
        ([0x20, 0x01], "MF and offset 1"),
        ([0x01, 0x00], "offset 256"),
    ] {
        let mut f = udp_frame(40000, 3391);
        f[frag_at..frag_at + 2].copy_from_slice(&bytes);
        fix_ip_checksum(&mut f);
        assert_pass(&xdp, &f, name);
    }
    // DF alone (and the reserved bit) is no fragment.
    let mut f = udp_frame(40000, 3391);
    f[frag_at] = 0x40;
    assert_tx(&xdp, &f, &v, "DF");
}

/// `frame` with `options` (a multiple of 4 bytes) inserted after the IPv4 header.
fn with_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let mut g = frame[..ETH + 20].to_vec();
    g.extend_from_slice(options);
    g.extend_from_slice(&frame[ETH + 20..]);
    g[ETH] = 0x40 | u8::try_from(5 + options.len() / 4).unwrap();
    let total = u16::try_from(g.len() - ETH).unwrap();
    set_total_len(&mut g, total);
    g
}

#[test]
fn ports_are_read_after_ipv4_options() {
    let Some(xdp) = load() else { return };
    let v = value(1);
    xdp.insert_flow(&key(Protocol::Tcp, 50000, 443), &v)
        .unwrap();
    // A decoy: the ports a program reading at a fixed offset would see (the options' bytes).
    let decoy = FlowValue {
        dst_mac: [2, 0xde, 0xc0, 0, 0, 1],
        ..value(2)
    };
    xdp.insert_flow(&key(Protocol::Tcp, 0x0101, 0x0100), &decoy)
        .unwrap();
    let frame = tcp_frame(50000, 443);
    // IHL 6: NOP NOP NOP EOL.
    assert_tx(&xdp, &with_options(&frame, &[1, 1, 1, 0]), &v, "IHL 6");
    // IHL 15, the most there is: 40 bytes of options.
    let mut options = [1u8; 40];
    options[39] = 0;
    assert_tx(&xdp, &with_options(&frame, &options), &v, "IHL 15");
    assert_eq!(xdp.gateway_stats(1).unwrap().packets, 2);
    assert_eq!(
        xdp.gateway_stats(2).unwrap().packets,
        0,
        "the decoy is never hit"
    );
}

#[test]
fn vlan_arp_ipv6_and_other_protocols_pass() {
    let Some(xdp) = load() else { return };
    xdp.insert_flow(&key(Protocol::Tcp, 50000, 443), &value(0))
        .unwrap();
    let frame = tcp_frame(50000, 443);
    // The matching frame behind an 802.1Q tag: the user-space path handles tags.
    let mut vlan = frame[..12].to_vec();
    vlan.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    vlan.extend_from_slice(&frame[12..]);
    assert_pass(&xdp, &vlan, "VLAN-tagged");
    // ARP: a request for the VIP, padded to the Ethernet minimum.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&CLIENT.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&VIP.octets());
    arp.resize(60, 0);
    assert_pass(&xdp, &arp, "ARP");
    // The same bytes labelled IPv6, and a real IPv6 TCP header.
    let mut v6_label = frame.clone();
    v6_label[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_pass(&xdp, &v6_label, "IPv4 bytes with the IPv6 ethertype");
    let mut v6 = frame[..12].to_vec();
    v6.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 20, 6, 64]);
    v6.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
    v6.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    v6.extend_from_slice(&frame[ETH + 20..ETH + 40]);
    assert_pass(&xdp, &v6, "IPv6 TCP");
    // ICMP, and a protocol field of GRE.
    for proto in [1u8, 47] {
        let mut f = frame.clone();
        f[ETH + 9] = proto;
        fix_ip_checksum(&mut f);
        assert_pass(&xdp, &f, &format!("IP protocol {proto}"));
    }
    assert_eq!(xdp.gateway_stats(0).unwrap().packets, 0);
}

/// Cut short at every length up to its headers, a frame never goes out: lengths below an
/// Ethernet header are refused by the kernel's test run (as no NIC delivers them), the rest
/// pass, both as cut and with the IPv4 total length made to agree with the cut.
#[test]
fn truncated_frames_are_never_sent() {
    let Some(xdp) = load() else { return };
    let vt = value(0);
    xdp.insert_flow(&key(Protocol::Tcp, 50000, 443), &vt)
        .unwrap();
    xdp.insert_flow(&key(Protocol::Udp, 40000, 3391), &vt)
        .unwrap();
    for (frame, headers) in [
        (tcp_frame(50000, 443), ETH + 20 + 20),
        (udp_frame(40000, 3391), ETH + 20 + 8),
    ] {
        for len in 0..headers {
            let cut = &frame[..len];
            match xdp.test_run(cut) {
                Ok((action, out)) => {
                    assert_eq!(action, XDP_PASS, "cut at {len}");
                    assert_eq!(out, cut, "cut at {len}");
                }
                Err(XdpError::TestRun { source })
                    if len < ETH && source.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => panic!("cut at {len}: {e}"),
            }
            if len >= ETH + 20 {
                let mut agreeing = cut.to_vec();
                set_total_len(&mut agreeing, u16::try_from(len - ETH).unwrap());
                assert_pass(
                    &xdp,
                    &agreeing,
                    &format!("cut at {len}, total length agrees"),
                );
            }
        }
        // At the full header length (no payload) the segment is whole: forwarded.
        let mut whole = frame[..headers].to_vec();
        set_total_len(&mut whole, u16::try_from(headers - ETH).unwrap());
        assert_tx(&xdp, &whole, &vt, "headers only");
        // Ethernet padding after the IP packet is allowed (and kept).
        let mut padded = whole.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_tx(&xdp, &padded, &vt, "padded");
    }
}

#[test]
fn malformed_ipv4_and_tcp_headers_pass() {
    let Some(xdp) = load() else { return };
    let v = value(0);
    xdp.insert_flow(&key(Protocol::Tcp, 50000, 443), &v)
        .unwrap();
    // 20 bytes of TCP header and 10 of payload.
    let frame = build::ipv4(
        VIP_MAC,
        CLIENT_MAC,
        CLIENT,
        VIP,
        Protocol::Tcp,
        50000,
        443,
        10,
    );
    assert_tx(&xdp, &frame, &v, "the frame as built");
    let total = u16::try_from(frame.len() - ETH).unwrap();
    type Mangle = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Mangle)> = vec![
        ("version 6", Box::new(|f| f[ETH] = 0x65)),
        ("IHL 4", Box::new(|f| f[ETH] = 0x44)),
        ("IHL 0", Box::new(|f| f[ETH] = 0x40)),
        (
            "total length below the header",
            Box::new(|f| set_total_len(f, 19)),
        ),
        (
            "total length beyond the frame",
            Box::new(move |f| set_total_len(f, total + 1)),
        ),
        (
            "total length leaves no room for TCP",
            Box::new(|f| set_total_len(f, 20 + 19)),
        ),
        ("TCP data offset 4", Box::new(|f| f[ETH + 20 + 12] = 0x40)),
        (
            "TCP data offset past the segment",
            Box::new(|f| f[ETH + 20 + 12] = 0x80),
        ),
    ];
    for (name, mangle) in &cases {
        let mut f = frame.clone();
        mangle(&mut f);
        assert_pass(&xdp, &f, name);
    }
    // A data offset of 15 words inside a long enough segment is fine.
    let mut f = frame.clone();
    f[ETH + 20 + 12] = 0xf0;
    f.resize(ETH + 20 + 60, 0);
    set_total_len(&mut f, 80);
    assert_tx(&xdp, &f, &v, "data offset 15 with 60 bytes of TCP");
}

#[test]
fn a_gateway_index_beyond_stats_is_forwarded_uncounted() {
    let Some(xdp) = load() else { return };
    let v = value(MAX_GATEWAYS + 5);
    xdp.insert_flow(&key(Protocol::Udp, 40000, 3391), &v)
        .unwrap();
    assert_tx(&xdp, &udp_frame(40000, 3391), &v, "gateway out of range");
    assert!(matches!(
        xdp.gateway_stats(MAX_GATEWAYS + 5),
        Err(XdpError::Map { .. })
    ));
    for g in 0..MAX_GATEWAYS {
        assert_eq!(xdp.gateway_stats(g).unwrap(), GatewayStats::default());
    }
}

#[test]
fn the_flow_table_lists_removes_and_stays_bounded() {
    let Some(xdp) = load() else { return };
    let keys: Vec<FlowKey> = (0..100u16)
        .map(|i| key(Protocol::Udp, 1000 + i, 3391))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        xdp.insert_flow(k, &value(u32::try_from(i).unwrap() % MAX_GATEWAYS))
            .unwrap();
    }
    let listed: HashMap<FlowKey, FlowValue> = xdp.flows().unwrap().into_iter().collect();
    assert_eq!(listed.len(), keys.len());
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            listed.get(k).map(|v| v.gateway),
            Some(u32::try_from(i).unwrap() % 8)
        );
    }
    for k in &keys[..50] {
        assert!(xdp.remove_flow(k).unwrap());
    }
    assert_eq!(xdp.flows().unwrap().len(), 50);

    // LRU: a full table evicts instead of refusing; the newest entry is always there.
    let small = match Xdp::load(64, 1) {
        Ok(x) => x,
        Err(e) => panic!("{e}"),
    };
    for i in 0..1000u16 {
        let k = key(Protocol::Tcp, i, 443);
        small.insert_flow(&k, &value(0)).unwrap();
        assert!(small.flow(&k).unwrap().is_some(), "entry {i} just inserted");
    }
    let n = small.flows().unwrap().len();
    assert!(n > 0 && n <= 64, "{n} entries in a 64-entry LRU table");
}

/// Only frames sent to one of the accepted MACs are forwarded: a flooded copy, or another
/// balancer's forwarded frame (addressed to the gateway), goes up to user space, which drops
/// it as not ours. Sending it on would start a forwarding loop.
#[test]
fn frames_not_addressed_to_us_pass() {
    let Some(xdp) = load() else { return };
    let v = value(2);
    xdp.insert_flow(&key(Protocol::Tcp, 41000, 443), &v)
        .unwrap();
    let ours = tcp_frame(41000, 443);
    assert_tx(&xdp, &ours, &v, "sent to the VIP's MAC");
    let mut to_gateway = ours.clone();
    to_gateway[..6].copy_from_slice(&GATEWAY_MAC);
    assert_pass(&xdp, &to_gateway, "another node's forwarded copy");
    let mut flooded = ours.clone();
    flooded[..6].copy_from_slice(&[0x02, 0, 0, 0, 0x77, 0x01]);
    assert_pass(&xdp, &flooded, "a frame for some other host");
    let mut broadcast = ours;
    broadcast[..6].copy_from_slice(&[0xff; 6]);
    assert_pass(&xdp, &broadcast, "broadcast");
    // A second accepted MAC (the interface's own, beside the VIP's virtual one).
    xdp.accept_mac(OUR_MAC).unwrap();
    let mut to_interface = tcp_frame(41000, 443);
    to_interface[..6].copy_from_slice(&OUR_MAC);
    assert_tx(&xdp, &to_interface, &v, "sent to the interface's MAC");
}

/// More flows than one batch call reads: all listed once, then all removed at once.
#[test]
fn thousands_of_flows_are_listed_and_cleared_in_batches() {
    if load().is_none() {
        return;
    }
    // Room for all of them: a smaller LRU table would evict some.
    let xdp = Xdp::load(8192, MAX_GATEWAYS).expect("load");
    let keys: Vec<FlowKey> = (0..3000u16)
        .map(|i| key(Protocol::Tcp, 10_000 + i, 443))
        .collect();
    for k in &keys {
        xdp.insert_flow(k, &value(1)).unwrap();
    }
    let listed: std::collections::HashSet<FlowKey> =
        xdp.flows().unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(listed.len(), keys.len(), "every flow listed once");
    assert!(keys.iter().all(|k| listed.contains(k)));
    assert_eq!(xdp.clear_flows().unwrap(), keys.len());
    assert!(xdp.flows().unwrap().is_empty());
    assert!(xdp.flow(&keys[0]).unwrap().is_none());
}

/// The reference decoder: the 5-tuple of a frame the program may forward (the module docs'
/// rules, written again plainly).
fn decode(f: &[u8]) -> Option<FlowKey> {
    let be16 =
        |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?])) };
    if f.len() < ETH + 20 || be16(12)? != 0x0800 || f[..6] != VIP_MAC {
        return None;
    }
    let vihl = f[ETH];
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let total = usize::from(be16(ETH + 2)?);
    if total < ihl || ETH + total > f.len() {
        return None;
    }
    if be16(ETH + 6)? & 0x3fff != 0 {
        return None;
    }
    let l4 = ETH + ihl;
    let l4_len = total - ihl;
    let protocol = match f[ETH + 9] {
        6 => {
            if l4_len < 20 || l4 + 20 > f.len() {
                return None;
            }
            let doff = usize::from(f[l4 + 12] >> 4) * 4;
            if doff < 20 || doff > l4_len || f[l4 + 13] & 0x05 != 0 {
                return None;
            }
            Protocol::Tcp
        }
        17 => {
            if l4_len < 8 || l4 + 8 > f.len() {
                return None;
            }
            Protocol::Udp
        }
        _ => return None,
    };
    Some(FlowKey {
        saddr: Ipv4Addr::new(f[ETH + 12], f[ETH + 13], f[ETH + 14], f[ETH + 15]),
        daddr: Ipv4Addr::new(f[ETH + 16], f[ETH + 17], f[ETH + 18], f[ETH + 19]),
        sport: be16(l4)?,
        dport: be16(l4 + 2)?,
        protocol,
    })
}

/// Frames near the interesting ones: a plausible IPv4 frame from small sets of addresses,
/// ports, protocols, header lengths, flags and fragment fields, then a few bytes overwritten
/// and maybe cut; or plain random bytes.
fn frames() -> impl Strategy<Value = Vec<u8>> {
    let structured = (
        (0usize..3, 0usize..2, 0usize..2, 0usize..5),
        (5u8..=7, any::<u8>(), 0usize..6, 0usize..40),
        proptest::collection::vec((0usize..90, any::<u8>()), 0..3),
        proptest::option::weighted(0.3, 0usize..100),
        any::<bool>(),
    )
        .prop_map(
            |((src, sport, dport, proto), (ihl, flags, frag, payload), pokes, cut, fix_len)| {
                let protocol = [6u8, 17, 6, 17, 1][proto];
                let mut f = Vec::new();
                f.extend_from_slice(&VIP_MAC);
                f.extend_from_slice(&CLIENT_MAC);
                f.extend_from_slice(&[0x08, 0x00]);
                let mut ip = vec![0u8; usize::from(ihl) * 4];
                ip[0] = 0x40 | ihl;
                // DF, nothing, DF, nothing, MF, an offset.
                let frag_field = [[0x40, 0], [0, 0], [0x40, 0], [0, 0], [0x20, 0], [0, 3]];
                ip[6..8].copy_from_slice(&frag_field[frag]);
                ip[8] = 64;
                ip[9] = protocol;
                ip[12..16].copy_from_slice(&Ipv4Addr::new(10, 200, 1, 1 + src as u8).octets());
                ip[16..20].copy_from_slice(&VIP.octets());
                ip[20..].fill(1);
                f.extend_from_slice(&ip);
                f.extend_from_slice(&(1000 + sport as u16).to_be_bytes());
                f.extend_from_slice(&[443u16, 3391][dport].to_be_bytes());
                if protocol == 6 {
                    f.extend_from_slice(&[0; 8]);
                    f.push(0x50);
                    f.push(flags);
                    f.extend_from_slice(&[0; 6]);
                } else {
                    f.extend_from_slice(&[0; 4]);
                }
                f.resize(f.len() + payload, 0x5a);
                let total = u16::try_from(f.len() - ETH).unwrap_or(0);
                set_total_len(&mut f, total);
                for (at, byte) in pokes {
                    if let Some(b) = f.get_mut(at) {
                        *b = byte;
                    }
                }
                if let Some(cut) = cut {
                    f.truncate(cut);
                    if fix_len && f.len() >= ETH + 20 {
                        let total = u16::try_from(f.len() - ETH).unwrap_or(0);
                        f[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
                    }
                }
                f
            },
        );
    prop_oneof![
        5 => structured,
        1 => proptest::collection::vec(any::<u8>(), 0..120),
    ]
}

#[test]
fn random_frames_are_sent_only_when_they_decode_to_a_known_flow() {
    let Some(xdp) = load() else { return };
    // Flows for client .1 and .2 (not .3) with source port 1000 (not 1001), both service
    // ports, TCP and UDP; each with its own MACs and gateway, so a hit shows which entry won.
    let mut flows: HashMap<FlowKey, FlowValue> = HashMap::new();
    for (i, (src, dport, protocol)) in [1u8, 2]
        .into_iter()
        .flat_map(|s| [443u16, 3391].into_iter().map(move |d| (s, d)))
        .flat_map(|(s, d)| {
            [Protocol::Tcp, Protocol::Udp]
                .into_iter()
                .map(move |p| (s, d, p))
        })
        .enumerate()
    {
        let i = u8::try_from(i).unwrap();
        let k = FlowKey {
            saddr: Ipv4Addr::new(10, 200, 1, src),
            daddr: VIP,
            sport: 1000,
            dport,
            protocol,
        };
        let v = FlowValue {
            dst_mac: [2, 0, 0, 0, 1, i],
            src_mac: [2, 0, 0, 0, 2, i],
            gateway: u32::from(i) % MAX_GATEWAYS,
            last_seen_ns: 0,
        };
        xdp.insert_flow(&k, &v).unwrap();
        flows.insert(k, v);
    }
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        failure_persistence: None,
        ..Config::default()
    });
    // Fn closure: counted through cells. Refused (too short), passed, sent.
    let sent = Cell::new(GatewayStats::default());
    let outcomes = Cell::new([0u32; 3]);
    let count = |i: usize| {
        let mut o = outcomes.get();
        o[i] += 1;
        outcomes.set(o);
    };
    let result = runner.run(&frames(), |frame| {
        let expected = decode(&frame).and_then(|k| flows.get(&k));
        match xdp.test_run(&frame) {
            Ok((action, out)) => match expected {
                Some(v) => {
                    prop_assert_eq!(action, XDP_TX, "a known flow's frame is sent");
                    prop_assert_eq!(out, rewritten(&frame, v));
                    let mut s = sent.get();
                    s.packets += 1;
                    s.bytes += frame.len() as u64;
                    sent.set(s);
                    count(2);
                }
                None => {
                    prop_assert_eq!(action, XDP_PASS, "anything else passes");
                    prop_assert_eq!(out, frame);
                    count(1);
                }
            },
            Err(XdpError::TestRun { source }) if frame.len() < ETH => {
                prop_assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
                count(0);
            }
            Err(e) => return Err(TestCaseError::fail(format!("test run: {e}"))),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (outcomes, sent) = (outcomes.get(), sent.get());
    eprintln!(
        "random frames: {} too short for a test run, {} passed, {} sent",
        outcomes[0], outcomes[1], outcomes[2]
    );
    assert!(
        outcomes[1] > 100 && outcomes[2] > 100,
        "both outcomes were exercised: {outcomes:?}"
    );
    let mut counted = GatewayStats::default();
    for g in 0..MAX_GATEWAYS {
        let s = xdp.gateway_stats(g).unwrap();
        counted.packets += s.packets;
        counted.bytes += s.bytes;
    }
    assert_eq!(counted, sent, "the counters saw exactly the frames sent");
}

/// Drops `caps` from this thread's effective and permitted sets (capabilities are per
/// thread: the rest of the test process keeps them).
fn drop_thread_caps(caps: &[u32]) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a v3 header and the two data structs v3 reads and writes.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    for &cap in caps {
        let d = &mut data[usize::try_from(cap / 32).unwrap()];
        d.effective &= !(1 << (cap % 32));
        d.permitted &= !(1 << (cap % 32));
    }
    // SAFETY: as above; capset changes the calling thread only.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

/// The daemon would run with CAP_BPF and CAP_NET_ADMIN but not CAP_SYS_ADMIN or CAP_PERFMON,
/// without which the verifier refuses variable-offset packet pointer arithmetic: the program
/// must load and forward all the same.
#[test]
fn loads_and_forwards_without_cap_sys_admin_or_cap_perfmon() {
    if load().is_none() {
        return;
    }
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    std::thread::spawn(|| {
        drop_thread_caps(&[CAP_SYS_ADMIN, CAP_PERFMON]);
        let xdp = match Xdp::load(64, 2) {
            Ok(x) => x,
            Err(e) => panic!("loading with CAP_BPF but neither CAP_SYS_ADMIN nor CAP_PERFMON: {e}"),
        };
        xdp.set_active(true).unwrap();
        xdp.accept_mac(VIP_MAC).unwrap();
        let v = value(1);
        xdp.insert_flow(&key(Protocol::Tcp, 50000, 443), &v)
            .unwrap();
        let frame = with_options(&tcp_frame(50000, 443), &[1, 1, 1, 0]);
        assert_tx(&xdp, &frame, &v, "IHL 6, reduced privileges");
        assert_pass(&xdp, &tcp_frame(50001, 443), "a miss, reduced privileges");
    })
    .join()
    .expect("reduced-privilege thread");
}

// ---- On a real veth pair ----

/// Network namespaces deleted on drop, even when the test fails (their veths go with them).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// The interface's index in the calling thread's namespace.
fn ifindex(name: &str) -> u32 {
    portico::dsr::forwarder::ifindex(name).unwrap_or_else(|e| panic!("no interface {name}: {e}"))
}

/// An AF_PACKET socket that sends whole frames out of `ifindex` (created in the caller's
/// namespace), past the qdisc.
fn packet_socket() -> OwnedFd {
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: an int option of the size passed. PACKET_QDISC_BYPASS = 20.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            20,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "PACKET_QDISC_BYPASS: {}",
        std::io::Error::last_os_error()
    );
    fd
}

fn send_frame(sock: &OwnedFd, ifindex: u32, frame: &[u8]) {
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = i32::try_from(ifindex).unwrap();
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: `frame` and `sll` are live for the sizes passed.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(
        usize::try_from(n).ok(),
        Some(frame.len()),
        "send: {}",
        std::io::Error::last_os_error()
    );
}

fn wait_up(ns: &str, dev: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = sh(&["ip", "-n", ns, "-o", "link", "show", dev]);
        if out.contains("state UP") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{dev} in {ns} never came up: {out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `ip link` says is attached to `dev`: "xdp" (native), "xdpgeneric", or "" (nothing).
fn xdp_shown(ns: &str, dev: &str) -> &'static str {
    let out = sh(&["ip", "-n", ns, "-o", "link", "show", dev]);
    let words: Vec<&str> = out.split_whitespace().collect();
    if words.contains(&"xdpgeneric") || words.contains(&"xdpgeneric/id:") {
        "xdpgeneric"
    } else if words
        .iter()
        .any(|w| *w == "xdp" || w.starts_with("prog/xdp"))
    {
        "xdp"
    } else {
        ""
    }
}

const A_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0xc8, 0x4d, 0x01];
const B_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0xc8, 0x4d, 0x02];

/// Namespace A (a client and, on its `lo`, the address the datagram is for) and namespace B
/// (the balancer, with the forwarding program on its end of the veth). A sends a complete
/// UDP frame to B from an AF_PACKET socket (a complete checksum-less datagram: a local UDP
/// socket's would carry CHECKSUM_PARTIAL, which XDP_TX loses); B's program finds the flow and
/// sends it back out of B's end with A's MAC as destination, so the only way the datagram can
/// reach A's socket is B's XDP_TX. The source address is a client's, not A's own (the kernel
/// drops frames that arrive from one of its own addresses).
#[test]
fn xdp_tx_on_a_veth_returns_the_datagram_and_stops_when_inactive() {
    let tag = std::process::id();
    let (a, b) = (format!("pxdp{tag}a"), format!("pxdp{tag}b"));
    if let Err(e) = run(&["ip", "netns", "add", &a]) {
        eprintln!("SKIPPED: cannot create network namespaces (needs root and iproute2): {e}");
        return;
    }
    let mut guard = Namespaces(vec![a.clone()]);
    sh(&["ip", "netns", "add", &b]);
    guard.0.push(b.clone());
    let Some(mut xdp) = load() else { return };
    xdp.set_active(false).unwrap();
    // A's frames are addressed to B's interface.
    xdp.accept_mac(B_MAC).unwrap();

    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    sh(&[
        "ip",
        "-n",
        &a,
        "link",
        "add",
        "xa",
        "address",
        &mac(A_MAC),
        "type",
        "veth",
        "peer",
        "name",
        "xb",
        "address",
        &mac(B_MAC),
        "netns",
        &b,
    ]);
    sh(&["ip", "-n", &a, "addr", "add", "10.200.77.1/24", "dev", "xa"]);
    sh(&[
        "ip",
        "-n",
        &a,
        "addr",
        "add",
        "10.200.77.100/32",
        "dev",
        "lo",
    ]);
    sh(&["ip", "-n", &a, "link", "set", "lo", "up"]);
    sh(&["ip", "-n", &b, "link", "set", "xb", "up"]);
    sh(&["ip", "-n", &a, "link", "set", "xa", "up"]);

    // The forwarding program on B's end; the pass program on A's end gives xa the NAPI that
    // veth's XDP_TX needs to deliver into it.
    let mode = in_ns(&b, || xdp.attach(ifindex("xb"))).expect("attach to xb");
    eprintln!(
        "forwarding program attached to the veth in {} mode",
        mode.as_str()
    );
    assert_eq!(mode, AttachMode::Native, "veth supports native XDP");
    assert_eq!(xdp_shown(&b, "xb"), "xdp");
    let pass = in_ns(&a, || PassProgram::attach(ifindex("xa"))).expect("attach to xa");
    eprintln!(
        "pass program attached to the peer in {} mode",
        pass.mode().as_str()
    );
    // A second program cannot take over an interface that has one.
    let mut intruder = Xdp::load(16, 1).unwrap();
    match in_ns(&b, || intruder.attach(ifindex("xb"))) {
        Err(XdpError::Attach { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EBUSY), "{source}")
        }
        other => panic!("a second attach must fail with EBUSY: {other:?}"),
    }
    wait_up(&b, "xb");
    wait_up(&a, "xa");

    let (receiver, sender, xa) = in_ns(&a, || {
        let r = UdpSocket::bind("10.200.77.100:7777").expect("bind in A");
        r.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        (r, packet_socket(), ifindex("xa"))
    });
    let client = Ipv4Addr::new(10, 200, 77, 50);
    let frame = build::ipv4(
        B_MAC,
        A_MAC,
        client,
        Ipv4Addr::new(10, 200, 77, 100),
        Protocol::Udp,
        40000,
        7777,
        18,
    );
    let k = FlowKey {
        saddr: client,
        daddr: Ipv4Addr::new(10, 200, 77, 100),
        sport: 40000,
        dport: 7777,
        protocol: Protocol::Udp,
    };
    xdp.insert_flow(
        &k,
        &FlowValue {
            dst_mac: A_MAC,
            src_mac: B_MAC,
            gateway: 1,
            last_seen_ns: 0,
        },
    )
    .unwrap();
    xdp.set_active(true).unwrap();

    send_frame(&sender, xa, &frame);
    let mut buf = [0u8; 256];
    let (n, from) = receiver
        .recv_from(&mut buf)
        .expect("the datagram came back to A through B's XDP_TX");
    assert_eq!(from, SocketAddr::from((client, 40000)));
    assert_eq!(&buf[..n], &[0x5a; 18][..]);
    assert_eq!(
        xdp.gateway_stats(1).unwrap(),
        GatewayStats {
            packets: 1,
            bytes: frame.len() as u64
        }
    );
    assert!(xdp.flow(&k).unwrap().is_some_and(|v| v.last_seen_ns > 0));

    // Inactive: B's kernel gets the frame (not its address: dropped), nothing comes back.
    xdp.set_active(false).unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    send_frame(&sender, xa, &frame);
    match receiver.recv_from(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("an inactive program must not send the datagram back: {other:?}"),
    }
    assert_eq!(xdp.gateway_stats(1).unwrap().packets, 1);

    // Dropping the program detaches it (the link fd closes): the interface is free again.
    drop(xdp);
    assert_eq!(xdp_shown(&b, "xb"), "", "no program left on xb");
    let mode = in_ns(&b, || intruder.attach(ifindex("xb"))).expect("re-attach after drop");
    assert_eq!(mode, AttachMode::Native);
    assert_eq!(xdp_shown(&b, "xb"), "xdp");
    drop(pass);
    assert_eq!(xdp_shown(&a, "xa"), "");
}
