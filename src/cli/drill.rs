//! `portico drill`: carry out an operator action against a live node and show, as a client
//! sees it, what it did.
//!
//! A drain or disable drill, over the admin socket and the node's own services:
//!
//! 1. **Before.** Existing clients (one source address each, `127.R.i.2`: a fresh random `R`
//!    per run so earlier drills' stick entries do not interfere, one /24 each so an affinity
//!    prefix up to /24 still tells them apart) ask once over UDP (the lab's gateways answer
//!    with their name) and open one TCP connection each, held through the drill. A ticker
//!    client asks every 20 ms from then on.
//! 2. **Step.** `drain NAME` or `disable NAME [--kill]`, timestamped with the daemon's reply.
//! 3. **New clients** (sources never seen before) ask and connect: none may reach NAME (UDP
//!    answers, and NAME's TCP connection counter in `status`).
//! 4. **Existing clients** ask again: after a drain those pinned to NAME still reach it (NLB
//!    drainstop); after a disable they all moved.
//! 5. **Held connections** are checked: none lost (with `--kill`: those on NAME closed, the
//!    others intact); then closed, and NAME's connection count is followed down to 0.
//! 6. **Restore** (`enable NAME`) unless `--keep`, then the report and the expectations;
//!    the exit status is 1 when one failed.
//!
//! When the UDP side does not answer with the gateway's name (a real farm: only the lab's
//! gateways do), clients are followed over TCP instead, one at a time, by which gateway's
//! connection counter in `status` moved; the ticker holds while that counting runs.
//!
//! `vip-handover` runs the ticker against a VIP address and asks the node to `vrrp demote`;
//! the gap is the longest time the ticker saw no answer.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::Outcome;
use crate::admin::proto::{Reply, Request, Status, VrrpAction};
use crate::admin::AdminClient;

/// Exit status when the drill could not run at all (socket, unknown name, no service).
pub const EXIT_SETUP: u8 = 2;
/// How often the ticker client asks.
const TICK: Duration = Duration::from_millis(20);
/// How long one UDP question or TCP connect may take.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillKind {
    Drain,
    Disable { kill: bool },
}

#[derive(Debug, Clone)]
pub struct DrillArgs {
    pub kind: DrillKind,
    pub backend: String,
    /// Existing clients and new clients, each this many.
    pub clients: u8,
    /// The longest gap a client may see.
    pub max_gap: Duration,
    /// How long to follow NAME's connections down to 0 after the drill's own closed.
    pub drain_wait: Duration,
    /// Leave the backend drained/disabled at the end.
    pub keep: bool,
}

#[derive(Debug, Clone)]
pub struct HandoverArgs {
    /// The VIP and a service port on it.
    pub target: SocketAddr,
    pub udp: bool,
    pub max_gap: Duration,
    /// How long the ticker runs after the demote.
    pub watch: Duration,
    pub keep: bool,
}

/// The printed timeline: `+S.SSs event`, from the drill's start.
struct Timeline {
    t0: Instant,
    text: String,
    echo: bool,
}

impl Timeline {
    fn new(echo: bool) -> Timeline {
        Timeline {
            t0: Instant::now(),
            text: String::new(),
            echo,
        }
    }

    fn at(&mut self, when: Instant, what: impl AsRef<str>) {
        let t = when.saturating_duration_since(self.t0).as_secs_f64();
        let line = format!("+{t:.2}s {}\n", what.as_ref());
        if self.echo {
            print!("{line}");
        }
        self.text.push_str(&line);
    }

    fn now(&mut self, what: impl AsRef<str>) {
        self.at(Instant::now(), what);
    }
}

/// One expectation and whether it held.
struct Check {
    ok: bool,
    what: String,
}

/// What the ticker saw: (when, answer) per tick; `None` = no answer.
type Ticks = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

