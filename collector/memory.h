// glibc's malloc as the collector runs it.
//
// The collector's unit runs malloc on transparent huge pages and one arena
// (GLIBC_TUNABLES in deploy/systemd/constance-collector.service); the
// thresholds below are the rest, in the one place the collector and the
// benchmarks that run as it (tests/bench/soak_bench.cc) take them from.
#ifndef CONSTANCE_COLLECTOR_MEMORY_H_
#define CONSTANCE_COLLECTOR_MEMORY_H_

#include <cstddef>

namespace constance::collector {

// Sets malloc's thresholds for the collector's allocations. Call once,
// first thing in main, before any thread starts.
void TuneMalloc();

// A capacity for `n` elements (at least n) from a few sizes: one of four
// per doubling (n rounded up to a quarter of the power of two at or below
// it), at most a quarter more than n. For buffers that live a while and
// are replaced by one of a slightly different size, hour after hour (a
// series' price drops within the rollout grace): from one heap, each new
// size missed the holes the last ones left, and resident memory crept up
// with the memory in use flat. Rounded, a freed buffer fits the next of
// its size class.
size_t SizeClass(size_t n);

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_MEMORY_H_
