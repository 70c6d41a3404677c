//! Logic behind the `fuzz/` targets (each target is a 3-line shim calling one function here), so
//! plain `#[test]`s run the same checks over the seed corpus and random inputs. Each function
//! panics if an invariant breaks; malformed input itself is fine.

use super::http::{encode_chunk, ChunkedDecoder, ChunkedError};
use super::packet::{Packet, ParseError};
use super::websocket::{encode_frame, Frame, FrameDecoder, WsError};

/// Parses every packet in `data`; each parsed packet must re-encode and re-parse to itself, and
/// the header check must agree with the full parse.
pub fn packet(data: &[u8]) {
    let mut rest = data;
    loop {
        let checked = Packet::check(rest);
        match Packet::parse_full(rest) {
            Ok(parsed) => {
                assert_eq!(checked, Ok(parsed.len));
                assert!(parsed.len >= 8 && parsed.len <= rest.len());
                let mut out = Vec::new();
                let n = parsed
                    .packet
                    .encode(&mut out)
                    .expect("a parsed packet re-encodes");
                assert_eq!(n, out.len());
                assert!(n <= parsed.len, "re-encoding never grows a packet");
                let (again, used) = Packet::parse(&out).expect("re-encoded packet parses");
                assert_eq!(again, parsed.packet);
                assert_eq!(used, out.len());
                rest = rest.get(parsed.len..).unwrap_or_default();
            }
            Err(e) => {
                if let Err(ce) = &checked {
                    assert_eq!(&e, ce);
                }
                if let ParseError::Incomplete { needed } = e {
                    assert!(needed > 0);
                }
                return;
            }
        }
    }
}

/// Decodes `data` as a chunked body in one call and again split at positions derived from the
/// first byte; both must agree. Then re-chunks the decoded bytes and decodes them back.
pub fn chunked(data: &[u8]) {
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let whole = run_chunked(data, data.len().max(1));
    let split = run_chunked(data, step);
    assert_eq!(whole, split);
    if let Ok((body, _)) = whole {
        let mut wire = Vec::new();
        for piece in body.chunks(step) {
            encode_chunk(piece, step % 2 == 0, &mut wire);
        }
        wire.extend_from_slice(super::http::LAST_CHUNK);
        let (again, used) = run_chunked(&wire, 7).expect("re-chunked body decodes");
        assert_eq!(again, body);
        assert_eq!(used, wire.len());
    }
}

/// Runs a fresh decoder over `data` fed `step` bytes at a time; returns the body and the bytes
/// consumed.
pub fn run_chunked(data: &[u8], step: usize) -> Result<(Vec<u8>, usize), ChunkedError> {
    let mut dec = ChunkedDecoder::new(4096);
    let mut out = Vec::new();
    let mut used = 0;
    for piece in data.chunks(step.max(1)) {
        let n = dec.decode(piece, &mut out)?;
        used += n;
        if dec.is_done() {
            break;
        }
    }
    Ok((out, used))
}

/// Decodes `data` as a frame stream in one piece and split at positions derived from the first
/// byte; both must agree. Every final frame re-encodes (same mask) and decodes to itself.
pub fn websocket(data: &[u8]) {
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let whole = run_websocket(data, data.len().max(1));
    let split = run_websocket(data, step);
    assert_eq!(whole, split);
    let (frames, _) = whole;
    for frame in frames.iter().filter(|f| f.fin) {
        let mask = frame.masked.then_some([0x11, 0x22, 0x33, 0x44]);
        let mut wire = Vec::new();
        encode_frame(frame.opcode, &frame.payload, mask, &mut wire)
            .expect("decoded frame re-encodes");
        let (again, err) = run_websocket(&wire, 3);
        assert_eq!(err, None);
        assert_eq!(again.as_slice(), std::slice::from_ref(frame));
    }
}

/// Runs a fresh decoder over `data` fed `step` bytes at a time; returns the frames decoded and
/// the error that stopped it, if any.
pub fn run_websocket(data: &[u8], step: usize) -> (Vec<Frame>, Option<WsError>) {
    let mut dec = FrameDecoder::new(4096);
    let mut frames = Vec::new();
    for piece in data.chunks(step.max(1)) {
        let mut rest = piece;
        while !rest.is_empty() {
            match dec.decode(rest) {
                Ok((n, frame)) => {
                    frames.extend(frame);
                    rest = rest.get(n..).unwrap_or_default();
                }
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

#[cfg(test)]
mod tests {
    //! CI coverage for the fuzz logic without a fuzzer: the committed seed corpus, mutations of
    //! it, and random bytes.

    use proptest::prelude::*;
    use std::path::PathBuf;

    type Target = fn(&[u8]);

    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let seeds: Vec<_> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
        assert!(!seeds.is_empty(), "empty corpus for {target}");
        seeds
    }

    const TARGETS: [(&str, Target); 3] = [
        ("packet", super::packet),
        ("chunked", super::chunked),
        ("websocket", super::websocket),
    ];

    #[test]
    fn corpus_replays() {
        for (name, target) in TARGETS {
            for seed in corpus(name) {
                target(&seed);
                // Every truncation too.
                for cut in 0..seed.len() {
                    target(&seed[..cut]);
                }
            }
        }
    }

    #[test]
    fn packet_seeds_are_valid_packets() {
        for seed in corpus("packet") {
            let mut rest = seed.as_slice();
            while !rest.is_empty() {
                let p = crate::rdg::Packet::parse_full(rest).expect("seed parses");
                assert_eq!(p.trailing, 0);
                rest = &rest[p.len..];
            }
        }
        for seed in corpus("websocket") {
            let (frames, err) = super::run_websocket(&seed, seed.len());
            assert_eq!(err, None);
            assert!(!frames.is_empty());
        }
        for seed in corpus("chunked") {
            assert!(super::run_chunked(&seed, seed.len()).is_ok());
        }
    }

    /// A corpus seed with some bytes overwritten and an optional cut.
    fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
        (
            0..seeds.len(),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            any::<Option<usize>>(),
        )
            .prop_map(move |(i, edits, cut)| {
                let mut s = seeds[i].clone();
                if !s.is_empty() {
                    for (pos, b) in edits {
                        let at = pos % s.len();
                        s[at] = b;
                    }
                }
                if let Some(c) = cut {
                    s.truncate(c % (s.len() + 1));
                }
                s
            })
    }

    fn random_input(target: &str) -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            mutated(corpus(target)),
            proptest::collection::vec(any::<u8>(), 0..64),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        #[test]
        fn packet_random(data in random_input("packet")) {
            super::packet(&data);
        }

        #[test]
        fn chunked_random(data in random_input("chunked")) {
            super::chunked(&data);
        }

        #[test]
        fn websocket_random(data in random_input("websocket")) {
            super::websocket(&data);
        }
    }
}
