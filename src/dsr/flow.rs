//! The flow table: 5-tuple → backend, with an idle timeout and a fixed size (pure).
//!
//! Set-associative, like a CPU cache: the tuple's hash picks a bucket of [`WAYS`] slots; a new
//! flow takes a free or expired slot of its bucket, else evicts the bucket's least recently
//! used flow (counted). All memory is allocated at construction, so lookups and inserts on the
//! forwarding path allocate nothing, and the cost is O(WAYS) whatever the load. The price is
//! that eviction can start before the table as a whole is full (a crowded bucket); with four
//! ways that happens only near the cap.
//!
//! The table is local to one forwarder thread (no lock). It keeps flows where they are while
//! the backend set changes. After a hand-over the new master holds what its peer synced to it
//! (`[dsr] sync_*`), else nothing, and Maglev gives the same backend anyway while the set is
//! unchanged (docs/dsr.md).

use std::hash::{BuildHasher, RandomState};

use super::packet::FiveTuple;
use crate::snapshot::BackendId;

/// Slots per bucket.
pub const WAYS: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Slot {
    tuple: FiveTuple,
    backend: BackendId,
    /// Milliseconds on the caller's clock; 0 = empty.
    last_ms: u64,
    /// When the client's stick entry was last refreshed for this flow.
    stick_ms: u64,
}

/// What an insert did to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// A live flow was pushed out.
    Evicted,
}

pub struct FlowTable {
    slots: Vec<Option<Slot>>,
    buckets: usize,
    idle_ms: u64,
    hasher: RandomState,
    len: usize,
    evictions: u64,
}

impl FlowTable {
    /// Room for at least `max_flows` flows (rounded up to whole buckets).
    pub fn new(max_flows: usize, idle_ms: u64) -> FlowTable {
        let buckets = max_flows.max(1).div_ceil(WAYS).next_power_of_two();
        FlowTable {
            slots: vec![None; buckets * WAYS],
            buckets,
            idle_ms: idle_ms.max(1),
            // Seeded per process: a client cannot aim its tuples at one bucket.
            hasher: RandomState::new(),
            len: 0,
            evictions: 0,
        }
    }

    fn bucket(&self, t: &FiveTuple) -> std::ops::Range<usize> {
        let b = (self.hasher.hash_one(t) as usize) & (self.buckets - 1);
        b * WAYS..b * WAYS + WAYS
    }

    fn live(&self, s: &Slot, now_ms: u64) -> bool {
        now_ms.saturating_sub(s.last_ms) <= self.idle_ms
    }

    /// The flow's backend, refreshing its idle time; an expired flow is removed and missed.
    pub fn get(&mut self, t: &FiveTuple, now_ms: u64) -> Option<BackendId> {
        let range = self.bucket(t);
        let idle = self.idle_ms;
        let slots = self.slots.get_mut(range)?;
        for slot in slots.iter_mut() {
            if let Some(s) = slot {
                if s.tuple == *t {
                    if now_ms.saturating_sub(s.last_ms) > idle {
                        *slot = None;
                        self.len -= 1;
                        return None;
                    }
                    s.last_ms = now_ms.max(1);
                    return Some(s.backend);
                }
            }
        }
        None
    }

    /// Whether the flow's client should have its stick entry refreshed now (at most once per
    /// `every_ms` per flow), so a client whose only traffic is one long flow keeps its pin.
    pub fn stick_due(&mut self, t: &FiveTuple, now_ms: u64, every_ms: u64) -> bool {
        let range = self.bucket(t);
        let Some(slots) = self.slots.get_mut(range) else {
            return false;
        };
        for s in slots.iter_mut().flatten() {
            if s.tuple == *t {
                if now_ms.saturating_sub(s.stick_ms) >= every_ms {
                    s.stick_ms = now_ms;
                    return true;
                }
                return false;
            }
        }
        false
    }

