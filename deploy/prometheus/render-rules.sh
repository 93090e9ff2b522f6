#!/usr/bin/env bash
# Renders alert_rules.yml with every `for:` set to one duration, for
# end-to-end tests that cannot wait for the production durations.
#
#   deploy/prometheus/render-rules.sh DURATION OUTPUT [INPUT]
#   deploy/prometheus/render-rules.sh 0s /tmp/rules.yml
#
# INPUT defaults to alert_rules.yml next to this script. With
# KEEP_FIRING_FOR=DURATION set, every `keep_firing_for:` is rewritten too
# (e.g. KEEP_FIRING_FOR=0s so alerts resolve at once).
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 DURATION OUTPUT [INPUT]" >&2
  exit 2
fi
duration=$1
output=$2
input=${3:-$(dirname "$0")/alert_rules.yml}
duration_re='^([0-9]+(ms|s|m|h|d|w|y))+$'
if ! [[ $duration =~ $duration_re ]]; then
  echo "$0: not a Prometheus duration: $duration" >&2
  exit 2
fi
expr=(-e "s/^([[:space:]]*)for:[[:space:]]*[^[:space:]#]+/\\1for: ${duration}/")
if [ -n "${KEEP_FIRING_FOR:-}" ]; then
  if ! [[ $KEEP_FIRING_FOR =~ $duration_re ]]; then
    echo "$0: KEEP_FIRING_FOR is not a Prometheus duration: $KEEP_FIRING_FOR" >&2
    exit 2
  fi
  expr+=(-e "s/^([[:space:]]*)keep_firing_for:[[:space:]]*[^[:space:]#]+/\\1keep_firing_for: ${KEEP_FIRING_FOR}/")
fi
tmp=$(mktemp "${output}.XXXXXX")
trap 'rm -f "$tmp"' EXIT
sed -E "${expr[@]}" "$input" >"$tmp"
mv "$tmp" "$output"
trap - EXIT
