//! A gateway stand-in: a TLS server that answers every HTTP request with its node name, and a
//! UDP responder on the same port that answers every datagram with its node name, so a test
//! or an operator can see which gateway a client reached.
//!
//! (The MS-TSGU simulated gateway replaces it in the lab once it exists; this stand-in stays
//! as the cheapest backend for data-plane tests.)

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// Largest request head a stand-in reads.
const MAX_HEAD: usize = 16 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A running stand-in. [`StandIn::kill`] stops it abruptly, the way a crashed gateway goes:
/// the port refuses and its established connections are cut.
pub struct StandIn {
    pub name: String,
    pub addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl StandIn {
    /// Binds TCP and UDP on `addr` (port 0: any free port, the same for both when possible)
    /// and serves until killed.
    pub async fn spawn(
        name: &str,
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
    ) -> io::Result<StandIn> {
        let (tcp, udp) = bind_pair(addr).await?;
        let addr = tcp.local_addr()?;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let acceptor = TlsAcceptor::from(tls);
        let name_s: Arc<str> = Arc::from(name);
        {
            let (stop, tasks2, name) = (stop.clone(), tasks.clone(), name_s.clone());
            tasks.spawn(async move {
                loop {
                    let (s, _) = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = tcp.accept() => match r { Ok(x) => x, Err(_) => continue },
                    };
                    let (acceptor, name, stop) = (acceptor.clone(), name.clone(), stop.clone());
                    tasks2.spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            r = serve_conn(s, acceptor, &name) => if let Err(e) = r {
                                debug!(gateway = %name, error = %e, "stand-in connection ended");
                            },
                        }
                    });
                }
            });
        }
        tasks.spawn(udp_name_responder(name_s.clone(), udp, stop.clone()));
        tasks.close();
        Ok(StandIn {
            name: name.to_string(),
            addr,
            stop,
            tasks,
        })
    }

    /// Stops abruptly: the listener closes and every connection is cut.
    pub async fn kill(&self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

/// Answers every datagram with `<name> <datagram>` until `stop`: the gateway's UDP 3391 side,
/// enough to see which gateway a client's UDP flow reached.
pub async fn udp_name_responder(name: Arc<str>, udp: UdpSocket, stop: CancellationToken) {
    let mut buf = vec![0u8; 2048];
    let mut reply = Vec::with_capacity(name.len() + 1 + buf.len());
    loop {
        let (n, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = udp.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
        };
        reply.clear();
        reply.extend_from_slice(name.as_bytes());
        reply.push(b' ');
        reply.extend_from_slice(&buf[..n]);
        let _ = udp.send_to(&reply, peer).await;
    }
}

/// TCP and UDP on the same port: bind TCP first (port 0 picks one), then UDP on that port;
/// retry a few times if the UDP port happens to be taken.
async fn bind_pair(addr: SocketAddr) -> io::Result<(TcpListener, UdpSocket)> {
    let mut last = None;
    for _ in 0..20 {
        let tcp = TcpListener::bind(addr).await?;
        let port = tcp.local_addr()?.port();
        match UdpSocket::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port pair")))
}

async fn serve_conn(s: TcpStream, acceptor: TlsAcceptor, name: &str) -> io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut tls = tokio::time::timeout(READ_TIMEOUT, acceptor.accept(s))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    loop {
        let n = tokio::time::timeout(READ_TIMEOUT, tls.read(&mut buf[filled..]))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle"))??;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            let used = match req.parse(&buf[..filled]) {
                Ok(httparse::Status::Complete(used)) => used,
                Ok(httparse::Status::Partial) if filled < buf.len() => break,
                _ => {
                    tls.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
                    return tls.shutdown().await;
                }
            };
            let close = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close")
            });
            let body = format!("{name}\n");
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Portico-Gateway: {name}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
                body.len(),
                if close { "close" } else { "keep-alive" }
            );
            tls.write_all(head.as_bytes()).await?;
            tls.write_all(body.as_bytes()).await?;
            if close {
                return tls.shutdown().await;
            }
            buf.copy_within(used..filled, 0);
            filled -= used;
            if filled == 0 {
                break;
            }
        }
    }
}
