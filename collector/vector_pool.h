#ifndef CONSTANCE_COLLECTOR_VECTOR_POOL_H_
#define CONSTANCE_COLLECTOR_VECTOR_POOL_H_

#include <cstddef>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace constance::collector {

// Vectors kept with their buffers for the next series. A recomputation
// builds and drops buffers of about 100 bytes per location for every
// series it takes (members, pending findings) between allocations that
// stay (outcomes, statistics). Freed into malloc's one heap they left
// holes the next buffer, a little larger, did not fit: over a simulated
// year resident memory crept up ~3 MB a week with the memory in use flat
// (tests/bench/RESULTS.md). Taken and given back, a few buffers serve
// every series. Safe from several threads at once.
template <typename T>
class VectorPool {
 public:
  // Keeps at most `keep` buffers; more given back are freed.
  explicit VectorPool(size_t keep) : keep_(keep) {}
  VectorPool(const VectorPool&) = delete;
  VectorPool& operator=(const VectorPool&) = delete;

  // An empty vector, holding a buffer given back earlier if any.
  std::vector<T> Take() {
    absl::MutexLock lock(&mu_);
    if (free_.empty()) return {};
    std::vector<T> v = std::move(free_.back());
    free_.pop_back();
    return v;
  }

  // Keeps `v`'s buffer (its elements destroyed) unless `keep` are kept.
  void Give(std::vector<T> v) {
    if (v.capacity() == 0) return;
    v.clear();
    absl::MutexLock lock(&mu_);
    if (free_.size() < keep_) free_.push_back(std::move(v));
  }

  // Buffers kept now.
  size_t kept() const {
    absl::MutexLock lock(&mu_);
    return free_.size();
  }

 private:
  const size_t keep_;
  mutable absl::Mutex mu_;
  std::vector<std::vector<T>> free_ ABSL_GUARDED_BY(mu_);
};

// A vector taken from a pool for a scope and given back at its end.
template <typename T>
class PooledVector {
 public:
  explicit PooledVector(VectorPool<T>* pool) : pool_(pool), v_(pool->Take()) {}
  ~PooledVector() { pool_->Give(std::move(v_)); }
  PooledVector(const PooledVector&) = delete;
  PooledVector& operator=(const PooledVector&) = delete;

  std::vector<T>& operator*() { return v_; }

 private:
  VectorPool<T>* pool_;
  std::vector<T> v_;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_VECTOR_POOL_H_
