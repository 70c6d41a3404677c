//! The controller: the only writer of the snapshot.
//!
//! It keeps what a snapshot is built from (the config, every backend's health and admin state,
//! the stable backend ids, the affinity groups with their stick tables) and publishes a new
//! `Arc<Snapshot>` after each change. Readers keep whatever snapshot they loaded for as long as
//! they need it; nothing in the data plane waits for the controller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;
use tracing::{info, warn};

use crate::affinity::{KeySpec, StickTable};
use crate::config::Config;
use crate::maglev::Maglev;
use crate::metrics::{BackendCounters, Metrics, ServiceCounters};
use crate::snapshot::{
    AdminState, AffinityGroup, BackendId, BackendView, HealthState, PoolView, ServiceView, Snapshot,
};

/// Errors from applying a change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No backend of that name in any pool.
    #[error("no backend named {0:?}")]
    UnknownBackend(String),
    /// The Maglev table could not be built (config validation should have caught this).
    #[error("pool {pool}: {source}")]
    Maglev {
        pool: String,
        #[source]
        source: crate::maglev::MaglevError,
    },
}

#[derive(Default, Clone, Copy)]
struct BackendState {
    health: HealthState,
    admin: AdminState,
}

struct Inner {
    config: Arc<Config>,
    generation: u64,
    /// (pool, backend name) → stable id; ids are never reused within a process.
    ids: HashMap<(String, String), BackendId>,
    next_id: u32,
    states: HashMap<BackendId, BackendState>,
    groups: HashMap<String, Arc<AffinityGroup>>,
    /// Handed to every snapshot: where the data plane reports failed connects.
    passive: Option<Arc<crate::health::PassiveSink>>,
    /// Each pool's Maglev table over all its configured backends, with what it was built
    /// from: health and admin changes only restrict it, so it is rebuilt only when the
    /// configured set changes.
    base_tables: HashMap<String, BaseTable>,
    /// Per backend: the token its relays end on (`disable --kill`); replaced after firing.
    kills: HashMap<BackendId, tokio_util::sync::CancellationToken>,
}

struct BaseTable {
    members: Vec<(String, u32)>,
    size: u32,
    table: Maglev,
}

/// What the health tasks last saw of a backend, for `status` (not part of the snapshot: it
/// changes on every probe, and the data plane never needs it).
#[derive(Debug, Clone, Default)]
pub struct ProbeNote {
    /// Check and verdict of the last probe, and when it ended.
    pub last: Option<(&'static str, &'static str, Instant)>,
    /// The last probe's detail (why it failed), if any.
    pub detail: Option<String>,
    /// Why the health state is what it is: the reason of the last state change.
    pub reason: Option<String>,
}

/// Owns the published snapshot. Cheap to share (`Arc<Controller>`).
pub struct Controller {
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    /// (pool, backend) → what the probes last said; apart from `inner` so a probe result
    /// never waits on a snapshot rebuild.
    probes: Mutex<HashMap<(String, String), ProbeNote>>,
}

