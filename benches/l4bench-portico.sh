#!/usr/bin/env bash
# PORTICO_CMD for ../shared/bench/l4bench.sh: writes a Portico config for the harness's
# listener and backends into its scratch dir and runs the release binary on it.
#   cargo build --release && PORTICO_CMD=benches/l4bench-portico.sh ../shared/bench/l4bench.sh
# PORTICO_PIN=1 adds --pin-workers (data-plane thread i on CPU i); the default runs unpinned,
# as the harness runs HAProxy (no cpu-map) and nginx (no worker_cpu_affinity).
# PORTICO_SCHED=normal runs the data-plane threads under the kernel's default policy instead of
# portico run's default SCHED_BATCH (`--worker-scheduling`), for an A/B of the two.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
: "${PORTICO_LISTEN:?set by l4bench.sh}" "${PORTICO_BACKENDS:?set by l4bench.sh}" "${PORTICO_WORKDIR:?set by l4bench.sh}"
cfg=$PORTICO_WORKDIR/portico.toml
{
  echo '[node]'
  echo 'name = "bench"'
  echo
  echo '[[service]]'
  echo 'name = "bench"'
  echo "listen = \"$PORTICO_LISTEN\""
  echo 'pool = "backends"'
  echo
  echo '[pool.backends]'
  echo 'backends = ['
  i=0
  IFS=, read -ra bes <<< "$PORTICO_BACKENDS"
  for be in "${bes[@]}"; do
    i=$((i + 1))
    echo "  { name = \"be$i\", address = \"$be\" },"
  done
  echo ']'
  echo
  echo '[metrics]'
  echo 'listen = "off"'
  echo
  echo '[admin]'
  echo "socket = \"$PORTICO_WORKDIR/admin.sock\""
} > "$cfg"
pin=()
[ "${PORTICO_PIN:-0}" = 1 ] && pin=(--pin-workers)
exec "${PORTICO_BIN:-$here/target/release/portico}" run --config "$cfg" --workers "${PORTICO_WORKERS:-2}" \
  --worker-scheduling "${PORTICO_SCHED:-batch}" "${pin[@]}"
