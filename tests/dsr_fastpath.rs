//! The forwarder's side of the XDP fast path (`portico::dsr::fastpath`) against the real
//! program in the kernel: flows the engine places are handed to the program, which then
//! forwards their frames to the engine's gateway; the program's counts reach the metrics; a
//! new snapshot or stepping down takes the flows back. Frames go through the program with
//! BPF_PROG_TEST_RUN; the program is attached to a veth in a namespace of the test's
//! own, so no real interface is touched.
//!
//! Needs root and a kernel with BPF (5.18+); skips loudly without.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/netns.rs"]
mod netns;

use portico::config::Protocol;
use portico::controller::Controller;
use portico::dsr::engine::{Action, Engine};
use portico::dsr::fastpath::FastPath;
use portico::dsr::flow::FlowTable;
use portico::dsr::metrics::DsrMetrics;
use portico::dsr::packet::{build, Mac, Target};
use portico::dsr::xdp::{Xdp, XDP_PASS, XDP_TX};
use portico::metrics::Metrics;
use portico::snapshot::AdminState;

const US: Mac = [2, 0, 0, 0, 0, 1];
const CLIENT_MAC: Mac = [2, 0, 0, 0, 0, 2];
const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 100);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 7);

const CONFIG: &str = r#"
[node]
name = "lb1"
interface = "d0"

[[service]]
name = "tls"
listen = "10.200.0.100:443"
pool = "gw"
forwarding = "dsr"

[pool.gw]
table_size = 251
backends = [
  { name = "gw1", address = "10.200.0.11" },
  { name = "gw2", address = "10.200.0.12" },
  { name = "gw3", address = "10.200.0.13" },
]
"#;

fn gateway_mac(i: u8) -> Mac {
    [2, 0, 0, 0, 1, i]
}

/// A namespace with an interface `d0` (a veth whose peer `d1` stays there too); deleted on
/// drop.
struct Netns(String);

