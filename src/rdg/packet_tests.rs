//! Byte-exact vectors from PROTOCOLS.md §3.3–3.9, framing edge cases and round-trip properties.

use super::*;
use crate::rdg::hresult;
use proptest::prelude::*;

pub(crate) fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

/// (name, wire bytes, packet). The first twelve are PROTOCOLS.md's worked examples; the last
/// four (no example there) are written by hand from the §3.9 layouts.
pub(crate) fn vectors() -> Vec<(&'static str, Vec<u8>, Packet)> {
    vec![
        (
            "handshake_request",
            hex("01 00 00 00 0E 00 00 00 01 00 00 00 02 00"),
            Packet::HandshakeRequest(HandshakeRequest::default()),
        ),
        (
            "handshake_response",
            hex("02 00 00 00 12 00 00 00 00 00 00 00 01 00 00 00 02 00"),
            Packet::HandshakeResponse(HandshakeResponse::default()),
        ),
        (
            "tunnel_create",
            hex("04 00 00 00 1C 00 00 00 0D 00 00 00 01 00 00 00 0A 00 54 00 6B 00 3D 00 31 00 00 00"),
            Packet::TunnelCreate(TunnelCreate::with_paa_token(caps::FREERDP_CLIENT, "Tk=1")),
        ),
        (
            "tunnel_response_ok",
            hex("05 00 00 00 1A 00 00 00 00 00 00 00 00 00 03 00 00 00 0A 00 00 00 02 00 00 00"),
            Packet::TunnelResponse(TunnelResponse {
                tunnel_id: Some(10),
                caps: Some(caps::IDLE_TIMEOUT),
                ..TunnelResponse::default()
            }),
        ),
        (
            "tunnel_response_denied",
            hex("05 00 00 00 12 00 00 00 00 00 F8 59 07 80 00 00 00 00"),
            Packet::TunnelResponse(TunnelResponse {
                status: hresult::E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED,
                ..TunnelResponse::default()
            }),
        ),
        (
            "tunnel_auth",
            hex("06 00 00 00 1C 00 00 00 00 00 10 00 50 00 4F 00 52 00 54 00 49 00 43 00 4F 00 00 00"),
            Packet::TunnelAuth(TunnelAuth::new("PORTICO")),
        ),
        (
            "tunnel_auth_response",
            hex("07 00 00 00 18 00 00 00 00 00 00 00 03 00 00 00 00 00 00 80 00 00 00 00"),
            Packet::TunnelAuthResponse(TunnelAuthResponse {
                error_code: 0,
                redir_flags: Some(redir_flags::ENABLE_ALL),
                idle_timeout: Some(0),
                soh_response: None,
            }),
        ),
        (
            "channel_create",
            hex("08 00 00 00 1A 00 00 00 01 00 83 08 03 00 0A 00 68 00 76 00 30 00 31 00 00 00"),
            Packet::ChannelCreate(ChannelCreate::new("hv01", 2179)),
        ),
        (
            "channel_response",
            hex("09 00 00 00 14 00 00 00 00 00 00 00 01 00 00 00 01 00 00 00"),
            Packet::ChannelResponse(ChannelResponse {
                channel_id: Some(1),
                ..ChannelResponse::default()
            }),
        ),
        (
            "data",
            hex("0A 00 00 00 0E 00 00 00 04 00 03 00 00 13"),
            Packet::Data(Data {
                data: vec![0x03, 0x00, 0x00, 0x13],
            }),
        ),
        (
            "keepalive",
            hex("0D 00 00 00 08 00 00 00"),
            Packet::Keepalive,
        ),
        (
            "close_channel_response",
            hex("11 00 00 00 0C 00 00 00 00 00 00 00"),
            Packet::CloseChannelResponse(CloseChannelResponse { status: 0 }),
        ),
        (
            "close_channel",
            hex("10 00 00 00 0C 00 00 00 CA 04 00 00"),
            Packet::CloseChannel(CloseChannel {
                status: hresult::ERROR_GRACEFUL_DISCONNECT,
            }),
        ),
        (
            "service_message",
            hex("0B 00 00 00 10 00 00 00 06 00 48 00 69 00 00 00"),
            Packet::ServiceMessage(ServiceMessage {
                message: Utf16Text::new("Hi"),
            }),
        ),
        (
            "reauth_message",
            hex("0C 00 00 00 10 00 00 00 08 07 06 05 04 03 02 01"),
            Packet::ReauthMessage(ReauthMessage {
                reauth_context: 0x0102_0304_0506_0708,
            }),
        ),
        (
            "extended_auth_msg",
            hex("03 00 00 00 10 00 00 00 00 00 00 00 02 00 AA BB"),
            Packet::ExtendedAuthMsg(ExtendedAuthMsg {
                error_code: 0,
                blob: vec![0xAA, 0xBB],
            }),
        ),
    ]
}

