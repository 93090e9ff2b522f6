#!/usr/bin/env bash
# The test command: installs what is missing (Debian packages), builds, runs
# every test with ctest and lets it print its summary.
#
#   ./tests/run.sh            # all tests
#   ./tests/run.sh -R stats   # extra arguments go to ctest
#
# In CI (CI=true) warnings are errors.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/lib/deps.sh
constance_install_deps test

# Compiler cache hits whatever directory the tree was cloned into.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=true

werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
constance_build build -DCONSTANCE_WERROR="$werror"
ctest --test-dir build --output-on-failure --timeout 300 -j 2 "$@"
