// glibc's malloc as the collector runs it.
//
// The collector's unit runs malloc on transparent huge pages and one arena
// (GLIBC_TUNABLES in deploy/systemd/constance-collector.service); the
// thresholds below are the rest, in the one place the collector and the
// benchmarks that run as it (tests/bench/soak_bench.cc) take them from.
#ifndef CONSTANCE_COLLECTOR_MEMORY_H_
#define CONSTANCE_COLLECTOR_MEMORY_H_

namespace constance::collector {

// Sets malloc's thresholds for the collector's allocations. Call once,
// first thing in main, before any thread starts.
void TuneMalloc();

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_MEMORY_H_
