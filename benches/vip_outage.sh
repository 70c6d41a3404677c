#!/usr/bin/env bash
# VIP outage as a client sees it, Portico pairs and keepalived pairs side by side (root).
#
#   cargo build --release && sudo benches/vip_outage.sh [RUNS]        # outage mode (default 3)
#   sudo benches/vip_outage.sh --long [SECONDS] [portico|keepalived] # spurious-transition soak
#
# Outage mode: two nodes (A priority 150 master, B 100) and a client on a bridge in network
# namespaces, advert interval 100 ms. The client starts a TCP connect to VIP:port every 10 ms
# (overlapping, non-blocking) and the longest gap between the start times of two successful
# connects is the outage.
# Each run kills the master, either link down + SIGKILL ("crash": the node is gone) or SIGTERM
# ("graceful": priority 0 advert). Both pairs run the same data plane: for keepalived pairs a
# Portico without [vip] listens on VIP:port (IP_FREEBIND) in each node, so only VIP ownership
# differs.
#
# Long mode: a Portico pair at advert interval 20 ms for SECONDS (default 300) while a client
# loop opens connections through the master's balancer to a backend as fast as it can (bounded
# by the duration); reports VRRP transitions over the soak (0 expected).
#
# Addresses 10.200.60.0/24 inside namespaces named with this script's PID; everything is
# deleted on exit, and only processes this script started are killed (by PID).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PORTICO_BIN:-$here/target/release/portico}
[ -x "$bin" ] || { echo "build first: cargo build --release (or set PORTICO_BIN)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
command -v keepalived >/dev/null || { echo "needs keepalived" >&2; exit 1; }
command -v python3 >/dev/null || { echo "needs python3" >&2; exit 1; }

tag=vo$$
net=10.200.60
vip=$net.100
port=8080
be_port=9090
work=$(mktemp -d /tmp/vip-outage.XXXXXX)
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for f in "$work"/*-vrrp.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true; done
  for n in a b c br; do ip netns del "$tag$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# setup, portico_conf: shared with scripts/vip-lab.sh.
# shellcheck source=../scripts/lib/vrrp-netns.sh
. "$here/scripts/lib/vrrp-netns.sh"

keepalived_conf() {
  local f=$work/$1.conf
  cat > "$f" <<EOF
global_defs {
  router_id $1
  vrrp_version 3
  vrrp_garp_master_delay 0
  vrrp_garp_master_repeat 3
  vrrp_garp_master_refresh 0
  script_user root
  enable_script_security
}
vrrp_instance VI_1 {
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority $2
  advert_int ${3:-0.1}
  virtual_ipaddress {
    $vip/24 dev eth0
  }
}
EOF
  echo "$f"
}

# start_node KIND NODE PRIORITY INTERVAL_MS -> sets $started (the PID to signal)
start_node() {
  local kind=$1 n=$2 ns=$tag$2
  if [ "$kind" = portico ]; then
    ip netns exec "$ns" "$bin" run --workers 1 --config "$(portico_conf "$n" "$3" "$4")" \
      2> "$work/$n.log" &
    started=$!
    pids+=($started)
  else
    ip netns exec "$ns" "$bin" run --workers 1 --config "$(portico_conf "$n-lb" 0 0 novip)" \
      2> "$work/$n-lb.log" &
    pids+=($!)
    ip netns exec "$ns" keepalived -n -l -P -G -f "$(keepalived_conf "$n" "$3" "$(awk "BEGIN {print $4 / 1000}")")" \
      -p "$work/$n.pid" -r "$work/$n-vrrp.pid" > "$work/$n.log" 2>&1 &
    started=$!
    pids+=($started)
  fi
}

holds() { ip -n "$tag$1" -4 -o addr show dev eth0 | grep -q "$vip/"; }

wait_holds() {
  local i
  for i in $(seq 1 500); do holds "$1" && return 0; sleep 0.01; done
  echo "node $1 never took the VIP" >&2
  return 1
}

stop_all() {
  local p
  for p in "${pids[@]:1}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]:1}"; do kill -9 "$p" 2>/dev/null || true; done
  for f in "$work"/*-vrrp.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true; done
  rm -f "$work"/*-vrrp.pid "$work"/*.pid
  pids=("${pids[0]}")
  for n in a b; do
    ip -n "$tag$n" link set eth0 up
    ip -n "$tag$n" addr del "$vip/24" dev eth0 2>/dev/null || true
  done
  sleep 0.3
}

# The client probe, for $1 seconds: starts a non-blocking TCP connect to VIP:port every 10 ms
# (attempts overlap, so a lost SYN costs no resolution); an attempt succeeds if it completes
# within 900 ms (before the kernel's 1 s SYN retransmit could rescue it). Prints the longest gap
# in ms between the start times of two successful attempts, then the counts ok and failed.
probe() {
  ip netns exec "${tag}c" python3 -c "
import errno, selectors, socket, time
sel = selectors.DefaultSelector()
end = time.monotonic() + $1
nxt = time.monotonic()
ok_starts = []; fail = 0
while time.monotonic() < end or sel.get_map():
    now = time.monotonic()
    if now >= nxt and now < end:
        s = socket.socket(); s.setblocking(False)
        e = s.connect_ex(('$vip', $port))
        if e in (0, errno.EINPROGRESS):
            sel.register(s, selectors.EVENT_WRITE, now)
        else:
            s.close(); fail += 1
        nxt += 0.01
    for key, _ in sel.select(timeout=max(0.0, min(nxt - time.monotonic(), 0.01))):
        s = key.fileobj
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            ok_starts.append(key.data)
        else:
            fail += 1
        sel.unregister(s); s.close()
    now = time.monotonic()
    for key in list(sel.get_map().values()):
        if now - key.data > 0.9:
            sel.unregister(key.fileobj); key.fileobj.close(); fail += 1
ok_starts.sort()
worst = max((b - a for a, b in zip(ok_starts, ok_starts[1:])), default=0.0)
print('%.0f %d %d' % (worst * 1000, len(ok_starts), fail))
"
}

# one_run KIND MODE -> prints the outage in ms
one_run() {
  local kind=$1 mode=$2 a b
  start_node "$kind" a 150 100; a=$started
  sleep 0.3
  start_node "$kind" b 100 100; b=$started
  wait_holds a
  sleep 1.5
  probe 4 > "$work/probe.out" &
  local prober=$!
  # A random 0-99 ms more: the crash outage depends on when the master dies relative to its
  # last advert (RFC: 261-361 ms at this setting), and fixed sleeps would pin that phase.
  sleep "$(printf '1.%03d' $((RANDOM % 100)))"
  if [ "$mode" = crash ]; then
    # Link first (the node is gone at once), then the processes: keepalived's VRRP child
    # before its parent, or the parent's death makes the child resign gracefully.
    ip -n "${tag}a" link set eth0 down
    [ -f "$work/a-vrrp.pid" ] && kill -9 "$(cat "$work/a-vrrp.pid")" 2>/dev/null || true
    kill -9 "$a"
  else
    kill -TERM "$a"
  fi
  wait "$prober"
  holds b || echo "warning: B does not hold the VIP after the run" >&2
  stop_all
  cat "$work/probe.out"
}

setup

if [ "${1:-}" = --long ]; then
  secs=${2:-300}
  kind=${3:-portico}
  start_node "$kind" a 150 20; a=$started
  start_node "$kind" b 100 20
  wait_holds a
  sleep 2
  # Transitions so far: Portico's counter, or keepalived's state-change log lines.
  metric() {
    if [ "$kind" = portico ]; then
      ip netns exec "$tag$1" curl -s 127.0.0.1:9469/metrics | awk '/^portico_vrrp_transitions_total/ {s += $2} END {print s + 0}'
    else
      grep -c 'Entering \(MASTER\|BACKUP\) STATE' "$work/$1.log" || true
    fi
  }
  ta=$(metric a); tb=$(metric b)
  echo "soak ($kind): advert 20 ms, ${secs}s, connect loop through the master's balancer"
  ip netns exec "${tag}c" python3 -c "
import socket, struct, time
end = time.monotonic() + $secs; n = 0; fail = 0
while time.monotonic() < end:
    s = socket.socket(); s.settimeout(1)
    # Close with RST: no TIME_WAIT, so the loop never runs out of ephemeral ports.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    try: s.connect(('$vip', $port)); n += 1
    except OSError: fail += 1
    finally: s.close()
print('client connects: %d ok, %d failed (%.0f/s)' % (n, fail, n / $secs))
"
  echo "transitions during the soak: A $(( $(metric a) - ta )), B $(( $(metric b) - tb ))"
  [ "$kind" = portico ] && echo "dual-master adverts seen by A: $(ip netns exec "${tag}a" curl -s 127.0.0.1:9469/metrics | awk '/^portico_vrrp_dual_master_total/ {print $2}')"
  holds a && echo "A still master" || echo "A lost the VIP"
  exit 0
fi

runs=${1:-3}
echo "VIP outage (longest gap between successful TCP connects every 10 ms), advert 100 ms, $runs runs"
printf '%-10s %-9s %s\n' impl mode "outage ms per run (connects ok/failed)"
for mode in crash graceful; do
  for kind in portico keepalived; do
    line=""
    for _ in $(seq 1 "$runs"); do
      read -r gap ok fail < <(one_run "$kind" "$mode")
      line="$line $gap($ok/$fail)"
    done
    printf '%-10s %-9s%s\n' "$kind" "$mode" "$line"
  done
done
