#!/usr/bin/env bash
# The benchmarks of issue 8 in one command: builds them (RelWithDebInfo, in
# build-bench/), runs each, prints one table and writes it, with the machine,
# the date and the commands, into tests/bench/RESULTS.md between the markers
# <!-- bench:run:begin --> and <!-- bench:run:end --> (nothing else in the
# file is touched). Outside CI: CI runs the benchmarks' smoke tests
# (ctest -L bench) instead.
#
#   tests/bench/run.sh              # full sizes (about 20 minutes, 24 GiB
#                                   # machine: 10M wait cells take ~3 GiB)
#   tests/bench/run.sh --smoke      # tiny sizes, a minute; RESULTS.md untouched
#   tests/bench/run.sh --only=agent,metrics   # some parts (engine, ingest,
#                                   # metrics, restart, agent, replay, peers)
#   tests/bench/run.sh --no-peers   # skip tests/bench/peers.sh
#
# Each part's rows are kept in build-bench/bench-results/ with the load
# average they were measured under, so a part re-run with --only replaces
# its own rows and the table keeps the others. Throughput figures depend on
# what else the 2 cores do: the load column says. Every process a
# benchmark starts is in its process group, stopped on exit or interruption.
# Environment: CONSTANCE_BENCH_BUILD_DIR (default build-bench).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

smoke=0
peers=1
only="engine,ingest,metrics,restart,agent,replay,peers"
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    --no-peers) peers=0 ;;
    --only=*) only="${arg#--only=}" ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "run.sh: unknown argument '$arg' (see --help)" >&2
      exit 2
      ;;
  esac
done
wanted() { [[ ",$only," == *",$1,"* ]]; }

# shellcheck source=deploy/lib/deps.sh
source deploy/lib/deps.sh
constance_install_deps build
export CCACHE_BASEDIR="$root" CCACHE_NOHASHDIR=true
build="${CONSTANCE_BENCH_BUILD_DIR:-build-bench}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$build" engine_bench ingest_bench metrics_bench restart_bench agent_bench replay_bench \
  constance-collector constance-agent
bin="$build/tests/bench"

results="$root/$build/bench-results"
[ "$smoke" = 1 ] && results="$root/$build/bench-results-smoke"
mkdir -p "$results"
# The benchmarks' temporary directories (batch logs, spools: gigabytes at
# full size) live here, on disk, and go when the run ends.
export TMPDIR="$results/tmp"
rm -rf "$TMPDIR"
mkdir -p "$TMPDIR"

