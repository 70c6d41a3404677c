//! The live listener set: which service listens where, and how a listener is handed to the
//! data-plane threads or stopped while the daemon runs (reload adds and removes services).
//!
//! Each data-plane thread runs its own current-thread runtime and accepts on every TCP
//! service's listener: one socket, a descriptor per thread, so a connection waits for
//! whichever thread is free (HAProxy's and nginx's model without `reuseport`), not for the one
//! the kernel's hash picked. A thread cannot be reached by spawning from elsewhere, so it
//! takes orders from a channel: "serve this listener until this token fires". UDP services
//! run on the control-plane runtime, as at start. Every listener has its own stop token, a
//! child of the daemon's accept-stop token, so one service can close without the others and
//! a shutdown still closes them all.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::balancer;
use crate::config::{Protocol, Service};
use crate::snapshot::Snapshot;

/// An order to one data-plane thread.
pub(crate) enum WorkerCmd {
    /// Accept on `listener` for service `name` (index `hint`) until `stop` fires.
    Serve {
        listener: std::net::TcpListener,
        name: Arc<str>,
        hint: usize,
        stop: CancellationToken,
        /// The listener's accept tasks, so closing it can wait until the socket is gone.
        tracker: TaskTracker,
    },
}

/// One service's listener(s), bound but not yet serving.
pub(crate) struct Bound {
    pub name: String,
    pub protocol: Protocol,
    pub listen: SocketAddr,
    pub addr: SocketAddr,
    hint: usize,
    sockets: Sockets,
}

enum Sockets {
    /// One listener, a descriptor per data-plane thread.
    Tcp(Vec<std::net::TcpListener>),
    Udp(std::net::UdpSocket),
}

/// A serving listener.
#[derive(Debug, Clone)]
pub struct Live {
    pub name: String,
    pub protocol: Protocol,
    /// As configured (port 0 in tests).
    pub listen: SocketAddr,
    /// As bound.
    pub addr: SocketAddr,
    stop: CancellationToken,
    /// Its accept tasks (one per data-plane thread, or the UDP task).
    tracker: TaskTracker,
}

/// The data plane's moving parts, shared by the daemon, reload and the admin server.
pub(crate) struct Plane {
    pub workers: Vec<mpsc::UnboundedSender<WorkerCmd>>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub accept_stop: CancellationToken,
    pub hard_stop: CancellationToken,
    /// Control-plane tasks (UDP listeners among them).
    pub tasks: TaskTracker,
    pub connections: TaskTracker,
    live: Mutex<Vec<Live>>,
}

impl Plane {
    pub fn new(
        workers: Vec<mpsc::UnboundedSender<WorkerCmd>>,
        snapshot: Arc<ArcSwap<Snapshot>>,
        accept_stop: CancellationToken,
        hard_stop: CancellationToken,
        tasks: TaskTracker,
        connections: TaskTracker,
    ) -> Plane {
        Plane {
            workers,
            snapshot,
            accept_stop,
            hard_stop,
            tasks,
            connections,
            live: Mutex::new(Vec::new()),
        }
    }

    fn live(&self) -> MutexGuard<'_, Vec<Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The serving listeners, in the order they started.
    pub fn listeners(&self) -> Vec<Live> {
        self.live().clone()
    }

    /// Binds `svc` (index `hint` in its config): for TCP one listener, a descriptor of it per
    /// data-plane thread.
    /// Nothing serves until [`Plane::serve`].
    pub fn bind(&self, svc: &Service, hint: usize) -> anyhow::Result<Bound> {
        let threads = self.workers.len().max(1);
        let (addr, sockets) = match svc.protocol {
            Protocol::Tcp => {
                let first = balancer::bind_tcp(svc.listen, svc.backlog).with_context(|| {
                    format!("service {}: cannot listen on tcp {}", svc.name, svc.listen)
                })?;
                let a = first.local_addr()?;
                let mut v = Vec::with_capacity(threads);
                for _ in 1..threads {
                    v.push(first.try_clone().with_context(|| {
                        format!("service {}: sharing the listener on {a}", svc.name)
                    })?);
                }
                v.push(first);
                (a, Sockets::Tcp(v))
            }
            Protocol::Udp => {
                let s = balancer::bind_udp(svc.listen).with_context(|| {
                    format!("service {}: cannot listen on udp {}", svc.name, svc.listen)
                })?;
                (s.local_addr()?, Sockets::Udp(s))
            }
        };
        Ok(Bound {
            name: svc.name.clone(),
            protocol: svc.protocol,
            listen: svc.listen,
            addr,
            hint,
            sockets,
        })
    }

