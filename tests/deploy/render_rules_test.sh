#!/usr/bin/env bash
# Checks deploy/prometheus/render-rules.sh: every `for:` of alert_rules.yml is
# rewritten to the given duration, nothing else changes, and the result is
# still valid for promtool.
#
#   tests/deploy/render_rules_test.sh PROMTOOL OUTPUT_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
promtool=$1
outdir=$2
src=$here/../../deploy/prometheus
mkdir -p "$outdir"
out=$outdir/alert_rules.rendered.yml

fail() { echo "render_rules_test: $*" >&2; exit 1; }

bash "$src/render-rules.sh" 7s "$out"
want=$(grep -cE '^[[:space:]]*for:' "$src/alert_rules.yml")
[ "$want" -gt 0 ] || fail "no for: in alert_rules.yml"
got=$(grep -cE '^[[:space:]]*for: 7s$' "$out" || true)
[ "$got" -eq "$want" ] || fail "$got of $want for: rewritten to 7s in $out"
# Only the for: lines differ.
changed=$(diff "$src/alert_rules.yml" "$out" | grep -E '^[<>]' | grep -vcE '^[<>][[:space:]]*for:' || true)
[ "$changed" -eq 0 ] || fail "lines other than for: changed in $out"
# keep_firing_for untouched unless asked for.
grep -qE '^[[:space:]]*keep_firing_for: 10m$' "$out" || fail "keep_firing_for was rewritten without KEEP_FIRING_FOR"
KEEP_FIRING_FOR=0s bash "$src/render-rules.sh" 0s "$out"
if grep -E '^[[:space:]]*(for|keep_firing_for):' "$out" | grep -vqE ': 0s$'; then
  fail "KEEP_FIRING_FOR=0s left a duration other than 0s in $out"
fi
"$promtool" check rules "$out" >/dev/null || fail "promtool rejects the rendered rules $out"
# Bad input is refused, and leaves no output behind.
if bash "$src/render-rules.sh" soon "$outdir/bad.yml" 2>/dev/null; then
  fail "render-rules.sh accepted the duration 'soon'"
fi
[ ! -e "$outdir/bad.yml" ] || fail "render-rules.sh wrote output for a bad duration"
echo "render_rules_test: $want for: rewritten, rendered rules valid"
