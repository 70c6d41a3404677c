//! The DNS alias against the running daemon, asked by the real `dig` (bind9-dnsutils): records
//! over UDP and TCP, EDNS sizes and truncation, every negative answer, zone transfers allowed
//! and refused, answers following gateway health, and malformed packets counted and survived.

mod common;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::process::Command;
use std::time::{Duration, Instant};

use portico::config::*;
use portico::daemon::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

const PROBE_INTERVAL: Duration = Duration::from_millis(500);

fn have_dig() -> bool {
    let ok = Command::new("dig").arg("-v").output().is_ok();
    if !ok {
        eprintln!("SKIP: dig not installed (Debian package bind9-dnsutils)");
    }
    ok
}

/// Runs dig against `server` and returns its output; `+time=2 +tries=1` bounds each call.
fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("<none>")
}

fn flags(out: &str) -> String {
    out.split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or("")
        .to_owned()
}

/// The data of every answer-section record of `rtype` (dig's default output).
fn answers(out: &str, rtype: &str) -> Vec<String> {
    let Some(section) = out.split(";; ANSWER SECTION:\n").nth(1) else {
        return Vec::new();
    };
    section
        .lines()
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(3) == Some(&rtype)).then(|| f[4..].join(" "))
        })
        .collect()
}

fn authority_has_soa(out: &str) -> bool {
    out.split(";; AUTHORITY SECTION:\n")
        .nth(1)
        .and_then(|s| s.lines().next())
        .is_some_and(|l| l.starts_with("lab.test.") && l.contains("\tSOA\t"))
}

