//! Health checking end to end, against simulated RD Gateways on loopback with real sockets,
//! real TLS and real MS-TSGU: `portico probe` names each fault's verdict; a running balancer
//! takes a token-rejecting gateway out of rotation in time while its established tunnel keeps
//! relaying, and takes it back after `rise` good probes; a refusing port leaves the rotation
//! through passive checks before any probe runs; flapping changes the published state exactly
//! as rise/fall allow, replayed from the gateway's own record of every probe.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portico::config::{CheckIntervals, CheckKind, Health, RdgTokenCheck, TlsCheck};
use portico::daemon::Running;
use portico::health::Hysteresis;
use portico::metrics::Metrics;
use portico::rdg::packet::{Data, Packet};
use portico::sim::certs::SimPki;
use portico::sim::client::{ClientConfig, RdgClient};
use portico::sim::{Fault, SimConfig, SimGateway, TokenVerdict, Transport};
use portico::snapshot::HealthState;
use portico::token::{mint, GeneratedPem, MintRequest, SigningIdentity, Thumbprint, Verifier};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_portico");
const ALIAS: &str = "rdgw.health.test";
/// The Hyper-V host client tokens name (the sims send its channels to an echo server).
const HV_HOST: &str = "hv01.health.test";
const NODES: [&str; 9] = [
    "web01", "web02", "web03", "web04", "web05", "web06", "web07", "web08", "web09",
];
const POOL: &str = "gateways";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn pki() -> &'static SimPki {
    static P: OnceLock<SimPki> = OnceLock::new();
    P.get_or_init(|| {
        let fqdns: Vec<String> = NODES.iter().map(|n| format!("{n}.health.test")).collect();
        let refs: Vec<&str> = fqdns.iter().map(String::as_str).collect();
        SimPki::generate(ALIAS, &refs).expect("pki")
    })
}

/// The probe's signing identity (RSA keys are slow to make: one per test binary).
fn signer() -> &'static (SigningIdentity, GeneratedPem) {
    static S: OnceLock<(SigningIdentity, GeneratedPem)> = OnceLock::new();
    S.get_or_init(|| {
        SigningIdentity::generate("health test signer", 30, now() - 86_400).expect("signer")
    })
}

/// A scratch directory removed on drop (even when the test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("portico-health-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        let s = Scratch(d);
        std::fs::write(s.path("ca.pem"), &pki().ca_pem).expect("ca.pem");
        signer()
            .1
            .write(&s.path("signer.pem"), &s.path("signer.key"))
            .expect("signer files");
        s
    }

    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn sim(name: &str, target: Option<SocketAddr>) -> SimGateway {
    let p = pki();
    let mut cfg = SimConfig::new(
        name,
        p.server_config().expect("tls"),
        Verifier::new([signer().0.trusted_cert()]),
    );
    cfg.alt_tls_expired = Some(p.expired_config().expect("expired"));
    cfg.alt_tls_wrong_san = Some(p.wrong_san_config().expect("wrong san"));
    cfg.target_override = target;
    SimGateway::spawn("127.0.0.1:0".parse().expect("addr"), cfg)
        .await
        .expect("sim")
}

/// A TCP echo server standing in for the Hyper-V host.
async fn echo_target() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// The three checks at `interval`, as the daemon would get them from a file.
fn health(dir: &Scratch, interval: Duration, timeout: Duration, rise: u32, fall: u32) -> Health {
    Health {
        interval,
        intervals: CheckIntervals::all(interval),
        timeout,
        rise: NonZeroU32::new(rise).expect("rise"),
        fall: NonZeroU32::new(fall).expect("fall"),
        checks: vec![CheckKind::Tcp, CheckKind::Tls, CheckKind::RdgToken],
        passive: true,
        tls: Some(TlsCheck {
            server_name: ALIAS.into(),
            ca_file: Some(dir.path("ca.pem")),
            min_days_left: 14,
        }),
        rdg_token: Some(RdgTokenCheck {
            signing_cert: dir.path("signer.pem"),
            signing_key: dir.path("signer.key"),
            host: "canary.health.test".into(),
            port: 2179,
            channel_target: None,
        }),
    }
}

