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
# ams-h1 and back, and the ratio of the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WAN_MTU=${WAN_MTU:-1400}
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
ipv6=$([[ -n ${UNDERLAY_IPV6:-} ]] && echo true || echo false)
[[ $(id -u) == 0 ]] || { echo "bench/mtu.sh: needs root" >&2; exit 2; }
for pair in ip:iproute2 jq:jq iperf3:iperf3 bc:bc; do
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
  "$lab" exec "$1" "$2" -- iperf3 -c "$dst" -t "$SECONDS_PER_RUN" -J |
    jq '.end.sum_received.bits_per_second'
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
  tunnel=$("$root/target/release/overlayd" status --json \
    --socket "$("$lab" status "$dir" --json | jq -r '.nodes[] | select(.name == "fra-gw1") | .overlayd_socket')" |
    jq -r '.peers[] | select(.name == "ams-gw1") | "\(.mtu)\(if .mtu_learned then "" else "?" end)"')
  echo "== underlay link at $mtu (IPv6 underlay: $ipv6): fra-gw1's tunnel to ams-gw1 carries $tunnel"
  for run in $(seq "$RUNS"); do
    there=$(rate "$dir" fra-h1 ams-h1)
    back=$(rate "$dir" ams-h1 fra-h1)
    printf '  run %d: fra-h1 -> ams-h1 %.2f Gbit/s, back %.2f Gbit/s\n' "$run" \
      "$(echo "$there / 1e9" | bc -l)" "$(echo "$back / 1e9" | bc -l)"
    rates[$mtu]+="$there $back "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
full=$(echo "${rates[1500]}" | median)
small=$(echo "${rates[$WAN_MTU]}" | median)
printf 'median at 1500: %.2f Gbit/s, at %d: %.2f Gbit/s, ratio %.3f\n' \
  "$(echo "$full / 1e9" | bc -l)" "$WAN_MTU" "$(echo "$small / 1e9" | bc -l)" "$(echo "$small / $full" | bc -l)"
