//! Relaying bytes between a client and its backend.
//!
//! An idle proxied connection holds no buffer: each direction waits for readability with no
//! memory of its own, borrows a buffer from a small per-thread pool for as long as data flows,
//! and returns it when the socket runs dry. Ten thousand idle RD Gateway channels (they idle for
//! hours) then cost kernel socket memory and a task each, not 2 × 32 KiB each.

use std::cell::RefCell;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use std::pin::Pin;
use std::task::Poll;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::BackendCounters;

/// Large enough that a bulk transfer moves in few syscalls and that any UDP datagram fits;
/// pooled, so its size costs nothing
/// per idle connection or flow.
const BUF_SIZE: usize = 64 * 1024;
/// Buffers kept per worker thread; beyond it a returned buffer is freed.
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn take_buf() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

pub(super) fn give_buf(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(buf);
        }
    });
}

/// The client's first bytes, read right after accept (a TLS ClientHello has usually arrived
/// by then), held in a pooled buffer until the backend has all of them.
pub(super) struct Early {
    buf: Box<[u8]>,
    len: usize,
    sent: usize,
}

impl Early {
    /// Reads what the client has already sent, without waiting: `Ok(None)` when nothing has
    /// arrived yet or the client already closed its sending half (the relay sees the EOF
    /// again, as EOF is sticky); an error (a reset) ends the connection.
    pub(super) fn read(client: &TcpStream) -> io::Result<Option<Early>> {
        let mut buf = take_buf();
        // Straight to recv(2): tokio would first wait for a readiness event, and a freshly
        // registered socket has none until the next turn of the event loop.
        match (&*socket2::SockRef::from(client)).read(&mut buf) {
            Ok(0) => {}
            Ok(len) => return Ok(Some(Early { buf, len, sent: 0 })),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                give_buf(buf);
                return Err(e);
            }
        }
        give_buf(buf);
        Ok(None)
    }

    /// The bytes the backend has not been sent yet.
    pub(super) fn unsent(&self) -> &[u8] {
        &self.buf[self.sent..self.len]
    }

    /// Marks `n` more bytes as sent.
    pub(super) fn advance(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.len);
    }

    /// Sends the rest to the backend, counts every early byte, and returns the buffer to the
    /// pool.
    async fn finish(self, dst: &mut WriteHalf<'_>, tally: Tally<'_>) -> io::Result<u64> {
        let r = dst.write_all(self.unsent()).await;
        let len = self.len;
        give_buf(self.buf);
        r?;
        tally.moved(len);
        Ok(len as u64)
    }
}

/// Where one direction counts its bytes, and the relay's time of the last byte either way
/// (milliseconds since `base`), which the idle timeout reads.
#[derive(Clone, Copy)]
struct Tally<'a> {
    bytes: &'a IntCounter,
    last: &'a AtomicU64,
    base: Instant,
}

impl Tally<'_> {
    fn moved(&self, n: usize) {
        self.bytes.inc_by(n as u64);
        self.last
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed their sending half.
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
    /// A socket error (reset, broken pipe) on either side.
    Error,
    /// The daemon's hard-stop token fired (drain timeout over).
    Cancelled,
    /// The operator disabled the backend with `--kill`.
    Killed,
}

/// Bytes moved each way.
#[derive(Debug, Default, Clone, Copy)]
pub struct Relayed {
    pub to_backend: u64,
    pub to_client: u64,
}

/// Relays until both directions are closed, the idle timeout passes, an error occurs or
/// `cancel` fires (or `kill`, the backend's own token). Half-close is passed on: EOF from one
/// side becomes a write shutdown on the other, and the reverse direction keeps flowing. The
/// client's `early` bytes go to the backend first; bytes are counted in `counters`.
pub(super) async fn relay(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    early: Option<Early>,
    idle: Duration,
    counters: &BackendCounters,
    cancel: &CancellationToken,
    kill: &CancellationToken,
) -> (RelayEnd, Relayed) {
    let base = Instant::now();
    let last = AtomicU64::new(0);
    let (client_rx, client_tx) = client.split();
    let (backend_rx, backend_tx) = backend.split();
    let eofs = AtomicU8::new(0);
    let tally = |bytes| Tally {
        bytes,
        last: &last,
        base,
    };
    let up = pump(
        client_rx,
        backend_tx,
        early,
        tally(&counters.bytes_to_backend),
        &eofs,
    );
    let down = pump(
        backend_rx,
        client_tx,
        None,
        tally(&counters.bytes_to_client),
        &eofs,
    );
    tokio::pin!(up, down);
    let mut moved = Relayed::default();
    let (mut up_done, mut down_done) = (false, false);
    let idle_sleep = tokio::time::sleep(idle);
    tokio::pin!(idle_sleep);
    let end = loop {
        tokio::select! {
            r = &mut up, if !up_done => {
                up_done = true;
                match r {
                    Ok(n) => moved.to_backend = n,
                    Err(_) => break RelayEnd::Error,
                }
            }
            r = &mut down, if !down_done => {
                down_done = true;
                match r {
                    Ok(n) => moved.to_client = n,
                    Err(_) => break RelayEnd::Error,
                }
            }
            _ = &mut idle_sleep => {
                let last_at = base + Duration::from_millis(last.load(Ordering::Relaxed));
                if last_at.elapsed() >= idle {
                    break RelayEnd::Idle;
                }
                idle_sleep.as_mut().reset(last_at + idle);
            }
            _ = cancel.cancelled() => break RelayEnd::Cancelled,
            _ = kill.cancelled() => break RelayEnd::Killed,
        }
        if up_done && down_done {
            break RelayEnd::Closed;
        }
    };
    (end, moved)
}

