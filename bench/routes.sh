#!/usr/bin/env bash
# A big table on one gateway, in two halves, each a test that asserts what
# it moves, run three times, printing its figure line:
# - routed: 1,000,000 host routes (500,000 dual-stack hosts) from one
#   gateway, decoded from BGP UPDATEs into its RIB, and the table it hands
#   overlayd built from that: time and memory per route;
# - the route feed moving such a table into overlayd: 1,000,000 /32 routes
#   over the control socket (full resync in chunks, then increments), time
#   and memory per route, both ends in one process.
#
#   bench/routes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for i in 1 2 3; do
  cargo test --release -q -p routed --test bigtable -- --nocapture 2>&1 | grep '^routed table:'
done
for i in 1 2 3; do
  cargo test --release -q -p overlayd --test control_socket -- --nocapture \
    a_million_routes_move_from_routed_to_overlayd 2>&1 | grep '^route feed:'
done
