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
# STEER=1 (the default) makes CPU $LB_CPU do exactly what one forwarding core does on a real
# NIC, and nothing else: on veth every receive runs inline in the *sender's* context, so without
# steering the balancer's frames would be received (ring copy, the kernel's look at them) on the
# sender's CPU, and the bridge plus the gateways' whole receive would run inside the forwarder's
# sendmmsg. Receive Packet Steering moves each to the core it belongs to: the balancer's eth0
# receives on $LB_CPU, the switch port its frames enter (the bridge, and behind it the gateways,
# other machines on a real segment) on $TX_CPU. The per-core figure is then forwarded frames
# over CPU $LB_CPU's busy time from /proc/stat (user + system + irq + softirq), so the kernel's
# receive work is charged too. STEER=0 is the earlier set-up, charged by the process's own time.
#
# Usage (root): cargo build --release --bin portico --example dsr_blast && benches/dsr_pps.sh
#   MODES=xdp: also --example xdp_pass; XDP_STATS=1 prints the veths' XDP counters (ethtool).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
BIN=$target/release/portico
BLAST=$target/release/examples/dsr_blast
SECS=${SECS:-5}
LB_CPU=${LB_CPU:-1}
TX_CPU=${TX_CPU:-0}
SIZES=${SIZES:-"60 1514"}
# Frames per second the sender offers (0: as fast as it can). Find a core's capacity by
# raising it until frames are dropped (rx-overflow) or the core is busy all the time.
RATE=${RATE:-0}
# Paths to compare, alternated: the TPACKET_V3 ring and recvmmsg (PORTICO_DSR_IO, `[dsr] xdp =
# "off"`), and xdp: the XDP program forwards every frame of a placed flow in the driver
# (`[dsr] xdp = "on"`). For xdp the balancer's veth runs its NAPI in a kernel thread pinned to
# CPU $LB_CPU (on a veth, NAPI otherwise runs on the sender's CPU, inline in its send), and the
# veth's peer gets a pass-all XDP program (examples/xdp_pass.rs), without which a veth drops
# what XDP sends back (its NAPI must run; GRO on the peer does not do it here).
MODES=${MODES:-"ring mmsg"}
ROUNDS=${ROUNDS:-2}
VIP=10.200.0.100
tag=pb$$
dir=$(mktemp -d)
pid=""
sinks=""
cleanup() {
  for s in $sinks ${pass_pid:-}; do kill "$s" 2>/dev/null || true; done
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  for n in sw cl lb g1 g2 g3; do ip netns del "$tag$n" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
[ -x "$BIN" ] && [ -x "$BLAST" ] || { echo "build first: cargo build --release --bin portico --example dsr_blast" >&2; exit 2; }
PASS=$target/release/examples/xdp_pass
case " $MODES " in *" xdp "*)
  [ -x "$PASS" ] || { echo "MODES=xdp: cargo build --release --example xdp_pass" >&2; exit 2; } ;;
esac

# TOPOLOGY=bridge (the default) is the tests' segment: sender, balancer and three gateway
# namespaces with the VIP on lo, on one bridge; the gateways count what they receive.
# TOPOLOGY=wire measures the forwarder's core alone: the sender's veth is wired straight to
# the balancer's, the gateways are neighbour entries with made-up MACs, and every forwarded
# frame comes back to the sender's namespace, which drops it at the first look (not its MAC)
# on the other core. That core then carries the traffic generator and a near-free sink, and
# the balancer's core only the forwarder's own work (its receive included, STEER=1).
TOPOLOGY=${TOPOLOGY:-bridge}
STEER=${STEER:-1}
mask() { printf '%x' $((1 << $1)); }
if [ "$TOPOLOGY" = wire ]; then
  ip netns add "${tag}cl"
  ip netns add "${tag}lb"
  ip link add eth0 netns "${tag}cl" type veth peer name eth0 netns "${tag}lb"
  for n in cl:10.200.1.1 lb:10.200.0.2; do
    ip -n "$tag${n%%:*}" addr add "${n#*:}/16" dev eth0
    ip -n "$tag${n%%:*}" link set eth0 up
    ip -n "$tag${n%%:*}" link set lo up
  done
  for i in 1 2 3; do
    ip -n "${tag}lb" neigh replace 10.200.0.1$i lladdr 02:00:00:00:01:0$i dev eth0 nud permanent
  done
  # Only the balancer's receive is steered (below). The sink's drop of each forwarded frame
  # stays inline in the forwarder's send, charged to it: steering that too would cost an
  # inter-processor interrupt per batch, which in a VM (an MSR write that exits to the
  # hypervisor) costs more than the drop itself.