    /// Starts serving a bound service. Must run inside the control-plane runtime (UDP).
    pub fn serve(&self, b: Bound) -> anyhow::Result<()> {
        let stop = self.accept_stop.child_token();
        let tracker = TaskTracker::new();
        let name: Arc<str> = Arc::from(b.name.as_str());
        match b.sockets {
            Sockets::Tcp(listeners) => {
                for (w, l) in self.workers.iter().zip(listeners) {
                    w.send(WorkerCmd::Serve {
                        listener: l,
                        name: name.clone(),
                        hint: b.hint,
                        stop: stop.clone(),
                        tracker: tracker.clone(),
                    })
                    .map_err(|_| anyhow::anyhow!("a data-plane thread has stopped"))?;
                }
            }
            Sockets::Udp(s) => {
                let s = UdpSocket::from_std(s)
                    .with_context(|| format!("service {}: registering udp socket", b.name))?;
                self.tasks.spawn(tracker.track_future(balancer::serve_udp(
                    s,
                    name,
                    b.hint,
                    self.snapshot.clone(),
                    stop.clone(),
                    self.connections.clone(),
                )));
            }
        }
        info!(service = %b.name, protocol = b.protocol.as_str(), addr = %b.addr, "listening");
        self.live().push(Live {
            name: b.name,
            protocol: b.protocol,
            listen: b.listen,
            addr: b.addr,
            stop,
            tracker,
        });
        Ok(())
    }

    /// Stops accepting for service `name` and waits (up to a second) until its sockets are
    /// closed, so a client that connects after the reply is refused; established connections
    /// carry on.
    pub async fn close(&self, name: &str) -> Option<Live> {
        let l = {
            let mut live = self.live();
            let pos = live.iter().position(|l| l.name == name)?;
            live.remove(pos)
        };
        l.stop.cancel();
        l.tracker.close();
        if tokio::time::timeout(Duration::from_secs(1), l.tracker.wait())
            .await
            .is_err()
        {
            warn!(service = %l.name, "listener still open 1 s after it was told to close");
        }
        info!(service = %l.name, addr = %l.addr, "listener closed");
        Some(l)
    }
}

/// A data-plane thread's life: serve what it is handed until the hard stop, then wait for
/// its connections (they live on this thread's runtime) to end.
pub(crate) async fn worker(
    mut orders: mpsc::UnboundedReceiver<WorkerCmd>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    hard_stop: CancellationToken,
    connections: TaskTracker,
) {
    tokio::spawn(balancer::timer_anchor());
    loop {
        let cmd = tokio::select! {
            _ = hard_stop.cancelled() => break,
            c = orders.recv() => c,
        };
        match cmd {
            Some(WorkerCmd::Serve {
                listener,
                name,
                hint,
                stop,
                tracker,
            }) => match TcpListener::from_std(listener) {
                Ok(l) => {
                    tracker.spawn(balancer::serve_tcp(
                        l,
                        name,
                        hint,
                        snapshot.clone(),
                        stop,
                        hard_stop.clone(),
                        connections.clone(),
                    ));
                }
                Err(error) => warn!(service = %name, %error, "cannot register listener"),
            },
            None => {
                hard_stop.cancelled().await;
                break;
            }
        }
    }
    connections.wait().await;
}
