//! Zone answers decoded by an independent codec (hickory-proto), so a wrong pointer, count or
//! length shows up as a decode error rather than as our own reading of our own bytes.

use std::net::IpAddr;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use super::*;
use crate::dns::wire::{self, parse_query};

fn spec() -> ZoneSpec {
    ZoneSpec {
        apex: "lab.test.".into(),
        ttl: 30,
        alias: "rdgw.lab.test.".into(),
        alias_targets: vec![
            AliasTarget {
                addr: "192.0.2.10".parse().unwrap(),
                services: vec!["a".into()],
            },
            AliasTarget {
                addr: "192.0.2.11".parse().unwrap(),
                services: vec!["b".into()],
            },
            AliasTarget {
                addr: "2001:db8::10".parse().unwrap(),
                services: vec!["a".into()],
            },
        ],
        hosts: vec![
            ("web01.lab.test.".into(), "10.0.0.11".parse().unwrap()),
            ("web02.dc.lab.test.".into(), "10.0.0.12".parse().unwrap()),
            ("ns.lab.test.".into(), "192.0.2.53".parse().unwrap()),
        ],
        nameservers: vec!["ns.lab.test.".into()],
        soa: Soa {
            rname: "hostmaster.lab.test.".into(),
            refresh: 3600,
            retry: 600,
            expire: 1_209_600,
            minimum: 10,
        },
        allow_transfer: vec![IpPrefix {
            addr: "127.0.0.0".parse().unwrap(),
            len: 8,
        }],
    }
}

fn query_bytes(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut b = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        b.push(l.len() as u8);
        b.extend(l.bytes());
    }
    b.push(0);
    b.extend(qtype.to_be_bytes());
    b.extend(1u16.to_be_bytes());
    if let Some(size) = edns {
        b[11] = 1;
        b.extend([0, 0, 41]);
        b.extend(size.to_be_bytes());
        b.extend([0, 0, 0, 0, 0, 0]);
    }
    b
}

fn ask_on(zone: &Zone, name: &str, qtype: u16, t: Transport, edns: Option<u16>) -> Message {
    let p = query_bytes(name, qtype, edns);
    let q = parse_query(&p).unwrap();
    let mut out = Vec::new();
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    assert!(matches!(
        zone.answer(&q, t, peer, &mut out),
        Action::Reply(_)
    ));
    let m = Message::from_vec(&out).expect("hickory decodes our answer");
    assert_eq!(m.metadata.id, 0xbeef);
    assert_eq!(m.queries.len(), 1);
    assert_eq!(
        m.queries[0].name().to_ascii(),
        name,
        "question echoed as sent"
    );
    m
}

fn ask(zone: &Zone, name: &str, qtype: u16) -> Message {
    ask_on(zone, name, qtype, Transport::Udp, None)
}

