#!/usr/bin/env bash
# The cubenet demo: 3 sites x 2 gateways x 2 hosts in network namespaces on
# this machine, with routed on every gateway and a BIRD router at fra.
#
#   sudo examples/demo.sh           # runs every step, then tears the lab down
#   sudo examples/demo.sh --keep    # leaves the lab up for exploring
#
# On a fresh Debian machine it installs what is missing (Debian packages,
# the Rust toolchain) and builds first. Every step checks its result and the
# script fails loudly if one does not hold.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
keep=
for a in "$@"; do
  case $a in
    --keep) keep=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $a (try --keep)" >&2; exit 2 ;;
  esac
done
[[ $(id -u) == 0 ]] || { echo "demo.sh: run as root (namespaces, TUN devices)" >&2; exit 2; }

missing=()
for pair in ip:iproute2 nft:nftables ping:iputils-ping curl:curl jq:jq bird:bird2 cc:gcc; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends ca-certificates "${missing[@]}" >/dev/null
fi
[[ -f $HOME/.cargo/env ]] && source "$HOME/.cargo/env"
if ! command -v cargo >/dev/null 2>&1; then
  echo "== installing the Rust toolchain (rustup)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  source "$HOME/.cargo/env"
fi
if [[ -z ${NO_BUILD:-} ]]; then
  echo "== building (release)"
  cargo build --release --workspace --bins -q
fi
bin=$root/target/release
lab=$bin/cubenet-lab
D=${CUBENET_DEMO_DIR:-/tmp/cubenet-demo}
t0=$SECONDS

teardown() {
  [[ -n $keep ]] && return
  "$lab" down "$D" >/dev/null 2>&1 || true
}
trap teardown EXIT
trap 'exit 130' INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
sock() { "$lab" status "$D" --json | jq -r --arg n "$1" --arg k "$2" '.nodes[] | select(.name == $n) | .[$k]'; }
x() { local n=$1; shift; "$lab" exec "$D" "$n" -- "$@"; }
addr() { "$lab" addr "$D" "$1" | sed -n 1p; }
fail() { echo "demo: $*" >&2; exit 1; }

"$lab" down "$D" >/dev/null 2>&1 || true
mkdir -p "$D"
cat >"$D/spec.toml" <<'EOF'
routed = true
bfd_interval_ms = 100
[[site]]
name = "fra"
gateways = 2
hosts = 2
bird = true
[[site]]
name = "ams"
gateways = 2
hosts = 2
[[site]]
name = "par"
gateways = 2
hosts = 2
EOF

step "1. three sites, two gateways and two hosts each, a BIRD router at fra"
"$lab" up "$D/spec.toml" --dir "$D"
"$lab" status "$D" --json | jq -r '.nodes[] | "  \(.name)\t\(.role)\t\(.addresses | join(" "))"'

step "2. routed on fra-gw1: neighbours (BGP inside the tunnels, BFD with the site router) and routes"
"$bin/routed" status --socket "$(sock fra-gw1 routed_socket)" || fail "a neighbour of fra-gw1 is not established"
"$bin/routed" routes --socket "$(sock fra-gw1 routed_socket)"

step "3. every host reaches the others across sites (IPv4 and IPv6)"
for from in fra-h1 ams-h2 par-h1; do
  for to in fra-h2 ams-h1 par-h2; do
    [[ ${from%-*} == "${to%-*}" ]] && continue
    for dst in $("$lab" addr "$D" "$to"); do
      x "$from" ping -c 1 -W 2 -q "$dst" >/dev/null || fail "$from cannot reach $to ($dst)"
      printf '  %-7s -> %-7s %-12s ok\n' "$from" "$to" "$dst"
    done
  done
done
x ams-h1 ping -c 1 -W 2 -q 192.168.1.1 >/dev/null || fail "ams-h1 cannot reach the LAN behind fra's router"
echo "  ams-h1  -> 192.168.1.1 (behind fra's BIRD router) ok"

step "4. a 10 ms ping fra-h1 -> ams-h1 while the gateway it uses is SIGKILLed"
gw=$("$bin/overlayd" status --socket "$(sock fra-h1 overlayd_socket)" --json | jq -r '.peers[] | select(.active) | .name')
x fra-h1 ping -i 0.01 -w 4 "$(addr ams-h1)" >"$D/ping-kill.txt" &
ping_pid=$!
sleep 1.5
"$lab" kill "$D" "$gw" --signal KILL
echo "  killed $gw"
wait $ping_pid || true
gap=$(awk -F'icmp_seq=' '/icmp_seq=/ { split($2, a, " "); s = a[1] + 0;
  if (have && s - last > max) max = s - last; last = s; have = 1 }
  END { printf "%d", (max > 0 ? max - 1 : 0) * 10 }' "$D/ping-kill.txt")
tail -2 "$D/ping-kill.txt" | sed 's/^/  /'
echo "  longest gap: ${gap} ms (probes every 100 ms, 3 missed: tunnel down)"
((gap <= 1000)) || fail "the flow stopped for ${gap} ms"
"$lab" start "$D" "$gw"
"$lab" wait "$D" >/dev/null

