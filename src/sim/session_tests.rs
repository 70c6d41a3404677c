use std::sync::OnceLock;

use super::*;
use crate::rdg::packet::{CloseChannel, HandshakeRequest};
use crate::token::{mint, MintRequest, SigningIdentity};

const T0: u64 = 1_800_000_000;

fn signer() -> &'static SigningIdentity {
    static ID: OnceLock<SigningIdentity> = OnceLock::new();
    ID.get_or_init(|| {
        SigningIdentity::generate("session test", 30, T0 - 60)
            .expect("generate")
            .0
    })
}

fn verifier() -> Verifier {
    Verifier::new([signer().trusted_cert()])
}

fn hs(ext: u16) -> Packet {
    Packet::HandshakeRequest(HandshakeRequest {
        ver_major: 1,
        ver_minor: 0,
        client_version: 0,
        extended_auth: ext,
    })
}

fn tc(token: &str) -> Packet {
    Packet::TunnelCreate(TunnelCreate::with_paa_token(caps::FREERDP_CLIENT, token))
}

fn sent(actions: &[Action]) -> Vec<&Packet> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[test]
fn handshake_without_paa_is_capability_mismatch() {
    let mut s = Session::new(10, SessionOptions::default());
    let a = s.handle(hs(extended_auth::NONE), &verifier(), T0);
    assert!(matches!(
        sent(&a)[..],
        [Packet::HandshakeResponse(HandshakeResponse {
            error_code: hresult::E_PROXY_CAPABILITYMISMATCH,
            ..
        })]
    ));
    assert_eq!(
        a.last(),
        Some(&Action::Close(CloseReason::CapabilityMismatch))
    );
    assert_eq!(s.state(), State::Closed);
}

#[test]
fn happy_path_to_channel_and_close() {
    let v = verifier();
    let token = mint(signer(), &MintRequest::new("hv01"), T0).expect("mint");
    let mut s = Session::new(10, SessionOptions::default());
    s.handle(hs(extended_auth::PAA), &v, T0);
    let a = s.handle(tc(&token), &v, T0);
    let want = Packet::TunnelResponse(TunnelResponse {
        tunnel_id: Some(10),
        caps: Some(caps::IDLE_TIMEOUT),
        ..TunnelResponse::default()
    });
    // PROTOCOLS.md §3.6 success example.
    assert_eq!(
        want.to_vec().expect("encode"),
        [5, 0, 0, 0, 0x1A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0x0A, 0, 0, 0, 2, 0, 0, 0]
    );
    assert_eq!(sent(&a), vec![&want]);
    assert!(s.verdict.is_ok());
    let a = s.handle(Packet::TunnelAuth(TunnelAuth::new("PORTICO")), &v, T0);
    // PROTOCOLS.md §3.7 success example.
    assert_eq!(
        sent(&a)[0].to_vec().expect("encode"),
        [7, 0, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0]
    );
    assert_eq!(s.client_name.as_deref(), Some("PORTICO"));
    let a = s.handle(
        Packet::ChannelCreate(ChannelCreate::new("HV01", 2179)),
        &v,
        T0,
    );
    assert_eq!(
        a,
        vec![Action::Connect {
            resources: vec!["HV01".into()],
            port: 2179
        }]
    );
    let a = s.connect_result(true);
    assert_eq!(
        sent(&a)[0].to_vec().expect("encode"),
        [9, 0, 0, 0, 0x14, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
    );
    let a = s.handle(Packet::Data(Data { data: vec![1, 2] }), &v, T0);
    assert_eq!(a, vec![Action::Relay(vec![1, 2])]);
    assert_eq!(s.target_data(&vec![0; 70_000]).len(), 2);
    assert_eq!(
        s.handle(Packet::Keepalive, &v, T0),
        vec![Action::Send(Packet::Keepalive)]
    );
    let a = s.handle(Packet::CloseChannel(CloseChannel { status: 0 }), &v, T0);
    assert_eq!(
        a.last(),
        Some(&Action::Close(CloseReason::ClientCloseChannel))
    );
}

#[test]
fn expired_token_and_resource_mismatch() {
    let v = verifier();
    let token = mint(signer(), &MintRequest::new("hv01"), T0).expect("mint");
    let mut s = Session::new(1, SessionOptions::default());
    s.handle(hs(extended_auth::PAA), &v, T0);
    let a = s.handle(tc(&token), &v, T0 + 10_000);
    assert!(matches!(
        s.verdict,
        TokenVerdict::Rejected {
            step: Some(7),
            hresult: hresult::E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED,
            ..
        }
    ));
    assert_eq!(a.last(), Some(&Action::Close(CloseReason::TokenRejected)));

    let mut s = Session::new(1, SessionOptions::default());
    s.handle(hs(extended_auth::PAA), &v, T0);
    s.handle(tc(&token), &v, T0);
    s.handle(Packet::TunnelAuth(TunnelAuth::new("x")), &v, T0);
    let a = s.handle(
        Packet::ChannelCreate(ChannelCreate::new("hv02", 2179)),
        &v,
        T0,
    );
    assert!(matches!(
        sent(&a)[..],
        [Packet::ChannelResponse(ChannelResponse {
            error_code: hresult::E_PROXY_RAP_ACCESSDENIED,
            ..
        })]
    ));
}

#[test]
fn faults_and_wrong_state() {
    let v = verifier();
    let token = mint(signer(), &MintRequest::new("hv01"), T0).expect("mint");
    let opts = SessionOptions {
        reject_all_tokens: true,
        ..SessionOptions::default()
    };
    let mut s = Session::new(1, opts);
    s.handle(hs(extended_auth::PAA), &v, T0);
    s.handle(tc(&token), &v, T0);
    assert!(matches!(
        s.verdict,
        TokenVerdict::Rejected { step: None, .. }
    ));

    let mut s = Session::new(1, SessionOptions::default());
    let a = s.handle(tc(&token), &v, T0);
    assert!(matches!(
        sent(&a)[..],
        [Packet::TunnelResponse(TunnelResponse {
            status: hresult::E_PROXY_INTERNALERROR,
            ..
        })]
    ));
    assert_eq!(s.wrong_state_packets, 1);

    let mut s = Session::new(1, SessionOptions::default());
    s.handle(hs(extended_auth::PAA), &v, T0);
    let a = s.handle(Packet::Data(Data { data: vec![1] }), &v, T0);
    assert_eq!(a, vec![Action::Close(CloseReason::WrongState)]);
}
