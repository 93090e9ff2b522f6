#!/usr/bin/env bash
# constance beside Prometheus remote write and Pushgateway on one workload,
# and constance-agent beside collectd and node-exporter at idle (issue 8).
# Installs the peers' Debian packages if missing, builds peers_bench in its
# own build directory and prints its tables (see tests/bench/RESULTS.md).
#
#   tests/bench/peers.sh                          # 1,000 x 100 x 3, every path, idle
#   tests/bench/peers.sh --locations=1000 --keys=1000 --rounds=1 --scrape_interval=30s
#   tests/bench/peers.sh --paths=constance --locations=10000 --keys=1000 --rounds=1 --idle=false
#
# Arguments are peers_bench flags (they override the defaults below).
# Environment: CONSTANCE_PEERS_BUILD_DIR (default build-peers),
# CONSTANCE_PEERS_TIMEOUT (seconds, default 5400: the whole run is bounded).
# Every server runs on loopback with an OS-chosen port; everything the run
# starts is in one process group, stopped on exit or interruption.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/lib/deps.sh
source deploy/lib/deps.sh
constance_install_deps bench

build_dir="${CONSTANCE_PEERS_BUILD_DIR:-build-peers}"
timeout_s="${CONSTANCE_PEERS_TIMEOUT:-5400}"
cmake -S . -B "$build_dir" -G Ninja >/dev/null  # RelWithDebInfo, the project default
ninja -C "$build_dir" peers_bench constance-collector constance-agent

echo "machine: $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB; $(uptime)"
# timeout(1) makes its own process group and signals all of it: peers_bench
# and every server it started (they share the group).
timeout --kill-after=30 "$timeout_s" "$build_dir/tests/bench/peers_bench" \
  --locations=1000 --keys=100 --rounds=3 --idle "$@" &
run=$!
trap 'kill -TERM -- "-$run" 2>/dev/null || true' EXIT INT TERM
status=0
wait "$run" || status=$?
trap - EXIT INT TERM
echo "after: $(uptime)"
exit "$status"
