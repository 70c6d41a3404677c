#!/usr/bin/env python3
"""Independent reference implementation of Portico's Maglev build and stable hashes.

Writes golden.txt (next to this file) which src/maglev.rs and src/affinity.rs check. It shares
no code with the Rust implementation: the claim order uses exact Fractions and heapq instead of
cross-multiplication, and quotas use Fractions instead of integer division. If both agree, the
algorithm as documented in src/maglev.rs is what the Rust code does.

Usage: python3 tests/data/maglev/reference.py > tests/data/maglev/golden.txt
"""
import heapq
import ipaddress
from fractions import Fraction

MASK = (1 << 64) - 1
FNV_OFFSET_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
OFFSET_SEED = 0x9E3779B97F4A7C15
SKIP_SEED = 0xC2B2AE3D27D4EB4F
CLIENT_KEY_SEED = 0x243F6A8885A308D3  # pi fractional digits (affinity::CLIENT_KEY_SEED)


def fmix64(h):
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & MASK
    h ^= h >> 33
    return h


def stable_hash64(seed, data):
    h = FNV_OFFSET_BASIS ^ seed
    for b in data:
        h ^= b
        h = (h * FNV_PRIME) & MASK
    return fmix64(h)


def quotas(m, names, weights):
    total = sum(weights)
    exact = [Fraction(m * w, total) for w in weights]
    q = [int(e) for e in exact]  # floor: all positive
    left = m - sum(q)
    # Ties go to the byte-wise smaller name, so the result does not depend on list order.
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - q[i]), names[i]))
    for i in order[:left]:
        q[i] += 1
    return q


def build(m, backends):
    names = [n.encode() for n, _ in backends]
    q = quotas(m, names, [w for _, w in backends])
    perm = []
    for name, _ in backends:
        nb = name.encode()
        offset = stable_hash64(OFFSET_SEED, nb) % m
        skip = stable_hash64(SKIP_SEED, nb) % (m - 1) + 1
        perm.append([offset, skip, 0])  # next slot, skip, filled
    table = [None] * m
    heap = [(Fraction(1, w), names[i], i) for i, (_, w) in enumerate(backends) if q[i] > 0]
    heapq.heapify(heap)
    while heap:
        _, _, i = heapq.heappop(heap)
        p = perm[i]
        while True:
            slot = p[0]
            p[0] = (p[0] + p[1]) % m
            if table[slot] is None:
                table[slot] = i
                break
        p[2] += 1
        if p[2] < q[i]:
            heapq.heappush(heap, (Fraction(p[2] + 1, backends[i][1]), names[i], i))
    return table, q


def digest(table):
    data = b"".join(i.to_bytes(2, "little") for i in table)
    return stable_hash64(0, data)


def client_key_bytes(ip, v4_prefix, v6_prefix):
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.version == 4:
        family, prefix, width = 4, min(v4_prefix, 32), 32
    else:
        family, prefix, width = 6, min(v6_prefix, 128), 128
    value = int(addr)
    mask = ((1 << prefix) - 1) << (width - prefix) if prefix else 0
    raw = (value & mask).to_bytes(width // 8, "big")
    return bytes([family, prefix]) + raw[: (prefix + 7) // 8]


def main():
    print("# Golden vectors for src/maglev.rs and src/affinity.rs.")
    print("# Produced by tests/data/maglev/reference.py; see tests/data/README.md.")
    for seed, text in [
        (0, ""),
        (0, "a"),
        (OFFSET_SEED, "gw1"),
        (SKIP_SEED, "gw1"),
        (OFFSET_SEED, "rdg-01.corp.example"),
        (SKIP_SEED, "rdg-01.corp.example"),
    ]:
        print(f"hash {seed:016x} {text!r} {stable_hash64(seed, text.encode()):016x}")
    for ip, p4, p6 in [
        ("192.0.2.1", 24, 64),
        ("192.0.2.200", 24, 64),
        ("192.0.2.1", 32, 64),
        ("198.51.100.7", 0, 64),
        ("::ffff:192.0.2.1", 24, 64),
        ("2001:db8:1:2:3:4:5:6", 24, 64),
        ("2001:db8:1:2:3:4:5:6", 24, 128),
        ("2001:db8:1:2:3:4:5:6", 24, 61),
    ]:
        h = stable_hash64(CLIENT_KEY_SEED, client_key_bytes(ip, p4, p6))
        print(f"key {ip} {p4} {p6} {h:016x}")
    cases = [
        (13, [("a", 1), ("b", 1), ("c", 1)]),
        (251, [("gw1", 1), ("gw2", 2), ("gw3", 3), ("gw4", 4), ("gw5", 5)]),
        (65537, [(f"rdg-{i:02}", 1) for i in range(1, 8)]),
        (65537, [(f"gw{i}", w) for i, w in enumerate([1, 10, 3, 7, 7, 2, 5, 9, 4, 6])]),
        # Same set as the previous case in another order: same owner names slot by slot.
        (65537, [(f"gw{i}", w) for i, w in reversed(list(enumerate([1, 10, 3, 7, 7, 2, 5, 9, 4, 6])))]),
        (65537, [("b", 1), ("a", 1), ("c", 1)]),
    ]
    for m, backends in cases:
        table, q = build(m, backends)
        spec = ",".join(f"{n}:{w}" for n, w in backends)
        print(f"table {m} {spec}")
        print("shares " + " ".join(map(str, q)))
        print("slots " + " ".join(map(str, table[:64])))
        print(f"digest {digest(table):016x}")


if __name__ == "__main__":
    main()
