//! Request header blocks (PROTOCOLS.md §1.2, §2.1), head parsing, chunked coding, accept value.

use super::*;
use crate::rdg::fuzzing::run_chunked;
use crate::rdg::packet::{HandshakeRequest, Packet};

const CONN: u128 = 0x668dd9b2_7df1_ad77_8a15_69c3c90caf43;

fn params() -> RequestParams<'static> {
    RequestParams {
        host: "localhost",
        connection_id: CONN,
        correlation_id: None,
        auth_scheme: Some(AUTH_SCHEME_PAA),
    }
}

#[test]
fn guid_braced_upper() {
    assert_eq!(format_guid(CONN), "{668DD9B2-7DF1-AD77-8A15-69C3C90CAF43}");
    assert_eq!(format_guid(0), "{00000000-0000-0000-0000-000000000000}");
}

#[test]
fn websocket_request_matches_freerdp_capture() {
    // PROTOCOLS.md §2.1, as xfreerdp 2.11.7 sent it (our GUID is upper case).
    let want = "RDG_OUT_DATA /remoteDesktopGateway/ HTTP/1.1\r\n\
                Cache-Control: no-cache\r\n\
                Pragma: no-cache\r\n\
                Accept: */*\r\n\
                User-Agent: MS-RDGateway/1.0\r\n\
                Host: localhost\r\n\
                Connection: Upgrade\r\n\
                Upgrade: websocket\r\n\
                Sec-Websocket-Version: 13\r\n\
                Sec-Websocket-Key: PJYYCGFIEV_PBHQ\r\n\
                RDG-Connection-Id: {668DD9B2-7DF1-AD77-8A15-69C3C90CAF43}\r\n\
                RDG-Auth-Scheme: PAA\r\n\
                Content-Length: 0\r\n\r\n";
    let got = build_request(
        &params(),
        RequestKind::OutWebSocket {
            key: "PJYYCGFIEV_PBHQ",
        },
    )
    .unwrap();
    assert_eq!(got, want);
    let (head, n) = parse_request_head(got.as_bytes()).unwrap().unwrap();
    assert_eq!(n, got.len());
    assert_eq!(head.method, METHOD_OUT);
    assert_eq!(head.path, RESOURCE_PATH);
    assert!(head.has_token("connection", "upgrade"));
    assert!(head.has_token("UPGRADE", "WebSocket"));
    assert_eq!(head.header("rdg-auth-scheme"), Some(&b"PAA"[..]));
    assert_eq!(head.header("authorization"), None);
}

#[test]
fn legacy_and_in_requests() {
    let mut p = params();
    p.correlation_id = Some(1);
    let common = "Cache-Control: no-cache\r\n\
                  Pragma: no-cache\r\n\
                  Accept: */*\r\n\
                  User-Agent: MS-RDGateway/1.0\r\n\
                  Host: localhost\r\n\
                  Connection: Keep-Alive\r\n\
                  RDG-Connection-Id: {668DD9B2-7DF1-AD77-8A15-69C3C90CAF43}\r\n\
                  RDG-Correlation-Id: {00000000-0000-0000-0000-000000000001}\r\n\
                  RDG-Auth-Scheme: PAA\r\n";
    assert_eq!(
        build_request(&p, RequestKind::OutLegacy).unwrap(),
        format!(
            "RDG_OUT_DATA /remoteDesktopGateway/ HTTP/1.1\r\n{common}Content-Length: 0\r\n\r\n"
        )
    );
    assert_eq!(
        build_request(&p, RequestKind::In).unwrap(),
        format!("RDG_IN_DATA /remoteDesktopGateway/ HTTP/1.1\r\n{common}Content-Length: 0\r\n\r\n")
    );
    let chunked = build_request(&p, RequestKind::InChunked).unwrap();
    assert_eq!(
        chunked,
        format!(
            "RDG_IN_DATA /remoteDesktopGateway/ HTTP/1.1\r\n{common}Transfer-Encoding: chunked\r\n\r\n"
        )
    );
    let (head, _) = parse_request_head(chunked.as_bytes()).unwrap().unwrap();
    assert!(head.is_chunked());
    assert_eq!(head.content_length(), Ok(None));
    p.auth_scheme = None;
    assert!(!build_request(&p, RequestKind::In)
        .unwrap()
        .contains("RDG-Auth-Scheme"));
}

#[test]
fn header_injection_refused() {
    let mut p = params();
    p.host = "gw\r\nX-Evil: 1";
    assert_eq!(
        build_request(&p, RequestKind::OutLegacy),
        Err(HttpError::BadHeaderValue { header: "Host" })
    );
    p.host = "";
    assert!(build_request(&p, RequestKind::OutLegacy).is_err());
    assert_eq!(
        build_request(&params(), RequestKind::OutWebSocket { key: "a b" }),
        Err(HttpError::BadHeaderValue {
            header: "Sec-Websocket-Key"
        })
    );
}

