//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, §3.4). Pure: no I/O, no clock, no randomness.
//!
//! # Why Maglev
//!
//! Portico keeps no shared state between nodes (see DESIGN.md, "Affinity without shared
//! state"): on a stick-table miss the backend is `lookup(hash(client key))`, so every node with
//! the same backend set must build the *same* table, and a change to the set must move as few
//! clients as possible. Maglev gives O(1) lookups from a flat table, near-perfect balance, and
//! small disruption when one backend leaves.
//!
//! # Determinism
//!
//! Nothing here depends on process state. Each backend's permutation of the table comes from
//! [`stable_hash64`] of its *name* (never its position, never std's randomly keyed hasher), so
//! two nodes, or two versions of Portico, given the same `(name, weight)` pairs (in any order)
//! and the same table size, agree on the owner of every slot. `tests/data/maglev/` pins this
//! with vectors produced by an independent implementation; changing the hash, the seeds, or
//! the fill order is a breaking change for mixed-version farms and must fail those tests.
//!
//! # Build
//!
//! Backend `i` walks the permutation `slot_j = (offset_i + j * skip_i) mod M`, where
//! `offset_i = h(name, OFFSET_SEED) mod M` and `skip_i = h(name, SKIP_SEED) mod (M - 1) + 1`.
//! `M` is prime, so every skip is coprime with `M` and each walk visits every slot.
//!
//! Weights: each backend first gets a slot quota by the largest-remainder (Hamilton) method, so
//! `|quota_i - M * w_i / W| < 1` slot. Slots are then claimed one at a time: the backend with
//! the smallest `(filled_i + 1) / w_i` (exact integer comparison) that is still under quota
//! takes its next preferred free slot. With equal weights this is exactly the paper's
//! round-robin population, and with unequal weights it interleaves claims in proportion to
//! weight, so no backend grabs a run of its preferred slots ahead of the others (that would
//! defeat the permutation's spread and raise disruption).
//!
//! Every tie (equal remainders, equal claim ratios) goes to the byte-wise smaller *name*, not
//! the lower index, so the owner of each slot depends only on the set of `(name, weight)`
//! pairs: two nodes whose configuration or discovery lists the gateways in different orders
//! still agree on every client. Indexes only label the result in the caller's order.
//!
//! A backend whose quota rounds to zero owns no slot; [`Maglev::preference`] still yields it,
//! after the others.
//!
//! # Disruption
//!
//! Two kinds of change reach a table, and they are handled differently.
//!
//! **A backend leaves or returns** (health, drain, disable): the daily case. The table is
//! built once over every *configured* backend and [`Maglev::restrict`] hands the slots of the
//! ineligible ones to the eligible ones by a per-slot weighted rendezvous score. A backend
//! leaving therefore moves only its own keys (0% of the others', a property test holds this
//! for N = 3..100), and coming back it takes back exactly its slots.
//!
//! **The configured set changes** (a gateway added to or deleted from the file): the table is
//! rebuilt, and Maglev keeps others' moves small but not zero: survivors take the freed slots
//! in permutation order, and their later claims shift. Measured over every single removal
//! from 40 random farms per size (`disruption_report` test, M = 65537, weights 1..=10 or
//! equal), the share of the other backends' keys that move averages 0.03% (N = 3) to 0.6%
//! (N = 100), and more than 99% of removals stay under 1%. The tail is larger when the
//! removed backend owned a large share of the table and some other backend's walk is
//! correlated with its walk. The worst case found is a skip equal to minus the removed
//! backend's skip (mod M): the walks are then the same cycle run in opposite directions, and
//! removing a heavy backend (weight 10 among six of weight 1) moved 7.8%. An operator who
//! wants a gateway gone without moving anyone else disables it first (zero disruption) and
//! deletes it from the file later, when its clients have left.
//!
//! # Lookup and retries
//!
//! [`Maglev::lookup`] is one modulo and one load. [`Maglev::preference`] gives the per-key
//! order used for connect retries; see [`Preference`] for how it stays allocation-free and
//! bounded.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};
use std::iter::FusedIterator;

/// Table size used unless configured otherwise: the prime the paper uses, well above 100 ×
/// the number of gateways a farm plausibly has, which keeps shares within one slot of the
/// weights and typical disruption under 1% (see "Disruption" above for the tail).
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// Largest accepted table size. Slots are `u16`, so the table costs `2 × M` bytes; the cap
/// (a prime, 2^24 + 43) bounds a mistyped size to 32 MiB rather than 8 GiB.
pub const MAX_TABLE_SIZE: u32 = 16_777_259;

/// Largest accepted number of backends: slots store backend indexes as `u16`.
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// Distinct backends [`Preference`] takes from the table walk before falling back to a
/// rotation over all backends. Connect retries are few (two or three), so eight covers every
/// realistic retry budget while keeping the iterator a small fixed-size value.
pub const PREFERENCE_WALK_DISTINCT: usize = 8;

/// Slots [`Preference`] inspects at most while looking for those distinct backends. With
/// balanced weights eight distinct backends are found in a few dozen slots; the cap bounds the
/// work when one backend owns nearly the whole table.
pub const PREFERENCE_WALK_LIMIT: u32 = 512;