#[test]
fn vectors_parse_and_encode_byte_exact() {
    for (name, bytes, packet) in vectors() {
        assert_eq!(Packet::check(&bytes), Ok(bytes.len()), "{name}");
        let parsed = Packet::parse_full(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parsed.packet, packet, "{name}");
        assert_eq!(parsed.len, bytes.len(), "{name}");
        assert_eq!(parsed.trailing, 0, "{name}");
        let mut out = vec![0xEE]; // encode appends
        let n = packet.encode(&mut out).unwrap();
        assert_eq!(n, bytes.len(), "{name}");
        assert_eq!(&out[1..], &bytes[..], "{name}");
    }
}

#[test]
fn vector_details() {
    let (_, bytes, _) = &vectors()[2];
    let (p, _) = Packet::parse(bytes).unwrap();
    let Packet::TunnelCreate(tc) = p else {
        panic!("not a tunnel create")
    };
    assert_eq!(tc.paa_token().unwrap().as_deref(), Some("Tk=1"));
    assert_eq!(tc.fields_present(), fields::TUNNEL_PAA_COOKIE);
    assert_eq!(Packet::Keepalive.packet_type(), PacketType::KEEPALIVE);
    assert_eq!(format!("{:?}", PacketType(0x0E)), "Unknown(0x000e)");
    assert_eq!(PacketType::TUNNEL_AUTH.to_string(), "TUNNEL_AUTH");
}

#[test]
fn every_truncation_is_incomplete() {
    for (name, bytes, _) in vectors() {
        for cut in 0..bytes.len() {
            let want = if cut < HEADER_LEN {
                HEADER_LEN - cut
            } else {
                bytes.len() - cut
            };
            assert_eq!(
                Packet::parse(&bytes[..cut]),
                Err(ParseError::Incomplete { needed: want }),
                "{name} cut at {cut}"
            );
        }
    }
}

fn with_length(bytes: &[u8], len: u32) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[4..8].copy_from_slice(&len.to_le_bytes());
    b
}

#[test]
fn every_shortened_packet_length_is_typed() {
    // The header claims fewer bytes than the fields need: TooShort, or Ok when the cut falls
    // exactly after optional data (never a panic, never a read past packetLength).
    for (name, bytes, _) in vectors() {
        for len in 8..bytes.len() as u32 {
            let b = with_length(&bytes, len);
            match Packet::parse(&b) {
                Ok((_, used)) => assert_eq!(used, len as usize, "{name}/{len}"),
                Err(ParseError::TooShort { .. }) => {}
                Err(e) => panic!("{name} with packetLength {len}: unexpected {e:?}"),
            }
        }
    }
}

#[test]
fn lying_lengths() {
    // packetLength < 8
    for len in 0..8 {
        let b = with_length(&hex("0D 00 00 00 08 00 00 00"), len);
        assert_eq!(
            Packet::parse(&b),
            Err(ParseError::BadLength { length: len })
        );
    }
    // Above the caps: rejected from the header alone, before the body is buffered.
    let b = with_length(
        &hex("0D 00 00 00 00 00 00 00"),
        (MAX_CONTROL_PACKET + 1) as u32,
    );
    assert!(matches!(
        Packet::check(&b),
        Err(ParseError::TooLarge {
            cap: MAX_CONTROL_PACKET,
            ..
        })
    ));
    let b = with_length(
        &hex("0A 00 00 00 00 00 00 00"),
        (MAX_DATA_PACKET + 1) as u32,
    );
    assert!(matches!(
        Packet::check(&b),
        Err(ParseError::TooLarge {
            cap: MAX_DATA_PACKET,
            ..
        })
    ));
    let b = with_length(&hex("0A 00 00 00 00 00 00 00"), MAX_DATA_PACKET as u32);
    assert_eq!(
        Packet::check(&b),
        Err(ParseError::Incomplete {
            needed: MAX_DATA_PACKET - 8
        })
    );
    let b = with_length(&hex("0E 00 00 00 00 00 00 00"), u32::MAX);
    assert!(matches!(
        Packet::check(&b),
        Err(ParseError::TooLarge { .. })
    ));
    // cbLen beyond the packet.
    let b = hex("0A 00 00 00 0E 00 00 00 05 00 03 00 00 13");
    assert_eq!(
        Packet::parse(&b),
        Err(ParseError::TooShort {
            packet: PacketType::DATA,
            field: "data",
            needed: 5,
            available: 4
        })
    );
    let b = hex("04 00 00 00 14 00 00 00 0D 00 00 00 01 00 00 00 FF FF 54 00");
    assert!(matches!(
        Packet::parse(&b),
        Err(ParseError::TooShort {
            field: "PAACookie",
            ..
        })
    ));
    // A resource count larger than the strings present.
    let b = hex("08 00 00 00 0E 00 00 00 32 00 83 08 03 00");
    assert!(matches!(
        Packet::parse(&b),
        Err(ParseError::TooShort {
            field: "resourceName",
            ..
        })
    ));
}

