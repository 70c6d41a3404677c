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