/// Seed of the hash that picks a backend's first slot (`offset`).
pub const OFFSET_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Seed of the hash that picks a backend's stride (`skip`).
pub const SKIP_SEED: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// Seed of the per-backend hash behind [`Maglev::restrict`]'s rendezvous scores.
pub const RENDEZVOUS_SEED: u64 = 0x1656_67b1_9e37_79f9;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The stable 64-bit hash used for backend names and client keys.
///
/// Algorithm (fixed forever; the golden vectors pin it): FNV-1a 64 over `data`, starting from
/// the standard offset basis XOR `seed`, then MurmurHash3's `fmix64` finaliser. FNV-1a alone
/// mixes poorly into the high bits for short, similar inputs such as `gw1`/`gw2`; `fmix64` is a
/// bijection with full avalanche, so `h mod M` and `h mod (M - 1)` behave as independent
/// uniform values. This is not a keyed or cryptographic hash: it must be the same everywhere,
/// so it cannot be secret.
#[inline]
pub fn stable_hash64(seed: u64, data: &[u8]) -> u64 {
    let mut h = FNV_OFFSET_BASIS ^ seed;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h)
}

/// MurmurHash3 64-bit finaliser.
#[inline]
pub(crate) fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Why a Maglev table could not be built. Every variant is a configuration fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MaglevError {
    /// The table size is not prime, so some skips would share a factor with it and their
    /// walks would miss slots.
    #[error("maglev table size {size} is not prime")]
    SizeNotPrime {
        /// The rejected size.
        size: u32,
    },
    /// The table size exceeds [`MAX_TABLE_SIZE`].
    #[error("maglev table size {size} exceeds the maximum {max}")]
    SizeTooLarge {
        /// The rejected size.
        size: u32,
        /// [`MAX_TABLE_SIZE`].
        max: u32,
    },
    /// Fewer slots than backends: some backends could never be chosen.
    #[error("maglev table size {size} is smaller than the number of backends {backends}")]
    SizeBelowBackends {
        /// The table size.
        size: u32,
        /// The number of backends given.
        backends: usize,
    },
    /// More backends than a `u16` slot can index ([`MAX_BACKENDS`]).
    #[error("{count} maglev backends exceed the maximum {max}")]
    TooManyBackends {
        /// How many backends were given (counting stops just past the maximum).
        count: usize,
        /// [`MAX_BACKENDS`].
        max: usize,
    },
    /// A backend has weight 0; disable or drain it instead of weighting it out.
    #[error("maglev backend {name:?} has weight 0")]
    ZeroWeight {
        /// The backend's name.
        name: String,
    },
    /// Two backends share a name, so they would share a permutation and the table would no
    /// longer be a function of the names.
    #[error("maglev backend name {name:?} appears more than once")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
}

/// A built Maglev lookup table. Immutable; rebuild it when the backend set changes (off the
/// hot path) and publish the new one.
#[derive(Debug, Clone)]
pub struct Maglev {
    /// Table size `M` (prime).
    size: u32,
    /// `M` slots, each the build-order index of its owner. Empty when there are no backends.
    table: Vec<u16>,
    /// Slots owned by each backend, in build order.
    shares: Vec<u32>,
    /// Each backend's weight and rendezvous hash (of its name), in build order: what
    /// [`Maglev::restrict`] needs to hand out an excluded backend's slots.
    members: Vec<Member>,
    /// Backends [`Maglev::restrict`] took out: they own no slot and [`Preference`] skips them.
    /// Empty when nothing is excluded.
    excluded: Vec<bool>,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    weight: u32,
    rendezvous: u64,
}

/// A backend's walk through the table during build.
struct Walk {
    /// Next slot this backend will try.
    next: u32,
    /// Stride of its permutation, in `1..M`.
    skip: u32,
    /// Weight, for claim ordering.
    weight: u64,
    /// Slots claimed so far.
    filled: u32,
    /// Slots it is entitled to (Hamilton quota).
    quota: u32,
    /// Tie-breaker, see [`Claim::rank`].
    rank: u16,
}

/// Heap entry: the backend whose next claim has the smallest `(filled + 1) / weight` sorts
/// first; the fraction is compared exactly by cross-multiplication.
struct Claim {
    /// `filled + 1` at the time of pushing.
    next_count: u64,
    weight: u64,
    /// Position of the backend's name in byte-wise sorted order: the tie-breaker.
    rank: u16,
    /// Build-order index, written into the table.
    index: u16,
}

