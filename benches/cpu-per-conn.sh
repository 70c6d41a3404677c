#!/usr/bin/env bash
# CPU time per proxied connection (Connection: close, 128 B; MODE=keepalive: per request) for
# Portico and HAProxy side by side, alternating rounds, one worker thread each, nginx as the
# backend; loopback only.
# Throughput on a shared 2-core machine swings with other load; the CPU a proxy spends per
# connection (utime+stime from /proc, divided by connections served) barely does.
#   cargo build --release && benches/cpu-per-conn.sh
#   PORTICO_BIN_B=/path/to/other/portico benches/cpu-per-conn.sh   # two Portico builds + HAProxy
#   WORKERS=2 benches/cpu-per-conn.sh     # data-plane threads (Portico) / nbthread (HAProxy)
#   WORKERS=2 NGINX_WORKERS=2 WRK_THREADS=2 WRK_CONNS=50 benches/cpu-per-conn.sh   # l4bench's shape
#   ... BACKENDS=2 OWN_SESSION=1 benches/cpu-per-conn.sh   # and l4bench's placement (below)
# Besides CPU per request it prints the proxy's voluntary context switches per request (each is
# a sleep in epoll_wait and a wake-up paid by whoever sent the data) and its preemptions
# (involuntary switches); nginx's and wrk's CPU and voluntary context switches ("sleeps") per
# request, and wrk's preemptions; the TCP segments sent per request (all of loopback: each one
# runs the receiver's TCP input in the sender's system call); the context switches per request
# on the whole machine (every sleep and every preemption); and the machine's idle time during
# the run (CPU nobody used while the closed loop waited).
# BACKENDS=2: nginx listens on two ports and each proxy gets both (HAProxy round-robin), as in
# l4bench. OWN_SESSION=1: every proxy starts under setsid, so with the kernel's autogroup
# scheduling (/proc/sys/kernel/sched_autogroup_enabled) each is a scheduling group of its own
# that competes as one entity with the group holding wrk and nginx; l4bench starts PORTICO_CMD
# that way and its own HAProxy not. OWN_SESSION=portico: only Portico, as l4bench does.
# ARGS_A / ARGS_B: extra `portico run` arguments for the first / second Portico, e.g.
#   ARGS_A="--worker-scheduling normal" PORTICO_BIN_B=target/release/portico ...  # policy A/B
# HOGS=N: N busy loops, each in a session of its own, run during the rounds (a neighbour that
# saturates the CPUs; each ends with the script or after 10 minutes at most).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
A=$(realpath "${PORTICO_BIN:-$here/target/release/portico}")
B=${PORTICO_BIN_B:-}
[ -z "$B" ] || B=$(realpath "$B")  # the rounds run in a scratch dir
ROUNDS=${ROUNDS:-3}
# MODE=close: a new connection per request (the default); MODE=keepalive: requests on kept
# connections, so the figure is CPU per relayed request/response.
MODE=${MODE:-close}
if [ "$MODE" = keepalive ]; then KA="keepalive_timeout 60s; keepalive_requests 1000000;"; HDR=(); else KA="keepalive_timeout 0;"; HDR=(-H "Connection: close"); fi
for t in nginx haproxy wrk; do command -v $t >/dev/null || { echo "needs $t (see ../shared/bench/README.md)"; exit 2; }; done
d=$(mktemp -d); cd "$d"
mkdir -p www; head -c 128 /dev/zero | tr '\0' a > www/small.html
cat > nginx.conf <<NG
worker_processes ${NGINX_WORKERS:-1}; pid $d/nginx.pid; error_log $d/nginx.err; daemon off;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:18091; root $d/www; $KA } server { listen 127.0.0.1:18094; root $d/www; $KA } }
NG
nginx -c $d/nginx.conf & NGPID=$!
BE2=; HBE2=
if [ "${BACKENDS:-1}" = 2 ]; then BE2=', { name = "be2", address = "127.0.0.1:18094" }'; HBE2='  server be2 127.0.0.1:18094'; fi
own() { case "${OWN_SESSION:-0}" in 1) echo setsid ;; portico) [ "$1" != portico ] || echo setsid ;; esac; }
mk() { cat > $d/$1.toml <<T
[node]
name = "b"
[[service]]
name = "bench"
listen = "127.0.0.1:$2"
pool = "p"
[pool.p]
backends = [ { name = "be1", address = "127.0.0.1:18091" }$BE2 ]
[metrics]
listen = "off"
[admin]
socket = "$d/$1.sock"
T
}
mk old 18090; mk new 18092
read -ra args_a <<< "${ARGS_A:-}"; read -ra args_b <<< "${ARGS_B:-}"
$(own portico) "$A" run --config $d/old.toml --workers "${WORKERS:-1}" ${args_a[@]+"${args_a[@]}"} >$d/old.log 2>&1 & OLD=$!
NEW=
if [ -n "$B" ]; then $(own portico) "$B" run --config $d/new.toml --workers "${WORKERS:-1}" ${args_b[@]+"${args_b[@]}"} >$d/new.log 2>&1 & NEW=$!; fi
cat > $d/haproxy.cfg <<H
global
  nbthread ${WORKERS:-1}
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen bench
  bind 127.0.0.1:18093
  balance roundrobin
  server be1 127.0.0.1:18091