fn addrs(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn alias_answers_follow_the_mask() {
    let z = Zone::build(&spec(), &[true, true, true], 7);
    let m = ask(&z, "rdgw.lab.test.", wire::rtype::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(addrs(&m), ["192.0.2.10", "192.0.2.11"]);
    assert_eq!(m.answers[0].ttl, 30);
    let z = Zone::build(&spec(), &[false, true, false], 8);
    assert_eq!(
        addrs(&ask(&z, "rdgw.lab.test.", wire::rtype::A)),
        ["192.0.2.11"]
    );
    // The AAAA target is left out: NODATA, not NXDOMAIN.
    let m = ask(&z, "rdgw.lab.test.", wire::rtype::AAAA);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
}

#[test]
fn names_are_case_insensitive_and_echoed() {
    let z = Zone::build(&spec(), &[true, true, true], 1);
    let m = ask(&z, "RdGw.LAB.test.", wire::rtype::AAAA);
    assert_eq!(addrs(&m), ["2001:db8::10"]);
    assert_eq!(m.answers[0].name.to_ascii(), "RdGw.LAB.test.");
}

#[test]
fn apex_soa_ns_and_hosts() {
    let z = Zone::build(&spec(), &[true, true, true], 42);
    let m = ask(&z, "lab.test.", wire::rtype::SOA);
    let RData::SOA(soa) = &m.answers[0].data else {
        panic!("SOA expected")
    };
    assert_eq!(soa.serial, 42);
    assert_eq!(soa.mname.to_ascii(), "ns.lab.test.");
    assert_eq!(soa.rname.to_ascii(), "hostmaster.lab.test.");
    assert_eq!(
        (soa.refresh, soa.retry, soa.expire, soa.minimum),
        (3600, 600, 1_209_600, 10)
    );
    let m = ask(&z, "lab.test.", wire::rtype::NS);
    let RData::NS(ns) = &m.answers[0].data else {
        panic!("NS expected")
    };
    assert_eq!(ns.0.to_ascii(), "ns.lab.test.");
    assert_eq!(
        addrs(&ask(&z, "web01.lab.test.", wire::rtype::A)),
        ["10.0.0.11"]
    );
    assert_eq!(
        addrs(&ask(&z, "ns.lab.test.", wire::rtype::A)),
        ["192.0.2.53"]
    );
}

#[test]
fn negative_answers() {
    let z = Zone::build(&spec(), &[true, true, true], 1);
    let m = ask(&z, "nope.lab.test.", wire::rtype::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    let soa = &m.authorities[0];
    assert_eq!(soa.name.to_ascii(), "lab.test.");
    assert_eq!(soa.ttl, 10, "negative TTL is min(ttl, minimum)");
    // The empty non-terminal above web02.dc exists.
    let m = ask(&z, "dc.lab.test.", wire::rtype::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty() && m.authorities.len() == 1);
    let m = ask(&z, "web01.lab.test.", 15);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    let m = ask(&z, "example.org.", wire::rtype::A);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.authoritative);
    let m = ask(&z, "test.", wire::rtype::A);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn any_is_minimal() {
    let z = Zone::build(&spec(), &[true, true, true], 1);
    let m = ask(&z, "lab.test.", wire::rtype::ANY);
    assert_eq!(m.answers.len(), 1);
    let RData::HINFO(h) = &m.answers[0].data else {
        panic!("HINFO expected")
    };
    assert_eq!(&*h.cpu, b"RFC8482".as_slice());
}

#[test]
fn truncation_and_edns() {
    let mut s = spec();
    s.alias_targets = (0..40)
        .map(|i| AliasTarget {
            addr: format!("2001:db8::{i:x}").parse().unwrap(),
            services: vec!["a".into()],
        })
        .collect();
    let z = Zone::build(&s, &[true; 40], 1);
    let m = ask(&z, "rdgw.lab.test.", wire::rtype::AAAA);
    assert!(m.metadata.truncation, "40 AAAA do not fit in 512 bytes");
    assert!(m.answers.is_empty());
    let m = ask_on(
        &z,
        "rdgw.lab.test.",
        wire::rtype::AAAA,
        Transport::Udp,
        Some(1232),
    );
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 40);
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    let m = ask_on(
        &z,
        "rdgw.lab.test.",
        wire::rtype::AAAA,
        Transport::Tcp,
        None,
    );
    assert_eq!(m.answers.len(), 40);
    assert!(m.edns.is_none(), "no OPT in answer to a query without one");
}

#[test]
fn transfers_only_over_tcp_to_allowed_peers() {
    let z = Zone::build(&spec(), &[true, false, true], 5);
    let p = query_bytes("lab.test.", wire::rtype::AXFR, None);
    let q = parse_query(&p).unwrap();
    let mut out = Vec::new();
    let inside: IpAddr = "127.0.0.9".parse().unwrap();
    let outside: IpAddr = "192.0.2.99".parse().unwrap();
    assert_eq!(
        z.answer(&q, Transport::Tcp, inside, &mut out),
        Action::Transfer
    );
    for (t, peer) in [(Transport::Udp, inside), (Transport::Tcp, outside)] {
        assert_eq!(
            z.answer(&q, t, peer, &mut out),
            Action::Reply(Rcode::Refused)
        );
    }
    let mut messages = Vec::new();
    z.transfer(&q, |m| {
        messages.push(Message::from_vec(m).expect("decodes"))
    });
    let records: Vec<_> = messages.iter().flat_map(|m| m.answers.clone()).collect();
    assert_eq!(
        records.first().map(|r| r.record_type()),
        Some(RecordType::SOA)
    );
    assert_eq!(
        records.last().map(|r| r.record_type()),
        Some(RecordType::SOA)
    );
    let names: Vec<String> = records.iter().map(|r| r.name.to_ascii()).collect();
    assert!(names.contains(&"web02.dc.lab.test.".to_owned()));
    // SOA twice, NS, two alias addresses, three hosts.
    assert_eq!(records.len(), 8, "{names:?}");
}

#[test]
fn transfer_spans_messages() {
    let mut s = spec();
    s.hosts = (0..2000)
        .map(|i| (format!("host{i}.lab.test."), "10.0.0.1".parse().unwrap()))
        .collect();
    let z = Zone::build(&s, &[true, true, true], 5);
    let p = query_bytes("lab.test.", wire::rtype::AXFR, None);
    let q = parse_query(&p).unwrap();
    let mut n = 0;
    let mut count = 0;
    z.transfer(&q, |m| {
        assert!(m.len() <= 17 * 1024);
        count += Message::from_vec(m).expect("decodes").answers.len();
        n += 1;
    });
    assert!(n > 1);
    // Hosts, SOA twice, NS, three alias addresses.
    assert_eq!(count, 2000 + 6);
}

#[test]
fn other_opcodes_classes_and_versions() {
    let z = Zone::build(&spec(), &[true, true, true], 1);
    let mut out = Vec::new();
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let mut p = query_bytes("lab.test.", wire::rtype::SOA, None);
    p[2] = 0x28; // opcode 5, UPDATE
    let q = parse_query(&p).unwrap();
    assert_eq!(
        z.answer(&q, Transport::Udp, peer, &mut out),
        Action::Reply(Rcode::NotImp)
    );
    let mut p = query_bytes("lab.test.", wire::rtype::SOA, None);
    let len = p.len();
    p[len - 1] = 3; // class CH
    let q = parse_query(&p).unwrap();
    assert_eq!(
        z.answer(&q, Transport::Udp, peer, &mut out),
        Action::Reply(Rcode::Refused)
    );
    let mut p = query_bytes("lab.test.", wire::rtype::SOA, Some(1232));
    let len = p.len();
    p[len - 5] = 1; // EDNS version 1
    let q = parse_query(&p).unwrap();
    assert_eq!(
        z.answer(&q, Transport::Udp, peer, &mut out),
        Action::Reply(Rcode::BadVers)
    );
    let m = Message::from_vec(&out).unwrap();
    // 16 is both BADVERS and BADSIG; hickory names it the latter.
    assert_eq!(u16::from(m.metadata.response_code), 16);
}

#[test]
fn answered_keeps_all_when_none_can_serve() {
    let s = spec();
    let snap = crate::snapshot::Snapshot::empty();
    // No service exists in an empty snapshot: none can serve, so all are answered.
    assert_eq!(answered(&s, &snap), vec![true, true, true]);
}

#[test]
fn prefixes() {
    let p = IpPrefix {
        addr: "192.0.2.0".parse().unwrap(),
        len: 24,
    };
    assert!(prefix_contains(&p, "192.0.2.200".parse().unwrap()));
    assert!(prefix_contains(&p, "::ffff:192.0.2.1".parse().unwrap()));
    assert!(!prefix_contains(&p, "192.0.3.1".parse().unwrap()));
    let all = IpPrefix {
        addr: "::".parse().unwrap(),
        len: 0,
    };
    assert!(prefix_contains(&all, "2001:db8::1".parse().unwrap()));
}

proptest::proptest! {
    /// Whatever the query, the answer decodes and keeps the id, and a UDP answer never
    /// exceeds what the client can take.
    #[test]
    fn every_answer_decodes(
        labels in proptest::collection::vec("[a-zA-Z0-9-]{1,12}", 0..4),
        under_zone in proptest::bool::ANY,
        qtype in proptest::sample::select(vec![1u16, 2, 6, 13, 15, 28, 99, 255, 252, 251]),
        edns in proptest::option::of(0u16..5000),
    ) {
        let mut name = labels.join(".");
        if under_zone {
            name = if name.is_empty() { "lab.test.".into() } else { format!("{name}.lab.test.") };
        } else if name.is_empty() {
            name = ".".into();
        } else {
            name.push('.');
        }
        let z = Zone::build(&spec(), &[true, true, true], 1);
        let p = query_bytes(&name, qtype, edns);
        let q = parse_query(&p).unwrap();
        let mut out = Vec::new();
        if let Action::Reply(_) = z.answer(&q, Transport::Udp, "10.9.9.9".parse().unwrap(), &mut out) {
            let m = Message::from_vec(&out);
            proptest::prop_assert!(m.is_ok(), "{:?}", m.err());
            proptest::prop_assert!(out.len() <= q.udp_limit());
            proptest::prop_assert_eq!(m.unwrap().metadata.id, 0xbeef);
        }
    }
}
