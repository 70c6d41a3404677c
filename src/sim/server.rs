//! The simulated gateway's I/O shell: accept, TLS, HTTP heads, IN/OUT pairing, WebSocket
//! framing and the relay loop around the pure [`Session`]. Faults are applied here.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::session::{Action, CloseReason, Session, SessionOptions, State, TokenVerdict};
use super::{
    Fault, Faults, SimConfig, Transport, TunnelRecord, MAX_CHUNK, MAX_HEAD, MAX_PENDING,
    MAX_RECORDS, MAX_WS_PAYLOAD, SEED,
};
use crate::rdg::http::{self, ChunkedDecoder, Head};
use crate::rdg::packet::{Packet, PacketType, ParseError, TunnelResponse};
use crate::rdg::websocket::{encode_server_frame, FrameDecoder, Opcode};
use crate::rdg::{hresult, packet};
use crate::token::Verifier;

/// TLS handshake budget.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// A request head must arrive within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A tunnel with no client bytes for this long is closed (Windows default idle is longer;
/// tests never get near it).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Budget for connecting to the target host.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Socket read size.
const READ_BUF: usize = 16 * 1024;

macro_rules! counters {
    ($($name:ident: $doc:literal,)*) => {
        #[derive(Debug, Default)]
        struct Stats { $($name: AtomicU64,)* }

        /// The simulator's counters at one moment (all monotonic since spawn).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct StatsSnapshot { $(#[doc = $doc] pub $name: u64,)* }

        impl Stats {
            fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl StatsSnapshot {
            /// Every counter as `(name, value)`, in declaration order.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    connections: "TCP connections accepted.",
    tls_failures: "TLS handshakes that failed or timed out.",
    http_bad_requests: "Requests answered 400 (bad head, missing header, unknown method) or 404.",
    http_fault_answers: "Requests answered 503/401 because of a fault.",
    hung: "Connections held without an answer (`hang`).",
    tunnels_legacy: "Legacy tunnels started (OUT and IN paired).",
    tunnels_websocket: "WebSocket tunnels started (101 sent).",
    in_without_out: "RDG_IN_DATA with no waiting RDG_OUT_DATA of the same connection id.",
    out_without_in: "RDG_OUT_DATA whose RDG_IN_DATA did not come in time.",
    registry_full: "RDG_OUT_DATA refused (503) because the pairing registry was full.",
    tokens_ok: "Tokens accepted at TUNNEL_CREATE.",
    tokens_rejected: "Tokens refused at TUNNEL_CREATE.",
    channels_opened: "Channels opened to a target.",
    channels_refused: "CHANNEL_CREATE refused (resource denied or target unreachable).",
    wrong_state_packets: "Packets refused because of the tunnel state.",
    bad_packets: "Connections closed on bytes that do not frame (packet, chunk or frame).",
    bytes_to_target: "DATA bytes written to targets.",
    bytes_from_target: "Bytes read from targets.",
}

/// The legacy IN channel, handed from its connection task to the OUT task that runs the tunnel.
struct InHalf {
    stream: TlsStream<TcpStream>,
    leftover: Vec<u8>,
    input: Input,
}

struct Shared {
    name: String,
    tls: Arc<rustls::ServerConfig>,
    alt_expired: Option<Arc<rustls::ServerConfig>>,
    alt_wrong_san: Option<Arc<rustls::ServerConfig>>,
    verifier: Arc<Verifier>,
    /// For `untrusted-issuer`: trusts nobody.
    empty_verifier: Arc<Verifier>,
    target_override: Option<SocketAddr>,
    pair_timeout: Duration,
    faults: RwLock<Faults>,
    stats: Stats,
    records: Mutex<VecDeque<Arc<Mutex<TunnelRecord>>>>,
    /// Legacy OUT channels waiting for their IN channel, by lower-cased connection id.
    pending: Mutex<HashMap<String, oneshot::Sender<InHalf>>>,
    next_seq: AtomicU64,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn bump(&self, c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    fn new_record(&self, rec: TunnelRecord) -> Arc<Mutex<TunnelRecord>> {
        let rec = Arc::new(Mutex::new(rec));
        let mut all = lock(&self.records);
        if all.len() >= MAX_RECORDS {
            all.pop_front();
        }
        all.push_back(rec.clone());
        rec
    }
}

/// A cloneable handle on a running simulated gateway: faults, counters, records. This is the
/// control interface the lab and the drills use.
#[derive(Clone)]
pub struct SimControl {
    shared: Arc<Shared>,
}

impl SimControl {
    /// The gateway's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Turns a fault on (replacing one of the same kind).
    pub fn set_fault(&self, fault: Fault) {
        info!(gateway = %self.shared.name, %fault, "sim.fault set");
        self.shared
            .faults
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set(fault);
    }

    /// Turns one fault kind off.
    pub fn clear_fault(&self, fault: Fault) {
        self.shared
            .faults
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .unset(fault);
    }

    /// Turns every fault off.
    pub fn clear_faults(&self) {
        info!(gateway = %self.shared.name, "sim.fault cleared");
        *self
            .shared
            .faults
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Faults::none();
    }

    /// The active faults.
    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// The counters now.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Every kept tunnel record, oldest first (running tunnels show their state so far).
    pub fn records(&self) -> Vec<TunnelRecord> {
        lock(&self.shared.records)
            .iter()
            .map(|r| lock(r).clone())
            .collect()
    }
}

/// A running simulated gateway. Dropping it kills it.
pub struct SimGateway {
    control: SimControl,
    addr: SocketAddr,
    tasks: TaskTracker,
}

impl SimGateway {
    /// Binds `listen` (port 0: any free port) and serves until [`SimGateway::kill`].
    pub async fn spawn(listen: SocketAddr, cfg: SimConfig) -> io::Result<SimGateway> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: cfg.name,
            tls: cfg.tls,
            alt_expired: cfg.alt_tls_expired,
            alt_wrong_san: cfg.alt_tls_wrong_san,
            verifier: Arc::new(cfg.verifier),
            empty_verifier: Arc::new(Verifier::new([])),
            target_override: cfg.target_override,
            pair_timeout: cfg.pair_timeout,
            faults: RwLock::new(cfg.faults),
            stats: Stats::default(),
            records: Mutex::new(VecDeque::new()),
            pending: Mutex::new(HashMap::new()),
            next_seq: AtomicU64::new(1),
            stop: CancellationToken::new(),
        });
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(listener, shared.clone(), tasks.clone()));
        info!(gateway = %shared.name, %addr, "sim.listen");
        Ok(SimGateway {
            control: SimControl { shared },
            addr,
            tasks,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The control handle (cloneable, outlives nothing: it only reads and sets state).
    pub fn control(&self) -> SimControl {
        self.control.clone()
    }

    /// Stops abruptly, the way a crashed gateway goes: the listener closes and every
    /// connection is dropped mid-stream.
    pub fn kill(&self) {
        self.control.shared.stop.cancel();
        self.tasks.close();
    }

    /// Waits until every task has ended after [`SimGateway::kill`].
    pub async fn stopped(&self) {
        self.tasks.wait().await;
    }

    /// Serves the line-based control protocol ([`super::control`]) on `listener` until the
    /// gateway is killed. Bind it to loopback: it has no authentication.
    pub fn serve_control(&self, listener: TcpListener) {
        let l = Arc::new(listener);
        self.serve_control_with(move || {
            let l = l.clone();
            async move { l.accept().await.map(|(s, _)| s) }
        });
    }

    /// [`SimGateway::serve_control`] on a Unix socket (put it in a directory only the user
    /// can reach).
    pub fn serve_control_unix(&self, listener: tokio::net::UnixListener) {
        let l = Arc::new(listener);
        self.serve_control_with(move || {
            let l = l.clone();
            async move { l.accept().await.map(|(s, _)| s) }
        });
    }

    /// The accept loop both control listeners share: one task per control connection, all
    /// ended when the gateway is killed.
    fn serve_control_with<S, F, Fut>(&self, mut accept: F)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = io::Result<S>> + Send,
    {
        let (control, tasks) = (self.control.clone(), self.tasks.clone());
        self.tasks.spawn(async move {
            let stop = control.shared.stop.clone();
            loop {
                let s = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = accept() => match r { Ok(s) => s, Err(_) => continue },
                };
                let (c, stop) = (control.clone(), stop.clone());
                tasks.spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = super::control::serve_conn(c, s) => {}
                    }
                });
            }
        });
    }

    /// See [`SimControl::set_fault`].
    pub fn set_fault(&self, fault: Fault) {
        self.control.set_fault(fault);
    }

    /// See [`SimControl::clear_faults`].
    pub fn clear_faults(&self) {
        self.control.clear_faults();
    }

    /// See [`SimControl::stats`].
    pub fn stats(&self) -> StatsSnapshot {
        self.control.stats()
    }

    /// See [`SimControl::records`].
    pub fn records(&self) -> Vec<TunnelRecord> {
        self.control.records()
    }
}