#[test]
fn one_mib_cookie_is_too_large() {
    // On the wire: the header alone is enough to refuse it.
    let mut b = hex("04 00 00 00 00 00 00 00 0D 00 00 00 01 00 00 00");
    b[4..8].copy_from_slice(&(18 + (1u32 << 20)).to_le_bytes());
    assert!(matches!(
        Packet::parse(&b),
        Err(ParseError::TooLarge {
            packet: PacketType::TUNNEL_CREATE,
            ..
        })
    ));
    // Encoding refuses it and leaves the buffer untouched.
    let token = "A".repeat(1 << 19); // 1 MiB of UTF-16
    let p = Packet::TunnelCreate(TunnelCreate::with_paa_token(0x0D, &token));
    let mut out = vec![1, 2, 3];
    assert!(matches!(
        p.encode(&mut out),
        Err(EncodeError::TooLarge {
            field: "PAACookie",
            ..
        })
    ));
    assert_eq!(out, [1, 2, 3]);
    // A cookie that fits its u16 but not the packet cap.
    let p = Packet::TunnelCreate(TunnelCreate {
        caps: 0,
        reauth_context: None,
        paa_cookie: Some(vec![0; 65535]),
    });
    assert!(matches!(
        p.encode(&mut out),
        Err(EncodeError::TooLarge {
            field: "packet",
            max: MAX_CONTROL_PACKET,
            ..
        })
    ));
    // Too many resources for the u8 count.
    let mut cc = ChannelCreate::new("h", 1);
    cc.resources = vec![Utf16Text::new("h"); 256];
    assert!(matches!(
        Packet::ChannelCreate(cc).encode(&mut out),
        Err(EncodeError::TooMany { .. })
    ));
    assert_eq!(out, [1, 2, 3]);
}

#[test]
fn lone_surrogate_cookie_is_bad_string() {
    // "T" then a lone high surrogate D800, then NUL.
    let b = hex("04 00 00 00 18 00 00 00 0D 00 00 00 01 00 00 00 06 00 54 00 00 D8 00 00");
    let (p, _) = Packet::parse(&b).expect("framing does not judge text");
    let Packet::TunnelCreate(tc) = p else {
        panic!()
    };
    assert_eq!(
        tc.paa_token(),
        Err(ParseError::BadString {
            field: "PAACookie",
            error: TextError::LoneSurrogate { offset: 2 }
        })
    );
    // Odd byte count.
    let tc = TunnelCreate {
        paa_cookie: Some(vec![0x54, 0x00, 0x00]),
        ..TunnelCreate::default()
    };
    assert!(matches!(tc.paa_token(), Err(ParseError::BadString { .. })));
    assert_eq!(TunnelCreate::default().paa_token(), Ok(None));
}

