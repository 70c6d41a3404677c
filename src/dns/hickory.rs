//! The same zone served through hickory-server (`PORTICO_DNS_ENGINE=hickory`): hickory's
//! `Server` owns the sockets, reads and parses each request and encodes each response; the
//! answer is still decided by [`Zone::answer`](super::zone::Zone::answer), so both engines
//! give one zone's answers and differ only in the I/O and codec around it. Kept so the two
//! can be measured side by side (`benches/dnsperf.sh`, docs/benchmarks.md).
//!
//! What hickory's loop does before a handler sees a request is out of our hands: it drops
//! messages shorter than a header and answers what it cannot parse with FORMERR itself, so
//! those are not counted in `portico_dns_malformed_total` on this engine.

use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Header, HeaderCounts, Message, MessageType, Metadata, OpCode};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::server::{handle, Bound, Current, DnsCounters, Handled, ZoneSource, TCP_IDLE};
use super::zone::Transport;

/// The environment variable choosing the engine: `hickory`, or anything else for our own.
pub const ENGINE_ENV: &str = "PORTICO_DNS_ENGINE";

/// Whether the hickory-server engine is asked for.
pub fn selected() -> bool {
    std::env::var(ENGINE_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("hickory"))
}

struct Handler {
    zones: Arc<ZoneSource>,
    /// The zone last seen, shared by all requests: hickory runs each UDP request in a task of
    /// its own, so there is no per-socket place to keep it.
    current: ArcSwap<Current>,
    m: Arc<DnsCounters>,
}

impl Handler {
    fn zone(&self) -> Arc<Current> {
        let cur = self.current.load_full();
        let mut next = (*cur).clone();
        self.zones.refresh(&mut next);
        if Arc::ptr_eq(&next.zone, &cur.zone) && Arc::ptr_eq(&next.snap, &cur.snap) {
            return cur;
        }
        let next = Arc::new(next);
        self.current.store(next.clone());
        next
    }
}

/// A header for the requests we send nothing back to (hickory wants a `ResponseInfo`).
fn dropped(request: &Request) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata: Metadata::new(request.metadata.id, MessageType::Response, OpCode::Query),
        counts: HeaderCounts::default(),
    })
}

/// Hands one message of ours to hickory: decoded, then encoded by hickory's response path.
async fn send<R: ResponseHandler>(
    request: &Request,
    bytes: &[u8],
    mut response: R,
) -> Option<ResponseInfo> {
    let msg = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(error) => {
            warn!(%error, "dns(hickory): our own answer did not decode");
            return None;
        }
    };
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if let Some(e) = &msg.edns {
        builder.edns(e);
    }
    let reply = builder.build(
        msg.metadata,
        msg.answers.iter(),
        msg.authorities.iter(),
        [].iter(),
        msg.additionals.iter(),
    );
    match response.send_response(reply).await {
        Ok(info) => Some(info),
        Err(error) => {
            debug!(%error, "dns(hickory): send");
            None
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        let transport = match request.protocol() {
            Protocol::Tcp => Transport::Tcp,
            _ => Transport::Udp,
        };
        let cur = self.zone();
        let mut out = Vec::with_capacity(512);
        let handled = handle(
            request.as_slice(),
            transport,
            request.src().ip(),
            &cur.zone,
            &mut out,
            &self.m,
        );
        match handled {
            Handled::Drop => dropped(request),
            Handled::Reply => send(request, &out, response)
                .await
                .unwrap_or_else(|| dropped(request)),
            Handled::Transfer => {
                // `out` holds the transfer framed for TCP: one hickory response per message.
                let mut info = None;
                let mut rest = out.as_slice();
                while let Some((len, tail)) = rest.split_first_chunk::<2>() {
                    let n = usize::from(u16::from_be_bytes(*len));
                    let Some((msg, tail)) = tail.split_at_checked(n) else {
                        break;
                    };
                    info = send(request, msg, response.clone()).await;
                    rest = tail;
                }
                info.unwrap_or_else(|| dropped(request))
            }
        }
    }
}

/// Serves `bound` with hickory-server's `Server` until `stop` fires.
pub(super) fn spawn(
    bound: Bound,
    zones: Arc<ZoneSource>,
    m: Arc<DnsCounters>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let current = ArcSwap::from_pointee(zones.current());
    let mut server = Server::new(Handler { zones, current, m });
    for s in bound.udp {
        server.register_socket(
            tokio::net::UdpSocket::from_std(s).context("dns: registering a udp socket")?,
        );
    }
    for l in bound.tcp {
        server.register_listener(
            tokio::net::TcpListener::from_std(l).context("dns: registering a tcp listener")?,
            TCP_IDLE,
            // hickory's default buffer of responses per connection.
            32,
        );
    }
    for a in &bound.addrs {
        info!(addr = %a, "dns listening (udp, tcp; hickory-server)");
    }
    tasks.spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            r = server.block_until_done() => if let Err(error) = r {
                warn!(%error, "dns(hickory): server ended");
            },
        }
        let _ = server.shutdown_gracefully().await;
    });
    Ok(())
}
