#include "collector/memory.h"

#include <malloc.h>

#include "absl/numeric/bits.h"

namespace constance::collector {

void TuneMalloc() {
  // Every batch arrives in buffers of about 100 KB that gRPC's threads
  // allocate and the applier frees. With glibc's defaults the thread arenas
  // give each freed top back to the kernel (madvise) and fault it in again
  // for the next batch: a fifth of the applier's time in the peers run.
  // Kept up to 16 MiB per arena instead (tests/bench/RESULTS.md, "Ingest: CPU
  // per observation"); blocks of 4 MiB or more are still mapped on their own.
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_TRIM_THRESHOLD, 16 << 20);
}

size_t SizeClass(size_t n) {
  if (n <= 8) return n;
  const size_t step = absl::bit_floor(n) / 4;
  return (n + step - 1) / step * step;
}

}  // namespace constance::collector