/// Copies `src` to `dst` (`early` first) until EOF on `src`, then shuts down `dst`'s sending
/// half, unless the other direction has already ended: both sockets are about to be closed,
/// and close sends the FIN anyway (one syscall less per connection, which shows on short
/// connections).
async fn pump(
    mut src: ReadHalf<'_>,
    mut dst: WriteHalf<'_>,
    early: Option<Early>,
    tally: Tally<'_>,
    eofs: &AtomicU8,
) -> io::Result<u64> {
    let mut total = match early {
        Some(e) => e.finish(&mut dst, tally).await?,
        None => 0,
    };
    loop {
        // The peer's FIN shows in the readiness (EPOLLRDHUP) together with its last data, as
        // a response and its close usually arrive: when it was seen *before* a read that
        // drained the socket, nothing can follow, and the read that would only return 0 is
        // skipped.
        let fin_seen = src.ready(Interest::READABLE).await?.is_read_closed();
        let mut buf = take_buf();
        let r = drain(&mut src, &mut dst, &mut buf, fin_seen, tally, &mut total).await;
        give_buf(buf);
        match r {
            Ok(Drained::Eof) => {}
            Ok(Drained::Short) if fin_seen => {}
            // A read that found no data, or one that tokio refused because the task's
            // cooperative budget is spent. `ready()` spends no budget and answers at once in
            // the latter case, so without this the task would loop here without ever yielding
            // (a relay with both directions full, 24 MiB each way in tests/balancer.rs, spun
            // its data-plane thread at 100 % and stalled every connection on it).
            Ok(Drained::Pending) => {
                tokio::task::coop::consume_budget().await;
                continue;
            }
            Ok(_) => continue,
            Err(e) => return Err(e),
        }
        // Peer finished sending: pass the FIN on. An error means the other side is already
        // fully closed, which is fine.
        if eofs.fetch_add(1, Ordering::Relaxed) == 0 {
            let _ = dst.shutdown().await;
        }
        return Ok(total);
    }
}

