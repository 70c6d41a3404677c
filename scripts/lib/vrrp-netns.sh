# Sourced by benches/vip_outage.sh and scripts/vip-lab.sh: a VRRP test bed in network
# namespaces. Expects: tag (namespace prefix), net (10.200.N), vip, port, be_port, work (a
# scratch dir), pids (array of PIDs to kill on exit), bin (the portico binary); optional
# backend_hold (see setup).
#
# setup: namespaces ${tag}a, ${tag}b (balancer nodes) and ${tag}c (client, and the backend
# $net.3:$be_port, which accepts and closes) on a bridge in ${tag}br.

setup() {
  ip netns add "${tag}br"
  ip -n "${tag}br" link add br0 type bridge
  ip -n "${tag}br" link set br0 up
  local i=1
  for n in a b c; do
    ip netns add "$tag$n"
    ip link add "$tag${n}x" type veth peer name "$tag${n}y"
    ip link set "$tag${n}x" netns "$tag$n"
    ip link set "$tag${n}y" netns "${tag}br"
    ip -n "$tag$n" link set "$tag${n}x" name eth0
    ip -n "$tag$n" addr add "$net.$i/24" dev eth0
    ip -n "$tag$n" link set eth0 up
    ip -n "$tag$n" link set lo up
    ip -n "${tag}br" link set "$tag${n}y" master br0
    ip -n "${tag}br" link set "$tag${n}y" up
    i=$((i + 1))
  done
  # The backend, in the client namespace: accepts and closes.
  # With backend_hold=1 it keeps the last 500 connections open instead (a client that checks
  # its proxied connection stays up, as the drills do, needs a backend that does not hang up).
  ip netns exec "${tag}c" python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('$net.3', $be_port)); s.listen(1024)
held = []
while True:
    c, _ = s.accept()
    if ${backend_hold:-0}:
        held.append(c)
        if len(held) > 500: held.pop(0).close()
    else:
        c.close()
" &
  pids+=($!)
}

# portico_conf NAME PRIORITY INTERVAL_MS [novip]
portico_conf() {
  local f=$work/$1.toml
  {
    echo "[node]"; echo "name = \"$1\""; echo 'interface = "eth0"'; echo
    if [ "${4:-}" != novip ]; then
      echo "[vip]"; echo "addresses = [\"$vip/24\"]"; echo 'mode = "vrrp"'
      echo 'garp_master_delay_ms = 0'; echo 'garp_master_repeat = 3'; echo
      echo "[vip.vrrp]"; echo "vrid = 51"; echo "priority = $2"; echo "advert_interval_ms = $3"; echo
    fi
    echo "[[service]]"; echo 'name = "web"'; echo "listen = \"$vip:$port\""; echo 'pool = "be"'
    echo "backend_port = $be_port"; echo
    echo "[pool.be]"; echo "backends = [ { name = \"be1\", address = \"$net.3\" } ]"; echo
    echo "[metrics]"; echo 'listen = "127.0.0.1:9469"'
    echo "[admin]"; echo "socket = \"$work/$1.sock\""
  } > "$f"
  echo "$f"
}

