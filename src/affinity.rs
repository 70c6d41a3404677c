//! Client affinity: the client key and the stick table. Pure: no I/O, no clock (`now` is
//! passed in), no tokio.
//!
//! # Client key
//!
//! An RD Gateway session is several connections (the HTTP IN and OUT channels, or a WebSocket,
//! plus the UDP side channel) that must all meet on one gateway. They come from one client
//! address, or, behind carrier NAT pools and IPv6 privacy addressing, from one prefix, so the
//! key is the client address masked to a configured prefix ([`KeySpec`]). An IPv4-mapped IPv6
//! address (`::ffff:a.b.c.d`, what a dual-stack socket reports for IPv4 peers) is keyed as the
//! IPv4 address it carries, so a listener's socket family never changes a client's key.
//!
//! The same key feeds Maglev through [`ClientKey::hash64`], a fixed, documented hash: on a
//! stick-table miss every node picks the same gateway without sharing state (DESIGN.md,
//! "Affinity without shared state"). The table below only keeps existing clients where they
//! are while the backend set changes.
//!
//! # Stick table
//!
//! Vocabulary from HAProxy's stick tables: a table of *entries* with a size cap that *expire*
//! after an idle timeout. It is shared by every accept loop, so it is sharded: up to
//! [`MAX_SHARDS`] `Mutex<Shard>`s picked by key hash, each dense arrays of entries plus a
//! `HashMap` from key to array position. A lookup locks one shard briefly and does not
//! allocate; each shard's memory is reserved up front for its share of `max_entries`, so
//! inserts do not allocate either.
//!
//! `max_entries` is a global cap split exactly across the shards. A shard evicts when its own
//! share is full, so with uneven keys eviction can start slightly before the table as a whole
//! is full, and [`StickTable::len`] never exceeds `max_entries`.
//!
//! Eviction is sampled LRU (as in Redis): the least recently used of [`EVICTION_SAMPLES`]
//! randomly chosen entries of the shard goes, or the true LRU entry when the shard holds no
//! more than that. It costs O(1) per insert and still evicts an entry from roughly the oldest
//! tenth. A victim already past the idle timeout is counted as an expiration, not an
//! eviction, so `evictions` counts only clients that lost affinity because the table was full.
//!
//! Expiry is lazy on [`get`](StickTable::get) (an expired entry is never returned) and bulk
//! in [`expire`](StickTable::expire), which a housekeeping task calls periodically to free
//! memory. An entry is expired when it has been idle for strictly longer than the timeout.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::maglev::{fmix64, stable_hash64};

/// Seed of [`ClientKey::hash64`] (the first fractional digits of π: a nothing-up-my-sleeve
/// constant, distinct from the Maglev name seeds).
pub const CLIENT_KEY_SEED: u64 = 0x243f_6a88_85a3_08d3;

/// Most shards a [`StickTable`] uses. 64 keeps lock contention negligible for the core
/// counts a VIP owner runs on, at a few kilobytes of fixed overhead.
pub const MAX_SHARDS: usize = 64;

/// Fewest entries per shard: smaller tables use fewer shards, so that a small cap is not
/// fragmented into shards too small to hold a fair share of clients.
pub const MIN_SHARD_ENTRIES: usize = 64;

/// Entries sampled per eviction. Eight gives a victim from roughly the oldest 11% (the
/// expected minimum rank of 8 uniform samples is 1/9) for a bounded, small cost.
pub const EVICTION_SAMPLES: usize = 8;

/// Prefix lengths used to key clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// Bits of an IPv4 address (or IPv4-mapped IPv6 address) that form the key; at most 32.
    pub ipv4_prefix: u8,
    /// Bits of an IPv6 address that form the key; at most 128.
    pub ipv6_prefix: u8,
}

/// A [`KeySpec`] prefix is longer than its address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySpecError {
    /// The IPv4 prefix exceeds 32 bits.
    #[error("IPv4 affinity prefix /{0} is longer than 32 bits")]
    Ipv4PrefixTooLong(u8),
    /// The IPv6 prefix exceeds 128 bits.
    #[error("IPv6 affinity prefix /{0} is longer than 128 bits")]
    Ipv6PrefixTooLong(u8),
}

impl KeySpec {
    /// A validated spec, for configuration: a too-long prefix is an operator mistake worth
    /// reporting rather than silently clamping.
    pub const fn new(ipv4_prefix: u8, ipv6_prefix: u8) -> Result<Self, KeySpecError> {
        if ipv4_prefix > 32 {
            return Err(KeySpecError::Ipv4PrefixTooLong(ipv4_prefix));
        }
        if ipv6_prefix > 128 {
            return Err(KeySpecError::Ipv6PrefixTooLong(ipv6_prefix));
        }
        Ok(KeySpec {
            ipv4_prefix,
            ipv6_prefix,
        })
    }
}