/// Starts a balancer over `gws` with `health`.
async fn balancer(gws: &[&SimGateway], health: Health) -> Running {
    let names: Vec<(String, SocketAddr)> = gws
        .iter()
        .map(|g| (g.control().name().to_owned(), g.addr()))
        .collect();
    let backends: Vec<(&str, SocketAddr, u32)> =
        names.iter().map(|(n, a)| (n.as_str(), *a, 1)).collect();
    let mut cfg = common::config(&backends);
    cfg.pools[0].health = health;
    cfg.metrics.listen = None;
    portico::daemon::start_with(cfg, 1)
        .await
        .expect("balancer starts")
}

fn up(m: &Metrics, backend: &str) -> i64 {
    m.backend_up.with_label_values(&[POOL, backend]).get()
}

fn state_changes(m: &Metrics, backend: &str) -> u64 {
    m.backend_state_changes
        .with_label_values(&[POOL, backend])
        .get()
}

fn results(m: &Metrics, backend: &str, check: &str, result: &str) -> u64 {
    m.probe_results
        .with_label_values(&[backend, check, result])
        .get()
}

/// Polls `f` every 5 ms until true; the time it took, or `None` after `within`.
async fn until(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if f() {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// A loopback forwarder that reaches `to` from source address `from`, so an MS-TSGU client
/// (which connects from 127.0.0.1) looks like a distinct client to the balancer's affinity.
async fn via(from: IpAddr, to: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind forwarder");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Ok(mut up) = common::tcp_from(from, to).await {
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                }
            });
        }
    });
    addr
}

fn client_token() -> String {
    let mut req = MintRequest::new(HV_HOST);
    req.ttl_secs = 600;
    mint(&signer().0, &req, now()).expect("mint")
}

/// An MS-TSGU client through the balancer at `lb`, from source `n`, with a tunnel open
/// (client name `name`); returns it once TUNNEL_AUTH passed.
async fn tunnel(lb: SocketAddr, n: u8, name: &str) -> RdgClient {
    let cfg = ClientConfig {
        addr: via(common::source(n), lb).await,
        server_name: ALIAS.into(),
        tls: pki().client_config().expect("client tls"),
        transport: Transport::WebSocket,
        timeout: Duration::from_secs(5),
    };
    let (mut c, _) = RdgClient::connect(&cfg).await.expect("connect via lb");
    let st = c
        .open_tunnel(&client_token(), name)
        .await
        .expect("tunnel exchange");
    assert!(st.is_ok(), "{name}: tunnel refused: {st:?}");
    c
}

/// Sends `n` bytes as DATA and reads them back through the channel.
async fn echo(c: &mut RdgClient, n: usize) {
    let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
    c.send(&Packet::Data(Data {
        data: payload.clone(),
    }))
    .await
    .expect("send data");
    let mut back = Vec::new();
    while back.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), c.recv()).await {
            Ok(Ok(Packet::Data(d))) => back.extend_from_slice(&d.data),
            other => panic!("expected DATA back, got {other:?}"),
        }
    }
    assert_eq!(back, payload);
}