impl PartialEq for Claim {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Claim {}

impl PartialOrd for Claim {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Claim {
    /// Reversed so that `BinaryHeap` (a max-heap) pops the smallest ratio, then smallest name.
    fn cmp(&self, other: &Self) -> Ordering {
        // counts <= 2^24 and weights < 2^32, so the products fit in u64 with room to spare.
        let lhs = self.next_count * other.weight;
        let rhs = other.next_count * self.weight;
        rhs.cmp(&lhs).then_with(|| other.rank.cmp(&self.rank))
    }
}

impl Maglev {
    /// Builds the table for `backends`, given in order as `(name, weight)`; indexes returned
    /// by [`lookup`](Self::lookup) and [`preference`](Self::preference) refer to this order.
    ///
    /// An empty list gives a table whose lookups return `None`. The size must be prime,
    /// at most [`MAX_TABLE_SIZE`], and at least the number of backends.
    ///
    /// Cost: `O(M log M + M log N)` time, a few milliseconds for 100 backends at the default
    /// size in release builds (see `benches/maglev.rs`); allocates the table and per-backend
    /// state. Run it off the data path and publish the result.
    pub fn build<'a, I: IntoIterator<Item = (&'a str, u32)>>(
        backends: I,
        size: u32,
    ) -> Result<Maglev, MaglevError> {
        if size > MAX_TABLE_SIZE {
            return Err(MaglevError::SizeTooLarge {
                size,
                max: MAX_TABLE_SIZE,
            });
        }
        if !is_prime(size) {
            return Err(MaglevError::SizeNotPrime { size });
        }

        let mut list: Vec<(&str, u32)> = Vec::new();
        let mut names: HashSet<&str> = HashSet::new();
        for (name, weight) in backends {
            if list.len() == MAX_BACKENDS {
                return Err(MaglevError::TooManyBackends {
                    count: MAX_BACKENDS + 1,
                    max: MAX_BACKENDS,
                });
            }
            if weight == 0 {
                return Err(MaglevError::ZeroWeight {
                    name: name.to_owned(),
                });
            }
            if !names.insert(name) {
                return Err(MaglevError::DuplicateName {
                    name: name.to_owned(),
                });
            }
            list.push((name, weight));
        }
        if list.len() > size as usize {
            return Err(MaglevError::SizeBelowBackends {
                size,
                backends: list.len(),
            });
        }
        if list.is_empty() {
            return Ok(Maglev {
                size,
                table: Vec::new(),
                shares: Vec::new(),
                members: Vec::new(),
                excluded: Vec::new(),
            });
        }

        let mut by_name: Vec<usize> = (0..list.len()).collect();
        by_name.sort_unstable_by_key(|&i| list.get(i).map(|&(name, _)| name.as_bytes()));
        let mut ranks = vec![0u16; list.len()];
        for (rank, &i) in by_name.iter().enumerate() {
            if let Some(r) = ranks.get_mut(i) {
                // Fewer than MAX_BACKENDS = u16::MAX names, so ranks fit.
                *r = rank as u16;
            }
        }
        let quotas = hamilton_quotas(size, &list, &ranks);
        let m = u64::from(size);
        let mut walks: Vec<Walk> = list
            .iter()
            .zip(quotas.iter().zip(&ranks))
            .map(|(&(name, weight), (&quota, &rank))| {
                let offset = stable_hash64(OFFSET_SEED, name.as_bytes()) % m;
                let skip = stable_hash64(SKIP_SEED, name.as_bytes()) % (m - 1) + 1;
                Walk {
                    // Both are below M <= MAX_TABLE_SIZE, which fits in u32.
                    next: offset as u32,
                    skip: skip as u32,
                    weight: u64::from(weight),
                    filled: 0,
                    quota,
                    rank,
                }
            })
            .collect();

        const EMPTY: u16 = u16::MAX;
        // Backend indexes are < MAX_BACKENDS = u16::MAX, so EMPTY never names a backend.
        let mut table = vec![EMPTY; size as usize];
        let mut heap: BinaryHeap<Claim> = walks
            .iter()
            .enumerate()
            .filter(|(_, w)| w.quota > 0)
            .map(|(i, w)| Claim {
                next_count: 1,
                weight: w.weight,
                rank: w.rank,
                index: i as u16,
            })
            .collect();

        // Quotas sum to M, so the table is full exactly when the heap empties, and while any
        // backend is under quota a free slot exists for its walk (which visits every slot) to
        // find.
        while let Some(claim) = heap.pop() {
            let Some(walk) = walks.get_mut(usize::from(claim.index)) else {
                continue;
            };
            // The walk visits every slot within M steps, so the bound is never what stops it;
            // it only keeps a broken invariant from becoming a hang.
            for _ in 0..size {
                let slot = walk.next as usize;
                walk.next += walk.skip;
                if walk.next >= size {
                    walk.next -= size;
                }
                if let Some(owner) = table.get_mut(slot) {
                    if *owner == EMPTY {
                        *owner = claim.index;
                        break;
                    }
                }
            }
            walk.filled += 1;
            if walk.filled < walk.quota {
                heap.push(Claim {
                    next_count: u64::from(walk.filled) + 1,
                    weight: walk.weight,
                    rank: walk.rank,
                    index: claim.index,
                });
            }
        }

        let members = list
            .iter()
            .map(|&(name, weight)| Member {
                weight,
                rendezvous: stable_hash64(RENDEZVOUS_SEED, name.as_bytes()),
            })
            .collect();
        Ok(Maglev {
            size,
            table,
            shares: quotas,
            members,
            excluded: Vec::new(),
        })
    }

    /// This table with the backends whose `eligible` flag is false taken out (a missing flag
    /// counts as eligible): every slot they owned goes to the eligible backend with the
    /// highest weighted rendezvous score for that slot, and every other slot keeps its owner.
    ///
    /// This is how health and admin changes reach the table. Building a fresh Maglev table
    /// over the survivors would also move some of *their* keys (see "Disruption"); here a
    /// backend leaving moves only its own keys, and one coming back takes back exactly its
    /// slots, whatever else changed meanwhile: the owner of a slot is a function of the
    /// configured set and the eligible set alone, so every node agrees. Rendezvous scores
    /// per slot keep the hand-out weighted and spread (each survivor gets about its weight
    /// share of the freed slots) without the order dependence a second Maglev fill would have.
    ///
    /// Indexes stay those of [`build`](Self::build). Cost: `O(M)` plus, per freed slot, one
    /// hash and one logarithm per eligible backend. With nothing eligible every lookup
    /// returns `None`.
    pub fn restrict(&self, eligible: &[bool]) -> Maglev {
        let is_eligible = |i: usize| eligible.get(i).copied().unwrap_or(true);
        let n = self.members.len();
        let excluded: Vec<bool> = (0..n).map(|i| !is_eligible(i)).collect();
        if !excluded.contains(&true) {
            return self.clone();
        }
        let survivors: Vec<(u16, Member)> = self
            .members
            .iter()
            .enumerate()
            .filter(|&(i, _)| is_eligible(i))
            // i < n <= MAX_BACKENDS, so it fits in u16.
            .map(|(i, &m)| (i as u16, m))
            .collect();
        if survivors.is_empty() {
            return Maglev {
                size: self.size,
                table: Vec::new(),
                shares: vec![0; n],
                members: self.members.clone(),
                excluded,
            };
        }
        let equal_weights = survivors.windows(2).all(|w| w[0].1.weight == w[1].1.weight);
        let mut shares = vec![0u32; n];
        let table: Vec<u16> = self
            .table
            .iter()
            .enumerate()
            .map(|(slot, &owner)| {
                let owner = if excluded.get(usize::from(owner)).copied().unwrap_or(false) {
                    rendezvous_owner(slot as u64, &survivors, equal_weights)
                } else {
                    owner
                };
                if let Some(c) = shares.get_mut(usize::from(owner)) {
                    *c += 1;
                }
                owner
            })
            .collect();
        Maglev {
            size: self.size,
            table,
            shares,
            members: self.members.clone(),
            excluded,
        }
    }

