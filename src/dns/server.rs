//! The DNS server's I/O: binding, the UDP and TCP loops, metrics, and the per-snapshot zone.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use prometheus::{Histogram, IntCounter, IntGauge};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::wire::{self, parse_query, Malformed, ParseError, Rcode, Writer};
use super::zone::{answered, Action, Transport, Zone, ZoneSpec};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// Largest query read over UDP; a real query is well under 512 bytes, and anything that
/// fills this buffer is counted as oversized and dropped.
const MAX_UDP_QUERY: usize = 4096;
/// Largest query accepted over TCP (a query has no reason to be bigger than over UDP).
const MAX_TCP_QUERY: usize = 4096;
/// UDP datagrams handled before the task yields to the runtime, so a flood on one socket
/// cannot starve the control plane's other tasks on that thread.
const UDP_BATCH: usize = 64;
/// RFC 7766 §6.2.3 leaves the idle timeout to the server; a few seconds frees connections of
/// clients that went away.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Concurrent TCP connections; beyond it new ones are closed at once (DNS clients retry).
const MAX_TCP_CONNECTIONS: usize = 256;

/// Every listening socket, bound (so a bad address fails the start) but not yet served.
pub struct Bound {
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
    /// One per configured listen address, with the real port.
    pub addrs: Vec<SocketAddr>,
}

/// Binds every `[dns] listen` address for UDP (`sockets_per_addr` sockets sharing the port,
/// one per core) and TCP. A port 0 (tests) is settled by the first UDP bind; TCP then takes
/// the same number, retried on a fresh port if TCP's is taken.
pub fn bind(listen: &[SocketAddr], sockets_per_addr: usize) -> anyhow::Result<Bound> {
    let n = sockets_per_addr.max(1);
    let mut bound = Bound {
        udp: Vec::new(),
        tcp: Vec::new(),
        addrs: Vec::new(),
    };
    for &addr in listen {
        let mut tries = if addr.port() == 0 { 20 } else { 1 };
        let (udp, tcp, local) = loop {
            tries -= 1;
            let first =
                udp_socket(addr).with_context(|| format!("dns: cannot listen on udp {addr}"))?;
            let local = first.local_addr()?;
            match tcp_listener(local) {
                Ok(t) => break (first, t, local),
                Err(e) if tries > 0 && e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("dns: cannot listen on tcp {local}"))
                }
            }
        };
        bound.udp.push(udp);
        for _ in 1..n {
            bound.udp.push(
                udp_socket(local).with_context(|| format!("dns: cannot listen on udp {local}"))?,
            );
        }
        bound.tcp.push(tcp);
        bound.addrs.push(local);
    }
    Ok(bound)
}

fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    // Like the balancer's listeners: the DNS address may be the VIP, bound before VRRP puts it
    // on an interface.
    if addr.is_ipv6() {
        sock.set_freebind_v6(true)?;
    } else {
        sock.set_freebind_v4(true)?;
    }
    let _ = sock.set_recv_buffer_size(4 << 20);
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
        sock.set_freebind_v6(true)?;
    } else {
        sock.set_freebind_v4(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

impl Bound {
    /// Serves until `stop` fires, on the current runtime (the control plane's).
    pub fn spawn(
        self,
        spec: ZoneSpec,
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: &Metrics,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let zones = Arc::new(ZoneSource::new(
            spec,
            snapshot,
            metrics.dns_alias_addresses.clone(),
        ));
        let counters = Arc::new(DnsCounters::new(metrics));
        for s in self.udp {
            let s = UdpSocket::from_std(s).context("dns: registering a udp socket")?;
            tasks.spawn(serve_udp(s, zones.clone(), counters.clone(), stop.clone()));
        }
        let limit = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
        for l in self.tcp {
            let l = TcpListener::from_std(l).context("dns: registering a tcp listener")?;
            tasks.spawn(serve_tcp(
                l,
                zones.clone(),
                counters.clone(),
                limit.clone(),
                tasks.clone(),
                stop.clone(),
            ));
        }
        for a in &self.addrs {
            info!(addr = %a, "dns listening (udp, tcp)");
        }
        Ok(())
    }
}

// === the zone of the current snapshot ===

/// What a socket task answers from: the snapshot it was built for, and the zone.
#[derive(Clone)]
struct Current {
    snap: Arc<Snapshot>,
    zone: Arc<Zone>,
}

struct State {
    current: Current,
    mask: Vec<bool>,
}

/// Builds the zone for each new snapshot, once, for every socket task.
struct ZoneSource {
    spec: ZoneSpec,
    snapshot: Arc<ArcSwap<Snapshot>>,
    state: Mutex<State>,
    alias_gauge: IntGauge,
}

fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

impl ZoneSource {
    fn new(spec: ZoneSpec, snapshot: Arc<ArcSwap<Snapshot>>, alias_gauge: IntGauge) -> ZoneSource {
        let snap = snapshot.load_full();
        let mask = answered(&spec, &snap);
        let zone = Arc::new(Zone::build(&spec, &mask, unix_now()));
        alias_gauge.set(zone.alias_answered as i64);
        ZoneSource {
            spec,
            snapshot,
            state: Mutex::new(State {
                current: Current { snap, zone },
                mask,
            }),
            alias_gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> Current {
        self.lock().current.clone()
    }

    /// The hot path: one load and one pointer comparison; a new snapshot takes the lock.
    fn refresh(&self, cur: &mut Current) {
        let g = self.snapshot.load();
        if Arc::ptr_eq(&g, &cur.snap) {
            return;
        }
        let snap = arc_swap::Guard::into_inner(g);
        let mut st = self.lock();
        if !Arc::ptr_eq(&st.current.snap, &snap) {
            let mask = answered(&self.spec, &snap);
            if mask != st.mask {
                // RFC 1982 serials: monotonic, and a restart (start at the clock) moves on.
                let serial = unix_now().max(st.current.zone.serial.wrapping_add(1));
                let zone = Arc::new(Zone::build(&self.spec, &mask, serial));
                info!(
                    answered = zone.alias_answered,
                    of = mask.len(),
                    serial,
                    "dns: alias addresses changed"
                );
                self.alias_gauge.set(zone.alias_answered as i64);
                st.current.zone = zone;
                st.mask = mask;
            }
            st.current.snap = snap;
        }
        *cur = st.current.clone();
    }
}

// === metrics ===

const QTYPES: [(u16, &str); 7] = [
    (wire::rtype::A, "a"),
    (wire::rtype::AAAA, "aaaa"),
    (wire::rtype::NS, "ns"),
    (wire::rtype::SOA, "soa"),
    (wire::rtype::ANY, "any"),
    (wire::rtype::AXFR, "axfr"),
    (wire::rtype::IXFR, "ixfr"),
];

/// Pre-resolved handles: a query only increments.
struct DnsCounters {
    /// [qtype index (QTYPES, then "other")][rcode index (Rcode::ALL)].
    queries: Vec<[IntCounter; Rcode::ALL.len()]>,
    /// Indexed like [`Malformed::ALL`].
    malformed: [IntCounter; Malformed::ALL.len()],
    udp_duration: Histogram,
    tcp_duration: Histogram,
}

impl DnsCounters {
    fn new(m: &Metrics) -> DnsCounters {
        let names = QTYPES.iter().map(|(_, n)| *n).chain(["other"]);
        DnsCounters {
            queries: names
                .map(|q| Rcode::ALL.map(|r| m.dns_queries.with_label_values(&[q, r.as_str()])))
                .collect(),
            malformed: Malformed::ALL.map(|r| m.dns_malformed.with_label_values(&[r.as_str()])),
            udp_duration: m.dns_answer_duration.with_label_values(&["udp"]),
            tcp_duration: m.dns_answer_duration.with_label_values(&["tcp"]),
        }
    }

    fn query(&self, qtype: u16, rcode: Rcode) {
        let q = QTYPES
            .iter()
            .position(|(t, _)| *t == qtype)
            .unwrap_or(QTYPES.len());
        let r = Rcode::ALL.iter().position(|x| *x == rcode).unwrap_or(0);
        if let Some(c) = self.queries.get(q).and_then(|row| row.get(r)) {
            c.inc();
        }
    }

    fn malformed(&self, why: Malformed) {
        if let Some(i) = Malformed::ALL.iter().position(|x| *x == why) {
            self.malformed[i].inc();
        }
    }
}

// === answering ===

enum Handled {
    /// Nothing to send.
    Drop,
    /// `out` holds one message.
    Reply,
    /// `out` holds a zone transfer, already framed for TCP.
    Transfer,
}

fn handle(
    packet: &[u8],
    transport: Transport,
    peer: IpAddr,
    zone: &Zone,
    out: &mut Vec<u8>,
    m: &DnsCounters,
) -> Handled {
    let started = Instant::now();
    let handled = match parse_query(packet) {
        Ok(q) => match zone.answer(&q, transport, peer, out) {
            Action::Reply(rcode) => {
                m.query(q.qtype, rcode);
                Handled::Reply
            }
            Action::Transfer => {
                out.clear();
                zone.transfer(&q, |msg| {
                    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
                    out.extend_from_slice(msg);
                });
                m.query(q.qtype, Rcode::NoError);
                Handled::Transfer
            }
        },
        Err(ParseError::Drop(why)) => {
            m.malformed(why);
            Handled::Drop
        }
        Err(ParseError::FormErr { reason, id, flags }) => {
            m.malformed(reason);
            m.query(0, Rcode::FormErr);
            let mut w = Writer { buf: out };
            w.header(
                id,
                wire::answer_flags(flags, false, false, Rcode::FormErr),
                0,
            );
            Handled::Reply
        }
    };
    let took = started.elapsed().as_secs_f64();
    match transport {
        Transport::Udp => m.udp_duration.observe(took),
        Transport::Tcp => m.tcp_duration.observe(took),
    }
    handled
}

async fn serve_udp(
    sock: UdpSocket,
    zones: Arc<ZoneSource>,
    m: Arc<DnsCounters>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_UDP_QUERY + 1];
    let mut out = Vec::with_capacity(usize::from(wire::OUR_UDP_PAYLOAD) + 512);
    let mut cur = zones.current();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = sock.readable() => if let Err(error) = r {
                warn!(%error, "dns: udp socket failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            },
        }
        let mut handled = 0;
        while handled < UDP_BATCH {
            let (n, peer) = match sock.try_recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors from earlier sends surface here; they concern that client only.
                // Counted toward the batch so a persistent error cannot spin this loop.
                Err(error) => {
                    debug!(%error, "dns: udp receive");
                    handled += 1;
                    continue;
                }
            };
            handled += 1;
            let Some(packet) = buf.get(..n) else { continue };
            if n > MAX_UDP_QUERY {
                m.malformed(Malformed::Oversized);
                continue;
            }
            zones.refresh(&mut cur);
            if let Handled::Reply =
                handle(packet, Transport::Udp, peer.ip(), &cur.zone, &mut out, &m)
            {
                match sock.try_send_to(&out, peer) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // The send buffer is full: wait for room rather than drop the answer.
                        let _ = sock.send_to(&out, peer).await;
                    }
                    Err(error) => debug!(%error, %peer, "dns: udp send"),
                }
            }
        }
        if handled == UDP_BATCH {
            tokio::task::yield_now().await;
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    zones: Arc<ZoneSource>,
    m: Arc<DnsCounters>,
    limit: Arc<Semaphore>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(error) => {
                    warn!(%error, "dns: tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!(%peer, "dns: too many tcp connections; closing");
            continue;
        };
        let (zones, m, stop) = (zones.clone(), m.clone(), stop.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = tcp_connection(stream, peer.ip(), &zones, &m) => if let Err(error) = r {
                    debug!(%peer, %error, "dns: tcp connection ended");
                },
            }
            drop(permit);
        });
    }
}