impl Controller {
    /// Builds the first snapshot from `config`.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Controller, ControlError> {
        let ctl = Controller {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::empty())),
            metrics,
            inner: Mutex::new(Inner {
                config: Arc::new(config),
                generation: 0,
                ids: HashMap::new(),
                next_id: 1,
                states: HashMap::new(),
                groups: HashMap::new(),
                passive: None,
                base_tables: HashMap::new(),
                kills: HashMap::new(),
            }),
            probes: Mutex::new(HashMap::new()),
        };
        ctl.rebuild(&mut ctl.lock())?;
        Ok(ctl)
    }

    /// The handle the data plane loads snapshots from.
    pub fn snapshot(&self) -> Arc<ArcSwap<Snapshot>> {
        self.snapshot.clone()
    }

    pub fn config(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock would already be a bug; keep serving with the
        // state as it was rather than take the whole daemon down.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the config (reload). Admin and health state of backends that keep their pool
    /// and name carry over; stick tables of groups that still exist are kept.
    pub fn apply_config(&self, config: Config) -> Result<(), ControlError> {
        let mut inner = self.lock();
        let old = std::mem::replace(&mut inner.config, Arc::new(config));
        if let Err(e) = self.rebuild(&mut inner) {
            inner.config = old;
            return Err(e);
        }
        // Forget what the probes said about backends that are gone.
        let config = inner.config.clone();
        drop(inner);
        self.probes().retain(|(pool, backend), _| {
            config
                .pool(pool)
                .is_some_and(|p| p.backends.iter().any(|b| &b.name == backend))
        });
        Ok(())
    }

    /// Records a health verdict for every backend named `backend` in `pool`.
    pub fn set_health(
        &self,
        pool: &str,
        backend: &str,
        health: HealthState,
    ) -> Result<(), ControlError> {
        self.update(Some(pool), backend, |s| s.health = health)
    }

    /// Installs where the data plane reports failed connects (the health tasks' inboxes).
    pub fn set_passive_sink(
        &self,
        sink: Option<Arc<crate::health::PassiveSink>>,
    ) -> Result<(), ControlError> {
        let mut inner = self.lock();
        inner.passive = sink;
        self.rebuild(&mut inner)
    }

    /// Sets the admin state of the backend named `name` in every pool that has one.
    pub fn set_admin(&self, name: &str, admin: AdminState) -> Result<(), ControlError> {
        self.update(None, name, |s| s.admin = admin)
    }

    fn update(
        &self,
        pool: Option<&str>,
        backend: &str,
        f: impl Fn(&mut BackendState),
    ) -> Result<(), ControlError> {
        let mut inner = self.lock();
        let ids: Vec<BackendId> = inner
            .ids
            .iter()
            .filter(|((p, b), _)| b == backend && pool.is_none_or(|want| want == p))
            .map(|(_, id)| *id)
            .collect();
        if ids.is_empty() {
            return Err(ControlError::UnknownBackend(backend.to_string()));
        }
        for id in ids {
            f(inner.states.entry(id).or_default());
        }
        self.rebuild(&mut inner)
    }

    /// Ends every established connection to the backend named `name` (in every pool that has
    /// one); new connections get a fresh token. Returns how many backends matched.
    pub fn kill(&self, name: &str) -> Result<usize, ControlError> {
        let mut inner = self.lock();
        let ids: Vec<BackendId> = inner
            .ids
            .iter()
            .filter(|((_, b), _)| b == name)
            .map(|(_, id)| *id)
            .collect();
        if ids.is_empty() {
            return Err(ControlError::UnknownBackend(name.to_string()));
        }
        for id in &ids {
            if let Some(t) = inner.kills.remove(id) {
                t.cancel();
            }
        }
        self.rebuild(&mut inner)?;
        Ok(ids.len())
    }

    /// Every backend name of the current config, sorted and unique (for error replies).
    pub fn backend_names(&self) -> Vec<String> {
        let inner = self.lock();
        let mut v: Vec<String> = inner
            .config
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().map(|b| b.name.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn probes(&self) -> MutexGuard<'_, HashMap<(String, String), ProbeNote>> {
        self.probes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a probe's outcome for `status`.
    pub fn note_probe(
        &self,
        pool: &str,
        backend: &str,
        check: &'static str,
        verdict: &'static str,
        detail: Option<&str>,
    ) {
        let mut p = self.probes();
        let n = p
            .entry((pool.to_string(), backend.to_string()))
            .or_default();
        n.last = Some((check, verdict, Instant::now()));
        n.detail = detail.map(str::to_string);
    }

    /// Records why a backend's health state last changed, for `status`.
    pub fn note_reason(&self, pool: &str, backend: &str, reason: String) {
        self.probes()
            .entry((pool.to_string(), backend.to_string()))
            .or_default()
            .reason = Some(reason);
    }

    /// What the probes last said about (pool, backend).
    pub fn probe_note(&self, pool: &str, backend: &str) -> Option<ProbeNote> {
        self.probes()
            .get(&(pool.to_string(), backend.to_string()))
            .cloned()
    }

    /// Expires idle stick entries and publishes table sizes; run about once a second.
    pub fn housekeeping(&self, now: Instant) {
        let groups: Vec<Arc<AffinityGroup>> = self.lock().groups.values().cloned().collect();
        for g in groups {
            g.table.expire(now);
            let stats = g.table.stats();
            let name = &*g.name;
            self.metrics
                .affinity_entries
                .with_label_values(&[name])
                .set(g.table.len() as i64);
            sync_counter(&self.metrics.affinity_evictions, name, stats.evictions);
            sync_counter(&self.metrics.affinity_expirations, name, stats.expirations);
        }
    }

    fn rebuild(&self, inner: &mut Inner) -> Result<(), ControlError> {
        let config = inner.config.clone();
        let mut pools = Vec::with_capacity(config.pools.len());
        let mut live_ids = Vec::new();
        for pool in &config.pools {
            let mut backends = Vec::with_capacity(pool.backends.len());
            for b in &pool.backends {
                let key = (pool.name.clone(), b.name.clone());
                let id = match inner.ids.get(&key) {
                    Some(id) => *id,
                    None => {
                        let id = BackendId(inner.next_id);
                        inner.next_id += 1;
                        inner.ids.insert(key, id);
                        id
                    }
                };
                live_ids.push(id);
                let st = inner.states.get(&id).copied().unwrap_or_default();
                let kill = inner.kills.entry(id).or_default().clone();
                backends.push(BackendView {
                    kill,
                    id,
                    name: Arc::from(b.name.as_str()),
                    address: b.address,
                    port: b.port,
                    weight: b.weight,
                    admin: st.admin,
                    health: st.health,
                });
            }
            let members: Vec<(String, u32)> = backends
                .iter()
                .map(|b| (b.name.to_string(), b.weight.get()))
                .collect();
            let stale = inner
                .base_tables
                .get(&pool.name)
                .is_none_or(|t| t.members != members || t.size != pool.table_size);
            if stale {
                let table = Maglev::build(
                    members.iter().map(|(n, w)| (n.as_str(), *w)),
                    pool.table_size,
                )
                .map_err(|source| ControlError::Maglev {
                    pool: pool.name.clone(),
                    source,
                })?;
                inner.base_tables.insert(
                    pool.name.clone(),
                    BaseTable {
                        members,
                        size: pool.table_size,
                        table,
                    },
                );
            }
            let eligible: Vec<bool> = backends.iter().map(|b| b.eligible()).collect();
            let eligible_count = eligible.iter().filter(|&&e| e).count();
            let maglev = match inner.base_tables.get(&pool.name) {
                Some(base) => base.table.restrict(&eligible),
                None => Maglev::build(std::iter::empty(), pool.table_size).map_err(|source| {
                    ControlError::Maglev {
                        pool: pool.name.clone(),
                        source,
                    }
                })?,
            };
            if eligible_count == 0 {
                warn!(pool = %pool.name, "pool has no eligible backend: new clients will be refused");
            }
            pools.push(PoolView {
                name: Arc::from(pool.name.as_str()),
                backends,
                maglev,
                eligible_count,
            });
        }
        inner
            .base_tables
            .retain(|name, _| config.pools.iter().any(|p| &p.name == name));
        inner.ids.retain(|_, id| live_ids.contains(id));
        inner.states.retain(|id, _| live_ids.contains(id));
        inner.kills.retain(|id, _| live_ids.contains(id));

        let mut groups: HashMap<String, Arc<AffinityGroup>> = HashMap::new();
        let mut services = Vec::with_capacity(config.services.len());
        for svc in &config.services {
            let Some(pool_idx) = config.pools.iter().position(|p| p.name == svc.pool) else {
                // Validation guarantees the pool exists; a generated config that breaks this
                // must not take the data plane down.
                warn!(service = %svc.name, pool = %svc.pool, "service names a missing pool; skipped");
                continue;
            };
            let a = &svc.affinity;
            let spec = KeySpec {
                ipv4_prefix: a.ipv4_prefix,
                ipv6_prefix: a.ipv6_prefix,
            };
            let group = match groups.get(&a.group) {
                Some(g) => g.clone(),
                None => {
                    let g = match inner.groups.get(&a.group) {
                        Some(g) if g.spec == spec => g.clone(),
                        _ => Arc::new(AffinityGroup {
                            name: Arc::from(a.group.as_str()),
                            spec,
                            table: StickTable::new(a.max_entries, a.idle_timeout),
                        }),
                    };
                    groups.insert(a.group.clone(), g.clone());
                    g
                }
            };
            let pool = &pools[pool_idx];
            let backend_counters = pool
                .backends
                .iter()
                .map(|b| Arc::new(BackendCounters::new(&self.metrics, &svc.name, &b.name)))
                .collect();
            services.push(ServiceView {
                name: Arc::from(svc.name.as_str()),
                listen: svc.listen,
                protocol: svc.protocol,
                pool: pool_idx,
                group,
                backend_port: svc.backend_port,
                connect_timeout: svc.connect_timeout,
                connect_attempts: svc.connect_attempts,
                idle_timeout: svc.idle_timeout,
                backlog: svc.backlog,
                max_flows: svc.max_flows,
                counters: Arc::new(ServiceCounters::new(&self.metrics, &svc.name)),
                backend_counters,
            });
        }
        // Pinned clients of a backend that can no longer serve them are placed afresh on their
        // next connection; dropping the entries now keeps the table honest for `status`.
        for g in groups.values() {
            g.table.retain(|id| {
                pools
                    .iter()
                    .any(|p| p.backends.iter().any(|b| b.id == *id && b.serves_pinned()))
            });
        }
        inner.groups = groups;
        inner.generation += 1;
        let snap = Snapshot {
            generation: inner.generation,
            services,
            pools,
            passive: inner.passive.clone(),
        };
        self.metrics
            .snapshot_generation
            .set(inner.generation as i64);
        info!(generation = inner.generation, "snapshot published");
        let snap = Arc::new(snap);
        self.snapshot.store(snap.clone());
        // Only now: whoever sees `portico_backend_up` at 0 (an operator, an alert, a drill
        // script) may rely on new connections no longer reaching that backend. Set while
        // building, the gauge ran ahead of the data plane by the rest of the rebuild.
        self.publish_backend_gauges(&snap);
        Ok(())
    }

    fn publish_backend_gauges(&self, snap: &Snapshot) {
        for pool in &snap.pools {
            for b in &pool.backends {
                let labels = &[&*pool.name, &*b.name];
                self.metrics
                    .backend_up
                    .with_label_values(labels)
                    .set(b.eligible() as i64);
                self.metrics
                    .backend_weight
                    .with_label_values(labels)
                    .set(i64::from(b.weight.get()));
                for s in AdminState::ALL {
                    self.metrics
                        .backend_admin_state
                        .with_label_values(&[&*pool.name, &*b.name, s.as_str()])
                        .set((b.admin == s) as i64);
                }
            }
        }
    }
}

/// Advances a Prometheus counter to a monotonic total kept elsewhere (the stick table's).
fn sync_counter(vec: &prometheus::IntCounterVec, label: &str, total: u64) {
    let c = vec.with_label_values(&[label]);
    let have = c.get();
    if total > have {
        c.inc_by(total - have);
    }
}
