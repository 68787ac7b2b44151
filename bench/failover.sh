#!/usr/bin/env bash
# Failover of a cross-site flow, in one run (3 sites x 2 gateways x 1 host,
# routed with BFD 100 ms x 3):
#   1. the longest gap in a 10 ms ping stream from fra-h1 to ams-h1 when the
#      gateway fra-h1 sends through is SIGKILLed;
#   2. the same when that gateway's tunnels to the other site silently drop
#      (nftables), so traffic has to go through the third site;
#   3. the time until every gateway's table is back to what it was after
#      the killed gateway is started again;
#   4. a host link: ams-h1's tunnel to the gateway it sends through silently
#      dropped; the longest gap in a 10 ms ping from fra-h1 into ams-h1, and
#      the time until no other gateway forwards ams-h1's /32 to that gateway.
#
#   sudo bench/failover.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
[[ $(id -u) == 0 ]] || { echo "bench/failover.sh: needs root" >&2; exit 2; }
for pair in ip:iproute2 jq:jq ping:iputils-ping nft:nftables; do
  command -v "${pair%%:*}" >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pair#*:}" >/dev/null
  }
done
[[ -f $HOME/.cargo/env ]] && source "$HOME/.cargo/env"
[[ -n ${NO_BUILD:-} ]] || cargo build --release --workspace --bins -q
lab=$root/target/release/cubenet-lab
work=$(mktemp -d /tmp/cubenet-failover.XXXXXX)
trap '"$lab" down "$work/lab" >/dev/null 2>&1; rm -rf "$work"' EXIT INT TERM

cat >"$work/spec.toml" <<EOF
routed = true
bfd_interval_ms = 100
[[site]]
name = "fra"
gateways = 2
hosts = 1
[[site]]
name = "ams"
gateways = 2
hosts = 1
[[site]]
name = "par"
gateways = 2
hosts = 1
EOF
echo "== lab up (3 sites x 2 gateways, routed, BFD 100 ms x 3)"
"$lab" up "$work/spec.toml" --dir "$work/lab" >/dev/null
dst=$("$lab" addr "$work/lab" ams-h1 | sed -n 1p)
sock() { "$lab" status "$work/lab" --json | jq -r --arg n "$1" --arg k "$2" '.nodes[] | select(.name == $n) | .[$k]'; }
active_gw() {
  "$root/target/release/overlayd" status --socket "$(sock fra-h1 overlayd_socket)" --json |
    jq -r '.peers[] | select(.active) | .name'
}
# longest_gap FILE: the longest run of lost replies in a 10 ms ping, in ms.
longest_gap() {
  awk -F'icmp_seq=' '/icmp_seq=/ { split($2, a, " "); s = a[1] + 0;
      if (have && s - last > max) max = s - last; last = s; have = 1 }
      END { printf "%d", (max > 0 ? max - 1 : 0) * 10 }' "$1"
}
gateways=(fra-gw1 fra-gw2 ams-gw1 ams-gw2 par-gw1 par-gw2)
tables() {
  for g in "${gateways[@]}"; do
    "$root/target/release/routed" routes --socket "$(sock "$g" routed_socket)" --json |
      jq -c '[.routes[] | {prefix, via: (.via | sort)}] | sort_by(.prefix)'
  done
}

# Settled: every host reached through both gateways of its site.
for _ in $(seq 200); do
  if tables | jq -s -e 'all(.[][]; .via == ["local"] or (.via | length) == 2)' >/dev/null; then break; fi
  sleep 0.1
done
gw=$(active_gw)
echo "== 1. SIGKILL of $gw (fra-h1's gateway) during a 10 ms ping to ams-h1"
before=$(tables)
"$lab" exec "$work/lab" fra-h1 -- ping -i 0.01 -w 6 "$dst" >"$work/kill.txt" &
ping_pid=$!
sleep 2
"$lab" kill "$work/lab" "$gw" --signal KILL
wait $ping_pid || true
kill_gap=$(longest_gap "$work/kill.txt")
echo "   longest gap: ${kill_gap} ms"