else
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
if [ "$STEER" = 1 ]; then
  ip netns exec "${tag}sw" sh -c "echo $(mask "$TX_CPU") > /sys/class/net/v${tag}lb/queues/rx-0/rps_cpus"
fi
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
fi
if [ "$STEER" = 1 ]; then
  ip netns exec "${tag}lb" sh -c "echo $(mask "$LB_CPU") > /sys/class/net/eth0/queues/rx-0/rps_cpus"
fi

# VMACS lists the VIP set-ups to alternate. vmac (the default): the VIP is a VRRP group's, as
# in production, so it answers ARP with the group's virtual MAC and the sender addresses its
# frames there; the kernel then drops its own copy of each at the first look. ifmac: a VIP
# without VRRP, on the interface's own MAC, whose copies the kernel routes before dropping.
VMACS=${VMACS:-vmac}
write_config() { # vmac | ifmac, then the path (ring | mmsg | xdp)
  local vip_section="" xdp=off
  [ "$2" = xdp ] && xdp=on
  if [ "$1" = vmac ]; then
    vip_section=$(printf '[vip]\naddresses = ["%s/32"]\nmode = "vrrp"\n\n[vip.vrrp]\nvrid = 51\npriority = 200\nadvert_interval_ms = 100\n' "$VIP")
  fi
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

[dsr]
xdp = "$xdp"

$vip_section
EOF
}
# The veth whose peer receives what the balancer sends: the sender's (wire) or the switch port.
peer_ns() { if [ "$TOPOLOGY" = wire ]; then echo "${tag}cl"; else echo "${tag}sw"; fi; }
peer_if() { if [ "$TOPOLOGY" = wire ]; then echo eth0; else echo "v${tag}lb"; fi; }
napi_threads() { pgrep -d' ' '^napi/eth0-' || true; }
pass_pid=""
napi_pids=""
xdp_setup() { # after the program is attached: NAPI in a thread on $LB_CPU, NAPI on the peer
  local before t
  # Bounded, and not holding our output open: a leftover helper must not keep a pipeline
  # that reads this script waiting.
  ip netns exec "$(peer_ns)" "$PASS" "$(peer_if)" 600 >"$dir/xdp_pass.log" 2>&1 &
  pass_pid=$!
  # The veth's NAPI threads come and go with its XDP program: switching threaded NAPI off and
  # on again makes this run's threads new, so they are told apart from other interfaces'.
  ip netns exec "${tag}lb" sh -c 'echo 0 > /sys/class/net/eth0/threaded'
  before=" $(napi_threads) "
  ip netns exec "${tag}lb" sh -c 'echo 1 > /sys/class/net/eth0/threaded'
  sleep 0.2
  napi_pids=""
  for t in $(napi_threads); do
    case "$before" in *" $t "*) ;; *) napi_pids="$napi_pids $t" ;; esac
  done
  for t in $napi_pids; do taskset -pc "$LB_CPU" "$t" >/dev/null || true; done
  echo "    xdp: $(metrics | grep '^portico_dsr_xdp_attached' | tr '\n' ' ')NAPI thread(s) on CPU $LB_CPU:${napi_pids:- none found}"
}
metrics() { ip netns exec "${tag}lb" curl -s http://10.200.0.2:9469/metrics; }
start_lb() { # path: ring | mmsg | xdp
  local io=$1; [ "$io" = xdp ] && io=ring
  PORTICO_DSR_IO=$io ip netns exec "${tag}lb" taskset -c "$LB_CPU" "$BIN" run --config "$dir/lb.toml" --workers 1 2>"$dir/lb-$1.log" &
  pid=$!
  for _ in $(seq 50); do metrics | grep -q '^portico_dsr_active 1' && break; sleep 0.1; done
  if [ "$1" = xdp ]; then xdp_setup; fi
  sleep 1.5 # backend MACs learnt
}
stop_lb() {
  metrics | grep -E '^portico_dsr_drops_total' | grep -v ' 0$' | sed 's/^/    /' || true
  if [ -n "${XDP_STATS:-}" ]; then
    echo "    balancer eth0: $(ip netns exec "${tag}lb" ethtool -S eth0 | grep -E 'xdp|drops' | grep -v ': 0$' | tr -s ' \n' ' ')"
    echo "    peer $(peer_if): $(ip netns exec "$(peer_ns)" ethtool -S "$(peer_if)" | grep -E 'xdp|drops' | grep -v ': 0$' | tr -s ' \n' ' ')"
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  if [ -n "$pass_pid" ]; then kill "$pass_pid" 2>/dev/null || true; wait "$pass_pid" 2>/dev/null || true; pass_pid=""; fi
}
forwarded() { metrics | awk '/^portico_dsr_packets_total/ {s += $2} END {printf "%d\n", s}'; }
gw_rx() {
  if [ "$TOPOLOGY" = wire ]; then ip netns exec "${tag}cl" cat /sys/class/net/eth0/statistics/rx_packets; return; fi
  local s=0
  for g in g1 g2 g3; do s=$((s + $(ip netns exec "$tag$g" cat /sys/class/net/eth0/statistics/rx_packets))); done
  echo $s
}
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
# Busy ticks of CPU $LB_CPU: user nice system irq softirq (not idle, iowait, or steal: time
# the hypervisor gave to other guests).
core_ticks() { awk -v c="cpu$LB_CPU" '$1 == c {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
if_mac=$(ip netns exec "${tag}lb" cat /sys/class/net/eth0/address)
echo "dsr forwarder pps, one core (CPU $LB_CPU), ${SECS}s per size, receive paths: $MODES x $ROUNDS rounds, GW_SINK=${GW_SINK:-0}, RATE=$RATE, TOPOLOGY=$TOPOLOGY, STEER=$STEER, VIP MACs: $VMACS, kernel $(uname -r)"
for round in $(seq "$ROUNDS"); do
for vm in $VMACS; do
lb_mac=$if_mac; [ "$vm" = vmac ] && lb_mac=00:00:5e:00:01:33
for mode in $MODES; do
  write_config "$vm" "$mode"
  start_lb "$mode"
  [ -n "${ON_START:-}" ] && eval "$ON_START"
  for size in $SIZES; do
    f0=$(forwarded); g0=$(gw_rx); c0=$(cpu_ticks); k0=$(core_ticks); w0=$(date +%s%N)
    sent=$(ip netns exec "${tag}cl" taskset -c "$TX_CPU" "$BLAST" eth0 "$lb_mac" $VIP 3391 "$size" "$SECS" 64 "${RATE:-0}" | awk '{print $2}')
    sleep 0.5
    f1=$(forwarded); g1=$(gw_rx); c1=$(cpu_ticks); k1=$(core_ticks); w1=$(date +%s%N)
    fwd=$((f1 - f0)); rx=$((g1 - g0)); ticks=$((c1 - c0)); kt=$((k1 - k0))
    # Forwarded per CPU-second the balancer process used (user + system, syscalls included),
    # and per busy second of its core (the kernel's receive work on it too, with STEER=1).
    per_proc=$(( ticks > 0 ? fwd * hz / ticks : 0 ))
    per_core=$(( kt > 0 ? fwd * hz / kt : 0 ))
    printf '%-4s %-5s frame %5d B: sent %9d (%7d pps)  forwarded %9d (%7d pps)  process CPU %3d%% -> %7d pps per CPU-second  core %d busy %3d%% -> %7d pps per busy second  gateways received %9d\n' \
      "$mode" "$vm" "$size" "$sent" $((sent / SECS)) "$fwd" $((fwd / SECS)) $((ticks * 100 / hz / SECS)) "$per_proc" "$LB_CPU" $((kt * 100000 / hz / ((w1 - w0) / 1000000))) "$per_core" "$rx"
  done
  stop_lb
done
done
done