/// Runs a drain or disable drill against the node behind `socket`. With `echo`, the timeline
/// is printed as it happens (stdout of the returned outcome then holds only the report).
pub async fn run(socket: &Path, args: &DrillArgs, echo: bool) -> Outcome {
    let mut admin = match AdminClient::connect(socket).await {
        Ok(c) => c,
        Err(e) => return setup_fail(format!("portico drill: {e}")),
    };
    let status = match status(&mut admin).await {
        Ok(s) => s,
        Err(e) => return setup_fail(e),
    };
    let plan = match Plan::from_status(&status, &args.backend) {
        Ok(p) => p,
        Err(e) => return setup_fail(format!("portico drill: {e}")),
    };
    let mut tl = Timeline::new(echo);
    let outcome = drill(&mut admin, args, &plan, &mut tl).await;
    // Restore even when the drill failed half-way, unless told to keep the state.
    if !args.keep {
        match admin
            .call(&Request::Enable {
                backend: args.backend.clone(),
            })
            .await
        {
            Ok(Reply::Admin(_)) => tl.now(format!("enable {} (restored)", args.backend)),
            Ok(other) => tl.now(format!("enable {} FAILED: {other:?}", args.backend)),
            Err(e) => tl.now(format!("enable {} FAILED: {e}", args.backend)),
        }
    }
    let (report, checks) = match outcome {
        Ok(x) => x,
        Err(e) => (
            String::new(),
            vec![Check {
                ok: false,
                what: format!("drill ran to the end: {e}"),
            }],
        ),
    };
    finish(tl, report, checks, echo)
}

fn setup_fail(msg: String) -> Outcome {
    Outcome {
        stderr: msg + "\n",
        code: EXIT_SETUP,
        ..Outcome::default()
    }
}

fn finish(tl: Timeline, report: String, checks: Vec<Check>, echo: bool) -> Outcome {
    let mut out = String::new();
    if !echo {
        out.push_str(&tl.text);
    }
    out.push_str("\nreport\n");
    out.push_str(&report);
    out.push_str("expectations\n");
    let mut failed = 0;
    for c in &checks {
        let _ = writeln!(out, "  {}  {}", if c.ok { "ok  " } else { "FAIL" }, c.what);
        failed += usize::from(!c.ok);
    }
    if failed == 0 {
        out.push_str("result: PASS\n");
        Outcome::ok(out)
    } else {
        let _ = writeln!(out, "result: FAIL ({failed} expectation(s) not met)");
        Outcome {
            stdout: out,
            code: 1,
            ..Outcome::default()
        }
    }
}

async fn status(admin: &mut AdminClient) -> Result<Status, String> {
    match admin.call(&Request::Status).await {
        Ok(Reply::Status(s)) => Ok(s),
        Ok(Reply::Error(e)) => Err(format!("portico drill: status: {}", e.error)),
        Ok(other) => Err(format!("portico drill: unexpected reply {other:?}")),
        Err(e) => Err(format!("portico drill: {e}")),
    }
}

/// What the drill works with, from `status`.
struct Plan {
    tcp: Option<SocketAddr>,
    udp: Option<SocketAddr>,
    backends: Vec<String>,
}

impl Plan {
    fn from_status(s: &Status, backend: &str) -> Result<Plan, String> {
        let Some(b) = s.backends.iter().find(|b| b.name == backend) else {
            let mut known: Vec<&str> = s.backends.iter().map(|b| b.name.as_str()).collect();
            known.dedup();
            return Err(format!(
                "no backend named {backend:?}; known: {}",
                known.join(", ")
            ));
        };
        if b.admin != "enabled" {
            return Err(format!(
                "{backend} is {} already: enable it first (portico ctl enable {backend})",
                b.admin
            ));
        }
        let others = s
            .backends
            .iter()
            .filter(|o| o.pool == b.pool && o.name != backend)
            .filter(|o| o.admin == "enabled" && o.health == "up")
            .count();
        if others == 0 {
            return Err(format!(
                "no other eligible backend in pool {}: the drill would leave clients nowhere to go",
                b.pool
            ));
        }
        let addr = |proto: &str| {
            s.services
                .iter()
                .filter(|v| v.protocol == proto && v.pool == b.pool)
                .find_map(|v| {
                    v.bound
                        .as_deref()
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                })
        };
        let (tcp, udp) = (addr("tcp"), addr("udp"));
        if tcp.is_none() && udp.is_none() {
            return Err(format!("no listening service uses pool {}", b.pool));
        }
        Ok(Plan {
            tcp: tcp.map(loopback_if_unspecified),
            udp: udp.map(loopback_if_unspecified),
            backends: s
                .backends
                .iter()
                .filter(|o| o.pool == b.pool)
                .map(|o| o.name.clone())
                .collect(),
        })
    }
}

