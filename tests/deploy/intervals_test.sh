#!/usr/bin/env bash
# Checks deploy/alertmanager/render-intervals.py against the shipped
# alertmanager.yml: a catalog whose regions are in the zones the shipped
# intervals name passes; a region in another zone, or spread over two, fails
# naming the region and both zones; `render` changes only the location of
# the region's interval, and what it writes passes the check and amtool.
#
#   tests/deploy/intervals_test.sh AMTOOL PYTHON OUTPUT_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
amtool=$1
python=$2
outdir=$3
config=$here/../../deploy/alertmanager/alertmanager.yml
script=$here/../../deploy/alertmanager/render-intervals.py
mkdir -p "$outdir"

fail() { echo "intervals_test: $*" >&2; exit 1; }
intervals() { "$python" "$script" "$@"; }

# The shipped zones, in both of the catalog's YAML styles; a closed store
# elsewhere and an unlabelled one in the head office's zone change nothing.
catalog() {  # catalog WEST_ZONE [EXTRA_WEST_ZONE]
  cat <<YAML
locations:
  - {id: store-n1, labels: {brand: acme, region: north}, timezone: Europe/Paris}
  - {id: store-s1, labels: {brand: acme, region: south}, timezone: Europe/Paris}
  - {id: store-e1, labels: {brand: acme, region: east}, timezone: Europe/Bucharest}
  - id: store-w1
    labels: {brand: acme, region: west}
    timezone: $1
  - id: store-w2
    labels:
      region: west
    timezone: ${2:-$1}
  - {id: store-w3, labels: {region: west}, timezone: Asia/Tokyo, closed: true}
  - {id: store-x1, timezone: Europe/Paris}
YAML
}

catalog Europe/Lisbon >"$outdir/shipped.yaml"
intervals check "$outdir/shipped.yaml" "$config" >"$outdir/shipped.out" 2>&1 ||
  fail "the shipped zones do not pass: $(cat "$outdir/shipped.out")"
for region in north south east west; do
  grep -q "^ok: region $region: .* $region-pager in business-hours-$region" "$outdir/shipped.out" ||
    fail "no page of region $region checked against business-hours-$region: $(cat "$outdir/shipped.out")"
done

# expect_failure NAME MESSAGE_WORDS... : the check of $outdir/NAME.yaml fails
# (exit 1) with one line holding every word.
expect_failure() {
  local name=$1 status=0 word
  shift
  intervals check "$outdir/$name.yaml" "$config" >"$outdir/$name.out" 2>&1 || status=$?
  [ "$status" -eq 1 ] || fail "$name: exit $status, expected 1: $(cat "$outdir/$name.out")"
  local line
  line=$(grep -F "region west" "$outdir/$name.out" || true)
  for word in "$@"; do
    [[ $line == *"$word"* ]] || fail "$name: the failure does not say '$word': $(cat "$outdir/$name.out")"
  done
  echo "ok: $name: $line"
}
catalog Europe/Madrid >"$outdir/mismatch.yaml"
expect_failure mismatch "region west" Europe/Madrid Europe/Lisbon business-hours-west
catalog Europe/Lisbon Atlantic/Azores >"$outdir/span.yaml"
expect_failure span "region west" Europe/Lisbon Atlantic/Azores "several time zones"

# render: only west's location changes, and the result is valid and true.
catalog Atlantic/Azores >"$outdir/azores.yaml"
rendered=$outdir/alertmanager.rendered.yml
intervals render "$outdir/azores.yaml" "$config" -o "$rendered" ||
  fail "render refused a catalog it can render"
changes=$(diff "$config" "$rendered" | grep -E '^[<>]' || true)
want=$'<         location: Europe/Lisbon\n>         location: Atlantic/Azores'
[ "$changes" = "$want" ] || fail "render changed more than west's location: $changes"
intervals check "$outdir/azores.yaml" "$rendered" >/dev/null || fail "the rendered config fails the check"
"$amtool" check-config "$rendered" >/dev/null || fail "amtool rejects the rendered config"
# A region spread over two zones cannot be rendered, and nothing is written.
rm -f "$outdir/none.yml"
if intervals render "$outdir/span.yaml" "$config" -o "$outdir/none.yml" 2>/dev/null; then
  fail "render accepted a region spanning two time zones"
fi
[ ! -e "$outdir/none.yml" ] || fail "render wrote output for a catalog it refused"
echo "intervals_test: the shipped intervals match their catalog; mismatches fail naming both zones"
