#!/usr/bin/env bash
# TCP across a gateway-to-gateway path whose underlay carries less than
# 1500 bytes, against the same path at 1500, in one run: two sites of one
# gateway and one host each; site fra's gateway links to the shared underlay
# at WAN_MTU (default 1400). overlayd learns the tunnel's MTU by probing,
# answers larger packets with fragmentation needed / packet too big and
# clamps MSS; the transfer goes at the rate the smaller packets allow.
#
#   sudo bench/mtu.sh
#   WAN_MTU=1400 RUNS=3 SECONDS_PER_RUN=10 UNDERLAY_IPV6=1 NO_BUILD=1 sudo bench/mtu.sh
#
# Prints, per run and path MTU, iperf3's single-stream rate from fra-h1 to
# ams-h1 and back, and per direction the ratio of the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WAN_MTU=${WAN_MTU:-1400}
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
ipv6=$([[ -n ${UNDERLAY_IPV6:-} ]] && echo true || echo false)
[[ $(id -u) == 0 ]] || { echo "bench/mtu.sh: needs root" >&2; exit 2; }
for pair in ip:iproute2 jq:jq iperf3:iperf3; do
  command -v "${pair%%:*}" >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pair#*:}" >/dev/null
  }
done
[[ -f $HOME/.cargo/env ]] && source "$HOME/.cargo/env"
[[ -n ${NO_BUILD:-} ]] || cargo build --release --workspace --bins -q
lab=$root/target/release/cubenet-lab
work=$(mktemp -d /tmp/cubenet-mtu.XXXXXX)
trap '"$lab" down "$work/a" >/dev/null 2>&1; "$lab" down "$work/b" >/dev/null 2>&1; rm -rf "$work"' EXIT INT TERM

# rate LABDIR FROM TO: iperf3 bits per second, one stream.
rate() {
  local dst
  dst=$("$lab" addr "$1" "$3" | sed -n 1p)
  "$lab" exec "$1" "$3" -- iperf3 -s -1 -D -I "$work/iperf.pid" >/dev/null
  # The server is up when it listens.
  until "$lab" exec "$1" "$3" -- ss -ltn | grep -q ':5201 '; do :; done
  local r
  r=$("$lab" exec "$1" "$2" -- iperf3 -c "$dst" -t "$SECONDS_PER_RUN" -J |
    jq '.end.sum_received.bits_per_second')
  [[ -n $r && $r != null ]] || { echo "bench/mtu.sh: iperf3 $2 -> $3 failed" >&2; exit 1; }
  echo "$r"
}

declare -A rates
for mtu in 1500 "$WAN_MTU"; do
  dir=$work/$([[ $mtu == 1500 ]] && echo a || echo b)
  cat >"$work/spec-$mtu.toml" <<EOF
underlay_ipv6 = $ipv6
[[site]]
name = "fra"
wan_mtu = $mtu
[[site]]
name = "ams"
EOF
  "$lab" up "$work/spec-$mtu.toml" --dir "$dir" >/dev/null
  gw_sock=$("$lab" status "$dir" --json | jq -r '.nodes[] | select(.name == "fra-gw1") | .overlayd_socket')
  tunnel() {
    "$root/target/release/overlayd" status --json --socket "$gw_sock" |
      jq -r '.peers[] | select(.name == "ams-gw1") | "\(.mtu)\(if .mtu_learned then "" else "?" end)"'
  }
  # Until the tunnel learned its MTU.
  while [[ $(tunnel) == *'?' ]]; do sleep 0.1; done
  tunnel=$(tunnel)
  echo "== underlay link at $mtu (IPv6 underlay: $ipv6): fra-gw1's tunnel to ams-gw1 carries $tunnel"
  for run in $(seq "$RUNS"); do
    there=$(rate "$dir" fra-h1 ams-h1)
    back=$(rate "$dir" ams-h1 fra-h1)
    awk -v r="$run" -v a="$there" -v b="$back" \
      'BEGIN { printf "  run %d: fra-h1 -> ams-h1 %.2f Gbit/s, back %.2f Gbit/s\n", r, a / 1e9, b / 1e9 }'
    rates[$mtu,there]+="$there "
    rates[$mtu,back]+="$back "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
for dir in there back; do
  full=$(echo "${rates[1500,$dir]}" | median)
  small=$(echo "${rates[$WAN_MTU,$dir]}" | median)
  awk -v d="$([[ $dir == there ]] && echo "fra-h1 -> ams-h1" || echo "ams-h1 -> fra-h1")" \
    -v f="$full" -v s="$small" -v m="$WAN_MTU" \
    'BEGIN { printf "%s, medians: %.2f Gbit/s at 1500, %.2f Gbit/s at %d, ratio %.3f\n", d, f / 1e9, s / 1e9, m, s / f }'
done
