#!/usr/bin/env bash
# The main job: a collector and a simulated chain of 24 stores, each with its
# own agent process, on loopback. Each store reports prices, checkout waits
# and policy checks; three stores are faulty on purpose:
#   demo-store-07 overcharges three items by 10-15%,
#   demo-store-13 has a slow checkout (about 2.3x the chain's wait),
#   demo-store-19 fails its cold-chain and allergen checks.
# Two stores differ in ways that must NOT be reported: demo-store-11 sells
# one item one cent below the others, demo-store-03 is a few seconds slower.
# The report names exactly the faulty stores as outliers.
#
# The catalog also shows what the engine tells apart: the south region is a
# declared price zone (20 cents above the rest on everything, with its own
# list price), three north stores charge 10% more on water and yoghurt (an
# undeclared zone: a split per item for HQ, not outliers), and the checkout
# promise "90% served within 150 s" is one no store keeps (unkeepable: one
# finding for HQ, not a page per store). The chain keeps serving: every
# second each store reports more checkout tickets, and demo-store-16's
# queue creeps up and levels off just inside the band: a drift ticket for
# its region, never far enough off to be an outlier. The report waits for
# that ticket.
#
#   ./deploy/demo.sh          # report, then keep running until Ctrl-C
#   ./deploy/demo.sh --once   # report and exit 0 with everything stopped
#
# Environment: CONSTANCE_BIN_DIR=DIR uses binaries already built in DIR
# (no install, no build); CONSTANCE_DEMO_METRICS=HOST:PORT fixes the
# collector's /metrics address (default: a free loopback port).
set -euo pipefail
cd "$(dirname "$0")/.."

once=false
for arg in "$@"; do
  case "$arg" in
    --once) once=true ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument '$arg' (expected --once or --help)" >&2; exit 2 ;;
  esac
done

if [ -z "${CONSTANCE_BIN_DIR:-}" ]; then
  source deploy/lib/deps.sh
  constance_install_deps demo
  echo "demo: building (first run takes a few minutes)..." >&2
  # Only the three binaries, in build/ as configured (tests/run.sh shares
  # it): nothing the test command cached is changed.
  constance_configure build
  if ! cmake --build build --target constance-collector constance-agent constance \
    >build/demo-build.log 2>&1; then
    tail -40 build/demo-build.log >&2
    echo "demo.sh: the build failed; the whole log is build/demo-build.log" >&2
    exit 1
  fi
  CONSTANCE_BIN_DIR=build/bin
fi
bin=$(cd "$CONSTANCE_BIN_DIR" && pwd)
command -v curl >/dev/null || { echo "demo.sh: curl is missing (apt-get install curl)" >&2; exit 1; }

