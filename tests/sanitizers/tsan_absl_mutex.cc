// Makes absl::Mutex and absl::CondVar visible to ThreadSanitizer.
//
// Debian's Abseil is not built with ThreadSanitizer, so its Mutex (atomics
// and futexes inside libabsl_synchronization.so) creates no happens-before
// edges that TSan can see, and every member that an absl::Mutex guards
// would be reported as a race. This library, preloaded into the TSan test
// processes (LD_PRELOAD, see tests/sanitizers.sh), interposes the exported
// lock, unlock and wait functions: each calls Abseil's own and tells TSan
// that the mutex was acquired (after a lock, and after a wait returns with
// the lock held again) or released (before an unlock, and before a wait
// gives the lock up). Only ordering is modelled: TSan's lock-order
// (deadlock) detection does not see these mutexes.
//
// Built only with CONSTANCE_SANITIZE=thread.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/base/options.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace {

#define CONSTANCE_STR2(x) #x
#define CONSTANCE_STR(x) CONSTANCE_STR2(x)

// Abseil's own definition of the symbol `member` (mangled, without the
// "_ZN4absl<inline namespace>" prefix), found behind this library.
template <typename Fn>
Fn Real(const char* member) {
  const char* ns = CONSTANCE_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  const std::string name =
      std::string("_ZN4absl") + std::to_string(std::strlen(ns)) + ns + member;
  void* fn = dlsym(RTLD_NEXT, name.c_str());
  if (fn == nullptr) {
    std::fprintf(stderr, "tsan_absl_mutex: %s not found in Abseil: %s\n", name.c_str(), dlerror());
    std::abort();
  }
  return reinterpret_cast<Fn>(fn);
}

using MutexFn = void (*)(absl::Mutex*);
using MutexBoolFn = bool (*)(absl::Mutex*);
using CondFn = void (*)(absl::Mutex*, const absl::Condition&);
using CondTimeoutFn = bool (*)(absl::Mutex*, const absl::Condition&, absl::Duration);
using CondDeadlineFn = bool (*)(absl::Mutex*, const absl::Condition&, absl::Time);
using WaitFn = void (*)(absl::CondVar*, absl::Mutex*);
using WaitTimeoutFn = bool (*)(absl::CondVar*, absl::Mutex*, absl::Duration);
using WaitDeadlineFn = bool (*)(absl::CondVar*, absl::Mutex*, absl::Time);

// A condition as Abseil evaluates it: with the mutex held, but inside
// the wait (before it returns and TSan is told) or on the thread that
// unlocks. TSan is told the mutex was acquired before each evaluation and
// released after it, or what the condition reads would be reported as
// racing with its last writer (who wrote it under the mutex) and its next.
// The wrapper itself, made on the waiter's stack and read by whichever
// thread evaluates it, is a sync object of its own: made (released)
// before any evaluation, done with (acquired) before the waiter's frame
// moves on, without ordering anything else of the waiter's.
class TracedCondition {
 public:
  TracedCondition(absl::Mutex* mu, const absl::Condition& cond)
      : mu_(mu), cond_(&cond), condition_(&TracedCondition::Eval, this) {
    __tsan_release(this);
  }
  ~TracedCondition() { __tsan_acquire(this); }
  const absl::Condition& condition() const { return condition_; }

 private:
  static bool Eval(TracedCondition* t) {
    __tsan_acquire(t);
    __tsan_acquire(t->mu_);
    const bool met = t->cond_->Eval();
    __tsan_release(t->mu_);
    __tsan_release(t);
    return met;
  }
  absl::Mutex* const mu_;
  const absl::Condition* const cond_;
  const absl::Condition condition_;
};

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const MutexFn real = Real<MutexFn>("5Mutex4LockEv");
  real(this);
  __tsan_acquire(this);
}

void Mutex::ReaderLock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const MutexFn real = Real<MutexFn>("5Mutex10ReaderLockEv");
  real(this);
  __tsan_acquire(this);
}

