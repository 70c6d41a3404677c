//! UDP services (RDG-UDP on 3391): one flow per client address and port, each with its own
//! connected upstream socket, so replies come back on the flow they belong to and the
//! backend's source checks see one stable peer per client flow.
//!
//! The flow's backend is chosen with the same affinity group as the TCP services, so a
//! client's UDP side channel reaches the gateway that holds its HTTP channels.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::copy::{give_buf, take_buf};
use crate::metrics::{BackendCounters, ServiceCounters};
use crate::snapshot::{Choice, Snapshot};

/// How often ended flows are swept from the table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Flow {
    upstream: Arc<UdpSocket>,
    /// Milliseconds since the flow's start of its last datagram, either way.
    last: Arc<AtomicU64>,
    started: Instant,
    done: Arc<AtomicBool>,
    counters: Arc<BackendCounters>,
}

/// Serves one UDP service until `accept_stop` fires. Unlike a TCP connection, a UDP flow has
/// no end to wait for, so a drain does not wait on flows: they stop with the listener.
pub async fn serve_udp(
    socket: UdpSocket,
    service: Arc<str>,
    hint: usize,
    snapshot: Arc<ArcSwap<Snapshot>>,
    accept_stop: CancellationToken,
    tracker: TaskTracker,
) {
    let socket = Arc::new(socket);
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut counters: Option<Arc<ServiceCounters>> = None;
    loop {
        let (n, peer) = tokio::select! {
            _ = accept_stop.cancelled() => break,
            _ = sweep.tick() => {
                flows.retain(|_, f| !f.done.load(Ordering::Relaxed));
                if let Some(c) = &counters {
                    c.udp_flows_active.set(flows.len() as i64);
                }
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some kernels; they concern
                    // one peer, not the socket.
                    debug!(service = %service, error = %e, "udp recv error");
                    continue;
                }
            },
        };
        let data = &buf[..n];
        if let Some(f) = flows.get(&peer) {
            if !f.done.load(Ordering::Relaxed) {
                f.last
                    .store(f.started.elapsed().as_millis() as u64, Ordering::Relaxed);
                match f.upstream.try_send(data) {
                    Ok(_) => f.counters.datagrams_to_backend.inc(),
                    Err(_) => {
                        if let Some(c) = &counters {
                            c.udp_drops_to_backend.inc();
                        }
                    }
                }
                continue;
            }
            flows.remove(&peer);
        }
        let snap = snapshot.load();
        let Some(svc) = snap.service(hint, &service) else {
            continue;
        };
        let c = counters.get_or_insert_with(|| svc.counters.clone());
        if flows.len() >= svc.max_flows {
            c.udp_rejected_table_full.inc();
            continue;
        }
        let now = std::time::Instant::now();
        let choice = Choice::decide(&snap, svc, peer.ip(), now);
        let Some(idx) = choice.first else {
            c.udp_rejected_no_backend.inc();
            continue;
        };
        let b = &choice.pool().backends[idx];
        let addr = b.socket_addr(svc.backend_port);
        let upstream = match connect_upstream(addr).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                warn!(service = %service, backend = %b.name, %addr, error = %e, "udp upstream socket failed");
                c.udp_rejected_socket.inc();
                continue;
            }
        };
        if !choice.pinned {
            svc.group.table.insert(choice.key, b.id, now);
        }
        let bc = svc.backend_counters[idx].clone();
        bc.udp_flows.inc();
        debug!(service = %service, client = %peer, backend = %b.name, pinned = choice.pinned, "udp flow");
        let flow = Flow {
            upstream: upstream.clone(),
            last: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
            done: Arc::new(AtomicBool::new(false)),
            counters: bc.clone(),
        };
        // A new socket's write readiness is not known to the reactor yet, so the first datagram
        // is sent with an await (it completes at once: a fresh socket's buffer is empty).
        if flow.upstream.send(data).await.is_ok() {
            bc.datagrams_to_backend.inc();
        } else {
            c.udp_drops_to_backend.inc();
        }
        tracker.spawn(relay_back(
            upstream,
            socket.clone(),
            peer,
            flow.last.clone(),
            flow.started,
            flow.done.clone(),
            svc.idle_timeout,
            bc,
            c.udp_drops_to_client.clone(),
            accept_stop.clone(),
            b.kill.clone(),
        ));
        flows.insert(peer, flow);
        c.udp_flows_active.set(flows.len() as i64);
    }
    if let Some(c) = &counters {
        c.udp_flows_active.set(0);
    }
}

async fn connect_upstream(addr: SocketAddr) -> io::Result<UdpSocket> {
    let local: IpAddr = if addr.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let s = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
    s.connect(addr).await?;
    Ok(s)
}

/// Backend → client for one flow, until the flow idles out or the daemon stops.
#[allow(clippy::too_many_arguments)]
async fn relay_back(
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    last: Arc<AtomicU64>,
    started: Instant,
    done: Arc<AtomicBool>,
    idle: Duration,
    counters: Arc<BackendCounters>,
    drops: prometheus::IntCounter,
    stop: CancellationToken,
    kill: CancellationToken,
) {
    let idle_sleep = tokio::time::sleep(idle);
    tokio::pin!(idle_sleep);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            // `disable --kill`: the flow ends; the client's next datagram is placed afresh.
            _ = kill.cancelled() => break,
            _ = &mut idle_sleep => {
                let last_at = started + Duration::from_millis(last.load(Ordering::Relaxed));
                if last_at.elapsed() >= idle {
                    break;
                }
                idle_sleep.as_mut().reset(last_at + idle);
            }
            r = upstream.readable() => {
                if r.is_err() {
                    break;
                }
                // An idle flow holds no buffer: borrow one only while datagrams are waiting.
                let mut buf = take_buf();
                loop {
                    match upstream.try_recv(&mut buf) {
                        Ok(n) => {
                            last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                            match listener.try_send_to(&buf[..n], client) {
                                Ok(_) => counters.datagrams_to_client.inc(),
                                Err(_) => drops.inc(),
                            }
                            // `try_recv` spends none of tokio's cooperative budget: a gateway
                            // sending faster than this loop forwards would otherwise keep it
                            // from ever reaching WouldBlock, and the runtime's other tasks
                            // from running.
                            tokio::task::coop::consume_budget().await;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // ECONNREFUSED from an ICMP port unreachable: the backend is not
                        // listening right now; keep the flow, the client may retry.
                        Err(_) => break,
                    }
                }
                give_buf(buf);
            }
        }
    }
    done.store(true, Ordering::Relaxed);
}