impl Drop for SimGateway {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn accept_loop(listener: TcpListener, sh: Arc<Shared>, tasks: TaskTracker) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = sh.stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(gateway = %sh.name, %error, "sim.accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        sh.bump(&sh.stats.connections);
        let sh = sh.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = sh.stop.cancelled() => {}
                _ = handle_conn(sh.clone(), tcp, peer) => {}
            }
        });
    }
}

// === HTTP ===

/// `Date:` value, RFC 1123 / RFC 9110 IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(crate) fn http_date(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let wd = match t.weekday() {
        time::Weekday::Monday => "Mon",
        time::Weekday::Tuesday => "Tue",
        time::Weekday::Wednesday => "Wed",
        time::Weekday::Thursday => "Thu",
        time::Weekday::Friday => "Fri",
        time::Weekday::Saturday => "Sat",
        time::Weekday::Sunday => "Sun",
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mon = MONTHS
        .get(usize::from(u8::from(t.month())).saturating_sub(1))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{wd}, {:02} {mon} {:04} {:02}:{:02}:{:02} GMT",
        t.day(),
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn response(status: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut s = format!(
        "HTTP/1.1 {status}\r\nDate: {}\r\n",
        http_date(SystemTime::now())
    );
    for (k, v) in headers {
        s.push_str(k);
        s.push_str(": ");
        s.push_str(v);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn error_response(status: &str) -> Vec<u8> {
    response(status, &[("Content-Length", "0"), ("Connection", "close")])
}

enum HeadRead {
    Head(Head, usize),
    Eof,
    Bad(String),
    Io,
}

async fn read_head<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> HeadRead {
    let mut chunk = [0u8; 4096];
    loop {
        match http::parse_request_head(buf) {
            Ok(Some((head, n))) => return HeadRead::Head(head, n),
            Ok(None) if buf.len() >= MAX_HEAD => {
                return HeadRead::Bad(format!("head longer than {MAX_HEAD} bytes"))
            }
            Ok(None) => {}
            Err(e) => return HeadRead::Bad(e.to_string()),
        }
        match timeout(HEAD_TIMEOUT, s.read(&mut chunk)).await {
            Ok(Ok(0)) if buf.is_empty() => return HeadRead::Eof,
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            _ => return HeadRead::Io,
        }
    }
}

fn connection_id(head: &Head) -> Option<String> {
    let v = head.header("RDG-Connection-Id")?;
    let s = std::str::from_utf8(v).ok()?.trim();
    (!s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| s.to_owned())
}

async fn handle_conn(sh: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let faults = sh.faults();
    let tls_cfg = if faults.has(Fault::ExpiredCert) {
        sh.alt_expired.clone()
    } else if faults.has(Fault::WrongSan) {
        sh.alt_wrong_san.clone()
    } else {
        Some(sh.tls.clone())
    };
    let tls_cfg = tls_cfg.unwrap_or_else(|| {
        warn!(gateway = %sh.name, "sim.fault certificate fault set but no alternate TLS config given");
        sh.tls.clone()
    });
    if faults.has(Fault::ResetAfterHandshake) {
        // Linger 0: the close after HANDSHAKE_RESPONSE becomes a TCP reset.
        let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
    }
    let mut tls = match timeout(TLS_TIMEOUT, TlsAcceptor::from(tls_cfg).accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(error)) => {
            debug!(gateway = %sh.name, %peer, %error, "sim.tls failed");
            sh.bump(&sh.stats.tls_failures);
            return;
        }
        Err(_) => {
            sh.bump(&sh.stats.tls_failures);
            return;
        }
    };
    if faults.has(Fault::Hang) {
        sh.bump(&sh.stats.hung);
        let mut sink = [0u8; 4096];
        while let Ok(n) = tls.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
        return;
    }
    let mut buf = Vec::with_capacity(4096);
    let (head, used) = match read_head(&mut tls, &mut buf).await {
        HeadRead::Head(h, n) => (h, n),
        HeadRead::Eof | HeadRead::Io => return,
        HeadRead::Bad(why) => {
            debug!(gateway = %sh.name, %peer, %why, "sim.http bad request");
            sh.bump(&sh.stats.http_bad_requests);
            let _ = tls.write_all(&error_response("400 Bad Request")).await;
            let _ = tls.shutdown().await;
            return;
        }
    };
    let leftover = buf.get(used..).unwrap_or_default().to_vec();
    let faults = sh.faults();
    if let Some(d) = faults.slow() {
        tokio::time::sleep(d).await;
    }
    let answer = if faults.has(Fault::Http503) {
        Some(error_response("503 Service Unavailable"))
    } else if faults.has(Fault::Http401) {
        Some(response(
            "401 Unauthorized",
            &[
                ("WWW-Authenticate", "Negotiate"),
                ("WWW-Authenticate", "NTLM"),
                ("Content-Length", "0"),
            ],
        ))
    } else {
        None
    };
    if let Some(answer) = answer {
        sh.bump(&sh.stats.http_fault_answers);
        let _ = tls.write_all(&answer).await;
        let _ = tls.shutdown().await;
        return;
    }
    let bad = |status: &str| error_response(status);
    let Some(conn_id) = connection_id(&head) else {
        sh.bump(&sh.stats.http_bad_requests);
        let _ = tls.write_all(&bad("400 Bad Request")).await;
        let _ = tls.shutdown().await;
        return;
    };
    if !head
        .path
        .trim_end_matches('/')
        .eq_ignore_ascii_case(http::RESOURCE_PATH.trim_end_matches('/'))
    {
        sh.bump(&sh.stats.http_bad_requests);
        let _ = tls.write_all(&bad("404 Not Found")).await;
        let _ = tls.shutdown().await;
        return;
    }
    match head.method.as_str() {
        http::METHOD_OUT => {
            let upgrade =
                head.has_token("connection", "upgrade") && head.has_token("upgrade", "websocket");
            if upgrade && !faults.has(Fault::WebSocketUnsupported) {
                websocket_out(sh, tls, peer, &head, conn_id, leftover).await;
            } else {
                legacy_out(sh, tls, peer, conn_id).await;
            }
        }
        http::METHOD_IN => legacy_in(sh, tls, &head, conn_id, leftover).await,
        _ => {
            sh.bump(&sh.stats.http_bad_requests);
            let _ = tls.write_all(&bad("400 Bad Request")).await;
            let _ = tls.shutdown().await;
        }
    }
}

async fn websocket_out(
    sh: Arc<Shared>,
    mut tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    head: &Head,
    conn_id: String,
    leftover: Vec<u8>,
) {
    let Some(key) = head.header("Sec-WebSocket-Key").map(<[u8]>::trim_ascii) else {
        sh.bump(&sh.stats.http_bad_requests);
        let _ = tls.write_all(&error_response("400 Bad Request")).await;
        return;
    };
    // Over the key bytes as sent: FreeRDP 2.11's 15-character non-base64 key must work.
    let accept = http::websocket_accept(key);
    let resp = response(
        "101 Switching Protocols",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", &accept),
        ],
    );
    if tls.write_all(&resp).await.is_err() {
        return;
    }
    sh.bump(&sh.stats.tunnels_websocket);
    let (rd, wr) = tokio::io::split(tls);
    let input = Input::WebSocket(FrameDecoder::new(MAX_WS_PAYLOAD));
    run_tunnel(
        sh,
        conn_id,
        peer,
        Transport::WebSocket,
        rd,
        wr,
        input,
        leftover,
    )
    .await;
}

