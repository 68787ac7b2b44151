#!/usr/bin/env bash
# One real gateway against a swarm of simulated hosts (cubenet-swarm), in a
# network namespace of its own:
#   1. HOSTS hosts (default 10,000) attach: time after the gateway starts,
#      and again after a SIGKILL and restart of the gateway; gateway RSS and
#      memory per host.
#   2. A handshake flood from unknown keys at 10x the gateway's handshake
#      rate limit while FLOOD_HOSTS (default 100) real hosts join: cookies,
#      attach time, gateway CPU and memory.
#
#   sudo bench/swarm.sh
#   HOSTS=2000 FLOOD_HOSTS=100 RATE=1000 PROBE_MS=1000 FLOOD_SECS=10 NO_BUILD=1 sudo bench/swarm.sh
#
# RATE is the gateway's handshake_rate; the flood is ten times that.
# The simulated hosts all send from 127.0.0.1, where real hosts have
# addresses of their own, so the gateway's per-source handshake limit
# (limits.handshake_source_rate) is off unless SOURCE_RATE sets it; the
# flood does not answer cookies, so that limit would not meet it anyway.
# RESULTS=DIR keeps the two JSON results (swarm.json, flood.json) there;
# FLOOD=0 skips the flood.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
HOSTS=${HOSTS:-10000}
FLOOD_HOSTS=${FLOOD_HOSTS:-100}
RATE=${RATE:-1000}
PROBE_MS=${PROBE_MS:-1000}
FLOOD_SECS=${FLOOD_SECS:-10}
[[ $(id -u) == 0 ]] || { echo "bench/swarm.sh: needs root" >&2; exit 2; }
for pair in ip:iproute2 jq:jq; do
  command -v "${pair%%:*}" >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pair#*:}" >/dev/null
  }
done
[[ -f $HOME/.cargo/env ]] && source "$HOME/.cargo/env"
[[ -n ${NO_BUILD:-} ]] || cargo build --release --workspace --bins -q
bin=${CUBENET_BIN_DIR:-$root/target/release}
work=$(mktemp -d /tmp/cubenet-swarm.XXXXXX)
ns=cnswarm$$
trap 'ip netns del "$ns" 2>/dev/null; [[ -n ${KEEP:-} ]] || rm -rf "$work"' EXIT INT TERM
ip netns add "$ns"
ip -n "$ns" link set lo up

"$bin/overlay-cert" ca --name swarm-ca --network 10.200.0.0/16 --out-dir "$work/ca" >/dev/null
"$bin/overlay-cert" keygen --out "$work/gw.key" >/dev/null
"$bin/overlay-cert" sign --ca-dir "$work/ca" --name gw --ip 10.200.0.1/16 --site swarm \
  --role gateway --key "$work/gw.key" --out "$work/gw.crt" >/dev/null
cat >"$work/gw.toml" <<EOF
control_socket = "$work/gw.sock"
listen = ["127.0.0.1:51820"]
[identity]
key = "$work/gw.key"
cert = "$work/gw.crt"
ca = "$work/ca/ca.crt"
[limits]
handshake_rate = $RATE
handshake_source_rate = ${SOURCE_RATE:-0}
EOF
"$bin/overlayd" check --config "$work/gw.toml" >/dev/null

swarm() {
  ip netns exec "$ns" "$bin/cubenet-swarm" --ca-dir "$work/ca" --gateway 127.0.0.1:51820 \
    --gateway-cert "$work/gw.crt" --gateway-socket "$work/gw.sock" \
    --gateway-log "$work/gw.log" --probe-ms "$PROBE_MS" --misses "${MISSES:-3}" "$@" \
    -- "$bin/overlayd" run --config "$work/gw.toml"
}

echo "== $HOSTS hosts (probe every $PROBE_MS ms), then a gateway restart"
swarm --hosts "$HOSTS" --restart | tee "$work/swarm.json" | jq -c .
[[ -n ${RESULTS:-} ]] && cp "$work/swarm.json" "$RESULTS/"
[[ ${FLOOD:-1} == 0 ]] && exit 0
echo "== $FLOOD_HOSTS hosts join during a flood of $((RATE * 10)) initiations/s (rate limit $RATE/s)"
swarm --hosts "$FLOOD_HOSTS" --flood-rate $((RATE * 10)) --flood-secs "$FLOOD_SECS" | tee "$work/flood.json" | jq -c .
[[ -n ${RESULTS:-} ]] && cp "$work/flood.json" "$RESULTS/"

jq -r '"\(.hosts) hosts: all attached \(.start.all_attached_s * 100 | round / 100) s after the gateway started, \(.restart.all_attached_s * 100 | round / 100) s after a restart; gateway RSS \(.restart.gateway_rss_mib | round) MiB (peak \(.restart.gateway_peak_rss_mib | round)), \(.restart.gateway_kib_per_host * 10 | round / 10) KiB per host on the gateway, \(.swarm_kib_per_host * 10 | round / 10) KiB per simulated host"' "$work/swarm.json"
jq -r '"flood \(.flood.rate)/s for \(.flood.seconds | round) s: \(.hosts) hosts attached \(.flood.hosts_attached_s * 100 | round / 100) s after joining; gateway \(.flood.gateway_cores * 100 | round) % of a core, peak RSS \(.flood.gateway_peak_rss_mib | round) MiB; cookies sent \(.flood.gateway_drops.cookies_sent), pending full \(.flood.gateway_drops.pending_full)"' "$work/flood.json"
