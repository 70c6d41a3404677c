//! The snapshot: one immutable value holding everything a data-plane decision needs (services,
//! pools, backend states, Maglev tables, affinity groups), published behind an `ArcSwap`.
//!
//! A connection does one `load()` and one choice; nothing here takes a lock except the stick
//! table's shard (one short critical section per new client connection). The controller builds
//! a fresh snapshot whenever config, health or admin state changes; Maglev tables are rebuilt
//! then, off the hot path.
//!
//! Eligibility follows pingora's `ready = healthy && enabled`, with one more state for NLB's
//! drainstop: a *draining* backend takes no new client, but clients already pinned to it (its
//! stick entries) keep reaching it so their RDG_IN_DATA / RDG_OUT_DATA / UDP channels meet.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::affinity::{ClientKey, KeySpec, StickTable};
use crate::config::Protocol;
use crate::maglev::Maglev;
use crate::metrics::{BackendCounters, ServiceCounters};

/// A backend's identity that survives snapshot rebuilds and reloads (assigned by the controller
/// per pool and backend name), so stick entries stay valid when indexes move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u32);

/// What the operator asked for a backend (admin API), apart from what probes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminState {
    #[default]
    Enabled,
    /// No new clients; pinned clients keep their backend (NLB drainstop).
    Drain,
    /// No new connections at all, pinned or not.
    Disabled,
}

impl AdminState {
    pub const ALL: [AdminState; 3] = [AdminState::Enabled, AdminState::Drain, AdminState::Disabled];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Drain => "drain",
            AdminState::Disabled => "disabled",
        }
    }
}

/// What health checking concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthState {
    /// Starts up: HAProxy's default for servers with checks, so a restart serves at once.
    #[default]
    Up,
    Down,
}

/// One backend as the data plane sees it.
pub struct BackendView {
    pub id: BackendId,
    pub name: Arc<str>,
    pub address: IpAddr,
    /// `None`: the service's `backend_port`.
    pub port: Option<u16>,
    pub weight: NonZeroU32,
    pub admin: AdminState,
    pub health: HealthState,
    /// Fired by `disable --kill`: every relay to this backend selects on it, so established
    /// connections end at once. One clone per connection (a reference count), nothing more.
    pub kill: tokio_util::sync::CancellationToken,
}

impl BackendView {
    /// Takes new clients.
    pub fn eligible(&self) -> bool {
        self.health == HealthState::Up && self.admin == AdminState::Enabled
    }

    /// Takes clients already pinned to it.
    pub fn serves_pinned(&self) -> bool {
        self.health == HealthState::Up && self.admin != AdminState::Disabled
    }

    pub fn socket_addr(&self, backend_port: u16) -> SocketAddr {
        SocketAddr::new(self.address, self.port.unwrap_or(backend_port))
    }
}

pub struct PoolView {
    pub name: Arc<str>,
    /// Config order.
    pub backends: Vec<BackendView>,
    /// Built over every configured backend, in config order (so its indexes are indexes in
    /// `backends`), then restricted to the eligible ones ([`Maglev::restrict`]).
    pub maglev: Maglev,
    pub eligible_count: usize,
}

impl PoolView {
    pub fn index_of(&self, id: BackendId) -> Option<usize> {
        // Pools are small (a farm has a handful of gateways); a scan beats hashing here.
        self.backends.iter().position(|b| b.id == id)
    }

    pub fn eligible_count(&self) -> usize {
        self.eligible_count
    }
}

/// An affinity group: one stick table shared by every service that names the group, kept
/// across snapshots (the controller hands the same `Arc` to each new snapshot).
pub struct AffinityGroup {
    pub name: Arc<str>,
    pub spec: KeySpec,
    pub table: StickTable<BackendId>,
}

pub struct ServiceView {
    pub name: Arc<str>,
    pub listen: SocketAddr,
    pub protocol: Protocol,
    /// Index into [`Snapshot::pools`].
    pub pool: usize,
    pub group: Arc<AffinityGroup>,
    pub backend_port: u16,
    pub connect_timeout: Duration,
    pub connect_attempts: NonZeroU32,
    pub idle_timeout: Duration,
    pub backlog: u32,
    pub max_flows: usize,
    /// Behind an `Arc` so a connection takes one reference, not one per counter.
    pub counters: Arc<ServiceCounters>,
    /// Indexed like the pool's `backends`.
    pub backend_counters: Vec<Arc<BackendCounters>>,
}

pub struct Snapshot {
    pub generation: u64,
    pub services: Vec<ServiceView>,
    pub pools: Vec<PoolView>,
    /// Where the data plane reports failed backend connects (passive health checking);
    /// `None` until the health tasks start.
    pub passive: Option<Arc<crate::health::PassiveSink>>,
}

impl Snapshot {
    /// An empty snapshot: no service, no pool (before the first config is applied).
    pub fn empty() -> Snapshot {
        Snapshot {
            generation: 0,
            services: Vec::new(),
            pools: Vec::new(),
            passive: None,
        }
    }

    /// The service at `hint` if it still has that name, else a search by name: listener tasks
    /// keep their index so the common case is one comparison.
    pub fn service(&self, hint: usize, name: &str) -> Option<&ServiceView> {
        match self.services.get(hint) {
            Some(s) if &*s.name == name => Some(s),
            _ => self.services.iter().find(|s| &*s.name == name),
        }
    }
}

/// Where a new client connection (or UDP flow) should go, and where to go next if that fails.
pub struct Choice<'a> {
    pool: &'a PoolView,
    pub key: ClientKey,
    /// Index in the pool's backends of the first choice; `None`: nothing can serve this client.
    pub first: Option<usize>,
    /// The client was pinned (stick table hit) rather than placed by Maglev.
    pub pinned: bool,
}

impl<'a> Choice<'a> {
    /// Decides for `client` in `svc`: the stick entry if its backend still serves pinned
    /// clients, else Maglev(client key) over the eligible backends.
    pub fn decide(
        snap: &'a Snapshot,
        svc: &ServiceView,
        client: IpAddr,
        now: Instant,
    ) -> Choice<'a> {
        let pool = &snap.pools[svc.pool];
        let key = ClientKey::new(client, svc.group.spec);
        if let Some(id) = svc.group.table.get(&key, now) {
            match pool.index_of(id) {
                Some(i) if pool.backends[i].serves_pinned() => {
                    return Choice {
                        pool,
                        key,
                        first: Some(i),
                        pinned: true,
                    }
                }
                // The entry's backend is gone or cannot serve: forget it so the client is
                // placed afresh (and consistently, by Maglev) below.
                _ => {
                    svc.group.table.remove(&key);
                }
            }
        }
        let first = pool.maglev.lookup(key.hash64());
        Choice {
            pool,
            key,
            first,
            pinned: false,
        }
    }

    /// The choices after the first, in the client's Maglev preference order (the same on every
    /// node), skipping the first choice. Only eligible backends appear.
    pub fn fallbacks(&self) -> impl Iterator<Item = usize> + 'a {
        let first = self.first;
        let pool = self.pool;
        pool.maglev
            .preference(self.key.hash64())
            .filter(move |&i| Some(i) != first)
    }

    pub fn pool(&self) -> &'a PoolView {
        self.pool
    }
}
