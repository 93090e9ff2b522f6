#!/usr/bin/env bash
# Records the streams an agent of some release sends, for the mixed-version
# tests (tests/integration/mixed_versions_test.cc). Run once per release,
# with that release's agent:
#
#   tests/data/wire/record.sh AGENT RECORDER OUT_DIR
#
# AGENT is that release's constance-agent; RECORDER is record_agent_stream
# (built from tests/integration). The agent reports one observation of each
# family, restarts on the same spool (a second stream of the same
# incarnation, sequences going on), then reports a few more. OUT_DIR gets
# agent-stream1.bin and agent-stream2.bin.
set -euo pipefail
agent=$1
recorder=$2
out=$3
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait; rm -rf "$work"' EXIT

wait_file() { for _ in $(seq 300); do [ -s "$1" ] && return 0; sleep 0.1; done; echo "no $1" >&2; return 1; }
value() { sed -n "s/^$2=//p" "$1"; }

"$recorder" "$out/agent" "$work/recorder.ready" &
recorder_pid=$!
wait_file "$work/recorder.ready"
collector=$(value "$work/recorder.ready" grpc)
cat >"$work/agent.yaml" <<YAML
location: store-17
collector: $collector
insecure: true
listen: 127.0.0.1:0
metrics_listen: 127.0.0.1:0
flush_interval: 50ms
spool_path: $work/spool.db
YAML

# Runs the agent, posts $1 (JSON), waits until the spool is empty, stops it.
run_agent() {
  rm -f "$work/agent.ready"
  "$agent" run --config="$work/agent.yaml" --ready_file="$work/agent.ready" --log_level=warn &
  local pid=$!
  pids+=("$pid")
  wait_file "$work/agent.ready"
  local http metrics
  http=$(value "$work/agent.ready" http)
  metrics=$(value "$work/agent.ready" metrics)
  curl -fsS -H 'Content-Type: application/json' -d "$1" "http://$http/v1/observations" >/dev/null
  for _ in $(seq 300); do
    if curl -fsS "http://$metrics/metrics" | grep -qx 'constance_agent_spool_depth 0'; then break; fi
    sleep 0.1
  done
  kill -TERM "$pid"
  wait "$pid"
}

run_agent '[{"key":"coffee-250g","price":{"minor_units":449,"currency":"EUR"}},
  {"key":"checkout","wait_seconds":95.5},
  {"key":"fridge-temp","check":{"passed":false,"critical":true}},
  {"key":"satisfaction","score":81}]'
run_agent '[{"key":"coffee-250g","price":{"minor_units":459,"currency":"EUR","kind":"POS"}},
  {"key":"tea-100g","price":{"minor_units":299,"currency":"EUR"}},
  {"key":"checkout","wait_seconds":120}]'
kill -TERM "$recorder_pid"
wait "$recorder_pid"
ls -la "$out"
