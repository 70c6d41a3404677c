#!/usr/bin/env bash
# Health probing cost: 100 simulated gateways (in the bench process, not counted) probed with
# tcp + tls + rdg-token every second by a release `portico run`; prints Portico's CPU time as
# a share of one core over the window. Arguments: [backends] [seconds] (default 100 40).
#   benches/probe_cost.sh            # or: cargo bench --bench probe_cost -- 100 40
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench probe_cost -- "${1:-100}" "${2:-40}"
