//! Socket set-up shared by the listeners and connectors.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// Binds a TCP listener the way a VIP balancer needs it: `SO_REUSEADDR` so a restart does not
/// wait for TIME_WAIT, and `IP_FREEBIND` so the listener can be bound to the VIP before the VIP
/// is on an interface (the standby node, or the master before VRRP settles), without writing
/// `net.ipv4.ip_nonlocal_bind` (which a hardened systemd unit cannot).
///
/// One listener serves every data-plane thread (each accepts on its own descriptor of it), not
/// one `SO_REUSEPORT` listener per thread: the kernel's hash hands a connection to a thread
/// whether or not that thread is running, and on a busy machine (or when the scheduler gives
/// Portico's threads a group of their own) the connection then waits while the other thread
/// idles. Measured in docs/benchmarks.md (session 4).
pub fn bind_tcp(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    set_freebind(&sock, addr)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    // Accepted sockets inherit these from the listener (Linux copies TCP_NODELAY and the
    // keepalive settings at accept), which saves five setsockopt calls per client connection.
    set_stream_options(&SockRef::from(&sock))?;
    sock.bind(&addr.into())?;
    sock.listen(backlog.min(i32::MAX as u32) as i32)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Binds a UDP service socket (same options as [`bind_tcp`]).
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_address(true)?;
    set_freebind(&sock, addr)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    // Bursts of screen updates arrive faster than one task drains them at times; a larger
    // buffer trades memory for fewer drops. The kernel caps it at rmem_max silently.
    let _ = sock.set_recv_buffer_size(4 << 20);
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

fn set_freebind(sock: &Socket, addr: SocketAddr) -> io::Result<()> {
    if addr.is_ipv6() {
        sock.set_freebind_v6(true)
    } else {
        sock.set_freebind_v4(true)
    }
}

/// Options on every proxied TCP socket: no Nagle (RDP is interactive) and keepalive, so a
/// peer that vanished without a FIN is noticed long before the 4 h idle timeout.
fn set_stream_options(sock: &SockRef<'_>) -> io::Result<()> {
    sock.set_tcp_nodelay(true)?;
    let ka = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    sock.set_tcp_keepalive(&ka)
}

/// Starts a connection to a backend: a non-blocking socket, `connect(2)` issued, registered
/// with the reactor. The handshake may still be under way; [`finish_connect`] waits for it, or
/// a first `send` that succeeds proves it done (on loopback and on a quiet LAN it has usually
/// finished inside `connect(2)`, and waiting for the readiness event would cost a whole turn of
/// the event loop per connection).
///
/// Options: no Nagle. No keepalive: the gateways sit on the balancer's LAN, where a vanished
/// peer shows up as a reset, and the idle timeout bounds the rest; every syscall counts on
/// short connections.
///
/// `data_follows`: the caller has bytes to send as soon as the handshake is done (the client's
/// early bytes). The handshake's last ACK then waits for them and travels with them
/// (`TCP_DEFER_ACCEPT` on a connecting socket: the kernel holds that ACK while data is due),
/// so the backend's accept queue sees the connection only when its first request is there:
/// one wake-up of the backend per connection instead of two (accept and find nothing, then
/// read). Without data to send the ACK goes out at once, as a server that speaks first needs.
pub fn start_connect(addr: SocketAddr, data_follows: bool) -> io::Result<tokio::net::TcpStream> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    sock.set_tcp_nodelay(true)?;
    if data_follows {
        // Any positive value: on a connecting socket it means "hold the handshake's last ACK
        // for the first data", not a timeout.
        crate::sockopt::set(
            &sock,
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            &1 as &libc::c_int,
        )?;
    }
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    tokio::net::TcpStream::from_std(std::net::TcpStream::from(sock))
}

/// Waits until a connection from [`start_connect`] is established, as `TcpStream::connect`
/// does but without its `getsockopt(SO_ERROR)` after every connect: the readiness event
/// already says whether the handshake failed (`EPOLLERR`/`EPOLLHUP`), so the error is fetched
/// only then.
pub async fn finish_connect(stream: &tokio::net::TcpStream) -> io::Result<()> {
    let ready = stream.ready(tokio::io::Interest::WRITABLE).await?;
    if ready.is_error() || ready.is_write_closed() {
        return Err(stream.take_error()?.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::ConnectionReset,
                "backend closed during connect",
            )
        }));
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard limit: every proxied connection costs two
/// descriptors, and the default soft limit (1024) would cap Portico at ~500 clients.
/// Returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read};
    use std::time::Instant;

    /// A listener and a connection to it from [`start_connect`], established on our side.
    async fn connected(data_follows: bool) -> (std::net::TcpListener, tokio::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let s = start_connect(l.local_addr().unwrap(), data_follows).unwrap();
        finish_connect(&s).await.unwrap();
        (l, s)
    }

    /// Polls a non-blocking accept for up to `within`.
    fn accept_within(l: &std::net::TcpListener, within: Duration) -> Option<std::net::TcpStream> {
        let t0 = Instant::now();
        loop {
            match l.accept() {
                Ok((s, _)) => return Some(s),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept: {e}"),
            }
            if t0.elapsed() >= within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[tokio::test]
    async fn with_data_to_follow_the_backend_accepts_the_connection_with_its_first_bytes() {
        let (l, s) = connected(true).await;
        // Connected on our side; the backend has not had the handshake's last ACK (the kernel
        // would send it alone only after its 200 ms delayed-ACK timer).
        assert!(
            accept_within(&l, Duration::from_millis(50)).is_none(),
            "the backend accepted before any data was sent"
        );
        s.try_write(b"ClientHello").unwrap();
        let mut b = accept_within(&l, Duration::from_secs(2)).expect("accepted once data came");
        b.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 32];
        let n = b
            .read(&mut buf)
            .expect("the first bytes are there at accept");
        assert_eq!(&buf[..n], b"ClientHello");
    }

    #[tokio::test]
    async fn without_data_to_follow_the_handshake_completes_at_once() {
        // A backend that speaks first (or a client that has not spoken yet) must not wait for
        // a delayed ACK.
        let (l, _s) = connected(false).await;
        assert!(
            accept_within(&l, Duration::from_millis(150)).is_some(),
            "the backend did not see the connection"
        );
    }
}
