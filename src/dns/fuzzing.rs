//! Logic behind the `dns_query` fuzz target (a 3-line shim in `fuzz/`), so plain tests run the
//! same checks over the seed corpus and random inputs. Panics if an invariant breaks; malformed
//! input itself is fine.

use std::net::IpAddr;
use std::sync::OnceLock;

use super::wire::{parse_query, ParseError, HEADER_LEN};
use super::zone::{Action, AliasTarget, Transport, Zone, ZoneSpec};
use crate::config::{IpPrefix, Soa};

fn zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let spec = ZoneSpec {
            apex: "lab.test.".into(),
            ttl: 30,
            alias: "rdgw.lab.test.".into(),
            alias_targets: vec![
                AliasTarget {
                    addr: ip("192.0.2.10"),
                    services: vec!["a".into()],
                },
                AliasTarget {
                    addr: ip("2001:db8::10"),
                    services: vec!["a".into()],
                },
            ],
            hosts: vec![
                ("web01.lab.test.".into(), ip("10.0.0.11")),
                ("ns.lab.test.".into(), ip("192.0.2.53")),
            ],
            nameservers: vec!["ns.lab.test.".into()],
            soa: Soa {
                rname: "hostmaster.lab.test.".into(),
                refresh: 3600,
                retry: 600,
                expire: 1_209_600,
                minimum: 30,
            },
            allow_transfer: vec![IpPrefix {
                addr: ip("127.0.0.0"),
                len: 8,
            }],
        };
        Zone::build(&spec, &[true, true], 1)
    })
}

/// Parses `data` as a query and answers it over both transports: an answer keeps the id, has
/// QR set, holds at least the header, and fits the client's UDP size; FORMERR keeps the id.
pub fn query(data: &[u8]) {
    let id = data.get(..2).map(|b| [b[0], b[1]]);
    match parse_query(data) {
        Ok(q) => {
            assert!(q.qname.len() <= super::wire::MAX_NAME);
            let peer = IpAddr::from([127, 0, 0, 1]);
            for t in [Transport::Udp, Transport::Tcp] {
                let mut out = Vec::new();
                match zone().answer(&q, t, peer, &mut out) {
                    Action::Reply(_) => {
                        assert!(out.len() >= HEADER_LEN);
                        assert_eq!(out.get(..2).map(|b| [b[0], b[1]]), id);
                        assert_eq!(out[2] & 0x80, 0x80);
                        if t == Transport::Udp {
                            assert!(out.len() <= q.udp_limit());
                        }
                    }
                    Action::Transfer => {
                        assert_eq!(t, Transport::Tcp, "no transfer over UDP");
                        zone().transfer(&q, |m| assert!(m.len() <= usize::from(u16::MAX)));
                    }
                }
            }
        }
        Err(ParseError::Drop(_)) => {}
        Err(ParseError::FormErr { id: got, .. }) => {
            assert_eq!(Some(got.to_be_bytes()), id);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use std::path::PathBuf;

    fn corpus() -> Vec<Vec<u8>> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dns_query");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let seeds: Vec<_> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
        assert!(!seeds.is_empty(), "empty dns_query corpus");
        seeds
    }

    #[test]
    fn corpus_replays_and_seeds_are_queries() {
        for seed in corpus() {
            assert!(super::parse_query(&seed).is_ok(), "seed {seed:?} parses");
            super::query(&seed);
            for cut in 0..seed.len() {
                super::query(&seed[..cut]);
            }
        }
    }

    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        let seeds = corpus();
        (
            0..seeds.len(),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            any::<Option<usize>>(),
        )
            .prop_map(move |(i, edits, cut)| {
                let mut s = seeds[i].clone();
                for (pos, b) in edits {
                    let at = pos % s.len().max(1);
                    if let Some(x) = s.get_mut(at) {
                        *x = b;
                    }
                }
                if let Some(c) = cut {
                    s.truncate(c % (s.len() + 1));
                }
                s
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        #[test]
        fn query_random(data in prop_oneof![mutated(), proptest::collection::vec(any::<u8>(), 0..80)]) {
            super::query(&data);
        }
    }
}
