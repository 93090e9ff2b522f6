#!/usr/bin/env bash
# Routing tests for deploy/alertmanager/alertmanager.yml: each case gives the
# labels an alert carries (as deploy/prometheus/alert_rules.yml sets them)
# and the receivers it must reach, in order.
#
#   tests/deploy/routes_test.sh [AMTOOL] [CONFIG]
#
# amtool cannot evaluate time intervals or inhibitions offline: a store page
# is listed with its pager even though the pager is muted outside its
# region's business hours (business-hours-<region>); deploy.page_e2e checks
# those hours with a real Alertmanager.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
amtool=${1:-amtool}
config=${2:-$here/../../deploy/alertmanager/alertmanager.yml}

failures=0
cases=0
# expect RECEIVERS LABEL=VALUE...
expect() {
  local want=$1
  shift
  cases=$((cases + 1))
  local got
  if ! got=$("$amtool" config routes test --config.file="$config" "$@" 2>/dev/null); then
    # amtool exits 1 only with --verify.receivers; anything else is a failure to run.
    echo "FAIL: amtool could not route {$*}" >&2
    failures=$((failures + 1))
    return
  fi
  got=$(printf '%s' "$got" | tr -d '[:space:]')
  if [ "$got" != "$want" ]; then
    echo "FAIL: {$*} went to '$got', expected '$want'" >&2
    failures=$((failures + 1))
  else
    echo "ok:   {$*} -> $want"
  fi
}

# Store findings: the region's on-call; pages also land in the region's queue.
expect north-pager,north alertname=ConstanceOutlier severity=page audience=store region=north location=store-n1 finding=outlier finding_severity=high key=coffee-250g group=zone:north id=f-1
expect north alertname=ConstanceOutlier severity=ticket audience=store region=north location=store-n1 finding=outlier finding_severity=low key=coffee-250g id=f-2
expect north-pager,north alertname=ConstanceSilentLocation severity=page audience=store region=north location=store-n3 finding=silent id=f-3
expect south-pager,south alertname=ConstanceBrokenPromise severity=page audience=store region=south location=store-s2 finding=broken_promise id=f-4
expect south alertname=ConstanceIrregularChange severity=ticket audience=store region=south location=store-s3 id=f-5
expect east alertname=ConstanceOutlier severity=ticket audience=store region=east location=store-e1 id=f-6
expect west-pager,west alertname=ConstanceOutlier severity=page audience=store region=west location=store-w1 id=f-7
# A region without its own on-call, or none: the default region receivers.
expect region-default-pager,region-default alertname=ConstanceOutlier severity=page audience=store region=islands location=store-i1 id=f-8
expect region-default alertname=ConstanceOutlier severity=ticket audience=store region= location=store-x1 id=f-9
# A location's drift is for its region, as a ticket.
expect east alertname=ConstanceDrift severity=ticket audience=region region=east location=store-e2 id=f-10
# Chain-level findings: HQ.
expect hq alertname=ConstanceSplit severity=ticket audience=hq key=coffee-250g group=chain id=f-11
expect hq alertname=ConstanceZone severity=ticket audience=hq group=chain id=f-12
expect hq alertname=ConstanceUnkeepablePromise severity=ticket audience=hq key=checkout id=f-13
expect hq alertname=ConstanceDrift severity=ticket audience=hq key=fridge-temp id=f-14
# constance's own health: SRE, pages to the pager.
expect sre-pager alertname=ConstanceCollectorDown severity=page audience=sre job=constance-collector instance=127.0.0.1:9464
expect sre-pager alertname=ConstanceFindingsNotEvaluated severity=page audience=sre
expect sre alertname=ConstanceAgentSpoolGrowing severity=ticket audience=sre location=store-s1
expect sre alertname=ConstanceCertificateExpiring severity=ticket audience=sre location=store-s1
expect sre alertname=ConstanceFindingCapSuppressing severity=ticket audience=sre
# The watchdog: only the dead-man's switch, never SRE's queue.
expect deadman alertname=ConstanceWatchdog severity=info audience=sre
# Anything unlabelled falls back to HQ.
expect hq alertname=SomethingElse

if [ "$failures" -ne 0 ]; then
  echo "routes_test: $failures of $cases routing cases failed ($config)" >&2
  exit 1
fi
echo "routes_test: all $cases routing cases passed"
