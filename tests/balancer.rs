//! The data plane on real loopback sockets: TLS clients from distinct source addresses
//! (127.0.0.2..) through the balancer to gateway stand-ins that answer with their own name.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(backends: &[(&str, std::net::SocketAddr, u32)]) -> portico::daemon::Running {
    portico::daemon::start(config(backends))
        .await
        .expect("daemon starts")
}

/// Three gateway stand-ins, web01..web03 with these weights, and the balancer in front.
async fn farm(weights: [u32; 3]) -> (Vec<portico::lab::StandIn>, portico::daemon::Running) {
    let gws = gateways(&["web01", "web02", "web03"]).await;
    let backends: Vec<(&str, std::net::SocketAddr, u32)> = ["web01", "web02", "web03"]
        .into_iter()
        .zip(&gws)
        .zip(weights)
        .map(|((name, gw), w)| (name, gw.addr, w))
        .collect();
    (gws, start(&backends).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_sticks_to_one_gateway_and_sources_spread_evenly() {
    let (_gws, d) = farm([1, 1, 1]).await;
    let vip = d.local_addr("rdgw-https").unwrap();

    // Stickiness: 20 connections from each of 5 sources, each source always the same gateway.
    for n in 2..7u8 {
        let first = which_gateway(source(n), vip).await.unwrap();
        for _ in 1..20 {
            assert_eq!(
                which_gateway(source(n), vip).await.unwrap(),
                first,
                "source {n} moved"
            );
        }
    }
    // Spread: 60 sources over 3 equal gateways, each within ±50% of a third.
    let mut count: HashMap<String, usize> = HashMap::new();
    for n in 2..62u8 {
        *count
            .entry(which_gateway(source(n), vip).await.unwrap())
            .or_default() += 1;
    }
    for g in ["web01", "web02", "web03"] {
        let c = count.get(g).copied().unwrap_or(0);
        assert!(
            (10..=30).contains(&c),
            "{g} got {c} of 60 sources: {count:?}"
        );
    }
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_two_gets_about_twice_the_share() {
    let (_gws, d) = farm([1, 2, 1]).await;
    let vip = d.local_addr("rdgw-https").unwrap();
    let mut count: HashMap<String, usize> = HashMap::new();
    for n in 2..=241u8 {
        *count
            .entry(which_gateway(source(n), vip).await.unwrap())
            .or_default() += 1;
    }
    let heavy = count["web02"] as f64;
    let light = (count["web01"] + count["web03"]) as f64 / 2.0;
    let ratio = heavy / light;
    assert!(
        (1.5..=2.7).contains(&ratio),
        "weight-2 share ratio {ratio:.2}: {count:?}"
    );
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_udp_flow_reaches_the_gateway_of_its_tcp_channels() {
    let (_gws, d) = farm([1, 1, 1]).await;
    let vip = d.local_addr("rdgw-https").unwrap();
    let udp = d.local_addr("rdgw-udp").unwrap();
    let mut seen = std::collections::HashSet::new();
    for n in 2..32u8 {
        // Half the clients open TCP first, half UDP first: the meeting must not depend on order.
        let (tcp_gw, udp_gw) = if n % 2 == 0 {
            let t = which_gateway(source(n), vip).await.unwrap();
            (t, udp_which(source(n), udp).await.unwrap())
        } else {
            let u = udp_which(source(n), udp).await.unwrap();
            (which_gateway(source(n), vip).await.unwrap(), u)
        };
        assert_eq!(
            tcp_gw, udp_gw,
            "source {n}: TCP on {tcp_gw}, UDP on {udp_gw}"
        );
        seen.insert(tcp_gw);
    }
    assert_eq!(
        seen.len(),
        3,
        "30 clients should use every gateway: {seen:?}"
    );
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_clients_retry_elsewhere_and_other_connections_live_on() {
    let gws = gateways(&["web01", "web02", "web03"]).await;
    let mut cfg = config(&[
        ("web01", gws[0].addr, 1),
        ("web02", gws[1].addr, 1),
        ("web03", gws[2].addr, 1),
    ]);
    // Only the data plane may notice the dead gateway here (retries, then passive checks): a
    // probe landing between the kill and the reconnects would take web02 out first and leave
    // nothing to retry.
    let slow = Duration::from_secs(600);
    cfg.pools[0].health.interval = slow;
    cfg.pools[0].health.intervals = portico::config::CheckIntervals::all(slow);
    let d = portico::daemon::start(cfg).await.expect("daemon starts");
    let vip = d.local_addr("rdgw-https").unwrap();

    // 30 clients with a kept-alive channel each.
    let mut chans = Vec::new();
    for n in 2..32u8 {
        let mut tls = tls_from(source(n), vip).await.unwrap();
        let gw = ask(&mut tls).await.unwrap();
        chans.push((n, gw, tls));
    }
    let victim = "web02";
    let victims: Vec<u8> = chans
        .iter()
        .filter(|c| c.1 == victim)
        .map(|c| c.0)
        .collect();
    assert!(!victims.is_empty(), "some client must be on {victim}");
    gws[1].kill().await;

    // Established channels on the other gateways are untouched.
    for (n, gw, tls) in chans.iter_mut().filter(|c| c.1 != victim) {
        assert_eq!(&ask(tls).await.unwrap(), gw, "client {n} lost its channel");
    }
    // The victim's clients reconnect and land on a live gateway, consistently.
    for &n in &victims {
        let now = which_gateway(source(n), vip).await.expect("retry succeeds");
        assert_ne!(now, victim);
        assert_eq!(
            which_gateway(source(n), vip).await.unwrap(),
            now,
            "client {n} should stay put"
        );
    }
    let m = scrape(d.metrics_addr.unwrap()).await;
    let retries = metric(&m, "portico_connect_retries_total{service=\"rdgw-https\"}");
    let refused =
        metric(&m, "portico_backend_connect_failures_total{backend=\"web02\",reason=\"refused\",service=\"rdgw-https\"}");
    // Passive health checking counts each refused connect toward `fall`: once web02 is down,
    // its former clients go straight to a live gateway without a retry.
    let fall = f64::from(common::health().fall.get());
    let expect = (victims.len() as f64).min(fall);
    assert!(retries >= expect, "retries {retries} < {expect}");
    assert!(refused >= expect, "refused {refused} < {expect}");
    if victims.len() as f64 >= fall {
        let up = metric(
            &m,
            "portico_backend_up{backend=\"web02\",pool=\"gateways\"}",
        );
        assert_eq!(up, 0.0, "passive checks took web02 out");
    }
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_connections_all_complete() {
    portico::balancer::raise_nofile_limit().unwrap();
    let (_gws, d) = farm([1, 1, 1]).await;
    let vip = d.local_addr("rdgw-https").unwrap();
    const N: usize = 2000;
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for i in 0..N {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let from = source(2 + (i % 250) as u8);
            // Bounded, so a handshake that never completes is reported with the others.
            let opened =
                match tokio::time::timeout(Duration::from_secs(60), tls_from(from, vip)).await {
                    Ok(r) => r,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("TLS through the balancer from {from} not open after 60 s"),
                    )),
                };
            // Every connection is open through the balancer at once before any finishes. A
            // connection that failed waits too, so one failure is reported, not a hang.
            barrier.wait().await;
            ask(&mut opened?).await
        }));
    }
    let mut ok = 0;
    let mut errors = Vec::new();
    let all = async {
        for t in tasks {
            match t.await {
                Ok(Ok(_)) => ok += 1,
                Ok(Err(e)) => errors.push(e.to_string()),
                Err(e) => errors.push(e.to_string()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(150), all)
        .await
        .expect("2000 connections within 150 s");
    assert_eq!(ok, N, "failed: {errors:?}");
    let m = scrape(d.metrics_addr.unwrap()).await;
    assert_eq!(
        metric(
            &m,
            "portico_connections_accepted_total{service=\"rdgw-https\"}"
        ),
        N as f64
    );
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_at_the_idle_timeout() {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let baddr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = backend.accept().await {
            held.push(s);
        }
    });
    let mut cfg = config(&[("web01", baddr, 1)]);
    cfg.services[0].idle_timeout = Duration::from_millis(700);
    let d = portico::daemon::start(cfg).await.unwrap();
    let mut c = tcp_from(source(2), d.local_addr("rdgw-https").unwrap())
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected EOF");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(600),
        "closed too early: {waited:?}"
    );
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_lets_open_connections_finish() {
    let gws = gateways(&["web01"]).await;
    let d = start(&[("web01", gws[0].addr, 1)]).await;
    let vip = d.local_addr("rdgw-https").unwrap();
    let mut open = tls_from(source(2), vip).await.unwrap();
    assert_eq!(ask(&mut open).await.unwrap(), "web01");
    let stopping = tokio::spawn(d.shutdown(Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tcp_from(source(3), vip).await.is_err(),
        "a stopping balancer must not accept"
    );
    // The open connection still works during the drain, then closes; the drain ends with it.
    assert_eq!(ask(&mut open).await.unwrap(), "web01");
    open.shutdown().await.unwrap();
    drop(open);
    let left = tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("drain ends")
        .unwrap();
    assert_eq!(left, 0, "nothing should be cut by the drain timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_eligible_backend_is_counted_not_hung() {
    let gws = gateways(&["web01"]).await;
    let d = start(&[("web01", gws[0].addr, 1)]).await;
    d.controller
        .set_admin("web01", portico::snapshot::AdminState::Disabled)
        .unwrap();
    let vip = d.local_addr("rdgw-https").unwrap();
    let mut c = tcp_from(source(2), vip).await.unwrap();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut b))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let m = scrape(d.metrics_addr.unwrap()).await;
    assert_eq!(
        metric(
            &m,
            "portico_connections_failed_total{reason=\"no_backend\",service=\"rdgw-https\"}"
        ),
        1.0
    );
    let _ = c.write_all(b"x").await;
    d.shutdown(Duration::from_secs(1)).await;
}

/// Half-close passes through both ways. The backend answers with a banner and its FIN in one
/// go (the shape of a `Connection: close` response, which the relay detects without an extra
/// read): the client gets every byte, then EOF, and can still send; the backend gets that data,
/// then the client's FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_passes_through_both_ways() {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let baddr = backend.local_addr().unwrap();
    let banner: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let sent = banner.clone();
    let server = tokio::spawn(async move {
        let (mut s, _) = backend.accept().await.unwrap();
        s.write_all(&sent).await.unwrap();
        s.shutdown().await.unwrap();
        // Our sending half is closed; the client's data must still arrive, then its FIN.
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .expect("client FIN reaches the backend")
            .unwrap();
        got
    });
    let d = start(&[("web01", baddr, 1)]).await;
    let mut c = tcp_from(source(2), d.local_addr("rdgw-https").unwrap())
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got))
        .await
        .expect("backend FIN reaches the client")
        .unwrap();
    assert_eq!(got.len(), banner.len(), "every banner byte, then EOF");
    assert!(got == banner, "banner bytes intact");
    // The client's half is still open after the backend's FIN.
    c.write_all(b"still here").await.unwrap();
    c.shutdown().await.unwrap();
    let at_backend = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("backend done")
        .unwrap();
    assert_eq!(at_backend, b"still here");
    d.shutdown(Duration::from_secs(1)).await;
}