    /// The build-order index of the backend owning `key_hash`, or `None` for an empty table.
    ///
    /// `key_hash` should be a well-mixed hash such as [`crate::affinity::ClientKey::hash64`];
    /// it is reduced modulo the table size.
    #[inline]
    pub fn lookup(&self, key_hash: u64) -> Option<usize> {
        let slot = key_hash % u64::from(self.size);
        self.table.get(slot as usize).map(|&i| usize::from(i))
    }

    /// The order in which to try backends for `key_hash` (for connect retries).
    ///
    /// Yields distinct build-order indexes, the first equal to [`lookup`](Self::lookup),
    /// every backend not excluded by [`restrict`](Self::restrict) exactly once in the end, and the same sequence on every node with the
    /// same table. Allocation-free; see [`Preference`] for the order and the work bound.
    pub fn preference(&self, key_hash: u64) -> Preference<'_> {
        let n = self.shares.len();
        let (slot, rotate_from) = if n == 0 {
            (0, 0)
        } else {
            (
                (key_hash % u64::from(self.size)) as u32,
                (key_hash % n as u64) as usize,
            )
        };
        Preference {
            maglev: self,
            found: [0; PREFERENCE_WALK_DISTINCT],
            found_len: 0,
            slot,
            walked: 0,
            rotate_from,
            rotated: 0,
        }
    }

    /// Number of backends the table was built from.
    pub fn backend_count(&self) -> usize {
        self.shares.len()
    }

    /// Table size `M`.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Slots owned by each backend, in build order; they sum to [`size`](Self::size) unless
    /// the table is empty.
    pub fn shares(&self) -> Vec<u32> {
        self.shares.clone()
    }
}

/// Iterator returned by [`Maglev::preference`].
///
/// Order: first, walking the table forward (wrapping) from the key's slot, each backend the
/// first time it is seen, until [`PREFERENCE_WALK_DISTINCT`] have been found or
/// [`PREFERENCE_WALK_LIMIT`] slots have been walked. Because slots are spread by the
/// backends' permutations, the next distinct owner after a failed backend is effectively a
/// weighted random pick per key, so one gateway's clients fan out over the rest instead of all
/// landing on its neighbour. Then every backend not yet yielded, rotating through build order
/// from `key_hash mod N`, again so that keys spread rather than all falling to index 0.
///
/// Without allocation, "seen" is a fixed array of the walk's finds, so the rotation costs
/// `O(PREFERENCE_WALK_DISTINCT)` per candidate. Total work to exhaust the iterator is bounded
/// by `PREFERENCE_WALK_LIMIT + N × PREFERENCE_WALK_DISTINCT` steps; taking the first few
/// costs a few dozen.
#[derive(Debug, Clone)]
pub struct Preference<'a> {
    maglev: &'a Maglev,
    /// Backends yielded by the table walk, in order; only the first `found_len` are valid.
    found: [u16; PREFERENCE_WALK_DISTINCT],
    found_len: usize,
    /// Next slot the walk inspects.
    slot: u32,
    /// Slots walked so far.
    walked: u32,
    /// First index of the rotation phase.
    rotate_from: usize,
    /// Rotation candidates consumed so far (of `N`).
    rotated: usize,
}

impl Preference<'_> {
    fn walk_done(&self) -> bool {
        self.found_len == PREFERENCE_WALK_DISTINCT
            || self.found_len == self.maglev.backend_count()
            || self.walked >= PREFERENCE_WALK_LIMIT.min(self.maglev.size)
    }

    fn seen(&self, index: u16) -> bool {
        self.found
            .get(..self.found_len)
            .is_some_and(|found| found.contains(&index))
    }
}

impl Iterator for Preference<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while !self.walk_done() {
            let owner = self.maglev.table.get(self.slot as usize).copied()?;
            self.walked += 1;
            self.slot += 1;
            if self.slot == self.maglev.size {
                self.slot = 0;
            }
            if !self.seen(owner) {
                if let Some(dst) = self.found.get_mut(self.found_len) {
                    *dst = owner;
                    self.found_len += 1;
                }
                return Some(usize::from(owner));
            }
        }
        let n = self.maglev.backend_count();
        while self.rotated < n {
            let index = (self.rotate_from + self.rotated) % n;
            self.rotated += 1;
            // index < n <= MAX_BACKENDS, so it fits in u16.
            let excluded = self.maglev.excluded.get(index).copied().unwrap_or(false);
            if !excluded && !self.seen(index as u16) {
                return Some(index);
            }
        }
        None
    }
}

impl FusedIterator for Preference<'_> {}

