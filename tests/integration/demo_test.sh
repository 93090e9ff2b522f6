#!/usr/bin/env bash
# Runs the main job once on the built binaries and checks its promise: the
# report names exactly the three stores the simulation made faulty, and no
# process of the demo outlives it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! "$root/deploy/demo.sh" --once >"$out" 2>&1; then
  echo "demo.sh --once failed:"; cat "$out"; exit 1
fi
cat "$out"
expected="Outlier locations (3): demo-store-07, demo-store-13, demo-store-19"
grep -qxF "$expected" "$out" || { echo "FAIL: expected the line: $expected"; exit 1; }
# Each faulty store is named for its fault, and only for it.
grep -E '^ +demo-store-07 +price (coffee-250g|olive-oil-1l|cheese-200g) ' "$out" | grep -q overcharge \
  || { echo "FAIL: demo-store-07 not reported as overcharging"; exit 1; }
[ "$(grep -cE '^ +demo-store-07 +price ' "$out")" -eq 3 ] || { echo "FAIL: demo-store-07 should have 3 outliers"; exit 1; }
grep -qE '^ +demo-store-13 +wait checkout .* slow' "$out" || { echo "FAIL: demo-store-13 not slow"; exit 1; }
[ "$(grep -cE '^ +demo-store-19 +compliance (fridge-temp|allergen-labels) ' "$out")" -eq 2 ] \
  || { echo "FAIL: demo-store-19 should fail exactly two checks"; exit 1; }
# Findings: the faulty stores only (and the drifting one, as a ticket); the undeclared zone as one split per
# item for HQ (not outliers); the checkout promise as unkeepable (not a
# page per store); the declared south zone and the near-misses not at all.
findings=$(sed -n '/^Findings (/,/^$/p' "$out")
out_outliers=$(sed -n '/^Outlier locations (/,/^$/p' "$out")
stores=$(echo "$findings" | awk '$3 ~ /^demo-store-/ && $1 != "drift" {print $3}' | sort -u | tr '\n' ' ')
[ "$stores" = "demo-store-07 demo-store-13 demo-store-19 " ] \
  || { echo "FAIL: findings name stores '$stores', expected exactly 07, 13 and 19"; exit 1; }
# The slowly drifting store: a low-severity drift ticket before any
# threshold, and the only store with one. A group's dispersion may trend up
# too where the simulation moved one store (the drift, the failing checks):
# whether its baseline was calm enough to see that depends on timing, so
# such a ticket is allowed, low and on those series only; never on prices.
drifting=$(echo "$findings" | awk '$1 == "drift" && $3 ~ /^demo-store-/ {print $2, $3, $4, $5}' | tr '\n' ';')
groups=$(echo "$findings" | awk '$1 == "drift" && $3 !~ /^demo-store-/ {print $2, $4, $5}')
while read -r severity family key; do
  [ -z "$severity" ] && continue
  case "$severity $family $key" in
    "low wait checkout" | "low compliance fridge-temp" | "low compliance allergen-labels") ;;
    *) echo "FAIL: a group drift ticket where nothing moved: '$severity $family $key'"; exit 1 ;;
  esac
done <<<"$groups"
[ "$drifting" = "low demo-store-16 wait checkout;" ] \
  || { echo "FAIL: expected exactly one drift ticket, for demo-store-16's checkout; got '$drifting'"; exit 1; }
if echo "$out_outliers" | grep -q demo-store-16; then
  echo "FAIL: demo-store-16 should drift inside the band, not be an outlier"; exit 1
fi
[ "$(echo "$findings" | grep -cE '^ +split +medium +6 locations +price (water-6x1.5l|yoghurt-4x125g) ')" -eq 2 ] \
  || { echo "FAIL: expected one split each for water and yoghurt in zone=north"; exit 1; }
[ "$(echo "$findings" | grep -cE '^ +unkeepable_promise +medium +chain +wait checkout ')" -eq 1 ] \
  || { echo "FAIL: expected the checkout promise to be unkeepable"; exit 1; }
echo "$findings" | grep -qE '^ +broken_promise +critical +demo-store-07 +price coffee-250g' \
  || { echo "FAIL: demo-store-07 should break the coffee list price"; exit 1; }

grep -qE '^Public board: +file://.*/board/index\.html' "$out" \
  || { echo "FAIL: demo did not print where its public board is"; exit 1; }
state=$(sed -n 's/^State and logs: *//p' "$out")
[ -n "$state" ] || { echo "FAIL: demo did not print its state directory"; exit 1; }
if pgrep -f -- "$state" >/dev/null; then
  echo "FAIL: processes of the demo still running:"; pgrep -af -- "$state"; exit 1
fi
[ ! -e "$state" ] || { echo "FAIL: demo left $state behind"; exit 1; }
echo "demo_once: report and findings name exactly the injected stores; all processes stopped"
