//! VRRP and VIP ownership in real network namespaces: the `portico` binary (and keepalived
//! 2.2.7 as a peer) on veths joined by a bridge, a client namespace that holds a tiny TCP
//! backend and reaches the balancer at the VIP, tcpdump/tshark on the client side.
//!
//! Needs root (CAP_NET_ADMIN / CAP_NET_RAW); without it every test prints `SKIP:` and passes.
//! Namespaces and links are named with the test's PID and a tag and deleted by a Drop guard,
//! which also kills (by PID) only the processes these tests started. Addresses: 10.200.N.0/24
//! with N per test; the VIP is 10.200.N.100.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portico::vrrp::packet::{self, Advert};

const BIN: &str = env!("CARGO_BIN_EXE_portico");
const SERVICE_PORT: u16 = 8080;
const BACKEND_PORT: u16 = 9090;
const BANNER: &[u8] = b"hello from the backend\n";

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        eprintln!("SKIP: not root: network namespace tests need CAP_NET_ADMIN and CAP_NET_RAW");
        return false;
    }
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let probe = format!(
        "vprobe{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .status()
        .is_ok_and(|s| s.success());
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    if !ok {
        eprintln!("SKIP: `ip netns add` failed: no CAP_NET_ADMIN here");
    }
    ok
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn output(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread that has entered namespace `ns` (only that thread moves).
/// The MAC address of `eth0` in namespace `ns`, as `ip link` prints it.
fn eth0_mac(ns: &str) -> String {
    output(&["ip", "-n", ns, "-o", "link", "show", "eth0"])
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        enter(&path);
        f()
    })
    .join()
    .expect("thread in netns panicked")
}

fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: a valid namespace descriptor; only the calling thread changes namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// A bridge namespace plus node namespaces, each with `eth0` on the bridge. Deleting the
/// namespaces removes their veths; processes are killed by PID first.
struct Lab {
    tag: String,
    net: u8,
    bridge: String,
    nodes: Vec<String>,
    children: Vec<Child>,
    extra_pids: Vec<PathBuf>,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Lab {
    /// `names`: node namespaces; node i gets 10.200.`net`.(i+1).
    fn new(tag: &str, net: u8, names: &[&str]) -> Lab {
        let pid = std::process::id();
        let tag = format!("v{pid}{tag}");
        let dir = std::env::temp_dir().join(format!("portico-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut lab = Lab {
            bridge: format!("{tag}br"),
            nodes: Vec::new(),
            tag,
            net,
            children: Vec::new(),
            extra_pids: Vec::new(),
            dir,
            stop: Arc::new(AtomicBool::new(false)),
        };
        run(&["ip", "netns", "add", &lab.bridge]);
        run(&[
            "ip",
            "-n",
            &lab.bridge,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
        ]);
        run(&["ip", "-n", &lab.bridge, "link", "set", "br0", "up"]);
        for (i, n) in names.iter().enumerate() {
            let ns = lab.ns(n);
            lab.nodes.push(ns.clone());
            run(&["ip", "netns", "add", &ns]);
            let (a, b) = (format!("{}{i}a", lab.tag), format!("{}{i}b", lab.tag));
            run(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
            run(&["ip", "link", "set", &a, "netns", &ns]);
            run(&["ip", "link", "set", &b, "netns", &lab.bridge]);
            run(&["ip", "-n", &ns, "link", "set", &a, "name", "eth0"]);
            // No duplicate address detection: the link-local address (IPv6 VRRP's source) is
            // usable as soon as the link is up.
            run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "sh",
                "-c",
                "echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad",
            ]);
            let addr = format!("10.200.{net}.{}/24", i + 1);
            run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            run(&["ip", "-n", &lab.bridge, "link", "set", &b, "master", "br0"]);
            run(&["ip", "-n", &lab.bridge, "link", "set", &b, "up"]);
        }
        lab
    }

    /// The namespaces of a three-node lab, in creation order.
    fn three(&self) -> (String, String, String) {
        (
            self.nodes[0].clone(),
            self.nodes[1].clone(),
            self.nodes[2].clone(),
        )
    }

    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.tag)
    }

    fn ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.net, i as u8 + 1)
    }

    fn vip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.net, 100)
    }

    /// Whether namespace `ns` has the VIP on eth0.
    fn holds(&self, ns: &str) -> bool {
        output(&["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "eth0"])
            .contains(&format!("{}/", self.vip()))
    }

    fn wait_holds(&self, ns: &str, want: bool, within: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if self.holds(ns) == want {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn portico_config(&self, name: &str, priority: u8, backend: Ipv4Addr) -> PathBuf {
        self.portico_config_with(name, priority, backend, "")
    }

    /// `vrrp_extra`: more `[vip.vrrp]` lines.
    fn portico_config_with(
        &self,
        name: &str,
        priority: u8,
        backend: Ipv4Addr,
        vrrp_extra: &str,
    ) -> PathBuf {
        let path = self.dir.join(format!("{name}.toml"));
        let text = format!(
            r#"[node]
name = "{name}"
interface = "eth0"

[vip]
addresses = ["{vip}/24"]
mode = "vrrp"
garp_master_delay_ms = 0
garp_master_refresh_s = 0

[vip.vrrp]
vrid = 51
priority = {priority}
advert_interval_ms = 100
{vrrp_extra}

[[service]]
name = "web"
listen = "{vip}:{SERVICE_PORT}"
pool = "be"
backend_port = {BACKEND_PORT}

[pool.be]
backends = [ {{ name = "be1", address = "{backend}" }} ]

[pool.be.health]
interval_ms = 500

[metrics]
listen = "127.0.0.1:9469"

[admin]
socket = "{admin}"
"#,
            vip = self.vip(),
            admin = self.dir.join(format!("{name}.sock")).display()
        );
        std::fs::write(&path, text).expect("config");
        path
    }

    /// Starts `portico run` in `ns`; returns its PID (`ip netns exec` execs, keeping it).
    fn portico(&mut self, ns: &str, config: &Path) -> u32 {
        let log = File::create(self.dir.join(format!("{ns}.log"))).expect("log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                BIN,
                "run",
                "--workers",
                "1",
                "--config",
            ])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("portico");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    fn keepalived(&mut self, ns: &str, name: &str, priority: u8) -> u32 {
        self.keepalived_with(ns, name, priority, "")
    }

    /// `extra`: more lines for the vrrp_instance block (e.g. unicast_src_ip / unicast_peer).
    fn keepalived_with(&mut self, ns: &str, name: &str, priority: u8, extra: &str) -> u32 {
        let conf = self.dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  router_id {name}\n  vrrp_version 3\n  vrrp_garp_master_delay 0\n  vrrp_garp_master_repeat 3\n  vrrp_garp_master_refresh 0\n  script_user root\n  enable_script_security\n}}\nvrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int 0.1\n{extra}\n  virtual_ipaddress {{\n    {}/24 dev eth0\n  }}\n}}\n",
                self.vip()
            ),
        )
        .expect("keepalived conf");
        let pid_file = self.dir.join(format!("{name}.pid"));
        let vrrp_pid = self.dir.join(format!("{name}-vrrp.pid"));
        let log = File::create(self.dir.join(format!("{name}.log"))).expect("log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "keepalived",
                "-n",
                "-l",
                "-D",
                "-P",
                "-G",
                "-f",
            ])
            .arg(&conf)
            .arg("-p")
            .arg(&pid_file)
            .arg("-r")
            .arg(&vrrp_pid)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("keepalived (apt-get install keepalived)");
        self.extra_pids.push(vrrp_pid);
        let pid = child.id();
        self.children.push(child);
        pid
    }

    fn tcpdump(&mut self, ns: &str, file: &Path, filter: &str) -> u32 {
        self.tcpdump_on(ns, "eth0", file, filter)
    }

    fn tcpdump_on(&mut self, ns: &str, iface: &str, file: &Path, filter: &str) -> u32 {
        let child = Command::new("ip")
            // Immediate mode: without it libpcap hands packets over in blocks (up to a second
            // late), and a capture stopped soon after an event loses its last packets.
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "--immediate-mode",
                "-i",
                iface,
                "-n",
                "-U",
                "-w",
            ])
            .arg(file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump");
        let pid = child.id();
        self.children.push(child);
        // tcpdump needs a moment before it captures.
        std::thread::sleep(Duration::from_millis(500));
        pid
    }

    /// A TCP server in `ns` on `addr` that writes [`BANNER`] to every connection.
    fn backend(&self, ns: &str, addr: SocketAddrV4) {
        let path = format!("/run/netns/{ns}");
        let stop = self.stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter(&path);
            let l = TcpListener::bind(addr).expect("backend bind");
            l.set_nonblocking(true).expect("nonblocking");
            let _ = tx.send(());
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(BANNER);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("backend up");
    }

    /// The process's /metrics body, fetched inside `ns`.
    fn metrics(&self, ns: &str) -> String {
        in_ns(ns, || {
            let mut s = TcpStream::connect_timeout(
                &"127.0.0.1:9469".parse().unwrap(),
                Duration::from_secs(2),
            )
            .expect("metrics connect");
            s.set_read_timeout(Some(Duration::from_secs(2))).ok();
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .ok();
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            body
        })
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for f in &self.extra_pids {
            if let Some(pid) = std::fs::read_to_string(f)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a PID this test's keepalived wrote for its own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for ns in self.nodes.iter().chain(std::iter::once(&self.bridge)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if std::thread::panicking() {
            eprintln!("logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a PID this test started.
    unsafe { libc::kill(pid as i32, sig) };
}

fn wait_exit(lab: &mut Lab, pid: u32) {
    if let Some(c) = lab.children.iter_mut().find(|c| c.id() == pid) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("process {pid} did not exit");
    }
}

/// Connects from `ns` to VIP:port and reads the backend's banner; retries until `within`.
fn reach(ns: &str, vip: Ipv4Addr, within: Duration) -> Option<Duration> {
    in_ns(ns, move || {
        let t0 = Instant::now();
        let to = SocketAddr::from((vip, SERVICE_PORT));
        while t0.elapsed() < within {
            if let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_millis(200)) {
                s.set_read_timeout(Some(Duration::from_millis(500))).ok();
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                if buf == BANNER {
                    return Some(t0.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    })
}

/// Samples `ip addr` in every namespace of `watch` every ~20 ms until stopped; records any
/// moment where more than one holds the VIP.
///
/// One sample is two `ip` runs a few ms apart, and every hand-over has an inherent overlap of
/// about that size (the new master adds the VIP as it sends its advert; the old one removes it
/// when that advert arrives). So a double reading is confirmed by an immediate second sample
/// before it counts: a real split brain lasts at least one advert interval (100 ms here).
struct DualWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(usize, Vec<String>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DualWatch {
    fn start(watch: Vec<String>, vip: Ipv4Addr) -> DualWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((0, Vec::new())));
        let (s2, seen2) = (stop.clone(), seen.clone());
        let needle = format!("{vip}/");
        let thread = std::thread::spawn(move || {
            let sample = || -> Vec<&String> {
                watch
                    .iter()
                    .filter(|ns| {
                        output(&["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "eth0"])
                            .contains(&needle)
                    })
                    .collect()
            };
            while !s2.load(Ordering::Relaxed) {
                let mut holders = sample();
                if holders.len() > 1 {
                    holders = sample();
                }
                let mut g = seen2.lock().unwrap();
                g.0 += 1;
                if holders.len() > 1 {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    g.1.push(format!(
                        "{holders:?} at {}.{:03} (unix, UTC)",
                        now.as_secs(),
                        now.subsec_millis()
                    ));
                }
                drop(g);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        DualWatch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns (samples, dual-holding samples).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn metric(body: &str, line_start: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start} in:\n{body}"))
}

/// Two Portico nodes and a client: election, client reach, crash failover, preempt back,
/// graceful hand-over faster than the crash one; tshark decodes the adverts with a correct
/// checksum; every takeover is announced by gratuitous ARP seen in the client namespace.
#[test]
fn portico_pair_failover_preempt_graceful_and_announcements() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("p", 41, &["a", "b", "c"]);
    let (a, b, c) = lab.three();
    let vip = lab.vip();
    lab.backend(&c, SocketAddrV4::new(lab.ip(2), BACKEND_PORT));
    let pcap = lab.dir.join("client.pcap");
    let dump = lab.tcpdump(&c, &pcap, "arp or ip proto 112");
    let conf_a = lab.portico_config("lb-a", 150, lab.ip(2));
    let conf_b = lab.portico_config("lb-b", 100, lab.ip(2));

    // Election: the higher priority holds the VIP, the other does not.
    let pa = lab.portico(&a, &conf_a);
    lab.portico(&b, &conf_b);
    assert!(
        lab.wait_holds(&a, true, Duration::from_secs(5)).is_some(),
        "A (150) never took the VIP:\n{}",
        lab.log(&a)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(lab.holds(&a) && !lab.holds(&b), "exactly A holds the VIP");
    assert!(
        reach(&c, vip, Duration::from_secs(3)).is_some(),
        "client cannot reach the backend through the VIP"
    );
    let watch = DualWatch::start(vec![a.clone(), b.clone()], vip);

    // Crash: SIGKILL and link down (the node is gone, its kernel no longer answers ARP). Its
    // address stays configured in its namespace until the restart cleans it: not a live
    // holder, so sampling pauses until then.
    let (samples1, dual1) = watch.finish();
    signal(pa, libc::SIGKILL);
    run(&["ip", "-n", &a, "link", "set", "eth0", "down"]);
    let crash = lab
        .wait_holds(&b, true, Duration::from_secs(3))
        .expect("B took over after A crashed");
    let reconnect = reach(&c, vip, Duration::from_secs(3));
    assert!(
        reconnect.is_some(),
        "client did not reconnect after the crash"
    );
    wait_exit(&mut lab, pa);

    // A comes back: its stale VIP is removed at start, then it preempts (after its first
    // health round).
    run(&["ip", "-n", &a, "link", "set", "eth0", "up"]);
    let pa = lab.portico(&a, &conf_a);
    let t0 = Instant::now();
    while !lab
        .log(&a)
        .contains("removing a VIP left by an earlier run")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no stale-VIP cleanup:\n{}",
            lab.log(&a)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let watch = DualWatch::start(vec![a.clone(), b.clone()], vip);
    assert!(
        lab.wait_holds(&b, false, Duration::from_secs(5)).is_some(),
        "B did not give the VIP back"
    );
    assert!(
        lab.wait_holds(&a, true, Duration::from_secs(2)).is_some(),
        "A did not take the VIP back:\n{}",
        lab.log(&a)
    );
    assert!(lab
        .log(&a)
        .contains("removing a VIP left by an earlier run"));
    assert!(reach(&c, vip, Duration::from_secs(3)).is_some());

    // Graceful stop: priority 0, B takes over within its skew time (≈ 61 ms).
    std::thread::sleep(Duration::from_millis(500));
    signal(pa, libc::SIGTERM);
    let graceful = lab
        .wait_holds(&b, true, Duration::from_secs(3))
        .expect("B took over after A stopped");
    wait_exit(&mut lab, pa);
    assert!(!lab.holds(&a), "a stopped node leaves no VIP behind");
    assert!(reach(&c, vip, Duration::from_secs(3)).is_some());
    eprintln!(
        "takeover: crash {crash:?}, graceful {graceful:?}, reconnect after crash {reconnect:?}"
    );
    assert!(
        graceful < crash,
        "graceful hand-over ({graceful:?}) should beat the crash one ({crash:?})"
    );
    let (samples2, dual2) = watch.finish();
    assert!(
        dual1.is_empty() && dual2.is_empty(),
        "two holders in {}+{} of {samples1}+{samples2} samples: {dual1:?} {dual2:?}",
        dual1.len(),
        dual2.len()
    );

    // Captures: adverts decode as VRRPv3 with a correct checksum; GARPs from both MACs.
    std::thread::sleep(Duration::from_millis(300));
    signal(dump, libc::SIGTERM);
    wait_exit(&mut lab, dump);
    let pcap_s = pcap.to_str().unwrap();
    let decoded = output(&["tshark", "-r", pcap_s, "-V", "-Y", "vrrp"]);
    assert!(
        decoded.contains("Virtual Router Redundancy Protocol"),
        "{decoded:.2000}"
    );
    assert!(decoded.contains("VRRP protocol version: 3"));
    assert!(decoded.contains("Virtual Rtr ID: 51"));
    assert!(decoded.contains("Adver Int: 10"));
    assert!(decoded.contains("[correct]"));
    assert!(
        !decoded.contains("incorrect"),
        "a bad checksum was captured"
    );
    assert!(
        decoded.contains("Priority: 0"),
        "the graceful stop's priority-0 advert"
    );
    let garps = output(&[
        "tshark",
        "-r",
        pcap_s,
        "-T",
        "fields",
        "-e",
        "arp.src.hw_mac",
        "-Y",
        &format!("arp.src.proto_ipv4 == {vip} && arp.dst.proto_ipv4 == {vip}"),
    ]);
    let from = |m: &str| garps.lines().filter(|l| l.trim() == m).count();
    // A took over twice, B twice; 5 GARPs per takeover.
    let (ma, mb) = (eth0_mac(&a), eth0_mac(&b));
    assert!(
        from(&ma) >= 10,
        "GARPs from A ({ma}): {}\n{garps}",
        from(&ma)
    );
    assert!(
        from(&mb) >= 10,
        "GARPs from B ({mb}): {}\n{garps}",
        from(&mb)
    );
}

/// keepalived 2.2.7 as the peer, in both roles: the higher priority wins, failover both ways
/// by graceful stop, preemption back, never two holders at any sampled moment, and Portico
/// takes over from a crashed keepalived.
#[test]
fn keepalived_interop_both_roles() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("k", 42, &["p", "k", "c"]);
    let (p, k, c) = lab.three();
    let vip = lab.vip();
    lab.backend(&c, SocketAddrV4::new(lab.ip(2), BACKEND_PORT));
    let watch = DualWatch::start(vec![p.clone(), k.clone()], vip);

    // Round 1: Portico 150, keepalived 100.
    let conf_hi = lab.portico_config("portico-hi", 150, lab.ip(2));
    let kp = lab.keepalived(&k, "ka-lo", 100);
    std::thread::sleep(Duration::from_millis(300));
    let pp = lab.portico(&p, &conf_hi);
    assert!(
        lab.wait_holds(&p, true, Duration::from_secs(5)).is_some(),
        "Portico (150) should win over keepalived (100):\n{}\n{}",
        lab.log(&p),
        lab.log("ka-lo")
    );
    assert!(lab.wait_holds(&k, false, Duration::from_secs(2)).is_some());
    assert!(reach(&c, vip, Duration::from_secs(3)).is_some());
    signal(pp, libc::SIGTERM);
    assert!(
        lab.wait_holds(&k, true, Duration::from_secs(3)).is_some(),
        "keepalived took over from a stopping Portico"
    );
    wait_exit(&mut lab, pp);
    assert!(!lab.holds(&p));
    let pp = lab.portico(&p, &conf_hi);
    assert!(
        lab.wait_holds(&p, true, Duration::from_secs(5)).is_some(),
        "Portico preempts keepalived back"
    );
    assert!(lab.wait_holds(&k, false, Duration::from_secs(2)).is_some());
    let m = lab.metrics(&p);
    assert_eq!(
        metric(&m, "portico_vrrp_dual_master_total{vrid=\"51\"}"),
        0.0
    );
    signal(pp, libc::SIGTERM);
    wait_exit(&mut lab, pp);
    signal(kp, libc::SIGTERM);
    wait_exit(&mut lab, kp);
    assert!(lab.wait_holds(&k, false, Duration::from_secs(3)).is_some());

    // Round 2: keepalived 150, Portico 100.
    let conf_lo = lab.portico_config("portico-lo", 100, lab.ip(2));
    let pp = lab.portico(&p, &conf_lo);
    std::thread::sleep(Duration::from_millis(300));
    let kp = lab.keepalived(&k, "ka-hi", 150);
    assert!(
        lab.wait_holds(&k, true, Duration::from_secs(5)).is_some(),
        "keepalived (150) should win over Portico (100):\n{}",
        lab.log("ka-hi")
    );
    assert!(
        lab.wait_holds(&p, false, Duration::from_secs(2)).is_some(),
        "Portico (100) yields to keepalived (150)"
    );
    signal(kp, libc::SIGTERM);
    assert!(
        lab.wait_holds(&p, true, Duration::from_secs(3)).is_some(),
        "Portico took over from a stopping keepalived"
    );
    assert!(reach(&c, vip, Duration::from_secs(3)).is_some());
    wait_exit(&mut lab, kp);
    let kp = lab.keepalived(&k, "ka-hi2", 150);
    assert!(
        lab.wait_holds(&k, true, Duration::from_secs(5)).is_some(),
        "keepalived preempts back"
    );
    assert!(lab.wait_holds(&p, false, Duration::from_secs(2)).is_some());
    std::thread::sleep(Duration::from_secs(1));
    let m = lab.metrics(&p);
    assert!(metric(&m, "portico_vrrp_adverts_received_total{vrid=\"51\"}") > 5.0);
    assert_eq!(
        metric(&m, "portico_vrrp_state{state=\"backup\",vrid=\"51\"}"),
        1.0
    );
    let (samples, dual) = watch.finish();
    assert!(samples > 50, "only {samples} samples");
    assert!(
        dual.is_empty(),
        "two holders in {} of {samples} samples: {dual:?}",
        dual.len()
    );
    assert!(lab.holds(&k) && !lab.holds(&p));

    // keepalived crashes (link down, VRRP child then parent killed): Portico takes over after
    // its Master_Down_Interval and the client gets through.
    run(&["ip", "-n", &k, "link", "set", "eth0", "down"]);
    if let Some(child) = std::fs::read_to_string(lab.dir.join("ka-hi2-vrrp.pid"))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    {
        signal(child, libc::SIGKILL);
    }
    signal(kp, libc::SIGKILL);
    let took = lab
        .wait_holds(&p, true, Duration::from_secs(3))
        .expect("Portico took over from a crashed keepalived");
    eprintln!("Portico took over {took:?} after keepalived crashed");
    assert!(reach(&c, vip, Duration::from_secs(3)).is_some());
    signal(pp, libc::SIGTERM);
    wait_exit(&mut lab, pp);
}

/// Malformed or unacceptable adverts from a raw socket in another namespace are dropped and
/// counted by reason; the master stays master even though each one claims priority 200. A
/// valid lower advert from the virtual MAC is accepted and counted as a dual master.
#[test]
fn garbage_adverts_are_dropped_and_counted() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("g", 43, &["a", "x"]);
    let (a, x) = (lab.nodes[0].clone(), lab.nodes[1].clone());
    let conf = lab.portico_config("lb-a", 150, lab.ip(1));
    lab.portico(&a, &conf);
    assert!(lab.wait_holds(&a, true, Duration::from_secs(5)).is_some());
    let (src, vip) = (lab.ip(1), lab.vip());
    let good = |vrid: u8| {
        let mut out = Vec::new();
        Advert {
            vrid,
            priority: 200,
            interval_cs: 10,
            addresses: vec![vip.into()],
        }
        .encode(src.into(), packet::MULTICAST_V4.into(), &mut out);
        out
    };
    let with_sum = |mut b: Vec<u8>| {
        b[6] = 0;
        b[7] = 0;
        let s = packet::checksum(src.into(), packet::MULTICAST_V4.into(), &b);
        b[6..8].copy_from_slice(&s.to_be_bytes());
        b
    };
    let mut version = good(51);
    version[0] = 0x21;
    let mut bad_sum = good(51);
    bad_sum[7] ^= 0x55;
    let mut count = good(51);
    count[3] = 2;
    let cases: Vec<(&str, u32, Vec<u8>)> = vec![
        ("ttl", 254, good(51)),
        ("version", 255, with_sum(version)),
        ("checksum", 255, bad_sum),
        ("vrid_unknown", 255, good(52)),
        ("truncated", 255, good(51)[..6].to_vec()),
        ("address_count", 255, with_sum(count)),
    ];
    const EACH: usize = 3;
    in_ns(&x, move || {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112))).unwrap();
        s.set_multicast_if_v4(&src).unwrap();
        let dst = SockAddr::from(SocketAddrV4::new(packet::MULTICAST_V4, 0));
        for (_, ttl, bytes) in &cases {
            s.set_multicast_ttl_v4(*ttl).unwrap();
            for _ in 0..EACH {
                s.send_to(bytes, &dst).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let m = lab.metrics(&a);
    for reason in [
        "ttl",
        "version",
        "checksum",
        "vrid_unknown",
        "truncated",
        "address_count",
    ] {
        let v = metric(
            &m,
            &format!("portico_vrrp_rx_errors_total{{reason=\"{reason}\"}}"),
        );
        assert_eq!(v, EACH as f64, "reason {reason}");
    }
    assert_eq!(
        metric(&m, "portico_vrrp_adverts_received_total{vrid=\"51\"}"),
        0.0
    );
    assert_eq!(
        metric(&m, "portico_vrrp_state{state=\"master\",vrid=\"51\"}"),
        1.0
    );
    assert!(lab.holds(&a), "the master kept the VIP");
    assert!(!m.contains("portico_vrrp_transitions_total{from=\"master\""));
    assert_eq!(
        metric(&m, "portico_vrrp_dual_master_total{vrid=\"51\"}"),
        0.0
    );

    // A valid advert from another router claiming mastership with a lower priority, sent the
    // way FRR's vrrpd sends, from the virtual MAC 00:00:5e:00:01:33: the master accepts it (any
    // source MAC), keeps the VIP, says "dual master" and counts it.
    in_ns(&x, move || {
        let mut vrrp = Vec::new();
        Advert {
            vrid: 51,
            priority: 50,
            interval_cs: 10,
            addresses: vec![vip.into()],
        }
        .encode(src.into(), packet::MULTICAST_V4.into(), &mut vrrp);
        let mut frame = vec![
            0x01, 0x00, 0x5e, 0x00, 0x00, 0x12, 0x00, 0x00, 0x5e, 0x00, 0x01, 51,
        ];
        frame.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + vrrp.len()) as u16;
        let mut ip = vec![0x45, 0xc0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 255, 112, 0, 0]);
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&packet::MULTICAST_V4.octets());
        let sum = packet::finish(packet::sum_bytes(0, &ip));
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&vrrp);
        let name = std::ffi::CString::new("eth0").unwrap();
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        let s = portico::vip::link::PacketSocket::open(index, 0x0800).unwrap();
        for _ in 0..EACH {
            s.send(&frame).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let m = lab.metrics(&a);
    let received = metric(&m, "portico_vrrp_adverts_received_total{vrid=\"51\"}");
    assert_eq!(received, EACH as f64);
    let dual = metric(&m, "portico_vrrp_dual_master_total{vrid=\"51\"}");
    assert_eq!(dual, EACH as f64);
    assert!(lab.holds(&a), "the master kept the VIP");
    assert!(lab.log(&a).contains("dual master"));
}

/// Standalone mode: an ARP probe finds another host on the address and Portico refuses to
/// start, naming that host's MAC; with the address free it takes IPv4 and IPv6 VIPs, announces
/// them (gratuitous ARP, unsolicited NA with Override, seen in the client namespace), counts and
/// defends against another host's GARP for the VIP, and removes both on SIGTERM.
#[test]
fn standalone_conflict_probe_and_announcements() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("s", 44, &["a", "x", "c"]);
    let (a, x, c) = lab.three();
    let vip = lab.vip();
    let vip6 = "fd00:200:44::100";
    lab.backend(&c, SocketAddrV4::new(lab.ip(2), BACKEND_PORT));
    let conf = lab.dir.join("standalone.toml");
    std::fs::write(
        &conf,
        format!(
            r#"[node]
name = "solo"
interface = "eth0"

[vip]
addresses = ["{vip}/24", "{vip6}/64"]
mode = "standalone"
garp_master_delay_ms = 0
garp_master_repeat = 2

[[service]]
name = "web"
listen = "{vip}:{SERVICE_PORT}"
pool = "be"
backend_port = {BACKEND_PORT}

[pool.be]
backends = [ {{ name = "be1", address = "{}" }} ]

[metrics]
listen = "127.0.0.1:9469"

[admin]
socket = "{}"
"#,
            lab.ip(2),
            lab.dir.join("solo.sock").display()
        ),
    )
    .unwrap();

    // Another host already has the address.
    run(&[
        "ip",
        "-n",
        &x,
        "addr",
        "add",
        &format!("{vip}/24"),
        "dev",
        "eth0",
    ]);
    let x_mac = eth0_mac(&x);
    let pid = lab.portico(&a, &conf);
    let child = lab.children.iter_mut().find(|c| c.id() == pid).unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "Portico did not refuse"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let log = lab.log(&a);
    assert!(
        log.contains(&format!(
            "address conflict: {vip} is in use on eth0 by {x_mac}"
        )),
        "{log}"
    );
    assert!(!lab.holds(&a), "a refused address must not be added");

    // The address is free: take, announce, release.
    run(&[
        "ip",
        "-n",
        &x,
        "addr",
        "del",
        &format!("{vip}/24"),
        "dev",
        "eth0",
    ]);
    let pcap = lab.dir.join("standalone.pcap");
    let dump = lab.tcpdump(&c, &pcap, "arp or icmp6");
    let pid = lab.portico(&a, &conf);
    assert!(
        lab.wait_holds(&a, true, Duration::from_secs(5)).is_some(),
        "{}",
        lab.log(&a)
    );
    let has6 = |ns: &str| {
        output(&["ip", "-n", ns, "-6", "-o", "addr", "show", "dev", "eth0"])
            .contains(&format!("{vip6}/64"))
    };
    assert!(has6(&a), "IPv6 VIP added");
    assert!(reach(&c, vip, Duration::from_secs(3)).is_some());
    let m = lab.metrics(&a);
    assert_eq!(
        metric(&m, "portico_vip_announcements_total{kind=\"garp\"}"),
        2.0
    );
    assert_eq!(
        metric(&m, "portico_vip_announcements_total{kind=\"na\"}"),
        2.0
    );
    assert_eq!(metric(&m, "portico_vip_conflicts_total"), 0.0);

    // Another host announces the VIP while we hold it: counted, logged, defended once.
    let x_mac_bytes: [u8; 6] = {
        let v: Vec<u8> = x_mac
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        v.try_into().unwrap()
    };
    in_ns(&x, move || {
        let name = std::ffi::CString::new("eth0").unwrap();
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        let s =
            portico::vip::link::PacketSocket::open(index, portico::vip::frames::ETH_P_ARP).unwrap();
        for _ in 0..3 {
            s.send(&portico::vip::frames::gratuitous_arp(x_mac_bytes, vip))
                .unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let m = lab.metrics(&a);
    assert_eq!(metric(&m, "portico_vip_conflicts_total"), 3.0);
    assert_eq!(
        metric(&m, "portico_vip_announcements_total{kind=\"garp\"}"),
        3.0,
        "one defending GARP within the defence interval"
    );
    assert!(lab
        .log(&a)
        .contains("address conflict: another host claims a VIP we hold"));
    signal(pid, libc::SIGTERM);
    wait_exit(&mut lab, pid);
    assert!(!lab.holds(&a) && !has6(&a), "VIPs removed at shutdown");
    signal(dump, libc::SIGTERM);
    wait_exit(&mut lab, dump);
    let a_mac = eth0_mac(&a);
    let na = output(&[
        "tshark",
        "-r",
        pcap.to_str().unwrap(),
        "-T",
        "fields",
        "-e",
        "icmpv6.nd.na.target_address",
        "-e",
        "icmpv6.nd.na.flag.o",
        "-e",
        "icmpv6.opt.linkaddr",
        "-e",
        "ipv6.hlim",
        "-e",
        "icmpv6.checksum.status",
        "-Y",
        "icmpv6.type == 136",
    ]);
    let ours: Vec<&str> = na.lines().filter(|l| l.starts_with(vip6)).collect();
    assert_eq!(ours.len(), 2, "two NAs for the IPv6 VIP:\n{na}");
    for l in ours {
        let f: Vec<&str> = l.split('\t').collect();
        assert!(
            matches!(f.get(1), Some(&"1") | Some(&"True")),
            "Override set: {l}"
        );
        assert_eq!(f.get(2).copied(), Some(a_mac.as_str()), "{l}");
        assert_eq!(f.get(3).copied(), Some("255"), "{l}");
        assert_eq!(f.get(4).copied(), Some("1"), "checksum good: {l}");
    }
    let garps = output(&[
        "tshark",
        "-r",
        pcap.to_str().unwrap(),
        "-T",
        "fields",
        "-e",
        "arp.src.hw_mac",
        "-Y",
        &format!("arp.src.proto_ipv4 == {vip} && arp.dst.proto_ipv4 == {vip}"),
    ]);
    assert_eq!(
        garps.lines().filter(|l| l.trim() == a_mac).count(),
        3,
        "two announcing GARPs and one defending GARP from A:\n{garps}"
    );
}

/// The handle the admin side uses: an in-process daemon (started inside node A's namespace)
/// exposes its instance; `demote` hands the VIP to the other node at once, `resume` lets A
/// preempt it back; `state` follows.
#[test]
fn handle_demote_and_resume() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("h", 45, &["a", "b", "c"]);
    let (a, b, c) = lab.three();
    let vip = lab.vip();
    lab.backend(&c, SocketAddrV4::new(lab.ip(2), BACKEND_PORT));
    let conf_a = lab.portico_config("lb-a", 150, lab.ip(2));
    let conf_b = lab.portico_config("lb-b", 100, lab.ip(2));
    lab.portico(&b, &conf_b);
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<&'static str>();
    let path = format!("/run/netns/{a}");
    let node = std::thread::spawn(move || {
        enter(&path);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use portico::vrrp::State;
            let config = portico::config::load(&conf_a).expect("config");
            let running = portico::daemon::start_with(config, 1).await.expect("start");
            assert_eq!(running.vrrp.len(), 1);
            let mut h = running.vrrp[0].clone();
            assert_eq!(h.vrid(), 51);
            assert!(
                h.wait_for(State::Master, Duration::from_secs(5)).await,
                "master"
            );
            tx.send("master").unwrap();
            assert_eq!(go_rx.recv().unwrap(), "demote");
            assert!(h.demote());
            assert!(
                h.wait_for(State::Backup, Duration::from_secs(2)).await,
                "backup"
            );
            assert_eq!(h.status().priority, 1);
            tx.send("demoted").unwrap();
            assert_eq!(go_rx.recv().unwrap(), "resume");
            assert!(h.resume());
            assert!(
                h.wait_for(State::Master, Duration::from_secs(5)).await,
                "master again"
            );
            assert_eq!(h.status().priority, 150);
            tx.send("resumed").unwrap();
            assert_eq!(go_rx.recv().unwrap(), "stop");
            running.shutdown(Duration::from_secs(1)).await;
            tx.send("stopped").unwrap();
        });
    });
    let step = |want: &str| {
        let got = rx
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("node A never reported {want}"));
        assert_eq!(got, want);
    };
    step("master");
    assert!(lab.wait_holds(&a, true, Duration::from_secs(1)).is_some());
    assert!(!lab.holds(&b));
    go_tx.send("demote").unwrap();
    step("demoted");
    // B takes over within its skew time after A's priority-0 advert.
    assert!(lab
        .wait_holds(&b, true, Duration::from_millis(500))
        .is_some());
    assert!(!lab.holds(&a));
    assert!(reach(&c, vip, Duration::from_secs(3)).is_some());
    go_tx.send("resume").unwrap();
    step("resumed");
    assert!(lab.wait_holds(&b, false, Duration::from_secs(1)).is_some());
    assert!(lab.holds(&a));
    go_tx.send("stop").unwrap();
    step("stopped");
    node.join().expect("node A thread");
    assert!(!lab.holds(&a), "VIP removed at shutdown");
    assert!(lab.wait_holds(&b, true, Duration::from_secs(1)).is_some());
}

/// Unicast mode: two Portico nodes that name each other as peers elect and fail over without
/// multicast; an advert from a host that is not a peer is dropped and counted even though it
/// claims priority 200.
#[test]
fn unicast_peers_elect_and_reject_strangers() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("u", 46, &["a", "b", "x"]);
    let (a, b, x) = lab.three();
    let (ip_a, ip_b, ip_x, vip) = (lab.ip(0), lab.ip(1), lab.ip(2), lab.vip());
    let conf_a =
        lab.portico_config_with("lb-a", 150, ip_x, &format!("unicast_peers = [\"{ip_b}\"]"));
    let conf_b =
        lab.portico_config_with("lb-b", 100, ip_x, &format!("unicast_peers = [\"{ip_a}\"]"));
    let pa = lab.portico(&a, &conf_a);
    lab.portico(&b, &conf_b);
    assert!(
        lab.wait_holds(&a, true, Duration::from_secs(5)).is_some(),
        "{}",
        lab.log(&a)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !lab.holds(&b),
        "B hears A's unicast adverts and stays backup"
    );
    in_ns(&x, move || {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112))).unwrap();
        s.set_ttl_v4(255).unwrap();
        let mut out = Vec::new();
        Advert {
            vrid: 51,
            priority: 200,
            interval_cs: 10,
            addresses: vec![vip.into()],
        }
        .encode(ip_x.into(), ip_a.into(), &mut out);
        let dst = SockAddr::from(SocketAddrV4::new(ip_a, 0));
        for _ in 0..3 {
            s.send_to(&out, &dst).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let m = lab.metrics(&a);
    assert_eq!(
        metric(&m, "portico_vrrp_rx_errors_total{reason=\"not_peer\"}"),
        3.0
    );
    assert!(lab.holds(&a), "a stranger's advert changed nothing");
    signal(pa, libc::SIGTERM);
    assert!(
        lab.wait_holds(&b, true, Duration::from_secs(2)).is_some(),
        "B took over by unicast priority-0 advert"
    );
    wait_exit(&mut lab, pa);
    assert!(!lab.holds(&a));
}

/// IPv6 VRRP: a group with only an IPv6 VIP runs its own instance over ff02::12 from the
/// link-local address; the pair elects, hands over on a graceful stop, tshark in the client
/// namespace decodes the adverts as VRRPv3 over IPv6 (hop limit 255, ff02::12) with a correct
/// checksum and sees each takeover's unsolicited NAs from the new master's MAC.
#[test]
fn ipv6_pair_elects_and_hands_over() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("6", 47, &["a", "b", "c"]);
    let (a, b, c) = lab.three();
    let vip6 = "fd00:200:47::100";
    let conf = |name: &str, priority: u8| {
        let path = lab.dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"[node]
name = "{name}"
interface = "eth0"

[vip]
addresses = ["{vip6}/64"]
mode = "vrrp"
garp_master_delay_ms = 0
garp_master_refresh_s = 0

[vip.vrrp]
vrid = 61
priority = {priority}
advert_interval_ms = 100

[[service]]
name = "web6"
listen = "[{vip6}]:{SERVICE_PORT}"
pool = "be"

[pool.be]
backends = [ {{ name = "be1", address = "10.200.47.3" }} ]

[metrics]
listen = "127.0.0.1:9469"

[admin]
socket = "{admin}"
"#,
                admin = lab.dir.join(format!("{name}.sock")).display()
            ),
        )
        .unwrap();
        path
    };
    let (conf_a, conf_b) = (conf("lb6-a", 150), conf("lb6-b", 100));
    let holds6 = |ns: &str| {
        output(&["ip", "-n", ns, "-6", "-o", "addr", "show", "dev", "eth0"])
            .contains(&format!("{vip6}/64"))
    };
    let wait6 = |ns: &str, want: bool| {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if holds6(ns) == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    };
    let pcap = lab.dir.join("v6.pcap");
    let dump = lab.tcpdump(&c, &pcap, "ip6 proto 112 or icmp6");
    let pa = lab.portico(&a, &conf_a);
    lab.portico(&b, &conf_b);
    assert!(
        wait6(&a, true),
        "A never took the IPv6 VIP:\n{}",
        lab.log(&a)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!holds6(&b), "B stays backup:\n{}", lab.log(&b));
    signal(pa, libc::SIGTERM);
    assert!(wait6(&b, true), "B took over:\n{}", lab.log(&b));
    let mb = lab.metrics(&b);
    assert_eq!(
        metric(&mb, "portico_vip_announcements_total{kind=\"na\"}"),
        5.0
    );
    wait_exit(&mut lab, pa);
    assert!(!holds6(&a));
    std::thread::sleep(Duration::from_millis(300));
    signal(dump, libc::SIGTERM);
    wait_exit(&mut lab, dump);
    let pcap_s = pcap.to_str().unwrap();
    let decoded = output(&["tshark", "-r", pcap_s, "-V", "-Y", "vrrp"]);
    assert!(
        decoded.contains("Internet Protocol Version 6"),
        "{decoded:.2000}"
    );
    assert!(decoded.contains("VRRP protocol version: 3"));
    assert!(decoded.contains("Virtual Rtr ID: 61"));
    assert!(
        decoded.contains(&format!("IPv6 Address: {vip6}")),
        "{decoded:.3000}"
    );
    assert!(decoded.contains("[correct]"));
    assert!(
        !decoded.contains("incorrect"),
        "a bad checksum was captured"
    );
    assert!(decoded.contains("Hop Limit: 255"));
    assert!(decoded.contains("Destination Address: ff02::12"));
    let a_mac = eth0_mac(&a);
    let na = output(&[
        "tshark",
        "-r",
        pcap_s,
        "-T",
        "fields",
        "-e",
        "icmpv6.opt.linkaddr",
        "-Y",
        &format!("icmpv6.type == 136 && icmpv6.nd.na.target_address == {vip6}"),
    ]);
    assert_eq!(
        na.lines().filter(|l| l.trim() == a_mac).count(),
        5,
        "A's unsolicited NAs seen by the client:\n{na}"
    );
    let b_mac = eth0_mac(&b);
    assert_eq!(
        na.lines().filter(|l| l.trim() == b_mac).count(),
        5,
        "B's unsolicited NAs seen by the client after its takeover:\n{na}"
    );
}

/// Pool tracking: the master's only backend refuses connections, its health checks mark it
/// down, the master's priority drops by `track_pool_penalty` below the backup's, and the backup
/// (whose backend serves) takes the VIP; clients keep reaching a backend through the VIP.
#[test]
fn empty_pool_lowers_priority_and_moves_the_vip() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("t", 48, &["a", "b", "c"]);
    let (a, b, c) = lab.three();
    let vip = lab.vip();
    lab.backend(&c, SocketAddrV4::new(lab.ip(2), BACKEND_PORT));
    // A's backend is B's address, where nothing listens on the backend port: refused at once.
    let conf_a = lab.portico_config_with("lb-a", 150, lab.ip(1), "track_pool_penalty = 60");
    let conf_b = lab.portico_config_with("lb-b", 100, lab.ip(2), "track_pool_penalty = 60");
    lab.portico(&a, &conf_a);
    lab.portico(&b, &conf_b);
    // A may hold the VIP briefly; once its pool is empty (3 failed probes, 500 ms apart) its
    // priority is 90 < 100 and B preempts.
    assert!(
        lab.wait_holds(&b, true, Duration::from_secs(8)).is_some(),
        "B never took over:\n{}\n{}",
        lab.log(&a),
        lab.log(&b)
    );
    // A releases on B's first advert (a loaded machine may delay that by a few intervals).
    assert!(
        lab.wait_holds(&a, false, Duration::from_secs(3)).is_some(),
        "A still holds the VIP after B took it:\n{}",
        lab.log(&a)
    );
    let m = lab.metrics(&a);
    assert_eq!(metric(&m, "portico_vrrp_priority{vrid=\"51\"}"), 90.0);
    assert_eq!(
        metric(&m, "portico_vrrp_state{state=\"backup\",vrid=\"51\"}"),
        1.0
    );
    assert!(lab.log(&a).contains("tracked pool has no eligible backend"));
    assert!(reach(&c, vip, Duration::from_secs(3)).is_some());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        lab.holds(&b) && !lab.holds(&a),
        "the VIP stays with the node that can serve"
    );
}

