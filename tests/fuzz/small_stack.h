// Runs a function on a thread whose stack is as small as the agent's HTTP
// workers' (civetweb threads: about 100 KiB in Debian's build), so that
// fuzzers and tests see a recursion that would overflow in production,
// which the 8 MB main-thread stack hides.
//
//   RunOnSmallStack([&] { ParseObservations(body, now, limits); });
//
// Aborts if the thread cannot be started. Blocks until `f` returns.
#ifndef CONSTANCE_TESTS_FUZZ_SMALL_STACK_H_
#define CONSTANCE_TESTS_FUZZ_SMALL_STACK_H_

#include <pthread.h>

#include <cstddef>
#include <cstdlib>
#include <functional>

namespace constance::testing {

// The same size under AddressSanitizer, whose redzones make frames larger:
// stricter than production, never laxer. (Checked: with the depth check
// taken out, the 700-deep object seed overflows this stack under ASan.)
inline constexpr size_t kHttpWorkerStackBytes = 100 * 1024;

inline void RunOnSmallStack(const std::function<void()>& f,
                            size_t stack_bytes = kHttpWorkerStackBytes) {
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0 || pthread_attr_setstacksize(&attr, stack_bytes) != 0) {
    std::abort();
  }
  pthread_t thread;
  auto run = [](void* arg) -> void* {
    (*static_cast<const std::function<void()>*>(arg))();
    return nullptr;
  };
  if (pthread_create(&thread, &attr, run, const_cast<std::function<void()>*>(&f)) != 0) {
    std::abort();
  }
  pthread_join(thread, nullptr);
  pthread_attr_destroy(&attr);
}

}  // namespace constance::testing

#endif  // CONSTANCE_TESTS_FUZZ_SMALL_STACK_H_