async fn legacy_out(
    sh: Arc<Shared>,
    mut tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    conn_id: String,
) {
    let key = conn_id.to_ascii_lowercase();
    let (tx, rx) = oneshot::channel();
    let registered = {
        let mut pending = lock(&sh.pending);
        if pending.len() >= MAX_PENDING && !pending.contains_key(&key) {
            false
        } else {
            pending.insert(key.clone(), tx);
            true
        }
    };
    if !registered {
        sh.bump(&sh.stats.registry_full);
        let _ = tls
            .write_all(&error_response("503 Service Unavailable"))
            .await;
        return;
    }
    let mut resp = response("200 OK", &[]);
    resp.extend_from_slice(&SEED);
    if tls.write_all(&resp).await.is_err() || tls.flush().await.is_err() {
        lock(&sh.pending).remove(&key);
        return;
    }
    let half = match timeout(sh.pair_timeout, rx).await {
        Ok(Ok(half)) => half,
        _ => {
            lock(&sh.pending).remove(&key);
            sh.bump(&sh.stats.out_without_in);
            debug!(gateway = %sh.name, %conn_id, "sim.pair OUT without IN");
            return;
        }
    };
    sh.bump(&sh.stats.tunnels_legacy);
    let InHalf {
        stream,
        leftover,
        input,
    } = half;
    run_tunnel(
        sh,
        conn_id,
        peer,
        Transport::Legacy,
        stream,
        tls,
        input,
        leftover,
    )
    .await;
}

