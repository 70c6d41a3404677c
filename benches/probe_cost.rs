//! What health probing costs Portico: N simulated RD Gateways (in this process, so their CPU
//! is not counted) behind `portico run` (its own process) with one pool probing all three
//! checks (tcp, tls, rdg-token) of every backend every second. After a warm-up, Portico's
//! CPU time (utime + stime from /proc/PID/stat) over a fixed window is reported as a share
//! of one core, next to the probe rate seen on its /metrics, so the figure is known to be for
//! probes that ran and passed.
//!
//!     cargo bench --bench probe_cost              # N = 100, 40 s window
//!     cargo bench --bench probe_cost -- 100 60    # N, seconds
//!     PORTICO_BIN=/path/to/portico cargo bench --bench probe_cost   # another build
//!
//! Bounded: N gateways, a fixed window, the daemon stopped by PID at the end. Skipped when
//! run as a test (`cargo test --all-targets`), which passes no `--bench`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portico::sim::certs::SimPki;
use portico::sim::{SimConfig, SimGateway};
use portico::token::{SigningIdentity, Verifier};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALIAS: &str = "rdgw.bench.test";

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // Fields 14 and 15 (utime, stime), counted after the ")" that ends the command name.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn scrape(port: u16) -> String {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// Sum of `portico_probe_results_total` samples with `check` and `result`.
fn probes(text: &str, check: &str, result: &str) -> f64 {
    let (c, r) = (format!("check=\"{check}\""), format!("result=\"{result}\""));
    text.lines()
        .filter(|l| l.starts_with("portico_probe_results_total{") && l.contains(&c))
        .filter(|l| l.contains(&r))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("probe_cost: skipped (run with `cargo bench --bench probe_cost`)");
        return;
    }
    let nums: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let n = nums.first().copied().unwrap_or(100) as usize;
    let secs = nums.get(1).copied().unwrap_or(40);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(n, secs));
}

async fn run(n: usize, secs: u64) {
    let bin = std::env::var("PORTICO_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_portico").into());
    let dir = std::env::temp_dir().join(format!("portico-probe-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();

    let names: Vec<String> = (1..=n).map(|i| format!("gw{i:03}")).collect();
    let fqdns: Vec<String> = names.iter().map(|n| format!("{n}.bench.test")).collect();
    let refs: Vec<&str> = fqdns.iter().map(String::as_str).collect();
    let pki = SimPki::generate(ALIAS, &refs).expect("pki");
    std::fs::write(p("ca.pem"), &pki.ca_pem).expect("ca.pem");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (signer, pem) =
        SigningIdentity::generate("bench probe signer", 30, now - 86_400).expect("signer");
    pem.write(
        dir.join("signer.pem").as_path(),
        dir.join("signer.key").as_path(),
    )
    .expect("signer files");

    let tls = pki.server_config().expect("server tls");
    let mut gws = Vec::with_capacity(n);
    for name in &names {
        let cfg = SimConfig::new(name, tls.clone(), Verifier::new([signer.trusted_cert()]));
        gws.push(
            SimGateway::spawn("127.0.0.1:0".parse().expect("addr"), cfg)
                .await
                .expect("sim"),
        );
    }
    let mut backends = String::new();
    for (name, g) in names.iter().zip(&gws) {
        backends.push_str(&format!(
            "  {{ name = \"{name}\", address = \"{}\" }},\n",
            g.addr()
        ));
    }
    let metrics_port = free_port();
    let config = format!(
        r#"[node]
name = "bench"

[[service]]
name = "rdgw-https"
listen = "127.0.0.1:{listen}"
pool = "gateways"

[pool.gateways]
backends = [
{backends}]

[pool.gateways.health]
interval_ms = 1000
timeout_ms = 800
checks = ["tcp", "tls", "rdg-token"]
tls = {{ server_name = "{ALIAS}", ca_file = "{ca}" }}
rdg_token = {{ signing_cert = "{cert}", signing_key = "{key}", host = "canary.bench.test" }}

[metrics]
listen = "127.0.0.1:{metrics_port}"

[admin]
socket = "{admin}"
"#,
        listen = free_port(),
        ca = p("ca.pem"),
        cert = p("signer.pem"),
        key = p("signer.key"),
        admin = p("admin.sock"),
    );
    std::fs::write(p("portico.toml"), config).expect("config");

    let mut child = Command::new(&bin)
        .args(["run", "--config", &p("portico.toml")])
        .env("PORTICO_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("portico run");
    let pid = child.id();
    // For `perf record -e cpu-clock -p PID` alongside.
    println!("probe_cost: portico pid {pid}");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;

    // Warm-up: start-up (config, key loading, first probes) is not what is measured.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let m0 = scrape(metrics_port).await;
    let (c0, t0) = (cpu_ticks(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (c1, wall) = (cpu_ticks(pid), t0.elapsed().as_secs_f64());
    let m1 = scrape(metrics_port).await;

    // SAFETY: kill only signals the child this process started, by its PID.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    for g in &gws {
        g.kill();
    }
    let _ = std::fs::remove_dir_all(&dir);

    let cpu = (c1 - c0) as f64 / hz;
    let rate = |check: &str, result: &str| {
        (probes(&m1, check, result) - probes(&m0, check, result)) / wall
    };
    let failed: f64 = [
        "token-rejected",
        "gateway-error",
        "protocol-error",
        "tls-error",
        "timeout",
        "connect-failed",
    ]
    .iter()
    .map(|r| rate("rdg-token", r) + rate("tls", r) + rate("tcp", r))
    .sum();
    println!("probe_cost: {n} backends, tcp+tls+rdg-token every 1 s, {wall:.1} s window, {bin}");
    println!(
        "  probes/s healthy: tcp {:.1}, tls {:.1}, rdg-token {:.1}; failed/s {failed:.2}",
        rate("tcp", "healthy"),
        rate("tls", "healthy"),
        rate("rdg-token", "healthy"),
    );
    println!(
        "  portico CPU {cpu:.2} s over {wall:.1} s = {:.2}% of one core",
        100.0 * cpu / wall
    );
}