    /// Records `t` → `backend` (replacing an entry for `t`).
    pub fn insert(&mut self, t: FiveTuple, backend: BackendId, now_ms: u64) -> Inserted {
        let range = self.bucket(&t);
        let new = Slot {
            tuple: t,
            backend,
            last_ms: now_ms.max(1),
            stick_ms: now_ms,
        };
        let Some(slots) = self.slots.get(range.clone()) else {
            return Inserted::New;
        };
        // The same tuple, else an empty slot, else an expired one, else the LRU (evicted).
        let same = slots
            .iter()
            .position(|s| matches!(s, Some(s) if s.tuple == t));
        let (at, how) = if let Some(i) = same {
            (i, None)
        } else if let Some(i) = slots.iter().position(Option::is_none) {
            (i, Some(Inserted::New))
        } else if let Some(i) = slots
            .iter()
            .position(|s| matches!(s, Some(s) if !self.live(s, now_ms)))
        {
            (i, None)
        } else {
            let lru = slots
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.map_or(0, |s| s.last_ms))
                .map_or(0, |(i, _)| i);
            self.evictions += 1;
            (lru, Some(Inserted::Evicted))
        };
        if how == Some(Inserted::New) {
            self.len += 1;
        }
        if let Some(slot) = self.slots.get_mut(range.start + at) {
            *slot = Some(new);
        }
        how.unwrap_or(Inserted::New)
    }

    /// Forgets the flow (its backend can no longer take it).
    pub fn remove(&mut self, t: &FiveTuple) {
        let range = self.bucket(t);
        if let Some(slots) = self.slots.get_mut(range) {
            for slot in slots {
                if matches!(slot, Some(s) if s.tuple == *t) {
                    *slot = None;
                    self.len -= 1;
                }
            }
        }
    }

    /// Frees every expired slot; returns how many. A housekeeping pass, off the per-packet path.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let idle = self.idle_ms;
        let mut n = 0;
        for slot in &mut self.slots {
            if matches!(slot, Some(s) if now_ms.saturating_sub(s.last_ms) > idle) {
                *slot = None;
                n += 1;
            }
        }
        self.len -= n;
        n
    }

    /// Calls `f` with every flow seen at or after `since_ms` (a housekeeping pass: the
    /// periodic full sync to the peers).
    pub fn for_each_recent(&self, since_ms: u64, mut f: impl FnMut(&FiveTuple, BackendId)) {
        for s in self.slots.iter().flatten() {
            if s.last_ms >= since_ms {
                f(&s.tuple, s.backend);
            }
        }
    }

    /// Forgets every flow (a node that stops forwarding: its flows go stale).
    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
        self.len = 0;
    }

    /// Flows held, expired ones included until a lookup or [`expire`](Self::expire) frees them.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};

    fn tuple(n: u32) -> FiveTuple {
        FiveTuple {
            src: IpAddr::V4(Ipv4Addr::from(0x0ac8_0000 | (n >> 16))),
            dst: IpAddr::V4(Ipv4Addr::new(10, 200, 0, 100)),
            src_port: n as u16,
            dst_port: 443,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn hit_refresh_and_expiry() {
        let mut t = FlowTable::new(16, 1000);
        assert_eq!(t.get(&tuple(1), 10), None);
        t.insert(tuple(1), BackendId(7), 10);
        assert_eq!(t.get(&tuple(1), 900), Some(BackendId(7)));
        // Refreshed at 900: still alive at 1800.
        assert_eq!(t.get(&tuple(1), 1800), Some(BackendId(7)));
        assert_eq!(t.get(&tuple(1), 2801), None);
        assert_eq!(t.len(), 0);
        t.insert(tuple(2), BackendId(1), 10);
        assert_eq!(t.expire(5000), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn stick_refresh_is_due_once_per_period() {
        let mut t = FlowTable::new(16, 1_000_000);
        t.insert(tuple(1), BackendId(1), 10);
        assert!(!t.stick_due(&tuple(1), 500, 1000));
        assert!(t.stick_due(&tuple(1), 1010, 1000));
        assert!(!t.stick_due(&tuple(1), 1500, 1000));
        assert!(!t.stick_due(&tuple(2), 5000, 1000), "unknown flow");
    }

    #[test]
    fn bounded_with_counted_evictions() {
        let mut t = FlowTable::new(64, 1_000_000);
        for n in 0..10_000 {
            t.insert(tuple(n), BackendId(n), u64::from(n) + 1);
            assert!(t.len() <= t.capacity());
        }
        assert_eq!(t.len(), t.capacity());
        assert_eq!(t.evictions(), 10_000 - t.capacity() as u64);
        // The newest flow is always there.
        assert_eq!(t.get(&tuple(9_999), 20_000), Some(BackendId(9_999)));
    }

    proptest! {
        /// Against a model: whatever the table still holds is what was last inserted.
        #[test]
        fn agrees_with_a_map(ops in proptest::collection::vec((0u32..64, 0u32..4, any::<bool>()), 1..400)) {
            let mut t = FlowTable::new(32, u64::MAX / 4);
            let mut model: HashMap<u32, u32> = HashMap::new();
            for (i, (k, v, remove)) in ops.into_iter().enumerate() {
                let now = i as u64 + 1;
                if remove {
                    t.remove(&tuple(k));
                    model.remove(&k);
                } else {
                    t.insert(tuple(k), BackendId(v), now);
                    model.insert(k, v);
                }
                prop_assert!(t.len() <= t.capacity());
            }
            for (k, v) in model {
                if let Some(b) = t.get(&tuple(k), 1_000) {
                    prop_assert_eq!(b, BackendId(v));
                }
            }
        }
    }
}