async fn legacy_in(
    sh: Arc<Shared>,
    mut tls: TlsStream<TcpStream>,
    head: &Head,
    conn_id: String,
    leftover: Vec<u8>,
) {
    let input = if head.is_chunked() {
        Input::Chunked(ChunkedDecoder::new(MAX_CHUNK))
    } else {
        match head.content_length() {
            Ok(Some(n)) if n > 0 => Input::Raw { left: n },
            Ok(_) => Input::MaybeSecondHead(Vec::new()),
            Err(_) => {
                sh.bump(&sh.stats.http_bad_requests);
                let _ = tls.write_all(&error_response("400 Bad Request")).await;
                return;
            }
        }
    };
    let Some(tx) = lock(&sh.pending).remove(&conn_id.to_ascii_lowercase()) else {
        sh.bump(&sh.stats.in_without_out);
        debug!(gateway = %sh.name, %conn_id, "sim.pair IN without OUT");
        let _ = tls.shutdown().await;
        return;
    };
    if let Some(d) = sh.faults().slow() {
        tokio::time::sleep(d).await;
    }
    if tls
        .write_all(&response("200 OK", &[("Content-Length", "0")]))
        .await
        .is_err()
    {
        return;
    }
    let half = InHalf {
        stream: tls,
        leftover,
        input,
    };
    if tx.send(half).is_err() {
        sh.bump(&sh.stats.in_without_out);
    }
}

