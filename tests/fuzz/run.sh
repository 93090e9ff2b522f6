#!/usr/bin/env bash
# Runs every libFuzzer target of a CONSTANCE_FUZZ build for a bounded time
# and prints, per target, the executions, the corpus size and the crashes.
# Fails if any target crashed, leaked, timed out or ran out of memory; the
# input that did it is kept in <build>/fuzz/artifacts/<target>/ and printed.
#
#   tests/fuzz/run.sh [build-dir] [target...]    # default build-asan, all
#   CONSTANCE_FUZZ_SECONDS=300 tests/fuzz/run.sh  # longer runs (default 30)
#   <build>/fuzz/batch_fuzzer <file>              # replays one input
#
# Each target starts from its seeds (tests/fuzz/<target>/) plus the corpus
# earlier runs in the same build directory grew (<build>/fuzz/corpus/); the
# source tree is never written to.
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${1:-build-asan}"
shift || true
seconds="${CONSTANCE_FUZZ_SECONDS:-30}"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(batch ingest_json agent_config catalog drop_file)

# Reports go to the terminal; leaks of lazily built library singletons that
# are not ours are suppressed narrowly (see the file).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:symbolize=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0}"

passed=0
failed=0
summary=()
for t in "${targets[@]}"; do
  bin="$build/fuzz/${t}_fuzzer"
  if [ ! -x "$bin" ]; then
    echo "fuzz: $bin is missing: configure with -DCONSTANCE_FUZZ=ON and build ${t}_fuzzer" >&2
    exit 2
  fi
  seeds="tests/fuzz/$t"
  [ "$t" = batch ] && seeds="$build/fuzz/seeds/batch"  # Encoded at build time.
  corpus="$build/fuzz/corpus/$t"
  artifacts="$build/fuzz/artifacts/$t"
  log="$build/fuzz/$t.log"
  mkdir -p "$corpus" "$artifacts"
  rm -f "$artifacts"/*
  echo "fuzz: running $t for ${seconds}s (seeds $seeds)"
  status=0
  # -max_len bounds an input; -timeout makes a hang (one input slower than
  # 10 s) a failure; -rss_limit_mb one that needs more memory than 2 GiB.
  "$bin" -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" "$seeds" >"$log" 2>&1 ||
    status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crashes=$(find "$artifacts" -type f | wc -l)
  units=$(find "$corpus" -type f | wc -l)
  line="$t: ${execs:-0} executions in ${seconds}s, corpus $units inputs, crashes $crashes"
  if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed=$((failed + 1))
    summary+=("FAILED $line (exit $status)")
    echo "fuzz: $t FAILED (exit $status); the end of its log, $log:" >&2
    tail -60 "$log" >&2
    find "$artifacts" -type f -exec echo "fuzz: failing input: {} (replay: $bin {})" \; >&2
  else
    passed=$((passed + 1))
    summary+=("ok     $line")
  fi
done

echo "fuzz summary:"
printf '  %s\n' "${summary[@]}"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
