#!/usr/bin/env bash
# Every dashboard query against a real Prometheus scraping the running demo
# (with the recording rules loaded): each must parse and return data.
#
#   live_test.sh BIN_DIR
# Ports are chosen by the OS; every process started here is stopped here.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$1
work=$(mktemp -d "${TMPDIR:-/tmp}/constance-live.XXXXXX")
demo_pid="" prom_pid=""
cleanup() {
  [ -n "$prom_pid" ] && kill "$prom_pid" 2>/dev/null && wait "$prom_pid" 2>/dev/null || true
  # The demo stops all its processes on SIGTERM.
  [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null && wait "$demo_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

CONSTANCE_BIN_DIR=$bin "$root/deploy/demo.sh" >"$work/demo.out" 2>&1 &
demo_pid=$!
deadline=$((SECONDS + 240))
until grep -q '^Prometheus metrics' "$work/demo.out"; do
  kill -0 "$demo_pid" 2>/dev/null || { echo "FAIL: the demo exited:"; cat "$work/demo.out"; exit 1; }
  [ $SECONDS -lt $deadline ] || { echo "FAIL: the demo did not report within 240 s"; exit 1; }
  sleep 0.2
done
metrics=$(sed -n 's|^Prometheus metrics: http://\(.*\)/metrics|\1|p' "$work/demo.out")

cat >"$work/prometheus.yml" <<YAML
global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}
rule_files: ["$root/deploy/prometheus/recording_rules.yml"]
scrape_configs:
  - job_name: constance-collector
    static_configs: [{targets: ["$metrics"]}]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address=127.0.0.1:0 >"$work/prometheus.log" 2>&1 &
prom_pid=$!
# Prometheus does not report the port it was given: read it from the socket table.
prom=""
until [ -n "$prom" ]; do
  kill -0 "$prom_pid" 2>/dev/null || { echo "FAIL: prometheus exited:"; cat "$work/prometheus.log"; exit 1; }
  [ $SECONDS -lt $deadline ] || { echo "FAIL: prometheus is not listening"; exit 1; }
  prom=$(ss -ltnpH 2>/dev/null | grep "pid=$prom_pid," | grep -o '127.0.0.1:[0-9]*' | head -1 || true)
  [ -n "$prom" ] || sleep 0.2
done

query() {
  curl -s --get --data-urlencode "query=$1" "http://$prom/api/v1/query" |
    python3 -c 'import json, sys
d = json.load(sys.stdin)
print(len(d["data"]["result"]) if d.get("status") == "success" else "error: " + d.get("error", ""))'
}
# Wait for enough scrapes for rates over a minute and for the recording rules.
ready_by=$((SECONDS + 120))
until [ "$(query 'count(count_over_time(up{job="constance-collector"}[1m]) >= 20)')" = 1 ] &&
      [ "$(query 'finding:constance_findings_active:sum')" != 0 ]; do
  [ $SECONDS -lt $ready_by ] || { echo "FAIL: prometheus has no data after 120 s"; cat "$work/prometheus.log"; exit 1; }
  sleep 1
done

python3 "$root/tests/dashboards/queries.py" --var location=demo-store-07 --var family=price \
  --var key=coffee-250g --with-source >"$work/queries.txt"
# Rule groups evaluate on their own schedules: a query that is still empty
# is retried until one shared deadline before it counts as a failure.
answer_by=$((SECONDS + 90))
total=0 empty=0
while IFS=$'\t' read -r file panel title expr; do
  total=$((total + 1))
  n=$(query "$expr")
  while { [ "$n" = 0 ] || [[ "$n" == error* ]]; } && [ $SECONDS -lt $answer_by ]; do
    sleep 1
    n=$(query "$expr")
  done
  if [ "$n" = 0 ] || [[ "$n" == error* ]]; then
    empty=$((empty + 1))
    echo "FAIL: $file panel $panel ($title): $n: $expr"
  fi
done <"$work/queries.txt"
echo "dashboards live: $((total - empty)) of $total queries returned data"
[ "$total" -gt 0 ] || { echo "FAIL: no dashboard query was read"; exit 1; }
[ "$empty" -eq 0 ]
