# Shared by deploy/demo.sh and tests/run.sh: installs the Debian packages
# constance needs, and only those missing, so a second run does no apt work.
#
#   source deploy/lib/deps.sh
#   constance_install_deps build   # compilers and -dev libraries
#   constance_install_deps test    # plus what the tests run (promtool, ...)
#   constance_install_deps sanitizers  # plus clang and libFuzzer
#   constance_install_deps bench   # plus the peers tests/bench/peers.sh runs

CONSTANCE_BUILD_PACKAGES=(
  g++ cmake ninja-build pkg-config ccache
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libcivetweb-dev libyaml-cpp-dev
  nlohmann-json3-dev libspdlog-dev libsqlite3-dev libcsv-dev libre2-dev
  libgtest-dev libgmock-dev libbenchmark-dev
)
# The demo feeds its simulated stores over HTTP with curl.
CONSTANCE_DEMO_PACKAGES=(curl)
# promtool (package prometheus) checks the /metrics exposition.
# dpkg-shlibdeps (dpkg-dev) computes the .debs' Depends; adduser is what
# their maintainer scripts use (tests/packaging installs them).
# openssl: tests/integration/tls_test makes its CA with deploy/pki/pki.sh
# (priority optional: not on a minimal Debian).
# python3 and tzdata: the deploy and dashboards checks are Python scripts
# (standard library only; zoneinfo reads tzdata).
# chromium: tests/integration/board_test loads the public board's pages
# headless. systemd: tests/packaging checks the units with systemd-analyze
# (not on a minimal container).
CONSTANCE_TEST_PACKAGES=(prometheus prometheus-alertmanager curl dpkg-dev adduser iproute2 openssl
  python3 tzdata chromium systemd)
# The sanitizer and fuzzing builds (tests/sanitizers.sh) use clang 14;
# libclang-rt-14-dev holds its sanitizer runtimes and libFuzzer
# (libclang_rt.fuzzer*.a, what -fsanitize=fuzzer links).
CONSTANCE_SANITIZER_PACKAGES=(clang-14 libclang-rt-14-dev)
# tests/bench/peers.sh (issue 8): the stock alternatives constance is
# measured beside (Prometheus remote write, Pushgateway, collectd,
# node-exporter), and snappy for the remote-write load generator.
CONSTANCE_BENCH_PACKAGES=(prometheus prometheus-pushgateway prometheus-node-exporter
  collectd-core libsnappy-dev)

constance_install_deps() {
  local want=("${CONSTANCE_BUILD_PACKAGES[@]}")
  case "${1:-build}" in
    # The benchmarks' smoke tests (ctest -L bench) run the peers too.
    test) want+=("${CONSTANCE_TEST_PACKAGES[@]}" "${CONSTANCE_BENCH_PACKAGES[@]}") ;;
    sanitizers) want+=("${CONSTANCE_TEST_PACKAGES[@]}" "${CONSTANCE_SANITIZER_PACKAGES[@]}") ;;
    demo) want+=("${CONSTANCE_DEMO_PACKAGES[@]}") ;;
    bench) want+=("${CONSTANCE_BENCH_PACKAGES[@]}") ;;
  esac
  local missing=()
  local p
  for p in "${want[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "constance: installing Debian packages: ${missing[*]}" >&2
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "constance: these packages are missing and installing them needs root: ${missing[*]}" >&2
      echo "constance: run as root, or install them with: apt-get install ${missing[*]}" >&2
      return 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  # The prometheus package's service is not wanted on a build machine; the
  # tests start their own Prometheus when they need one.
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Configures $1 (default build/) with extra CMake args. The demo and the
# tests share build/ and configure it alike (in CI, CI=true, warnings are
# errors for both), so running one never flips an option the other cached,
# and the second reuses what the first compiled.
constance_configure() {
  local dir="${1:-build}"
  shift || true
  local werror=OFF
  [ "${CI:-}" = "true" ] && werror=ON
  # Compiler cache hits whatever directory the tree was cloned into.
  export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=true
  cmake -S . -B "$dir" -G Ninja -DCONSTANCE_WERROR="$werror" "$@" >/dev/null
}

# Configures and builds everything into $1 (default build/).
constance_build() {
  constance_configure "$@"
  cmake --build "${1:-build}"
}