/// A backend stand-in that answers each connection with its name, then echoes what the
/// client sent once the client has finished sending.
async fn echo_after_eof(name: &'static str) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut got = Vec::new();
                if s.read_to_end(&mut got).await.is_ok() {
                    let _ = s.write_all(name.as_bytes()).await;
                    let _ = s.write_all(&got).await;
                }
            });
        }
    });
    (addr, task)
}

/// Sends `payload`, half-closes, and returns everything the far end answered.
async fn exchange(from: u8, to: std::net::SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut c = tcp_from(source(from), to).await.unwrap();
    c.write_all(payload).await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got))
        .await
        .expect("answer within 5 s")
        .unwrap();
    got
}

/// The first bytes a client sends are read at accept, before a backend is chosen, and go out
/// with the backend's handshake: they must survive a refused first choice (retry) and be
/// counted once, with the rest of a transfer too large to be read at accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_first_bytes_survive_a_retry_and_are_counted_once() {
    let (live, _live_task) = echo_after_eof("live\n").await;
    let (dead, dead_task) = echo_after_eof("dead\n").await;
    let mut cfg = config(&[("live", live, 1), ("dead", dead, 1)]);
    // Only the data plane may notice the dead backend (as in the killed-gateway test).
    let slow = Duration::from_secs(600);
    cfg.pools[0].health.interval = slow;
    cfg.pools[0].health.intervals = portico::config::CheckIntervals::all(slow);
    let d = portico::daemon::start(cfg).await.expect("daemon starts");
    let vip = d.local_addr("rdgw-https").unwrap();

    let mut victims = Vec::new();
    for n in 2..32u8 {
        if exchange(n, vip, b"which?").await.starts_with(b"dead\n") {
            victims.push(n);
        }
    }
    assert!(
        !victims.is_empty(),
        "some client must be on the dead backend"
    );
    dead_task.abort();
    let _ = dead_task.await; // the listener is dropped with its task: connects are refused

    let series = "portico_backend_bytes_total{backend=\"live\",direction=\"to_backend\",service=\"rdgw-https\"}";
    let before = metric(&scrape(d.metrics_addr.unwrap()).await, series);
    for &n in &victims {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 ^ n).collect();
        let got = exchange(n, vip, &payload).await;
        assert!(
            got.starts_with(b"live\n"),
            "client {n} retried onto the live backend"
        );
        assert_eq!(got.len() - 5, payload.len(), "client {n}: every byte, once");
        assert!(
            got[5..] == payload[..],
            "client {n}: bytes intact and in order"
        );
    }
    let m = scrape(d.metrics_addr.unwrap()).await;
    assert_eq!(
        metric(&m, series) - before,
        (victims.len() * 200_000) as f64,
        "each byte counted once"
    );
    let retries = metric(&m, "portico_connect_retries_total{service=\"rdgw-https\"}");
    let fall = f64::from(common::health().fall.get());
    let expect = (victims.len() as f64).min(fall);
    assert!(retries >= expect, "retries {retries} < {expect}");
    d.shutdown(Duration::from_secs(1)).await;
}

