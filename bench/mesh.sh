#!/usr/bin/env bash
# A full mesh of gateways at rest: N gateways (N/2 sites of 2 gateways, one
# host each) brought up in the lab with routed; prints the time from `up`
# to converged (up_s) and from the first daemon started to converged
# (converged_s; `up` starts the nodes one after the other, taking start_s),
# then, once settled, each gateway's idle CPU (overlayd and routed, from
# /proc over WINDOW seconds) and RSS, per gateway and per neighbour (N - 1
# per gateway).
#
#   sudo bench/mesh.sh                      # N = 10 20, both profiles
#   NS="10 20 50" PROFILES=lab NO_BUILD=1 sudo bench/mesh.sh
#
# PROFILES: "lab" (probes and BFD every 100 ms, as the lab's tests run) and
# "defaults" (overlayd's and routed's own defaults). SETTLE (5 s) after
# converging before the WINDOW (10 s) of measurement. RESULTS=FILE appends
# one JSON line per run. REFLECTORS=2: the gateways peer with two BIRD route
# reflectors instead of each other (profile names get "+rr2"; the
# reflectors' own CPU is not counted). PROBE_MS=N: probes every N ms in
# either profile. EVENTS=1: then time three events from their trigger to
# the last gateway whose overlayd table shows it (`cubenet-lab watch`): a
# host stopped (SIGTERM), the host started again (its route back), a
# gateway cut off silently (its underlay link down) and a gateway SIGKILLed
# (for both: its site's host route no longer via it on the other sites'
# gateways).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
NS=${NS:-"10 20"}
PROFILES=${PROFILES:-"lab defaults"}
SETTLE=${SETTLE:-5}
REFLECTORS=${REFLECTORS:-0}
PROBE_MS=${PROBE_MS:-}
WINDOW=${WINDOW:-10}
[[ $(id -u) == 0 ]] || { echo "bench/mesh.sh: needs root" >&2; exit 2; }
for pair in ip:iproute2 jq:jq nft:nftables; do
  command -v "${pair%%:*}" >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pair#*:}" >/dev/null
  }
done
[[ -f $HOME/.cargo/env ]] && source "$HOME/.cargo/env"
[[ -n ${NO_BUILD:-} ]] || cargo build --release --workspace --bins -q
bin=${CUBENET_BIN_DIR:-$root/target/release}
lab=$bin/cubenet-lab
hz=$(getconf CLK_TCK)
work=$(mktemp -d /tmp/cubenet-mesh.XXXXXX)
trap '"$lab" down "$work/lab" >/dev/null 2>&1 || true; [[ -n ${KEEP:-} ]] || rm -rf "$work"' EXIT INT TERM

calc() { awk "BEGIN { print $* }"; }
# event NAME PREFIX UNTIL CMD...: runs CMD once `cubenet-lab watch` has
# looked at every gateway, and prints the seconds from CMD to the last
# gateway whose table showed it.
event() {
  local name=$1 prefix=$2 until=$3 out=$work/watch.out
  shift 3
  "$lab" watch "$work/lab" "$prefix" --until "$until" --changed --timeout-s 60 >"$out" 2>&1 &
  local w=$!
  until grep -q '^ready' "$out"; do
    kill -0 "$w" 2>/dev/null || { cat "$out" >&2; exit 1; }
    sleep 0.05
  done
  local t0
  t0=$(date +%s.%N)
  "$@"
  wait "$w" || { echo "bench/mesh.sh: $name: $(tail -1 "$out")" >&2; exit 1; }
  local last round
  last=$(awk 'NF == 2 && $1 != "longest_round_ms" {print $2}' "$out" | sort -n | tail -1)
  round=$(awk '$1 == "longest_round_ms" {print $2}' "$out")
  printf '  %-16s %6.2f s to the last gateway (polled every %s ms or better)\n' \
    "$name" "$(calc "$last - $t0")" "$round"
}
# CPU ticks (user + system) of a pid, or 0 if it is gone.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