/// Unicast interop with keepalived (`unicast_src_ip` / `unicast_peer`): each side accepts the
/// other's unicast adverts (checksum over the real destination): keepalived stays backup under
/// a Portico master, takes over on its priority-0 advert, Portico counts keepalived's adverts
/// as valid when it returns, and keepalived takes over again when Portico crashes.
#[test]
fn keepalived_unicast_interop() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("q", 49, &["p", "k", "c"]);
    let (p, k) = (lab.nodes[0].clone(), lab.nodes[1].clone());
    let (ip_p, ip_k, ip_c) = (lab.ip(0), lab.ip(1), lab.ip(2));
    lab.backend(&lab.nodes[2].clone(), SocketAddrV4::new(ip_c, BACKEND_PORT));
    let conf_p = lab.portico_config_with("pu", 150, ip_c, &format!("unicast_peers = [\"{ip_k}\"]"));
    let pp = lab.portico(&p, &conf_p);
    assert!(lab.wait_holds(&p, true, Duration::from_secs(5)).is_some());
    let kp = lab.keepalived_with(
        &k,
        "ku",
        100,
        &format!("  unicast_src_ip {ip_k}\n  unicast_peer {{\n    {ip_p}\n  }}"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        lab.holds(&p) && !lab.holds(&k),
        "keepalived accepts Portico's unicast adverts:\n{}",
        lab.log("ku")
    );
    signal(pp, libc::SIGTERM);
    assert!(
        lab.wait_holds(&k, true, Duration::from_secs(2)).is_some(),
        "keepalived took over on Portico's unicast priority-0 advert"
    );
    wait_exit(&mut lab, pp);
    let pp = lab.portico(&p, &conf_p);
    assert!(
        lab.wait_holds(&p, true, Duration::from_secs(5)).is_some(),
        "Portico preempts back"
    );
    assert!(lab.wait_holds(&k, false, Duration::from_secs(2)).is_some());
    let m = lab.metrics(&p);
    assert!(metric(&m, "portico_vrrp_adverts_received_total{vrid=\"51\"}") >= 1.0);
    for reason in ["checksum", "not_peer", "ttl"] {
        let v = metric(
            &m,
            &format!("portico_vrrp_rx_errors_total{{reason=\"{reason}\"}}"),
        );
        assert_eq!(v, 0.0, "{reason}");
    }
    // Portico crashes (link down + SIGKILL): keepalived takes over on its own timer.
    run(&["ip", "-n", &p, "link", "set", "eth0", "down"]);
    signal(pp, libc::SIGKILL);
    let took = lab
        .wait_holds(&k, true, Duration::from_secs(3))
        .expect("keepalived took over from a crashed Portico");
    eprintln!("keepalived took over {took:?} after Portico crashed");
    wait_exit(&mut lab, pp);
    signal(kp, libc::SIGTERM);
    wait_exit(&mut lab, kp);
}