/// A transfer that keeps both directions full (a file copy over the gateway while the screen
/// streams): 24 MiB each way at once, through a backend that echoes as it reads, must arrive
/// intact and in order, the half-close must still pass (the client's FIN after the bulk, the
/// backend's after its echo), and every byte must be counted once in each direction. This
/// used to stall after a few MiB with the relay's thread spinning (tokio's cooperative budget,
/// `pump` in src/balancer/copy.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_transfer_arrives_intact_both_ways_and_is_counted_once() {
    const LEN: usize = 24 << 20;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let baddr = l.local_addr().unwrap();
    // Every connection echoed (health probes connect too) and its byte count reported.
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let echo = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                if let Ok(n) = tokio::io::copy(&mut r, &mut w).await {
                    let _ = w.shutdown().await;
                    let _ = done_tx.send(n);
                }
            });
        }
    });
    let d = start(&[("web01", baddr, 1)]).await;
    let vip = d.local_addr("rdgw-https").unwrap();
    let c = tcp_from(source(9), vip).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let pattern = |i: usize| ((i * 7 + i / 4099) % 253) as u8;
    let writer = tokio::spawn(async move {
        let chunk: Vec<u8> = (0..LEN).map(pattern).collect();
        w.write_all(&chunk).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(LEN);
    let res = tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut got)).await;
    assert!(
        matches!(res, Ok(Ok(_))),
        "the echo and the backend's FIN within 30 s: {res:?} after {} bytes",
        got.len()
    );
    writer.await.unwrap();
    assert_eq!(got.len(), LEN, "every byte back, then EOF");
    let first_bad = got.iter().enumerate().position(|(i, &b)| b != pattern(i));
    assert_eq!(first_bad, None, "bytes intact and in order");
    let mut echoed = 0;
    while echoed != LEN as u64 {
        echoed = tokio::time::timeout(Duration::from_secs(5), done.recv())
            .await
            .expect("the backend saw the client's FIN")
            .unwrap();
    }
    echo.abort();
    let m = scrape(d.metrics_addr.unwrap()).await;
    for dir in ["to_backend", "to_client"] {
        let series = format!(
            "portico_backend_bytes_total{{backend=\"web01\",direction=\"{dir}\",service=\"rdgw-https\"}}"
        );
        assert_eq!(
            metric(&m, &series),
            LEN as f64,
            "{dir}: each byte counted once"
        );
    }
    d.shutdown(Duration::from_secs(1)).await;
}