// === client → gateway byte stream ===

/// Turns the client's bytes into the packet byte stream (and WebSocket control replies).
enum Input {
    /// Legacy IN after a `Content-Length: 0` head: maybe FreeRDP's second `RDG_IN_DATA` head
    /// (chunked), maybe chunks right away.
    MaybeSecondHead(Vec<u8>),
    /// Legacy IN, chunked body.
    Chunked(ChunkedDecoder),
    /// Legacy IN, identity body of `left` more bytes.
    Raw { left: u64 },
    /// WebSocket frames.
    WebSocket(FrameDecoder),
}

/// What [`Input::feed`] saw besides data.
#[derive(Debug, PartialEq, Eq)]
enum Feed {
    More,
    /// The client ended its body / sent a close frame.
    End,
}

impl Input {
    fn feed(
        &mut self,
        input: &[u8],
        pkts: &mut Vec<u8>,
        replies: &mut Vec<u8>,
    ) -> Result<Feed, String> {
        match self {
            Input::MaybeSecondHead(buf) => {
                buf.extend_from_slice(input);
                let method = http::METHOD_IN.as_bytes();
                let n = buf.len().min(method.len());
                if buf.get(..n) == method.get(..n) {
                    if buf.len() < method.len() {
                        return Ok(Feed::More);
                    }
                    match http::parse_request_head(buf) {
                        Ok(None) if buf.len() > MAX_HEAD => {
                            Err("second RDG_IN_DATA head too long".into())
                        }
                        Ok(None) => Ok(Feed::More),
                        Err(e) => Err(format!("second RDG_IN_DATA head: {e}")),
                        Ok(Some((head, used))) => {
                            let rest = buf.get(used..).unwrap_or_default().to_vec();
                            *self = match head.content_length() {
                                Ok(Some(n)) if n > 0 && !head.is_chunked() => {
                                    Input::Raw { left: n }
                                }
                                _ => Input::Chunked(ChunkedDecoder::new(MAX_CHUNK)),
                            };
                            self.feed(&rest, pkts, replies)
                        }
                    }
                } else {
                    let rest = std::mem::take(buf);
                    *self = Input::Chunked(ChunkedDecoder::new(MAX_CHUNK));
                    self.feed(&rest, pkts, replies)
                }
            }
            Input::Chunked(dec) => {
                dec.decode(input, pkts).map_err(|e| e.to_string())?;
                Ok(if dec.is_done() { Feed::End } else { Feed::More })
            }
            Input::Raw { left } => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                pkts.extend_from_slice(input.get(..n).unwrap_or_default());
                *left -= n as u64;
                Ok(if *left == 0 { Feed::End } else { Feed::More })
            }
            Input::WebSocket(dec) => {
                let mut pos = 0;
                loop {
                    let rest = input.get(pos..).unwrap_or_default();
                    let (used, frame) = dec.decode(rest).map_err(|e| e.to_string())?;
                    pos += used;
                    let Some(frame) = frame else {
                        return Ok(Feed::More);
                    };
                    match frame.opcode {
                        // Payload is a byte stream: packets may span frames (FreeRDP's reader
                        // does the same with ours).
                        Opcode::Binary | Opcode::Continuation | Opcode::Text => {
                            pkts.extend_from_slice(&frame.payload)
                        }
                        Opcode::Ping => {
                            encode_server_frame(Opcode::Pong, &frame.payload, replies)
                                .map_err(|e| e.to_string())?;
                        }
                        Opcode::Pong => {}
                        Opcode::Close => {
                            let status = frame.payload.get(..2).unwrap_or_default();
                            encode_server_frame(Opcode::Close, status, replies)
                                .map_err(|e| e.to_string())?;
                            return Ok(Feed::End);
                        }
                    }
                }
            }
        }
    }
}

// === the tunnel ===

struct Tunnel<W> {
    sh: Arc<Shared>,
    transport: Transport,
    wr: W,
    session: Session,
    verifier: Arc<Verifier>,
    target_rd: Option<OwnedReadHalf>,
    target_wr: Option<OwnedWriteHalf>,
    record: Arc<Mutex<TunnelRecord>>,
    slow: Option<Duration>,
    bytes_to_target: u64,
    bytes_from_target: u64,
    /// What the counters already reflect: verdict seen, channel status seen, wrong-state count.
    accounted: (bool, bool, u64),
}

