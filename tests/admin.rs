//! The admin socket, `portico ctl`, reload and the drills, against a real daemon (in this
//! process, through `portico::daemon`) on real sockets, with gateway stand-ins that answer
//! with their name over TLS and UDP; `ctl` and `drill` run as the real binary.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use portico::admin::proto::{Reply, Request, Status};
use portico::admin::AdminClient;
use portico::lab::StandIn;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A private directory for one test's config and socket, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("portico-admin-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("test dir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        Dir(p)
    }
    fn join(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port below the ephemeral range that is free on 127.0.0.0/8 for TCP and UDP right now
/// (the config refuses port 0). Probed from a per-process start so parallel tests differ.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() * 7919) % 10_000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 2000, "no free port found");
        let p = (base + (n * 13) % 12_000) as u16;
        let p = if p >= 32_000 { p - 12_000 } else { p };
        let ok = ["127.0.0.1", "127.0.0.3"].iter().all(|ip| {
            std::net::TcpListener::bind((*ip, p)).is_ok()
                && std::net::UdpSocket::bind((*ip, p)).is_ok()
        });
        if ok {
            return p;
        }
    }
}

/// Extra text for the config: more services, a changed pool, a broken line.
#[derive(Default, Clone)]
struct Variant {
    /// Appended after the two standard services.
    extra_services: String,
    /// web03's weight.
    web03_weight: u32,
    /// A fourth backend, `web04`, at this address.
    web04: Option<SocketAddr>,
    /// Replaces the whole file when set.
    raw: Option<String>,
    /// Leave the UDP service out (a TCP-only farm: drills follow clients by counters).
    no_udp: bool,
}

fn config_text(gws: &[StandIn], socket: &Path, v: &Variant) -> String {
    if let Some(r) = &v.raw {
        return r.clone();
    }
    let w3 = v.web03_weight.max(1);
    let p = ports();
    let text = format!(
        r#"[node]
name = "lb-test"

[[service]]
name = "rdgw-https"
listen = "127.0.0.1:{tcp}"
protocol = "tcp"
pool = "gateways"
affinity = {{ group = "rdgw" }}

[[service]]
name = "rdgw-udp"
listen = "127.0.0.1:{udp}"
protocol = "udp"
pool = "gateways"
affinity = {{ group = "rdgw" }}
{extra}
[pool.gateways]
backends = [
  {{ name = "web01", address = "{a}" }},
  {{ name = "web02", address = "{b}" }},
  {{ name = "web03", address = "{c}", weight = {w3} }},{web04}
]

[pool.gateways.health]
interval_ms = 1000
timeout_ms = 500
checks = ["tcp"]

[metrics]
listen = "127.0.0.1:{metrics}"

[admin]
socket = "{sock}"
"#,
        extra = v.extra_services,
        web04 = v
            .web04
            .map(|a| format!("\n  {{ name = \"web04\", address = \"{a}\" }},"))
            .unwrap_or_default(),
        a = gws[0].addr,
        b = gws[1].addr,
        c = gws[2].addr,
        sock = socket.display(),
        tcp = p[0],
        udp = p[1],
        metrics = p[2],
    );
    if v.no_udp {
        let udp = format!(
            "[[service]]\nname = \"rdgw-udp\"\nlisten = \"127.0.0.1:{}\"\nprotocol = \"udp\"\npool = \"gateways\"\naffinity = {{ group = \"rdgw\" }}\n",
            p[1]
        );
        assert!(text.contains(&udp));
        return text.replace(&udp, "");
    }
    text
}

std::thread_local! {
    /// This test's ports (tcp service, udp service, metrics, extra service): each test runs
    /// on its own thread, and its configs must keep the same ports across reloads.
    static PORTS: std::cell::Cell<Option<[u16; 4]>> = const { std::cell::Cell::new(None) };
}

fn ports() -> [u16; 4] {
    PORTS.with(|c| match c.get() {
        Some(p) => p,
        None => {
            let p = [free_port(), free_port(), free_port(), free_port()];
            c.set(Some(p));
            p
        }
    })
}

struct Node {
    dir: Dir,
    gws: Vec<StandIn>,
    running: Option<portico::daemon::Running>,
    socket: PathBuf,
    config: PathBuf,
}

