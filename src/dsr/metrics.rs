//! The forwarder's metric families, registered into the process registry
//! ([`crate::metrics::Metrics::registry`]) when a dsr forwarder starts. Label values come from
//! closed sets: service and backend names from the config, drop reasons from
//! [`DropReason::ALL`].

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::packet::DropReason;
use super::sync::SyncError;
use crate::metrics::{
    DSR_ACTIVE, DSR_ARP_REPLIES, DSR_BYTES, DSR_DROPS, DSR_FLOWS, DSR_FLOW_MISSES, DSR_PACKETS,
    DSR_PASSED, DSR_SYNC_APPLIED, DSR_SYNC_ERRORS, DSR_SYNC_SENT, DSR_XDP_ATTACHED, DSR_XDP_ERRORS,
    DSR_XDP_FRAMES,
};

#[derive(Clone)]
pub struct DsrMetrics {
    pub packets: IntCounterVec,
    pub bytes: IntCounterVec,
    pub flows: IntGauge,
    pub flow_misses: IntCounter,
    /// Indexed like [`DropReason::ALL`].
    pub drops: Vec<IntCounter>,
    pub passed: IntCounter,
    pub arp_replies: IntCounter,
    pub active: IntGauge,
    /// Flow entries sent to the sync peers (once per peer).
    pub sync_sent: IntCounter,
    /// Flow entries from a peer placed in the flow table.
    pub sync_applied: IntCounter,
    /// Sync datagrams or entries not used, indexed like [`SyncError::ALL`].
    pub sync_errors: Vec<IntCounter>,
    /// Frames the XDP program forwarded (also in `packets`/`bytes` per backend).
    pub xdp_frames: IntCounter,
    /// 1 for the mode the XDP program is attached in (`native`, `generic`); absent without.
    pub xdp_attached: IntGaugeVec,
    /// Failed XDP map operations (the flow then stays on the user-space path).
    pub xdp_errors: IntCounter,
}

impl DsrMetrics {
    /// Registers the families. Fails only if they are registered twice in one registry.
    pub fn register(reg: &Registry) -> prometheus::Result<DsrMetrics> {
        let packets = IntCounterVec::new(
            Opts::new(
                DSR_PACKETS,
                "Frames forwarded to a backend by the dsr forwarder.",
            ),
            &["service", "backend"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                DSR_BYTES,
                "Bytes (whole Ethernet frames) forwarded to a backend by the dsr forwarder.",
            ),
            &["service", "backend"],
        )?;
        let flows = IntGauge::new(DSR_FLOWS, "Flows in the dsr flow table.")?;
        let flow_misses = IntCounter::new(
            DSR_FLOW_MISSES,
            "Forwarded frames whose flow was not in the flow table (placed by affinity or Maglev).",
        )?;
        let drop_vec = IntCounterVec::new(
            Opts::new(
                DSR_DROPS,
                "Frames to a dsr VIP:port that were not forwarded.",
            ),
            &["reason"],
        )?;
        let passed = IntCounter::new(
            DSR_PASSED,
            "Frames the dsr forwarder read and left alone (not for a VIP:port it serves).",
        )?;
        let arp_replies = IntCounter::new(
            DSR_ARP_REPLIES,
            "ARP replies sent for dsr VIPs (and gratuitous announcements).",
        )?;
        let active = IntGauge::new(DSR_ACTIVE, "1 while the dsr forwarder is forwarding.")?;
        let sync_sent = IntCounter::new(
            DSR_SYNC_SENT,
            "Flow entries sent to the dsr sync peers (counted once per peer).",
        )?;
        let sync_applied = IntCounter::new(
            DSR_SYNC_APPLIED,
            "Flow entries received from a dsr sync peer and placed in the flow table.",
        )?;
        let sync_error_vec = IntCounterVec::new(
            Opts::new(
                DSR_SYNC_ERRORS,
                "dsr sync datagrams dropped (magic, length, protocol, not_peer) and entries not used (unknown_flow, overflow, send_failed).",
            ),
            &["reason"],
        )?;
        let xdp_frames = IntCounter::new(
            DSR_XDP_FRAMES,
            "Frames forwarded by the dsr XDP program (in the driver); included in portico_dsr_packets_total.",
        )?;
        let xdp_attached = IntGaugeVec::new(
            Opts::new(
                DSR_XDP_ATTACHED,
                "1 while the dsr XDP program is attached, by mode (native: in the driver; generic: after the kernel built the packet).",
            ),
            &["mode"],
        )?;
        let xdp_errors = IntCounter::new(
            DSR_XDP_ERRORS,
            "Failed operations on the dsr XDP program's maps (the flow stays on the user-space path).",
        )?;
        reg.register(Box::new(xdp_frames.clone()))?;
        reg.register(Box::new(xdp_attached.clone()))?;
        reg.register(Box::new(xdp_errors.clone()))?;
        reg.register(Box::new(packets.clone()))?;
        reg.register(Box::new(bytes.clone()))?;
        reg.register(Box::new(flows.clone()))?;
        reg.register(Box::new(flow_misses.clone()))?;
        reg.register(Box::new(drop_vec.clone()))?;
        reg.register(Box::new(passed.clone()))?;
        reg.register(Box::new(arp_replies.clone()))?;
        reg.register(Box::new(active.clone()))?;
        reg.register(Box::new(sync_sent.clone()))?;
        reg.register(Box::new(sync_applied.clone()))?;
        reg.register(Box::new(sync_error_vec.clone()))?;
        // Every reason's series exists from the start (at 0), so dashboards and alerts see
        // "no errors" rather than "no data".
        let sync_errors = SyncError::ALL
            .iter()
            .map(|e| sync_error_vec.with_label_values(&[e.as_str()]))
            .collect();
        let drops = DropReason::ALL
            .iter()
            .map(|r| drop_vec.with_label_values(&[r.as_str()]))
            .collect();
        Ok(DsrMetrics {
            packets,
            bytes,
            flows,
            flow_misses,
            drops,
            passed,
            arp_replies,
            active,
            sync_sent,
            sync_applied,
            sync_errors,
            xdp_frames,
            xdp_attached,
            xdp_errors,
        })
    }

    /// Counts `n` datagrams or entries not used for `reason`.
    pub fn sync_error(&self, reason: SyncError, n: u64) {
        if let Some(c) = self.sync_errors.get(reason.index()) {
            c.inc_by(n);
        }
    }

    pub fn drop(&self, reason: DropReason) {
        if let Some(c) = self.drops.get(reason.index()) {
            c.inc();
        }
    }
}
