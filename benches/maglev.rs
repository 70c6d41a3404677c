//! Maglev build/lookup and stick-table costs.
//!
//! Targets (release): build < 10 ms for 100 backends at the default size, lookup < 30 ns.
//! Short runs are enough on a shared machine:
//! `cargo bench --bench maglev -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use portico::affinity::{ClientKey, KeySpec, StickTable};
use portico::maglev::{Maglev, DEFAULT_TABLE_SIZE};

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("rdg-{i:03}.corp.example")).collect()
}

fn build(names: &[String]) -> Maglev {
    Maglev::build(names.iter().map(|n| (n.as_str(), 1)), DEFAULT_TABLE_SIZE)
        .expect("valid benchmark farm")
}

/// Well-spread key hashes, cycling so that lookups hit the whole table rather than one
/// cached slot.
fn keys() -> impl FnMut() -> u64 {
    let mut k = 0u64;
    move || {
        k = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
        k
    }
}

fn client(i: u32) -> ClientKey {
    ClientKey::new(IpAddr::V4(Ipv4Addr::from(i)), KeySpec::default())
}

fn maglev(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    for n in [3usize, 10, 100] {
        let farm = names(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &farm, |b, farm| {
            b.iter(|| build(black_box(farm)))
        });
    }
    group.finish();

    // A health change: one backend (or half the farm) out of 100, the table restricted.
    let base = build(&names(100));
    let mut group = c.benchmark_group("maglev_restrict_100");
    for out in [1usize, 50] {
        let eligible: Vec<bool> = (0..100).map(|i| i >= out).collect();
        group.bench_with_input(BenchmarkId::from_parameter(out), &eligible, |b, e| {
            b.iter(|| base.restrict(black_box(e)))
        });
    }
    group.finish();

    let table = build(&names(10));
    let mut next = keys();
    c.bench_function("maglev_lookup", |b| {
        b.iter(|| table.lookup(black_box(next())))
    });
    let mut next = keys();
    c.bench_function("maglev_preference_first3", |b| {
        b.iter(|| {
            let mut p = table.preference(black_box(next()));
            (p.next(), p.next(), p.next())
        })
    });
}

const ENTRIES: u32 = 100_000;

fn affinity(c: &mut Criterion) {
    let now = Instant::now();
    let table = StickTable::new(ENTRIES as usize, Duration::from_secs(3600));
    for i in 0..ENTRIES {
        table.insert(client(i), (i % 10) as u16, now);
    }

    let mut i = 0u32;
    c.bench_function("affinity_get_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % ENTRIES;
            table.get(black_box(&client(i)), now)
        })
    });
    let mut i = 0u32;
    c.bench_function("affinity_get_miss", |b| {
        b.iter(|| {
            i = (i + 7919) % ENTRIES;
            table.get(black_box(&client(ENTRIES + i)), now)
        })
    });
    // The same hit on a table small enough to stay in cache: the difference from
    // affinity_get_hit is memory latency, not work.
    let small = StickTable::new(1000, Duration::from_secs(3600));
    for i in 0..1000 {
        small.insert(client(i), (i % 10) as u16, now);
    }
    let mut i = 0u32;
    c.bench_function("affinity_get_hit_1k", |b| {
        b.iter(|| {
            i = (i + 7919) % 1000;
            small.get(black_box(&client(i)), now)
        })
    });
    let mut i = 0u32;
    c.bench_function("client_key_hash64", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            black_box(client(i)).hash64()
        })
    });
    // The table is full, so every insert of a new key also evicts one.
    let mut i = ENTRIES;
    c.bench_function("affinity_insert", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            table.insert(black_box(client(i)), 1, now)
        })
    });
}

criterion_group!(benches, maglev, affinity);
criterion_main!(benches);