current=""
cleanup() {
  if [ -n "$current" ]; then
    kill -TERM -- "-$current" 2>/dev/null || true
    wait "$current" 2>/dev/null || true
  fi
  rm -rf "$TMPDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

load() { awk '{print $1}' /proc/loadavg; }
# The machine's CPU time so far and the part of it stolen by the
# hypervisor for other guests (/proc/stat, in ticks): "total steal".
cpu_ticks() { awk '/^cpu / {printf "%d %d\n", $2+$3+$4+$5+$6+$7+$8+$9, $9}' /proc/stat; }

# run NAME LIMIT_SECONDS COMMAND...: runs the command in its own process
# group (timeout(1) makes one; every server it starts joins it), output to
# $results/NAME.log and the terminal's stderr; the command line goes to
# $results/commands.
run() {
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" >&2
  local line="$*"
  echo "${line//$root\//}" >>"$results/commands.$part"
  timeout --kill-after=30 "$limit" "$@" >"$results/$name.log" 2>&1 &
  current=$!
  local status=0
  wait "$current" || status=$?
  current=""
  cat "$results/$name.log" >&2
  if [ "$status" != 0 ]; then
    echo "run.sh: $name failed (exit $status); its output is in $results/$name.log" >&2
    return "$status"
  fi
}

# row FIGURE SIZE VALUE TARGET VERDICT: one table row of the current part.
row() {
  printf '| %s | %s | %s | %s | %s | %s; @stolen@ |\n' "$1" "$2" "$3" "$4" "$5" "$part_load" \
    >>"$results/rows.$part.new"
}
begin_part() {
  part=$1
  part_load=$(load)
  part_ticks=$(cpu_ticks)
  rm -f "$results/rows.$part.new" "$results/commands.$part"
}
end_part() {
  local stolen
  stolen=$(echo "$part_ticks $(cpu_ticks)" |
    awk '{ d = $3 - $1; p = 0; if (d > 0) p = 100 * ($4 - $2) / d; printf "%.0f%%", p }')
  sed "s/@stolen@/$stolen stolen/" "$results/rows.$part.new" >"$results/rows.$part"
  rm -f "$results/rows.$part.new"
}
# verdict VALUE OP LIMIT: "met" or "missed by X%" (OP is <= or >=).
verdict() {
  awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
    if ((op == "<=" && v <= t) || (op == ">=" && v >= t)) { print "met"; exit }
    if (op == "<=" && v > 2 * t) { printf "missed: %.1fx the target\n", v / t; exit }
    d = op == "<=" ? (v - t) / t : (t - v) / t
    printf "missed by %.0f%%\n", 100 * d }'
}
# full_verdict VALUE OP LIMIT: verdict, or nothing in smoke runs (tiny
# sizes say nothing about the targets).
full_verdict() {
  if [ "$smoke" = 0 ]; then verdict "$@"; fi
}
# num FILE REGEX: the first match of REGEX (grep -o -E) in FILE, its
# first number.
num() { grep -o -E "$2" "$1" | head -1 | grep -o -E '[0-9]+(\.[0-9]+)?' | head -1; }

# ---------------------------------------------------------------------------
if wanted engine; then
  begin_part engine
  if [ "$smoke" = 1 ]; then
    sizes="smoke"
  else
    sizes="1000 10000"
  fi
  for family in price wait compliance score; do
    for locations in $sizes; do
      if [ "$locations" = smoke ]; then
        args=(--smoke --benchmark_min_time=0.01)
        cells="1,000"
        name="engine_${family}_smoke"
      else
        args=(--locations="$locations" --iterations=1)
        cells=$([ "$locations" = 1000 ] && echo 1M || echo 10M)
        name="engine_${family}_${cells}"
      fi
      run "$name" 3600 "$bin/engine_bench" --family="$family" "${args[@]}"
      log="$results/$name.log"
      apply=$(grep -E "^apply/$family " "$log")
      bytes=$(echo "$apply" | grep -o -E 'bytes_per_cell=[0-9.]+' | cut -d= -f2)
      rate=$(echo "$apply" | grep -o -E 'items_per_second=[0-9.]+[kMG]?' | cut -d= -f2)
      eval_line=$(grep -E "^evaluate/$family/" "$log")
      save_line=$(grep -E "^snapshot_save/$family/" "$log")
      load_line=$(grep -E "^snapshot_load/$family/" "$log")
      target="" result=""
      if [ "$family" = price ] && [ "$cells" = 10M ]; then
        target="<= 100 bytes"
        result=$(verdict "$bytes" "<=" 100)
      elif [ "$family" = wait ]; then
        target="<= 2 KB"
        result=$(verdict "$bytes" "<=" 2048)
      fi
      row "memory per $family cell (engine, resident growth)" "$cells" \
        "$(printf '%.0f' "$bytes") bytes" "$target" "$result"
      row "apply/$family, batches of 1,000, one thread" "$cells" "$rate observations/s" "" ""
      row "evaluate/$family: statistics + findings over every cell" "$cells" \
        "$(echo "$eval_line" | awk '{print $2 " " $3 " wall, " $4 " " $5 " CPU"}')" "" ""
      row "snapshot save / load ($family)" "$cells" \
        "$(echo "$save_line" | awk '{print $2 " " $3}') / $(echo "$load_line" | awk '{print $2 " " $3}') wall; $(echo "$save_line" | grep -o -E 'bytes_per_cell=[0-9.]+' | cut -d= -f2 | xargs printf '%.0f') bytes per cell" \
        "" ""
    done
  done
  end_part