/// Answers length-prefixed queries (RFC 1035 §4.2.2) one after another until the client
/// closes, goes idle, or sends something that is not a query.
async fn tcp_connection(
    mut stream: TcpStream,
    peer: IpAddr,
    zones: &ZoneSource,
    m: &DnsCounters,
) -> io::Result<()> {
    let mut cur = zones.current();
    let mut buf = vec![0u8; MAX_TCP_QUERY];
    let mut out = Vec::with_capacity(1024);
    let mut framed = Vec::with_capacity(1024);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            // EOF between messages is the normal end; idle too.
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let n = usize::from(u16::from_be_bytes(len));
        if n > MAX_TCP_QUERY {
            m.malformed(Malformed::Oversized);
            return Ok(());
        }
        let Some(packet) = buf.get_mut(..n) else {
            return Ok(());
        };
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(packet)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                m.malformed(Malformed::Truncated);
                return Ok(());
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        zones.refresh(&mut cur);
        match handle(packet, Transport::Tcp, peer, &cur.zone, &mut out, m) {
            Handled::Drop => return Ok(()),
            Handled::Reply => {
                framed.clear();
                framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
                framed.extend_from_slice(&out);
                stream.write_all(&framed).await?;
            }
            Handled::Transfer => stream.write_all(&out).await?,
        }
    }
}