/// The operator's path to a hand-over, with the real binaries: `portico ctl status` shows
/// which node is master, and `portico drill vip-handover`, run from the client's namespace
/// against node A's admin socket, demotes A, watches the VIP move to B while ticking connects
/// at it, prints its timeline, passes, and resumes A (which preempts back).
#[test]
fn ctl_status_and_vip_handover_drill() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("d", 50, &["a", "b", "c"]);
    let (a, b, c) = lab.three();
    let vip = lab.vip();
    lab.backend(&c, SocketAddrV4::new(lab.ip(2), BACKEND_PORT));
    let conf_a = lab.portico_config("lb-a", 150, lab.ip(2));
    let conf_b = lab.portico_config("lb-b", 100, lab.ip(2));
    lab.portico(&a, &conf_a);
    lab.portico(&b, &conf_b);
    assert!(
        lab.wait_holds(&a, true, Duration::from_secs(5)).is_some(),
        "A (150) never took the VIP:\n{}",
        lab.log(&a)
    );
    let sock_a = lab.dir.join("lb-a.sock");
    let ctl = |sock: &Path| {
        let out = Command::new(BIN)
            .args(["ctl", "--socket"])
            .arg(sock)
            .args(["status", "--json"])
            .output()
            .expect("portico ctl");
        assert!(out.status.success(), "ctl status failed: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v["vrrp"]["state"].as_str().unwrap_or("").to_string()
    };
    assert!(ctl(&sock_a).starts_with("master"), "{}", ctl(&sock_a));
    assert!(ctl(&lab.dir.join("lb-b.sock")).starts_with("backup"));

    let target = format!("{vip}:{SERVICE_PORT}");
    let out = Command::new("ip")
        .args(["netns", "exec", &c, BIN, "drill", "--socket"])
        .arg(&sock_a)
        .args([
            "vip-handover",
            "--target",
            &target,
            "--max-gap-ms",
            "1500",
            "--watch-s",
            "2",
        ])
        .output()
        .expect("portico drill");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drill failed:\n{text}");
    assert!(
        text.contains("vrrp demote"),
        "timeline names the step:\n{text}"
    );
    assert!(text.contains("+0."), "timestamped timeline:\n{text}");
    // Without --keep the drill resumes A, which preempts back.
    assert!(
        lab.wait_holds(&a, true, Duration::from_secs(5)).is_some(),
        "A did not take the VIP back after the drill:\n{text}"
    );
    assert!(lab.wait_holds(&b, false, Duration::from_secs(2)).is_some());
    eprintln!("{text}");
}
