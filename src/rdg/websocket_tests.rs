//! Frame vectors (PROTOCOLS.md §2.1), every split position, length forms, RFC 6455 violations.

use super::*;
use crate::rdg::fuzzing::run_websocket;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

const HANDSHAKE: &str = "01 00 00 00 0E 00 00 00 01 00 00 00 02 00";
const MASKED: &str = "82 8E 11 22 33 44 10 22 33 44 1F 22 33 44 10 22 33 44 13 22";

#[test]
fn masked_handshake_vector() {
    let mut out = Vec::new();
    let n = encode_client_frame(
        Opcode::Binary,
        &hex(HANDSHAKE),
        [0x11, 0x22, 0x33, 0x44],
        &mut out,
    )
    .unwrap();
    assert_eq!(out, hex(MASKED));
    assert_eq!(n, 20);
    let mut dec = FrameDecoder::default();
    let (used, frame) = dec.decode(&out).unwrap();
    assert_eq!(used, 20);
    assert_eq!(
        frame,
        Some(Frame {
            fin: true,
            opcode: Opcode::Binary,
            masked: true,
            payload: hex(HANDSHAKE),
        })
    );
    assert!(dec.is_idle());
}

/// Several frames of every length form, masked and not, control and data.
fn stream() -> (Vec<u8>, Vec<Frame>) {
    let mut wire = Vec::new();
    let mut frames = Vec::new();
    let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
    let items: Vec<(Opcode, Vec<u8>, Option<[u8; 4]>)> = vec![
        (
            Opcode::Binary,
            hex(HANDSHAKE),
            Some([0x11, 0x22, 0x33, 0x44]),
        ),
        (Opcode::Ping, b"hi".to_vec(), None),
        (Opcode::Binary, vec![7; 200], None), // 16-bit length
        (Opcode::Binary, big, Some([1, 2, 3, 4])), // 64-bit length
        (Opcode::Pong, vec![], Some([9, 9, 9, 9])),
        (Opcode::Continuation, vec![1; 125], None),
        (Opcode::Text, b"t".to_vec(), None),
        (Opcode::Close, vec![0x03, 0xE8], None),
    ];
    for (op, payload, mask) in items {
        encode_frame(op, &payload, mask, &mut wire).unwrap();
        frames.push(Frame {
            fin: true,
            opcode: op,
            masked: mask.is_some(),
            payload,
        });
    }
    (wire, frames)
}

fn decode_all(dec: &mut FrameDecoder, mut input: &[u8], frames: &mut Vec<Frame>) {
    while !input.is_empty() {
        let (n, f) = dec.decode(input).unwrap();
        frames.extend(f);
        input = &input[n..];
    }
}

#[test]
fn split_at_every_position_decodes_identically() {
    let (wire, want) = stream();
    // Two pieces, cut at every byte of the small frames (the first 242 and last 140 bytes) and
    // of the large frame's header and edges; inside its payload every 997th byte.
    let cuts = (0..=wire.len()).filter(|&c| c < 400 || c + 400 > wire.len() || c % 997 == 0);
    for cut in cuts {
        let mut dec = FrameDecoder::default();
        let mut got = Vec::new();
        decode_all(&mut dec, &wire[..cut], &mut got);
        decode_all(&mut dec, &wire[cut..], &mut got);
        assert_eq!(got, want, "cut {cut}");
        assert!(dec.is_idle());
    }
    // Byte at a time and odd strides.
    for step in [1, 2, 3, 5, 13, 126, 4096] {
        let mut dec = FrameDecoder::default();
        let (got, err) = {
            let mut frames = Vec::new();
            for piece in wire.chunks(step) {
                decode_all(&mut dec, piece, &mut frames);
            }
            (frames, None::<WsError>)
        };
        assert_eq!((got, err), (want.clone(), None), "step {step}");
    }
}

#[test]
fn length_forms_on_the_wire() {
    let mut out = Vec::new();
    encode_server_frame(Opcode::Binary, &[0; 125], &mut out).unwrap();
    assert_eq!(&out[..2], &[0x82, 125]);
    out.clear();
    encode_server_frame(Opcode::Binary, &[0; 126], &mut out).unwrap();
    assert_eq!(&out[..4], &[0x82, 126, 0, 126]);
    out.clear();
    encode_server_frame(Opcode::Binary, &[0; 65536], &mut out).unwrap();
    assert_eq!(&out[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    // Non-minimal length encodings are accepted (RFC says MUST be minimal; peers vary).
    let (frames, err) = run_websocket(&[0x82, 126, 0, 1, 0xAB], 1);
    assert_eq!(err, None);
    assert_eq!(frames[0].payload, vec![0xAB]);
}

#[test]
fn violations_are_typed() {
    let err = |b: &[u8]| run_websocket(b, b.len()).1;
    assert_eq!(
        err(&[0xC2, 0x00]),
        Some(WsError::ReservedBits { byte: 0xC2 })
    );
    assert_eq!(
        err(&[0x83, 0x00]),
        Some(WsError::ReservedOpcode { opcode: 3 })
    );
    assert_eq!(
        err(&[0x8B, 0x00]),
        Some(WsError::ReservedOpcode { opcode: 0xB })
    );
    assert_eq!(err(&[0x09, 0x00]), Some(WsError::FragmentedControl));
    assert_eq!(
        err(&[0x89, 126, 0, 126]),
        Some(WsError::ControlTooLong { len: 126 })
    );
    assert_eq!(
        err(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]),
        Some(WsError::LengthMsbSet)
    );
    assert_eq!(
        err(&[0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0]),
        Some(WsError::TooLarge {
            len: 1 << 32,
            max: 4096
        })
    );
    let mut dec = FrameDecoder::new(10);
    assert_eq!(
        dec.decode(&[0x82, 11]),
        Err(WsError::TooLarge { len: 11, max: 10 })
    );
    assert_eq!(
        encode_frame(Opcode::Ping, &[0; 126], None, &mut Vec::new()),
        Err(WsError::ControlTooLong { len: 126 })
    );
    // A non-final data frame is fine and reported as such.
    let (frames, e) = run_websocket(&[0x02, 0x01, 0xAA, 0x80, 0x01, 0xBB], 1);
    assert_eq!(e, None);
    assert_eq!(
        frames.iter().map(|f| (f.fin, f.opcode)).collect::<Vec<_>>(),
        vec![(false, Opcode::Binary), (true, Opcode::Continuation)]
    );
}

proptest! {
    #[test]
    fn frames_round_trip_any_split(
        items in proptest::collection::vec(
            (prop_oneof![Just(Opcode::Binary), Just(Opcode::Ping), Just(Opcode::Close)],
             proptest::collection::vec(any::<u8>(), 0..300),
             any::<Option<[u8; 4]>>()),
            1..5),
        step in 1usize..40,
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for (op, mut payload, mask) in items {
            if op.is_control() { payload.truncate(MAX_CONTROL_PAYLOAD); }
            encode_frame(op, &payload, mask, &mut wire).unwrap();
            want.push(Frame { fin: true, opcode: op, masked: mask.is_some(), payload });
        }
        let (got, err) = run_websocket(&wire, step);
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, want);
    }
}
