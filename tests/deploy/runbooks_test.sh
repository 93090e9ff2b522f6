#!/usr/bin/env bash
# Every alert in deploy/prometheus/alert_rules.yml links its own runbook,
# deploy/runbooks/<alert>.md, which exists and has the expected sections.
#
#   tests/deploy/runbooks_test.sh [SOURCE_DIR]
set -uo pipefail
src=${1:-$(cd "$(dirname "$0")/../.." && pwd)}
rules=$src/deploy/prometheus/alert_rules.yml
books=$src/deploy/runbooks
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

alerts=$(sed -nE 's/^[[:space:]]*- alert:[[:space:]]*([A-Za-z0-9_]+).*/\1/p' "$rules" | sort -u)
[ -n "$alerts" ] || fail "no alert found in $rules"
for a in $alerts; do
  # Each rule of the alert (some have a page and a ticket rule) links it.
  nrules=$(grep -cE "^[[:space:]]*- alert:[[:space:]]*$a\$" "$rules")
  nlinks=$(grep -cE "runbook_url:[[:space:]]*https://constance.example/runbooks/$a\.md\$" "$rules")
  [ "$nrules" -eq "$nlinks" ] || fail "$a: $nrules rule(s) but $nlinks runbook_url to runbooks/$a.md"
  f=$books/$a.md
  if [ ! -f "$f" ]; then
    fail "$a: no runbook $f"
    continue
  fi
  for section in "## What it means" "## Who acts" "## First checks" "## Silencing"; do
    grep -qxF "$section" "$f" || fail "$a: runbook lacks '$section'"
  done
done
# Every runbook_url points to an existing runbook, and no runbook is orphaned.
for u in $(sed -nE 's/.*runbook_url:[[:space:]]*https:\/\/constance.example\/runbooks\/([^[:space:]]+).*/\1/p' "$rules" | sort -u); do
  [ -f "$books/$u" ] || fail "runbook_url to missing runbooks/$u"
done
grep -cE 'runbook_url:' "$rules" | { read -r n; [ "$n" -eq "$(grep -cE '^[[:space:]]*- alert:' "$rules")" ]; } \
  || fail "an alert rule has no runbook_url"
for f in "$books"/*.md; do
  a=$(basename "$f" .md)
  # A here-string, not a pipe: grep -q exits at its first match, and under
  # pipefail the writer's SIGPIPE would count as no match.
  grep -qxF "$a" <<<"$alerts" || fail "runbook $f matches no alert"
done

if [ "$failures" -ne 0 ]; then
  echo "runbooks_test: $failures problem(s)" >&2
  exit 1
fi
echo "runbooks_test: $(printf '%s\n' $alerts | wc -l) alerts, each with its runbook"
