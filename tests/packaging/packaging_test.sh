#!/usr/bin/env bash
# Tests the systemd units and the Debian packages of constance.
#
#   packaging_test.sh SOURCE_DIR BUILD_DIR CPACK
#
# 1. Units: `systemd-analyze verify` wherever it is installed (it runs
#    offline, without systemd as PID 1), failing on any warning it prints
#    (an unknown or misspelt key is only a warning to it), and always a
#    structural check (sections and required keys). Secure defaults: the
#    exposure score of `systemd-analyze security --offline=true` (printed)
#    at most 2.0 for each unit, the collector started with mTLS only
#    (check-tls refuses to start without the files, naming them and
#    pki.sh), LimitNOFILE above --max_streams, and the packaged agent.yaml
#    with a tls block and no insecure.
# 2. Packages: cpack builds constance-agent and constance-collector .debs
#    from the already built BUILD_DIR into a temporary directory.
# 3. As root only: installs both, checks the binaries, users, configs and
#    that the agent and collector start as their users with the packaged
#    configs, rehearses an upgrade to the next state format and its
#    rollback (4.), then purges both and checks binaries and users are gone.
# Whatever happens, the trap purges what this script installed.
set -euo pipefail

src=$1
build=$2
cpack=$3
units=(constance-agent constance-collector)

tmp=$(mktemp -d)
chmod 0711 "$tmp"  # the services' users write their ready files below it
installed=0
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$installed" = 1 ]; then
    dpkg --purge "${units[@]}" >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fail() { echo "FAIL: $*" >&2; exit 1; }
# A check that cannot run here is reported; skip_rest ends the script
# with 77, which ctest counts as skipped (SKIP_RETURN_CODE), never passed,
# and so does the end of a script that skipped any check.
# In CI (CI=true) every check must run: a skip there fails the test.
skipped=0
skip() {
  [ "${CI:-}" != true ] || fail "in CI every check must run, but: $*"
  echo "SKIP: $*"
  skipped=1
}
skip_rest() {
  skip "$@"
  exit 77
}