state=$(mktemp -d "${TMPDIR:-/tmp}/constance-demo.XXXXXX")
pids=()
feed_pid=""
stop_all() {
  local pid
  # The feeder first, so it does not post to agents already stopped.
  if [ -n "$feed_pid" ]; then
    kill -TERM "$feed_pid" 2>/dev/null || true
    wait "$feed_pid" 2>/dev/null || true
  fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # Give every process up to 10 s to drain and exit, then make sure.
  local deadline=$((SECONDS + 10))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
  rm -rf "$state"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Waits for a ready file (name=host:port lines) and prints the value of $2.
ready_value() {
  local file=$1 name=$2 pid=$3 deadline=$((SECONDS + 30))
  until [ -s "$file" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "demo.sh: process $pid exited before it was ready; its log:" >&2
      cat "${file%.ready}.log" >&2
      exit 1
    fi
    [ $SECONDS -lt $deadline ] || { echo "demo.sh: $file not ready after 30 s" >&2; exit 1; }
    sleep 0.05
  done
  sed -n "s/^$name=//p" "$file"
}

stores=24
regions=(north south east west)
{
  # Short windows and bins so the demo shows in a minute what a chain sees
  # over hours: waits compared over the last 20 s, drift on 1 s bins.
  echo "families:"
  echo "  wait: {window: 20s, bin: 5s}"
  echo "drift: {bin: 1s, baseline_bins: 5}"
  echo "peer_groups:"
  echo "  - {name: zone, label: region, families: [price]}"
  echo "promises:"
  echo "  prices:"
  echo "    - {key: coffee-250g, currency: EUR, list: \"4.49\"}"
  echo "    - {key: coffee-250g, currency: EUR, list: \"4.69\", where: {region: south}}"
  echo "  waits:"
  echo "    - {key: checkout, within_seconds: 150, share: 0.9, publish: true}"
  echo "  checks:"
  echo "    - {key: fridge-temp, critical: true}"
  echo "locations:"
  for i in $(seq -w 1 $stores); do
    echo "  - {id: demo-store-$i, name: \"Demo Market $i\", publish: true, labels: {brand: demo-market, region: ${regions[$((10#$i % 4))]}, format: supermarket}}"
  done
} >"$state/catalog.yaml"

mkdir -p "$state/board"
"$bin/constance-collector" --insecure --listen=127.0.0.1:0 --catalog="$state/catalog.yaml" \
  --state_dir="$state" --board_dir="$state/board" --board_every=10s \
  --metrics_listen="${CONSTANCE_DEMO_METRICS:-127.0.0.1:0}" --stats_interval=200ms \
  --evaluation_interval=300ms \
  --ready_file="$state/collector.ready" --log_level=warn >"$state/collector.log" 2>&1 &
pids+=($!)
collector=$(ready_value "$state/collector.ready" grpc "${pids[0]}")
metrics=$(ready_value "$state/collector.ready" metrics "${pids[0]}")

declare -A http
for i in $(seq -w 1 $stores); do
  loc="demo-store-$i"
  cat >"$state/$loc.yaml" <<YAML
location: $loc
labels: {brand: demo-market, region: ${regions[$((10#$i % 4))]}, format: supermarket}
collector: $collector
insecure: true
listen: 127.0.0.1:0
metrics_listen: 127.0.0.1:0
flush_interval: 50ms
spool_path: $state/$loc.spool.db
YAML
  "$bin/constance-agent" run --config="$state/$loc.yaml" --ready_file="$state/$loc.ready" \
    --log_level=warn >"$state/$loc.log" 2>&1 &
  pids+=($!)
done
for i in $(seq -w 1 $stores); do
  loc="demo-store-$i"
  http[$loc]=$(ready_value "$state/$loc.ready" http "${pids[$((10#$i))]}")
done

# The chain's catalogue: item -> list price in euro cents.
items=(milk-1l:109 bread-500g:189 coffee-250g:449 eggs-10:329 butter-250g:259 apples-1kg:279
       rice-1kg:219 pasta-500g:139 olive-oil-1l:899 yoghurt-4x125g:199 cheese-200g:349 water-6x1.5l:299)
checks=(fridge-temp allergen-labels fire-exits price-labels hand-wash cash-count)

total=0
for i in $(seq -w 1 $stores); do
  n=$((10#$i))
  loc="demo-store-$i"
  body="["
  sep=""
  for item in "${items[@]}"; do
    key=${item%%:*}
    price=${item##*:}
    if [ $n -eq 7 ]; then
      case $key in
        coffee-250g) price=$((price * 115 / 100)) ;;
        olive-oil-1l) price=$((price * 112 / 100)) ;;
        cheese-200g) price=$((price * 110 / 100)) ;;
      esac
    fi
    [ $n -eq 11 ] && [ "$key" = "pasta-500g" ] && price=$((price - 1))
    # The declared south zone: 20 cents more on everything.
    [ $((n % 4)) -eq 1 ] && price=$((price + 20))
    # The undeclared zone: three north stores, 10% more on two items.
    if { [ $n -eq 4 ] || [ $n -eq 8 ] || [ $n -eq 12 ]; } && \
       { [ "$key" = water-6x1.5l ] || [ "$key" = yoghurt-4x125g ]; }; then
      price=$((price * 110 / 100))
    fi
    body+="$sep{\"key\":\"$key\",\"price\":{\"minor_units\":$price,\"currency\":\"EUR\"}}"
    sep=","
    total=$((total + 1))
  done
  # 40 checkout tickets around 180 s; deterministic spread of +-20 s.
  for t in $(seq 1 40); do
    wait_s=$((160 + (n * 7 + t * 13) % 41))
    [ $n -eq 13 ] && wait_s=$((wait_s * 23 / 10))
    [ $n -eq 3 ] && wait_s=$((wait_s + 6))
    body+=",{\"key\":\"checkout\",\"wait_seconds\":$wait_s}"
    total=$((total + 1))
  done
  # Six results per check (enough to be compared); store 19 fails its
  # cold-chain and allergen checks five times out of six.
  for c in "${checks[@]}"; do
    for r in 1 2 3 4 5 6; do
      passed=true
      if [ $n -eq 19 ] && { [ "$c" = fridge-temp ] || [ "$c" = allergen-labels ]; } && [ $r -ne 2 ]; then
        passed=false
      fi
      body+=",{\"key\":\"$c\",\"check\":{\"passed\":$passed}}"
      total=$((total + 1))
    done
  done
  body+="]"
  if ! answer=$(curl -sS --fail-with-body -H 'Content-Type: application/json' \
      --data-binary "$body" "http://${http[$loc]}/v1/observations" 2>&1); then
    echo "demo.sh: $loc refused the observations: $answer" >&2
    exit 1
  fi
done

echo "demo: $stores stores sent $total observations to their agents; waiting for the collector" >&2
"$bin/constance" report --collector="$collector" --wait_for_observations="$total" \
  --wait_for_findings --timeout=60s >/dev/null

# Checkout tickets keep coming, 4 per store and second, with the same
# spread; demo-store-16 starts creeping after a calm 15 s (the baselines).
# A tick is a second of the feed's clock: on a busy machine a round of
# posts takes longer, and the round then carries 4 tickets for each second
# it covers, so every window still holds the samples a comparison needs.
checkout_waits() {  # store number, tick, tickets -> a JSON array of tickets
  local n=$1 tick=$2 count=$3 t w out="[" sep=""
  for ((t = 1; t <= count; t++)); do
    w=$((160 + (n * 7 + (tick * 4 + t) * 13) % 41))
    [ "$n" -eq 13 ] && w=$((w * 23 / 10))
    [ "$n" -eq 3 ] && w=$((w + 6))
    # Up a second per tick, levelling off 14 s (8%) above the chain: less
    # than the wait floor (10%), so never an outlier, but a drift.
    if [ "$n" -eq 16 ] && [ "$tick" -gt 15 ]; then
      w=$((w + (tick - 15 < 14 ? tick - 15 : 14)))
    fi
    out+="$sep{\"key\":\"checkout\",\"wait_seconds\":$w}"
    sep=","
  done
  echo "$out]"
}
feed() {
  local start=$SECONDS last=$((SECONDS - 1)) tick seconds i
  while true; do
    tick=$((SECONDS - start + 1))
    seconds=$((SECONDS - last))
    ((seconds >= 1)) || seconds=1
    ((seconds <= 5)) || seconds=5
    last=$SECONDS
    for i in $(seq -w 1 $stores); do
      curl -sS -o /dev/null --fail -H 'Content-Type: application/json' \
        --data-binary "$(checkout_waits $((10#$i)) $tick $((4 * seconds)))" \
        "http://${http[demo-store-$i]}/v1/observations" 2>>"$state/feed.log" || true
    done
    sleep 1
  done
}
feed &
feed_pid=$!
echo "demo: stores keep reporting checkout waits; waiting for demo-store-16's drift ticket" >&2
deadline=$((SECONDS + 150))
until "$bin/constance" findings --collector="$collector" --finding=drift \
    --location=demo-store-16 2>/dev/null | grep -q demo-store-16; do
  [ $SECONDS -lt $deadline ] || { echo "demo.sh: no drift ticket for demo-store-16 after 150 s" >&2; break; }
  sleep 1
done
"$bin/constance" report --collector="$collector" --wait_for_observations="$total" \
  --wait_for_findings --timeout=60s
cat <<TXT

Injected faults: demo-store-07 overcharges (coffee, olive oil, cheese),
demo-store-13 has a slow checkout, demo-store-19 fails cold-chain and
allergen checks. Not faults: demo-store-11 (one cent lower on pasta),
demo-store-03 (a few seconds slower), the declared south price zone.
For HQ: demo-store-04, -08 and -12 form an undeclared zone on water and
yoghurt (splits), and the checkout promise is unkeepable. For the region:
demo-store-16's checkout has drifted up 8% (a ticket, not a page: it is
still inside the band, so it is no outlier).

Prometheus metrics: http://$metrics/metrics
Query API:          $bin/constance report --collector=$collector
                    $bin/constance key price coffee-250g --currency=EUR --collector=$collector
Public board:       file://$state/board/index.html (rewritten every 10 s; or
                    $bin/constance publish --out=DIR --catalog=$state/catalog.yaml --collector=$collector)
Price drops:        $bin/constance price-drops --since=72h --collector=$collector
State and logs:     $state
TXT

if $once; then
  exit 0
fi
echo "Running; press Ctrl-C to stop every process." >&2
wait "${pids[0]}"
