//! The one place the admin API meets VRRP.
//!
//! VRRP is not wired into the daemon yet. When it is (a handle with `state()`, `demote()`
//! and `resume()`), reach it from [`Node`] here and nowhere else: `status` shows
//! `call(node, None)`, and `ctl vrrp demote|resume` is `call(node, Some(action))`.

use super::proto::{VrrpAction, VrrpStatus};
use crate::daemon::Node;

/// What an operator reads when this node has no VRRP.
pub const NOT_CONFIGURED: &str = "vrrp: not configured on this node";

/// With `None`, the VRRP state; with an action, carries it out and returns the state after.
pub fn call(node: &Node, action: Option<VrrpAction>) -> Result<VrrpStatus, String> {
    let _ = (node, action);
    Err(NOT_CONFIGURED.to_string())
}
