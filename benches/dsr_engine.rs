//! The dsr forwarder's user-space cost per frame (classification, flow-table hit, MAC
//! rewrite, counters), apart from the socket: what one core could forward if the kernel's
//! AF_PACKET path cost nothing. `benches/dsr_pps.sh` measures the whole path.
//! `cargo bench --bench dsr_engine -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portico::config::Protocol;
use portico::controller::Controller;
use portico::dsr::engine::{Action, Engine};
use portico::dsr::flow::FlowTable;
use portico::dsr::metrics::DsrMetrics;
use portico::dsr::packet::{build, classify, Target};
use portico::metrics::Metrics;

const CONFIG: &str = r#"
[node]
name = "bench"
interface = "eth0"

[[service]]
name = "udp"
listen = "10.200.0.100:3391"
protocol = "udp"
pool = "gw"
forwarding = "dsr"

[pool.gw]
backends = [
  { name = "gw1", address = "10.200.0.11" },
  { name = "gw2", address = "10.200.0.12" },
  { name = "gw3", address = "10.200.0.13" },
]
"#;

const US: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn engine(c: &mut Criterion) {
    let config = portico::config::parse(CONFIG, std::path::Path::new("<bench>")).unwrap();
    let metrics = Metrics::new();
    let dsr = DsrMetrics::register(&metrics.registry).unwrap();
    let controller = Controller::new(config, metrics).unwrap();
    let vip = Ipv4Addr::new(10, 200, 0, 100);
    let targets = vec![Target {
        vip: vip.into(),
        port: 3391,
        protocol: Protocol::Udp,
        service: 0,
    }];
    let mut e = Engine::new(
        targets.clone(),
        vec![Arc::from("udp")],
        US,
        None,
        FlowTable::new(65536, 60_000),
        dsr,
    );
    let snap = controller.snapshot().load_full();
    e.sync(&snap);
    for i in 1..=3 {
        e.learn(Ipv4Addr::new(10, 200, 0, 10 + i), [2, 0, 0, 0, 1, i]);
    }
    let mut frames: Vec<Vec<u8>> = (0..1024u16)
        .map(|i| {
            let src = Ipv4Addr::new(10, 200, 1 + (i / 200) as u8, (i % 200) as u8 + 1);
            build::ipv4(US, [2; 6], src, vip, Protocol::Udp, 20_000 + i, 3391, 18)
        })
        .collect();
    let mut out = [0u8; 128];
    let now = Instant::now();
    let mut group = c.benchmark_group("dsr");
    group.throughput(Throughput::Elements(1));
    group.bench_function("classify_60B", |b| {
        let f = frames[0].clone();
        b.iter(|| black_box(classify(black_box(&f), &targets)))
    });
    let mut i = 0;
    group.bench_function("handle_flow_hit_60B", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            let f = &mut frames[i];
            f[..6].copy_from_slice(&US);
            let a = e.handle(&snap, f, &mut out, now, 1000);
            debug_assert_eq!(a, Action::Forward);
            black_box(a)
        })
    });
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
