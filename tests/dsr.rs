//! `forwarding = "dsr"` end to end in network namespaces: a client, one or two balancers
//! running the real `portico run` binary, and three gateways holding the VIP on `lo`
//! (arp_ignore=1, arp_announce=2, set inside their namespaces), all on one bridge in
//! 10.200.0.0/16. Gateways are tiny TLS servers (threads of this test, with sockets created
//! inside the gateway namespaces; certificates from `SimPki`, CN the alias, SANs the gateway
//! names) that answer with their name and the peer address they see; clients verify the chain
//! and the alias, so every TCP test here is a real TLS handshake across the dsr path
//! (client → balancer → gateway, gateway → client directly).
//!
//! Needs root (CAP_NET_ADMIN, CAP_NET_RAW); skips loudly without.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/netns.rs"]
mod netns;

use netns::{in_ns, run, sh};
use portico::config::Protocol;
use portico::dsr::arp;
use portico::dsr::packet::build;
use portico::sim::certs::SimPki;
use rustls::pki_types::ServerName;

/// The name clients connect to (the DNS alias of the farm), the certificates' CN.
const ALIAS: &str = "rdgw.portico.test";
/// A TLS session to a gateway through the VIP.
type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

const BIN: &str = env!("CARGO_BIN_EXE_portico");
const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 100);
const GATEWAYS: [(&str, Ipv4Addr); 3] = [
    ("gw1", Ipv4Addr::new(10, 200, 0, 11)),
    ("gw2", Ipv4Addr::new(10, 200, 0, 12)),
    ("gw3", Ipv4Addr::new(10, 200, 0, 13)),
];
const LB_A: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const LB_B: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 3);
/// Client source addresses 10.200.1.1 ..= 10.200.1.CLIENTS.
const CLIENTS: u8 = 16;

fn ns_exec(ns: &str, args: &[&str]) {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    sh(&all);
}

