#!/usr/bin/env bash
# DNS answer rate: Portico's alias zone against NSD serving the same zone, side by side in one
# run, on loopback (ports below the ephemeral range, never 53). Portico runs once per name in
# ENGINES, each daemon with PORTICO_DNS_ENGINE=<name> and ports of its own. dnsperf sends the
# same query file to each server for ROUNDS x SECONDS_EACH, in turn, and the medians and their
# ratios to NSD are printed.
#
#   cargo build --release && benches/dnsperf.sh       # SECONDS_EACH=15 ROUNDS=2 by default
#
# Current builds have one engine and ignore PORTICO_DNS_ENGINE. The side-by-side of Portico's
# own responder and hickory-server in docs/benchmarks.md used commit 547e888, which has both:
#   git worktree add /tmp/dns-engines 547e888 && (cd /tmp/dns-engines && cargo build --release)
#   PORTICO_BIN=<its target>/release/portico ENGINES="fast hickory" benches/dnsperf.sh
#
# Needs dnsperf, nsd and dig (Debian: dnsperf, nsd, bind9-dnsutils). NSD runs with
# rrl-ratelimit: 0 (its response-rate limiting would cap it at a few hundred q/s on loopback)
# and with as many server processes as Portico has DNS sockets (one per core, SO_REUSEPORT).
# Both servers use their own config, pid and zone files in a temporary directory and are
# stopped by PID. dnsperf uses 16 client sockets by default: SO_REUSEPORT picks a server socket
# by hashing the client's address and port, and with only 4 clients one server socket (one
# core) often gets three or all four of them, on both servers alike, which swings a round by
# half.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
portico=${PORTICO_BIN:-$target/release/portico}
seconds=${SECONDS_EACH:-15}
rounds=${ROUNDS:-2}
clients=${CLIENTS:-16}
portico_port=${PORTICO_DNS_PORT:-15353}
nsd_port=${NSD_DNS_PORT:-15354}
engines=${ENGINES:-fast}
cores=$(nproc)

for tool in dnsperf nsd dig; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$portico" ] || { echo "build first: cargo build --release ($portico)" >&2; exit 1; }