impl Default for KeySpec {
    /// `/32` and `/64`: one IPv4 client per address, and one IPv6 client per subnet, since
    /// IPv6 hosts rotate temporary addresses within their /64 (RFC 8981) during a session.
    fn default() -> Self {
        KeySpec {
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }
}

/// Address family of a [`ClientKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Family {
    V4,
    V6,
}

/// A client address masked to its prefix: the stick-table key and the Maglev key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    family: Family,
    /// Prefix length, already clamped to the family's width.
    prefix: u8,
    /// Masked address in network order; IPv4 uses the first four bytes, the rest stay zero.
    addr: [u8; 16],
}

impl ClientKey {
    /// The key of `ip` under `spec`. Prefixes longer than the address are clamped (use
    /// [`KeySpec::new`] to reject them at configuration time instead).
    pub fn new(ip: IpAddr, spec: KeySpec) -> ClientKey {
        // to_canonical: `::ffff:a.b.c.d` becomes `a.b.c.d`.
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let prefix = spec.ipv4_prefix.min(32);
                // checked_shl: a /0 mask would be a shift by the full width.
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                let mut addr = [0u8; 16];
                for (dst, src) in addr.iter_mut().zip((u32::from(a) & mask).to_be_bytes()) {
                    *dst = src;
                }
                ClientKey {
                    family: Family::V4,
                    prefix,
                    addr,
                }
            }
            IpAddr::V6(a) => {
                let prefix = spec.ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                ClientKey {
                    family: Family::V6,
                    prefix,
                    addr: (u128::from(a) & mask).to_be_bytes(),
                }
            }
        }
    }

    /// The stable 64-bit hash given to [`crate::maglev::Maglev::lookup`]; identical on every
    /// node and every Portico version (pinned by `tests/data/maglev/golden.txt`).
    ///
    /// It is [`stable_hash64`] with [`CLIENT_KEY_SEED`] over the bytes
    /// `[family (4 or 6), prefix length, first ceil(prefix / 8) bytes of the masked address]`.
    /// Including family and length keeps `10.0.0.0/8` and `10.0.0.0/16` (and an IPv4 key and an
    /// IPv6 key with the same leading bytes) apart; the bytes past the prefix are zero and
    /// omitted.
    pub fn hash64(&self) -> u64 {
        let mut buf = [0u8; 18];
        buf[0] = match self.family {
            Family::V4 => 4,
            Family::V6 => 6,
        };
        buf[1] = self.prefix;
        let n = usize::from(self.prefix).div_ceil(8);
        for (dst, src) in buf[2..].iter_mut().zip(&self.addr).take(n) {
            *dst = *src;
        }
        stable_hash64(CLIENT_KEY_SEED, buf.get(..2 + n).unwrap_or(&buf))
    }

    /// The network address (the masked client address).
    pub fn network(&self) -> IpAddr {
        match self.family {
            Family::V4 => {
                let [a, b, c, d, ..] = self.addr;
                IpAddr::V4(Ipv4Addr::new(a, b, c, d))
            }
            Family::V6 => IpAddr::V6(Ipv6Addr::from(self.addr)),
        }
    }

    /// The prefix length the address was masked to.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }
}

impl fmt::Display for ClientKey {
    /// CIDR notation, e.g. `192.0.2.0/24` or `2001:db8::/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

/// Monotonic stick-table counters (since the table was created).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StickStats {
    /// Entries created (replacing an existing entry's value is not counted).
    pub inserts: u64,
    /// Live entries dropped to make room because their shard was full.
    pub evictions: u64,
    /// Entries dropped for idling past the timeout, by [`StickTable::get`],
    /// [`StickTable::expire`] or eviction of an already idle entry.
    pub expirations: u64,
}

/// One shard: the entries in three parallel, dense arrays (struct of arrays) plus an index
/// from key to position. Dense arrays make sampling random entries for eviction O(1); removal
/// swaps the last entry into the hole and fixes its index. Splitting the arrays keeps the
/// ones a hit touches (`values`, `last_use`) small enough to stay in cache, so a hit costs one
/// random memory access (the index) rather than two.
#[derive(Debug)]
struct Shard<V> {
    /// Key to position in the arrays. std's randomly keyed hasher: client addresses are
    /// attacker-chosen, so bucket placement must not be predictable.
    /// Positions are `u32` to keep index buckets at 24 bytes; a shard never holds more.
    index: HashMap<ClientKey, u32>,
    /// Entry keys, needed only to unindex an entry found by position.
    keys: Vec<ClientKey>,
    /// Entry values.
    values: Vec<V>,
    /// Last time each entry was inserted or hit.
    last_use: Vec<Instant>,
    /// This shard's share of `max_entries`.
    capacity: usize,
    /// xorshift64 state for eviction sampling; never zero.
    rng: u64,
}

