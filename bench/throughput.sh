#!/usr/bin/env bash
# Throughput and latency of the overlay, in one run, against plain veth.
#
#   sudo bench/throughput.sh            # 10 s per iperf3 run
#   SECONDS_PER_RUN=5 sudo bench/throughput.sh
#   OLD_BIN=/path/to/old/target/release sudo bench/throughput.sh
#   BIN_DIR=/path/to/old/target/release OLD_BIN=target/release sudo bench/throughput.sh
#
# OLD_BIN names the binary directory of another build (cubenet-lab,
# overlayd, overlay-cert): its overlayd-pair and overlayd-gw are measured in
# the same run, after the new build's, and each figure is also given as a
# ratio to the old one.
#
# Paths measured (each with iperf3 TCP, 1 and 4 streams, and ping RTT):
#   veth          two namespaces on a plain veth pair: the baseline
#   wireguard-go  the same pair with Debian's wireguard-go on both ends
#   overlayd-pair a host and its gateway (the gateway's own address)
#   overlayd-gw   host -> gateway -> host at one site (decrypt + encrypt on
#                 the gateway)
# Every figure is printed with its ratio to the baseline of the same run, and
# the CPU seconds the tunnel daemons used per GB moved (all ends summed).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
T=${SECONDS_PER_RUN:-10}

[[ $(id -u) == 0 ]] || { echo "bench/throughput.sh: needs root (namespaces, TUN)" >&2; exit 2; }
missing=()
for pair in ip:iproute2 iperf3:iperf3 jq:jq ping:iputils-ping wireguard-go:wireguard-go wg:wireguard-tools; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[[ -f $HOME/.cargo/env ]] && source "$HOME/.cargo/env"
# BIN_DIR measures another build first (with OLD_BIN the other way round:
# the order of the two within a run, as a check of drift).
if [[ -n ${BIN_DIR:-} ]]; then
  export CUBENET_BIN_DIR=$BIN_DIR
else
  [[ -n ${NO_BUILD:-} ]] || cargo build --release --workspace --bins -q
  BIN_DIR=$root/target/release
fi
lab=$BIN_DIR/cubenet-lab