fi

# ---------------------------------------------------------------------------
if wanted ingest; then
  begin_part ingest
  if [ "$smoke" = 1 ]; then
    configs=("2 20000 500 8")
  else
    # The first is the target's: batches of 1,000, the agent's default
    # max_batch (what an agent sends while it has a backlog).
    configs=("4 4000000 1000 8" "4 4000000 500 8" "4 1000000 50 8" "16 1000000 100 4")
  fi
  for config in "${configs[@]}"; do
    read -r streams observations batch window <<<"$config"
    name="ingest_${streams}x${batch}x${window}"
    run "$name" 1800 "$bin/ingest_bench" --streams="$streams" --observations="$observations" \
      --batch="$batch" --window="$window"
    log="$results/$name.log"
    rate=$(num "$log" '= [0-9]+ observations/s')
    target="" result=""
    if [ "$batch" = 1000 ] && [ "$smoke" = 0 ]; then
      target=">= 2,000,000/s"
      result=$(verdict "$rate" ">=" 2000000)
    fi
    row "ingest over gRPC, durable: $streams streams x batch $batch x window $window" \
      "$observations observations" \
      "$(printf "%'.0f" "$rate")/s; ack p50 $(grep -o -E 'p50 [0-9.]+' "$log" | awk '{print $2}') ms, p99 $(grep -o -E 'p99 [0-9.]+' "$log" | awk '{print $2}') ms; collector CPU $(num "$log" '[0-9.]+ s per million') s per million; load generator $(grep -o -E 'load generator CPU [0-9.]+ s = [0-9.]+' "$log" | grep -o -E '[0-9.]+$') s per million" \
      "$target" "$result"
  done
  end_part
fi

# ---------------------------------------------------------------------------
if wanted metrics; then
  begin_part metrics
  if [ "$smoke" = 1 ]; then
    run metrics 600 "$bin/metrics_bench" --smoke
  else
    run metrics 1800 "$bin/metrics_bench" --keys=10000 --locations=50 --regions=5 --renders=10
  fi
  log="$results/metrics.log"
  ms=$(num "$log" 'median [0-9.]+ ms')
  get_ms=$(num "$log" 'loopback median [0-9.]+ ms')
  row "/metrics render (text format, streamed), median of $(num "$log" 'over [0-9]+ scrapes') scrapes" \
    "$(num "$log" '[0-9]+ keys') keys x $(num "$log" 'x [0-9]+ locations') locations, $(num "$log" '= [0-9]+ published series') (key, group) series, $(num "$log" '[0-9]+ findings active') findings" \
    "$ms ms (thread CPU $(num "$log" 'CPU [0-9.]+ ms') ms), max $(num "$log" 'max [0-9.]+') ms; $(num "$log" '[0-9]+ bytes' | awk '{printf "%.1f", $1 / 1048576}') MiB, $(num "$log" '[0-9]+ samples') samples" \
    "< 200 ms" "$(full_verdict "$ms" "<=" 200)"
  row "GET /metrics on loopback (whole answer read), median of $(num "$log" 'over [0-9]+ scrapes') scrapes" \
    "same" "$get_ms ms, max $(grep -o -E 'loopback median [0-9.]+ ms, max [0-9.]+' "$log" | grep -o -E '[0-9.]+$') ms" \
    "< 200 ms" "$(full_verdict "$get_ms" "<=" 200)"
  end_part
fi