#[test]
fn unknown_trailing_and_back_to_back() {
    // Unknown type 0x000E is kept, not an error.
    let b = hex("0E 00 00 00 0B 00 00 00 01 02 03");
    let (p, n) = Packet::parse(&b).unwrap();
    assert_eq!(
        p,
        Packet::Unknown {
            ptype: 0x0E,
            body: vec![1, 2, 3]
        }
    );
    assert_eq!(n, 11);
    assert_eq!(p.to_vec().unwrap(), b);
    // Trailing bytes inside a packet are tolerated and reported.
    let b = hex("01 00 00 00 10 00 00 00 01 00 00 00 02 00 FF FF");
    let parsed = Packet::parse_full(&b).unwrap();
    assert_eq!(
        parsed.packet,
        Packet::HandshakeRequest(HandshakeRequest::default())
    );
    assert_eq!((parsed.len, parsed.trailing), (16, 2));
    // Unknown fieldsPresent bits are ignored (their data would be trailing).
    let b = hex("09 00 00 00 14 00 00 00 00 00 00 00 09 00 00 00 01 00 00 00");
    let parsed = Packet::parse_full(&b).unwrap();
    assert_eq!(
        parsed.packet,
        Packet::ChannelResponse(ChannelResponse {
            channel_id: Some(1),
            ..ChannelResponse::default()
        })
    );
    // Back to back: the first packet's length is consumed, the rest is left.
    let mut stream = hex("0D 00 00 00 08 00 00 00");
    stream.extend(hex("11 00 00 00 0C 00 00 00 00 00 00 00"));
    let (p, n) = Packet::parse(&stream).unwrap();
    assert_eq!((p, n), (Packet::Keepalive, 8));
    let (p, n) = Packet::parse(&stream[n..]).unwrap();
    assert_eq!(n, 12);
    assert_eq!(p.packet_type(), PacketType::CLOSE_CHANNEL_RESPONSE);
}

#[test]
fn optional_fields_in_structure_order() {
    let p = Packet::ChannelResponse(ChannelResponse {
        error_code: 0,
        channel_id: Some(7),
        udp_port: Some(3391),
        authn_cookie: Some(vec![0xC0, 0x0C]),
    });
    let b = p.to_vec().unwrap();
    assert_eq!(
        b,
        hex("09 00 00 00 1A 00 00 00 00 00 00 00 07 00 00 00 07 00 00 00 3F 0D 02 00 C0 0C")
    );
    let p = Packet::TunnelResponse(TunnelResponse {
        server_version: 0,
        status: 0,
        tunnel_id: Some(1),
        caps: None,
        soh: Some(SohRequest {
            nonce: [0xAB; 16],
            server_cert: vec![0x41, 0x00],
        }),
        consent_message: Some(Utf16Text::new("ok")),
    });
    let b = p.to_vec().unwrap();
    assert_eq!(&b[14..16], &[0x15, 0x00]); // TUNNEL_ID | SOH_REQ | CONSENT_MSG
    assert_eq!(Packet::parse(&b).unwrap().0, p);
    let p = Packet::TunnelCreate(TunnelCreate {
        caps: 0,
        reauth_context: Some(5),
        paa_cookie: Some(vec![1, 2]),
    });
    let b = p.to_vec().unwrap();
    assert_eq!(
        b,
        hex("04 00 00 00 1C 00 00 00 00 00 00 00 03 00 00 00 05 00 00 00 00 00 00 00 02 00 01 02")
    );
}

// === properties ===

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn text() -> impl Strategy<Value = Utf16Text> {
    prop_oneof![
        proptest::collection::vec(any::<char>(), 0..10)
            .prop_map(|c| Utf16Text::new(&c.into_iter().collect::<String>())),
        bytes(24).prop_map(Utf16Text::from_wire),
    ]
}

