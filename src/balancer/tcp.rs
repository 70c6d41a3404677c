//! TCP services: accept, choose, connect with retry, relay.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use socket2::SockRef;

use super::copy::{relay, Early, RelayEnd};
use crate::metrics::{BackendCounters, ConnectFailure};
use crate::snapshot::{Choice, Snapshot};

/// How long accepting pauses after the process ran out of descriptors: long enough for
/// connections to close, short enough that clients mostly see a slow accept, not a refusal.
const EMFILE_BACKOFF: Duration = Duration::from_millis(50);

/// Connections accepted before the accepting task lets the ones it accepted run. The data-plane
/// threads share one listener, so whatever a thread leaves in the queue another one can take:
/// a thread that drained a burst alone would hold it while the other idled, and the queue's
/// tail would wait (p99 30 ms against 8 ms with a batch of 8, in l4bench's close test).
const ACCEPT_BATCH: usize = 8;

/// Accepts on `listener` for service `service` (index `hint` in the snapshot) until
/// `accept_stop` fires; every connection is spawned on `tracker` and relays until it ends or
/// `hard_stop` fires.
pub async fn serve_tcp(
    listener: TcpListener,
    service: Arc<str>,
    hint: usize,
    snapshot: Arc<ArcSwap<Snapshot>>,
    accept_stop: CancellationToken,
    hard_stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut in_a_row = 0usize;
    loop {
        in_a_row += 1;
        if in_a_row > ACCEPT_BATCH {
            in_a_row = 0;
            tokio::task::yield_now().await;
        }
        let accepted = tokio::select! {
            _ = accept_stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let span =
                    tracing::debug_span!("balancer.conn", service = %service, client = %peer);
                let fut = handle(
                    stream,
                    peer,
                    service.clone(),
                    hint,
                    snapshot.clone(),
                    hard_stop.clone(),
                );
                tracker.spawn(fut.instrument(span));
            }
            Err(e) => {
                let snap = snapshot.load();
                let emfile = matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE));
                if let Some(svc) = snap.service(hint, &service) {
                    if emfile {
                        svc.counters.accept_emfile.inc();
                    } else {
                        svc.counters.accept_other.inc();
                    }
                }
                if emfile {
                    warn!(service = %service, "out of file descriptors: accept paused");
                    tokio::time::sleep(EMFILE_BACKOFF).await;
                } else if !is_transient(&e) {
                    warn!(service = %service, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// Connects to `addr` and sends it the client's early bytes. A send that goes through proves
/// the handshake done without waiting for the readiness event; one that would block means it
/// is still under way; an error (refused, unreachable) is the connect's own, and the early
/// bytes stay for the next attempt.
async fn connect_backend(addr: SocketAddr, early: Option<&mut Early>) -> io::Result<TcpStream> {
    let stream = super::socket::start_connect(addr, early.is_some())?;
    if let Some(early) = early {
        match SockRef::from(&stream).send_with_flags(early.unsent(), libc::MSG_NOSIGNAL) {
            Ok(n) => {
                early.advance(n);
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    super::socket::finish_connect(&stream).await?;
    Ok(stream)
}

/// Errors that concern one aborted connection, not the listener.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

struct Connected {
    stream: TcpStream,
    backend: Arc<str>,
    counters: Arc<BackendCounters>,
    kill: CancellationToken,
}

async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    service: Arc<str>,
    hint: usize,
    snapshot: Arc<ArcSwap<Snapshot>>,
    hard_stop: CancellationToken,
) {
    // The snapshot is held only while choosing and connecting: a relay can last hours, and
    // holding it would keep every old generation (and its Maglev tables) alive that long.
    let snap = snapshot.load_full();
    let Some(svc) = snap.service(hint, &service) else {
        return;
    };
    let counters = svc.counters.clone();
    counters.accepted.inc();
    counters.active.inc();
    let idle = svc.idle_timeout;
    // HAProxy's speculative I/O: whatever the client sent with its handshake goes out with
    // the backend's, which saves an event-loop turn each way on a new connection.
    let mut early = match Early::read(&client) {
        Ok(early) => early,
        Err(e) => {
            debug!(error = %e, "client gone before a backend was chosen");
            counters.active.dec();
            return;
        }
    };
    let connected = connect(&snap, svc, peer, early.as_mut()).await;
    drop(snap);
    if let Some(mut c) = connected {
        c.counters.connections.inc();
        c.counters.active.inc();
        let (end, moved) = relay(
            &mut client,
            &mut c.stream,
            early,
            idle,
            &c.counters,
            &hard_stop,
            &c.kill,
        )
        .await;
        c.counters.active.dec();
        debug!(backend = %c.backend, ?end, to_backend = moved.to_backend, to_client = moved.to_client, "closed");
        if end == RelayEnd::Cancelled {
            debug!("closed by shutdown after the drain timeout");
        } else if end == RelayEnd::Killed {
            debug!(backend = %c.backend, "closed: backend disabled with kill");
        }
    }
    counters.active.dec();
}

/// The first choice, then the client's fallbacks, up to `connect_attempts` in all.
async fn connect(
    snap: &Snapshot,
    svc: &crate::snapshot::ServiceView,
    peer: SocketAddr,
    mut early: Option<&mut Early>,
) -> Option<Connected> {
    let now = std::time::Instant::now();
    let choice = Choice::decide(snap, svc, peer.ip(), now);
    let Some(first) = choice.first else {
        svc.counters.no_backend.inc();
        debug!("no eligible backend");
        return None;
    };
    let pool = choice.pool();
    let attempts = svc.connect_attempts.get() as usize;
    for (n, idx) in std::iter::once(first)
        .chain(choice.fallbacks())
        .take(attempts)
        .enumerate()
    {
        if n > 0 {
            svc.counters.retries.inc();
        }
        let b = &pool.backends[idx];
        let counters = &svc.backend_counters[idx];
        let addr = b.socket_addr(svc.backend_port);
        let t0 = Instant::now();
        let failure = match tokio::time::timeout(
            svc.connect_timeout,
            connect_backend(addr, early.as_deref_mut()),
        )
        .await
        {
            Ok(Ok(stream)) => {
                counters
                    .connect_duration
                    .observe(t0.elapsed().as_secs_f64());
                if !choice.pinned || idx != first {
                    svc.group.table.insert(choice.key, b.id, now);
                }
                debug!(backend = %b.name, %addr, attempt = n + 1, pinned = choice.pinned, "connected");
                return Some(Connected {
                    stream,
                    backend: b.name.clone(),
                    counters: counters.clone(),
                    kill: b.kill.clone(),
                });
            }
            Ok(Err(e)) => ConnectFailure::from_io(&e),
            Err(_) => ConnectFailure::Timeout,
        };
        counters.connect_failure(failure).inc();
        // Passive health: a non-blocking `try_send` to the backend's health task. `Other`
        // (out of descriptors or buffers here, not the backend's fault) is not reported.
        if failure != ConnectFailure::Other {
            if let Some(p) = &snap.passive {
                p.report(b.id);
            }
        }
        debug!(backend = %b.name, %addr, attempt = n + 1, reason = failure.as_str(), "connect failed");
    }
    svc.counters.connect_failed.inc();
    None
}