$HBE2
H
$(own haproxy) haproxy -f $d/haproxy.cfg >$d/haproxy.log 2>&1 & HAP=$!
HOGPIDS=
for _ in $(seq "${HOGS:-0}"); do setsid timeout 600 sh -c 'while :; do :; done' & HOGPIDS="$HOGPIDS $!"; done
trap 'kill $OLD $NEW $NGPID $HAP $HOGPIDS 2>/dev/null; sleep 0.3; rm -rf "$d"' EXIT
sleep 1.5
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
nginx_cpu() { for p in $NGPID $(pgrep -P $NGPID); do cpu $p; done | awk '{s += $1} END {print s}'; }
idle() { awk '/^cpu /{print $5}' /proc/stat; }
ctxsw() { cat /proc/$1/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s}'; }
preempted() { cat /proc/$1/task/*/status 2>/dev/null | awk '/^nonvoluntary_ctxt_switches/ {s += $2} END {print s}'; }
switches() { awk '/^ctxt/ {print $2}' /proc/stat; }
segs() { nstat -az TcpOutSegs | awk '/^TcpOutSegs/ {print $2}'; }
nginx_ctxsw() { for p in $NGPID $(pgrep -P $NGPID); do ctxsw $p; done | awk '{s += $1} END {print s}'; }
hz=$(getconf CLK_TCK)
per() { awk -v a="$1" -v b="$2" -v r="$3" -v f="${4:-%.3f}" 'BEGIN{printf f, (b-a)/r}'; }  # (B-A)/R
us() { awk -v a="$1" -v b="$2" -v r="$3" -v h="$hz" 'BEGIN{printf "%.1f us/req", (b-a)/h*1e6/r}'; }  # ticks A..B per R
whos="portico haproxy"; [ -n "$B" ] && whos="portico portico_b haproxy"
for round in $(seq "$ROUNDS"); do
  for who in $whos; do
    pid=$OLD; port=18090; [ $who = portico_b ] && { pid=$NEW; port=18092; }; [ $who = haproxy ] && { pid=$HAP; port=18093; }
    c0=$(cpu $pid); s0=$(ctxsw $pid); v0=$(preempted $pid); n0=$(nginx_cpu); i0=$(idle); w0=$(nginx_ctxsw); g0=$(segs); x0=$(switches)
    out=$(timeout 30 /usr/bin/time -f "WRKTIME %U %S %w %c" wrk -t"${WRK_THREADS:-1}" -c"${WRK_CONNS:-20}" -d"${SECS:-4}" ${HDR[@]+"${HDR[@]}"} http://127.0.0.1:$port/small.html 2>&1)
    c1=$(cpu $pid); s1=$(ctxsw $pid); v1=$(preempted $pid); n1=$(nginx_cpu); i1=$(idle); w1=$(nginx_ctxsw); g1=$(segs); x1=$(switches)
    reqs=$(echo "$out" | awk '/requests in/{print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    wrk_use=$(echo "$out" | awk -v r="$reqs" '/^WRKTIME/ {printf "%.1f us/req %.3f sleeps/req %.3f preempted/req", ($2+$3)*1e6/r, $4/r, $5/r}')
    echo "round $round $who ($MODE): $reqs requests, $rps req/s, cpu $(us $c0 $c1 $reqs), $(per $s0 $s1 $reqs) context switches/req $(per $v0 $v1 $reqs) preempted/req, nginx $(us $n0 $n1 $reqs) $(per $w0 $w1 $reqs) sleeps/req, wrk $wrk_use, $(per $g0 $g1 $reqs %.2f) TCP segments/req, $(per $x0 $x1 $reqs %.2f) context switches/req (machine), idle $(per $i0 $i1 $hz %.2f) CPU-s"
  done
done