pub(crate) fn packet_strategy() -> impl Strategy<Value = Packet> {
    let hs = (any::<u8>(), any::<u8>(), any::<u16>(), any::<u16>());
    let strategies: Vec<BoxedStrategy<Packet>> = vec![
        hs.prop_map(|(a, b, c, d)| {
            Packet::HandshakeRequest(HandshakeRequest {
                ver_major: a,
                ver_minor: b,
                client_version: c,
                extended_auth: d,
            })
        })
        .boxed(),
        (any::<u32>(), hs)
            .prop_map(|(e, (a, b, c, d))| {
                Packet::HandshakeResponse(HandshakeResponse {
                    error_code: e,
                    ver_major: a,
                    ver_minor: b,
                    server_version: c,
                    extended_auth: d,
                })
            })
            .boxed(),
        (any::<u32>(), bytes(40))
            .prop_map(|(error_code, blob)| {
                Packet::ExtendedAuthMsg(ExtendedAuthMsg { error_code, blob })
            })
            .boxed(),
        (
            any::<u32>(),
            any::<Option<u64>>(),
            proptest::option::of(bytes(40)),
        )
            .prop_map(|(caps, reauth_context, paa_cookie)| {
                Packet::TunnelCreate(TunnelCreate {
                    caps,
                    reauth_context,
                    paa_cookie,
                })
            })
            .boxed(),
        (
            any::<u16>(),
            any::<u32>(),
            any::<Option<u32>>(),
            any::<Option<u32>>(),
            proptest::option::of((any::<[u8; 16]>(), bytes(30))),
            proptest::option::of(text()),
        )
            .prop_map(|(v, s, t, c, soh, m)| {
                Packet::TunnelResponse(TunnelResponse {
                    server_version: v,
                    status: s,
                    tunnel_id: t,
                    caps: c,
                    soh: soh.map(|(nonce, server_cert)| SohRequest { nonce, server_cert }),
                    consent_message: m,
                })
            })
            .boxed(),
        (text(), proptest::option::of(bytes(30)))
            .prop_map(|(client_name, soh)| Packet::TunnelAuth(TunnelAuth { client_name, soh }))
            .boxed(),
        (
            any::<u32>(),
            any::<Option<u32>>(),
            any::<Option<u32>>(),
            proptest::option::of(bytes(30)),
        )
            .prop_map(|(e, r, i, s)| {
                Packet::TunnelAuthResponse(TunnelAuthResponse {
                    error_code: e,
                    redir_flags: r,
                    idle_timeout: i,
                    soh_response: s,
                })
            })
            .boxed(),
        (
            proptest::collection::vec(text(), 0..5),
            proptest::collection::vec(text(), 0..4),
            any::<u16>(),
            any::<u16>(),
        )
            .prop_map(|(resources, alt_resources, port, protocol)| {
                Packet::ChannelCreate(ChannelCreate {
                    resources,
                    alt_resources,
                    port,
                    protocol,
                })
            })
            .boxed(),
        (
            any::<u32>(),
            any::<Option<u32>>(),
            any::<Option<u16>>(),
            proptest::option::of(bytes(30)),
        )
            .prop_map(|(e, c, u, a)| {
                Packet::ChannelResponse(ChannelResponse {
                    error_code: e,
                    channel_id: c,
                    udp_port: u,
                    authn_cookie: a,
                })
            })
            .boxed(),
        prop_oneof![bytes(100), Just(vec![0x5A; 65535])]
            .prop_map(|data| Packet::Data(Data { data }))
            .boxed(),
        text()
            .prop_map(|message| Packet::ServiceMessage(ServiceMessage { message }))
            .boxed(),
        any::<u64>()
            .prop_map(|reauth_context| Packet::ReauthMessage(ReauthMessage { reauth_context }))
            .boxed(),
        Just(Packet::Keepalive).boxed(),
        any::<u32>()
            .prop_map(|status| Packet::CloseChannel(CloseChannel { status }))
            .boxed(),
        any::<u32>()
            .prop_map(|status| Packet::CloseChannelResponse(CloseChannelResponse { status }))
            .boxed(),
        (prop_oneof![Just(0x0Eu16), Just(0x0F), 0x12u16..], bytes(40))
            .prop_map(|(ptype, body)| Packet::Unknown { ptype, body })
            .boxed(),
    ];
    proptest::strategy::Union::new(strategies)
}

proptest! {
    #[test]
    fn round_trip(p in packet_strategy(), junk in bytes(16)) {
        let mut wire = p.to_vec().unwrap();
        let len = wire.len();
        prop_assert!(len <= p.packet_type().max_len());
        prop_assert_eq!(Packet::check(&wire), Ok(len));
        wire.extend_from_slice(&junk); // the next packet's bytes must not be touched
        let (back, used) = Packet::parse(&wire).unwrap();
        prop_assert_eq!(&back, &p);
        prop_assert_eq!(used, len);
        prop_assert_eq!(Packet::parse_full(&wire).unwrap().trailing, 0);
        // Every proper prefix is Incomplete.
        let cut = junk.first().map_or(0, |&b| usize::from(b) % len);
        let incomplete = matches!(Packet::parse(&wire[..cut]), Err(ParseError::Incomplete { .. }));
        prop_assert!(incomplete);
    }

    #[test]
    fn strict_text_round_trip(s in proptest::collection::vec(any::<char>(), 0..20)) {
        let s: String = s.into_iter().collect();
        let tc = TunnelCreate::with_paa_token(0, &s);
        let wire = Packet::TunnelCreate(tc).to_vec().unwrap();
        let Packet::TunnelCreate(back) = Packet::parse(&wire).unwrap().0 else { panic!() };
        let token = back.paa_token().unwrap().unwrap();
        // Exactly the added terminator is stripped, even when the token itself ends in NUL.
        prop_assert_eq!(token, s);
    }
}