echo "== 3. restart $gw: time until every gateway's table is as before"
t0=$(date +%s%N)
"$lab" start "$work/lab" "$gw"
converged=
for _ in $(seq 600); do
  if [[ $(tables 2>/dev/null) == "$before" ]]; then converged=1; break; fi
  sleep 0.05
done
t1=$(date +%s%N)
[[ -n $converged ]] || { echo "tables did not converge" >&2; tables >&2; exit 1; }
converge_ms=$(( (t1 - t0) / 1000000 ))
echo "   converged in ${converge_ms} ms (includes process start and BGP sessions)"
"$lab" wait "$work/lab" >/dev/null

gw=$(active_gw)
echo "== 2. silent drop of $gw's tunnels to ams during a 10 ms ping (via par)"
"$lab" exec "$work/lab" fra-h1 -- ping -i 0.01 -w 6 "$dst" >"$work/drop.txt" &
ping_pid=$!
sleep 2
"$lab" link "$work/lab" "$gw" ams-gw1 drop
"$lab" link "$work/lab" "$gw" ams-gw2 drop
wait $ping_pid || true
drop_gap=$(longest_gap "$work/drop.txt")
echo "   longest gap: ${drop_gap} ms"
via=$("$root/target/release/routed" routes --socket "$(sock "$gw" routed_socket)" --json |
  jq -r --arg p "$dst/32" '.routes[] | select(.prefix == $p) | .via | join(",")')
echo "   $gw now reaches $dst via: $via"

"$lab" link "$work/lab" "$gw" ams-gw1 heal
"$lab" link "$work/lab" "$gw" ams-gw2 heal
"$lab" wait "$work/lab" >/dev/null

# 4. The host link.
ams_gw=$("$root/target/release/overlayd" status --socket "$(sock ams-h1 overlayd_socket)" --json |
  jq -r '.peers[] | select(.active) | .name')
others=()
for g in "${gateways[@]}"; do [[ $g == "$ams_gw" ]] || others+=("$g"); done
# via GW: the next hops GW's routed uses for ams-h1's /32.
via_of() {
  "$root/target/release/routed" routes --socket "$(sock "$1" routed_socket)" --json |
    jq -r --arg p "$dst/32" '.routes[] | select(.prefix == $p) | .via | join(",")'
}
for _ in $(seq 200); do
  all=1
  for g in "${others[@]}"; do [[ $(via_of "$g") == *"$ams_gw"* || $g == ams-* ]] || all=; done
  [[ -n $all ]] && break
  sleep 0.1
done
echo "== 4. silent drop of ams-h1's tunnel to $ams_gw during a 10 ms ping from fra-h1"
"$lab" exec "$work/lab" fra-h1 -- ping -i 0.01 -w 6 "$dst" >"$work/host.txt" &
ping_pid=$!
sleep 2
t0=$(date +%s%N)
"$lab" link "$work/lab" ams-h1 "$ams_gw" drop
withdrawn=
for _ in $(seq 600); do
  left=0
  for g in "${others[@]}"; do
    [[ $g == ams-* ]] && continue
    [[ $(via_of "$g") == *"$ams_gw"* ]] && left=1
  done
  if [[ $left == 0 ]]; then withdrawn=1; break; fi
  sleep 0.02
done
t1=$(date +%s%N)
wait $ping_pid || true
host_gap=$(longest_gap "$work/host.txt")
[[ -n $withdrawn ]] || { echo "the dead path was not withdrawn" >&2; exit 1; }
host_ms=$(( (t1 - t0) / 1000000 ))
echo "   longest gap: ${host_gap} ms; no other site's gateway forwards to $ams_gw after ${host_ms} ms"

echo
echo "failover (BFD 100 ms x 3): SIGKILL gap ${kill_gap} ms, silent-drop gap ${drop_gap} ms, table convergence after restart ${converge_ms} ms, host-link gap ${host_gap} ms (withdrawn everywhere in ${host_ms} ms)"