# waits up to 10 s for file $1 to be non-empty while process $2 lives.
wait_for_file() {
  local i
  for i in $(seq 100); do
    [ -s "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# --- 1. Units -------------------------------------------------------------

for u in "${units[@]}"; do
  f=$src/deploy/systemd/$u.service
  [ -f "$f" ] || fail "$f missing"
  for section in '[Unit]' '[Service]' '[Install]'; do
    grep -qxF "$section" "$f" || fail "$u.service: no $section section"
  done
  for key in Description= "User=$u" "Group=$u" ExecStart=/usr/bin/ \
             'ExecReload=/bin/kill -HUP $MAINPID' Restart=on-failure \
             ProtectSystem=strict ProtectHome=yes PrivateTmp=yes NoNewPrivileges=yes \
             "StateDirectory=$u" ConfigurationDirectory=constance \
             'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' \
             ProtectKernelTunables=yes ProtectKernelModules=yes ProtectControlGroups=yes \
             RestrictNamespaces=yes LockPersonality=yes MemoryDenyWriteExecute=yes \
             SystemCallArchitectures=native WantedBy=multi-user.target; do
    grep -q "^${key}" "$f" || fail "$u.service: no line starting with '$key'"
  done
  grep -qx 'CapabilityBoundingSet=' "$f" || fail "$u.service: CapabilityBoundingSet= is not empty"
done
grep -qx 'ExecStart=/usr/bin/constance-agent run --config=/etc/constance/agent.yaml' \
  "$src/deploy/systemd/constance-agent.service" || fail "agent: unexpected ExecStart"
collector_unit=$src/deploy/systemd/constance-collector.service
grep -qx 'ExecStart=/usr/bin/constance-collector --catalog=/etc/constance/catalog.yaml --state_dir=/var/lib/constance-collector --tls_ca=/etc/constance/tls/ca.pem --tls_crl_dir=/etc/constance/tls/crl --tls_cert=/etc/constance/tls/collector.pem --tls_key=/etc/constance/tls/collector.key' \
  "$collector_unit" || fail "collector: unexpected ExecStart (mTLS from /etc/constance/tls expected)"
grep -qx 'ExecStartPre=/usr/lib/constance-collector/check-tls /etc/constance/tls' "$collector_unit" \
  || fail "collector: no check-tls ExecStartPre"
grep -q -- '--insecure' "$collector_unit" && fail "collector unit: --insecure in the packaged unit"
nofile=$(sed -n 's/^LimitNOFILE=//p' "$collector_unit")
max_streams=$(sed -n 's/.*ABSL_FLAG(int64_t, max_streams, \([0-9'"'"']*\),.*/\1/p' "$src/collector/main.cc" | tr -d "'")
[ -n "$nofile" ] && [ -n "$max_streams" ] && [ "$nofile" -ge $((max_streams + 1024)) ] \
  || fail "collector: LimitNOFILE=$nofile does not fit --max_streams=$max_streams plus files"
grep -qx 'ReadWritePaths=-/var/spool/constance-agent' "$src/deploy/systemd/constance-agent.service" \
  || fail "agent: the drop directory is not writable in the sandbox (ReadWritePaths)"
agent_yaml=$src/deploy/packaging/agent.yaml
grep -qx 'tls:' "$agent_yaml" || fail "packaged agent.yaml has no tls: block"
grep -q '^insecure:' "$agent_yaml" && fail "packaged agent.yaml sets insecure"
echo "ok: unit files have their sections and keys; mTLS by default; LimitNOFILE=$nofile"

# check-tls names what is missing and how to make it, and passes once there.
tls=$tmp/tls
mkdir "$tls"
if out=$(sh "$src/deploy/packaging/check-tls.sh" "$tls" 2>&1); then
  fail "check-tls passed on an empty directory"
fi
for want in "$tls/ca.pem" "$tls/collector.pem" "$tls/collector.key" "$tls/crl" \
            "pki.sh init" "pki.sh issue"; do
  grep -qF -- "$want" <<<"$out" || fail "check-tls does not name '$want': $out"
done
touch "$tls/ca.pem" "$tls/collector.pem" "$tls/collector.key"
mkdir "$tls/crl"
sh "$src/deploy/packaging/check-tls.sh" "$tls" || fail "check-tls refused complete files"
echo "ok: check-tls refuses without certificates, naming the files and pki.sh"

verify_units() {
  # systemd-analyze verify also checks that ExecStart's binary exists.
  local out
  out=$(systemd-analyze verify "$@" 2>&1) || fail "systemd-analyze verify $*: $out"
  [ -z "$out" ] || fail "systemd-analyze verify $* printed warnings: $out"
  echo "ok: systemd-analyze verify $*"
}
systemd_here=0
if ! command -v systemd-analyze >/dev/null 2>&1; then
  skip "systemd-analyze verify: systemd-analyze is not installed"
else
  systemd_here=1
  # Before installing, point ExecStart at the build tree's binaries.
  mkdir "$tmp/units"
  for u in "${units[@]}"; do
    sed -e "s#/usr/bin/#$build/bin/#" \
        -e "s#/usr/lib/constance-collector/check-tls#$src/deploy/packaging/check-tls.sh#" \
        "$src/deploy/systemd/$u.service" > "$tmp/units/$u.service"
  done
  verify_units "$tmp/units/constance-agent.service" "$tmp/units/constance-collector.service"
  # The exposure score (0 safest .. 10), at most 2.0 per unit.
  for u in "${units[@]}"; do
    out=$(systemd-analyze security --offline=true "$tmp/units/$u.service" 2>&1) \
      || fail "systemd-analyze security $u: $out"
    score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
    [ -n "$score" ] || fail "systemd-analyze security $u printed no score: $out"
    echo "exposure: $u.service $score"
    awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' \
      || fail "$u.service exposure $score is above 2.0: $(grep '✗' <<<"$out")"
  done
  echo "ok: systemd-analyze security rates both units at most 2.0"
fi

# --- 2. Packages ----------------------------------------------------------

for b in constance-agent constance-collector constance; do
  [ -x "$build/bin/$b" ] || fail "$build/bin/$b not built (ninja -C $build $b)"
done
"$cpack" --config "$build/CPackConfig.cmake" -B "$tmp/deb" >"$tmp/cpack.log" 2>&1 \
  || { cat "$tmp/cpack.log" >&2; fail "cpack"; }
agent_deb=$(ls "$tmp"/deb/constance-agent_*.deb 2>/dev/null) || fail "no constance-agent .deb"
collector_deb=$(ls "$tmp"/deb/constance-collector_*.deb 2>/dev/null) || fail "no constance-collector .deb"
echo "ok: built $(basename "$agent_deb") $(basename "$collector_deb")"

# contents: which package holds what, conffiles, maintainer scripts, dependencies.
check_deb() {
  local deb=$1 pkg=$2 conffile=$3
  shift 3
  local listing
  listing=$(dpkg-deb -c "$deb")
  for path in "$@" "/lib/systemd/system/$pkg.service" "$conffile"; do
    grep -q " \.${path}\$" <<<"$listing" || fail "$pkg: $path not in the package"
  done
  [ "$(dpkg-deb -f "$deb" Package)" = "$pkg" ] || fail "$pkg: wrong Package field"
  dpkg-deb -e "$deb" "$tmp/ctl-$pkg"
  grep -qx "$conffile" "$tmp/ctl-$pkg/conffiles" || fail "$pkg: $conffile is not a conffile"
  for s in postinst postrm; do
    [ -x "$tmp/ctl-$pkg/$s" ] || fail "$pkg: no executable $s"
  done
  local depends
  depends=$(dpkg-deb -f "$deb" Depends)
  grep -q 'libc6' <<<"$depends" || fail "$pkg: Depends has no shlibdeps result: $depends"
  grep -q 'adduser' <<<"$depends" || fail "$pkg: Depends lacks adduser: $depends"
}
check_deb "$agent_deb" constance-agent /etc/constance/agent.yaml /usr/bin/constance-agent
check_deb "$collector_deb" constance-collector /etc/constance/catalog.yaml \
  /usr/bin/constance-collector /usr/bin/constance
dpkg-deb -c "$agent_deb" | grep -q 'usr/bin/constance$' && fail "constance CLI is in the agent package"
echo "ok: package contents, conffiles, maintainer scripts, Depends"

# --- 4. Upgrade and rollback (README, "Upgrading"), called from 3. --------
# With the packages of this tree installed: a collector (as its user) and
# an agent feed the state directory; then, as README says, stop, copy the
# state, install packages whose collector writes the next state format (a
# rehearsal build of this tree, CONSTANCE_NEXT_STATE_FORMAT), start: the
# figures are the same. Then roll back: the old collector refuses the new
# format and leaves it untouched; restore the copy, reinstall the old
# packages, start: the figures are the same again.

state=/var/lib/constance-collector
as_collector=(setpriv --reuid=constance-collector --regid=constance-collector --clear-groups --)
collector_pid=""
collector_addr=""
start_collector() {  # start_collector NAME
  rm -f "$tmp/run/$1.ready"
  "${as_collector[@]}" /usr/bin/constance-collector --catalog=/etc/constance/catalog.yaml \
    --state_dir=$state --insecure --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 \
    --stats_interval=100ms --ready_file="$tmp/run/$1.ready" >"$tmp/$1.log" 2>&1 &
  collector_pid=$!
  pids+=("$collector_pid")
  wait_for_file "$tmp/run/$1.ready" "$collector_pid" \
    || { cat "$tmp/$1.log" >&2; fail "$1: the collector did not start"; }
  collector_addr=$(sed -n 's/^grpc=//p' "$tmp/run/$1.ready")
}
stop() {  # stop PID: SIGTERM, a clean exit expected
  kill -TERM "$1"
  wait "$1" || fail "process $1 exited $? on SIGTERM"
  local p kept=()
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || kept+=("$p"); done
  pids=("${kept[@]}")
}
# What the collector holds: cells, statistics, counts, the location's
# values. Not when it last computed or evaluated, nor trust (which an
# evaluation of a new location adds; GoldenStateTest compares trust).
figures() {
  /usr/bin/constance report --collector="$collector_addr" --json --wait_for_observations=4 \
    --timeout=20s >"$tmp/report.json" || fail "constance report"
  python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
for k in ("computed_at", "evaluated_at", "trust"):
    r.pop(k, None)
print(json.dumps(r, indent=1, sort_keys=True))' "$tmp/report.json" || fail "reading the report"
  /usr/bin/constance location rehearsal-store --collector="$collector_addr" --json \
    >"$tmp/location.json" || fail "constance location"
  # The 30-day record's window starts 30 days before the question: its
  # counts are figures, its start is not.
  python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
r.get("record", {}).pop("since", None)
print(json.dumps(r, indent=1, sort_keys=True))' "$tmp/location.json" || fail "reading the location"
}

rehearse_upgrade() {
  # Beside BUILD_DIR and configured as it was, so that the compiler cache
  # (paths relative to the build directory) serves all but engine_state.cc.
  local next=${build%/}-rehearsal werror
  werror=$(sed -n 's/^CONSTANCE_WERROR:BOOL=//p' "$build/CMakeCache.txt")
  cmake -S "$src" -B "$next" -G Ninja -DCONSTANCE_NEXT_STATE_FORMAT=ON \
    -DCONSTANCE_WERROR="${werror:-OFF}" \
    -DCONSTANCE_PACKAGE_VERSION_SUFFIX=+next -DCONSTANCE_BUILD_TESTS=OFF \
    -DCONSTANCE_BUILD_BENCHMARKS=OFF >"$tmp/next-build.log" 2>&1 \
    && cmake --build "$next" --target constance-agent constance-collector constance \
      >>"$tmp/next-build.log" 2>&1 \
    && "$cpack" --config "$next/CPackConfig.cmake" -B "$tmp/deb-next" >>"$tmp/next-build.log" 2>&1 \
    || { tail -40 "$tmp/next-build.log" >&2; fail "the rehearsal build of the next state format"; }
  local next_collector_deb
  next_collector_deb=$(ls "$tmp"/deb-next/constance-collector_*+next_*.deb 2>/dev/null) \
    || fail "no rehearsal constance-collector .deb"

  start_collector before
  cat >"$tmp/rehearsal-agent.yaml" <<YAML
location: rehearsal-store
collector: $collector_addr
insecure: true
listen: 127.0.0.1:0
metrics_listen: 127.0.0.1:0
flush_interval: 50ms
spool_path: /var/lib/constance-agent/rehearsal-spool.db
YAML
  chmod 0644 "$tmp/rehearsal-agent.yaml"
  setpriv --reuid=constance-agent --regid=constance-agent --clear-groups -- /usr/bin/constance-agent \
    run --config="$tmp/rehearsal-agent.yaml" --ready_file="$tmp/run/rehearsal-agent.ready" \
    >"$tmp/rehearsal-agent.log" 2>&1 &
  local agent_pid=$!
  pids+=("$agent_pid")
  wait_for_file "$tmp/run/rehearsal-agent.ready" "$agent_pid" \
    || { cat "$tmp/rehearsal-agent.log" >&2; fail "the rehearsal agent did not start"; }
  local http
  http=$(sed -n 's/^http=//p' "$tmp/run/rehearsal-agent.ready")
  curl -fsS -H 'Content-Type: application/json' "http://$http/v1/observations" -d \
    '[{"key":"coffee-250g","price":{"minor_units":449,"currency":"EUR"}},
      {"key":"checkout","wait_seconds":95},{"key":"fridge-temp","check":{"passed":true}},
      {"key":"nps","score":42}]' >/dev/null || fail "posting to the rehearsal agent"
  figures >"$tmp/figures-before"
  grep -q '"observations_applied": "4"' "$tmp/figures-before" \
    || fail "the collector did not apply the 4 observations: $(cat "$tmp/figures-before")"
  stop "$agent_pid"
  stop "$collector_pid"

  # The upgrade, as README gives it.
  rm -rf "$tmp/state-copy"
  cp -a "$state" "$tmp/state-copy"
  dpkg -i "$next_collector_deb" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -i next"; }
  /usr/bin/constance-collector --version | grep -q 'state format 3' \
    || fail "the rehearsal collector does not write state format 3: $(/usr/bin/constance-collector --version)"
  start_collector upgraded
  figures >"$tmp/figures-upgraded"
  diff -u "$tmp/figures-before" "$tmp/figures-upgraded" >&2 || fail "figures changed by the upgrade"
  stop "$collector_pid"  # Writes its snapshot in format 3.

  # The rollback: the old collector refuses the new state and writes nothing.
  dpkg -i "$collector_deb" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -i (downgrade)"; }
  local sum
  sum=$(sha256sum "$state/batches.db")
  if "${as_collector[@]}" /usr/bin/constance-collector --state_dir=$state --insecure \
    --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 >"$tmp/refused.log" 2>&1; then
    fail "the old collector started on state format 3"
  fi
  grep -q 'state format 3 was written by a newer constance' "$tmp/refused.log" \
    || fail "the old collector's refusal does not name the formats: $(cat "$tmp/refused.log")"
  [ "$(sha256sum "$state/batches.db")" = "$sum" ] || fail "the refused state was written to"
  rm -rf "$state"
  cp -a "$tmp/state-copy" "$state"
  start_collector rolled-back
  figures >"$tmp/figures-rolled-back"
  diff -u "$tmp/figures-before" "$tmp/figures-rolled-back" >&2 || fail "figures changed by the rollback"
  stop "$collector_pid"
  echo "ok: upgrade to the next state format and rollback keep every figure; the old collector refuses the new state untouched"
}

# --- 3. Install, run, purge (root only) -----------------------------------

if [ "$(id -u)" -ne 0 ]; then
  skip_rest "install/run/purge: needs root (dpkg -i), running as $(id -un)"
fi
for u in "${units[@]}"; do
  if dpkg-query -W -f='${Status}' "$u" 2>/dev/null | grep -q 'ok installed'; then
    skip_rest "install/run/purge: $u is already installed here; not touching it"
  fi
done

installed=1
dpkg -i "$agent_deb" "$collector_deb" >"$tmp/dpkg.log" 2>&1 \
  || { cat "$tmp/dpkg.log" >&2; fail "dpkg -i"; }

for f in /usr/bin/constance-agent /usr/bin/constance-collector /usr/bin/constance; do
  [ -x "$f" ] || fail "$f not installed"
  "$f" --version >/dev/null || fail "$f --version exits $?"
done
# Abseil's --help prints the usage and exits 1; the usage is what matters.
usage=$(/usr/bin/constance-collector --help 2>&1 || true)
grep -q 'constance-collector --insecure' <<<"$usage" || fail "constance-collector --help prints no usage"
for f in /etc/constance/agent.yaml /etc/constance/catalog.yaml \
         /lib/systemd/system/constance-agent.service /lib/systemd/system/constance-collector.service; do
  [ -f "$f" ] || fail "$f not installed"
done
for u in "${units[@]}"; do
  getent passwd "$u" >/dev/null || fail "user $u not created"
  getent group "$u" >/dev/null || fail "group $u not created"
  [ "$(stat -c %U "/var/lib/$u")" = "$u" ] || fail "/var/lib/$u not owned by $u"
done
[ -x /usr/lib/constance-collector/check-tls ] && [ -x /usr/lib/constance-collector/pki.sh ] \
  || fail "check-tls and pki.sh not installed in /usr/lib/constance-collector"
drop=/var/spool/constance-agent/drop
[ "$(stat -c '%U:%G %a' "$drop")" = "constance-agent:constance-drop 2770" ] \
  || fail "$drop: $(stat -c '%U:%G %a' "$drop"), want constance-agent:constance-drop 2770"
setpriv --reuid=constance-agent --regid=constance-agent --init-groups -- touch "$drop/.probe" \
  || fail "constance-agent cannot write into $drop"
rm -f "$drop/.probe"
echo "ok: installed binaries, configs, units, users, state and drop directories"

if [ "$systemd_here" = 1 ]; then
  verify_units /lib/systemd/system/constance-agent.service /lib/systemd/system/constance-collector.service
fi

# The services' own commands, as their users, on ephemeral loopback ports;
# setpriv execs, so SIGTERM reaches the service itself and $? is its status.
mkdir -m 0777 "$tmp/run"
# Secure by default: without certificates neither starts, each saying why.
if out=$(timeout 10 setpriv --reuid=constance-collector --regid=constance-collector --clear-groups -- \
    /usr/lib/constance-collector/check-tls /etc/constance/tls 2>&1); then
  fail "check-tls passed without certificates"
fi
grep -q 'pki.sh issue' <<<"$out" || fail "check-tls does not say how to make the files: $out"
if out=$(timeout 10 setpriv --reuid=constance-agent --regid=constance-agent --clear-groups -- \
    /usr/bin/constance-agent run --config=/etc/constance/agent.yaml --listen=127.0.0.1:0 \
    --metrics_listen=127.0.0.1:0 2>&1); then
  fail "the packaged agent started without its certificate"
fi
grep -q 'tls.ca: cannot read /etc/constance/tls/ca.pem' <<<"$out" \
  || fail "the packaged agent does not name its missing certificate: $out"
echo "ok: without certificates the collector and the agent refuse to start, naming the files"
setpriv --reuid=constance-agent --regid=constance-agent --clear-groups -- /usr/bin/constance-agent run --config=/etc/constance/agent.yaml \
  --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 --collector=127.0.0.1:1 --insecure \
  --ready_file="$tmp/run/agent.ready" >"$tmp/agent.log" 2>&1 &
pids+=($!)
wait_for_file "$tmp/run/agent.ready" "${pids[-1]}" \
  || { cat "$tmp/agent.log" >&2; fail "agent did not write its ready file"; }
grep -q '^http=127.0.0.1:' "$tmp/run/agent.ready" || fail "agent ready file: $(cat "$tmp/run/agent.ready")"
[ -f /var/lib/constance-agent/spool.db ] || fail "agent did not create its spool in /var/lib/constance-agent"

setpriv --reuid=constance-collector --regid=constance-collector --clear-groups -- /usr/bin/constance-collector --catalog=/etc/constance/catalog.yaml \
  --state_dir=/var/lib/constance-collector --insecure \
  --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 \
  --ready_file="$tmp/run/collector.ready" >"$tmp/collector.log" 2>&1 &
pids+=($!)
wait_for_file "$tmp/run/collector.ready" "${pids[-1]}" \
  || { cat "$tmp/collector.log" >&2; fail "collector did not write its ready file"; }

for pid in "${pids[@]}"; do
  kill -TERM "$pid"
  wait "$pid" || fail "process $pid exited $? on SIGTERM"
done
pids=()
echo "ok: agent and collector start as their users with the packaged configs, stop on SIGTERM"

rehearse_upgrade

dpkg --purge "${units[@]}" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg --purge"; }
installed=0
for f in /usr/bin/constance-agent /usr/bin/constance-collector /usr/bin/constance \
         /lib/systemd/system/constance-agent.service /etc/constance /var/spool/constance-agent \
         /usr/lib/constance-collector; do
  [ ! -e "$f" ] || fail "$f still there after purge"
done
for u in "${units[@]}"; do
  ! getent passwd "$u" >/dev/null || fail "user $u still there after purge"
  ! getent group "$u" >/dev/null || fail "group $u still there after purge"
  [ ! -e "/var/lib/$u" ] || fail "/var/lib/$u still there after purge"
done
! getent group constance-drop >/dev/null || fail "group constance-drop still there after purge"
echo "ok: purge removed binaries, configs, users, state directories"
# A run that left a check out is not a pass.
[ "$skipped" = 0 ] || exit 77
