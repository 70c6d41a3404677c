//! The systemd side of `portico run`: the real binary reports READY=1, STATUS=, WATCHDOG=1 and
//! STOPPING=1 to a notify socket the test owns, as systemd would see them; and the shipped unit
//! passes `systemd-analyze verify` and scores an exposure of at most 2.0.

mod common;

use std::io::Read;

use common::{Proc, TempDir};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every datagram is one notification: lines of KEY=VALUE.
fn recv(sock: &UnixDatagram) -> Option<String> {
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            None
        }
        Err(e) => panic!("notify socket: {e}"),
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn stderr_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}

/// Writes a one-service config (a live backend, metrics off) and returns it with the service
/// address; the backend listener must be kept alive by the caller.
fn write_config(dir: &Path, backend: &TcpListener) -> (PathBuf, SocketAddr) {
    let service: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.join("portico.toml");
    std::fs::write(
        &config,
        format!(
            r#"[node]
name = "sd-test"

[[service]]
name = "web"
listen = "{service}"
pool = "p"

[pool.p]
backends = [{{ name = "b1", address = "{backend}" }}]

[pool.p.health]
checks = ["tcp"]
interval_ms = 500
timeout_ms = 400

[balancer]
drain_timeout_s = 1

[metrics]
listen = "off"

[admin]
socket = "{admin}"
"#,
            backend = backend.local_addr().unwrap(),
            admin = dir.join("admin.sock").display(),
        ),
    )
    .unwrap();
    (config, service)
}