impl<V: Copy> Shard<V> {
    /// A shard holding at most `capacity` entries, clamped to `u32::MAX` (far beyond memory).
    fn with_capacity(capacity: usize, rng: u64) -> Self {
        let capacity = capacity.min(u32::MAX as usize);
        let mut shard = Shard {
            index: HashMap::new(),
            keys: Vec::new(),
            values: Vec::new(),
            last_use: Vec::new(),
            capacity,
            rng,
        };
        // A failed reservation only means growth later; the cap still holds. The index gets
        // twice the room: removals leave tombstones, and only below half load does the map
        // clean them by rehashing in place instead of growing (allocating) on insert.
        let _ = shard.index.try_reserve(capacity.saturating_mul(2));
        let _ = shard.keys.try_reserve_exact(capacity);
        let _ = shard.values.try_reserve_exact(capacity);
        let _ = shard.last_use.try_reserve_exact(capacity);
        shard
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn position(&self, key: &ClientKey) -> Option<usize> {
        self.index.get(key).map(|&pos| pos as usize)
    }

    fn push(&mut self, key: ClientKey, value: V, now: Instant) {
        // len < capacity <= u32::MAX (see `with_capacity`).
        self.index.insert(key, self.keys.len() as u32);
        self.keys.push(key);
        self.values.push(value);
        self.last_use.push(now);
    }

    /// Puts a new entry in place of the one at `pos`, returning the old entry's last use.
    /// Reusing the position saves re-indexing the entry that removal would move.
    fn replace_at(
        &mut self,
        pos: usize,
        key: ClientKey,
        value: V,
        now: Instant,
    ) -> Option<Instant> {
        let old_key = std::mem::replace(self.keys.get_mut(pos)?, key);
        let old_use = std::mem::replace(self.last_use.get_mut(pos)?, now);
        *self.values.get_mut(pos)? = value;
        self.index.remove(&old_key);
        self.index.insert(key, pos as u32);
        Some(old_use)
    }

    /// Removes the entry at `pos`, keeping the arrays dense and the index consistent;
    /// returns its value and last use.
    fn remove_at(&mut self, pos: usize) -> Option<(V, Instant)> {
        if pos >= self.keys.len() {
            return None;
        }
        let key = self.keys.swap_remove(pos);
        let value = self.values.swap_remove(pos);
        let last_use = self.last_use.swap_remove(pos);
        self.index.remove(&key);
        if let Some(moved) = self.keys.get(pos) {
            if let Some(p) = self.index.get_mut(moved) {
                *p = pos as u32;
            }
        }
        Some((value, last_use))
    }

    /// Position of the eviction victim: the least recently used of the sample.
    fn victim(&mut self) -> Option<usize> {
        let n = self.last_use.len();
        let mut best: Option<(usize, Instant)> = None;
        let mut consider = |pos: usize, last_use: &[Instant]| {
            if let Some(&t) = last_use.get(pos) {
                if best.is_none_or(|(_, b)| t < b) {
                    best = Some((pos, t));
                }
            }
        };
        if n <= EVICTION_SAMPLES {
            for pos in 0..n {
                consider(pos, &self.last_use);
            }
        } else {
            for _ in 0..EVICTION_SAMPLES {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                // Multiply-shift maps the random word onto 0..n without a division.
                let pos = ((u128::from(self.rng) * n as u128) >> 64) as usize;
                consider(pos, &self.last_use);
            }
        }
        best.map(|(pos, _)| pos)
    }
}

/// Whether an entry last used at `last_use` has idled past `timeout` at `now`. Saturating:
/// callers on different threads may pass slightly out-of-order `now`s.
fn is_expired(last_use: Instant, now: Instant, timeout: Duration) -> bool {
    now.saturating_duration_since(last_use) > timeout
}

/// A sharded stick table from [`ClientKey`] to a backend choice `V`, with an idle timeout and
/// a size cap. `Send + Sync`: share it behind an `Arc` between all accept loops. See the
/// module documentation for sharding, eviction and expiry.
#[derive(Debug)]
pub struct StickTable<V: Copy + Eq + Send> {
    shards: Box<[Mutex<Shard<V>>]>,
    /// `shards.len() - 1`; the length is a power of two.
    shard_mask: usize,
    /// Random per table, so that clients cannot aim at one shard: [`ClientKey::hash64`] is
    /// public by design.
    shard_seed: u64,
    /// The total cap.
    max_entries: usize,
    /// Idle timeout in nanoseconds; atomic so that a configuration reload can change it
    /// without rebuilding the table and losing every client's affinity.
    idle_timeout_ns: AtomicU64,
    /// Live entries, kept beside the shards so that `len` takes no lock.
    len: AtomicUsize,
    inserts: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
}

impl<V: Copy + Eq + Send> StickTable<V> {
    /// A table holding at most `max_entries` entries (0 disables it: inserts are ignored),
    /// expiring entries idle longer than `idle_timeout`.
    ///
    /// Memory for the whole cap is reserved up front (roughly 100 bytes per entry for a small
    /// `V`), so the size cap is also a memory cap and inserts do not allocate. If the
    /// reservation fails the shards grow on demand instead.
    pub fn new(max_entries: usize, idle_timeout: Duration) -> Self {
        let mut count = 1;
        while count < MAX_SHARDS && max_entries / (count * 2) >= MIN_SHARD_ENTRIES {
            count *= 2;
        }
        let seeds = RandomState::new();
        let shard_seed = seeds.hash_one(0x5eed_u64);
        let shards: Box<[Mutex<Shard<V>>]> = (0..count)
            .map(|i| {
                let capacity = max_entries / count + usize::from(i < max_entries % count);
                Mutex::new(Shard::with_capacity(capacity, seeds.hash_one(i) | 1))
            })
            .collect();
        StickTable {
            shards,
            shard_mask: count - 1,
            shard_seed,
            max_entries,
            idle_timeout_ns: AtomicU64::new(duration_to_ns(idle_timeout)),
            len: AtomicUsize::new(0),
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            expirations: AtomicU64::new(0),
        }
    }

