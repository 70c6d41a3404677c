//! The one place the admin API meets VRRP: `status` shows [`call`], and `ctl vrrp
//! demote|resume` is [`act`].

use std::time::Duration;

use super::proto::{VrrpAction, VrrpStatus};
use crate::daemon::Node;
use crate::vrrp::{Handle, State};

/// What an operator reads when this node has no VRRP.
pub const NOT_CONFIGURED: &str = "vrrp: not configured on this node";

/// How long `demote` waits for this node to leave the master state before it answers: a
/// graceful hand-over takes the peer's skew time (well under a second at any sane interval).
const SETTLE: Duration = Duration::from_secs(3);

fn handles(node: &Node) -> Result<&[Handle], String> {
    match node.vrrp.get() {
        Some(h) if !h.is_empty() => Ok(h),
        _ => Err(NOT_CONFIGURED.to_string()),
    }
}

/// The VRRP state of this node: one line per instance folded into one status.
pub fn call(node: &Node, action: Option<VrrpAction>) -> Result<VrrpStatus, String> {
    if action.is_some() {
        return Err("vrrp: an action needs the admin server's async path".to_string());
    }
    Ok(status(node, handles(node)?))
}

/// Carries out `action` on every instance of this node and returns the state after: for
/// `demote`, once no instance is master any more (or after [`SETTLE`]).
pub async fn act(node: &Node, action: VrrpAction) -> Result<VrrpStatus, String> {
    let handles = handles(node)?;
    for h in handles {
        let sent = match action {
            VrrpAction::Demote => h.demote(),
            VrrpAction::Resume => h.resume(),
        };
        if !sent {
            return Err(format!("vrrp {}: the instance is not running", h.vrid()));
        }
    }
    for h in handles {
        let mut h = h.clone();
        match action {
            VrrpAction::Demote => {
                let _ = h.wait_for(State::Backup, SETTLE).await;
            }
            // Resuming changes the priority at once; mastership follows by preemption (or
            // not, without it), which the reply does not wait for.
            VrrpAction::Resume => {
                let _ = tokio::time::timeout(SETTLE, async {
                    while h.status().demoted && h.changed().await {}
                })
                .await;
            }
        }
    }
    Ok(status(node, handles))
}

fn status(node: &Node, handles: &[Handle]) -> VrrpStatus {
    let config = node.controller.config();
    let states: Vec<(u8, State, u8, bool)> = handles
        .iter()
        .map(|h| {
            let s = h.status();
            (h.vrid(), s.state, s.priority, s.demoted)
        })
        .collect();
    let masters = states.iter().filter(|s| s.1 == State::Master).count();
    let one = |(vrid, st, prio, demoted): &(u8, State, u8, bool), with_vrid: bool| {
        format!(
            "{}{} (priority {prio}{})",
            if with_vrid {
                format!("vrid {vrid} ")
            } else {
                String::new()
            },
            st.as_str(),
            if *demoted { ", demoted" } else { "" }
        )
    };
    let state = match states.as_slice() {
        [only] => one(only, false),
        many => many
            .iter()
            .map(|s| one(s, true))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let vip_owner = match masters {
        0 => Some("peer".to_string()),
        n if n == states.len() => Some(config.node.name.clone()),
        _ => Some(format!("{} (some groups)", config.node.name)),
    };
    let vips = config
        .vip_groups()
        .flat_map(|g| g.addresses.iter().map(|p| format!("{}/{}", p.addr, p.len)))
        .collect();
    VrrpStatus {
        state,
        vip_owner,
        vips,
    }
}
