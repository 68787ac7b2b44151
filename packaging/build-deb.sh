#!/usr/bin/env bash
# Builds the Debian package: target/debian/cubenet_VERSION-1_amd64.deb
# (under CARGO_TARGET_DIR when set), with overlayd, routed, overlay-cert,
# cubenet-lab, their systemd units, man pages, completions and example
# configurations. Installs cargo-deb first if it is missing. Prints the
# package's path last.
#
#   packaging/build-deb.sh            # build everything, then package
#   NO_BUILD=1 packaging/build-deb.sh # package what target/release holds
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0

if ! command -v cargo >/dev/null 2>&1 && [[ -f $HOME/.cargo/env ]]; then
  source "$HOME/.cargo/env"
fi
if [[ $(cargo deb --version 2>/dev/null) != *"$CARGO_DEB_VERSION"* ]]; then
  echo "== installing cargo-deb $CARGO_DEB_VERSION" >&2
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet
fi

target=${CARGO_TARGET_DIR:-target}
if [[ -z ${NO_BUILD:-} ]]; then
  echo "== cargo build --release" >&2
  cargo build --release --workspace --bins --quiet
fi
docs="$target/release/cubenet-docs.out"
rm -rf "$docs"
"$target/release/cubenet-docs" "$docs" >/dev/null
# Debian ships man pages compressed, reproducibly (no name, no time).
gzip -9n "$docs"/man/man*/*
echo "== cargo deb" >&2
deb=$(cargo deb -p cubenet --no-build --strip --quiet)
echo "$deb"