impl Node {
    async fn start(tag: &str) -> Node {
        Node::start_as(tag, &Variant::default()).await
    }

    async fn start_as(tag: &str, v: &Variant) -> Node {
        let dir = Dir::new(tag);
        let gws = gateways(&["web01", "web02", "web03"]).await;
        let socket = dir.join("admin.sock");
        let config = dir.join("portico.toml");
        std::fs::write(&config, config_text(&gws, &socket, v)).unwrap();
        let cfg = portico::config::load(&config).expect("test config valid");
        let mut running = portico::daemon::start_with(cfg, 2)
            .await
            .expect("daemon starts");
        running.serve_admin().await.expect("admin socket");
        Node {
            dir,
            gws,
            running: Some(running),
            socket,
            config,
        }
    }

    fn running(&self) -> &portico::daemon::Running {
        self.running.as_ref().expect("running")
    }

    fn write(&self, v: &Variant) {
        std::fs::write(&self.config, config_text(&self.gws, &self.socket, v)).unwrap();
    }

    fn tcp(&self) -> SocketAddr {
        self.running()
            .local_addr("rdgw-https")
            .expect("tcp service")
    }

    async fn client(&self) -> AdminClient {
        AdminClient::connect(&self.socket)
            .await
            .expect("admin connect")
    }

    async fn status(&self) -> Status {
        match self.client().await.call(&Request::Status).await.unwrap() {
            Reply::Status(s) => s,
            other => panic!("status: {other:?}"),
        }
    }

    async fn call(&self, r: Request) -> Reply {
        self.client().await.call(&r).await.expect("reply")
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(1)).await;
        }
        for g in &self.gws {
            g.kill().await;
        }
    }
}

/// Runs the real `portico` binary with `args` (off the runtime's threads).
async fn portico(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(&args)
            .env("PORTICO_LOG", "warn")
            .output()
            .expect("portico runs")
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> (String, String, i32) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        o.status.code().unwrap_or(-1),
    )
}

