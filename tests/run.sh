#!/usr/bin/env bash
# Runs the whole cubenet test suite: formatting, lints, unit and property
# tests, and the end-to-end tests in network namespaces (as root).
#
# On a fresh Debian machine as root it first installs what is missing: the
# Debian packages the tests drive and, if there is no cargo, a Rust toolchain.
#
#   sudo tests/run.sh            # everything
#   tests/run.sh -- <filter>     # pass a test-name filter to cargo test
#
# CUBENET_REQUIRE_NETNS=1 makes namespace tests fail instead of skipping
# when they cannot run (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."

# command:package pairs the suite needs.
needs=(
  ip:iproute2
  nft:nftables
  ping:iputils-ping
  curl:curl
  wireguard-go:wireguard-go
  wg:wireguard-tools
  iperf3:iperf3
  traceroute:traceroute
  tracepath:iputils-tracepath
  bird:bird2
  gobgpd:gobgpd
  vtysh:frr
  jq:jq
  systemd-analyze:systemd
  man:man-db
  groff:groff-base
  zsh:zsh
  fish:fish
  promtool:prometheus
  debootstrap:debootstrap
  lintian:lintian
  chromium:chromium
)
missing=()
for pair in "${needs[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "== installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "warning: missing packages (${missing[*]}); run as root to install them" >&2
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  [[ -f $HOME/.cargo/env ]] && source "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "== installing the Rust toolchain (rustup)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
  source "$HOME/.cargo/env"
fi

filter=()
if [[ ${1:-} == -- ]]; then
  shift
  filter=("$@")
fi

start=$SECONDS
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== build"
cargo build --workspace --release --bins
echo "== tests"
cargo test --workspace --release -- "${filter[@]}"
echo "== all tests passed in $((SECONDS - start)) s"
