#!/usr/bin/env bash
# The test command: installs what is missing (Debian packages), builds, runs
# every test with ctest and lets it print its summary.
#
#   ./tests/run.sh            # all tests
#   ./tests/run.sh -R stats   # extra arguments go to ctest
#
# In CI (CI=true) warnings are errors. The demo (deploy/demo.sh) builds
# into the same build/ without changing its options: either may run first.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/lib/deps.sh
constance_install_deps test

# Tests and benchmarks are switched on whatever an earlier configure of
# build/ cached; ctest fails when it finds no test rather than pass on none.
constance_build build -DCONSTANCE_BUILD_TESTS=ON -DCONSTANCE_BUILD_BENCHMARKS=ON
ctest --test-dir build --output-on-failure --no-tests=error --timeout 300 -j 2 "$@"