enum Event {
    Stop,
    Client(io::Result<usize>),
    ClientIdle,
    Target(io::Result<usize>),
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
async fn run_tunnel<R, W>(
    sh: Arc<Shared>,
    conn_id: String,
    peer: SocketAddr,
    transport: Transport,
    mut rd: R,
    wr: W,
    mut input: Input,
    leftover: Vec<u8>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let faults = sh.faults();
    let seq = sh.next_seq.fetch_add(1, Relaxed);
    let opts = SessionOptions {
        reject_all_tokens: faults.has(Fault::TokenReject),
        reset_after_handshake: faults.has(Fault::ResetAfterHandshake),
    };
    let verifier = if faults.has(Fault::UntrustedIssuer) {
        sh.empty_verifier.clone()
    } else {
        sh.verifier.clone()
    };
    let record = sh.new_record(TunnelRecord {
        seq,
        connection_id: conn_id,
        peer,
        transport,
        verdict: TokenVerdict::Pending,
        token: None,
        client_name: None,
        target: None,
        channel_status: None,
        bytes_to_target: 0,
        bytes_from_target: 0,
        close_reason: CloseReason::Open,
    });
    let mut t = Tunnel {
        sh,
        transport,
        wr,
        session: Session::new(u32::try_from(seq).unwrap_or(u32::MAX), opts),
        verifier,
        target_rd: None,
        target_wr: None,
        record,
        slow: faults.slow(),
        bytes_to_target: 0,
        bytes_from_target: 0,
        accounted: (false, false, 0),
    };
    let mut pkts: Vec<u8> = Vec::new();
    let mut replies: Vec<u8> = Vec::new();
    let mut rbuf = vec![0u8; READ_BUF];
    let mut tbuf = vec![0u8; READ_BUF];
    let mut fresh = leftover;
    let reason = loop {
        if !fresh.is_empty() {
            let fed = input.feed(&fresh, &mut pkts, &mut replies);
            fresh.clear();
            if !replies.is_empty() {
                let r = t.wr.write_all(&replies).await;
                replies.clear();
                if r.is_err() {
                    break CloseReason::IoError;
                }
            }
            let end = match fed {
                Ok(f) => f == Feed::End,
                Err(why) => {
                    debug!(gateway = %t.sh.name, %why, "sim.tunnel bad framing");
                    t.sh.bump(&t.sh.stats.bad_packets);
                    break CloseReason::BadPacket;
                }
            };
            if let Some(reason) = t.drain_packets(&mut pkts).await {
                break reason;
            }
            if end {
                break CloseReason::ClientEof;
            }
        }
        let ev = tokio::select! {
            _ = t.sh.stop.cancelled() => Event::Stop,
            r = timeout(IDLE_TIMEOUT, rd.read(&mut rbuf)) => match r {
                Ok(r) => Event::Client(r),
                Err(_) => Event::ClientIdle,
            },
            r = async {
                match t.target_rd.as_mut() {
                    Some(s) => s.read(&mut tbuf).await,
                    None => std::future::pending().await,
                }
            } => Event::Target(r),
        };
        match ev {
            Event::Stop => break CloseReason::Killed,
            Event::ClientIdle => break CloseReason::IoError,
            Event::Client(Ok(0)) => break CloseReason::ClientEof,
            Event::Client(Ok(n)) => fresh.extend_from_slice(rbuf.get(..n).unwrap_or_default()),
            Event::Client(Err(_)) => break CloseReason::IoError,
            Event::Target(r) => {
                let actions = match r {
                    Ok(n) if n > 0 => {
                        t.bytes_from_target += n as u64;
                        t.sh.stats.bytes_from_target.fetch_add(n as u64, Relaxed);
                        t.session.target_data(tbuf.get(..n).unwrap_or_default())
                    }
                    _ => {
                        t.target_rd = None;
                        t.session.target_closed()
                    }
                };
                if let Some(reason) = t.run(actions).await {
                    break reason;
                }
            }
        }
    };
    t.finish(reason).await;
}

impl<W: AsyncWrite + Unpin> Tunnel<W> {
    /// Parses every whole packet in `pkts` and runs the session on it.
    async fn drain_packets(&mut self, pkts: &mut Vec<u8>) -> Option<CloseReason> {
        loop {
            match packet::Packet::parse(pkts) {
                Ok((pkt, used)) => {
                    pkts.drain(..used.min(pkts.len()));
                    let actions = self.session.handle(pkt, &self.verifier, now_unix());
                    if let Some(reason) = self.run(actions).await {
                        return Some(reason);
                    }
                }
                Err(ParseError::Incomplete { .. }) => return None,
                Err(error) => {
                    debug!(gateway = %self.sh.name, %error, "sim.tunnel bad packet");
                    self.sh.bump(&self.sh.stats.bad_packets);
                    // A TUNNEL_CREATE too large to be a cookie is a bad cookie (step 1).
                    let ptype = PacketType(u16::from_le_bytes([
                        pkts.first().copied().unwrap_or(0),
                        pkts.get(1).copied().unwrap_or(0),
                    ]));
                    if ptype == PacketType::TUNNEL_CREATE
                        && self.session.state() == State::AwaitTunnelCreate
                    {
                        self.session.verdict = TokenVerdict::Rejected {
                            step: Some(1),
                            hresult: hresult::E_PROXY_COOKIE_BADPACKET,
                            reason: error.to_string(),
                        };
                        self.account();
                        let _ = self
                            .send(&Packet::TunnelResponse(TunnelResponse {
                                status: hresult::E_PROXY_COOKIE_BADPACKET,
                                ..TunnelResponse::default()
                            }))
                            .await;
                    }
                    return Some(CloseReason::BadPacket);
                }
            }
        }
    }

