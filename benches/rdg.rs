//! Parse and encode cost per MS-TSGU packet type.
//!
//! `cargo bench --bench rdg -- --warm-up-time 1 --measurement-time 2`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portico::rdg::hresult;
use portico::rdg::packet::*;
use portico::rdg::text::Utf16Text;
use std::hint::black_box;

fn packets() -> Vec<(&'static str, Packet)> {
    // A realistic PAA token length (~480 characters, PROTOCOLS.md §5.3).
    let token = format!(
        "Host=hv01.contoso.local&Port=2179&ExpiresOn=1767225600&Signature=1|SHA256|{}|{}",
        "A1".repeat(20),
        "x".repeat(350)
    );
    vec![
        ("handshake_request", HandshakeRequest::default().into()),
        ("handshake_response", HandshakeResponse::default().into()),
        (
            "extended_auth_msg",
            ExtendedAuthMsg {
                error_code: 0,
                blob: vec![0xAB; 64],
            }
            .into(),
        ),
        (
            "tunnel_create_480",
            TunnelCreate::with_paa_token(caps::FREERDP_CLIENT, &token).into(),
        ),
        (
            "tunnel_response",
            TunnelResponse {
                tunnel_id: Some(10),
                caps: Some(caps::IDLE_TIMEOUT),
                ..TunnelResponse::default()
            }
            .into(),
        ),
        ("tunnel_auth", TunnelAuth::new("PORTICO-node1").into()),
        (
            "tunnel_auth_response",
            TunnelAuthResponse {
                error_code: 0,
                redir_flags: Some(redir_flags::ENABLE_ALL),
                idle_timeout: Some(0),
                soh_response: None,
            }
            .into(),
        ),
        (
            "channel_create",
            ChannelCreate::new("hv01.contoso.local", 2179).into(),
        ),
        (
            "channel_response",
            ChannelResponse {
                channel_id: Some(1),
                ..ChannelResponse::default()
            }
            .into(),
        ),
        (
            "data_1400",
            Data {
                data: vec![0x5A; 1400],
            }
            .into(),
        ),
        (
            "data_65535",
            Data {
                data: vec![0x5A; 65535],
            }
            .into(),
        ),
        (
            "service_message",
            ServiceMessage {
                message: Utf16Text::new("Maintenance at 22:00"),
            }
            .into(),
        ),
        ("reauth_message", ReauthMessage { reauth_context: 7 }.into()),
        ("keepalive", Packet::Keepalive),
        (
            "close_channel",
            CloseChannel {
                status: hresult::ERROR_GRACEFUL_DISCONNECT,
            }
            .into(),
        ),
        (
            "close_channel_response",
            CloseChannelResponse { status: 0 }.into(),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let mut parse = c.benchmark_group("rdg_parse");
    parse.throughput(Throughput::Elements(1));
    for (name, packet) in packets() {
        let wire = packet.to_vec().expect("bench packet encodes");
        parse.bench_function(name, |b| {
            b.iter(|| Packet::parse(black_box(&wire)).expect("parses"))
        });
    }
    parse.finish();

    let mut encode = c.benchmark_group("rdg_encode");
    encode.throughput(Throughput::Elements(1));
    for (name, packet) in packets() {
        let mut out = Vec::with_capacity(70_000);
        encode.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                black_box(&packet).encode(&mut out).expect("encodes")
            })
        });
    }
    encode.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