# ---------------------------------------------------------------------------
if wanted restart; then
  begin_part restart
  if [ "$smoke" = 1 ]; then
    run restart 600 "$bin/restart_bench" --smoke
  else
    run restart 3600 "$bin/restart_bench" --locations=10000 --keys=1000
  fi
  log="$results/restart.log"
  cells=$(num "$log" 'filled [0-9]+')
  row "collector fill over gRPC (one stream per location, 1 batch each)" "$cells price cells" \
    "$(num "$log" '= [0-9]+ observations/s') observations/s; resident $(num "$log" 'resident [0-9]+ MiB') MiB = $(num "$log" '= [0-9]+ bytes per cell') bytes per cell" \
    "" ""
  row "restart after kill -9 (batch log replayed) to serving" "$cells price cells" \
    "$(grep 'kill -9' "$log" | grep -o -E 'after [0-9.]+ s' | head -1 | grep -o -E '[0-9.]+') s; statistics complete after $(grep 'kill -9' "$log" | grep -o -E 'after [0-9.]+ s' | tail -1 | grep -o -E '[0-9.]+') s" \
    "" ""
  row "clean stop (SIGTERM, snapshot written)" "$cells price cells" \
    "$(num "$log" 'took [0-9.]+ s') s" "" ""
  row "restart from the snapshot to serving" "$cells price cells" \
    "$(grep 'SIGTERM' "$log" | grep -o -E 'after [0-9.]+ s' | head -1 | grep -o -E '[0-9.]+') s; statistics complete after $(grep 'SIGTERM' "$log" | grep -o -E 'after [0-9.]+ s' | tail -1 | grep -o -E '[0-9.]+') s" \
    "" ""
  end_part
fi

# ---------------------------------------------------------------------------
if wanted agent; then
  begin_part agent
  if [ "$smoke" = 1 ]; then
    run agent 600 "$bin/agent_bench" --smoke
  else
    run agent 3600 "$bin/agent_bench" --spooled=1000000 --rate=1000 --sustain_seconds=60 \
      --idle_seconds=10
  fi
  log="$results/agent.log"
  idle=$(grep 'agent_bench: idle' "$log" | grep -o -E 'resident [0-9.]+' | grep -o -E '[0-9.]+')
  peak=$(grep 'observations/s for' "$log" | grep -o -E 'resident [0-9.]+ MiB at the end' | grep -o -E '[0-9.]+' | head -1)
  hwm=$(grep 'observations/s for' "$log" | grep -o -E 'VmHWM over the run [0-9.]+' | grep -o -E '[0-9.]+')
  row "agent resident memory, idle (durable spool, collector unreachable)" "empty spool" \
    "$idle MiB $(grep 'agent_bench: idle' "$log" | grep -o -E '\(anonymous [^)]*\)'); CPU $(grep 'agent_bench: idle' "$log" | grep -o -E '[0-9.]+% of a core')" \
    "< 20 MiB" "$(full_verdict "$idle" "<=" 20)"
  row "agent resident memory at 1,000 observations/s" \
    "$(num "$log" 'up to [0-9]+') spooled" \
    "$peak MiB at the end, $(grep 'observations/s for' "$log" | grep -o -E '[0-9.]+ MiB at most' | grep -o -E '^[0-9.]+') MiB at most (peak over the run incl. bulk fill: $hwm MiB)" \
    "< 32 MiB" "$(full_verdict "$peak" "<=" 32)"
  sustained_line=$(grep 'observations/s for' "$log")
  fill_line=$(grep 'agent_bench: fill' "$log")
  row "agent CPU per 1,000 observations (HTTP POST + durable spool commit)" \
    "at 1,000/s; bulk fill" \
    "$(echo "$sustained_line" | grep -o -E '[0-9.]+ s per 1,000' | grep -o -E '^[0-9.]+') s at 1,000/s (requests of 100); $(echo "$fill_line" | grep -o -E '[0-9.]+ s per 1,000' | grep -o -E '^[0-9.]+') s in bulk (requests of 1,000 at $(echo "$fill_line" | grep -o -E '\([0-9]+/s' | tr -d '('))" \
    "" ""
  end_part
fi

