//! The simulated RD Gateway over real sockets: the client in `portico::sim::client` (and
//! hand-framed bytes where a test needs them) against `SimGateway` on 127.0.0.1:0, with a local
//! TCP echo server standing in for the Hyper-V host. Every fault is shown by its visible effect.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portico::rdg::hresult;
use portico::rdg::http;
use portico::rdg::packet::{
    extended_auth, CloseChannel, Data, HandshakeRequest, Packet, TunnelAuth, TunnelCreate,
};
use portico::rdg::websocket::{encode_client_frame, Opcode};
use portico::sim::certs::SimPki;
use portico::sim::client::{ClientConfig, ClientError, RdgClient};
use portico::sim::{
    CloseReason, Fault, SimConfig, SimGateway, TokenVerdict, Transport, TunnelRecord,
};
use portico::token::{mint, MintRequest, SigningIdentity, Verifier};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ALIAS: &str = "rdgw.sim.test";
const HOST: &str = "localhost";
const TIMEOUT: Duration = Duration::from_secs(5);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

struct Keys {
    signer: SigningIdentity,
    stranger: SigningIdentity,
}

/// RSA keys are slow to make: two per test binary.
fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| Keys {
        signer: SigningIdentity::generate("sim test signer", 30, now() - 86_400)
            .expect("signer")
            .0,
        stranger: SigningIdentity::generate("stranger", 30, now() - 86_400)
            .expect("stranger")
            .0,
    })
}

fn pki() -> &'static SimPki {
    static P: OnceLock<SimPki> = OnceLock::new();
    P.get_or_init(|| SimPki::generate(ALIAS, &["web01"]).expect("pki"))
}

fn token_at(id: &SigningIdentity, at: u64) -> String {
    let mut req = MintRequest::new(HOST);
    req.ttl_secs = 60;
    mint(id, &req, at).expect("mint")
}

fn good_token() -> String {
    token_at(&keys().signer, now())
}

/// A TCP echo server counting the bytes it received.
async fn echo_target() -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = l.local_addr().expect("addr");
    let got = Arc::new(AtomicU64::new(0));
    let got2 = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let got = got2.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    got.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, got)
}

async fn gateway(target: Option<SocketAddr>) -> SimGateway {
    let p = pki();
    let mut cfg = SimConfig::new(
        "web01",
        p.server_config().expect("tls"),
        Verifier::new([keys().signer.trusted_cert()]),
    );
    cfg.alt_tls_expired = Some(p.expired_config().expect("expired"));
    cfg.alt_tls_wrong_san = Some(p.wrong_san_config().expect("wrong san"));
    cfg.target_override = target;
    cfg.pair_timeout = Duration::from_secs(2);
    SimGateway::spawn("127.0.0.1:0".parse().expect("addr"), cfg)
        .await
        .expect("spawn")
}

fn client_cfg(gw: &SimGateway, transport: Transport) -> ClientConfig {
    ClientConfig {
        addr: gw.addr(),
        server_name: ALIAS.into(),
        tls: pki().client_config().expect("client tls"),
        transport,
        timeout: TIMEOUT,
    }
}

async fn connect(gw: &SimGateway, transport: Transport) -> RdgClient {
    let (c, info) = RdgClient::connect(&client_cfg(gw, transport))
        .await
        .expect("connect");
    assert_eq!(info.transport, transport);
    let date = info.date.expect("Date header");
    assert!(date.ends_with(" GMT"), "{date}");
    c
}

