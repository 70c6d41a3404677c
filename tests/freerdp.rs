//! The simulated gateways behind the balancer, against a client nobody here wrote: FreeRDP
//! 2.11 (`xfreerdp`, run under `xvfb-run`) connects to Portico's TLS service, which spreads
//! three simulated gateways; over both MS-TSGU transports (the legacy one opens two TLS
//! connections that only work if affinity lands both on one gateway), with a good, an expired
//! and an untrusted-signer token. A local TCP listener stands in for the Hyper-V host (the token names
//! `localhost`, the simulator's `target_override` maps it there); it records what it received
//! and closes, so xfreerdp gives up quickly after the channel has carried its first RDP bytes.
//!
//! Skipped, loudly, when `xfreerdp` or `xvfb-run` is not installed (CI installs
//! `freerdp2-x11` and `xvfb`).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portico::rdg::hresult;
use portico::sim::certs::SimPki;
use portico::sim::{CloseReason, SimConfig, SimGateway, TokenVerdict, Transport, TunnelRecord};
use portico::token::{mint, MintRequest, SigningIdentity, Verifier};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

mod common;

/// Each xfreerdp run is killed after this.
const RUN_LIMIT: Duration = Duration::from_secs(20);
const HOST: &str = "localhost";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// The Hyper-V stand-in: counts the bytes of each connection, closes after the first read.
async fn fake_hyperv() -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let got = Arc::new(AtomicU64::new(0));
    let got2 = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let got = got2.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await
                {
                    got.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, got)
}

struct Run {
    status: Option<ExitStatus>,
    elapsed: Duration,
    output: String,
}

/// Runs xfreerdp through the gateway in its own process group, killed after [`RUN_LIMIT`].
fn xfreerdp(home: &Path, gw: SocketAddr, token: &str, legacy: bool) -> Run {
    let gt = if legacy {
        "/gt:http,no-websockets"
    } else {
        "/gt:http"
    };
    let log = home.join(if legacy { "legacy.log" } else { "ws.log" });
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let start = Instant::now();
    let mut child = Command::new("xvfb-run")
        .args(["-a", "xfreerdp"])
        .arg(format!("/g:{}:{}", gw.ip(), gw.port()))
        .arg(gt)
        .arg(format!("/gat:{token}"))
        .arg(format!("/v:{HOST}"))
        .args(["/port:2179", "/cert:ignore", "/log-level:INFO"])
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .expect("spawn xvfb-run");
    let pid = child.id() as i32;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if start.elapsed() < RUN_LIMIT => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {
                // The whole group: xvfb-run, Xvfb and xfreerdp.
                // SAFETY: kill(2) on our own child's process group; no memory is involved.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
                let _ = child.wait();
                break None;
            }
        }
    };
    // xvfb-run may leave Xvfb behind if xfreerdp exits first on some versions.
    // SAFETY: as above.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    Run {
        status,
        elapsed: start.elapsed(),
        output: std::fs::read_to_string(&log).unwrap_or_default(),
    }
}

fn temp_home() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portico-freerdp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp home");
    dir
}

/// How many records each gateway of the farm holds now.
fn marks(farm: &[SimGateway]) -> Vec<usize> {
    farm.iter().map(|g| g.records().len()).collect()
}