#[test]
fn response_heads() {
    let accept = websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ==");
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n\x02\x00"
    );
    let bytes = resp.as_bytes();
    for cut in 0..bytes.len() - 2 {
        assert_eq!(parse_response_head(&bytes[..cut]), Ok(None), "cut {cut}");
    }
    let (head, n) = parse_response_head(bytes).unwrap().unwrap();
    assert_eq!(n, bytes.len() - 2);
    assert_eq!(head.status, 101);
    assert_eq!(head.header("sec-websocket-accept"), Some(accept.as_bytes()));
    let (head, _) = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!((head.status, head.content_length()), (200, Ok(Some(10))));
    let (head, _) =
        parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
            .unwrap()
            .unwrap();
    assert_eq!(head.content_length(), Err(HttpError::BadContentLength));
    let (head, _) = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(head.content_length(), Err(HttpError::BadContentLength));
    assert!(matches!(
        parse_response_head(b"HTTP/1.1 2x0 OK\r\n\r\n"),
        Err(HttpError::Malformed(_))
    ));
}

#[test]
fn accept_value() {
    // RFC 6455 §4.2.2 / PROTOCOLS.md §2.
    assert_eq!(
        websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    // FreeRDP 2.11's 15-character non-base64 keys, hashed as sent (values from Python hashlib).
    assert_eq!(
        websocket_accept(b"PJYYCGFIEV_PBHQ"),
        "kk5uAoUIahkz0by/++EQIlBAelo="
    );
    assert_eq!(
        websocket_accept(br"[W\UVEINYB[SVSS"),
        "Z69nz22x1ofGiUTPb22ierT/VPo="
    );
}

#[test]
fn base64_rfc4648_vectors() {
    for (i, o) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64_encode(i.as_bytes()), o);
    }
    assert_eq!(base64_encode(&[0xFB, 0xFF]), "+/8=");
}

#[test]
fn chunk_encoding() {
    let pkt = Packet::HandshakeRequest(HandshakeRequest::default())
        .to_vec()
        .unwrap();
    let mut out = Vec::new();
    encode_chunk(&pkt, true, &mut out);
    assert_eq!(&out[..3], b"E\r\n");
    assert_eq!(&out[3..17], &pkt[..]);
    assert_eq!(&out[17..], b"\r\n");
    out.clear();
    encode_chunk(&[0; 0xAB], false, &mut out);
    assert_eq!(&out[..4], b"ab\r\n");
}

#[test]
fn chunked_decoder_any_split() {
    let body: &[u8] =
        b"4\r\nWiki\r\n0005;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
    let want = b"Wikipedia in\r\n\r\nchunks.".to_vec();
    let end = body.len() - 4;
    for step in 1..body.len() {
        assert_eq!(
            run_chunked(body, step),
            Ok((want.clone(), end)),
            "step {step}"
        );
    }
    // Two-piece split at every position.
    for cut in 0..=body.len() {
        let mut dec = ChunkedDecoder::default();
        let mut out = Vec::new();
        let a = dec.decode(&body[..cut], &mut out).unwrap();
        let b = dec.decode(&body[a..], &mut out).unwrap();
        assert!(dec.is_done());
        assert_eq!((out.as_slice(), a + b), (want.as_slice(), end), "cut {cut}");
    }
}

#[test]
fn chunked_decoder_errors() {
    let run = |b: &[u8]| ChunkedDecoder::new(16).decode(b, &mut Vec::new());
    assert_eq!(run(b"\r\n"), Err(ChunkedError::BadSize { byte: b'\r' }));
    assert_eq!(run(b"g\r\n"), Err(ChunkedError::BadSize { byte: b'g' }));
    assert_eq!(run(b"1x\r\n"), Err(ChunkedError::BadSize { byte: b'x' }));
    assert_eq!(run(b"11\r\n"), Err(ChunkedError::ChunkTooLarge { max: 16 }));
    assert_eq!(run(b"10\r\n"), Ok(4));
    assert_eq!(
        run(b"FFFFFFFFFFFFFFFFFFFFFFFF\r\n"),
        Err(ChunkedError::ChunkTooLarge { max: 16 })
    );
    assert_eq!(
        run(b"1\rX"),
        Err(ChunkedError::ExpectedCrlf { found: b'X' })
    );
    assert_eq!(
        run(b"1\r\naXY"),
        Err(ChunkedError::ExpectedCrlf { found: b'X' })
    );
    assert_eq!(run(&[b'0'; 2000]), Err(ChunkedError::LineTooLong));
    let mut ext = b"1;".to_vec();
    ext.extend(vec![b'e'; 2000]);
    assert_eq!(run(&ext), Err(ChunkedError::LineTooLong));
    let mut trailer = b"0\r\n".to_vec();
    trailer.extend(vec![b't'; MAX_TRAILER + 1]);
    assert_eq!(run(&trailer), Err(ChunkedError::TrailerTooLarge));
}