/// Waits until the gateway has recorded `n` tunnels and the last one is closed.
async fn settled(gw: &SimGateway, n: usize) -> Vec<TunnelRecord> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = gw.records();
        if r.len() >= n && r.iter().all(|r| r.close_reason != CloseReason::Open) {
            return r;
        }
        assert!(Instant::now() < deadline, "records did not settle: {r:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn valid_token_opens_channel_and_relays_both_ways() {
    let (target, got) = echo_target().await;
    let gw = gateway(Some(target)).await;
    for (i, transport) in [Transport::WebSocket, Transport::Legacy]
        .into_iter()
        .enumerate()
    {
        let mut c = connect(&gw, transport).await;
        let st = c
            .open_tunnel(&good_token(), "PORTICO-TEST")
            .await
            .expect("tunnel");
        assert!(st.is_ok(), "{st:?}");
        assert_eq!(c.create_channel(HOST, 2179).await.expect("channel"), 0);
        let payload: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        c.send(&Packet::Data(Data {
            data: payload.clone(),
        }))
        .await
        .expect("send");
        let mut back = Vec::new();
        while back.len() < payload.len() {
            match c.recv().await.expect("recv") {
                Packet::Data(d) => back.extend_from_slice(&d.data),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(back, payload);
        c.send(&Packet::Keepalive).await.expect("keepalive");
        assert_eq!(c.recv().await.expect("keepalive back"), Packet::Keepalive);
        c.send(&Packet::CloseChannel(CloseChannel { status: 0 }))
            .await
            .expect("close");
        assert!(matches!(
            c.recv().await.expect("close resp"),
            Packet::CloseChannelResponse(_)
        ));
        let recs = settled(&gw, i + 1).await;
        let r = recs.last().expect("record");
        assert_eq!(r.transport, transport);
        assert!(r.verdict.is_ok(), "{:?}", r.verdict);
        assert_eq!(r.client_name.as_deref(), Some("PORTICO-TEST"));
        assert_eq!(r.target.as_deref(), Some("localhost:2179"));
        assert_eq!(r.channel_status, Some(0));
        assert_eq!(r.bytes_to_target, 20_000);
        assert_eq!(r.bytes_from_target, 20_000);
        assert_eq!(r.close_reason, CloseReason::ClientCloseChannel);
        let tok = r.token.as_deref().expect("redacted token");
        assert!(!tok.contains("Signature"), "{tok}");
    }
    assert_eq!(got.load(Ordering::Relaxed), 40_000);
    let s = gw.stats();
    assert_eq!((s.tunnels_websocket, s.tunnels_legacy), (1, 1));
    assert_eq!((s.tokens_ok, s.channels_opened), (2, 2));
}

async fn tunnel_status(gw: &SimGateway, transport: Transport, token: &str) -> Option<u32> {
    let mut c = connect(gw, transport).await;
    c.open_tunnel(token, "T").await.expect("tunnel").tunnel
}

fn last_rejection(recs: &[TunnelRecord]) -> (Option<u8>, u32) {
    match &recs.last().expect("record").verdict {
        TokenVerdict::Rejected { step, hresult, .. } => (*step, *hresult),
        other => panic!("not rejected: {other:?}"),
    }
}

#[tokio::test]
async fn expired_and_untrusted_tokens_are_refused_with_their_step() {
    let gw = gateway(None).await;
    let expired = token_at(&keys().signer, now() - 3_000);
    let denied = Some(hresult::E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED);
    assert_eq!(
        tunnel_status(&gw, Transport::WebSocket, &expired).await,
        denied
    );
    assert_eq!(
        last_rejection(&settled(&gw, 1).await),
        (
            Some(7),
            hresult::E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED
        )
    );
    let untrusted = token_at(&keys().stranger, now());
    assert_eq!(
        tunnel_status(&gw, Transport::Legacy, &untrusted).await,
        denied
    );
    assert_eq!(
        last_rejection(&settled(&gw, 2).await),
        (
            Some(4),
            hresult::E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED
        )
    );
    assert_eq!(gw.stats().tokens_rejected, 2);
}

#[tokio::test]
async fn resource_mismatch_and_unreachable_target() {
    let gw = gateway(None).await;
    let mut c = connect(&gw, Transport::WebSocket).await;
    assert!(c
        .open_tunnel(&good_token(), "T")
        .await
        .expect("tunnel")
        .is_ok());
    assert_eq!(
        c.create_channel("hv99", 2179).await.expect("channel"),
        hresult::E_PROXY_RAP_ACCESSDENIED
    );
    // No override: localhost:2179 has no listener here.
    let mut c = connect(&gw, Transport::Legacy).await;
    assert!(c
        .open_tunnel(&good_token(), "T")
        .await
        .expect("tunnel")
        .is_ok());
    assert_eq!(
        c.create_channel(HOST, 2179).await.expect("channel"),
        hresult::E_PROXY_TS_CONNECTFAILED
    );
    let recs = settled(&gw, 2).await;
    assert_eq!(recs[0].close_reason, CloseReason::ResourceDenied);
    assert!(matches!(
        recs[0].verdict,
        TokenVerdict::Rejected { step: Some(8), .. }
    ));
    assert_eq!(recs[1].close_reason, CloseReason::ConnectFailed);
    assert_eq!(gw.stats().channels_refused, 2);
}

#[tokio::test]
async fn token_faults() {
    let gw = gateway(None).await;
    let denied = Some(hresult::E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED);
    gw.set_fault(Fault::TokenReject);
    assert_eq!(
        tunnel_status(&gw, Transport::WebSocket, &good_token()).await,
        denied
    );
    assert_eq!(last_rejection(&settled(&gw, 1).await).0, None);
    gw.clear_faults();
    gw.set_fault("untrusted-issuer".parse().expect("fault"));
    assert_eq!(
        tunnel_status(&gw, Transport::Legacy, &good_token()).await,
        denied
    );
    assert_eq!(last_rejection(&settled(&gw, 2).await).0, Some(4));
    gw.clear_faults();
    assert_eq!(
        tunnel_status(&gw, Transport::WebSocket, &good_token()).await,
        Some(0)
    );
}

#[tokio::test]
async fn http_and_transport_faults() {
    let gw = gateway(None).await;
    let cfg = client_cfg(&gw, Transport::WebSocket);

    gw.set_fault(Fault::Http503);
    assert!(matches!(
        RdgClient::connect(&cfg).await,
        Err(ClientError::HttpStatus(503))
    ));
    gw.clear_faults();
    gw.set_fault(Fault::Http401);
    assert!(matches!(
        RdgClient::connect(&cfg).await,
        Err(ClientError::HttpStatus(401))
    ));
    gw.clear_faults();

    gw.set_fault(Fault::Slow(Duration::from_millis(300)));
    let t = Instant::now();
    let mut c = connect(&gw, Transport::WebSocket).await;
    assert!(c
        .open_tunnel(&good_token(), "T")
        .await
        .expect("tunnel")
        .is_ok());
    // 101 + three packet answers, each delayed.
    assert!(
        t.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
    gw.clear_faults();

    gw.set_fault(Fault::Hang);
    let mut short = cfg.clone();
    short.timeout = Duration::from_millis(500);
    assert!(matches!(
        RdgClient::connect(&short).await,
        Err(ClientError::Timeout("http response"))
    ));
    gw.clear_faults();

    gw.set_fault(Fault::WebSocketUnsupported);
    let (mut c, info) = RdgClient::connect(&cfg).await.expect("fallback");
    assert_eq!((info.status, info.transport), (200, Transport::Legacy));
    assert!(c
        .open_tunnel(&good_token(), "T")
        .await
        .expect("tunnel")
        .is_ok());
    gw.clear_faults();

    for transport in [Transport::WebSocket, Transport::Legacy] {
        gw.set_fault(Fault::ResetAfterHandshake);
        let mut c = connect(&gw, transport).await;
        c.send(&Packet::HandshakeRequest(HandshakeRequest {
            ver_major: 1,
            ver_minor: 0,
            client_version: 0,
            extended_auth: extended_auth::PAA,
        }))
        .await
        .expect("send");
        assert!(matches!(
            c.recv().await.expect("handshake response"),
            Packet::HandshakeResponse(r) if r.error_code == 0
        ));
        match c.recv().await {
            Err(ClientError::Io(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}")
            }
            other => panic!("expected a reset, got {other:?}"),
        }
        gw.clear_faults();
    }
    assert_eq!(gw.stats().hung, 1);
    assert_eq!(gw.stats().http_fault_answers, 2);
}

#[tokio::test]
async fn certificate_faults_fail_tls() {
    let gw = gateway(None).await;
    let cfg = client_cfg(&gw, Transport::WebSocket);
    gw.set_fault(Fault::ExpiredCert);
    let e = RdgClient::connect(&cfg).await.err().expect("must fail");
    assert!(e.to_string().to_lowercase().contains("expired"), "{e}");
    gw.clear_faults();
    gw.set_fault(Fault::WrongSan);
    let e = RdgClient::connect(&cfg).await.err().expect("must fail");
    assert!(e.to_string().contains("not valid for name"), "{e}");
    gw.clear_faults();
    RdgClient::connect(&cfg).await.expect("healthy again");
    assert_eq!(gw.stats().tls_failures, 2);
}

async fn raw_tls(gw: &SimGateway) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(gw.addr()).await.expect("tcp");
    tokio_rustls::TlsConnector::from(pki().client_config().expect("tls"))
        .connect(ALIAS.try_into().expect("name"), tcp)
        .await
        .expect("tls")
}

async fn read_to_end(s: &mut tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .expect("gateway must close");
    out
}

#[tokio::test]
async fn in_without_out_and_bad_http_are_closed() {
    let gw = gateway(None).await;
    let mut s = raw_tls(&gw).await;
    let params = http::RequestParams {
        host: ALIAS,
        connection_id: 42,
        correlation_id: None,
        auth_scheme: Some("PAA"),
    };
    let req = http::build_request(&params, http::RequestKind::In).expect("req");
    s.write_all(req.as_bytes()).await.expect("write");
    assert!(read_to_end(&mut s).await.is_empty());
    assert_eq!(gw.stats().in_without_out, 1);

    let mut s = raw_tls(&gw).await;
    s.write_all(b"\x00\x01garbage\r\n\r\n")
        .await
        .expect("write");
    assert!(read_to_end(&mut s).await.starts_with(b"HTTP/1.1 400 "));
    let mut s = raw_tls(&gw).await;
    s.write_all(b"GET / HTTP/1.1\r\nRDG-Connection-Id: {1}\r\n\r\n")
        .await
        .expect("write");
    assert!(read_to_end(&mut s).await.starts_with(b"HTTP/1.1 404 "));

    // An OUT whose IN never comes is dropped after the pair timeout.
    let mut s = raw_tls(&gw).await;
    let req = http::build_request(&params, http::RequestKind::OutLegacy).expect("req");
    s.write_all(req.as_bytes()).await.expect("write");
    let got = read_to_end(&mut s).await;
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\nDate: "), "{got:?}");
    assert!(got.ends_with(&portico::sim::SEED));
    assert_eq!(gw.stats().out_without_in, 1);
}

/// TUNNEL_CREATE header claiming a 1 MiB cookie, then some of it.
fn huge_tunnel_create() -> Vec<u8> {
    let cookie = 1usize << 20;
    let mut p = Vec::new();
    p.extend_from_slice(&4u16.to_le_bytes());
    p.extend_from_slice(&0u16.to_le_bytes());
    p.extend_from_slice(&((18 + cookie) as u32).to_le_bytes());
    p.extend_from_slice(&0x0Du32.to_le_bytes());
    p.extend_from_slice(&1u16.to_le_bytes());
    p.extend_from_slice(&0u16.to_le_bytes());
    p.extend_from_slice(&0xFFFFu16.to_le_bytes());
    p.extend(std::iter::repeat_n(b'A', 60_000));
    p
}

async fn handshake(c: &mut RdgClient) {
    c.send(&Packet::HandshakeRequest(HandshakeRequest {
        ver_major: 1,
        ver_minor: 0,
        client_version: 0,
        extended_auth: extended_auth::PAA,
    }))
    .await
    .expect("send");
    assert!(matches!(c.recv().await, Ok(Packet::HandshakeResponse(_))));
}

#[tokio::test]
async fn one_mib_cookie_is_refused_without_panic() {
    let gw = gateway(None).await;
    // Legacy: the packet header alone is refused with BADPACKET.
    let mut c = connect(&gw, Transport::Legacy).await;
    handshake(&mut c).await;
    let framed = c.frame(&huge_tunnel_create());
    c.write_wire(&framed).await.expect("write");
    match c.recv().await {
        Ok(Packet::TunnelResponse(r)) => assert_eq!(r.status, hresult::E_PROXY_COOKIE_BADPACKET),
        other => panic!("expected BADPACKET, got {other:?}"),
    }
    assert!(matches!(
        c.recv().await,
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    // WebSocket: a 1 MiB + frame is over the frame cap: closed.
    let mut c = connect(&gw, Transport::WebSocket).await;
    handshake(&mut c).await;
    let mut frame = Vec::new();
    let payload = vec![0u8; (1 << 20) + 64];
    encode_client_frame(Opcode::Binary, &payload, [1, 2, 3, 4], &mut frame).expect("frame");
    let _ = c.write_wire(&frame).await;
    assert!(c.recv().await.is_err());
    let recs = settled(&gw, 2).await;
    assert_eq!(recs[0].close_reason, CloseReason::BadPacket);
    assert_eq!(recs[1].close_reason, CloseReason::BadPacket);
    assert_eq!(gw.stats().bad_packets, 2);
}

#[tokio::test]
async fn websocket_frames_split_at_every_byte() {
    let (target, _) = echo_target().await;
    let gw = gateway(Some(target)).await;
    let mut c = connect(&gw, Transport::WebSocket).await;
    let hs = Packet::HandshakeRequest(HandshakeRequest {
        ver_major: 1,
        ver_minor: 0,
        client_version: 0,
        extended_auth: extended_auth::PAA,
    });
    let tc = Packet::TunnelCreate(TunnelCreate::with_paa_token(0x0D, &good_token()));
    let mut wire = Vec::new();
    for (i, p) in [hs, tc].iter().enumerate() {
        let bytes = p.to_vec().expect("encode");
        // One packet split over two frames too: the payload is a byte stream.
        let (a, b) = bytes.split_at(bytes.len() / 2);
        encode_client_frame(Opcode::Binary, a, [i as u8, 2, 3, 4], &mut wire).expect("frame");
        encode_client_frame(Opcode::Ping, b"p", [9, 9, 9, 9], &mut wire).expect("ping");
        encode_client_frame(Opcode::Binary, b, [4, 3, 2, i as u8], &mut wire).expect("frame");
    }
    for b in &wire {
        c.write_wire(std::slice::from_ref(b)).await.expect("byte");
    }
    assert!(matches!(c.recv().await, Ok(Packet::HandshakeResponse(r)) if r.error_code == 0));
    assert!(matches!(c.recv().await, Ok(Packet::TunnelResponse(r)) if r.status == 0));
    c.send(&Packet::TunnelAuth(TunnelAuth::new("split")))
        .await
        .expect("auth");
    assert!(matches!(c.recv().await, Ok(Packet::TunnelAuthResponse(r)) if r.error_code == 0));
}

#[tokio::test]
async fn wrong_state_is_answered_and_kill_refuses() {
    let gw = gateway(None).await;
    let mut c = connect(&gw, Transport::WebSocket).await;
    c.send(&Packet::TunnelAuth(TunnelAuth::new("early")))
        .await
        .expect("send");
    assert!(matches!(
        c.recv().await,
        Ok(Packet::TunnelAuthResponse(r)) if r.error_code == hresult::E_PROXY_INTERNALERROR
    ));
    assert_eq!(
        settled(&gw, 1).await[0].close_reason,
        CloseReason::WrongState
    );
    assert_eq!(gw.stats().wrong_state_packets, 1);

    let mut c = connect(&gw, Transport::WebSocket).await;
    handshake(&mut c).await;
    let addr = gw.addr();
    gw.kill();
    gw.stopped().await;
    assert!(c.recv().await.is_err());
    assert!(TcpStream::connect(addr).await.is_err());
}

/// PROTOCOLS.md §2.1: FreeRDP 2.11's first request verbatim, with its 15-character key that is
/// not base64, then its first frame (HANDSHAKE_REQUEST, masked).
#[tokio::test]
async fn freerdp_first_request_verbatim() {
    let gw = gateway(None).await;
    let mut s = raw_tls(&gw).await;
    let req = "RDG_OUT_DATA /remoteDesktopGateway/ HTTP/1.1\r\n\
        Cache-Control: no-cache\r\n\
        Pragma: no-cache\r\n\
        Accept: */*\r\n\
        User-Agent: MS-RDGateway/1.0\r\n\
        Host: localhost\r\n\
        Connection: Upgrade\r\n\
        Upgrade: websocket\r\n\
        Sec-Websocket-Version: 13\r\n\
        Sec-Websocket-Key: PJYYCGFIEV_PBHQ\r\n\
        RDG-Connection-Id: {668dd9b2-7df1-ad77-8a15-69c3c90caf43}\r\n\
        RDG-Auth-Scheme: PAA\r\n\
        Content-Length: 0\r\n\r\n";
    s.write_all(req.as_bytes()).await.expect("write");
    // PROTOCOLS.md §2 example frame: HANDSHAKE_REQUEST masked with 11 22 33 44.
    s.write_all(&[
        0x82, 0x8E, 0x11, 0x22, 0x33, 0x44, 0x10, 0x22, 0x33, 0x44, 0x1F, 0x22, 0x33, 0x44, 0x10,
        0x22, 0x33, 0x44, 0x13, 0x22,
    ])
    .await
    .expect("frame");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let want_tail = [
        0x82, 18, 2, 0, 0, 0, 0x12, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0,
    ];
    while !got.ends_with(&want_tail) {
        let n = tokio::time::timeout(TIMEOUT, s.read(&mut buf))
            .await
            .expect("timely")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{text}"
    );
    let accept = http::websocket_accept(b"PJYYCGFIEV_PBHQ");
    assert!(
        text.contains(&format!("Sec-WebSocket-Accept: {accept}\r\n")),
        "{text}"
    );
    assert!(text.contains("\r\nDate: "), "{text}");
}

#[tokio::test]
async fn control_socket_sets_faults_and_reports() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let gw = gateway(None).await;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ctl_addr = l.local_addr().expect("addr");
    gw.serve_control(l);
    let s = TcpStream::connect(ctl_addr).await.expect("connect control");
    let (rd, mut wr) = s.into_split();
    let mut rd = BufReader::new(rd);
    let mut ask = async |cmd: &str| {
        wr.write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        loop {
            let mut line = String::new();
            rd.read_line(&mut line).await.expect("read");
            out.push_str(&line);
            if line.starts_with("ok") || line.starts_with("err") || line.is_empty() {
                return out;
            }
        }
    };
    assert_eq!(ask("fault http-503").await, "ok faults=http-503\n");
    assert_eq!(ask("fault slow:5").await, "ok faults=http-503,slow:5\n");
    assert!(matches!(
        RdgClient::connect(&client_cfg(&gw, Transport::WebSocket)).await,
        Err(ClientError::HttpStatus(503))
    ));
    assert!(ask("fault bogus").await.starts_with("err unknown fault"));
    assert_eq!(ask("clear http-503").await, "ok faults=slow:5\n");
    assert_eq!(ask("clear").await, "ok faults=-\n");
    assert_eq!(
        tunnel_status(&gw, Transport::Legacy, &good_token()).await,
        Some(0)
    );
    settled(&gw, 1).await;
    let stats = ask("stats").await;
    assert!(stats.contains(" http_fault_answers=1 "), "{stats}");
    assert!(stats.contains(" tokens_ok=1 "), "{stats}");
    let recs = ask("records").await;
    assert!(recs.starts_with("record seq=1 "), "{recs}");
    assert!(
        recs.contains("transport=legacy verdict=\"ok host=localhost port=2179\""),
        "{recs}"
    );
    assert!(recs.ends_with("ok 1\n"), "{recs}");
    assert!(ask("frobnicate").await.starts_with("err unknown command"));
}
