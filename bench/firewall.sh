#!/usr/bin/env bash
# Single-stream TCP through a host with 1,000 firewall rules, against the
# same host without a firewall, in one run (host -> gateway -> host).
#
#   sudo bench/firewall.sh            # 10 s per iperf3 run
#   SECONDS_PER_RUN=5 RULES=1000 sudo bench/firewall.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
T=${SECONDS_PER_RUN:-10}
N=${RULES:-1000}
[[ $(id -u) == 0 ]] || { echo "bench/firewall.sh: needs root" >&2; exit 2; }
for pair in ip:iproute2 iperf3:iperf3 jq:jq; do
  command -v "${pair%%:*}" >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pair#*:}" >/dev/null
  }
done
[[ -f $HOME/.cargo/env ]] && source "$HOME/.cargo/env"
[[ -n ${NO_BUILD:-} ]] || cargo build --release --workspace --bins -q
lab=$root/target/release/cubenet-lab
work=$(mktemp -d /tmp/cubenet-fwbench.XXXXXX)
trap '"$lab" down "$work/lab" >/dev/null 2>&1; rm -rf "$work"' EXIT INT TERM

printf '[[site]]\nname = "fwb"\ngateways = 1\nhosts = 2\n' >"$work/spec.toml"
"$lab" up "$work/spec.toml" --dir "$work/lab" >/dev/null
dst=$("$lab" addr "$work/lab" fwb-h2 | sed -n 1p)
cfg=$("$lab" status "$work/lab" --json | jq -r '.nodes[] | select(.name == "fwb-h2") | .overlayd_config')
sock=$("$lab" status "$work/lab" --json | jq -r '.nodes[] | select(.name == "fwb-h2") | .overlayd_socket')

run() {
  "$lab" exec "$work/lab" fwb-h2 -- iperf3 -s -1 >/dev/null 2>&1 &
  local spid=$!
  for _ in $(seq 100); do
    "$lab" exec "$work/lab" fwb-h2 -- ss -Hltn 'sport = :5201' | grep -q . && break
    sleep 0.05
  done
  "$lab" exec "$work/lab" fwb-h1 -- iperf3 -c "$dst" -t "$T" -J |
    jq '.end.sum_received.bits_per_second / 1e9'
  wait "$spid"
}

echo "== without a firewall"
plain=$(run)
echo "   $plain Gbit/s"

echo "== with $N rules (none of them match; the last allows iperf3)"
cp "$cfg" "$work/base.toml"
{
  cat "$work/base.toml"
  printf '\n[firewall]\ninbound_default = "deny"\n'
  for i in $(seq 1 $((N - 1))); do
    printf '[[firewall.inbound]]\naction = "deny"\nproto = "tcp"\nport = "%d"\nfrom = ["192.0.2.%d/32", "group:nobody%d"]\n' \
      $((10000 + i)) $((i % 250)) "$i"
  done
  printf '[[firewall.inbound]]\naction = "allow"\nproto = "tcp"\nport = "5201"\n'
} >"$cfg"
"$root/target/release/overlayd" check --config "$cfg" >/dev/null
"$lab" kill "$work/lab" fwb-h2 --signal HUP
for _ in $(seq 100); do
  n=$("$root/target/release/overlayd" status --socket "$sock" --json | jq '.firewall.inbound | length? // 0')
  [[ $n == "$N" ]] && break
  sleep 0.05
done
[[ $n == "$N" ]] || { echo "the rules did not load" >&2; exit 1; }
ruled=$(run)
echo "   $ruled Gbit/s"
hits=$("$root/target/release/overlayd" status --socket "$sock" --json | jq ".firewall.inbound[$((N - 1))].hits")
echo
awk -v a="$ruled" -v b="$plain" -v n="$N" -v h="$hits" \
  'BEGIN { printf "single stream with %d rules: %.2f Gbit/s = %.3f of %.2f Gbit/s without (last rule hit %d times)\n", n, a, a / b, b, h }'