impl Netns {
    fn new() -> Option<Netns> {
        let name = format!("pfp{}", std::process::id());
        let ok = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(&["netns", "add", &name]) {
            eprintln!("SKIPPED: cannot create a network namespace (needs root)");
            return None;
        }
        let ns = Netns(name);
        assert!(ok(&[
            "-n", &ns.0, "link", "add", "d0", "type", "veth", "peer", "name", "d1"
        ]));
        assert!(ok(&["-n", &ns.0, "link", "set", "d0", "up"]));
        Some(ns)
    }

    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::in_ns(&self.0, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn metric(m: &Metrics, name: &str, labels: &str) -> f64 {
    String::from_utf8_lossy(&m.encode())
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn placed_flows_go_to_the_program_and_come_back_on_a_new_snapshot_or_step_down() {
    if let Err(e) = Xdp::load(16, 1) {
        eprintln!("SKIPPED: no eBPF/XDP here: {e}");
        return;
    }
    let Some(ns) = Netns::new() else {
        return;
    };
    ns.run(|| {
        let config = portico::config::parse(CONFIG, std::path::Path::new("<test>")).unwrap();
        let metrics = Metrics::new();
        let dsr = DsrMetrics::register(&metrics.registry).unwrap();
        let controller = Controller::new(config, metrics.clone()).unwrap();
        let target = Target {
            vip: VIP.into(),
            port: 443,
            protocol: Protocol::Tcp,
            service: 0,
        };
        let mut engine = Engine::new(
            vec![target],
            vec![Arc::from("tls")],
            US,
            Some(Ipv4Addr::new(10, 200, 0, 2)),
            FlowTable::new(1024, 60_000),
            dsr.clone(),
        );
        engine.sync(&controller.snapshot().load());
        for i in 1..=3 {
            engine.learn(Ipv4Addr::new(10, 200, 0, 10 + i), gateway_mac(i));
        }
        let mut fast = FastPath::open(
            "d0",
            true,
            &[US],
            1024,
            Duration::from_secs(60),
            dsr.clone(),
        )
        .expect("the program attaches to a veth");
        let t0 = Instant::now();
        let frame = build::ipv4(US, CLIENT_MAC, CLIENT, VIP, Protocol::Tcp, 40000, 443, 100);

        // The engine forwards a frame (the user-space path) and offers its flow.
        let handle = |engine: &mut Engine, fast: &mut FastPath, f: &[u8]| -> Mac {
            let snap = controller.snapshot().load_full();
            engine.sync(&snap);
            fast.tick(
                engine,
                &snap,
                Instant::now(),
                t0.elapsed().as_millis() as u64 + 1,
            );
            let mut f = f.to_vec();
            let mut out = [0u8; 128];
            let action = engine.handle(&snap, &mut f, &mut out, Instant::now(), 1000);
            assert_eq!(action, Action::Forward);
            let placed = *engine.last_forwarded().expect("forwarded");
            fast.offer(engine, &placed, &f);
            <[u8; 6]>::try_from(&f[..6]).unwrap()
        };
        let run = |fast: &FastPath, f: &[u8]| fast.program().test_run(f).expect("test run");

        // Not forwarding yet: the offer is ignored, the program passes the flow's frames up.
        let gw = handle(&mut engine, &mut fast, &frame);
        assert_eq!(run(&fast, &frame).0, XDP_PASS, "inactive: passed up");

        // Forwarding: the flow's next frames are the program's, to the engine's gateway.
        fast.set_active(true);
        handle(&mut engine, &mut fast, &frame);
        for _ in 0..5 {
            let (action, out) = run(&fast, &frame);
            assert_eq!(action, XDP_TX);
            assert_eq!(out[..6], gw, "the gateway the engine chose");
            assert_eq!(out[6..12], US);
            assert_eq!(out[12..], frame[12..], "only the MACs change");
        }
        // A VLAN-tagged frame of another flow is forwarded in user space and not offered.
        let mut tagged = build::ipv4(US, CLIENT_MAC, CLIENT, VIP, Protocol::Tcp, 40001, 443, 100);
        tagged.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
        handle(&mut engine, &mut fast, &tagged);
        let untagged = build::ipv4(US, CLIENT_MAC, CLIENT, VIP, Protocol::Tcp, 40001, 443, 100);
        assert_eq!(
            run(&fast, &untagged).0,
            XDP_PASS,
            "no entry for a tagged flow"
        );

        // The program's five frames reach the metrics with the engine's two.
        let backend = ["gw1", "gw2", "gw3"][usize::from(gw[5]) - 1];
        std::thread::sleep(Duration::from_millis(250));
        let snap = controller.snapshot().load_full();
        fast.tick(&mut engine, &snap, Instant::now(), 2000);
        let labels = format!("backend=\"{backend}\"");
        assert_eq!(metric(&metrics, "portico_dsr_xdp_frames_total", ""), 5.0);
        assert!(
            metric(&metrics, "portico_dsr_packets_total", &labels) >= 7.0,
            "user space's frames and the program's"
        );
        assert_eq!(
            metric(&metrics, "portico_dsr_xdp_attached", "mode=\"native\""),
            1.0,
            "a veth runs XDP in its driver"
        );

        // A new snapshot (another gateway drained) may change decisions: the flow goes back
        // to user space, and comes back with its next frame, to the same gateway.
        let other = ["gw1", "gw2", "gw3"]
            .into_iter()
            .find(|b| *b != backend)
            .unwrap();
        controller.set_admin(other, AdminState::Drain).unwrap();
        let snap = controller.snapshot().load_full();
        engine.sync(&snap);
        fast.tick(&mut engine, &snap, Instant::now(), 3000);
        assert_eq!(run(&fast, &frame).0, XDP_PASS, "emptied on a new snapshot");
        assert_eq!(
            handle(&mut engine, &mut fast, &frame),
            gw,
            "placed as before"
        );
        assert_eq!(run(&fast, &frame).0, XDP_TX, "and handed over again");

        // Stepping down takes every flow back.
        fast.set_active(false);
        assert_eq!(run(&fast, &frame).0, XDP_PASS, "not forwarding: passed up");
        fast.set_active(true);
        assert_eq!(run(&fast, &frame).0, XDP_PASS, "the map was emptied");
    });
    drop(ns);
}
