//! Health checking: probe scheduling, rise/fall, passive failure observation, state publishing.
//!
//! - [`hysteresis`]: the rise/fall counter (pure).
//! - [`verdict`]: [`Verdict`] and the classification of PROTOCOLS.md §4.2 (pure).
//! - [`date`]: the HTTP `Date:` parser behind the clock-skew gauge (pure).
//! - [`probe`]: the checks (`tcp`, `tls`, `rdg-token`) with one deadline per probe.
//! - [`scheduler`]: one task per backend running each check as a tier on its own jittered
//!   interval with its own hysteresis (a failing cheap tier stops the dearer ones), passive
//!   reports, fail-static, metrics and one log line per state change; publishes through
//!   [`crate::controller::Controller::set_health`].
//!
//! # Passive checks
//!
//! With `passive = true`, every failed connect attempt of the TCP data plane counts as one
//! failure toward `fall`. The data plane holds a [`PassiveSink`] in the snapshot and calls
//! [`PassiveSink::report`], a `try_send` on a small bounded channel to the backend's health
//! task: it never blocks and never allocates; when the channel is full the report is dropped
//! (the task already has `CAPACITY` failures to process, more than any `fall`).

pub mod date;
pub mod hysteresis;
pub mod probe;
pub mod scheduler;
pub mod verdict;

use std::collections::HashMap;

use tokio::sync::mpsc;

use crate::snapshot::BackendId;

pub use hysteresis::Hysteresis;
pub use probe::{CertFacts, ProbeReport, Prober, SetupError};
pub use scheduler::spawn;
pub use verdict::{Stage, Verdict};

/// Passive failure reports each backend's task can have queued.
pub const PASSIVE_CAPACITY: usize = 64;

/// The data plane's side of passive health checking: backend id → its health task's inbox.
#[derive(Debug, Default)]
pub struct PassiveSink {
    senders: HashMap<BackendId, mpsc::Sender<()>>,
}

impl PassiveSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new inbox for `id`; the receiver goes to its health task.
    pub fn register(&mut self, id: BackendId) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel(PASSIVE_CAPACITY);
        self.senders.insert(id, tx);
        rx
    }

    /// Reports one failed connect to `id`; never blocks (dropped if the inbox is full or the
    /// backend has no health task).
    pub fn report(&self, id: BackendId) {
        if let Some(tx) = self.senders.get(&id) {
            let _ = tx.try_send(());
        }
    }
}