fn spawn_run(dir: &Path, config: &Path, notify_socket: &std::ffi::OsStr) -> Proc {
    let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
    Proc(
        Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(["run", "--workers", "1", "--config"])
            .arg(config)
            .env("NOTIFY_SOCKET", notify_socket)
            // 1 s: pings every 0.5 s.
            .env("WATCHDOG_USEC", "1000000")
            .env_remove("WATCHDOG_PID")
            .env("PORTICO_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("portico binary"),
    )
}

/// The first notification must be READY=1 with a STATUS= line, and when it arrives the
/// service must already accept.
fn expect_ready(sock: &UnixDatagram, service: SocketAddr, dir: &Path) {
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let first = recv(sock)
        .unwrap_or_else(|| panic!("no notification within 20 s; stderr:\n{}", stderr_of(dir)));
    let accepted = TcpStream::connect_timeout(&service, Duration::from_millis(500));
    assert!(
        has_line(&first, "READY=1"),
        "first notification is READY=1, got {first:?}"
    );
    assert!(
        accepted.is_ok(),
        "READY=1 arrived but {service} does not accept: {accepted:?}"
    );
    assert!(
        has_line(&first, "STATUS=serving 1 service, 1/1 backends up"),
        "READY=1 carries a STATUS= line, got {first:?}"
    );
}

/// SIGTERM: STOPPING=1, then a clean exit after the drain.
fn expect_stopping(mut child: Proc, sock: &UnixDatagram, dir: &Path) {
    let pid = child.0.id() as libc::pid_t;
    // SAFETY: kill(2) on the PID of the child this test spawned and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stopping = false;
    while Instant::now() < deadline && !stopping {
        if let Some(m) = recv(sock) {
            stopping = has_line(&m, "STOPPING=1");
        }
    }
    assert!(
        stopping,
        "no STOPPING=1 after SIGTERM; stderr:\n{}",
        stderr_of(dir)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "portico did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "exit {status}; stderr:\n{}",
        stderr_of(dir)
    );
}

#[test]
fn run_notifies_ready_after_bind_pings_watchdog_and_says_stopping() {
    let dir = TempDir::new("sdnotify");
    let notify_path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    // A backend that accepts (the kernel completes connects into the backlog).
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let (config, service) = write_config(&dir.0, &backend);
    let child = spawn_run(&dir.0, &config, notify_path.as_os_str());
    expect_ready(&sock, service, &dir.0);

    // Watchdog pings repeat at about half of WATCHDOG_USEC.
    let start = Instant::now();
    let mut pings = 0;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while start.elapsed() < Duration::from_millis(2600) {
        if let Some(m) = recv(&sock) {
            assert!(!has_line(&m, "READY=1"), "READY=1 sent twice: {m:?}");
            if has_line(&m, "WATCHDOG=1") {
                pings += 1;
            }
        }
    }
    assert!(
        (3..=8).contains(&pings),
        "expected about 5 WATCHDOG=1 in 2.6 s with WATCHDOG_USEC=1s, got {pings}"
    );

    // The backend dies: after `fall` failed probes the STATUS= line says so.
    drop(backend);
    let want = "STATUS=serving 1 service, 0/1 backends up; NO eligible backend in pool p";
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while Instant::now() < deadline && !seen.iter().any(|m: &String| has_line(m, want)) {
        if let Some(m) = recv(&sock) {
            seen.push(m);
        }
    }
    assert!(
        seen.iter().any(|m| has_line(m, want)),
        "no {want:?} after the backend died; got {seen:?}"
    );
    expect_stopping(child, &sock, &dir.0);
}

/// systemd in a container may hand out an abstract socket (`NOTIFY_SOCKET=@name`).
#[test]
fn run_notifies_an_abstract_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    let dir = TempDir::new("sdabstract");
    let name = format!("portico-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let (config, service) = write_config(&dir.0, &backend);
    let child = spawn_run(&dir.0, &config, std::ffi::OsStr::new(&format!("@{name}")));
    expect_ready(&sock, service, &dir.0);
    expect_stopping(child, &sock, &dir.0);
}

#[test]
fn run_without_notify_socket_serves_and_sends_nothing() {
    let dir = TempDir::new("sdnone");
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free_port();
    let service: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.0.join("portico.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"sd-none\"\n[[service]]\nname = \"web\"\nlisten = \"{service}\"\npool = \"p\"\n[pool.p]\nbackends = [{{ name = \"b1\", address = \"{}\" }}]\n[balancer]\ndrain_timeout_s = 1\n[metrics]\nlisten = \"off\"\n[admin]\nsocket = \"{}\"\n",
            backend.local_addr().unwrap(),
            dir.0.join("admin.sock").display()
        ),
    )
    .unwrap();
    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(["run", "--workers", "1", "--config"])
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .env("WATCHDOG_USEC", "1000000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&service, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "service never accepted");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the PID of the child this test spawned and still owns.
    assert_eq!(
        unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let out = loop {
        if child.0.try_wait().unwrap().is_some() {
            break child.0.wait().unwrap();
        }
        assert!(Instant::now() < deadline + Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(out.success(), "exit {out}; stderr:\n{err}");
    assert!(
        !err.contains("NOTIFY_SOCKET"),
        "no notify socket, no complaint about it:\n{err}"
    );
}

fn unit_text() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/portico.service");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The unit with ExecStart pointing at the binary under test (verify wants it to exist).
fn unit_for_analysis(dir: &Path) -> PathBuf {
    let text = unit_text();
    assert!(
        text.contains("ExecStart=/usr/bin/portico run --config /etc/portico/portico.toml"),
        "the shipped unit starts /usr/bin/portico run"
    );
    let text = text.replace(
        "ExecStart=/usr/bin/portico ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_portico")),
    );
    let p = dir.join("portico.service");
    std::fs::write(&p, text).unwrap();
    p
}

fn systemd_analyze() -> bool {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            eprintln!(
                "SKIP: systemd-analyze not installed (Debian package `systemd`; .ci/run installs it)"
            );
            false
        }
    }
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    if !systemd_analyze() {
        return;
    }
    let dir = TempDir::new("sdverify");
    let unit = unit_for_analysis(&dir.0);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify said:\n{said}"
    );
}

#[test]
fn unit_exposure_is_at_most_2_0() {
    if !systemd_analyze() {
        return;
    }
    let dir = TempDir::new("sdsecurity");
    let unit = unit_for_analysis(&dir.0);
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze security failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    eprintln!("systemd-analyze security --offline=true: exposure {score}");
    assert!(
        score <= 2.0,
        "exposure {score} > 2.0; what costs points:\n{}",
        text.lines()
            .filter(|l| l.contains('✗'))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Only the three capabilities, and the hardening the score relies on, stay in the unit.
    let unit = unit_text();
    let caps = "CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE";
    for want in [
        "Type=notify".to_string(),
        "ExecReload=/bin/kill -HUP $MAINPID".to_string(),
        format!("AmbientCapabilities={caps}"),
        format!("CapabilityBoundingSet={caps}"),
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET".to_string(),
        "SystemCallFilter=@system-service".to_string(),
        "RuntimeDirectory=portico".to_string(),
        "StateDirectory=portico".to_string(),
        "UMask=0077".to_string(),
    ] {
        assert!(
            unit.lines().any(|l| l == want),
            "unit lacks the line {want:?}"
        );
    }
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));
}