/// The records the farm made since `from` (xfreerdp may open several tunnels in one run: its
/// RDP security negotiation retries with another protocol when the target hangs up), once
/// their tunnels have ended.
async fn records_since(farm: &[SimGateway], from: &[usize]) -> Vec<TunnelRecord> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r: Vec<TunnelRecord> = farm
            .iter()
            .zip(from)
            .flat_map(|(g, &n)| g.records().into_iter().skip(n))
            .collect();
        let done = !r.is_empty() && r.iter().all(|r| r.close_reason != CloseReason::Open);
        if done || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freerdp_through_the_balancer_to_simulated_gateways() {
    if !on_path("xfreerdp") || !on_path("xvfb-run") {
        eprintln!(
            "\n*** SKIPPING freerdp test: xfreerdp and/or xvfb-run not installed \
             (apt-get install freerdp2-x11 xvfb) ***\n"
        );
        return;
    }
    let t0 = Instant::now();
    let (signer, _) = SigningIdentity::generate("freerdp signer", 30, now() - 86_400).expect("key");
    let (stranger, _) = SigningIdentity::generate("stranger", 30, now() - 86_400).expect("key");
    let pki = SimPki::generate("rdgw.sim.test", &[]).expect("pki");
    let (target, got) = fake_hyperv().await;
    let mut farm = Vec::new();
    for name in ["web01", "web02", "web03"] {
        let mut cfg = SimConfig::new(
            name,
            pki.server_config().expect("tls"),
            Verifier::new([signer.trusted_cert()]),
        );
        cfg.target_override = Some(target);
        let gw = SimGateway::spawn("127.0.0.1:0".parse().expect("addr"), cfg)
            .await
            .expect("spawn");
        farm.push(gw);
    }
    let balancer = portico::daemon::start(common::config(&[
        ("web01", farm[0].addr(), 1),
        ("web02", farm[1].addr(), 1),
        ("web03", farm[2].addr(), 1),
    ]))
    .await
    .expect("balancer");
    let vip = balancer.local_addr("rdgw-https").expect("tls service");
    let home = temp_home();
    let mint_at = |id: &SigningIdentity, at: u64| {
        let mut req = MintRequest::new(HOST);
        req.ttl_secs = 60;
        mint(id, &req, at).expect("mint")
    };

    for legacy in [false, true] {
        let transport = if legacy {
            Transport::Legacy
        } else {
            Transport::WebSocket
        };
        let before = got.load(Ordering::Relaxed);
        let from = marks(&farm);
        let h = home.clone();
        let addr = vip;
        let token = mint_at(&signer, now());
        let run = tokio::task::spawn_blocking(move || xfreerdp(&h, addr, &token, legacy))
            .await
            .expect("join");
        let recs = records_since(&farm, &from).await;
        eprintln!(
            "freerdp {}: exit {:?} after {:?}; {} tunnel(s): {recs:#?}",
            transport.as_str(),
            run.status,
            run.elapsed,
            recs.len()
        );
        assert!(
            !recs.is_empty(),
            "no tunnel; xfreerdp said:\n{}",
            run.output
        );
        for r in &recs {
            assert_eq!(r.transport, transport, "xfreerdp said:\n{}", run.output);
            assert!(
                r.verdict.is_ok(),
                "{:?}\nxfreerdp said:\n{}",
                r.verdict,
                run.output
            );
            assert_eq!(r.target.as_deref(), Some("localhost:2179"));
            assert_eq!(r.channel_status, Some(0), "xfreerdp said:\n{}", run.output);
            assert!(r.bytes_to_target > 0, "{r:?}");
        }
        assert!(
            got.load(Ordering::Relaxed) > before,
            "the Hyper-V stand-in received nothing; xfreerdp said:\n{}",
            run.output
        );
    }

    let denied = hresult::E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED;
    for (what, token, step, legacy) in [
        (
            "expired/websocket",
            mint_at(&signer, now() - 3_000),
            7,
            false,
        ),
        (
            "untrusted signer/websocket",
            mint_at(&stranger, now()),
            4,
            false,
        ),
        ("expired/legacy", mint_at(&signer, now() - 3_000), 7, true),
        (
            "untrusted signer/legacy",
            mint_at(&stranger, now()),
            4,
            true,
        ),
    ] {
        let from = marks(&farm);
        let h = home.clone();
        let addr = vip;
        let run = tokio::task::spawn_blocking(move || xfreerdp(&h, addr, &token, legacy))
            .await
            .expect("join");
        let recs = records_since(&farm, &from).await;
        eprintln!(
            "freerdp {what}: exit {:?} after {:?}; {recs:#?}",
            run.status, run.elapsed
        );
        assert_eq!(recs.len(), 1, "xfreerdp said:\n{}", run.output);
        let r = &recs[0];
        match &r.verdict {
            TokenVerdict::Rejected {
                step: Some(s),
                hresult: h,
                ..
            } => assert_eq!((*s, *h), (step, denied), "{what}"),
            other => panic!("{what}: {other:?}\nxfreerdp said:\n{}", run.output),
        }
        assert_eq!(r.channel_status, None);
        let st = run
            .status
            .unwrap_or_else(|| panic!("{what}: xfreerdp hung:\n{}", run.output));
        assert!(!st.success(), "{what}: xfreerdp exited 0:\n{}", run.output);
    }
    // Both channels of every legacy tunnel met on one gateway: the simulators paired them
    // (an IN without its OUT would have been refused and counted).
    let unpaired: u64 = farm.iter().map(|g| g.stats().in_without_out).sum();
    assert_eq!(
        unpaired, 0,
        "an RDG_IN_DATA reached a gateway without its RDG_OUT_DATA"
    );
    balancer.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&home);
    eprintln!("freerdp test took {:?}", t0.elapsed());
}
