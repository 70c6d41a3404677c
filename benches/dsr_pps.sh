#!/usr/bin/env bash
# Packets per second forwarded by the dsr forwarder on one core, over veth + a bridge, for
# 60-byte (the 64-byte minimum Ethernet frame without its FCS) and 1514-byte (MTU 1500) frames.
#
# Topology (namespaces named with this script's PID, deleted on exit): a sender, the balancer
# (`portico run` with one dsr UDP service, pinned to CPU $LB_CPU) and three gateways holding the
# VIP on lo, on one bridge, 10.200.0.0/16. The sender (examples/dsr_blast.rs, pinned to CPU
# $TX_CPU) blasts UDP at VIP:3391 from 64 source ports for $SECS seconds; we count what the
# forwarder says it forwarded (portico_dsr_packets_total) and what the gateways received
# (rx_packets of their interfaces). Each receive path in $MODES gets its own `portico run`, in
# alternation, $ROUNDS times.
#
# Usage (root): cargo build --release --bin portico --example dsr_blast && benches/dsr_pps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
BIN=$target/release/portico
BLAST=$target/release/examples/dsr_blast
SECS=${SECS:-5}
LB_CPU=${LB_CPU:-1}
TX_CPU=${TX_CPU:-0}
SIZES=${SIZES:-"60 1514"}
# Receive paths to compare (PORTICO_DSR_IO): the TPACKET_V3 ring and recvmmsg, alternated.
MODES=${MODES:-"ring mmsg"}
ROUNDS=${ROUNDS:-2}
VIP=10.200.0.100
tag=pb$$
dir=$(mktemp -d)
pid=""
sinks=""
cleanup() {
  for s in $sinks; do kill "$s" 2>/dev/null || true; done
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  for n in sw cl lb g1 g2 g3; do ip netns del "$tag$n" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
[ -x "$BIN" ] && [ -x "$BLAST" ] || { echo "build first: cargo build --release --bin portico --example dsr_blast" >&2; exit 2; }

ip netns add "${tag}sw"
ip -n "${tag}sw" link add br0 type bridge
ip -n "${tag}sw" link set br0 up
ip netns exec "${tag}sw" sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
host() { # name address
  ip netns add "$tag$1"
  ip link add eth0 netns "$tag$1" type veth peer name "v$tag$1" netns "${tag}sw"
  ip -n "${tag}sw" link set "v$tag$1" master br0 up
  ip -n "$tag$1" addr add "$2/16" dev eth0
  ip -n "$tag$1" link set eth0 up
  ip -n "$tag$1" link set lo up
}
host cl 10.200.1.1
host lb 10.200.0.2
i=0
for g in g1 g2 g3; do
  i=$((i + 1))
  host $g 10.200.0.1$i
  ip -n "$tag$g" addr add $VIP/32 dev lo
  ip netns exec "$tag$g" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
  # On veth the receivers' whole stack (bridge, the gateway's IP/UDP receive and, with no
  # listener on 3391, an ICMP port-unreachable back) runs inline in the forwarder's sendmmsg
  # and is charged to it. GW_SINK=1 binds a never-read UDP socket with the smallest buffer on
  # each gateway: the datagrams are dropped at the socket (no ICMP), so less of the receivers'
  # work is charged to the forwarder (no tc actions or netfilter tools on the bench machine).
  if [ "${GW_SINK:-0}" = 1 ]; then
    ip netns exec "$tag$g" python3 -c 'import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
s.bind(("0.0.0.0", 3391))
time.sleep(3600)' &
    sinks="$sinks $!"
  fi
done

cat > "$dir/lb.toml" <<EOF
[node]
name = "bench"
interface = "eth0"

[[service]]
name = "udp"
listen = "$VIP:3391"
protocol = "udp"
pool = "gw"
forwarding = "dsr"

[pool.gw]
backends = [
  { name = "gw1", address = "10.200.0.11" },
  { name = "gw2", address = "10.200.0.12" },
  { name = "gw3", address = "10.200.0.13" },
]

[pool.gw.health]
# The gateways here run no server: probe rarely, and never mark them down during the run.
interval_ms = 3600000
fall = 100

[metrics]
listen = "10.200.0.2:9469"

[admin]
socket = "$dir/admin.sock"
EOF
metrics() { ip netns exec "${tag}lb" curl -s http://10.200.0.2:9469/metrics; }
start_lb() { # receive path: ring | mmsg
  PORTICO_DSR_IO=$1 ip netns exec "${tag}lb" taskset -c "$LB_CPU" "$BIN" run --config "$dir/lb.toml" --workers 1 2>"$dir/lb-$1.log" &
  pid=$!
  for _ in $(seq 50); do metrics | grep -q '^portico_dsr_active 1' && break; sleep 0.1; done
  sleep 1.5 # backend MACs learnt
}
stop_lb() {
  metrics | grep -E '^portico_dsr_drops_total' | grep -v ' 0$' | sed 's/^/    /' || true
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}
forwarded() { metrics | awk '/^portico_dsr_packets_total/ {s += $2} END {printf "%d\n", s}'; }
gw_rx() {
  local s=0
  for g in g1 g2 g3; do s=$((s + $(ip netns exec "$tag$g" cat /sys/class/net/eth0/statistics/rx_packets))); done
  echo $s
}
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
lb_mac=$(ip netns exec "${tag}lb" cat /sys/class/net/eth0/address)
echo "dsr forwarder pps, one core (CPU $LB_CPU), ${SECS}s per size, receive paths: $MODES x $ROUNDS rounds, GW_SINK=${GW_SINK:-0}, kernel $(uname -r)"
for round in $(seq "$ROUNDS"); do
for mode in $MODES; do
  start_lb "$mode"
  [ -n "${ON_START:-}" ] && eval "$ON_START"
  for size in $SIZES; do
    f0=$(forwarded); g0=$(gw_rx); c0=$(cpu_ticks)
    sent=$(ip netns exec "${tag}cl" taskset -c "$TX_CPU" "$BLAST" eth0 "$lb_mac" $VIP 3391 "$size" "$SECS" | awk '{print $2}')
    sleep 0.5
    f1=$(forwarded); g1=$(gw_rx); c1=$(cpu_ticks)
    fwd=$((f1 - f0)); rx=$((g1 - g0)); ticks=$((c1 - c0))
    # Forwarded per CPU-second the balancer process used (user + system, syscalls included):
    # what one core would do if the forwarder had it to itself.
    per_core=$(( ticks > 0 ? fwd * hz / ticks : 0 ))
    printf '%-4s frame %5d B: sent %9d (%7d pps)  forwarded %9d (%7d pps, balancer CPU %3d%%, %7d pps per CPU-second)  gateways received %9d\n' \
      "$mode" "$size" "$sent" $((sent / SECS)) "$fwd" $((fwd / SECS)) $((ticks * 100 / hz / SECS)) "$per_core" "$rx"
  done
  stop_lb
done
done