work=$(mktemp -d /tmp/portico-dnsperf.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# --- Portico: the lab's shape, three gateways behind one service (nothing listens on the
# gateway ports, so all are down and, by the none-serving rule, the alias keeps its address).
# One daemon per engine, each with its own DNS port, service port and admin socket.
start_portico() { # engine dns-port service-port
  cat > "$work/portico-$1.toml" <<EOF
[node]
name = "bench"

[[service]]
name = "rdgw-https"
listen = "127.0.0.1:$3"
pool = "gateways"

[pool.gateways]
backends = [
  { name = "web01", address = "127.0.0.1:15501" },
  { name = "web02", address = "127.0.0.1:15502" },
  { name = "web03", address = "127.0.0.1:15503" },
]

[dns]
listen = ["127.0.0.1:$2"]
zone = "lab.test."
alias = "rdgw.lab.test."
ttl = 30

[metrics]
listen = "off"

[admin]
socket = "$work/admin-$1.sock"
EOF
  PORTICO_DNS_ENGINE=$1 PORTICO_LOG=warn "$portico" run --config "$work/portico-$1.toml" --workers 1 \
    > "$work/portico-$1.log" 2>&1 &
  pids+=($!)
}
servers=()  # "name port"
i=0
for e in $engines; do
  # Ports 15353, 15355, ... (NSD has 15354).
  start_portico "$e" $((portico_port + 2 * i)) $((15443 + i))
  servers+=("portico-$e $((portico_port + 2 * i))")
  i=$((i + 1))
done

# --- NSD: the zone Portico serves, written out (same TTLs, same names, same addresses).
serial=$(date +%s)
cat > "$work/lab.test.zone" <<EOF
\$ORIGIN lab.test.
\$TTL 30
@      IN SOA ns.lab.test. hostmaster.lab.test. $serial 3600 600 1209600 30
@      IN NS  ns.lab.test.
ns     IN A   127.0.0.1
rdgw   IN A   127.0.0.1
web01  IN A   127.0.0.1
web02  IN A   127.0.0.1
web03  IN A   127.0.0.1
EOF
cat > "$work/nsd.conf" <<EOF
server:
  ip-address: 127.0.0.1@$nsd_port
  server-count: $cores
  reuseport: yes
  username: ""
  chroot: ""
  zonesdir: "$work"
  database: ""
  zonelistfile: "$work/zone.list"
  xfrdfile: "$work/xfrd.state"
  xfrdir: "$work"
  pidfile: "$work/nsd.pid"
  logfile: "$work/nsd.log"
  rrl-ratelimit: 0
  verbosity: 0
  hide-version: yes
remote-control:
  control-enable: no
zone:
  name: lab.test
  zonefile: lab.test.zone
EOF
nsd -d -c "$work/nsd.conf" > "$work/nsd.out" 2>&1 &
pids+=($!)
servers+=("nsd $nsd_port")

# All answer, and answer alike, before anything is measured.
ask() { dig @127.0.0.1 -p "$1" +short +time=1 +tries=1 "$2" "$3" 2>/dev/null || true; }
for srv in "${servers[@]}"; do
  for i in $(seq 50); do
    [ -n "$(ask "${srv#* }" rdgw.lab.test A)" ] && break
    sleep 0.2
  done
done
for q in "rdgw.lab.test A" "web02.lab.test A" "lab.test NS" "nope.lab.test A"; do
  # shellcheck disable=SC2086
  want=$(ask "$nsd_port" $q)
  for srv in "${servers[@]}"; do
    # shellcheck disable=SC2086
    got=$(ask "${srv#* }" $q)
    if [ "$got" != "$want" ]; then
      echo "answers differ for $q: ${srv% *} [$got] nsd [$want]" >&2
      cat "$work"/portico-*.log "$work/nsd.out" >&2
      exit 1
    fi
  done
done

# A daemon that failed to start (its port still held by an earlier run) would leave the
# checks above to whoever holds the port.
for p in "${pids[@]}"; do
  kill -0 "$p" 2>/dev/null || { echo "server pid $p exited at start" >&2; cat "$work"/portico-*.log >&2; exit 1; }
done

# The query mix: mostly the alias (what clients ask), some gateway names, the SOA, and the
# negative answers a resolver's search list produces.
{
  for i in $(seq 6); do echo "rdgw.lab.test A"; done
  echo "rdgw.lab.test AAAA"
  echo "web01.lab.test A"
  echo "web02.lab.test A"
  echo "lab.test SOA"
  echo "nope.lab.test A"
  echo "rdgw.lab.test.corp.example A"
} > "$work/queries"

run() { # name port -> q/s
  dnsperf -s 127.0.0.1 -p "$2" -d "$work/queries" -l "$seconds" -c "$clients" -q 500 \
    > "$work/dnsperf-$1.out" 2>&1 || true
  awk '/Queries per second:/ {print $4}' "$work/dnsperf-$1.out"
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo "dnsperf: ${seconds}s each, $rounds rounds, $clients clients, $cores cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A qps
for r in $(seq "$rounds"); do
  line="round $r"
  for srv in "${servers[@]}"; do
    name=${srv% *}
    q=$(run "$name-$r" "${srv#* }")
    qps[$name]="${qps[$name]:-} $q"
    lost=$(awk '/Queries lost:/ {print $3}' "$work/dnsperf-$name-$r.out")
    line+=$(printf '  %s %8.0f q/s (lost %s)' "$name" "$q" "$lost")
  done
  echo "$line"
done
# A server that stopped answering shows as lost queries: say whether it is still running.
for p in "${pids[@]}"; do
  kill -0 "$p" 2>/dev/null || echo "server pid $p has exited" >&2
done
tail -n 3 "$work"/portico-*.log >&2
# shellcheck disable=SC2086
nsd_median=$(median ${qps[nsd]})
for srv in "${servers[@]}"; do
  name=${srv% *}
  # shellcheck disable=SC2086
  m=$(median ${qps[$name]})
  awk -v s="$name" -v p="$m" -v n="$nsd_median" \
    'BEGIN { printf "median  %-16s %8.0f q/s   / nsd %.2f\n", s, p, p / n }'
done