    async fn send(&mut self, pkt: &Packet) -> io::Result<()> {
        if let (Some(d), false) = (self.slow, matches!(pkt, Packet::Data(_))) {
            tokio::time::sleep(d).await;
        }
        let bytes = pkt
            .to_vec()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match self.transport {
            Transport::Legacy => self.wr.write_all(&bytes).await?,
            Transport::WebSocket => {
                let mut frame = Vec::with_capacity(bytes.len() + 10);
                encode_server_frame(Opcode::Binary, &bytes, &mut frame)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                self.wr.write_all(&frame).await?;
            }
        }
        self.wr.flush().await
    }

    /// Executes actions in order; `Some(reason)` when the tunnel must end.
    async fn run(&mut self, actions: Vec<Action>) -> Option<CloseReason> {
        let mut queue: VecDeque<Action> = actions.into();
        let mut end = None;
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send(pkt) => {
                    if self.send(&pkt).await.is_err() {
                        end = Some(CloseReason::IoError);
                        break;
                    }
                }
                Action::Relay(bytes) => {
                    let ok = match self.target_wr.as_mut() {
                        Some(w) => w.write_all(&bytes).await.is_ok(),
                        None => false,
                    };
                    if ok {
                        self.bytes_to_target += bytes.len() as u64;
                        self.sh
                            .stats
                            .bytes_to_target
                            .fetch_add(bytes.len() as u64, Relaxed);
                    } else {
                        self.target_wr = None;
                        queue.extend(self.session.target_closed());
                    }
                }
                Action::Connect { resources, port } => {
                    let stream = connect_target(&self.sh, &resources, port).await;
                    let ok = stream.is_some();
                    if let Some(s) = stream {
                        let _ = s.set_nodelay(true);
                        let (r, w) = s.into_split();
                        self.target_rd = Some(r);
                        self.target_wr = Some(w);
                    }
                    queue.extend(self.session.connect_result(ok));
                }
                Action::Close(reason) => {
                    end = Some(reason);
                    break;
                }
            }
        }
        self.account();
        end
    }

    /// Counts what the session changed since the last call and refreshes the record.
    fn account(&mut self) {
        let stats = &self.sh.stats;
        let s = &self.session;
        if !self.accounted.0 {
            match s.verdict {
                TokenVerdict::Ok { .. } => stats.tokens_ok.fetch_add(1, Relaxed),
                TokenVerdict::Rejected { .. } => stats.tokens_rejected.fetch_add(1, Relaxed),
                TokenVerdict::Pending => 0,
            };
            self.accounted.0 = s.verdict != TokenVerdict::Pending;
        }
        if !self.accounted.1 {
            match s.channel_status {
                Some(0) => stats.channels_opened.fetch_add(1, Relaxed),
                Some(_) => stats.channels_refused.fetch_add(1, Relaxed),
                None => 0,
            };
            self.accounted.1 = s.channel_status.is_some();
        }
        stats
            .wrong_state_packets
            .fetch_add(s.wrong_state_packets - self.accounted.2, Relaxed);
        self.accounted.2 = s.wrong_state_packets;
        self.sync_record(CloseReason::Open);
    }

    fn sync_record(&self, reason: CloseReason) {
        let s = &self.session;
        let mut r = lock(&self.record);
        r.verdict = s.verdict.clone();
        r.token.clone_from(&s.token_redacted);
        r.client_name.clone_from(&s.client_name);
        r.target.clone_from(&s.target);
        r.channel_status = s.channel_status;
        r.bytes_to_target = self.bytes_to_target;
        r.bytes_from_target = self.bytes_from_target;
        r.close_reason = reason;
    }

    async fn finish(mut self, reason: CloseReason) {
        self.sync_record(reason);
        let rec = lock(&self.record).clone();
        let gateway = &self.sh.name;
        macro_rules! tunnel_line {
            ($level:ident) => {
                $level!(
                    gateway = %gateway,
                    conn = %rec.connection_id,
                    transport = rec.transport.as_str(),
                    verdict = %rec.verdict,
                    token = rec.token.as_deref().unwrap_or("-"),
                    client = rec.client_name.as_deref().unwrap_or("-"),
                    target = rec.target.as_deref().unwrap_or("-"),
                    bytes_to_target = rec.bytes_to_target,
                    bytes_from_target = rec.bytes_from_target,
                    close = %reason,
                    "sim.tunnel"
                )
            };
        }
        // A tunnel that verified its token and opened no channel is a health probe's (the lab
        // probes each gateway every second): debug, so the lab's log shows clients and faults.
        if rec.verdict.is_ok() && rec.target.is_none() {
            tunnel_line!(debug);
        } else {
            tunnel_line!(info);
        }
        if reason == CloseReason::FaultReset {
            // Let HANDSHAKE_RESPONSE leave before the reset discards unsent data.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return;
        }
        if let Some(mut w) = self.target_wr.take() {
            let _ = w.shutdown().await;
        }
        if self.transport == Transport::WebSocket && reason != CloseReason::Killed {
            let mut close = Vec::new();
            if encode_server_frame(Opcode::Close, &1000u16.to_be_bytes(), &mut close).is_ok() {
                let _ = self.wr.write_all(&close).await;
            }
        }
        let _ = timeout(Duration::from_secs(1), self.wr.shutdown()).await;
    }
}