/// The survivor with the highest weighted rendezvous score for `slot` (Schindelhauer and
/// Schomaker's weighted HRW: score `-w / ln(u)` with `u` uniform in (0, 1), which picks each
/// backend with probability proportional to its weight). Ties go to the lower index.
fn rendezvous_owner(slot: u64, survivors: &[(u16, Member)], equal_weights: bool) -> u16 {
    let slot_mix = fmix64(slot.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ RENDEZVOUS_SEED);
    if equal_weights {
        // `-w / ln(u)` is monotonic in `u` for one `w`: the largest hash wins, no logarithm.
        let mut best = (0u64, u16::MAX);
        for &(index, m) in survivors {
            let h = fmix64(m.rendezvous ^ slot_mix);
            if h > best.0 || best.1 == u16::MAX {
                best = (h, index);
            }
        }
        return best.1;
    }
    let mut best = (f64::NEG_INFINITY, u16::MAX);
    for &(index, m) in survivors {
        let h = fmix64(m.rendezvous ^ slot_mix);
        // 53 random bits, offset by half a step: strictly inside (0, 1).
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = -f64::from(m.weight) / u.ln();
        if score > best.0 {
            best = (score, index);
        }
    }
    best.1
}

/// Largest-remainder apportionment of `size` slots by weight: each quota is the floor of its
/// exact share, and the leftover slots go one each to the largest fractional remainders, ties
/// to the smaller name (`ranks`).
fn hamilton_quotas(size: u32, list: &[(&str, u32)], ranks: &[u16]) -> Vec<u32> {
    let total: u64 = list.iter().map(|&(_, w)| u64::from(w)).sum();
    let m = u64::from(size);
    // size < 2^24 and weight < 2^32: the product fits in u64, and the floor is <= size.
    let exact: Vec<(u32, u64)> = list
        .iter()
        .map(|&(_, w)| {
            let p = m * u64::from(w);
            ((p / total) as u32, p % total)
        })
        .collect();
    let mut quotas: Vec<u32> = exact.iter().map(|&(q, _)| q).collect();
    let assigned: u64 = quotas.iter().map(|&q| u64::from(q)).sum();
    let mut order: Vec<usize> = (0..exact.len()).collect();
    order.sort_unstable_by_key(|&i| {
        let remainder = exact.get(i).map_or(0, |e| e.1);
        (std::cmp::Reverse(remainder), ranks.get(i).copied())
    });
    // Fewer leftovers than backends: each remainder is < 1 slot.
    for &i in order.iter().take((m - assigned) as usize) {
        if let Some(q) = quotas.get_mut(i) {
            *q += 1;
        }
    }
    quotas
}