/// Sends what `dst` takes of `data` now, corked (`MSG_MORE`): the caller's shutdown or close
/// pushes it out with the FIN. Synchronous, so it adds no state to the relay's future (an idle
/// relay is mostly future, `benches/idle-rss.py`); whatever it could not send, the caller
/// writes the usual way.
fn send_corked(dst: &TcpStream, data: &[u8]) -> io::Result<usize> {
    let sent = dst.try_io(Interest::WRITABLE, || {
        socket2::SockRef::from(dst).send_with_flags(data, libc::MSG_MORE | libc::MSG_NOSIGNAL)
    });
    match sent {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

/// How [`drain`] stopped.
enum Drained {
    /// The peer closed its sending half.
    Eof,
    /// A short read: the socket's receive queue is empty.
    Short,
    /// Not readable after all (spurious readiness), or tokio's cooperative budget is spent.
    Pending,
}

/// Moves what `src` has buffered, until EOF or a short read.
///
/// Reads go through `AsyncRead::poll_read`, which on Linux marks the socket drained after a
/// short read (tokio#5866): that saves the extra read that would only return EAGAIN, one
/// syscall per message on request/response traffic.
///
/// `fin_seen`: the peer's FIN was already queued behind the data, so a short read is the last
/// data this direction will carry. That write goes out corked (`MSG_MORE`), and the shutdown
/// or close that follows at once sends it and the FIN as one segment, as HAProxy often does:
/// on loopback every segment runs the receiver's TCP input in our system call, and a FIN of
/// its own can wake the receiver a second time.
///
/// `buf` is a thin `&mut Box` rather than a slice: this future's arguments live in every idle
/// relay (twice), and the 8 bytes saved on each keep the task in the allocation size it had
/// before `fin_seen` came (`benches/idle-rss.py`: 2.94 KiB per idle connection with a slice
/// here, 2.82 with this, as before).
async fn drain(
    src: &mut ReadHalf<'_>,
    dst: &mut WriteHalf<'_>,
    buf: &mut Box<[u8]>,
    fin_seen: bool,
    tally: Tally<'_>,
    total: &mut u64,
) -> io::Result<Drained> {
    loop {
        let mut rb = ReadBuf::new(buf);
        let polled = std::future::poll_fn(|cx| match Pin::new(&mut *src).poll_read(cx, &mut rb) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            // Not ready: readiness is cleared; the caller waits on `readable()` again.
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        let n = rb.filled().len();
        match polled {
            None => return Ok(Drained::Pending),
            Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Some(Err(e)) => return Err(e),
            Some(Ok(())) if n == 0 => return Ok(Drained::Eof),
            Some(Ok(())) => {
                let corked = if fin_seen && n < buf.len() {
                    send_corked(dst.as_ref(), &buf[..n])?
                } else {
                    0
                };
                // A no-op when the corked send took everything, as it does unless the
                // socket's send buffer is full.
                dst.write_all(&buf[corked..n]).await?;
                *total += n as u64;
                tally.moved(n);
                if n < buf.len() {
                    return Ok(Drained::Short);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{BackendCounters, Metrics};
    use std::io::Write;
    use std::net::Shutdown;

    /// A loopback connection: the proxy's end (tokio) and the peer's (std, blocking).
    async fn connection() -> (TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        (TcpStream::from_std(ours).unwrap(), peer)
    }

    /// Relays between our two ends as `handle` would, with no early bytes and fresh counters.
    async fn relay_between(
        client_end: &mut TcpStream,
        backend_end: &mut TcpStream,
    ) -> (RelayEnd, Relayed) {
        let metrics = Metrics::new();
        let counters = BackendCounters::new(&metrics, "svc", "be");
        let (cancel, kill) = (CancellationToken::new(), CancellationToken::new());
        let idle = Duration::from_secs(10);
        relay(
            client_end,
            backend_end,
            None,
            idle,
            &counters,
            &cancel,
            &kill,
        )
        .await
    }

    /// Segments `s` has received so far (`tcpi_segs_in`, Linux 4.2+).
    fn segments_in(s: &std::net::TcpStream) -> u32 {
        use std::os::fd::AsRawFd;
        // SAFETY: an all-zero tcp_info is valid; getsockopt writes at most `len` bytes into it.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: as above; the fd is live for the call.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "TCP_INFO: {}", io::Error::last_os_error());
        info.tcpi_segs_in
    }

    #[tokio::test]
    async fn a_response_and_its_fin_reach_the_client_in_one_segment() {
        let (mut client_end, client) = connection().await;
        let (mut backend_end, mut backend) = connection().await;
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // The backend answers and closes, as an HTTP server does on `Connection: close`; both
        // are queued on our end before the relay looks (loopback delivers inside the send).
        backend.write_all(b"HTTP/1.1 200 OK\r\n\r\nbye").unwrap();
        backend.shutdown(Shutdown::Write).unwrap();
        let before = segments_in(&client);

        let reader = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            (&client).read_to_end(&mut got)?;
            let after = segments_in(&client);
            // Our half-close ends the relay.
            client.shutdown(Shutdown::Write)?;
            Ok::<_, io::Error>((got, after))
        });
        let (end, moved) = relay_between(&mut client_end, &mut backend_end).await;
        let (got, after) = reader.await.unwrap().unwrap();

        assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\nbye");
        assert_eq!((end, moved.to_client), (RelayEnd::Closed, got.len() as u64));
        assert_eq!(
            after - before,
            1,
            "the response and the FIN came in separate segments"
        );
    }

    #[tokio::test]
    async fn a_last_read_larger_than_the_send_buffer_arrives_whole_before_the_fin() {
        // The backend's response and FIN are all queued on our end (under one read buffer),
        // and the client's buffers are small and full: the corked send takes only part of
        // the last read, and the rest goes the usual way.
        const LEN: usize = 48 << 10;
        let (mut client_end, client) = connection().await;
        let (mut backend_end, mut backend) = connection().await;
        socket2::SockRef::from(&client_end)
            .set_send_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(4096)
            .unwrap();
        let body: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        backend.write_all(&body).unwrap();
        backend.shutdown(Shutdown::Write).unwrap();
        let reader = tokio::task::spawn_blocking(move || {
            client.set_read_timeout(Some(Duration::from_secs(10)))?;
            // Late, so that the relay finds the client's buffers full.
            std::thread::sleep(Duration::from_millis(100));
            let mut got = Vec::new();
            (&client).read_to_end(&mut got)?;
            client.shutdown(Shutdown::Write)?;
            Ok::<_, io::Error>(got)
        });
        let (end, moved) = relay_between(&mut client_end, &mut backend_end).await;
        let got = reader.await.unwrap().unwrap();

        assert_eq!((end, moved.to_client), (RelayEnd::Closed, LEN as u64));
        assert!(
            got == body,
            "{} bytes arrived, not the {LEN} sent, in order",
            got.len()
        );
    }
}
