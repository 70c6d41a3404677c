#!/usr/bin/env bash
# A control for ../shared/bench/l4bench.sh: runs HAProxy, configured exactly as the harness
# configures its own HAProxy, in the harness's *Portico* slot. The harness runs its targets in
# a fixed order (direct, haproxy, nginx-stream, portico), so the last slot runs after three
# close tests whose TIME_WAIT sockets are still in the tables; this measures what that slot
# costs any proxy. Compare "portico" (this HAProxy) against "haproxy" in the same run:
#   PORTICO_CMD=benches/l4bench-haproxy-slot.sh ../shared/bench/l4bench.sh
# PIN=1 adds `cpu-map auto:1/1-N 0-(N-1)` (thread i on CPU i), the HAProxy counterpart of
# `portico run --pin-workers`, to see what pinning alone is worth to HAProxy in that slot.
# BATCH=1 runs HAProxy under SCHED_BATCH (`chrt -b 0`), as Portico runs its data-plane threads
# by default (`--worker-scheduling batch`), to see what the policy is worth to HAProxy there.
set -euo pipefail
: "${PORTICO_LISTEN:?set by l4bench.sh}" "${PORTICO_BACKENDS:?set by l4bench.sh}" "${PORTICO_WORKDIR:?set by l4bench.sh}"
cfg=$PORTICO_WORKDIR/haproxy-slot.cfg
nofile=$(ulimit -n)
maxconn=$(( (nofile - 200) / 2 )); [ "$maxconn" -gt 100000 ] && maxconn=100000
IFS=, read -ra bes <<< "$PORTICO_BACKENDS"
{
  echo 'global'
  echo "  maxconn $maxconn"
  echo "  nbthread ${PORTICO_WORKERS:-2}"
  if [ "${PIN:-0}" = 1 ]; then
    n=${PORTICO_WORKERS:-2}
    echo "  cpu-map auto:1/1-$n 0-$((n - 1))"
  fi
  echo 'defaults'
  echo '  mode tcp'
  echo '  timeout connect 5s'
  echo '  timeout client 60s'
  echo '  timeout server 60s'
  echo 'frontend fe'
  echo "  bind $PORTICO_LISTEN backlog 4096"
  echo '  default_backend be'
  echo 'backend be'
  echo '  balance roundrobin'
  i=0
  for be in "${bes[@]}"; do i=$((i + 1)); echo "  server b$i $be"; done
} > "$cfg"
batch=()
[ "${BATCH:-0}" = 1 ] && batch=(chrt -b 0)
exec "${batch[@]}" haproxy -db -f "$cfg"