/// A gateway stand-in that accepts TCP (enough for the `tcp` check) and can be stopped and
/// started again on the same port.
struct Gateway {
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Gateway {
    async fn start(addr: SocketAddr) -> Gateway {
        let l = TcpListener::bind(addr).await.expect("gateway bind");
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        Gateway {
            addr,
            task: Some(task),
        }
    }

    async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    async fn restart(&mut self) {
        *self = Gateway::start(self.addr).await;
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn fast_health() -> Health {
    Health {
        interval: PROBE_INTERVAL,
        intervals: portico::config::CheckIntervals::all(PROBE_INTERVAL),
        timeout: Duration::from_millis(200),
        rise: NonZeroU32::MIN,
        fall: NonZeroU32::MIN,
        ..common::health()
    }
}

fn pool(name: &str, backends: &[(&str, SocketAddr)]) -> Pool {
    Pool {
        name: name.into(),
        backends: backends
            .iter()
            .map(|(n, a)| Backend {
                name: (*n).into(),
                address: a.ip(),
                port: Some(a.port()),
                weight: NonZeroU32::MIN,
            })
            .collect(),
        health: fast_health(),
        table_size: 65537,
    }
}

fn dns_config() -> Dns {
    Dns {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        zone: "lab.test.".into(),
        ttl: 5,
        alias: "rdgw.lab.test.".into(),
        alias_services: vec!["vip-a".into(), "vip-b".into()],
        alias_addresses: Vec::new(),
        nameservers: vec!["ns.lab.test.".into()],
        soa: Soa {
            rname: "hostmaster.lab.test.".into(),
            refresh: 3600,
            retry: 600,
            expire: 1_209_600,
            minimum: 5,
        },
        allow_transfer: vec![IpPrefix {
            addr: "127.0.0.1".parse().unwrap(),
            len: 32,
        }],
    }
}

/// Two VIPs (127.0.0.2 and 127.0.0.3), each a TCP service over its own one-gateway pool, as
/// two active/active nodes would be; the alias carries both.
async fn two_vips(gw_a: SocketAddr, gw_b: SocketAddr) -> Running {
    let mut cfg = common::config(&[]);
    let svc = |name: &str, ip: &str, pool: &str| {
        let mut s = common::service(name, Protocol::Tcp, Duration::from_secs(60));
        s.listen = format!("{ip}:0").parse().unwrap();
        s.pool = pool.into();
        s.affinity.group = pool.into();
        s
    };
    cfg.services = vec![
        svc("vip-a", "127.0.0.2", "pool-a"),
        svc("vip-b", "127.0.0.3", "pool-b"),
    ];
    cfg.pools = vec![
        pool("pool-a", &[("web01", gw_a)]),
        pool("pool-b", &[("web02", gw_b)]),
    ];
    cfg.dns = Some(dns_config());
    portico::daemon::start_with(cfg, 1)
        .await
        .expect("daemon starts")
}

/// The alias's A records, asked over UDP in-process (decoded by hickory-proto) so that polling
/// costs microseconds, not a dig process per try.
async fn alias_a(sock: &UdpSocket, server: SocketAddr) -> Vec<String> {
    let Some(reply) = udp_ask(sock, server, &query(b"\x04rdgw\x03lab\x04test\x00", 1)).await else {
        return Vec::new();
    };
    let Ok(m) = hickory_proto::op::Message::from_vec(&reply) else {
        return Vec::new();
    };
    let mut got: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    got.sort();
    got
}

/// Polls until the alias answers exactly `want` (sorted), then confirms it with dig.
async fn wait_for(server: SocketAddr, want: &[&str], within: Duration) -> Option<Duration> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let start = Instant::now();
    while start.elapsed() < within {
        if alias_a(&sock, server).await == want {
            let took = start.elapsed();
            let mut by_dig = answers(&dig(server, &["rdgw.lab.test", "A"]), "A");
            by_dig.sort();
            assert_eq!(by_dig, want, "dig sees what the poll saw");
            return Some(took);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Two gateways, each the only one of its pool, and the daemon serving both VIPs.
async fn two_gateways_two_vips() -> (Gateway, Gateway, portico::daemon::Running) {
    let a = Gateway::start("127.0.0.1:0".parse().unwrap()).await;
    let b = Gateway::start("127.0.0.1:0".parse().unwrap()).await;
    let running = two_vips(a.addr, b.addr).await;
    (a, b, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_negatives_and_transfers() {
    if !have_dig() {
        return;
    }
    let (mut a, mut b, running) = two_gateways_two_vips().await;
    let dns = running.dns_addrs[0];

    // A over UDP (EDNS by default), and the same over TCP; names in any case.
    let out = dig(dns, &["rdgw.lab.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(flags(&out).contains("aa"), "{out}");
    let mut got = answers(&out, "A");
    got.sort();
    assert_eq!(got, ["127.0.0.2", "127.0.0.3"], "{out}");
    let out = dig(dns, &["RDGW.Lab.TEST", "A", "+tcp"]);
    assert!(
        out.contains("RDGW.Lab.TEST.\t\t5\tIN\tA"),
        "case echoed: {out}"
    );
    assert_eq!(answers(&out, "A").len(), 2, "{out}");
    // A gateway's own name.
    let out = dig(dns, &["web02.lab.test", "A", "+tcp"]);
    assert_eq!(answers(&out, "A"), ["127.0.0.1"], "{out}");
    // SOA and NS at the apex.
    let out = dig(dns, &["lab.test", "SOA"]);
    let soa = answers(&out, "SOA");
    assert_eq!(soa.len(), 1, "{out}");
    assert!(
        soa[0].starts_with("ns.lab.test. hostmaster.lab.test. "),
        "{out}"
    );
    let out = dig(dns, &["lab.test", "NS"]);
    assert_eq!(answers(&out, "NS"), ["ns.lab.test."], "{out}");
    let out = dig(dns, &["ns.lab.test", "A"]);
    assert_eq!(answers(&out, "A"), ["127.0.0.1"], "{out}");

    // The alias has no IPv6 VIP: NODATA with the SOA.
    let out = dig(dns, &["rdgw.lab.test", "AAAA"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(
        answers(&out, "AAAA").is_empty() && authority_has_soa(&out),
        "{out}"
    );
    // An existing name, a type it lacks.
    let out = dig(dns, &["web01.lab.test", "MX"]);
    assert_eq!(status(&out), "NOERROR");
    assert!(authority_has_soa(&out), "{out}");
    // A missing name in the zone.
    let out = dig(dns, &["nope.lab.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(
        flags(&out).contains("aa") && authority_has_soa(&out),
        "{out}"
    );
    // Outside the zone: not ours to answer.
    let out = dig(dns, &["example.com", "A"]);
    assert_eq!(status(&out), "REFUSED", "{out}");
    assert!(!flags(&out).contains("aa"), "{out}");
    // ANY: one synthesized HINFO (RFC 8482), not the whole node.
    let out = dig(dns, &["lab.test", "ANY"]);
    assert_eq!(answers(&out, "HINFO"), ["\"RFC8482\" \"\""], "{out}");
    assert_eq!(
        out.matches("\tIN\t").count(),
        2,
        "question + one record: {out}"
    );

    // AXFR from an allowed address: SOA first and last, every name in between.
    let out = dig(dns, &["lab.test", "AXFR"]);
    let records: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with(';') && !l.is_empty())
        .collect();
    assert!(
        records.first().is_some_and(|l| l.contains("\tSOA\t")),
        "{out}"
    );
    assert!(
        records.last().is_some_and(|l| l.contains("\tSOA\t")),
        "{out}"
    );
    for name in [
        "rdgw.lab.test.",
        "web01.lab.test.",
        "web02.lab.test.",
        "ns.lab.test.",
    ] {
        assert!(
            records.iter().any(|l| l.starts_with(name)),
            "{name} in {out}"
        );
    }
    // From an address not in allow_transfer.
    let out = dig(dns, &["-b", "127.0.0.9", "lab.test", "AXFR"]);
    assert!(out.contains("Transfer failed"), "{out}");
    // And never over UDP, even from an allowed address.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let reply = udp_ask(&sock, dns, &query(b"\x03lab\x04test\x00", 252)).await;
    assert_eq!(
        reply.map(|r| r[3] & 0xf),
        Some(5),
        "AXFR over UDP is REFUSED"
    );

    a.stop().await;
    b.stop().await;
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_follows_health() {
    if !have_dig() {
        return;
    }
    let (mut a, mut b, running) = two_gateways_two_vips().await;
    let dns = running.dns_addrs[0];
    let both = ["127.0.0.2", "127.0.0.3"];
    assert!(wait_for(dns, &both, Duration::from_secs(3)).await.is_some());
    let serial = |dns| answers(&dig(dns, &["lab.test", "SOA"]), "SOA")[0].clone();
    let serial_before = serial(dns);

    // Pool A's last gateway fails: VIP A leaves the answer within one probe interval (plus
    // its 10% jitter and some scheduling slack on a loaded machine).
    a.stop().await;
    let within = PROBE_INTERVAL.mul_f64(1.1) + Duration::from_millis(300);
    let took = wait_for(dns, &["127.0.0.3"], within).await;
    assert!(took.is_some(), "VIP A still answered after {within:?}");
    eprintln!("VIP A withdrawn after {took:?}");
    assert_ne!(
        serial(dns),
        serial_before,
        "the SOA serial moves with the answer"
    );

    // Both pools down: every VIP is answered again (better a VIP that may work than none).
    b.stop().await;
    assert!(
        wait_for(dns, &both, within).await.is_some(),
        "none serving: all answered"
    );

    // Pool A recovers: only VIP A.
    a.restart().await;
    let took = wait_for(dns, &["127.0.0.2"], within).await;
    assert!(took.is_some(), "VIP A not back within {within:?}");
    // And B: both.
    b.restart().await;
    assert!(wait_for(dns, &both, within).await.is_some());
    let m = common::scrape(running.metrics_addr.unwrap()).await;
    assert_eq!(common::metric(&m, "portico_dns_alias_addresses"), 2.0);
    a.stop().await;
    b.stop().await;
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_sizes_and_truncation() {
    if !have_dig() {
        return;
    }
    let gw = Gateway::start("127.0.0.1:0".parse().unwrap()).await;
    let mut cfg = common::config(&[("web01", gw.addr, 1)]);
    let mut d = dns_config();
    d.alias_services = vec!["rdgw-https".into()];
    // 40 AAAA records: about 1.1 KB, more than 512 bytes, less than 1232.
    d.alias_addresses = (1..=40)
        .map(|i| format!("2001:db8::{i:x}").parse().unwrap())
        .collect();
    cfg.dns = Some(d);
    let running = portico::daemon::start_with(cfg, 1).await.expect("daemon");
    let dns = running.dns_addrs[0];

    let out = dig(dns, &["rdgw.lab.test", "AAAA", "+bufsize=1232"]);
    assert_eq!(answers(&out, "AAAA").len(), 40, "{out}");
    assert!(!flags(&out).contains("tc"), "{out}");
    assert!(out.contains("udp: 1232"), "our OPT advertises 1232: {out}");
    // A client that takes 512 bytes gets TC and no records, then retries over TCP.
    let out = dig(dns, &["rdgw.lab.test", "AAAA", "+bufsize=512", "+ignore"]);
    assert!(flags(&out).contains("tc"), "{out}");
    assert!(answers(&out, "AAAA").is_empty(), "{out}");
    let out = dig(dns, &["rdgw.lab.test", "AAAA", "+noedns", "+ignore"]);
    assert!(flags(&out).contains("tc"), "no EDNS means 512: {out}");
    assert!(
        !out.contains("OPT PSEUDOSECTION"),
        "no OPT without EDNS: {out}"
    );
    let out = dig(dns, &["rdgw.lab.test", "AAAA", "+bufsize=512"]);
    assert_eq!(answers(&out, "AAAA").len(), 40, "dig's TCP retry: {out}");
    let out = dig(dns, &["rdgw.lab.test", "AAAA", "+tcp", "+noedns"]);
    assert_eq!(answers(&out, "AAAA").len(), 40, "{out}");
    // EDNS version 1 is answered BADVERS.
    let out = dig(dns, &["rdgw.lab.test", "A", "+edns=1", "+noednsneg"]);
    assert_eq!(status(&out), "BADVERS", "{out}");
    running.shutdown(Duration::from_secs(1)).await;
}

/// A query for `qname` (wire form) of `qtype`, id 0x4242.
fn query(qname: &[u8], qtype: u16) -> Vec<u8> {
    let mut q = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(qname);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

async fn udp_ask(sock: &UdpSocket, to: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    sock.send_to(packet, to).await.ok()?;
    let mut buf = [0u8; 2048];
    let r = tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await;
    match r {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries_are_counted_and_survived() {
    if !have_dig() {
        return;
    }
    let gw = Gateway::start("127.0.0.1:0".parse().unwrap()).await;
    let mut cfg = common::config(&[("web01", gw.addr, 1)]);
    let mut d = dns_config();
    d.alias_services = vec!["rdgw-https".into()];
    cfg.dns = Some(d);
    let running = portico::daemon::start_with(cfg, 1).await.expect("daemon");
    let dns = running.dns_addrs[0];
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // Dropped (nothing to answer with): empty datagram, a cut header, a response, a huge one.
    for p in [
        Vec::new(),
        vec![0x42, 0x42, 0x01],
        {
            let mut r = query(b"\x04rdgw\x03lab\x04test\x00", 1);
            r[2] |= 0x80;
            r
        },
        vec![0u8; 5000],
    ] {
        assert_eq!(
            udp_ask(&sock, dns, &p).await,
            None,
            "{} bytes dropped",
            p.len()
        );
    }
    // FORMERR with the query's id: a question cut short, a compression loop, two questions,
    // and an extended label type.
    let cut = query(b"\x04rdgw\x03lab\x04test\x00", 1)[..20].to_vec();
    let looped = query(b"\x04rdgw\xc0\x0c", 1);
    let mut two = query(b"\x04rdgw\x03lab\x04test\x00", 1);
    two[5] = 2;
    let ext = query(b"\x41rdgw\x00", 1);
    for p in [cut, looped, two, ext] {
        let r = udp_ask(&sock, dns, &p).await.expect("FORMERR answer");
        assert_eq!(&r[..2], &[0x42, 0x42]);
        assert_eq!(r[2] & 0x80, 0x80, "QR set");
        assert_eq!(r[3] & 0xf, 1, "FORMERR");
    }
    // Over TCP: a zero-length frame, and a frame longer than any query, end the connection.
    for frame in [vec![0u8, 0], vec![0xff, 0xff, 1, 2, 3]] {
        let mut s = TcpStream::connect(dns).await.unwrap();
        s.write_all(&frame).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("closed promptly")
            .unwrap_or(0);
        assert_eq!(n, 0, "no answer, connection closed");
    }

    // Still answering, and every reason counted.
    let out = dig(dns, &["rdgw.lab.test", "A"]);
    assert_eq!(answers(&out, "A"), ["127.0.0.1"], "{out}");
    let m = common::scrape(running.metrics_addr.unwrap()).await;
    let count = |reason: &str| {
        common::metric(
            &m,
            &format!("portico_dns_malformed_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(
        count("short"),
        3.0,
        "empty, cut header, zero-length TCP frame\n{m}"
    );
    assert_eq!(count("response"), 1.0);
    assert_eq!(count("oversized"), 2.0, "UDP 5000 bytes, TCP 65535");
    assert_eq!(count("truncated"), 1.0);
    assert_eq!(count("compression"), 1.0);
    assert_eq!(count("question_count"), 1.0);
    assert_eq!(count("label"), 1.0);
    assert_eq!(
        common::metric(
            &m,
            "portico_dns_queries_total{qtype=\"other\",rcode=\"formerr\"}"
        ),
        4.0
    );
    assert!(
        common::metric(
            &m,
            "portico_dns_queries_total{qtype=\"a\",rcode=\"noerror\"}"
        ) >= 1.0
    );
    assert!(m.contains("portico_dns_answer_duration_seconds_count{transport=\"udp\"}"));
    running.shutdown(Duration::from_secs(1)).await;
}

/// Kills the child on drop so a failing test leaves no process behind.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `portico lab` serves its zone on its DNS port (the README's lab table): the alias and the
/// gateways' SAN names.
#[test]
fn lab_answers_on_its_dns_port() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    if !have_dig() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("portico-dns-lab-{}", std::process::id()));
    // Base 12100: every lab port below the ephemeral range, apart from tests/binary.rs's 12000.
    let child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["lab", "--port-base", "12100", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn portico lab");
    let mut g = ChildGuard(child);
    let out = g.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut printed: Vec<String> = Vec::new();
    let t0 = Instant::now();
    while !printed.iter().any(|l| l.starts_with("Ctrl-C")) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "lab did not come up: {printed:?}"
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            printed.push(l);
        }
    }
    let all = printed.join("\n");
    assert!(all.contains("dns       127.0.0.1:12153"), "{all}");
    let dns: SocketAddr = "127.0.0.1:12153".parse().unwrap();
    let out = dig(dns, &["rdgw.lab.test", "A"]);
    assert_eq!(answers(&out, "A"), ["127.0.0.1"], "{out}");
    for gw in ["web01", "web02", "web03"] {
        let out = dig(dns, &[&format!("{gw}.lab.test"), "A", "+tcp"]);
        assert_eq!(answers(&out, "A"), ["127.0.0.1"], "{gw}: {out}");
    }
    drop(g);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A DNS address that cannot be bound fails the start (rather than a daemon without DNS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_dns_address_fails_the_start() {
    let taken_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken_tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for (addr, proto) in [
        (taken_udp.local_addr().unwrap(), "udp"),
        (taken_tcp.local_addr().unwrap(), "tcp"),
    ] {
        let mut cfg = common::config(&[]);
        let mut d = dns_config();
        d.alias_services = vec!["rdgw-https".into()];
        d.listen = vec![addr];
        cfg.dns = Some(d);
        let err = match portico::daemon::start_with(cfg, 1).await {
            Ok(r) => {
                r.shutdown(Duration::from_secs(1)).await;
                panic!("started on a taken {proto} address {addr}");
            }
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains(&format!("dns: cannot listen on {proto} {addr}")),
            "{err}"
        );
    }
}