async fn connect_target(sh: &Shared, resources: &[String], port: u16) -> Option<TcpStream> {
    if let Some(addr) = sh.target_override {
        return timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .ok()?
            .ok();
    }
    for name in resources {
        match timeout(CONNECT_TIMEOUT, TcpStream::connect((name.as_str(), port))).await {
            Ok(Ok(s)) => return Some(s),
            Ok(Err(error)) => {
                debug!(gateway = %sh.name, %name, port, %error, "sim.channel connect failed")
            }
            Err(_) => debug!(gateway = %sh.name, %name, port, "sim.channel connect timed out"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_is_imf_fixdate() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn legacy_input_with_and_without_second_head() {
        let mut pk = Vec::new();
        let mut rep = Vec::new();
        let mut inp = Input::MaybeSecondHead(Vec::new());
        let mut wire =
            b"RDG_IN_DATA /remoteDesktopGateway/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        http::encode_chunk(&[1, 2, 3], true, &mut wire);
        for b in &wire {
            assert_eq!(inp.feed(&[*b], &mut pk, &mut rep), Ok(Feed::More));
        }
        assert_eq!(pk, [1, 2, 3]);

        let mut pk = Vec::new();
        let mut inp = Input::MaybeSecondHead(Vec::new());
        let mut wire = Vec::new();
        http::encode_chunk(&[9, 8], false, &mut wire);
        assert_eq!(inp.feed(&wire, &mut pk, &mut rep), Ok(Feed::More));
        assert_eq!(pk, [9, 8]);

        let mut pk = Vec::new();
        let mut inp = Input::Raw { left: 3 };
        assert_eq!(inp.feed(&[1, 2, 3, 4], &mut pk, &mut rep), Ok(Feed::End));
        assert_eq!(pk, [1, 2, 3]);
    }

    #[test]
    fn websocket_input_answers_ping_and_close() {
        use crate::rdg::websocket::encode_client_frame;
        let mut wire = Vec::new();
        encode_client_frame(Opcode::Binary, &[1, 2], [1, 2, 3, 4], &mut wire).expect("frame");
        encode_client_frame(Opcode::Ping, b"hi", [5, 6, 7, 8], &mut wire).expect("frame");
        encode_client_frame(Opcode::Close, &[3, 232], [5, 6, 7, 8], &mut wire).expect("frame");
        let (mut pk, mut rep) = (Vec::new(), Vec::new());
        let mut inp = Input::WebSocket(FrameDecoder::new(MAX_WS_PAYLOAD));
        assert_eq!(inp.feed(&wire, &mut pk, &mut rep), Ok(Feed::End));
        assert_eq!(pk, [1, 2]);
        assert_eq!(rep, [0x8A, 2, b'h', b'i', 0x88, 2, 3, 232]);
    }

    proptest::proptest! {
        /// Whatever the client sends, framing and the session never panic and the packet
        /// buffer stays bounded.
        #[test]
        fn arbitrary_input_never_panics(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..20),
            mode in 0u8..4,
        ) {
            let mut input = match mode {
                0 => Input::MaybeSecondHead(Vec::new()),
                1 => Input::Chunked(ChunkedDecoder::new(MAX_CHUNK)),
                2 => Input::Raw { left: 5000 },
                _ => Input::WebSocket(FrameDecoder::new(MAX_WS_PAYLOAD)),
            };
            let verifier = Verifier::new([]);
            let mut session = Session::new(1, SessionOptions::default());
            let (mut pkts, mut replies) = (Vec::new(), Vec::new());
            for c in &chunks {
                if input.feed(c, &mut pkts, &mut replies).is_err() {
                    break;
                }
                while let Ok((p, n)) = Packet::parse(&pkts) {
                    pkts.drain(..n);
                    let _ = session.handle(p, &verifier, 0);
                }
                proptest::prop_assert!(pkts.len() <= packet::MAX_CONTROL_PACKET + MAX_WS_PAYLOAD);
            }
        }
    }
}