/// Which gateway recorded a tunnel whose client name is `name` (records are written just
/// after the answer goes out: give them a moment).
async fn who<'a>(gws: &[&'a SimGateway], name: &str) -> Option<&'a SimGateway> {
    let t0 = Instant::now();
    loop {
        let found = gws.iter().copied().find(|g| {
            g.records()
                .iter()
                .any(|r| r.client_name.as_deref() == Some(name))
        });
        if found.is_some() || t0.elapsed() > Duration::from_secs(2) {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn run_probe(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("probe")
        .args(args)
        .output()
        .expect("run portico probe");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn probe_config(dir: &Scratch, backends: &[(&str, SocketAddr)], timeout_ms: u64) -> PathBuf {
    probe_config_with(dir, backends, timeout_ms, "")
}

/// `extra` goes into the rdg_token table.
fn probe_config_with(
    dir: &Scratch,
    backends: &[(&str, SocketAddr)],
    timeout_ms: u64,
    extra: &str,
) -> PathBuf {
    let mut list = String::new();
    for (n, a) in backends {
        list.push_str(&format!("  {{ name = \"{n}\", address = \"{a}\" }},\n"));
    }
    let text = format!(
        r#"[node]
name = "lb-probe-test"

[[service]]
name = "rdgw-https"
listen = "127.0.0.1:10443"
pool = "{POOL}"

[pool.{POOL}]
backends = [
{list}]

[pool.{POOL}.health]
interval_ms = 2000
timeout_ms = {timeout_ms}
checks = ["tcp", "tls", "rdg-token"]
tls = {{ server_name = "{ALIAS}", ca_file = "{ca}" }}
rdg_token = {{ signing_cert = "{cert}", signing_key = "{key}", host = "canary.health.test"{extra} }}

[metrics]
listen = "off"
"#,
        ca = dir.path("ca.pem").display(),
        cert = dir.path("signer.pem").display(),
        key = dir.path("signer.key").display(),
    );
    let path = dir.path("portico.toml");
    std::fs::write(&path, text).expect("config");
    path
}

fn field<'a>(v: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    v.get(key).unwrap_or(&serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_names_every_fault_with_its_verdict() {
    let dir = Scratch::new("probe");
    let faults: [(&str, Option<&str>, &str, &str); 9] = [
        // (backend, fault, verdict, stage where it was reached)
        ("web01", None, "healthy", "tunnel-auth"),
        (
            "web02",
            Some("token-reject"),
            "token-rejected",
            "tunnel-create",
        ),
        (
            "web03",
            Some("untrusted-issuer"),
            "token-rejected",
            "tunnel-create",
        ),
        ("web04", Some("slow:3000"), "timeout", "http"),
        ("web05", Some("hang"), "timeout", "http"),
        ("web06", Some("http-503"), "gateway-error", "http"),
        ("web07", Some("expired-cert"), "tls-error", "tls"),
        ("web08", Some("wrong-san"), "tls-error", "tls"),
        (
            "web09",
            Some("reset-after-handshake"),
            "protocol-error",
            "tunnel-create",
        ),
    ];
    let mut gws = Vec::new();
    for (name, fault, _, _) in &faults {
        let g = sim(name, None).await;
        if let Some(f) = fault {
            g.set_fault(f.parse::<Fault>().expect("fault"));
        }
        gws.push(g);
    }
    let backends: Vec<(&str, SocketAddr)> = faults
        .iter()
        .zip(&gws)
        .map(|((n, ..), g)| (*n, g.addr()))
        .collect();
    let cfg = probe_config(&dir, &backends, 1000);
    let cfg_s = cfg.to_str().expect("utf-8 path").to_owned();

    let t0 = Instant::now();
    let (code, out, err) = {
        let c = cfg_s.clone();
        tokio::task::spawn_blocking(move || run_probe(&["--config", &c, "--json"]))
            .await
            .expect("join")
    };
    // Backends are probed at once: the slow and hung ones cost one timeout, not two.
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert_eq!(code, 1, "one unhealthy backend means exit 1\n{out}\n{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(field(&doc, "version"), 1);
    assert_eq!(field(&doc, "healthy"), false);
    let list = field(&doc, "backends").as_array().expect("backends");
    assert_eq!(list.len(), faults.len());
    for ((name, fault, verdict, stage), b) in faults.iter().zip(list) {
        let what = format!("{name} ({fault:?}): {b:#}");
        assert_eq!(field(b, "backend"), *name, "{what}");
        assert_eq!(field(b, "verdict"), *verdict, "{what}");
        assert_eq!(field(b, "stage"), *stage, "{what}");
        assert_eq!(field(b, "healthy"), *verdict == "healthy", "{what}");
        let checks = field(b, "checks").as_array().expect("checks");
        // A failing cheaper check stops the dearer ones.
        let want_checks = if *stage == "tls" { 2 } else { 3 };
        assert_eq!(checks.len(), want_checks, "{what}");
        for c in &checks[..want_checks - 1] {
            assert_eq!(field(c, "verdict"), "healthy", "{what}");
        }
        assert!(field(&checks[0], "seconds").as_f64().is_some(), "{what}");
    }
    let by = |n: &str| list.iter().find(|b| field(b, "backend") == n).expect(n);

    let ok = by("web01");
    assert_eq!(field(ok, "http_status"), 101);
    assert_eq!(field(ok, "transport"), "websocket");
    assert_eq!(field(ok, "code"), "L7OK");
    let cert = field(ok, "certificate");
    assert!(
        field(cert, "subject")
            .as_str()
            .unwrap_or("")
            .contains(ALIAS),
        "{cert}"
    );
    let sans: Vec<&str> = field(cert, "sans")
        .as_array()
        .expect("sans")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(
        sans.contains(&ALIAS) && sans.contains(&"web01.health.test"),
        "{sans:?}"
    );
    assert!(field(cert, "not_after").as_i64().unwrap_or(0) > now() as i64);
    assert_eq!(
        field(cert, "issuer_thumbprint"),
        Thumbprint::of_der(&pki().ca_der).to_string().as_str(),
        "the issuer is named by the thumbprint Windows would show"
    );
    assert_eq!(field(ok, "warnings").as_array().map(Vec::len), Some(0));

    let rejected = by("web02");
    assert_eq!(field(rejected, "hresult"), "0x800759f8");
    assert_eq!(
        field(rejected, "hresult_name"),
        "E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED"
    );
    assert_eq!(field(by("web06"), "http_status"), 503);
    assert!(field(by("web07"), "detail")
        .as_str()
        .unwrap_or("")
        .to_lowercase()
        .contains("expired"));
    assert!(field(by("web08"), "detail")
        .as_str()
        .unwrap_or("")
        .contains("not valid for name"));
    for slow in ["web04", "web05"] {
        let t = field(&field(by(slow), "checks")[2], "seconds")
            .as_f64()
            .unwrap_or(0.0);
        assert!((0.5..3.0).contains(&t), "{slow}: gave up after {t} s");
    }

    // One healthy backend: exit 0 and a table a human can read.
    let (code, out, err) = {
        let c = cfg_s.clone();
        tokio::task::spawn_blocking(move || run_probe(&["--config", &c, "web01"]))
            .await
            .expect("join")
    };
    assert_eq!(code, 0, "{out}\n{err}");
    for want in [
        "web01",
        "rdg-token",
        "healthy",
        "L7OK",
        "HTTP 101",
        "thumbprint",
        "=> web01 HEALTHY",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let (code, out, _) = {
        let c = cfg_s.clone();
        tokio::task::spawn_blocking(move || run_probe(&["--config", &c, "web02"]))
            .await
            .expect("join")
    };
    assert_eq!(code, 1);
    assert!(out.contains("NOT HEALTHY (token-rejected)"), "{out}");
    assert!(
        out.contains("E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED"),
        "{out}"
    );

    // Usage and config mistakes: exit 2, saying what is wrong.
    let (code, _, err) = {
        let c = cfg_s.clone();
        tokio::task::spawn_blocking(move || run_probe(&["--config", &c, "web99"]))
            .await
            .expect("join")
    };
    assert_eq!(code, 2);
    assert!(err.contains("no backend named \"web99\""), "{err}");
    let missing = dir.path("missing.toml");
    let m = missing.to_str().expect("path").to_owned();
    let (code, _, err) = tokio::task::spawn_blocking(move || run_probe(&["--config", &m]))
        .await
        .expect("join");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rejecting_gateway_leaves_in_time_keeps_its_tunnels_and_returns_after_rise() {
    let dir = Scratch::new("reject");
    let hv = echo_target().await;
    let (a, b) = (sim("web01", Some(hv)).await, sim("web02", Some(hv)).await);
    let interval = Duration::from_millis(200);
    let timeout = Duration::from_millis(500);
    let (rise, fall) = (2u32, 2u32);
    let running = balancer(&[&a, &b], health(&dir, interval, timeout, rise, fall)).await;
    let lb = running.local_addr("rdgw-https").expect("https");
    let m = running.controller.metrics().clone();
    let gws = [&a, &b];

    // A console session established before the fault: tunnel, channel, bytes both ways.
    let mut est = tunnel(lb, 10, "established").await;
    assert_eq!(est.create_channel(HV_HOST, 2179).await.expect("channel"), 0);
    echo(&mut est, 1000).await;
    let x = who(&gws, "established")
        .await
        .expect("a gateway holds the session");
    let y = if std::ptr::eq(x, &a) { &b } else { &a };
    let (xn, yn) = (x.control().name().to_owned(), y.control().name().to_owned());
    assert_eq!((up(&m, &xn), up(&m, &yn)), (1, 1));

    x.set_fault(Fault::TokenReject);
    let budget = interval * fall + timeout;
    let took = until(Duration::from_secs(10), || up(&m, &xn) == 0)
        .await
        .expect("the token-rejecting gateway leaves the rotation");
    assert!(
        took <= budget + Duration::from_millis(100),
        "out after {took:?}, allowed fall × interval + timeout = {budget:?}"
    );
    assert_eq!(state_changes(&m, &xn), 1);
    assert!(results(&m, &xn, "rdg-token", "token-rejected") >= u64::from(fall));

    // The session's own client address was pinned to it: its affinity entry is gone, so a
    // new connection from there goes to the other gateway too.
    let _again = tunnel(lb, 10, "established-again").await;
    let got = who(&gws, "established-again")
        .await
        .map(|g| g.control().name().to_owned());
    assert_eq!(got.as_deref(), Some(yn.as_str()));

    // No new client reaches it; every one gets a working tunnel on the other gateway.
    for n in 20..30u8 {
        let name = format!("new-{n}");
        let _c = tunnel(lb, n, &name).await;
        let got = who(&gws, &name)
            .await
            .map(|g| g.control().name().to_owned());
        assert_eq!(got.as_deref(), Some(yn.as_str()), "{name}");
    }
    // The established session still relays through the rejecting gateway.
    echo(&mut est, 5000).await;
    let rec = x
        .records()
        .into_iter()
        .find(|r| r.client_name.as_deref() == Some("established"))
        .expect("record");
    assert_eq!(rec.bytes_to_target, 6000, "both echoes went through {xn}");

    // Back after `rise` good probes of the token check, not before.
    let healthy_before = results(&m, &xn, "rdg-token", "healthy");
    x.clear_faults();
    let took = until(Duration::from_secs(10), || up(&m, &xn) == 1)
        .await
        .expect("the gateway returns");
    let goods = results(&m, &xn, "rdg-token", "healthy") - healthy_before;
    assert_eq!(goods, u64::from(rise), "returned after {goods} good probes");
    assert!(
        took >= interval.mul_f64(0.9) * (rise - 1),
        "back after {took:?}: faster than rise allows"
    );
    assert!(took <= interval.mul_f64(1.1) * rise + timeout, "{took:?}");
    assert_eq!(state_changes(&m, &xn), 2);
    // New clients reach it again (Maglev gives it about half of them).
    let mut back = false;
    for n in 40..70u8 {
        let name = format!("later-{n}");
        let _c = tunnel(lb, n, &name).await;
        if who(&gws, &name)
            .await
            .is_some_and(|g| g.control().name() == xn)
        {
            back = true;
            break;
        }
    }
    assert!(back, "no new client reached {xn} after it returned");
    echo(&mut est, 100).await;
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_port_leaves_rotation_through_passive_checks_before_the_next_probe() {
    let dir = Scratch::new("passive");
    let (a, b) = (sim("web01", None).await, sim("web02", None).await);
    let mut h = health(&dir, Duration::from_secs(30), Duration::from_secs(1), 2, 2);
    h.checks = vec![CheckKind::Tcp];
    let running = balancer(&[&a, &b], h).await;
    let lb = running.local_addr("rdgw-https").expect("https");
    let m = running.controller.metrics().clone();
    // The first probe of each backend comes within the first tenth of the interval; the next
    // one not before 27 s later.
    until(Duration::from_secs(5), || {
        results(&m, "web02", "tcp", "healthy") == 1 && results(&m, "web01", "tcp", "healthy") == 1
    })
    .await
    .expect("first probes");
    b.kill();
    b.stopped().await;
    let t0 = Instant::now();
    let tls = pki().client_config().expect("client tls");
    let name = rustls::pki_types::ServerName::try_from(ALIAS).expect("name");
    // Clients keep being served (a refused connect is retried on the next gateway) while
    // their failed connects to web02 count toward `fall`.
    for n in 2..40u8 {
        let tcp = common::tcp_from(common::source(n), lb)
            .await
            .expect("connect");
        tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name.clone(), tcp)
            .await
            .expect("TLS through the balancer reaches web01");
        if up(&m, "web02") == 0 {
            break;
        }
    }
    let took = until(Duration::from_secs(2), || up(&m, "web02") == 0)
        .await
        .map(|_| t0.elapsed())
        .expect("web02 leaves the rotation");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(
        results(&m, "web02", "tcp", "healthy") + results(&m, "web02", "tcp", "connect-failed"),
        1,
        "no probe ran since the first one: the passive checks did it"
    );
    assert!(results(&m, "web02", "passive", "connect-failed") >= 2);
    assert_eq!(up(&m, "web01"), 1);
    // From now on new clients go straight to web01: no more failed connects to web02.
    // (Reports made before web02 went down may still be queued for its task: let them land.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failed = results(&m, "web02", "passive", "connect-failed");
    for n in 100..110u8 {
        let tcp = common::tcp_from(common::source(n), lb)
            .await
            .expect("connect");
        tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name.clone(), tcp)
            .await
            .expect("TLS through the balancer");
    }
    assert_eq!(
        results(&m, "web02", "passive", "connect-failed"),
        failed,
        "up {} changes {}",
        up(&m, "web02"),
        state_changes(&m, "web02")
    );
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_changes_state_only_as_rise_and_fall_allow() {
    let dir = Scratch::new("flap");
    let (a, b) = (sim("web01", None).await, sim("web02", None).await);
    let interval = Duration::from_millis(100);
    let (rise, fall) = (3u32, 3u32);
    let running = balancer(
        &[&a, &b],
        health(&dir, interval, Duration::from_millis(500), rise, fall),
    )
    .await;
    let m: Arc<Metrics> = running.controller.metrics().clone();
    // Bad and good windows, in probe intervals: short ones must not flip, long ones may.
    let windows = [1u32, 1, 2, 2, 4, 4, 1, 1, 2, 2, 5, 5];
    // (when, token probes counted so far, published up/down)
    let mut samples: Vec<(Instant, u64, i64)> = Vec::new();
    let token_probes = |m: &Metrics| {
        results(m, "web01", "rdg-token", "healthy")
            + results(m, "web01", "rdg-token", "token-rejected")
    };
    let mut bad = true;
    for w in windows {
        if bad {
            a.set_fault(Fault::TokenReject);
        } else {
            a.clear_faults();
        }
        let end = Instant::now() + interval * w;
        while Instant::now() < end {
            samples.push((Instant::now(), token_probes(&m), up(&m, "web01")));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bad = !bad;
    }
    a.clear_faults();
    until(Duration::from_secs(5), || up(&m, "web01") == 1)
        .await
        .expect("web01 ends up");
    running.shutdown(Duration::from_secs(1)).await;

    // The gateway's own record of every token probe, in order, replayed through rise/fall:
    // the balancer must have changed state exactly as often as that sequence allows.
    let counted = token_probes(&m);
    let seen: Vec<bool> = a
        .records()
        .iter()
        .filter(|r| !matches!(r.verdict, TokenVerdict::Pending))
        .map(|r| r.verdict.is_ok())
        .take(counted as usize)
        .collect();
    assert_eq!(
        seen.len() as u64,
        counted,
        "every counted probe is on record"
    );
    let (good, rejected) = (
        seen.iter().filter(|ok| **ok).count(),
        seen.iter().filter(|ok| !**ok).count(),
    );
    assert!(
        good >= 5 && rejected >= 5,
        "flapping seen: {good} good, {rejected} bad"
    );
    let mut h = Hysteresis::new(
        HealthState::Up,
        NonZeroU32::new(rise).expect("rise"),
        NonZeroU32::new(fall).expect("fall"),
    );
    let mut expected = 0u64;
    let mut checked = 0;
    for (i, ok) in seen.iter().enumerate() {
        if h.record(*ok).is_some() {
            expected += 1;
        }
        // What the balancer published after probe i+1: the last sample taken before the
        // next probe was counted (probes are 100 ms apart, samples 5 ms).
        let Some(&(_, _, published)) = samples.iter().rev().find(|s| s.1 == i as u64 + 1) else {
            continue;
        };
        let want = i64::from(h.state() == HealthState::Up);
        assert_eq!(
            published,
            want,
            "after probe {} of {seen:?}: published {published}, rise/fall say {want}",
            i + 1
        );
        checked += 1;
    }
    assert!(
        checked * 10 >= seen.len() * 8,
        "{checked} of {} probes observed",
        seen.len()
    );
    assert!(
        expected >= 2,
        "the long windows flip it down and up: {seen:?}"
    );
    assert_eq!(
        state_changes(&m, "web01"),
        expected,
        "probe results {seen:?}"
    );
    // Published flips are never closer than min(rise, fall) probe intervals (less jitter).
    let flips: Vec<Instant> = samples
        .windows(2)
        .filter(|w| w[0].2 != w[1].2)
        .map(|w| w[1].0)
        .collect();
    for pair in flips.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= interval.mul_f64(0.9) * rise.min(fall) - Duration::from_millis(20),
            "flips {gap:?} apart"
        );
    }
    assert_eq!(state_changes(&m, "web02"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tiers_run_on_their_own_intervals_and_a_failing_cheap_tier_stops_the_dearer() {
    let dir = Scratch::new("tiers");
    let (a, b) = (sim("web01", None).await, sim("web02", None).await);
    let (rise, fall) = (2u32, 2u32);
    let mut h = health(
        &dir,
        Duration::from_millis(100),
        Duration::from_millis(400),
        rise,
        fall,
    );
    h.intervals = CheckIntervals {
        tcp: Duration::from_millis(100),
        tls: Duration::from_millis(300),
        rdg_token: Duration::from_millis(600),
    };
    let addr = a.addr();
    let running = balancer(&[&a, &b], h).await;
    let m = running.controller.metrics().clone();
    let count = |check: &str| -> u64 {
        [
            "healthy",
            "connect-failed",
            "tls-error",
            "timeout",
            "token-rejected",
        ]
        .iter()
        .map(|r| results(&m, "web01", check, r))
        .sum()
    };
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let (tcp, tls, rdg) = (count("tcp"), count("tls"), count("rdg-token"));
    // 1.8 s: about 18, 6 and 3 probes (±10% jitter, plus the probes' own time).
    assert!((9..=19).contains(&tcp), "tcp {tcp}");
    assert!((3..=7).contains(&tls), "tls {tls}");
    assert!((2..=4).contains(&rdg), "rdg-token {rdg}");
    assert!(
        tcp >= 2 * tls && tls > rdg,
        "tcp {tcp}, tls {tls}, rdg {rdg}"
    );

    // The port refuses: tcp fails and goes down; tls and rdg-token are not probed meanwhile.
    a.kill();
    a.stopped().await;
    until(Duration::from_secs(3), || up(&m, "web01") == 0)
        .await
        .expect("web01 down");
    let (tls0, rdg0) = (count("tls"), count("rdg-token"));
    let failed0 = results(&m, "web01", "tcp", "connect-failed");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(results(&m, "web01", "tcp", "connect-failed") >= failed0 + 6);
    assert_eq!(
        (count("tls"), count("rdg-token")),
        (tls0, rdg0),
        "dearer checks ran while tcp was failing"
    );

    // Back on the same port: the backend returns only once every tier, token check
    // included, has passed `rise` times since (the dearer ones were taken down with tcp).
    let rdg_ok0 = results(&m, "web01", "rdg-token", "healthy");
    let tls_ok0 = results(&m, "web01", "tls", "healthy");
    let p = pki();
    let mut cfg = SimConfig::new(
        "web01",
        p.server_config().expect("tls"),
        Verifier::new([signer().0.trusted_cert()]),
    );
    cfg.alt_tls_expired = None;
    let a2 = SimGateway::spawn(addr, cfg)
        .await
        .expect("respawn on the same port");
    let t0 = Instant::now();
    until(Duration::from_secs(5), || up(&m, "web01") == 1)
        .await
        .expect("web01 returns");
    let took = t0.elapsed();
    assert!(
        results(&m, "web01", "rdg-token", "healthy") - rdg_ok0 >= u64::from(rise),
        "returned before rise token probes passed"
    );
    assert!(results(&m, "web01", "tls", "healthy") - tls_ok0 >= u64::from(rise));
    // A dearer tier is probed at once when the cheap one passes again, then on its interval.
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    running.shutdown(Duration::from_secs(1)).await;
    drop(a2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_with_a_channel_target_opens_and_closes_a_channel() {
    let dir = Scratch::new("channel");
    let hv = echo_target().await;
    // A port nothing listens on: the gateway cannot reach the canary behind it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (ok, unreachable) = (
        sim("web01", Some(hv)).await,
        sim("web02", Some(closed)).await,
    );
    let cfg = probe_config_with(
        &dir,
        &[("web01", ok.addr()), ("web02", unreachable.addr())],
        2000,
        ", channel_target = \"canary.health.test:2179\"",
    );
    let c = cfg.to_str().expect("path").to_owned();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run_probe(&["--config", &c, "--json"]))
            .await
            .expect("join");
    assert_eq!(code, 1, "{out}\n{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let list = field(&doc, "backends").as_array().expect("backends");
    assert_eq!(field(&list[0], "verdict"), "healthy", "{:#}", list[0]);
    assert_eq!(field(&list[0], "stage"), "channel-create");
    assert_eq!(field(&list[1], "verdict"), "gateway-error", "{:#}", list[1]);
    assert_eq!(field(&list[1], "stage"), "channel-create");
    // The gateway saw the channel open to the token's host and closed by the client.
    let rec = ok.records().into_iter().last().expect("record");
    assert_eq!(rec.target.as_deref(), Some("canary.health.test:2179"));
    assert_eq!(rec.channel_status, Some(0));
    assert_eq!(rec.close_reason.to_string(), "client-close-channel");
}