bool Mutex::TryLock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const MutexBoolFn real = Real<MutexBoolFn>("5Mutex7TryLockEv");
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

bool Mutex::ReaderTryLock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const MutexBoolFn real = Real<MutexBoolFn>("5Mutex13ReaderTryLockEv");
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

void Mutex::Unlock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const MutexFn real = Real<MutexFn>("5Mutex6UnlockEv");
  __tsan_release(this);
  real(this);
}

void Mutex::ReaderUnlock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const MutexFn real = Real<MutexFn>("5Mutex12ReaderUnlockEv");
  __tsan_release(this);
  real(this);
}

void Mutex::LockWhen(const Condition& cond) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const CondFn real = Real<CondFn>("5Mutex8LockWhenERKNS0_9ConditionE");
  const TracedCondition traced(this, cond);
  real(this, traced.condition());
  __tsan_acquire(this);
}

void Mutex::ReaderLockWhen(const Condition& cond) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const CondFn real = Real<CondFn>("5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  const TracedCondition traced(this, cond);
  real(this, traced.condition());
  __tsan_acquire(this);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond,
                                absl::Duration timeout) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const CondTimeoutFn real =
      Real<CondTimeoutFn>("5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  const TracedCondition traced(this, cond);
  const bool met = real(this, traced.condition(), timeout);
  __tsan_acquire(this);
  return met;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond,
                                 absl::Time deadline) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const CondDeadlineFn real =
      Real<CondDeadlineFn>("5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  const TracedCondition traced(this, cond);
  const bool met = real(this, traced.condition(), deadline);
  __tsan_acquire(this);
  return met;
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond,
                                      absl::Duration timeout) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const CondTimeoutFn real =
      Real<CondTimeoutFn>("5Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  const TracedCondition traced(this, cond);
  const bool met = real(this, traced.condition(), timeout);
  __tsan_acquire(this);
  return met;
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond,
                                       absl::Time deadline) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const CondDeadlineFn real =
      Real<CondDeadlineFn>("5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  const TracedCondition traced(this, cond);
  const bool met = real(this, traced.condition(), deadline);
  __tsan_acquire(this);
  return met;
}

// A wait gives the lock up and takes it again before it returns.
void Mutex::Await(const Condition& cond) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const CondFn real = Real<CondFn>("5Mutex5AwaitERKNS0_9ConditionE");
  const TracedCondition traced(this, cond);
  __tsan_release(this);
  real(this, traced.condition());
  __tsan_acquire(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond,
                             absl::Duration timeout) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const CondTimeoutFn real =
      Real<CondTimeoutFn>("5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  const TracedCondition traced(this, cond);
  __tsan_release(this);
  const bool met = real(this, traced.condition(), timeout);
  __tsan_acquire(this);
  return met;
}

bool Mutex::AwaitWithDeadline(const Condition& cond,
                              absl::Time deadline) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const CondDeadlineFn real =
      Real<CondDeadlineFn>("5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  const TracedCondition traced(this, cond);
  __tsan_release(this);
  const bool met = real(this, traced.condition(), deadline);
  __tsan_acquire(this);
  return met;
}

void CondVar::Wait(Mutex* mu) {
  static const WaitFn real = Real<WaitFn>("7CondVar4WaitEPNS0_5MutexE");
  __tsan_release(mu);
  real(this, mu);
  __tsan_acquire(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration timeout) {
  static const WaitTimeoutFn real =
      Real<WaitTimeoutFn>("7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  __tsan_release(mu);
  const bool timed_out = real(this, mu, timeout);
  __tsan_acquire(mu);
  return timed_out;
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time deadline) {
  static const WaitDeadlineFn real =
      Real<WaitDeadlineFn>("7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  __tsan_release(mu);
  const bool timed_out = real(this, mu, deadline);
  __tsan_acquire(mu);
  return timed_out;
}

ABSL_NAMESPACE_END
}  // namespace absl