/// Trial division; sizes are at most [`MAX_TABLE_SIZE`], so this is a few thousand steps.
fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Produced by `tests/data/maglev/reference.py`, an independent implementation.
    const GOLDEN: &str = include_str!("../tests/data/maglev/golden.txt");

    fn build_owned(backends: &[(String, u32)], size: u32) -> Result<Maglev, MaglevError> {
        Maglev::build(backends.iter().map(|(n, w)| (n.as_str(), *w)), size)
    }

    fn digest(m: &Maglev) -> u64 {
        let bytes: Vec<u8> = m.table.iter().flat_map(|i| i.to_le_bytes()).collect();
        stable_hash64(0, &bytes)
    }

    fn counted_shares(m: &Maglev) -> Vec<u32> {
        let mut counts = vec![0u32; m.backend_count()];
        for &i in &m.table {
            counts[usize::from(i)] += 1;
        }
        counts
    }

    /// Of the slots not owned by `removed` in `before`, the fraction whose owner differs in
    /// `after` (built from the same list without `removed`, so later indexes shift down).
    fn disruption(before: &Maglev, after: &Maglev, removed: usize) -> f64 {
        let (mut kept, mut moved) = (0u32, 0u32);
        for (&b, &a) in before.table.iter().zip(&after.table) {
            let b = usize::from(b);
            if b == removed {
                continue;
            }
            kept += 1;
            let expected = if b > removed { b - 1 } else { b };
            if usize::from(a) != expected {
                moved += 1;
            }
        }
        f64::from(moved) / f64::from(kept)
    }

    fn without(backends: &[(String, u32)], removed: usize) -> Vec<(String, u32)> {
        let mut rest = backends.to_vec();
        rest.remove(removed);
        rest
    }

    fn hex(s: &str) -> u64 {
        u64::from_str_radix(s, 16).expect("golden hex")
    }

    #[test]
    fn golden_hashes() {
        let mut checked = 0;
        for line in GOLDEN.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.first() != Some(&"hash") {
                continue;
            }
            let text = f[2].trim_matches('\'');
            assert_eq!(
                stable_hash64(hex(f[1]), text.as_bytes()),
                hex(f[3]),
                "{line}"
            );
            checked += 1;
        }
        assert_eq!(checked, 6);
    }

    #[test]
    fn golden_tables() {
        let mut lines = GOLDEN.lines().filter(|l| !l.starts_with('#'));
        let mut checked = 0;
        while let Some(line) = lines.next() {
            let Some(rest) = line.strip_prefix("table ") else {
                continue;
            };
            let (size, spec) = rest.split_once(' ').expect("table line");
            let backends: Vec<(String, u32)> = spec
                .split(',')
                .map(|b| {
                    let (n, w) = b.rsplit_once(':').expect("name:weight");
                    (n.to_owned(), w.parse().expect("weight"))
                })
                .collect();
            let m = build_owned(&backends, size.parse().expect("size")).expect("build");
            let shares = lines
                .next()
                .expect("shares")
                .strip_prefix("shares ")
                .expect("shares");
            let want: Vec<u32> = shares.split(' ').map(|s| s.parse().expect("u32")).collect();
            assert_eq!(m.shares(), want, "{line}");
            assert_eq!(counted_shares(&m), want, "{line}");
            let slots = lines
                .next()
                .expect("slots")
                .strip_prefix("slots ")
                .expect("slots");
            let want: Vec<u16> = slots.split(' ').map(|s| s.parse().expect("u16")).collect();
            assert_eq!(&m.table[..want.len()], &want[..], "{line}");
            let d = lines
                .next()
                .expect("digest")
                .strip_prefix("digest ")
                .expect("digest");
            assert_eq!(digest(&m), hex(d), "{line}");
            checked += 1;
        }
        assert_eq!(checked, 6);
    }

    #[test]
    fn owners_do_not_depend_on_list_order() {
        let names = ["gw-c", "gw-a", "gw-b", "gw-e", "gw-d"];
        let forward: Vec<(&str, u32)> = names.iter().map(|&n| (n, 3)).collect();
        let a = Maglev::build(forward.iter().copied(), 251).unwrap();
        let b = Maglev::build(forward.iter().rev().copied(), 251).unwrap();
        for slot in 0..251u64 {
            let owner_a = forward[a.lookup(slot).unwrap()].0;
            let owner_b = forward[forward.len() - 1 - b.lookup(slot).unwrap()].0;
            assert_eq!(owner_a, owner_b, "slot {slot}");
        }
    }

    #[test]
    fn rejects_bad_configuration() {
        let one = [("a", 1)];
        assert_eq!(
            Maglev::build(one, 65535).unwrap_err(),
            MaglevError::SizeNotPrime { size: 65535 }
        );
        for size in [0, 1] {
            assert_eq!(
                Maglev::build(one, size).unwrap_err(),
                MaglevError::SizeNotPrime { size }
            );
        }
        assert_eq!(
            Maglev::build(one, u32::MAX).unwrap_err(),
            MaglevError::SizeTooLarge {
                size: u32::MAX,
                max: MAX_TABLE_SIZE
            }
        );
        assert_eq!(
            Maglev::build([("a", 1), ("b", 1), ("c", 1)], 2).unwrap_err(),
            MaglevError::SizeBelowBackends {
                size: 2,
                backends: 3
            }
        );
        assert_eq!(
            Maglev::build([("a", 1), ("b", 0)], 13).unwrap_err(),
            MaglevError::ZeroWeight { name: "b".into() }
        );
        assert_eq!(
            Maglev::build([("a", 1), ("b", 1), ("a", 2)], 13).unwrap_err(),
            MaglevError::DuplicateName { name: "a".into() }
        );
        let many: Vec<String> = (0..=MAX_BACKENDS).map(|i| i.to_string()).collect();
        assert_eq!(
            Maglev::build(many.iter().map(|n| (n.as_str(), 1)), 65537).unwrap_err(),
            MaglevError::TooManyBackends {
                count: MAX_BACKENDS + 1,
                max: MAX_BACKENDS
            }
        );
    }

    #[test]
    fn extreme_sizes_build() {
        let m = Maglev::build([("only", 7)], 2).unwrap();
        assert_eq!(m.shares(), vec![2]);
        assert_eq!(m.preference(1).collect::<Vec<_>>(), vec![0]);
        let m = Maglev::build([("a", 1), ("b", 1), ("c", 1)], 3).unwrap();
        assert_eq!(m.shares(), vec![1, 1, 1]);
        let m = Maglev::build([("x", u32::MAX), ("y", u32::MAX - 1)], 65537).unwrap();
        assert_eq!(m.shares(), vec![32769, 32768]);
        // The largest products of the build (a full-size table, maximal weights), without
        // paying for a 16M-slot build in a debug test run.
        let list = [("x", u32::MAX), ("y", u32::MAX)];
        assert_eq!(
            hamilton_quotas(MAX_TABLE_SIZE, &list, &[0, 1]),
            vec![MAX_TABLE_SIZE / 2 + 1, MAX_TABLE_SIZE / 2]
        );
    }

    #[test]
    fn empty_table_finds_nothing() {
        let m = Maglev::build([], DEFAULT_TABLE_SIZE).unwrap();
        assert_eq!(m.lookup(42), None);
        assert_eq!(m.preference(42).next(), None);
        assert_eq!(m.backend_count(), 0);
        assert_eq!(m.size(), DEFAULT_TABLE_SIZE);
        assert!(m.shares().is_empty());
        // An invalid size is still a configuration error with no backends.
        assert!(Maglev::build([], 100).is_err());
    }

    #[test]
    fn zero_quota_backend_is_still_preferred_eventually() {
        // 1 / (1 + 1000) of 13 slots rounds to nothing.
        let m = Maglev::build([("big", 1000), ("tiny", 1)], 13).unwrap();
        assert_eq!(m.shares(), vec![13, 0]);
        for key in 0..50 {
            assert_eq!(m.preference(key).collect::<Vec<_>>(), vec![0, 1]);
        }
    }

    #[test]
    fn preference_walk_is_bounded_when_one_backend_dominates() {
        let m = Maglev::build([("big", 1_000_000), ("small", 1)], DEFAULT_TABLE_SIZE).unwrap();
        assert!(m.shares()[1] < 100);
        for key in [0u64, 12345, u64::MAX] {
            let mut p = m.preference(key);
            let all: Vec<usize> = p.by_ref().collect();
            assert_eq!(all.len(), 2);
            assert!(p.walked <= PREFERENCE_WALK_LIMIT);
        }
    }

    #[test]
    fn preference_covers_many_backends() {
        let names: Vec<String> = (0..40).map(|i| format!("rdg-{i:02}")).collect();
        let m = Maglev::build(
            names.iter().map(|n| (n.as_str(), 1 + (n.len() as u32 % 3))),
            4099,
        )
        .unwrap();
        for key in (0..2000u64).map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            let order: Vec<usize> = m.preference(key).collect();
            assert_eq!(order.len(), 40);
            assert_eq!(order[0], m.lookup(key).unwrap());
            let mut sorted = order.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 40);
        }
    }

    #[test]
    fn equal_weight_disruption_is_small_for_typical_farm() {
        let farm: Vec<(String, u32)> = (1..=8).map(|i| (format!("rdg-{i:02}"), 1)).collect();
        let before = build_owned(&farm, DEFAULT_TABLE_SIZE).unwrap();
        for removed in 0..farm.len() {
            let after = build_owned(&without(&farm, removed), DEFAULT_TABLE_SIZE).unwrap();
            let d = disruption(&before, &after, removed);
            assert!(d <= 0.01, "removing {removed}: {d}");
        }
    }

    #[test]
    fn weighted_disruption_is_small_on_average() {
        let farm: Vec<(String, u32)> = (1..=12)
            .map(|i| (format!("rdg-{i:02}.corp.example"), 1 + i % 5))
            .collect();
        let before = build_owned(&farm, DEFAULT_TABLE_SIZE).unwrap();
        let mut total = 0.0;
        for removed in 0..farm.len() {
            let after = build_owned(&without(&farm, removed), DEFAULT_TABLE_SIZE).unwrap();
            total += disruption(&before, &after, removed);
        }
        let mean = total / farm.len() as f64;
        assert!(mean <= 0.01, "mean disruption {mean}");
    }

    /// `(name, weight)` lists: 3..100 distinct names in random order, weights 1..=10.
    fn farms() -> impl Strategy<Value = Vec<(String, u32)>> {
        prop::collection::btree_set("[a-z0-9.-]{1,16}", 3..100)
            .prop_flat_map(|names| {
                let n = names.len();
                (Just(names), prop::collection::vec(1u32..=10, n))
            })
            .prop_map(|(names, weights)| names.into_iter().zip(weights).collect::<Vec<_>>())
            .prop_shuffle()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// Shares follow the Hamilton bound exactly (under one slot from the ideal), which is
        /// within 1% relative whenever the ideal share is at least 100 slots. Smaller ideal
        /// shares (e.g. weight 1 of a total near 1000 at M = 65537: ~66 slots) cannot be
        /// within 1%, since one slot is already 1.5%.
        #[test]
        fn shares_track_weights(farm in farms()) {
            let m = build_owned(&farm, DEFAULT_TABLE_SIZE).unwrap();
            let shares = m.shares();
            prop_assert_eq!(&counted_shares(&m), &shares);
            let total: u32 = farm.iter().map(|&(_, w)| w).sum();
            for (&(_, w), &share) in farm.iter().zip(&shares) {
                let ideal = f64::from(DEFAULT_TABLE_SIZE) * f64::from(w) / f64::from(total);
                let error = (f64::from(share) - ideal).abs();
                prop_assert!(error < 1.0, "share {} ideal {}", share, ideal);
                if ideal >= 100.0 {
                    prop_assert!(error / ideal <= 0.01, "share {} ideal {}", share, ideal);
                }
            }
        }

        /// A change of the *configured* set rebuilds the table (module documentation,
        /// "Disruption"): Maglev keeps others' moves small but does not bound them per removal
        /// (the worst measured moved 7.8%), so this asserts 10%, which still fails loudly for
        /// any build that is not consistent (those move most keys). The daily case, a backend
        /// leaving by health or admin state, moves no other key:
        /// `leaving_backend_moves_no_other_key`.
        #[test]
        fn removal_moves_few_other_keys(farm in farms(), pick in any::<prop::sample::Index>()) {
            let before = build_owned(&farm, DEFAULT_TABLE_SIZE).unwrap();
            let removed = pick.index(farm.len());
            let after = build_owned(&without(&farm, removed), DEFAULT_TABLE_SIZE).unwrap();
            let d = disruption(&before, &after, removed);
            prop_assert!(d <= 0.10, "removing {} of {}: {}", removed, farm.len(), d);
        }
    }

    /// The disruption property, for the change that happens daily (a backend leaving
    /// through health or admin state): removing any one of N backends, whatever was already
    /// out, changes the owner of none of the other keys, and bringing it back restores the
    /// table exactly. Each survivor's share of the freed slots follows its weight.
    fn restricted_case(
        farm: &[(String, u32)],
        already_out: &[bool],
        pick: usize,
    ) -> Result<(), TestCaseError> {
        let base = build_owned(farm, DEFAULT_TABLE_SIZE).unwrap();
        let mut eligible: Vec<bool> = (0..farm.len())
            .map(|i| !already_out.get(i).copied().unwrap_or(false))
            .collect();
        eligible[pick] = true;
        let before = base.restrict(&eligible);
        eligible[pick] = false;
        let after = base.restrict(&eligible);
        let mut moved = 0u32;
        for (&b, &a) in before.table.iter().zip(&after.table) {
            prop_assert!(
                eligible[usize::from(a)],
                "slot owned by an excluded backend"
            );
            if usize::from(b) != pick && a != b {
                moved += 1;
            }
        }
        prop_assert_eq!(moved, 0, "removing {} moved other keys", pick);
        eligible[pick] = true;
        prop_assert_eq!(digest(&base.restrict(&eligible)), digest(&before));
        prop_assert_eq!(&counted_shares(&after), &after.shares());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn leaving_backend_moves_no_other_key(
            farm in farms(),
            out in prop::collection::vec(prop::bool::weighted(0.2), 100),
            pick in any::<prop::sample::Index>(),
        ) {
            restricted_case(&farm, &out, pick.index(farm.len()))?;
        }
    }

    #[test]
    fn freed_slots_follow_weights() {
        // web01 (weight 3) leaves: web02 (weight 1) and web03 (weight 2) share its slots 1:2.
        let farm = [("web01", 3), ("web02", 1), ("web03", 2)];
        let base = Maglev::build(farm, DEFAULT_TABLE_SIZE).unwrap();
        let out = base.restrict(&[false, true, true]);
        let gained: Vec<f64> = (1..3)
            .map(|i| f64::from(out.shares()[i] - base.shares()[i]))
            .collect();
        let freed = f64::from(base.shares()[0]);
        assert!(
            (gained[0] / freed - 1.0 / 3.0).abs() < 0.02,
            "{gained:?} of {freed}"
        );
        assert!(
            (gained[1] / freed - 2.0 / 3.0).abs() < 0.02,
            "{gained:?} of {freed}"
        );
        assert_eq!(out.shares()[0], 0);
    }

    #[test]
    fn restricted_preference_skips_excluded_backends() {
        let farm: Vec<(String, u32)> = (0..10).map(|i| (format!("gw{i}"), 1)).collect();
        let base = build_owned(&farm, 1009).unwrap();
        let eligible: Vec<bool> = (0..10).map(|i| i % 3 != 0).collect();
        let m = base.restrict(&eligible);
        for key in 0..200u64 {
            let order: Vec<usize> = m.preference(key).collect();
            assert_eq!(order.first().copied(), m.lookup(key));
            assert_eq!(order.len(), 6, "{order:?}");
            assert!(order.iter().all(|&i| eligible[i]), "{order:?}");
        }
        let none = base.restrict(&[false; 10]);
        assert_eq!(none.lookup(7), None);
        assert_eq!(none.preference(7).count(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn preference_is_distinct_and_starts_at_lookup(
            farm in farms(),
            keys in prop::collection::vec(any::<u64>(), 1..32),
        ) {
            // A smaller prime keeps the debug-mode build cheap; the walk logic is size-agnostic.
            let m = build_owned(&farm, 1009).unwrap();
            for key in keys {
                let order: Vec<usize> = m.preference(key).collect();
                prop_assert_eq!(order.first().copied(), m.lookup(key));
                prop_assert_eq!(order.len(), farm.len());
                let mut seen = vec![false; farm.len()];
                for i in order {
                    prop_assert!(!std::mem::replace(&mut seen[i], true), "{} twice", i);
                }
            }
        }
    }

    /// Prints disruption statistics (every removal from 40 random farms per row) and the
    /// removals above 1.5%; run in release: `cargo test --release --lib
    /// maglev::tests::disruption_report -- --ignored --nocapture`. `PORTICO_MAGLEV_SIZE` and
    /// `PORTICO_MAGLEV_FARMS` change the table size and the farms per row.
    #[test]
    #[ignore = "slow report, run on demand in release"]
    fn disruption_report() {
        let size: u32 = std::env::var("PORTICO_MAGLEV_SIZE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_TABLE_SIZE);
        let farms: u32 = std::env::var("PORTICO_MAGLEV_FARMS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(40);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for weighted in [false, true] {
            for n in [3usize, 5, 10, 20, 50, 100] {
                let (mut max, mut sum, mut count, mut over) = (0f64, 0f64, 0u32, 0u32);
                for _farm in 0..farms {
                    let farm: Vec<(String, u32)> = (0..n)
                        .map(|i| {
                            let w = if weighted {
                                1 + (next() % 10) as u32
                            } else {
                                1
                            };
                            (format!("gw-{:x}-{i}", next() % 0xffff), w)
                        })
                        .collect();
                    let before = build_owned(&farm, size).unwrap();
                    for removed in 0..n {
                        let after = build_owned(&without(&farm, removed), size).unwrap();
                        let d = disruption(&before, &after, removed);
                        max = max.max(d);
                        sum += d;
                        count += 1;
                        over += u32::from(d > 0.01);
                        if d > 0.015 {
                            println!("  {:.3}% removing {removed} from {farm:?}", 100.0 * d);
                        }
                    }
                }
                println!(
                    "M={size} weighted={weighted:5} N={n:3}: removals={count:4} \
                     mean={:.3}% max={:.3}% over_1%={over}",
                    100.0 * sum / f64::from(count),
                    100.0 * max
                );
            }
        }
    }
}

#[cfg(test)]
mod heavy_probe {
    use super::*;

    /// The shape with the worst disruption found: one weight-10 backend among six of weight
    /// 1, the heavy one removed, over many random name sets. `PORTICO_MAGLEV_SIZE` sets M.
    /// Run in release: `cargo test --release --lib maglev::heavy_probe -- --ignored --nocapture`.
    #[test]
    #[ignore = "slow report, run on demand in release"]
    fn heavy_removal_report() {
        let size: u32 = std::env::var("PORTICO_MAGLEV_SIZE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_TABLE_SIZE);
        let (mut worst, mut over, farms) = (0f64, 0, 1000);
        for f in 0..farms {
            let names: Vec<String> = (0..7).map(|i| format!("f{f}-gw{i}")).collect();
            let farm: Vec<(&str, u32)> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), if i == 0 { 10 } else { 1 }))
                .collect();
            let before = Maglev::build(farm.iter().copied(), size).unwrap();
            let after = Maglev::build(farm[1..].iter().copied(), size).unwrap();
            let (mut kept, mut moved) = (0u32, 0u32);
            for k in 0..size {
                let b = before.lookup(u64::from(k)).unwrap_or(usize::MAX);
                if b != 0 {
                    kept += 1;
                    if after.lookup(u64::from(k)).map(|a| a + 1) != Some(b) {
                        moved += 1;
                    }
                }
            }
            let d = f64::from(moved) / f64::from(kept);
            worst = worst.max(d);
            over += usize::from(d > 0.01);
        }
        println!(
            "M={size} heavy removal: farms={farms} worst={:.3}% over_1%={over}",
            worst * 100.0
        );
    }
}
