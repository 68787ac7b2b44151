#!/usr/bin/env bash
# How routed's route feed moves a large table into overlayd: 1,000,000 /32
# routes over the control socket (full resync in chunks, then increments),
# time and memory per route, both ends in one process. Runs the test that
# asserts the same moves, three times, and prints its figure line.
#
#   bench/routes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for i in 1 2 3; do
  cargo test --release -q -p overlayd --test control_socket -- --nocapture \
    a_million_routes_move_from_routed_to_overlayd 2>&1 | grep '^route feed:'
done
