//! The data plane: TCP and UDP listeners on the service addresses, backend choice from the
//! current snapshot, connect with retry, byte relaying, and drain on shutdown.
//!
//! Per new client connection the work before connecting is one snapshot load and one choice
//! (stick table, else Maglev). A refused or timed-out connect moves to the next backend of the
//! client's preference order, bounded by the service's `connect_attempts`.

mod copy;
mod socket;
mod tcp;
mod udp;

pub use socket::{bind_tcp, bind_udp, raise_nofile_limit};
pub use tcp::serve_tcp;
pub use udp::serve_udp;

/// Tick period of [`timer_anchor`]: below the smallest sensible connect timeout.
const TIMER_ANCHOR_PERIOD: std::time::Duration = std::time::Duration::from_millis(250);

/// Runs on each data-plane runtime for its whole life, keeping a timer always due within
/// [`TIMER_ANCHOR_PERIOD`].
///
/// Why: tokio's timer wakes its driver (an `eventfd` write) whenever a new timer is due before
/// the driver's next planned wake-up. Every proxied connection arms a connect timeout, and
/// with only hours-long idle timers pending that is earlier than anything planned, so most new
/// connections cost a wake-up syscall, plus an extra event on the next `epoll_wait`. With a
/// timer always due soon, a new connect timeout (seconds) is never the earliest, and four
/// wake-ups a second per thread replace one per connection.
pub async fn timer_anchor() {
    let mut tick = tokio::time::interval(TIMER_ANCHOR_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}