P=cnb$$
work=$(mktemp -d /tmp/cubenet-bench.XXXXXX)
cleanup() {
  set +e
  "$lab" down "$work/lab" >/dev/null 2>&1
  for ns in $P-a $P-b; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9
    ip netns del "$ns" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

clk=$(getconf CLK_TCK)
# CPU seconds (user + system) of the given pids, summed.
cpu_s() {
  local t=0 p
  for p in "$@"; do
    read -r -a f < <(sed 's/^.*) //' "/proc/$p/stat")
    t=$((t + f[11] + f[12]))
  done
  echo "$t $clk" | awk '{printf "%.2f", $1 / $2}'
}

# wait_port NETNS-EXEC... : until iperf3 listens in that namespace.
wait_listen() {
  for _ in $(seq 200); do
    "$@" ss -Hltn 'sport = :5201' | grep -q . && return 0
    sleep 0.05
  done
  echo "iperf3 server did not start" >&2
  return 1
}

declare -A gbps retr rtt cpu
# measure NAME "SERVER-EXEC" "CLIENT-EXEC" DST "PIDS"
measure() {
  local name=$1 sx=$2 cx=$3 dst=$4 pids=$5
  for streams in 1 4; do
    $sx iperf3 -s -1 >/dev/null 2>&1 &
    local spid=$!
    wait_listen $sx
    local c0 c1
    c0=$( [[ -n $pids ]] && cpu_s $pids || echo 0)
    $cx iperf3 -c "$dst" -t "$T" -P "$streams" -J >"$work/$name.$streams.json"
    c1=$( [[ -n $pids ]] && cpu_s $pids || echo 0)
    wait "$spid"
    local bps bytes
    bps=$(jq '.end.sum_received.bits_per_second' "$work/$name.$streams.json")
    bytes=$(jq '.end.sum_received.bytes' "$work/$name.$streams.json")
    gbps[$name.$streams]=$(awk -v b="$bps" 'BEGIN{printf "%.2f", b / 1e9}')
    retr[$name.$streams]=$(jq '.end.sum_sent.retransmits // 0' "$work/$name.$streams.json")
    if [[ -n $pids ]]; then
      cpu[$name.$streams]=$(awk -v a="$c0" -v b="$c1" -v n="$bytes" 'BEGIN{printf "%.1f", (b - a) / (n / 1e9)}')
    else
      cpu[$name.$streams]=-
    fi
  done
  rtt[$name]=$($cx ping -c 100 -i 0.01 -q "$dst" | awk -F/ '/^rtt/ {printf "%.3f", $5}')
}

declare -A setup_ms setup_lost
# setup NAME: restarts bench-h1 and pings its gateway (5 pings, 10 ms
# apart) as soon as its TUN has an address. Records the time from the
# start command to the first reply (process start, TUN, handshake,
# certificate exchange, first probe) and how many pings got no reply.
setup() {
  local name=$1 out t0
  "$lab" kill "$work/lab" bench-h1 >/dev/null
  t0=$(date +%s.%N)
  "$lab" start "$work/lab" bench-h1 >/dev/null
  for _ in $(seq 1000); do
    $(X bench-h1) ip -4 addr show dev cube0 2>/dev/null | grep -q inet && break
    sleep 0.002
  done
  out=$($(X bench-h1) ping -D -c 5 -i 0.01 -W 2 "$gw_addr" || true)
  setup_ms[$name]=$(awk -v t0="$t0" -F'[][]' '/time=/ {printf "%.1f", ($2 - t0) * 1000; exit}' <<<"$out")
  setup_lost[$name]=$(awk '/packets transmitted/ {print $1 - $4}' <<<"$out")
  [[ -n ${setup_ms[$name]} ]] || setup_ms[$name]=-
}

echo "== plain veth pair and wireguard-go"
ip netns add $P-a
ip netns add $P-b
ip link add $P-va netns $P-a type veth peer name $P-vb netns $P-b
ip -n $P-a addr add 192.0.2.1/24 dev $P-va
ip -n $P-b addr add 192.0.2.2/24 dev $P-vb
for ns in $P-a $P-b; do ip -n $ns link set lo up; done
ip -n $P-a link set $P-va up
ip -n $P-b link set $P-vb up
A="ip netns exec $P-a"
B="ip netns exec $P-b"
measure veth "$B" "$A" 192.0.2.2 ""

umask 077
wg genkey >"$work/a.key"
wg genkey >"$work/b.key"
chmod 600 "$work"/*.key
declare -A wgpid
for side in a b; do
  ns=$P-$side
  ip netns exec $ns env WG_PROCESS_FOREGROUND=1 wireguard-go wgb$side >/dev/null 2>&1 &
  for _ in $(seq 100); do ip -n $ns link show wgb$side >/dev/null 2>&1 && break; sleep 0.05; done
  wgpid[$side]=$(ip netns pids $ns | while read -r p; do [[ $(cat /proc/$p/comm) == wireguard-go ]] && echo $p; done | sed -n 1p)
done
$A wg set wgba listen-port 51820 private-key "$work/a.key" \
  peer "$(wg pubkey <"$work/b.key")" endpoint 192.0.2.2:51820 allowed-ips 10.99.0.2/32
$B wg set wgbb listen-port 51820 private-key "$work/b.key" \
  peer "$(wg pubkey <"$work/a.key")" endpoint 192.0.2.1:51820 allowed-ips 10.99.0.1/32
$A ip addr add 10.99.0.1/24 dev wgba
$B ip addr add 10.99.0.2/24 dev wgbb
$A ip link set wgba mtu 1420 up
$B ip link set wgbb mtu 1420 up
$A ping -c 1 -W 5 10.99.0.2 >/dev/null
measure wireguard-go "$B" "$A" 10.99.0.2 "${wgpid[a]} ${wgpid[b]}"

echo "== overlayd (cubenet-lab: one site, one gateway, two hosts)"
cat >"$work/spec.toml" <<EOF
[[site]]
name = "bench"
gateways = 1
hosts = 2
EOF
"$lab" up "$work/spec.toml" --dir "$work/lab" >/dev/null
pid() { "$lab" status "$work/lab" --json | jq -r --arg n "$1" '.nodes[] | select(.name == $n) | .pids[0]'; }
h1=$(pid bench-h1) h2=$(pid bench-h2) g1=$(pid bench-gw1)
X() { echo "$lab exec $work/lab $1 --"; }
gw_addr=$("$lab" addr "$work/lab" bench-gw1 | sed -n 1p)
h2_addr=$("$lab" addr "$work/lab" bench-h2 | sed -n 1p)
measure overlayd-pair "$(X bench-gw1)" "$(X bench-h1)" "$gw_addr" "$h1 $g1"
measure overlayd-gw "$(X bench-h2)" "$(X bench-h1)" "$h2_addr" "$h1 $g1 $h2"
setup overlayd
paths=(veth wireguard-go overlayd-pair overlayd-gw)
setups=(overlayd)

if [[ -n ${OLD_BIN:-} ]]; then
  echo "== overlayd of $OLD_BIN (the same lab)"
  "$lab" down "$work/lab" >/dev/null
  lab=$OLD_BIN/cubenet-lab
  export CUBENET_BIN_DIR=$OLD_BIN
  "$lab" up "$work/spec.toml" --dir "$work/lab" >/dev/null
  h1=$(pid bench-h1) h2=$(pid bench-h2) g1=$(pid bench-gw1)
  gw_addr=$("$lab" addr "$work/lab" bench-gw1 | sed -n 1p)
  h2_addr=$("$lab" addr "$work/lab" bench-h2 | sed -n 1p)
  measure old-pair "$(X bench-gw1)" "$(X bench-h1)" "$gw_addr" "$h1 $g1"
  measure old-gw "$(X bench-h2)" "$(X bench-h1)" "$h2_addr" "$h1 $g1 $h2"
  setup old
  paths+=(old-pair old-gw)
  setups+=(old)
fi

echo
printf '%-14s %9s %7s %6s %8s %9s %7s %6s %8s %9s %7s\n' path "1 stream" ratio retr "CPU-s/GB" "4 streams" ratio retr "CPU-s/GB" "RTT ms" ratio
for n in "${paths[@]}"; do
  printf '%-14s %7s G %7s %6s %8s %7s G %7s %6s %8s %9s %7s\n' "$n" \
    "${gbps[$n.1]}" "$(awk -v a="${gbps[$n.1]}" -v b="${gbps[veth.1]}" 'BEGIN{printf "%.3f", a / b}')" "${retr[$n.1]}" "${cpu[$n.1]}" \
    "${gbps[$n.4]}" "$(awk -v a="${gbps[$n.4]}" -v b="${gbps[veth.4]}" 'BEGIN{printf "%.3f", a / b}')" "${retr[$n.4]}" "${cpu[$n.4]}" \
    "${rtt[$n]}" "$(awk -v a="${rtt[$n]}" -v b="${rtt[veth]}" 'BEGIN{printf "%.1f", a / b}')"
done
echo
for n in "${setups[@]}"; do
  echo "$n: a host started: its first ping to its gateway answered ${setup_ms[$n]} ms after the start, ${setup_lost[$n]} of 5 lost"
done
for n in overlayd-pair overlayd-gw; do
  awk -v n="$n" -v a="${gbps[$n.1]}" -v b="${gbps[wireguard-go.1]}" \
    'BEGIN{printf "%s single stream = %.2f x wireguard-go\n", n, a / b}'
done
if [[ -n ${OLD_BIN:-} ]]; then
  for k in pair gw; do
    for st in 1 4; do
      awk -v k="$k" -v st="$st" -v a="${gbps[overlayd-$k.$st]}" -v b="${gbps[old-$k.$st]}" \
        -v ca="${cpu[overlayd-$k.$st]}" -v cb="${cpu[old-$k.$st]}" \
        'BEGIN{printf "overlayd-%s %d stream(s): %.3f x the old build, CPU-s/GB %.1f vs %.1f\n", k, st, a / b, ca, cb}'
    done
  done
fi