    /// The value for `key`, refreshing its last use to `now`. An entry idle past the timeout
    /// is removed (counted as an expiration) and not returned. Does not allocate.
    pub fn get(&self, key: &ClientKey, now: Instant) -> Option<V> {
        let timeout = self.idle_timeout();
        let mut shard = self.lock(key);
        let pos = shard.position(key)?;
        let value = *shard.values.get(pos)?;
        let last_use = shard.last_use.get_mut(pos)?;
        if is_expired(*last_use, now, timeout) {
            shard.remove_at(pos);
            drop(shard);
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.expirations.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // Never move last use backwards when threads race with slightly different clocks.
        *last_use = (*last_use).max(now);
        Some(value)
    }

    /// Inserts `key -> value` used at `now`, or replaces the value of an existing entry.
    /// When the key's shard is full, one entry is evicted first (see the module
    /// documentation); the table never exceeds `max_entries`.
    pub fn insert(&self, key: ClientKey, value: V, now: Instant) {
        let timeout = self.idle_timeout();
        let mut shard = self.lock(&key);
        if let Some(pos) = shard.position(&key) {
            if let Some(v) = shard.values.get_mut(pos) {
                *v = value;
            }
            if let Some(t) = shard.last_use.get_mut(pos) {
                *t = now;
            }
            return;
        }
        if shard.capacity == 0 {
            return;
        }
        let mut evicted = None;
        if shard.len() >= shard.capacity {
            evicted = shard
                .victim()
                .and_then(|pos| shard.replace_at(pos, key, value, now))
                .map(|last_use| is_expired(last_use, now, timeout));
        }
        if evicted.is_none() {
            shard.push(key, value, now);
        }
        drop(shard);
        match evicted {
            None => {
                self.len.fetch_add(1, Ordering::Relaxed);
            }
            Some(true) => {
                self.expirations.fetch_add(1, Ordering::Relaxed);
            }
            Some(false) => {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.inserts.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes `key`, returning its value whether or not it had expired.
    pub fn remove(&self, key: &ClientKey) -> Option<V> {
        let mut shard = self.lock(key);
        let pos = shard.position(key)?;
        let (value, _) = shard.remove_at(pos)?;
        drop(shard);
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(value)
    }

    /// Drops every entry whose value fails `keep` (e.g. a backend that was removed from the
    /// pool); returns how many were dropped.
    ///
    /// Shards are visited one at a time, so concurrent inserts may land in shards already
    /// visited: callers publish the new backend set first, then retain. `keep` runs with a
    /// shard locked and must not use this table.
    pub fn retain(&self, mut keep: impl FnMut(&V) -> bool) -> usize {
        self.drain_where(|value, _| !keep(value))
    }

    /// Removes entries idle longer than the timeout at `now`; returns how many. O(entries):
    /// meant for a periodic housekeeping task, one shard locked at a time.
    pub fn expire(&self, now: Instant) -> usize {
        let timeout = self.idle_timeout();
        let dropped = self.drain_where(|_, last_use| is_expired(last_use, now, timeout));
        self.expirations
            .fetch_add(dropped as u64, Ordering::Relaxed);
        dropped
    }

    /// Number of live entries (some may have expired but not yet been removed). Lock-free.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the table holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The size cap given to [`new`](Self::new).
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// The current idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_nanos(self.idle_timeout_ns.load(Ordering::Relaxed))
    }

    /// Changes the idle timeout (on configuration reload) without losing entries; it applies
    /// to existing entries from the next `get` or `expire` on. Saturates at about 584 years.
    pub fn set_idle_timeout(&self, idle_timeout: Duration) {
        self.idle_timeout_ns
            .store(duration_to_ns(idle_timeout), Ordering::Relaxed);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StickStats {
        StickStats {
            inserts: self.inserts.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            expirations: self.expirations.load(Ordering::Relaxed),
        }
    }

    /// Calls `f` with every entry's value, one shard locked at a time (for `status`: how many
    /// clients are pinned to each backend). `f` must not use this table.
    pub fn for_each_value(&self, mut f: impl FnMut(&V)) {
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.values.iter().for_each(&mut f);
        }
    }

    /// Locks the shard owning `key`. A poisoned lock is recovered: every mutation leaves the
    /// shard consistent before anything that can panic (the `retain` predicate) runs, so the
    /// data is intact and one panicked task must not take affinity down for all.
    fn lock(&self, key: &ClientKey) -> MutexGuard<'_, Shard<V>> {
        let h = fmix64(key.hash64() ^ self.shard_seed);
        // In bounds: the mask is the shard count (a power of two, at least 1) minus one.
        let shard = &self.shards[(h >> 32) as usize & self.shard_mask];
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes, shard by shard, every entry for which `drop_it` is true; returns the count.
    fn drain_where(&self, mut drop_it: impl FnMut(&V, Instant) -> bool) -> usize {
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let mut pos = 0;
            while let (Some(value), Some(&last_use)) =
                (shard.values.get(pos), shard.last_use.get(pos))
            {
                if drop_it(value, last_use) {
                    // The last entry moves into `pos`: look at `pos` again.
                    shard.remove_at(pos);
                    self.len.fetch_sub(1, Ordering::Relaxed);
                    dropped += 1;
                } else {
                    pos += 1;
                }
            }
        }
        dropped
    }
}

fn duration_to_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOLDEN: &str = include_str!("../tests/data/maglev/golden.txt");
    const MINUTE: Duration = Duration::from_secs(60);

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn key(s: &str) -> ClientKey {
        ClientKey::new(ip(s), KeySpec::default())
    }

    fn spec(v4: u8, v6: u8) -> KeySpec {
        KeySpec::new(v4, v6).expect("test spec")
    }

    /// Counts this thread's allocations, so that tests running in parallel do not interfere.
    mod alloc_count {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
        }

        struct Counting;

        // SAFETY: forwards to the system allocator unchanged; only counts calls.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
                // SAFETY: same contract as our caller's.
                unsafe { System.alloc(layout) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: same contract as our caller's.
                unsafe { System.dealloc(ptr, layout) }
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
                // SAFETY: same contract as our caller's.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        #[global_allocator]
        static COUNTING: Counting = Counting;

        /// Allocations made by this thread while running `f`.
        pub fn during(f: impl FnOnce()) -> u64 {
            let before = ALLOCATIONS.with(Cell::get);
            f();
            ALLOCATIONS.with(Cell::get) - before
        }
    }

    #[test]
    fn hot_paths_do_not_allocate() {
        let t0 = Instant::now();
        let table = StickTable::new(5_000, MINUTE);
        let k = |i: u32| ClientKey::new(IpAddr::V4(Ipv4Addr::from(i)), KeySpec::default());
        let allocations = alloc_count::during(|| {
            // Fill, then churn through many times the capacity so that evictions leave
            // tombstones in every shard's index.
            for i in 0..50_000 {
                table.insert(k(i), 1u16, t0);
                assert_eq!(table.get(&k(i), t0), Some(1));
                assert_eq!(table.get(&k(i + 1_000_000), t0), None);
            }
        });
        assert_eq!(allocations, 0);
        assert_eq!(table.len(), 5_000);

        let m = crate::maglev::Maglev::build([("a", 1), ("b", 2), ("c", 3)], 1009).unwrap();
        let allocations = alloc_count::during(|| {
            for h in 0..1000u64 {
                let key = k(h as u32).hash64();
                assert!(m.lookup(key).is_some());
                assert_eq!(m.preference(key).count(), 3);
            }
        });
        assert_eq!(allocations, 0);
    }

    #[test]
    fn table_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<StickTable<u16>>();
        check::<StickTable<usize>>();
    }