printf '%-12s %4s %8s %8s %11s %12s %10s %10s %13s %8s\n' profile N up_s start_s converged_s overlayd_mc routed_mc per_gw_mc per_neigh_mc rss_MiB
for profile in $PROFILES; do
  for n in $NS; do
    (( n % 2 == 0 && n >= 2 )) || { echo "N=$n: an even number of gateways, at least 2" >&2; exit 2; }
    spec=$work/spec.toml
    {
      echo "routed = true"
      echo "converge_timeout_s = 300"
      echo "route_reflectors = $REFLECTORS"
      if [[ $profile == lab ]]; then
        echo "probe_interval_ms = ${PROBE_MS:-100}"
        echo "bfd_interval_ms = 100"
      else
        echo "probe_interval_ms = ${PROBE_MS:-1000}"
        echo "bfd_interval_ms = 300"
      fi
      for ((s = 1; s <= n / 2; s++)); do
        printf '[[site]]\nname = "s%d"\ngateways = 2\nhosts = 1\n' "$s"
      done
    } >"$spec"
    t0=$(date +%s.%N)
    said=$("$lab" up "$spec" --dir "$work/lab")
    t1=$(date +%s.%N)
    up_s=$(calc "$t1 - $t0")
    # "... daemons started in S s, converged C s later"
    start_s=$(sed -n 's/.*daemons started in \([0-9.]*\) s.*/\1/p' <<<"$said")
    later_s=$(sed -n 's/.*converged \([0-9.]*\) s later.*/\1/p' <<<"$said")
    [[ -n $start_s && -n $later_s ]] || { echo "bench/mesh.sh: cannot read: $said" >&2; exit 1; }
    conv_s=$(calc "$start_s + $later_s")
    sleep "$SETTLE"
    mapfile -t gws < <(jq -r '.nodes[] | select(.role == "gateway") | .name' "$work/lab/lab.json")
    declare -A o0=() r0=()
    for g in "${gws[@]}"; do
      o0[$g]=$(ticks "$(cat "$work/lab/nodes/$g/overlayd.pid")")
      r0[$g]=$(ticks "$(cat "$work/lab/nodes/$g/routed.pid")")
    done
    w0=$(date +%s.%N)
    sleep "$WINDOW"
    w1=$(date +%s.%N)
    o_total=0 r_total=0 rss_total=0
    for g in "${gws[@]}"; do
      op=$(cat "$work/lab/nodes/$g/overlayd.pid")
      rp=$(cat "$work/lab/nodes/$g/routed.pid")
      o_total=$(( o_total + $(ticks "$op") - ${o0[$g]} ))
      r_total=$(( r_total + $(ticks "$rp") - ${r0[$g]} ))
      rss_total=$(( rss_total + $(rss_kib "$op") + $(rss_kib "$rp") ))
    done
    secs=$(calc "$w1 - $w0")
    count=${#gws[@]}
    # millicores per gateway: ticks / hz / seconds * 1000 / gateways
    o_mc=$(calc "$o_total / $hz / $secs * 1000 / $count")
    r_mc=$(calc "$r_total / $hz / $secs * 1000 / $count")
    gw_mc=$(calc "$o_mc + $r_mc")
    nb_mc=$(calc "$gw_mc / ($count - 1)")
    rss=$(calc "$rss_total / 1024 / $count")
    label=$profile
    (( REFLECTORS == 0 )) || label="$profile+rr$REFLECTORS"
    [[ -z $PROBE_MS ]] || label="$label/${PROBE_MS}ms"
    printf '%-12s %4d %8.1f %8.1f %11.1f %12.1f %10.1f %10.1f %13.2f %8.1f\n' \
      "$label" "$count" "$up_s" "$start_s" "$conv_s" "$o_mc" "$r_mc" "$gw_mc" "$nb_mc" "$rss"
    if [[ -n ${RESULTS:-} ]]; then
      jq -nc --arg profile "$label" --argjson n "$count" --argjson up "$up_s" \
        --argjson start "$start_s" --argjson conv "$conv_s" \
        --argjson o "$o_mc" --argjson r "$r_mc" --argjson nb "$nb_mc" --argjson rss "$rss" \
        --arg commit "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        '{profile: $profile, gateways: $n, up_s: $up, start_s: $start, converged_s: $conv,
          overlayd_mc_per_gw: $o, routed_mc_per_gw: $r,
          mc_per_neighbour: $nb, rss_mib_per_gw: $rss, commit: $commit}' >>"$RESULTS"
    fi
    if [[ -n ${EVENTS:-} ]]; then
      event "host stop" 10.77.1.11/32 gone "$lab" kill "$work/lab" s1-h1
      event "host start" 10.77.1.11/32 present "$lab" start "$work/lab" s1-h1
      # Once every gateway has both of s2's gateways as paths to s2-h1.
      both() {
        for g in s2-gw1 s2-gw2; do
          "$lab" watch "$work/lab" 10.77.2.11/32 --until "via:$g" --timeout-s 120 >/dev/null
        done
      }
      both
      # Silent: s2-gw2's underlay goes down (no RST, no ICMP): its probes.
      event "gateway silent" 10.77.2.11/32 without:s2-gw2 \
        "$lab" link "$work/lab" s2-gw2 s1-gw1 down
      "$lab" link "$work/lab" s2-gw2 s1-gw1 up
      both
      # SIGKILL: its kernel closes routed's sessions and overlayd's socket.
      event "gateway SIGKILL" 10.77.2.11/32 without:s2-gw1 \
        "$lab" kill "$work/lab" s2-gw1 --signal KILL
    fi
    "$lab" down "$work/lab" >/dev/null
    unset o0 r0
  done
done
