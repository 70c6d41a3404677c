//! Shared test fixtures: the lab PKI, gateway stand-ins, a config built for them, and a TLS
//! client that can connect from a chosen loopback source address.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use portico::config::*;
use portico::lab::StandIn;
use portico::sim::certs::SimPki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub fn pki() -> &'static SimPki {
    static PKI: OnceLock<SimPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let nodes = [
            "web01.lab.test",
            "web02.lab.test",
            "web03.lab.test",
            "web04.lab.test",
        ];
        SimPki::generate("rdgw.lab.test", &nodes).expect("lab pki")
    })
}

/// Loopback source address number `n` (127.0.0.2 ..= 127.0.0.254).
pub fn source(n: u8) -> IpAddr {
    assert!((2..=254).contains(&n));
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

pub async fn gateways(names: &[&str]) -> Vec<StandIn> {
    let tls = pki().server_config().expect("server config");
    let mut v = Vec::new();
    for n in names {
        v.push(
            StandIn::spawn(n, "127.0.0.1:0".parse().unwrap(), tls.clone())
                .await
                .expect("stand-in"),
        );
    }
    v
}

pub fn health() -> Health {
    Health {
        interval: Duration::from_secs(2),
        intervals: CheckIntervals::all(Duration::from_secs(2)),
        timeout: Duration::from_secs(1),
        rise: NonZeroU32::new(2).unwrap(),
        fall: NonZeroU32::new(3).unwrap(),
        checks: vec![CheckKind::Tcp],
        passive: true,
        tls: None,
        rdg_token: None,
    }
}

pub fn service(name: &str, protocol: Protocol, idle: Duration) -> Service {
    Service {
        name: name.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        protocol,
        pool: "gateways".into(),
        backend_port: 443,
        affinity: Affinity {
            group: "rdgw".into(),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            idle_timeout: Duration::from_secs(8 * 3600),
            max_entries: 100_000,
        },
        connect_timeout: Duration::from_millis(500),
        connect_attempts: NonZeroU32::new(3).unwrap(),
        idle_timeout: idle,
        backlog: 4096,
        max_flows: 10_000,
        forwarding: Default::default(),
    }
}

/// A config with a TLS service and a UDP service over `backends` (name, address, weight).
pub fn config(backends: &[(&str, SocketAddr, u32)]) -> Config {
    Config {
        source: PathBuf::from("<test>"),
        node: Node {
            name: "lb-test".into(),
            interface: None,
        },
        vip: None,
        vip_more: Vec::new(),
        services: vec![
            service("rdgw-https", Protocol::Tcp, Duration::from_secs(60)),
            service("rdgw-udp", Protocol::Udp, Duration::from_secs(60)),
        ],
        pools: vec![Pool {
            name: "gateways".into(),
            backends: backends
                .iter()
                .map(|(n, a, w)| Backend {
                    name: (*n).into(),
                    address: a.ip(),
                    port: Some(a.port()),
                    weight: NonZeroU32::new(*w).unwrap(),
                })
                .collect(),
            health: health(),
            table_size: 65537,
        }],
        balancer: Balancer {
            drain_timeout: Duration::from_secs(5),
        },
        dns: None,
        metrics: Metrics {
            listen: Some("127.0.0.1:0".parse().unwrap()),
        },
        admin: Admin {
            socket: PathBuf::from("/nonexistent/admin.sock"),
        },
        dsr_sync: None,
        dsr_xdp: portico::config::DsrXdp::default(),
    }
}

pub fn connector() -> TlsConnector {
    TlsConnector::from(pki().client_config().expect("client config"))
}

/// TCP connect to `to` from `from` (port chosen by the kernel).
pub async fn tcp_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

pub async fn tls_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(from, to).await?;
    let name = rustls::pki_types::ServerName::try_from("rdgw.lab.test").unwrap();
    connector().connect(name, tcp).await
}

/// One HTTP request on an open TLS connection (keep-alive); returns the gateway's name.
pub async fn ask(tls: &mut TlsStream<TcpStream>) -> std::io::Result<String> {
    tls.write_all(b"GET / HTTP/1.1\r\nHost: rdgw.lab.test\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(pos) = text.find("\r\n\r\n") {
            let body = &text[pos + 4..];
            if body.ends_with('\n') {
                return Ok(body.trim().to_string());
            }
        }
    }
}

/// Connect from `from`, ask once, close: which gateway answered.
pub async fn which_gateway(from: IpAddr, to: SocketAddr) -> std::io::Result<String> {
    let mut tls = tokio::time::timeout(Duration::from_secs(10), tls_from(from, to))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let name = tokio::time::timeout(Duration::from_secs(10), ask(&mut tls))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = tls.shutdown().await;
    Ok(name)
}

/// One UDP datagram from `from` to `to`; returns the answering gateway's name.
pub async fn udp_which(from: IpAddr, to: SocketAddr) -> std::io::Result<String> {
    let s = UdpSocket::bind(SocketAddr::new(from, 0)).await?;
    s.send_to(b"ping", to).await?;
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    Ok(text.split(' ').next().unwrap_or_default().to_string())
}

/// The value of a metric line (exact name with labels) in a text exposition.
pub async fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.expect("metrics connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}

/// A scratch directory, named with the test's tag and PID, removed on drop (even when the test
/// fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("portico-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        TempDir(p)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process the test started: on drop, if it still runs, SIGTERM by its PID (so it can
/// clean up: sockets, VIPs), then SIGKILL if it lingers past 5 s.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on the PID of a child this test spawned and has not reaped.
            unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
            let t0 = std::time::Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