fn backend<'a>(s: &'a Status, name: &str) -> &'a portico::admin::proto::BackendStatus {
    s.backends.iter().find(|b| b.name == name).expect("backend")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_runs_every_command_and_reports_errors_and_a_closed_socket() {
    let node = Node::start("ctl").await;
    let sock = node.socket.to_str().unwrap().to_string();
    let s = ["--socket", sock.as_str()];

    // The socket is the owner's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&node.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "admin socket mode {mode:o}");

    // The first probes land within a tenth of the interval; wait for them (bounded).
    let until = Instant::now() + Duration::from_secs(5);
    while node
        .status()
        .await
        .backends
        .iter()
        .any(|b| b.last_probe.is_none())
    {
        assert!(Instant::now() < until, "no probe result within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Some traffic first, so the table has numbers in it.
    let vip = node.tcp();
    for n in 2..8 {
        which_gateway(source(n), vip).await.unwrap();
    }
    let o = portico(&[&["ctl", "status"][..], &s].concat()).await;
    let (out, err, code) = text(&o);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "node lb-test",
        "vrrp not configured",
        "rdgw-https",
        "rdgw-udp",
        "web01",
        "web02",
        "web03",
        "LAST PROBE",
        "tcp healthy",
    ] {
        assert!(out.contains(needle), "status lacks {needle:?}:\n{out}");
    }
    // Found through --config as well, as JSON.
    let cfg = node.config.to_str().unwrap().to_string();
    let o = portico(&["ctl", "--config", &cfg, "status", "--json"]).await;
    let (out, err, code) = text(&o);
    assert_eq!(code, 0, "{err}");
    let st: Reply = serde_json::from_str(&out).expect("status --json is a reply");
    let Reply::Status(st) = st else {
        panic!("{out}")
    };
    let total: u64 = st.backends.iter().map(|b| b.connections_total).sum();
    assert_eq!(total, 6, "six connections relayed: {out}");
    let pinned: usize = st.backends.iter().map(|b| b.affinity_entries).sum();
    assert_eq!(pinned, 6, "six clients pinned: {out}");

    let o = portico(&[&["ctl", "drain", "web01"][..], &s].concat()).await;
    let (out, err, code) = text(&o);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("web01: drain (was enabled)") && out.contains("connections remain"),
        "{out}"
    );
    assert_eq!(backend(&node.status().await, "web01").admin, "drain");

    let o = portico(&[&["ctl", "disable", "web02", "--kill"][..], &s].concat()).await;
    let (out, err, code) = text(&o);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("web02: disabled (was enabled); established connections closed"),
        "{out}"
    );

    for b in ["web01", "web02"] {
        let o = portico(&[&["ctl", "enable", b][..], &s].concat()).await;
        assert_eq!(text(&o).2, 0, "{:?}", text(&o));
    }
    let st = node.status().await;
    assert!(st.backends.iter().all(|b| b.admin == "enabled"), "{st:?}");

    let o = portico(&[&["ctl", "reload"][..], &s].concat()).await;
    let (out, err, code) = text(&o);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("reloaded") && out.contains("portico.toml"),
        "{out}"
    );

    let o = portico(
        &[
            &["ctl", "watch", "--count", "2", "--interval-ms", "100"][..],
            &s,
        ]
        .concat(),
    )
    .await;
    let (out, err, code) = text(&o);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("node lb-test").count(), 2, "{out}");

    // Error replies: exit 1 and say what is wrong.
    for (args, needles) in [
        (
            vec!["ctl", "drain", "web09"],
            vec!["no backend named \"web09\"", "known: web01, web02, web03"],
        ),
        (
            vec!["ctl", "disable", "nope"],
            vec!["\"nope\"", "known: web01, web02, web03"],
        ),
        (vec!["ctl", "enable", "web4"], vec!["\"web4\""]),
        (
            vec!["ctl", "vrrp", "demote"],
            vec!["vrrp: not configured on this node"],
        ),
        (
            vec!["ctl", "vrrp", "resume"],
            vec!["vrrp: not configured on this node"],
        ),
    ] {
        let o = portico(&[&args[..], &s].concat()).await;
        let (_, err, code) = text(&o);
        assert_eq!(code, 1, "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: {err}");
        }
    }

    // Malformed and oversized requests get an error reply, never a dropped daemon.
    let stream = tokio::net::UnixStream::connect(&node.socket).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    for bad in [
        "status\n",
        "{\"cmd\":\"explode\"}\n",
        "\n",
        "{\"cmd\":\"drain\"}\n",
    ] {
        wr.write_all(bad.as_bytes()).await.unwrap();
        line.clear();
        rd.read_line(&mut line).await.unwrap();
        let r: Reply = serde_json::from_str(&line).expect("reply is JSON");
        assert!(matches!(r, Reply::Error(_)), "{bad:?} → {line}");
    }
    wr.write_all(b"{\"cmd\":\"status\"}\n").await.unwrap();
    line.clear();
    rd.read_line(&mut line).await.unwrap();
    assert!(
        line.contains("\"reply\":\"status\""),
        "same connection still served: {line}"
    );
    wr.write_all(&vec![b'x'; 10_000]).await.unwrap();
    line.clear();
    rd.read_line(&mut line).await.unwrap();
    assert!(line.contains("longer than 4096"), "{line}");

    // A second daemon may not take the socket over; a world-writable directory is refused.
    let e = portico::admin::bind(&node.socket).expect_err("socket in use");
    assert!(
        e.to_string().contains("another process is listening"),
        "{e}"
    );
    let open = node.dir.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let e = portico::admin::bind(&open.join("a.sock")).expect_err("world-writable dir");
    assert!(e.to_string().contains("world-writable"), "{e}");
    let e = portico::admin::bind(&node.dir.join("missing/a.sock")).expect_err("no dir");
    assert!(e.to_string().contains("does not exist"), "{e}");

    // A stale socket file (nothing listening) is refused by ctl with exit 2, and replaced
    // by a daemon at start.
    let stale = node.dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let o = portico(&["ctl", "--socket", stale.to_str().unwrap(), "status"]).await;
    let (_, err, code) = text(&o);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("refuses connections"), "{err}");
    let l = portico::admin::bind(&stale).expect("stale socket replaced");
    drop(l);

    let socket = node.socket.clone();
    node.stop().await;
    let o = portico(&["ctl", "--socket", socket.to_str().unwrap(), "status"]).await;
    let (_, err, code) = text(&o);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no admin socket at"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_bad_configs_are_refused_by_name_and_the_node_keeps_serving() {
    let node = Node::start("bad").await;
    let vip = node.tcp();
    let good = config_text(&node.gws, &node.socket, &Variant::default());
    let path = node.config.display().to_string();
    // A port someone else holds: the config is valid, the bind is not.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    let service = |body: &str| {
        good.replace(
            "\n[pool.gateways]\n",
            &format!("\n[[service]]\n{body}\n\n[pool.gateways]\n"),
        )
    };
    let line_of = |text: &str, needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .expect("needle in text")
    };
    // (config text, the line the fault is on (0: none), a fragment the reply names)
    let mut cases: Vec<(String, usize, String)> = Vec::new();
    let t = good.replace("interval_ms = 1000", "interval_ms = \"1000\"");
    cases.push((
        t.clone(),
        line_of(&t, "interval_ms"),
        "pool.gateways.health.interval_ms".into(),
    ));
    let t = good.replace("[pool.gateways]\n", "[pool.gateways\n");
    cases.push((t.clone(), line_of(&t, "[pool.gateways"), String::new()));
    let t = good.replace("protocol = \"udp\"", "protocol = \"sctp\"");
    cases.push((t.clone(), line_of(&t, "sctp"), "service[1].protocol".into()));
    let t = good.replace(
        "pool = \"gateways\"\naffinity = { group = \"rdgw\" }\n\n[[service]]",
        "pool = \"nowhere\"\naffinity = { group = \"rdgw\" }\n\n[[service]]",
    );
    cases.push((t.clone(), line_of(&t, "nowhere"), "service[0].pool".into()));
    let t = good.replacen(
        &format!("listen = \"127.0.0.1:{}\"", ports()[0]),
        "listen = \"127.0.0.1:99999\"",
        1,
    );
    cases.push((t.clone(), line_of(&t, "99999"), "service[0].listen".into()));
    let t = good.replace("timeout_ms = 500", "timeout_ms = 500\nrise = 0");
    cases.push((
        t.clone(),
        line_of(&t, "rise = 0"),
        "pool.gateways.health.rise".into(),
    ));
    let t = good.replace(", weight = 1 }", ", weight = 0 }");
    cases.push((t.clone(), line_of(&t, "weight = 0"), "weight".into()));
    let t = good.replace("[node]\n", "[node]\ncolour = \"blue\"\n");
    cases.push((t.clone(), line_of(&t, "colour"), "node.colour".into()));
    let t = service(&format!(
        "name = \"rdgw-https\"\nlisten = \"127.0.0.1:{}\"\npool = \"gateways\"",
        ports()[3]
    ));
    cases.push((t.clone(), 0, "rdgw-https".into()));
    let t = service(&format!(
        "name = \"squatted\"\nlisten = \"{taken}\"\npool = \"gateways\"\naffinity = {{ group = \"rdgw\" }}"
    ));
    cases.push((
        t,
        0,
        format!("service squatted: cannot listen on tcp {taken}"),
    ));
    assert_eq!(cases.len(), 10);

    let mut admin = node.client().await;
    let gen0 = node.status().await.generation;
    for (i, (t, line, needle)) in cases.iter().enumerate() {
        std::fs::write(&node.config, t).unwrap();
        let r = admin.call(&Request::Reload).await.unwrap();
        let Reply::Error(e) = r else {
            panic!("case {i}: reload accepted:\n{t}")
        };
        assert!(e.error.contains("reload refused"), "case {i}: {e:?}");
        let all = e.details.join("\n");
        if *line > 0 {
            assert!(
                all.contains(&format!("{path}:{line}:")),
                "case {i}: fault not placed at {path}:{line}: {all}"
            );
        }
        assert!(
            all.contains(needle.as_str()),
            "case {i}: {needle:?} not named: {all}"
        );
        // Still serving with the old config.
        let g = which_gateway(source(2 + i as u8), vip)
            .await
            .expect("still serving");
        assert!(g.starts_with("web"), "{g}");
    }
    let st = node.status().await;
    assert_eq!(st.generation, gen0, "no bad config was applied");
    assert_eq!(st.services.len(), 2);
    let m = scrape(node.running().metrics_addr.unwrap()).await;
    assert_eq!(metric(&m, "portico_config_reload_failures_total"), 10.0);
    assert_eq!(
        metric(&m, "portico_config_reloads_total{result=\"failure\"}"),
        10.0
    );
    // The ctl binary prints the fault too.
    let o = portico(&["ctl", "--socket", node.socket.to_str().unwrap(), "reload"]).await;
    let (_, err, code) = text(&o);
    assert_eq!(code, 1);
    assert!(err.contains("cannot listen on tcp"), "{err}");
    drop(squatter);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_survive_twenty_reloads() {
    let node = Node::start("hold").await;
    let vip = node.tcp();
    let mut held = Vec::new();
    for i in 0..200u32 {
        let src = source(2 + (i % 200) as u8);
        let mut tls = tls_from(src, vip).await.expect("connect");
        let name = ask(&mut tls).await.expect("first ask");
        held.push((tls, name));
    }
    let with_extra = Variant {
        extra_services: format!("\n[[service]]\nname = \"extra\"\nlisten = \"127.0.0.1:{}\"\nprotocol = \"tcp\"\npool = \"gateways\"\naffinity = {{ group = \"rdgw\" }}\n", ports()[3]),
        web03_weight: 2,
        ..Variant::default()
    };
    let plain = Variant::default();
    let mut admin = node.client().await;
    for i in 0..20 {
        node.write(if i % 2 == 0 { &with_extra } else { &plain });
        match admin.call(&Request::Reload).await.unwrap() {
            Reply::Reload(r) => assert!(r.warnings.is_empty(), "{r:?}"),
            other => panic!("reload {i}: {other:?}"),
        }
    }
    let st = node.status().await;
    let active: i64 = st.backends.iter().map(|b| b.active_connections).sum();
    assert_eq!(active, 200, "every connection still open after 20 reloads");
    for (i, (tls, name)) in held.iter_mut().enumerate() {
        let again = tokio::time::timeout(Duration::from_secs(5), ask(tls))
            .await
            .unwrap_or_else(|_| panic!("connection {i} stalled"))
            .unwrap_or_else(|e| panic!("connection {i} broken: {e}"));
        assert_eq!(&again, name, "connection {i} relays to its gateway");
    }
    drop(held);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_opens_added_services_closes_removed_ones_and_keeps_admin_state() {
    let node = Node::start("svc").await;
    let vip = node.tcp();
    match node
        .call(Request::Drain {
            backend: "web01".into(),
        })
        .await
    {
        Reply::Admin(a) => assert_eq!(a.admin, "drain"),
        other => panic!("{other:?}"),
    }
    match node
        .call(Request::Disable {
            backend: "web02".into(),
            kill: false,
        })
        .await
    {
        Reply::Admin(a) => assert_eq!(a.admin, "disabled"),
        other => panic!("{other:?}"),
    }
    let extra = |listen: &str| {
        Variant {
        extra_services: format!("\n[[service]]\nname = \"extra\"\nlisten = \"{listen}\"\nprotocol = \"tcp\"\npool = \"gateways\"\naffinity = {{ group = \"rdgw\" }}\n"),
        web03_weight: 3,
        ..Variant::default()
    }
    };
    node.write(&extra(&format!("127.0.0.1:{}", ports()[3])));
    let r = node.call(Request::Reload).await;
    let Reply::Reload(r) = r else { panic!("{r:?}") };
    assert_eq!(r.added, vec!["extra".to_string()]);
    assert!(r.health_restarted, "pool changed (weight)");
    let extra_addr = node.running().local_addr("extra").expect("extra listens");
    assert_eq!(
        node.running().local_addr("rdgw-https"),
        Some(vip),
        "kept service kept its socket"
    );
    // The admin states survived, and the new service obeys them: only web03 takes new clients.
    let st = node.status().await;
    assert_eq!(backend(&st, "web01").admin, "drain");
    assert_eq!(backend(&st, "web02").admin, "disabled");
    for n in 100..110 {
        assert_eq!(which_gateway(source(n), extra_addr).await.unwrap(), "web03");
    }
    // A changed address is a remove and an add.
    node.write(&extra(&format!("127.0.0.3:{}", ports()[3])));
    let r = node.call(Request::Reload).await;
    let Reply::Reload(r) = r else { panic!("{r:?}") };
    assert_eq!(
        (r.added.clone(), r.removed.clone()),
        (vec!["extra".to_string()], vec!["extra".to_string()])
    );
    let moved = node.running().local_addr("extra").unwrap();
    assert_eq!(moved.ip().to_string(), "127.0.0.3");
    assert!(
        tokio::net::TcpStream::connect(extra_addr).await.is_err(),
        "old address closed"
    );
    assert_eq!(which_gateway(source(120), moved).await.unwrap(), "web03");
    // Removed: refuses.
    node.write(&Variant {
        web03_weight: 3,
        ..Variant::default()
    });
    let r = node.call(Request::Reload).await;
    let Reply::Reload(r) = r else { panic!("{r:?}") };
    assert_eq!(r.removed, vec!["extra".to_string()]);
    let mut refused = false;
    for _ in 0..20 {
        if tokio::net::TcpStream::connect(moved).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "removed service still accepts");
    assert_eq!(node.running().local_addr("extra"), None);
    let st = node.status().await;
    assert_eq!(backend(&st, "web01").admin, "drain");
    assert_eq!(backend(&st, "web02").admin, "disabled");

    // A backend added by reload gets a health task (its probe shows in status) and clients;
    // removed again, it leaves status.
    let gw4 = gateways(&["web04"]).await;
    node.write(&Variant {
        web03_weight: 3,
        web04: Some(gw4[0].addr),
        ..Variant::default()
    });
    let r = node.call(Request::Reload).await;
    assert!(matches!(r, Reply::Reload(_)), "{r:?}");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let st = node.status().await;
        if backend(&st, "web04").last_probe.is_some() {
            assert_eq!(backend(&st, "web04").health, "up");
            break;
        }
        assert!(Instant::now() < until, "web04 never probed: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen = std::collections::HashSet::new();
    for n in 130..170 {
        seen.insert(which_gateway(source(n), vip).await.unwrap());
    }
    assert!(seen.contains("web04"), "new clients reach web04: {seen:?}");
    assert!(
        !seen.contains("web01") && !seen.contains("web02"),
        "{seen:?}"
    );
    node.write(&Variant {
        web03_weight: 3,
        ..Variant::default()
    });
    let r = node.call(Request::Reload).await;
    assert!(matches!(r, Reply::Reload(_)), "{r:?}");
    let st = node.status().await;
    assert!(st.backends.iter().all(|b| b.name != "web04"), "{st:?}");
    gw4[0].kill().await;
    node.stop().await;
}

/// Runs `portico drill ...` against the node; returns stdout after checking exit 0.
async fn drill(node: &Node, args: &[&str]) -> String {
    let sock = node.socket.to_str().unwrap();
    let o = portico(&[&["drill"][..], args, &["--socket", sock, "--clients", "24"]].concat()).await;
    let (out, err, code) = text(&o);
    assert_eq!(code, 0, "drill {args:?} failed:\n{out}\n{err}");
    eprintln!("portico drill {args:?}:\n{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_disable_drills_pass_print_a_timeline_and_restore() {
    let node = Node::start("drill").await;
    let t0 = Instant::now();
    let out = drill(&node, &["drain", "web01"]).await;
    for needle in [
        "+0.",
        "drain web01",
        "new clients →",
        "web01 connections 0",
        "enable web01 (restored)",
        "gap:",
        "connections lost: 0",
        "clients moved:",
        "ok    no new client sent to web01",
        "ok    clients pinned to web01 still reach it",
        "result: PASS",
    ] {
        assert!(out.contains(needle), "drain drill lacks {needle:?}:\n{out}");
    }
    let out = drill(&node, &["disable", "web02"]).await;
    for needle in [
        "disable web02",
        "web02 gets nothing",
        "result: PASS",
        "enable web02 (restored)",
    ] {
        assert!(
            out.contains(needle),
            "disable drill lacks {needle:?}:\n{out}"
        );
    }
    let out = drill(&node, &["disable", "web03", "--kill"]).await;
    assert!(
        out.contains("closed by kill") || out.contains("no existing client"),
        "{out}"
    );
    assert!(
        out.contains("kill closed every connection to web03") && out.contains("result: PASS"),
        "{out}"
    );
    let st = node.status().await;
    assert!(
        st.backends.iter().all(|b| b.admin == "enabled"),
        "restored: {st:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "drills took {:?}",
        t0.elapsed()
    );

    // A drill that cannot hold: nothing else to move clients to.
    for b in ["web02", "web03"] {
        node.call(Request::Disable {
            backend: b.into(),
            kill: false,
        })
        .await;
    }
    let o = portico(&[
        "drill",
        "drain",
        "web01",
        "--socket",
        node.socket.to_str().unwrap(),
    ])
    .await;
    let (out, err, code) = text(&o);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no other eligible backend"), "{err}");
    // vip-handover names the missing VRRP and fails.
    let vip = node.tcp().to_string();
    let o = portico(&[
        "drill",
        "vip-handover",
        "--target",
        &vip,
        "--socket",
        node.socket.to_str().unwrap(),
    ])
    .await;
    let (out, _, code) = text(&o);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("vrrp: not configured on this node"), "{out}");
    node.stop().await;
}

/// Kills the child on drop (by its PID), so a failed assertion leaves no daemon behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_portico_run_and_a_bad_file_is_logged_with_its_line() {
    use std::io::BufRead;
    let dir = Dir::new("hup");
    let gws = gateways(&["web01", "web02", "web03"]).await;
    let socket = dir.join("admin.sock");
    let config = dir.join("portico.toml");
    std::fs::write(&config, config_text(&gws, &socket, &Variant::default())).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portico"));
    cmd.args(["run", "--workers", "2", "--config"])
        .arg(&config)
        .env("PORTICO_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = Child(cmd.spawn().expect("portico run"));
    let err = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let wait_for = |needle: &str| -> String {
        let until = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => seen.push(l),
                Err(_) => panic!("no log line with {needle:?}: {seen:#?}"),
            }
        }
    };
    wait_for("admin socket listening");
    let pid = child.0.id() as libc::pid_t;
    let hup = || {
        // SAFETY: kill(2) on our own child's PID.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    };

    // A bad file: refused, the log names file:line and field, the node keeps its config.
    let bad = config_text(&gws, &socket, &Variant::default())
        .replace("timeout_ms = 500", "timeout_ms = 500\nfall = -1");
    let line = bad.lines().position(|l| l == "fall = -1").unwrap() + 1;
    std::fs::write(&config, &bad).unwrap();
    hup();
    let l = wait_for("config.reload refused");
    assert!(
        l.contains(&format!("{}:{line}:", config.display())) && l.contains("health.fall"),
        "{l}"
    );

    // A good file with one more service: it listens after the SIGHUP.
    let extra = Variant {
        extra_services: format!("\n[[service]]\nname = \"extra\"\nlisten = \"127.0.0.1:{}\"\nprotocol = \"tcp\"\npool = \"gateways\"\naffinity = {{ group = \"rdgw\" }}\n", ports()[3]),
        ..Variant::default()
    };
    std::fs::write(&config, config_text(&gws, &socket, &extra)).unwrap();
    hup();
    wait_for("config.reload applied");
    let addr: SocketAddr = format!("127.0.0.1:{}", ports()[3]).parse().unwrap();
    assert_eq!(
        which_gateway(source(50), addr).await.unwrap().len(),
        5,
        "the added service relays"
    );
    let r = portico::admin::client::request(&socket, &Request::Status)
        .await
        .unwrap();
    let Reply::Status(st) = r else {
        panic!("{r:?}")
    };
    assert_eq!(st.services.len(), 3);
    // SIGTERM: drains, removes its socket and exits 0.
    // SAFETY: kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::task::spawn_blocking(move || {
        let s = child.0.wait();
        (s, child)
    })
    .await
    .unwrap()
    .0
    .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "admin socket removed at exit");
    for g in &gws {
        g.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_drill_on_a_tcp_only_farm_follows_clients_by_counters() {
    let node = Node::start_as(
        "tcponly",
        &Variant {
            no_udp: true,
            ..Variant::default()
        },
    )
    .await;
    let out = drill(&node, &["drain", "web01"]).await;
    for needle in [
        "drain web01",
        "ok    no new client sent to web01 (UDP 0 of 24, TCP 0)",
        "ok    new TCP connections of pinned clients reach web01",
        "result: PASS",
    ] {
        assert!(
            out.contains(needle),
            "tcp-only drain drill lacks {needle:?}:\n{out}"
        );
    }
    // The counters did tell who was where: some existing client was on web01.
    assert!(!out.contains("no existing client was pinned"), "{out}");
    assert!(!out.contains("?"), "every client attributed: {out}");
    node.stop().await;
}
