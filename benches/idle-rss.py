#!/usr/bin/env python3
"""Resident memory of Portico holding many idle proxied connections (loopback only).

Starts a backend that accepts and holds connections, a release `portico run` in front of it,
opens N client connections through Portico (each sends one byte that the backend reads, so
every connection is really proxied end to end), then reads Portico's VmRSS and VmHWM from
/proc. Bounded: N connections, a 120 s deadline, and everything it started is stopped by PID.

    cargo build --release && python3 benches/idle-rss.py [N]

N defaults to 9900: Portico spends two descriptors per proxied connection and the hard
open-file limit on the reference machine is 20000, so 10,000 exactly cannot be held by one
process there; the script prints the per-connection cost so the 10k figure can be derived.
"""
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 9900
DEADLINE = time.monotonic() + 120
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("PORTICO_BIN") or os.path.join(ROOT, "target", "release", "portico")


def rss_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


def serve(sel, events, backend, held):
    """Backend side: accept new connections (kept open, idle) and read each one's first byte.
    Returns how many first bytes arrived."""
    got = 0
    for key, _ in events:
        if key.fileobj is backend:
            try:
                s, _ = backend.accept()
            except BlockingIOError:
                continue
            s.setblocking(False)
            held.append(s)
            sel.register(s, selectors.EVENT_READ)
        else:
            try:
                if key.fileobj.recv(16):
                    got += 1
            except BlockingIOError:
                continue
            sel.unregister(key.fileobj)
    return got


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if 2 * N + 64 > hard:
        sys.exit(f"N={N} needs {2 * N + 64} descriptors in Portico; the hard limit is {hard}")

    backend = socket.socket()
    backend.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    backend.bind(("127.0.0.1", 0))
    backend.listen(4096)
    backend.setblocking(False)
    bport = backend.getsockname()[1]
    lport = free_port()

    work = tempfile.mkdtemp(prefix="portico-rss-")
    cfg = os.path.join(work, "p.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[node]\nname = "rss"\n\n[[service]]\nname = "s"\nlisten = "127.0.0.1:{lport}"\n'
            f'pool = "p"\nbacklog = 4096\n\n[pool.p]\n'
            f'backends = [{{ name = "b", address = "127.0.0.1:{bport}" }}]\n\n'
            f'[metrics]\nlisten = "off"\n\n[admin]\nsocket = "{work}/a.sock"\n'
        )
    proc = subprocess.Popen([BIN, "run", "--config", cfg, "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held_backend, clients = [], []
    try:
        while time.monotonic() < DEADLINE:
            try:
                socket.create_connection(("127.0.0.1", lport), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.3)
        base = rss_kib(proc.pid)
        sel = selectors.DefaultSelector()
        sel.register(backend, selectors.EVENT_READ)
        got = 0
        for i in range(N):
            c = socket.create_connection(("127.0.0.1", lport), timeout=5)
            c.sendall(b"x")
            clients.append(c)
            # Accept and read what has arrived so far, so the backlog never fills.
            while True:
                events = sel.select(timeout=0)
                if not events:
                    break
                got += serve(sel, events, backend, held_backend)
            if time.monotonic() > DEADLINE:
                sys.exit("deadline passed while connecting")
        while got < N and time.monotonic() < DEADLINE:
            got += serve(sel, sel.select(timeout=0.5), backend, held_backend)
        time.sleep(1.0)
        full = rss_kib(proc.pid)
        per = (full["VmRSS"] - base["VmRSS"]) / max(N, 1)
        print(f"connections proxied and idle: {got} of {N}")
        print(f"portico RSS before: {base['VmRSS'] / 1024:.1f} MiB; with {N} idle connections: "
              f"{full['VmRSS'] / 1024:.1f} MiB (peak {full['VmHWM'] / 1024:.1f} MiB)")
        print(f"per connection: {per:.2f} KiB; projected at 10,000: "
              f"{(base['VmRSS'] + per * 10000) / 1024:.1f} MiB")
    finally:
        for s in clients + held_backend:
            s.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        backend.close()
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))
        os.rmdir(work)


if __name__ == "__main__":
    main()