# ---------------------------------------------------------------------------
if wanted replay; then
  begin_part replay
  if [ "$smoke" = 1 ]; then
    replay_args=(--smoke)
    size="2 days x 20 stores x 200 items"
  else
    replay_args=(--days=42)
    size="42 days x 120 stores x 200 items (5,040 files)"
  fi
  run replay 1800 "$bin/replay_bench" "${replay_args[@]}"
  log="$results/replay.log"
  rate=$(num "$log" 'CPU \([0-9]+ rows/s')
  cpu=$(num "$log" '[0-9.]+ s CPU')
  rows=$(num "$log" 'replay_bench: [0-9]+ rows')
  per_minute=$(awk -v r="$rows" -v c="$cpu" 'BEGIN { if (c > 0) printf "%.0f", 60 * r / c; else print 0 }')
  row "constance replay: files read, parsed, replayed and evaluated hourly, one core" "$size" \
    "$(grep -o -E 'read [0-9.]+ s \([0-9]+ rows/s\)' "$log"); whole run $rate rows/s wall, $per_minute rows per CPU minute; $(grep -o -E 'peak RSS [0-9]+ MiB' "$log")" \
    ">= 1,000,000 rows/min" "$(full_verdict "$per_minute" ">=" 1000000)"
  end_part
fi

# ---------------------------------------------------------------------------
peers_status="not run"
if wanted peers && [ "$peers" = 1 ] && [ -f tests/bench/peers.sh ]; then
  part=peers
  rm -f "$results/commands.peers" "$results/peers.log"
  if [ "$smoke" = 1 ]; then
    peer_args=(--smoke)
  else
    peer_args=()
  fi
  if run peers 7200 bash tests/bench/peers.sh "${peer_args[@]}"; then
    peers_status="ok"
  else
    peers_status="failed"
  fi
fi

# ---------------------------------------------------------------------------
# The table: every part's latest rows.
table="$results/table.md"
{
  echo "| figure | size | measured | target (issue 8) | verdict | load avg; CPU stolen |"
  echo "| --- | --- | --- | --- | --- | --- |"
  for p in engine ingest metrics restart agent replay; do
    [ -f "$results/rows.$p" ] && cat "$results/rows.$p"
  done
} >"$table"
echo
cat "$table"
if [ "$peers_status" != "not run" ]; then
  echo
  echo "peers.sh (tests/bench/peers.sh, $peers_status):"
  cat "$results/peers.log"
fi

[ "$smoke" = 1 ] && exit 0

# RESULTS.md: only what is between the markers.
results_md=tests/bench/RESULTS.md
begin='<!-- bench:run:begin -->'
end='<!-- bench:run:end -->'
if ! grep -qF "$begin" "$results_md"; then
  printf '\n## The one command (issue 8)\n\n%s\n%s\n' "$begin" "$end" >>"$results_md"
fi
section="$results/section.md"
{
  echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs," \
    "$(free -g | awk '/Mem:/ {print $2}') GiB; $(. /etc/os-release && echo "$PRETTY_NAME");" \
    "$(g++ --version | head -1); build RelWithDebInfo (-O2 -g)."
  echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC') (the last column is the 1-minute load average" \
    "when each part started, and the share of the machine's CPU time over the part that the" \
    "hypervisor gave to other guests (steal in /proc/stat): the machine is shared, so" \
    "throughput at load > 2 or with CPU stolen is a lower bound)."
  echo
  echo "Command: \`tests/bench/run.sh\` (a part re-run with --only replaces its own rows and" \
    "keeps the others'; this invocation: \`tests/bench/run.sh $*\`). The benchmarks it ran:"
  echo
  for p in engine ingest metrics restart agent replay; do
    [ -f "$results/commands.$p" ] && sed 's/^/    /' "$results/commands.$p"
  done
  [ "$peers_status" != "not run" ] && sed 's/^/    /' "$results/commands.peers"
  echo
  cat "$table"
  if [ "$peers_status" != "not run" ]; then
    echo
    echo "tests/bench/peers.sh ($peers_status), its output:"
    echo
    sed 's/^/    /' "$results/peers.log"
  fi
} >"$section"
awk -v begin="$begin" -v end="$end" -v section="$section" '
  $0 == begin { print; while ((getline line < section) > 0) print line; skip = 1; next }
  $0 == end { skip = 0 }
  !skip { print }' "$results_md" >"$results_md.new"
mv "$results_md.new" "$results_md"
echo
echo "run.sh: wrote the table into $results_md"
