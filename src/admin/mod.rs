//! The admin API: a Unix socket (`[admin] socket`, mode 0600, refused in a world-writable
//! directory) speaking newline-delimited JSON, and its client for `portico ctl` and drills.
//!
//! - [`proto`]: requests and replies (pure; serde).
//! - [`server`]: binding the socket safely, bounded request lines, dispatch onto the
//!   controller (drain, disable, enable), reload, and VRRP.
//! - [`status`]: the `status` reply from the snapshot, metric handles and stick tables.
//! - [`vrrp`]: the single place the admin API calls into VRRP.
//! - [`client`]: [`client::AdminClient`] for `ctl` and the drills.

pub mod client;
pub mod proto;
pub mod server;
pub mod status;
pub mod vrrp;

pub use client::{AdminClient, ClientError};
pub use proto::{Reply, Request};
pub use server::{bind, serve, BindError};
