#!/usr/bin/env bash
# The second test command (CI runs it after tests/run.sh): clang builds with
# sanitizers, and the fuzzers.
#
#   1. build-asan: AddressSanitizer + UndefinedBehaviorSanitizer (any finding
#      aborts) with libFuzzer's instrumentation; runs the unit and
#      integration tests, then every fuzz target for a bounded time
#      (tests/fuzz/run.sh; CONSTANCE_FUZZ_SECONDS, default 30).
#   2. build-tsan: ThreadSanitizer on the tests of our own threads (the
#      collector engine and its buffer pools, the agent's spools), built as the one executable
#      tsan_tests; tests that go through gRPC are left out, Debian's gRPC
#      not being instrumented.
#
# Both trees are configured with CONSTANCE_BUILD_SYSTEM_SUITES=OFF: the
# deploy, dashboards, faults and packaging suites are not run here, so they
# are not compiled either. Compiles go through ccache (CMakeLists.txt).
#
#   ./tests/sanitizers.sh            # everything
#   ./tests/sanitizers.sh asan       # or: fuzz, tsan (fuzz needs asan's build)
#
# Not run here, and why: the packaging tests (they build and install release
# .debs), the fault suite and the end-to-end demo tests (demo_once,
# dashboards.live: minutes each, run once by tests/run.sh), the deploy and
# dashboards checks (no compiled code). Sanitizer reports, of test
# processes and of the collectors and agents they start, are written to
# <build>/sanitizer-reports/; any report fails the run and is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
source deploy/lib/deps.sh
constance_install_deps sanitizers

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(asan fuzz tsan)
export CCACHE_BASEDIR="$root" CCACHE_NOHASHDIR=true
# -Wthread-safety findings stay warnings in these builds until the ones in
# collector/engine.cc (lambdas run under a held lock) are annotated.
cmake_args=(-G Ninja -DCMAKE_CXX_COMPILER=clang++-14 -DCONSTANCE_WERROR=ON
  -DCONSTANCE_BUILD_BENCHMARKS=OFF -DCONSTANCE_BUILD_SYSTEM_SUITES=OFF
  -DCMAKE_CXX_FLAGS=-Wno-error=thread-safety-analysis)
nice_build=(nice -n 5 cmake --build)
# Configures $1 with cmake_args and the rest. A build directory configured
# with another compiler is started afresh: CMake would otherwise drop the
# whole cache, options included, when it sees the compiler change.
configure() {
  local dir=$1
  shift
  local cxx
  cxx=$(command -v clang++-14)
  if [ -f "$dir/CMakeCache.txt" ] && ! grep -qx "CMAKE_CXX_COMPILER:[A-Z]*=$cxx" "$dir/CMakeCache.txt"; then
    rm -rf "$dir/CMakeCache.txt" "$dir/CMakeFiles"
  fi
  cmake -S . -B "$dir" "${cmake_args[@]}" "$@" >/dev/null
}

passed=0
failed=0
summary=()
elapsed() { echo "$(($(date +%s) - $1))s"; }
record() {  # record <step> <status> <start> <what ran>
  if [ "$2" -eq 0 ]; then
    passed=$((passed + 1))
    summary+=("ok     $1 ($(elapsed "$3")): $4")
  else
    failed=$((failed + 1))
    summary+=("FAILED $1 ($(elapsed "$3")): $4")
  fi
}
# Fails (returns 1) and prints them if sanitizer reports were written.
check_reports() {
  local dir=$1
  if compgen -G "$dir/*" >/dev/null; then
    echo "sanitizers: reports in $dir:" >&2
    for f in "$dir"/*; do
      echo "---- $f" >&2
      head -80 "$f" >&2
    done
    return 1
  fi
}

for step in "${steps[@]}"; do
  start=$(date +%s)
  status=0
  case "$step" in
    asan)
      echo "sanitizers: building build-asan (clang, ASan+UBSan, fuzz targets)"
      configure build-asan -DCONSTANCE_SANITIZE=address -DCONSTANCE_FUZZ=ON
      "${nice_build[@]}" build-asan
      reports="$root/build-asan/sanitizer-reports"
      rm -rf "$reports" && mkdir -p "$reports"
      ASAN_OPTIONS="detect_leaks=1:log_path=$reports/asan:detect_stack_use_after_return=1" \
      UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan" \
      LSAN_OPTIONS="suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0" \
        ctest --test-dir build-asan --output-on-failure --no-tests=error --timeout 600 -j 2 \
        -LE 'packaging|faults|dashboards|deploy' -E '^demo_once$' || status=$?
      check_reports "$reports" || status=1
      record asan "$status" "$start" "unit, integration and fuzz seed tests under ASan+UBSan"
      ;;
    fuzz)
      tests/fuzz/run.sh build-asan || status=$?
      record fuzz "$status" "$start" \
        "each fuzz target for ${CONSTANCE_FUZZ_SECONDS:-30}s (summary above)"
      ;;
    tsan)
      echo "sanitizers: building build-tsan (clang, TSan)"
      configure build-tsan -DCONSTANCE_SANITIZE=thread
      # Only tsan_tests: the engine, spool and buffer-pool tests below.
      "${nice_build[@]}" build-tsan --target tsan_tests
      reports="$root/build-tsan/sanitizer-reports"
      rm -rf "$reports" && mkdir -p "$reports"
      TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:log_path=$reports/tsan:suppressions=$root/tests/sanitizers/tsan.supp" \
        ctest --test-dir build-tsan --output-on-failure --no-tests=error --timeout 600 -j 2 \
        -R '^(EngineConcurrencyTest|EngineTest|MemorySpoolTest|SqliteSpoolTest|SpoolWhenFullTest|VectorPoolTest)\.' ||
        status=$?
      check_reports "$reports" || status=1
      record tsan "$status" "$start" "engine, spool and buffer-pool tests (our own threads) under TSan"
      ;;
    *)
      echo "sanitizers: unknown step '$step' (asan, fuzz or tsan)" >&2
      exit 2
      ;;
  esac
done

echo "sanitizers summary:"
printf '  %s\n' "${summary[@]}"
echo "sanitizers: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
