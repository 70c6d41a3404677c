//! The `portico` binary as an operator runs it: `lab`, `check`, and `run` under a descriptor
//! limit.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

fn sigterm(child: &Child) {
    // SAFETY: kill(2) on a PID we started and still own (not yet reaped).
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_serves_ms_tsgu_udp_and_metrics_then_stops_cleanly_on_sigterm() {
    let dir = tempdir("lab");
    // Base 12000 keeps every lab port below the ephemeral range and away from the defaults.
    let child = Command::new(BIN)
        .args(["lab", "--port-base", "12000", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn portico lab");
    let mut g = Proc(child);
    let out = g.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut printed = Vec::new();
    let t0 = Instant::now();
    while !printed.iter().any(|l: &String| l.starts_with("Ctrl-C")) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "lab did not come up: {printed:?}"
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            printed.push(l);
        }
    }
    let all = printed.join("\n");
    assert!(
        all.contains("xfreerdp /g:127.0.0.1:12443"),
        "lab prints a client line: {all}"
    );
    assert!(all.contains("http://127.0.0.1:11469/metrics"), "{all}");
    let rdp = std::fs::read_to_string(dir.join("console.rdp")).expect("the lab writes console.rdp");
    assert!(
        rdp.contains("gatewayhostname:s:rdgw.lab.test:12443\r\n"),
        "{rdp}"
    );

    // A console token minted with the lab's signer, as a portal would, opens a tunnel and a
    // channel through the balancer.
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();
    let mint = Command::new(BIN)
        .args([
            "token",
            "mint",
            "--cert",
            &p("signer.pem"),
            "--key",
            &p("signer.key"),
            "--host",
            "hv01.lab.test",
        ])
        .output()
        .unwrap();
    assert!(
        mint.status.success(),
        "{}",
        String::from_utf8_lossy(&mint.stderr)
    );
    let token = String::from_utf8_lossy(&mint.stdout).trim().to_string();
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let cfg = portico::sim::client::ClientConfig {
        addr: "127.0.0.1:12443".parse().unwrap(),
        server_name: "rdgw.lab.test".into(),
        tls: client_tls(&ca),
        transport: portico::sim::Transport::WebSocket,
        timeout: Duration::from_secs(5),
    };
    let (mut c, connected) = portico::sim::client::RdgClient::connect(&cfg)
        .await
        .expect("MS-TSGU connect");
    assert_eq!(connected.status, 101);
    let st = c.open_tunnel(&token, "LAB-TEST").await.unwrap();
    assert!(st.is_ok(), "{st:?}");
    assert_eq!(c.create_channel("hv01.lab.test", 2179).await.unwrap(), 0);

    // The gateway that holds the tunnel (from its control socket) also gets the client's UDP.
    // The gateway refreshes its record just after sending CHANNEL_RESPONSE, and the lab's
    // health probes keep it busy: look again for a moment.
    let mut holder = None;
    let t0 = Instant::now();
    while holder.is_none() && t0.elapsed() < Duration::from_secs(3) {
        for gw in ["web01", "web02", "web03"] {
            if control(&dir.join(format!("{gw}.ctl")), "records")
                .await
                .contains("target=hv01.lab.test:2179")
            {
                holder = Some(gw);
            }
        }
        if holder.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let holder = holder.expect("one gateway recorded the channel");
    let udp = udp_which(
        "127.0.0.1".parse().unwrap(),
        "127.0.0.1:15391".parse().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        udp, holder,
        "the client's UDP flow meets its MS-TSGU channel"
    );
    let m = scrape("127.0.0.1:11469".parse().unwrap()).await;
    assert_eq!(
        metric(
            &m,
            "portico_connections_accepted_total{service=\"rdgw-https\"}"
        ),
        1.0
    );
    drop(c);

    sigterm(&g.0);
    let st = wait_exit(&mut g.0, Duration::from_secs(15)).expect("lab exits after SIGTERM");
    assert!(st.success(), "lab exit status {st:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn client_tls(ca_pem: &[u8]) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    std::sync::Arc::new(cfg)
}

/// One command on a simulated gateway's control socket; the whole reply.
async fn control(path: &std::path::Path, cmd: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let s = tokio::net::UnixStream::connect(path)
        .await
        .expect("control socket");
    let (r, mut w) = s.into_split();
    w.write_all(format!("{cmd}\n").as_bytes()).await.unwrap();
    let mut lines = tokio::io::BufReader::new(r).lines();
    let mut out = String::new();
    while let Ok(Some(l)) = lines.next_line().await {
        let done = l.starts_with("ok") || l.starts_with("err");
        out.push_str(&l);
        out.push('\n');
        if done {
            break;
        }
    }
    out
}

/// `portico check --config PATH`.
fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn check_prints_the_plan_or_names_file_line_and_field() {
    let ok = check(std::path::Path::new("config/lab.toml"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let plan = String::from_utf8_lossy(&ok.stdout);
    assert!(
        plan.contains("service rdgw-https tcp 127.0.0.1:10443"),
        "{plan}"
    );
    assert!(plan.contains("backend web01"), "{plan}");
    assert!(
        plan.contains("share 33."),
        "equal weights give a third each: {plan}"
    );

    let dir = tempdir("check");
    // A dsr VIP of a VRRP group: the plan says which MAC it answers ARP with, and the sync.
    let dsr = dir.join("dsr.toml");
    std::fs::write(
        &dsr,
        "[node]\nname = \"lb1\"\ninterface = \"eth0\"\n\n[vip]\naddresses = [\"10.200.0.100/32\"]\nmode = \"vrrp\"\n\n[vip.vrrp]\nvrid = 51\npriority = 200\n\n[[service]]\nname = \"tls\"\nlisten = \"10.200.0.100:443\"\npool = \"gw\"\nforwarding = \"dsr\"\n\n[pool.gw]\nbackends = [ { name = \"gw1\", address = \"10.200.0.11\" } ]\n\n[dsr]\nsync_listen = \"10.200.0.2:7947\"\nsync_peers = [\"10.200.0.3:7947\"]\n",
    )
    .unwrap();
    let out = check(&dsr);
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        plan.contains("ARP answered with virtual MAC 00:00:5e:00:01:33 (vrid 51)"),
        "{plan}"
    );
    assert!(
        plan.contains("dsr flow sync 10.200.0.2:7947 <-> 10.200.0.3:7947"),
        "{plan}"
    );
    assert!(plan.contains("dsr xdp auto: "), "{plan}");

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[node]\nname = \"x\"\n\n[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:443\"\npool = \"nope\"\n",
    )
    .unwrap();
    let out = check(&bad);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:7:", bad.display())),
        "names file and line: {err}"
    );
    assert!(err.contains("service[0].pool"), "names the field: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With far fewer descriptors than clients, accept hits EMFILE: Portico must count it and
/// back off rather than spin, and serve again once clients leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emfile_on_accept_is_counted_and_backed_off() {
    let gws = gateways(&["web01"]).await;
    let dir = tempdir("emfile");
    let cfg = dir.join("p.toml");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let port = free_port();
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"t\"\n[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:{port}\"\npool = \"p\"\n\
             [pool.p]\nbackends = [{{ name = \"web01\", address = \"{}\" }}]\n\
             [metrics]\nlisten = \"{metrics}\"\n[admin]\nsocket = \"{}/a.sock\"\n",
            gws[0].addr,
            dir.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--workers")
        .arg("1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 48,
                rlim_max: 48,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut g = Proc(cmd.spawn().unwrap());
    let err = g.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let addr = loop {
        let l = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no listener logged: {log:?}"));
        log.push(l.clone());
        if let Some(a) = l.split("addr=").nth(1).filter(|_| l.contains("listening")) {
            break a
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<SocketAddr>()
                .unwrap();
        }
    };
    // 60 clients hold connections: with 48 descriptors Portico runs out part way.
    let mut held = Vec::new();
    for i in 0..60u8 {
        if let Ok(s) = tcp_from(source(2 + i), addr).await {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu0 = cpu_ticks(g.0.id());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = cpu_ticks(g.0.id()) - cpu0;
    // A busy loop on EMFILE would burn ~100 ticks per second; a backed-off one a handful.
    assert!(
        cpu < 30,
        "portico used {cpu} CPU ticks in 1 s while out of descriptors"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = scrape(metrics).await;
    let emfile = metric(
        &m,
        "portico_accept_errors_total{reason=\"emfile\",service=\"s\"}",
    );
    assert!(emfile >= 1.0, "EMFILE counted: {emfile}");
    // And it serves again.
    assert_eq!(which_gateway(source(100), addr).await.unwrap(), "web01");
    let _ = std::fs::remove_dir_all(&dir);
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the comm field.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("portico-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `portico sim-gateway` as its own process: it checks tokens against the trusted signer and
/// takes faults over its control socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_gateway_process_checks_tokens_and_takes_faults() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let dir = tempdir("simgw");
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();
    let tls = rcgen::generate_simple_self_signed(vec!["rdgw.test".to_string()]).unwrap();
    std::fs::write(p("tls.pem"), tls.cert.pem()).unwrap();
    std::fs::write(p("tls.key"), tls.signing_key.serialize_pem()).unwrap();
    let kg = Command::new(BIN)
        .args([
            "token",
            "keygen",
            "--cert",
            &p("signer.pem"),
            "--key",
            &p("signer.key"),
        ])
        .output()
        .unwrap();
    assert!(kg.status.success());
    let (port, ctl) = (free_port(), free_port());
    let child = Command::new(BIN)
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
            &p("signer.pem"),
            "--name",
            "web07",
            "--control",
            &format!("127.0.0.1:{ctl}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut g = Proc(child);
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", ctl)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "sim-gateway did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mint = Command::new(BIN)
        .args([
            "token",
            "mint",
            "--cert",
            &p("signer.pem"),
            "--key",
            &p("signer.key"),
            "--host",
            "hv01.lab.test",
        ])
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&mint.stdout).trim().to_string();
    let cfg = portico::sim::client::ClientConfig {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        server_name: "rdgw.test".into(),
        tls: client_tls(tls.cert.pem().as_bytes()),
        transport: portico::sim::Transport::Legacy,
        timeout: Duration::from_secs(5),
    };
    let open = || async {
        let (mut c, _) = portico::sim::client::RdgClient::connect(&cfg)
            .await
            .expect("connect");
        c.open_tunnel(&token, "TEST")
            .await
            .expect("tunnel exchange")
    };
    assert!(
        open().await.is_ok(),
        "a token from the trusted signer opens a tunnel"
    );

    let s = tokio::net::TcpStream::connect(("127.0.0.1", ctl))
        .await
        .unwrap();
    let (r, mut w) = s.into_split();
    w.write_all(b"fault token-reject\n").await.unwrap();
    let reply = tokio::io::BufReader::new(r)
        .lines()
        .next_line()
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(reply.starts_with("ok"), "{reply}");
    let st = open().await;
    assert_eq!(
        st.tunnel,
        Some(portico::rdg::hresult::E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED),
        "{st:?}"
    );

    sigterm(&g.0);
    let st = wait_exit(&mut g.0, Duration::from_secs(10)).expect("sim-gateway exits after SIGTERM");
    assert!(st.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `portico run` serving one service with one gateway behind it. Fields drop in order: the
/// process is stopped first ([`Proc`]), then the scratch dir removed ([`TempDir`]), also when
/// an assertion failed.
struct OneService {
    proc: Proc,
    /// What it logged until it listened.
    log: Vec<String>,
    _gateway: Vec<portico::lab::StandIn>,
    _dir: TempDir,
}

/// Starts `portico run ARGS` on a one-service config and waits until a client reaches the
/// gateway through it.
async fn run_one_service(tag: &str, args: &[&str]) -> OneService {
    let gws = gateways(&["web01"]).await;
    let dir = TempDir::new(tag);
    let cfg = dir.path("p.toml");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"t\"\n[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:{port}\"\npool = \"p\"\n\
             [pool.p]\nbackends = [{{ name = \"web01\", address = \"{}\" }}]\n\
             [metrics]\nlisten = \"off\"\n[admin]\nsocket = \"{}/a.sock\"\n",
            gws[0].addr,
            dir.0.display()
        ),
    )
    .unwrap();
    let mut g = Proc(
        Command::new(BIN)
            .arg("run")
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let err = g.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("listening")) {
        let l = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no listener logged: {log:?}"));
        log.push(l);
    }
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(which_gateway(source(7), addr).await.unwrap(), "web01");
    OneService {
        proc: g,
        log,
        _gateway: gws,
        _dir: dir,
    }
}

/// For each of `pid`'s threads named `name`, what `read` takes from its /proc directory.
fn threads_named<T>(pid: u32, name: &str, read: impl Fn(&std::path::Path) -> T) -> Vec<T> {
    let mut found = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            found.push(read(&t));
        }
    }
    found
}

/// `run --pin-workers`: each data-plane thread on its own CPU of the process's set, the
/// control plane left to the scheduler, and clients served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_workers_puts_each_data_plane_thread_on_a_cpu_of_its_own() {
    let allowed = portico::daemon::cpus::allowed().expect("this process's CPUs");
    let p = run_one_service("pin", &["--workers", "2", "--pin-workers"]).await;
    let cpus_of = |name: &str| -> Vec<String> {
        threads_named(p.proc.0.id(), name, |t| {
            let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap_or("")
                .trim()
                .to_string()
        })
    };
    for w in 0..2 {
        let want = allowed[w % allowed.len()].to_string();
        assert_eq!(
            cpus_of(&format!("portico-dp{w}")),
            [want],
            "data-plane thread {w}; log: {:?}",
            p.log
        );
    }
    if allowed.len() > 1 {
        let control = cpus_of("portico");
        assert!(!control.is_empty(), "control-plane threads found");
        assert!(
            control.iter().all(|l| l.contains('-') || l.contains(',')),
            "control plane left on every CPU: {control:?}"
        );
    }
}

/// A thread's scheduling policy, field 41 of its `stat` (counted after the parenthesised
/// name, which may hold spaces).
fn policy_of(task: &std::path::Path) -> i32 {
    let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
    let after_name = &stat[stat.rfind(')').map(|i| i + 1).unwrap_or(0)..];
    after_name
        .split_whitespace()
        .nth(41 - 3)
        .and_then(|f| f.parse().ok())
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_threads_run_sched_batch_by_default_and_the_control_plane_does_not() {
    let p = run_one_service("sched", &["--workers", "2"]).await;
    for w in 0..2 {
        assert_eq!(
            threads_named(p.proc.0.id(), &format!("portico-dp{w}"), policy_of),
            [libc::SCHED_BATCH],
            "data-plane thread {w}; log: {:?}",
            p.log
        );
    }
    let control = threads_named(p.proc.0.id(), "portico", policy_of);
    assert!(!control.is_empty());
    assert!(
        control.iter().all(|&c| c == libc::SCHED_OTHER),
        "{control:?}"
    );
    drop(p);

    let p = run_one_service(
        "sched-normal",
        &["--workers", "2", "--worker-scheduling", "normal"],
    )
    .await;
    assert_eq!(
        threads_named(p.proc.0.id(), "portico-dp0", policy_of),
        [libc::SCHED_OTHER],
        "log: {:?}",
        p.log
    );
}
