#!/usr/bin/env bash
# The VIP hand-over drill on one machine (root): two Portico nodes running VRRPv3 for one VIP
# and a client, in network namespaces on a bridge (10.200.61.0/24, named with this script's
# PID, deleted on exit; only processes started here are killed, by PID).
#
#   cargo build --release && sudo scripts/vip-lab.sh          # run the drill, print its report
#   sudo scripts/vip-lab.sh --hold                            # keep the lab up for ctl/drills
#
# `portico lab` covers the drain and disable drills on loopback; a VIP needs an interface and
# a peer, hence namespaces and root here.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PORTICO_BIN:-$here/target/release/portico}
[ -x "$bin" ] || { echo "build first: cargo build --release (or set PORTICO_BIN)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "needs python3 (the lab's backend)" >&2; exit 1; }

tag=vl$$
net=10.200.61
vip=$net.100
port=8080
be_port=9090
work=$(mktemp -d /tmp/vip-lab.XXXXXX)
pids=()
backend_hold=1
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in a b c br; do ip netns del "$tag$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=lib/vrrp-netns.sh
. "$here/scripts/lib/vrrp-netns.sh"

setup
for n in a:150 b:100; do
  ip netns exec "$tag${n%%:*}" "$bin" run --workers 1 \
    --config "$(portico_conf "lb-${n%%:*}" "${n#*:}" 100)" 2> "$work/lb-${n%%:*}.log" &
  pids+=($!)
done
for _ in $(seq 50); do
  ip -n "${tag}a" -o addr show dev eth0 | grep -q "$vip/" && break
  sleep 0.1
done
echo "VIP $vip held by lb-a (priority 150); lb-b (100) is its VRRP peer."
echo "admin sockets: $work/lb-a.sock, $work/lb-b.sock (e.g. $bin ctl --socket $work/lb-a.sock status)"
if [ "${1:-}" = --hold ]; then
  echo "client namespace: ip netns exec ${tag}c ...; drill: ip netns exec ${tag}c $bin drill \\"
  echo "  --socket $work/lb-a.sock vip-handover --target $vip:$port"
  echo "Ctrl-C ends the lab."
  while true; do sleep 3600; done
fi
ip netns exec "${tag}c" "$bin" drill --socket "$work/lb-a.sock" vip-handover \
  --target "$vip:$port" --max-gap-ms 1000 --watch-s 2
