//! The simulated gateway under 1,000 concurrent tunnels relaying data (loopback only): starts
//! `portico sim-gateway` as its own process, opens N WebSocket tunnels through it to a local
//! echo target (token check, tunnel auth, channel create each), then every tunnel sends one
//! 1 KiB DATA packet every 100 ms and reads the echo, for a fixed window. Reports the
//! simulator's resident memory and CPU time over the window, from /proc.
//!
//!     cargo bench --bench sim_tunnels            # N = 1000, 10 s window
//!     cargo bench --bench sim_tunnels -- 200 5   # N, seconds
//!
//! Bounded: N tunnels, a fixed window, every process stopped by PID at the end. Skipped when
//! run as a test (`cargo test --all-targets`), which passes no `--bench`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portico::rdg::packet::{Data, Packet};
use portico::sim::client::{ClientConfig, RdgClient};
use portico::sim::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_portico");

fn proc_stat(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (rss_kib, ticks)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("sim_tunnels: skipped (run with `cargo bench --bench sim_tunnels`)");
        return;
    }
    let nums: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let n = nums.first().copied().unwrap_or(1000) as usize;
    let secs = nums.get(1).copied().unwrap_or(10);
    // Descriptors: N client TLS sockets and N echo sockets in this process.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(n, secs));
}

async fn run(n: usize, secs: u64) {
    let dir = std::env::temp_dir().join(format!("portico-sim-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();
    let tls = rcgen::generate_simple_self_signed(vec!["rdgw.bench".to_string()]).unwrap();
    std::fs::write(p("tls.pem"), tls.cert.pem()).unwrap();
    std::fs::write(p("tls.key"), tls.signing_key.serialize_pem()).unwrap();
    let ok = Command::new(BIN)
        .args([
            "token",
            "keygen",
            "--cert",
            &p("s.pem"),
            "--key",
            &p("s.key"),
        ])
        .output()
        .unwrap();
    assert!(ok.status.success());

    // The Hyper-V stand-in: echoes every byte.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(k) = s.read(&mut buf).await {
                    if k == 0 || s.write_all(&buf[..k]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "sim-gateway",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--cert",
            &p("tls.pem"),
            "--key",
            &p("tls.key"),
        ])
        .args([
            "--trusted-cert",
            &p("s.pem"),
            "--target-override",
            &echo_addr.to_string(),
        ])
        .env("PORTICO_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t0 = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "sim-gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (rss_idle, _) = proc_stat(pid);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(tls.cert.der().clone()).unwrap();
    let client_tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let cfg = ClientConfig {
        addr,
        server_name: "rdgw.bench".into(),
        tls: client_tls,
        transport: Transport::WebSocket,
        timeout: Duration::from_secs(10),
    };
    let mint = Command::new(BIN)
        .args([
            "token",
            "mint",
            "--cert",
            &p("s.pem"),
            "--key",
            &p("s.key"),
            "--host",
            "hv01.bench",
            "--ttl-minutes",
            "10",
        ])
        .output()
        .unwrap();
    let token = Arc::new(String::from_utf8_lossy(&mint.stdout).trim().to_string());

    // Open every tunnel first (bounded concurrency), then relay for the window.
    let opened = Arc::new(AtomicU64::new(0));
    let echoed = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(50));
    let start_relay = Arc::new(tokio::sync::Notify::new());
    let deadline = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (cfg, token, opened, echoed, sem, start_relay, deadline) = (
            cfg.clone(),
            token.clone(),
            opened.clone(),
            echoed.clone(),
            sem.clone(),
            start_relay.clone(),
            deadline.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.ok()?;
            let (mut c, _) = RdgClient::connect(&cfg).await.ok()?;
            if !c.open_tunnel(&token, "BENCH").await.ok()?.is_ok()
                || c.create_channel("hv01.bench", 2179).await.ok()? != 0
            {
                return None;
            }
            drop(permit);
            opened.fetch_add(1, Ordering::Relaxed);
            start_relay.notified().await;
            let payload = Packet::Data(Data {
                data: vec![0x5a; 1024],
            });
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while Instant::now() < *deadline.get()? {
                tick.tick().await;
                c.send(&payload).await.ok()?;
                // The echo comes back as DATA, possibly split across packets.
                let mut got = 0;
                while got < 1024 {
                    if let Packet::Data(d) = c.recv().await.ok()? {
                        got += d.data.len();
                    }
                }
                echoed.fetch_add(1, Ordering::Relaxed);
            }
            Some(())
        }));
    }
    let t_open = Instant::now();
    while (opened.load(Ordering::Relaxed) as usize) < n
        && t_open.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_secs = t_open.elapsed().as_secs_f64();
    let (rss_open, ticks0) = proc_stat(pid);
    let _ = deadline.set(Instant::now() + Duration::from_secs(secs));
    start_relay.notify_waiters();
    let w0 = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let window = w0.elapsed().as_secs_f64();
    let (rss_end, ticks1) = proc_stat(pid);
    // SAFETY: SIGTERM to the child we started, not yet reaped.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let hz = 100.0; // USER_HZ on Linux
    let cpu = (ticks1 - ticks0) as f64 / hz;
    println!(
        "sim_tunnels: {} of {n} tunnels open in {open_secs:.1} s",
        opened.load(Ordering::Relaxed)
    );
    println!(
        "sim_tunnels: relay window {window:.1} s, {} echoed 1 KiB DATA round trips ({:.0}/s)",
        echoed.load(Ordering::Relaxed),
        echoed.load(Ordering::Relaxed) as f64 / window
    );
    println!(
        "sim_tunnels: sim-gateway RSS idle {:.1} MiB, with tunnels {:.1} MiB, at end {:.1} MiB ({:.1} KiB per tunnel)",
        rss_idle as f64 / 1024.0,
        rss_open as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        (rss_open.saturating_sub(rss_idle)) as f64 / n as f64
    );
    println!(
        "sim_tunnels: sim-gateway CPU {cpu:.2} s over {window:.1} s = {:.1}% of one core",
        100.0 * cpu / window
    );
}