step "5. the tunnel ams-gw1 <-> par-gw1 flaps: link damping suppresses it"
# Either end may suppress first (each damps its own view of the link).
nb() {
  local me=$1 peer=$2
  { "$bin/routed" status --socket "$(sock "$me" routed_socket)" --json || true; } |
    jq -c --arg p "$peer" '.neighbors[] | select(.name == $p) | {state, flaps, penalty, suppressed}'
}
suppressed() { [[ $(nb ams-gw1 par-gw1) == *'"suppressed":true'* || $(nb par-gw1 ams-gw1) == *'"suppressed":true'* ]]; }
for i in 1 2 3 4 5; do
  "$lab" link "$D" ams-gw1 par-gw1 drop
  for _ in $(seq 40); do [[ $(nb ams-gw1 par-gw1) == *'"state":"established"'* ]] || break; sleep 0.05; done
  "$lab" link "$D" ams-gw1 par-gw1 heal
  echo "  flap $i: ams-gw1 sees par-gw1 $(nb ams-gw1 par-gw1)"
  suppressed && break
  for _ in $(seq 60); do [[ $(nb ams-gw1 par-gw1) == *'"state":"established"'* ]] && break; sleep 0.05; done
done
suppressed || fail "the flapping link was not suppressed"
echo "  par-gw1 sees ams-gw1 $(nb par-gw1 ams-gw1)"
{ "$bin/routed" status --socket "$(sock ams-gw1 routed_socket)" || true; } | sed -n '1,2p;/^par-gw1/,+1p'
echo "  ams-gw1 now reaches par-h1 via: $("$bin/routed" routes --socket "$(sock ams-gw1 routed_socket)" --json |
  jq -r --arg p "$(addr par-h1)/32" '.routes[] | select(.prefix == $p) | .via | join(", ")')"

step "6. a firewall on ams-h2: ping only from site fra; explain shows why"
cfg=$(sock ams-h2 overlayd_config)
cat >>"$cfg" <<'EOF'

[firewall]
inbound_default = "deny"
[[firewall.inbound]]
action = "allow"
proto = "icmp"
from = ["site:fra"]
EOF
"$lab" kill "$D" ams-h2 --signal HUP
for _ in $(seq 100); do
  [[ $("$bin/overlayd" status --socket "$(sock ams-h2 overlayd_socket)" --json | jq .firewall.enabled) == true ]] && break
  sleep 0.05
done
x fra-h1 ping -c 3 -i 0.5 -W 1 -q "$(addr ams-h2)" >/dev/null || x fra-h1 ping -c 2 -W 1 -q "$(addr ams-h2)" >/dev/null ||
  fail "fra-h1 should reach ams-h2"
echo "  fra-h1 -> ams-h2: allowed"
if x par-h1 ping -c 3 -i 0.5 -W 1 -q "$(addr ams-h2)" >/dev/null; then fail "par-h1 should be denied"; fi
echo "  par-h1 -> ams-h2: denied"
"$bin/overlayd" firewall explain --config "$cfg" --from "$(addr par-h1)" \
  --from-cert "$(sock par-h1 cert)" --to "$(addr ams-h2)" --proto icmp | sed 's/^/  /'
"$bin/overlayd" firewall explain --config "$cfg" --from "$(addr fra-h1)" \
  --from-cert "$(sock fra-h1 cert)" --to "$(addr ams-h2)" --proto icmp | sed 's/^/  /'

step "7. par-h2 is revoked: gateways reload the revocation list and cut it off"
x fra-h1 ping -c 1 -W 2 -q "$(addr par-h2)" >/dev/null || fail "par-h2 should answer before"
"$bin/overlay-cert" revoke --ca-dir "$D/ca" --crl "$D/crl" "$(sock par-h2 cert)"
for n in par-gw1 par-gw2; do "$lab" kill "$D" "$n" --signal HUP; done
if x fra-h1 ping -c 2 -W 1 -q "$(addr par-h2)" >/dev/null; then fail "revoked par-h2 still answers"; fi
echo "  fra-h1 -> par-h2: no answer (revoked)"

echo
echo "demo finished in $((SECONDS - t0)) s"
if [[ -n $keep ]]; then
  cat <<EOF

The lab is still up in $D. Try:
  $lab status $D
  $lab exec $D fra-h1 -- ping $(addr par-h1)
  $bin/routed status --socket $(sock ams-gw1 routed_socket)
  $bin/routed routes --socket $(sock ams-gw1 routed_socket)
  $bin/overlayd status --socket $(sock fra-h1 overlayd_socket)
  $lab link $D fra-gw1 par-gw1 drop        # then: heal
  $lab kill $D ams-gw2 --signal KILL       # then: $lab start $D ams-gw2
  $lab exec $D fra-bird -- birdc -s $(sock fra-bird overlayd_socket) show route
Remove it with: $lab down $D
EOF
fi