fn loopback_if_unspecified(a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
    } else {
        a
    }
}

/// Source address `i` of this run: 127.R.i.2.
fn source(run: u8, i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, run, i, 2))
}

fn run_octet() -> u8 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(7) ^ std::process::id())
        .unwrap_or(0);
    // 100..=249: clear of the 127.0.x.y a person or a test is likely to use by hand.
    100 + (n % 150) as u8
}

/// Asks the UDP service from `from` once on a fresh socket (a new flow): the answering
/// gateway's name if it is one of `names`, `Some("?")` for another answer, `None` for none.
async fn udp_ask(from: IpAddr, to: SocketAddr, names: &[String]) -> Option<String> {
    let s = UdpSocket::bind(SocketAddr::new(from, 0)).await.ok()?;
    s.send_to(b"portico-drill", to).await.ok()?;
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(ASK_TIMEOUT, s.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    let first = text.split(' ').next().unwrap_or_default();
    Some(if names.iter().any(|x| x == first) {
        first.to_string()
    } else {
        "?".to_string()
    })
}

async fn tcp_connect(from: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let s = match to {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .ok()?;
    s.bind(SocketAddr::new(from, 0)).ok()?;
    tokio::time::timeout(ASK_TIMEOUT, s.connect(to))
        .await
        .ok()?
        .ok()
}

/// Each backend's connections since start, by name.
async fn totals(admin: &mut AdminClient) -> Result<BTreeMap<String, u64>, String> {
    Ok(status(admin)
        .await?
        .backends
        .into_iter()
        .map(|b| (b.name, b.connections_total))
        .collect())
}

/// Connects from `from` and tells, from the node's per-backend connection counters, which
/// backend took the connection (for services that do not answer with a name, as a real
/// gateway farm does not). `Some("?")` when the counters cannot tell (other traffic moved
/// two at once, or none within half a second).
async fn tcp_which(
    admin: &mut AdminClient,
    from: IpAddr,
    to: SocketAddr,
) -> Result<(Option<String>, Option<TcpStream>), String> {
    let t0 = totals(admin).await?;
    let Some(c) = tcp_connect(from, to).await else {
        return Ok((None, None));
    };
    let until = Instant::now() + ASK_TIMEOUT;
    loop {
        let t1 = totals(admin).await?;
        let grew: Vec<&String> = t1
            .iter()
            .filter(|(k, v)| t0.get(*k).is_some_and(|before| *v > before))
            .map(|(k, _)| k)
            .collect();
        match grew.as_slice() {
            [one] => return Ok((Some((*one).clone()), Some(c))),
            [] if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => return Ok((Some("?".into()), Some(c))),
        }
    }
}

/// Open (nothing to read, no EOF), or closed/reset.
fn is_open(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.try_read(&mut b) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

/// Asks every [`TICK`] until `stop`: over UDP when the service has one, else a TCP connect
/// that stays open (not refused, not closed at once) counts as an answer.
/// What the ticker records while paused: not a question, so not a gap either.
const PAUSED: &str = "-";

/// `paused`: the TCP-only drill follows clients by the node's counters, which the ticker's
/// own connections would blur; while set, the ticker records [`PAUSED`] instead of asking.
fn spawn_ticker(
    from: IpAddr,
    plan: &Plan,
    stop: CancellationToken,
    paused: Arc<std::sync::atomic::AtomicBool>,
) -> (Ticks, tokio::task::JoinHandle<()>) {
    let ticks: Ticks = Arc::new(Mutex::new(Vec::new()));
    let (udp, tcp, names) = (plan.udp, plan.tcp, plan.backends.clone());
    let t = ticks.clone();
    let h = tokio::spawn(async move {
        let mut every = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            // Each ask runs on its own, stamped with when it was sent: an ask that hangs (a SYN
            // sent to the old owner's MAC just as the VIP moves) must not hold back the next
            // ones, or the gap would measure our timeout rather than the outage.
            let sent = Instant::now();
            let paused = paused.load(std::sync::atomic::Ordering::Relaxed);
            let (t, names) = (t.clone(), names.clone());
            tokio::spawn(async move {
                let answer = match (udp, tcp) {
                    _ if paused => Some(PAUSED.to_string()),
                    (Some(u), _) => udp_ask(from, u, &names).await,
                    (None, Some(a)) => tcp_alive(from, a).await.then(|| "tcp".to_string()),
                    (None, None) => None,
                };
                let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
                // Keep send order (asks finish out of order).
                let at = t.partition_point(|(s, _)| *s <= sent);
                t.insert(at, (sent, answer));
            });
        }
    });
    (ticks, h)
}

async fn tcp_alive(from: IpAddr, to: SocketAddr) -> bool {
    let Some(s) = tcp_connect(from, to).await else {
        return false;
    };
    // A balancer with no backend accepts and closes at once; give it a moment to say so.
    tokio::time::sleep(Duration::from_millis(30)).await;
    is_open(&s)
}

/// The longest stretch, within [from, to], between answers (or from `from` to the first
/// answer, or the last answer to `to`).
fn longest_gap(ticks: &[(Instant, Option<String>)], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut worst = Duration::ZERO;
    for (t, a) in ticks {
        if *t < from || *t > to || a.is_none() {
            continue;
        }
        worst = worst.max(t.saturating_duration_since(last));
        last = *t;
    }
    worst.max(to.saturating_duration_since(last))
}

fn tally(answers: &[Option<String>]) -> String {
    let mut m: BTreeMap<&str, usize> = BTreeMap::new();
    for a in answers {
        *m.entry(a.as_deref().unwrap_or("no answer")).or_default() += 1;
    }
    m.iter()
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn backend_of<'a>(s: &'a Status, name: &str) -> Option<&'a crate::admin::proto::BackendStatus> {
    s.backends.iter().find(|b| b.name == name)
}

async fn drill(
    admin: &mut AdminClient,
    args: &DrillArgs,
    plan: &Plan,
    tl: &mut Timeline,
) -> Result<(String, Vec<Check>), String> {
    let name = args.backend.as_str();
    let n = args.clients.clamp(2, 120);
    let r = run_octet();
    let existing: Vec<IpAddr> = (0..n).map(|i| source(r, i)).collect();
    let fresh: Vec<IpAddr> = (n..2 * n).map(|i| source(r, i)).collect();
    let mut checks = Vec::new();
    let mut report = String::new();

    // 1. Before: existing clients place themselves and hold a connection each.
    let mut before = Vec::with_capacity(existing.len());
    if let Some(u) = plan.udp {
        for &s in &existing {
            before.push(udp_ask(s, u, &plan.backends).await);
        }
    }
    // Gateways that do not answer UDP with their name (a real farm): tell who went where
    // from the node's TCP counters instead, one client at a time.
    let named = before
        .iter()
        .any(|a| a.as_deref().is_some_and(|n| n != "?"));
    let mut plan_now = Plan {
        tcp: plan.tcp,
        udp: plan.udp,
        backends: plan.backends.clone(),
    };
    if !named && plan.tcp.is_some() {
        if plan.udp.is_some() {
            tl.now("the UDP service gives no named answers: following clients by the node's TCP counters");
        }
        plan_now.udp = None;
        before.clear();
    }
    let plan = &plan_now;
    let mut held: Vec<(IpAddr, TcpStream)> = Vec::new();
    if let Some(t) = plan.tcp {
        for &s in &existing {
            if plan.udp.is_some() {
                if let Some(c) = tcp_connect(s, t).await {
                    held.push((s, c));
                }
            } else {
                let (who, c) = tcp_which(admin, s, t).await?;
                before.push(who);
                if let Some(c) = c {
                    held.push((s, c));
                }
            }
        }
    }
    // Let the relays reach their backends before counting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = status(admin).await?;
    let b = backend_of(&st, name).ok_or("backend vanished")?;
    let pinned_to_it: Vec<usize> = before
        .iter()
        .enumerate()
        .filter(|(_, a)| a.as_deref() == Some(name))
        .map(|(i, _)| i)
        .collect();
    tl.now(format!(
        "before: {n} existing clients → {}; {name} has {} connections, {} pinned clients",
        if before.is_empty() {
            format!("{} TCP connections held", held.len())
        } else {
            tally(&before)
        },
        b.active_connections,
        b.affinity_entries
    ));
    // The ticker asks from a client pinned to the gateway when there is one: that client's
    // view is what a drain must not break.
    let ticker_src = pinned_to_it
        .first()
        .map(|&i| existing[i])
        .unwrap_or(existing[0]);
    let stop = CancellationToken::new();
    let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ticks, ticker) = spawn_ticker(ticker_src, plan, stop.clone(), paused.clone());
    // Counting by counters (no UDP names): hold the ticker while clients are followed.
    let by_counters = plan.udp.is_none();
    let pause = |on: bool| {
        let paused = paused.clone();
        async move {
            if by_counters {
                paused.store(on, std::sync::atomic::Ordering::Relaxed);
                if on {
                    // Let a connection in flight land in the counters first.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 2. The step.
    let step_at = Instant::now();
    let req = match args.kind {
        DrillKind::Drain => Request::Drain {
            backend: name.into(),
        },
        DrillKind::Disable { kill } => Request::Disable {
            backend: name.into(),
            kill,
        },
    };
    let verb = match args.kind {
        DrillKind::Drain => "drain".to_string(),
        DrillKind::Disable { kill: true } => "disable --kill".to_string(),
        DrillKind::Disable { kill: false } => "disable".to_string(),
    };
    match admin.call(&req).await.map_err(|e| e.to_string())? {
        Reply::Admin(a) => tl.at(
            step_at,
            format!(
                "{verb} {name} · reply: {} connections remain, {} pinned clients",
                a.connections_remaining, a.pinned_clients
            ),
        ),
        Reply::Error(e) => return Err(format!("{verb} {name}: {}", e.error)),
        other => return Err(format!("{verb} {name}: unexpected reply {other:?}")),
    }
    if by_counters {
        // The ticker's view right after the step, before it holds for the counting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        pause(true).await;
    }
    let total_before_new = backend_of(&status(admin).await?, name)
        .map(|b| b.connections_total)
        .unwrap_or(0);

    // 3. New clients.
    let mut new_answers = Vec::new();
    let mut new_tcp = Vec::new();
    match (plan.udp, plan.tcp) {
        (Some(u), tcp) => {
            for &s in &fresh {
                new_answers.push(udp_ask(s, u, &plan.backends).await);
            }
            if let Some(t) = tcp {
                for &s in &fresh {
                    if let Some(c) = tcp_connect(s, t).await {
                        new_tcp.push(c);
                    }
                }
            }
        }
        (None, Some(t)) => {
            for &s in &fresh {
                let (who, c) = tcp_which(admin, s, t).await?;
                new_answers.push(who);
                new_tcp.extend(c);
            }
        }
        (None, None) => {}
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let total_after_new = backend_of(&status(admin).await?, name)
        .map(|b| b.connections_total)
        .unwrap_or(0);
    drop(new_tcp);
    let new_to_it = new_answers
        .iter()
        .filter(|a| a.as_deref() == Some(name))
        .count();
    let new_tcp_to_it = total_after_new.saturating_sub(total_before_new);
    tl.now(format!(
        "new clients → {}{}; TCP connections to {name}: {new_tcp_to_it}",
        if new_answers.is_empty() {
            "(no UDP service)".to_string()
        } else {
            tally(&new_answers)
        },
        if plan.tcp.is_some() {
            format!(" · {} new TCP connections", fresh.len())
        } else {
            String::new()
        }
    ));
    let unanswered_new = new_answers.iter().filter(|a| a.is_none()).count();
    checks.push(Check {
        ok: new_to_it == 0 && new_tcp_to_it == 0,
        what: format!(
            "no new client sent to {name} (UDP {new_to_it} of {}, TCP {new_tcp_to_it})",
            new_answers.len()
        ),
    });
    checks.push(Check {
        ok: unanswered_new == 0,
        what: format!(
            "every new client answered ({unanswered_new} of {} unanswered)",
            new_answers.len()
        ),
    });

    // 4. Existing clients again.
    let mut after = Vec::with_capacity(existing.len());
    if let Some(u) = plan.udp {
        for &s in &existing {
            after.push(udp_ask(s, u, &plan.backends).await);
        }
    } else if let Some(t) = plan.tcp {
        for &s in &existing {
            // A fresh connection each: where the client's next channel goes.
            let (who, _c) = tcp_which(admin, s, t).await?;
            after.push(who);
        }
    }
    let total_before_pinned = backend_of(&status(admin).await?, name)
        .map(|b| b.connections_total)
        .unwrap_or(0);
    let mut pinned_tcp = Vec::new();
    if let Some(t) = plan.tcp {
        for &i in &pinned_to_it {
            if let Some(c) = tcp_connect(existing[i], t).await {
                pinned_tcp.push(c);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pinned_tcp_to_it = backend_of(&status(admin).await?, name)
        .map(|b| b.connections_total)
        .unwrap_or(0)
        .saturating_sub(total_before_pinned);
    drop(pinned_tcp);
    let stayed = pinned_to_it
        .iter()
        .filter(|&&i| after.get(i).and_then(|a| a.as_deref()) == Some(name))
        .count();
    let moved = pinned_to_it.len() - stayed;
    let others_moved = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b.as_deref() != Some(name) && b.is_some() && b != a)
        .count();
    if !after.is_empty() {
        tl.now(format!(
            "existing clients → {} · of {} pinned to {name}: {stayed} stayed, {moved} moved",
            tally(&after),
            pinned_to_it.len()
        ));
    }
    match args.kind {
        DrillKind::Drain => {
            checks.push(Check {
                ok: stayed == pinned_to_it.len(),
                what: format!(
                    "clients pinned to {name} still reach it ({stayed} of {}; NLB drainstop)",
                    pinned_to_it.len()
                ),
            });
            if plan.tcp.is_some() {
                checks.push(Check {
                    ok: pinned_tcp_to_it as usize == pinned_to_it.len(),
                    what: format!(
                        "new TCP connections of pinned clients reach {name} ({pinned_tcp_to_it} of {})",
                        pinned_to_it.len()
                    ),
                });
            }
        }
        DrillKind::Disable { .. } => {
            checks.push(Check {
                ok: stayed == 0 && pinned_tcp_to_it == 0,
                what: format!(
                    "{name} gets nothing, pinned clients included (UDP {stayed}, TCP {pinned_tcp_to_it})"
                ),
            });
        }
    }
    checks.push(Check {
        ok: others_moved == 0,
        what: format!("clients of the other gateways did not move ({others_moved} moved)"),
    });

    pause(false).await;
    // 5. Held connections.
    let st = status(admin).await?;
    let on_it_now = backend_of(&st, name)
        .map(|b| b.active_connections)
        .unwrap_or(0);
    let held_on_it = |src: &IpAddr| {
        existing
            .iter()
            .position(|s| s == src)
            .is_some_and(|i| pinned_to_it.contains(&i))
    };
    let (mut lost, mut killed, mut open_on_it) = (0usize, 0usize, 0usize);
    for (src, c) in &held {
        let open = is_open(c);
        let on_it = held_on_it(src);
        match (on_it, open, args.kind) {
            (true, false, DrillKind::Disable { kill: true }) => killed += 1,
            (true, true, _) => open_on_it += 1,
            (_, false, _) => lost += 1,
            _ => {}
        }
    }
    tl.now(format!(
        "held connections: {} open, {lost} lost{} · {name} connections {on_it_now}",
        held.len() - lost - killed,
        if killed > 0 {
            format!(", {killed} closed by kill")
        } else {
            String::new()
        }
    ));
    checks.push(Check {
        ok: lost == 0,
        what: format!("no held connection lost ({lost} of {})", held.len()),
    });
    if let DrillKind::Disable { kill: true } = args.kind {
        checks.push(Check {
            ok: open_on_it == 0,
            what: format!("kill closed every connection to {name} ({open_on_it} still open)"),
        });
    }
    // The client's view is complete; its own connections would keep the count up.
    stop.cancel();
    let _ = ticker.await;
    let end = Instant::now();
    // Close ours and follow the gateway's connection count down.
    drop(held);
    let wait_until = Instant::now() + args.drain_wait;
    let mut last_seen = on_it_now;
    loop {
        let c = backend_of(&status(admin).await?, name)
            .map(|b| b.active_connections)
            .unwrap_or(0);
        if c != last_seen || c == 0 {
            tl.now(format!("{name} connections {c}"));
            last_seen = c;
        }
        if c == 0 {
            break;
        }
        if Instant::now() >= wait_until {
            tl.now(format!(
                "{name} still has {c} connections after {:.0}s (other clients' sessions; a drain waits for them)",
                args.drain_wait.as_secs_f64()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ticks = ticks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let window_from = step_at
        .checked_sub(Duration::from_millis(100))
        .unwrap_or(step_at);
    let gap = longest_gap(&ticks, window_from, end);
    let answered = ticks
        .iter()
        .filter(|(_, a)| a.as_deref().is_some_and(|a| a != PAUSED))
        .count();
    let _ = writeln!(
        report,
        "  gap: {} ms, the longest a client saw no answer ({} asks every {} ms, {answered} answered)",
        gap.as_millis(),
        ticks.len(),
        TICK.as_millis()
    );
    let _ = writeln!(
        report,
        "  connections lost: {lost} of {} held{}",
        n,
        if killed > 0 {
            format!(" ({killed} closed on purpose by kill)")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        report,
        "  clients moved: {moved} of {} pinned to {name}; new clients to {name}: {new_to_it}",
        pinned_to_it.len()
    );
    checks.push(Check {
        ok: gap <= args.max_gap,
        what: format!(
            "gap {} ms ≤ {} ms",
            gap.as_millis(),
            args.max_gap.as_millis()
        ),
    });
    if pinned_to_it.is_empty() && plan.udp.is_some() {
        let _ = writeln!(
            report,
            "  note: no existing client was pinned to {name}; the pinned-client checks saw nobody"
        );
    }
    Ok((report, checks))
}

/// `portico drill vip-handover`: tick against the VIP, `vrrp demote` the node, measure the gap.
pub async fn vip_handover(socket: &Path, args: &HandoverArgs, echo: bool) -> Outcome {
    let mut admin = match AdminClient::connect(socket).await {
        Ok(c) => c,
        Err(e) => return setup_fail(format!("portico drill: {e}")),
    };
    let mut tl = Timeline::new(echo);
    let plan = Plan {
        tcp: (!args.udp).then_some(args.target),
        udp: args.udp.then_some(args.target),
        backends: Vec::new(),
    };
    let from = match args.target {
        SocketAddr::V4(a) if a.ip().is_loopback() => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let stop = CancellationToken::new();
    let (ticks, ticker) = spawn_ticker(from, &plan, stop.clone(), Arc::default());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_ok = ticks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|(_, a)| a.is_some());
    tl.now(format!(
        "before: VIP {} {}",
        args.target,
        if before_ok {
            "answers"
        } else {
            "does NOT answer"
        }
    ));
    let step_at = Instant::now();
    let mut checks = Vec::new();
    let demoted = match admin
        .call(&Request::Vrrp {
            action: VrrpAction::Demote,
        })
        .await
    {
        Ok(Reply::Vrrp(v)) => {
            tl.at(
                step_at,
                format!("vrrp demote · this node is now {}", v.state),
            );
            true
        }
        Ok(Reply::Error(e)) => {
            tl.at(step_at, format!("vrrp demote refused: {}", e.error));
            false
        }
        Ok(other) => {
            tl.at(step_at, format!("vrrp demote: unexpected reply {other:?}"));
            false
        }
        Err(e) => {
            tl.at(step_at, format!("vrrp demote failed: {e}"));
            false
        }
    };
    checks.push(Check {
        ok: demoted,
        what: "the node accepted vrrp demote".into(),
    });
    if demoted {
        tokio::time::sleep(args.watch).await;
    }
    stop.cancel();
    let _ = ticker.await;
    let end = Instant::now();
    let ticks = ticks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let gap = longest_gap(&ticks, step_at, end);
    if demoted {
        if let Some((t, _)) = ticks.iter().find(|(t, a)| *t > step_at && a.is_none()) {
            tl.at(*t, "VIP stopped answering");
        }
        let back = ticks
            .iter()
            .skip_while(|(t, a)| *t <= step_at || a.is_some())
            .find(|(_, a)| a.is_some());
        if let Some((t, _)) = back {
            tl.at(*t, "VIP answers again (the peer took over)");
        }
        if !args.keep {
            match admin
                .call(&Request::Vrrp {
                    action: VrrpAction::Resume,
                })
                .await
            {
                Ok(Reply::Vrrp(v)) => tl.now(format!("vrrp resume · this node is {}", v.state)),
                other => tl.now(format!("vrrp resume failed: {other:?}")),
            }
        }
    }
    checks.push(Check {
        ok: before_ok,
        what: format!("the VIP {} answered before the step", args.target),
    });
    if demoted {
        checks.push(Check {
            ok: gap <= args.max_gap,
            what: format!(
                "the VIP answered again within {} ms (gap {} ms)",
                args.max_gap.as_millis(),
                gap.as_millis()
            ),
        });
    }
    let report = format!(
        "  gap: {} ms as a client saw it ({} asks every {} ms)\n",
        gap.as_millis(),
        ticks.len(),
        TICK.as_millis()
    );
    finish(tl, report, checks, echo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_gap_counts_missing_answers_and_the_edges() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let ticks = vec![
            (at(0), Some("a".to_string())),
            (at(20), Some("a".to_string())),
            (at(40), None),
            (at(60), None),
            (at(80), Some("b".to_string())),
            (at(100), Some("b".to_string())),
        ];
        assert_eq!(
            longest_gap(&ticks, at(0), at(100)),
            Duration::from_millis(60)
        );
        // The window's end counts: nothing answered after 100 until 300.
        assert_eq!(
            longest_gap(&ticks, at(0), at(300)),
            Duration::from_millis(200)
        );
        assert_eq!(longest_gap(&[], at(0), at(50)), Duration::from_millis(50));
    }

    #[test]
    fn sources_are_distinct_per_client_and_in_distinct_slash_24s() {
        let a = source(150, 0);
        let b = source(150, 1);
        assert_ne!(a, b);
        assert_eq!(a, IpAddr::V4(Ipv4Addr::new(127, 150, 0, 2)));
        assert!((100..250).contains(&run_octet()));
    }

    #[test]
    fn tally_orders_names() {
        let t = tally(&[
            Some("web02".into()),
            None,
            Some("web01".into()),
            Some("web02".into()),
        ]);
        assert_eq!(t, "no answer ×1, web01 ×1, web02 ×2");
    }
}