/// Under ProtectKernelTunables=yes /proc/sys is read-only: Portico must not rely on writing a
/// sysctl (IP_FREEBIND per socket replaces net.ipv4.ip_nonlocal_bind). A code line (not a
/// comment) naming /proc/sys is where such a write would start; reading one (the dsr
/// forwarder warns when IP forwarding is on) stays allowed.
#[test]
fn source_never_touches_proc_sys() {
    let mut hits = Vec::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for (n, l) in text.lines().enumerate() {
                    let code = l.trim_start();
                    let read_only = l.contains("read_to_string(");
                    if l.contains("/proc/sys") && !code.starts_with("//") && !read_only {
                        hits.push(format!("{}:{}: {}", p.display(), n + 1, l.trim()));
                    }
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "/proc/sys is read-only under the unit's ProtectKernelTunables=yes:\n{}",
        hits.join("\n")
    );
}

/// The unit runs Portico as an unprivileged user holding only CAP_NET_ADMIN, CAP_NET_RAW and
/// CAP_NET_BIND_SERVICE as ambient capabilities, with no_new_privs. The same confinement made
/// with setpriv(1): the daemon binds a port below 1024 and reports READY=1, holds exactly those
/// capabilities, and without them cannot bind at all.
#[test]
fn run_works_unprivileged_with_only_the_three_capabilities() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: not root, cannot drop to another user");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP: setpriv (util-linux) not installed");
        return;
    }
    let dir = TempDir::new("sdpriv");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let notify_path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    // A free privileged port: only CAP_NET_BIND_SERVICE lets the daemon bind it.
    let start = 800 + (std::process::id() % 150) as u16;
    let port = (start..1000)
        .chain(700..start)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024");
    let service: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The admin socket's directory belongs to the service user, as systemd's
    // RuntimeDirectory= would make it.
    let run_dir = dir.0.join("run");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&run_dir, Some(65534), Some(65534)).unwrap();
    let config = dir.0.join("portico.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"sd-priv\"\n[[service]]\nname = \"web\"\nlisten = \"{service}\"\npool = \"p\"\n[pool.p]\nbackends = [{{ name = \"b1\", address = \"{}\" }}]\n[pool.p.health]\nchecks = [\"tcp\"]\n[balancer]\ndrain_timeout_s = 1\n[metrics]\nlisten = \"off\"\n[admin]\nsocket = \"{}\"\n",
            backend.local_addr().unwrap(),
            run_dir.join("admin.sock").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let confine = |caps: &str| {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
            &format!("--inh-caps=-all{caps}"),
            &format!("--ambient-caps=-all{caps}"),
            &format!("--bounding-set=-all{caps}"),
            env!("CARGO_BIN_EXE_portico"),
            "run",
            "--workers",
            "1",
            "--config",
        ])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        c
    };

    // Without the capabilities: a privileged port is refused, and the error says so.
    let denied = confine("").stderr(Stdio::piped()).output().unwrap();
    let said = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success() && said.contains("Permission denied"),
        "binding {service} without CAP_NET_BIND_SERVICE must fail: {said}"
    );

    let stderr = std::fs::File::create(dir.0.join("stderr.log")).unwrap();
    let child = Proc(
        confine(",+net_admin,+net_raw,+net_bind_service")
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    expect_ready(&sock, service, &dir.0);
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    // Bits 10 (NET_BIND_SERVICE), 12 (NET_ADMIN), 13 (NET_RAW).
    assert_eq!(field("CapEff:"), "0000000000003400", "{status}");
    assert_eq!(field("CapBnd:"), "0000000000003400", "{status}");
    assert!(field("Uid:").starts_with("65534"), "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    expect_stopping(child, &sock, &dir.0);
}