/// A long download (an RDG_OUT_DATA channel streaming a screen, a file copy) must not hold up
/// the other clients served by the same data-plane thread: with one thread, a console that
/// connects while a 3-second stream runs at full speed gets its answer at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_download_does_not_hold_up_other_clients_on_its_thread() {
    const STREAM: Duration = Duration::from_secs(3);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let baddr = l.local_addr().unwrap();
    // 'S' asks for the stream, anything else is echoed once.
    let backend = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                let Ok(n) = s.read(&mut first).await else {
                    return;
                };
                if n > 0 && first[0] == b'S' {
                    let chunk = vec![0x5au8; 64 * 1024];
                    let t0 = std::time::Instant::now();
                    while t0.elapsed() < STREAM {
                        if s.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                    let _ = s.shutdown().await;
                } else {
                    let _ = s.write_all(&first[..n]).await;
                }
            });
        }
    });
    let d = portico::daemon::start_with(config(&[("web01", baddr, 1)]), 1)
        .await
        .expect("daemon starts");
    let vip = d.local_addr("rdgw-https").unwrap();

    let mut down = tcp_from(source(11), vip).await.unwrap();
    down.write_all(b"S").await.unwrap();
    let (seen_tx, seen) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        let (mut total, mut seen_tx) = (0usize, Some(seen_tx));
        loop {
            match down.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
            if total >= 4 << 20 {
                if let Some(tx) = seen_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), seen)
        .await
        .expect("the download is under way within 10 s")
        .unwrap();

    let t0 = std::time::Instant::now();
    let mut other = tcp_from(source(12), vip).await.unwrap();
    other.write_all(b"Eping").await.unwrap();
    let mut back = [0u8; 5];
    let answered = tokio::time::timeout(Duration::from_secs(2), other.read_exact(&mut back)).await;
    let took = t0.elapsed();
    assert!(
        matches!(answered, Ok(Ok(_))),
        "the other client answered within 2 s of connecting: {answered:?}"
    );
    assert_eq!(&back, b"Eping");
    assert!(
        !reader.is_finished(),
        "answered while the download ran ({took:?})"
    );
    let total = tokio::time::timeout(STREAM + Duration::from_secs(10), reader)
        .await
        .expect("the download ends")
        .unwrap();
    assert!(total > 4 << 20, "the download went on: {total} bytes");
    backend.abort();
    d.shutdown(Duration::from_secs(1)).await;
}