    #[test]
    fn golden_key_hashes() {
        let mut checked = 0;
        for line in GOLDEN.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.first() != Some(&"key") {
                continue;
            }
            let spec = KeySpec::new(f[2].parse().unwrap(), f[3].parse().unwrap()).unwrap();
            let want = u64::from_str_radix(f[4], 16).unwrap();
            assert_eq!(ClientKey::new(ip(f[1]), spec).hash64(), want, "{line}");
            checked += 1;
        }
        assert_eq!(checked, 8);
    }

    #[test]
    fn ipv4_prefix_groups_clients() {
        let s = spec(24, 64);
        let a = ClientKey::new(ip("192.0.2.1"), s);
        let b = ClientKey::new(ip("192.0.2.200"), s);
        let c = ClientKey::new(ip("192.0.3.1"), s);
        assert_eq!(a, b);
        assert_eq!(a.hash64(), b.hash64());
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "192.0.2.0/24");
        assert_eq!(key("192.0.2.1").to_string(), "192.0.2.1/32");
        assert_eq!(
            ClientKey::new(ip("192.0.2.1"), spec(0, 0)).to_string(),
            "0.0.0.0/0"
        );
    }

    #[test]
    fn ipv6_prefix_groups_clients() {
        let a = key("2001:db8::1");
        let b = key("2001:db8::ffff:1234:5678:9abc");
        let c = key("2001:db8:0:1::1");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8::/64");
        assert_eq!(a.prefix_len(), 64);
        assert_eq!(a.network(), ip("2001:db8::"));
        let full = ClientKey::new(ip("2001:db8::1"), spec(32, 128));
        assert_eq!(full.to_string(), "2001:db8::1/128");
        let odd = ClientKey::new(ip("2001:db8:ffff::"), spec(32, 36));
        assert_eq!(odd.to_string(), "2001:db8:f000::/36");
    }

    #[test]
    fn mapped_ipv4_is_ipv4() {
        let s = spec(24, 64);
        let mapped = ClientKey::new(ip("::ffff:192.0.2.77"), s);
        assert_eq!(mapped, ClientKey::new(ip("192.0.2.1"), s));
        assert_eq!(mapped.to_string(), "192.0.2.0/24");
        // IPv4-compatible (deprecated) and other IPv6 addresses stay IPv6.
        assert_eq!(ClientKey::new(ip("::192.0.2.77"), s).prefix_len(), 64);
    }

    #[test]
    fn families_and_lengths_hash_apart() {
        let v4 = ClientKey::new(ip("10.0.0.0"), spec(8, 64));
        let v4_16 = ClientKey::new(ip("10.0.0.0"), spec(16, 64));
        let v6 = ClientKey::new(ip("a00::"), spec(8, 8));
        assert_ne!(v4.hash64(), v4_16.hash64());
        assert_ne!(v4.hash64(), v6.hash64());
        assert_ne!(v4, v6);
    }

    #[test]
    fn spec_validation_and_clamping() {
        assert_eq!(
            KeySpec::new(33, 64),
            Err(KeySpecError::Ipv4PrefixTooLong(33))
        );
        assert_eq!(
            KeySpec::new(32, 129),
            Err(KeySpecError::Ipv6PrefixTooLong(129))
        );
        let wild = KeySpec {
            ipv4_prefix: 200,
            ipv6_prefix: 255,
        };
        assert_eq!(
            ClientKey::new(ip("192.0.2.9"), wild).to_string(),
            "192.0.2.9/32"
        );
        assert_eq!(ClientKey::new(ip("2001:db8::9"), wild).prefix_len(), 128);
    }

    #[test]
    fn hit_refreshes_last_use() {
        let t0 = Instant::now();
        let table = StickTable::new(100, MINUTE);
        table.insert(key("192.0.2.1"), 3u16, t0);
        // Each hit just inside the timeout keeps the entry alive well past t0 + timeout.
        for step in 1..=5 {
            assert_eq!(table.get(&key("192.0.2.1"), t0 + MINUTE * step), Some(3));
        }
        assert_eq!(table.get(&key("192.0.2.1"), t0 + MINUTE * 7), None);
        assert_eq!(table.stats().expirations, 1);
        assert!(table.is_empty());
    }

    #[test]
    fn idle_entry_expires_on_get() {
        let t0 = Instant::now();
        let table = StickTable::new(100, MINUTE);
        table.insert(key("192.0.2.1"), 1u16, t0);
        assert_eq!(
            table.get(&key("192.0.2.1"), t0 + MINUTE),
            Some(1),
            "exactly at timeout"
        );
        let later = t0 + MINUTE * 2 + Duration::from_nanos(1);
        assert_eq!(table.get(&key("192.0.2.1"), later), None);
        assert_eq!(table.len(), 0);
        assert_eq!(
            table.stats(),
            StickStats {
                inserts: 1,
                evictions: 0,
                expirations: 1
            }
        );
        // Out-of-order `now` from another thread neither expires nor rewinds the entry.
        table.insert(key("192.0.2.1"), 1u16, t0 + MINUTE);
        assert_eq!(table.get(&key("192.0.2.1"), t0), Some(1));
        assert_eq!(table.get(&key("192.0.2.1"), t0 + MINUTE * 2), Some(1));
    }

    #[test]
    fn expire_sweeps_idle_entries() {
        let t0 = Instant::now();
        let table = StickTable::new(1000, MINUTE);
        for i in 0..10u8 {
            table.insert(
                key(&format!("192.0.2.{i}")),
                0u16,
                t0 + MINUTE * u32::from(i),
            );
        }
        // At t0 + 5m, the entries last used at t0 .. t0 + 3m have idled for over a minute.
        assert_eq!(table.expire(t0 + MINUTE * 5), 4);
        assert_eq!(table.len(), 6);
        assert_eq!(table.stats().expirations, 4);
        assert_eq!(table.get(&key("192.0.2.3"), t0 + MINUTE * 5), None);
        assert_eq!(table.get(&key("192.0.2.4"), t0 + MINUTE * 5), Some(0));
    }

    #[test]
    fn set_idle_timeout_applies_to_existing_entries() {
        let t0 = Instant::now();
        let table = StickTable::new(10, MINUTE);
        table.insert(key("192.0.2.1"), 1u16, t0);
        table.set_idle_timeout(MINUTE * 10);
        assert_eq!(table.idle_timeout(), MINUTE * 10);
        assert_eq!(table.get(&key("192.0.2.1"), t0 + MINUTE * 5), Some(1));
        table.set_idle_timeout(Duration::MAX);
        assert_eq!(table.get(&key("192.0.2.1"), t0 + MINUTE * 1000), Some(1));
    }

    #[test]
    fn full_table_evicts_least_recently_used() {
        let t0 = Instant::now();
        // Fewer than 2 * MIN_SHARD_ENTRIES: one shard, and under EVICTION_SAMPLES the
        // sample is the whole shard, so eviction is exact LRU.
        let table = StickTable::new(4, MINUTE);
        for i in 0..4u8 {
            table.insert(
                key(&format!("192.0.2.{i}")),
                i,
                t0 + Duration::from_secs(i.into()),
            );
        }
        // Touch the oldest so that .1 becomes the least recently used.
        assert_eq!(
            table.get(&key("192.0.2.0"), t0 + Duration::from_secs(10)),
            Some(0)
        );
        table.insert(key("192.0.2.9"), 9, t0 + Duration::from_secs(11));
        assert_eq!(table.len(), 4);
        assert_eq!(table.remove(&key("192.0.2.1")), None);
        assert_eq!(
            table.get(&key("192.0.2.0"), t0 + Duration::from_secs(12)),
            Some(0)
        );
        assert_eq!(
            table.get(&key("192.0.2.9"), t0 + Duration::from_secs(12)),
            Some(9)
        );
        assert_eq!(
            table.stats(),
            StickStats {
                inserts: 5,
                evictions: 1,
                expirations: 0
            }
        );
        // An idle victim counts as expired, not evicted.
        table.insert(key("192.0.2.10"), 10, t0 + MINUTE * 5);
        assert_eq!(table.stats().evictions, 1);
        assert_eq!(table.stats().expirations, 1);
    }

    #[test]
    fn replace_keeps_one_entry() {
        let t0 = Instant::now();
        let table = StickTable::new(10, MINUTE);
        table.insert(key("192.0.2.1"), 1u16, t0);
        table.insert(key("192.0.2.1"), 2u16, t0);
        assert_eq!(table.len(), 1);
        assert_eq!(table.stats().inserts, 1);
        assert_eq!(table.remove(&key("192.0.2.1")), Some(2));
        assert_eq!(table.remove(&key("192.0.2.1")), None);
        assert!(table.is_empty());
    }

    #[test]
    fn retain_drops_failed_values() {
        let t0 = Instant::now();
        let table = StickTable::new(10_000, MINUTE);
        for i in 0..1000u16 {
            let k = ClientKey::new(
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + u32::from(i))),
                KeySpec::default(),
            );
            table.insert(k, i % 4, t0);
        }
        assert_eq!(table.retain(|&v| v != 2), 250);
        assert_eq!(table.len(), 750);
        for i in 0..1000u16 {
            let k = ClientKey::new(
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + u32::from(i))),
                KeySpec::default(),
            );
            let want = (i % 4 != 2).then_some(i % 4);
            assert_eq!(table.get(&k, t0), want);
        }
    }

    #[test]
    fn zero_capacity_holds_nothing() {
        let table = StickTable::new(0, MINUTE);
        table.insert(key("192.0.2.1"), 1u16, Instant::now());
        assert!(table.is_empty());
        assert_eq!(table.get(&key("192.0.2.1"), Instant::now()), None);
    }

    #[test]
    fn poisoned_shard_is_recovered() {
        let t0 = Instant::now();
        let table = StickTable::new(10, MINUTE);
        table.insert(key("192.0.2.1"), 1u16, t0);
        let poisoned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            table.retain(|_| panic!("predicate bug"));
        }));
        assert!(poisoned.is_err());
        assert_eq!(table.get(&key("192.0.2.1"), t0), Some(1));
        table.insert(key("192.0.2.2"), 2u16, t0);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn large_table_uses_all_shards_and_respects_cap() {
        let t0 = Instant::now();
        let table = StickTable::new(10_000, MINUTE);
        assert_eq!(table.shards.len(), MAX_SHARDS);
        for i in 0..30_000u32 {
            table.insert(
                ClientKey::new(IpAddr::V4(Ipv4Addr::from(i)), KeySpec::default()),
                0u8,
                t0,
            );
        }
        assert_eq!(table.len(), 10_000);
        let s = table.stats();
        assert_eq!(s.inserts, 30_000);
        assert_eq!(s.evictions, 20_000);
        let shard_sum: usize = table.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert_eq!(shard_sum, 10_000);
    }

    /// One stick-table operation over a small key space, so that operations collide.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u8, u8),
        Get(u8, u8),
        Remove(u8),
        Expire(u8),
        Retain(u8),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            4 => (any::<u8>(), any::<u8>(), 0u8..4).prop_map(|(k, t, v)| Op::Insert(k, t, v)),
            2 => (any::<u8>(), any::<u8>()).prop_map(|(k, t)| Op::Get(k, t)),
            1 => any::<u8>().prop_map(Op::Remove),
            1 => any::<u8>().prop_map(Op::Expire),
            1 => (0u8..4).prop_map(Op::Retain),
        ];
        prop::collection::vec(op, 1..300)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// len never exceeds the cap and always equals the entries actually held; a key just
        /// inserted is found; after `retain` drops a value, no `get` returns it (affinity
        /// never sends a client to a backend that was retained out).
        #[test]
        fn table_invariants(max in 1usize..200, ops in ops()) {
            let t0 = Instant::now();
            let at = |t: u8| t0 + Duration::from_secs(u64::from(t));
            let table = StickTable::new(max, Duration::from_secs(30));
            let k = |i: u8| ClientKey::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)), KeySpec::default());
            let mut banned: Option<u8> = None;
            for op in ops {
                match op {
                    Op::Insert(i, t, v) => {
                        if banned == Some(v) {
                            continue;
                        }
                        table.insert(k(i), v, at(t));
                        prop_assert_eq!(table.get(&k(i), at(t)), Some(v));
                    }
                    Op::Get(i, t) => {
                        let got = table.get(&k(i), at(t));
                        prop_assert!(got.is_none() || got != banned);
                    }
                    Op::Remove(i) => {
                        table.remove(&k(i));
                    }
                    Op::Expire(t) => {
                        table.expire(at(t));
                    }
                    Op::Retain(v) => {
                        table.retain(|&x| x != v);
                        banned = Some(v);
                    }
                }
                prop_assert!(table.len() <= max);
                let held: usize = table.shards.iter().map(|s| s.lock().unwrap().len()).sum();
                prop_assert_eq!(held, table.len());
            }
        }
    }
}