/// The namespaces and links of one test; deleted on drop, even when the test fails.
struct Topology {
    tag: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    stop: Arc<AtomicBool>,
    dir: std::path::PathBuf,
    server_tls: Arc<rustls::ServerConfig>,
    /// Trusts only the gateways' CA.
    client_tls: Arc<rustls::ClientConfig>,
    /// Balancers started from now on with VRRP also sync their flow tables (`[dsr]`).
    sync: bool,
    /// `[dsr] xdp` of balancers started from now on: "on" unless a test says otherwise
    /// ("auto" leaves a veth alone).
    xdp: &'static str,
    /// Pass-all XDP programs on the switch side of the balancers' links: on a veth, `XDP_TX`
    /// delivers only to a peer with NAPI on (docs/dsr.md "XDP").
    _napi: Vec<portico::dsr::xdp::PassProgram>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for role in ["la", "lb"] {
                eprintln!("--- {role} log:\n{}", self.log(role));
            }
            if std::env::var_os("DSR_TEST_HOLD").is_some() {
                eprintln!("holding the topology {} for 60 s", self.tag);
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        self.stop.store(true, Ordering::Release);
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Topology {
    fn ns(&self, role: &str) -> String {
        format!("pd{}{}", self.tag, role)
    }

    /// Builds it all, or `None` (after a loud SKIP) without the privileges.
    fn new(short: &str) -> Option<Topology> {
        let tag = format!("{}{short}", std::process::id());
        let dir = std::env::temp_dir().join(format!("portico-dsr-{tag}"));
        let _ = std::fs::create_dir_all(&dir);
        let names: Vec<&str> = GATEWAYS.iter().map(|(n, _)| *n).collect();
        let pki = SimPki::generate(ALIAS, &names).expect("test PKI");
        let mut t = Topology {
            tag,
            namespaces: Vec::new(),
            children: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            dir,
            server_tls: pki.server_config().expect("server TLS config"),
            client_tls: pki.client_config().expect("client TLS config"),
            sync: false,
            xdp: "on",
            _napi: Vec::new(),
        };
        let sw = t.ns("sw");
        if let Err(e) = run(&["ip", "netns", "add", &sw]) {
            eprintln!("SKIP: cannot create network namespaces (needs root / CAP_NET_ADMIN): {e}");
            return None;
        }
        t.namespaces.push(sw.clone());
        ns_exec(&sw, &["ip", "link", "add", "br0", "type", "bridge"]);
        ns_exec(&sw, &["ip", "link", "set", "br0", "up"]);
        // A host with br_netfilter loaded would validate and reassemble IPv4 on our bridge
        // (dropping the malformed frames this test sends on purpose); a real switch does not.
        // Namespace-local since Linux 5.3; absent without br_netfilter.
        let _ = run(&[
            "ip",
            "netns",
            "exec",
            &sw,
            "sysctl",
            "-qw",
            "net.bridge.bridge-nf-call-iptables=0",
        ]);
        let mut hosts: Vec<(&str, String)> = vec![
            ("cl", "10.200.1.1/16".into()),
            ("la", format!("{LB_A}/16")),
            ("lb", format!("{LB_B}/16")),
        ];
        for (i, (_, ip)) in GATEWAYS.iter().enumerate() {
            hosts.push((["g1", "g2", "g3"][i], format!("{ip}/16")));
        }
        for (role, addr) in &hosts {
            let ns = t.ns(role);
            sh(&["ip", "netns", "add", &ns]);
            t.namespaces.push(ns.clone());
            let peer = format!("v{}{role}", t.tag);
            sh(&[
                "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &peer,
                "netns", &sw,
            ]);
            ns_exec(&sw, &["ip", "link", "set", &peer, "master", "br0", "up"]);
            ns_exec(&ns, &["ip", "addr", "add", addr, "dev", "eth0"]);
            ns_exec(&ns, &["ip", "link", "set", "eth0", "up"]);
            ns_exec(&ns, &["ip", "link", "set", "lo", "up"]);
        }
        // Clients finish their own checksums, as frames arriving from a wire have them: a
        // local sender on a veth leaves them to offload, which a frame the XDP program sends
        // back out (XDP_TX) no longer gets.
        in_ns(&t.ns("cl"), || ethtool_set("eth0", ETHTOOL_STXCSUM, 0));
        for role in ["la", "lb"] {
            let peer = format!("v{}{role}", t.tag);
            let napi = in_ns(&sw, move || {
                let index = portico::dsr::forwarder::ifindex(&peer).ok()?;
                portico::dsr::xdp::PassProgram::attach(index).ok()
            });
            t._napi.extend(napi);
        }
        let driver = in_ns(&t.ns("la"), || {
            portico::dsr::forwarder::interface_driver("eth0")
        });
        assert_eq!(driver.ok().as_deref(), Some("veth"));
        let cl = t.ns("cl");
        for n in 2..=CLIENTS {
            ns_exec(
                &cl,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.200.1.{n}/16"),
                    "dev",
                    "eth0",
                ],
            );
        }
        for role in ["g1", "g2", "g3"] {
            let ns = t.ns(role);
            ns_exec(
                &ns,
                &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"],
            );
            // Namespace-local: these sysctls live in the gateway's own network namespace.
            ns_exec(&ns, &["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"]);
            ns_exec(&ns, &["sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2"]);
            ns_exec(&ns, &["sysctl", "-qw", "net.ipv4.conf.eth0.arp_ignore=1"]);
            ns_exec(&ns, &["sysctl", "-qw", "net.ipv4.conf.eth0.arp_announce=2"]);
        }
        for (i, (name, _)) in GATEWAYS.iter().enumerate() {
            t.gateway(&t.ns(["g1", "g2", "g3"][i]), name);
        }
        Some(t)
    }

    /// Starts a gateway's TLS (443/tcp) and UDP (3391) servers inside `ns`.
    fn gateway(&self, ns: &str, name: &'static str) {
        let (tcp, udp) = in_ns(ns, || {
            let tcp = TcpListener::bind("0.0.0.0:443").expect("gateway tcp");
            let udp = UdpSocket::bind("0.0.0.0:3391").expect("gateway udp");
            (tcp, udp)
        });
        tcp.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = self.stop.clone();
        let tls = self.server_tls.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                match tcp.accept() {
                    Ok((s, peer)) => {
                        let tls = tls.clone();
                        std::thread::spawn(move || serve_tls(s, peer, name, tls));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Acquire) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(format!("{name} {}\n", peer.ip()).as_bytes(), peer);
                }
            }
        });
    }

    /// `standby`: the VIP is VRRP-managed, so the dsr forwarder starts inactive and waits for
    /// `set_active(true)` (here: the admin `dsr` command, standing in for VRRP).
    fn config(
        &self,
        node: &str,
        forwarding: &str,
        metrics: Ipv4Addr,
        standby: bool,
    ) -> std::path::PathBuf {
        let backends: Vec<String> = GATEWAYS
            .iter()
            .map(|(n, ip)| format!("{{ name = \"{n}\", address = \"{ip}\" }}"))
            .collect();
        let interface = if forwarding == "dsr" {
            "interface = \"eth0\""
        } else {
            ""
        };
        let xdp = format!("xdp = \"{}\"\n", self.xdp);
        let text = format!(
            r#"
[node]
name = "{node}"
{interface}

[[service]]
name = "tls"
listen = "{VIP}:443"
pool = "gw"
forwarding = "{forwarding}"
affinity = {{ group = "rdgw" }}

[[service]]
name = "udp"
listen = "{VIP}:3391"
protocol = "udp"
pool = "gw"
forwarding = "{forwarding}"
affinity = {{ group = "rdgw" }}

[pool.gw]
table_size = 251
backends = [ {} ]

[pool.gw.health]
interval_ms = 500
timeout_ms = 300
checks = ["tcp"]

[metrics]
listen = "{metrics}:9469"

[admin]
socket = "{}/{node}.sock"
{}
"#,
            backends.join(", "),
            self.dir.display(),
            if standby {
                // A outranks B, so where VRRP runs A is master first.
                let priority = if node == "la" { 200 } else { 100 };
                let peer = if node == "la" { LB_B } else { LB_A };
                let sync = if self.sync {
                    format!("sync_listen = \"{metrics}:7947\"\nsync_peers = [\"{peer}:7947\"]\n")
                } else {
                    String::new()
                };
                format!(
                    "[vip]\naddresses = [\"{VIP}/32\"]\nmode = \"vrrp\"\n\n[vip.vrrp]\nvrid = 51\npriority = {priority}\nadvert_interval_ms = 100\n\n[dsr]\n{sync}{xdp}"
                )
            } else {
                format!("[dsr]\n{xdp}")
            }
        );
        let path = self.dir.join(format!("{node}-{forwarding}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts `portico run` in the balancer namespace `role`; returns its index in children.
    fn balancer(&mut self, role: &str, forwarding: &str, ip: Ipv4Addr) -> usize {
        self.balancer_with(role, forwarding, ip, false)
    }

    fn balancer_with(
        &mut self,
        role: &str,
        forwarding: &str,
        ip: Ipv4Addr,
        standby: bool,
    ) -> usize {
        let config = self.config(role, forwarding, ip, standby);
        let log = File::create(self.dir.join(format!("{role}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(role), BIN, "run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("portico run");
        self.children.push(child);
        self.children.len() - 1
    }

    /// Starts A (priority 200) and B (100) with the VIP VRRP-managed and waits until A
    /// forwards and B stands by; returns A's and B's indexes in `children`.
    fn vrrp_pair(&mut self) -> (usize, usize) {
        let a = self.balancer_with("la", "dsr", LB_A, true);
        let b = self.balancer_with("lb", "dsr", LB_B, true);
        assert!(self.runs_vrrp("la"), "this build runs VRRP");
        wait_active(self, "la", LB_A);
        wait_state(self, "lb", LB_B, false);
        (a, b)
    }

    /// A TLS session from client `n` through the VIP, echoing one byte every 50 ms for
    /// `run_for` on its own thread.
    fn echo_from(
        &self,
        n: u8,
        run_for: Duration,
    ) -> std::thread::JoinHandle<(usize, Duration, Option<String>)> {
        let tls = self.client_tls.clone();
        in_ns(&self.ns("cl"), move || {
            let mut s = tls_from(client_addr(n), &tls).expect("connect");
            greet(&mut s);
            std::thread::spawn(move || echo_session(s, run_for))
        })
    }

    fn kill(&mut self, child: usize) {
        let c = &mut self.children[child];
        let _ = c.kill(); // SIGKILL, to the PID we started (ip netns exec execs portico)
        let _ = c.wait();
    }

    /// One admin request to a balancer; the reply line.
    fn admin(&self, role: &str, request: &str) -> String {
        use std::os::unix::net::UnixStream;
        let path = self.dir.join(format!("{role}.sock"));
        let t0 = Instant::now();
        let mut s = loop {
            match UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(e) if t0.elapsed() > Duration::from_secs(20) => panic!("{path:?}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        writeln!(s, "{request}").unwrap();
        let mut line = String::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
            line.push(char::from(b[0]));
        }
        line
    }

    /// Sends the internal admin request `{"cmd":"dsr","active":…}` to a balancer: what VRRP
    /// does on becoming master or backup.
    fn set_active(&self, role: &str, active: bool) {
        let line = self.admin(role, &format!("{{\"cmd\":\"dsr\",\"active\":{active}}}"));
        assert_eq!(
            line,
            format!("{{\"reply\":\"dsr\",\"active\":{active}}}"),
            "{role}"
        );
    }

    /// Whether the balancer runs VRRP for its `[vip]` (its status names a VRRP state).
    fn runs_vrrp(&self, role: &str) -> bool {
        let status = self.admin(role, r#"{"cmd":"status"}"#);
        assert!(status.contains("\"reply\":\"status\""), "{status}");
        !status.contains("\"vrrp\":null")
    }

    fn log(&self, role: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{role}.log"))).unwrap_or_default()
    }

    fn mac(&self, role: &str) -> [u8; 6] {
        let out = run(&[
            "ip",
            "netns",
            "exec",
            &self.ns(role),
            "cat",
            "/sys/class/net/eth0/address",
        ])
        .unwrap();
        arp::parse_mac(out.trim()).unwrap()
    }

    fn rx_bytes(&self, role: &str) -> u64 {
        run(&[
            "ip",
            "netns",
            "exec",
            &self.ns(role),
            "cat",
            "/sys/class/net/eth0/statistics/rx_bytes",
        ])
        .unwrap()
        .trim()
        .parse()
        .unwrap()
    }
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// `ETHTOOL_STXCSUM`: transmit checksum offload on or off.
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `ethtool -K`-style setting through the ioctl (the tool may not be installed), in the
/// calling thread's namespace.
fn ethtool_set(iface: &str, cmd: u32, value: u32) {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let mut v = EthtoolValue { cmd, data: value };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut v,
        _pad: [0; 16],
    };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: a socket we own and close below; `req` and `v` outlive the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let r = libc::ioctl(fd, SIOCETHTOOL, &mut req);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(r, 0, "ethtool {cmd:#x} on {iface}: {err}");
    }
}

/// The gateway's answers, over TLS: a greeting naming itself and the peer it sees; then each
/// byte is echoed, except `X`, answered by 1 MiB (a reply volume that must not cross the
/// balancer). Connections that are not TLS (the balancers' `tcp` health probes) just end.
fn serve_tls(tcp: TcpStream, peer: SocketAddr, name: &str, tls: Arc<rustls::ServerConfig>) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(conn) = rustls::ServerConnection::new(tls) else {
        return;
    };
    let mut s = rustls::StreamOwned::new(conn, tcp);
    if s.write_all(format!("{name} {}\n", peer.ip()).as_bytes())
        .is_err()
        || s.flush().is_err()
    {
        return;
    }
    let mut b = [0u8; 1];
    while let Ok(1) = s.read(&mut b) {
        let ok = if b[0] == b'X' {
            s.write_all(&vec![b'.'; 1 << 20]).is_ok()
        } else {
            s.write_all(&b).is_ok()
        } && s.flush().is_ok();
        if !ok {
            return;
        }
    }
}

fn client_addr(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 1, n)
}

/// Reads the greeting: (gateway, peer it saw).
fn greet(s: &mut impl Read) -> (String, String) {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let (g, p) = line.split_once(' ').unwrap_or((&line, ""));
    (g.to_owned(), p.to_owned())
}

fn connect_from(src: Ipv4Addr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())?;
    sock.connect_timeout(
        &SocketAddr::new(IpAddr::V4(VIP), 443).into(),
        Duration::from_secs(5),
    )?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// Connects from `src` to VIP:443 and completes a TLS handshake for [`ALIAS`], verifying the
/// gateway's chain with `tls`.
fn tls_from(src: Ipv4Addr, tls: &Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = connect_from(src)?;
    let name = ServerName::try_from(ALIAS).map_err(std::io::Error::other)?;
    let conn = rustls::ClientConnection::new(tls.clone(), name).map_err(std::io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

fn scrape(ns: &str, at: Ipv4Addr) -> String {
    in_ns(ns, move || {
        let Ok(mut s) =
            TcpStream::connect_timeout(&SocketAddr::new(at.into(), 9469), Duration::from_secs(1))
        else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

/// Sum of the samples of `name` whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether this kernel and these privileges can run the XDP fast path (then every balancer
/// here must have attached it, unless the test turned it off).
fn xdp_supported() -> bool {
    portico::dsr::xdp::Xdp::load(16, 1).is_ok()
}

/// Waits for the balancer's metrics to say the forwarder is active.
fn wait_active(t: &Topology, role: &str, ip: Ipv4Addr) {
    wait_state(t, role, ip, true);
}

/// Waits for `portico_dsr_active` to be `active` (the metric exists as soon as the forwarder
/// runs: 0 while it waits as a backup).
fn wait_state(t: &Topology, role: &str, ip: Ipv4Addr, active: bool) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        let m = scrape(&t.ns(role), ip);
        if m.contains("portico_dsr_active")
            && metric(&m, "portico_dsr_active", "") == f64::from(u8::from(active))
        {
            // A moment for the backend MACs to be learnt (ARP round trip).
            std::thread::sleep(Duration::from_millis(300));
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{role} never reached active={active}; log:\n{}",
        t.log(role)
    );
}

#[test]
fn dsr_reaches_gateways_by_client_with_real_addresses_and_replies_bypass_the_balancer() {
    let Some(mut t) = Topology::new("f") else {
        return;
    };
    t.balancer("la", "dsr", LB_A);
    wait_active(&t, "la", LB_A);
    let cl = t.ns("cl");

    // TLS: two connections per client address land on one gateway, which sees the client.
    let tls = t.client_tls.clone();
    let placed: Vec<(u8, String)> = in_ns(&cl, move || {
        let mut v = Vec::new();
        for n in 1..=CLIENTS {
            let src = client_addr(n);
            let mut a = tls_from(src, &tls).expect("TLS handshake through the VIP");
            let mut b = tls_from(src, &tls).expect("second TLS handshake");
            assert!(
                a.conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                "the gateway presented its chain"
            );
            let (ga, pa) = greet(&mut a);
            let (gb, pb) = greet(&mut b);
            assert_eq!(
                pa,
                src.to_string(),
                "the gateway sees the client's own address"
            );
            assert_eq!(pb, src.to_string());
            assert_eq!(ga, gb, "client {src}: both connections on one gateway");
            v.push((n, ga));
        }
        v
    });
    let used: std::collections::BTreeSet<&String> = placed.iter().map(|(_, g)| g).collect();
    assert!(used.len() >= 2, "clients spread over gateways: {placed:?}");

    // The handshake really is verified end to end: a client trusting another CA is refused.
    let stranger = SimPki::generate(ALIAS, &[])
        .and_then(|p| p.client_config())
        .expect("second PKI");
    let refused = in_ns(&cl, move || tls_from(client_addr(1), &stranger).err());
    let refused = refused.expect("a gateway certificate from an untrusted CA must be refused");
    assert!(
        refused.to_string().contains("certificate"),
        "refused for its certificate: {refused}"
    );

    // UDP lands with the client's TCP flows.
    let placed2 = placed.clone();
    in_ns(&cl, move || {
        for (n, gw) in placed2 {
            let u = UdpSocket::bind(SocketAddr::new(client_addr(n).into(), 0)).unwrap();
            u.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buf = [0u8; 256];
            let mut answer = None;
            for _ in 0..6 {
                let _ = u.send_to(b"hi", (VIP, 3391));
                if let Ok((len, _)) = u.recv_from(&mut buf) {
                    answer = Some(String::from_utf8_lossy(&buf[..len]).into_owned());
                    break;
                }
            }
            let answer = answer.expect("udp answer through the VIP");
            assert_eq!(
                answer.trim(),
                format!("{gw} {}", client_addr(n)),
                "udp with tcp"
            );
        }
    });

    // Replies bypass the balancer: 4 MiB of replies, and the balancer receives only the
    // client's side.
    let before = t.rx_bytes("la");
    let m0 = scrape(&t.ns("la"), LB_A);
    let tls = t.client_tls.clone();
    let got = in_ns(&cl, move || {
        let mut total = 0;
        for n in 1..=4 {
            let mut s = tls_from(client_addr(n), &tls).unwrap();
            greet(&mut s);
            s.write_all(b"X").unwrap();
            s.flush().unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0;
            while got < 1 << 20 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => got += k,
                }
            }
            total += got;
            let _ = s.sock.shutdown(Shutdown::Both);
        }
        total
    });
    assert_eq!(got, 4 << 20, "every reply byte reached the client");
    let received = t.rx_bytes("la") - before;
    // The flow gauge is refreshed once a second.
    std::thread::sleep(Duration::from_millis(1100));
    let m1 = scrape(&t.ns("la"), LB_A);
    let forwarded =
        metric(&m1, "portico_dsr_bytes_total", "") - metric(&m0, "portico_dsr_bytes_total", "");
    assert!(
        received < 512 * 1024,
        "the balancer received {received} bytes while 4 MiB went from gateways to the client"
    );
    assert!(
        forwarded > 0.0 && forwarded < 512.0 * 1024.0,
        "forwarded {forwarded} bytes client→VIP"
    );
    assert!(metric(&m1, "portico_dsr_packets_total", "backend=\"gw") > 0.0);
    assert!(metric(&m1, "portico_dsr_flows", "") >= 1.0, "{m1}");
    if xdp_supported() {
        // The fast path carried the flows: each one's first frame went up to user space,
        // the client's stream of ACKs stayed in the driver, and all of it is counted.
        assert_eq!(
            metric(&m1, "portico_dsr_xdp_attached", "mode=\"native\""),
            1.0,
            "{m1}"
        );
        let d = |name: &str| metric(&m1, name, "") - metric(&m0, name, "");
        let (by_xdp, all) = (
            d("portico_dsr_xdp_frames_total"),
            d("portico_dsr_packets_total"),
        );
        eprintln!("xdp: {by_xdp} of {all} frames forwarded in the driver");
        assert!(
            by_xdp > 0.0 && by_xdp >= all * 0.9,
            "{by_xdp} of {all} frames forwarded in the driver"
        );
        let status = t.admin("la", r#"{"cmd":"status"}"#);
        assert!(status.contains(r#""xdp":"native""#), "{status}");
    }

    // Frames that are not ours, truncated, or fragments: counted, never forwarded.
    let lb_mac = t.mac("la");
    let cl_mac = t.mac("cl");
    let m0 = scrape(&t.ns("la"), LB_A);
    let src = client_addr(1);
    // IP says 140 bytes, 50 arrive (longer than the 60-byte minimum frame, so no padding).
    let mut truncated = build::ipv4(lb_mac, cl_mac, src, VIP, Protocol::Tcp, 1111, 443, 100);
    truncated.truncate(14 + 50);
    let mut fragment = build::ipv4(lb_mac, cl_mac, src, VIP, Protocol::Udp, 1111, 3391, 100);
    fragment[14 + 6] = 0x20; // MF
    let other_port = build::ipv4(lb_mac, cl_mac, src, VIP, Protocol::Tcp, 1111, 80, 0);
    let other_ip = build::ipv4(
        lb_mac,
        cl_mac,
        src,
        Ipv4Addr::new(10, 200, 0, 77),
        Protocol::Tcp,
        1111,
        443,
        0,
    );
    let frames = vec![truncated, fragment, other_port, other_ip];
    in_ns(&cl, move || inject("eth0", &frames));
    std::thread::sleep(Duration::from_millis(300));
    let m1 = scrape(&t.ns("la"), LB_A);
    let d = |name: &str, labels: &str| metric(&m1, name, labels) - metric(&m0, name, labels);
    assert_eq!(
        d("portico_dsr_drops_total", "reason=\"truncated\""),
        1.0,
        "{m1}"
    );
    assert_eq!(d("portico_dsr_drops_total", "reason=\"fragment\""), 1.0);
    assert!(
        d("portico_dsr_frames_passed_total", "") >= 1.0,
        "port 80 is passed"
    );
    assert_eq!(
        d("portico_dsr_packets_total", ""),
        0.0,
        "none of them forwarded"
    );
}

/// Sends raw Ethernet frames out of `iface` (in the calling thread's namespace).
fn inject(iface: &str, frames: &[Vec<u8>]) {
    let name = std::ffi::CString::new(iface).unwrap();
    // SAFETY: plain syscalls on a socket we own and close below.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        sll.sll_halen = 6;
        for f in frames {
            let r = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert!(r >= 0, "inject: {}", std::io::Error::last_os_error());
        }
        libc::close(fd);
    }
}

/// A session echoing one byte every 50 ms for `secs`, recording the longest wait for an echo.
/// Returns (echoes, longest gap, error if the session broke).
fn echo_session(mut s: Tls, run_for: Duration) -> (usize, Duration, Option<String>) {
    let _ = s.sock.set_read_timeout(Some(Duration::from_secs(15)));
    let t0 = Instant::now();
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    let mut echoes = 0;
    let mut b = [0u8; 1];
    while t0.elapsed() < run_for {
        if let Err(e) = s.write_all(b"e").and_then(|()| s.flush()) {
            return (echoes, longest, Some(format!("write: {e}")));
        }
        match s.read(&mut b) {
            Ok(1) => {}
            Ok(_) => return (echoes, longest, Some("closed".into())),
            Err(e) => return (echoes, longest, Some(format!("read: {e}"))),
        }
        echoes += 1;
        longest = longest.max(last.elapsed());
        last = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
    }
    (echoes, longest, None)
}

/// Sends one gratuitous ARP for the VIP from `iface` (what a proxy-mode VIP owner does).
fn announce(iface: &str, mac: [u8; 6]) {
    let mut f = [0u8; 64];
    let n = arp::gratuitous(&mut f, VIP, mac);
    inject(iface, &[f[..n].to_vec()]);
}

#[test]
fn a_session_survives_a_balancer_kill_in_dsr_and_breaks_in_proxy_mode() {
    let Some(mut t) = Topology::new("h") else {
        return;
    };
    // The user-space path alone: "auto" attaches no XDP program to a veth (its peer's NAPI
    // cannot be seen from the balancer), so every frame goes through AF_PACKET.
    t.xdp = "auto";
    let cl = t.ns("cl");

    // dsr: A and B run VRRP for the VIP; A (priority 200) is master and forwards; a session
    // runs; A is killed and B takes over by VRRP (Master_Down_Interval), announcing the VIP.
    let (a, _) = t.vrrp_pair();
    let session = t.echo_from(3, Duration::from_secs(6));
    std::thread::sleep(Duration::from_secs(2));
    t.kill(a);
    let killed = Instant::now();
    wait_active(&t, "lb", LB_B);
    let takeover = killed.elapsed();
    eprintln!("dsr: B active {takeover:?} after the kill");
    let (echoes, gap, error) = session.join().unwrap();
    eprintln!("dsr: {echoes} echoes, longest gap {gap:?}, error {error:?}");
    assert_eq!(error, None, "the dsr session survives the hand-over");
    let status = t.admin("lb", r#"{"cmd":"status"}"#);
    assert!(
        status.contains(r#""xdp":null"#),
        "no xdp on a veth: {status}"
    );
    // The session resumes at the client's first TCP retransmission after B took over (RTO
    // backoff: 0.2, 0.4, 0.8, 1.6 s ... apart), so the gap is bounded by the takeover time
    // plus one backed-off retransmission interval, not by any timeout of the session.
    assert!(
        gap < takeover + Duration::from_millis(3500),
        "gap {gap:?} after a takeover of {takeover:?}"
    );
    assert!(
        gap >= Duration::from_millis(100),
        "the kill did interrupt: gap {gap:?}"
    );
    let m = scrape(&t.ns("lb"), LB_B);
    assert!(
        metric(&m, "portico_dsr_flow_misses_total", "") >= 1.0
            && metric(&m, "portico_dsr_packets_total", "") >= 1.0,
        "B carried the session from its first packet on (a miss placed by Maglev)"
    );
    let b = t.children.len() - 1;
    t.kill(b);

    // proxy: A holds the VIP and proxies; A dies, B takes the VIP over; the session breaks.
    let la = t.ns("la");
    let lb = t.ns("lb");
    ns_exec(
        &la,
        &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "eth0"],
    );
    let a = t.balancer("la", "proxy", LB_A);
    let t0 = Instant::now();
    let session = loop {
        let tls = t.client_tls.clone();
        let attempt = in_ns(&cl, move || tls_from(client_addr(3), &tls));
        if let Ok(mut s) = attempt {
            // The client's ARP cache may still point at B from the dsr half.
            greet(&mut s);
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "proxy A never served"
        );
        announce_from(&la, t.mac("la"));
        std::thread::sleep(Duration::from_millis(200));
    };
    let session = std::thread::spawn(move || echo_session(session, Duration::from_secs(6)));
    std::thread::sleep(Duration::from_secs(2));
    t.kill(a);
    ns_exec(
        &la,
        &["ip", "addr", "del", &format!("{VIP}/32"), "dev", "eth0"],
    );
    ns_exec(
        &lb,
        &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "eth0"],
    );
    t.balancer("lb", "proxy", LB_B);
    announce_from(&lb, t.mac("lb"));
    let (echoes, gap, error) = session.join().unwrap();
    eprintln!("proxy: {echoes} echoes, longest gap {gap:?}, error {error:?}");
    assert!(
        error.is_some(),
        "the proxied session breaks at the hand-over"
    );
}

fn announce_from(ns: &str, mac: [u8; 6]) {
    in_ns(ns, move || announce("eth0", mac));
}

/// The hand-over VRRP makes when the master steps down (`ctl vrrp demote`): both nodes
/// running, the old master's forwarder `set_active(false)`, the new one's `set_active(true)`
/// (which announces the VIP with gratuitous ARP). A session through the VIP keeps going.
/// Driven by VRRP itself where the binary runs it, else by the admin `dsr` request.
#[test]
fn a_session_survives_a_graceful_hand_over_between_running_nodes() {
    let Some(mut t) = Topology::new("g") else {
        return;
    };
    let cl = t.ns("cl");
    // Both nodes run with the VIP VRRP-managed, so their forwarders start inactive.
    t.balancer_with("la", "dsr", LB_A, true);
    t.balancer_with("lb", "dsr", LB_B, true);
    let vrrp = t.runs_vrrp("la");
    if vrrp {
        // VRRP elects A (priority 200) and drives the forwarders itself.
        wait_active(&t, "la", LB_A);
        wait_state(&t, "lb", LB_B, false);
    } else {
        // No VRRP in this build: the admin `dsr` request stands in for it. Both wait as
        // backups (no ARP answered, backend MACs learnt), then A becomes master.
        wait_state(&t, "la", LB_A, false);
        wait_state(&t, "lb", LB_B, false);
        let refused = in_ns(&cl, || connect_from(client_addr(5)).is_err());
        assert!(refused, "no node forwards yet, so the VIP does not answer");
        t.set_active("la", true);
        wait_active(&t, "la", LB_A);
    }
    let tls = t.client_tls.clone();
    let session = in_ns(&cl, move || {
        let mut s = tls_from(client_addr(5), &tls).expect("connect");
        greet(&mut s);
        std::thread::spawn(move || echo_session(s, Duration::from_secs(5)))
    });
    std::thread::sleep(Duration::from_secs(2));
    let cache_before = vip_in_arp_cache(&cl);
    let retrans_before = tcp_retransmissions(&cl);
    let before = scrape(&t.ns("lb"), LB_B);
    if vrrp {
        // `ctl vrrp demote` on the master: priority-0 advert, B takes over at once.
        let reply = t.admin("la", r#"{"cmd":"vrrp","action":"demote"}"#);
        assert!(reply.contains("\"reply\":\"vrrp\""), "{reply}");
    } else {
        // The old master stops first, then the new one starts and announces: what VRRP does.
        t.set_active("la", false);
        t.set_active("lb", true);
    }
    let (echoes, gap, error) = session.join().unwrap();
    eprintln!("graceful (vrrp: {vrrp}): {echoes} echoes, longest gap {gap:?}, error {error:?}");
    assert_eq!(error, None, "the session survives the graceful hand-over");
    // No process starts here, and A goes on forwarding what still reaches it until B has
    // announced itself: no segment of the session is lost, so none is sent again.
    assert!(gap < Duration::from_millis(1500), "gap {gap:?}");
    assert_eq!(
        tcp_retransmissions(&cl) - retrans_before,
        0,
        "the client retransmitted nothing across the hand-over (longest gap {gap:?})"
    );
    let after = scrape(&t.ns("lb"), LB_B);
    let d = |name: &str| metric(&after, name, "") - metric(&before, name, "");
    assert!(
        d("portico_dsr_packets_total") >= 10.0,
        "B carried the rest of the session"
    );
    assert!(
        d("portico_dsr_arp_replies_total") >= 1.0,
        "B announced the VIP"
    );
    if vrrp {
        // The VIP answers with VRID 51's virtual MAC (RFC 5798 §7.3) on whichever node is
        // master, so the client's ARP cache holds the same entry before and after.
        let vmac = "00:00:5e:00:01:33";
        assert_eq!(
            cache_before.as_deref(),
            Some(vmac),
            "A answered with the virtual MAC"
        );
        assert_eq!(
            vip_in_arp_cache(&cl).as_deref(),
            Some(vmac),
            "unchanged after the hand-over"
        );
    }
}

/// The flow count of a standby's dsr forwarder, from a `status` reply.
fn standby_flows(status: &str) -> i64 {
    use portico::admin::proto::Reply;
    match serde_json::from_str::<Reply>(status) {
        Ok(Reply::Status(s)) => match s.dsr {
            Some(d) if !d.active => d.flows,
            other => panic!("not a standby dsr forwarder: {other:?}"),
        },
        other => panic!("not a status reply: {other:?}"),
    }
}

/// TCP segments the namespace `ns` has sent again (`RetransSegs` of its /proc/net/snmp).
fn tcp_retransmissions(ns: &str) -> i64 {
    let snmp = run(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]).expect("snmp");
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (
        tcp.next().expect("Tcp header"),
        tcp.next().expect("Tcp values"),
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RetransSegs")
        .and_then(|(_, v)| v.parse().ok())
        .expect("RetransSegs")
}

/// The MAC the client namespace's ARP cache holds for the VIP, if any.
fn vip_in_arp_cache(ns: &str) -> Option<String> {
    let out = run(&["ip", "-n", ns, "neigh", "show", &VIP.to_string()]).ok()?;
    let mut words = out.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_owned)
}

/// conntrackd's idea. A client pinned by A's stick table to a gateway other than its Maglev
/// choice (its gateway was disabled on A for a moment) has a session through A. A hands over
/// to B, which has never seen the client: without sync B places the session's packets by
/// Maglev, on another gateway, which resets it; with `[dsr] sync_*` B has A's flow entry and
/// the session goes on. Both halves run, so the difference is proven.
#[test]
fn a_synced_flow_survives_a_hand_over_to_a_node_that_would_place_it_elsewhere() {
    let Some(mut t) = Topology::new("s") else {
        return;
    };
    let cl = t.ns("cl");
    for sync in [false, true] {
        t.sync = sync;
        let (a, b) = t.vrrp_pair();
        let client = client_addr(9);
        let tls = t.client_tls.clone();
        let maglev = in_ns(&cl, move || {
            greet(&mut tls_from(client, &tls).expect("connect")).0
        });
        let reply = t.admin(
            "la",
            &format!(r#"{{"cmd":"disable","backend":"{maglev}"}}"#),
        );
        assert!(reply.contains("disabled"), "{reply}");
        let tls = t.client_tls.clone();
        let pinned = in_ns(&cl, move || {
            greet(&mut tls_from(client, &tls).expect("connect")).0
        });
        assert_ne!(pinned, maglev, "a disabled gateway gets no new connection");
        let reply = t.admin("la", &format!(r#"{{"cmd":"enable","backend":"{maglev}"}}"#));
        assert!(reply.contains("enabled"), "{reply}");
        let tls = t.client_tls.clone();
        let (session, on) = in_ns(&cl, move || {
            let mut s = tls_from(client, &tls).expect("connect");
            let (gw, _) = greet(&mut s);
            (s, gw)
        });
        assert_eq!(on, pinned, "A keeps the client on its pinned gateway");
        let session = std::thread::spawn(move || echo_session(session, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(1500));
        // What `ctl status` tells the operator on the standby: the flows it holds for a
        // hand-over (at least A's three connections, with sync; none without).
        let status = t.admin("lb", r#"{"cmd":"status"}"#);
        let flows = standby_flows(&status);
        if sync {
            assert!(flows >= 3, "B holds A's flows: {status}");
        } else {
            assert_eq!(flows, 0, "{status}");
        }
        let reply = t.admin("la", r#"{"cmd":"vrrp","action":"demote"}"#);
        assert!(reply.contains("\"reply\":\"vrrp\""), "{reply}");
        let (echoes, gap, error) = session.join().unwrap();
        eprintln!("sync {sync}: maglev {maglev}, pinned {pinned}: {echoes} echoes, longest gap {gap:?}, error {error:?}");
        let m = scrape(&t.ns("lb"), LB_B);
        if sync {
            assert_eq!(error, None, "B kept the session on A's gateway");
            assert!(gap < Duration::from_millis(1500), "gap {gap:?}");
            assert!(
                metric(&m, "portico_dsr_sync_applied_total", "") >= 3.0,
                "B took A's three flows"
            );
        } else {
            assert!(
                error.is_some(),
                "without sync B sends the session to {maglev}, which resets it"
            );
            assert_eq!(metric(&m, "portico_dsr_sync_applied_total", ""), 0.0);
        }
        t.kill(a);
        t.kill(b);
    }
}

/// A graceful stop of the forwarding node (SIGTERM, as `systemctl stop` or a restart for an
/// upgrade sends): VRRP hands the VIP to B with a priority-0 advert, and A's forwarder goes on
/// forwarding what still reaches it until B has announced itself, so the session loses no
/// segment.
#[test]
fn a_session_survives_a_graceful_stop_of_the_master_without_a_retransmission() {
    let Some(mut t) = Topology::new("t") else {
        return;
    };
    let cl = t.ns("cl");
    let (a, _) = t.vrrp_pair();
    let session = t.echo_from(6, Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(2));
    let retrans_before = tcp_retransmissions(&cl);
    let pid = t.children[a].id() as libc::pid_t;
    // SAFETY: a signal to the process this test started (ip netns exec execs portico).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let (echoes, gap, error) = session.join().unwrap();
    eprintln!("graceful stop: {echoes} echoes, longest gap {gap:?}, error {error:?}");
    assert_eq!(error, None, "the session survives the graceful stop");
    assert_eq!(
        tcp_retransmissions(&cl) - retrans_before,
        0,
        "the client retransmitted nothing across the stop (longest gap {gap:?})"
    );
    let status = t.children[a].wait().expect("A exits");
    assert!(status.success(), "A exits 0 after its drain: {status:?}");
}
